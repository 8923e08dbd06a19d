"""Translation: the mesh model and one proxy's identity in, that proxy's Snapshot out.

Pure: no sockets. Requests are routed through the translated route tables with the
proxy's own route matcher, so what is checked is what a sidecar would do.
"""

from __future__ import annotations

import collections
import types

import attrs
import pytest
from _mesh import REGISTRY, model_of, route, translated

import meshcore
from meshcore.config import snapshot_from_data
from meshcore.control import Translation, TranslationContext, TranslationError, translate
from meshcore.control.wire import resource_sets, snapshot_data

BASE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 9000, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: frontend}
spec:
  hosts: [frontend.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: frontend}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v1}
spec: {address: 10.0.0.1, ports: {http: 8081}, labels: {app: backend, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v2}
spec: {address: 10.0.0.2, ports: {http: 8082}, labels: {app: backend, version: v2}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: frontend}
spec: {address: 10.0.0.9, labels: {app: frontend, tier: web}, serviceAccount: web}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""


def mesh(extra: str = "") -> str:
    return BASE + ("---\n" + extra if extra else "")


def clusters(translation: Translation) -> dict[str, meshcore.Cluster]:
    return {c.name: c for c in translation.snapshot.clusters}


def test_the_node_says_who_the_proxy_is() -> None:
    node = translated(model_of(mesh()), "frontend").snapshot.node
    assert node == meshcore.NodeInfo(
        id="frontend-1",
        workload="frontend",
        namespace="default",
        service_account="web",
        labels={"app": "frontend", "tier": "web"},
        services=("frontend.default.svc.cluster.local",),
        trust_domain="cluster.local",
    )
    assert node.spiffe_id == "spiffe://cluster.local/ns/default/sa/web"


def test_clusters_per_port_and_subset_with_the_endpoints_of_each() -> None:
    found = clusters(translated(model_of(mesh()), "frontend"))
    whole = found["outbound|80||backend.default.svc.cluster.local"]
    assert [(str(e.address), e.weight) for e in whole.endpoints] == [
        ("10.0.0.1:8081", 1),
        ("10.0.0.2:8082", 3),
    ]
    assert whole.lb_policy.name == "least_request"
    v1 = found["outbound|80|v1|backend.default.svc.cluster.local"]
    assert [str(e.address) for e in v1.endpoints] == ["10.0.0.1:8081"]
    v2 = found["outbound|80|v2|backend.default.svc.cluster.local"]
    assert [str(e.address) for e in v2.endpoints] == ["10.0.0.2:8082"]
    assert v2.lb_policy.name == "round_robin", "a subset's policy overrides the rule's"
    grpc = found["outbound|9000||backend.default.svc.cluster.local"]
    assert grpc.protocol == "http2"
    assert [str(e.address) for e in grpc.endpoints] == ["10.0.0.1:9000", "10.0.0.2:9000"]


def test_without_a_virtual_service_every_name_of_a_service_reaches_it() -> None:
    t = translated(model_of(mesh()), "frontend")
    for authority in (
        "backend",
        "backend:80",
        "backend.default",
        "backend.default.svc.cluster.local",
        "BACKEND.default.svc:80",
    ):
        assert route(t, authority).cluster == "outbound|80||backend.default.svc.cluster.local", authority
    assert route(t, "backend:9000").cluster == "outbound|9000||backend.default.svc.cluster.local"
    assert route(t, "unknown.example.com").route is None
    http_proxy = t.snapshot.listeners[-1]
    assert (http_proxy.name, str(http_proxy.address)) == ("outbound_http_proxy", "127.0.0.1:15001")


def test_short_names_are_only_for_the_proxys_own_namespace() -> None:
    t = translated(model_of(mesh()), "", namespace="other")
    assert route(t, "backend.default").cluster == "outbound|80||backend.default.svc.cluster.local"
    assert route(t, "backend").route is None


def test_weighted_routing_follows_the_weights() -> None:
    t = translated(
        model_of(
            mesh(
                """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http:
  - route:
    - {destination: {host: backend, subset: v1}, weight: 75}
    - {destination: {host: backend, subset: v2}, weight: 25}
"""
            )
        ),
        "frontend",
    )
    picked = collections.Counter(route(t, "backend", seed=seed).cluster for seed in range(400))
    assert set(picked) == {
        "outbound|80|v1|backend.default.svc.cluster.local",
        "outbound|80|v2|backend.default.svc.cluster.local",
    }
    assert 250 < picked["outbound|80|v1|backend.default.svc.cluster.local"] < 350


VS_RULES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend.default.svc.cluster.local]
  http:
  - name: canary
    match:
    - headers: {x-canary: {exact: "yes"}}
    - queryParams: {canary: {exact: "1"}}
    route: [{destination: {host: backend, subset: v2}}]
  - name: api
    match:
    - uri: {prefix: /api/}
      method: {exact: POST}
      ignoreUriCase: true
    rewrite: {uri: /v2/, authority: api.internal}
    timeout: 2.5s
    headers:
      request: {set: {x-route: api}, add: {x-added: "1"}, remove: [x-drop]}
      response: {set: {x-served-by: mesh}}
    route: [{destination: {host: backend, subset: v1, port: {number: 80}}}]
  - name: regex
    match: [{uri: {regex: "/items/[0-9]+"}}]
    rewrite: {uriRegexRewrite: {match: "^/items/([0-9]+)$", rewrite: '/item?id=\\1'}}
    route: [{destination: {host: backend}}]
  - name: not-beta
    match:
    - uri: {exact: /feature}
      withoutHeaders: {x-beta: {exact: "on"}}
    route: [{destination: {host: backend, subset: v1}}]
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: example.com, redirectCode: 302}
  - name: teapot
    match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: slow
    match: [{uri: {prefix: /slow}}]
    fault:
      delay: {fixedDelay: 50ms, percentage: {value: 100}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}
    route: [{destination: {host: backend, subset: v1}}]
  - name: for-web-only
    match: [{uri: {prefix: /web}, sourceLabels: {tier: web}}]
    route: [{destination: {host: backend, subset: v2}}]
  - route: [{destination: {host: backend, subset: v1}}]
"""


@pytest.fixture(scope="module")
def rules() -> Translation:
    found: Translation = translated(model_of(mesh(VS_RULES)), "frontend")
    return found


V1 = "outbound|80|v1|backend.default.svc.cluster.local"
V2 = "outbound|80|v2|backend.default.svc.cluster.local"
ALL = "outbound|80||backend.default.svc.cluster.local"


def test_matches_in_order_each_istio_match_its_own_route(rules: Translation) -> None:
    assert route(rules, "backend", headers={"x-canary": "yes"}).cluster == V2
    assert route(rules, "backend", "/x?canary=1").cluster == V2
    assert route(rules, "backend", "/x?canary=2").cluster == V1
    assert route(rules, "backend", "/API/orders", method="POST").route == "api"
    assert (
        route(rules, "backend", "/api/orders", method="GET").route is None
        or route(rules, "backend", "/api/orders").cluster == V1
    )


def test_rewrites_timeouts_and_header_edits(rules: Translation) -> None:
    sent = route(
        rules, "backend", "/api/orders?x=1", method="POST", headers={"x-route": "old", "x-drop": "1"}
    )
    assert (sent.route, sent.cluster, sent.path, sent.authority) == (
        "api",
        V1,
        "/v2/orders?x=1",
        "api.internal",
    )
    assert sent.headers == {"x-route": "api", "x-added": "1"}
    assert sent.config.timeout == 2.5
    assert sent.config.response_headers_to_add == {"x-served-by": "mesh"}
    assert sent.config.response_headers_to_remove == ("x-served-by",)
    regex = route(rules, "backend", "/items/42")
    assert (regex.cluster, regex.path) == (ALL, "/item?id=42")
    assert route(rules, "backend", "/").config.timeout == 0, "Istio's default: no timeout"


def test_without_headers_matches_absent_or_different(rules: Translation) -> None:
    assert route(rules, "backend", "/feature").route == "not-beta"
    assert route(rules, "backend", "/feature", headers={"x-beta": "off"}).route == "not-beta/1"
    assert route(rules, "backend", "/feature", headers={"x-beta": "on"}).route != "not-beta"


def test_redirects_direct_responses_and_faults(rules: Translation) -> None:
    redirect = route(rules, "backend", "/old/page").config.redirect
    assert (redirect.path, redirect.host, redirect.status) == ("/new", "example.com", 302)
    direct = route(rules, "backend", "/teapot").config.direct_response
    assert (direct.status, direct.body) == (418, "short and stout")
    fault = route(rules, "backend", "/slow/x").config.filters.by_filter["fault"]
    assert (fault.delay.fixed, fault.delay.percentage) == (0.05, 100.0)
    assert (fault.abort.grpc_status, fault.abort.percentage) == (14, 10.0)
    listener = next(li for li in rules.snapshot.listeners if li.name == "outbound_http_proxy")
    assert [f.name for f in listener.filter_chains[0].filters[0].config.http_filters] == ["fault", "router"]


def test_source_labels_are_the_proxys_own(rules: Translation) -> None:
    assert route(rules, "backend", "/web").cluster == V2
    other = translated(model_of(mesh(VS_RULES)), "backend-v1")
    assert route(other, "backend", "/web").cluster == V1


def test_an_unknown_destination_answers_503_and_says_why() -> None:
    t = translated(
        model_of(
            mesh(
                """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend]
  http: [{route: [{destination: {host: backend, subset: v9}}]}]
"""
            )
        ),
        "frontend",
    )
    assert route(t, "backend").config.direct_response.status == 503
    assert t.problems == (
        (
            "VirtualService default/backend: spec.http[0].route[0].destination: subset 'v9' of "
            "'backend.default.svc.cluster.local' is not defined (defined: v1, v2)"
        ),
    )


SIDECARS = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: frontend}
spec:
  workloadSelector: {labels: {app: frontend}}
  ingress:
  - port: {number: 18080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    defaultEndpoint: 127.0.0.1:8080
  egress:
  - hosts: ["./backend.default.svc.cluster.local"]
  - port: {number: 9090, protocol: HTTP}
    hosts: ["./backend.default.svc.cluster.local"]
  - port: {number: 9000, protocol: TCP}
    hosts: ["./backend.default.svc.cluster.local"]
"""


def test_a_sidecar_ingress_listener_forwards_to_the_application() -> None:
    t = translated(model_of(mesh(SIDECARS)), "frontend")
    listener = next(li for li in t.snapshot.listeners if li.name == "inbound_18080")
    assert str(listener.address) == "127.0.0.1:18080"
    assert [str(e.address) for e in clusters(t)["inbound|18080||"].endpoints] == ["127.0.0.1:8080"]
    assert route(t, "anything", table="inbound|18080").cluster == "inbound|18080||"


def test_sidecar_egress_hosts_scope_what_the_proxy_gets() -> None:
    t = translated(model_of(mesh(SIDECARS)), "frontend")
    assert not [c for c in clusters(t) if "frontend" in c]
    assert route(t, "frontend").route is None
    assert route(t, "backend").cluster == ALL


def test_local_ports_reach_one_service_whatever_the_host() -> None:
    t = translated(model_of(mesh(SIDECARS)), "frontend")
    http = next(li for li in t.snapshot.listeners if li.name == "egress_9090")
    assert str(http.address) == "127.0.0.1:9090"
    assert route(t, "localhost:9090", table="egress|9090").cluster == ALL
    tcp = next(li for li in t.snapshot.listeners if li.name == "egress_9000")
    assert tcp.filter_chains[0].filters[0].name == "tcp_proxy"
    assert (
        tcp.filter_chains[0].filters[0].config.cluster == "outbound|9000||backend.default.svc.cluster.local"
    )


def test_default_inbound_listens_on_the_workload_address() -> None:
    t = translated(model_of(mesh()), "backend-v1")
    inbound = {li.name: str(li.address) for li in t.snapshot.listeners if li.name.startswith("inbound")}
    assert inbound == {"inbound_8081": "10.0.0.1:8081", "inbound_9000": "10.0.0.1:9000"}
    assert [str(e.address) for e in clusters(t)["inbound|8081||"].endpoints] == ["127.0.0.1:8081"]
    assert clusters(t)["inbound|9000||"].protocol == "http2"


def test_an_inbound_port_that_would_forward_to_itself_is_left_out_and_said() -> None:
    text = mesh().replace("address: 10.0.0.1", "address: 127.0.0.1")
    t = translated(model_of(text), "backend-v1")
    assert not [li for li in t.snapshot.listeners if li.name.startswith("inbound")]
    assert t.problems[0].startswith(
        "WorkloadEntry default/backend-v1: inbound port 8081 of backend.default.svc.cluster.local would forward to itself"
    )


def test_a_proxy_whose_workload_is_unknown_gets_outbound_only() -> None:
    t = translated(model_of(mesh()), "nobody")
    assert t.problems == ("no WorkloadEntry default/nobody: no inbound listeners, no labels",)
    assert [li.name for li in t.snapshot.listeners] == ["outbound_http_proxy"]


def test_export_to_hides_a_service_from_other_namespaces() -> None:
    text = mesh().replace(
        "  workloadSelector: {labels: {app: backend}}",
        "  workloadSelector: {labels: {app: backend}}\n  exportTo: ['.']",
        1,
    )
    model = model_of(text)
    assert route(translated(model, "", namespace="other"), "backend.default").route is None
    assert route(translated(model, "frontend"), "backend").cluster == ALL


def test_no_http_proxy_listener_when_the_proxy_asks_for_none() -> None:
    t = translated(model_of(mesh()), "frontend", http_proxy="")
    assert [li.name for li in t.snapshot.listeners] == ["inbound_80"]


def test_the_snapshot_travels_as_data_and_validates_at_the_proxy() -> None:
    t = translated(model_of(mesh(VS_RULES + "---\n" + SIDECARS)), "frontend")
    sets = resource_sets(t.snapshot)
    again = snapshot_from_data(snapshot_data(sets), REGISTRY)
    assert resource_sets(again) == sets
    assert again.node == t.snapshot.node


def test_a_third_party_translator_adds_its_filter_to_every_sidecar_of_a_namespace() -> None:
    def add_ratelimit(context: TranslationContext) -> None:
        if context.namespace != "default":
            return
        for listener in context.snapshot.listeners.values():
            if listener.route_config is not None and listener.direction == "inbound":
                listener.ensure_http_filter("local_ratelimit", {"tokens_per_second": 5, "burst": 10})

    plugin = types.ModuleType("ratelimit_everywhere")
    plugin.meshcore_mesh_translators = meshcore.hookimpl(  # type: ignore[attr-defined]
        lambda: [meshcore.TranslatorType(name="ratelimit_everywhere", factory=add_ratelimit, order=900)]
    )
    registry = meshcore.build_registry(autoload=False, plugins=[("ratelimit", plugin)])
    from meshcore.control import ProxyIdentity  # noqa: PLC0415

    model = model_of(mesh(), registry)
    snapshot = translate(model, ProxyIdentity(id="b", workload="backend-v1"), registry).snapshot
    inbound = next(li for li in snapshot.listeners if li.name == "inbound_8081")
    names = [f.name for f in inbound.filter_chains[0].filters[0].config.http_filters]
    assert names == ["local_ratelimit", "router"]
    # Plain data in, the sidecar's structurer checks the filter's config.
    sets = resource_sets(snapshot)
    assert sets["listeners"]["inbound_8081"]["filter_chains"][0]["filters"][0]["http_connection_manager"][
        "http_filters"
    ][0] == {"local_ratelimit": {"tokens_per_second": 5, "burst": 10}}


def test_a_failing_translator_fails_that_proxys_translation_only() -> None:
    def broken(context: TranslationContext) -> None:
        if context.proxy.workload == "frontend":
            msg = "boom"
            raise RuntimeError(msg)

    plugin = types.ModuleType("broken_translator")
    plugin.meshcore_mesh_translators = meshcore.hookimpl(  # type: ignore[attr-defined]
        lambda: [meshcore.TranslatorType(name="broken", factory=broken)]
    )
    registry = meshcore.build_registry(autoload=False, plugins=[("broken", plugin)])
    from meshcore.control import ProxyIdentity  # noqa: PLC0415

    model = model_of(mesh(), registry)
    with pytest.raises(TranslationError, match="translator 'broken' failed: RuntimeError: boom"):
        translate(model, ProxyIdentity(id="f", workload="frontend"), registry)
    assert translate(model, ProxyIdentity(id="b", workload="backend-v1"), registry).snapshot.listeners


def test_translation_is_pure_and_repeatable() -> None:
    model = model_of(mesh(VS_RULES + "---\n" + SIDECARS))
    first, second = translated(model, "frontend"), translated(model, "frontend")
    assert first == second
    assert attrs.evolve(first.snapshot, node=None) == attrs.evolve(second.snapshot, node=None)
