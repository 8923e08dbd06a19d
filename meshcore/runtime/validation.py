"""Validation before apply: what the runtime would fail on, found first, with field paths.

A built-in plugin (its ``meshcore_validate_snapshot`` runs for ``meshcore validate`` and
before every apply, whatever the Snapshot's source) that checks:

- the rules across objects of :mod:`meshcore.config.consistency`: route tables that would
  not compile, two listeners on one address, the admin server on a listener's address;
- every file a config field declares (:func:`meshcore.file_field`, in any plugin's config
  too): it exists, can be read, and parses;
- every TLS context of listeners and clusters, each file on its own and then built as the
  runtime builds it (:mod:`meshcore.runtime.tls`): a key that does not match its
  certificate is found here, not when a connection comes.

:func:`validate_snapshot` is what ``meshcore validate`` runs: every plugin's checks, then,
if they found nothing, a dry build (no sockets) of every load balancer and filter chain,
so that a plugin factory that refuses its config is found before any apply too.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from meshcore.config import Snapshot, TlsContext, UpstreamTls
from meshcore.config.consistency import consistency_problems
from meshcore.config.files import FileCheck, pem_certificates, pem_private_key, ssl_reason
from meshcore.config.structure import Path, PluginRef, format_path
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.plugin import hookimpl
from meshcore.registry import Registry
from meshcore.runtime.cluster_manager import ClusterManager
from meshcore.runtime.context import FilterContext
from meshcore.runtime.http_manager_plugin import HttpConnectionManagerConfig
from meshcore.runtime.stats import Stats
from meshcore.runtime.tls import Secrets, client_context, material, secrets_of, server_context

__all__ = [
    "build_problems",
    "file_problems",
    "meshcore_validate_snapshot",
    "tls_problems",
    "validate_snapshot",
]

_TLS_CACHE_SIZE = 256


@hookimpl
def meshcore_validate_snapshot(snapshot: Snapshot) -> list[ConfigProblem]:
    """The runtime's own checks of ``snapshot`` (see the module docstring)."""
    return consistency_problems(snapshot) + file_problems(snapshot) + tls_problems(snapshot)


def validate_snapshot(snapshot: Snapshot, registry: Registry) -> list[ConfigProblem]:
    """Everything that would make applying ``snapshot`` fail, short of the sockets.

    Every plugin's ``meshcore_validate_snapshot`` (this module's among them), then, if they
    found nothing, :func:`build_problems`.
    """
    return registry.snapshot_problems(snapshot) or build_problems(snapshot, registry)


# -- declared files -------------------------------------------------------------------------------


def file_problems(snapshot: Snapshot) -> list[ConfigProblem]:
    """A problem for every declared file (``meshcore.file_field``) that is missing or does not parse."""
    problems = []
    for path, check, value in _declared_files(snapshot, ()):
        try:
            check(value)
        except (ValueError, OSError) as err:
            problems.append(ConfigProblem(path=format_path(path), message=str(err)))
    return problems


_SCALARS = (str, int, float, bool, type(None))
_FILE_FIELDS: dict[type, tuple[tuple[str, FileCheck | None], ...] | None] = {}


def _file_fields_of(cls: type) -> tuple[tuple[str, FileCheck | None], ...] | None:
    """(name, its file check or None) of each field of attrs class ``cls``, once per class; None if not one."""
    try:
        return _FILE_FIELDS[cls]
    except KeyError:
        plan = tuple((f.name, f.metadata.get("file")) for f in attrs.fields(cls)) if attrs.has(cls) else None
        _FILE_FIELDS[cls] = plan
        return plan


def _declared_files(value: Any, path: Path) -> Iterator[tuple[Path, FileCheck, str]]:
    """``(path, check, file)`` for every string held by a field declared with ``file_field``."""
    if isinstance(value, PluginRef):
        yield from _declared_files(value.config, (*path, value.name))
    elif (plan := _file_fields_of(type(value))) is not None:
        for name, check in plan:
            item = getattr(value, name)
            if check is not None:
                yield from _files_in(item, (*path, name), check)
            elif not isinstance(item, _SCALARS):  # most fields: no generator for nothing
                yield from _declared_files(item, (*path, name))
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _declared_files(item, (*path, i))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _declared_files(item, (*path, str(key)))


def _files_in(value: Any, path: Path, check: FileCheck) -> Iterator[tuple[Path, FileCheck, str]]:
    """The paths a declared field holds: a string, or strings in a list (None: no file given)."""
    if isinstance(value, str):
        yield path, check, value
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _files_in(item, (*path, i), check)


# -- TLS ------------------------------------------------------------------------------------------

# (TLS config, the files' identities) -> problems: a delta applied every few milliseconds does
# not reload every certificate of the Snapshot, and a file replaced on disk is checked again.
_tls_checked: OrderedDict[tuple[Any, ...], list[tuple[str, str]]] = OrderedDict()


def tls_problems(snapshot: Snapshot) -> list[ConfigProblem]:
    """The TLS contexts of every filter chain and cluster, checked as the runtime builds them."""
    problems = []
    secrets = secrets_of(snapshot)
    for i, listener in enumerate(snapshot.listeners):
        for j, chain in enumerate(listener.filter_chains):
            if chain.tls is not None:
                problems += _tls(chain.tls, f"listeners[{i}].filter_chains[{j}].tls", secrets)
    for i, cluster in enumerate(snapshot.clusters):
        if cluster.tls is not None:
            problems += _tls(cluster.tls, f"clusters[{i}].tls", secrets)
    return problems


def _tls(tls: TlsContext | UpstreamTls, where: str, secrets: Secrets) -> list[ConfigProblem]:
    files = _tls_files(tls)
    key = material(tls, secrets)  # the config, the secrets it names, its files' identities
    found = _tls_checked.get(key)
    if found is None:
        found = _check_tls(tls, files, secrets)
        _tls_checked[key] = found
        if len(_tls_checked) > _TLS_CACHE_SIZE:
            _tls_checked.popitem(last=False)
    else:
        _tls_checked.move_to_end(key)
    return [
        ConfigProblem(path=f"{where}.{field}" if field else where, message=message)
        for field, message in found
    ]


def _tls_files(tls: TlsContext | UpstreamTls) -> list[tuple[str, str, FileCheck]]:
    """``(field, path, check)`` of each file a TLS config names."""
    wanted: list[tuple[str, FileCheck]] = [
        ("certificate_file", pem_certificates),
        ("private_key_file", pem_private_key),
    ]
    wanted.append(
        ("client_ca_file", pem_certificates) if isinstance(tls, TlsContext) else ("ca_file", pem_certificates)
    )
    out = []
    for field, check in wanted:
        path = getattr(tls, field, None)
        if isinstance(path, str):
            out.append((field, path, check))
    return out


def _check_tls(
    tls: TlsContext | UpstreamTls, files: list[tuple[str, str, FileCheck]], secrets: Secrets
) -> list[tuple[str, str]]:
    """``(field, message)`` for each file that does not load alone, else for the context as a whole."""
    found = []
    for field, path, check in files:
        try:
            check(path)
        except ValueError as err:
            found.append((field, str(err)))
    if isinstance(tls, UpstreamTls) and tls.private_key_file is not None and tls.certificate_file is None:
        found.append(("private_key_file", "needs certificate_file: a key alone is never presented"))
    if found:
        return found
    try:
        if isinstance(tls, TlsContext):
            server_context(tls, secrets)
        else:
            client_context(tls, secrets)
    except (ssl.SSLError, OSError, ValueError) as err:
        reason = ssl_reason(err)
        if reason == "key values mismatch":
            return [("private_key_file", "is not the key of certificate_file (key values mismatch)")]
        return [("", f"cannot be built: {reason}")]
    return []


# -- a dry build ----------------------------------------------------------------------------------


def build_problems(snapshot: Snapshot, registry: Registry) -> list[ConfigProblem]:
    """Build every load balancer and filter chain of ``snapshot`` as applying would, but no socket.

    A factory that raises is a problem at its plugin's field path, naming the plugin.
    """
    problems = []
    stats = Stats()
    for i, cluster in enumerate(snapshot.clusters):
        policy = cluster.lb_policy
        problems += _build(registry, "lb_policy", policy, f"clusters[{i}].lb_policy", policy.config)
    clusters = ClusterManager(stats, lambda _config: _never_picks())
    for i, listener in enumerate(snapshot.listeners):
        for j, chain in enumerate(listener.filter_chains):
            context = FilterContext(
                listener=listener.name,
                snapshot=snapshot,
                clusters=clusters,
                stats=stats,
                registry=registry,
                access_log=bool(listener.access_log),
                tls=chain.tls is not None,
            )
            for k, ref in enumerate(chain.filters):
                where = f"listeners[{i}].filter_chains[{j}].filters[{k}]"
                inner = _http_filter_problems(registry, ref, where, context)
                problems += inner or _build(registry, "network_filter", ref, where, ref.config, context)
    return problems


def _http_filter_problems(
    registry: Registry, ref: PluginRef, where: str, context: FilterContext
) -> list[ConfigProblem]:
    """The HTTP filters of a connection manager, each built on its own: a failure names its plugin."""
    config = ref.config
    if not isinstance(config, HttpConnectionManagerConfig):
        return []
    problems = []
    for m, http_filter in enumerate(config.http_filters):
        path = f"{where}.{ref.name}.http_filters[{m}]"
        problems += _build(registry, "http_filter", http_filter, path, http_filter.config, context)
    return problems


def _build(registry: Registry, kind: str, ref: PluginRef, where: str, *args: Any) -> list[ConfigProblem]:
    found = registry.get(kind, ref.name)
    if found is None:  # the structurer checked the names
        return [ConfigProblem(path=where, message=f"unknown {kind.replace('_', ' ')} {ref.name!r}")]
    path = f"{where}.{ref.name}"
    try:
        found.factory(*args)
    except ConfigError as err:
        return [ConfigProblem(path=path, message=str(problem)) for problem in err.problems]
    except Exception as err:  # noqa: BLE001 - a plugin's factory may raise anything: it is reported
        owner = registry.owner(kind, ref.name)
        plugin = f"plugin {owner.name!r} ({owner.origin})" if owner is not None else "its plugin"
        message = f"{plugin} cannot build it: {type(err).__name__}: {err}"
        return [ConfigProblem(path=path, message=message)]
    return []


def _never_picks() -> Any:
    msg = "a dry build picks no endpoint"
    raise RuntimeError(msg)
