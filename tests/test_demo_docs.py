"""docs/demo.md, done as a newcomer does it: every command run, in order, for real.

As for "Your first mesh" (tests/test_first_mesh.py): the page's console blocks run with bash
in an empty folder; a command ending in ``&`` (the demo) runs in the background until the
end of the test, and what the page shows under it must appear in its output before the
next command runs; every other command must print what the page shows (``...`` stands for
any text) and exit 0. TMPDIR is the test's own, so the tour commands find this test's demo
and no other.
"""

from __future__ import annotations

import contextlib
import doctest
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _demo import START_TIMEOUT
from test_tutorial import Step, console_steps, read_blocks

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "demo.md"
STEP_TIMEOUT = 60.0


def page_steps() -> list[Step]:
    steps: list[Step] = []
    for block in read_blocks(PAGE.read_text(encoding="utf-8")):
        if block.info == "console":
            steps += console_steps(block)
        else:
            assert block.info == "text", (
                f"demo.md:{block.line}: a ```{block.info} block is not run by this test"
            )
    return steps


def matches(expected: str, output: str) -> bool:
    return doctest.OutputChecker().check_output(expected, output, doctest.ELLIPSIS)


def test_the_page_tries_the_three_things() -> None:
    commands = [step.command for step in page_steps()]
    assert commands[0].startswith("meshcore demo ")
    assert commands[0].endswith(" &")
    for wanted in ("meshcore demo shift reviews v3 100", "meshcore demo break ratings", "meshcore demo deny"):
        assert any(c.startswith(wanted) for c in commands), wanted


def test_every_command_of_the_demo_page_works_as_written(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path / "tmp"),
    }
    background: list[subprocess.Popen[bytes]] = []
    try:
        for i, step in enumerate(page_steps()):
            where = f"docs/demo.md:{step.line}: $ {step.command}"
            if step.command.endswith(" &"):
                log = tmp_path / f"background-{i}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(  # noqa: S603 - bash runs the page's own commands
                        ["bash", "-c", step.command[:-2]],  # noqa: S607 - bash from PATH, as a newcomer's shell
                        cwd=tmp_path,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                background.append(process)
                deadline = time.monotonic() + START_TIMEOUT
                while not matches(step.expected, log.read_text(errors="replace")):
                    assert process.poll() is None, f"{where}\nexited {process.returncode}:\n{log.read_text()}"
                    assert time.monotonic() < deadline, (
                        f"{where}\nprinted:\n{log.read_text()}\nthe page shows:\n{step.expected}"
                    )
                    time.sleep(0.05)
                continue
            done = subprocess.run(  # noqa: S603 - bash runs the page's own commands
                ["bash", "-c", step.command],  # noqa: S607 - bash from PATH, as a newcomer's shell
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=STEP_TIMEOUT,
                check=False,
            )
            assert done.returncode == step.status, f"{where}\nexited {done.returncode}:\n{done.stdout}"
            assert matches(step.expected, done.stdout), (
                f"{where}\nprinted:\n{done.stdout}\nbut the page shows:\n{step.expected}"
            )
    finally:
        for process in background:  # Ctrl-C, as the page says
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        for process in background:
            try:
                assert process.wait(timeout=30) == 0
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
