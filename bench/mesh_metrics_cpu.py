"""The ``mesh_metrics`` filter's own CPU per request, in one process, without sockets.

Run: ``python bench/mesh_metrics_cpu.py [--requests 20000] [--rounds 5]``.

``bench/mesh_hop.py`` measures whole sidecars; this measures the filter alone, both sides
of the hop: the outbound sidecar's (reporter ``source``: sets the peer-metadata header on
the request, reads the destination's from the response) and the inbound one's (reporter
``destination``: reads the source's from the request, on an mTLS connection whose peer
has a SPIFFE ID, and answers with its own). Each request goes through the filter in the
testing kit's FilterHarness, the upstream answers as the peer sidecar would (with its
exchange header), and the completion observers run as the connection manager runs them,
so the counting is measured too. A pass-through filter is the baseline; variants run in
turns, and the median of the rounds is printed with the difference to the baseline, and
the Python function calls per request (a figure a loaded machine does not move).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import trio
import trio.testing
from _common import passthrough_registry

import meshcore
from meshcore import telemetry
from meshcore.connection import Connection, PeerTls
from meshcore.testing.filters import FilterHarness, make_request

SOURCE = telemetry.Workload("client", "bench", "client", "v1")
DESTINATION = telemetry.Workload("app", "bench", "app", "v1")


def _connection() -> Connection:
    """An mTLS connection from the source sidecar (its SPIFFE ID is the principal)."""
    tls = PeerTls(version="TLSv1.3", uri_sans=("spiffe://cluster.local/ns/bench/sa/client",))
    return Connection(
        trio.testing.MemoryReceiveStream(),  # type: ignore[arg-type]
        id=1,
        peer="127.0.0.1:40000",
        local="127.0.0.1:15006",
        listener="inbound",
        tls=tls,
    )


def _harness(variant: str) -> tuple[FilterHarness, list[tuple[str, str]], Any]:
    registry = passthrough_registry()
    if variant == "none":
        return FilterHarness("passthrough", None, registry=registry), [], None
    reporter = variant
    own = SOURCE if reporter == "source" else DESTINATION
    config = {"reporter": reporter, "workload": own.workload, "namespace": own.namespace}
    config |= {"service": own.service, "version": own.version}
    harness = FilterHarness("mesh_metrics", config, registry=registry)
    peer = (DESTINATION if reporter == "source" else SOURCE).encode().decode("latin-1")
    headers = [("user-agent", "wrk")]
    if reporter == "destination":
        headers.append((telemetry.PEER_METADATA_HEADER.decode(), peer))
    return harness, headers, _connection() if reporter == "destination" else None


def measure(variant: str, requests: int) -> tuple[float, float]:
    """CPU µs and Python calls per request through ``variant`` (``none``, ``source``, ``destination``)."""
    harness, headers, connection = _harness(variant)
    body = b"y" * 1024
    answer_header = (DESTINATION.encode() if variant == "source" else None, None)

    async def upstream(request: meshcore.Request) -> meshcore.Response:
        request.info.cluster_name = "backend"
        response = meshcore.Response.local(200, body)
        if answer_header[0] is not None:
            response.headers.raw.append((telemetry.PEER_METADATA_HEADER, answer_header[0]))
        return response

    harness.next = upstream

    async def one() -> None:
        request = make_request("GET", "/api/items", headers=headers, connection=connection)
        response = await harness(request)
        request.info.complete(request, response)

    async def run() -> tuple[float, float]:
        for _ in range(200):  # label sets seen, caches warm
            await one()
        start = time.process_time()
        for _ in range(requests):
            await one()
        cpu = (time.process_time() - start) / requests * 1e6
        calls = [0]

        def count(_frame: Any, event: str, _arg: Any) -> None:
            if event in ("call", "c_call"):
                calls[0] += 1

        sys.setprofile(count)
        for _ in range(1000):
            await one()
        sys.setprofile(None)
        return cpu, calls[0] / 1000

    return trio.run(run)


def main() -> int:
    """Measure the variants in turns; print medians and the filter's cost over the baseline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = {
        "pass-through": "none",
        "mesh_metrics source": "source",
        "mesh_metrics destination": "destination",
    }
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, variant in variants.items():
            runs[label].append(measure(variant, args.requests))
    base = statistics.median(cpu for cpu, _ in runs["pass-through"])
    base_calls = statistics.median(calls for _, calls in runs["pass-through"])
    for label, rows in runs.items():
        cpu, calls = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        extra = (
            "" if label == "pass-through" else f"  (+{cpu - base:.1f} us, +{calls - base_calls:.0f} calls)"
        )
        print(f"{label:26} {cpu:6.1f} us CPU per request, {calls:5.0f} Python calls{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
