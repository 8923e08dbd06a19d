"""Python calls per request, counted inside a measured process (a CPU-independent figure).

A role started with ``--count-calls FILE`` calls :func:`install` first: the first SIGUSR1
starts counting every Python function call (``sys.setprofile``), the second stops and
writes ``{"calls": N, "by_package": {...}, "top": [...]}`` to FILE. The benchmark sends a known number of
requests between the two signals and divides.

With ``MESHCORE_BENCH_PSTATS=PREFIX`` in the environment, the same two signals take a
cProfile profile instead, dumped to ``PREFIX.<pid>`` (for ``pstats``: callers, cumulative
times); the counts file then only says it is done.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["install"]


def _package(filename: str) -> str:
    """The top-level package a code object comes from ("h2", "trio", "meshcore", ...)."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("site-packages", "meshcore", "bench"):
        if marker in parts:
            i = parts.index(marker)
            if marker == "site-packages":
                return parts[i + 1].removesuffix(".py") if i + 1 < len(parts) else "?"
            return marker
    return "stdlib" if "python3" in filename else "?"


def install(path: str, signum: int = signal.SIGUSR1) -> None:
    """Count calls between two ``signum`` signals (SIGUSR1 unless the process uses it); write them to ``path``."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    state = {"on": False}

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1

    pstats_path = os.environ.get("MESHCORE_BENCH_PSTATS")
    if pstats_path:
        import cProfile

        profiler = cProfile.Profile()

        def toggle_pstats(_signum: int, _frame: FrameType | None) -> None:
            if not state["on"]:
                state["on"] = True
                profiler.enable()
                return
            profiler.disable()
            state["on"] = False
            profiler.dump_stats(f"{pstats_path}.{os.getpid()}")
            Path(path).write_text(json.dumps({"calls": 1, "by_package": {}, "top": []}))

        signal.signal(signum, toggle_pstats)
        return

    def toggle(_signum: int, _frame: FrameType | None) -> None:
        if not state["on"]:
            counts.clear()
            state["on"] = True
            sys.setprofile(profile)
            return
        sys.setprofile(None)
        state["on"] = False
        by_package: collections.Counter[str] = collections.Counter()
        for (filename, _name), n in counts.items():
            by_package[_package(filename)] += n
        top = [[f"{_package(filename)}:{name}", n] for (filename, name), n in counts.most_common(40)]
        Path(path).write_text(
            json.dumps({"calls": sum(counts.values()), "by_package": dict(by_package), "top": top})
        )

    signal.signal(signum, toggle)
