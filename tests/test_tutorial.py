"""docs/tutorial.md, done as a newcomer does it: every shell step run for real, in order.

The tutorial's code is the example plugin's real files, shown inline after an
``<!-- example: FILE ... -->`` marker (test_doc_examples.py keeps each block equal to its
file). Everything else on the page is a ``console`` block, and this test runs each of its
commands in a copy of the
repository and compares what the command prints with what the page shows (``...`` stands
for any text, as in doctest). So the page's last step, the example's own tests passing
after ``pip install`` of meshcore and the plugin, is run here too.

Two things differ from a newcomer's machine, both because tests run offline:

- ``python -m venv DIR`` makes the environment without pip (``--without-pip``) and links it
  to the packages of the environment running these tests (a ``.pth`` file), where pip,
  setuptools, pytest, pytest-trio and meshcore's dependencies already are;
- ``python -m pip install ...`` gets ``--no-deps --no-build-isolation --no-index``: it
  installs meshcore and the plugin themselves (editable, from the copy), nothing else.

A code block of any other kind on the page fails the test: a sample that is neither
shown from a real file nor run here could rot unseen.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import attrs

from meshcore.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
# What a checkout needs for `pip install -e .` and the example: the rest is not copied.
CHECKOUT = ("pyproject.toml", "README.md", "meshcore", "filters", "plugins", "testing", "examples")
JUNK = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache")
STEP_TIMEOUT = 240  # seconds for one command (an editable install builds two distributions)

FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\S*)")
EXIT_STATUS = re.compile(r"^%\s*exit-status:\s*(\d+)\s*$")
EXAMPLE = re.compile(r"^<!-- example: .+ -->$")
VENV = re.compile(r"python -m venv (?P<dir>\S+)")
PIP_INSTALL = re.compile(r"python -m pip install\b")
ACTIVATE = re.compile(r"(\.|source) \S+/bin/activate")
OFFLINE_PIP = " --no-deps --no-build-isolation --no-index"


@attrs.frozen
class Block:
    """A fenced code block of the page: its info string, its lines, where it starts."""

    info: str
    lines: tuple[str, ...]
    line: int
    exit_status: int = 0
    example: bool = False


@attrs.frozen
class Step:
    """One command of a console block and what the page says it prints."""

    command: str
    expected: str
    status: int
    line: int


def read_blocks(text: str) -> list[Block]:
    """Every fenced block of a MyST page, with the ``% exit-status: N`` comment or example marker before it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    status = 0
    example = False
    i = 0
    while i < len(lines):
        found = EXIT_STATUS.match(lines[i])
        if found:
            status = int(found[1])
        example = example or EXAMPLE.match(lines[i]) is not None
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip() == fence[1]),
            len(lines),
        )
        blocks.append(Block(fence[2], tuple(lines[i + 1 : end]), i + 1, status, example))
        status = 0
        example = False
        i = end + 1
    return blocks


def console_steps(block: Block) -> list[Step]:
    """The commands of a console block; the last one must exit with the block's status."""
    steps: list[tuple[str, list[str], int]] = []
    for offset, line in enumerate(block.lines, start=1):
        if line.startswith("$ "):
            steps.append((line[2:], [], block.line + offset))
        else:
            assert steps, f"tutorial.md:{block.line + offset}: output before any command"
            steps[-1][1].append(line)
    last = len(steps) - 1
    return [
        Step(command, "".join(f"{out}\n" for out in output), block.exit_status if i == last else 0, line)
        for i, (command, output, line) in enumerate(steps)
    ]


def tutorial_steps() -> list[Step]:
    steps: list[Step] = []
    for block in read_blocks(TUTORIAL.read_text(encoding="utf-8")):
        if block.info == "console":
            steps += console_steps(block)
        else:
            assert block.example, (
                f"tutorial.md:{block.line}: a ```{block.info} block is neither run by this test nor "
                "shown from a real file; make it a console step, or mark the file it shows "
                "(<!-- example: FILE ... -->, see test_doc_examples.py)"
            )
    return steps


def clean_env() -> dict[str, str]:
    """This process's environment, without anything that points Python, pip or pytest elsewhere."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", AUTOLOAD_ENV)
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith(("PIP_", "PYTEST_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INDEX"] = "1"
    return env


def link_to_our_packages(venv: Path, env: dict[str, str]) -> None:
    """Make the packages of this test environment importable in ``venv`` (offline installs)."""
    done = subprocess.run(  # noqa: S603 - the new environment's own interpreter
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    ours = [path for path in site.getsitepackages() if Path(path).is_dir()]
    Path(done.stdout.strip(), "zz-test-environment.pth").write_text("\n".join(ours) + "\n", "utf-8")


def checkout(into: Path) -> Path:
    work = into / "meshcore"
    work.mkdir()
    for name in CHECKOUT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=JUNK)
        else:
            shutil.copy2(source, work / name)
    return work


def test_the_tutorial_shows_only_included_files_and_steps_that_are_run() -> None:
    steps = tutorial_steps()
    commands = [step.command for step in steps]
    # The page's path, start to end: without these the run below would prove little.
    assert any(VENV.fullmatch(c) for c in commands)
    assert any(PIP_INSTALL.match(c) and "./examples/plugin-hello" in c for c in commands)
    assert "meshcore plugins" in commands
    assert commands[-1] == "python -m pytest examples/plugin-hello/tests"
    assert "passed" in steps[-1].expected


def test_read_blocks_finds_fences_and_exit_statuses() -> None:
    text = "intro\n\n% exit-status: 1\n\n```console\n$ false\n```\n\n<!-- example: a.py -->\n```python\nx = 1\n```\n"
    assert read_blocks(text) == [
        Block("console", ("$ false",), 5, 1),
        Block("python", ("x = 1",), 10, 0, example=True),
    ]
    (step,) = console_steps(read_blocks(text)[0])
    assert step == Step("false", "", 1, 6)


def test_every_step_of_the_tutorial_works_as_written(tmp_path: Path) -> None:
    work = checkout(tmp_path)
    env = clean_env()
    prelude = ["set -eo pipefail"]
    for step in tutorial_steps():
        command = step.command
        venv = VENV.fullmatch(command)
        if venv is not None:
            command = f"{shlex.quote(sys.executable)} -m venv --without-pip {venv['dir']}"
        elif PIP_INSTALL.match(command):
            command += OFFLINE_PIP
        done = subprocess.run(  # noqa: S603 - bash runs the tutorial's own commands
            ["bash", "-c", "\n".join([*prelude, command])],  # noqa: S607 - bash from PATH, as a newcomer's shell
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        where = f"docs/tutorial.md:{step.line}: $ {step.command}"
        assert done.returncode == step.status, (
            f"{where}\nexited {done.returncode}, expected {step.status}:\n{done.stdout}"
        )
        checker = doctest.OutputChecker()
        assert checker.check_output(step.expected, done.stdout, doctest.ELLIPSIS), (
            f"{where}\nprinted:\n{done.stdout}\nbut the tutorial shows:\n{step.expected}"
        )
        if venv is not None:
            link_to_our_packages(work / venv["dir"], env)
        if ACTIVATE.fullmatch(step.command):
            prelude.append(step.command)
