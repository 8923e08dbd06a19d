"""Translators for a sidecar's security: mutual TLS as PeerAuthentication says, AuthorizationPolicy.

They run after the listeners and clusters exist, and only give meaning to what the
security work built (``meshcore.plugins.istio_security``): its PeerAuthentication
precedence and its AuthorizationPolicy → ``authz`` translation, fed with each resource as
the document Istio's manifests write.

``mtls`` (order 600), when the control plane has a CA (``MeshSettings.mtls``):

- each inbound listener gets the filter chains of its port's PeerAuthentication mode:
  STRICT (mTLS only), PERMISSIVE (mTLS and plaintext, told apart by the first byte; also
  where no policy says anything, as in Istio) or DISABLE (plaintext), the mTLS chain
  presenting the workload's certificate and requiring one of the mesh from the client;
- each outbound cluster to a service with workloads (``MESH_INTERNAL``) presents the
  workload's certificate and accepts only the SPIFFE IDs of that service's workloads
  (secure naming), unless every one of its workloads is DISABLE on its port (Istio's auto
  mTLS: then plaintext).

The certificate is the ``workload`` TlsSecret (:data:`meshcore.control.WORKLOAD_SECRET`)
that the sidecar adds itself: its key never leaves it. Without a CA, a PeerAuthentication
that asks for STRICT is a translation error for the workloads it selects (never a policy
silently not enforced); PERMISSIVE and DISABLE are met by plaintext.

``authorization`` (order 650): the AuthorizationPolicies that apply to a workload (its
namespace's and the root namespace's, without a selector or with one that selects it)
become an ``authz`` filter before the router of each inbound HTTP listener.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

import meshcore
from meshcore import TranslatorType
from meshcore.control import (
    WORKLOAD_SECRET,
    ClusterBuild,
    MeshResource,
    TlsContext,
    TranslationContext,
    UpstreamTls,
    Workload,
)
from meshcore.plugins.istio_security import (
    OPERATION_FIELDS,
    SOURCE_FIELDS,
    UnsupportedError,
    authz_config,
    peer_authentication_mode,
)

MTLS = TlsContext(secret=WORKLOAD_SECRET, validation_secret=WORKLOAD_SECRET, require_client_certificate=True)
"""The mTLS of an inbound chain: the workload's certificate, a client certificate of the mesh required."""


def _plain(value: Any) -> Any:
    """A structured spec as the plain data of its document (fields at their default left out)."""
    if attrs.has(type(value)):
        if hasattr(value, "by_port"):  # PeerAuthentication's portLevelMtls: port numbers as keys
            return {port: _plain(item) for port, item in value.by_port.items()}
        out = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if item is None or item == () or (isinstance(item, Mapping) and not item):
                continue
            if field.default is not attrs.NOTHING and item == field.default:
                continue
            out[field.metadata.get("key", field.name)] = _plain(item)
        return out
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def document(resource: MeshResource) -> dict[str, Any]:
    """``resource`` as the document Istio's manifests write (what ``istio_security`` reads)."""
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": resource.name, "namespace": resource.namespace},
        "spec": _plain(resource.spec),
    }


def _documents(context: TranslationContext, kind: str) -> list[dict[str, Any]]:
    cache = context.model.memo
    key = ("istio_security.documents", kind)
    found = cache.get(key)
    if found is None:
        found = cache[key] = [document(r) for r in context.model.resources.of_kind(kind)]
    return list(found)


def _mode(context: TranslationContext, workload: Workload, port: int) -> str:
    return str(
        peer_authentication_mode(
            _documents(context, "PeerAuthentication"),
            namespace=workload.namespace,
            labels=workload.labels,
            port=port,
            root_namespace=context.model.settings.root_namespace,
        )
    )


def _peer_identities(context: TranslationContext, build: ClusterBuild) -> tuple[str, ...] | None:
    """The SPIFFE IDs of the workloads behind an outbound cluster; None when it is not mTLS."""
    if build.service is None or build.service.location != "MESH_INTERNAL" or build.port is None:
        return None
    trust_domain = context.model.settings.trust_domain
    identities = set()
    for endpoint in context.model.endpoints_of(build.service):
        namespace, _, name = endpoint.workload.partition("/")
        workload = context.model.workload(namespace, name) if name else None
        if workload is None:
            continue
        if _mode(context, workload, endpoint.port_for(build.port)) == "DISABLE":
            continue
        identities.add(f"spiffe://{trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}")
    return tuple(sorted(identities)) or None


def mtls(context: TranslationContext) -> None:
    """Inbound chains by PeerAuthentication mode; outbound clusters with the workload's certificate."""
    workload = context.workload
    if not context.model.settings.mtls:
        if workload is None:
            return
        for listener in context.snapshot.listeners.values():
            if (
                listener.direction == "inbound"
                and _mode(context, workload, listener.address.port) == "STRICT"
            ):
                msg = (
                    f"PeerAuthentication asks for STRICT mTLS on port {listener.address.port} of "
                    f"{workload.namespace}/{workload.name}, but the control plane has no CA (its ca: section)"
                )
                raise UnsupportedError(msg)
        return
    if workload is not None:
        for listener in context.snapshot.listeners.values():
            if listener.direction != "inbound":
                continue
            mode = _mode(context, workload, listener.address.port)
            listener.tls_chains = {"STRICT": (MTLS,), "PERMISSIVE": (MTLS, None), "DISABLE": (None,)}[mode]
    memo = context.model.memo
    for build in context.snapshot.clusters.values():
        if build.direction != "outbound":
            continue
        key = ("istio_security.mtls_cluster", id(build.cluster))
        found = memo.get(key)
        if found is None or found[0] is not build.cluster:
            identities = _peer_identities(context, build)
            cluster = build.cluster
            if identities is not None:
                tls = UpstreamTls(
                    secret=WORKLOAD_SECRET, validation_secret=WORKLOAD_SECRET, peer_identities=identities
                )
                cluster = attrs.evolve(cluster, tls=tls)
            found = memo[key] = (build.cluster, cluster)  # the same for every proxy: shared
        build.cluster = found[1]


def _selected(resource: MeshResource, workload: Workload, root_namespace: str) -> bool:
    selector = resource.spec.selector
    labels = selector.matchLabels if selector is not None else {}
    if resource.namespace not in (workload.namespace, root_namespace):
        return False
    return all(workload.labels.get(k) == v for k, v in labels.items())


def authorization(context: TranslationContext) -> None:
    """An ``authz`` filter on each inbound HTTP listener, enforcing the policies that select the workload."""
    workload = context.workload
    if workload is None:
        return
    root = context.model.settings.root_namespace
    docs = [
        document(r)
        for r in context.model.resources.of_kind("AuthorizationPolicy")
        if _selected(r, workload, root)
    ]
    if not docs:
        return
    config = context.plugin_config("http_filter", "authz", authz_config(docs))
    for listener in context.snapshot.listeners.values():
        if listener.direction == "inbound" and listener.route_config is not None:
            listener.ensure_http_filter("authz", config)


@meshcore.hookimpl
def meshcore_mesh_translators() -> list[TranslatorType]:
    """Register ``mtls`` and ``authorization``."""
    return [
        TranslatorType(
            name="mtls",
            factory=mtls,
            order=600,
            description="mutual TLS between sidecars: inbound chains by PeerAuthentication mode, secure naming",
            handles=(
                "PeerAuthentication.selector",
                "PeerAuthentication.mtls",
                "PeerAuthentication.portLevelMtls",
            ),
        ),
        TranslatorType(
            name="authorization",
            factory=authorization,
            order=650,
            description="AuthorizationPolicy as the authz filter of inbound HTTP listeners",
            handles=(
                "AuthorizationPolicy.selector",
                "AuthorizationPolicy.action=ALLOW|DENY|AUDIT",
                "AuthorizationPolicy.rules.when",
                *(f"AuthorizationPolicy.rules.from.source.{f}" for f in SOURCE_FIELDS),
                *(f"AuthorizationPolicy.rules.to.operation.{f}" for f in OPERATION_FIELDS),
            ),
        ),
    ]
