"""Checks of a whole Snapshot as objects, wherever it came from.

A Snapshot loaded from a file was checked while it was structured; one composed from a
delta, or built in Python by a config source, was not. :func:`check_snapshot` finds what
the structurer would have found in it: references to resources it does not define,
plugin names the registry does not know, plugin configs of the wrong class, filter chains
that do not end with exactly one terminal filter. Every problem has its field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from meshcore.config.model import Snapshot
from meshcore.config.structure import Catalog, Path, PluginRef, format_path
from meshcore.errors import ConfigProblem

__all__ = ["check_snapshot", "defined_names"]

_WORDS = {
    "network_filter": "network filter",
    "http_filter": "HTTP filter",
    "lb_policy": "load-balancing policy",
}


def defined_names(snapshot: Snapshot) -> dict[str, set[str]]:
    """The names each kind of reference may use: ``{"cluster": {...}, "route_config": {...}}``."""
    return {
        "cluster": {c.name for c in snapshot.clusters},
        "route_config": {r.name for r in snapshot.route_configs},
        "secret": {s.name for s in snapshot.secrets},
    }


def check_snapshot(snapshot: Snapshot, catalog: Catalog) -> list[ConfigProblem]:
    """Every structural problem of ``snapshot`` that its attrs validators cannot see alone."""
    walker = _Walker(catalog, defined_names(snapshot))
    walker.walk(snapshot, ())
    return walker.problems


class _Walker:
    def __init__(self, catalog: Catalog, names: dict[str, set[str]]) -> None:
        self.catalog = catalog
        self.names = names
        self.problems: list[ConfigProblem] = []

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(ConfigProblem(path=format_path(path), message=message))

    def walk(self, value: Any, path: Path) -> None:
        if isinstance(value, PluginRef):
            self._plugin(value, path)
        elif attrs.has(type(value)):
            for field in attrs.fields(type(value)):
                item = getattr(value, field.name)
                kind = field.metadata.get("ref")
                if kind is not None:
                    self._reference(kind, item, (*path, field.name))
                self.walk(item, (*path, field.name))
        elif isinstance(value, tuple):
            if value and all(isinstance(item, PluginRef) for item in value):
                self._chain(value, path)
            for i, item in enumerate(value):
                self.walk(item, (*path, i))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                self.walk(item, (*path, str(key)))

    def _reference(self, kind: str, value: Any, path: Path) -> None:
        names = self.names.get(kind)
        if names is None or value is None:
            return
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                self._reference(kind, item, (*path, i))
            return
        if value not in names:
            listing = ", ".join(sorted(names)) or "none defined"
            self.problem(path, f"unknown {kind.replace('_', ' ')} {value!r} (defined: {listing})")

    def _plugin(self, ref: PluginRef, path: Path) -> None:
        word = _WORDS.get(ref.kind, ref.kind)
        known = self.catalog.names(ref.kind)
        if ref.name not in known:
            listing = ", ".join(sorted(known)) or "none"
            self.problem(path, f"unknown {word} {ref.name!r} (known: {listing})")
            return
        config_tp = self.catalog.config_type(ref.kind, ref.name)
        if config_tp is None:
            if ref.config is not None:
                self.problem(
                    (*path, ref.name), f"{ref.name!r} takes no config, got {type(ref.config).__name__}"
                )
            return
        if ref.config is not None and not isinstance(ref.config, config_tp):
            got = type(ref.config).__name__
            self.problem((*path, ref.name), f"must be a {config_tp.__name__}, got {got}")
            return
        self.walk(ref.config, (*path, ref.name))

    def _chain(self, items: tuple[PluginRef, ...], path: Path) -> None:
        """A filter chain ends with exactly one terminal filter (as the structurer checks)."""
        if not items[0].kind.endswith("_filter"):
            return
        last = len(items) - 1
        for i, ref in enumerate(items):
            if ref.name not in self.catalog.names(ref.kind):
                continue  # reported as unknown
            terminal = self.catalog.is_terminal(ref.kind, ref.name)
            if terminal and i != last:
                self.problem((*path, i), f"{ref.name!r} ends a chain and must be the last filter")
            elif not terminal and i == last:
                self.problem((*path, i), f"the last filter must end the chain, {ref.name!r} does not")
