"""Fixtures shared by the tests of meshcore itself."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELLO_SRC = ROOT / "examples" / "plugin-hello" / "src"


@pytest.fixture
def hello_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The example plugin ``meshcore_hello``, imported from its source tree (not installed).

    For tests that register it in-process with ``build_registry(plugins=...)``; the real
    install is tested in test_plugin_hello.py.
    """
    monkeypatch.syspath_prepend(str(HELLO_SRC))
    module = importlib.import_module("meshcore_hello")
    yield module
    sys.modules.pop("meshcore_hello", None)
