"""Telemetry → the sidecars' ``tracing`` filter: precedence, sides, providers, refusals. No sockets."""

from __future__ import annotations

from typing import Any

import pytest
from _mesh import REGISTRY, model_of, translated

from meshcore.config.loader import parse_documents
from meshcore.control import (
    MeshSettings,
    OpenTelemetryProvider,
    TracingProvider,
    Translation,
    TranslationError,
)
from meshcore.control.resources import resources_from_documents
from meshcore.errors import ConfigError

SERVICES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: backend}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v1}
spec: {address: 10.0.0.1, ports: {http: 8081}, labels: {app: backend, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web}
spec: {address: 10.0.0.9, ports: {http: 8090}, labels: {app: web}}
"""

SETTINGS = MeshSettings(
    tracing_providers=(
        TracingProvider(
            name="otel", opentelemetry=OpenTelemetryProvider(endpoint="http://127.0.0.1:4318/v1/traces")
        ),
        TracingProvider(
            name="meshcore", opentelemetry=OpenTelemetryProvider(endpoint="http://127.0.0.1:15014/v1/traces")
        ),
    ),
    default_tracing_providers=("meshcore",),
)


def telemetry(name: str, namespace: str, spec: str) -> str:
    return f"---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n"


def tracing_of(translation: Translation) -> dict[str, Any]:
    """Each HTTP listener's tracing filter config (None when it has none); its position is first."""
    out: dict[str, Any] = {}
    for listener in translation.snapshot.listeners:
        hcm = listener.filter_chains[0].filters[-1]
        if hcm.name != "http_connection_manager":
            continue
        filters = hcm.config.http_filters
        found = [i for i, f in enumerate(filters) if f.name == "tracing"]
        assert found in ([], [0]), (
            f"{listener.name}: tracing must be first, once: {[f.name for f in filters]}"
        )
        out[listener.name] = filters[0].config if found else None
    return out


def sides(translation: Translation) -> tuple[Any, Any]:
    """The tracing config of the inbound listeners and of the outbound ones (each all equal)."""
    inbound = {repr(v) for k, v in tracing_of(translation).items() if k.startswith("inbound")}
    outbound = {repr(v) for k, v in tracing_of(translation).items() if not k.startswith("inbound")}
    assert len(inbound) <= 1, inbound
    assert len(outbound) == 1, outbound
    configs = {repr(v): v for v in tracing_of(translation).values()}
    return (configs[inbound.pop()] if inbound else None), configs[outbound.pop()]


def test_without_telemetry_no_listener_traces() -> None:
    translation = translated(model_of(SERVICES, settings=SETTINGS), "backend-v1")
    assert set(tracing_of(translation).values()) == {None}


def test_mesh_wide_tracing_reaches_both_sides_of_every_workload_with_the_default_provider() -> None:
    model = model_of(
        SERVICES + telemetry("mesh", "istio-system", "  tracing: [{randomSamplingPercentage: 100}]"),
        settings=SETTINGS,
    )
    for workload in ("backend-v1", "web"):
        inbound, outbound = sides(translated(model, workload))
        assert inbound is not None
        assert inbound == outbound
        assert inbound.sampler == "parent_based"
        assert inbound.ratio == 1.0
        assert inbound.otlp_http.endpoint == "http://127.0.0.1:15014/v1/traces"
        assert float(inbound.otlp_http.timeout) == 5.0


def test_unset_sampling_is_istios_one_percent() -> None:
    model = model_of(
        SERVICES + telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: otel}]}]"),
        settings=SETTINGS,
    )
    inbound, _ = sides(translated(model, "backend-v1"))
    assert inbound.ratio == pytest.approx(0.01)
    assert inbound.otlp_http.endpoint == "http://127.0.0.1:4318/v1/traces"


def test_workload_overrides_namespace_overrides_root_field_by_field() -> None:
    mesh = (
        SERVICES
        + telemetry(
            "mesh",
            "istio-system",
            "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 10\n"
            "    customTags: {cluster: {literal: {value: east}}, team: {literal: {value: core}}}",
        )
        + telemetry("ns", "default", "  tracing: [{randomSamplingPercentage: 50}]")
        + telemetry(
            "backend",
            "default",
            "  selector: {matchLabels: {app: backend}}\n  tracing:\n  - randomSamplingPercentage: 100\n"
            "    customTags: {team: {literal: {value: backend}}, user: {header: {name: x-user, defaultValue: anon}}}",
        )
    )
    model = model_of(mesh, settings=SETTINGS)
    backend, _ = sides(translated(model, "backend-v1"))
    assert backend.ratio == 1.0  # the workload's
    assert backend.otlp_http.endpoint == "http://127.0.0.1:4318/v1/traces"  # the root's provider, kept
    assert dict(backend.attributes) == {"cluster": "east", "team": "backend"}  # tags add up, key by key
    assert {k: (v.header, v.default) for k, v in backend.header_attributes.items()} == {
        "user": ("x-user", "anon")
    }
    web, _ = sides(translated(model, "web"))
    assert web.ratio == 0.5  # the namespace's: the selector is not web's
    assert dict(web.attributes) == {"cluster": "east", "team": "core"}
    elsewhere = translated(
        model_of(mesh.replace("namespace: default", "namespace: other"), settings=SETTINGS), "web"
    )
    assert sides(elsewhere)[1].ratio == pytest.approx(0.1)  # other namespaces: the root's


def test_a_selector_in_another_namespace_selects_nothing_here() -> None:
    mesh = SERVICES + telemetry(
        "backend",
        "other",
        "  selector: {matchLabels: {app: backend}}\n  tracing: [{randomSamplingPercentage: 100}]",
    )
    assert set(tracing_of(translated(model_of(mesh, settings=SETTINGS), "backend-v1")).values()) == {None}


def test_match_mode_traces_one_side_only() -> None:
    mesh = SERVICES + telemetry(
        "mesh",
        "istio-system",
        "  tracing:\n  - {match: {mode: SERVER}, randomSamplingPercentage: 100}\n"
        "  - {match: {mode: CLIENT}, randomSamplingPercentage: 5}",
    )
    inbound, outbound = sides(translated(model_of(mesh, settings=SETTINGS), "backend-v1"))
    assert inbound.ratio == 1.0
    assert outbound.ratio == pytest.approx(0.05)
    server_only = SERVICES + telemetry("mesh", "istio-system", "  tracing: [{match: {mode: SERVER}}]")
    found = tracing_of(translated(model_of(server_only, settings=SETTINGS), "backend-v1"))
    assert all((v is not None) == k.startswith("inbound") for k, v in found.items()), found


def test_disable_span_reporting_propagates_context_without_sending_spans() -> None:
    mesh = (
        SERVICES
        + telemetry("mesh", "istio-system", "  tracing: [{randomSamplingPercentage: 100}]")
        + telemetry("ns", "default", "  tracing: [{disableSpanReporting: true}]")
    )
    inbound, _ = sides(translated(model_of(mesh, settings=SETTINGS), "backend-v1"))
    assert inbound.otlp_http is None
    assert inbound.ratio == 1.0


def test_an_unknown_provider_fails_that_proxys_translation_naming_the_field() -> None:
    mesh = SERVICES + telemetry("mesh", "istio-system", "  tracing: [{providers: [{name: zipkin}]}]")
    with pytest.raises(TranslationError) as caught:
        translated(model_of(mesh, settings=SETTINGS), "backend-v1")
    message = str(caught.value)
    assert "Telemetry istio-system/mesh: spec.tracing[0].providers" in message
    assert "no tracing provider 'zipkin'" in message
    assert "known: otel, meshcore" in message


def test_two_providers_are_refused() -> None:
    mesh = SERVICES + telemetry(
        "mesh", "istio-system", "  tracing: [{providers: [{name: otel}, {name: meshcore}]}]"
    )
    with pytest.raises(
        TranslationError, match=r"spec.tracing\[0\].providers: one tracing provider per workload, got 2"
    ):
        translated(model_of(mesh, settings=SETTINGS), "backend-v1")


def test_no_provider_at_all_propagates_only_and_says_so() -> None:
    mesh = SERVICES + telemetry("mesh", "istio-system", "  tracing: [{randomSamplingPercentage: 100}]")
    translation = translated(model_of(mesh, settings=MeshSettings()), "backend-v1")
    inbound, _ = sides(translation)
    assert inbound.otlp_http is None
    assert any("tracing: no provider" in p for p in translation.problems), translation.problems


def test_two_at_one_level_the_first_by_name_applies_and_the_other_is_named() -> None:
    mesh = (
        SERVICES
        + telemetry("b", "default", "  tracing: [{randomSamplingPercentage: 20}]")
        + telemetry("a", "default", "  tracing: [{randomSamplingPercentage: 30}]")
    )
    translation = translated(model_of(mesh, settings=SETTINGS), "backend-v1")
    assert sides(translation)[0].ratio == pytest.approx(0.3)
    assert (
        "Telemetry default/a applies; Telemetry default/b at the same level passed over"
        in translation.problems
    )


@pytest.mark.parametrize(
    ("spec", "path", "claim"),
    [
        ("  metrics: [{providers: [{name: prometheus}]}]", "spec.metrics", "Telemetry.metrics"),
        ("  accessLogging: [{providers: [{name: envoy}]}]", "spec.accessLogging", "Telemetry.accessLogging"),
        (
            "  tracing: [{customTags: {pod: {environment: {name: POD_NAME}}}}]",
            "spec.tracing[0].customTags.pod.environment",
            "Telemetry.tracing.customTags.environment",
        ),
        (
            "  tracing: [{useRequestIdForTraceSampling: true}]",
            "spec.tracing[0].useRequestIdForTraceSampling",
            "Telemetry.tracing.useRequestIdForTraceSampling",
        ),
        ("  targetRefs: [{kind: Service, name: backend}]", "spec.targetRefs", "Telemetry.targetRefs"),
    ],
)
def test_unsupported_fields_are_refused_with_their_path(spec: str, path: str, claim: str) -> None:
    text = telemetry("t", "default", spec)
    docs = [(data, lines, "mesh.yaml") for data, lines in parse_documents(text, "mesh.yaml")]
    with pytest.raises(ConfigError) as caught:
        resources_from_documents(docs, REGISTRY)
    messages = [str(p) for p in caught.value.problems]
    assert any(
        f"Telemetry default/t: {path}: is not supported by meshcore yet: no translator handles {claim}" in m
        for m in messages
    ), messages


def test_custom_header_tags_reach_the_span_attributes_config_as_the_filter_reads_them() -> None:
    mesh = SERVICES + telemetry(
        "mesh", "istio-system", "  tracing: [{customTags: {user: {header: {name: X-User}}}}]"
    )
    inbound, _ = sides(translated(model_of(mesh, settings=SETTINGS), "backend-v1"))
    assert inbound.header_attributes["user"].header == "X-User"
    assert inbound.header_attributes["user"].default == ""
