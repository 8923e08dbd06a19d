"""The built-in mesh analyzers: cross-resource problems with stable codes (MC0001...).

Each code is documented, with an example and the fix, in docs/mesh-analysis.md. ERROR
findings refuse a mesh edit at the control plane; the others are reported by ``meshcore
analyze``.
"""

from __future__ import annotations

from collections.abc import Iterator

import meshcore
from meshcore.control import Finding, MeshModel, MeshResource, Service, Severity, finding, fqdn, labels_match
from meshcore.plugins.istio_lookup import host_matches, virtual_services_for
from meshcore.plugins.istio_virtualservice import Destination, HTTPMatchRequest, HTTPRoute
from meshcore.plugins.translate_sidecar import egress_host_matches

E, W, I = Severity.ERROR, Severity.WARNING, Severity.INFO  # noqa: E741 - the three severities, by their initials

CODES: dict[str, tuple[Severity, str]] = {
    "MC0001": (E, "a route's destination host is not a service of the mesh"),
    "MC0002": (E, "a route's destination subset is not defined"),
    "MC0003": (W, "a subset selects no endpoint of its service"),
    "MC0004": (W, "several VirtualServices route the same host"),
    "MC0005": (W, "an HTTP route can never match: an earlier one takes all its requests"),
    "MC0006": (W, "a workload selector selects no workload"),
    "MC0007": (W, "a service port has no protocol"),
    "MC0008": (W, "a VirtualService host is not a service of the mesh"),
    "MC0009": (W, "a DestinationRule host is not a service of the mesh"),
    "MC0010": (W, "several DestinationRules apply to the same host"),
    "MC0011": (W, "a workload's inbound port would forward to itself"),
    "MC0012": (W, "a Sidecar egress host imports no service"),
    "MC0013": (W, "several Sidecars select the same workload"),
    "MC0014": (E, "a route's destination port is not a port of its service"),
    "MC0015": (I, "a workload is no service's endpoint"),
}


def _found(code: str, message: str, resource: MeshResource | None = None, path: str = "") -> Finding:
    severity, _ = CODES[code]
    return finding(code, severity, message, resource, path)


def _services(model: MeshModel, host: str) -> tuple[Service, ...]:
    """The services a host (maybe a wildcard) covers."""
    if "*" in host:
        return tuple(s for s in model.services if host_matches(host, s.host))
    return model.services_for(host)


def _destinations(resource: MeshResource) -> Iterator[tuple[str, Destination]]:
    spec = resource.spec
    for i, rule in enumerate(spec.http):
        for j, route in enumerate(rule.route):
            yield f"spec.http[{i}].route[{j}].destination", route.destination
        if rule.mirror is not None:
            yield f"spec.http[{i}].mirror", rule.mirror
        for j, mirror in enumerate(rule.mirrors):
            yield f"spec.http[{i}].mirrors[{j}].destination", mirror.destination
    for kind in ("tcp", "tls"):
        for i, rule in enumerate(getattr(spec, kind)):
            for j, route in enumerate(rule.route):
                yield f"spec.{kind}[{i}].route[{j}].destination", route.destination


def _subsets(model: MeshModel, host: str) -> dict[str, dict[str, str]] | None:
    """The subsets DestinationRules define for ``host`` (None: no rule for it)."""
    found: dict[str, dict[str, str]] | None = None
    for rule in model.resources.of_kind("DestinationRule"):
        if host_matches(fqdn(rule.spec.host, rule.namespace, model.settings.domain_suffix), host):
            found = found or {}
            found.update({s.name: dict(s.labels) for s in rule.spec.subsets})
    return found


def routes(model: MeshModel) -> list[Finding]:
    """MC0001, MC0002, MC0014: destinations that do not exist; MC0008: VirtualService hosts."""
    out = []
    suffix = model.settings.domain_suffix
    for resource in model.resources.of_kind("VirtualService"):
        for i, host in enumerate(resource.spec.hosts):
            if not _services(model, fqdn(host, resource.namespace, suffix)):
                out.append(
                    _found(
                        "MC0008", f"host {host!r} is not a service of the mesh", resource, f"spec.hosts[{i}]"
                    )
                )
        for path, destination in _destinations(resource):
            host = fqdn(destination.host, resource.namespace, suffix)
            services = model.services_for(host)
            if not services:
                known = sorted({s.host for s in model.services})
                out.append(
                    _found(
                        "MC0001",
                        f"host {host!r} is not a service of the mesh (services: {', '.join(known) or 'none'})",
                        resource,
                        f"{path}.host",
                    )
                )
                continue
            number = destination.port.number if destination.port is not None else 0
            if number and all(s.port(number) is None for s in services):
                ports = ", ".join(str(p.number) for p in services[0].ports)
                out.append(
                    _found(
                        "MC0014",
                        f"{host!r} has no port {number} (ports: {ports or 'none'})",
                        resource,
                        f"{path}.port.number",
                    )
                )
            if destination.subset:
                subsets = _subsets(model, host) or {}
                if destination.subset not in subsets:
                    defined = ", ".join(sorted(subsets)) or "none"
                    out.append(
                        _found(
                            "MC0002",
                            f"subset {destination.subset!r} of {host!r} is not defined (defined: {defined})",
                            resource,
                            f"{path}.subset",
                        )
                    )
    return out


def subsets(model: MeshModel) -> list[Finding]:
    """MC0003: subsets without endpoints; MC0009: DestinationRule hosts; MC0010: conflicting rules."""
    out = []
    seen: dict[tuple[str, str], MeshResource] = {}
    for resource in model.resources.of_kind("DestinationRule"):
        spec = resource.spec
        host = fqdn(spec.host, resource.namespace, model.settings.domain_suffix)
        services = _services(model, host)
        if not services:
            out.append(_found("MC0009", f"host {host!r} is not a service of the mesh", resource, "spec.host"))
        key = (resource.namespace, host)
        first = seen.get(key)
        if first is not None and spec.workloadSelector is None and first.spec.workloadSelector is None:
            out.append(
                _found(
                    "MC0010",
                    f"{first.ref} applies to {host!r} too; only one of them is used",
                    resource,
                    "spec.host",
                )
            )
        elif spec.workloadSelector is None:
            seen[key] = resource
        endpoints = [e for s in services for e in model.endpoints_of(s)]
        for i, subset in enumerate(spec.subsets):
            if services and not any(labels_match(subset.labels, e.labels) for e in endpoints):
                wanted = ", ".join(f"{k}={v}" for k, v in subset.labels.items()) or "(none)"
                out.append(
                    _found(
                        "MC0003",
                        f"subset {subset.name!r} selects no endpoint of {host!r} (labels {wanted})",
                        resource,
                        f"spec.subsets[{i}].labels",
                    )
                )
    return out


def _match_covers(match: HTTPMatchRequest, other: HTTPMatchRequest) -> bool:
    """Whether ``match`` (conditions on the path only) takes every request ``other`` takes."""
    uri, theirs = match.uri, other.uri
    if uri is None or uri.prefix in ("", "/"):
        return True
    if theirs is None or theirs.regex is not None or (other.ignoreUriCase and not match.ignoreUriCase):
        return (
            uri.regex is not None
            and theirs is not None
            and theirs.regex == uri.regex
            and match.ignoreUriCase == other.ignoreUriCase
        )

    def fold(text: str) -> str:
        return text.lower() if match.ignoreUriCase else text

    value = theirs.prefix if theirs.prefix is not None else theirs.exact or ""
    if uri.prefix is not None:
        return fold(value).startswith(fold(uri.prefix))
    return uri.exact is not None and theirs.exact is not None and fold(theirs.exact) == fold(uri.exact)


def _covers(earlier: HTTPRoute, later: HTTPRoute) -> bool:
    """Whether every request ``later`` could match is matched by ``earlier`` first."""
    if not earlier.match:
        return True
    if not later.match:
        return False
    plain = [m for m in earlier.match if _path_only(m)]
    return all(any(_match_covers(m, other) for m in plain) for other in later.match)


def _path_only(match: HTTPMatchRequest) -> bool:
    """Whether ``match`` has no condition but its path."""
    return not (
        match.scheme
        or match.method
        or match.authority
        or match.headers
        or match.port
        or match.sourceLabels
        or match.gateways
        or match.queryParams
        or match.withoutHeaders
        or match.sourceNamespace
    )


def conflicts(model: MeshModel) -> list[Finding]:
    """MC0004: several VirtualServices for a host; MC0005: shadowed HTTP routes."""
    out = []
    for service in model.services:
        found = [vs for vs in virtual_services_for(model, service, service.namespace) if vs.spec.http]
        if len(found) > 1:
            others = ", ".join(vs.ref for vs in found[1:])
            out.append(
                _found(
                    "MC0004",
                    f"{others} also route {service.host!r}; only this one is used",
                    found[0],
                    "spec.hosts",
                )
            )
    for resource in model.resources.of_kind("VirtualService"):
        rules = resource.spec.http
        for j, later in enumerate(rules):
            for i in range(j):
                if _covers(rules[i], later):
                    out.append(
                        _found(
                            "MC0005",
                            f"spec.http[{i}] takes every request this route could match",
                            resource,
                            f"spec.http[{j}]",
                        )
                    )
                    break
    return out


_SELECTING = {
    "Sidecar": ("workloadSelector", "labels"),
    "ServiceEntry": ("workloadSelector", "labels"),
    "DestinationRule": ("workloadSelector", "matchLabels"),
    "PeerAuthentication": ("selector", "matchLabels"),
    "AuthorizationPolicy": ("selector", "matchLabels"),
    "RequestAuthentication": ("selector", "matchLabels"),
    "Telemetry": ("selector", "matchLabels"),
}


def selectors(model: MeshModel) -> list[Finding]:
    """MC0006: selectors that select nothing; MC0013: workloads several Sidecars select; MC0015."""
    out = []
    root = model.settings.root_namespace
    for kind, (field, labels_field) in _SELECTING.items():
        for resource in model.resources.of_kind(kind):
            selector = getattr(resource.spec, field, None)
            labels = getattr(selector, labels_field, None) if selector is not None else None
            if not labels:
                continue
            workloads = [
                w
                for w in model.workloads
                if (resource.namespace in (w.namespace, root)) and labels_match(labels, w.labels)
            ]
            if not workloads:
                wanted = ", ".join(f"{k}={v}" for k, v in labels.items())
                out.append(
                    _found(
                        "MC0006",
                        f"selects no workload of namespace {resource.namespace!r} (labels {wanted})",
                        resource,
                        f"spec.{field}",
                    )
                )
    sidecars = model.resources.of_kind("Sidecar")
    for workload in model.workloads:
        picking = [
            r
            for r in sidecars
            if r.namespace == workload.namespace
            and r.spec.workloadSelector is not None
            and labels_match(r.spec.workloadSelector.labels, workload.labels)
        ]
        if len(picking) > 1:
            out.append(
                _found(
                    "MC0013",
                    f"{', '.join(r.ref for r in picking[1:])} select {workload.namespace}/{workload.name} too; only this one applies",
                    picking[0],
                    "spec.workloadSelector",
                )
            )
        if not model.services_of(workload):
            entry = model.resources.get("WorkloadEntry", workload.namespace, workload.name)
            out.append(_found("MC0015", "no ServiceEntry selects this workload: nothing routes to it", entry))
    return out


def ports(model: MeshModel) -> list[Finding]:
    """MC0007: ports without a protocol; MC0011: inbound ports that forward to themselves; MC0012."""
    out = []
    for resource in model.resources.of_kind("ServiceEntry"):
        for i, port in enumerate(resource.spec.ports):
            service_port = next(
                (
                    p
                    for s in model.services_for(resource.spec.hosts[0])
                    for p in s.ports
                    if p.name == port.name
                ),
                None,
            )
            if not port.protocol and (service_port is None or service_port.effective_protocol == "TCP"):
                out.append(
                    _found(
                        "MC0007",
                        f"port {port.number} ({port.name!r}) has no protocol: it is proxied as TCP; set protocol (HTTP, GRPC, TCP, ...)",
                        resource,
                        f"spec.ports[{i}]",
                    )
                )
    for workload in model.workloads:
        if workload.address not in ("127.0.0.1", "localhost", "::1", ""):
            continue
        sidecar_ingress = any(
            r.spec.ingress
            for r in model.resources.of_kind("Sidecar")
            if r.namespace == workload.namespace
            and (
                r.spec.workloadSelector is None
                or labels_match(r.spec.workloadSelector.labels, workload.labels)
            )
        )
        if model.services_of(workload) and not sidecar_ingress:
            entry = model.resources.get("WorkloadEntry", workload.namespace, workload.name)
            out.append(
                _found(
                    "MC0011",
                    f"address {workload.address or '(none)'} is where the application listens too; give the workload another address, or a Sidecar with ingress listeners and their defaultEndpoint",
                    entry,
                    "spec.address",
                )
            )
    for resource in model.resources.of_kind("Sidecar"):
        for i, egress in enumerate(resource.spec.egress):
            for j, host in enumerate(egress.hosts):
                if not host.startswith("~/") and not any(
                    egress_host_matches(host, s, resource.namespace) for s in model.services
                ):
                    out.append(
                        _found(
                            "MC0012", f"{host!r} imports no service", resource, f"spec.egress[{i}].hosts[{j}]"
                        )
                    )
    return out


@meshcore.hookimpl
def meshcore_mesh_analyzers() -> list[meshcore.MeshAnalyzerType]:
    """Register the built-in analyzers."""
    return [
        meshcore.MeshAnalyzerType(
            name="routes",
            factory=routes,
            codes=("MC0001", "MC0002", "MC0008", "MC0014"),
            description="route destinations that do not exist",
        ),
        meshcore.MeshAnalyzerType(
            name="subsets",
            factory=subsets,
            codes=("MC0003", "MC0009", "MC0010"),
            description="DestinationRules and their subsets",
        ),
        meshcore.MeshAnalyzerType(
            name="conflicts",
            factory=conflicts,
            codes=("MC0004", "MC0005"),
            description="conflicting and shadowed routing rules",
        ),
        meshcore.MeshAnalyzerType(
            name="selectors",
            factory=selectors,
            codes=("MC0006", "MC0013", "MC0015"),
            description="workload selectors",
        ),
        meshcore.MeshAnalyzerType(
            name="ports",
            factory=ports,
            codes=("MC0007", "MC0011", "MC0012"),
            description="ports and listeners",
        ),
    ]
