"""Mesh resources: Istio's kinds and field names, checked like the proxy config.

Every problem names the file, the line, the resource, the field path and the reason; a
field Istio defines but no plugin handles is refused as not supported yet; a kind or a
field's meaning can be added by a third-party plugin through the same hooks.
"""

from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import meshcore
from meshcore.control import Claims, TranslationContext, load_resources
from meshcore.errors import ConfigError
from meshcore.registry import Registry, build_registry

MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: bookinfo
  labels: {team: books}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  resolution: STATIC
  workloadSelector:
    labels: {app: reviews}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: bookinfo}
spec:
  address: 10.0.0.1
  labels: {app: reviews, version: v1}
  serviceAccount: bookinfo-reviews
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /reviews}
      ignoreUriCase: true
    fault:
      delay:
        fixedDelay: 7s
        percentage: {value: 100}
    route:
    - destination: {host: reviews, subset: v1}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 100
    timeout: 10s
    rewrite: {uri: /v1/reviews}
    headers:
      request:
        set: {x-version: v1}
"""


def write(tmp_path: Path, text: str, name: str = "mesh.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, registry: Registry | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_resources([path], registry or build_registry(autoload=False))
    return [str(p).replace(f"{path}", "mesh.yaml") for p in caught.value.problems]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry(autoload=False)


def test_istio_manifests_load_as_istio_writes_them(tmp_path: Path, registry: Registry) -> None:
    resources = load_resources([write(tmp_path, MESH)], registry)
    assert [r.ref for r in resources] == [
        "ServiceEntry bookinfo/reviews",
        "WorkloadEntry bookinfo/reviews-v1",
        "DestinationRule bookinfo/reviews",
        "VirtualService bookinfo/reviews",
    ]
    vs = resources.get("VirtualService", "bookinfo", "reviews")
    assert vs is not None
    assert vs.spec.http[0].match[0].headers["end-user"].exact == "jason"
    assert vs.spec.http[0].fault.delay.fixedDelay == 7
    assert vs.spec.http[1].headers.request.set == {"x-version": "v1"}
    assert vs.line == 35
    assert resources.get("ServiceEntry", "bookinfo", "reviews").metadata.labels == {"team": "books"}  # type: ignore[union-attr]
    assert len(resources.version) == 12


def test_a_folder_is_read_recursively_and_json_may_hold_a_list(tmp_path: Path, registry: Registry) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    write(tmp_path / "sub", MESH, "a.yml")
    write(tmp_path / ".hidden", "not: [a, mesh", "broken.yaml")
    docs = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": f"w{i}"},
            "spec": {"address": "10.0.0.9"},
        }
        for i in range(2)
    ]
    (tmp_path / "more.json").write_text(json.dumps(docs))
    resources = load_resources([tmp_path], registry)
    assert len(resources) == 6
    assert [r.name for r in resources.of_kind("WorkloadEntry")] == ["w0", "w1", "reviews-v1"]


def test_every_problem_names_file_line_resource_and_field(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews}
              wieght: 10
            timout: 2s
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          subsets: [{name: v1}, {name: v1}]
        """,
    )
    assert found == [
        "mesh.yaml:9: VirtualService default/reviews: spec.http[0].route[0].wieght: unknown field; did you mean 'weight'?",
        "mesh.yaml:10: VirtualService default/reviews: spec.http[0].timout: unknown field; did you mean 'timeout'?",
        "mesh.yaml:17: DestinationRule default/reviews: spec.subsets: repeat the subset name 'v1'",
    ]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualServce\nmetadata: {name: x}\n",
            "mesh.yaml:2: kind: unknown kind 'VirtualServce'; did you mean 'VirtualService'?",
        ),
        (
            "apiVersion: networking.istio.io/v2\nkind: Sidecar\nmetadata: {name: x}\n",
            (
                "mesh.yaml:1: apiVersion: Sidecar takes apiVersion networking.istio.io/v1, "
                "networking.istio.io/v1beta1, networking.istio.io/v1alpha3, got 'networking.istio.io/v2'"
            ),
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: Bad_Name}\n",
            "mesh.yaml:3: metadata.name: must be a lower-case DNS name (a-z, 0-9, '-', '.'), got 'Bad_Name'",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\nstatus: {}\n",
            "mesh.yaml:4: Sidecar default/x: status: unknown field; known fields: apiVersion, kind, metadata, spec",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [a.b]\n  export_to: ['.']\n",
            "mesh.yaml:6: ServiceEntry default/x: spec.export_to: unknown field; did you mean 'exportTo'?",
        ),
        (
            "- just\n- a list\n",
            "mesh.yaml:1: a mesh resource must be a mapping with apiVersion, kind, metadata, spec",
        ),
        ("a: [1, 2\n", "mesh.yaml:2: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_document_problems(tmp_path: Path, document: str, expected: str) -> None:
    assert problems(tmp_path, document)[0].startswith(expected)


def test_a_resource_defined_twice_is_refused(tmp_path: Path) -> None:
    doc = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: 10.0.0.1}\n"
    found = problems(tmp_path, doc + "---\n" + doc)
    assert found == ["mesh.yaml:6: WorkloadEntry default/w: metadata.name: is already defined at mesh.yaml:1"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "kind: VirtualService\nspec:\n  hosts: [r]\n  http:\n  - route: [{destination: {host: r}}]\n    retries: {attempts: 3, retryRemoteLocalities: true}\n",
            (
                "mesh.yaml:8: VirtualService default/x: spec.http[0].retries.retryRemoteLocalities: True is not "
                "supported by meshcore yet (supported: False)"
            ),
        ),
        (
            "kind: VirtualService\nspec:\n  hosts: [r]\n  http:\n  - route: [{destination: {host: r}}]\n    retries: {attempts: 3, retryOn: '5xx,envoy-ratelimited'}\n",
            (
                "mesh.yaml:8: VirtualService default/x: spec.http[0].retries.retryOn: retry condition "
                "'envoy-ratelimited' is not supported by meshcore yet"
            ),
        ),
        (
            "kind: DestinationRule\nspec:\n  host: r\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, outlierDetectionHttpErrorCodes: [500]}\n",
            (
                "mesh.yaml:7: DestinationRule default/x: spec.trafficPolicy.outlierDetection."
                "outlierDetectionHttpErrorCodes: is not supported by meshcore yet: no translator handles "
                "DestinationRule.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes"
            ),
        ),
        (
            "kind: DestinationRule\nspec:\n  host: r\n  subsets:\n  - name: v1\n    trafficPolicy:\n      connectionPool: {http: {maxRequestsPerConnection: 10}}\n",
            (
                "mesh.yaml:9: DestinationRule default/x: spec.subsets[0].trafficPolicy.connectionPool.http."
                "maxRequestsPerConnection: 10 is not supported by meshcore yet (supported: 1)"
            ),
        ),
        (
            "kind: DestinationRule\nspec:\n  host: r\n  trafficPolicy:\n    loadBalancer: {simple: PASSTHROUGH}\n",
            (
                "mesh.yaml:7: DestinationRule default/x: spec.trafficPolicy.loadBalancer.simple: 'PASSTHROUGH' is not "
                "supported by meshcore yet (supported: LEAST_CONN, LEAST_REQUEST, RANDOM, ROUND_ROBIN, UNSPECIFIED)"
            ),
        ),
        (
            "kind: Sidecar\nspec:\n  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
            (
                "mesh.yaml:5: Sidecar default/x: spec.outboundTrafficPolicy.mode: 'ALLOW_ANY' is not supported by "
                "meshcore yet (supported: REGISTRY_ONLY)"
            ),
        ),
        (
            "kind: VirtualService\nspec:\n  hosts: [r]\n  gateways: [mesh, istio-system/ingress]\n  http:\n  - route: [{destination: {host: r}}]\n",
            (
                "mesh.yaml:6: VirtualService default/x: spec.gateways[1]: 'istio-system/ingress' is not supported by "
                "meshcore yet (supported: mesh)"
            ),
        ),
        (
            "kind: ServiceEntry\nspec:\n  hosts: [a.example.com]\n  addresses: [10.1.0.0/16]\n  resolution: DNS\n",
            (
                "mesh.yaml:6: ServiceEntry default/x: spec.addresses: is not supported by meshcore yet: "
                "no translator handles ServiceEntry.addresses"
            ),
        ),
    ],
)
def test_real_istio_fields_meshcore_does_not_support_yet_are_refused(
    tmp_path: Path, spec: str, expected: str
) -> None:
    api = "security.istio.io/v1" if "Authorization" in spec else "networking.istio.io/v1"
    assert problems(tmp_path, f"apiVersion: {api}\nmetadata: {{name: x}}\n{spec}") == [expected]


def test_a_kind_no_translator_handles_is_refused_whole(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: jwt, namespace: prod}
        spec: {}
        """,
    )
    assert found == [
        (
            "mesh.yaml:1: RequestAuthentication prod/jwt: RequestAuthentication resources are not supported by "
            "meshcore yet: no translator handles RequestAuthentication"
        )
    ]


def test_security_and_telemetry_kinds_are_structured_with_istio_fields(tmp_path: Path) -> None:
    # Their translation comes with the security and observability work; the fields are checked already.
    found = problems(
        tmp_path,
        """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: strict}
        spec:
          mtls: {mode: STRICK}
          portLevelMtls:
            8080: {mode: DISABLE}
            http: {mode: DISABLE}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow}
        spec:
          action: ALLOW
          rules:
          - from: [{source: {principal: [a]}}]
        ---
        apiVersion: telemetry.istio.io/v1
        kind: Telemetry
        metadata: {name: t}
        spec:
          tracing: [{randomSamplingPercentage: 101}]
        """,
    )
    assert found == [
        (
            "mesh.yaml:5: PeerAuthentication default/strict: spec.mtls.mode: must be one of 'UNSET', 'DISABLE', "
            "'PERMISSIVE', 'STRICT', got 'STRICK'; did you mean 'STRICT'?"
        ),
        (
            "mesh.yaml:8: PeerAuthentication default/strict: spec.portLevelMtls.http: must be a port number from 1 "
            "to 65535, got 'http'"
        ),
        (
            "mesh.yaml:16: AuthorizationPolicy default/allow: spec.rules[0].from[0].source.principal: unknown field; "
            "did you mean 'principals'?"
        ),
        "mesh.yaml:22: Telemetry default/t: spec.tracing[0].randomSamplingPercentage: must be <= 100, got 101.0",
    ]


def _retries_plugin() -> types.ModuleType:
    def retries(context: TranslationContext) -> None:
        for _table, _vhost, route in context.snapshot.routes():
            if route.source is not None and route.source.retries is not None:
                route.route = route.route  # a real translator would set the route's retry policy here

    module = types.ModuleType("third_party_retries")
    module.meshcore_mesh_translators = meshcore.hookimpl(  # type: ignore[attr-defined]
        lambda: [
            meshcore.TranslatorType(
                name="retries",
                factory=retries,
                order=500,
                handles=("VirtualService.http.retries", "AuthorizationPolicy"),
            )
        ]
    )
    return module


def test_a_plugin_that_handles_a_field_lifts_the_refusal(tmp_path: Path) -> None:
    registry = build_registry(autoload=False, plugins=[("retries", _retries_plugin())])
    path = write(
        tmp_path,
        """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: x}
        spec:
          hosts: [r]
          http:
          - route: [{destination: {host: r}}]
            retries: {attempts: 3, perTryTimeout: 2s}
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: y}
        spec: {action: DENY}
        """,
    )
    resources = load_resources([path], registry)
    assert resources.items[0].spec.http[0].retries.attempts == 3


@pytest.mark.parametrize(
    ("handles", "spec", "unsupported"),
    [
        (["K"], {"a": 1}, []),
        (
            ["K.a"],
            {"a": 1, "b": 2},
            [(("spec", "b"), "is not supported by meshcore yet: no translator handles K.b")],
        ),
        (["K.a=1|2"], {"a": 3}, [(("spec", "a"), "3 is not supported by meshcore yet (supported: 1, 2)")]),
        (["K.a=1", "K.a=3"], {"a": 3}, []),
        (["K.a=1", "K.a"], {"a": 3}, []),
        (["K.b"], {}, []),
    ],
)
def test_claims(handles: list[str], spec: dict[str, Any], unsupported: list[Any]) -> None:
    import attrs  # noqa: PLC0415 - a throwaway spec class

    cls = attrs.make_class("Spec", {"a": attrs.field(default=0), "b": attrs.field(default=0)}, frozen=True)
    assert Claims(handles).unsupported("K", cls(**spec)) == unsupported


def test_a_third_party_kind_registers_through_the_hook(tmp_path: Path) -> None:
    import attrs  # noqa: PLC0415 - the plugin's own spec class

    @attrs.frozen(kw_only=True)
    class RateLimitSpec:
        requestsPerSecond: int = attrs.field(validator=meshcore.at_least(1))  # noqa: N815 - Kubernetes style

    module = types.ModuleType("third_party_kind")
    module.meshcore_mesh_kinds = meshcore.hookimpl(  # type: ignore[attr-defined]
        lambda: [
            meshcore.MeshKindType(name="RateLimit", config=RateLimitSpec, api_versions=("example.com/v1",))
        ]
    )
    module.meshcore_mesh_translators = meshcore.hookimpl(  # type: ignore[attr-defined]
        lambda: [
            meshcore.TranslatorType(name="ratelimit", factory=lambda _context: None, handles=("RateLimit",))
        ]
    )
    registry = build_registry(autoload=False, plugins=[("ratelimit", module)])
    doc = "apiVersion: example.com/v1\nkind: RateLimit\nmetadata: {name: r}\nspec: {requestsPerSecond: %s}\n"
    assert load_resources([write(tmp_path, doc % 5)], registry).items[0].spec == RateLimitSpec(
        requestsPerSecond=5
    )
    assert problems(tmp_path, doc % 0, registry) == [
        "mesh.yaml:4: RateLimit default/r: spec.requestsPerSecond: must be >= 1, got 0"
    ]
