"""Load-balancing policies: ``round_robin`` and ``least_request`` (power of two choices).

A policy's factory takes its config and returns a picker: ``pick(hosts, request)`` chooses
one of the healthy hosts it is given, for ``request``: the ``meshcore.Request`` of an HTTP
exchange or the ``meshcore.Connection`` of a TCP one (None if neither), so that a hash
policy (a header, a cookie, the client address, a query parameter) can be a plugin too.
Hosts expose ``weight`` and ``active_requests``. A picker is built once per cluster and kept
while the cluster's policy does not change, with its state across requests and Snapshots.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

import attrs

import meshcore
from meshcore import at_least


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


class RoundRobin:
    """Each healthy host in turn, weights honoured by smooth weighted round robin."""

    def __init__(self, _config: None = None) -> None:
        self._next = 0
        self._current: dict[int, int] = {}

    def pick(self, hosts: Sequence[H], _request: object = None, /) -> H:
        """Choose the next host; ``hosts`` must not be empty."""
        if all(h.weight == 1 for h in hosts):
            self._next = (self._next + 1) % len(hosts)
            return hosts[self._next]
        # Smooth weighted round robin (nginx's): stable, no bursts toward heavy hosts.
        total = 0
        best = 0
        for i, host in enumerate(hosts):
            total += host.weight
            self._current[i] = self._current.get(i, 0) + host.weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= total
        return hosts[best]


@attrs.frozen(kw_only=True)
class LeastRequestConfig:
    """Config of ``least_request``."""

    choice_count: int = attrs.field(default=2, validator=at_least(2))


class LeastRequest:
    """Of ``choice_count`` random hosts, the one with the fewest active requests (P2C)."""

    def __init__(self, config: LeastRequestConfig | None = None) -> None:
        self._choices = (config or LeastRequestConfig()).choice_count
        self._random = random.Random()  # noqa: S311 - load spreading, not cryptography

    def pick(self, hosts: Sequence[H], _request: object = None, /) -> H:
        """Choose a lightly loaded host; ``hosts`` must not be empty."""
        if len(hosts) == 1:
            return hosts[0]
        sample = self._random.sample(range(len(hosts)), min(self._choices, len(hosts)))
        return min((hosts[i] for i in sample), key=lambda h: h.active_requests / h.weight)


@meshcore.hookimpl
def meshcore_lb_policies() -> list[meshcore.LbPolicyType]:
    """Register the built-in load-balancing policies."""
    return [
        meshcore.LbPolicyType(
            name="round_robin", factory=RoundRobin, description="each healthy endpoint in turn, by weight"
        ),
        meshcore.LbPolicyType(
            name="least_request",
            factory=LeastRequest,
            config=LeastRequestConfig,
            description="fewest active requests of N random endpoints (power of two choices)",
        ),
    ]
