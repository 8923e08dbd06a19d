"""The control plane's trace receiver: OTLP protobuf decoded by hand, traces kept bounded. No sockets.

The decoder is checked against ``opentelemetry-proto``'s own encoding (and against the
sidecars' encoder), and fed arbitrary bytes: it raises OtlpDecodeError or decodes, nothing else.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from meshcore.control.traces import TraceStore
from meshcore.telemetry import otlp
from meshcore.telemetry.otlp_decode import OtlpDecodeError, decode_export

TRACE = bytes(range(1, 17))


def span(span_id: int, parent: int, name: str, start: int, end: int, **extra: object) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        **extra,  # type: ignore[arg-type]
    )


def export(*groups: tuple[str, list[Span]]) -> bytes:
    message = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
                ),
                scope_spans=[ScopeSpans(spans=spans)],
            )
            for service, spans in groups
        ]
    )
    body: bytes = message.SerializeToString()
    return body


def test_decodes_what_opentelemetry_proto_encodes() -> None:
    attributes = [
        KeyValue(key="http.response.status_code", value=AnyValue(int_value=503)),
        KeyValue(key="url.path", value=AnyValue(string_value="/ratings")),
        KeyValue(key="ratio", value=AnyValue(double_value=0.25)),
        KeyValue(key="retry", value=AnyValue(bool_value=True)),
        KeyValue(key="negative", value=AnyValue(int_value=-3)),
    ]
    body = export(
        ("front", [span(1, 0, "GET /", 1_000, 9_000)]),
        (
            "ratings",
            [
                span(
                    2,
                    1,
                    "GET /ratings",
                    2_000,
                    3_000,
                    attributes=attributes,
                    status=Status(code=Status.STATUS_CODE_ERROR),
                )
            ],
        ),
    )
    found = decode_export(body)
    assert [(s.service, s.span_id, s.parent_id, s.name) for s in found] == [
        ("front", "0000000000000001", "", "GET /"),
        ("ratings", "0000000000000002", "0000000000000001", "GET /ratings"),
    ]
    assert found[1].trace_id == TRACE.hex()
    assert (found[1].start_ns, found[1].end_ns, found[1].kind, found[1].status) == (2_000, 3_000, 2, 2)
    assert dict(found[1].attributes) == {
        "http.response.status_code": 503,
        "url.path": "/ratings",
        "ratio": 0.25,
        "retry": True,
        "negative": -3,
    }


def test_decodes_what_the_sidecars_encoder_sends() -> None:
    resource, scope = otlp.encode_resource([("service.name", "reviews-v2")], "meshcore", "0")
    data = otlp.SpanData(
        0xABC,
        7,
        5,
        "GET /reviews",
        otlp.KIND_CLIENT,
        10,
        20,
        [("http.response.status_code", 200)],
        otlp.STATUS_UNSET,
    )
    (found,) = decode_export(otlp.encode_spans([data], resource, scope))
    assert (found.service, found.trace_id, found.span_id, found.parent_id) == (
        "reviews-v2",
        f"{0xABC:032x}",
        f"{7:016x}",
        f"{5:016x}",
    )
    assert (found.kind, found.start_ns, found.end_ns) == (otlp.KIND_CLIENT, 10, 20)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_the_decode_error_only(body: bytes) -> None:
    with contextlib.suppress(OtlpDecodeError):
        decode_export(body)


def test_truncated_exports_are_refused_with_a_400() -> None:
    body = export(("front", [span(1, 0, "GET /", 1, 2)]))
    store = TraceStore()
    answer = store.receive("POST", body[:-3])
    assert answer.status == 400
    assert "not an OTLP ExportTraceServiceRequest" in answer.body
    assert store.rejected == 1
    assert not store.traces
    assert store.receive("GET", body).status == 405


def test_a_trace_is_one_tree_in_order_whatever_order_its_spans_came_in() -> None:
    store = TraceStore()
    # The callee's sidecar exports first (its response ends first), then the caller's.
    assert (
        store.receive("POST", export(("ratings", [span(3, 2, "GET /ratings", 3_000_000, 4_000_000)]))).status
        == 200
    )
    store.receive(
        "POST",
        export(
            ("front", [span(2, 1, "GET", 2_000_000, 5_000_000), span(1, 0, "GET /", 1_000_000, 9_000_000)])
        ),
    )
    (trace,) = store.data()["traces"]
    assert trace["services"] == ["front", "ratings"]
    assert trace["name"] == "GET /"
    assert trace["duration_ms"] == 8.0
    assert trace["complete"]
    assert [(s["span_id"][-1], s["depth"], s["start_ms"]) for s in trace["spans"]] == [
        ("1", 0, 0.0),
        ("2", 1, 1.0),
        ("3", 2, 2.0),
    ]


def test_the_store_keeps_the_most_recent_traces_and_a_bounded_number_of_spans_each() -> None:
    store = TraceStore(max_traces=3, max_spans=2)

    def one(trace: int, count: int) -> bytes:
        spans = [span(i + 1, 0, f"s{i}", i, i + 1) for i in range(count)]
        for s in spans:
            s.trace_id = trace.to_bytes(16, "big")
        return export(("svc", spans))

    for trace in range(1, 6):
        store.receive("POST", one(trace, 3))
    assert list(store.traces) == [f"{t:032x}" for t in (3, 4, 5)]
    assert all(len(spans) == 2 for spans in store.traces.values())
    assert (store.received, store.dropped) == (15, 5)
    assert [t["trace_id"] for t in store.data(limit=2)["traces"]] == [f"{5:032x}", f"{4:032x}"]


def test_whole_traces_come_first_newest_first_and_an_outside_parent_is_a_root() -> None:
    store = TraceStore()

    def one(trace: int, *spans: Span) -> bytes:
        for s in spans:
            s.trace_id = trace.to_bytes(16, "big")
        return export(("svc", list(spans)))

    store.receive("POST", one(1, span(1, 0, "root", 0, 9), span(2, 1, "child", 1, 2)))
    store.receive("POST", one(2, span(3, 0xFF, "continued from outside", 0, 9), span(4, 3, "child", 1, 2)))
    store.receive(
        "POST", one(3, span(5, 0, "root", 0, 9), span(6, 0xEE, "orphan: its parent not here yet", 1, 2))
    )
    traces = store.data()["traces"]
    assert [(t["trace_id"][-1], t["complete"]) for t in traces] == [("2", True), ("1", True), ("3", False)]


def test_no_traces_says_how_to_get_some() -> None:
    data = TraceStore().data()
    assert data["traces"] == []
    assert "meshcore" in data["note"]
