"""Logging setup for the CLI: one structlog processor chain, stdlib loggers routed through it.

Only the CLI (or an embedding application) calls :func:`configure`; library code just
gets a logger with ``structlog.get_logger(name)``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["LEVELS", "configure", "say", "set_level"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_state: dict[str, Any] = {}


def _processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure(level: str = "info", *, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and stdlib logging) for a process.

    Args:
        level: "debug", "info", "warning" or "error".
        fmt: "json", "console", or "auto" (console on a TTY, JSON otherwise).
        stream: where to write (default: stderr).
    """
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    _state.update(stream=out, renderer=renderer)
    structlog.configure(
        processors=[*_processors(), structlog.processors.dict_tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        # One write per line (PrintLogger writes the newline apart): worker processes share a pipe.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_processors(),
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_level(level), logging.INFO))


def _level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        msg = f"log level must be one of {', '.join(LEVELS)}, got {level!r}"
        raise ValueError(msg) from None


def set_level(level: str) -> None:
    """Change the log level of a running process (the admin server's ``/logging``)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_level(level)))


def say(text: str, out: TextIO | None = None) -> None:
    """Write ``text`` and its newline to ``out`` (default: stderr) in one write.

    ``print`` writes the newline apart (stderr writes through), so a line of another
    process sharing the pipe (the workers of ``--workers N`` and their supervisor, the
    processes of a mesh) can land between the two and be glued to this one.
    """
    (out or sys.stderr).write(f"{text}\n")
