"""``peak_ewma``: the endpoint with the lowest expected latency times load (Linkerd's default).

Each endpoint's latency is a moving average that jumps to a slower observation at once
(the *peak*: a slow endpoint is noticed on its first slow answer) and decays toward faster
ones over ``decay`` (an exponentially weighted moving average in time, not in count). An
endpoint's cost is that latency times its requests in flight plus one, divided by its
weight; of ``choice_count`` random endpoints the cheapest is chosen (power of two choices).
An endpoint never measured costs ``default_rtt``. The estimate of an endpoint nobody sends
to decays toward zero, so a slow endpoint is tried again now and then and, if it has
recovered, gets its share back.

The cluster reports each attempt's time to its response head through :meth:`PeakEwma.observe`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

import attrs
import trio

import meshcore
from meshcore import Duration, at_least

__all__ = ["PeakEwma", "PeakEwmaConfig"]


class Host(Protocol):
    """What peak EWMA needs to know of an endpoint."""

    @property
    def weight(self) -> int:
        """Relative share of the traffic, >= 1."""
        ...

    @property
    def active_requests(self) -> int:
        """Requests in flight to it now."""
        ...


H = TypeVar("H", bound=Host)


@attrs.frozen(kw_only=True)
class PeakEwmaConfig:
    """Config of ``peak_ewma``."""

    decay: Duration = attrs.field(default=Duration(10), validator=at_least(0.001))
    """How fast the estimate forgets: an observation weighs e^-1 after this time."""
    default_rtt: Duration = attrs.field(default=Duration(0.03), validator=at_least(0))
    """The latency assumed of an endpoint not measured yet."""
    choice_count: int = attrs.field(default=2, validator=at_least(2))


class _Estimate:
    __slots__ = ("rtt", "stamp")

    def __init__(self, rtt: float, stamp: float) -> None:
        self.rtt = rtt
        self.stamp = stamp


class PeakEwma:
    """Of ``choice_count`` random endpoints, the one with the lowest latency x (load + 1)."""

    def __init__(self, config: PeakEwmaConfig | None = None) -> None:
        self.config = config or PeakEwmaConfig()
        self._estimates: dict[object, _Estimate] = {}
        self._random = random.Random()  # noqa: S311 - load spreading, not cryptography

    def _rtt(self, host: object, now: float) -> float:
        estimate = self._estimates.get(host)
        if estimate is None:
            return self.config.default_rtt
        return estimate.rtt * math.exp(-max(0.0, now - estimate.stamp) / self.config.decay)

    def cost(self, host: Host, now: float) -> float:
        """What sending one more request to ``host`` is expected to cost now."""
        return self._rtt(host, now) * (host.active_requests + 1) / host.weight

    def observe(self, host: object, rtt: float) -> None:
        """Record that a request to ``host`` took ``rtt`` seconds to its response head."""
        now = trio.current_time()
        estimate = self._estimates.get(host)
        if estimate is None:
            self._estimates[host] = _Estimate(rtt, now)
            return
        current = estimate.rtt * math.exp(-max(0.0, now - estimate.stamp) / self.config.decay)
        if rtt > current:
            estimate.rtt = rtt  # the peak: slower at once
        else:
            w = math.exp(-max(0.0, now - estimate.stamp) / self.config.decay)
            estimate.rtt = estimate.rtt * w + rtt * (1 - w)
        estimate.stamp = now

    def pick(self, hosts: Sequence[H], _request: object = None, /) -> H:
        """Choose a cheap host; ``hosts`` must not be empty."""
        if len(hosts) == 1:
            return hosts[0]
        now = trio.current_time()
        if len(self._estimates) > 4 * len(hosts) + 16:  # endpoints that left: forget them
            current = set(map(id, hosts))
            self._estimates = {h: e for h, e in self._estimates.items() if id(h) in current}
        sample = self._random.sample(range(len(hosts)), min(self.config.choice_count, len(hosts)))
        return min((hosts[i] for i in sample), key=lambda h: self.cost(h, now))


@meshcore.hookimpl
def meshcore_lb_policies() -> list[meshcore.LbPolicyType]:
    """Register ``peak_ewma``."""
    return [
        meshcore.LbPolicyType(
            name="peak_ewma",
            factory=PeakEwma,
            config=PeakEwmaConfig,
            description="lowest latency x load of two random endpoints (Linkerd's peak EWMA)",
        )
    ]
