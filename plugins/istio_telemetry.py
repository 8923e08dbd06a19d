"""The ``Telemetry`` kind: tracing, metrics and access logging of workloads.

Structured and checked with every field Istio defines (istio/api ``telemetry/v1``); its
meaning is given by the observability work's translator. Until one handles it, a Telemetry
resource is refused as not supported yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

import meshcore
from meshcore import Duration, at_least, at_most, non_empty
from meshcore.plugins.istio_common import EMPTY, PolicySelector, PolicyTargetReference

TELEMETRY = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")

WorkloadMode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]


@attrs.frozen(kw_only=True)
class ProviderRef:
    """A telemetry provider by name (configured in the mesh config)."""

    name: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class TracingSelector:
    """Which side of the traffic a tracing setting applies to."""

    mode: WorkloadMode | None = None


@attrs.frozen(kw_only=True)
class LiteralTag:
    """A tag with a fixed value."""

    value: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class NamedTag:
    """A tag taken from an environment variable or a request header."""

    name: str = attrs.field(validator=non_empty)
    defaultValue: str = ""


@attrs.frozen(kw_only=True)
class FormatterTag:
    """A tag from a formatter expression."""

    value: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class CustomTag:
    """Where a span tag's value comes from: exactly one of its sources."""

    literal: LiteralTag | None = None
    environment: NamedTag | None = None
    header: NamedTag | None = None
    formatter: FormatterTag | None = None

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("literal", "environment", "header", "formatter") if getattr(self, k) is not None]
        if len(given) != 1:
            msg = f"needs exactly one of literal, environment, header, formatter; got {', '.join(given) or 'none'}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Tracing:
    """Tracing settings."""

    match: TracingSelector | None = None
    providers: tuple[ProviderRef, ...] = ()
    randomSamplingPercentage: float | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(100)])
    )
    disableSpanReporting: bool | None = None
    customTags: Mapping[str, CustomTag] = EMPTY
    useRequestIdForTraceSampling: bool | None = None
    enableIstioTags: bool | None = None
    disableContextPropagation: bool | None = None


@attrs.frozen(kw_only=True)
class MetricSelector:
    """Which metrics an override applies to."""

    metric: (
        Literal[
            "ALL_METRICS",
            "REQUEST_COUNT",
            "REQUEST_DURATION",
            "REQUEST_SIZE",
            "RESPONSE_SIZE",
            "TCP_OPENED_CONNECTIONS",
            "TCP_CLOSED_CONNECTIONS",
            "TCP_SENT_BYTES",
            "TCP_RECEIVED_BYTES",
            "GRPC_REQUEST_MESSAGES",
            "GRPC_RESPONSE_MESSAGES",
        ]
        | None
    ) = None
    customMetric: str | None = None
    mode: WorkloadMode | None = None


@attrs.frozen(kw_only=True)
class TagOverride:
    """A metric label set or removed."""

    operation: Literal["UPSERT", "REMOVE"] | None = None
    value: str = ""


@attrs.frozen(kw_only=True)
class MetricsOverrides:
    """Metrics disabled or relabelled."""

    match: MetricSelector | None = None
    disabled: bool | None = None
    tagOverrides: Mapping[str, TagOverride] = EMPTY


@attrs.frozen(kw_only=True)
class Metrics:
    """Metrics settings."""

    providers: tuple[ProviderRef, ...] = ()
    overrides: tuple[MetricsOverrides, ...] = ()
    reportingInterval: Duration | None = None


@attrs.frozen(kw_only=True)
class LogSelector:
    """Which side of the traffic an access-log setting applies to."""

    mode: WorkloadMode | None = None


@attrs.frozen(kw_only=True)
class AccessLogFilter:
    """Which requests are logged (a CEL expression)."""

    expression: str = ""


@attrs.frozen(kw_only=True)
class AccessLogging:
    """Access-log settings."""

    match: LogSelector | None = None
    providers: tuple[ProviderRef, ...] = ()
    disabled: bool | None = None
    filter: AccessLogFilter | None = None


@attrs.frozen(kw_only=True)
class TelemetrySpec:
    """Tracing, metrics and access logging of some workloads."""

    selector: PolicySelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: tuple[PolicyTargetReference, ...] = ()
    tracing: tuple[Tracing, ...] = ()
    metrics: tuple[Metrics, ...] = ()
    accessLogging: tuple[AccessLogging, ...] = ()


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[meshcore.MeshKindType]:
    """Register ``Telemetry``."""
    return [
        meshcore.MeshKindType(
            name="Telemetry",
            config=TelemetrySpec,
            api_versions=TELEMETRY,
            description="tracing, metrics and access logging of workloads",
        )
    ]
