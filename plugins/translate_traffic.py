"""A DestinationRule's traffic policy as cluster settings.

``connectionPool`` becomes the cluster's circuit breakers (and connection settings),
``outlierDetection`` its outlier detection and panic threshold, ``loadBalancer`` its load
balancer (with hash policies and slow start), ``retryBudget`` the breakers' retry budget.
Istio's semantics are kept where they differ from Envoy's defaults: Istio turns off
success-rate ejection, a zero ``consecutive5xxErrors`` turns off 5xx ejection, gateway and
local-origin ejection are on only when their counts are given, and ``minHealthPercent`` is
the panic threshold (0 by default: no panic) once ``outlierDetection`` is set.

Istio leaves every circuit-breaker limit unlimited when unset. Retries in flight are
unlimited here too (``max_retries``, Istio's 2^32-1): Istio retries by default, and Envoy's
cap of 3 would turn retries away whenever more than three requests fail at once. Connections,
pending and active requests keep meshcore's bounded defaults (1024 each): meshcore never
queues without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshcore import CircuitBreakers, Duration, LbPolicyRef, OutlierDetection, RetryBudget
from meshcore.filters.hash_lb import HashPolicy, MaglevConfig, RingHashConfig
from meshcore.filters.load_balancers import LeastRequestConfig, RoundRobinConfig, SlowStart
from meshcore.plugins.istio_destinationrule import (
    ConnectionPoolSettings,
    ConsistentHashLB,
    LoadBalancerSettings,
    TrafficPolicy,
)
from meshcore.plugins.istio_destinationrule import OutlierDetection as IstioOutlierDetection

Problem = Callable[[str, str], None]
"""Note a problem: ``(field path under the traffic policy, message)``."""

SIMPLE_LB = {
    None: "round_robin",
    "UNSPECIFIED": "round_robin",
    "ROUND_ROBIN": "round_robin",
    "LEAST_REQUEST": "least_request",
    "LEAST_CONN": "least_request",
    "RANDOM": "random",
}
"""Istio's ``loadBalancer.simple`` and the meshcore load balancer it becomes."""

ENVOY_MAX_EJECTION_TIME = 300.0
ISTIO_MAX_RETRIES = 2**32 - 1
"""Istio's ``maxRetries`` when unset: unlimited."""


def _policy_handles(prefix: str) -> list[str]:
    simple = "=" + "|".join(k for k in SIMPLE_LB if k is not None)
    lb = f"{prefix}.loadBalancer"
    pool = f"{prefix}.connectionPool"
    outlier = f"{prefix}.outlierDetection"
    return [
        f"{lb}.simple{simple}",
        f"{lb}.consistentHash.httpHeaderName",
        f"{lb}.consistentHash.httpCookie.name",
        f"{lb}.consistentHash.useSourceIp",
        f"{lb}.consistentHash.httpQueryParameterName",
        f"{lb}.consistentHash.ringHash",
        f"{lb}.consistentHash.maglev",
        f"{lb}.consistentHash.minimumRingSize",
        f"{lb}.warmupDurationSecs",
        f"{lb}.warmup",
        f"{pool}.tcp.maxConnections",
        f"{pool}.tcp.connectTimeout",
        f"{pool}.http.http1MaxPendingRequests",
        f"{pool}.http.http2MaxRequests",
        f"{pool}.http.maxRequestsPerConnection=1",
        f"{pool}.http.maxRetries",
        f"{pool}.http.idleTimeout",
        f"{outlier}.consecutive5xxErrors",
        f"{outlier}.consecutiveGatewayErrors",
        f"{outlier}.consecutiveLocalOriginFailures",
        f"{outlier}.splitExternalLocalOriginErrors",
        f"{outlier}.interval",
        f"{outlier}.baseEjectionTime",
        f"{outlier}.maxEjectionPercent",
        f"{outlier}.minHealthPercent",
    ]


def traffic_policy_handles() -> list[str]:
    """The DestinationRule fields :func:`cluster_settings` translates."""
    out: list[str] = []
    for prefix in ("DestinationRule.trafficPolicy", "DestinationRule.subsets.trafficPolicy"):
        out += _policy_handles(prefix)
        out += _policy_handles(f"{prefix}.portLevelSettings")
        out += [
            f"{prefix}.portLevelSettings.port",
            f"{prefix}.retryBudget.percent",
            f"{prefix}.retryBudget.minRetryConcurrency",
        ]
    return out


def cluster_settings(policy: TrafficPolicy | None, problem: Problem) -> dict[str, Any]:
    """The fields of a cluster that ``policy`` (already merged for one subset and port) sets."""
    fields: dict[str, Any] = {
        "lb_policy": lb_policy(policy.loadBalancer if policy else None, problem),
        "circuit_breakers": CircuitBreakers(max_retries=ISTIO_MAX_RETRIES),
    }
    if policy is None:
        return fields
    if policy.connectionPool is not None or policy.retryBudget is not None:
        fields.update(_pool(policy))
    if policy.outlierDetection is not None:
        fields["outlier_detection"] = outlier_detection(policy.outlierDetection)
        # Istio: minHealthPercent is the panic threshold, 0 (no panic) unless given.
        fields["healthy_panic_threshold"] = float(policy.outlierDetection.minHealthPercent)
    return fields


def _pool(policy: TrafficPolicy) -> dict[str, Any]:
    pool = policy.connectionPool or ConnectionPoolSettings()
    breakers: dict[str, Any] = {"max_retries": ISTIO_MAX_RETRIES}
    fields: dict[str, Any] = {}
    if pool.tcp is not None:
        if pool.tcp.maxConnections:
            breakers["max_connections"] = pool.tcp.maxConnections
        if pool.tcp.connectTimeout is not None:
            fields["connect_timeout"] = pool.tcp.connectTimeout
    if pool.http is not None:
        http = pool.http
        for istio, ours in (
            ("http1MaxPendingRequests", "max_pending_requests"),
            ("http2MaxRequests", "max_requests"),
            ("maxRetries", "max_retries"),
        ):
            if getattr(http, istio):
                breakers[ours] = getattr(http, istio)
        if http.maxRequestsPerConnection == 1:  # no connection is used twice: none is kept idle
            fields["max_idle_connections_per_endpoint"] = 0
        if http.idleTimeout is not None:
            fields["idle_timeout"] = http.idleTimeout
    if policy.retryBudget is not None:
        budget = policy.retryBudget
        breakers["retry_budget"] = RetryBudget(
            budget_percent=20.0 if budget.percent is None else budget.percent,
            min_retry_concurrency=budget.minRetryConcurrency or 3,
        )
    fields["circuit_breakers"] = CircuitBreakers(**breakers)
    return fields


def outlier_detection(od: IstioOutlierDetection) -> OutlierDetection:
    """Istio's ``outlierDetection`` as meshcore's (with Istio's defaults where they differ from Envoy's)."""
    fields: dict[str, Any] = {"enforcing_success_rate": 0.0}
    if od.consecutive5xxErrors is not None:
        fields["consecutive_5xx"] = od.consecutive5xxErrors or 5
        fields["enforcing_consecutive_5xx"] = 100.0 if od.consecutive5xxErrors else 0.0
    if od.consecutiveGatewayErrors:
        fields["consecutive_gateway_failure"] = od.consecutiveGatewayErrors
        fields["enforcing_consecutive_gateway_failure"] = 100.0
    fields["split_external_local_origin_errors"] = od.splitExternalLocalOriginErrors
    if od.consecutiveLocalOriginFailures:
        fields["consecutive_local_origin_failure"] = od.consecutiveLocalOriginFailures
    elif od.splitExternalLocalOriginErrors:
        fields["enforcing_consecutive_local_origin_failure"] = 0.0
    if od.interval:
        fields["interval"] = od.interval
    if od.baseEjectionTime:
        fields["base_ejection_time"] = od.baseEjectionTime
        fields["max_ejection_time"] = Duration(max(ENVOY_MAX_EJECTION_TIME, od.baseEjectionTime))
    if od.maxEjectionPercent:
        fields["max_ejection_percent"] = float(od.maxEjectionPercent)
    return OutlierDetection(**fields)


def _hash_policy(ch: ConsistentHashLB, problem: Problem) -> HashPolicy | None:
    given = {
        "httpHeaderName": HashPolicy(header=ch.httpHeaderName) if ch.httpHeaderName else None,
        "httpCookie": HashPolicy(cookie=ch.httpCookie.name) if ch.httpCookie else None,
        "useSourceIp": HashPolicy(source_ip=True) if ch.useSourceIp else None,
        "httpQueryParameterName": (
            HashPolicy(query_parameter=ch.httpQueryParameterName) if ch.httpQueryParameterName else None
        ),
    }
    chosen = [(k, v) for k, v in given.items() if v is not None]
    if len(chosen) != 1:
        got = ", ".join(k for k, _ in chosen) or "none"
        problem(
            "loadBalancer.consistentHash",
            f"needs exactly one of {', '.join(given)}; got {got} (using round_robin)",
        )
        return None
    return chosen[0][1]


def _slow_start(lb: LoadBalancerSettings) -> SlowStart | None:
    if lb.warmup is not None:
        return SlowStart(
            window=lb.warmup.duration,
            min_weight_percent=10.0 if lb.warmup.minimumPercent is None else lb.warmup.minimumPercent,
            aggression=lb.warmup.aggression or 1.0,
        )
    if lb.warmupDurationSecs:
        return SlowStart(window=lb.warmupDurationSecs)
    return None


def lb_policy(lb: LoadBalancerSettings | None, problem: Problem) -> LbPolicyRef:
    """The load balancer of Istio's ``loadBalancer`` (round robin when it says nothing)."""
    if lb is None:
        return LbPolicyRef(name="round_robin")
    try:
        slow_start = _slow_start(lb)
    except ValueError as err:
        problem("loadBalancer.warmup", f"{err} (no slow start)")
        slow_start = None
    if lb.consistentHash is not None:
        if slow_start is not None:
            problem(
                "loadBalancer.warmup", "slow start is for ROUND_ROBIN and LEAST_REQUEST, not consistentHash"
            )
        return _hash_lb(lb.consistentHash, problem)
    name = SIMPLE_LB[lb.simple]
    if slow_start is None:
        return LbPolicyRef(name=name)
    if name == "round_robin":
        return LbPolicyRef(name=name, config=RoundRobinConfig(slow_start=slow_start))
    if name == "least_request":
        return LbPolicyRef(name=name, config=LeastRequestConfig(slow_start=slow_start))
    problem("loadBalancer.warmup", f"slow start is for ROUND_ROBIN and LEAST_REQUEST, not {lb.simple}")
    return LbPolicyRef(name=name)


def _hash_lb(ch: ConsistentHashLB, problem: Problem) -> LbPolicyRef:
    """``ring_hash`` (Istio's default for consistentHash) or ``maglev``, on the one hash key."""
    hashed = _hash_policy(ch, problem)
    if hashed is None:
        return LbPolicyRef(name="round_robin")
    try:
        if ch.maglev is not None:
            config: Any = MaglevConfig(hash_policy=(hashed,), **_given(table_size=ch.maglev.tableSize))
            return LbPolicyRef(name="maglev", config=config)
        size = ch.ringHash.minimumRingSize if ch.ringHash is not None else (ch.minimumRingSize or 0)
        config = RingHashConfig(hash_policy=(hashed,), **_given(minimum_ring_size=size))
    except ValueError as err:
        problem("loadBalancer.consistentHash", f"{err} (using round_robin)")
        return LbPolicyRef(name="round_robin")
    return LbPolicyRef(name="ring_hash", config=config)


def _given(**values: int) -> dict[str, int]:
    """The values that are set (Istio's 0 means "the default")."""
    return {k: v for k, v in values.items() if v}


__all__ = [
    "ISTIO_MAX_RETRIES",
    "SIMPLE_LB",
    "cluster_settings",
    "lb_policy",
    "outlier_detection",
    "traffic_policy_handles",
]
