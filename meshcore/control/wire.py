"""A Snapshot as delivery resources: plain data by resource type and name, with versions.

A proxy's Snapshot is split the way xDS splits it: ``listeners``, ``routes`` (route
tables), ``clusters`` (without their endpoints), ``endpoints`` (by cluster name),
``secrets``, and ``node`` (the proxy's identity). Each resource is plain data in the shape
of a proxy config file (defaults left out), so the sidecar structures and validates what
it receives with its own registry, exactly as it would a file, and a Snapshot it cannot
use is refused with the runtime's own messages.

Versions are digests of the content: the same resources have the same version in any
control-plane process, so a restarted control plane recognises a proxy that is already
up to date.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs

from meshcore.config import Address, FilterOverrides, PluginRef, Snapshot, format_duration
from meshcore.config.units import Duration

__all__ = [
    "PUSH_ORDER",
    "Memo",
    "ResourceSet",
    "digest",
    "resource_sets",
    "snapshot_data",
    "unstructure",
]

PUSH_ORDER = ("node", "secrets", "clusters", "endpoints", "routes", "listeners")
"""Resource types in the order a push sends them (what is referred to before what refers)."""

ResourceSet = dict[str, Any]
"""Resources of one type by name: plain data."""


def unstructure(value: Any) -> Any:  # noqa: PLR0911 - a flat dispatch on the kind of value
    """Plain data for a config value that structures back to it; fields at their default left out.

    attrs classes become mappings (under each field's document key), a plugin reference
    ``{name: config}`` (or just its name without config), Address "host:port", Duration
    "250ms", tuples lists. Secrets are kept: this is what a proxy receives, not a dump.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # a str subclass (a secret) as plain text
    if isinstance(value, enum.Enum):
        return unstructure(value.value)
    if isinstance(value, int):
        return int(value)  # ByteSize too
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, float):
        return value
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, PluginRef):
        config = unstructure(value.config)
        return {value.name: config} if config not in (None, {}) else value.name
    if isinstance(value, FilterOverrides):
        return {name: unstructure(config) for name, config in value.by_filter.items()}
    if attrs.has(type(value)):
        return _unstructure_attrs(value)
    if isinstance(value, Mapping):
        return {str(k): unstructure(v) for k, v in value.items()}
    if isinstance(value, tuple | list | set | frozenset):
        items = [unstructure(item) for item in value]
        # A set sorted: its iteration order varies with the hash seed, and so would versions.
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return str(value)


def _unstructure_attrs(value: Any) -> dict[str, Any]:
    out = {}
    for field in attrs.fields(type(value)):
        item = getattr(value, field.name)
        if not _is_default(item, field.default):
            out[field.metadata.get("key", field.name)] = unstructure(item)
    return out


def _is_default(item: Any, default: Any) -> bool:
    if default is attrs.NOTHING or isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # a class at run time
        return False
    try:
        return bool(item == default)
    except Exception:  # noqa: BLE001 - a value that cannot compare is not the default
        return False


def digest(data: Any) -> str:
    """A short, stable digest of plain data (the version of a resource or a set of them)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


Memo = dict[int, tuple[Any, Any]]
"""Plain data of config objects already seen, by ``id`` (the object kept with it: ids are reused)."""


def _cluster_data(cluster: Any, memo: Memo | None) -> tuple[Any, Any]:
    """A cluster's data without its endpoints, and its endpoints' data (memoized per object)."""
    if memo is not None:
        found = memo.get(id(cluster))
        if found is not None and found[0] is cluster:
            data: tuple[Any, Any] = found[1]
            return data
    data = (unstructure(attrs.evolve(cluster, endpoints=())), [unstructure(e) for e in cluster.endpoints])
    if memo is not None:
        memo[id(cluster)] = (cluster, data)
    return data


def resource_sets(snapshot: Snapshot, *, memo: Memo | None = None) -> dict[str, ResourceSet]:
    """``snapshot`` split into resources by type and name (``PUSH_ORDER``; admin is the proxy's own).

    With ``memo``, a cluster object met before (translators share the clusters that depend on
    the mesh alone) is not turned into data again: the same data object is returned.
    """
    clusters: ResourceSet = {}
    endpoints: ResourceSet = {}
    for cluster in snapshot.clusters:
        clusters[cluster.name], endpoints[cluster.name] = _cluster_data(cluster, memo)
    return {
        "node": {"node": unstructure(snapshot.node)} if snapshot.node is not None else {},
        "secrets": {
            getattr(s, "name", str(i)): unstructure(s) for i, s in enumerate(getattr(snapshot, "secrets", ()))
        },
        "clusters": clusters,
        "endpoints": endpoints,
        "routes": {r.name: unstructure(r) for r in snapshot.route_configs},
        "listeners": {listener.name: unstructure(listener) for listener in snapshot.listeners},
    }


def snapshot_data(
    resources: Mapping[str, ResourceSet], *, admin: Any = None, version: str = ""
) -> dict[str, Any]:
    """The config document (as in a file) that the resources of every type make together.

    Args:
        resources: resources by type and name (see :func:`resource_sets`).
        admin: the proxy's own ``admin`` section, if any.
        version: the Snapshot's version.
    """
    clusters = []
    for name, cluster in resources.get("clusters", {}).items():
        data = dict(cluster)
        found = resources.get("endpoints", {}).get(name)
        if found:
            data["endpoints"] = found
        clusters.append(data)
    out: dict[str, Any] = {
        "version": version,
        "listeners": list(resources.get("listeners", {}).values()),
        "clusters": clusters,
        "route_configs": list(resources.get("routes", {}).values()),
    }
    node = resources.get("node", {}).get("node")
    if node is not None:
        out["node"] = node
    secrets = list(resources.get("secrets", {}).values())
    if secrets:
        out["secrets"] = secrets
    if admin is not None:
        out["admin"] = admin
    return out
