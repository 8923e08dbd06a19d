"""PeerAuthentication and AuthorizationPolicy translated into sidecar config, without sockets.

With a CA (``MeshSettings.mtls``), inbound listeners get the chains of their port's mode and
outbound clusters to mesh services present the workload certificate and check the
destination's SPIFFE IDs; AuthorizationPolicies become the ``authz`` filter of inbound HTTP
listeners. What the translators cannot enforce is refused, never half applied.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from _mesh import REGISTRY, model_of

from meshcore.config import Listener, Snapshot, snapshot_from_data
from meshcore.control import WORKLOAD_SECRET, MeshSettings, ProxyIdentity, TranslationError, translate
from meshcore.control.resources import load_resources
from meshcore.control.wire import resource_sets, snapshot_data
from meshcore.errors import ConfigError

MTLS = MeshSettings(mtls=True)

MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 9000, name: tcp, protocol: TCP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: shop}
spec:
  hosts: [legacy.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: reviews}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1, namespace: shop}
spec: {address: 10.0.0.2, labels: {app: ratings}, serviceAccount: ratings}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-2, namespace: shop}
spec: {address: 10.0.0.3, labels: {app: ratings}, serviceAccount: ratings-canary}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: legacy-1, namespace: shop}
spec: {address: 10.0.0.4, labels: {app: legacy}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: UNSET}
  portLevelMtls: {9000: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: DISABLE}
"""


def snapshot(workload: str, mesh: str = MESH, settings: MeshSettings = MTLS) -> Snapshot:
    identity = ProxyIdentity(id=f"{workload}-x", workload=workload, namespace="shop")
    return translate(model_of(mesh, settings=settings), identity, REGISTRY).snapshot


def listener(found: Snapshot, name: str) -> Listener:
    return next(listener for listener in found.listeners if listener.name == name)


def test_inbound_chains_follow_each_ports_peer_authentication_mode() -> None:
    reviews = snapshot("reviews-1")
    # Port 80: the namespace's STRICT (the workload's policy says UNSET); 9000: its PERMISSIVE.
    strict = listener(reviews, "inbound_80").filter_chains
    assert [c.tls is not None for c in strict] == [True]
    tls = strict[0].tls
    assert tls is not None
    assert (tls.secret, tls.validation_secret, tls.require_client_certificate) == (
        WORKLOAD_SECRET,
        WORKLOAD_SECRET,
        True,
    )
    permissive = listener(reviews, "inbound_9000").filter_chains
    assert [c.tls is not None for c in permissive] == [True, False]
    assert [c.name for c in permissive] == ["inbound_9000-tls", "inbound_9000-plaintext"]
    legacy = listener(snapshot("legacy-1"), "inbound_80").filter_chains
    assert [c.tls for c in legacy] == [None]


def test_outbound_clusters_present_the_certificate_and_check_the_destinations_identities() -> None:
    clusters = {c.name: c for c in snapshot("reviews-1").clusters}
    ratings = clusters["outbound|80||ratings.shop.svc.cluster.local"].tls
    assert ratings is not None
    assert (ratings.secret, ratings.validation_secret) == (WORKLOAD_SECRET, WORKLOAD_SECRET)
    assert ratings.peer_identities == (
        "spiffe://cluster.local/ns/shop/sa/ratings",
        "spiffe://cluster.local/ns/shop/sa/ratings-canary",
    )
    # Every workload of legacy is DISABLE: plaintext to it (Istio's auto mTLS).
    assert clusters["outbound|80||legacy.shop.svc.cluster.local"].tls is None
    # The cluster is the same object for every proxy that reaches it (built once per model).
    model = model_of(MESH, settings=MTLS)
    one, other = (
        {
            c.name: c
            for c in translate(
                model, ProxyIdentity(id=w, workload=w, namespace="shop"), REGISTRY
            ).snapshot.clusters
        }
        for w in ("reviews-1", "legacy-1")
    )
    name = "outbound|80||ratings.shop.svc.cluster.local"
    assert one[name] is other[name]


def test_the_translated_snapshot_names_the_secret_the_sidecar_adds() -> None:
    found = snapshot("reviews-1")
    assert found.secrets == (), "the key never leaves the sidecar: the control plane sends no secret"
    data = snapshot_data(resource_sets(found))
    with pytest.raises(ConfigError, match="workload"):
        snapshot_from_data(data, REGISTRY)  # what the sidecar would refuse without its certificate


def test_without_a_ca_strict_is_an_error_and_the_rest_is_plaintext() -> None:
    with pytest.raises(
        TranslationError, match="STRICT mTLS on port 80 of shop/reviews-1, but the control plane has no CA"
    ):
        snapshot("reviews-1", settings=MeshSettings())
    legacy = snapshot("legacy-1", settings=MeshSettings())
    assert [c.tls for c in listener(legacy, "inbound_80").filter_chains] == [None]
    assert all(c.tls is None for c in legacy.clusters)


AUTHZ = """\
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-readers, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/ratings]}}]
    to: [{operation: {methods: [GET], paths: [/reviews/*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
"""


def test_authorization_policies_become_the_authz_filter_of_inbound_http_listeners() -> None:
    reviews = snapshot("reviews-1", MESH + AUTHZ)
    chain = listener(reviews, "inbound_80").filter_chains[0].filters[-1].config
    names = [f.name for f in chain.http_filters]
    assert names[-2:] == ["authz", "router"]
    authz = chain.http_filters[-2].config
    assert [(p.name, p.action) for p in authz.policies] == [
        ("shop/reviews-readers", "ALLOW"),
        ("istio-system/no-admin", "DENY"),
    ]
    # ratings is selected by the mesh-wide policy only; a TCP listener has no HTTP filters.
    ratings = listener(snapshot("ratings-1", MESH + AUTHZ), "inbound_80").filter_chains[0].filters[-1].config
    assert [p.name for p in ratings.http_filters[-2].config.policies] == ["istio-system/no-admin"]
    assert listener(reviews, "inbound_9000").filter_chains[0].filters[-1].name == "tcp_proxy"


def test_what_the_authz_filter_cannot_enforce_is_refused_at_the_control_plane(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: ext, namespace: shop}
            spec:
              action: CUSTOM
              provider: {name: opa}
              rules: [{}]
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: by-account, namespace: shop}
            spec:
              rules: [{from: [{source: {serviceAccounts: [shop/ratings]}}]}]
            """
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_resources([tmp_path], REGISTRY)
    assert [p.message for p in caught.value.problems] == [
        "'CUSTOM' is not supported by meshcore yet (supported: ALLOW, AUDIT, DENY)",
        "is not supported by meshcore yet: no translator handles AuthorizationPolicy.provider",
        "is not supported by meshcore yet: no translator handles AuthorizationPolicy.rules.from.source.serviceAccounts",
    ]
