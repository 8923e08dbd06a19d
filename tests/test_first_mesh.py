"""docs/first-mesh.md, done as a newcomer does it: every command run, in order, for real.

The page's console blocks are run with bash in a copy of ``examples/first-mesh``; a
command ending in ``&`` runs in the background (the control plane, the sidecars, the
applications) until the end of the test, and what the page shows under it must appear in
its output before the next command runs. Every other command must print what the page
shows (``...`` stands for any text) and exit with status 0, or with the ``% exit-status``
the page gives before its block. The YAML on the page is included from the example's real
files (the docs build fails if one goes missing).
"""

from __future__ import annotations

import contextlib
import doctest
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_tutorial import Step, console_steps, read_blocks

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "first-mesh.md"
BACKGROUND_TIMEOUT = 30.0
STEP_TIMEOUT = 60.0


def page_steps() -> list[Step]:
    steps: list[Step] = []
    for block in read_blocks(PAGE.read_text(encoding="utf-8")):
        if block.info == "console":
            steps += console_steps(block)
        else:
            assert block.info == "text" or block.example, (
                f"first-mesh.md:{block.line}: a ```{block.info} block is neither run by this test nor shows a "
                "real file (an example marker, checked by tests/test_doc_examples.py)"
            )
    return steps


def matches(expected: str, output: str) -> bool:
    return doctest.OutputChecker().check_output(expected, output, doctest.ELLIPSIS)


def test_the_page_walks_the_whole_way() -> None:
    commands = [step.command for step in page_steps()]
    assert sum("meshcore sidecar" in c for c in commands) == 3
    assert any(c.startswith("meshcore control-plane") for c in commands)
    assert "cp shift-to-v2.yaml mesh/backend-routes.yaml" in commands
    assert commands[-1] == "curl -s http://127.0.0.1:21180/"


def test_every_command_of_your_first_mesh_works_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "first-mesh", tmp_path / "examples" / "first-mesh")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    cwd = tmp_path
    background: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, step in enumerate(page_steps()):
            where = f"docs/first-mesh.md:{step.line}: $ {step.command}"
            if step.command.startswith("cd "):
                cwd = cwd / step.command[3:]
                continue
            if step.command.endswith(" &"):
                log = tmp_path / f"background-{i}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(  # noqa: S603 - bash runs the page's own commands
                        ["bash", "-c", step.command[:-2]],  # noqa: S607 - bash from PATH, as a newcomer's shell
                        cwd=cwd,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stopped with bash's child at the end
                    )
                background.append((process, log))
                deadline = time.monotonic() + BACKGROUND_TIMEOUT
                while not matches(step.expected, log.read_text(errors="replace")):
                    assert process.poll() is None, f"{where}\nexited {process.returncode}:\n{log.read_text()}"
                    assert time.monotonic() < deadline, (
                        f"{where}\nprinted:\n{log.read_text()}\nthe page shows:\n{step.expected}"
                    )
                    time.sleep(0.05)
                continue
            done = subprocess.run(  # noqa: S603 - bash runs the page's own commands
                ["bash", "-c", step.command],  # noqa: S607 - bash from PATH, as a newcomer's shell
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=STEP_TIMEOUT,
                check=False,
            )
            assert done.returncode == step.status, (
                f"{where}\nexited {done.returncode}, expected {step.status}:\n{done.stdout}"
            )
            assert matches(step.expected, done.stdout), (
                f"{where}\nprinted:\n{done.stdout}\nbut the page shows:\n{step.expected}"
            )
    finally:
        for process, _ in reversed(background):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in background:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
