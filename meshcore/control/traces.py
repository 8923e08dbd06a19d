"""The control plane's trace receiver: OTLP/HTTP spans in, the most recent traces kept for the dashboard.

Sidecars whose Telemetry names the ``meshcore`` tracing provider export their spans to
``POST /v1/traces`` on the control plane's admin server (``application/x-protobuf``, as any
OpenTelemetry collector receives them). :class:`TraceStore` keeps the last ``max_traces``
traces, at most ``max_spans`` spans each, in memory: a bounded window for a live view,
not a trace backend. Sans-IO: :meth:`TraceStore.receive` takes a body and a clock reading.
"""

from __future__ import annotations

import collections
from typing import Any

import structlog

from meshcore.runtime.admin import AdminResponse
from meshcore.telemetry.otlp_decode import OtlpDecodeError, ReceivedSpan, decode_export

__all__ = ["MAX_EXPORT_SIZE", "TRACES_PATH", "TraceStore"]

log = structlog.get_logger("meshcore.control.traces")

TRACES_PATH = "/v1/traces"
MAX_EXPORT_SIZE = 4 * 1024 * 1024
"""The largest export request accepted (413 beyond): a sidecar's batches are far smaller."""
_PROTOBUF = "application/x-protobuf"
_EMPTY_EXPORT_RESPONSE = ""  # ExportTraceServiceResponse with no partial_success: zero bytes


class TraceStore:
    """The most recent traces, by trace id, oldest evicted first.

    Args:
        max_traces: traces kept at most.
        max_spans: spans kept per trace at most (more are counted, not kept).
    """

    def __init__(self, *, max_traces: int = 50, max_spans: int = 200) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.traces: collections.OrderedDict[str, list[ReceivedSpan]] = collections.OrderedDict()
        self.received = 0
        self.dropped = 0
        self.rejected = 0

    def add(self, spans: list[ReceivedSpan]) -> None:
        """Keep ``spans``; a trace that gets a span becomes the most recent."""
        for span in spans:
            found = self.traces.get(span.trace_id)
            if found is None:
                found = self.traces[span.trace_id] = []
            self.traces.move_to_end(span.trace_id)
            self.received += 1
            if len(found) >= self.max_spans:
                self.dropped += 1
                continue
            found.append(span)
        while len(self.traces) > self.max_traces:
            self.traces.popitem(last=False)  # the oldest trace leaves the window whole

    def receive(self, method: str, body: bytes) -> AdminResponse:
        """The answer to an OTLP/HTTP export request; its spans kept."""
        if method != "POST":
            return AdminResponse(405, f"{TRACES_PATH} takes POST\n", headers=(("allow", "POST"),))
        try:
            spans = decode_export(body)
        except OtlpDecodeError as err:
            self.rejected += 1
            log.info("trace_export_rejected", reason=str(err), size=len(body))
            return AdminResponse(400, f"not an OTLP ExportTraceServiceRequest: {err}\n")
        self.add(spans)
        return AdminResponse(200, _EMPTY_EXPORT_RESPONSE, _PROTOBUF)

    def data(self, limit: int = 10) -> dict[str, Any]:
        """The ``limit`` most recent traces for the dashboard's waterfall, newest first.

        Whole traces (one root: every other span's parent is there) come before those
        still missing spans (a sidecar that has not exported yet), so that a live view
        shows whole requests.
        """
        recent = [_trace(trace_id, self.traces[trace_id]) for trace_id in reversed(self.traces)]
        out = sorted(recent, key=lambda t: not t["complete"])[:limit]  # stable: newest first in each
        note = (
            ""
            if out
            else "no traces yet: a Telemetry resource that names the 'meshcore' provider sends them here"
        )
        return {"traces": out, "received": self.received, "dropped": self.dropped, "note": note}


def _trace(trace_id: str, spans: list[ReceivedSpan]) -> dict[str, Any]:
    """One trace: its spans in tree order (parents before children), times in ms from its start."""
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    ids = {s.span_id for s in spans}
    children: dict[str, list[ReceivedSpan]] = collections.defaultdict(list)
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        if span.parent_id and span.parent_id in ids:
            children[span.parent_id].append(span)
        else:
            roots.append(span)
    ordered: list[tuple[int, ReceivedSpan]] = []
    stack = [(0, s) for s in reversed(roots)]
    while stack:  # depth first, no recursion: a deep trace cannot exhaust the stack
        depth, span = stack.pop()
        ordered.append((depth, span))
        stack.extend((depth + 1, c) for c in reversed(children.get(span.span_id, ())))
    root = roots[0] if roots else spans[0]
    return {
        "trace_id": trace_id,
        "name": root.name,
        "root_service": root.service,
        "services": sorted({s.service for s in spans}),
        "duration_ms": round((end - start) / 1e6, 3),
        "complete": len(roots) == 1,
        "spans": [
            {
                "span_id": s.span_id,
                "parent_id": s.parent_id,
                "name": s.name,
                "service": s.service,
                "kind": {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}.get(
                    s.kind, ""
                ),
                "depth": depth,
                "start_ms": round((s.start_ns - start) / 1e6, 3),
                "duration_ms": round((s.end_ns - s.start_ns) / 1e6, 3),
                "error": s.status == 2,  # noqa: PLR2004 - STATUS_CODE_ERROR
                "status_code": dict(s.attributes).get("http.response.status_code"),
            }
            for depth, s in ordered
        ],
    }
