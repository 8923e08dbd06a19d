"""The hand-written OTLP encoder, held to ``opentelemetry-proto``'s decoder. No sockets.

The tracing filter writes spans straight to protobuf bytes (:class:`AttributeKey`,
:func:`encode_span_fields`); whatever the values (long, non-ASCII, negative, cached or
not), a collector must decode exactly the span that was meant.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from meshcore import telemetry
from meshcore.telemetry import otlp

ids64 = st.integers(min_value=1, max_value=(1 << 64) - 1)
names = st.text(min_size=1, max_size=40)
# Lengths on both sides of 127 bytes: where a protobuf length takes a second byte.
texts = st.one_of(st.text(max_size=20), st.text(min_size=100, max_size=300), st.just("é" * 70))
numbers = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
attribute_lists = st.lists(st.tuples(names, st.one_of(texts, numbers)), max_size=8)


def decode(spans: list[bytes], resource: list[telemetry.Attribute]) -> tuple[Any, list[Span]]:
    encoded_resource, scope = otlp.encode_resource(resource, "meshcore", "1.2.3")
    message = ExportTraceServiceRequest.FromString(otlp.encode_batch(spans, encoded_resource, scope))
    (resource_spans,) = message.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "meshcore"
    assert scope_spans.scope.version == "1.2.3"
    return resource_spans.resource, list(scope_spans.spans)


def values(span: Span) -> list[tuple[str, str | int]]:
    out: list[tuple[str, str | int]] = []
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out.append((kv.key, kv.value.string_value if which == "string_value" else kv.value.int_value))
    return out


@settings(max_examples=150, deadline=None)
@given(
    trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1),
    span_id=ids64,
    parent_id=st.one_of(st.just(0), ids64),
    name=names,
    kind=st.sampled_from([telemetry.KIND_SERVER, telemetry.KIND_CLIENT]),
    start=st.integers(min_value=0, max_value=(1 << 64) - 1),
    status=st.sampled_from([otlp.STATUS_UNSET, otlp.STATUS_OK, otlp.STATUS_ERROR]),
    trace_state=st.one_of(st.just(""), st.text(alphabet="abc=,0123", min_size=1, max_size=200)),
    attributes=attribute_lists,
    cached=st.booleans(),
)
def test_spans_written_field_by_field_decode_as_meant(  # noqa: PLR0917 - one per span field
    trace_id: int,
    span_id: int,
    parent_id: int,
    name: str,
    kind: int,
    start: int,
    status: int,
    trace_state: str,
    attributes: list[tuple[str, str | int]],
    cached: bool,
) -> None:
    end = min(start + 1000, (1 << 64) - 1)
    parts = []
    for key, value in attributes:
        attribute = telemetry.AttributeKey(key, cached=cached)
        encoded = attribute.text(value) if isinstance(value, str) else attribute.number(value)
        again = attribute.text(value) if isinstance(value, str) else attribute.number(value)
        assert again == encoded  # from the cache, if any
        parts.append(encoded)
    encoded = telemetry.encode_span_fields(
        trace_id, span_id, parent_id, name, kind, start, end, b"".join(parts), status, trace_state
    )
    _, (span,) = decode([encoded], [("service.name", "svc")])
    assert int.from_bytes(span.trace_id, "big") == trace_id
    assert int.from_bytes(span.span_id, "big") == span_id
    assert int.from_bytes(span.parent_span_id, "big") == parent_id
    assert span.trace_state == trace_state
    assert span.name == name
    assert span.kind == kind
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (start, end)
    assert span.status.code == status
    assert values(span) == attributes
    # The same span from plain values (SpanData) is the same bytes.
    data = telemetry.SpanData(
        trace_id, span_id, parent_id, name, kind, start, end, list(attributes), status, trace_state
    )
    assert otlp.encode_span_message(data) == encoded


def test_static_attributes_and_a_batch_of_spans() -> None:
    static = telemetry.encode_attributes([("meshcore.listener", "inbound"), ("team", "payments"), ("n", 7)])
    spans = [
        telemetry.encode_span_fields(1, i, 0, f"GET /{i}", telemetry.KIND_SERVER, i, i + 1, static)
        for i in range(1, 301)
    ]
    resource, decoded = decode(spans, [("service.name", "reviews"), ("service.namespace", "shop")])
    assert {kv.key: kv.value.string_value for kv in resource.attributes} == {
        "service.name": "reviews",
        "service.namespace": "shop",
    }
    assert [s.name for s in decoded] == [f"GET /{i}" for i in range(1, 301)]
    assert values(decoded[0]) == [("meshcore.listener", "inbound"), ("team", "payments"), ("n", 7)]


def test_a_cached_key_starts_over_past_its_bound() -> None:
    key = telemetry.AttributeKey("client.address", cached=True)
    for i in range(otlp._CACHED_VALUES + 5):
        key.text(f"10.0.{i // 256}.{i % 256}")
    assert key.cache is not None
    assert len(key.cache) <= otlp._CACHED_VALUES
    assert telemetry.AttributeKey("url.path").cache is None  # a one-off value per request: never kept
