"""The one HTTP message model for HTTP/1.1 and HTTP/2: Request, Response, Headers, Body.

Filters never know which protocol carried a request. Bodies are streams (async iterators
of bytes, pulled on demand so that a slow reader holds back the sender) that end with
optional trailers (gRPC needs them). Header names are stored lower-case as bytes, the
way both codecs produce them; the str API encodes and decodes at the edge.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from meshcore.flags import ResponseFlag

if TYPE_CHECKING:
    from meshcore.config import Route
    from meshcore.connection import Connection

__all__ = [
    "Body",
    "Headers",
    "HttpHandler",
    "MatchedRoute",
    "ParsedHeaders",
    "Request",
    "Response",
    "StreamInfo",
    "Upgraded",
    "UpstreamAttempt",
]

_log = structlog.get_logger("meshcore.http")
HeaderPairs = Iterable[tuple[bytes | str, bytes | str]]


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class Headers:
    """Ordered, multi-valued HTTP headers (or trailers). Names are case-insensitive.

    ``raw`` is the list of ``(name, value)`` byte pairs, names lower-case, in wire order;
    codecs read and write it directly.
    """

    __slots__ = ("raw",)

    def __init__(self, pairs: HeaderPairs = ()) -> None:
        self.raw: list[tuple[bytes, bytes]] = [(_b(n).lower(), _b(v)) for n, v in pairs]

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap pairs that are already lower-case bytes (codecs), without copying."""
        headers = cls.__new__(cls)
        headers.raw = raw
        return headers

    def get(self, name: str | bytes, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = _b(name).lower()
        for n, v in self.raw:
            if n == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str | bytes) -> list[str]:
        """Every value of ``name``, in order."""
        key = _b(name).lower()
        return [v.decode("latin-1") for n, v in self.raw if n == key]

    def get_raw(self, name: bytes) -> bytes | None:
        """The first value of lower-case ``name`` as bytes (the fast path for codecs)."""
        for n, v in self.raw:
            if n == name:
                return v
        return None

    def add(self, name: str | bytes, value: str | bytes) -> None:
        """Append a value, keeping the ones already there."""
        self.raw.append((_b(name).lower(), _b(value)))

    def set(self, name: str | bytes, value: str | bytes) -> None:
        """Replace every value of ``name`` with one value."""
        key = _b(name).lower()
        self.raw = [(n, v) for n, v in self.raw if n != key]
        self.raw.append((key, _b(value)))

    def remove(self, name: str | bytes) -> None:
        """Remove every value of ``name`` (no error if absent)."""
        key = _b(name).lower()
        self.raw = [(n, v) for n, v in self.raw if n != key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str | bytes):
            return False
        key = _b(name).lower()
        for n, _ in self.raw:  # noqa: SIM110 - a loop, not any(generator): once per proxied request
            if n == key:
                return True
        return False

    def items(self) -> Iterator[tuple[str, str]]:
        """Every ``(name, value)`` as str, in order."""
        for n, v in self.raw:
            yield n.decode("latin-1"), v.decode("latin-1")

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers.from_raw(list(self.raw))

    def __len__(self) -> int:
        return len(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and other.raw == self.raw

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"


ChunkReader = Callable[[], Awaitable[bytes]]


class ParsedHeaders(Headers):
    """Headers as a strict HTTP/1.1 parser read them, with a copy of the pairs it checked.

    ``parsed`` is that copy: the pairs still in ``raw`` unchanged, in the same places, need
    no second check of their syntax on the way out. Any change (a replaced, removed or
    inserted pair) ends the unchanged prefix there, and what follows is checked again.
    """

    __slots__ = ("parsed",)

    parsed: list[tuple[bytes, bytes]]

    @classmethod
    def parsed_from(cls, raw: list[tuple[bytes, bytes]]) -> ParsedHeaders:
        """Wrap the parser's pairs (lower-case bytes, checked) and keep a copy of them."""
        headers = cls.__new__(cls)
        headers.raw = raw
        headers.parsed = raw[:]
        return headers

    def add_checked(self, name: bytes, value: bytes) -> None:
        """Append a pair known good (lower-case name, a value that needs no check: ours).

        It counts as parsed when every pair before it still is: the writer checks it no more
        than those. (A value from anyone else goes through :meth:`add`, and is checked.)
        """
        pair = (name, value)
        self.raw.append(pair)
        parsed = self.parsed
        if len(self.raw) == len(parsed) + 1:
            parsed.append(pair)

    def unchanged(self, raw: list[tuple[bytes, bytes]]) -> int:
        """How many pairs at the start of ``raw`` are the parsed ones, unchanged (0 or all)."""
        parsed = self.parsed
        return len(parsed) if raw[: len(parsed)] == parsed else 0


class Body:
    """A streaming message body: chunks pulled on demand, then optional trailers.

    ``read()`` returns the next chunk, ``b""`` once the body has ended. Iterating with
    ``async for`` yields the chunks. A body can be read once. ``length`` is the declared
    size when known (Content-Length), else None. ``limit``, when set, is the most bytes it
    may carry: reading past it raises ProtocolError(413) (the connection manager sets it
    on request bodies from ``max_request_body_size``). ``ready``, when given, says whether
    ``read()`` would return at once (see :meth:`at_hand`).
    """

    __slots__ = ("_close", "_read", "_ready", "consumed", "done", "length", "limit", "trailers")

    def __init__(
        self,
        read: ChunkReader | None,
        length: int | None = None,
        close: Callable[[], None] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._read = read
        self._close = close
        self._ready = ready
        self.length = length
        self.trailers: Headers | None = None
        self.done = read is None
        self.consumed = 0
        self.limit: int | None = None

    @classmethod
    def from_bytes(cls, data: bytes, *, trailers: Headers | None = None) -> Body:
        """A body of known bytes."""
        chunks = [data] if data else []

        async def read() -> bytes:
            return chunks.pop() if chunks else b""

        body = cls(read, length=len(data), ready=_always)
        body.trailers = trailers
        return body

    @classmethod
    def from_iterable(cls, chunks: AsyncIterator[bytes], *, length: int | None = None) -> Body:
        """A body streamed from an async iterator of chunks."""

        async def read() -> bytes:
            async for chunk in chunks:
                if chunk:
                    return chunk
            return b""

        return cls(read, length=length)

    @classmethod
    def empty(cls) -> Body:
        """A body with no bytes."""
        return cls(None, length=0)

    async def read(self) -> bytes:
        """The next chunk; ``b""`` when the body has ended."""
        if self.done or self._read is None:
            return b""
        chunk = await self._read()
        if chunk:
            self.consumed += len(chunk)
            if self.limit is not None and self.consumed > self.limit:
                self.close()
                raise _too_large(self.limit)
        else:
            # Ended: let go of what fed it. Its reader and closer are usually bound methods of
            # the exchange that holds this body, a cycle only the cyclic GC would free.
            self.done = True
            self._read = self._close = self._ready = None
        return chunk

    def at_hand(self) -> bool:
        """Whether ``read()`` returns at once (a chunk, or the end); False when its source cannot say.

        A sender can then send what is already here in the task that has it, and leave only
        a body still to come to a task of its own (a unary gRPC call's message arrives with
        its head).
        """
        if self.done or self._read is None:
            return True
        return self._ready is not None and self._ready()

    def close(self) -> None:
        """Abandon the rest of the body (the client went away): release what feeds it."""
        if not self.done:
            self.done = True
            close, self._read, self._close, self._ready = self._close, None, None, None
            if close is not None:
                close()

    async def read_all(self, limit: int | None = None) -> bytes:
        """Every remaining byte; ProtocolError(413) past ``limit`` bytes."""
        parts = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if limit is not None and size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    # The body is its own iterator, not an async generator: a loop abandoned mid-body (a
    # cancelled sender, a timeout) leaves no suspended generator for the garbage collector
    # to finalize outside trio (trio warns about each one).
    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk


def _always() -> bool:
    return True


def _too_large(limit: int) -> Exception:
    from meshcore.errors import ProtocolError  # noqa: PLC0415 - rare path

    msg = f"body larger than {limit} bytes"
    return ProtocolError(msg, status=413)


class UpstreamAttempt:
    """One try of a request at an upstream endpoint: the first, then each retry.

    Attributes:
        number: 1 for the first attempt, 2 for the first retry, ...
        cluster: the cluster's name.
        endpoint: the endpoint tried ("host:port").
        start: monotonic time (``time.monotonic()``) the attempt began.
        end: monotonic time its response head came or it failed; None while it runs.
        status: the response status, when one came.
        flag: why it failed without a response (UF, UC, UT, ...), when it did.
    """

    __slots__ = ("cluster", "end", "endpoint", "flag", "number", "start", "status")

    def __init__(self, number: int, cluster: str, endpoint: str) -> None:
        self.number = number
        self.cluster = cluster
        self.endpoint = endpoint
        self.start = time.monotonic()
        self.end: float | None = None
        self.status: int | None = None
        self.flag: ResponseFlag | None = None

    def __repr__(self) -> str:
        outcome = self.status if self.status is not None else (self.flag.value if self.flag else "...")
        return f"<UpstreamAttempt {self.number} {self.cluster}/{self.endpoint} {outcome}>"


AttemptObserver = Callable[["Request", UpstreamAttempt], None]
"""Called when an upstream attempt starts (``end`` is None; the request's headers may still
be edited, e.g. to give each attempt a span of its own) and when it ends."""
Observer = Callable[["Request", "Response"], None]


class StreamInfo:
    """What happened to one request: timing, peers, route, flags, upstream. For logs and stats.

    Attributes:
        start: monotonic time the request head was received.
        downstream_address: the client's "host:port".
        connection_id: the downstream connection's id.
        route_name: the route taken, when one matched.
        cluster_name: the upstream cluster, when one was chosen.
        upstream_address: the endpoint that served it, when one did.
        flags: response flags explaining locally generated replies and failures.
        metadata: free-form data filters share for the life of the request.
        attempts: every upstream attempt, in order (retries included).
        on_attempt: an :data:`AttemptObserver` a filter may set (tracing: a span per attempt).
        request_id: its ``x-request-id`` (set by the connection manager).
        trace_id: its trace id as 32 hex digits, when a tracing filter saw it.
        internal: whether it came from inside the mesh: the edge of trust took its
            connection for a mesh peer's (set by the connection manager, before routing).
            Only then are a client's request id and a forced trace honoured.
    """

    __slots__ = (
        "_observers",
        "attempts",
        "cluster_name",
        "connection_id",
        "downstream_address",
        "flags",
        "internal",
        "metadata",
        "on_attempt",
        "request_id",
        "route_name",
        "start",
        "trace_id",
        "upstream_address",
    )

    def __init__(self, downstream_address: str = "", connection_id: int = 0) -> None:
        self.start = time.monotonic()
        self.downstream_address = downstream_address
        self.connection_id = connection_id
        self.route_name: str | None = None
        self.cluster_name: str | None = None
        self.upstream_address: str | None = None
        self.flags: set[ResponseFlag] = set()
        self.metadata: dict[str, Any] = {}
        self.request_id: str | None = None
        self.trace_id: str | None = None
        self.internal = False
        self.attempts: list[UpstreamAttempt] = []
        self.on_attempt: AttemptObserver | None = None
        self._observers: list[Observer] | None = None

    def flag_string(self) -> str:
        """The flags as Envoy prints them ("NR,UT"), or "-"."""
        return ",".join(sorted(f.value for f in self.flags)) or "-"

    def when_complete(self, observer: Observer) -> None:
        """Call ``observer(request, response)`` once the response has been sent (or abandoned).

        For filters that report on the whole exchange (a tracing span's end, metrics with
        the bytes sent and the final flags). Observers run in the order they were added;
        one that raises is logged and does not stop the others.
        """
        if self._observers is None:
            self._observers = [observer]
        else:
            self._observers.append(observer)

    def complete(self, request: Request, response: Response) -> None:
        """Run the observers (the connection manager calls this once, when the exchange ends)."""
        observers = self._observers
        if observers is None:
            return
        self._observers = None
        for observer in observers:
            try:
                observer(request, response)
            except Exception:  # noqa: BLE001 - a telemetry bug must not cost the other observers
                _log.exception("request_observer_failed", observer=repr(observer))


class MatchedRoute(Protocol):
    """The route a request matched, as filters see it: ``request.route``.

    Set by the HTTP connection manager before the chain runs (None when no route matched).
    A filter reads what the route says (``config``: its match, action, timeouts, per-route
    filter settings) and may ask it what the router would do.
    """

    @property
    def name(self) -> str:
        """The route's name, or ``"<virtual host>/<index>"`` if it has none."""
        ...

    @property
    def virtual_host(self) -> str:
        """The name of the virtual host it belongs to."""
        ...

    @property
    def config(self) -> Route:
        """The route as configured (``meshcore.Route``)."""
        ...

    def pick_cluster(self) -> str | None:
        """The upstream cluster for one request: ``cluster``, or a weighted pick (None: no cluster)."""
        ...

    def rewrite_request(self, request: Request) -> None:
        """Apply the route's path, host and header rewrites to ``request``, as the router does."""
        ...


class Request:
    """An HTTP request as filters see it, whatever protocol carried it.

    Attributes:
        method: "GET", "POST", ...
        scheme: "http" or "https".
        authority: Host (HTTP/1.1) or :authority (HTTP/2), port included if given.
        path: the request target: path and query string.
        headers: the other headers (no pseudo-headers, no Host).
        body: the request body stream.
        http_version: "1.1" or "2".
        info: what happened to this request (route, flags, ...).
        route: the route it matched (a :class:`MatchedRoute`), or None; set before the
            filter chain runs.
        upgrade: the protocol an HTTP/1.1 client asks to switch to (``websocket``), or None.
        connection: the downstream connection it came on (addresses, TLS, the peer's
            identity), or None for a request made up with no connection (a test).

    The arguments after ``path`` may be given by position too, in the order of the
    constructor's signature: the connection managers do, once per request (a class called
    with keywords builds a dict for them).
    """

    __slots__ = (
        "authority",
        "body",
        "connection",
        "headers",
        "http_version",
        "info",
        "method",
        "path",
        "route",
        "scheme",
        "upgrade",
    )

    def __init__(  # noqa: PLR0917 - by position too: the per-request call (see above)
        self,
        method: str,
        path: str,
        authority: str = "",
        scheme: str = "http",
        headers: Headers | None = None,
        body: Body | None = None,
        http_version: str = "1.1",
        info: StreamInfo | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.headers = headers if headers is not None else Headers()
        self.body = body if body is not None else Body.empty()
        self.http_version = http_version
        self.info = info if info is not None else StreamInfo()
        self.route: MatchedRoute | None = None
        self.upgrade: str | None = None
        self.connection = connection

    @property
    def path_only(self) -> str:
        """The path without its query string."""
        return self.path.partition("?")[0]

    @property
    def query(self) -> str:
        """The query string without "?" ("" if none)."""
        return self.path.partition("?")[2]

    @property
    def host(self) -> str:
        """The authority without its port, lower-case."""
        authority = self.authority.lower()
        if authority.startswith("["):
            return authority.partition("]")[0] + "]"
        return authority.rpartition(":")[0] if ":" in authority else authority

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.authority}{self.path}>"


class Response:
    """An HTTP response as filters see it.

    Build a local reply with :meth:`local`; the flags explain it in logs and stats. The
    arguments may be given by position too (``Response(status, headers, body)``): the
    connection managers do, once per request (a class called with keywords builds a dict).
    A ``101 Switching Protocols`` from an upstream carries :attr:`upgraded`: the upstream
    byte stream the connection manager splices to the client's.
    """

    __slots__ = ("body", "headers", "status", "upgraded")

    def __init__(self, status: int, headers: Headers | None = None, body: Body | None = None) -> None:
        self.status = status
        self.headers = headers if headers is not None else Headers()
        self.body = body if body is not None else Body.empty()
        self.upgraded: Upgraded | None = None

    @classmethod
    def local(
        cls,
        status: int,
        body: bytes | str = b"",
        *,
        content_type: str = "text/plain",
        headers: HeaderPairs = (),
    ) -> Response:
        """A locally generated reply with a small body."""
        data = body.encode() if isinstance(body, str) else body
        h = Headers(headers)
        if data and "content-type" not in h:
            h.add(b"content-type", content_type)
        h.set(b"content-length", str(len(data)))
        return cls(status, headers=h, body=Body.from_bytes(data))

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class Upgraded:
    """An upstream connection switched to another protocol, and the bytes it sent already."""

    __slots__ = ("leftover", "stream")

    def __init__(self, stream: Any, leftover: bytes) -> None:
        self.stream = stream
        self.leftover = leftover


HttpHandler = Callable[[Request], Awaitable[Response]]
"""The shape of the next handler an L7 filter calls: ``await call_next(request)``."""
