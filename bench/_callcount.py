"""Python calls per request, counted inside a measured process (a CPU-independent figure).

A role started with ``--count-calls FILE`` calls :func:`install` first: the first SIGUSR1
starts counting every Python function call (``sys.setprofile``), the second stops and
writes ``{"calls": N, "by_package": {...}, "top": [...]}`` to FILE. The benchmark sends a known number of
requests between the two signals and divides.
"""

from __future__ import annotations

import collections
import json
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


def install(path: str) -> None:
    """Count calls between two SIGUSR1s; write the counts to ``path``."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    state = {"on": False}

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1

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

    signal.signal(signal.SIGUSR1, toggle)
