"""Tracing, option A vs option B: the CPU one span costs, made and encoded for OTLP.

Run: ``python bench/tracing_export.py [--spans 20000]``. Needs the OpenTelemetry SDK for
the comparison (``pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-common``).

A: the OpenTelemetry SDK: ``tracer.start_span`` with the attributes a proxy span carries,
``span.end()``, then the SDK's OTLP encoder (``encode_spans(...).SerializeToString()``), as
its BatchSpanProcessor and OTLP/HTTP exporter would do. B: meshcore's own: a plain
``SpanData`` with the same attributes, then ``meshcore.telemetry.otlp.encode_spans``. Both
in this process, one after the other, interleaved three times; the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any


def attributes(i: int) -> list[tuple[str, Any]]:
    """What a server span of the tracing filter carries (two values vary per request)."""
    return [
        ("http.request.method", "GET"),
        ("url.scheme", "http"),
        ("url.path", "/api/items"),
        ("network.protocol.version", "1.1"),
        ("meshcore.listener", "inbound"),
        ("server.address", "shop.local"),
        ("client.address", "127.0.0.1"),
        ("client.port", 40000 + i % 20000),
        ("user_agent.original", "wrk"),
        ("http.route", "/api*"),
        ("http.response.status_code", 200),
        ("meshcore.request_id", f"{i:032x}"),
        ("meshcore.upstream.cluster", "backend"),
        ("meshcore.upstream.address", "127.0.0.1:8080"),
    ]


def option_sdk(count: int) -> float:
    """µs per span with the OpenTelemetry SDK and its OTLP encoder."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    finished: list[Any] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            finished.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("meshcore")
    start = time.process_time()
    for i in range(count):
        span = tracer.start_span("GET /api*", attributes=dict(attributes(i)))
        span.end()
    for i in range(0, count, 512):
        encode_spans(finished[i : i + 512]).SerializeToString()
    return (time.process_time() - start) / count * 1e6


def option_own(count: int) -> float:
    """µs per span with meshcore's SpanData and hand-written OTLP encoder."""
    from meshcore.telemetry.otlp import KIND_SERVER, SpanData, encode_resource, encode_spans

    resource, scope = encode_resource([("service.name", "bench")], "meshcore", "0")
    spans = []
    start = time.process_time()
    for i in range(count):
        now = time.time_ns()
        spans.append(SpanData(i + 1, i + 1, 0, "GET /api*", KIND_SERVER, now, now + 1000, attributes(i)))
    for i in range(0, count, 512):
        encode_spans(spans[i : i + 512], resource, scope)
    return (time.process_time() - start) / count * 1e6


def main() -> int:
    """Run both options, interleaved, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20000)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {
        "A: OpenTelemetry SDK + OTLP encoder": [],
        "B: meshcore SpanData + own encoder": [],
    }
    options: list[Callable[[int], float]] = [option_sdk, option_own]
    for _ in range(3):
        for results, option in zip(runs.values(), options, strict=True):
            results.append(option(args.spans))
    for label, results in runs.items():
        print(
            f"{label:40} {statistics.median(results):6.1f} us CPU per span (runs: {', '.join(f'{r:.1f}' for r in results)})"
        )
    a, b = (statistics.median(r) for r in runs.values())
    print(f"B costs {b / a:.2f}x of A")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
