"""The codec seam: the stream-level events and interfaces every HTTP codec implements.

The connection manager and the upstream pool talk to these interfaces, never to h11
directly, so that a faster codec can be selected by config and proven equal to the
reference codec (h11) by differential tests. Codecs are sans-IO: bytes in, events out;
events in, bytes out. Protocol violations raise :class:`meshcore.ProtocolError` carrying
the status to answer with.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "ClientCodec",
    "Data",
    "EndOfMessage",
    "Informational",
    "RawHeaders",
    "RequestHead",
    "ResponseHead",
    "ServerCodec",
]

RawHeaders = list[tuple[bytes, bytes]]


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
"""More bytes must be received before the next event."""
CLOSED = _Sentinel("CLOSED")
"""The peer closed the connection cleanly between messages."""


class RequestHead:
    """A request line and headers (names lower-case bytes, no Host pseudo-handling)."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: RawHeaders, http_version: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version


class ResponseHead:
    """A final response status line and headers."""

    __slots__ = ("headers", "http_version", "reason", "status")

    def __init__(self, status: int, headers: RawHeaders, http_version: bytes, reason: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.http_version = http_version
        self.reason = reason


class Informational:
    """A 1xx interim response (100 Continue, 103 Early Hints)."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: RawHeaders) -> None:
        self.status = status
        self.headers = headers


class Data:
    """A chunk of message body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOfMessage:
    """The end of a message body, with trailers if any."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: RawHeaders | None = None) -> None:
        self.trailers = trailers


END_OF_MESSAGE = EndOfMessage(None)
"""The end of a body without trailers: one event for every such end (never changed)."""

ServerEvent = RequestHead | Data | EndOfMessage | _Sentinel
ClientEvent = ResponseHead | Informational | Data | EndOfMessage | _Sentinel
# What a body reader gives, on either side: the part both kinds of event have in common.
BodyEvent = Data | EndOfMessage | _Sentinel


NOTHING_CHECKED = range(0)
"""No header pair known good: a codec checks them all before writing them."""


class ServerCodec(Protocol):
    """The downstream side of one HTTP/1.1 connection: requests in, responses out."""

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""

    def next_event(self) -> ServerEvent:
        """The next event, NEED_DATA, or CLOSED; raise ProtocolError on bad input."""

    @property
    def expects_continue(self) -> bool:
        """The client sent ``Expect: 100-continue`` and waits before sending the body."""

    def send_informational(self, status: int, headers: RawHeaders) -> bytes:
        """Bytes for a 1xx interim response."""

    def send_response_head(
        self, status: int, headers: RawHeaders, *, checked: range = NOTHING_CHECKED
    ) -> bytes:
        """Bytes for the response status line and headers.

        ``checked``: the indexes of pairs whose syntax is known good (our own strict parser
        read them from the upstream, nothing changed them since); a codec may skip checking
        those again.
        """

    def send_data(self, data: bytes) -> bytes:
        """Bytes for a chunk of response body."""

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        """Bytes that end the response body (trailers if the framing allows)."""

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection must close."""


class ClientCodec(Protocol):
    """The upstream side of one HTTP/1.1 connection: requests out, responses in."""

    def send_request_head(
        self, method: bytes, target: bytes, headers: RawHeaders, *, checked: range = NOTHING_CHECKED
    ) -> bytes:
        """Bytes for a request line and headers.

        ``checked``: the indexes of pairs whose syntax is known good (our own strict parser
        read them, nothing changed them since); a codec may skip checking those again.
        """

    def send_data(self, data: bytes) -> bytes:
        """Bytes for a chunk of request body."""

    def send_end(self, trailers: RawHeaders | None = None) -> bytes:
        """Bytes that end the request body."""

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the upstream; ``b""`` means it closed its side."""

    def next_event(self) -> ClientEvent:
        """The next event or NEED_DATA; raise ProtocolError on a bad response or early close."""

    def start_next_cycle(self) -> bool:
        """Prepare for the next request; False when the connection cannot be reused."""
