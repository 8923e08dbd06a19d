"""The configuration reference: generated from the config classes, committed, kept current."""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs
import pytest

import meshcore
from meshcore import ByteSize, Duration, at_least, at_most, non_empty
from meshcore.config import Listener, RouteMatch
from meshcore.docsgen import (
    REGENERATE,
    constraints,
    field_docs,
    main,
    render_class,
    render_config_reference,
    type_text,
)
from meshcore.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference" / "config.md"
KINDS = ("network_filter", "http_filter", "lb_policy", "config_source")


def test_the_committed_reference_is_current() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_config_reference(), (
        f"docs/reference/config.md is out of date with the config classes; regenerate it: {REGENERATE}"
    )


def test_every_first_party_plugin_and_field_is_in_the_reference() -> None:
    registry = meshcore.build_registry(autoload=False)
    text = render_config_reference(registry)
    for kind in KINDS:
        names = registry.names(kind)
        assert names, f"no {kind} registered: the check below would pass vacuously"
        for name in names:
            assert f"(config-{kind}-{name})=".replace("_", "-") in text
            config = registry.config_type(kind, name)
            for field in attrs.fields(config) if config is not None else ():
                assert f"| `{field.name}` |" in text, f"{kind} {name}: field {field.name} is missing"
    for section in (meshcore.Snapshot, meshcore.Cluster, meshcore.Route, meshcore.VirtualHost):
        assert f"### {section.__name__}\n" in text


def test_installed_third_party_plugins_stay_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    assert "`hello`" not in render_config_reference()


def test_a_third_party_plugin_renders_the_same_way(hello_module: types.ModuleType) -> None:
    registry = meshcore.build_registry(autoload=False, plugins=[("hello", hello_module)])
    text = render_config_reference(registry)
    assert "(config-http-filter-hello)=\n### `hello`\n\nAdds a greeting header to every response.\n" in text
    # HelloConfig documents its fields in a Google-style "Attributes:" section.
    assert "| `repeat` | integer | `1` | >= 1 | how many times the header is added (at least once). |" in text


# -- the pieces ----------------------------------------------------------------------------------


def _positive(_instance: object, _attribute: attrs.Attribute[float], value: float) -> None:
    """Must be more than 0."""
    if value <= 0:
        msg = "must be more than 0"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Base:
    """A base section.

    Attributes:
        name: what it is called (from the docstring).
    """

    name: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class Sample(Base):
    """A sample section, with a ``pipe | in it``."""

    timeout: Duration = Duration(0.25)
    """How long to wait."""
    size: ByteSize = ByteSize(10 * 1024 * 1024)
    mode: Literal["fast", "safe"] = "fast"
    tags: tuple[str, ...] = ("a b", "c")
    limit: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(1), at_most(10)])
    )
    """At most this many
    (None: no limit)."""
    weights: Mapping[str, int] = attrs.field(factory=dict)
    ratio: float = attrs.field(default=0.5, validator=_positive)
    nested: Base | None = None


def test_field_docs_come_from_the_source_and_the_docstring() -> None:
    assert field_docs(Sample) == {
        "name": "what it is called (from the docstring).",
        "timeout": "How long to wait.",
        "limit": "At most this many (None: no limit).",
    }


def test_a_section_renders_as_a_table() -> None:
    label = "config-test_docsgen"
    assert render_class(Sample).splitlines() == [
        f"({label}.sample)=",
        "### Sample",
        "",
        "A sample section, with a `pipe | in it`.",
        "",
        "| field | type | default | constraints | description |",
        "| --- | --- | --- | --- | --- |",
        "| `name` | string | required | not empty | what it is called (from the docstring). |",
        "| `timeout` | {ref}`duration <config-values>` | `250ms` |  | How long to wait. |",
        "| `size` | {ref}`size <config-values>` | `10MiB` |  |  |",
        "| `mode` | one of `fast`, `safe` | `fast` |  |  |",
        '| `tags` | list of string | `["a b", c]` |  |  |',
        "| `limit` | integer or null | `null` | 1 to 10 | At most this many (None: no limit). |",
        "| `weights` | mapping of string to integer | `{}` |  |  |",
        "| `ratio` | number | `0.5` | must be more than 0 |  |",
        f"| `nested` | {{ref}}`Base <{label}.base>` or null | `null` |  |  |",
    ]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (attrs.fields(meshcore.Snapshot).listeners, "unique `name`"),
        (attrs.fields(Listener).name, "not empty"),
        (attrs.fields(RouteMatch).regex, "a regular expression"),
        (attrs.fields(meshcore.Cluster).max_connections_per_endpoint, ">= 1"),
        (attrs.fields(meshcore.Cluster).idle_timeout, ""),
    ],
)
def test_constraints_are_read_off_validators(field: attrs.Attribute[object], expected: str) -> None:
    assert constraints(field) == expected


def test_references_to_other_objects_name_them() -> None:
    row = (
        "| `cluster` | string or null: the name of {ref}`a cluster <config-meshcore.config.model.cluster>` |"
    )
    assert row in render_class(meshcore.Route)


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (str, "string"),
        (tuple[int, ...], "list of integer"),
        (tuple[str, str] | None, "[string, string] or null"),
        (Literal[301, 302], "one of `301`, `302`"),
        (meshcore.HttpFilterRef, "{ref}`HTTP filter <config-http-filters>`"),
        (Mapping[str, Duration], "mapping of string to {ref}`duration <config-values>`"),
    ],
)
def test_types_are_named_as_written_in_config(tp: object, expected: str) -> None:
    assert type_text(tp) == expected


def test_main_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == render_config_reference()


def test_main_checks_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "config.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert main(["--check", str(REFERENCE)]) == 0
    assert main(["--check", str(stale)]) == 1
    assert (
        capsys.readouterr().err
        == f"{stale} is out of date with the config classes; regenerate it: {REGENERATE}\n"
    )
