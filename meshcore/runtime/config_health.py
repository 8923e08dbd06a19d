"""Config health: what the proxy serves, since when, and what it refused last, and why.

The proxy keeps a :class:`ConfigHealth`, updated on every apply and every rejection; the
admin server shows it at ``/config_status``. Counters go to the stats as well:
``config_snapshots_applied`` and ``config_snapshots_rejected`` labelled ``reason`` (the
stage that refused the config: ``parse``, ``validation`` or ``apply``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import attrs

from meshcore.errors import ConfigError

__all__ = ["ConfigHealth", "Rejection"]

STAGES = ("parse", "validation", "apply")


def _now() -> str:
    return dt.datetime.now(tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen(kw_only=True)
class Rejection:
    """A config the proxy refused.

    Attributes:
        at: when, as an ISO 8601 UTC time.
        stage: where it was refused: ``parse``, ``validation`` or ``apply``.
        version: the version it would have had, when it had one.
        problems: every problem, as ``file:line: path: reason`` lines.
    """

    at: str
    stage: str
    version: str | None
    problems: Sequence[str]


@attrs.define
class ConfigHealth:
    """The proxy's config, seen from outside: version, when applied, counts, last rejection."""

    version: str | None = None
    applied_at: str | None = None
    applied: int = 0
    rejected: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(STAGES, 0))
    last_rejection: Rejection | None = None

    def record_applied(self, version: str) -> None:
        """A Snapshot of ``version`` went live now."""
        self.version = version
        self.applied_at = _now()
        self.applied += 1

    def record_rejected(self, error: ConfigError, version: str | None) -> Rejection:
        """A config was refused now; return the record of it."""
        self.rejected[error.stage] = self.rejected.get(error.stage, 0) + 1
        self.last_rejection = Rejection(
            at=_now(), stage=error.stage, version=version, problems=tuple(str(p) for p in error.problems)
        )
        return self.last_rejection

    def to_data(self) -> dict[str, Any]:
        """Plain JSON-able data, for the admin server."""
        last = self.last_rejection
        return {
            "version": self.version,
            "applied_at": self.applied_at,
            "snapshots_applied": self.applied,
            "snapshots_rejected": dict(self.rejected),
            "last_rejection": None if last is None else attrs.asdict(last, value_serializer=_listed),
        }


def _listed(_instance: Any, _field: Any, value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
