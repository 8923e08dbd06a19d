"""Overload protection: connection limits, and the overload manager shedding load as memory runs out.

The memory thresholds are lowered below what the process uses, one action at a time, on
a running proxy (a new Snapshot each time): keep-alive goes, then new requests get 503,
then new connections wait in the backlog, and everything comes back once the thresholds
rise again. Each action is logged and counted.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
from structlog.testing import capture_logs
from test_slow_peers import wait_until

from meshcore.config import snapshot_from_data
from meshcore.registry import build_registry
from meshcore.runtime.overload import OverloadAction, resident_memory
from meshcore.runtime.proxy import Proxy
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import serve_upstream

DEADLINE = 10


async def ask(address: tuple[str, int], *, close: bool = False) -> bytes:
    """One request; the response head (and what came with it)."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        extra = b"connection: close\r\n" if close else b""
        await stream.send_all(b"GET /bytes/3 HTTP/1.1\r\nhost: a\r\n" + extra + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
        return data


async def test_connections_past_the_listener_and_process_limits_are_closed_at_once(
    nursery: trio.Nursery,
) -> None:
    upstream = await nursery.start(serve_upstream)
    config = http_proxy_config([upstream], listener={"max_connections": 2})
    proxy = await start_proxy(nursery, config)
    address = proxy.address("ingress")
    with trio.fail_after(DEADLINE):
        held = [await trio.open_tcp_stream(*address) for _ in range(2)]
        for stream in held:  # both served
            await stream.send_all(b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        third = await trio.open_tcp_stream(*address)
        assert await third.receive_some(65536) == b""  # closed at once, nothing served
        await third.aclose()
        assert proxy.stats.value("listener_cx_overflow", listener="ingress") == 1
        await held.pop().aclose()
        await wait_until(lambda: proxy.listeners["ingress"].active == 1)
        assert (await ask(address, close=True)).startswith(b"HTTP/1.1 200 ")  # a freed place is taken

        # The process-wide limit, across listeners.
        for stream in held:
            await stream.aclose()
        config["overload"] = {"max_connections": 1}
        config["listeners"][0]["max_connections"] = 0
        proxy.apply(snapshot_from_data(config, build_registry()))
        await wait_until(lambda: proxy.overload.connections == 0)
        first = await trio.open_tcp_stream(*address)
        await first.send_all(b"GET /bytes/1 HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await first.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        extra = await trio.open_tcp_stream(*address)
        assert await extra.receive_some(65536) == b""
        await extra.aclose()
        assert proxy.stats.value("overload_cx_overflow") == 1
        await first.aclose()
    nursery.cancel_scope.cancel()


@attrs.define
class Bed:
    proxy: Proxy
    config: dict[str, Any]

    def shed_at(self, **thresholds: float) -> None:
        """New thresholds, as fractions of twice the memory the process uses now."""
        self.config["overload"] = {
            "max_memory": 2 * resident_memory(),
            "check_interval": "50ms",
            **thresholds,
        }
        self.proxy.apply(snapshot_from_data(self.config, build_registry()))

    async def until(self, active: set[OverloadAction]) -> None:
        with trio.fail_after(DEADLINE):
            await wait_until(lambda: self.proxy.overload.active == active)


async def test_the_overload_manager_sheds_load_in_steps_and_recovers(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    config = http_proxy_config([upstream])
    proxy = await start_proxy(nursery, config)
    address = proxy.address("ingress")
    bed = Bed(proxy, config)
    stat = proxy.stats.value
    low, high = 0.1, 1.0  # memory is at about 0.5 of max_memory: past one, short of the other
    with capture_logs() as logs:
        bed.shed_at(disable_keepalive_at=low, reject_requests_at=high, stop_accepting_at=high)
        await bed.until({OverloadAction.DISABLE_KEEPALIVE})
        with trio.fail_after(DEADLINE):
            head = await ask(address)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nconnection: close\r\n" in head.lower()

        bed.shed_at(disable_keepalive_at=low, reject_requests_at=low, stop_accepting_at=high)
        await bed.until({OverloadAction.DISABLE_KEEPALIVE, OverloadAction.REJECT_REQUESTS})
        before = stat("cluster_upstream_rq_total", cluster="backend")
        with trio.fail_after(DEADLINE):
            head = await ask(address)
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"x-meshcore-flags: OM" in head
        assert stat("cluster_upstream_rq_total", cluster="backend") == before  # shed before the chain
        assert stat("overload_rq_rejected") == 1

        bed.shed_at(disable_keepalive_at=low, reject_requests_at=low, stop_accepting_at=low)
        await bed.until(set(OverloadAction))
        with trio.fail_after(DEADLINE):
            waiting = await trio.open_tcp_stream(*address)  # the kernel's backlog takes it
            await waiting.send_all(b"GET /bytes/3 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        with trio.move_on_after(0.3) as unanswered:
            await waiting.receive_some(65536)
        assert unanswered.cancelled_caught, "a connection was accepted while accepting was stopped"

        bed.shed_at(disable_keepalive_at=high, reject_requests_at=high, stop_accepting_at=high)
        await bed.until(set())
        with trio.fail_after(DEADLINE):  # the connection that waited is served now
            reply = await waiting.receive_some(65536)
            await waiting.aclose()
        assert reply.startswith(b"HTTP/1.1 200 ")
    started = [e["action"] for e in logs if e["event"] == "overload_action_started"]
    stopped = [e["action"] for e in logs if e["event"] == "overload_action_stopped"]
    assert started == ["disable_keepalive", "reject_requests", "stop_accepting"]
    assert sorted(stopped) == sorted(started)
    for action in OverloadAction:
        assert stat("overload_actions_total", action=action.value) == 1
        assert stat("overload_action_active", action=action.value) == 0
    threshold = next(e for e in logs if e["event"] == "overload_action_started")
    assert 0 < threshold["memory"] <= threshold["max_memory"]
    nursery.cancel_scope.cancel()
