"""Workers: CPU per request of ``meshcore proxy --workers 2`` against ``--workers 1``.

Run: ``python bench/workers.py [--duration 10] [--rounds 3] [--connections 50]`` (needs ``wrk``).

One upstream (a canned 200, asyncio: cheap, so that the proxy is what is measured) and two
proxies side by side, started as users start them (``python -m meshcore proxy -c FILE
--workers N``), fast codec, router only. wrk drives each in turn, interleaved rounds (each
round starts with the other one), and the CPU of each proxy's whole process tree (the
parent, which supervises and serves the group's admin, and its workers: utime + stime
from /proc) is divided by the requests wrk counted. Printed: req/s, p50, p99, CPU per
request of each (and of the top process alone: with 2 workers the supervisor, which
serves no traffic), per round and the median, and the ratio of 2 workers to 1 (the goal:
within 10%). Absolute figures on a shared machine are noise; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import (
    CannedHttp1,
    cpu_seconds,
    free_port,
    proxy_config,
    serve_canned,
    start,
    stop,
    tree_cpu,
    wrk,
)


def wait_live(admin: int, timeout: float = 60.0) -> None:
    """Wait until the proxy's admin server says every worker is live."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as answer:
                if answer.read() == b"LIVE\n":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    msg = f"the proxy with admin port {admin} did not become live"
    raise RuntimeError(msg)


def admin_requests(admin: int) -> int:
    """``downstream_rq_total`` as the proxy's admin server sums it over its workers."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{admin}/stats?filter=downstream_rq_total", timeout=5
    ) as answer:
        return sum(int(line.rsplit(":", 1)[1]) for line in answer.read().decode().splitlines() if ":" in line)


def main() -> int:
    """Run the benchmark (or, with ``--role upstream``, its upstream)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        serve_canned(CannedHttp1, args.port)
        return 0

    upstream_port = free_port()
    procs = [start([sys.executable, __file__, "--role", "upstream", "--port", str(upstream_port)])]
    proxies: dict[str, tuple[int, int, subprocess.Popen[bytes]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                port, admin = free_port(), free_port()
                config = Path(tmp) / f"workers-{workers}.yaml"
                config.write_text(proxy_config(port, upstream_port, codec="fast", admin=admin))
                proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                    [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--workers", str(workers)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                proxies[f"{workers} worker" + ("s" if workers > 1 else "")] = (port, admin, proc)
            for _port, admin, _proc in proxies.values():
                wait_live(admin)
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in proxies}
            order = list(proxies.items())
            for round_ in range(args.rounds):
                shift = round_ % len(order)
                for label, (port, _admin, proc) in order[shift:] + order[:shift]:
                    # The whole tree's CPU (the figure), and the parent's alone (the supervisor's).
                    pid = proc.pid
                    meters = {
                        "tree": lambda pid=pid: tree_cpu(pid),
                        "parent": lambda pid=pid: cpu_seconds(pid),
                    }
                    run = wrk(port, args.connections, args.duration, meters)
                    run["cpu_us_per_request"] = run["tree"] / run["requests"] * 1e6
                    run["parent_us_per_request"] = run["parent"] / run["requests"] * 1e6
                    runs[label].append(run)
            counted = {label: admin_requests(admin) for label, (_p, admin, _proc) in proxies.items()}
    finally:
        stop([proc for _port, _admin, proc in proxies.values()] + procs)

    print(
        f"wrk -t1 -c{args.connections} -d{args.duration}s x {args.rounds} interleaved rounds, HTTP/1.1 keep-alive,"
        " fast codec, router only; CPU of the proxy's whole process tree; median of the rounds"
    )
    print(
        f"{'':10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'parent':>7} {'errors':>7}"
        "  CPU us/req per round"
    )
    median = {}
    for label, results in runs.items():
        median[label] = statistics.median(r["cpu_us_per_request"] for r in results)
        errors = sum(r["non_2xx"] + (1 if r["socket_errors"] else 0) for r in results)
        rps = statistics.median(r["requests_per_s"] for r in results)
        p50 = statistics.median(r["p50_ms"] for r in results)
        p99 = statistics.median(r["p99_ms"] for r in results)
        parent = statistics.median(r["parent_us_per_request"] for r in results)
        rounds = ", ".join(f"{r['cpu_us_per_request']:.1f}" for r in results)
        print(
            f"{label:10} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {median[label]:>11.1f} {parent:>7.1f}"
            f" {errors:>7.0f}  {rounds}"
        )
    print(
        f"CPU per request, 2 workers / 1 worker: {median['2 workers'] / median['1 worker']:.3f}x (goal: <= 1.10x)"
    )
    print(
        "parent: CPU us/req of the top process alone (with 2 workers, the supervisor, which serves no traffic)"
    )
    print(
        "requests the admin server counts (summed over workers, warm-ups included): "
        + ", ".join(f"{label} {count}" for label, count in counted.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
