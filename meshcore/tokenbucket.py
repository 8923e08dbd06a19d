"""A token bucket: the one rate limiter of meshcore (rate-limit filters, HTTP/2 abuse budgets).

Sans-IO: no clock inside and no task refilling it. Every call is given the time ``now``
(``trio.current_time()``, so that tests can run it on an autojump clock, or
``time.monotonic()``), and the fills due since the bucket started are added then.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """At most ``max_tokens`` tokens (the burst), refilled by ``tokens_per_fill`` every ``fill_interval``.

    It starts full. A rate of ``r`` per second with a burst of ``b`` is
    ``TokenBucket(b, fill_interval=1 / r, now=now)``; ``fill_interval=math.inf`` never
    refills. Fills are whole and counted from the start, so rounding never accumulates.

    Attributes:
        tokens: the tokens left (as of the last :meth:`refill`).
        max_tokens: the most tokens it holds.
        tokens_per_fill: tokens added at each fill.
        fill_interval: seconds between fills.
    """

    __slots__ = ("fill_interval", "fills", "max_tokens", "start", "tokens", "tokens_per_fill")

    def __init__(
        self, max_tokens: int, *, tokens_per_fill: int = 1, fill_interval: float, now: float
    ) -> None:
        if max_tokens < 1 or tokens_per_fill < 1:
            msg = f"a token bucket needs max_tokens and tokens_per_fill >= 1, got {max_tokens} and {tokens_per_fill}"
            raise ValueError(msg)
        if not fill_interval > 0:
            msg = f"a token bucket needs a fill_interval > 0, got {fill_interval!r}"
            raise ValueError(msg)
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill
        self.fill_interval = fill_interval
        self.tokens = max_tokens
        self.start = now
        self.fills = 0

    def refill(self, now: float) -> None:
        """Add the fills due by ``now``."""
        fills = int((now - self.start) / self.fill_interval)
        if fills > self.fills:
            self.tokens = min(self.max_tokens, self.tokens + (fills - self.fills) * self.tokens_per_fill)
            self.fills = fills

    def take(self, now: float) -> bool:
        """Take one token if there is one by ``now``; False when the bucket is empty."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the next fill (``math.inf`` if it never refills)."""
        if math.isinf(self.fill_interval):
            return math.inf
        return self.start + (self.fills + 1) * self.fill_interval - now

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens}/{self.max_tokens}, +{self.tokens_per_fill} every {self.fill_interval:g}s>"
