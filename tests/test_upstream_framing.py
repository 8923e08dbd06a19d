"""Upstream responses parsed as strictly as client requests, through a real proxy process.

A raw-socket upstream misbehaves on purpose: it sends bytes beyond a response's
Content-Length (response smuggling: they would be read as the answer to the next
request, possibly another client's), both Content-Length and Transfer-Encoding, header
lines that are malformed or carry script, oversized heads, floods of 1xx, bodies where
the status or method allows none. For each, with both HTTP/1.1 codecs:

- the client gets a 502, or a clean truncation when the head was already sent;
- no byte the upstream sent in error reaches any client (every reply is searched for
  the marker the upstream hides in its bad bytes), and no local reply echoes it;
- the proxy closes that upstream connection (the upstream sees EOF) and never reuses it:
  the next request goes out on a new connection and gets its own answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from _proxy_process import start_proxy_process

from meshcore.testing.harness import http_proxy_config

MARK = b"INJECTED"
"""What the upstream hides in every byte it sends in error; no client may ever see it."""
DEADLINE = 5
GOOD = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine"
SMUGGLED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n" + MARK


@attrs.define
class UpstreamConnection:
    """One connection the proxy opened to the upstream: the paths asked on it, and whether it was closed."""

    paths: list[bytes] = attrs.Factory(list)
    closed: trio.Event = attrs.Factory(trio.Event)


class MisbehavingUpstream:
    """A raw-socket HTTP/1.1 upstream that answers each path with scripted bytes.

    ``/ok`` gets a clean 200 "fine"; any other path gets ``scripts[path]``: a list of byte
    strings sent one by one (the next only after the previous one left). It reads request
    heads (and Content-Length bodies), keeps connections open as long as the proxy does, and
    records which connection each request came on.
    """

    def __init__(self) -> None:
        self.scripts: dict[bytes, list[bytes]] = {}
        self.connections: list[UpstreamConnection] = []
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.sent = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._session, listeners, handler_nursery=nursery)

    def connection_of(self, path: bytes) -> UpstreamConnection:
        return next(c for c in reversed(self.connections) if path in c.paths)

    async def _session(self, stream: trio.SocketStream) -> None:
        record = UpstreamConnection()
        self.connections.append(record)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                path = head.split(b" ")[1]
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        while len(buffer) < int(value):
                            buffer += await stream.receive_some(65536)
                        buffer = buffer[int(value) :]
                record.paths.append(path)
                for piece in self.scripts.get(path, [GOOD]):
                    await stream.send_all(piece)
                self.sent.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            record.closed.set()
            await stream.aclose()


async def ask(address: tuple[str, int], path: str, method: str = "GET") -> bytes:
    """One request on a new connection (``connection: close``); every byte the proxy sent back."""
    with trio.fail_after(DEADLINE):
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            await stream.send_all(
                f"{method} {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode()
            )
            chunks = []
            try:
                while data := await stream.receive_some(65536):
                    chunks.append(data)
            except trio.BrokenResourceError:
                pass  # a reset after a truncated response
            return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def head(status: str, *lines: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode("latin-1")


MARKS = MARK.decode()

Check = Callable[[bytes], bool]


def is_502(raw: bytes) -> bool:
    return status_of(raw) == 502


def truncated_chunked(raw: bytes) -> bool:
    """The head went out, then the proxy closed without the last chunk: a clean truncation."""
    return status_of(raw) == 200 and not raw.endswith(b"0\r\n\r\n")


def exactly(status: int, body: bytes) -> Check:
    return lambda raw: status_of(raw) == status and raw.partition(b"\r\n\r\n")[2] == body


CASES: list[tuple[str, str, list[bytes], Check]] = [
    # Response smuggling: bytes beyond the Content-Length, in the same write or a later one.
    ("extra-same-write", "GET", [head("200 OK", "content-length: 2") + b"ok" + SMUGGLED], exactly(200, b"ok")),
    ("extra-later-write", "GET", [head("200 OK", "content-length: 2") + b"ok", SMUGGLED], exactly(200, b"ok")),
    ("extra-after-chunked", "GET", [head("200 OK", "transfer-encoding: chunked") + b"2\r\nok\r\n0\r\n\r\n" + SMUGGLED], exactly(200, b"2\r\nok\r\n0\r\n\r\n")),
    # Framing headers.
    ("cl-and-te", "GET", [head("200 OK", "content-length: 8", "transfer-encoding: chunked") + b"8\r\n" + MARK + b"\r\n0\r\n\r\n"], is_502),
    ("cl-conflicting", "GET", [head("200 OK", "content-length: 8", "content-length: 9") + MARK], is_502),
    ("cl-list-conflicting", "GET", [head("200 OK", "content-length: 8, 9") + MARK], is_502),
    ("cl-signed", "GET", [head("200 OK", "content-length: +8") + MARK], is_502),
    ("cl-20-digits", "GET", [head("200 OK", "content-length: 00000000000000000008" + "1" * 20) + MARK], is_502),
    ("te-not-chunked-last", "GET", [head("200 OK", "transfer-encoding: chunked, gzip") + MARK], is_502),
    ("te-gzip", "GET", [head("200 OK", "transfer-encoding: gzip") + MARK], is_502),
    ("te-twice", "GET", [head("200 OK", "transfer-encoding: chunked", "transfer-encoding: chunked") + b"0\r\n\r\n" + MARK], is_502),
    # Status lines.
    ("status-4-digits", "GET", [b"HTTP/1.1 2000 " + MARK + b"\r\ncontent-length: 0\r\n\r\n"], is_502),
    ("status-600", "GET", [b"HTTP/1.1 600 " + MARK + b"\r\ncontent-length: 0\r\n\r\n"], is_502),
    ("status-2-digits", "GET", [b"HTTP/1.1 20 " + MARK + b"\r\ncontent-length: 0\r\n\r\n"], is_502),
    ("version-2", "GET", [b"HTTP/2.0 200 " + MARK + b"\r\ncontent-length: 0\r\n\r\n"], is_502),
    ("no-status-line", "GET", [MARK + b"\r\n\r\n"], is_502),
    # Header lines: malformed ones and script must never be echoed in the 502.
    ("header-script", "GET", [head("200 OK", f"x-bad<script>{MARKS}</script>: 1", "content-length: 0")], is_502),
    ("header-nul", "GET", [head("200 OK", f"x-a: {MARKS}\0", "content-length: 0")], is_502),
    ("header-bare-cr", "GET", [head("200 OK", f"x-a: a\r{MARKS}", "content-length: 0")], is_502),
    ("header-bare-lf", "GET", [b"HTTP/1.1 200 OK\r\nx-a: " + MARK + b"\ncontent-length: 0\r\n\r\n"], is_502),
    ("header-obs-fold", "GET", [head("200 OK", "x-a: 1", f" {MARKS}", "content-length: 0")], is_502),
    ("head-too-large", "GET", [head("200 OK", *[f"x-{i}: {MARKS}{'v' * 1000}" for i in range(80)], "content-length: 0")], is_502),
    # Trailers: after the head went out, a bad trailer section truncates the response.
    ("trailer-obs-fold", "GET", [head("200 OK", "transfer-encoding: chunked") + b"2\r\nok\r\n0\r\nx-t: 1\r\n " + MARK + b"\r\n\r\n"], truncated_chunked),
    ("trailer-bare-lf", "GET", [head("200 OK", "transfer-encoding: chunked") + b"2\r\nok\r\n0\r\nx-t: " + MARK + b"\n\r\n"], truncated_chunked),
    ("trailer-nul", "GET", [head("200 OK", "transfer-encoding: chunked") + b"2\r\nok\r\n0\r\nx-t: \0" + MARK + b"\r\n\r\n"], truncated_chunked),
    ("trailer-too-large", "GET", [head("200 OK", "transfer-encoding: chunked") + b"2\r\nok\r\n0\r\n" + b"".join(b"x-%d: %s%s\r\n" % (i, MARK, b"v" * 1000) for i in range(80)) + b"\r\n"], truncated_chunked),
    # Interim responses: a flood, and bytes after one.
    ("1xx-flood", "GET", [head("103 Early Hints", f"link: </{MARKS}>") * 40 + head("200 OK", "content-length: 0")], is_502),
    ("1xx-with-body", "GET", [head("100 Continue", "content-length: 8") + MARK + head("200 OK", "content-length: 0")], is_502),
    # Statuses and methods that allow no body: what follows the head is never relayed.
    ("204-with-body", "GET", [head("204 No Content", "content-length: 8") + MARK], lambda raw: status_of(raw) == 204 and MARK not in raw),
    ("304-with-chunked-body", "GET", [head("304 Not Modified", "transfer-encoding: chunked") + b"8\r\n" + MARK + b"\r\n0\r\n\r\n"], lambda raw: status_of(raw) == 304),
    ("head-with-body", "HEAD", [head("200 OK", "content-length: 8") + MARK], lambda raw: status_of(raw) == 200),
]  # fmt: skip


@pytest.mark.parametrize("codec", ["h11", "fast"])
async def test_upstream_framing_errors_never_reach_a_client(
    nursery: trio.Nursery, tmp_path: Path, codec: str
) -> None:
    upstream = MisbehavingUpstream()
    await nursery.start(upstream.serve)
    config = http_proxy_config(
        [upstream.address],
        manager={"codec": codec},
        cluster={"codec": codec, "max_connections_per_endpoint": 1},
    )
    with trio.fail_after(20):
        proxy = await start_proxy_process(nursery, config, tmp_path)
    failures = []
    for name, method, script, check in CASES:
        path = f"/{name}"
        upstream.scripts[path.encode()] = script
        upstream.sent = trio.Event()
        raw = await ask(proxy.address, path, method)
        with trio.fail_after(DEADLINE):
            await upstream.sent.wait()  # every scripted byte has left, the late ones too
        # The next request, from another client, on the one upstream connection allowed: it
        # must be answered by the upstream, on a new connection.
        after = await ask(proxy.address, "/ok")
        connection = upstream.connection_of(path.encode())
        with trio.move_on_after(DEADLINE):
            await connection.closed.wait()
        problems = [
            what
            for what, bad in [
                ("unexpected reply", not check(raw)),
                ("marker reached the client", MARK in raw or MARK in after),
                ("upstream connection not closed", not connection.closed.is_set()),
                ("next request not answered", not exactly(200, b"fine")(after)),
                ("connection reused", connection.paths[-1] != path.encode()),
            ]
            if bad
        ]
        if problems:
            failures.append((name, problems, raw[:300]))
    assert not failures, "\n".join(repr(f) for f in failures)
    nursery.cancel_scope.cancel()
