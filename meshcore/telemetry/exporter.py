"""The OTLP/HTTP span exporter: a bounded queue filled by requests, emptied by a proxy task.

Requests only :meth:`OtlpHttpExporter.submit` finished spans (once the response has been
sent): each is encoded at once (a bytes object is cheap to keep, for the garbage
collector) and appended to a bounded queue, never a wait. The exporter runs as a proxy service (see
:mod:`meshcore.runtime.services`): every ``interval``, or as soon as ``max_batch`` spans
wait, it makes a batch of them (:mod:`meshcore.telemetry.otlp`) and POSTs it to the collector
on a kept-alive HTTP/1.1 connection, each export bounded by ``timeout``. A dead or slow
collector costs spans, never requests: a full queue drops new spans, a failed export drops
its batch, both counted (``tracing_spans_dropped_total`` by reason), and after a failure
the exporter backs off (up to ``MAX_BACKOFF``) so that a dead collector costs no CPU.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import h11
import structlog
import trio

from meshcore.runtime.stats import Stats
from meshcore.telemetry.otlp import Attribute, SpanData, encode_batch, encode_resource, encode_span_message

__all__ = ["MAX_BACKOFF", "OtlpHttpExporter", "parse_endpoint"]

log = structlog.get_logger("meshcore.tracing")

MAX_BACKOFF = 5.0
"""Longest pause, in seconds, between export attempts to a failing collector."""
RECEIVE_SIZE = 64 * 1024


def parse_endpoint(url: str) -> tuple[str, str, int, str]:
    """``http[s]://host:port/path`` as ``(scheme, host, port, path)``; ValueError if not that."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = f"must be an http:// or https:// URL such as http://127.0.0.1:4318/v1/traces, got {url!r}"
        raise ValueError(msg)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as err:
        msg = f"has an invalid port: {url!r}"
        raise ValueError(msg) from err
    return parts.scheme, parts.hostname, port, parts.path or "/v1/traces"


class OtlpHttpExporter:
    """Exports spans to one OTLP/HTTP collector endpoint (a proxy service).

    Args:
        endpoint: the collector's URL (``http://127.0.0.1:4318/v1/traces``).
        resource: the resource attributes (``service.name``, ...), encoded once.
        stats: where to count exported and dropped spans.
        headers: extra request headers (an API key for a hosted backend).
        timeout: seconds one export (connect, send, answer) may take.
        max_queue: spans waiting at most; more are dropped.
        max_batch: spans per export request at most.
        interval: seconds between exports when fewer than ``max_batch`` spans wait.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        resource: Sequence[Attribute],
        stats: Stats,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_queue: int = 2048,
        max_batch: int = 512,
        interval: float = 1.0,
        version: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.scheme, self.host, self.port, self.path = parse_endpoint(endpoint)
        self.resource, self.scope = encode_resource(resource, "meshcore", version)
        self.headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.timeout = timeout
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.interval = interval
        self.queue: deque[bytes] = deque()
        """Spans waiting for export, each a ``Span`` message (tag and length are added in the batch)."""
        self._wake = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        self._stream: trio.abc.Stream | None = None
        self._codec: h11.Connection | None = None
        labels = {"endpoint": endpoint}
        self.stat_exported = stats.counter("tracing_spans_exported_total", **labels)
        self.stat_queue_full = stats.counter("tracing_spans_dropped_total", reason="queue_full", **labels)
        self.stat_failed = stats.counter("tracing_spans_dropped_total", reason="export_failed", **labels)
        self.stat_exports_failed = stats.counter("tracing_exports_failed_total", **labels)
        self.stat_stopped = stats.counter("tracing_spans_dropped_total", reason="exporter_stopped", **labels)
        self._done = False

    def submit(self, span: SpanData) -> None:
        """Queue a finished span for export (never blocks; drops and counts when full)."""
        self.submit_encoded(encode_span_message(span))

    def submit_encoded(self, span: bytes) -> None:
        """Queue a finished span, a ``Span`` message (:func:`~meshcore.telemetry.otlp.encode_span_fields`).

        Never blocks; drops and counts when full. Spans wait encoded: one bytes object
        each, which the garbage collector never walks.
        """
        queue = self.queue
        if self._done:
            # Its task has ended (no live Snapshot uses it, or the proxy stopped): a request
            # of a draining filter chain still finishing. Nothing will export it: count it.
            self.stat_stopped.value += 1
            return
        if len(queue) >= self.max_queue:
            self.stat_queue_full.value += 1
            return
        queue.append(span)
        if len(queue) >= self.max_batch:
            self._wake.set()

    def stop(self) -> None:
        """Export what is queued, then return from :meth:`run` (the proxy is stopping)."""
        self._stopping = True
        self._wake.set()
        self._stopped.set()

    async def run(self) -> None:
        """Export batches until stopped (a proxy service task).

        Full batches go as soon as they are full; what is left waits for the next full batch
        or the interval, whichever comes first. (Exporting whatever had queued during the
        last export made, under load, one export request per few spans, each with its own
        request head, answer, syscalls and task switches.)
        """
        backoff = 0.0
        queue = self.queue
        try:
            while True:
                everything = True  # the interval has passed, or the proxy is stopping
                if backoff and not self._stopping:
                    # The collector failed: wait it out, whatever queues up meanwhile.
                    with trio.move_on_after(backoff):
                        await self._stopped.wait()
                elif not self._stopping and len(queue) < self.max_batch:
                    with trio.move_on_after(self.interval) as waited:
                        await self._wake.wait()
                    everything = waited.cancelled_caught or self._stopping
                else:
                    everything = self._stopping
                self._wake = trio.Event()
                while len(queue) >= self.max_batch or (everything and queue):
                    batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                    if await self._export(batch, failing=bool(backoff)):
                        if backoff:
                            log.info("collector_recovered", endpoint=self.endpoint)
                        backoff = 0.0
                    else:
                        backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF)
                        if not self._stopping:
                            break
                    everything = everything or self._stopping
                if self._stopping and not queue:
                    return
        finally:
            self._done = True
            if self.queue:  # cancelled (past the stop grace) with spans still waiting
                self.stat_stopped.value += len(self.queue)
                self.queue.clear()
            self._close()

    async def _export(self, batch: list[bytes], *, failing: bool) -> bool:
        """POST one batch; True if the collector took it. Failures are counted (and logged once)."""
        body = encode_batch(batch, self.resource, self.scope)
        failure = ""
        status = 0
        with trio.move_on_after(self.timeout) as scope:
            try:
                status = await self._post(body)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as err:
                failure = str(err) or type(err).__name__
        if scope.cancelled_caught:
            failure = f"no answer within {self.timeout:g}s"
        elif not failure and not 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
            failure = f"the collector answered {status}"
        if not failure:
            self.stat_exported.value += len(batch)
            return True
        self._close()
        self.stat_failed.value += len(batch)
        self.stat_exports_failed.value += 1
        if not failing:  # once per outage, not once per batch
            log.warning("spans_dropped", endpoint=self.endpoint, spans=len(batch), reason=failure)
        return False

    async def _connect(self) -> tuple[trio.abc.Stream, h11.Connection]:
        if self._stream is None or self._codec is None:
            stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
            if self.scheme == "https":
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=self.host)
            self._stream, self._codec = stream, h11.Connection(h11.CLIENT)
        return self._stream, self._codec

    async def _post(self, body: bytes) -> int:
        stream, codec = await self._connect()
        headers = [
            (b"host", f"{self.host}:{self.port}".encode()),
            (b"content-type", b"application/x-protobuf"),
            (b"content-length", str(len(body)).encode()),
            *self.headers,
        ]
        head = codec.send(h11.Request(method="POST", target=self.path, headers=headers)) or b""
        # The body as it is (a batch is some hundreds of kilobytes): not joined to the head.
        pieces = codec.send_with_data_passthrough(h11.Data(data=body)) or []
        end = codec.send(h11.EndOfMessage()) or b""
        await stream.send_all(head)
        for piece in pieces:
            await stream.send_all(piece)
        if end:
            await stream.send_all(end)
        status = 0
        while True:
            event = codec.next_event()
            if event is h11.NEED_DATA:
                codec.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                msg = "the collector closed the connection"
                raise trio.BrokenResourceError(msg)
        if codec.our_state is h11.DONE and codec.their_state is h11.DONE:
            codec.start_next_cycle()
        else:
            self._close()
        return status

    def _close(self) -> None:
        if self._stream is not None:
            stream = self._stream
            if isinstance(stream, trio.SSLStream):
                stream = stream.transport_stream
            if isinstance(stream, trio.SocketStream):
                stream.socket.close()
        self._stream = self._codec = None

    def __repr__(self) -> str:
        return f"<OtlpHttpExporter {self.endpoint} queued={len(self.queue)}>"
