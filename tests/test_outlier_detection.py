"""Outlier detection: passive health from real answers, Envoy's algorithm.

End to end, with three real upstreams on loopback that count what reaches them: the one
that fails is ejected after exactly the configured number of errors, traffic moves to the
other two, it returns after the ejection time, and when all fail the panic threshold
sends traffic to all of them again. The detector's arithmetic (success rate, failure
percentage, growing ejection times, the ejection cap) is checked on a virtual clock.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import trio
import trio.testing
from _faulty import FaultyUpstream
from structlog.testing import capture_logs

from meshcore.config import Address, Endpoint, snapshot_from_data
from meshcore.config import Cluster as ClusterConfig
from meshcore.config.traffic import OutlierDetection
from meshcore.filters.load_balancers import RoundRobin
from meshcore.flags import ResponseFlag
from meshcore.runtime.cluster import Cluster
from meshcore.runtime.host import Host
from meshcore.runtime.outlier import OutlierDetector
from meshcore.runtime.stats import Stats
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

# -- the detector on a virtual clock ------------------------------------------------------------


def _cluster(hosts: int, **detection: Any) -> Cluster:
    """A cluster of ``hosts`` endpoints with its outlier detector (not running: tests tick it)."""
    endpoints = tuple(Endpoint(address=Address(f"127.0.0.{i + 1}", 80)) for i in range(hosts))
    config = ClusterConfig(name="c", endpoints=endpoints, outlier_detection=OutlierDetection(**detection))
    cluster = Cluster(config, RoundRobin(), Stats())
    cluster.outlier = OutlierDetector(cluster, OutlierDetection(**detection), cluster.stats)
    return cluster


def _detector(cluster: Cluster) -> OutlierDetector:
    assert cluster.outlier is not None
    return cluster.outlier


def _ejected(host: Host) -> bool:
    return host.ejected


async def test_consecutive_5xx_eject_after_exactly_the_configured_count(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    cluster = _cluster(3, consecutive_5xx=3, max_ejection_percent=50)
    bad, *good = cluster.hosts
    detector = _detector(cluster)
    for _ in range(2):
        detector.report(bad, 503)
    detector.report(bad, 200)  # a success starts the count again
    detector.report(bad, 500)
    detector.report(bad, 502)
    assert not _ejected(bad)
    detector.report(bad, 504)
    assert _ejected(bad)
    assert cluster.host_set.levels == [good]
    assert cluster.stats.value("cluster_outlier_ejections_total", cluster="c", reason="consecutive_5xx") == 1


async def test_an_ejection_lasts_base_time_times_the_number_of_ejections(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    cluster = _cluster(
        3, consecutive_5xx=1, interval=1, base_ejection_time=10, max_ejection_time=25, max_ejection_percent=50
    )
    bad = cluster.hosts[0]
    detector = _detector(cluster)

    async def ejected_for() -> float:
        detector.report(bad, 503)
        assert _ejected(bad)
        start = trio.current_time()
        while bad.ejected:
            await trio.sleep(1)
            detector.tick()
        return trio.current_time() - start

    assert await ejected_for() == 10
    assert await ejected_for() == 20
    assert await ejected_for() == 25  # capped by max_ejection_time
    # Healthy intervals bring the multiplier down again, one per interval.
    for _ in range(5):
        await trio.sleep(1)
        detector.tick()
    assert await ejected_for() == 10


async def test_success_rate_ejects_the_endpoint_far_below_the_others(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    cluster = _cluster(
        5, success_rate_request_volume=50, success_rate_minimum_hosts=5, max_ejection_percent=100
    )
    detector = _detector(cluster)
    for host, failures in zip(cluster.hosts, [1, 2, 0, 1, 30], strict=True):
        failing = {k * 100 // failures for k in range(failures)}  # spread: never 5 in a row
        for i in range(100):
            detector.report(host, 500 if i in failing else 200)
    with capture_logs() as logs:
        detector.tick()
    assert [h.ejected for h in cluster.hosts] == [False, False, False, False, True]
    (entry,) = [e for e in logs if e["event"] == "endpoint_ejected"]
    assert entry["reason"] == "success_rate"
    assert entry["success_rate"] == 70.0


async def test_failure_percentage_ejects_when_enforced(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    cluster = _cluster(
        5,
        enforcing_failure_percentage=100,
        failure_percentage_threshold=50,
        failure_percentage_request_volume=10,
        enforcing_success_rate=0,
        max_ejection_percent=100,
    )
    detector = _detector(cluster)
    for host, failures in zip(cluster.hosts, [0, 1, 5, 6, 10], strict=True):
        for i in range(10):
            detector.report(host, 500 if i < failures else 200)
    detector.tick()
    assert [h.ejected for h in cluster.hosts] == [False, False, True, True, True]


async def test_the_ejection_cap_holds_and_can_let_one_through(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    capped = _cluster(3, consecutive_5xx=1)  # 10%: one of three is already 33%
    _detector(capped).report(capped.hosts[0], 503)
    assert not capped.hosts[0].ejected
    assert capped.stats.value("cluster_outlier_ejections_overflow", cluster="c") == 1
    one = _cluster(3, consecutive_5xx=1, always_eject_one_host=True)
    for host in one.hosts:
        _detector(one).report(host, 503)
    assert [h.ejected for h in one.hosts] == [True, False, False]


async def test_local_origin_failures_count_apart_when_split(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    cluster = _cluster(
        3,
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
        max_ejection_percent=50,
    )
    host = cluster.hosts[0]
    detector = _detector(cluster)
    for _ in range(4):
        detector.report(host, 503)  # external errors: not local-origin ones
    detector.report(host, None, ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    assert not _ejected(host)
    detector.report(host, None, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
    assert _ejected(host)
    # Overflow is the proxy's own limit, never the endpoint's fault.
    other = cluster.hosts[1]
    for _ in range(10):
        detector.report(other, None, ResponseFlag.UPSTREAM_OVERFLOW)
    assert not _ejected(other)


async def test_unsplit_local_origin_failures_count_as_5xx(
    autojump_clock: trio.testing.MockClock,  # noqa: ARG001 - virtual time: the sleeps cost nothing
) -> None:
    cluster = _cluster(3, consecutive_5xx=3, max_ejection_percent=50)
    host = cluster.hosts[0]
    detector = _detector(cluster)
    detector.report(host, None, ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    detector.report(host, None, ResponseFlag.UPSTREAM_RESET)
    assert not _ejected(host)
    detector.report(host, None, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
    assert _ejected(host)


# -- end to end -----------------------------------------------------------------------------------


def _config(upstreams: list[FaultyUpstream], **cluster: Any) -> dict[str, Any]:
    detection = {
        "consecutive_5xx": 3,
        "interval": "100ms",
        "base_ejection_time": "1s",
        "max_ejection_percent": 50,
    }
    detection.update(cluster.pop("outlier_detection", {}))
    return http_proxy_config(
        [u.endpoint for u in upstreams], cluster={"outlier_detection": detection, **cluster}
    )


async def _upstreams(nursery: trio.Nursery, *defaults: str) -> list[FaultyUpstream]:
    upstreams = []
    for i, default in enumerate(defaults):
        upstream = FaultyUpstream(name=f"u{i}", default=default)
        await nursery.start(upstream.serve)
        upstreams.append(upstream)
    return upstreams


async def _send(address: tuple[str, int], count: int) -> collections.Counter[int]:
    statuses: collections.Counter[int] = collections.Counter()
    for i in range(count):
        statuses[(await fetch(address, f"/{i}")).status] += 1
    return statuses


def _host(proxy: Any, upstream: FaultyUpstream | str) -> Host:
    endpoint = upstream if isinstance(upstream, str) else upstream.endpoint
    cluster: Cluster = proxy.clusters.clusters["backend"]
    return next(h for h in cluster.hosts if h.label == endpoint)


async def test_a_failing_endpoint_of_three_is_ejected_traffic_moves_and_it_returns(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(15):
        bad, good1, good2 = await _upstreams(nursery, "503", "200", "200")
        # Two seconds of ejection: the 30 requests below must fit in it on a loaded machine.
        config = _config([bad, good1, good2], outlier_detection={"base_ejection_time": "2s"})
        proxy = await start_proxy(nursery, config)
        address = proxy.address("ingress")
        with capture_logs() as logs:
            await _send(address, 12)
            assert bad.count == 3  # ejected after exactly consecutive_5xx errors
            assert _host(proxy, bad).ejected
            detector = proxy.clusters.clusters["backend"].outlier
            assert detector is not None
            # When it was ejected (its third failure, amid the twelve requests above).
            ejected_at = detector.states[_host(proxy, bad)].ejected_at
            assert ejected_at is not None
            statuses = await _send(address, 30)
            assert statuses == {200: 30}  # everything on the other two now
            assert bad.count == 3
            assert abs(good1.count - good2.count) <= 1
            bad.default = "200"  # it recovers meanwhile
            while _host(proxy, bad).ejected:
                await proxy.clusters.clusters["backend"].wait_health_change()
            returned_after = trio.current_time() - ejected_at
            await _send(address, 9)
    # Back after base_ejection_time (2 s), at the first interval tick (100 ms) past it; the
    # upper bound leaves a loaded machine a second of slack.
    assert 2.0 <= returned_after < 2.0 + 0.1 + 1.0, returned_after
    assert bad.count == 3 + 3  # it takes its share again
    events = [(e["event"], e["endpoint"]) for e in logs if e["event"].startswith("endpoint_")]
    assert events == [("endpoint_ejected", bad.endpoint), ("endpoint_returned", bad.endpoint)]
    assert proxy.stats.value("cluster_outlier_ejections_active", cluster="backend") == 0


async def test_when_all_fail_the_panic_threshold_sends_traffic_to_all_again(nursery: trio.Nursery) -> None:
    with trio.fail_after(15):
        upstreams = await _upstreams(nursery, "503", "503", "503")
        config = _config(
            upstreams, outlier_detection={"max_ejection_percent": 100, "base_ejection_time": "30s"}
        )
        proxy = await start_proxy(nursery, config)
        address = proxy.address("ingress")
        await _send(address, 15)  # two ejected, panic spreads the rest over all three again
        cluster = proxy.clusters.clusters["backend"]
        assert all(h.ejected for h in cluster.hosts)
        assert cluster.host_set.panic
        before = sum(u.count for u in upstreams)
        statuses = await _send(address, 9)
        # Below 50% healthy: every endpoint is used again (the answers are theirs, not UH).
        assert statuses == {503: 9}
        assert sum(u.count for u in upstreams) == before + 9
        assert all(u.count > 3 for u in upstreams)
        # With the panic threshold at 0, no healthy endpoint means no endpoint: UH.
        config["clusters"][0]["healthy_panic_threshold"] = 0
        proxy.apply(snapshot_from_data(config, proxy.registry))
        cluster.refresh_health()
        response = await fetch(address, "/")
    assert (response.status, response.header("x-meshcore-flags")) == (503, "UH")


async def test_a_dead_endpoint_is_ejected_on_connect_failures_and_retries_hide_it(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(15):
        dead, live1, live2 = await _upstreams(nursery, "200", "200", "200")
        config = _config(
            [dead, live1, live2],
            outlier_detection={
                "split_external_local_origin_errors": True,
                "consecutive_local_origin_failure": 2,
            },
        )
        config["route_configs"][0]["virtual_hosts"][0]["routes"][0]["retry_policy"] = {
            "retry_on": "connect-failure"
        }
        dead_endpoint = dead.endpoint
        dead.stop()
        proxy = await start_proxy(nursery, config)
        statuses = await _send(proxy.address("ingress"), 20)
    assert statuses == {200: 20}
    assert _host(proxy, dead_endpoint).ejected
    # Two connect failures ejected it; every request was answered by the two live ones.
    assert live1.count + live2.count == 20
    assert proxy.stats.value("cluster_upstream_cx_connect_fail", cluster="backend") == 2


@pytest.mark.parametrize("field", ["max_ejection_time"])
def test_max_ejection_time_below_base_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match="must be >= base_ejection_time"):
        OutlierDetection(base_ejection_time=60, **{field: 30})  # type: ignore[arg-type]
