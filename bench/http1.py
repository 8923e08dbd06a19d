"""HTTP/1.1 benchmark: wrk at 50 keep-alive connections, upstream direct vs. through meshcore.

Run: ``python bench/http1.py [--duration 10] [--connections 50]`` (needs ``wrk``).
``--tracing`` measures the ``tracing`` filter instead: the same chain (fast codec) without
it, with it at 100% sampling and at 1%, exporting to a live OTLP/HTTP sink (a process that
answers 200 to every export), and prints the CPU it adds per request
(``python bench/http1.py --tracing --duration 5 --rounds 7``; the CPU of the proxy includes
the export of its spans: encoding and POSTs run in the proxy).

It starts a minimal upstream (asyncio, a canned 200 per request: cheap, so that the proxy
is what is measured), then drives load with wrk (a) at the upstream directly and (b) at
a meshcore proxy whose chain is the router plus three pass-through filters. For both it
prints requests/s, p50 and p99 latency, and CPU microseconds per request of the server
process (utime + stime from /proc), and the ratios. Both runs happen in the same
invocation, because these machines are noisy: quote ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import CannedHttp1, cpu_seconds, free_port, proxy_config, run_proxy, serve_canned, start, stop
from _common import wrk as run_wrk

# -- the upstream ---------------------------------------------------------------------------


def run_upstream(port: int) -> None:
    """A canned-response HTTP/1.1 server (GET only, keep-alive, pipelining-safe)."""
    serve_canned(CannedHttp1, port)


# -- the proxy with three pass-through filters ----------------------------------------------


def _config(port: int, upstream: int, codec: str, filters: str) -> str:
    return proxy_config(port, upstream, codec=codec, filters=filters)


# -- measuring ------------------------------------------------------------------------------


TRACING = (
    "{{tracing: {{sampler: ratio, ratio: {ratio}, otlp_http: "
    '{{endpoint: "http://127.0.0.1:{sink}/v1/traces", max_queue_size: 8192}}}}}}'
)
PASSTHROUGH = "[passthrough, passthrough, passthrough, router]"


class _Sink(asyncio.Protocol):
    """An OTLP/HTTP sink: reads each export request whole and answers 200 with an empty body."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            length = int(re.search(rb"content-length: *(\d+)", self.buffer[:head_end].lower()).group(1))  # type: ignore[union-attr]
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length :]
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


def run_counted_proxy(config: str, out: str) -> None:
    """A proxy that counts, between SIGUSR2 and SIGUSR1, its Python calls and GC passes.

    Counts do not depend on how busy the machine is, as CPU time does: they say what a
    request costs when the CPU figures scatter. On SIGUSR1 it writes them (JSON) to ``out``.
    """
    profile = cProfile.Profile()
    collections = [0, 0, 0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections[info["generation"]] += 1

    def begin(*_: object) -> None:
        collections[:] = [0, 0, 0]
        gc.callbacks.append(on_gc)
        profile.enable()

    def end(*_: object) -> None:
        profile.disable()
        gc.callbacks.remove(on_gc)
        stats = profile.getstats()
        calls: int = sum(entry.callcount for entry in stats)
        # One connection-manager record() per request.
        requests: int = sum(
            e.callcount
            for e in stats
            if getattr(e.code, "co_name", "") == "record"
            and "http_manager" in getattr(e.code, "co_filename", "")
        )
        Path(out).write_text(json.dumps({"calls": calls, "requests": requests, "gc": collections}))

    signal.signal(signal.SIGUSR2, begin)
    signal.signal(signal.SIGUSR1, end)
    run_proxy(config)


def count_calls(targets: dict[str, tuple[int, int]], outs: dict[str, Path], connections: int) -> list[str]:
    """Python calls and GC passes per request of each proxy, over one wrk run each (lines to print)."""
    lines = ["Python calls (cProfile: function calls and coroutine resumptions) and GC passes per request:"]
    for label, (port, pid) in targets.items():
        os.kill(pid, signal.SIGUSR2)
        run_wrk(port, connections, 5, warm_up=False)
        os.kill(pid, signal.SIGUSR1)
        for _ in range(100):
            if outs[label].exists():
                break
            time.sleep(0.05)
        counted = json.loads(outs[label].read_text())
        n = max(counted["requests"], 1)
        gen0, gen1, gen2 = (g / n * 1000 for g in counted["gc"])
        lines.append(
            f"{label:14} {counted['calls'] / n:7.1f} calls/req   GC passes per 1000 requests: "
            f"gen0 {gen0:.1f}, gen1 {gen1:.2f}, gen2 {gen2:.3f}   ({counted['requests']} requests)"
        )
    return lines


def run_tracing(args: argparse.Namespace, me: list[str], upstream_port: int, procs: list[Any]) -> int:
    """The tracing variant: the CPU per request that the tracing filter adds.

    The three proxies run side by side and are measured in turns, ``--rounds`` times (the
    machine is shared and noisy): the median of each one's CPU per request is compared.
    """
    sink_port = free_port()
    procs.append(start([*me, "--role", "sink", "--port", str(sink_port)]))
    variants = {
        "no tracing": PASSTHROUGH,
        "tracing 100%": f"[{TRACING.format(ratio=1.0, sink=sink_port)}, passthrough, passthrough, router]",
        "tracing 1%": f"[{TRACING.format(ratio=0.01, sink=sink_port)}, passthrough, passthrough, router]",
    }
    ports: dict[str, tuple[int, int]] = {}
    counts: dict[str, Path] = {}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in variants}
    tmp = tempfile.mkdtemp()  # configs and counts; removed at the end
    try:
        for i, (label, filters) in enumerate(variants.items()):
            port = free_port()
            config = Path(tmp) / f"bench-{i}.yaml"
            config.write_text(_config(port, upstream_port, "fast", filters))
            counts[label] = Path(tmp) / f"counts-{i}.json"
            procs.append(
                start([*me, "--role", "counted-proxy", "--config", str(config), "--out", str(counts[label])])
            )
            ports[label] = (port, procs[-1].pid)
        order = list(ports.items())
        for round_ in range(args.rounds):
            # Each round starts with another variant: one measured just after the 100% proxy
            # shares the machine with that proxy's last exports.
            shift = round_ % len(order)
            for label, (port, pid) in order[shift:] + order[:shift]:
                runs[label].append(wrk(port, pid, args.duration, args.connections))
        counted = count_calls(ports, counts, args.connections) if args.calls else []
    finally:
        shutil.rmtree(tmp)
    median = {
        label: statistics.median(r["cpu_us_per_request"] for r in results) for label, results in runs.items()
    }
    print(
        f"wrk -c{args.connections} -d{args.duration}s x {args.rounds} rounds, HTTP/1.1 keep-alive, fast codec, "
        "spans to a live OTLP sink; median of the rounds"
    )
    print(f"{'':14} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/req':>18} {'errors':>7}")
    for label, results in runs.items():
        errors = sum(r["non_2xx"] + r["socket_errors"] for r in results)
        rps = statistics.median(r["requests_per_s"] for r in results)
        p50 = statistics.median(r["p50_ms"] for r in results)
        p99 = statistics.median(r["p99_ms"] for r in results)
        print(f"{label:14} {rps:>10.0f} {p50:>8.2f} {p99:>8.2f} {median[label]:>18.1f} {errors:>7.0f}")
        rounds = ", ".join(f"{r['cpu_us_per_request']:.1f}" for r in results)
        print(f"{'':14} CPU us/req per round: {rounds}")
    base = median["no tracing"]
    for label in ("tracing 100%", "tracing 1%"):
        # Round by round too (a round measures the three one after the other): the spread.
        deltas = sorted(
            r["cpu_us_per_request"] - b["cpu_us_per_request"]
            for r, b in zip(runs[label], runs["no tracing"], strict=True)
        )
        print(
            f"{label}: {median[label] - base:+.1f} us CPU per request over no tracing, "
            f"ratio {median[label] / base:.3f} (rounds' differences: median {statistics.median(deltas):+.1f}, "
            f"{deltas[0]:+.1f} to {deltas[-1]:+.1f})"
        )
    for line in counted:
        print(line)
    if args.json:
        print(json.dumps(runs))
    return 0


def wrk(port: int, server_pid: int, duration: int, connections: int) -> dict[str, float]:
    """Run wrk against a port; measure the server process's CPU during the run."""
    run = run_wrk(port, connections, duration, {"cpu_seconds": lambda: cpu_seconds(server_pid)})
    return {
        "requests_per_s": run["requests_per_s"],
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
        "cpu_us_per_request": run["cpu_seconds"] / run["requests"] * 1e6,
        "requests": run["requests"],
        "non_2xx": run["non_2xx"],
        "socket_errors": 1 if run["socket_errors"] else 0,
    }


def main() -> int:  # noqa: PLR0915 - a flat script: the roles, then the variants
    """Run the benchmark (or, with ``--role``, one of its server processes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--tracing", action="store_true", help="measure the tracing filter's cost")
    parser.add_argument("--rounds", type=int, default=5, help="--tracing: measured turns per variant")
    parser.add_argument(
        "--calls", action="store_true", help="--tracing: count Python calls and GC passes per request too"
    )
    parser.add_argument(
        "--role", choices=["upstream", "proxy", "counted-proxy", "sink"], help=argparse.SUPPRESS
    )
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
        return 0
    if args.role == "proxy":
        run_proxy(args.config)
        return 0
    if args.role == "counted-proxy":
        run_counted_proxy(args.config, args.out)
        return 0
    if args.role == "sink":
        serve_canned(_Sink, args.port)
        return 0

    upstream_port = free_port()
    me = [sys.executable, __file__]
    procs = [start([*me, "--role", "upstream", "--port", str(upstream_port)])]
    results: dict[str, dict[str, float]] = {}
    if args.tracing:
        try:
            return run_tracing(args, me, upstream_port, procs)
        finally:
            stop(procs)
    try:
        results["upstream direct"] = wrk(upstream_port, procs[0].pid, args.duration, args.connections)
        with tempfile.TemporaryDirectory() as tmp:
            for codec in ("h11", "fast"):
                port = free_port()
                config = Path(tmp) / f"bench-{codec}.yaml"
                config.write_text(_config(port, upstream_port, codec, PASSTHROUGH))
                procs.append(start([*me, "--role", "proxy", "--config", str(config)]))
                results[f"meshcore ({codec})"] = wrk(port, procs[-1].pid, args.duration, args.connections)
    finally:
        stop(procs)
    direct = results["upstream direct"]
    print(f"wrk -c{args.connections} -d{args.duration}s, HTTP/1.1 keep-alive, 13-byte responses;")
    print("meshcore chain: three pass-through filters + router")
    print(f"{'':18} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/req':>18} {'errors':>7}")
    for label, r in results.items():
        errors = r["non_2xx"] + r["socket_errors"]
        print(
            f"{label:18} {r['requests_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
            f" {r['cpu_us_per_request']:>18.1f} {errors:>7.0f}"
        )
    for label, r in results.items():
        if label == "upstream direct":
            continue
        print(
            f"ratio {label} / direct: throughput {r['requests_per_s'] / direct['requests_per_s']:.3f}, "
            f"p50 {r['p50_ms'] / direct['p50_ms']:.2f}x, "
            f"CPU per request {r['cpu_us_per_request'] / direct['cpu_us_per_request']:.1f}x"
        )
    h11, fast = results["meshcore (h11)"], results["meshcore (fast)"]
    print(f"fast codec vs h11: CPU per request {fast['cpu_us_per_request'] / h11['cpu_us_per_request']:.2f}x")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
