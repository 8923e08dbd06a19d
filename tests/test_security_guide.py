"""docs/security.md: every command of its console blocks run as written, and its output compared.

The steps run in order in a scratch directory holding a copy of docs/security/inbound.yaml, with this
environment's ``meshcore`` first on the PATH (as after ``pip install meshcore``). Code
blocks of other kinds show a command run elsewhere (``text``: the testssl.sh scan, run by
tests/test_testssl.py) or config (``yaml``: docs/security/inbound.yaml shown inline, kept
equal to the file by tests/test_doc_examples.py, and fragments, checked by
test_the_guides_config_fragments_are_valid).
"""

from __future__ import annotations

import doctest
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_testssl import SCAN
from test_tutorial import console_steps, read_blocks

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "security.md"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (Debian package)")


def test_every_command_of_the_security_guide_works_as_written(tmp_path: Path) -> None:
    shutil.copy2(ROOT / "docs" / "security" / "inbound.yaml", tmp_path / "inbound.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    steps = []
    for block in read_blocks(GUIDE.read_text(encoding="utf-8")):
        if block.info == "console":
            steps += console_steps(block)
        else:
            # A command run elsewhere (text), or config (yaml: the inline example, or a fragment).
            assert block.info in ("text", "yaml"), f"security.md:{block.line}: ```{block.info}"
    assert len(steps) >= 10
    for step in steps:
        done = subprocess.run(  # noqa: S603 - bash runs the guide's own commands
            ["bash", "-c", f"set -eo pipefail\n{step.command}"],  # noqa: S607 - bash from PATH, as a reader's shell
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        where = f"docs/security.md:{step.line}: $ {step.command}"
        assert done.returncode == step.status, f"{where}\nexited {done.returncode}:\n{done.stdout}"
        assert doctest.OutputChecker().check_output(step.expected, done.stdout, doctest.ELLIPSIS), (
            f"{where}\nprinted:\n{done.stdout}\nbut the guide shows:\n{step.expected}"
        )


def test_the_guide_shows_the_testssl_command_the_test_runs() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    shown = " ".join(text.split("```text\n", 1)[1].split("```", 1)[0].replace("\\\n", " ").split())
    assert shown.startswith("testssl " + " ".join(SCAN) + " --add-ca ")


def test_the_guides_config_fragments_are_valid() -> None:
    """Each ``yaml`` block is a part of a proxy config that the structurer accepts."""
    import yaml  # noqa: PLC0415 - only here

    from meshcore import build_registry, snapshot_from_data  # noqa: PLC0415

    fragments = [b for b in read_blocks(GUIDE.read_text(encoding="utf-8")) if b.info == "yaml"]
    assert fragments
    for block in fragments:
        data = yaml.safe_load("\n".join(block.lines))
        snapshot_from_data(data, build_registry(autoload=False))
