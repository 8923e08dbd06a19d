"""The control plane's admin server: readiness, stats, proxies, the mesh model, Snapshots.

Answers are computed from the plane's state with no I/O (:func:`handle`), and served by
the same HTTP/1.1 shell as a proxy's admin server. ``meshcore mesh status`` and ``meshcore
mesh config`` read ``/proxies`` and ``/config_dump``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import structlog

from meshcore.control.plane import ControlPlane, ProxyHandle
from meshcore.control.protocol import Status
from meshcore.control.translate import ProxyIdentity
from meshcore.control.wire import PUSH_ORDER, digest, snapshot_data, unstructure
from meshcore.runtime.admin import AdminResponse

__all__ = ["handle", "mesh_report", "proxy_report"]

log = structlog.get_logger("meshcore.control.admin")

_JSON = "application/json"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
Query = Mapping[str, list[str]]


def _json(data: Any, status: int = 200) -> AdminResponse:
    return AdminResponse(status, json.dumps(data, indent=2, default=str) + "\n", _JSON)


def proxy_report(plane: ControlPlane, proxy: ProxyHandle) -> dict[str, Any]:
    """One proxy's state as ``/proxies`` reports it."""
    identity = proxy.identity
    now = plane.clock()
    versions = {
        t: {"sent": s.version, "acked": s.acked}
        for t in PUSH_ORDER
        if (s := proxy.session.types.get(t)) is not None
    }
    translated = proxy.translated
    acked = proxy.session.acked_versions()
    current = (
        proxy.connected
        and identity is not None
        and all(acked.get(t) == v for t, v in plane.translated(identity).versions.items())
    )
    return {
        "id": identity.id if identity else "",
        "workload": identity.workload if identity else "",
        "namespace": identity.namespace if identity else "",
        "version": identity.version if identity else "",
        "peer": proxy.peer,
        "status": proxy.status.value,
        "connected": proxy.connected,
        "current": current,
        "nack": proxy.session.nack_message if proxy.status is Status.NACKED else "",
        "versions": versions,
        "last_contact": proxy.last_contact,
        "since_last_contact": round(max(0.0, now - proxy.last_contact), 3),
        "problems": list(translated.problems) if translated else [],
        "error": translated.error if translated else "",
        "history": [{"at": at, "status": status} for at, status in proxy.history],
    }


def mesh_report(plane: ControlPlane) -> dict[str, Any]:
    """The mesh model as ``/mesh`` reports it."""
    model = plane.model
    rejection = plane.rejection
    out: dict[str, Any] = {
        "version": model.version if model else None,
        "rejected": None
        if rejection is None
        else {"at": rejection.at, "problems": [str(p) for p in rejection.problems]},
    }
    if model is None:
        return out
    out["resources"] = [
        {"kind": r.kind, "namespace": r.namespace, "name": r.name, "file": r.file, "line": r.line}
        for r in model.resources
    ]
    out["services"] = [
        {
            **attrs.asdict(s, recurse=True),
            "endpoints": [attrs.asdict(e) for e in model.endpoints_of(s)],
        }
        for s in model.services
    ]
    out["workloads"] = [attrs.asdict(w) for w in model.workloads]
    return out


def _proxies(plane: ControlPlane, _query: Query) -> AdminResponse:
    proxies = sorted(
        plane.proxies.values(),
        key=lambda p: (
            (p.identity.namespace, p.identity.workload, p.identity.id) if p.identity else ("", "", "")
        ),
    )
    return _json(
        {
            "proxies": [proxy_report(plane, p) for p in proxies],
            "mesh": plane.model.version if plane.model else None,
        }
    )


def _config_dump(plane: ControlPlane, query: Query) -> AdminResponse:
    """The Snapshot a proxy gets: ``?proxy=ID``, or ``?workload=NAME&namespace=NS`` (connected or not)."""
    proxy_id = query.get("proxy", [""])[-1]
    workload = query.get("workload", [""])[-1]
    namespace = query.get("namespace", ["default"])[-1] or "default"
    if proxy_id:
        found = plane.proxies.get(proxy_id)
        if found is None or found.identity is None:
            return _json({"error": f"no proxy {proxy_id!r}"}, 404)
        identity = found.identity
    elif workload:
        connected = [
            p.identity
            for p in plane.proxies.values()
            if p.identity and (p.identity.workload, p.identity.namespace) == (workload, namespace)
        ]
        identity = (
            connected[0]
            if connected
            else ProxyIdentity(id=f"{workload}.{namespace}", workload=workload, namespace=namespace)
        )
    else:
        return _json({"error": "give ?proxy=ID, or ?workload=NAME&namespace=NS"}, 400)
    translated = plane.translated(identity)
    if translated.error:
        return _json({"error": translated.error}, 503)
    data = snapshot_data(translated.resources, version=digest(sorted(translated.versions.items()))[:12])
    if translated.node is not None:
        data["node"] = unstructure(attrs.evolve(translated.node, id=identity.id, version=identity.version))
    return _json({"proxy": identity.id, "problems": list(translated.problems), "snapshot": data})


def _index(_plane: ControlPlane, _query: Query) -> AdminResponse:
    lines = [f"{path:<16} {' '.join(methods):<8} {help_}" for path, (_, help_, methods) in ENDPOINTS.items()]
    return AdminResponse(200, "meshcore control plane admin\n\n" + "\n".join(lines) + "\n")


def _ready(plane: ControlPlane, _query: Query) -> AdminResponse:
    return AdminResponse(200, "LIVE\n") if plane.model is not None else AdminResponse(503, "NOT READY\n")


def _stats(plane: ControlPlane, _query: Query) -> AdminResponse:
    return AdminResponse(200, plane.stats.render_text())


def _prometheus(plane: ControlPlane, _query: Query) -> AdminResponse:
    return AdminResponse(200, plane.stats.render_prometheus(), _PROMETHEUS)


def _mesh(plane: ControlPlane, _query: Query) -> AdminResponse:
    return _json(mesh_report(plane))


def _reload(plane: ControlPlane, _query: Query) -> AdminResponse:
    """Look at the mesh files now (as SIGHUP does) and say what became of them."""
    if plane.reloader is None:
        return _json({"error": "this control plane has no mesh files to reload"}, 503)
    accepted = plane.reloader()
    rejection = plane.rejection
    problems = [str(p) for p in rejection.problems] if rejection is not None and not accepted else []
    version = plane.model.version if plane.model else None
    return _json({"accepted": accepted, "version": version, "problems": problems}, 200 if accepted else 422)


def _no_receiver(_plane: ControlPlane, _query: Query) -> AdminResponse:
    """The receiver answers ``/v1/traces`` before :func:`handle` (it reads the body); not here."""
    return AdminResponse(503, "this admin server has no trace receiver\n")


Handler = Callable[[ControlPlane, Query], AdminResponse]
_READ = ("GET", "HEAD")
ENDPOINTS: dict[str, tuple[Handler, str, tuple[str, ...]]] = {
    "/": (_index, "this list", _READ),
    "/ready": (_ready, "200 LIVE once a mesh is loaded, else 503", _READ),
    "/stats": (_stats, "counters and gauges as lines", _READ),
    "/stats/prometheus": (_prometheus, "the same in the Prometheus text format", _READ),
    "/proxies": (
        _proxies,
        "every proxy: status (SYNCED, STALE, NACKED), versions, last contact (JSON)",
        _READ,
    ),
    "/mesh": (_mesh, "the mesh model: services, endpoints, workloads, the last refused edit (JSON)", _READ),
    "/config_dump": (
        _config_dump,
        "?proxy=ID or ?workload=NAME&namespace=NS: the Snapshot it gets (JSON)",
        _READ,
    ),
    "/dashboard": (_index, "the live dashboard (HTML); its data at /dashboard/data (JSON)", _READ),
    "/v1/traces": (
        _no_receiver,
        "OTLP/HTTP trace receiver (protobuf): the sidecars' spans, shown by the dashboard",
        ("POST",),
    ),
    "/reload": (
        _reload,
        "look at the mesh files now; 200 if taken, 422 with the problems if refused",
        ("POST",),
    ),
}


def handle(plane: ControlPlane, method: str, target: str) -> AdminResponse:
    """The answer to ``method target`` from the plane's state (no I/O)."""
    try:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=16)
    except ValueError as err:
        return AdminResponse(400, f"bad request target: {err}\n")
    found = ENDPOINTS.get(parts.path)
    if found is None:
        return AdminResponse(404, f"no admin endpoint {parts.path!r}; GET / lists them\n")
    methods = found[2]
    if method not in methods:
        allow = ", ".join(methods)
        return AdminResponse(405, f"{parts.path} takes {allow}\n", headers=(("allow", allow),))
    try:
        return found[0](plane, query)
    except Exception as err:
        log.exception("admin_request_failed", path=parts.path)
        return AdminResponse(500, f"{type(err).__name__}: {err}\n")
