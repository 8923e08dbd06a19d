"""The ``connection_limit`` L4 filter: in memory on a virtual clock, then over loopback sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from meshcore import (
    ConfigError,
    Connection,
    Duration,
    FilterContext,
    Snapshot,
    Stats,
    build_registry,
    snapshot_from_data,
)
from meshcore.filters.connection_limit import ConnectionLimit, ConnectionLimitConfig
from meshcore.runtime.cluster_manager import ClusterManager
from meshcore.testing.harness import start_proxy, tcp_proxy_config

MemoryStream = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


def no_picker(_cluster: Any) -> Any:
    msg = "connection_limit never picks an endpoint"
    raise AssertionError(msg)


def make_filter(max_connections: int, delay: float = 0) -> tuple[ConnectionLimit, Stats]:
    stats = Stats()
    context = FilterContext(
        listener="test",
        snapshot=Snapshot(),
        clusters=ClusterManager(stats, no_picker),
        stats=stats,
        registry=build_registry(),
    )
    config = ConnectionLimitConfig(max_connections=max_connections, delay=Duration(delay))
    return ConnectionLimit(config, context), stats


def connection(number: int) -> tuple[MemoryStream, Connection]:
    """A client end and the proxy's Connection for it, joined in memory."""
    client, server = trio.testing.memory_stream_pair()
    peer = f"127.0.0.1:{40000 + number}"
    return client, Connection(server, id=number, peer=peer, local="127.0.0.1:8080", listener="test")


class Terminal:
    """The rest of the chain: records connections and holds them until released."""

    def __init__(self) -> None:
        self.served: list[int] = []
        self.entered = trio.Event()
        self.release = trio.Event()

    async def __call__(self, conn: Connection) -> None:
        self.served.append(conn.id)
        self.entered.set()
        await self.release.wait()


# -- in memory ---------------------------------------------------------------------------------


async def test_a_rejected_connection_is_held_for_the_delay_then_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit, stats = make_filter(1, delay=5)
    terminal = Terminal()
    _, first = connection(1)
    client, second = connection(2)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(limit, first, terminal)
            await terminal.entered.wait()
            start = autojump_clock.current_time()
            await limit(second, terminal)  # returns once it has closed the connection
            assert autojump_clock.current_time() - start == 5
            assert await client.receive_some() == b""
            assert terminal.served == [1]
            assert (stats.value("connection_limit_active", listener="test"), limit.active) == (1, 1)
            assert stats.value("connection_limit_rejected", listener="test") == 1
            terminal.release.set()
    assert (stats.value("connection_limit_active", listener="test"), limit.active) == (0, 0)


async def test_without_a_delay_a_rejected_connection_closes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit, _ = make_filter(2)
    terminal = Terminal()
    conns = [connection(i) for i in range(1, 5)]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _, conn in conns[:2]:
                nursery.start_soon(limit, conn, terminal)
            await trio.testing.wait_all_tasks_blocked()
            start = autojump_clock.current_time()
            for client, conn in conns[2:]:
                await limit(conn, terminal)
                assert await client.receive_some() == b""
            assert autojump_clock.current_time() == start
            terminal.release.set()
    assert sorted(terminal.served) == [1, 2]


async def test_a_connection_that_fails_downstream_frees_its_place() -> None:
    limit, stats = make_filter(1)

    async def failing(_conn: Connection) -> None:
        msg = "upstream went away"
        raise OSError(msg)

    with trio.fail_after(5):
        for number in (1, 2):
            with pytest.raises(OSError, match="went away"):
                await limit(connection(number)[1], failing)
    assert limit.active == 0
    assert stats.value("connection_limit_rejected", listener="test") == 0


# -- over loopback -----------------------------------------------------------------------------


async def serve_echo(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A TCP echo upstream on a loopback port; reports ``(host, port)``."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(echo, listeners, handler_nursery=nursery)


def limited_config(upstream: tuple[str, int], **limit: Any) -> dict[str, Any]:
    config = tcp_proxy_config([upstream])
    config["listeners"][0]["filter_chains"][0]["filters"].insert(0, {"connection_limit": limit})
    return config


async def echoes(stream: trio.SocketStream) -> bool:
    """Whether a round trip through the proxy to the echo upstream works."""
    await stream.send_all(b"ping")
    return await stream.receive_some(64) == b"ping"


async def wait_until(condition: Callable[[], bool]) -> None:
    """Wait, checkpoint by checkpoint, until ``condition()`` holds (bounded by the caller)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked()


async def test_past_the_limit_connections_are_closed_and_a_freed_place_is_taken_again(
    nursery: trio.Nursery,
) -> None:
    upstream = await nursery.start(serve_echo)
    proxy = await start_proxy(nursery, limited_config(upstream, max_connections=2))
    address = proxy.address("ingress")

    def stat(name: str) -> int | float:
        return proxy.stats.value(name, listener="ingress")

    with trio.fail_after(10):
        first = await trio.open_tcp_stream(*address)
        second = await trio.open_tcp_stream(*address)
        assert await echoes(first)
        assert await echoes(second)
        assert stat("connection_limit_active") == 2
        third = await trio.open_tcp_stream(*address)
        with trio.fail_after(2):  # promptly
            assert await third.receive_some(64) == b""
        assert (stat("connection_limit_active"), stat("connection_limit_rejected")) == (2, 1)
        await first.aclose()
        await wait_until(lambda: stat("connection_limit_active") == 1)
        fourth = await trio.open_tcp_stream(*address)
        assert await echoes(fourth)
        assert await echoes(second)
        assert (stat("connection_limit_active"), stat("connection_limit_rejected")) == (2, 1)
        for stream in (second, third, fourth):
            await stream.aclose()
        await wait_until(lambda: stat("connection_limit_active") == 0)


async def test_a_rejected_socket_stays_open_for_the_delay(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_echo)
    proxy = await start_proxy(nursery, limited_config(upstream, max_connections=1, delay="300ms"))
    address = proxy.address("ingress")
    with trio.fail_after(10):
        held = await trio.open_tcp_stream(*address)
        assert await echoes(held)
        start = trio.current_time()
        rejected = await trio.open_tcp_stream(*address)
        assert await rejected.receive_some(64) == b""
        waited = trio.current_time() - start
        await held.aclose()
        await rejected.aclose()
    assert 0.3 <= waited < 2  # real time: the delay is the behaviour under test


# -- config ------------------------------------------------------------------------------------

PATH = "listeners[0].filter_chains[0].filters[0].connection_limit"


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        ({}, f"{PATH}.max_connections: is required"),
        ({"max_connections": 0}, f"{PATH}.max_connections: must be >= 1, got 0"),
        ({"max_connections": "10"}, f"{PATH}.max_connections: must be an integer, got '10'"),
        ({"max_connections": 1, "delay": "-1s"}, f"{PATH}.delay: must be >= 0, got '-1s'"),
        ({"max_connections": 1, "dealy": "1s"}, f"{PATH}.dealy: unknown field; did you mean 'delay'?"),
    ],
)
def test_bad_configs_are_reported_with_their_field_path(limit: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        snapshot_from_data(limited_config(("127.0.0.1", 1), **limit), build_registry())
    assert [str(p) for p in info.value.problems] == [problem]


def test_it_does_not_end_a_chain() -> None:
    config = limited_config(("127.0.0.1", 1), max_connections=1)
    del config["listeners"][0]["filter_chains"][0]["filters"][1]
    with pytest.raises(ConfigError) as info:
        snapshot_from_data(config, build_registry())
    assert [str(p) for p in info.value.problems] == [
        "listeners[0].filter_chains[0].filters[0]: the last filter must end the chain, 'connection_limit' does not"
    ]
