"""A real OTLP/HTTP trace receiver for tests: decodes what it gets with ``opentelemetry-proto``."""

from __future__ import annotations

import functools
from typing import Any

import h11
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Collector:
    """Spans received so far, with their resource's ``service.name``; wait for a count."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self.requests = 0
        self._changed = trio.Event()
        self.address: tuple[str, int] = ("", 0)

    @property
    def endpoint(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}/v1/traces"

    def add(self, body: bytes) -> None:
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            service = next(
                a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        self.requests += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> list[tuple[str, Span]]:
        while len(self.spans) < count:
            await self._changed.wait()
        return self.spans


def attributes(span: Span) -> dict[str, Any]:
    """A span's attributes as a dict of plain values."""
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


async def _serve(collector: Collector, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    body = b""
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                collector.add(body)
                body = b""
                reply = ExportTraceServiceResponse().SerializeToString()
                headers = [("content-type", "application/x-protobuf"), ("content-length", str(len(reply)))]
                await stream.send_all(
                    conn.send(h11.Response(status_code=200, headers=headers))
                    + conn.send(h11.Data(data=reply))
                    + conn.send(h11.EndOfMessage())
                )
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


async def serve_collector(
    collector: Collector, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve OTLP/HTTP on a loopback port until cancelled; ``collector.address`` says where."""
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    collector.address = listeners[0].socket.getsockname()[:2]
    task_status.started(collector)
    await trio.serve_listeners(functools.partial(_serve, collector), listeners)
