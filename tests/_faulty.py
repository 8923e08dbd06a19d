"""A real HTTP/1.1 upstream on loopback that fails on cue, and counts what reaches it.

Each request is answered by the next action of a script (then by a default action):

- ``"200"``, ``"503"``, ...: that status, with a small body naming the upstream;
- ``"503 retry-after=2"``: that status with a header (``name=value``, several allowed);
- ``"delay:MS"``: 200 after MS milliseconds (``"delay:MS:503"``: that status after MS);
- ``"hang"``: never answers (until the connection or the server goes);
- ``"gate"``: 200 once ``release()`` was called (``"gate:503"``: that status): an upstream
  that holds every request until the test lets go, so "answered before the upstream could
  have answered" is an order of events, not a duration;
- ``"reset"``: resets the connection (RST) once the request is read;
- ``"close"``: closes the connection (FIN) without answering;
- ``"grpc:CODE"``: a gRPC trailers-only answer with that grpc-status.

``paths`` maps a path to an action of its own (a health check endpoint), taken before the
script. The counts are taken on the upstream side: every request that arrived (with its method,
path, attempt header and body size), and the most requests it held at once. ``stop()``
closes the listener, so new connections are refused (the upstream "died").
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Any

import attrs
import h11
import trio


@attrs.frozen
class Seen:
    """A request as the upstream saw it."""

    method: str
    path: str
    body_size: int
    attempt: str | None
    host: str


@attrs.define(eq=False)
class FaultyUpstream:
    """The server; ``await nursery.start(upstream.serve)`` returns its ``(host, port)``."""

    name: str = "faulty"
    default: str = "200"
    script: list[str] = attrs.Factory(list)
    paths: dict[str, str] = attrs.Factory(dict)
    seen: list[Seen] = attrs.Factory(list)
    active: int = 0
    max_active: int = 0
    connections: int = 0
    _listeners: list[trio.SocketListener] = attrs.Factory(list)
    _arrived: trio.Event = attrs.Factory(trio.Event)
    _gate: trio.Event = attrs.Factory(trio.Event)
    _scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    @property
    def count(self) -> int:
        """Requests that reached the upstream."""
        return len(self.seen)

    def count_path(self, path: str) -> int:
        """Requests for ``path`` that reached the upstream."""
        return sum(1 for seen in self.seen if seen.path == path)

    def then(self, actions: Iterable[str]) -> None:
        """Queue actions for the next requests."""
        self.script.extend(actions)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or stopped."""
        with self._scope:
            self._listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            task_status.started(self._listeners[0].socket.getsockname()[:2])
            await trio.serve_listeners(self._connection, self._listeners)

    @property
    def endpoint(self) -> str:
        """``"host:port"`` (valid once serving)."""
        host, port = self._listeners[0].socket.getsockname()[:2]
        return f"{host}:{port}"

    async def wait_seen(self, count: int) -> None:
        """Wait until ``count`` requests have arrived."""
        while len(self.seen) < count:
            await self._arrived.wait()

    def release(self) -> None:
        """Let the requests held by ``"gate"`` (and every later one) be answered."""
        self._gate.set()

    def stop(self) -> None:
        """Stop: close the listener and every connection (new connections are refused)."""
        self._scope.cancel()

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read(conn, stream)
                if request is None:
                    return
                action = self.paths.get(request.target.decode())
                if action is None:
                    action = self.script.pop(0) if self.script else self.default
                headers = dict(request.headers)
                self.seen.append(
                    Seen(
                        request.method.decode(),
                        request.target.decode(),
                        body,
                        (headers.get(b"x-meshcore-attempt-count") or b"").decode() or None,
                        (headers.get(b"host") or b"").decode(),
                    )
                )
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                self._arrived.set()
                self._arrived = trio.Event()
                try:
                    if not await self._act(action, conn, stream):
                        return
                finally:
                    self.active -= 1
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            stream.socket.close()

    async def _read(self, conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request | None, int]:
        request = None
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data and conn.their_state is h11.IDLE:
                    return None, 0
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return request, size
            else:
                return None, 0

    async def _act(self, action: str, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        """Answer per ``action``; False when the connection is done with."""
        kind, _, arg = action.partition(":")
        if kind == "hang":
            await trio.sleep_forever()
        if kind == "reset":
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if kind == "close":
            return False
        if kind == "gate":
            await self._gate.wait()
            kind = arg or "200"
        if kind == "delay":
            ms, _, status = arg.partition(":")
            await trio.sleep(int(ms) / 1000)
            kind = status or "200"
        if kind == "grpc":
            headers = [("content-type", "application/grpc"), ("grpc-status", arg), ("content-length", "0")]
            await stream.send_all(
                conn.send(h11.Response(status_code=200, headers=headers)) + conn.send(h11.EndOfMessage())
            )
            return True
        status, *extra = kind.split(" ")
        body = f"{self.name}\n".encode()
        headers = [("content-length", str(len(body))), ("x-upstream", self.name)]
        headers += [tuple(item.split("=", 1)) for item in extra]  # type: ignore[misc]  # "name=value" pairs
        out = conn.send(h11.Response(status_code=int(status), headers=headers))
        out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await stream.send_all(out)
        return True
