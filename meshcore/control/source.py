"""The ``control_plane`` config source: a proxy configured entirely by the control plane.

It holds one delivery stream to the control plane. Each push is merged with the resources
the proxy already has, structured and checked with the proxy's own registry (as a config
file would be), and applied whole; the control plane gets an ACK, or a NACK with every
problem the proxy found (its runtime's own messages: a port already taken, a filter it
does not have). While the control plane is away the proxy keeps serving its last good
Snapshot and reconnects with jittered exponential backoff, telling the control plane the
versions it has, so that an unchanged mesh costs no push.
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from meshcore.config import Address, AdminConfig, Duration, at_least, delta_from_data, snapshot_from_data
from meshcore.control.client import DeliveryClosedError, DeliveryStream, client_ssl_context
from meshcore.control.protocol import CertificateAnswered, ClientSession, Push
from meshcore.control.translate import ProxyIdentity
from meshcore.control.wire import digest, snapshot_data, unstructure
from meshcore.errors import ConfigError, ProtocolError
from meshcore.registry import Registry
from meshcore.runtime.sources import ConfigSink

__all__ = ["ControlPlaneSource", "ControlPlaneSourceConfig"]

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


class ControlPlaneSource:
    """Snapshots from the control plane (see the module's documentation)."""

    def __init__(self, config: ControlPlaneSourceConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        proxy_id = (
            config.id
            or f"{config.workload or 'proxy'}.{config.namespace}~{socket.gethostname()}~{os.getpid()}"
        )
        self.identity = ProxyIdentity(
            id=proxy_id,
            workload=config.workload,
            namespace=config.namespace,
            version=_meshcore_version(),
            metadata={"http_proxy": config.http_proxy},
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
        backoff = float(self.config.initial_backoff)

        async def on_push(push: Push) -> str | None:
            nonlocal started, backoff
            error = self._apply(push, sink)
            if error is None:
                backoff = float(self.config.initial_backoff)
                if not started:
                    started = True
                    task_status.started()
            return error

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
                    retry_in=round(backoff, 3),
                )
            else:
                await self._serve(stream, on_push)
            await trio.sleep(self._rng.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, float(self.config.max_backoff))

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
            await stream.aclose()

    def _apply(self, push: Push, sink: ConfigSink) -> str | None:
        """Merge, check and apply a push; None when applied, else every problem (the NACK).

        A push of endpoints alone goes to the proxy as a delta: the proxy composes it onto
        its live Snapshot and updates those clusters' endpoints in place.
        """
        candidate = {t: dict(items) for t, items in self.resources.items()}
        for update in push.updates:
            items = candidate.setdefault(update.type_url, {}) if update.incremental else {}
            items.update(update.resources)
            for name in update.removed:
                items.pop(name, None)
            candidate[update.type_url] = items
        versions = {**self.versions, **{u.type_url: u.version for u in push.updates}}
        version = digest(sorted(versions.items()))[:12]
        endpoints_only = self.resources and all(
            u.type_url == "endpoints" and u.incremental for u in push.updates
        )
        try:
            if endpoints_only:
                changed = {n: v for u in push.updates for n, v in u.resources.items()}
                removed: dict[str, list[Any]] = {
                    n: [] for u in push.updates for n in u.removed if n in candidate.get("clusters", {})
                }
                delta = delta_from_data(
                    {"version": version, "endpoints": {**removed, **changed}}, self.registry
                )
                sink.apply_delta(delta)
            else:
                admin = unstructure(AdminConfig(address=self.config.admin))
                data = snapshot_data(candidate, admin=admin, version=version)
                try:
                    snapshot = snapshot_from_data(data, self.registry)
                except ConfigError as err:
                    sink.rejected(err)
                    raise
                sink.apply(snapshot)
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
        log.info("snapshot_received", version=version, types=[u.type_url for u in push.updates])
        return None

    async def request_certificate(self, csr_pem: str, *, timeout: float = 10.0) -> CertificateAnswered:  # noqa: ASYNC109 - passed on
        """Ask the control plane to sign ``csr_pem`` (the key stays here); waits for a connection."""
        await self.connected.wait()
        stream = self.stream
        if stream is None:
            msg = "the connection to the control plane went away"
            raise DeliveryClosedError(msg)
        return await stream.request_certificate(csr_pem, timeout=timeout)
