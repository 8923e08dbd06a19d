"""Read a config document (YAML, TOML or JSON) into a validated :class:`Snapshot`.

Every problem is reported with the file, the line where the format gives it (YAML), the
field path and the reason; all of them, not just the first.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path as FsPath
from typing import Any

import attrs
import yaml

from meshcore.config.model import Snapshot
from meshcore.config.structure import Catalog, Path, Structurer, format_path
from meshcore.errors import ConfigError, ConfigProblem

__all__ = [
    "CONFIG_SUFFIXES",
    "Check",
    "LineMap",
    "load_snapshot",
    "parse_document",
    "parse_documents",
    "parse_path",
    "snapshot_from_data",
]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
Check = Callable[[Snapshot], Iterable[ConfigProblem]]
"""Checks of a structured Snapshot beyond its fields (``meshcore validate`` runs the runtime's)."""


class LineMap:
    """Maps field paths to the 1-based line where they appear (YAML only)."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}

    def walk(self, node: yaml.Node, path: Path) -> None:
        """Record the line of ``node`` and of everything below it, ``node`` being at ``path``."""
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                self.walk(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i))

    def line_for(self, path: Path) -> int | None:
        """The line of ``path``, or of its closest parent that has one."""
        while True:
            line = self.lines.get(path)
            if line is not None or not path:
                return line
            path = path[:-1]


def parse_document(text: str, name: str) -> tuple[Any, LineMap | None]:
    """Parse config text by the file name's suffix; raise ConfigError on a syntax error."""
    suffix = FsPath(name).suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text), None
        if suffix == ".toml":
            return tomllib.loads(text), None
        lines = LineMap()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return {}, lines
        lines.walk(node, ())
        return yaml.load(text, Loader=yaml.SafeLoader), lines
    except json.JSONDecodeError as err:
        problem = ConfigProblem(path="", message=f"invalid JSON: {err.msg}", file=name, line=err.lineno)
    except tomllib.TOMLDecodeError as err:
        problem = ConfigProblem(path="", message=f"invalid TOML: {err}", file=name)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark is not None else None
        problem = ConfigProblem(path="", message=f"invalid YAML: {err.problem}", file=name, line=line)
    except yaml.YAMLError as err:
        problem = ConfigProblem(path="", message=f"invalid YAML: {err}", file=name)
    raise ConfigError([problem], stage="parse")


def parse_documents(text: str, name: str) -> list[tuple[Any, LineMap | None]]:
    """Every document of a file: YAML documents separated by ``---``, or one JSON/TOML document.

    A JSON file may also hold a list of documents. Empty YAML documents are skipped. Raises
    ConfigError on a syntax error, naming the file and line.
    """
    if FsPath(name).suffix.lower() in (".json", ".toml"):
        data, lines = parse_document(text, name)
        return [(item, None) for item in data] if isinstance(data, list) else [(data, lines)]
    out: list[tuple[Any, LineMap | None]] = []
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            lines = LineMap()
            lines.walk(node, ())
            data = loader.construct_document(node)
            if data is not None:
                out.append((data, lines))
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark is not None else None
        problem = ConfigProblem(path="", message=f"invalid YAML: {err.problem}", file=name, line=line)
        raise ConfigError([problem]) from err
    except yaml.YAMLError as err:
        raise ConfigError([ConfigProblem(path="", message=f"invalid YAML: {err}", file=name)]) from err
    finally:
        loader.dispose()
    return out


def _defined_names(data: Any, section: str) -> set[str]:
    """Names defined in a top-level section of the raw document (even if it has problems)."""
    items = data.get(section) if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        return set()
    return {item["name"] for item in items if isinstance(item, Mapping) and isinstance(item.get("name"), str)}


def _check_references(data: Any, structurer: Structurer) -> None:
    """Cross-object checks: every reference names an object that the document defines."""
    known = {
        "cluster": _defined_names(data, "clusters"),
        "route_config": _defined_names(data, "route_configs"),
        "secret": _defined_names(data, "secrets"),
    }
    for reference in structurer.references:
        names = known.get(reference.kind)
        if names is not None and reference.name not in names:
            listing = ", ".join(sorted(names)) or "none defined"
            word = reference.kind.replace("_", " ")
            structurer.problem(reference.path, f"unknown {word} {reference.name!r} (defined: {listing})")


def snapshot_from_data(
    data: Any,
    catalog: Catalog,
    *,
    file: str | None = None,
    lines: LineMap | None = None,
    version: str | None = None,
    check: Check | None = None,
) -> Snapshot:
    """Structure and check plain data as a Snapshot; raise ConfigError with every problem.

    Args:
        data: the document, as parsed.
        catalog: the plugins its names refer to.
        file: the file it came from, for problems.
        lines: where each field path is in that file (YAML), for problems.
        version: the Snapshot's version when the data gives none.
        check: run on the Snapshot once it is structured without a problem; its problems
            are reported like the structurer's, file and line included.
    """
    structurer = Structurer(catalog)
    if isinstance(data, Mapping) and version is not None and "version" not in data:
        data = {**data, "version": version}
    snapshot = structurer.structure(data, Snapshot)
    _check_references(data, structurer)
    if structurer.problems or snapshot is None:
        problems = structurer.problems or [ConfigProblem(path="", message="invalid config")]
        raise ConfigError(_locate(problems, file, lines))
    found = list(check(snapshot)) if check is not None else []
    if found:
        # A check's problem without a field path is about no line in particular (not line 1).
        raise ConfigError(_locate(found, file, lines, document_line=False))
    return snapshot


def _locate(
    problems: Iterable[ConfigProblem], file: str | None, lines: LineMap | None, *, document_line: bool = True
) -> list[ConfigProblem]:
    out = []
    for problem in problems:
        line = problem.line
        if lines is not None and line is None and (problem.path or document_line):
            line = lines.line_for(parse_path(problem.path))
        out.append(attrs.evolve(problem, file=file, line=line))
    out.sort(key=lambda p: p.line or 0)  # stable: same line keeps discovery order
    return out


def parse_path(text: str) -> Path:
    """The inverse of :func:`~meshcore.config.structure.format_path`: ``a[0].b`` -> ``("a", 0, "b")``."""
    parts: list[str | int] = []
    for chunk in text.replace("[", ".[").split("."):
        if not chunk:
            continue
        if chunk.startswith("[") and chunk.endswith("]") and chunk[1:-1].isdigit():
            parts.append(int(chunk[1:-1]))
        else:
            parts.append(chunk)
    return tuple(parts)


def _not_empty(check: Check | None) -> Check:
    """``check``, after the rule of config files: they are not empty.

    A file that defines no listeners, clusters or route tables (an emptied or truncated
    file, the wrong one) would stop every listener of a proxy that reloads it: it is an
    error, and the proxy keeps its config. A file of route tables alone is fine
    (``meshcore check-routes`` reads such files).
    """

    def checked(snapshot: Snapshot) -> list[ConfigProblem]:
        if not (snapshot.listeners or snapshot.clusters or snapshot.route_configs):
            return [ConfigProblem(path="", message=EMPTY_CONFIG)]
        return list(check(snapshot)) if check is not None else []

    return checked


EMPTY_CONFIG = "is empty: it defines no listeners, clusters or route_configs (a proxy from it would accept no connections)"


def load_snapshot(file: str | FsPath, catalog: Catalog, *, check: Check | None = None) -> Snapshot:
    """Read, structure and check a config file; raise ConfigError naming file, line, path and reason.

    An empty file (no listeners, clusters or route tables) is an error (see ``_not_empty``).
    ``check`` runs on the structured Snapshot, as in :func:`snapshot_from_data`.
    """
    name = str(file)
    try:
        raw = FsPath(file).read_bytes()
    except OSError as err:
        raise ConfigError(
            [ConfigProblem(path="", message=f"cannot read: {err.strerror}", file=name)], stage="parse"
        ) from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [ConfigProblem(path="", message="is not UTF-8 text", file=name)], stage="parse"
        ) from err
    data, lines = parse_document(text, name)
    version = hashlib.sha256(raw).hexdigest()[:12]
    return snapshot_from_data(data, catalog, file=name, lines=lines, version=version, check=_not_empty(check))


__all__ += ["format_path"]
