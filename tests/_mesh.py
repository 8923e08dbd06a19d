"""Helpers for tests of the control plane: meshes from YAML text, routing without sockets."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import attrs

from meshcore import Headers, Request
from meshcore.config.loader import parse_documents
from meshcore.control import (
    MeshModel,
    MeshSettings,
    ProxyIdentity,
    Translation,
    build_model,
    load_resources,
    translate,
)
from meshcore.control.resources import resources_from_documents
from meshcore.http.routing import RouteTable
from meshcore.plugins.discovery_static import StaticDiscovery
from meshcore.registry import Registry, build_registry

REGISTRY = build_registry(autoload=False)


def model_of(text: str, registry: Registry = REGISTRY, settings: MeshSettings | None = None) -> MeshModel:
    """The model of mesh resources written as YAML (static discovery only)."""
    docs = [(data, lines, "mesh.yaml") for data, lines in parse_documents(textwrap.dedent(text), "mesh.yaml")]
    resources = resources_from_documents(docs, registry)
    model = build_model(resources, [StaticDiscovery()], settings or MeshSettings())
    assert not model.problems, model.problems
    return model


def model_from_files(paths: list[Path], registry: Registry = REGISTRY) -> MeshModel:
    """The model of mesh files."""
    return build_model(load_resources(paths, registry), [StaticDiscovery()], MeshSettings())


def translated(
    model: MeshModel, workload: str = "", namespace: str = "default", **metadata: str
) -> Translation:
    """The translation for a proxy of ``workload``."""
    identity = ProxyIdentity(
        id=f"{workload or 'proxy'}-1", workload=workload, namespace=namespace, metadata=metadata
    )
    return translate(model, identity, REGISTRY)


@attrs.frozen
class Routed:
    """Where a request went: the route, the cluster picked, and the request as sent upstream."""

    route: str | None
    cluster: str | None
    path: str
    authority: str
    headers: dict[str, str]
    config: Any = None


def route(
    translation: Translation,
    authority: str,
    path: str = "/",
    *,
    table: str = "outbound_http_proxy",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    seed: int = 0,
) -> Routed:
    """Route one request through a route table of the translation's Snapshot, as the proxy would."""
    config = translation.snapshot.route_config(table)
    assert config is not None, f"no route table {table!r}"
    compiled = RouteTable.compile(config, rng=random.Random(seed))  # noqa: S311 - a seeded spread, not crypto
    request = Request(method, path, authority=authority, headers=Headers(list((headers or {}).items())))
    found = compiled.match(request)
    if found is None:
        return Routed(None, None, path, authority, {})
    cluster = found.pick_cluster()
    found.rewrite_request(request)
    return Routed(
        found.name, cluster, request.path, request.authority, dict(request.headers.items()), found.config
    )
