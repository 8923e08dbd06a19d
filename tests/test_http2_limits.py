"""HTTP/2 stream limits, frames that carry nothing, and clients whose windows stay shut.

- Streams past the advertised SETTINGS_MAX_CONCURRENT_STREAMS are refused one by one
  (RST_STREAM REFUSED_STREAM) and the others complete, on the same connection; before,
  the whole connection went with GOAWAY(PROTOCOL_ERROR) and no stream completed.
- Floods of frames that cost work and carry nothing (empty DATA without END_STREAM,
  PRIORITY, tiny WINDOW_UPDATE, empty CONTINUATION) end in GOAWAY(ENHANCE_YOUR_CALM),
  like the RST_STREAM, SETTINGS and PING floods (tests/test_http2_abuse.py).
- Thousands of empty DATA frames within the budget are read as nothing: the body
  reader looped one recursion level per empty chunk and ended in a RecursionError (a
  500 without END_STREAM).
- A stream whose window stays at zero is reset (CANCEL) after the stream idle timeout,
  never ended with END_STREAM as if complete, and its upstream request is released.
"""

from __future__ import annotations

from pathlib import Path

import hpack
import pytest
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_http2_abuse import PREFACE, assert_contained, headers_frame, request_headers, under_attack
from test_slow_peers import wait_until

from meshcore.runtime.proxy import Proxy
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

DEADLINE = 15


class RawH2:
    """A raw HTTP/2 client connection: frames out as bytes, frames in as hyperframe objects."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.encoder = hpack.Encoder()

    @classmethod
    async def open(cls, address: tuple[str, int], settings: dict[int, int] | None = None) -> RawH2:
        client = cls(await trio.open_tcp_stream(*address))
        await client.stream.send_all(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        return client

    async def next_frame(self) -> Frame | None:
        """The next frame, None when the server closed the connection."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                    self.buffer = self.buffer[9 + length :]
                    return frame
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data


async def start(nursery: trio.Nursery, **manager: object) -> Proxy:
    upstream = await nursery.start(serve_upstream)
    routes = [
        {"name": "up", "match": {"prefix": "/up/"}, "prefix_rewrite": "/", "cluster": "backend"},
        {"name": "ok", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok\n"}},
    ]
    return await start_proxy(nursery, http_proxy_config([upstream], routes=routes, manager=manager))


async def test_streams_past_the_limit_are_refused_and_the_others_complete(nursery: trio.Nursery) -> None:
    proxy = await start(nursery, http2={"max_concurrent_streams": 100})
    with trio.fail_after(DEADLINE):
        client = await RawH2.open(proxy.address("ingress"))
        # 110 streams at once, each waiting 300 ms on the upstream: all open together.
        await client.stream.send_all(
            b"".join(
                headers_frame(
                    2 * i + 1, request_headers(client.encoder, "/up/delay/300"), "END_HEADERS", "END_STREAM"
                )
                for i in range(110)
            )
        )
        answered: set[int] = set()
        refused: set[int] = set()
        others: list[Frame] = []
        while len(answered) + len(refused) < 110:
            frame = await client.next_frame()
            assert frame is not None, "the proxy closed the connection"
            if isinstance(frame, DataFrame) and "END_STREAM" in frame.flags:
                answered.add(frame.stream_id)
            elif isinstance(frame, RstStreamFrame):
                assert frame.error_code == ErrorCodes.REFUSED_STREAM
                refused.add(frame.stream_id)
            elif isinstance(frame, GoAwayFrame):
                others.append(frame)
        await client.stream.aclose()
    assert (len(answered), len(refused), others) == (100, 10, [])
    assert refused == {2 * i + 1 for i in range(100, 110)}  # the last ten
    nursery.cancel_scope.cancel()


def _open_stream(encoder: hpack.Encoder, sid: int, path: str = "/up/echo") -> bytes:
    block = request_headers(encoder, path, (b"content-length", b"2"))
    return headers_frame(sid, block, "END_HEADERS")


def empty_data() -> bytes:
    encoder = hpack.Encoder()
    return _open_stream(encoder, 1) + DataFrame(1, b"").serialize() * 20000


def priority() -> bytes:
    return b"".join(
        PriorityFrame(2 * i + 1, depends_on=0, stream_weight=16).serialize() for i in range(20000)
    )


def tiny_window_updates() -> bytes:
    return WindowUpdateFrame(0, window_increment=1).serialize() * 20000


def empty_continuations() -> bytes:
    # Header blocks of 60 empty CONTINUATION frames each (h2 allows up to 64 per block).
    encoder = hpack.Encoder()
    parts = []
    for i in range(200):
        sid = 2 * i + 1
        parts.append(headers_frame(sid, request_headers(encoder, "/"), "END_STREAM"))
        parts += [ContinuationFrame(sid, b"").serialize()] * 59
        last = ContinuationFrame(sid, b"")
        last.flags.add("END_HEADERS")
        parts.append(last.serialize())
    return b"".join(parts)


@pytest.mark.parametrize("flood", [empty_data, priority, tiny_window_updates, empty_continuations])
async def test_frames_that_carry_nothing_have_a_budget(
    nursery: trio.Nursery, tmp_path: Path, flood: object
) -> None:
    assert callable(flood)
    with trio.fail_after(20):
        outcome, proxy, growth, bystander = await under_attack(nursery, tmp_path, flood())
    assert_contained(outcome, growth, bystander, {ErrorCodes.ENHANCE_YOUR_CALM})
    [entry] = proxy.logged("http2_abuse_detected")
    assert entry["reason"].startswith("flood of frames that carry nothing")
    nursery.cancel_scope.cancel()


async def test_thousands_of_empty_data_frames_within_the_budget_are_read_as_nothing(
    nursery: trio.Nursery,
) -> None:
    proxy = await start(nursery, http2={"max_empty_frames_burst": 100_000})
    with trio.fail_after(DEADLINE):
        client = await RawH2.open(proxy.address("ingress"))
        end = DataFrame(1, b"ok")
        end.flags.add("END_STREAM")
        await client.stream.send_all(
            _open_stream(client.encoder, 1) + DataFrame(1, b"").serialize() * 5000 + end.serialize()
        )
        status = None
        body = b""
        while True:
            frame = await client.next_frame()
            assert frame is not None
            if isinstance(frame, HeadersFrame):
                status = next(iter(hpack.Decoder().decode(frame.data, raw=True)))[1]
            elif isinstance(frame, DataFrame):
                body += frame.data
                if "END_STREAM" in frame.flags:
                    break
            assert not isinstance(frame, RstStreamFrame | GoAwayFrame), frame
        await client.stream.aclose()
    assert (status, body) == (b"200", b"ok")
    nursery.cancel_scope.cancel()


async def test_a_stream_whose_window_stays_shut_is_reset_after_the_idle_timeout(
    nursery: trio.Nursery,
) -> None:
    proxy = await start(nursery, stream_idle_timeout="500ms")
    with trio.fail_after(DEADLINE):
        # A window of 0: the proxy may send the head, never a byte of the body.
        client = await RawH2.open(proxy.address("ingress"), {SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        await client.stream.send_all(
            headers_frame(1, request_headers(client.encoder, "/up/bytes/100000"), "END_HEADERS", "END_STREAM")
        )
        frames: list[Frame] = []
        while not any(isinstance(f, RstStreamFrame) for f in frames):
            frame = await client.next_frame()
            assert frame is not None
            frames.append(frame)
        await client.stream.aclose()
    [reset] = [f for f in frames if isinstance(f, RstStreamFrame)]
    assert reset.error_code == ErrorCodes.CANCEL
    assert not [f for f in frames if "END_STREAM" in f.flags], "ended as if complete"
    with trio.fail_after(DEADLINE):  # the upstream request was released
        await wait_until(lambda: not proxy.stats.value("cluster_upstream_rq_active", cluster="backend"))
    nursery.cancel_scope.cancel()


async def test_a_response_of_known_length_ends_with_its_last_data_frame(nursery: trio.Nursery) -> None:
    proxy = await start(nursery)
    with trio.fail_after(DEADLINE):
        client = await RawH2.open(proxy.address("ingress"))
        head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"proxy.test"), (b":path", b"/")]
        await client.stream.send_all(
            HeadersFrame(1, client.encoder.encode(head), flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
        frames: list[Frame] = []
        while not frames or "END_STREAM" not in frames[-1].flags:
            frame = await client.next_frame()
            assert frame is not None
            if frame.stream_id == 1:
                frames.append(frame)
        # HEADERS, then the body in one DATA frame carrying END_STREAM (not an empty DATA frame after it).
        assert [type(f).__name__ for f in frames] == ["HeadersFrame", "DataFrame"]
        assert frames[1].data == b"ok\n"  # type: ignore[attr-defined]
        await client.stream.aclose()
