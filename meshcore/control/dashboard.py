"""The live dashboard of the control plane's admin server: ``/dashboard`` and ``/dashboard/data``.

One page (``dashboard.html``, package data: inline CSS, JS and SVG, no build step, no
CDN) that asks ``/dashboard/data`` every second for:

- the **service graph**: a node per workload (grouped by service) and an edge per caller
  and callee with its request rate, error rate (5xx; 4xx apart) and p99 latency over the
  last few seconds, and whether the edge is mutual TLS. The data are scraped from each
  connected sidecar's admin server (``/stats?format=json``; a sidecar gives its admin
  address in its bootstrap metadata) and turned into edges with the mesh model and each
  caller's translation:

  * a caller's route stats by virtual host (``HOST:PORT``) give the rate and error
    classes of its calls to that service (faults it injects included);
  * its cluster stats (``outbound|PORT|SUBSET|HOST``) split that rate between the
    service's workloads (its cluster's endpoints are the workloads' addresses);
  * p99 is the caller's outbound latency when it calls one service only, else the
    callee's inbound latency (all its callers);
  * traffic from outside the mesh is a ``client`` node: what a workload's inbound
    listener served beyond what its mesh callers sent.

- each proxy's **sync state** (SYNCED, STALE, NACKED with the message) and its workload
  certificate's expiry, when the control plane signed one;
- the **recent traces**, newest first, each with its spans in tree order for a waterfall:
  what the sidecars export to the control plane's own receiver (:mod:`meshcore.control.traces`)
  when a Telemetry resource names the ``meshcore`` tracing provider (the default one);
- the **live mesh resources**, as the control plane serves them, and the last refused edit.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import attrs
import h11
import structlog
import trio

from meshcore.control.admin import mesh_report
from meshcore.control.plane import ControlPlane, ProxyHandle
from meshcore.control.traces import TraceStore
from meshcore.runtime.admin import AdminResponse

__all__ = ["Dashboard"]

log = structlog.get_logger("meshcore.control.dashboard")

WINDOW = 5.0
"""Seconds of stats the rates are computed over."""
_SCRAPE_EVERY = 0.5
_SCRAPE_TIMEOUT = 2.0
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"


async def _get_json(address: str, target: str) -> Any:
    """GET ``target`` from ``address`` (an admin server on loopback) and parse its JSON body."""
    host, _, port = address.rpartition(":")
    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET", target=target, headers=[("host", address), ("connection", "close")]
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        body = bytearray()
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    if status != 200:  # noqa: PLR2004 - HTTP OK
        msg = f"HTTP {status}"
        raise OSError(msg)
    return json.loads(body)


@attrs.frozen
class _Metrics:
    """One proxy's metrics at one time: counters by (name, labels), histograms' bucket counts."""

    counters: Mapping[tuple[str, frozenset[tuple[str, str]]], float]
    histograms: Mapping[tuple[str, frozenset[tuple[str, str]]], tuple[tuple[float, ...], tuple[int, ...]]]

    @classmethod
    def from_data(cls, items: Iterable[Mapping[str, Any]]) -> _Metrics:
        counters: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        histograms: dict[
            tuple[str, frozenset[tuple[str, str]]], tuple[tuple[float, ...], tuple[int, ...]]
        ] = {}
        for item in items:
            key = (str(item["name"]), frozenset((str(k), str(v)) for k, v in item["labels"].items()))
            if item["kind"] == "histogram":
                histograms[key] = (tuple(item["buckets"]), tuple(item["counts"]))
            elif item["kind"] == "counter":
                counters[key] = float(item["value"])
        return cls(counters, histograms)


def _label(labels: frozenset[tuple[str, str]], name: str) -> str:
    return next((v for k, v in labels if k == name), "")


@attrs.define
class _Delta:
    """What one proxy did between two samples: counter increases and histogram bucket increases."""

    seconds: float
    counters: dict[tuple[str, frozenset[tuple[str, str]]], float]
    histograms: dict[tuple[str, frozenset[tuple[str, str]]], tuple[tuple[float, ...], list[int]]]

    def select(self, name: str, **labels: str) -> Iterable[tuple[frozenset[tuple[str, str]], float]]:
        for (n, found), value in self.counters.items():
            if n == name and all(_label(found, k) == v for k, v in labels.items()):
                yield found, value

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.select(name, **labels))

    def p99(self, name: str, **labels: str) -> float | None:
        merged: list[int] | None = None
        bounds: tuple[float, ...] = ()
        for (n, found), (buckets, counts) in self.histograms.items():
            if n == name and all(_label(found, k) == v for k, v in labels.items()):
                if merged is None:
                    merged, bounds = list(counts), buckets
                elif buckets == bounds:
                    merged = [a + b for a, b in zip(merged, counts, strict=True)]
        if not merged or sum(merged) == 0:
            return None
        rank = 0.99 * sum(merged)
        seen = 0
        for i, count in enumerate(merged):
            seen += count
            if seen >= rank:
                return bounds[i] if i < len(bounds) else bounds[-1]
        return bounds[-1]


def _delta(old: _Metrics, new: _Metrics, seconds: float) -> _Delta:
    counters = {}
    for key, value in new.counters.items():
        was = old.counters.get(key, 0.0)
        counters[key] = value - was if value >= was else value  # went back: a restarted sidecar's count

    histograms = {}
    for key, (buckets, counts) in new.histograms.items():
        before = old.histograms.get(key)
        if before is not None and before[0] == buckets:
            went_back = any(a < b for a, b in zip(counts, before[1], strict=True))
            histograms[key] = (
                buckets,
                list(counts) if went_back else [a - b for a, b in zip(counts, before[1], strict=True)],
            )
        else:
            histograms[key] = (buckets, list(counts))
    return _Delta(seconds, counters, histograms)


class Dashboard:
    """The dashboard's state: recent samples of every sidecar's metrics."""

    def __init__(self, plane: ControlPlane, *, traces: TraceStore | None = None) -> None:
        self.plane = plane
        self.traces = traces if traces is not None else TraceStore()
        self.samples: dict[str, collections.deque[tuple[float, _Metrics]]] = {}
        self.errors: dict[str, str] = {}
        self._last_scrape = 0.0
        self._inbound_port: dict[str, int] = {}
        self._lock = trio.Lock()

    async def answer(self, method: str, target: str) -> AdminResponse | None:
        """The answer to a dashboard request, None for any other target."""
        path = target.partition("?")[0]
        if path not in {"/dashboard", "/dashboard/", "/dashboard/data"}:
            return None
        if method not in {"GET", "HEAD"}:
            return AdminResponse(405, f"{path} takes GET, HEAD\n", headers=(("allow", "GET, HEAD"),))
        if path == "/dashboard/data":
            await self.scrape()
            return AdminResponse(200, json.dumps(self.data(), default=str) + "\n", _JSON)
        page = resources.files("meshcore.control").joinpath("dashboard.html").read_text()
        return AdminResponse(200, page, _HTML)

    # -- scraping ---------------------------------------------------------------------------

    async def scrape(self) -> None:
        """Sample every connected sidecar's metrics (at most every half second)."""
        async with self._lock:
            now = time.monotonic()
            if now - self._last_scrape < _SCRAPE_EVERY:
                return
            self._last_scrape = now
            async with trio.open_nursery() as nursery:
                for proxy in self.plane.proxies.values():
                    admin = proxy.identity.metadata.get("admin") if proxy.identity else None
                    if proxy.connected and admin and proxy.identity is not None:
                        nursery.start_soon(self._scrape_one, proxy.identity.id, admin, now)
            known = {p.identity.id for p in self.plane.proxies.values() if p.identity is not None}
            for gone in set(self.samples) - known:
                del self.samples[gone]

    async def _scrape_one(self, proxy_id: str, admin: str, now: float) -> None:
        try:
            with trio.fail_after(_SCRAPE_TIMEOUT):
                data = await _get_json(admin, "/stats?format=json")
        except (OSError, trio.TooSlowError, ValueError, h11.ProtocolError) as err:
            self.errors[proxy_id] = f"cannot read its stats at {admin}: {str(err) or type(err).__name__}"
            return
        self.errors.pop(proxy_id, None)
        samples = self.samples.setdefault(proxy_id, collections.deque())
        samples.append((now, _Metrics.from_data(data)))
        while len(samples) > 2 and samples[1][0] <= now - WINDOW:  # noqa: PLR2004 - keep one older than the window
            samples.popleft()

    def _delta_of(self, proxy_id: str) -> _Delta | None:
        samples = self.samples.get(proxy_id)
        if not samples or len(samples) < 2:  # noqa: PLR2004 - a rate takes two samples
            return None
        (t0, old), (t1, new) = samples[0], samples[-1]
        return _delta(old, new, max(t1 - t0, 1e-3)) if t1 > t0 else None

    # -- the data -----------------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-able data."""
        mesh = mesh_report(self.plane)
        return {
            "time": time.time(),
            "window": WINDOW,
            "mesh": {"version": mesh.get("version"), "rejected": mesh.get("rejected")},
            "graph": self.graph(),
            "proxies": self.proxies(),
            "traces": self.traces.data(),
            "resources": self.resources(),
        }

    def proxies(self) -> list[dict[str, Any]]:
        """Each proxy: workload, sync state, NACK message, certificate expiry, stats problems."""
        out = []
        now = time.time()
        for proxy in sorted(self.plane.proxies.values(), key=lambda p: p.identity.id if p.identity else ""):
            identity = proxy.identity
            certificate = proxy.certificate
            out.append(
                {
                    "id": identity.id if identity else "",
                    "workload": identity.workload if identity else "",
                    "status": proxy.status.value,
                    "connected": proxy.connected,
                    "nack": proxy.session.nack_message if proxy.status.value == "NACKED" else "",
                    "admin": identity.metadata.get("admin", "") if identity else "",
                    "certificate": None
                    if certificate is None
                    else {
                        "spiffe_id": certificate[0],
                        "not_after": certificate[1],
                        "expires_in": round(certificate[1] - now, 1),
                    },
                    "stats_error": self.errors.get(identity.id, "") if identity else "",
                }
            )
        return out

    def resources(self) -> list[dict[str, Any]]:
        """The mesh resources the control plane serves, their specs as data."""
        if self.plane.model is None:
            return []
        return [
            {
                "kind": r.kind,
                "namespace": r.namespace,
                "name": r.name,
                "file": r.file,
                "line": r.line,
                "spec": _plain(r.spec),
            }
            for r in self.plane.model.resources
        ]

    def graph(self) -> dict[str, Any]:
        """Nodes (workloads, and ``client``) and edges with rate, error rates, p99 and mTLS."""
        model = self.plane.model
        if model is None:
            return {"nodes": [], "edges": []}
        nodes = [{"id": "client", "service": "client", "version": "", "label": "client"}]
        by_address: dict[tuple[str, int], str] = {}
        inbound_port: dict[str, int] = {}
        for workload in model.workloads:
            services = model.services_of(workload)
            service = services[0].host.split(".")[0] if services else workload.name
            nodes.append(
                {
                    "id": workload.name,
                    "service": service,
                    "version": workload.labels.get("version", ""),
                    "label": workload.name,
                }
            )
            for s in services:
                for endpoint in model.endpoints_of(s):
                    if endpoint.workload == f"{workload.namespace}/{workload.name}":
                        for port in s.ports:
                            by_address[(endpoint.address, endpoint.port_for(port))] = workload.name
                            inbound_port[workload.name] = endpoint.port_for(port)
        self._inbound_port = inbound_port
        deltas = {
            p.identity.workload: (p, d)
            for p in self.plane.proxies.values()
            if p.identity is not None and p.connected and (d := self._delta_of(p.identity.id)) is not None
        }
        edges: list[dict[str, Any]] = []
        for caller, (proxy, delta) in deltas.items():
            edges.extend(self._edges_of(caller, proxy, delta, by_address, deltas))
        received: dict[str, float] = collections.defaultdict(float)
        for edge in edges:
            received[edge["target"]] += edge["rps"]
        for name, (_proxy, delta) in deltas.items():
            number = inbound_port.get(name)
            if number is None:
                continue
            listener = f"inbound_{number}"
            total = delta.total("http_downstream_rq_total", listener=listener) / delta.seconds
            outside = total - received[name]
            if outside > 0.1 * max(total, 1e-9) and outside > 0.05:  # noqa: PLR2004 - noise
                served = delta.total("http_downstream_rq_total", listener=listener) or 1.0
                edges.append(
                    {
                        "source": "client",
                        "target": name,
                        "rps": round(outside, 2),
                        "error_rate": round(
                            _class(delta, "http_downstream_rq_xx", "5xx", listener) / served, 3
                        ),
                        "rate_4xx": round(
                            _class(delta, "http_downstream_rq_xx", "4xx", listener) / served, 3
                        ),
                        "p99_ms": delta.p99("http_downstream_rq_time_ms", listener=listener),
                        "mtls": False,
                    }
                )
        return {"nodes": nodes, "edges": edges}

    def _edges_of(
        self,
        caller: str,
        proxy: ProxyHandle,
        delta: _Delta,
        by_address: Mapping[tuple[str, int], str],
        deltas: Mapping[str, tuple[ProxyHandle, _Delta]],
    ) -> list[dict[str, Any]]:
        assert proxy.identity is not None  # noqa: S101 - only proxies that said who they are
        translated = self.plane.translated(proxy.identity)
        clusters = translated.resources.get("clusters", {})
        endpoints = translated.resources.get("endpoints", {})
        by_host = _calls_by_host(delta)
        # how each service's calls split between its workloads (the caller's clusters)
        split: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
        mtls: dict[str, bool] = {}
        for labels, value in delta.select("cluster_upstream_rq_total"):
            name = _label(labels, "cluster")
            parts = name.split("|")
            if len(parts) != 4 or parts[0] != "outbound":  # noqa: PLR2004 - outbound|PORT|SUBSET|HOST
                continue
            host = parts[3]
            for target in _cluster_workloads(endpoints.get(name, []), by_address):
                split[host][target] += value / max(1, len(endpoints.get(name, [])))
                mtls[target] = bool((clusters.get(name) or {}).get("tls"))
        callees = [h for h, counts in by_host.items() if counts["total"] > 0]
        edges = []
        for host, counts in by_host.items():
            targets = split.get(host) or {}
            if not targets:  # nothing reached a workload (all aborted, or denied): the service's workloads
                targets = dict.fromkeys(_service_workloads(self.plane, host), 0.0)
            shares = sum(targets.values())
            total = counts["total"]
            for target, value in targets.items():
                share = value / shares if shares else 1 / len(targets)
                rps = total * share / delta.seconds
                if rps <= 0:
                    continue
                if len(callees) == 1:
                    p99 = delta.p99("http_downstream_rq_time_ms", listener="outbound_http_proxy")
                else:
                    callee = deltas.get(target)
                    port = self._inbound_port.get(target)
                    p99 = (
                        callee[1].p99("http_downstream_rq_time_ms", listener=f"inbound_{port}")
                        if callee and port
                        else None
                    )
                edges.append(
                    {
                        "source": caller,
                        "target": target,
                        "rps": round(rps, 2),
                        "error_rate": round(counts["5xx"] / total, 3) if total else 0.0,
                        "rate_4xx": round(counts["4xx"] / total, 3) if total else 0.0,
                        "p99_ms": p99,
                        "mtls": mtls.get(target, False),
                    }
                )
        return edges


def _calls_by_host(delta: _Delta) -> dict[str, dict[str, float]]:
    """A caller's calls by service host (the virtual hosts ``HOST:PORT`` of its outbound routes)."""
    by_host: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for labels, value in delta.select("route_rq_total"):
        vhost = _label(labels, "virtual_host")
        if not vhost.startswith("inbound"):
            by_host[vhost.rpartition(":")[0]]["total"] += value
    for labels, value in delta.select("route_rq_xx"):
        vhost = _label(labels, "virtual_host")
        if not vhost.startswith("inbound"):
            by_host[vhost.rpartition(":")[0]][_label(labels, "code_class")] += value
    return by_host


def _class(delta: _Delta, name: str, code_class: str, listener: str) -> float:
    return delta.total(name, listener=listener, code_class=code_class)


def _cluster_workloads(
    endpoints: Iterable[Mapping[str, Any]], by_address: Mapping[tuple[str, int], str]
) -> list[str]:
    out = []
    for endpoint in endpoints:
        address = str(endpoint.get("address", ""))
        host, _, port = address.rpartition(":")
        found = by_address.get((host.strip("[]"), int(port))) if port.isdigit() else None
        if found:
            out.append(found)
    return out


def _service_workloads(plane: ControlPlane, host: str) -> list[str]:
    model = plane.model
    if model is None:
        return []
    return [w.name for w in model.workloads if any(s.host == host for s in model.services_of(w))]


def _plain(value: Any) -> Any:
    """An attrs spec as plain data, fields at their defaults left out (as a user would write it)."""
    if attrs.has(type(value)):
        out = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # a class at run time
                default = default.factory()
            if default is not attrs.NOTHING and item == default:
                continue
            out[field.metadata.get("key", field.name)] = _plain(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
