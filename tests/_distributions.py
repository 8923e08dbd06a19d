"""Plugin distributions installed for real: pip builds the wheel and installs it.

The wheel is built without build isolation (no network: setuptools comes from the test
environment, see the ``test`` extra) from a copy of the project, so that the build leaves
nothing in the source tree, and installed into a directory of its own that only the
processes (or the ``sys.path``) of the tests that ask for it see.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from meshcore.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT = 120
RUN_TIMEOUT = 60


def run(*args: str, env: dict[str, str], timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``args``; output captured as text."""
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def clean_env() -> dict[str, str]:
    """This process's environment, with plugin autoload on and no pip configuration surprises."""
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV and not k.startswith("PIP_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INDEX"] = "1"
    return env


def env_with(site: Path | None) -> dict[str, str]:
    """:func:`clean_env` with ``site`` (an install directory) first on PYTHONPATH."""
    env = clean_env()
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def install(project: Path, work: Path) -> Path:
    """Build and install the distribution at ``project`` into ``work/site``; return that directory."""
    source = work / "source"
    shutil.copytree(project, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    done = run(
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
        str(source),
        env=clean_env(),
        timeout=PIP_TIMEOUT,
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return target
