"""examples/plugin-hello, installed for real, found by ``meshcore`` through its entry point.

pip builds its wheel and installs it (see ``_distributions.install``), and ``meshcore``
then finds it as it would in a user's install.
"""

from __future__ import annotations

import ast
import importlib.metadata
import types
from pathlib import Path

import pytest
import trio
from _distributions import env_with, install, run

import meshcore
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "plugin-hello"
HELLO_YAML = PLUGIN / "hello.yaml"
HTTP_FILTERS = "listeners[0].filter_chains[0].filters[0].http_connection_manager.http_filters"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where pip has installed meshcore-plugin-hello (and nothing else)."""
    return install(PLUGIN, tmp_path_factory.mktemp("plugin-hello"))


def test_install_is_a_real_distribution(site: Path) -> None:
    (dist,) = importlib.metadata.distributions(path=[str(site)])
    assert dist.metadata["Name"] == "meshcore-plugin-hello"
    assert dist.version == "0.1.0"
    assert "meshcore" in (dist.requires or [])
    (entry_point,) = dist.entry_points
    assert (entry_point.group, entry_point.name, entry_point.value) == ("meshcore", "hello", "meshcore_hello")
    assert (site / "meshcore_hello" / "__init__.py").is_file()
    assert (site / "meshcore_hello" / "py.typed").is_file()


def test_appears_in_meshcore_plugins(site: Path) -> None:
    done = run("-m", "meshcore", "plugins", env=env_with(site))
    assert (done.returncode, done.stderr) == (0, "")
    out = done.stdout.splitlines()
    at = out.index("hello  (meshcore-plugin-hello 0.1.0)")
    assert out[at + 1] == "    http filter: hello - adds a greeting header to every response"


def test_its_filter_is_accepted_by_validate(site: Path) -> None:
    done = run("-m", "meshcore", "validate", str(HELLO_YAML), env=env_with(site))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"{HELLO_YAML}: ok (version ")


def test_the_examples_directory_validates_with_the_plugin_installed(site: Path) -> None:
    done = run(
        "-m", "meshcore", "validate", "--quiet", str(ROOT / "examples"), str(HELLO_YAML), env=env_with(site)
    )
    assert (done.returncode, done.stdout) == (0, "")


def test_its_config_is_validated_deep_inside(site: Path, tmp_path: Path) -> None:
    text = HELLO_YAML.read_text(encoding="utf-8")
    assert text.count("repeat: 1") == 1
    assert text.count("header: x-greeting") == 1
    broken = tmp_path / "hello.yaml"
    broken.write_text(
        text.replace("repeat: 1", "repeat: 0").replace("header: x-greeting", "header: 42"), "utf-8"
    )
    lines = broken.read_text(encoding="utf-8").splitlines()
    header_line = lines.index("                    header: 42") + 1
    repeat_line = lines.index("                    repeat: 0") + 1
    done = run("-m", "meshcore", "validate", str(broken), env=env_with(site))
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [
        f"{broken}:{header_line}: {HTTP_FILTERS}[0].hello.header: must be a string, got 42",
        f"{broken}:{repeat_line}: {HTTP_FILTERS}[0].hello.repeat: must be >= 1, got 0",
    ]


def test_without_the_plugin_its_filter_is_unknown() -> None:
    try:
        installed = importlib.metadata.distribution("meshcore-plugin-hello")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        pytest.skip(f"meshcore-plugin-hello is installed in this environment ({installed.locate_file('')})")
    done = run("-m", "meshcore", "validate", str(HELLO_YAML), env=env_with(None))
    assert (done.returncode, done.stderr) == (1, "")
    line = HELLO_YAML.read_text(encoding="utf-8").splitlines().index("                - hello:") + 1
    (problem,) = done.stdout.splitlines()
    assert problem.startswith(f"{HELLO_YAML}:{line}: {HTTP_FILTERS}[0]: unknown HTTP filter 'hello' (known: ")
    assert "router" in problem


def test_plugin_imports_only_the_public_api() -> None:
    """A third-party plugin uses ``import meshcore`` and the names in ``meshcore.__all__``."""
    source = PLUGIN / "src" / "meshcore_hello" / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"__future__", "attrs", "meshcore"}
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "meshcore"
    }
    assert used
    assert used <= set(meshcore.__all__)


async def test_the_filter_in_a_real_proxy(hello_module: types.ModuleType) -> None:
    """Through a proxy on loopback: the greeting is added to the response the router makes.

    The route answers directly rather than from an upstream: a pooled upstream connection
    is left unclosed when a proxy stops (a data-plane issue of its own), which this test
    is not about.
    """
    registry = meshcore.build_registry(autoload=False, plugins=[("hello", hello_module)])
    hello = {"hello": {"greeting": "hi", "header": "x-greeting", "repeat": 2}}
    direct = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "ok"}}
    config = http_proxy_config([], routes=[direct], http_filters=[hello, "router"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proxy = await start_proxy(nursery, config, registry=registry)
            response = await fetch(proxy.address("ingress"), "/")
            proxy.drain()
    assert (response.status, response.text) == (200, "ok")
    assert [value for name, value in response.headers if name == "x-greeting"] == ["hi", "hi"]
