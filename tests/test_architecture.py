"""Rules of the house that the code layout must keep (DESIGN.md, "Rules of the house").

Rule 1: filters/ and plugins/ use only the public API: ``import meshcore`` and the names in
``meshcore.__all__`` (``from meshcore import X``, ``meshcore.X``), and the control plane's
public API, the names in ``meshcore.control.__all__`` (``from meshcore.control import X``).
They may reach each other as ``meshcore.filters.*`` and ``meshcore.plugins.*``. Anything
else under ``meshcore.`` is an internal; if a first-party plugin needs one, the public API
lacks it: add it to meshcore/__init__.py or meshcore/control/__init__.py (and ``__all__``).

Rule 7: layers import downward only. Every module of meshcore/ and testing/ belongs to one
layer of :data:`LAYERS`, lowest first; a module may import its own layer and those below,
never one above (the package itself, ``import meshcore``, is the public API: it imports
every layer below it, so only the testing kit and the CLI may use it). A module nobody
placed fails the test: a new top-level module must say where it belongs.

The testing kit (testing/, ``meshcore.testing``) sits above the runtime (it starts real
proxies) and below the CLI. It imports what the public API offers from the public API
(``from meshcore import Request``, not from ``meshcore.http.messages``), so that the
internals it does use stand out, and no private name (``_x``) of another module.

The checkers read the source with :mod:`ast`, so they see imports anywhere in a module
(inside functions, under ``if TYPE_CHECKING:``) without importing the module.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

import meshcore
import meshcore.control

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_ONLY_DIRS = ("filters", "plugins")
PACKAGE = "meshcore"
# First-party plugin packages, which may use each other.
OPEN_SUBPACKAGES = frozenset({"filters", "plugins"})
# Public namespaces below the package: only the names of their __all__, imported from them.
PUBLIC_NAMESPACES = {f"{PACKAGE}.control": frozenset(meshcore.control.__all__)}


def _internal_module(module: str) -> bool:
    """Whether ``import module`` reaches past the public API of meshcore."""
    if not module.startswith(PACKAGE + "."):
        return False  # meshcore itself, the standard library, third-party packages
    if module in PUBLIC_NAMESPACES:
        return False  # checked name by name in internal_uses
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
                (node.lineno, f"import {alias.name}")
                for alias in node.names
                if _internal_module(alias.name) or alias.name in PUBLIC_NAMESPACES
            )
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0:
                # Relative imports would dodge the names checked here; first-party plugins
                # import absolutely, as a third-party one must.
                found.append((node.lineno, f"from {'.' * node.level}{module} import ... (relative)"))
            elif _internal_module(module):
                found.append((node.lineno, f"from {module} import {', '.join(a.name for a in node.names)}"))
            elif module in PUBLIC_NAMESPACES:
                found.extend(
                    (node.lineno, f"from {module} import {alias.name} (not in {module}.__all__)")
                    for alias in node.names
                    if alias.name not in PUBLIC_NAMESPACES[module]
                )
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


# -- rule 7: layers ----------------------------------------------------------------------------

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Vocabulary every layer shares: errors, response flags, the downstream connection, the
    # onion composition, logging, plugin descriptors, the token bucket.
    (
        "core",
        (
            "meshcore.errors",
            "meshcore.flags",
            "meshcore.connection",
            "meshcore.chain",
            "meshcore.logs",
            "meshcore.plugin",
            "meshcore.tokenbucket",
        ),
    ),
    ("config", ("meshcore.config", "meshcore.hookspecs", "meshcore.registry")),
    ("http", ("meshcore.http",)),
    (
        "runtime",
        ("meshcore.runtime", "meshcore.telemetry"),
    ),  # telemetry: the runtime's tracing, metrics, logs
    ("control", ("meshcore.control",)),
    ("api", ("meshcore",)),  # meshcore/__init__.py, the public API: exactly "meshcore"
    ("plugins", ("meshcore.filters", "meshcore.plugins")),
    ("testing", ("meshcore.testing",)),
    (
        "cli",
        (
            "meshcore.cli",
            "meshcore.cli_ca",
            "meshcore.cli_demo",
            "meshcore.demo",
            "meshcore.cli_mesh",
            "meshcore.docsgen",
            "meshcore.meshdocs",
            "meshcore.__main__",
        ),
    ),
)
SOURCE_DIRS = {
    "meshcore": "meshcore",
    "filters": "meshcore.filters",
    "plugins": "meshcore.plugins",
    "testing": "meshcore.testing",
}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of ``module``'s layer (its longest matching prefix), None if unplaced."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == PACKAGE
            matches = module == prefix or (not exact_only and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    """The dotted module name of a source file of meshcore/, filters/, plugins/ or testing/."""
    relative = path.relative_to(ROOT)
    package = SOURCE_DIRS[relative.parts[0]]
    parts = list(relative.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported_modules(source: str, filename: str, known: Collection[str]) -> list[tuple[int, str]]:
    """Every meshcore module ``source`` imports, as (line, module).

    ``from meshcore import config`` imports the module meshcore.config when that is one of
    ``known``; ``from meshcore import Request`` imports the package (the public API).
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level > 0:
                dots = "." * node.level
                targets = [module] if module else [alias.name for alias in node.names]
                found.extend((node.lineno, f"{dots}{target} (relative)") for target in targets)
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in known else module))
    ours = (pair for pair in found if pair[1] == PACKAGE or pair[1].startswith((PACKAGE + ".", ".")))
    return list(dict.fromkeys(ours))  # ``from m import a, b``: m once


def layer_violations(source: str, module: str, known: Collection[str]) -> list[str]:
    """Every import in ``source`` (module ``module``) of a layer above its own."""
    mine = layer_of(module)
    if mine is None:
        return [f"{module}: in no layer; add it to LAYERS in tests/test_architecture.py"]
    out = []
    for line, target in imported_modules(source, module, known):
        theirs = layer_of(target)
        if target.endswith("(relative)"):
            out.append(f"{module}:{line}: imports {target}")
        elif theirs is not None and theirs > mine:
            out.append(
                f"{module}:{line}: imports {target} ({LAYERS[theirs][0]}), a layer above its own ({LAYERS[mine][0]})"
            )
    return out


def _sources() -> dict[str, Path]:
    return {
        module_name(path): path for folder in SOURCE_DIRS for path in sorted((ROOT / folder).rglob("*.py"))
    }


def test_every_module_imports_only_its_layer_and_those_below() -> None:
    sources = _sources()
    assert "meshcore.runtime.proxy" in sources  # not vacuous
    assert "meshcore.testing.plugin" in sources
    known = set(sources)
    violations = [
        problem
        for module, path in sources.items()
        for problem in layer_violations(path.read_text(encoding="utf-8"), module, known)
    ]
    order = " < ".join(name for name, _ in LAYERS)
    assert not violations, f"layers import downward only ({order}):\n" + "\n".join(violations)


def kit_violations(source: str, module: str, public: Collection[str]) -> list[str]:
    """Public names imported from an internal module, and private names, in a testing/ module."""
    out = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if not isinstance(node, ast.ImportFrom) or not _internal_module(node.module or ""):
            continue
        if (node.module or "").startswith(f"{PACKAGE}.testing"):
            continue  # the kit's own modules
        for alias in node.names:
            if alias.name in public:
                out.append(f"{module}:{node.lineno}: {alias.name} is public: import it from meshcore")
            elif alias.name.startswith("_") or any(
                part.startswith("_") for part in (node.module or "").split(".")
            ):
                out.append(f"{module}:{node.lineno}: {node.module}.{alias.name} is private")
    return out


def test_the_testing_kit_takes_public_names_from_the_public_api() -> None:
    sources = {m: p for m, p in _sources().items() if m.startswith(f"{PACKAGE}.testing")}
    assert len(sources) > 5  # not vacuous
    violations = [
        problem
        for module, path in sorted(sources.items())
        for problem in kit_violations(path.read_text(encoding="utf-8"), module, meshcore.__all__)
    ]
    assert not violations, "testing/ imports public names from meshcore:\n" + "\n".join(violations)


def test_nothing_below_the_cli_imports_the_testing_kit() -> None:
    # Implied by the layers, said outright: proxies in production never load pytest helpers.
    testing = layer_of("meshcore.testing.plugin")
    assert testing is not None
    assert all(layer_of(m) is not None for m in ("meshcore.cli", "meshcore.runtime.proxy"))
    assert layer_of("meshcore.runtime.proxy") < testing < layer_of("meshcore.cli")  # type: ignore[operator] # checked above


# -- the checkers themselves -------------------------------------------------------------------

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
        "from meshcore.control import MeshModel, translate\n",
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
            "from meshcore.control import translate, serve\n",
            ["filters/bad.py:1: from meshcore.control import serve (not in meshcore.control.__all__)"],
        ),
        ("import meshcore.control\n", ["filters/bad.py:1: import meshcore.control"]),
        (
            "from meshcore.control.translate import translate\n",
            ["filters/bad.py:1: from meshcore.control.translate import translate"],
        ),
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


KNOWN = {"meshcore.config", "meshcore.errors", "meshcore.http", "meshcore.runtime", "meshcore.testing"}


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("meshcore", "api"),
        ("meshcore.errors", "core"),
        ("meshcore.config.model", "config"),
        ("meshcore.registry", "config"),
        ("meshcore.http.h1fast._common", "http"),
        ("meshcore.runtime.proxy", "runtime"),
        ("meshcore.control.translate", "control"),
        ("meshcore.filters.router", "plugins"),
        ("meshcore.testing", "testing"),
        ("meshcore.cli", "cli"),
    ],
)
def test_layer_of_places_modules(module: str, layer: str) -> None:
    index = layer_of(module)
    assert index is not None
    assert LAYERS[index][0] == layer


@pytest.mark.parametrize("module", ["meshcore.newthing", "meshcore.runtimex", "meshcorex", "os"])
def test_layer_of_leaves_unknown_modules_unplaced(module: str) -> None:
    assert layer_of(module) is None


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from meshcore.config import Snapshot\nimport meshcore.http.codec\n", "meshcore.runtime.proxy"),
        ("from meshcore import errors\nimport trio\n", "meshcore.http.messages"),
        ("import meshcore\nfrom meshcore.testing import fetch\n", "meshcore.cli"),
        (
            "from meshcore import Request\nfrom meshcore.runtime.proxy import Proxy\n",
            "meshcore.testing.harness",
        ),
    ],
)
def test_layer_checker_allows_downward_imports(source: str, module: str) -> None:
    assert layer_violations(source, module, KNOWN) == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        (
            "from meshcore.runtime.context import FilterContext\n",
            "meshcore.http.manager",
            "meshcore.http.manager:1: imports meshcore.runtime.context (runtime), a layer above its own (http)",
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from meshcore.http.flags import X, Y\n",
            "meshcore.errors",
            "meshcore.errors:3: imports meshcore.http.flags (http), a layer above its own (core)",
        ),
        (
            "def f():\n    from meshcore import hookimpl\n",
            "meshcore.runtime.proxy",
            "meshcore.runtime.proxy:2: imports meshcore (api), a layer above its own (runtime)",
        ),
        (
            "from meshcore import testing\n",
            "meshcore.runtime.admin",
            "meshcore.runtime.admin:1: imports meshcore.testing (testing), a layer above its own (runtime)",
        ),
        ("from . import codec\n", "meshcore.http.h1", "meshcore.http.h1:1: imports .codec (relative)"),
        (
            "import os\n",
            "meshcore.newthing",
            "meshcore.newthing: in no layer; add it to LAYERS in tests/test_architecture.py",
        ),
    ],
)
def test_layer_checker_catches_upward_imports(source: str, module: str, expected: str) -> None:
    assert layer_violations(source, module, KNOWN) == [expected]


def test_testing_kit_checker() -> None:
    source = (
        "from meshcore import Request\n"
        "from meshcore.runtime.proxy import Proxy\n"
        "from meshcore.testing.client import fetch\n"
        "from meshcore.http.messages import Headers\n"
        "from meshcore.runtime.admin import _encode\n"
        "from meshcore.http.h1fast._common import bad\n"
    )
    assert kit_violations(source, "meshcore.testing.x", ["Request", "Headers"]) == [
        "meshcore.testing.x:4: Headers is public: import it from meshcore",
        "meshcore.testing.x:5: meshcore.runtime.admin._encode is private",
        "meshcore.testing.x:6: meshcore.http.h1fast._common.bad is private",
    ]


def test_names_moved_out_of_the_cluster_module_still_import_from_it() -> None:
    """``meshcore.runtime.cluster`` was split; code that imported the manager from it still works."""
    import meshcore.runtime.cluster as cluster_module  # noqa: PLC0415 - the import is what is tested
    import meshcore.runtime.cluster_manager  # noqa: PLC0415 - likewise
    from meshcore.runtime.cluster import ClusterManager  # noqa: PLC0415 - the import is what is tested

    assert ClusterManager is meshcore.runtime.cluster_manager.ClusterManager
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = cluster_module.Nothing
