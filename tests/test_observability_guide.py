"""docs/observability.md, run: every console command, in order, against real processes.

The guide's files (docs/observability/) are copied to a temporary folder, and its fixed
ports (the proxy's 10000, the admin server's 9901, the application's 8080, the
collector's 4318, Prometheus's 9090) are replaced by free ones, in the files, the commands
and the outputs shown, so that the test can run beside others. A command ending in ``&``
runs in the background until the end of the test. Outputs are compared as doctest does
(``...`` stands for any text); since the page's background processes take a moment to
start, and Prometheus to scrape, a command whose output does not match yet is run again,
for a bounded time. The guide's OpenTelemetry Collector is played by this test's OTLP
receiver, listening where the page's collector would, which decodes the spans it gets.
"""

from __future__ import annotations

import contextlib
import doctest
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from _otlp import Collector, serve_collector
from _ports import free_port
from test_tutorial import Block, console_steps, read_blocks

from meshcore.config.logformat import OPERATORS
from meshcore.filters.mesh_metrics import HELP, LABELS

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "observability.md"
PORTS = ("10000", "9901", "8080", "4318", "9090")
RETRY_FOR = 20.0


def guide_blocks() -> list[Block]:
    return read_blocks(GUIDE.read_text(encoding="utf-8"))


def test_the_guide_shows_only_included_files_steps_that_are_run_and_format_text() -> None:
    kinds = {block.info for block in guide_blocks()}
    assert kinds == {"yaml", "console", "text"}
    # The yaml blocks are the guide's files, shown inline (test_doc_examples.py holds them to it).
    included = [b for b in guide_blocks() if b.info == "yaml"]
    assert len(included) == 3
    assert all(block.example for block in included)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (Debian package) is not installed")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_every_command_of_the_guide_works_as_written(nursery: trio.Nursery, tmp_path: Path) -> None:
    ports = {old: str(free_port()) for old in PORTS}

    def localise(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(f":{old}", f":{new}").replace(f"--port {old}", f"--port {new}")
        return text

    work = tmp_path / "docs" / "observability"
    work.mkdir(parents=True)
    for source in (ROOT / "docs" / "observability").iterdir():
        (work / source.name).write_text(localise(source.read_text()))
    collector = Collector()
    await nursery.start(serve_collector, collector, int(ports["4318"]))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    background: list[trio.Process] = []
    cwd = tmp_path
    try:
        for block in (b for b in guide_blocks() if b.info == "console"):
            for step in console_steps(block):
                command, expected = localise(step.command), localise(step.expected)
                where = f"docs/observability.md:{step.line}: $ {step.command}"
                if command.startswith("cd "):
                    cwd = cwd / command[3:]
                    continue
                if command.endswith("&"):
                    background.append(
                        await trio.lowlevel.open_process(
                            ["bash", "-c", f"exec {command[:-1]}"], cwd=cwd, env=env, start_new_session=True
                        )
                    )
                    continue
                with trio.move_on_after(RETRY_FOR):
                    while True:
                        done = await trio.run_process(
                            ["bash", "-o", "pipefail", "-c", command],
                            cwd=cwd,
                            env=env,
                            capture_stdout=True,
                            stderr=subprocess.STDOUT,
                            check=False,
                        )
                        output = done.stdout.decode()
                        if done.returncode == step.status and doctest.OutputChecker().check_output(
                            expected, output, doctest.ELLIPSIS
                        ):
                            break
                        # A background process is still starting, or Prometheus has not scraped yet.
                        await trio.sleep(0.3)
                assert done.returncode == step.status, f"{where}\nexited {done.returncode}:\n{output}"
                assert doctest.OutputChecker().check_output(expected, output, doctest.ELLIPSIS), (
                    f"{where}\nprinted:\n{output}\nbut the guide shows:\n{expected}"
                )
    finally:
        for process in background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in background:
            with trio.move_on_after(10):
                await process.wait()
    # The collector of the page got the forced trace: a server span and a client span.
    services = {service for service, _ in collector.spans}
    assert services == {"reviews"}
    assert {span.kind for _, span in collector.spans} == {2, 3}


def test_the_guide_lists_every_access_log_operator_and_mesh_metric() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert [name for name in OPERATORS if f"%{name}" not in text] == []
    assert [name for name in HELP if f"`meshcore_{name}`" not in text] == []
    assert [label for label in LABELS if f"`{label}`" not in text] == []
