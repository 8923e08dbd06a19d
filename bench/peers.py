"""meshcore against its peers: nginx, proxy.py, mitmproxy and bare trio baselines, one backend.

Run: ``python bench/peers.py [--duration 5] [--rounds 3] [--protocols http1,http2] [--compare DIR]``.

``--compare DIR`` adds both meshcore set-ups imported from another checkout (``git archive
main | tar -x -C /tmp/main``, then ``--compare /tmp/main``), measured in the same rounds:
a before/after figure from one run, with its ratios to the same proxy.py.

Every proxy stands in front of the same backend (Debian's nginx answering a 98-byte body),
pinned to one worker process. Load comes from wrk (HTTP/1.1 keep-alive, ``-t1 -c50``) and
h2load (HTTP/2 cleartext with prior knowledge, ``-c10 -m10``); the proxies speak HTTP/1.1
to the backend. Rounds are interleaved (every proxy once per round, in turn) because these
machines are noisy, and the median of the rounds is reported: requests/s, p50 and p99
latency, the proxy's CPU time per request (utime + stime of its whole process tree from
/proc: the stable figure when everything shares two cores), and its idle RSS; then the
ratios to proxy.py and to mitmproxy. ``bench/h1_calls.py`` prints meshcore's Python calls per
proxied request, a figure the shared CPU does not blur.

Peers come from their packages, never from copied code:

- nginx: Debian's ``nginx-light`` (``apt-get install nginx-light``), also the backend;
- proxy.py and mitmproxy: ``pip install proxy.py`` / ``pip install mitmproxy``, each in a
  virtualenv of its own so that their pins do not meet meshcore's; ``--setup`` creates
  them under ``bench/.peers/`` (or point ``--proxypy`` / ``--mitmdump`` at executables).

proxy.py (2.4.10, the newest on PyPI) is measured in both of its modes, one acceptor each
(``--num-acceptors 1``): ``proxy.py`` is its default threadless mode (one selector loop),
``proxy.py (threaded)`` adds ``--threaded`` (a thread per client connection); the ratios are
to whichever of the two costs less CPU per request in the run. Both run the same reverse-proxy
plugin, written here against proxy.py's documented plugin API (a dynamic route whose
``handle_route`` returns a ``TcpServerConnection``): one kept-alive backend connection per
client connection, as nginx's ``keepalive`` and meshcore's pool do. proxy.py's own static
routes (``routes()`` returning ``(pattern, [url])``) cannot be measured in the threadless
mode: ``ReverseProxy.handle_request`` calls ``initialize_upstream`` for every request, a new
``TcpServerConnection`` that replaces the previous one without closing it; the old socket is
closed when collected, the kernel drops it from the epoll set and hands its descriptor number
to the next socket, while ``Threadless.registered_events_by_work_ids`` still records the
number as registered, so the next ``selector.modify`` fails and ends the loop::

    File ".../proxy/core/work/threadless.py", line 178, in _update_work_events
      self.selector.modify(
    File ".../selectors.py", line 389, in modify
      self._selector.modify(key.fd, selector_events)
    FileNotFoundError: [Errno 2] No such file or directory

after which every kept-alive connection stalls after its first response. (In the threaded mode
the static routes work, at the price of a backend connect per request.)

The meshcore proxy runs the issue's chain: ``connection_limit`` (L4), then ``fault``
(no fault configured to fire), ``local_ratelimit`` (a bucket far above the load) and the
router, with the fast HTTP/1.1 codec on both sides. ``meshcore (router only)`` drops the
three filters. The baselines (bench/_baselines.py) are a trio byte relay with no HTTP
parsing (the trio I/O floor), a bare trio + h11 forwarder and a bare trio + h2 forwarder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import free_port, tree_cpu, tree_rss_mib, wait_listening
from _common import h2load as run_h2load
from _common import wrk as run_wrk

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"
BODY = "meshcore bench: the same 98-byte response body for every proxy measured in this run. " + "x" * 13
assert len(BODY) == 98  # noqa: PLR2004 - the size the issue's figures were measured with

# -- configs --------------------------------------------------------------------------------

NGINX_COMMON = """
worker_processes 1;
daemon off;
pid {tmp}/nginx-{name}.pid;
error_log {tmp}/nginx-{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    keepalive_requests 1000000;
{body}
}}
"""

NGINX_BACKEND = """
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
"""

NGINX_PROXY = """
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{h2port} http2 backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

MESHCORE_CONFIG = """
admin: {{enabled: false}}
listeners:
  - name: bench
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
{l4}          - http_connection_manager:
              route_config: main
              codec: fast
              http_filters: {filters}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            cluster: backend
clusters:
  - name: backend
    codec: fast
    endpoints: ["127.0.0.1:{backend}"]
"""
CHAIN_L4 = "          - connection_limit: {max_connections: 100000}\n"
CHAIN_FILTERS = (
    "[{fault: {abort: {http_status: 503, percentage: 0}}},"
    " {local_ratelimit: {max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s}}, router]"
)

PROXYPY_PLUGIN = """
\"\"\"A proxy.py reverse-proxy plugin: one kept-alive backend connection per client connection.\"\"\"
import os
from urllib.parse import urlsplit

from proxy.core.connection import TcpServerConnection
from proxy.http.server import ReverseProxyBasePlugin

_BACKEND = urlsplit(os.environ["BENCH_BACKEND"])


class BenchReverseProxy(ReverseProxyBasePlugin):
    upstream = None

    def routes(self):
        return [r"/.*"]

    def handle_route(self, request, pattern):
        if self.upstream is None or self.upstream.closed:
            self.upstream = TcpServerConnection(_BACKEND.hostname, _BACKEND.port)
            self.upstream.connect()
        self.upstream.queue(memoryview(request.build()))
        return self.upstream
"""


# -- processes ------------------------------------------------------------------------------


class Peer:
    """A proxy under test: how to start it, its ports, its process."""

    def __init__(
        self, name: str, argv: list[str], port: int, h2port: int | None, env: dict[str, str] | None = None
    ):
        self.name = name
        self.argv = argv
        self.port = port
        self.h2port = h2port
        self.env = env
        self.proc: subprocess.Popen[Any] | None = None
        self.idle_rss = 0.0

    def start(self) -> None:
        """Start the process; wait until it listens; note its idle memory."""
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(  # noqa: S603 - argv built here
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        wait_listening(self.port, self.proc)
        time.sleep(0.5)  # a benchmark, not a test: let it settle before reading its idle memory
        self.idle_rss = tree_rss_mib(self.proc.pid)

    def stop(self) -> None:
        """Terminate the process (killed if it lingers)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- load -----------------------------------------------------------------------------------


def wrk(port: int, pid: int, duration: int, connections: int) -> dict[str, float]:
    """Load ``port`` with ``wrk -t1``; measure the CPU of ``pid``'s tree during the run."""
    run = run_wrk(port, connections, duration, {"cpu": lambda: tree_cpu(pid)})
    return {
        "rps": run["requests_per_s"],
        "p50": run["p50_ms"],
        "p99": run["p99_ms"],
        "cpu_us": run["cpu"] / max(run["requests"], 1) * 1e6,
        "errors": run["non_2xx"] + run["socket_errors"],
    }


def wrk_one_connection(port: int, duration: int) -> float:
    """p99 in ms at one connection (latency added by the proxy when nothing queues)."""
    return run_wrk(port, 1, duration, warm_up=False)["p99_ms"]


def h2load(port: int, pid: int, duration: int, connections: int, streams: int) -> dict[str, float]:
    """h2load (h2c prior knowledge) against ``port``; the CPU of ``pid``'s tree during the run."""
    run = run_h2load(port, connections, streams, duration, {"cpu": lambda: tree_cpu(pid)})
    return {
        "rps": run["requests_per_s"],
        "p50": run["mean_ms"],  # h2load prints min, max, mean: the mean stands in
        "p99": run["max_ms"],  # and the max for the tail
        "cpu_us": run["cpu"] / max(run["succeeded"], 1) * 1e6,
        "errors": run["failed"] + run["errored"],
    }


# -- the run --------------------------------------------------------------------------------


def setup_peers() -> None:
    """Create bench/.peers/{proxypy,mitmproxy} virtualenvs with the peers from PyPI."""
    for name, package in (("proxypy", "proxy.py==2.4.10"), ("mitmproxy", "mitmproxy")):
        venv = PEERS_DIR / name
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", package], check=True)  # noqa: S603
    print(f"peers installed under {PEERS_DIR}")


def build_peers(args: argparse.Namespace, tmp: Path, backend: int) -> list[Peer]:
    """Every proxy this run measures (those whose software is here)."""
    me = [sys.executable, str(HERE / "peers.py")]
    peers: list[Peer] = []
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port, h2port = free_port(), free_port()
    conf = tmp / "nginx-proxy.conf"
    conf.write_text(
        NGINX_COMMON.format(
            tmp=tmp, name="proxy", body=NGINX_PROXY.format(port=port, h2port=h2port, backend=backend)
        )
    )
    peers.append(Peer("nginx", [nginx, "-c", str(conf)], port, h2port))
    checkouts: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if args.compare:
        checkouts.append((f" at {Path(args.compare).name}", _checkout_env(Path(args.compare))))
    for suffix, env in checkouts:
        for label, l4, filters in (
            ("meshcore", CHAIN_L4, CHAIN_FILTERS),
            ("meshcore (router only)", "", "[router]"),
        ):
            port = free_port()
            config = tmp / f"meshcore-{len(peers)}.yaml"
            config.write_text(MESHCORE_CONFIG.format(port=port, backend=backend, l4=l4, filters=filters))
            argv = [*me, "--role", "meshcore", "--config", str(config)]
            peers.append(Peer(label + suffix, argv, port, port, env))
    proxypy = args.proxypy or PEERS_DIR / "proxypy" / "bin" / "proxy"
    if Path(proxypy).exists():
        (tmp / "bench_proxypy.py").write_text(PROXYPY_PLUGIN)
        env = {"BENCH_BACKEND": f"http://127.0.0.1:{backend}", "PYTHONPATH": str(tmp)}
        for label, mode in (("proxy.py", []), ("proxy.py (threaded)", ["--threaded"])):
            port = free_port()
            argv = [
                str(proxypy), "--hostname", "127.0.0.1", "--port", str(port), "--num-acceptors", "1", *mode,
                "--enable-reverse-proxy", "--plugins", "bench_proxypy.BenchReverseProxy", "--log-level", "ERROR",
            ]  # fmt: skip
            peers.append(Peer(label, argv, port, None, env))
    else:
        print(f"proxy.py not found at {proxypy}: run with --setup (skipped)")
    mitmdump = args.mitmdump or PEERS_DIR / "mitmproxy" / "bin" / "mitmdump"
    if Path(mitmdump).exists():
        port = free_port()
        argv = [str(mitmdump), "--mode", f"reverse:http://127.0.0.1:{backend}", "--listen-host", "127.0.0.1",
                "--listen-port", str(port), "-q", "--set", "connection_strategy=lazy"]  # fmt: skip
        peers.append(Peer("mitmproxy", argv, port, None))
    else:
        print(f"mitmdump not found at {mitmdump}: run with --setup (skipped)")
    for label, role, h2 in (
        ("trio byte relay", "relay", False),
        ("bare trio + h11", "h11", False),
        ("bare trio + h2", "h2", True),
    ):
        port = free_port()
        argv = [*me, "--role", role, "--port", str(port), "--backend", str(backend)]
        peers.append(Peer(label, argv, port, port if h2 else None))
    return peers


def _checkout_env(root: Path) -> dict[str, str]:
    """The environment that imports meshcore from the checkout ``root`` instead of this one.

    The build maps filters/, plugins/ and testing/ into the package (``meshcore.filters``,
    ...); a plain checkout on PYTHONPATH lacks that mapping, and this environment's editable
    install would supply its own: links inside the checkout's package make its own found first.
    """
    root = root.resolve()
    for name in ("filters", "plugins", "testing"):
        link = root / "meshcore" / name
        if not link.exists() and (root / name).is_dir():
            link.symlink_to(Path("..") / name)
    return {"PYTHONPATH": str(root)}


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def report(title: str, results: dict[str, list[dict[str, float]]], peers: list[Peer]) -> None:
    """Print one table (medians over rounds) with ratios to proxy.py and mitmproxy."""
    rss = {peer.name: peer.idle_rss for peer in peers}
    table = {name: _median(rows) for name, rows in results.items() if rows}
    print(f"\n{title}")
    print(
        f"{'':24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'idle RSS MiB':>13} {'errors':>7}"
    )
    for name, r in table.items():
        print(
            f"{name:24} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['cpu_us']:>11.1f}"
            f" {rss.get(name, 0):>13.1f} {r['errors']:>7.0f}"
        )
    proxypy = [name for name in ("proxy.py", "proxy.py (threaded)") if table.get(name, {}).get("cpu_us")]
    fastest = min(proxypy, key=lambda name: table[name]["cpu_us"], default="proxy.py")
    if proxypy:
        print(f"proxy.py's cheaper mode in this run: {fastest}")
    for base in (fastest, "mitmproxy", "bare trio + h11", "bare trio + h2"):
        if base not in table:
            continue
        b = table[base]
        if not b["cpu_us"] or not b["rps"]:
            print(f"{base}: no successful requests, no ratio")
            continue
        for name in [n for n in table if n.startswith("meshcore")]:
            if name in table:
                r = table[name]
                print(
                    f"{name} / {base}: CPU per request {r['cpu_us'] / b['cpu_us']:.2f}x, "
                    f"req/s {r['rps'] / b['rps']:.2f}x"
                )


def nginx_backend(tmp: Path) -> Peer:
    """The nginx every proxy forwards to (BODY on every path), its config written in ``tmp``."""
    port = free_port()
    conf = tmp / "nginx-backend.conf"
    conf.write_text(
        NGINX_COMMON.format(tmp=tmp, name="backend", body=NGINX_BACKEND.format(port=port, body=BODY))
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return Peer("backend", [nginx, "-c", str(conf)], port, None)


def run(args: argparse.Namespace) -> int:  # noqa: PLR0912 - one linear script: start, measure, report
    """Start the backend and every peer; interleave rounds; print the tables."""
    protocols = set(args.protocols.split(","))
    with tempfile.TemporaryDirectory(prefix="meshcore-peers-") as tmp_name:
        tmp = Path(tmp_name)
        backend = nginx_backend(tmp)
        backend_port = backend.port
        peers = build_peers(args, tmp, backend_port)
        if args.only:
            wanted = set(args.only.split(","))
            peers = [p for p in peers if p.name in wanted]
        h1: dict[str, list[dict[str, float]]] = {p.name: [] for p in peers if p.name != "bare trio + h2"}
        h2: dict[str, list[dict[str, float]]] = {p.name: [] for p in peers if p.h2port is not None}
        started: list[Peer] = []
        try:
            backend.start()
            started.append(backend)
            for peer in peers:
                peer.start()
                started.append(peer)
            one_conn: dict[str, float] = {}
            for round_ in range(args.rounds):
                print(f"round {round_ + 1} of {args.rounds} ...", flush=True)
                for peer in peers:
                    assert peer.proc is not None
                    if "http1" in protocols and peer.name in h1:
                        h1[peer.name].append(wrk(peer.port, peer.proc.pid, args.duration, args.connections))
                    if "http2" in protocols and peer.h2port is not None:
                        h2[peer.name].append(h2load(peer.h2port, peer.proc.pid, args.duration, 10, 10))
            if "http1" in protocols:
                one_conn["direct (backend)"] = wrk_one_connection(backend_port, args.duration)
                for peer in peers:
                    if peer.name.startswith("meshcore"):
                        one_conn[peer.name] = wrk_one_connection(peer.port, args.duration)
        finally:
            for peer in started:
                peer.stop()
    if "http1" in protocols:
        report(
            f"HTTP/1.1: wrk -t1 -c{args.connections} -d{args.duration}s, {len(BODY)}-byte responses, median of {args.rounds} rounds",
            h1,
            peers,
        )
        print("p99 at one connection (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in one_conn.items()))
    if "http2" in protocols:
        report(
            f"HTTP/2 (h2c prior knowledge): h2load -c10 -m10 -D{args.duration}, HTTP/1.1 to the backend; p50 = mean, p99 = max",
            h2,
            peers,
        )
    if args.json:
        print(json.dumps({"http1": h1, "http2": h2}))
    return 0


ROLES: dict[str, Callable[[argparse.Namespace], None]] = {}


def main() -> int:
    """Run the benchmark, install the peers (``--setup``), or run one of its server roles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--protocols", default="http1,http2")
    parser.add_argument("--only", help="comma-separated peer names to measure")
    parser.add_argument(
        "--setup", action="store_true", help="install proxy.py and mitmproxy under bench/.peers"
    )
    parser.add_argument("--proxypy", help="the proxy.py executable (default: bench/.peers/proxypy/bin/proxy)")
    parser.add_argument(
        "--mitmdump", help="the mitmdump executable (default: bench/.peers/mitmproxy/bin/mitmdump)"
    )
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also measure meshcore imported from the checkout DIR (e.g. main, git archive'd)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--role", choices=["meshcore", "relay", "h11", "h2"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        setup_peers()
        return 0
    if args.role == "meshcore":
        from _common import run_proxy

        run_proxy(args.config)
        return 0
    if args.role is not None:
        import _baselines

        {
            "relay": _baselines.run_relay,
            "h11": _baselines.run_h11_forwarder,
            "h2": _baselines.run_h2_forwarder,
        }[args.role](args.port, args.backend)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
