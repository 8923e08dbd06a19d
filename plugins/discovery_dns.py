"""``dns`` discovery: endpoints of ServiceEntries with ``resolution: DNS``, re-resolved on TTL.

Each inline endpoint address of such a ServiceEntry (or, without endpoints, each of its
hosts) is resolved to IP addresses; every address becomes an endpoint with the entry's
ports, labels and weight. An answer is kept for its TTL, then asked again; when the
addresses change, the model is rebuilt and the proxies get the new endpoints. A name that
no longer exists leaves no endpoints; a resolver that fails (timeout, server error) keeps
the last answer and is asked again soon.

The resolver is pluggable (:class:`Resolver`): the default one asks the system
(``getaddrinfo``), which gives no TTL, so its answers are kept for ``refresh_interval``.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import structlog
import trio

import meshcore
from meshcore import Duration, at_least
from meshcore.control import Discovered, Endpoint, MeshResources, MeshSettings
from meshcore.plugins.discovery_static import inline_endpoint, services_of
from meshcore.plugins.istio_services import ServiceEntrySpec, WorkloadEntrySpec

log = structlog.get_logger("meshcore.control.dns")

RETRY_AFTER_FAILURE = 5.0
"""Seconds before a name whose lookup failed is asked again (its last answer kept meanwhile)."""


class NameNotFoundError(LookupError):
    """The name does not exist (NXDOMAIN): it has no addresses."""


class Resolver(Protocol):
    """Resolves a host name to addresses, with how long the answer holds."""

    async def resolve(self, name: str) -> tuple[tuple[str, ...], float]:
        """``(addresses, ttl_seconds)``; NameNotFoundError if the name does not exist, OSError if the lookup failed."""


@attrs.frozen(kw_only=True)
class DnsConfig:
    """Config of ``dns`` discovery."""

    refresh_interval: Duration = Duration(30)
    """How long an answer of the system resolver is kept (it gives no TTL)."""
    min_ttl: Duration = attrs.field(default=Duration(1), validator=at_least(0.01))
    """Answers are kept at least this long, whatever their TTL (a TTL of 0 would spin)."""
    timeout: Duration = attrs.field(default=Duration(5), validator=at_least(0.01))
    """How long one lookup may take before it counts as failed."""


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``): hosts file, DNS, whatever it is set up with."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    async def resolve(self, name: str) -> tuple[tuple[str, ...], float]:
        """The addresses of ``name``, held for the configured refresh interval."""
        try:
            infos = await trio.socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            if err.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise NameNotFoundError(name) from err
            raise OSError(err.errno, err.strerror) from err
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        return addresses, self.ttl


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class DnsDiscovery:
    """Endpoints of DNS-resolved services, from answers kept for their TTL."""

    def __init__(self, config: DnsConfig | None = None, *, resolver: Resolver | None = None) -> None:
        self.config = config or DnsConfig()
        self.resolver = resolver or SystemResolver(float(self.config.refresh_interval))
        self.answers: dict[str, tuple[str, ...]] = {}
        self._expires: dict[str, float] = {}
        self._wanted: set[str] = set()
        self._wake: trio.Event | None = None

    def discover(self, resources: MeshResources, settings: MeshSettings) -> Discovered:  # noqa: ARG002 - the Discovery protocol
        """Endpoints of every DNS ServiceEntry from the answers known now; new names are looked up next."""
        endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        wanted: set[str] = set()
        for resource in resources.of_kind("ServiceEntry"):
            spec: ServiceEntrySpec = resource.spec
            if spec.effective_resolution != "DNS":
                continue
            for service in services_of(resource):
                entries = spec.endpoints or (WorkloadEntrySpec(address=service.host),)
                found: list[Endpoint] = []
                for entry in entries:
                    if not entry.address:
                        continue
                    if _is_ip(entry.address):
                        found.append(inline_endpoint(entry))
                        continue
                    wanted.add(entry.address)
                    found.extend(
                        inline_endpoint(entry, address) for address in self.answers.get(entry.address, ())
                    )
                endpoints[service.key] = tuple(found)
        new = wanted - self._wanted
        self._wanted = wanted
        for gone in set(self.answers) - wanted:
            self.answers.pop(gone)
            self._expires.pop(gone, None)
        if new and self._wake is not None:
            self._wake.set()
        return Discovered(endpoints=endpoints)

    async def run(self, changed: Callable[[], None], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Look names up when they are new or their answer expires; ``changed()`` when an answer changes."""
        self._wake = trio.Event()
        if await self._refresh():
            changed()
        task_status.started()
        while True:
            now = trio.current_time()
            due = min((self._expires.get(n, now) for n in self._wanted), default=math.inf)
            with trio.move_on_at(due):
                await self._wake.wait()
            self._wake = trio.Event()
            if await self._refresh():
                changed()

    async def _refresh(self) -> bool:
        """Look up every name that is new or expired, concurrently; whether any answer changed."""
        now = trio.current_time()
        due = [n for n in sorted(self._wanted) if self._expires.get(n, now) <= now]
        results: dict[str, tuple[str, ...] | None] = {}

        async def one(name: str) -> None:
            results[name] = await self._lookup(name)

        async with trio.open_nursery() as nursery:
            for name in due:
                nursery.start_soon(one, name)
        changed = False
        for name, addresses in results.items():
            if addresses is None or name not in self._wanted:
                continue
            if self.answers.get(name) != addresses:
                log.info("dns_answer_changed", name=name, addresses=list(addresses))
                self.answers[name] = addresses
                changed = True
        return changed

    async def _lookup(self, name: str) -> tuple[str, ...] | None:
        """The addresses of ``name`` (() if it does not exist), or None when the lookup failed."""
        try:
            with trio.fail_after(float(self.config.timeout)):
                addresses, ttl = await self.resolver.resolve(name)
        except NameNotFoundError:
            addresses, ttl = (), float(self.config.refresh_interval)
        except (OSError, trio.TooSlowError) as err:
            log.warning(
                "dns_lookup_failed",
                name=name,
                reason=str(err) or type(err).__name__,
                kept=self.answers.get(name, ()),
            )
            self._expires[name] = trio.current_time() + RETRY_AFTER_FAILURE
            return None
        self._expires[name] = trio.current_time() + max(ttl, float(self.config.min_ttl))
        return tuple(sorted(addresses))


@meshcore.hookimpl
def meshcore_mesh_discovery() -> list[meshcore.DiscoveryType]:
    """Register ``dns`` discovery."""
    return [
        meshcore.DiscoveryType(
            name="dns",
            factory=DnsDiscovery,
            config=DnsConfig,
            description="endpoints of ServiceEntries with resolution DNS, re-resolved when their answers expire",
            handles=("ServiceEntry.resolution=DNS",),
        )
    ]
