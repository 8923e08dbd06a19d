"""HTTP/2 abuse against a real proxy process: each attack ends its connection, nobody else notices.

Each attack comes from a raw client writing frames with hyperframe and hpack (the h2
library refuses to send most of them): rapid reset (CVE-2023-44487), a CONTINUATION flood
(CVE-2024-27316 and kin), a header list over the advertised limit, SETTINGS and PING
floods. For each: the proxy answers with GOAWAY and a fitting code, closes the connection,
keeps serving a normal client throughout, and its memory (VmRSS of the proxy process, read
from /proc) stays bounded.

The codes, as sent: rapid reset, SETTINGS and PING floods get ENHANCE_YOUR_CALM (the
proxy's own budgets); a CONTINUATION flood gets PROTOCOL_ERROR (h2 refuses a header block
of more than 64 CONTINUATION frames); an oversized header list gets ENHANCE_YOUR_CALM (h2
treats it as the HPACK bomb it may be).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import hpack
import pytest
import trio
from _proxy_process import ProxyProcess, start_proxy_process
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config
from meshcore.testing.upstreams import serve_upstream

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MEMORY_BOUND = 32 * 1024 * 1024
"""How much the proxy process may grow during an attack: a few MiB of buffers and logs.

Every flood below is larger than this or unbounded in principle (thousands of streams, a
header block that never ends), so a proxy that kept what it was sent would not pass."""


# -- the proxy as a process ------------------------------------------------------------------


async def start_abuse_target(nursery: trio.Nursery, tmp_path: Path, **manager: Any) -> ProxyProcess:
    """A proxy process: ``/up/...`` goes to an HTTP/1.1 test upstream, the rest gets a direct 200."""
    upstream = await nursery.start(serve_upstream)
    routes = [
        {"name": "up", "match": {"prefix": "/up/"}, "prefix_rewrite": "/", "cluster": "backend"},
        {"name": "ok", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok\n"}},
    ]
    return await start_proxy_process(
        nursery, http_proxy_config([upstream], routes=routes, manager=manager), tmp_path
    )


# -- a raw HTTP/2 client ---------------------------------------------------------------------


@attrs.define
class Outcome:
    """What the server sent back, frame by frame, until it closed the connection."""

    frames: list[Frame]
    closed: bool

    @property
    def goaway(self) -> GoAwayFrame | None:
        return next((f for f in self.frames if isinstance(f, GoAwayFrame)), None)

    def resets(self) -> list[RstStreamFrame]:
        return [f for f in self.frames if isinstance(f, RstStreamFrame)]


async def attack(address: tuple[str, int], flood: bytes) -> Outcome:
    """Open a connection (preface, SETTINGS), send ``flood``, read every frame until the server closes.

    The flood is sent while reading, and its sending stops quietly when the server closes
    the connection (as it should) before taking all of it.
    """
    stream = await trio.open_tcp_stream(*address)
    frames: list[Frame] = []
    closed = False
    async with stream:

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(PREFACE + SettingsFrame(0).serialize() + flood)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            buffer = b""
            try:
                while data := await stream.receive_some(65536):
                    buffer += data
                    while len(buffer) >= 9:
                        frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                        if len(buffer) < 9 + length:
                            break
                        frame.parse_body(memoryview(buffer[9 : 9 + length]))
                        frames.append(frame)
                        buffer = buffer[9 + length :]
            except trio.BrokenResourceError:
                pass  # a reset after the GOAWAY: the flood was still coming in
            closed = True
            nursery.cancel_scope.cancel()
    return Outcome(frames, closed)


def request_headers(encoder: hpack.Encoder, path: str, *extra: tuple[bytes, bytes]) -> bytes:
    block = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"proxy.test"),
        (b":path", path.encode()),
    ]
    return bytes(encoder.encode([*block, *extra]))


def headers_frame(stream_id: int, block: bytes, *flags: str) -> bytes:
    frame = HeadersFrame(stream_id, block)
    for flag in flags:
        frame.flags.add(flag)
    return bytes(frame.serialize())


# -- the test bed ----------------------------------------------------------------------------


@attrs.define
class Bystander:
    """A normal client asking the same proxy, one request after another, while an attack runs."""

    address: tuple[str, int]
    statuses: list[int] = attrs.Factory(list)
    progress: trio.Event = attrs.Factory(trio.Event)

    async def run(self) -> None:
        while True:
            response = await fetch(self.address, "/up/hello")
            self.statuses.append(response.status)
            self.progress.set()
            self.progress = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.statuses) < count:
            await self.progress.wait()


async def under_attack(
    nursery: trio.Nursery, tmp_path: Path, flood: bytes | Callable[[], bytes], **manager: Any
) -> tuple[Outcome, ProxyProcess, int, Bystander]:
    """Start a proxy, a bystander, then the attack; return what the attacker saw and the RSS growth."""
    proxy = await start_abuse_target(nursery, tmp_path, **manager)
    for _ in range(3):  # warm up: the code paths of both clients, before the baseline
        await fetch(proxy.address, "/up/hello")
        await attack(proxy.address, GoAwayFrame(0).serialize())
    before = proxy.rss_bytes()
    bystander = Bystander(proxy.address)
    nursery.start_soon(bystander.run)
    await bystander.wait_for(1)
    outcome = await attack(proxy.address, flood() if callable(flood) else flood)
    growth = proxy.rss_bytes() - before
    # The bystander goes on being served after the attack, too.
    await bystander.wait_for(len(bystander.statuses) + 5)
    return outcome, proxy, growth, bystander


def assert_contained(outcome: Outcome, growth: int, bystander: Bystander, codes: set[ErrorCodes]) -> None:
    goaway = outcome.goaway
    assert goaway is not None, f"no GOAWAY in {[type(f).__name__ for f in outcome.frames]}"
    assert ErrorCodes(goaway.error_code) in codes
    assert outcome.closed
    assert growth < MEMORY_BOUND, f"the proxy grew by {growth / 1e6:.1f} MB"
    assert len(bystander.statuses) >= 6
    assert set(bystander.statuses) == {200}


# -- the attacks -----------------------------------------------------------------------------


async def test_rapid_reset_gets_goaway_enhance_your_calm(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Each stream asks the upstream for a slow answer, and is cancelled at once: work for the
    # proxy and the upstream, none for the attacker (CVE-2023-44487).
    encoder = hpack.Encoder()
    pairs = []
    for i in range(5000):
        sid = 2 * i + 1
        pairs.append(
            headers_frame(sid, request_headers(encoder, "/up/delay/2000"), "END_HEADERS", "END_STREAM")
        )
        pairs.append(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize())
    with trio.fail_after(20):
        outcome, proxy, growth, bystander = await under_attack(nursery, tmp_path, b"".join(pairs))
    assert_contained(outcome, growth, bystander, {ErrorCodes.ENHANCE_YOUR_CALM})
    assert outcome.goaway is not None
    # GOAWAY names the last stream the proxy took: well short of the 5000 sent.
    assert 0 < outcome.goaway.last_stream_id < 2 * 1000
    assert [e["reason"] for e in proxy.logged("http2_abuse_detected")] == [
        "rapid reset: too many streams cancelled by the client"
    ]


async def test_continuation_flood_gets_goaway(nursery: trio.Nursery, tmp_path: Path) -> None:
    # A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION after
    # CONTINUATION (5 MB of them), each full of header bytes the proxy would have to keep.
    encoder = hpack.Encoder()
    parts = [headers_frame(1, request_headers(encoder, "/"))]
    filler = bytes(encoder.encode([(b"x-filler", b"f" * 1000)]))
    parts += [ContinuationFrame(1, filler).serialize() for _ in range(5000)]
    with trio.fail_after(20):
        outcome, proxy, growth, bystander = await under_attack(nursery, tmp_path, b"".join(parts))
    assert_contained(outcome, growth, bystander, {ErrorCodes.PROTOCOL_ERROR, ErrorCodes.ENHANCE_YOUR_CALM})
    assert proxy.logged("http2_protocol_error")


@pytest.mark.parametrize(
    ("limit", "size"),
    [(None, 200_000), (4096, 8192)],
    ids=["over-the-default-limit", "over-a-configured-limit"],
)
async def test_a_header_list_over_max_header_list_size_gets_goaway(
    nursery: trio.Nursery, tmp_path: Path, limit: int | None, size: int
) -> None:
    # One header block, larger than the limit the proxy advertised in its SETTINGS, in
    # HEADERS + CONTINUATION frames of at most 16 KiB.
    encoder = hpack.Encoder()
    block = request_headers(encoder, "/", *[(b"x-big-%d" % i, b"v" * 1000) for i in range(size // 1000)])
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    parts = [headers_frame(1, chunks[0], "END_STREAM", *(["END_HEADERS"] if len(chunks) == 1 else []))]
    for i, chunk in enumerate(chunks[1:], start=2):
        frame = ContinuationFrame(1, chunk)
        if i == len(chunks):
            frame.flags.add("END_HEADERS")
        parts.append(frame.serialize())
    manager = {"http2": {"max_header_list_size": limit}} if limit is not None else {}
    with trio.fail_after(20):
        outcome, _, growth, bystander = await under_attack(nursery, tmp_path, b"".join(parts), **manager)
    assert_contained(outcome, growth, bystander, {ErrorCodes.ENHANCE_YOUR_CALM})
    assert not [f for f in outcome.frames if isinstance(f, HeadersFrame)], "the request was served"


async def test_settings_flood_gets_goaway_enhance_your_calm(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Every SETTINGS frame obliges the proxy to answer with an ACK (CVE-2019-9515).
    flood = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535}).serialize() * 20000
    with trio.fail_after(20):
        outcome, proxy, growth, bystander = await under_attack(nursery, tmp_path, flood)
    assert_contained(outcome, growth, bystander, {ErrorCodes.ENHANCE_YOUR_CALM})
    acks = [f for f in outcome.frames if isinstance(f, SettingsFrame) and "ACK" in f.flags]
    assert len(acks) <= 200, "the flood was answered frame for frame instead of stopped"
    assert [e["reason"] for e in proxy.logged("http2_abuse_detected")] == ["SETTINGS or PING flood"]


async def test_ping_flood_gets_goaway_enhance_your_calm(nursery: trio.Nursery, tmp_path: Path) -> None:
    # Every PING obliges the proxy to answer with a PING ACK (CVE-2019-9512).
    flood = b"".join(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(20000))
    with trio.fail_after(20):
        outcome, proxy, growth, bystander = await under_attack(nursery, tmp_path, flood)
    assert_contained(outcome, growth, bystander, {ErrorCodes.ENHANCE_YOUR_CALM})
    pongs = [f for f in outcome.frames if isinstance(f, PingFrame) and "ACK" in f.flags]
    assert len(pongs) <= 200, "the flood was answered frame for frame instead of stopped"
    assert [e["reason"] for e in proxy.logged("http2_abuse_detected")] == ["SETTINGS or PING flood"]
