"""Upstream HTTP/2: multiplexed connections per endpoint.

A request takes a stream on a connection that has room (the peer's
SETTINGS_MAX_CONCURRENT_STREAMS); when every connection is full a new one is opened, up
to the cluster's connection limit. A stream refused by the upstream (REFUSED_STREAM, or
beyond the last stream id of a GOAWAY) was not processed, so it is retried on another
connection.

One concept per module: the pool (this one), a connection (meshcore.runtime.h2upstream:
h2's state, the reader task, writes) and one request's exchange on it
(meshcore.runtime.h2request: the stream from head to end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from meshcore.errors import UpstreamError
from meshcore.runtime.h2request import StreamRefused, upstream_error
from meshcore.runtime.h2upstream import H2Connection

if TYPE_CHECKING:
    from meshcore.runtime.host import Host

__all__ = ["H2Connection", "H2Pool", "StreamRefused", "upstream_error"]


class H2Pool:
    """The HTTP/2 connections of one endpoint."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.connections: list[H2Connection] = []
        self.connecting = 0
        self.connect_failures = 0
        self.connect_error: UpstreamError | None = None

    def discard(self, conn: H2Connection) -> None:
        """Forget a closed or refused connection."""
        if conn in self.connections:
            self.connections.remove(conn)
            self.host.cluster.stats_cx_active.value -= 1
            self.host.cluster.breakers.connection_closed()
            self.host.wake_waiters()

    async def acquire(self, nursery: trio.Nursery) -> H2Connection:
        """A connection with room for one more stream, opening one if needed."""
        while True:
            for conn in self.connections:
                if conn.capacity > 0:
                    if conn is not self.connections[0] or len(conn.streams):
                        self.host.cluster.stats_cx_reused.value += 1
                    return conn
            if self.connecting:
                # One connection opened at a time: a burst of requests waits for it and shares
                # it (it has room for many streams) instead of each opening its own. If it
                # cannot be opened, they fail with it, rather than try again one by one.
                failures = self.connect_failures
                await self.host.wait_for_room()
                if self.connect_failures != failures and self.connect_error is not None:
                    raise UpstreamError(self.connect_error.flag, str(self.connect_error))
                continue
            if self.host.may_connect(len(self.connections)):
                self.connecting += 1
                breakers = self.host.cluster.breakers
                breakers.connection_opened()
                try:
                    stream = await self.host.connect()
                    conn = H2Connection(stream, self.host)
                    await nursery.start(conn.run)
                except BaseException as err:
                    breakers.connection_closed()
                    if isinstance(err, UpstreamError):
                        self.connect_failures += 1
                        self.connect_error = err
                    raise
                finally:
                    self.connecting -= 1
                    self.host.wake_waiters()  # those waiting for it look again
                self.connections.append(conn)
                self.host.cluster.stats_cx_active.value += 1
                return conn
            await self.host.wait_for_room()

    def close(self) -> None:
        """Close every connection (the endpoint left, or the proxy stops)."""
        for conn in list(self.connections):
            conn.close(ConnectionResetError("endpoint removed"))
