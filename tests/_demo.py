"""A ``meshcore demo`` run for tests: the real command, from a folder outside the checkout.

The demo's processes all carry ``MESHCORE_DEMO_RUN=<its folder>`` in their environment, so
that a test finds any process of its run still alive after the demo exited.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

START_TIMEOUT = 60.0
"""Thirteen Python processes starting on a loaded 2-core machine."""

TRAFFIC = re.compile(
    r"traffic: (?P<total>\d+) requests: (?P<ok>\d+) ok, (?P<limited>\d+) rate-limited \(429, by design\), "
    r"(?P<degraded>\d+) degraded, (?P<failed>\d+) failed"
)


def strays(workdir: Path) -> list[str]:
    """The command lines of live processes of the run in ``workdir``."""
    marker = f"MESHCORE_DEMO_RUN={workdir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


@attrs.define
class DemoRun:
    """A running ``meshcore demo``: its process, output and folder."""

    process: subprocess.Popen[bytes]
    output: Path
    workdir: Path

    @property
    def text(self) -> str:
        """What it printed so far."""
        return self.output.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until it printed ``needle`` (it must stay running meanwhile)."""
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert self.process.poll() is None, f"the demo exited {self.process.returncode}:\n{self.text}"
            assert time.monotonic() < deadline, f"no {needle!r} after {timeout:g}s:\n{self.text}"
            time.sleep(0.05)

    @property
    def dashboard(self) -> str:
        """The dashboard's URL as the demo printed it."""
        found = re.search(r"Dashboard: (http://\S+)", self.text)
        assert found, self.text
        return found[1]

    def data(self) -> Any:
        """The dashboard's data."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.dashboard + "/data", timeout=10) as response:
            return json.loads(response.read())

    def edges(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The graph's edges now, by (source, target)."""
        return {(e["source"], e["target"]): e for e in self.data()["graph"]["edges"]}

    def tour(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``meshcore demo ARGS`` (shift, break, ...) against this run."""
        admin = self.dashboard.removeprefix("http://").removesuffix("/dashboard")
        return subprocess.run(  # noqa: S603 - our own command
            [
                sys.executable,
                "-m",
                "meshcore",
                "demo",
                *args,
                "--admin",
                admin,
                "--mesh",
                str(self.workdir / "mesh"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def __enter__(self) -> DemoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        """Make sure it is gone, whatever the test did (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def finish(self, timeout: float = 30.0) -> tuple[int, dict[str, int]]:
        """Wait for it to exit; its status and the traffic line's counts."""
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        found = TRAFFIC.search(self.text)
        assert found, self.text
        return status, {k: int(v) for k, v in found.groupdict().items()}


def start_demo(
    tmp_path: Path, *args: str, meshcore: Sequence[str] = (sys.executable, "-m", "meshcore")
) -> DemoRun:
    """Start ``meshcore demo ARGS`` in ``tmp_path`` (not the checkout), as a newcomer would."""
    workdir = tmp_path / "run"
    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with output.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own command
            [*meshcore, "demo", "--workdir", str(workdir), *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return DemoRun(process, output, workdir)
