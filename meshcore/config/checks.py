"""Checks of a whole Snapshot as objects, wherever it came from.

A Snapshot loaded from a file was checked while it was structured; one composed from a
delta, or built in Python by a config source, was not. :func:`check_snapshot` finds what
the structurer would have found in it: references to resources it does not define,
plugin names the registry does not know, plugin configs of the wrong class, filter chains
that do not end with exactly one terminal filter. Every problem has its field path.

A proxy checks every Snapshot it is given, a hundred a second when endpoints churn; most
resources are the very objects it checked last time (a delta keeps what it does not name).
:class:`SnapshotChecker` remembers what it found in each resource object, so that only the
names it refers to are looked up again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs

from meshcore.config.model import Snapshot
from meshcore.config.structure import Catalog, Path, PluginRef, format_path
from meshcore.errors import ConfigProblem

__all__ = ["SnapshotChecker", "check_snapshot", "defined_names"]

_WORDS = {
    "network_filter": "network filter",
    "http_filter": "HTTP filter",
    "lb_policy": "load-balancing policy",
}
_SCALARS = (str, int, float, bool, type(None))
_FIELDS: dict[type, tuple[tuple[str, str | None], ...] | None] = {}


def _fields_of(cls: type) -> tuple[tuple[str, str | None], ...] | None:
    """(name, kind of reference or None) of each field of attrs class ``cls``; None if not one.

    Looked up once per class: a Snapshot of 10,000 routes walks the same few classes 10,000 times.
    """
    try:
        return _FIELDS[cls]
    except KeyError:
        plan = tuple((f.name, f.metadata.get("ref")) for f in attrs.fields(cls)) if attrs.has(cls) else None
        _FIELDS[cls] = plan
        return plan


class _Ref(NamedTuple):
    """A reference a walk found: a name of ``kind`` to look up at ``path``."""

    kind: str
    name: Any
    path: Path


class _Problem(NamedTuple):
    """A structural problem a walk found at ``path``."""

    path: Path
    message: str


_Finding = _Ref | _Problem
"""What a walk found, in order."""


def defined_names(snapshot: Snapshot) -> dict[str, set[str]]:
    """The names each kind of reference may use: ``{"cluster": {...}, "route_config": {...}}``."""
    return {
        "cluster": {c.name for c in snapshot.clusters},
        "route_config": {r.name for r in snapshot.route_configs},
        "secret": {s.name for s in snapshot.secrets},
    }


def check_snapshot(snapshot: Snapshot, catalog: Catalog) -> list[ConfigProblem]:
    """Every structural problem of ``snapshot`` that its attrs validators cannot see alone."""
    return SnapshotChecker(catalog).check(snapshot)


class SnapshotChecker:
    """:func:`check_snapshot`, remembering what it found in the resources it has seen.

    Args:
        catalog: the plugin registry.
        size: how many resources (listeners, clusters, ...) it remembers, the least
            recently seen forgotten first.
    """

    def __init__(self, catalog: Catalog, *, size: int = 4096) -> None:
        self.catalog = catalog
        self.size = size
        self._seen: OrderedDict[int, tuple[Any, list[_Finding]]] = OrderedDict()

    def check(self, snapshot: Snapshot) -> list[ConfigProblem]:
        """Every structural problem of ``snapshot`` (see :func:`check_snapshot`)."""
        names = defined_names(snapshot)
        problems: list[ConfigProblem] = []
        for field in attrs.fields(Snapshot):
            value = getattr(snapshot, field.name)
            if isinstance(value, tuple):
                for i, resource in enumerate(value):
                    self._report(self._findings(resource), (field.name, i), names, problems)
            else:
                self._report(_Walker(self.catalog).run(value), (field.name,), names, problems)
        return problems

    def _findings(self, resource: Any) -> list[_Finding]:
        key = id(resource)
        found = self._seen.get(key)
        if found is not None and found[0] is resource:
            self._seen.move_to_end(key)
            return found[1]
        findings = _Walker(self.catalog).run(resource)
        self._seen[key] = (resource, findings)  # holding it keeps its id from being reused
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return findings

    @staticmethod
    def _report(
        findings: list[_Finding], prefix: Path, names: dict[str, set[str]], problems: list[ConfigProblem]
    ) -> None:
        for finding in findings:
            if isinstance(finding, _Ref):
                known = names.get(finding.kind)
                if known is None or finding.name in known:
                    continue
                listing = ", ".join(sorted(known)) or "none defined"
                message = f"unknown {finding.kind.replace('_', ' ')} {finding.name!r} (defined: {listing})"
            else:
                message = finding.message
            problems.append(ConfigProblem(path=format_path((*prefix, *finding.path)), message=message))


class _Walker:
    """One walk of a value: the references in it and its structural problems, in order."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.findings: list[_Finding] = []

    def run(self, value: Any) -> list[_Finding]:
        self.walk(value, ())
        return self.findings

    def walk(self, value: Any, path: Path) -> None:
        if isinstance(value, _SCALARS):
            return
        if isinstance(value, PluginRef):
            self._plugin(value, path)
        elif (plan := _fields_of(type(value))) is not None:
            for name, kind in plan:
                item = getattr(value, name)
                if kind is not None:
                    self._reference(kind, item, (*path, name))
                if not isinstance(item, _SCALARS):  # most fields: no call for nothing
                    self.walk(item, (*path, name))
        elif isinstance(value, tuple):
            if value and all(isinstance(item, PluginRef) for item in value):
                self._chain(value, path)
            for i, item in enumerate(value):
                self.walk(item, (*path, i))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                self.walk(item, (*path, str(key)))

    def _reference(self, kind: str, value: Any, path: Path) -> None:
        if value is None:
            return
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                self._reference(kind, item, (*path, i))
            return
        self.findings.append(_Ref(kind, value, path))

    def _plugin(self, ref: PluginRef, path: Path) -> None:
        word = _WORDS.get(ref.kind, ref.kind)
        known = self.catalog.names(ref.kind)
        if ref.name not in known:
            listing = ", ".join(sorted(known)) or "none"
            self.findings.append(_Problem(path, f"unknown {word} {ref.name!r} (known: {listing})"))
            return
        config_tp = self.catalog.config_type(ref.kind, ref.name)
        if config_tp is None:
            if ref.config is not None:
                message = f"{ref.name!r} takes no config, got {type(ref.config).__name__}"
                self.findings.append(_Problem((*path, ref.name), message))
            return
        if ref.config is not None and not isinstance(ref.config, config_tp):
            message = f"must be a {config_tp.__name__}, got {type(ref.config).__name__}"
            self.findings.append(_Problem((*path, ref.name), message))
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
                self.findings.append(
                    _Problem((*path, i), f"{ref.name!r} ends a chain and must be the last filter")
                )
            elif not terminal and i == last:
                message = f"the last filter must end the chain, {ref.name!r} does not"
                self.findings.append(_Problem((*path, i), message))
