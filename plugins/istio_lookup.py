"""Which Istio resources apply to a proxy and a service, as Istio decides it.

- a Sidecar: the one of the proxy's namespace whose workloadSelector picks the proxy,
  else its namespace's Sidecar without selector, else the root namespace's;
- a DestinationRule for a host: the proxy's namespace's, then the service's namespace's,
  then the root namespace's; an exact host before a wildcard;
- the VirtualServices for a host: those whose hosts cover it, that apply to sidecars
  (``gateways`` empty or ``mesh``) and that are exported to the proxy's namespace, the
  proxy's namespace's first, then by namespace and name.

Short host names in VirtualServices and DestinationRules are read relative to the
resource's namespace (``reviews`` is ``reviews.<namespace>.svc.cluster.local``).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshcore.control import MeshModel, MeshResource, Service, fqdn, labels_match


def host_matches(pattern: str, host: str) -> bool:
    """Whether host ``pattern`` (``*``, ``*.example.com`` or a name) covers ``host``."""
    if pattern in ("*", host):
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def exported_to(export_to: tuple[str, ...], owner_namespace: str, namespace: str) -> bool:
    """Whether a resource of ``owner_namespace`` with ``exportTo`` is visible in ``namespace``."""
    if not export_to:
        return True
    return any(
        item in ("*", namespace) or (item == "." and namespace == owner_namespace) for item in export_to
    )


def sidecar_for(model: MeshModel, namespace: str, labels: Mapping[str, str]) -> MeshResource | None:
    """The Sidecar resource that applies to a proxy of ``namespace`` with ``labels``."""
    sidecars = sorted(model.resources.of_kind("Sidecar"), key=lambda r: r.name)
    for resource in sidecars:
        selector = resource.spec.workloadSelector
        if resource.namespace == namespace and selector is not None and labels_match(selector.labels, labels):
            return resource
    for ns in (namespace, model.settings.root_namespace):
        for resource in sidecars:
            if resource.namespace == ns and resource.spec.workloadSelector is None:
                return resource
    return None


def destination_rule_for(
    model: MeshModel, service: Service, namespace: str, labels: Mapping[str, str]
) -> MeshResource | None:
    """The DestinationRule that applies to ``service`` for a proxy of ``namespace`` with ``labels``.

    The same for every proxy of the namespace (of those labels, if some rule selects
    workloads): found once per model.
    """
    selective = model.memo.get("istio_lookup.selective_rules")
    if selective is None:
        selective = model.memo["istio_lookup.selective_rules"] = any(
            r.spec.workloadSelector is not None for r in model.resources.of_kind("DestinationRule")
        )
    key = (
        "istio_lookup.destination_rule",
        service.key,
        namespace,
        tuple(sorted(labels.items())) if selective else None,
    )
    if key not in model.memo:
        model.memo[key] = _destination_rule_for(model, service, namespace, labels)
    found: MeshResource | None = model.memo[key]
    return found


def _destination_rule_for(
    model: MeshModel, service: Service, namespace: str, labels: Mapping[str, str]
) -> MeshResource | None:
    candidates = []
    for resource in model.resources.of_kind("DestinationRule"):
        spec = resource.spec
        host = fqdn(spec.host, resource.namespace, model.settings.domain_suffix)
        if not host_matches(host, service.host):
            continue
        if not exported_to(spec.exportTo, resource.namespace, namespace):
            continue
        if spec.workloadSelector is not None and not (
            resource.namespace == namespace and labels_match(spec.workloadSelector.matchLabels, labels)
        ):
            continue
        candidates.append((host, resource))
    for ns in (namespace, service.namespace, model.settings.root_namespace):
        found = sorted(
            ((host, r) for host, r in candidates if r.namespace == ns),
            key=lambda item: (
                item[0] != service.host,
                item[1].spec.workloadSelector is None,
                -len(item[0]),
                item[1].name,
            ),
        )
        if found:
            return found[0][1]
    return None


def virtual_services_for(model: MeshModel, service: Service, namespace: str) -> list[MeshResource]:
    """The VirtualServices that route ``service`` for proxies of ``namespace``, the one that wins first.

    The most specific host wins (exact before wildcard, longer wildcard first), then the
    proxy's own namespace, then namespace and name. Found once per model.
    """
    key = ("istio_lookup.virtual_services", service.key, namespace)
    cached = model.memo.get(key)
    if cached is None:
        cached = model.memo[key] = tuple(_virtual_services_for(model, service, namespace))
    return list(cached)


def _virtual_services_for(model: MeshModel, service: Service, namespace: str) -> list[MeshResource]:
    found = []
    for resource in model.resources.of_kind("VirtualService"):
        spec = resource.spec
        if spec.gateways and "mesh" not in spec.gateways:
            continue
        if not exported_to(spec.exportTo, resource.namespace, namespace):
            continue
        hosts = [fqdn(h, resource.namespace, model.settings.domain_suffix) for h in spec.hosts]
        best = [h for h in hosts if host_matches(h, service.host)]
        if best:
            specific = max(best, key=lambda h: (h == service.host, len(h)))
            found.append(
                (
                    (
                        specific != service.host,
                        -len(specific),
                        resource.namespace != namespace,
                        resource.namespace,
                        resource.name,
                    ),
                    resource,
                )
            )
    return [resource for _, resource in sorted(found, key=lambda item: item[0])]
