"""Rules of the house that the code layout must keep (DESIGN.md, "Rules of the house").

Rule 1: filters/ and plugins/ use only the public API: ``import meshcore`` and the names in
``meshcore.__all__`` (``from meshcore import X``, ``meshcore.X``). They may reach each other
as ``meshcore.filters.*`` and ``meshcore.plugins.*``. Anything else under ``meshcore.`` is a
runtime internal; if a first-party filter needs one, the public API lacks it: add it to
meshcore/__init__.py (and its ``__all__``).

The checker reads the source with :mod:`ast`, so it sees imports anywhere in a module
(inside functions, under ``if TYPE_CHECKING:``) without importing the module.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

import meshcore

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_ONLY_DIRS = ("filters", "plugins")
PACKAGE = "meshcore"
# First-party plugin packages, which may use each other.
OPEN_SUBPACKAGES = frozenset({"filters", "plugins"})


def _internal_module(module: str) -> bool:
    """Whether ``import module`` reaches past the public API of meshcore."""
    if not module.startswith(PACKAGE + "."):
        return False  # meshcore itself, the standard library, third-party packages
    return module.split(".")[1] not in OPEN_SUBPACKAGES


def _bound_names(tree: ast.AST) -> set[str]:
    """Names that the module binds to the meshcore package (``import meshcore [as mc]``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is None and alias.name.split(".")[0] == PACKAGE:
                    names.add(PACKAGE)  # ``import meshcore.filters.x`` binds ``meshcore`` too
                elif alias.asname is not None and alias.name == PACKAGE:
                    names.add(alias.asname)
    return names


def internal_uses(source: str, filename: str, public: Collection[str]) -> list[str]:
    """Every use of a meshcore internal in ``source``, as ``file:line: what``.

    Args:
        source: the Python source to check.
        filename: the name to report it under.
        public: the public names of the meshcore package (its ``__all__``).
    """
    allowed = set(public) | OPEN_SUBPACKAGES
    tree = ast.parse(source, filename=filename)
    package_names = _bound_names(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(
                (node.lineno, f"import {alias.name}") for alias in node.names if _internal_module(alias.name)
            )
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0:
                # Relative imports would dodge the names checked here; first-party plugins
                # import absolutely, as a third-party one must.
                found.append((node.lineno, f"from {'.' * node.level}{module} import ... (relative)"))
            elif _internal_module(module):
                found.append((node.lineno, f"from {module} import {', '.join(a.name for a in node.names)}"))
            elif module == PACKAGE:
                found.extend(
                    (node.lineno, f"from {PACKAGE} import {alias.name} (not in meshcore.__all__)")
                    for alias in node.names
                    if alias.name not in allowed
                )
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in package_names
            and node.attr not in allowed
        ):
            found.append((node.lineno, f"{node.value.id}.{node.attr} (not in meshcore.__all__)"))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def _checked_files() -> list[Path]:
    return sorted(path for folder in PUBLIC_ONLY_DIRS for path in (ROOT / folder).rglob("*.py"))


def test_checked_folders_have_sources() -> None:
    # Keeps the rule below from passing vacuously (a moved folder, a wrong ROOT).
    for folder in PUBLIC_ONLY_DIRS:
        assert list((ROOT / folder).rglob("*.py")), f"no Python files found in {ROOT / folder}"


def test_filters_and_plugins_use_only_the_public_api() -> None:
    violations = [
        problem
        for path in _checked_files()
        for problem in internal_uses(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), meshcore.__all__
        )
    ]
    assert not violations, (
        "filters/ and plugins/ must use only the public API (`import meshcore`, names in "
        "meshcore.__all__); add what they need to meshcore/__init__.py:\n" + "\n".join(violations)
    )


# -- the checker itself ------------------------------------------------------------------------

PUBLIC = ("hookimpl", "Duration", "ByteSize")


@pytest.mark.parametrize(
    "source",
    [
        "import meshcore\n",
        "from meshcore import hookimpl, Duration\n",
        "import meshcore\n@meshcore.hookimpl\ndef f(): return meshcore.Duration(1)\n",
        "import meshcore as mc\nx = mc.ByteSize(1)\n",
        "import meshcore.filters.router\n",
        "from meshcore.plugins.file_source import FileSourceConfig\n",
        "from meshcore.filters import load_balancers\n",
        "from meshcore import filters, plugins\n",
        "import attrs\nfrom collections.abc import Sequence\nregistry = attrs.registry\n",
        "import meshcorex.thing\nmeshcorex.thing.registry\n",
    ],
)
def test_checker_allows_the_public_api(source: str) -> None:
    assert internal_uses(source, "filters/ok.py", PUBLIC) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import meshcore.registry\n", ["filters/bad.py:1: import meshcore.registry"]),
        (
            "import attrs\nfrom meshcore.config.units import Duration\n",
            ["filters/bad.py:2: from meshcore.config.units import Duration"],
        ),
        ("import os, meshcore.runtime as rt\n", ["filters/bad.py:1: import meshcore.runtime"]),
        ("from meshcore.filtersx import y\n", ["filters/bad.py:1: from meshcore.filtersx import y"]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from meshcore.http import Request\n",
            ["filters/bad.py:3: from meshcore.http import Request"],
        ),
        (
            "def f():\n    from meshcore import errors, hookimpl\n",
            ["filters/bad.py:2: from meshcore import errors (not in meshcore.__all__)"],
        ),
        (
            "import meshcore\nmeshcore.registry.build_registry()\n",
            ["filters/bad.py:2: meshcore.registry (not in meshcore.__all__)"],
        ),
        (
            "import meshcore as mc\n\n\nmc.hookimpl\nmc.config.Snapshot\n",
            ["filters/bad.py:5: mc.config (not in meshcore.__all__)"],
        ),
        (
            "import meshcore.filters.router\nmeshcore.cli.main()\n",
            ["filters/bad.py:2: meshcore.cli (not in meshcore.__all__)"],
        ),
        ("from .. import registry\n", ["filters/bad.py:1: from .. import ... (relative)"]),
        (
            "import meshcore.errors\nfrom meshcore.registry import Registry\n",
            [
                "filters/bad.py:1: import meshcore.errors",
                "filters/bad.py:2: from meshcore.registry import Registry",
            ],
        ),
    ],
)
def test_checker_catches_internal_uses(source: str, expected: list[str]) -> None:
    assert internal_uses(source, "filters/bad.py", PUBLIC) == expected
