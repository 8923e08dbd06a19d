"""The tracing filter's own CPU per request, in one process, without sockets: 100%, 1%, none.

Run: ``python bench/tracing_cpu.py [--requests 20000] [--rounds 3]``.

``bench/http1.py --tracing`` measures the same through a real proxy under wrk; on a shared,
loaded machine its rounds scatter by tens of microseconds. This measures the filter alone:
a request goes through the filter (or a pass-through one) in the testing kit's
FilterHarness, one upstream attempt is recorded as the cluster records it, the completion
observers run as the connection manager runs them, and the queued spans are encoded as
the exporter encodes them, a batch whenever ``max_batch`` spans wait (when ``submit`` wakes
the exporter task; that CPU is counted per request too). Process CPU time, median of the
rounds (and their spread), run side by side in turns.

An earlier version encoded every span at the end of a round: 40 000 live spans made each
garbage-collector pass longer, about 10 us per request that a proxy, whose queue never
holds more than ``max_queue_size`` spans and is drained every ``max_batch``, does not pay.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import trio
from _common import passthrough_registry

import meshcore
from meshcore.http.messages import UpstreamAttempt
from meshcore.telemetry.otlp import encode_batch
from meshcore.testing.filters import FilterHarness, make_request


async def _upstream(request: meshcore.Request) -> meshcore.Response:
    """The cluster's part: one attempt, recorded and observed as Cluster.attempt does."""
    info = request.info
    attempt = UpstreamAttempt(len(info.attempts) + 1, "backend", "127.0.0.1:8080")
    info.attempts.append(attempt)
    if info.on_attempt is not None:
        info.on_attempt(request, attempt)
    attempt.status, attempt.end = 200, time.monotonic()
    if info.on_attempt is not None:
        info.on_attempt(request, attempt)
    return meshcore.Response.local(200, b"hello, world\n")


def measure(ratio: float | None, requests: int) -> float:
    """CPU microseconds per request: with tracing at ``ratio``, or a pass-through filter (None)."""
    registry = passthrough_registry()
    if ratio is None:
        harness = FilterHarness("passthrough", None, registry=registry)
    else:
        otlp = {"endpoint": "http://127.0.0.1:9/v1/traces", "max_queue_size": 10_000_000}
        harness = FilterHarness(
            "tracing", {"sampler": "ratio", "ratio": ratio, "otlp_http": otlp}, registry=registry
        )
    harness.next = _upstream
    exporters = _exporters()
    headers = {"user-agent": "wrk", "x-request-id": "abc"}

    async def run() -> float:
        start = time.process_time()
        for _ in range(requests):
            request = make_request("GET", "/api/items?x=1", headers=headers)
            response = await harness(request)
            request.info.complete(request, response)
            for exporter in exporters:
                if len(exporter.queue) >= exporter.max_batch:  # submit() wakes the exporter task here
                    _export(exporter)
        for exporter in exporters:
            _export(exporter)
        return (time.process_time() - start) / requests * 1e6

    return trio.run(run)


def _export(exporter: Any) -> None:
    """What the exporter task does with the queued spans, off the request path: batch them."""
    queue = exporter.queue
    while queue:
        batch = [queue.popleft() for _ in range(min(exporter.max_batch, len(queue)))]
        encode_batch(batch, exporter.resource, exporter.scope)


def _exporters() -> list[Any]:
    """The exporters made so far, emptied (a harness runs none: their spans are encoded here)."""
    found = [o for o in gc.get_objects() if isinstance(o, meshcore.telemetry.OtlpHttpExporter)]
    for exporter in found:
        exporter.queue.clear()
    return found


def main() -> int:
    """Measure the three variants in turns and print the medians and the differences."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants: dict[str, float | None] = {"no tracing": None, "tracing 100%": 1.0, "tracing 1%": 0.01}
    runs: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, ratio in variants.items():
            runs[label].append(measure(ratio, args.requests))
    median = {label: statistics.median(r) for label, r in runs.items()}
    for label, results in runs.items():
        print(
            f"{label:14} {median[label]:6.1f} us CPU per request (rounds: {', '.join(f'{r:.1f}' for r in results)})"
        )
    base = runs["no tracing"]
    for label in ("tracing 100%", "tracing 1%"):
        # Round by round (the variants of a round ran back to back): the spread of the cost.
        costs = sorted(r - b for r, b in zip(runs[label], base, strict=True))
        print(
            f"{label}: +{median[label] - median['no tracing']:.1f} us CPU per request over no tracing "
            f"(per round: {costs[0]:+.1f} to {costs[-1]:+.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
