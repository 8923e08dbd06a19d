"""Active health checks: HTTP, TCP and gRPC mark endpoints down and up within their thresholds.

The gRPC checker is tried against grpcio's own health servicer; every load balancer
follows the health the checks find.

Each checker probes a real server on loopback that is made to fail and recover; the
checks are counted on the server's side, so "within the thresholds" is exact: an endpoint
turns unhealthy on its ``unhealthy_threshold``-th failed check and healthy again on its
``healthy_threshold``-th passing one.
"""

from __future__ import annotations

import binascii
import itertools
import json
import re
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import attrs
import grpc
import pytest
import trio
import trio.testing
from _faulty import FaultyUpstream
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshcore.config import snapshot_from_data
from meshcore.errors import ConfigError
from meshcore.filters.load_balancers import RoundRobin
from meshcore.registry import build_registry
from meshcore.runtime.admin import handle
from meshcore.runtime.cluster import Cluster
from meshcore.runtime.health import HealthChecking
from meshcore.runtime.host import Host
from meshcore.runtime.proxy import Proxy
from meshcore.runtime.stats import Stats
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

HEALTH = "/healthz"


def _cluster(proxy: Proxy) -> Cluster:
    cluster = proxy.clusters.get("backend")
    assert cluster is not None
    return cluster


def _host(proxy: Proxy, endpoint: str) -> Host:
    return next(h for h in _cluster(proxy).hosts if h.label == endpoint)


async def _until(proxy: Proxy, endpoint: str, *, healthy: bool) -> None:
    """Wait for the endpoint's health to become ``healthy``."""
    while _host(proxy, endpoint).healthy != healthy:
        await _cluster(proxy).wait_health_change()


def _checked(check: dict[str, Any], **timing: Any) -> dict[str, Any]:
    return {"health_checks": [{**check, "interval": "50ms", "timeout": "500ms", **timing}]}


# -- HTTP -----------------------------------------------------------------------------------------


async def test_http_checks_mark_an_endpoint_down_and_up_within_the_thresholds(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        upstream = FaultyUpstream(paths={HEALTH: "200"})
        await nursery.start(upstream.serve)
        other = FaultyUpstream(name="other", paths={HEALTH: "200"})
        await nursery.start(other.serve)
        check = _checked(
            {"http": {"path": HEALTH, "expected_statuses": [[200, 300]]}},
            unhealthy_threshold=3,
            healthy_threshold=2,
        )
        proxy = await start_proxy(
            nursery, http_proxy_config([upstream.endpoint, other.endpoint], cluster=check)
        )
        await _until(proxy, upstream.endpoint, healthy=True)
        assert upstream.count_path(HEALTH) == 1  # a new endpoint needs one passing check
        upstream.paths[HEALTH] = "503"
        before = upstream.count_path(HEALTH)
        await _until(proxy, upstream.endpoint, healthy=False)
        assert upstream.count_path(HEALTH) - before == 3  # down on the 3rd failed check
        assert proxy.stats.value("cluster_health_check_failure_total", cluster="backend") == 3
        assert _host(proxy, upstream.endpoint).health_flags() == ["failed_active_hc"]
        # Every request now goes to the other endpoint.
        for i in range(6):
            response = await fetch(proxy.address("ingress"), f"/{i}")
            assert response.header("x-upstream") == "other"
        upstream.paths[HEALTH] = "200"
        before = upstream.count_path(HEALTH)
        await _until(proxy, upstream.endpoint, healthy=True)
        assert upstream.count_path(HEALTH) - before == 2  # up on the 2nd passing check
        names = {(await fetch(proxy.address("ingress"), f"/{i}")).header("x-upstream") for i in range(4)}
    assert names == {"faulty", "other"}
    assert proxy.stats.value("cluster_membership_healthy", cluster="backend") == 2


async def test_an_endpoint_failing_its_first_check_never_gets_a_request(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sick = FaultyUpstream(name="sick", paths={HEALTH: "500"})
        await nursery.start(sick.serve)
        fine = [FaultyUpstream(name=f"fine{i}", paths={HEALTH: "200"}) for i in range(2)]
        for upstream in fine:
            await nursery.start(upstream.serve)
        endpoints = [sick.endpoint, *(u.endpoint for u in fine)]
        proxy = await start_proxy(
            nursery, http_proxy_config(endpoints, cluster=_checked({"http": {"path": HEALTH}}))
        )
        for upstream in fine:
            await _until(proxy, upstream.endpoint, healthy=True)
        for i in range(10):
            assert (await fetch(proxy.address("ingress"), f"/{i}")).status == 200
    assert sick.count_path(HEALTH) >= 1
    assert sick.count == sick.count_path(HEALTH)  # health checks only, never a request


async def test_clusters_shows_health_in_the_admin_server(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        down = FaultyUpstream(paths={HEALTH: "503"})
        await nursery.start(down.serve)
        up = FaultyUpstream(paths={HEALTH: "200"})
        await nursery.start(up.serve)
        config = http_proxy_config([down.endpoint, up.endpoint], cluster=_checked({"http": {"path": HEALTH}}))
        proxy = await start_proxy(nursery, config)
        await _until(proxy, up.endpoint, healthy=True)
        await down.wait_seen(1)
        answer = handle(proxy, "GET", "/clusters")
    (cluster,) = json.loads(answer.body)["clusters"]
    by_address = {e["address"]: e for e in cluster["endpoints"]}
    assert by_address[down.endpoint]["healthy"] is False
    assert by_address[down.endpoint]["health_flags"] == ["failed_active_hc"]
    assert by_address[up.endpoint]["healthy"] is True
    assert cluster["panic"] is False


# -- TCP ------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class PingServer:
    """Answers "PONG" to "PING" while ``healthy``, "SICK" otherwise; counts connections."""

    healthy: bool = True
    connections: int = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._one, listeners)

    async def _one(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                if await stream.receive_some(64) == b"PING":
                    # Two writes when healthy: the checker must find the payload across reads.
                    if self.healthy:
                        await stream.send_all(b"PO")
                        await stream.send_all(b"NG")
                    else:
                        await stream.send_all(b"SICK")
            except trio.BrokenResourceError:
                return


async def test_tcp_checks_send_and_expect_bytes(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        server = PingServer()
        host, port = await nursery.start(server.serve)
        check = _checked(
            {
                "tcp": {
                    "send": binascii.hexlify(b"PING").decode(),
                    "receive": [binascii.hexlify(b"PONG").decode()],
                }
            },
            unhealthy_threshold=2,
            healthy_threshold=3,
        )
        proxy = await start_proxy(nursery, http_proxy_config([(host, port)], cluster=check))
        endpoint = f"{host}:{port}"
        await _until(proxy, endpoint, healthy=True)
        server.healthy = False
        before = server.connections
        await _until(proxy, endpoint, healthy=False)
        assert server.connections - before == 2
        server.healthy = True
        before = server.connections
        await _until(proxy, endpoint, healthy=True)
        assert server.connections - before == 3


async def test_a_tcp_check_of_a_closed_port_fails(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        dead = FaultyUpstream()
        await nursery.start(dead.serve)
        dead_endpoint = dead.endpoint
        dead.stop()
        live = FaultyUpstream(name="live")
        await nursery.start(live.serve)
        proxy = await start_proxy(
            nursery, http_proxy_config([dead_endpoint, live.endpoint], cluster=_checked({"tcp": {}}))
        )
        await _until(proxy, live.endpoint, healthy=True)
        assert not _host(proxy, dead_endpoint).healthy
        response = await fetch(proxy.address("ingress"), "/")
    assert response.header("x-upstream") == "live"


# -- gRPC, against grpcio's own health servicer ---------------------------------------------------


@attrs.frozen
class HealthServer:
    port: int
    servicer: health.HealthServicer

    def set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.servicer.set("", status)
        self.servicer.set("shop.Cart", status)


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    running = HealthServer(port, servicer)
    running.set(serving=True)
    yield running
    server.stop(grace=None)


@pytest.mark.parametrize("service", ["", "shop.Cart"])
async def test_grpc_checks_follow_grpcio_health_servicer(
    nursery: trio.Nursery, health_server: HealthServer, service: str
) -> None:
    with trio.fail_after(10):
        endpoint = f"127.0.0.1:{health_server.port}"
        check = _checked({"grpc": {"service_name": service}}, unhealthy_threshold=2, healthy_threshold=2)
        proxy = await start_proxy(nursery, http_proxy_config([endpoint], cluster=check))
        await _until(proxy, endpoint, healthy=True)
        health_server.set(serving=False)
        await _until(proxy, endpoint, healthy=False)
        health_server.set(serving=True)
        await _until(proxy, endpoint, healthy=True)
    stats = proxy.stats
    failures = stats.value("cluster_health_check_failure_total", cluster="backend")
    assert failures >= 2


async def test_a_grpc_check_of_an_unknown_service_fails(
    nursery: trio.Nursery, health_server: HealthServer
) -> None:
    with trio.fail_after(10):
        endpoint = f"127.0.0.1:{health_server.port}"
        checks = _checked({"grpc": {"service_name": "no.Such"}})
        proxy = await start_proxy(nursery, http_proxy_config([endpoint], cluster=checks))
        checking = _cluster(proxy).health
        assert checking is not None
        stats = proxy.stats
        while stats.value("cluster_health_check_failure_total", cluster="backend") < 3:
            await checking.wait_result()
    assert not _host(proxy, endpoint).healthy
    assert stats.value("cluster_health_check_success_total", cluster="backend") == 0


# -- timing, on a virtual clock ---------------------------------------------------------------------


@attrs.define
class ClockedChecker:
    """A checker that notes when each check starts, and passes at once or hangs."""

    started: list[float] = attrs.Factory(list)
    hang: bool = False

    async def check(self, _host: Host) -> bool:
        self.started.append(trio.current_time())
        if self.hang:
            await trio.sleep_forever()
        return True


@pytest.mark.parametrize("jitter", [{"interval_jitter": "500ms"}, {"interval_jitter_percent": 50}])
async def test_checks_come_every_interval_plus_jitter_and_a_hung_check_fails_at_its_timeout(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the waits cost nothing
    jitter: dict[str, Any],
) -> None:
    timing = {"interval": "1s", "timeout": "200ms", "unhealthy_threshold": 2, **jitter}
    config = http_proxy_config(["127.0.0.1:1"], cluster={"health_checks": [{"tcp": {}, **timing}]})
    cluster_config = snapshot_from_data(config, build_registry(autoload=False)).cluster("backend")
    assert cluster_config is not None
    cluster = Cluster(cluster_config, RoundRobin(), Stats())
    checker = ClockedChecker()
    checking = HealthChecking(cluster, cluster_config.health_checks, [checker], cluster.stats)
    (host,) = cluster.hosts
    with trio.fail_after(60):  # virtual seconds: a check that never times out ends here
        await _timed(checking, checker, host)
    # Two checks that hung (unhealthy_threshold) were given up at the 200 ms timeout each.
    gap = checker.started[-1] - checker.started[-2]
    assert 1.2 <= gap <= 1.7, gap
    assert cluster.stats.value("cluster_health_check_failure_total", cluster="backend") == 2


def _healthy(host: Host) -> bool:
    return host.healthy


async def _timed(checking: HealthChecking, checker: ClockedChecker, host: Host) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(checking.run)
        while len(checker.started) < 21:
            await checking.wait_result()
        assert host.healthy
        gaps = [b - a for a, b in itertools.pairwise(checker.started)]
        # Each wait is the interval plus a random part of 500 ms, drawn anew each time.
        assert all(1.0 <= gap <= 1.5 for gap in gaps), gaps
        assert max(gaps) - min(gaps) > 0.2, gaps
        checker.hang = True
        hung_from = len(checker.started)
        while _healthy(host):  # a call: mypy has host.healthy narrowed to True by now
            await checking.wait_result()
        nursery.cancel_scope.cancel()
    assert len(checker.started) - hung_from == 2


# -- config ---------------------------------------------------------------------------------------


def test_a_health_check_names_exactly_one_checker() -> None:
    registry = build_registry(autoload=False)
    base = http_proxy_config(["127.0.0.1:1"])
    for checks, message in (
        ([{"interval": "1s"}], "needs exactly one health checker (grpc, http, tcp), got none"),
        ([{"http": {}, "tcp": {}}], "needs exactly one health checker (grpc, http, tcp), got 'http', 'tcp'"),
        ([{"htp": {}}], "unknown field or health checker; did you mean 'http'?"),
        ([{"http": {"paht": "/"}}], "unknown field; did you mean 'path'?"),
        ([{"tcp": {"send": "zz"}}], 'must be hex bytes such as "0a1b"'),
    ):
        base["clusters"][0]["health_checks"] = checks
        with pytest.raises(ConfigError, match=re.escape(message)):
            snapshot_from_data(base, registry)
