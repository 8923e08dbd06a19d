"""HTTP/2 abuse budgets: what a client may make the proxy do without doing anything useful.

Each budget is a token bucket (a burst, refilled at a rate); a client that empties one
gets GOAWAY(ENHANCE_YOUR_CALM) and its connection closed. The classes of abuse:

- streams cancelled by the client (rapid reset, CVE-2023-44487), and streams refused
  because the client opened more than ``max_concurrent_streams`` (the same shape);
- SETTINGS and PING frames (each one costs an answer);
- frames that cost work and carry nothing: empty DATA frames without END_STREAM,
  PRIORITY frames, WINDOW_UPDATE frames of less than ``TINY_WINDOW_UPDATE`` bytes, and
  empty CONTINUATION frames (CVE-2019-9518 and kin).

Sans-IO: the session feeds it what it saw, it answers or raises :class:`Abuse`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from h2.errors import ErrorCodes

from meshcore.tokenbucket import TokenBucket

__all__ = ["TINY_WINDOW_UPDATE", "Abuse", "H2Budgets", "budget"]

TINY_WINDOW_UPDATE = 1024
"""A WINDOW_UPDATE granting fewer bytes is counted as carrying nothing: clients batch theirs
(nghttp2 at half the window, Go at 4 KiB), so only a flood sends many this small."""


def budget(burst: int, per_second: float) -> TokenBucket:
    """Abuse detection: ``burst`` events at once, then ``per_second`` (0: no more, ever)."""
    interval = 1 / per_second if per_second > 0 else math.inf
    return TokenBucket(burst, fill_interval=interval, now=time.monotonic())


class Abuse(Exception):  # noqa: N818 - an outcome, not an error of ours
    """The client abuses the connection; close it with GOAWAY ``code``."""

    def __init__(self, code: ErrorCodes, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class H2Budgets:
    """The budgets of one downstream HTTP/2 connection, from its Http2Settings."""

    __slots__ = ("control", "empty", "resets")

    def __init__(self, settings: Any) -> None:
        self.resets = budget(settings.max_stream_resets_burst, settings.max_stream_resets_per_second)
        self.control = budget(settings.max_control_frames_burst, settings.max_control_frames_per_second)
        self.empty = budget(
            getattr(settings, "max_empty_frames_burst", 200),
            getattr(settings, "max_empty_frames_per_second", 100.0),
        )

    def stream_reset(self) -> None:
        """The client cancelled a stream it had opened (RST_STREAM)."""
        if not self.resets.take(time.monotonic()):
            msg = "rapid reset: too many streams cancelled by the client"
            raise Abuse(ErrorCodes.ENHANCE_YOUR_CALM, msg)

    def stream_refused(self) -> None:
        """A stream past the concurrency limit was refused (REFUSED_STREAM)."""
        if not self.resets.take(time.monotonic()):
            msg = "too many streams opened past max_concurrent_streams"
            raise Abuse(ErrorCodes.ENHANCE_YOUR_CALM, msg)

    def control_frame(self) -> None:
        """A SETTINGS or PING frame, each of which gets an answer."""
        if not self.control.take(time.monotonic()):
            msg = "SETTINGS or PING flood"
            raise Abuse(ErrorCodes.ENHANCE_YOUR_CALM, msg)

    def empty_frames(self, count: int = 1) -> None:
        """Frames that cost work and carry nothing (see the module's docstring)."""
        now = time.monotonic()
        if any(not self.empty.take(now) for _ in range(count)):
            msg = "flood of frames that carry nothing (empty DATA or CONTINUATION, PRIORITY, tiny WINDOW_UPDATE)"
            raise Abuse(ErrorCodes.ENHANCE_YOUR_CALM, msg)
