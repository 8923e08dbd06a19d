"""Listeners: sockets, TLS, filter-chain selection, and the L4 filter chains.

A listener keeps its socket across Snapshots while its address stays the same. Its
filter chains are rebuilt per Snapshot: new connections take the new chains, and
connections on the old ones finish their current request and close (drain).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import ipaddress
import itertools
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import trio

from meshcore.chain import compose
from meshcore.config import FilterChain, Listener
from meshcore.connection import Connection, PeerTls, join_host_port, peer_tls
from meshcore.runtime.overload import OverloadManager
from meshcore.runtime.sniff import sniff_tls
from meshcore.runtime.stats import Stats
from meshcore.runtime.tls import TlsStream, start_tls

__all__ = [
    "CompiledChain",
    "ListenerRuntime",
    "NetworkHandler",
    "build_network_chain",
    "open_listener_socket",
]

log = structlog.get_logger("meshcore.listener")

NetworkHandler = Callable[[Connection], Awaitable[None]]
NetworkFilter = Callable[[Connection, NetworkHandler], Awaitable[None]]
TLS_HANDSHAKE_TIMEOUT = 10.0

_connection_ids = itertools.count(1)


async def _end_of_chain(conn: Connection) -> None:
    log.error("network_chain_ended", connection=conn.id, reason="no terminal filter")


def build_network_chain(filters: Sequence[NetworkFilter]) -> NetworkHandler:
    """Compose onion-shaped L4 filters into one handler (once per Snapshot)."""
    return compose(filters, _end_of_chain)


class CompiledChain:
    """A filter chain built for one Snapshot: its match, TLS context and L4 handler.

    It serves every Snapshot in which its config (and its listener's ``access_log``) stays
    the same: an unchanged chain is never rebuilt. Its TLS context is built by the caller
    (:mod:`meshcore.runtime.tls`) and replaced in place when what it is made of changes (a
    rotated secret): the next handshake takes the new one, and no connection is touched.

    Attributes:
        tls: the SSLContext the chain presents (None: plain TCP).
        tls_material: what ``tls`` was made of (see :func:`meshcore.runtime.tls.material`).
    """

    def __init__(
        self,
        config: FilterChain,
        filters: Sequence[NetworkFilter],
        *,
        access_log: object = False,
        tls: ssl.SSLContext | None = None,
        tls_material: Any = None,
    ) -> None:
        self.config = config
        self.filters = filters
        self.access_log = access_log
        self.handler = build_network_chain(filters)
        self.tls = tls
        self.tls_material = tls_material
        match = config.match
        self.networks = [ipaddress.ip_network(p, strict=False) for p in match.source_prefixes]
        self.connections = 0
        """Connections this chain is serving now."""
        self._idle: trio.Event | None = None

    async def wait_idle(self) -> None:
        """Return once this chain serves no connection (a retired chain: once it has drained)."""
        while self.connections:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()

    def connection_closed(self) -> None:
        """One of its connections has closed (the listener counts them)."""
        self.connections -= 1
        if not self.connections and self._idle is not None:
            self._idle.set()
            self._idle = None

    def matches(self, port: int, source: str, server_name: str | None, alpn: str | None) -> bool:
        """Whether a connection with these properties belongs to this chain."""
        match = self.config.match
        if match.destination_port is not None and match.destination_port != port:
            return False
        if match.server_names and not _server_name_matches(server_name, match.server_names):
            return False
        if match.alpn and alpn not in match.alpn:
            return False
        if self.networks:
            try:
                address = ipaddress.ip_address(source)
            except ValueError:
                return False
            if not any(address in net for net in self.networks):
                return False
        return True

    def drain(self) -> None:
        """Ask the chain's filters to finish current work and close their connections.

        A filter whose ``drain`` raises is logged and skipped: the others still drain.
        """
        for filter_ in self.filters:
            drain = getattr(filter_, "drain", None)
            if drain is not None:
                try:
                    drain()
                except Exception:
                    log.exception("filter_drain_failed", filter=type(filter_).__name__)


def _server_name_matches(server_name: str | None, patterns: Sequence[str]) -> bool:
    if server_name is None:
        return False
    name = server_name.lower()
    for pattern in (p.lower() for p in patterns):
        if pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


def open_listener_socket(host: str, port: int, *, reuse_port: bool = False) -> trio.SocketListener:
    """Bind and listen on ``host:port`` (SO_REUSEPORT for multi-process workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # A stdlib socket, bound synchronously (a literal address needs no lookup), then handed to trio.
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


class ListenerRuntime:
    """One listener: its socket, its current chains, and the connections it serves."""

    def __init__(
        self,
        config: Listener,
        chains: list[CompiledChain],
        *,
        reuse_port: bool = False,
        overload: OverloadManager | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.config = config
        self.overload = overload
        self._stat_overflow = (
            stats.counter("listener_cx_overflow", listener=config.name) if stats is not None else None
        )
        # TLS handshakes done (one per TLS connection), and those that resumed a session.
        self._stat_handshakes = (
            stats.counter("listener_ssl_handshake", listener=config.name) if stats is not None else None
        )
        self._stat_resumed = (
            stats.counter("listener_ssl_session_reused", listener=config.name) if stats is not None else None
        )
        self.chains = chains
        self.socket = open_listener_socket(config.address.host, config.address.port, reuse_port=reuse_port)
        self.port: int = self.socket.socket.getsockname()[1]
        self.tls = any(chain.tls is not None for chain in chains)
        self.mixed = self.tls and any(chain.tls is None for chain in chains)  # PERMISSIVE: sniff
        _install_sni(chains)
        self.active = 0
        self._stopped = trio.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the real port when config asked for port 0)."""
        return self.config.address.host, self.port

    def replace_chains(self, config: Listener, chains: list[CompiledChain]) -> None:
        """New connections take ``chains``; connections on old chains not among them drain.

        A chain that is in both lists is untouched: its connections carry on.
        """
        old = self.chains
        self.config = config
        self.chains = chains
        self.tls = any(chain.tls is not None for chain in chains)
        self.mixed = self.tls and any(chain.tls is None for chain in chains)
        _install_sni(chains)
        for chain in old:
            if not any(chain is kept for kept in chains):
                chain.drain()

    def stop(self) -> None:
        """Stop accepting; drain the connections of every chain."""
        self._stopped.set()
        for chain in self.chains:
            chain.drain()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until stopped, then wait for them within the drain timeout."""
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self._accept_loop, connections)
                    task_status.started()
                    await self._stopped.wait()
                    accepting.cancel_scope.cancel()
                self.socket.socket.close()
                connections.cancel_scope.deadline = trio.current_time() + self.config.drain_timeout
        finally:
            self.socket.socket.close()
        log.info("listener_stopped", listener=self.config.name)

    async def _accept_loop(self, connections: trio.Nursery) -> None:
        overload = self.overload
        while True:
            if overload is not None and not overload.accepting.is_set():
                # The overload manager stopped accepting: connections wait in the backlog.
                await overload.accepting.wait()
            try:
                if overload is None:
                    stream = await self.socket.accept()
                else:
                    # A wait the overload manager cuts short when it stops accepting.
                    with trio.CancelScope() as waiting:
                        overload.accept_scopes.add(waiting)
                        try:
                            stream = await self.socket.accept()
                        finally:
                            overload.accept_scopes.discard(waiting)
                    if waiting.cancelled_caught:
                        continue
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    # Resource exhaustion: reported and waited out, not a bug (no traceback).
                    log.error("accept_failed", listener=self.config.name, reason=str(err))  # noqa: TRY400 - see above
                    await trio.sleep(0.1)
                    continue
                raise
            if self._stopped.is_set():
                # Accepted after stop(), before this loop was cancelled: the drain has begun,
                # so this connection is refused, never served.
                stream.socket.close()
                return
            if not self._admit():
                stream.socket.close()  # past a connection limit: closed at once, counted
                continue
            self.active += 1  # counted from the accept, so a burst cannot overshoot the limit
            if overload is not None:
                overload.connections += 1
            connections.start_soon(self._handle, stream)

    def _admit(self) -> bool:
        """Whether a new connection is within this listener's and the process's limits."""
        limit = self.config.max_connections
        if limit and self.active >= limit:
            if self._stat_overflow is not None:
                self._stat_overflow.value += 1
            log.info("connection_overflowed", listener=self.config.name, limit=limit)
            return False
        if self.overload is not None and not self.overload.admit():
            log.info("connection_overflowed", listener=self.config.name, limit="process")
            return False
        return True

    def _forget(self) -> None:
        """A connection counted at its accept is gone."""
        self.active -= 1
        if self.overload is not None:
            self.overload.connections -= 1

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            peer_host, peer_port = stream.socket.getpeername()[:2]
            local_port = stream.socket.getsockname()[1]
        except OSError:
            # Reset by the client between the accept and now: it has no peer address any more
            # (ENOTCONN), and nothing to serve. This took the listener down.
            self._forget()
            stream.socket.close()
            return
        peer = join_host_port(peer_host, peer_port)
        conn_id = next(_connection_ids)
        server_name = alpn = None
        tls: PeerTls | None = None
        transport: trio.abc.Stream = stream
        try:
            with structlog.contextvars.bound_contextvars(connection=conn_id, peer=peer):
                use_tls = self.tls
                if self.mixed:  # TLS and plaintext chains on one port: the first byte tells
                    sniffed = await sniff_tls(stream, TLS_HANDSHAKE_TIMEOUT)
                    if sniffed is None:
                        return
                    use_tls = sniffed
                if use_tls:
                    handshake = await self._handshake(stream)
                    if handshake is None:
                        return
                    server_name = handshake[1]
                    alpn = handshake[0].selected_alpn_protocol()
                    tls = peer_tls(handshake[0])
                    transport = handshake[0]
                chain = self._select(local_port, peer_host, server_name, alpn, tls=tls is not None)
                if chain is None:
                    log.warning("no_filter_chain_matched", listener=self.config.name, server_name=server_name)
                    return
                conn = Connection(
                    transport,
                    id=conn_id,
                    peer=peer,
                    local=f"{self.config.address.host}:{local_port}",
                    listener=self.config.name,
                    server_name=server_name,
                    alpn=alpn,
                    tls=tls,
                )
                chain.connections += 1
                try:
                    await chain.handler(conn)
                finally:
                    chain.connection_closed()
        except Exception:
            # A bug (a filter's, or ours) ends this connection, never the listener and the
            # proxy with it. Cancellation is a BaseException: it goes through.
            log.exception("connection_crashed", listener=self.config.name)
        finally:
            self._forget()
            # A drain may have shut the socket's sending side already (an idle connection's
            # FIN): closing TLS then cannot send close_notify, and that must not end the
            # listener. trio closes the socket underneath all the same.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await transport.aclose()

    def _select(
        self, port: int, source: str, server_name: str | None, alpn: str | None, *, tls: bool = True
    ) -> CompiledChain | None:
        for chain in self.chains:
            if self.mixed and (chain.tls is not None) != tls:
                continue  # a TLS connection takes a TLS chain, a plaintext one a plaintext chain
            if chain.matches(port, source, server_name, alpn):
                return chain
        return None

    async def _handshake(self, stream: trio.SocketStream) -> tuple[TlsStream, str | None] | None:
        """Terminate TLS, choosing the certificate by SNI; None if the handshake failed."""
        default = next(c.tls for c in self.chains if c.tls is not None)
        seen: list[str] = []
        token = _SNI_SEEN.set(seen)
        try:
            with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
                tls_stream = await start_tls(stream, default)
        except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as err:
            cause = err.__cause__ or err  # trio wraps the ssl.SSLError that says why (an expired certificate)
            log.info(
                "tls_handshake_failed", listener=self.config.name, reason=str(cause) or type(cause).__name__
            )
            return None
        finally:
            _SNI_SEEN.reset(token)
        if self._stat_handshakes is not None and self._stat_resumed is not None:
            self._stat_handshakes.value += 1
            if tls_stream.session_reused:
                self._stat_resumed.value += 1
        return tls_stream, (seen[0] if seen else None)


_SNI_SEEN: contextvars.ContextVar[list[str]] = contextvars.ContextVar("meshcore_sni_seen")


def _install_sni(chains: Sequence[CompiledChain]) -> None:
    """Make the handshake present the certificate of the chain the connection will take.

    That is the first TLS chain, in order, whose server_names match the SNI; a chain without
    server_names takes any name and clients that send none (as ``_select`` does after the
    handshake). Port, source and ALPN criteria are not known or not used at this point.
    """
    tls_chains = [c for c in chains if c.tls is not None]

    def pick_by_sni(ssl_object: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        seen = _SNI_SEEN.get(None)
        if seen is not None and server_name is not None:
            seen.append(server_name)
        for chain in tls_chains:
            names = chain.config.match.server_names
            if not names or _server_name_matches(server_name, names):
                ssl_object.context = chain.tls
                return

    for chain in tls_chains:
        assert chain.tls is not None  # noqa: S101 - filtered above
        chain.tls.sni_callback = pick_by_sni
