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
TESTPLUGINS = ROOT / "tests" / "testplugins"


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


@pytest.fixture(scope="session")
def testplugins_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where pip has installed meshcore-testplugins (tests/testplugins), for real."""
    from _distributions import install  # noqa: PLC0415 - only the tests that install it pay for it

    return install(TESTPLUGINS, tmp_path_factory.mktemp("testplugins"))


@pytest.fixture
def testplugins_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """The test plugins ``meshcore_testplugins``, imported from the source tree (not installed).

    For tests that register them in-process with ``build_registry(plugins=...)``.
    """
    monkeypatch.syspath_prepend(str(TESTPLUGINS / "src"))
    module = importlib.import_module("meshcore_testplugins")
    yield module
    for name in [n for n in sys.modules if n.split(".")[0] == "meshcore_testplugins"]:
        sys.modules.pop(name)


@pytest.fixture
def installed_testplugins(testplugins_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed meshcore-testplugins on sys.path: ``build_registry()`` finds it by its entry point."""
    monkeypatch.syspath_prepend(str(testplugins_site))
    monkeypatch.delenv("MESHCORE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "meshcore_testplugins"]:
        sys.modules.pop(name)
