"""h2's and hpack's debug logs, silenced at no cost per call.

Both libraries log at debug level on the hot path: hpack once per header field encoded or
decoded (about 22 ``log.debug`` calls per proxied HTTP/2 request, each a call to
``Logger.debug`` and ``isEnabledFor`` even when nothing is logged), h2 once per frame
through its ``config.logger`` (a Python no-op by default). Together about 55 of a request's
850 Python calls. Their messages are of no use to a mesh operator, and hpack's carry header
values, credentials included, so meshcore never routes them: both loggers are replaced by
one whose methods are C-level callables that do nothing (``"".format`` accepts any
arguments and returns ``""`` without a Python frame).
"""

from __future__ import annotations

import logging
from typing import Any

import h2.config
import hpack.hpack
import hpack.table

__all__ = ["SILENT", "silence_hpack"]


class _Silent(h2.config.DummyLogger):
    """A logger whose every logging method does nothing, without a Python call."""

    # h2's DummyLogger, with C-level no-ops in place of its Python ones.
    debug = trace = info = warning = error = exception = critical = log = "".format  # type: ignore[assignment]

    def isEnabledFor(self, _level: int) -> bool:  # noqa: N802 - logging.Logger's name
        return False

    def __getattr__(self, name: str) -> Any:
        # Anything else a library might read (name, level, handlers): the real logger's.
        return getattr(logging.getLogger("hpack.hpack"), name)


SILENT = _Silent()
"""Pass as ``h2.config.H2Configuration(logger=SILENT)``."""


def silence_hpack() -> None:
    """Replace hpack's module loggers with :data:`SILENT` (idempotent, cheap)."""
    hpack.hpack.log = SILENT  # type: ignore[assignment]
    hpack.table.log = SILENT  # type: ignore[assignment]
