"""Load-balancing policies: ``round_robin``, ``least_request`` (power of two choices), ``random``.

A policy's factory takes its config and returns a picker: ``pick(hosts, request)`` chooses
one of the candidate hosts it is given (healthy ones of the level in use; see the
cluster's health and localities), for ``request``: the ``meshcore.Request`` of an HTTP
exchange or the ``meshcore.Connection`` of a TCP one (None if neither), so that a hash
policy (a header, a cookie, the client address, a query parameter) can be a plugin too.
Hosts expose ``weight``, ``active_requests`` and ``ready_since`` (when they last became
healthy). A picker is built once per cluster and kept while the cluster's policy does not
change, with its state across requests and Snapshots. A picker may also have
``observe(host, seconds)``: the cluster then reports each attempt's time to its response
head (see ``peak_ewma``).

Slow start (``round_robin`` and ``least_request``, Istio's ``warmupDurationSecs``): an
endpoint that just joined or became healthy again gets a share of the traffic that grows
over ``window``, from ``min_weight_percent`` of its weight to all of it (Envoy's
``slow_start_config``): its weight is multiplied by ``(elapsed / window) ** (1 /
aggression)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

import attrs
import trio

import meshcore
from meshcore import Duration, at_least, at_most

__all__ = [
    "LeastRequest",
    "LeastRequestConfig",
    "Random",
    "RoundRobin",
    "RoundRobinConfig",
    "SlowStart",
]


class Host(Protocol):
    """What a policy needs to know of an endpoint."""

    @property
    def weight(self) -> int:
        """Relative share of the traffic, >= 1."""
        ...

    @property
    def active_requests(self) -> int:
        """Requests in flight to this host now."""
        ...


H = TypeVar("H", bound=Host)


@attrs.frozen(kw_only=True)
class SlowStart:
    """A new (or newly healthy) endpoint's traffic grows over ``window`` instead of at once."""

    window: Duration = attrs.field(validator=at_least(0.001))
    aggression: float = attrs.field(default=1.0, validator=at_least(0.001))
    """1: linear; above 1, faster at first; below 1, slower at first."""
    min_weight_percent: float = attrs.field(default=10.0, validator=[at_least(0), at_most(100)])
    """The share of its weight an endpoint starts with."""

    def weight(self, host: Host, now: float) -> float:
        """``host``'s weight now: reduced while it warms up."""
        since: float = getattr(host, "ready_since", float("-inf"))
        elapsed = now - since
        if elapsed >= self.window:
            return float(host.weight)
        factor = math.pow(max(elapsed, 0.001) / self.window, 1 / self.aggression)
        return host.weight * max(factor, self.min_weight_percent / 100)


def _warming(slow_start: SlowStart | None, hosts: Sequence[Host]) -> float | None:
    """The time now if some host of ``hosts`` is still warming up, else None."""
    if slow_start is None:
        return None
    now = trio.current_time()
    window = slow_start.window
    if any(now - getattr(h, "ready_since", float("-inf")) < window for h in hosts):
        return now
    return None


@attrs.frozen(kw_only=True)
class RoundRobinConfig:
    """Config of ``round_robin``."""

    slow_start: SlowStart | None = None


class RoundRobin:
    """Each healthy host in turn, weights honoured by smooth weighted round robin."""

    def __init__(self, config: RoundRobinConfig | None = None) -> None:
        self._slow_start = (config or RoundRobinConfig()).slow_start
        self._next = 0
        self._current: dict[int, float] = {}
        self._hosts: Sequence[Host] | None = None

    def pick(self, hosts: Sequence[H], _request: object = None, /) -> H:
        """Choose the next host; ``hosts`` must not be empty."""
        now = _warming(self._slow_start, hosts) if self._slow_start is not None else None
        if now is None:
            for host in hosts:  # a loop, not all(generator): once per request
                if host.weight != 1:
                    break
            else:
                self._next = (self._next + 1) % len(hosts)
                return hosts[self._next]
        if hosts is not self._hosts:  # another candidate list: positions mean other hosts
            self._hosts = hosts
            self._current.clear()
        # Smooth weighted round robin (nginx's): stable, no bursts toward heavy hosts.
        total = 0.0
        best = 0
        for i, host in enumerate(hosts):
            weight = float(host.weight) if now is None else self._slow_start.weight(host, now)  # type: ignore[union-attr]
            total += weight
            self._current[i] = self._current.get(i, 0.0) + weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= total
        return hosts[best]


@attrs.frozen(kw_only=True)
class LeastRequestConfig:
    """Config of ``least_request``."""

    choice_count: int = attrs.field(default=2, validator=at_least(2))
    slow_start: SlowStart | None = None


class LeastRequest:
    """Of ``choice_count`` random hosts, the one with the fewest active requests (P2C).

    While a host warms up (slow start), hosts are drawn by weight of the moment over active
    requests plus one instead.
    """

    def __init__(self, config: LeastRequestConfig | None = None) -> None:
        config = config or LeastRequestConfig()
        self._choices = config.choice_count
        self._slow_start = config.slow_start
        self._random = random.Random()  # noqa: S311 - load spreading, not cryptography

    def pick(self, hosts: Sequence[H], _request: object = None, /) -> H:
        """Choose a lightly loaded host; ``hosts`` must not be empty."""
        if len(hosts) == 1:
            return hosts[0]
        now = _warming(self._slow_start, hosts)
        if now is None:
            sample = self._random.sample(range(len(hosts)), min(self._choices, len(hosts)))
            return min((hosts[i] for i in sample), key=lambda h: h.active_requests / h.weight)
        # Warming up: each host by its weight of the moment over its load (Envoy's weighted
        # least request), so that a warming host gets its growing share.
        slow = self._slow_start
        assert slow is not None  # noqa: S101 - _warming returns a time only with slow start
        weights = [slow.weight(h, now) / (h.active_requests + 1) for h in hosts]
        return self._random.choices(hosts, weights=weights)[0]


class Random:
    """A random host, in proportion to the weights."""

    def __init__(self, _config: None = None) -> None:
        self._random = random.Random()  # noqa: S311 - load spreading, not cryptography

    def pick(self, hosts: Sequence[H], _request: object = None, /) -> H:
        """Choose a host at random; ``hosts`` must not be empty."""
        if all(h.weight == 1 for h in hosts):
            return hosts[self._random.randrange(len(hosts))]
        return self._random.choices(hosts, weights=[h.weight for h in hosts])[0]


@meshcore.hookimpl
def meshcore_lb_policies() -> list[meshcore.LbPolicyType]:
    """Register the built-in load-balancing policies."""
    return [
        meshcore.LbPolicyType(
            name="round_robin",
            factory=RoundRobin,
            config=RoundRobinConfig,
            description="each healthy endpoint in turn, by weight",
        ),
        meshcore.LbPolicyType(
            name="least_request",
            factory=LeastRequest,
            config=LeastRequestConfig,
            description="fewest active requests of N random endpoints (power of two choices)",
        ),
        meshcore.LbPolicyType(
            name="random",
            factory=Random,
            description="a random endpoint, in proportion to the weights",
        ),
    ]
