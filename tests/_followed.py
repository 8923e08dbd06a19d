"""A process whose output a test follows line by line, to wait on what it says instead of polling it.

For tests that are not trio tests (module fixtures of real processes): a thread reads the
process's output (stdout and stderr together), keeps every line, copies it to a log file
for a failure's post-mortem, and wakes whoever waits for a line. A wait ends when the line
comes, and fails at once, with the output so far, if the process exits first.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


class Followed:
    """``argv`` started with its output followed (and copied to ``log``).

    Args:
        argv: the command.
        log: the file its output is appended to, as it comes.
        cwd: its working directory.
        env: its whole environment (None: this process's).
    """

    def __init__(
        self, argv: list[str], log: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self.process = subprocess.Popen(  # noqa: S603 - the tests' own commands
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env
        )
        self._reader = threading.Thread(
            target=self._read, args=(log,), name=f"follow {argv[-1]}", daemon=True
        )
        self._reader.start()

    def _read(self, log: Path) -> None:
        assert self.process.stdout is not None
        with self.process.stdout as pipe, log.open("ab") as out:
            for raw in pipe:
                out.write(raw)
                out.flush()
                with self._changed:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, what: str, found: Callable[[str], bool], timeout: float) -> str:
        """The first line (so far or to come) for which ``found`` is true; AssertionError after ``timeout`` s.

        Args:
            what: what is awaited, for the message of a failure.
            found: the test of a line.
            timeout: seconds at most.
        """
        checked = 0
        line: str | None = None

        def arrived() -> bool:
            nonlocal checked, line
            for candidate in self.lines[checked:]:
                checked += 1
                if found(candidate):
                    line = candidate
                    return True
            return self._ended

        with self._changed:
            self._changed.wait_for(arrived, timeout)
            if line is not None:
                return line
            said = "\n".join(self.lines[-30:])
            why = f"exited with {self.process.poll()}" if self._ended else f"not within {timeout:g}s"
        msg = f"{self.argv!r}: no {what}, {why}; its last lines:\n{said}"
        raise AssertionError(msg)

    def wait_for_event(self, event: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """The first JSON log line of ``event`` whose ``fields`` have those values (see :meth:`wait_for`)."""

        def matches(line: str) -> bool:
            data = _json(line)
            return (
                data is not None
                and data.get("event") == event
                and all(data.get(k) == v for k, v in fields.items())
            )

        found = _json(self.wait_for(f"{event} {fields or ''}".strip(), matches, timeout))
        assert found is not None
        return found

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far."""
        with self._changed:
            lines = list(self.lines)
        return [data for data in map(_json, lines) if data is not None]

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` s; its output read to the end."""
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout)


def _json(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
