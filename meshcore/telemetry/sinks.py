"""Where access-log lines go: stdout, stderr or a file, written in batches off the request path.

A request only appends its line to a sink's buffer. The sink runs as a proxy service: at
least every ``flush_interval``, or as soon as 64 KiB wait, it writes the buffered lines
with one ``write`` per batch of whole lines, in a worker thread (a slow disk or a full
pipe never stalls the event loop). Past ``max_buffered`` bytes waiting, new lines are
dropped and counted (``access_log_lines_dropped_total``): memory stays bounded.

Files are opened for appending (``O_APPEND``), so that several processes (``--workers``)
can share one: each batch lands whole. A file is reopened when its path no longer names
the file open (moved by logrotate), and on SIGUSR1 (:meth:`FileSink.reopen`). With
``max_size`` the sink rotates it: under an exclusive lock on ``PATH.lock``, the process
that finds the file too big renames ``PATH.N-1`` to ``PATH.N``, ..., ``PATH`` to
``PATH.1``; the others find the path moved and reopen. Lines written to the old file
meanwhile stay in it (now ``PATH.1``): rotation loses and splits nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
from typing import Any

import structlog
import trio

from meshcore.config.accesslog import AccessLog
from meshcore.runtime.stats import Stats

__all__ = ["FLUSH_BYTES", "BufferedSink", "FileSink", "StreamSink", "open_sink"]

log = structlog.get_logger("meshcore.access_log")

FLUSH_BYTES = 64 * 1024
"""Buffered bytes that trigger a write before the flush interval is up."""
PIPE_BUF = select.PIPE_BUF
"""Writes up to this size to a pipe are atomic: stream sinks write whole lines in such chunks."""


class BufferedSink:
    """Lines buffered by requests, written by a proxy service task."""

    def __init__(self, name: str, *, flush_interval: float, max_buffered: int, stats: Stats) -> None:
        self.name = name
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.lines: list[str] = []
        self.size = 0
        self._wake = trio.Event()
        self._stopping = False
        self.stat_written = stats.counter("access_log_lines_written_total", sink=name)
        self.stat_dropped = stats.counter("access_log_lines_dropped_total", sink=name)
        self.stat_errors = stats.counter("access_log_write_errors_total", sink=name)
        self._failing = False
        self._done = False

    def write(self, line: str) -> None:
        """Buffer one line (never blocks; drops and counts it when the buffer is full).

        After the sink's task has ended (no live Snapshot uses it, or the proxy stopped),
        nothing would write it: a line of a draining chain's last request is counted as
        dropped, never lost silently.
        """
        size = len(line)
        if self._done or self.size + size > self.max_buffered:
            self.stat_dropped.value += 1
            return
        self.lines.append(line)
        self.size += size
        if self.size >= FLUSH_BYTES:
            self._wake.set()

    def stop(self) -> None:
        """Write what is buffered, then return from :meth:`run`."""
        self._stopping = True
        self._wake.set()

    def wake(self) -> None:
        """Write now (SIGUSR1: reopen, and flush)."""
        self._wake.set()

    async def run(self) -> None:
        """Write batches until stopped (a proxy service task)."""
        try:
            while not self._stopping:
                with trio.move_on_after(self.flush_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.flush()
            self._done = True
            self.stat_dropped.value += len(self.lines)  # the final flush timed out
            self.lines, self.size = [], 0
            self.close()

    async def flush(self) -> None:
        """Write the buffered lines (in a worker thread)."""
        if not self.lines:
            return
        lines, count = self.lines, len(self.lines)
        self.lines, self.size = [], 0
        data = "".join(lines).encode("utf-8", "replace")
        try:
            await trio.to_thread.run_sync(self.write_batch, data)
        except OSError as err:
            self.stat_errors.value += 1
            self.stat_dropped.value += count
            if not self._failing:
                log.error("access_log_write_failed", sink=self.name, reason=str(err))  # noqa: TRY400 - an I/O error, not a bug
            self._failing = True
            return
        self._failing = False
        self.stat_written.value += count

    def write_batch(self, data: bytes) -> None:
        """Write whole lines (in a worker thread)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (when the sink is no longer used)."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class StreamSink(BufferedSink):
    """stdout or stderr (shared with other worker processes: lines are written whole)."""

    def __init__(self, fd: int, **kwargs: Any) -> None:
        super().__init__("stdout" if fd == 1 else "stderr", **kwargs)
        self.fd = fd

    def write_batch(self, data: bytes) -> None:
        """Chunks of whole lines of at most PIPE_BUF bytes: atomic on a pipe."""
        start = 0
        while start < len(data):
            end = start + PIPE_BUF
            if end < len(data):
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else data.find(b"\n", end) + 1 or len(data)
            _write_all(self.fd, data[start:end])
            start = end


class FileSink(BufferedSink):
    """A file, appended to, reopened when moved or on SIGUSR1, rotated past ``max_size``."""

    def __init__(self, path: str, *, max_size: int | None, max_files: int, **kwargs: Any) -> None:
        super().__init__(f"file:{path}", **kwargs)
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        self.fd: int | None = None
        self._reopen = False
        self.open()

    def open(self) -> None:
        """Open (or create) the file for appending; OSError if it cannot be."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        old, self.fd = self.fd, fd
        if old is not None:
            os.close(old)

    def reopen(self) -> None:
        """Reopen the path at the next write, and write soon (SIGUSR1 after an external rotation)."""
        self._reopen = True
        self.wake()

    def _moved(self) -> bool:
        assert self.fd is not None  # noqa: S101 - opened in __init__
        try:
            return os.stat(self.path).st_ino != os.fstat(self.fd).st_ino  # noqa: PTH116 - beside fstat, on one str path
        except FileNotFoundError:
            return True

    def write_batch(self, data: bytes) -> None:
        """Reopen if moved, rotate if too big, then append the batch in one write."""
        if self._reopen or self.fd is None or self._moved():
            self._reopen = False
            self.open()
        assert self.fd is not None  # noqa: S101 - just opened
        if self.max_size is not None:
            size = os.fstat(self.fd).st_size
            if size and size + len(data) > self.max_size:
                try:
                    self._rotate()
                except OSError as err:
                    # Rotation is housekeeping: when it cannot be done (a folder turned read-only,
                    # say), the lines still go to the file open now, never to the floor.
                    self.stat_errors.value += 1
                    log.error("access_log_rotation_failed", sink=self.name, reason=str(err))  # noqa: TRY400 - an I/O error, not a bug
        _write_all(self.fd, data)

    def _rotate(self) -> None:
        with open(f"{self.path}.lock", "a") as lock:  # noqa: PTH123 - a lock file, held by its fd
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self._moved():  # another process rotated it first: follow
                    self.open()
                    return
                for i in range(self.max_files - 1, 0, -1):
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")  # noqa: PTH105 - str paths
                # logrotate takes no lock of ours: it may have moved the file since the check.
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path, f"{self.path}.1")  # noqa: PTH105 - str paths
                self.open()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_sink(config: AccessLog, services: Any, stats: Stats) -> Any:
    """The sink of one access log: shared by every log that writes to the same place.

    Raises:
        OSError: a file sink's file cannot be opened (the Snapshot is rejected).
    """
    if config.sink == "process_log":
        return None
    flush_interval, max_buffered = float(config.flush_interval), int(config.max_buffered)
    key: tuple[Any, ...]
    if config.sink == "file":
        assert config.path is not None  # noqa: S101 - checked by AccessLog
        path = os.path.abspath(config.path)  # noqa: PTH100 - a key and a file name, as given
        max_size = int(config.max_size) if config.max_size is not None else None

        def make_file() -> FileSink:
            return FileSink(
                path,
                max_size=max_size,
                max_files=config.max_files,
                flush_interval=flush_interval,
                max_buffered=max_buffered,
                stats=stats,
            )

        key = ("access_log", "file", path, max_size, config.max_files, flush_interval, max_buffered)
        return services.get(key, make_file) if services is not None else make_file()
    fd = 1 if config.sink == "stdout" else 2

    def make_stream() -> StreamSink:
        return StreamSink(fd, flush_interval=flush_interval, max_buffered=max_buffered, stats=stats)

    key = ("access_log", config.sink, flush_interval, max_buffered)
    return services.get(key, make_stream) if services is not None else make_stream()
