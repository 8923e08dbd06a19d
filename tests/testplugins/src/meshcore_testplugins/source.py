"""``delta_dir``: a config source that reads a Snapshot, then deltas, from a directory.

It stands for a control-plane client, with files instead of a stream: ``snapshot.yaml``
(or ``.json``, ``.toml``) in the directory is the first, whole Snapshot; every file
``delta-*.json`` that appears after it is a delta, applied in name order, once. Each delta
is answered the way a control-plane client answers a push: ``<file>.ack`` holding the
version now live, or ``<file>.nack`` holding the problems, one per line (the live Snapshot
keeps serving).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

import meshcore

__all__ = ["DeltaDirConfig", "DeltaDirSource"]

SNAPSHOT_NAMES = ("snapshot.yaml", "snapshot.json", "snapshot.toml")

log = structlog.get_logger("meshcore_testplugins.delta_dir")


@attrs.frozen(kw_only=True)
class DeltaDirConfig:
    """Config of ``delta_dir``."""

    directory: str = attrs.field(validator=meshcore.non_empty)
    """Where ``snapshot.yaml`` and the ``delta-*.json`` files are."""
    poll_interval: meshcore.Duration = meshcore.Duration(0.05)
    """How often to look for new deltas (0: only when asked to reload, e.g. SIGHUP)."""


class DeltaDirSource:
    """Deltas from files in a directory, acknowledged with files next to them."""

    def __init__(self, config: DeltaDirConfig, registry: meshcore.Registry) -> None:
        self.config = config
        self.registry = registry
        self.directory = Path(config.directory)
        self.seen: set[str] = set()
        self._reload = trio.Event()

    def reload(self) -> None:
        """Look for new deltas now."""
        self._reload.set()

    async def run(self, sink: meshcore.ConfigSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Apply the directory's Snapshot, then each new delta, forever."""
        sink.apply(meshcore.load_snapshot(self._snapshot_file(), self.registry))
        self.seen.update(p.name for p in self._deltas())  # deltas older than the Snapshot are history
        task_status.started()
        interval = float(self.config.poll_interval) or math.inf
        while True:
            with trio.move_on_after(interval):
                await self._reload.wait()
            self._reload = trio.Event()
            for path in self._deltas():
                if path.name not in self.seen:
                    self.seen.add(path.name)
                    self._deliver(sink, path)

    def _snapshot_file(self) -> Path:
        for name in SNAPSHOT_NAMES:
            if (self.directory / name).is_file():
                return self.directory / name
        return self.directory / SNAPSHOT_NAMES[0]  # load_snapshot says it cannot be read

    def _deltas(self) -> list[Path]:
        return sorted(self.directory.glob("delta-*.json"))

    def _deliver(self, sink: meshcore.ConfigSink, path: Path) -> None:
        try:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                problem = meshcore.ConfigProblem(path="", message=f"unreadable delta: {err}", file=str(path))
                error = meshcore.ConfigError([problem], stage="parse")
                sink.rejected(error)
                raise error from err
            try:
                delta = meshcore.delta_from_data(data, self.registry, file=str(path))
            except meshcore.ConfigError as err:
                sink.rejected(err)
                raise
            snapshot = sink.apply_delta(delta)
        except meshcore.ConfigError as err:
            problems = [str(p) for p in err.problems]
            path.with_name(path.name + ".nack").write_text("".join(f"{p}\n" for p in problems))
            log.warning("delta_nacked", file=path.name, stage=err.stage, problems=problems)
            return
        path.with_name(path.name + ".ack").write_text(f"{snapshot.version}\n")
        log.info("delta_acked", file=path.name, version=snapshot.version)
