"""Outlier detection: passive health from the answers requests get (Envoy's algorithm).

Every upstream result is reported (:meth:`OutlierDetector.report`): a status, or a
local-origin failure (a connection that could not be made, a reset, a timeout). An
endpoint is ejected (taken out of load balancing) when:

- it answered ``consecutive_5xx`` 5xx in a row (local-origin failures count as 503, or 504
  for a timeout, unless ``split_external_local_origin_errors``);
- it answered ``consecutive_gateway_failure`` 502/503/504 in a row;
- with the split, it failed ``consecutive_local_origin_failure`` times in a row locally;
- every ``interval``: its success rate over the last interval is below the mean of the
  endpoints' rates minus ``success_rate_stdev_factor``/1000 standard deviations (with
  enough endpoints and requests), or its failure percentage is at least
  ``failure_percentage_threshold``.

Each kind is enforced with its ``enforcing_*`` probability. At most ``max_ejection_percent``
of the endpoints are ejected at once. An ejected endpoint returns at the first interval
tick after ``base_ejection_time`` times the number of times it was ejected (at most
``max_ejection_time``); that number goes down by one for every interval it then stays in.
A passing active health check also returns it. Ejections and returns are logged
(``endpoint_ejected``, ``endpoint_returned``) and counted
(``cluster_outlier_ejections_total{reason}``, ``cluster_outlier_ejections_active``).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshcore.config.traffic import OutlierDetection
from meshcore.flags import ResponseFlag
from meshcore.runtime.stats import Counter, Stats

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster
    from meshcore.runtime.host import Host

__all__ = ["OutlierDetector"]

log = structlog.get_logger("meshcore.outlier")

_GATEWAY = frozenset({502, 503, 504})
_SERVER_ERROR = 500
# What a local-origin failure counts as when it is not counted apart (Envoy's mapping).
_LOCAL_AS_STATUS = {ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: 504}
_LOCAL_ORIGIN = frozenset(
    {
        ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
        ResponseFlag.UPSTREAM_CONNECTION_TERMINATION,
        ResponseFlag.UPSTREAM_RESET,
        ResponseFlag.UPSTREAM_REQUEST_TIMEOUT,
        ResponseFlag.UPSTREAM_PROTOCOL_ERROR,
    }
)
REASONS = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate",
    "failure_percentage",
)


class _HostState:
    """What the detector knows of one endpoint."""

    __slots__ = (
        "consecutive_5xx",
        "consecutive_gateway",
        "consecutive_local",
        "ejected_at",
        "ejections",
        "failures",
        "requests",
        "returned_at",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.ejections = 0  # the multiplier of base_ejection_time
        self.ejected_at: float | None = None
        self.returned_at: float | None = None
        self.requests = 0  # in the current interval
        self.failures = 0


class OutlierDetector:
    """The outlier detection of one cluster.

    Args:
        cluster: the cluster whose endpoints are watched (its ``refresh_health`` is called
            when an endpoint is ejected or returns).
        config: the detection settings.
        stats: where the ejection counters live.
        rng: the random source of the ``enforcing_*`` rolls (tests pass a seeded one).
    """

    def __init__(
        self, cluster: Cluster, config: OutlierDetection, stats: Stats, rng: random.Random | None = None
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.states: dict[Host, _HostState] = {}
        self._random = rng or random.Random()  # noqa: S311 - sampling, not cryptography
        labels = {"cluster": cluster.name}
        self._ejected: dict[str, Counter] = {
            reason: stats.counter("cluster_outlier_ejections_total", reason=reason, **labels)
            for reason in REASONS
        }
        self._overflow = stats.counter("cluster_outlier_ejections_overflow", **labels)
        self.active = stats.gauge("cluster_outlier_ejections_active", **labels)
        self.active.value = 0
        self.hosts_changed()

    def hosts_changed(self) -> None:
        """Follow the cluster's endpoints: watch new ones, forget removed ones."""
        current = set(self.cluster.hosts)
        for host in list(self.states):
            if host not in current:
                del self.states[host]
        for host in self.cluster.hosts:
            if host not in self.states:
                self.states[host] = _HostState()
        self.active.value = sum(1 for h in self.states if h.ejected)

    # -- per request ------------------------------------------------------------------------

    def report(self, host: Host, status: int | None, flag: ResponseFlag | None = None) -> None:
        """Record one result of ``host``: a response ``status``, or a local-origin failure ``flag``."""
        state = self.states.get(host)
        if state is None:
            return
        if status is None:
            if flag not in _LOCAL_ORIGIN:
                return  # not the endpoint's doing (overflow, no healthy endpoint)
            if self.config.split_external_local_origin_errors:
                state.requests += 1
                state.failures += 1
                state.consecutive_local += 1
                if state.consecutive_local == self.config.consecutive_local_origin_failure:
                    self._consecutive(host, state, "consecutive_local_origin_failure")
                return
            status = _LOCAL_AS_STATUS.get(flag, 503)
        elif self.config.split_external_local_origin_errors:
            state.consecutive_local = 0  # a response: the connection worked
        state.requests += 1
        if status < _SERVER_ERROR:
            state.consecutive_5xx = 0
            state.consecutive_gateway = 0
            return
        state.failures += 1
        if status in _GATEWAY:
            state.consecutive_gateway += 1
            if state.consecutive_gateway == self.config.consecutive_gateway_failure:
                self._consecutive(host, state, "consecutive_gateway_failure")
        else:
            state.consecutive_gateway = 0
        state.consecutive_5xx += 1
        if state.consecutive_5xx == self.config.consecutive_5xx:
            self._consecutive(host, state, "consecutive_5xx")

    def _consecutive(self, host: Host, state: _HostState, reason: str) -> None:
        if state.ejected_at is None:
            self._eject(host, state, reason)
        # Counted again from zero, ejected or not, so a next bout is detected on its own.
        if reason == "consecutive_5xx":
            state.consecutive_5xx = 0
        elif reason == "consecutive_gateway_failure":
            state.consecutive_gateway = 0
        else:
            state.consecutive_local = 0

    def _enforcing(self, reason: str) -> float:
        config = self.config
        return {
            "consecutive_5xx": config.enforcing_consecutive_5xx,
            "consecutive_gateway_failure": config.enforcing_consecutive_gateway_failure,
            "consecutive_local_origin_failure": config.enforcing_consecutive_local_origin_failure,
            "success_rate": config.enforcing_success_rate,
            "failure_percentage": config.enforcing_failure_percentage,
        }[reason]

    def _eject(self, host: Host, state: _HostState, reason: str, **detail: Any) -> None:
        config = self.config
        ejected = int(self.active.value)
        share = 100.0 * (ejected + 1) / max(len(self.states), 1)
        if share > config.max_ejection_percent and not (config.always_eject_one_host and ejected == 0):
            self._overflow.value += 1
            log.info(
                "endpoint_ejection_skipped", cluster=self.cluster.name, endpoint=host.label, reason=reason
            )
            return
        enforcing = self._enforcing(reason)
        if enforcing < 100 and self._random.random() * 100 >= enforcing:  # noqa: PLR2004 - percent
            log.info(
                "endpoint_ejection_not_enforced",
                cluster=self.cluster.name,
                endpoint=host.label,
                reason=reason,
            )
            return
        state.ejected_at = trio.current_time()
        if state.ejections * config.base_ejection_time < config.max_ejection_time + config.base_ejection_time:
            state.ejections += 1
        host.ejected = True
        self.active.value = ejected + 1
        self._ejected[reason].value += 1
        log.warning(
            "endpoint_ejected",
            cluster=self.cluster.name,
            endpoint=host.label,
            reason=reason,
            ejections=state.ejections,
            ejection_time=self.ejection_time(state),
            **detail,
        )
        self.cluster.refresh_health()

    def ejection_time(self, state: _HostState) -> float:
        """How long an ejection of ``state``'s endpoint lasts now."""
        return min(self.config.base_ejection_time * state.ejections, self.config.max_ejection_time)

    def uneject(self, host: Host, *, why: str = "ejection_time_elapsed") -> None:
        """Return ``host`` to load balancing (its time is up, or an active health check passed)."""
        state = self.states.get(host)
        if state is None or state.ejected_at is None:
            return
        state.ejected_at = None
        state.returned_at = trio.current_time()
        state.consecutive_5xx = state.consecutive_gateway = state.consecutive_local = 0
        host.ejected = False
        self.active.value = max(0, int(self.active.value) - 1)
        log.warning("endpoint_returned", cluster=self.cluster.name, endpoint=host.label, why=why)
        self.cluster.refresh_health()

    # -- every interval ---------------------------------------------------------------------

    def tick(self) -> None:
        """Return endpoints whose ejection is over; judge success rates and failure percentages."""
        now = trio.current_time()
        config = self.config
        for host, state in list(self.states.items()):
            if state.ejected_at is not None and now - state.ejected_at >= self.ejection_time(state):
                self.uneject(host)
        volumes = [(h, s) for h, s in self.states.items() if s.ejected_at is None and s.requests]
        rated = [(h, s) for h, s in volumes if s.requests >= config.success_rate_request_volume]
        if rated and len(rated) >= config.success_rate_minimum_hosts:
            rates = [100.0 * (s.requests - s.failures) / s.requests for _, s in rated]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
            threshold = mean - config.success_rate_stdev_factor / 1000 * stdev
            for (host, state), rate in zip(rated, rates, strict=True):
                if rate < threshold and state.ejected_at is None:
                    self._eject(
                        host,
                        state,
                        "success_rate",
                        success_rate=round(rate, 2),
                        threshold=round(threshold, 2),
                    )
        counted = [(h, s) for h, s in volumes if s.requests >= config.failure_percentage_request_volume]
        if counted and len(counted) >= config.failure_percentage_minimum_hosts:
            for host, state in counted:
                failed = 100.0 * state.failures / state.requests
                if failed >= config.failure_percentage_threshold and state.ejected_at is None:
                    self._eject(host, state, "failure_percentage", failure_percentage=round(failed, 2))
        for state in self.states.values():
            state.requests = state.failures = 0
            if (
                state.ejected_at is None
                and state.ejections
                and state.returned_at is not None
                and now - state.returned_at >= config.interval
            ):
                state.ejections -= 1

    async def run(self) -> None:
        """Tick every ``interval`` until cancelled."""
        while True:
            await trio.sleep(self.config.interval)
            self.tick()
