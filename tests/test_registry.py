"""The plugin registry: built-ins and entry points, and every way a plugin can be broken.

A broken plugin is reported with its name, its distribution and what to do, and never
takes the other plugins down. Entry-point plugins are real distributions on sys.path
(a ``*.dist-info`` folder with ``entry_points.txt``), found by importlib.metadata as an
installed package would be.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import meshcore
from meshcore.cli import main
from meshcore.registry import AUTOLOAD_ENV, BUILTIN_PLUGINS, PluginInfo

BUILTIN_TYPES = {
    "network_filter": [
        "authz",
        "connection_limit",
        "http_connection_manager",
        "tcp_mesh_metrics",
        "tcp_proxy",
    ],
    "http_filter": [
        "authz",
        "ext_authz",
        "fault",
        "jwt_authn",
        "local_ratelimit",
        "mesh_metrics",
        "router",
        "tracing",
    ],
    "lb_policy": ["least_request", "maglev", "peak_ewma", "random", "ring_hash", "round_robin"],
    "health_checker": ["grpc", "http", "tcp"],
    "config_source": ["control_plane", "file"],
    "mesh_kind": [
        "AuthorizationPolicy",
        "DestinationRule",
        "LocalRateLimit",
        "PeerAuthentication",
        "RequestAuthentication",
        "ServiceEntry",
        "Sidecar",
        "Telemetry",
        "VirtualService",
        "WorkloadEntry",
    ],
    "translator": [
        "authorization",
        "egress_ports",
        "http_proxy",
        "inbound",
        "local_ratelimit",
        "mtls",
        "outbound_clusters",
        "scope",
        "telemetry",
    ],
    "discovery": ["dns", "static"],
    "mesh_analyzer": ["conflicts", "ports", "routes", "selectors", "subsets"],
}


def _factory(config: Any, context: Any) -> None:
    """A factory that is never called: registration only needs one."""


def plugin(name: str, **hooks: Callable[[], Any]) -> types.ModuleType:
    """A plugin module called ``name`` with ``hooks`` (functions, marked as hook implementations)."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, meshcore.hookimpl(function))
    return module


def http_filter(name: str, **kwargs: Any) -> meshcore.HttpFilterType:
    return meshcore.HttpFilterType(name=name, factory=_factory, **kwargs)


@pytest.fixture(autouse=True)
def _autoload_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points load unless a test says otherwise, whatever the environment says."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)


@attrs.frozen
class Distribution:
    """A test-only installed distribution: where it lives and the module it provides."""

    path: Path
    module: str


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Distribution]]:
    """Install a one-module distribution with a ``meshcore`` entry point, on sys.path."""
    modules: list[str] = []

    def install(dist: str, module: str, source: str, *, entry_point: str | None = None) -> Distribution:
        site = tmp_path / dist
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(
            f"[meshcore]\n{entry_point or module} = {module}\n", encoding="utf-8"
        )
        (info / "top_level.txt").write_text(f"{module}\n", encoding="utf-8")
        (site / f"{module}.py").write_text(source, encoding="utf-8")
        monkeypatch.syspath_prepend(str(site))
        modules.append(module)
        return Distribution(path=site, module=module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)


GOOD_PLUGIN = """\
import meshcore

@meshcore.hookimpl
def meshcore_http_filters():
    return [meshcore.HttpFilterType(name="good", factory=lambda config, context: None, description="is good")]
"""


# -- built-ins ---------------------------------------------------------------------------------


def test_builtins_are_listed_with_their_distribution() -> None:
    registry = meshcore.build_registry(autoload=False)
    assert registry.problems == []
    assert list(registry.plugins) == list(BUILTIN_PLUGINS)
    for info in registry.plugins.values():
        assert (info.distribution, info.version) == ("meshcore", meshcore.__version__)
    for kind, names in BUILTIN_TYPES.items():
        assert sorted(registry.names(kind)) == names
    owner = registry.owner("http_filter", "router")
    assert owner is not None
    assert owner.name == "meshcore.filters.router"
    assert owner.provides == ("http_filter:router",)
    assert registry.is_terminal("http_filter", "router")
    assert registry.is_terminal("network_filter", "tcp_proxy")
    assert not registry.is_terminal("lb_policy", "round_robin")


def test_plugins_command_lists_builtins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    version = meshcore.__version__
    assert f"meshcore.filters.router  (meshcore {version})" in out
    assert "    http filter: router - forwards to the route's cluster, answers directly, or redirects" in out
    assert f"meshcore.filters.load_balancers  (meshcore {version})" in out
    assert (
        "    lb policy: least_request - fewest active requests of N random endpoints (power of two choices)"
        in out
    )
    assert not [line for line in out if line.startswith("plugin problem")]


# -- entry points ------------------------------------------------------------------------------


def test_entry_point_plugins_are_loaded(install: Callable[..., Distribution]) -> None:
    install("good-plugin", "good_plugin", GOOD_PLUGIN, entry_point="good")
    registry = meshcore.build_registry()
    assert registry.problems == []
    assert registry.plugins["good"] == PluginInfo(
        name="good", distribution="good-plugin", version="0.1", provides=("http_filter:good",)
    )
    assert "good" in registry.names("http_filter")


def test_autoload_can_be_disabled(
    install: Callable[..., Distribution], monkeypatch: pytest.MonkeyPatch
) -> None:
    install("good-plugin", "good_plugin", GOOD_PLUGIN, entry_point="good")
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    registry = meshcore.build_registry()
    assert "good" not in registry.plugins
    assert list(registry.plugins) == list(BUILTIN_PLUGINS)
    assert sorted(registry.names("http_filter")) == BUILTIN_TYPES["http_filter"]
    # Plugins passed in explicitly are still registered.
    explicit = plugin("explicit", meshcore_http_filters=lambda: [http_filter("explicit")])
    registry = meshcore.build_registry(plugins=[("explicit", explicit)])
    assert "explicit" in registry.names("http_filter")
    assert "good" not in registry.plugins


def test_failing_import_is_reported(
    install: Callable[..., Distribution], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        "broken-plugin",
        "broken_plugin",
        "raise ImportError(\"No module named 'numpy'\")\n",
        entry_point="broken",
    )
    install("good-plugin", "good_plugin", GOOD_PLUGIN, entry_point="good")
    registry = meshcore.build_registry()
    expected = (
        "plugin 'broken' (broken-plugin 0.1) failed to import 'broken_plugin': ImportError: "
        "No module named 'numpy'; fix or uninstall broken-plugin, or set "
        f"{AUTOLOAD_ENV}=1 to skip installed plugins"
    )
    assert registry.problems == [expected]
    # The others are all there.
    assert "good" in registry.names("http_filter")
    assert set(BUILTIN_PLUGINS) <= set(registry.plugins)

    assert main(["plugins"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"plugin problem: {expected}"
    assert "    http filter: good - is good" in out

    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert main(["plugins"]) == 0
    assert "plugin problem" not in capsys.readouterr().out


def test_plugin_problems_do_not_stop_validation(
    install: Callable[..., Distribution], capsys: pytest.CaptureFixture[str]
) -> None:
    install("broken-plugin", "broken_plugin", "raise ImportError('gone')\n", entry_point="broken")
    example = Path(__file__).resolve().parent.parent / "examples" / "tcp-proxy.yaml"
    assert main(["validate", str(example)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{example}: ok (version ")
    assert captured.err.startswith("plugin problem: plugin 'broken' (broken-plugin 0.1) failed to import")


# -- broken plugins ----------------------------------------------------------------------------


def test_name_already_taken(install: Callable[..., Distribution]) -> None:
    install("good-plugin", "good_plugin", GOOD_PLUGIN, entry_point="good")
    clash = plugin(
        "clash",
        meshcore_http_filters=lambda: [
            http_filter("router", ends_chain=True),
            http_filter("good"),
            http_filter("fresh"),
        ],
    )
    later = plugin("later", meshcore_http_filters=lambda: [http_filter("later")])
    registry = meshcore.build_registry(plugins=[("clash", clash), ("later", later)])
    version = meshcore.__version__
    assert registry.problems == [
        (
            f"plugin 'clash' (unknown 0): http filter 'router' is already provided by plugin "
            f"'meshcore.filters.router' (meshcore {version}); rename it or uninstall one of them"
        ),
        (
            "plugin 'clash' (unknown 0): http filter 'good' is already provided by plugin "
            "'good' (good-plugin 0.1); rename it or uninstall one of them"
        ),
    ]
    # First come, first served; the rest of the clashing plugin and the other plugins still count.
    assert registry.owner("http_filter", "router") == registry.plugins["meshcore.filters.router"]
    assert registry.owner("http_filter", "good") == registry.plugins["good"]
    assert registry.plugins["clash"].provides == ("http_filter:fresh",)
    assert {"router", "good", "fresh", "later"} <= set(registry.names("http_filter"))


def _misspelled() -> list[meshcore.HttpFilterType]:
    return [http_filter("typo")]


def test_misspelled_hook() -> None:
    typo = types.ModuleType("typo")
    typo.meshcore_http_filter = meshcore.hookimpl(_misspelled)  # type: ignore[attr-defined]  # a module built at run time
    other = plugin("other", meshcore_http_filters=lambda: [http_filter("other")])
    registry = meshcore.build_registry(autoload=False, plugins=[("typo", typo), ("other", other)])
    assert registry.problems == [
        (
            "plugin 'typo' (unknown 0): implements unknown hook 'meshcore_http_filter'; "
            "did you mean 'meshcore_http_filters'?"
        )
    ]
    assert "typo" not in registry.plugins
    assert "typo" not in registry.names("http_filter")
    assert "other" in registry.names("http_filter")


def test_hook_that_raises() -> None:
    def explode() -> list[meshcore.HttpFilterType]:
        msg = "config file missing"
        raise RuntimeError(msg)

    boom = plugin("boom", meshcore_http_filters=explode)
    other = plugin("other", meshcore_http_filters=lambda: [http_filter("other")])
    registry = meshcore.build_registry(autoload=False, plugins=[("boom", boom), ("other", other)])
    assert registry.problems == [
        "plugin 'boom' (unknown 0): hook meshcore_http_filters raised RuntimeError: config file missing"
    ]
    assert "other" in registry.names("http_filter")
    assert "router" in registry.names("http_filter")


def test_hook_returning_the_wrong_type() -> None:
    wrong = plugin(
        "wrong",
        meshcore_http_filters=lambda: [
            meshcore.NetworkFilterType(name="l4", factory=_factory),
            "hello",
            http_filter("right"),
        ],
    )
    registry = meshcore.build_registry(autoload=False, plugins=[("wrong", wrong)])
    assert registry.problems == [
        (
            "plugin 'wrong' (unknown 0): hook meshcore_http_filters must return HttpFilterType objects, "
            "got NetworkFilterType"
        ),
        "plugin 'wrong' (unknown 0): hook meshcore_http_filters must return HttpFilterType objects, got str",
    ]
    assert "right" in registry.names("http_filter")
    assert "l4" not in registry.names("network_filter")


class _Objects:
    @staticmethod
    @meshcore.hookimpl
    def meshcore_validate_snapshot(snapshot: meshcore.Snapshot) -> list[str]:
        return [f"no listeners allowed, got {len(snapshot.listeners)}"] if snapshot.listeners else []


class _Crashes:
    @staticmethod
    @meshcore.hookimpl
    def meshcore_validate_snapshot(snapshot: meshcore.Snapshot) -> list[str]:  # noqa: ARG004 - pluggy matches by name
        msg = "bug in a plugin"
        raise RuntimeError(msg)


def test_snapshot_validation_hooks_report_each_plugin_and_survive_a_crashing_one() -> None:
    registry = meshcore.build_registry(
        autoload=False, plugins=[("objects", _Objects()), ("crashes", _Crashes())]
    )
    config = {
        "listeners": [
            {
                "name": "l",
                "address": "127.0.0.1:0",
                "filter_chains": [{"filters": [{"tcp_proxy": {"cluster": "c"}}]}],
            }
        ],
        "clusters": [{"name": "c", "endpoints": ["127.0.0.1:1"]}],
    }
    snapshot = meshcore.snapshot_from_data(config, registry)
    assert registry.validate_snapshot(snapshot) == [
        "plugin 'objects': no listeners allowed, got 1",
        "plugin 'crashes': meshcore_validate_snapshot raised RuntimeError: bug in a plugin",
    ]
    assert registry.validate_snapshot(meshcore.snapshot_from_data({}, registry)) == [
        "plugin 'crashes': meshcore_validate_snapshot raised RuntimeError: bug in a plugin"
    ]
