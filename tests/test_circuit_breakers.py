"""Circuit breakers: past a cluster's limits a request fails fast (503, UO) instead of queueing.

Proven against a real slow upstream on loopback that counts, on its side, how many requests
it holds at once: 200 concurrent clients never put more than the limit on it, the requests
over the limits are answered at once, each limit counts its overflows, and a proxy process
under that load keeps its memory.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from _faulty import FaultyUpstream
from _proxy_process import start_proxy_process

from meshcore.testing.client import ClientResponse, fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

CLIENTS = 200


async def _storm(address: tuple[str, int], clients: int = CLIENTS) -> list[ClientResponse]:
    """``clients`` concurrent GETs; their answers."""
    results: list[ClientResponse] = []

    async def one() -> None:
        results.append(await fetch(address, "/slow"))

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
    return results


def _breakers(**limits: Any) -> dict[str, Any]:
    return {"circuit_breakers": limits}


async def test_200_clients_never_put_more_than_the_connection_limit_on_a_slow_upstream(
    nursery: trio.Nursery,
) -> None:
    """Ten requests held upstream, ten pending: the other 180 are answered UO meanwhile.

    The upstream holds every request until the test releases it, so "answered before the
    upstream could have answered them" is an order of events, checked as such, whatever the
    load of the machine.
    """
    held, pending = 10, 10
    over = CLIENTS - held - pending
    with trio.fail_after(30):
        upstream = FaultyUpstream(default="gate")
        address = await nursery.start(upstream.serve)
        limits = _breakers(max_connections=held, max_pending_requests=pending)
        proxy = await start_proxy(nursery, http_proxy_config([address], cluster=limits))
        results: list[ClientResponse] = []
        overflowed = trio.Event()

        async def one() -> None:
            response = await fetch(proxy.address("ingress"), "/slow")
            results.append(response)
            if len(results) == over:
                overflowed.set()

        async with trio.open_nursery() as clients:
            for _ in range(CLIENTS):
                clients.start_soon(one)
            await overflowed.wait()
            # 180 answered while the upstream still holds its ten and answered none.
            assert (upstream.active, upstream.count) == (held, held)
            assert [(r.status, r.header("x-meshcore-flags")) for r in results] == [(503, "UO")] * over
            stats = proxy.stats
            assert stats.value("cluster_upstream_rq_pending_overflow", cluster="backend") == over
            assert stats.value("cluster_upstream_rq_pending_active", cluster="backend") == pending
            assert stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="pending") == 0
            assert (
                stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="connections") == 0
            )
            upstream.release()
    statuses = collections.Counter(r.status for r in results)
    assert statuses == {200: held + pending, 503: over}
    # The upstream, counted on its side, never held more than max_connections requests.
    assert upstream.max_active == held
    assert upstream.connections == held  # the pending ten reused the ten connections
    assert stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="pending") == pending
    assert stats.value("cluster_upstream_rq_pending_active", cluster="backend") == 0


async def test_past_max_requests_a_request_fails_fast_and_the_upstream_sees_at_most_the_limit(
    nursery: trio.Nursery,
) -> None:
    limit, clients = 5, 50
    with trio.fail_after(20):
        upstream = FaultyUpstream(default="gate")
        address = await nursery.start(upstream.serve)
        config = http_proxy_config([address], cluster=_breakers(max_requests=limit))
        proxy = await start_proxy(nursery, config)
        results: list[ClientResponse] = []
        overflowed = trio.Event()

        async def one() -> None:
            results.append(await fetch(proxy.address("ingress"), "/slow"))
            if len(results) == clients - limit:
                overflowed.set()

        async with trio.open_nursery() as callers:
            for _ in range(clients):
                callers.start_soon(one)
            await overflowed.wait()
            # Five held upstream; the other 45 answered meanwhile, each UO.
            assert (upstream.active, upstream.count) == (limit, limit)
            assert {(r.status, r.header("x-meshcore-flags")) for r in results} == {(503, "UO")}
            upstream.release()
    assert collections.Counter(r.status for r in results) == {200: limit, 503: clients - limit}
    assert upstream.max_active == limit
    stats = proxy.stats
    assert stats.value("cluster_upstream_rq_overflow", cluster="backend") == clients - limit
    remaining = stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="requests")
    assert remaining == limit  # all done: the room is back


@attrs.define(eq=False)
class GatedH2Upstream:
    """An HTTP/2 upstream (prior knowledge) that holds every stream until released.

    It counts on its side the streams it received in full and the most it held at once.
    """

    streams: int = 0
    active: int = 0
    max_active: int = 0
    _gate: trio.Event = attrs.Factory(trio.Event)

    def release(self) -> None:
        self._gate.set()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        lock = trio.Lock()
        held: list[int] = []

        async def flush() -> None:
            async with lock:
                await stream.send_all(conn.data_to_send())

        def answer(stream_id: int) -> None:
            self.active -= 1
            try:
                conn.send_headers(stream_id, [(b":status", b"200"), (b"content-length", b"2")])
                conn.send_data(stream_id, b"ok", end_stream=True)
            except h2.exceptions.StreamClosedError:
                pass  # the proxy gave up on it

        async def release() -> None:
            await self._gate.wait()
            for stream_id in held:
                answer(stream_id)
            held.clear()
            await flush()

        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(release)
            await flush()
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    nursery.cancel_scope.cancel()
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self.streams += 1
                        self.active += 1
                        self.max_active = max(self.max_active, self.active)
                        if self._gate.is_set():
                            answer(event.stream_id)
                        else:
                            held.append(event.stream_id)
                await flush()


async def test_200_clients_never_put_more_than_max_requests_on_an_http2_upstream(
    nursery: trio.Nursery,
) -> None:
    """The same over HTTP/2, where one connection carries every stream: max_requests is the limit.

    The upstream holds ten streams; the other 190 requests are answered 503 UO meanwhile.
    """
    limit = 10
    over = CLIENTS - limit
    with trio.fail_after(30):
        upstream = GatedH2Upstream()
        address = await nursery.start(upstream.serve)
        cluster = {"protocol": "http2", **_breakers(max_requests=limit)}
        proxy = await start_proxy(nursery, http_proxy_config([address], cluster=cluster))
        results: list[ClientResponse] = []
        overflowed = trio.Event()

        async def one() -> None:
            response = await fetch(proxy.address("ingress"), "/slow")
            results.append(response)
            if len(results) == over:
                overflowed.set()

        async with trio.open_nursery() as clients:
            for _ in range(CLIENTS):
                clients.start_soon(one)
            await overflowed.wait()
            assert (upstream.active, upstream.streams) == (limit, limit)
            assert [(r.status, r.header("x-meshcore-flags")) for r in results] == [(503, "UO")] * over
            stats = proxy.stats
            assert stats.value("cluster_upstream_rq_overflow", cluster="backend") == over
            assert stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="requests") == 0
            upstream.release()
    assert collections.Counter(r.status for r in results) == {200: limit, 503: over}
    assert upstream.max_active == limit
    assert stats.value("cluster_circuit_breakers_remaining", cluster="backend", limit="requests") == limit


async def test_without_pending_room_a_request_that_finds_no_connection_fails_at_once(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        upstream = FaultyUpstream(default="hang")
        address = await nursery.start(upstream.serve)
        config = http_proxy_config([address], cluster=_breakers(max_connections=1, max_pending_requests=0))
        proxy = await start_proxy(nursery, config)
        async with trio.open_nursery() as clients:
            clients.start_soon(fetch, proxy.address("ingress"), "/held")
            await upstream.wait_seen(1)
            response = await fetch(proxy.address("ingress"), "/next")
            # Answered while the first request is still held upstream (it hangs for good):
            # the second did not queue behind it.
            assert upstream.active == 1
            clients.cancel_scope.cancel()
    assert (response.status, response.header("x-meshcore-flags")) == (503, "UO")
    assert upstream.count == 1


async def test_a_proxy_process_under_200_clients_keeps_its_memory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        upstream = FaultyUpstream(default="delay:200")
        address = await nursery.start(upstream.serve)
        config = http_proxy_config([address], cluster=_breakers(max_connections=10, max_pending_requests=10))
        proxy = await start_proxy_process(nursery, config, tmp_path)
        await _storm(proxy.address)  # warm up: first allocations, pools
        before = proxy.rss_bytes()
        answered = 0
        for _ in range(3):
            answered += len(await _storm(proxy.address))
        after = proxy.rss_bytes()
        proxy.process.terminate()
    assert answered == 3 * CLIENTS
    assert upstream.max_active <= 10
    # 600 more requests, most over the limits, cost no memory that stays (nothing queued).
    assert after - before < 8 * 1024 * 1024, (before, after)
