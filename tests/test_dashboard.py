"""The dashboard's arithmetic, without sockets: rates from two samples of a sidecar's stats, p99."""

from __future__ import annotations

from meshcore.control.dashboard import _calls_by_host, _delta, _Metrics
from meshcore.runtime.stats import Stats
from meshcore.runtime.statsdata import stats_data


def _sample(stats: Stats) -> _Metrics:
    return _Metrics.from_data(stats_data(stats))


def test_rates_and_p99_come_from_what_happened_between_two_samples() -> None:
    stats = Stats("meshcore")
    latency = stats.histogram("http_downstream_rq_time_ms", listener="outbound_http_proxy")
    for _ in range(1000):
        latency.observe(3)  # before the window: not in the p99
    before = _sample(stats)
    for _ in range(98):
        latency.observe(20)
    for _ in range(2):
        latency.observe(400)
    delta = _delta(before, _sample(stats), 5.0)
    assert (
        delta.p99("http_downstream_rq_time_ms", listener="outbound_http_proxy") == 500
    )  # its bucket's bound
    assert delta.p99("http_downstream_rq_time_ms", listener="inbound_1") is None  # no such listener


def test_calls_are_counted_by_service_with_their_classes_inbound_routes_left_out() -> None:
    stats = Stats("meshcore")
    before = _sample(stats)
    for vhost, code_class, n in (
        ("ratings.default.svc.cluster.local:80", "2xx", 8),
        ("ratings.default.svc.cluster.local:80", "5xx", 2),
        ("inbound|http|15000", "2xx", 50),
    ):
        stats.counter("route_rq_total", route="r", virtual_host=vhost).value += n
        stats.counter("route_rq_xx", route="r", virtual_host=vhost, code_class=code_class).value += n
    calls = _calls_by_host(_delta(before, _sample(stats), 5.0))
    assert set(calls) == {"ratings.default.svc.cluster.local"}
    assert dict(calls["ratings.default.svc.cluster.local"]) == {"total": 10, "2xx": 8, "5xx": 2}


def test_a_counter_that_went_back_is_a_restarted_sidecar_counting_from_zero() -> None:
    stats = Stats("meshcore")
    counter = stats.counter("cluster_upstream_rq_total", cluster="outbound|80||ratings")
    counter.value = 100
    before = _sample(stats)
    counter.value = 7
    delta = _delta(before, _sample(stats), 1.0)
    assert delta.total("cluster_upstream_rq_total") == 7
