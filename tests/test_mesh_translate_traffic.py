"""Translation of Istio's resilience fields, without sockets.

VirtualService ``retries`` and ``mirror``/``mirrors`` become a route's retry and mirror
policies; a DestinationRule's ``connectionPool``, ``outlierDetection``, ``loadBalancer`` and
``retryBudget`` (top level, per subset, per port) become its clusters' settings, with
Istio's semantics where they differ from Envoy's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _mesh import REGISTRY, model_of, route, translated
from test_mesh_translate import mesh

import meshcore
from meshcore import ConfigError
from meshcore.config import snapshot_from_data
from meshcore.control import Translation, load_resources
from meshcore.control.wire import resource_sets, snapshot_data, unstructure
from meshcore.filters.hash_lb import HashPolicy
from meshcore.plugins.translate_routes import ISTIO_DEFAULT_RETRIES
from meshcore.plugins.translate_traffic import ISTIO_MAX_RETRIES

WHOLE = "outbound|80||backend.default.svc.cluster.local"
V1 = "outbound|80|v1|backend.default.svc.cluster.local"
V2 = "outbound|80|v2|backend.default.svc.cluster.local"
GRPC = "outbound|9000||backend.default.svc.cluster.local"


def vs(http: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
{http}"""


def with_rule(traffic_policy: str, subsets: str = "") -> str:
    """The base mesh with its DestinationRule replaced by one with ``traffic_policy``."""
    base = mesh().split("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule")[0]
    rule = (
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend}\n"
        f"spec:\n  host: backend\n  trafficPolicy:\n{traffic_policy}"
    )
    rule += subsets or "  subsets:\n  - {name: v1, labels: {version: v1}}\n"
    return base + rule


def outliers(cluster: meshcore.Cluster) -> meshcore.OutlierDetection:
    assert cluster.outlier_detection is not None
    return cluster.outlier_detection


def budget(cluster: meshcore.Cluster) -> meshcore.RetryBudget:
    assert cluster.circuit_breakers.retry_budget is not None
    return cluster.circuit_breakers.retry_budget


def clusters(t: Translation) -> dict[str, meshcore.Cluster]:
    assert not t.problems, t.problems
    return {c.name: c for c in t.snapshot.clusters}


# -- retries -----------------------------------------------------------------------------------


def test_retries_become_the_routes_retry_policy() -> None:
    t = translated(
        model_of(
            mesh(
                vs(
                    """\
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: backend}}]
    retries:
      attempts: 3
      perTryTimeout: 250ms
      retryOn: gateway-error,connect-failure,unavailable,409,503
      retryIgnorePreviousHosts: false
      backoff: 40ms
  - match: [{uri: {prefix: /off}}]
    route: [{destination: {host: backend}}]
    retries: {attempts: 0}
  - route: [{destination: {host: backend, subset: v1}, weight: 50}, {destination: {host: backend, subset: v2}, weight: 50}]
    retries: {attempts: 4}
"""
                )
            )
        ),
        "frontend",
    )
    assert not t.problems
    policy = route(t, "backend", "/a").config.retry_policy
    assert policy.num_retries == 3
    assert policy.per_try_timeout == 0.25
    assert sorted(policy.retry_on) == [
        "connect-failure",
        "gateway-error",
        "retriable-status-codes",
        "unavailable",
    ], "a status in retryOn is retried under retriable-status-codes"
    assert policy.retriable_status_codes == (409, 503)
    assert policy.retry_other_hosts is False
    assert policy.retry_back_off.base_interval == 0.04
    assert policy.retry_non_idempotent is False, "a POST that may have been processed is never replayed"
    assert route(t, "backend", "/off").config.retry_policy is None, "attempts: 0 turns retries off"
    split = route(t, "backend", "/other").config
    assert len(split.weighted_clusters) == 2
    assert split.retry_policy.num_retries == 4
    assert sorted(split.retry_policy.retry_on) == sorted(ISTIO_DEFAULT_RETRIES.retry_on), (
        "attempts without retryOn keeps Istio's default conditions"
    )


def test_a_rule_without_retries_gets_istios_default_policy() -> None:
    t = translated(model_of(mesh(vs("  - route: [{destination: {host: backend}}]\n"))), "frontend")
    policy = route(t, "backend").config.retry_policy
    assert policy.num_retries == 2
    assert sorted(policy.retry_on) == [
        "cancelled",
        "connect-failure",
        "refused-stream",
        "retriable-status-codes",
        "unavailable",
    ]
    assert policy.retriable_status_codes == (503,)
    assert policy.retry_other_hosts is True
    default = translated(model_of(mesh()), "frontend")  # no VirtualService: its default route, as Istio's
    assert route(default, "backend").config.retry_policy == policy


def test_no_retries_or_mirrors_on_redirects_and_direct_responses() -> None:
    t = translated(
        model_of(
            mesh(
                vs(
                    """\
  - match: [{uri: {prefix: /gone}}]
    directResponse: {status: 410}
    retries: {attempts: 3}
  - route: [{destination: {host: nowhere.example.com}}]
    mirror: {host: backend}
"""
                )
            )
        ),
        "frontend",
    )
    assert route(t, "backend", "/gone").config.retry_policy is None
    unknown = route(t, "backend", "/x").config
    assert unknown.direct_response.status == 503
    assert (unknown.retry_policy, unknown.request_mirror_policies) == (None, ())


# -- mirrors -----------------------------------------------------------------------------------


def test_mirror_with_its_percentage_and_mirrors_each_with_its_own() -> None:
    t = translated(
        model_of(
            mesh(
                vs(
                    """\
  - match: [{uri: {prefix: /one}}]
    route: [{destination: {host: backend, subset: v1}}]
    mirror: {host: backend, subset: v2}
    mirrorPercentage: {value: 12.5}
  - match: [{uri: {prefix: /legacy}}]
    route: [{destination: {host: backend, subset: v1}}]
    mirror: {host: frontend}
    mirrorPercent: 30
  - match: [{uri: {prefix: /all}}]
    route: [{destination: {host: backend, subset: v1}}]
    mirror: {host: backend, subset: v2}
  - route: [{destination: {host: backend, subset: v1}}]
    mirrors:
    - destination: {host: backend, subset: v2}
      percentage: {value: 50}
    - destination: {host: frontend}
"""
                )
            )
        ),
        "frontend",
    )
    assert not t.problems

    def mirrors(path: str) -> list[tuple[str, float]]:
        return [(m.cluster, m.percentage) for m in route(t, "backend", path).config.request_mirror_policies]

    assert mirrors("/one") == [(V2, 12.5)]
    assert mirrors("/legacy") == [("outbound|80||frontend.default.svc.cluster.local", 30.0)]
    assert mirrors("/all") == [(V2, 100.0)]
    assert mirrors("/many") == [(V2, 50.0), ("outbound|80||frontend.default.svc.cluster.local", 100.0)]


def test_an_unknown_mirror_is_said_and_the_route_still_serves() -> None:
    t = translated(
        model_of(
            mesh(vs("  - route: [{destination: {host: backend}}]\n    mirror: {host: backend, subset: v7}\n"))
        ),
        "frontend",
    )
    config = route(t, "backend").config
    assert (config.cluster, config.request_mirror_policies) == (WHOLE, ())
    assert t.problems == (
        (
            "VirtualService default/backend: spec.http[0].mirror: subset 'v7' of "
            "'backend.default.svc.cluster.local' is not defined (defined: v1, v2)"
        ),
    )


# -- DestinationRule ---------------------------------------------------------------------------


def test_connection_pool_and_retry_budget_become_circuit_breakers() -> None:
    found = clusters(
        translated(
            model_of(
                with_rule(
                    """\
    connectionPool:
      tcp: {maxConnections: 7, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 3, http2MaxRequests: 11, maxRetries: 2, maxRequestsPerConnection: 1, idleTimeout: 20s}
    retryBudget: {percent: 25, minRetryConcurrency: 4}
"""
                )
            ),
            "frontend",
        )
    )
    for name in (WHOLE, V1, GRPC):
        cluster = found[name]
        breakers = cluster.circuit_breakers
        assert (breakers.max_connections, breakers.max_pending_requests, breakers.max_requests) == (7, 3, 11)
        assert breakers.max_retries == 2
        assert (budget(cluster).budget_percent, budget(cluster).min_retry_concurrency) == (
            25.0,
            4,
        )
        assert (cluster.connect_timeout, cluster.idle_timeout) == (2.0, 20.0)
        assert cluster.max_idle_connections_per_endpoint == 0, "one request per connection: none kept"


def test_unset_limits_keep_meshcores_defaults() -> None:
    found = clusters(
        translated(model_of(with_rule("    connectionPool: {tcp: {maxConnections: 5}}\n")), "frontend")
    )
    breakers = found[WHOLE].circuit_breakers
    assert breakers == meshcore.CircuitBreakers(max_connections=5, max_retries=ISTIO_MAX_RETRIES)
    assert found[WHOLE].max_idle_connections_per_endpoint == 256


def test_outlier_detection_with_istios_semantics() -> None:
    found = clusters(
        translated(
            model_of(
                with_rule(
                    """\
    outlierDetection:
      consecutive5xxErrors: 2
      consecutiveGatewayErrors: 4
      interval: 1s
      baseEjectionTime: 400s
      maxEjectionPercent: 50
      minHealthPercent: 30
"""
                )
            ),
            "frontend",
        )
    )
    cluster = found[WHOLE]
    od = outliers(cluster)
    assert (od.consecutive_5xx, od.enforcing_consecutive_5xx) == (2, 100.0)
    assert (od.consecutive_gateway_failure, od.enforcing_consecutive_gateway_failure) == (4, 100.0)
    assert (od.interval, od.base_ejection_time, od.max_ejection_time) == (1.0, 400.0, 400.0)
    assert od.max_ejection_percent == 50.0
    assert od.enforcing_success_rate == 0.0, "Istio has no success-rate ejection"
    assert cluster.healthy_panic_threshold == 30.0


def test_outlier_detection_defaults_as_istio_gives_them() -> None:
    t = translated(
        model_of(
            with_rule(
                "    outlierDetection: {consecutive5xxErrors: 0, consecutiveLocalOriginFailures: 3, "
                "splitExternalLocalOriginErrors: true}\n"
            )
        ),
        "frontend",
    )
    cluster = clusters(t)[WHOLE]
    od = outliers(cluster)
    assert od.enforcing_consecutive_5xx == 0.0, "consecutive5xxErrors: 0 turns 5xx ejection off"
    assert od.enforcing_consecutive_gateway_failure == 0.0, "gateway errors only when counted"
    assert (od.split_external_local_origin_errors, od.consecutive_local_origin_failure) == (True, 3)
    assert (od.interval, od.base_ejection_time, od.max_ejection_percent) == (10.0, 30.0, 10.0)
    assert cluster.healthy_panic_threshold == 0.0, "minHealthPercent defaults to 0: no panic"
    plain = clusters(translated(model_of(with_rule("    loadBalancer: {simple: RANDOM}\n")), "frontend"))[
        WHOLE
    ]
    assert (plain.outlier_detection, plain.healthy_panic_threshold) == (None, 50.0)


@pytest.mark.parametrize(
    ("load_balancer", "name", "config"),
    [
        ("{simple: RANDOM}", "random", None),
        ("{simple: LEAST_CONN}", "least_request", None),
        ("{consistentHash: {httpHeaderName: x-user}}", "ring_hash", {"hash_policy": [{"header": "x-user"}]}),
        (
            "{consistentHash: {httpCookie: {name: session}, ringHash: {minimumRingSize: 2048}}}",
            "ring_hash",
            {"hash_policy": [{"cookie": "session"}], "minimum_ring_size": 2048},
        ),
        (
            "{consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}",
            "maglev",
            {"hash_policy": [{"source_ip": True}]},
        ),
        (
            "{consistentHash: {httpQueryParameterName: user, maglev: {tableSize: 251}}}",
            "maglev",
            {"hash_policy": [{"query_parameter": "user"}], "table_size": 251},
        ),
        ("{simple: ROUND_ROBIN, warmupDurationSecs: 30s}", "round_robin", {"slow_start": {"window": "30s"}}),
        (
            "{simple: LEAST_REQUEST, warmup: {duration: 1m, minimumPercent: 20, aggression: 2}}",
            "least_request",
            {"slow_start": {"window": "60s", "aggression": 2.0, "min_weight_percent": 20.0}},
        ),
    ],
)
def test_load_balancers(load_balancer: str, name: str, config: dict[str, object] | None) -> None:
    t = translated(model_of(with_rule(f"    loadBalancer: {load_balancer}\n")), "frontend")
    lb = clusters(t)[WHOLE].lb_policy
    assert lb.name == name
    data = snapshot_data(resource_sets(t.snapshot))
    found = next(c for c in data["clusters"] if c["name"] == WHOLE)["lb_policy"]
    assert found == (name if config is None else {name: config}), "as it travels to the proxy"
    if name == "ring_hash" and "minimum_ring_size" not in (config or {}):
        assert lb.config.hash_policy == (HashPolicy(header="x-user"),)


def test_subset_and_port_level_settings_override_field_by_field() -> None:
    t = translated(
        model_of(
            with_rule(
                """\
    loadBalancer: {simple: RANDOM}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 9000}
      loadBalancer: {simple: LEAST_REQUEST}
      connectionPool: {http: {http2MaxRequests: 9}}
""",
                """\
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 4}}
      outlierDetection: {consecutive5xxErrors: 1}
""",
            )
        ),
        "frontend",
    )
    found = clusters(t)
    assert (found[WHOLE].lb_policy.name, outliers(found[WHOLE]).consecutive_5xx) == ("random", 3)
    assert found[WHOLE].circuit_breakers == meshcore.CircuitBreakers(max_retries=ISTIO_MAX_RETRIES)
    assert found[GRPC].lb_policy.name == "least_request"
    assert found[GRPC].circuit_breakers.max_requests == 9
    assert outliers(found[GRPC]).consecutive_5xx == 3
    assert found[V1].lb_policy.name == "random", "the subset keeps the rule's load balancer"
    assert found[V1].circuit_breakers.max_connections == 4
    assert outliers(found[V1]).consecutive_5xx == 1


def test_values_meshcore_cannot_honour_are_said_with_their_field_path() -> None:
    t = translated(
        model_of(
            with_rule(
                "    loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1000}}, "
                "warmupDurationSecs: 10s}\n"
            )
        ),
        "frontend",
    )
    assert clusters_unchecked(t)[WHOLE].lb_policy.name == "round_robin"
    assert t.problems[:2] == (
        (
            "DestinationRule default/backend: spec.trafficPolicy.loadBalancer.warmup (port 80): slow start is for "
            "ROUND_ROBIN and LEAST_REQUEST, not consistentHash"
        ),
        (
            "DestinationRule default/backend: spec.trafficPolicy.loadBalancer.consistentHash (port 80): "
            "table_size must be a prime number (such as 65537 or 5003), got 1000 (using round_robin)"
        ),
    )


def clusters_unchecked(t: Translation) -> dict[str, meshcore.Cluster]:
    return {c.name: c for c in t.snapshot.clusters}


def test_the_translated_snapshot_validates_at_the_proxy() -> None:
    t = translated(
        model_of(
            with_rule(
                """\
    loadBalancer: {consistentHash: {httpCookie: {name: s}}}
    connectionPool: {tcp: {maxConnections: 7}, http: {http1MaxPendingRequests: 2}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 100ms, baseEjectionTime: 1s}
    retryBudget: {percent: 10}
"""
            )
            + "---\n"
            + vs(
                "  - route: [{destination: {host: backend, subset: v1}}]\n"
                "    retries: {attempts: 2, perTryTimeout: 1s, retryOn: 5xx}\n"
                "    mirror: {host: frontend}\n"
                "    mirrorPercentage: {value: 5}\n"
            )
        ),
        "frontend",
    )
    sets = resource_sets(t.snapshot)
    again = snapshot_from_data(snapshot_data(sets), REGISTRY)
    assert resource_sets(again) == sets


@pytest.mark.parametrize(
    ("retry_on", "reason"),
    [
        ("5xx,gatway-error", "unknown retry condition 'gatway-error'; did you mean 'gateway-error'?"),
        ("5xx,999", "'999' is not an HTTP status (100..599)"),
    ],
)
def test_a_bad_retry_on_is_refused_with_its_field_path(tmp_path: Path, retry_on: str, reason: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        vs(f"  - route: [{{destination: {{host: backend}}}}]\n    retries: {{retryOn: '{retry_on}'}}\n")
    )
    with pytest.raises(ConfigError) as caught:
        load_resources([path], REGISTRY)
    assert f"spec.http[0].retries.retryOn: {reason}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            vs(
                "  - route: [{destination: {host: backend}}]\n    mirror: {host: backend}\n    mirrorPercent: 120\n"
            ),
            "spec.http[0].mirrorPercent",
        ),
        (with_rule("    retryBudget: {percent: -5}\n"), "spec.trafficPolicy.retryBudget.percent"),
    ],
)
def test_a_share_out_of_range_is_refused_with_its_field_path(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_resources([path], REGISTRY)
    assert f"{where}: must be" in str(caught.value)


def test_a_subsets_problem_names_the_subset_by_its_index() -> None:
    t = translated(
        model_of(
            with_rule(
                "    loadBalancer: {simple: ROUND_ROBIN}\n",
                "  subsets:\n  - {name: v1, labels: {version: v1}}\n  - name: v2\n    labels: {version: v2}\n"
                "    trafficPolicy: {loadBalancer: {simple: RANDOM, warmupDurationSecs: 5s}}\n",
            )
        ),
        "frontend",
    )
    assert t.problems == tuple(
        f"DestinationRule default/backend: spec.subsets[1].trafficPolicy.loadBalancer.warmup (port {port}): "
        "slow start is for ROUND_ROBIN and LEAST_REQUEST, not RANDOM"
        for port in (80, 9000)
    )


def test_retry_conditions_travel_in_one_order_whatever_the_hash_seed() -> None:
    """A set's order varies between processes: unsorted, a restarted control plane would push new versions."""
    names = ["unavailable", "5xx", "cancelled", "connect-failure", "retriable-status-codes", "refused-stream"]
    for order in (names, names[::-1]):
        assert unstructure(meshcore.RetryOn(order)) == sorted(names)
