"""Mesh resources: Kubernetes-style documents of the kinds that plugins register.

A document has ``apiVersion``, ``kind``, ``metadata`` (``name``, ``namespace``, ``labels``,
``annotations``) and ``spec``; a file holds several (YAML ``---``, or a JSON list). The
``spec`` is structured by the kind's config class with the same structurer as the proxy
config, so every problem names the file, the line, the field path and the reason, with a
"did you mean" for a misspelled field.

A field can be real (Istio defines it, the spec class structures it) and still mean
nothing to meshcore yet: then no translator or discovery backend *handles* it (see
``TranslatorType.handles``). Such a field is refused, "not supported by meshcore yet",
never silently ignored; the plugin that gives it meaning lifts the refusal by declaring it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import Any

import attrs

from meshcore.config import Structurer, non_empty
from meshcore.config.loader import LineMap, parse_documents, parse_path
from meshcore.config.structure import Path
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.plugin import MeshKindType
from meshcore.registry import Registry

__all__ = [
    "MESH_SUFFIXES",
    "Claims",
    "MeshResource",
    "MeshResources",
    "ObjectMeta",
    "load_resources",
    "mesh_files",
    "resources_from_documents",
]

MESH_SUFFIXES = (".yaml", ".yml", ".json")
_EMPTY: Mapping[str, str] = MappingProxyType({})
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")


def _dns_subdomain(_instance: Any, _attribute: Any, value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):  # noqa: PLR2004 - Kubernetes' limit
        msg = f"must be a lower-case DNS name (a-z, 0-9, '-', '.'), got {value!r}"
        raise ValueError(msg)


def _dns_label(_instance: Any, _attribute: Any, value: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):  # noqa: PLR2004 - Kubernetes' limit
        msg = f"must be a lower-case DNS label (a-z, 0-9, '-'; at most 63), got {value!r}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class ObjectMeta:
    """A resource's ``metadata``: its name and namespace (together unique per kind), and labels."""

    name: str = attrs.field(validator=[non_empty, _dns_subdomain])
    namespace: str = attrs.field(default="default", validator=_dns_label)
    labels: Mapping[str, str] = _EMPTY
    annotations: Mapping[str, str] = _EMPTY


@attrs.frozen(kw_only=True)
class MeshResource:
    """One structured mesh resource.

    Attributes:
        kind: its kind (``VirtualService``).
        api_version: its ``apiVersion`` as written.
        metadata: name, namespace, labels.
        spec: the instance of the kind's spec class.
        file: the file it came from, if any.
        line: the line of the document's first key in that file (YAML), if known.
    """

    kind: str
    api_version: str
    metadata: ObjectMeta
    spec: Any
    file: str | None = None
    line: int | None = None

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """``metadata.namespace``."""
        return self.metadata.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        """``(kind, namespace, name)``: unique in a mesh."""
        return (self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        """``Kind namespace/name``, for messages."""
        return f"{self.kind} {self.metadata.namespace}/{self.metadata.name}"

    def problem(self, path: str, message: str) -> ConfigProblem:
        """A problem with this resource at ``path`` (``spec.http[0]``), located in its file."""
        return ConfigProblem(
            path=f"{self.ref}: {path}" if path else self.ref, message=message, file=self.file, line=self.line
        )


@attrs.frozen
class MeshResources:
    """A whole, validated set of mesh resources, indexed by kind.

    Attributes:
        items: every resource, in file order.
        version: a digest of the files' contents (equal contents, equal version).
    """

    items: tuple[MeshResource, ...] = ()
    version: str = ""
    _by_kind: Mapping[str, tuple[MeshResource, ...]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_kind: dict[str, list[MeshResource]] = {}
        for item in self.items:
            by_kind.setdefault(item.kind, []).append(item)
        object.__setattr__(self, "_by_kind", {k: tuple(v) for k, v in by_kind.items()})

    def of_kind(self, kind: str) -> tuple[MeshResource, ...]:
        """Every resource of ``kind``, in file order."""
        return self._by_kind.get(kind, ())

    def get(self, kind: str, namespace: str, name: str) -> MeshResource | None:
        """The resource ``kind namespace/name``, if any."""
        return next((r for r in self.of_kind(kind) if r.key == (kind, namespace, name)), None)

    def __iter__(self) -> Iterator[MeshResource]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# -- what plugins handle -------------------------------------------------------------------------


class Claims:
    """The fields of mesh resources that some plugin gives meaning to.

    Built from every translator's and discovery backend's ``handles``: ``Kind`` (the whole
    kind), ``Kind.field.subfield``, or ``Kind.field=VALUE|VALUE`` (the field, with only those
    values; for a list, each of its items). A field is handled when it or one of its parents
    is claimed; a field one of whose descendants is claimed is looked into. Claims of the
    same field add up (two plugins may each support some values).
    """

    def __init__(self, handles: Iterable[str]) -> None:
        handled: set[str] = set()
        values: dict[str, set[str]] = {}
        anything: set[str] = set()
        for claim in handles:
            path, sep, allowed = claim.partition("=")
            handled.add(path)
            if sep:
                values.setdefault(path, set()).update(allowed.split("|"))
            else:
                anything.add(path)
        self.handled = frozenset(handled)
        self.values = {path: frozenset(v) for path, v in values.items() if path not in anything}
        self.partial = frozenset(
            ".".join(parts[:i])
            for h in self.handled
            for parts in [h.split(".")]
            for i in range(1, len(parts))
        )

    @classmethod
    def from_registry(cls, registry: Registry) -> Claims:
        """The claims of every registered translator and discovery backend."""
        handles: list[str] = []
        for kind in ("translator", "discovery"):
            for plugin in registry.types(kind).values():
                handles.extend(getattr(plugin, "handles", ()))
        return cls(handles)

    def is_handled(self, claim: str) -> bool:
        """Whether ``claim`` or one of its parents is handled."""
        parts = claim.split(".")
        return any(".".join(parts[:i]) in self.handled for i in range(1, len(parts) + 1))

    def unsupported(self, kind: str, spec: Any) -> list[tuple[Path, str]]:
        """``(path, reason)`` of every field ``spec`` sets that nothing handles (outermost only)."""
        if self.is_handled(kind):
            return []
        if kind not in self.partial:
            return [((), f"{kind} resources are not supported by meshcore yet: no translator handles {kind}")]
        out: list[tuple[Path, str]] = []
        self._walk(spec, kind, ("spec",), out)
        return out

    def _check_values(self, value: Any, claim: str, path: Path, out: list[tuple[Path, str]]) -> None:
        allowed = self.values[claim]
        items = value if isinstance(value, tuple) else (value,)
        for i, item in enumerate(items):
            if str(item) not in allowed:
                where = (*path, i) if isinstance(value, tuple) else path
                supported = ", ".join(sorted(allowed))
                out.append((where, f"{item!r} is not supported by meshcore yet (supported: {supported})"))

    def _walk(self, value: Any, claim: str, path: Path, out: list[tuple[Path, str]]) -> None:
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                self._walk(item, claim, (*path, i), out)
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                self._walk(item, claim, (*path, str(key)), out)
            return
        if not attrs.has(type(value)):
            return
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if field.default is not attrs.NOTHING and _is_default(item, field.default):
                continue
            key = field.metadata.get("key", field.name)
            sub = f"{claim}.{key}"
            if sub in self.values:
                self._check_values(item, sub, (*path, key), out)
            elif sub in self.handled:
                continue
            elif sub in self.partial:
                self._walk(item, sub, (*path, key), out)
            else:
                out.append(((*path, key), f"is not supported by meshcore yet: no translator handles {sub}"))


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs.Factory is a class at run time
        default = default.factory()
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - a value that cannot compare is not the default
        return False


# -- loading ----------------------------------------------------------------------------------


def mesh_files(paths: Iterable[str | FsPath]) -> list[FsPath]:
    """The files named, and the mesh files below the folders named (hidden ones skipped), sorted."""
    out: list[FsPath] = []
    for arg in paths:
        path = FsPath(arg)
        if not path.is_dir():
            out.append(path)
            continue
        for found in sorted(path.rglob("*")):
            relative = found.relative_to(path)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if found.is_file() and found.suffix.lower() in MESH_SUFFIXES:
                out.append(found)
    return out


def load_resources(
    paths: Iterable[str | FsPath], registry: Registry, *, claims: Claims | None = None
) -> MeshResources:
    """Read, structure and check the mesh resources of files and folders.

    Raises:
        ConfigError: with every problem of every file (file, line, resource, field path,
            reason); nothing is half-loaded.
    """
    files = mesh_files(paths)
    problems: list[ConfigProblem] = []
    documents: list[tuple[Any, LineMap | None, str]] = []
    digest = hashlib.sha256()
    for file in files:
        name = str(file)
        try:
            raw = file.read_bytes()
            text = raw.decode("utf-8")
        except OSError as err:
            problems.append(ConfigProblem(path="", message=f"cannot read: {err.strerror}", file=name))
            continue
        except UnicodeDecodeError:
            problems.append(ConfigProblem(path="", message="is not UTF-8 text", file=name))
            continue
        digest.update(name.encode() + b"\0" + raw + b"\0")
        try:
            documents.extend((data, lines, name) for data, lines in parse_documents(text, name))
        except ConfigError as err:
            problems.extend(err.problems)
    resources = MeshResources()
    try:
        resources = resources_from_documents(documents, registry, claims=claims)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return attrs.evolve(resources, version=digest.hexdigest()[:12])


def resources_from_documents(
    documents: Iterable[tuple[Any, LineMap | None, str | None]],
    registry: Registry,
    *,
    claims: Claims | None = None,
) -> MeshResources:
    """Structure parsed documents ``(data, lines, file)``; ConfigError with every problem."""
    if claims is None:
        claims = Claims.from_registry(registry)
    problems: list[ConfigProblem] = []
    items: list[MeshResource] = []
    seen: dict[tuple[str, str, str], MeshResource] = {}
    for data, lines, file in documents:
        resource = _structure(data, lines, file, registry, claims, problems)
        if resource is None:
            continue
        first = seen.get(resource.key)
        if first is not None:
            where = f"{first.file}:{first.line}" if first.file else "another document"
            problems.append(resource.problem("metadata.name", f"is already defined at {where}"))
            continue
        seen[resource.key] = resource
        items.append(resource)
    if problems:
        raise ConfigError(problems)
    return MeshResources(tuple(items))


def _structure(
    data: Any,
    lines: LineMap | None,
    file: str | None,
    registry: Registry,
    claims: Claims,
    problems: list[ConfigProblem],
) -> MeshResource | None:
    line = lines.line_for(()) if lines is not None else None

    def locate(found: Sequence[ConfigProblem], prefix: str) -> None:
        located = []
        for problem in found:
            where = lines.line_for(parse_path(problem.path)) if lines is not None else line
            path = f"{prefix}: {problem.path}" if prefix and problem.path else prefix or problem.path
            located.append(attrs.evolve(problem, path=path, file=file, line=where))
        problems.extend(sorted(located, key=lambda p: p.line or 0))  # stable: same line keeps its order

    if not isinstance(data, Mapping):
        locate(
            [
                ConfigProblem(
                    path="", message="a mesh resource must be a mapping with apiVersion, kind, metadata, spec"
                )
            ],
            "",
        )
        return None
    structurer = Structurer(registry)
    for key in data:
        if key not in _TOP_LEVEL:
            structurer.problem((str(key),), _unknown(str(key), _TOP_LEVEL))
    kind_type = _kind_type(data, registry, structurer)
    metadata = structurer.structure(data.get("metadata"), ObjectMeta, ("metadata",))
    if kind_type is None or not isinstance(metadata, ObjectMeta):
        locate(structurer.problems, "")
        return None
    prefix = f"{kind_type.name} {metadata.namespace}/{metadata.name}"
    spec = structurer.structure(data.get("spec"), kind_type.config or dict, ("spec",))
    if not structurer.problems:
        for path, reason in claims.unsupported(kind_type.name, spec):
            structurer.problem(path, reason)
    if structurer.problems:
        locate(structurer.problems, prefix)
        return None
    return MeshResource(
        kind=kind_type.name,
        api_version=str(data["apiVersion"]),
        metadata=metadata,
        spec=spec,
        file=file,
        line=line,
    )


def _unknown(word: str, known: Sequence[str]) -> str:
    from difflib import get_close_matches  # noqa: PLC0415 - only on a problem

    close = get_close_matches(word, known, n=1, cutoff=0.6)
    return (
        f"unknown field; did you mean {close[0]!r}?"
        if close
        else f"unknown field; known fields: {', '.join(known)}"
    )


def _kind_type(data: Mapping[str, Any], registry: Registry, structurer: Structurer) -> MeshKindType | None:
    kind = data.get("kind")
    known = sorted(registry.names("mesh_kind"))
    if kind is None:
        structurer.problem(("kind",), f"is required (known kinds: {', '.join(known)})")
        return None
    if not isinstance(kind, str) or kind not in known:
        from difflib import get_close_matches  # noqa: PLC0415 - only on a problem

        close = get_close_matches(str(kind), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        structurer.problem(("kind",), f"unknown kind {kind!r}{hint} (known: {', '.join(known) or 'none'})")
        return None
    found = registry.get("mesh_kind", kind)
    if not isinstance(found, MeshKindType):
        structurer.problem(("kind",), f"unknown kind {kind!r}")
        return None
    version = data.get("apiVersion")
    if version is None:
        structurer.problem(("apiVersion",), f"is required ({kind} takes {', '.join(found.api_versions)})")
        return None
    if version not in found.api_versions:
        structurer.problem(
            ("apiVersion",), f"{kind} takes apiVersion {', '.join(found.api_versions)}, got {version!r}"
        )
        return None
    return found
