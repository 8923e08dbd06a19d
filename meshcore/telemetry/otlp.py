"""Finished spans and their OTLP encoding (protobuf wire format, written by hand).

Sans-IO. :class:`SpanData` is what a tracing filter hands to an exporter when a request
ends; :func:`encode_span` encodes one (the exporter queues them so), :func:`encode_batch`
(or :func:`encode_spans`, from SpanData) makes a batch the body of an OTLP/HTTP export request
(``ExportTraceServiceRequest``, ``application/x-protobuf``), the bytes a collector
decodes with ``opentelemetry-proto``. Writing the few messages OTLP needs by hand costs a
fraction of building protobuf objects (see ``bench/tracing_export.py``) and needs no
runtime dependency. Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto``
and ``common/v1/common.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

__all__ = [
    "KIND_CLIENT",
    "KIND_INTERNAL",
    "KIND_SERVER",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_UNSET",
    "Attribute",
    "SpanData",
    "encode_batch",
    "encode_resource",
    "encode_span",
    "encode_spans",
]

KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"

Attribute = tuple[str, str | int | float | bool]


class SpanData:
    """One finished span, as plain values (nothing is encoded on the request path).

    Attributes:
        trace_id: 128-bit trace id.
        span_id: 64-bit span id.
        parent_id: the parent span's id (0 for a root span).
        name: the span name ("GET /api").
        kind: KIND_SERVER, KIND_CLIENT, ...
        start_ns: start time, nanoseconds since the Unix epoch.
        end_ns: end time, likewise.
        attributes: ``(key, value)`` pairs; values are str, int, float or bool.
        status: STATUS_UNSET, STATUS_OK or STATUS_ERROR.
        trace_state: the W3C tracestate the span was started with.
    """

    __slots__ = (
        "attributes",
        "end_ns",
        "kind",
        "name",
        "parent_id",
        "span_id",
        "start_ns",
        "status",
        "trace_id",
        "trace_state",
    )

    def __init__(  # noqa: PLR0917 - built positionally on the hot path, in field order
        self,
        trace_id: int,
        span_id: int,
        parent_id: int,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        attributes: list[Attribute],
        status: int = STATUS_UNSET,
        trace_state: str = "",
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes = attributes
        self.status = status
        self.trace_state = trace_state

    def __repr__(self) -> str:
        return f"<SpanData {self.name!r} {self.trace_id:032x}/{self.span_id:016x}>"


# -- protobuf wire format -------------------------------------------------------------------

_ONE_BYTE = 0x80
"""Varints below this take one byte."""
_SMALL = [bytes((i,)) for i in range(_ONE_BYTE)]
_SPAN_ATTRIBUTES = 0x4A
"""The tag of Span.attributes (field 9, length-delimited): only span attributes are cached."""


def _varint(value: int) -> bytes:
    if value < _ONE_BYTE:
        return _SMALL[value]
    out = bytearray()
    while value >= _ONE_BYTE:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with a one-byte tag."""
    n = len(payload)
    return _SMALL[tag] + (_SMALL[n] if n < _ONE_BYTE else _varint(n)) + payload


_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_CACHE_LIMIT = 8192
_cache: dict[Attribute, bytes] = {}
"""Encoded attributes (tag included) by (key, value): most values repeat across requests
(methods, statuses, clusters, workloads), so most attributes cost one lookup."""


def _any_value(value: str | int | float | bool) -> bytes:
    if isinstance(value, str):
        return _len_field(0x0A, value.encode("utf-8", "replace"))  # string_value = 1
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int_value = 3 (two's complement)
    return b"\x21" + _DOUBLE(value)  # double_value = 4 (fixed64)


def _attribute(tag: int, item: Attribute) -> bytes:
    """``KeyValue{key = 1, value = 2}`` as field ``tag`` of its parent."""
    key, value = item
    return _len_field(tag, _len_field(0x0A, key.encode("utf-8")) + _len_field(0x12, _any_value(value)))


def _attributes(tag: int, attributes: Iterable[Attribute]) -> bytes:
    cache = _cache
    parts = []
    for item in attributes:
        encoded = cache.get(item)
        if encoded is None:
            encoded = _attribute(tag, item)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()  # high-cardinality values (paths, ports) cycle through
            if tag == _SPAN_ATTRIBUTES:
                cache[item] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _span(span: SpanData) -> bytes:
    parts = [
        b"\x0a\x10" + span.trace_id.to_bytes(16, "big"),  # trace_id = 1
        b"\x12\x08" + span.span_id.to_bytes(8, "big"),  # span_id = 2
    ]
    if span.trace_state:
        parts.append(_len_field(0x1A, span.trace_state.encode("latin-1")))  # trace_state = 3
    if span.parent_id:
        parts.append(b"\x22\x08" + span.parent_id.to_bytes(8, "big"))  # parent_span_id = 4
    parts += [
        _len_field(0x2A, span.name.encode("utf-8", "replace")),  # name = 5
        _SMALL[0x30] + _SMALL[span.kind],  # kind = 6
        b"\x39" + _FIXED64(span.start_ns),  # start_time_unix_nano = 7 (fixed64)
        b"\x41" + _FIXED64(span.end_ns),  # end_time_unix_nano = 8 (fixed64)
        _attributes(0x4A, span.attributes),  # attributes = 9
    ]
    if span.status:
        parts.append(b"\x7a\x02\x18" + _SMALL[span.status])  # status = 15 { code = 3 }
    return b"".join(parts)


def encode_resource(attributes: Sequence[Attribute], scope: str, version: str) -> tuple[bytes, bytes]:
    """The encoded Resource and InstrumentationScope of an exporter, computed once."""
    resource = _attributes(0x0A, attributes)  # Resource.attributes = 1
    instrumentation = _len_field(0x0A, scope.encode()) + _len_field(0x12, version.encode())
    return resource, instrumentation


def encode_span(span: SpanData) -> bytes:
    """One span as an element of ``ScopeSpans.spans`` (field 2: tag and length included).

    The exporter keeps spans encoded while they wait: one bytes object each, which the
    garbage collector never walks, where a SpanData is some twenty tracked objects that
    live long enough to be promoted (measured: that cost a proxy at 100% sampling more
    CPU than the encoding itself).
    """
    return _len_field(0x12, _span(span))


def encode_batch(spans: Sequence[bytes], resource: bytes, scope: bytes) -> bytes:
    """An ``ExportTraceServiceRequest`` carrying spans (from :func:`encode_span`) of one resource and scope."""
    scope_spans = _len_field(0x0A, scope) + b"".join(spans)
    resource_spans = (
        _len_field(0x0A, resource)  # ResourceSpans.resource = 1
        + _len_field(0x12, scope_spans)  # scope_spans = 2
        + _len_field(0x1A, SCHEMA_URL.encode())  # schema_url = 3
    )
    return _len_field(0x0A, resource_spans)  # ExportTraceServiceRequest.resource_spans = 1


def encode_spans(spans: Sequence[SpanData], resource: bytes, scope: bytes) -> bytes:
    """An ``ExportTraceServiceRequest`` carrying ``spans`` of one resource and scope."""
    return encode_batch([encode_span(span) for span in spans], resource, scope)
