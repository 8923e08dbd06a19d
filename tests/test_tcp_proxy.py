"""tcp_proxy over real loopback sockets: bulk integrity both ways, half-close, failures, idle timeout."""

from __future__ import annotations

import hashlib
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from structlog.testing import capture_logs

from meshcore.runtime.proxy import Proxy
from meshcore.testing.harness import start_proxy, tcp_proxy_config

TOTAL = 100 * 1024 * 1024
BLOCK = 256 * 1024
RECEIVE = 256 * 1024

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_tcp(handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A raw TCP upstream on a loopback port; reports ``(host, port)``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host, port = listeners[0].socket.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        task_status.started((host, port))
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)


def blocks(seed: int) -> Iterator[bytes]:
    """TOTAL bytes of deterministic pseudo-random data, BLOCK at a time."""
    rng = random.Random(seed)  # noqa: S311 - test data, not cryptography
    for _ in range(TOTAL // BLOCK):
        yield rng.randbytes(BLOCK)


async def send_blocks(stream: trio.abc.SendStream, seed: int) -> str:
    """Send the seed's TOTAL bytes; return their sha256."""
    digest = hashlib.sha256()
    for block in blocks(seed):
        digest.update(block)
        await stream.send_all(block)
    return digest.hexdigest()


async def hash_to_eof(stream: trio.abc.ReceiveStream) -> tuple[str, int]:
    """Read until EOF; return the sha256 and the byte count."""
    digest = hashlib.sha256()
    size = 0
    while data := await stream.receive_some(RECEIVE):
        digest.update(data)
        size += len(data)
    return digest.hexdigest(), size


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while data := await stream.receive_some(RECEIVE):
        chunks.append(data)
    return b"".join(chunks)


async def start(nursery: trio.Nursery, handler: Handler, **tcp_proxy: Any) -> tuple[Proxy, tuple[str, int]]:
    upstream = await nursery.start(serve_tcp, handler)
    proxy = await start_proxy(nursery, tcp_proxy_config([upstream], **tcp_proxy))
    return proxy, proxy.address("ingress")


async def test_100_mb_to_the_upstream_arrive_intact_and_the_answer_comes_back_after_half_close(
    nursery: trio.Nursery,
) -> None:
    received: list[tuple[str, int]] = []

    async def hashing_upstream(stream: trio.SocketStream) -> None:
        async with stream:
            digest, size = await hash_to_eof(stream)  # EOF: the proxy passed the half-close on
            received.append((digest, size))
            await stream.send_all(f"{digest} {size}".encode())

    with trio.fail_after(30):
        _, address = await start(nursery, hashing_upstream)
        async with await trio.open_tcp_stream(*address) as client:
            sent = await send_blocks(client, seed=1)
            await client.send_eof()
            answer = await read_to_eof(client)
    assert received == [(sent, TOTAL)]
    assert answer == f"{sent} {TOTAL}".encode()


async def test_100_mb_from_the_upstream_arrive_intact_and_the_client_can_still_answer_after_half_close(
    nursery: trio.Nursery,
) -> None:
    upstream_saw: list[tuple[str, bytes]] = []
    upstream_done = trio.Event()

    async def sending_upstream(stream: trio.SocketStream) -> None:
        async with stream:
            sent = await send_blocks(stream, seed=2)
            await stream.send_eof()
            # Our side is closed for sending; the client's side must still reach us.
            upstream_saw.append((sent, await read_to_eof(stream)))
        upstream_done.set()

    with trio.fail_after(30):
        _, address = await start(nursery, sending_upstream)
        async with await trio.open_tcp_stream(*address) as client:
            digest, size = await hash_to_eof(client)
            await client.send_all(digest.encode())
            await client.send_eof()
            rest = await read_to_eof(client)  # the proxy closes once both sides have finished
        await upstream_done.wait()
    assert size == TOTAL
    assert upstream_saw == [(digest, digest.encode())]
    assert rest == b""


def closed_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_upstream_closes_the_downstream_connection_promptly(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        proxy = await start_proxy(nursery, tcp_proxy_config([("127.0.0.1", closed_port())]))
        with capture_logs() as logs:
            async with await trio.open_tcp_stream(*proxy.address("ingress")) as client:
                with trio.fail_after(1):
                    assert await client.receive_some(RECEIVE) == b""
    failures = [e for e in logs if e["event"] == "tcp_proxy_failed"]
    assert [(e["cluster"], e["flags"]) for e in failures] == [("backend", "UF")]
    assert proxy.stats.value("tcp_upstream_cx_fail", listener="ingress", cluster="backend") == 1


async def test_idle_timeout_closes_a_connection_on_which_nothing_moves_and_traffic_keeps_it_open(
    nursery: trio.Nursery,
) -> None:
    idle_timeout = 0.3
    upstream_closed = trio.Event()

    async def echo_upstream(stream: trio.SocketStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(RECEIVE):
                    await stream.send_all(data)
        finally:
            upstream_closed.set()

    with trio.fail_after(5):
        _, address = await start(nursery, echo_upstream, idle_timeout=f"{int(idle_timeout * 1000)}ms")
        with capture_logs() as logs:
            async with await trio.open_tcp_stream(*address) as client:
                # Traffic every third of the timeout, for twice the timeout: the connection lives.
                opened = trio.current_time()
                for i in range(6):
                    await client.send_all(b"ping %d" % i)
                    assert await client.receive_some(RECEIVE) == b"ping %d" % i
                    await trio.sleep(idle_timeout / 3)
                assert trio.current_time() - opened > 2 * idle_timeout
                await client.send_all(b"last")
                assert await client.receive_some(RECEIVE) == b"last"
                quiet_since = trio.current_time()
                # Then silence: the proxy closes both sides after the idle timeout.
                assert await client.receive_some(RECEIVE) == b""
                waited = trio.current_time() - quiet_since
            await upstream_closed.wait()
    assert idle_timeout - 0.05 <= waited < idle_timeout + 1
    assert [e["cluster"] for e in logs if e["event"] == "tcp_proxy_idle_timeout"] == ["backend"]
