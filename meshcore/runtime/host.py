"""An endpoint of a cluster: its connection pool (HTTP/1.1 and HTTP/2) and its load figures."""

from __future__ import annotations

import math
import select
import ssl
from typing import TYPE_CHECKING

import trio

from meshcore.config.traffic import Locality
from meshcore.connection import join_host_port
from meshcore.errors import UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.h1 import H11ClientCodec
from meshcore.http.h1fast import FastClientCodec
from meshcore.runtime.h2pool import H2Pool
from meshcore.runtime.sockio import StreamIO
from meshcore.runtime.tls import TLS_STREAMS, connect_tls, identity_mismatch

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster

__all__ = ["Host", "UpstreamConnection"]


def _now() -> float:
    """Trio's clock, or -inf outside a trio run (a cluster built by a synchronous tool)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -math.inf


def _close_now(stream: trio.abc.Stream) -> None:
    """Close a stream's socket without awaiting (abandoned connections)."""
    if isinstance(stream, TLS_STREAMS):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()


def _is_stale(conn: UpstreamConnection) -> bool:
    """An idle upstream connection that has data or EOF pending is unusable.

    One ``poll`` of the connection's own poll object (registered on first use): cheaper
    than ``select.select``, which builds its descriptor sets on every call.
    """
    stream = conn.stream
    if type(stream) is not trio.SocketStream:  # the usual one first: isinstance of an ABC costs more
        if isinstance(stream, TLS_STREAMS):
            if stream.pending():  # decrypted bytes nobody asked for
                return True
            stream = stream.transport_stream
        if not isinstance(stream, trio.SocketStream):
            return False
    try:
        poller = conn.poller
        if poller is None:
            poller = select.poll()
            poller.register(stream.socket.fileno(), select.POLLIN | select.POLLPRI)
            conn.poller = poller
        # Readable while idle means EOF, a reset, or bytes nobody asked for; HUP, ERR and
        # NVAL (a closed descriptor) are reported unasked: any event makes it unusable.
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class UpstreamConnection:
    """One HTTP/1.1 connection to an endpoint."""

    __slots__ = ("codec", "idle_since", "io", "poller", "stream")

    def __init__(self, stream: trio.abc.Stream, *, fast: bool = False) -> None:
        self.stream = stream
        self.io = StreamIO(stream)
        self.poller: select.poll | None = None  # see _is_stale
        self.codec: H11ClientCodec | FastClientCodec = FastClientCodec() if fast else H11ClientCodec()
        self.idle_since = 0.0


class Host:
    """An endpoint of a cluster, with its connection pool and load figures.

    Over TLS it keeps the session of its last connection that got one (TLS 1.3 session
    tickets arrive after the handshake, with the first data), and a new connection offers
    it: the endpoint resumes it, with no certificate exchange nor key agreement, when it
    still can. A session belongs to the context it was made with: once the cluster's TLS
    context is built again (a rotated certificate or CA), the old one is not offered.
    """

    __slots__ = (
        "_idle",
        "_tls_session",
        "_waiters",
        "active_hc_seen",
        "active_requests",
        "address",
        "cluster",
        "ejected",
        "failed_active_hc",
        "h2_pool",
        "healthy",
        "label",
        "locality",
        "open_connections",
        "priority",
        "ready_since",
        "removed",
        "weight",
    )

    def __init__(self, cluster: Cluster, host: str, port: int, weight: int) -> None:
        self.cluster = cluster
        self.address = (host, port)
        self.label = join_host_port(host, port)
        self.weight = weight
        self.priority = 0
        self.locality: Locality | None = None
        self.active_requests = 0
        self.healthy = True
        """Whether the load balancer may choose it: not removed, ejected or failing checks."""
        self.failed_active_hc = False
        self.active_hc_seen = False
        self.ejected = False
        self.removed = False
        self.ready_since = _now()
        """When it last became healthy (slow start counts from here)."""
        self.open_connections = 0
        self._idle: list[UpstreamConnection] = []
        self._tls_session: tuple[ssl.SSLContext, ssl.SSLSession] | None = None
        self._waiters = trio.lowlevel.ParkingLot()
        self.h2_pool = H2Pool(self)

    def health_flags(self) -> list[str]:
        """Why it is not healthy, as Envoy's /clusters shows it (empty when healthy)."""
        flags = []
        if self.failed_active_hc:
            flags.append("failed_active_hc")
        if self.ejected:
            flags.append("failed_outlier_check")
        if self.removed:
            flags.append("pending_removal")
        return flags

    def may_connect(self, open_now: int) -> bool:
        """Whether one more connection may be opened, ``open_now`` being open or opening.

        The endpoint's own limit holds; the cluster's ``max_connections`` holds too, except
        for an endpoint with no connection at all (it may always open one, or its requests
        could wait forever for connections of other endpoints to close).
        """
        if open_now >= self.cluster.config.max_connections_per_endpoint:
            return False
        return open_now == 0 or self.cluster.breakers.room_for_connection()

    def wake_waiters(self) -> None:
        """A connection or stream slot may have freed up: let waiting requests look again."""
        self._waiters.unpark_all()

    async def wait_for_room(self) -> None:
        """Wait, as a pending request, until a connection or stream slot may have freed up.

        Raises:
            UpstreamError: UO, when the cluster has ``max_pending_requests`` waiting already.
        """
        with self.cluster.breakers.waiting():
            await self._waiters.park()

    async def connect(self) -> trio.abc.Stream:
        """A new transport to this endpoint, TLS if the cluster says so; UpstreamError if not."""
        cluster = self.cluster
        cluster.stats_cx_total.value += 1
        try:
            with trio.fail_after(cluster.config.connect_timeout or math.inf):
                stream: trio.abc.Stream = await trio.open_tcp_stream(*self.address)
                if cluster.tls_context is not None:
                    tls = cluster.config.tls
                    server_name = (tls.server_name if tls else None) or self.address[0]
                    saved = self._tls_session
                    session = saved[1] if saved is not None and saved[0] is cluster.tls_context else None
                    try:
                        secured = await connect_tls(stream, cluster.tls_context, server_name, session=session)
                    except BaseException:
                        _close_now(stream)  # or the socket of a refused handshake stays open
                        raise
                    stream = secured
                    cluster.stats_ssl_handshake.value += 1
                    if secured.session_reused:
                        cluster.stats_ssl_session_reused.value += 1
                    mismatch = (
                        identity_mismatch(secured, tls.peer_identities)
                        if tls and tls.peer_identities
                        else None
                    )
                    if mismatch is not None:
                        cluster.stats_cx_connect_fail.value += 1
                        _close_now(stream)
                        msg = f"upstream {self.label} is not who it should be: {mismatch}"
                        raise UpstreamError(ResponseFlag.UPSTREAM_IDENTITY_MISMATCH, msg)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as err:
            cluster.stats_cx_connect_fail.value += 1
            reason = "timed out" if isinstance(err, trio.TooSlowError) else str(err)
            msg = f"cannot connect to {self.label}: {reason}"
            raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_FAILURE, msg) from err
        return stream

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection that is still usable, or None (without waiting)."""
        while self._idle:
            conn = self._idle.pop()
            idle = trio.current_time() - conn.idle_since
            # Probed every time (one poll, no wait): bytes an upstream sent while no request
            # was outstanding would be read as the answer to the next one (response
            # smuggling), so a connection with anything pending is never reused.
            if idle > self.cluster.config.idle_timeout or _is_stale(conn):
                self._discard(conn)
                continue
            self.cluster.stats_cx_reused.value += 1
            return conn
        return None

    async def acquire(self) -> tuple[UpstreamConnection, bool]:
        """A pooled connection (reused, True) or a new one (False). Waits while the pool is full."""
        while True:
            conn = self.take_idle()
            if conn is not None:
                return conn, True
            if self.may_connect(self.open_connections):
                self.open_connections += 1
                self.cluster.breakers.connection_opened()
                try:
                    stream = await self.connect()
                except BaseException:
                    self.open_connections -= 1
                    self.cluster.breakers.connection_closed()
                    self._waiters.unpark()
                    raise
                self.cluster.stats_cx_active.value += 1
                return UpstreamConnection(stream, fast=self.cluster.config.codec == "fast"), False
            await self.wait_for_room()

    def keep_tls_session(self, stream: trio.abc.Stream) -> None:
        """Remember ``stream``'s TLS session for the next connection, if it has a new resumable one.

        Called once a response has been read on it (the session ticket has come by then).
        """
        if not isinstance(stream, TLS_STREAMS):
            return
        context = self.cluster.tls_context
        saved = self._tls_session
        if context is None or (saved is not None and saved[0] is context):
            return
        if stream.context is not context:
            return  # a connection made before the context was built again: its session is of the old one
        session = stream.session
        if session is not None and session.has_ticket:
            self._tls_session = (context, session)

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Give a connection back: kept idle for reuse, or closed."""
        context = self.cluster.tls_context
        if context is not None and (self._tls_session is None or self._tls_session[0] is not context):
            self.keep_tls_session(conn.stream)
        if (
            reusable
            and len(self._idle) < self.cluster.config.max_idle_connections_per_endpoint
            and not self.removed
        ):
            conn.idle_since = trio.current_time()
            self._idle.append(conn)
        else:
            self._discard(conn)
        self._waiters.unpark()

    def _discard(self, conn: UpstreamConnection) -> None:
        _close_now(conn.stream)
        self.open_connections -= 1
        self.cluster.breakers.connection_closed()
        self.cluster.stats_cx_active.value -= 1

    def close_idle(self) -> None:
        """Close every idle connection (the endpoint left the cluster, or the proxy stops)."""
        while self._idle:
            self._discard(self._idle.pop())
        self.h2_pool.close()
