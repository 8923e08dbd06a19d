"""``file``: the simplest config source, a YAML, TOML or JSON file on disk.

It loads the file once to start, then reloads it when it changes (polled) and when asked
to (the CLI asks on SIGHUP). A file that fails to load or validate is logged with every
problem, and the last good Snapshot keeps serving.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

import meshcore
from meshcore import ConfigError, ConfigSink, Duration, Registry, Snapshot, non_empty

log = structlog.get_logger("meshcore.file_source")


@attrs.frozen(kw_only=True)
class FileSourceConfig:
    """Config of the ``file`` source."""

    path: str = attrs.field(validator=non_empty)
    poll_interval: Duration = Duration(1)
    """How often to look for changes (0: only on explicit reloads, e.g. SIGHUP)."""


class FileSource:
    """Snapshots from one config file."""

    def __init__(self, config: FileSourceConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self._reload = trio.Event()
        self._signature: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = Path(self.config.path).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def load(self) -> Snapshot:
        """Load and validate the file now; ConfigError with every problem if it is bad.

        Whatever else reading it raises is a ConfigError too (logged with its traceback: a
        bug to report), so that no file can end the proxy.
        """
        self._signature = self._stat()
        try:
            return meshcore.load_snapshot(self.config.path, self.registry)
        except ConfigError:
            raise
        except Exception as err:
            log.exception("config_load_failed", path=self.config.path)
            message = f"cannot be loaded: {type(err).__name__}: {err}"
            problem = meshcore.ConfigProblem(path="", message=message, file=self.config.path)
            raise ConfigError([problem], stage="parse") from err

    def reload(self) -> None:
        """Ask for a reload now (SIGHUP), whether or not the file changed."""
        self._reload.set()

    async def run(self, sink: ConfigSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Apply the file's Snapshot, then every good change to it, forever.

        The first load must succeed (its ConfigError propagates); later bad files are
        logged, reported to the sink (counted, shown on the admin server) and skipped.
        """
        await self._apply(sink, self.load())
        task_status.started()
        interval = float(self.config.poll_interval) or math.inf
        while True:
            with trio.move_on_after(interval):
                await self._reload.wait()
            forced = self._reload.is_set()
            self._reload = trio.Event()
            if not forced and self._stat() == self._signature:
                continue
            try:
                # Read, parsed and structured in a worker thread: a file of 10,000 routes takes
                # most of a second, and traffic on the loop goes on meanwhile (the loop gets
                # the interpreter back within 0.5 ms, see run_beside_loop). Applying does its
                # checks and route tables in one too (ConfigSink.apply_async).
                snapshot = await meshcore.run_beside_loop(self.load)
            except ConfigError as err:
                sink.rejected(err)
                self._log_rejected(err)
                continue
            try:
                await self._apply(sink, snapshot)
            except ConfigError as err:
                self._log_rejected(err)

    async def _apply(self, sink: ConfigSink, snapshot: Snapshot) -> None:
        """Apply; problems found while applying (a port in use) name this file too."""
        await sink.apply_async(snapshot, file=self.config.path)

    def _log_rejected(self, err: ConfigError) -> None:
        log.error(
            "config_rejected",
            path=self.config.path,
            stage=err.stage,
            problems=[str(p) for p in err.problems],
            kept="previous snapshot",
        )


@meshcore.hookimpl
def meshcore_config_sources() -> list[meshcore.ConfigSourceType]:
    """Register the ``file`` config source."""
    return [
        meshcore.ConfigSourceType(
            name="file",
            factory=FileSource,
            config=FileSourceConfig,
            description="a YAML, TOML or JSON file, reloaded on change and on SIGHUP",
        )
    ]
