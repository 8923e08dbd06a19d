"""The ``control_plane`` config source: a proxy configured entirely by the control plane.

It holds one delivery stream to the control plane. Each push is merged with the resources
the proxy already has, structured and checked with the proxy's own registry (as a config
file would be), and applied whole; the control plane gets an ACK, or a NACK with every
problem the proxy found (its runtime's own messages: a port already taken, a filter it
does not have). While the control plane is away the proxy keeps serving its last good
Snapshot and reconnects with jittered exponential backoff, telling the control plane the
versions it has, so that an unchanged mesh costs no push.

When the control plane has a CA, the Snapshots it pushes name the ``workload`` secret
(:data:`~meshcore.control.translate.WORKLOAD_SECRET`) that the control plane never sends:
the source runs a certificate agent (``keep_certificate``: a key made here, a CSR signed by
the control plane over this same stream, renewed at about half its lifetime) and adds the
certificate to every Snapshot it applies. A push that needs it before the first one came
is answered once it came (its ACK deferred); a renewed certificate is applied at once (the
next handshakes take it, nothing drains).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import structlog
import trio

from meshcore.config import (
    Address,
    AdminConfig,
    Duration,
    NodeInfo,
    at_least,
    delta_from_data,
    snapshot_from_data,
)
from meshcore.control.client import (
    DEFERRED,
    Deferred,
    DeliveryClosedError,
    DeliveryStream,
    client_ssl_context,
)
from meshcore.control.protocol import CertificateAnswered, ClientSession, Push
from meshcore.control.signer import SigningError
from meshcore.control.translate import WORKLOAD_SECRET, ProxyIdentity
from meshcore.control.wire import digest, snapshot_data, unstructure
from meshcore.errors import ConfigError, ProtocolError
from meshcore.registry import Registry
from meshcore.runtime.offloop import run_beside_loop
from meshcore.runtime.sources import ConfigSink

__all__ = ["CertificateKeeper", "ControlPlaneSource", "ControlPlaneSourceConfig"]

log = structlog.get_logger("meshcore.control.source")

_PERMISSION_DENIED = 7


def _meshcore_version() -> str:
    try:
        return importlib.metadata.version("meshcore")
    except importlib.metadata.PackageNotFoundError:  # a source tree never installed
        return "0+unknown"


@attrs.frozen(kw_only=True)
class ControlPlaneSourceConfig:
    """Config of the ``control_plane`` source (``meshcore sidecar`` fills it from its options)."""

    address: Address
    """The control plane's delivery address."""
    workload: str = ""
    """The workload this proxy serves (a WorkloadEntry's name); "" for an outbound-only proxy."""
    namespace: str = "default"
    """That workload's namespace."""
    id: str = ""
    """This proxy's id (default: ``<workload>.<namespace>~<host>~<pid>``)."""
    token_file: str | None = None
    """A file holding the bootstrap token (read at every connection)."""
    tls: bool = False
    """Connect with TLS (implied by ``ca_file``)."""
    ca_file: str | None = None
    """The roots that the control plane's certificate is checked against (default: the system's)."""
    server_name: str | None = None
    """The name expected in the control plane's certificate (default: the address's host)."""
    http_proxy: str = "127.0.0.1:15001"
    """Where the outbound HTTP proxy listener listens ("" for none)."""
    admin: Address = Address("127.0.0.1", 15000)
    """This proxy's admin server."""
    ping_interval: Duration = attrs.field(default=Duration(5), validator=at_least(0.01))
    """How often the proxy pings the control plane (so each sees the other alive)."""
    initial_backoff: Duration = attrs.field(default=Duration(0.1), validator=at_least(0.001))
    """The first wait before reconnecting."""
    max_backoff: Duration = attrs.field(default=Duration(1), validator=at_least(0.001))
    """Reconnection waits double from ``initial_backoff`` up to this, each a random part of it."""


class CertificateKeeper(Protocol):
    """A certificate agent (``meshcore.plugins.workload_certs.keep_certificate``).

    It keeps a certificate for ``spiffe_id`` fresh until cancelled: a key and CSR of its
    own, ``sign`` (which raises when refused), ``install`` for each new certificate (an
    object with ``certificate_chain``, ``private_key`` and ``trusted_ca``, PEM).
    """

    def __call__(
        self, spiffe_id: str, sign: Callable[[bytes], Awaitable[Any]], install: Callable[[Any], None]
    ) -> Awaitable[None]:
        """Run until cancelled."""
        ...


def _names_secret(data: Any, name: str) -> bool:
    """Whether resource data refers to the secret ``name`` (``secret:`` or ``validation_secret:``)."""
    if isinstance(data, Mapping):
        return any(
            (key in ("secret", "validation_secret") and value == name) or _names_secret(value, name)
            for key, value in data.items()
        )
    if isinstance(data, list):
        return any(_names_secret(item, name) for item in data)
    return False


def _spiffe_id(node: Mapping[str, Any]) -> str:
    """The SPIFFE ID of the node resource's data (NodeInfo's defaults where it leaves fields out)."""
    defaults = NodeInfo(id="-")
    return NodeInfo(
        id="-",
        namespace=str(node.get("namespace", defaults.namespace)),
        service_account=str(node.get("service_account", defaults.service_account)),
        trust_domain=str(node.get("trust_domain", defaults.trust_domain)),
    ).spiffe_id


class ControlPlaneSource:
    """Snapshots from the control plane (see the module's documentation)."""

    def __init__(
        self,
        config: ControlPlaneSourceConfig,
        registry: Registry,
        *,
        keep_certificate: CertificateKeeper | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.keep_certificate = keep_certificate
        self.certificate: Any = None
        """The workload certificate its agent installed last (None: none yet)."""
        self._spiffe_id = ""
        self._wanted = trio.Event()  # the first push that needs a certificate came
        self._wake = trio.Event()  # a certificate came, or deferred pushes can be applied
        self._identity_changed = trio.Event()
        self.certificates_applied = 0
        """Workload certificates applied so far (the first, then each renewal)."""
        self._certificate_applied = trio.Event()
        self._pending: list[tuple[DeliveryStream, Push]] = []  # pushes waiting for the certificate
        self._pending_resources: dict[str, dict[str, Any]] | None = None
        self._pending_versions: dict[str, str] = {}
        self._backoff = float(config.initial_backoff)
        self._applying = trio.Lock()
        """Held while a push or a certificate is merged and applied: they go live one at a time, in order."""
        proxy_id = (
            config.id
            or f"{config.workload or 'proxy'}.{config.namespace}~{socket.gethostname()}~{os.getpid()}"
        )
        self.identity = ProxyIdentity(
            id=proxy_id,
            workload=config.workload,
            namespace=config.namespace,
            version=_meshcore_version(),
            metadata={"http_proxy": config.http_proxy, "admin": str(config.admin)},
        )
        self.resources: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, str] = {}
        self.stream: DeliveryStream | None = None
        self.connected = trio.Event()
        self.last_error = ""
        self._ssl: ssl.SSLContext | None = None
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets

    def reload(self) -> None:
        """SIGHUP: nothing to reread (the token file is read at every connection)."""
        log.info("reload_ignored", reason="the control plane pushes changes")

    def _token(self) -> str | None:
        if self.config.token_file is None:
            return None
        try:
            return Path(self.config.token_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            self.last_error = f"cannot read the token file {self.config.token_file}: {err.strerror}"
            log.error("token_unreadable", file=self.config.token_file, reason=err.strerror)  # noqa: TRY400 - a missing file, no traceback
            return None

    async def run(self, sink: ConfigSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Apply every push, forever; report started once the first Snapshot is live.

        A push the proxy refuses (even the first) is NACKed and the source carries on: the
        control plane shows the refusal, and the next good push is applied.
        """
        if self.config.tls or self.config.ca_file:
            self._ssl = client_ssl_context(self.config.ca_file)
        started = False
        self._backoff = float(self.config.initial_backoff)

        def applied() -> None:
            nonlocal started
            self._backoff = float(self.config.initial_backoff)
            if not started:
                started = True
                task_status.started()

        async def on_push(push: Push) -> str | Deferred | None:
            async with self._applying:
                error = await self._apply(push, sink)
            if error is None:
                applied()
            return error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._certificates, sink, applied)
            await self._connect_forever(on_push)

    async def _connect_forever(self, on_push: Callable[[Push], Awaitable[str | Deferred | None]]) -> None:
        while True:
            try:
                stream = await DeliveryStream.connect(
                    self.config.address,
                    ClientSession(self.identity, self.versions),
                    token=self._token(),
                    ssl_context=self._ssl,
                    server_name=self.config.server_name,
                    ping_interval=float(self.config.ping_interval),
                )
            except (OSError, trio.BrokenResourceError, ssl.SSLError) as err:
                reason = str(err) or str(err.__cause__ or "") or type(err).__name__
                self.last_error = f"cannot connect to {self.config.address}: {reason}"
                log.warning(
                    "control_plane_unreachable",
                    address=str(self.config.address),
                    reason=reason,
                    retry_in=round(self._backoff, 3),
                )
            else:
                await self._serve(stream, on_push)
            await trio.sleep(self._rng.uniform(self._backoff / 2, self._backoff))
            self._backoff = min(self._backoff * 2, float(self.config.max_backoff))

    async def _serve(self, stream: DeliveryStream, on_push: Callable[[Push], Any]) -> None:
        self.stream = stream
        self.connected.set()
        log.info("control_plane_connected", address=str(self.config.address), proxy=self.identity.id)
        try:
            await stream.run(on_push)
        except DeliveryClosedError as err:
            self.last_error = str(err)
            if err.status == _PERMISSION_DENIED:
                log.error("control_plane_refused", reason=str(err))  # noqa: TRY400 - the reason is the message
            else:
                log.warning("control_plane_lost", reason=str(err))
        except ProtocolError as err:
            self.last_error = str(err)
            log.warning("control_plane_protocol_error", reason=str(err))
        finally:
            self.stream = None
            self.connected = trio.Event()
            self._pending, self._pending_resources = [], None  # the next stream pushes again
            await stream.aclose()

    async def _apply(self, push: Push, sink: ConfigSink) -> str | Deferred | None:
        """Merge, check and apply a push; None when applied, else every problem (the NACK).

        A push of endpoints alone goes to the proxy as a delta: the proxy composes it onto
        its live Snapshot and updates those clusters' endpoints in place. A push that needs
        the workload certificate before there is one is kept (``DEFERRED``) until it comes.
        """
        waiting = self._pending_resources is not None
        base = self._pending_resources if self._pending_resources is not None else self.resources
        candidate = {t: dict(items) for t, items in base.items()}
        for update in push.updates:
            items = candidate.setdefault(update.type_url, {}) if update.incremental else {}
            items.update(update.resources)
            for name in update.removed:
                items.pop(name, None)
            candidate[update.type_url] = items
        versions = {
            **(self._pending_versions if waiting else self.versions),
            **{u.type_url: u.version for u in push.updates},
        }
        self._follow_identity(candidate)
        needs = self.certificate is None and _names_secret(candidate, WORKLOAD_SECRET)
        if needs or waiting:
            return self._defer(push, candidate, versions, needs=needs)
        return await self._apply_candidate(candidate, versions, sink, push=push)

    def _follow_identity(self, candidate: dict[str, dict[str, Any]]) -> None:
        """A workload whose identity changed (its service account) gets a certificate of the new one."""
        if not self._wanted.is_set():
            return
        node = candidate.get("node", {}).get("node")
        spiffe_id = _spiffe_id(node if isinstance(node, Mapping) else {})
        if spiffe_id != self._spiffe_id:
            log.info("workload_identity_changed", old=self._spiffe_id, new=spiffe_id)
            self._spiffe_id = spiffe_id
            self._identity_changed.set()

    def _defer(
        self, push: Push, candidate: dict[str, dict[str, Any]], versions: dict[str, str], *, needs: bool
    ) -> str | Deferred:
        """Keep ``push`` for when the certificate comes (or, if the pushes no longer need one, for now)."""
        if needs and self.keep_certificate is None:
            return f"the Snapshot needs the {WORKLOAD_SECRET!r} certificate and this proxy has no certificate agent"
        if self.stream is None:
            return "the connection to the control plane went away"
        self._pending.append((self.stream, push))
        self._pending_resources, self._pending_versions = candidate, versions
        if needs:
            node = candidate.get("node", {}).get("node")
            self._spiffe_id = _spiffe_id(node if isinstance(node, Mapping) else {})
            self._wanted.set()
            log.info("snapshot_waits_for_certificate", spiffe_id=self._spiffe_id, pending=len(self._pending))
        else:  # pushes that waited, then one that needs no certificate after all: apply them now
            self._wake.set()
        return DEFERRED

    async def _apply_candidate(
        self,
        candidate: dict[str, dict[str, Any]],
        versions: dict[str, str],
        sink: ConfigSink,
        *,
        push: Push | None,
    ) -> str | None:
        certificate = self.certificate
        version = digest(sorted(versions.items()))[:12]
        if certificate is not None:
            version = digest([version, certificate.certificate_chain])[:12]
        endpoints_only = (
            push is not None
            and self.resources
            and all(u.type_url == "endpoints" and u.incremental for u in push.updates)
        )
        try:
            if endpoints_only:
                assert push is not None  # noqa: S101 - endpoints_only says so
                changed = {n: v for u in push.updates for n, v in u.resources.items()}
                removed: dict[str, list[Any]] = {
                    n: [] for u in push.updates for n in u.removed if n in candidate.get("clusters", {})
                }
                delta = delta_from_data(
                    {"version": version, "endpoints": {**removed, **changed}}, self.registry
                )
                await sink.apply_delta_async(delta)
            else:
                admin = unstructure(AdminConfig(address=self.config.admin))
                resources = candidate
                if certificate is not None:
                    secret = {
                        "name": WORKLOAD_SECRET,
                        "certificate_chain": certificate.certificate_chain,
                        "private_key": certificate.private_key,
                        "trusted_ca": certificate.trusted_ca,
                    }
                    resources = {
                        **candidate,
                        "secrets": {**candidate.get("secrets", {}), WORKLOAD_SECRET: secret},
                    }
                data = snapshot_data(resources, admin=admin, version=version)
                try:
                    # Structured beside the loop: 10,000 routes take most of a second.
                    snapshot = await run_beside_loop(
                        functools.partial(snapshot_from_data, data, self.registry)
                    )
                except ConfigError as err:
                    sink.rejected(err)
                    raise
                await sink.apply_async(snapshot)
        except ConfigError as err:
            message = "\n".join(str(p) for p in err.problems)
            log.error(  # noqa: TRY400 - problems listed, no traceback
                "snapshot_rejected",
                version=version,
                problems=[str(p) for p in err.problems],
                kept=self.versions,
            )
            return message
        except Exception as err:
            log.exception("snapshot_apply_failed", version=version)
            return f"applying the Snapshot failed: {type(err).__name__}: {err}"
        self.resources, self.versions = candidate, versions
        log.info(
            "snapshot_received", version=version, types=[u.type_url for u in push.updates] if push else []
        )
        return None

    # -- the workload certificate ------------------------------------------------------------------

    async def _certificates(self, sink: ConfigSink, applied: Callable[[], None]) -> None:
        """Once a push needs the certificate: run the agent, and apply each certificate it installs."""
        await self._wanted.wait()
        assert self.keep_certificate is not None  # noqa: S101 - only wanted with an agent
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_certificate)
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                await self._take_certificate(sink, applied)

    async def _keep_certificate(self) -> None:
        """The agent, for the workload's identity; started again when that identity changes."""
        assert self.keep_certificate is not None  # noqa: S101 - only wanted with an agent
        while True:
            async with trio.open_nursery() as agent:
                agent.start_soon(self.keep_certificate, self._spiffe_id, self._sign, self._install)
                await self._identity_changed.wait()
                self._identity_changed = trio.Event()
                agent.cancel_scope.cancel()

    async def _sign(self, csr: bytes) -> CertificateAnswered:
        answer = await self.request_certificate(csr.decode("ascii"))
        if answer.error:
            raise SigningError(answer.error)
        return answer

    async def wait_certificates(self, count: int) -> None:
        """Wait until ``count`` workload certificates have been applied (for tests and tools)."""
        while self.certificates_applied < count:
            await self._certificate_applied.wait()

    def _certificate_taken(self) -> None:
        self.certificates_applied += 1
        self._certificate_applied.set()
        self._certificate_applied = trio.Event()

    def _install(self, certificate: Any) -> None:
        self.certificate = certificate
        self._wake.set()

    async def _take_certificate(self, sink: ConfigSink, applied: Callable[[], None]) -> None:
        """Apply the pushes that waited for a certificate and answer them; or swap a renewed one in."""
        async with self._applying:
            if self._pending_resources is None:
                if self.resources and self.certificate is not None:
                    error = await self._apply_candidate(self.resources, self.versions, sink, push=None)
                    if error is not None:
                        log.error("certificate_not_applied", problems=error)
                    else:
                        self._certificate_taken()
                return
            pending, candidate, versions = self._pending, self._pending_resources, self._pending_versions
            self._pending, self._pending_resources = [], None
            error = await self._apply_candidate(candidate, versions, sink, push=None)
            if error is None:
                applied()
                if self.certificate is not None:
                    self._certificate_taken()
        # Answered once the lock is free: the stream's next push may be waiting for it.
        for stream, push in pending:
            if stream is self.stream:
                try:
                    await stream.answer(push, error)
                except (
                    OSError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    ProtocolError,
                ) as err:
                    log.warning("answer_not_sent", reason=str(err))  # the stream's run() sees it end
                    break

    async def request_certificate(self, csr_pem: str, *, timeout: float = 10.0) -> CertificateAnswered:  # noqa: ASYNC109 - passed on
        """Ask the control plane to sign ``csr_pem`` (the key stays here); waits for a connection."""
        await self.connected.wait()
        stream = self.stream
        if stream is None:
            msg = "the connection to the control plane went away"
            raise DeliveryClosedError(msg)
        return await stream.request_certificate(csr_pem, timeout=timeout)
