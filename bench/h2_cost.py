"""HTTP/2 cost per request: meshcore against a bare trio + h2 forwarder, one command.

Run: ``python bench/h2_cost.py [--duration 5] [--rounds 3] [--requests 3000] [--compare DIR]``.

``--compare DIR`` adds the same proxy imported from another checkout, for a before/after
figure from one run: ``git archive main | tar -x -C /tmp/main`` then ``--compare /tmp/main``.

The issue-14 set-up for HTTP/2: h2load ``-c10 -m10`` with h2c prior knowledge, the proxy
speaking HTTP/1.1 to an nginx backend (98-byte body, as in bench/peers.py). Measured, in
interleaved rounds (median reported): the CPU time per request of each proxy process
(utime + stime from /proc), requests/s and errors; then, in the same processes, the Python
function calls per request over ``--requests`` requests (``sys.setprofile`` switched on
and off by SIGUSR1, see bench/_callcount.py), split by package. Ratios are to the bare
trio + h2 forwarder (bench/_baselines.py) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port
from peers import MESHCORE_CONFIG, Peer, h2load, nginx_backend

HERE = Path(__file__).resolve().parent
SHOWN = 0.5  # calls per request below this are left out of the split by package

VARIANTS = {
    # label: extra http_connection_manager lines (indented for MESHCORE_CONFIG's filters list)
    "meshcore (router only)": "",
}


def count_calls(peer: Peer, out: Path, requests: int, *, verbose: bool = False) -> dict[str, float]:
    """Python calls per request inside ``peer``'s process over ``requests`` h2load requests."""
    assert peer.proc is not None
    out.unlink(missing_ok=True)
    os.kill(peer.proc.pid, signal.SIGUSR1)
    time.sleep(0.2)  # a benchmark, not a test: let the signal land before the load starts
    url = f"http://127.0.0.1:{peer.h2port}/"
    subprocess.run(["h2load", "-t1", "-c10", "-m10", f"-n{requests}", url], capture_output=True, check=True)  # noqa: S603, S607
    os.kill(peer.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not out.exists() or not out.read_text():
        if time.monotonic() > deadline:
            msg = f"{peer.name} wrote no call counts"
            raise RuntimeError(msg)
        time.sleep(0.05)
    counts = json.loads(out.read_text())
    if verbose:
        print(f"{peer.name}: the functions called most, per request")
        for name, n in counts["top"]:
            print(f"  {n / requests:6.1f} {name}")
    per = {"calls": counts["calls"] / requests}
    for package, n in sorted(counts["by_package"].items(), key=lambda kv: -kv[1]):
        per[package] = n / requests
    return per


def report(
    args: argparse.Namespace, cpu: dict[str, list[dict[str, float]]], calls: dict[str, dict[str, float]]
) -> None:
    """Print the medians, the ratios to the bare forwarder, and the calls by package."""
    base = "bare trio + h2"
    table = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in cpu.items()}
    print(
        f"\nHTTP/2 h2c: h2load -c10 -m10 -D{args.duration}, HTTP/1.1 to nginx, median of {args.rounds} rounds"
    )
    print(
        f"{'':32} {'req/s':>8} {'CPU us/req':>11} {'x bare h2':>10} {'calls/req':>10} {'x bare h2':>10} {'errors':>7}"
    )
    for name, r in table.items():
        c = calls[name]["calls"]
        print(
            f"{name:32} {r['rps']:>8.0f} {r['cpu_us']:>11.1f} {r['cpu_us'] / table[base]['cpu_us']:>10.2f}"
            f" {c:>10.0f} {c / calls[base]['calls']:>10.2f} {r['errors']:>7.0f}"
        )
    print("\nPython calls per request by package:")
    for name, per in calls.items():
        parts = ", ".join(f"{k} {v:.0f}" for k, v in per.items() if k != "calls" and v >= SHOWN)
        print(f"  {name}: {parts}")
    print(
        "\nCPU us/request per round: "
        + "; ".join(f"{n}: " + " ".join(f"{r['cpu_us']:.0f}" for r in rows) for n, rows in cpu.items())
    )


def run(args: argparse.Namespace) -> int:
    """Start the backend and the proxies, interleave rounds, print the tables."""
    with tempfile.TemporaryDirectory(prefix="meshcore-h2cost-") as tmp_name:
        tmp = Path(tmp_name)
        backend = nginx_backend(tmp)
        backend_port = backend.port
        me = [sys.executable, __file__]
        peers: list[Peer] = []
        port = free_port()
        argv = [*me, "--role", "h2", "--port", str(port), "--backend", str(backend_port)]
        peers.append(Peer("bare trio + h2", [*argv, "--count-calls", str(tmp / "calls-0.json")], port, port))
        for label, extra in VARIANTS.items():
            port = free_port()
            config = tmp / f"meshcore-{len(peers)}.yaml"
            text = MESHCORE_CONFIG.format(port=port, backend=backend_port, l4="", filters="[router]")
            config.write_text(
                text.replace("              codec: fast\n", "              codec: fast\n" + extra)
            )
            argv = [*me, "--role", "meshcore", "--config", str(config)]
            peers.append(
                Peer(label, [*argv, "--count-calls", str(tmp / f"calls-{len(peers)}.json")], port, port)
            )
        if args.compare:
            # The same proxy from another checkout (say, main exported with ``git archive``),
            # imported first through PYTHONPATH: a before/after figure from one run.
            port = free_port()
            config = tmp / "meshcore-compare.yaml"
            config.write_text(
                MESHCORE_CONFIG.format(port=port, backend=backend_port, l4="", filters="[router]")
            )
            argv = [*me, "--role", "meshcore", "--config", str(config)]
            argv += ["--count-calls", str(tmp / f"calls-{len(peers)}.json")]
            env = {"PYTHONPATH": str(Path(args.compare).resolve())}
            peers.append(Peer(f"meshcore at {Path(args.compare).name}", argv, port, port, env))
        cpu: dict[str, list[dict[str, float]]] = {p.name: [] for p in peers}
        calls: dict[str, dict[str, float]] = {}
        started: list[Peer] = []
        try:
            for peer in (backend, *peers):
                peer.start()
                started.append(peer)
            for round_ in range(args.rounds):
                print(f"round {round_ + 1} of {args.rounds} ...", flush=True)
                for peer in peers:
                    assert peer.proc is not None
                    assert peer.h2port is not None
                    cpu[peer.name].append(h2load(peer.h2port, peer.proc.pid, args.duration, 10, 10))
            for i, peer in enumerate(peers):
                calls[peer.name] = count_calls(peer, tmp / f"calls-{i}.json", args.requests, verbose=args.top)
        finally:
            for peer in started:
                peer.stop()
    report(args, cpu, calls)
    return 0


def main() -> int:
    """Run the benchmark, or one of its server roles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--requests", type=int, default=3000, help="requests over which calls are counted")
    parser.add_argument("--top", action="store_true", help="print the functions called most")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also measure meshcore from the checkout DIR (e.g. main, git archive'd)",
    )
    parser.add_argument("--rounds-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["meshcore", "h2"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count-calls", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role is None:
        return run(args)
    import _callcount

    _callcount.install(args.count_calls)
    if args.role == "meshcore":
        from _common import run_proxy

        run_proxy(args.config)
    else:
        import _baselines

        _baselines.run_h2_forwarder(args.port, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
