"""A plugin's config class may use the field types Python authors write without thinking.

``list[T]``, ``dict[str, T]``, ``T | None``, ``Literal``, enums, nested attrs classes,
tuples, ``Sequence``, ``Mapping``, sets, ``Annotated``: each is structured and validated with
the same field paths as core fields. A type config cannot hold is reported for the plugin
when the registry is built (naming the plugin, the field and the type), and as a problem
at its field path when a config sets it: never a crash.
"""

from __future__ import annotations

import datetime as dt
import enum
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import attrs
import pytest

import meshcore
from meshcore.config.typecheck import config_type_problems
from meshcore.testing import FilterHarness


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen(kw_only=True)
class Rule:
    path: str
    methods: list[str] = attrs.field(factory=list)
    timeout: meshcore.Duration = meshcore.Duration(1)


@attrs.frozen(kw_only=True)
class RichConfig:
    tags: list[str] = attrs.field(factory=list)
    limits: dict[str, int] = attrs.field(factory=dict)
    owner: str | None = None
    mode: Mode = Mode.FAST
    level: Level = Level.LOW
    style: Literal["json", "text"] = "text"
    rules: tuple[Rule, ...] = ()
    by_host: Mapping[str, Rule] = attrs.field(factory=dict)
    pair: tuple[str, int] | None = None
    hosts: Sequence[str] = ()
    methods: frozenset[str] = frozenset()
    ports: set[int] = attrs.field(factory=set)
    weight: Annotated[float, "a share of the traffic"] = 1.0
    token: meshcore.SecretStr | None = None
    windows: list[meshcore.Duration] = attrs.field(factory=list)


def registry_with(name: str, config: type, *, route_config: type | None = None) -> meshcore.Registry:
    async def passthrough(request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        return await call_next(request)

    @meshcore.hookimpl
    def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
        return [
            meshcore.HttpFilterType(
                name=name,
                factory=lambda _config, _context: passthrough,
                config=config,
                route_config=route_config,
            )
        ]

    plugin = types.ModuleType(f"{name}_plugin")
    plugin.meshcore_http_filters = meshcore_http_filters  # type: ignore[attr-defined] # a module built at run time
    return meshcore.build_registry(autoload=False, plugins=[(name, plugin)])


def structure(registry: meshcore.Registry, name: str, section: Any) -> Any:
    """The filter's structured config, as a proxy's config would give it."""
    snapshot = meshcore.snapshot_from_data(
        {
            "listeners": [
                {
                    "name": "l",
                    "address": "127.0.0.1:0",
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "http_connection_manager": {
                                        "route_config": "r",
                                        "http_filters": [{name: section}, "router"],
                                    }
                                }
                            ]
                        }
                    ],
                }
            ],
            "route_configs": [{"name": "r"}],
        },
        registry,
    )
    return snapshot.listeners[0].filter_chains[0].filters[0].config.http_filters[0].config


def problems(registry: meshcore.Registry, name: str, section: Any) -> list[str]:
    with pytest.raises(meshcore.ConfigError) as info:
        structure(registry, name, section)
    prefix = "listeners[0].filter_chains[0].filters[0].http_connection_manager.http_filters[0]."
    return [str(p).removeprefix(prefix) for p in info.value.problems]


@pytest.fixture(scope="module")
def rich() -> meshcore.Registry:
    registry = registry_with("rich", RichConfig)
    assert registry.problems == []
    return registry


def test_every_common_type_structures_into_what_its_annotation_says(rich: meshcore.Registry) -> None:
    config = structure(
        rich,
        "rich",
        {
            "tags": ["a", "b"],
            "limits": {"GET": 10, "POST": 2},
            "owner": "team-a",
            "mode": "safe",
            "level": "HIGH",  # an enum member by name, too
            "style": "json",
            "rules": [{"path": "/a", "methods": ["GET"], "timeout": "250ms"}],
            "by_host": {"a.example": {"path": "/"}},
            "pair": ["x", 2],
            "hosts": ["h1", "h2"],
            "methods": ["GET", "GET", "HEAD"],
            "ports": [80, 443],
            "weight": 2,
            "token": "sk-123",
            "windows": ["1s", "1m"],
        },
    )
    assert config == RichConfig(
        tags=["a", "b"],
        limits={"GET": 10, "POST": 2},
        owner="team-a",
        mode=Mode.SAFE,
        level=Level.HIGH,
        style="json",
        rules=(Rule(path="/a", methods=["GET"], timeout=meshcore.Duration(0.25)),),
        by_host={"a.example": Rule(path="/")},
        pair=("x", 2),
        hosts=("h1", "h2"),
        methods=frozenset({"GET", "HEAD"}),
        ports={80, 443},
        weight=2.0,
        token=meshcore.SecretStr("sk-123"),
        windows=[meshcore.Duration(1), meshcore.Duration(60)],
    )
    assert type(config.tags) is list
    assert type(config.limits) is dict
    assert type(config.rules) is tuple
    assert type(config.by_host) is types.MappingProxyType  # Mapping: read-only
    assert type(config.hosts) is tuple
    assert type(config.token) is meshcore.SecretStr
    assert type(config.weight) is float
    assert structure(rich, "rich", None) == RichConfig()


def test_problems_deep_inside_have_the_same_field_paths_as_core_fields(rich: meshcore.Registry) -> None:
    assert problems(
        rich,
        "rich",
        {
            "tags": ["a", 7],
            "limits": {"GET": "ten"},
            "owner": 5,
            "mode": "quick",
            "level": 3,
            "style": "txt",
            "rules": [{"path": "/a"}, {"methods": "GET"}],
            "by_host": {"a.example": {"path": "/", "timout": "1s"}},
            "pair": ["x"],
            "methods": "GET",
            "windows": ["1s", "soon"],
        },
    ) == [
        "rich.tags[1]: must be a string, got 7",
        "rich.limits.GET: must be an integer, got 'ten'",
        "rich.owner: must be a string, got 5",
        "rich.mode: must be one of 'fast', 'safe', got 'quick'",
        "rich.level: must be one of 1, 2, got 3",
        "rich.style: must be one of 'json', 'text', got 'txt'; did you mean 'text'?",
        "rich.rules[1].path: is required",
        "rich.rules[1].methods: must be a list, got 'GET'",
        "rich.by_host.a.example.timout: unknown field; did you mean 'timeout'?",
        "rich.pair: must be a list of 2 items, got 1",
        "rich.methods: must be a list, got 'GET'",
        'rich.windows[1]: must be a duration such as "250ms" or "2s", got \'soon\'',
    ]


# -- types config cannot hold -----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Inner:
    since: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class OddConfig:
    name: str = "odd"
    raw: bytes = b""
    by_port: dict[int, str] = attrs.field(factory=dict)
    inner: Inner = Inner()
    maybe: list[complex] | None = None


@attrs.frozen(kw_only=True)
class Unresolvable:
    thing: NotDefinedAnywhere = None  # type: ignore[name-defined] # noqa: F821 - the point of the test


def test_the_registry_names_the_plugin_the_field_and_the_type() -> None:
    registry = registry_with("odd", OddConfig)
    where = "plugin 'odd' (unknown 0): HTTP filter 'odd' (config)"
    supported = (
        "str, int, float, bool, None, an enum, an attrs class, a Literal, a union, list, set, frozenset, "
        "tuple or Sequence of those, dict or Mapping of str to those, or a class with __meshcore_parse__"
    )
    assert registry.problems == [
        f"{where}: field OddConfig.raw has type bytes, which config cannot hold: bytes is not one of {supported}",
        (
            f"{where}: field OddConfig.by_port has type dict[int, str], which config cannot hold: "
            "the keys of a mapping in config are strings, not int"
        ),
        (
            f"{where}: field Inner.since has type datetime.datetime | None, which config cannot hold: "
            f"datetime is not one of {supported}"
        ),
        (
            f"{where}: field OddConfig.maybe has type list[complex] | None, which config cannot hold: "
            f"complex is not one of {supported}"
        ),
    ]
    # Registered all the same: what leaves those fields alone works, what sets one is a
    # problem at its path, never a crash.
    assert structure(registry, "odd", {"name": "x"}) == OddConfig(name="x")
    assert problems(registry, "odd", {"raw": "abc", "inner": {"since": "2026-01-01"}}) == [
        "odd.raw: cannot be structured: its type bytes is not a config type",
        "odd.inner.since: cannot be structured: its type datetime is not a config type",
    ]


def test_annotations_that_do_not_resolve_are_reported_not_raised() -> None:
    registry = registry_with("unresolvable", Unresolvable)
    assert registry.problems == [
        (
            "plugin 'unresolvable' (unknown 0): HTTP filter 'unresolvable' (config): the field types of "
            "Unresolvable do not resolve: NameError: name 'NotDefinedAnywhere' is not defined"
        )
    ]
    assert problems(registry, "unresolvable", {"thing": 1}) == [
        "unresolvable: cannot be structured: the field types of Unresolvable do not resolve"
    ]


def test_a_config_class_that_is_not_an_attrs_class_is_reported() -> None:
    class Plain:
        pass

    assert config_type_problems(Plain) == [
        (
            "the config class test_a_config_class_that_is_not_an_attrs_class_is_reported.<locals>.Plain must be "
            "an attrs class (str, int, float, bool, None, an enum, an attrs class, a Literal, a union, list, set, "
            "frozenset, tuple or Sequence of those, dict or Mapping of str to those, or a class with "
            "__meshcore_parse__)"
        )
    ]


def test_the_route_config_class_is_checked_too() -> None:
    registry = registry_with("routed", RichConfig, route_config=OddConfig)
    assert len(registry.problems) == 4
    assert all("HTTP filter 'routed' (route_config): field " in p for p in registry.problems)


def test_the_first_party_plugins_config_classes_are_all_clean() -> None:
    assert meshcore.build_registry(autoload=False).problems == []


async def test_the_filter_harness_refuses_such_a_class_loudly() -> None:
    registry = registry_with("odd", OddConfig)
    with pytest.raises(meshcore.PluginError, match=r"HTTP filter 'odd': field OddConfig\.raw has type bytes"):
        FilterHarness("odd", {}, registry=registry)
