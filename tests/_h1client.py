"""A keep-alive HTTP/1.1 client for tests (h11 inside): several requests on one connection.

It sees what a higher-level client hides: whether the server closed the connection, and
the ``connection`` header of each response.
"""

from __future__ import annotations

import attrs
import h11
import trio


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """One HTTP/1.1 connection, kept alive across requests (h11 inside)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Client:
        return cls(await trio.open_tcp_stream(*address))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stream.aclose()

    async def send(self, path: str, headers: list[tuple[str, str]] | None = None) -> None:
        request = h11.Request(method="GET", target=path, headers=[("host", "example.com"), *(headers or [])])
        await self.stream.send_all(
            (self.h11.send(request) or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        )

    async def receive(self) -> Reply:
        """The whole response; h11 raises if the connection ends before it is complete."""
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                msg = f"unexpected {event!r}"
                raise AssertionError(msg)
        assert head is not None
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = {n.decode(): v.decode() for n, v in head.headers}
        return Reply(head.status_code, headers, body)

    async def get(self, path: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        await self.send(path, headers)
        return await self.receive()

    async def closed_by_server(self) -> bool:
        """Whether the server closes the connection (EOF, no stray bytes) without our asking."""
        return await self.stream.receive_some(65536) == b""
