"""Active health checking: each endpoint probed on an interval by the cluster's checkers.

The checkers are plugins (``meshcore_health_checkers``: ``http``, ``tcp``, ``grpc`` and any
third-party one); this module owns when they run and what their results mean:

- every ``interval`` (plus a random ``interval_jitter`` and ``interval_jitter_percent``),
  each endpoint is checked once, bounded by ``timeout``; a check that raises or times out
  fails;
- a healthy endpoint becomes unhealthy after ``unhealthy_threshold`` failures in a row, an
  unhealthy one healthy after ``healthy_threshold`` successes in a row;
- a new endpoint starts unhealthy (flag ``failed_active_hc``) and is checked at once; its
  first success makes it healthy (Envoy's start-up rule), so a dead endpoint never
  receives a request. Until then the panic threshold decides, as for any health loss.

With several checks, an endpoint is healthy only when every one of them says so.
Transitions are logged (``endpoint_health_changed``) and counted
(``cluster_health_check_{success,failure}_total``); a passing check also ends an outlier
ejection (Envoy's ``successful_active_health_check_uneject_host``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from meshcore.config.traffic import HealthCheck
from meshcore.runtime.stats import Stats

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster
    from meshcore.runtime.host import Host

__all__ = ["Checker", "HealthChecking"]

log = structlog.get_logger("meshcore.health")


class Checker(Protocol):
    """What a health checker plugin's factory returns."""

    async def check(self, host: Host) -> bool:
        """Probe ``host`` once: True if healthy. Raising counts as a failure."""
        ...


class _Session:
    """One check of one endpoint: its consecutive results and whether it passes."""

    __slots__ = ("checked", "failures", "passing", "scope", "successes")

    def __init__(self) -> None:
        self.checked = False  # a first result came
        self.passing = False
        self.successes = 0
        self.failures = 0
        self.scope = trio.CancelScope()


class HealthChecking:
    """The active health checks of one cluster.

    Args:
        cluster: the cluster whose endpoints are checked (``refresh_health`` is called on
            every change of an endpoint's health).
        checks: the checks.
        checkers: their checkers, built from each check's plugin reference (in order).
        stats: where the check counters live.
    """

    def __init__(
        self,
        cluster: Cluster,
        checks: Sequence[HealthCheck],
        checkers: Sequence[Checker],
        stats: Stats,
    ) -> None:
        self.cluster = cluster
        self.checks = tuple(checks)
        self.checkers = list(checkers)
        self.sessions: dict[Host, list[_Session]] = {}
        self._nursery: trio.Nursery | None = None
        self._results = trio.lowlevel.ParkingLot()
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        labels = {"cluster": cluster.name}
        self._success = stats.counter("cluster_health_check_success_total", **labels)
        self._failure = stats.counter("cluster_health_check_failure_total", **labels)
        self.hosts_changed()  # new endpoints are unhealthy from now, not from the first tick

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Check every endpoint until cancelled (endpoints come and go with :meth:`hosts_changed`)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for host, sessions in self.sessions.items():
                for index, session in enumerate(sessions):
                    nursery.start_soon(self._check_forever, host, index, session)
            task_status.started()
            await trio.sleep_forever()

    def hosts_changed(self) -> None:
        """Start checking new endpoints (unhealthy until their first success), stop checking gone ones."""
        current = set(self.cluster.hosts)
        for host in list(self.sessions):
            if host not in current:
                for session in self.sessions.pop(host):
                    session.scope.cancel()
        for host in self.cluster.hosts:
            if host in self.sessions:
                continue
            sessions = self.sessions[host] = [_Session() for _ in self.checks]
            if host.active_hc_seen:  # checks reconfigured: carry on from what is known
                for session in sessions:
                    session.checked = True
                    session.passing = not host.failed_active_hc
            else:
                host.failed_active_hc = True
                host.active_hc_seen = True
            if self._nursery is not None:
                for index, session in enumerate(sessions):
                    self._nursery.start_soon(self._check_forever, host, index, session)

    async def _check_forever(self, host: Host, index: int, session: _Session) -> None:
        check, checker = self.checks[index], self.checkers[index]
        with session.scope:
            while True:
                healthy = False
                with trio.move_on_after(check.timeout):
                    try:
                        healthy = bool(await checker.check(host))
                    except Exception as err:  # noqa: BLE001 - whatever a checker raises is a failed check
                        log.debug(
                            "health_check_failed",
                            cluster=self.cluster.name,
                            endpoint=host.label,
                            reason=str(err),
                        )
                self._record(host, index, session, healthy=healthy)
                wait = check.interval + self._random.uniform(0, check.interval_jitter)
                wait += self._random.uniform(0, check.interval * check.interval_jitter_percent / 100)
                await trio.sleep(wait)

    def _record(self, host: Host, index: int, session: _Session, *, healthy: bool) -> None:
        check = self.checks[index]
        if healthy:
            self._success.value += 1
            session.successes += 1
            session.failures = 0
            # A new endpoint needs one success; one that failed needs healthy_threshold.
            if not session.passing and (not session.checked or session.successes >= check.healthy_threshold):
                session.passing = True
                self._update(host, reason=f"{session.successes} checks passed")
            if host.ejected and self.cluster.outlier is not None:
                self.cluster.outlier.uneject(host, why="active_health_check_passed")
        else:
            self._failure.value += 1
            session.failures += 1
            session.successes = 0
            if session.passing and session.failures >= check.unhealthy_threshold:
                session.passing = False
                self._update(host, reason=f"{session.failures} checks failed")
        session.checked = True
        self._results.unpark_all()

    async def wait_result(self) -> None:
        """Wait until the next check of any endpoint has a result (for tests and tools)."""
        await self._results.park()

    def _update(self, host: Host, *, reason: str) -> None:
        failed = not all(s.passing for s in self.sessions.get(host, ()))
        if failed != host.failed_active_hc:
            host.failed_active_hc = failed
            log.warning(
                "endpoint_health_changed",
                cluster=self.cluster.name,
                endpoint=host.label,
                healthy=not failed,
                reason=reason,
            )
            self.cluster.refresh_health()
