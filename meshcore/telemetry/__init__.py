"""Telemetry: request ids, distributed tracing, mesh metrics and access logs.

What filters need is public here (``from meshcore import telemetry``): trace-context
propagation (:func:`extract`, :func:`inject`), finished spans (:class:`SpanData`) and the
OTLP/HTTP exporter that a proxy runs as a service; workload identities and the
peer-metadata exchange (:class:`Workload`).
"""

from meshcore.telemetry.exporter import OtlpHttpExporter, parse_endpoint
from meshcore.telemetry.otlp import (
    KIND_CLIENT,
    KIND_SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    Attribute,
    AttributeKey,
    SpanData,
    encode_attributes,
    encode_span_fields,
)
from meshcore.telemetry.peer import HEADER as PEER_METADATA_HEADER
from meshcore.telemetry.peer import Workload, own_workload
from meshcore.telemetry.tracecontext import (
    PROPAGATORS,
    SpanContext,
    extract,
    inject,
    new_span_id,
    new_trace_id,
    owned_headers,
)

__all__ = [
    "KIND_CLIENT",
    "KIND_SERVER",
    "PEER_METADATA_HEADER",
    "PROPAGATORS",
    "STATUS_ERROR",
    "STATUS_UNSET",
    "Attribute",
    "AttributeKey",
    "OtlpHttpExporter",
    "SpanContext",
    "SpanData",
    "Workload",
    "encode_attributes",
    "encode_span_fields",
    "extract",
    "inject",
    "new_span_id",
    "new_trace_id",
    "own_workload",
    "owned_headers",
    "parse_endpoint",
]
