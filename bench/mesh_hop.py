"""The mesh hop against Istio's published budget: client → sidecar A → mTLS → sidecar B → app.

Run: ``python bench/mesh_hop.py [--duration 5] [--rounds 3] [--protocols http1,grpc]
[--compare DIR] [--calls N]`` (needs ``wrk``, ``h2load`` (nghttp2-client) and ``nginx``
(nginx-light) from Debian, and grpcio, a test dependency of meshcore). ``--protocols grpc``
measures the gRPC hop alone. ``--compare DIR`` runs the plain and mesh hops a second time
with meshcore imported from the checkout DIR (``git archive main | tar -x -C /tmp/main``),
in the same interleaved rounds, and prints per-round CPU ratios: a before/after from one
run. ``--calls N`` (default 2000) then counts the Python calls per request in each sidecar
over N saturated requests, a figure the machine's load does not move (``--top``: the
functions called most).

Istio publishes 0.20 vCPU per 1,000 requests/s for an Envoy sidecar with mTLS and
telemetry on, 1 KB payloads: about 200 µs of CPU per request per sidecar. This measures
meshcore the same way, with real processes on loopback:

- the app: Debian's nginx answering 1 KB (HTTP/1.1), or a grpcio server answering a unary
  call with 1 KB (gRPC, 1 KB request message too);
- sidecar B (``python -m meshcore proxy``, inbound): an mTLS listener requiring a client
  certificate of the mesh, ``tracing`` and ``mesh_metrics`` (reporter destination), a
  cluster to the app (HTTP/1.1 keep-alive, or HTTP/2 for gRPC);
- sidecar A (outbound): a plaintext listener for the client, ``tracing`` (1% of new traces
  sampled, as Istio's default) and ``mesh_metrics`` (reporter source, peer metadata
  exchanged), a cluster to B over mTLS checking B's SPIFFE ID (secure naming);
- certificates: SPIFFE workload certificates signed by the mesh's own CA (the ``meshcore``
  CA plugin, :class:`meshcore.plugins.ca.LocalCA`) from CSRs made the way a proxy makes
  them (the key stays with the proxy);
- a live OTLP/HTTP sink (``--role otlp-sink``) that both sidecars export their sampled spans
  to.

Three targets: the app directly (the latency baseline), the mesh hop above, and a plain
hop: two more sidecars, the same but for the mesh (plaintext between them, the router
alone), so that the mesh's own cost (mTLS, mesh_metrics, tracing) is told from the
proxy's (``--no-plain`` leaves it out). ``--compare-tls`` adds the mesh hop again with TLS
through ``trio.SSLStream`` (``MESHCORE_TLS_TRANSPORT=sslstream``, the transport before
:mod:`meshcore.runtime.tlssocket`): target ``mesh@sslstream``, with its per-round CPU
ratio. Two kinds of run against each, in interleaved
rounds (every target once per round; medians reported):

- **paced**, Istio's method: 1,000 requests/s over 10 keep-alive connections (``h2load
  --rps``, ``--h1`` for HTTP/1.1), per-request latencies from its log: p50/p99, and the
  latency the two sidecars add to direct; CPU per request of each sidecar (utime + stime
  from /proc over the run, divided by the requests served);
- **saturated**: ``wrk -t1 -c16`` (HTTP/1.1) or ``h2load -c16 -m1`` (gRPC unary): req/s and
  CPU per request of each sidecar when it is the bottleneck.

It then checks what the figures rest on: every response 200 (and gRPC status 0 for a call
made with grpcio through the sidecars), B counted the requests as ``mutual_tls`` from A's
workload, spans reached the sink, and the connections A opened to B (each one TLS
handshake) are counted against the requests: keep-alive means a handful, not one per
request. The last lines print each sidecar's CPU per request as a ratio to Istio's 200 µs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from _common import cpu_seconds, free_port, milliseconds, start

HERE = Path(__file__).resolve().parent
ISTIO_US = 200.0
"""Istio's published sidecar cost: 0.20 vCPU per 1,000 requests/s, in µs of CPU per request."""
PAYLOAD = 1024
TRUST_DOMAIN = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
APP_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/app"
GRPC_PATH = "/bench.Echo/Call"
SHOWN = 0.5  # calls per request below this are left out of the split by package

# -- the app and the sink ------------------------------------------------------------------

NGINX_APP = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


def run_grpc_app(port: int) -> None:
    """A grpcio server: ``/bench.Echo/Call`` answers any request with PAYLOAD bytes."""
    from concurrent import futures

    import grpc

    answer = b"y" * PAYLOAD

    def call(_request: bytes, _context: Any) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def run_otlp_sink(port: int) -> None:
    """An OTLP/HTTP traces receiver: answers every export; ``GET /count`` says what came.

    It decodes each export with opentelemetry-proto when that is installed (a test
    dependency), to count spans; else it counts exports and bytes only.
    """
    import socketserver
    from http.server import BaseHTTPRequestHandler

    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:  # pragma: no cover - counted in bytes then
        ExportTraceServiceRequest = None  # noqa: N806

    received = {"exports": 0, "spans": 0, "bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received["exports"] += 1
            received["bytes"] += len(body)
            if ExportTraceServiceRequest is not None:
                message = ExportTraceServiceRequest.FromString(body)
                received["spans"] += sum(
                    len(scope.spans) for rs in message.resource_spans for scope in rs.scope_spans
                )
            self._answer(b"", "application/x-protobuf")

        def do_GET(self) -> None:
            self._answer(json.dumps(received).encode(), "application/json")

        def _answer(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        allow_reuse_address = True
        daemon_threads = True

    with Server(("127.0.0.1", port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


# -- certificates from the mesh's CA ------------------------------------------------------


def issue_certificates(directory: Path) -> dict[str, dict[str, str]]:
    """SPIFFE certificates for A (CLIENT_ID) and B (APP_ID) from the ``meshcore`` CA, as files."""
    from meshcore.plugins.ca import CaConfig, LocalCA, make_csr

    ca = LocalCA(CaConfig(directory=str(directory / "ca"), trust_domain=TRUST_DOMAIN))
    files: dict[str, dict[str, str]] = {}
    for name, identity in (("a", CLIENT_ID), ("b", APP_ID)):
        csr, key = make_csr(identity)
        signed = ca.sign(csr, identity)
        paths = {kind: str(directory / f"{name}-{kind}.pem") for kind in ("chain", "key", "roots")}
        Path(paths["chain"]).write_text(signed.certificate_chain)
        Path(paths["key"]).write_bytes(key)
        Path(paths["key"]).chmod(0o600)
        Path(paths["roots"]).write_text(signed.trusted_ca)
        files[name] = paths
    return files


# -- the sidecars' configs ----------------------------------------------------------------


def _filters(reporter: str, workload: str, sink: int, ratio: float, export_interval: float) -> list[Any]:
    tracing = {
        "sampler": "parent_based",  # A decides for new traces (ratio); B follows A
        "ratio": ratio,
        "service_name": workload,
        "otlp_http": {"endpoint": f"http://127.0.0.1:{sink}/v1/traces", "export_interval": export_interval},
    }
    metrics = {"reporter": reporter, "workload": workload, "namespace": "bench", "service": workload}
    return [{"tracing": tracing}, {"mesh_metrics": metrics}, "router"]


def _listener(name: str, port: int, route: str, filters: list[Any], codec: str) -> dict[str, Any]:
    manager = {"route_config": route, "codec": codec, "http_filters": filters}
    return {
        "name": name,
        "address": f"127.0.0.1:{port}",
        "filter_chains": [{"filters": [{"http_connection_manager": manager}]}],
    }


def _route(name: str, cluster: str) -> dict[str, Any]:
    return {
        "name": name,
        "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "cluster": cluster}]}
        ],
    }


def sidecar_configs(
    ports: dict[str, int],
    certs: dict[str, dict[str, str]],
    *,
    codec: str,
    ratio: float,
    export_interval: float = 1.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The configs of A (outbound) and B (inbound): one listener pair per protocol."""
    a_filters = _filters("source", "client", ports["sink"], ratio, export_interval)
    b_filters = _filters("destination", "app", ports["sink"], ratio, export_interval)
    mtls_out = {
        "ca_file": certs["a"]["roots"],
        "certificate_file": certs["a"]["chain"],
        "private_key_file": certs["a"]["key"],
        "peer_identities": [APP_ID],
    }
    mtls_in = {
        "certificate_file": certs["b"]["chain"],
        "private_key_file": certs["b"]["key"],
        "client_ca_file": certs["b"]["roots"],
        "require_client_certificate": True,
    }
    a = {
        "admin": {"address": f"127.0.0.1:{ports['a_admin']}"},
        "listeners": [
            _listener("outbound_http", ports["a_http"], "to_b_http", a_filters, codec),
            _listener("outbound_grpc", ports["a_grpc"], "to_b_grpc", a_filters, codec),
        ],
        "route_configs": [_route("to_b_http", "b_http"), _route("to_b_grpc", "b_grpc")],
        "clusters": [
            {
                "name": "b_http",
                "endpoints": [f"127.0.0.1:{ports['b_http']}"],
                "codec": codec,
                "tls": mtls_out,
            },
            {
                "name": "b_grpc",
                "endpoints": [f"127.0.0.1:{ports['b_grpc']}"],
                "protocol": "http2",
                "tls": mtls_out,
            },
        ],
    }
    b_listeners = [
        _listener("inbound_http", ports["b_http"], "to_app_http", b_filters, codec),
        _listener("inbound_grpc", ports["b_grpc"], "to_app_grpc", b_filters, codec),
    ]
    for listener in b_listeners:
        listener["filter_chains"][0]["tls"] = mtls_in
    b = {
        "admin": {"address": f"127.0.0.1:{ports['b_admin']}"},
        "listeners": b_listeners,
        "route_configs": [_route("to_app_http", "app_http"), _route("to_app_grpc", "app_grpc")],
        "clusters": [
            {"name": "app_http", "endpoints": [f"127.0.0.1:{ports['nginx']}"], "codec": codec},
            {"name": "app_grpc", "endpoints": [f"127.0.0.1:{ports['grpc']}"], "protocol": "http2"},
        ],
    }
    return a, b


def relocate(
    a: dict[str, Any], b: dict[str, Any], ports: dict[str, int], a_side: str, b_side: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of A and B listening on the ports of ``a_side`` and ``b_side``, A sending to that B."""
    a1, b1 = copy.deepcopy(a), copy.deepcopy(b)
    for config, side in ((a1, a_side), (b1, b_side)):
        config["admin"]["address"] = f"127.0.0.1:{ports[side + '_admin']}"
        for listener in config["listeners"]:
            protocol = "http" if listener["name"].endswith("http") else "grpc"
            listener["address"] = f"127.0.0.1:{ports[f'{side}_{protocol}']}"
    for cluster in a1["clusters"]:
        protocol = "http" if cluster["name"].endswith("http") else "grpc"
        cluster["endpoints"] = [f"127.0.0.1:{ports[f'{b_side}_{protocol}']}"]
    return a1, b1


def plain_configs(
    a: dict[str, Any], b: dict[str, Any], ports: dict[str, int], a_side: str = "a0", b_side: str = "b0"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same two sidecars with nothing of the mesh: plaintext between them, the router alone.

    The baseline that tells the mesh's own cost (mTLS, metrics, tracing) from the proxy's.
    """
    a0, b0 = relocate(a, b, ports, a_side, b_side)
    for config in (a0, b0):
        for listener in config["listeners"]:
            chain = listener["filter_chains"][0]
            chain.pop("tls", None)
            chain["filters"][0]["http_connection_manager"]["http_filters"] = ["router"]
        for cluster in config["clusters"]:
            cluster.pop("tls", None)
    return a0, b0


# -- processes ----------------------------------------------------------------------------


class Sidecar:
    """A ``meshcore proxy`` process and its admin server."""

    def __init__(
        self, name: str, config: dict[str, Any], tmp: Path, admin_port: int, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.admin = admin_port
        path = tmp / f"sidecar-{name}.json"
        path.write_text(json.dumps(config, indent=1))
        self.log = (tmp / f"sidecar-{name}.log").open("w")
        self.calls_file = tmp / f"calls-{name}.json"
        # Through --role sidecar: ``meshcore proxy`` with a call counter switched by SIGUSR2;
        # ``env`` adds to the environment (PYTHONPATH: meshcore from another checkout).
        argv = [sys.executable, str(HERE / "mesh_hop.py"), "--role", "sidecar"]
        argv += ["--count-calls", str(self.calls_file), "--config", str(path)]
        environment = {**os.environ, **env} if env else None
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=environment)  # noqa: S603

    def count_calls(self) -> None:
        """Start (first call) or stop (second call: the counts go to ``calls_file``) counting calls."""
        if self.calls_file.exists():
            self.calls_file.unlink()
        os.kill(self.proc.pid, signal.SIGUSR2)

    def calls_counted(self) -> dict[str, Any]:
        """What the counter wrote when stopped (waits for it)."""
        deadline = time.monotonic() + 30
        while not self.calls_file.exists() or not self.calls_file.read_text():
            if time.monotonic() > deadline:
                msg = f"sidecar {self.name} wrote no call counts"
                raise RuntimeError(msg)
            time.sleep(0.05)
        counts: dict[str, Any] = json.loads(self.calls_file.read_text())
        return counts

    def wait_ready(self) -> None:
        """Wait until its admin server says it serves its config (RuntimeError if it does not)."""
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.log.flush()
                tail = Path(self.log.name).read_text(errors="replace")[-2000:]
                state = "exited" if self.proc.poll() is not None else "still not ready after 30 s"
                msg = f"sidecar {self.name} did not become ready ({state}); the end of its log:\n{tail}"
                raise RuntimeError(msg)
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as answer:
                return bool(answer.status == 200)  # noqa: PLR2004
        except OSError:
            return False

    def cpu(self) -> float:
        """Its CPU seconds so far."""
        return cpu_seconds(self.proc.pid)

    def stat(self, name: str, **labels: str) -> float:
        """The sum of metric ``name`` over the series with ``labels`` (a histogram: its count)."""
        url = f"http://127.0.0.1:{self.admin}/stats?format=json&filter=^{name}$"
        with urllib.request.urlopen(url, timeout=5) as answer:
            items = json.load(answer)
        total = 0.0
        for item in items:
            if all(item["labels"].get(k) == v for k, v in labels.items()):
                total += item.get("value", item.get("count", 0))
        return total

    def stop(self) -> None:
        """Terminate it (killed if it lingers)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@contextmanager
def process(
    argv: list[str], *, ready_line: bool = True, port: int | None = None
) -> Iterator[subprocess.Popen[Any]]:
    """A helper process for the duration of the block (waits for "ready" or its port)."""
    if ready_line:
        proc = start(argv)
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        assert port is not None
        _wait_port(port, proc)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_port(port: int, proc: subprocess.Popen[Any]) -> None:
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"{proc.args!r} exited with {proc.returncode}"
            raise RuntimeError(msg)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    msg = f"nothing listens on {port}: {proc.args!r}"
    raise RuntimeError(msg)


# -- load ---------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def h2load(argv_tail: list[str], log: Path) -> dict[str, float]:
    """Run h2load; requests done and failed, and p50/p99 (ms) from its per-request log."""
    log.unlink(missing_ok=True)  # h2load appends to its log file
    out = subprocess.run(  # noqa: S603
        ["h2load", "-t1", f"--log-file={log}", *argv_tail],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
    )
    assert done is not None, out
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes is not None, out
    times = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":  # noqa: PLR2004
            times.append(int(fields[2]) / 1000)
    rps = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    return {
        "requests": float(done.group(1)),
        "errors": float(
            int(done.group(3))
            + int(done.group(4))
            + int(codes.group(2))
            + int(codes.group(3))
            + int(codes.group(4))
        ),
        "p50": _percentile(times, 0.50) if times else 0.0,
        "p99": _percentile(times, 0.99) if times else 0.0,
        "rps": float(rps.group(1)) if rps else 0.0,
    }


def wrk(port: int, duration: int, connections: int) -> dict[str, float]:
    """``wrk -t1 -cN --latency``: requests, errors, req/s, p50/p99 (ms)."""
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return {
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "errors": float(errors),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": milliseconds(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)),  # type: ignore[union-attr]
        "p99": milliseconds(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)),  # type: ignore[union-attr]
    }


class Load:
    """How one protocol is loaded: paced (Istio's method) and saturated."""

    def __init__(self, protocol: str, args: argparse.Namespace, tmp: Path) -> None:
        self.protocol = protocol
        self.args = args
        self.log = tmp / f"h2load-{protocol}.log"
        if protocol == "grpc":
            message = b"x" * PAYLOAD
            body = tmp / "grpc-request.bin"
            body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
            self.h2load_args = [
                f"--data={body}",
                "--header=content-type: application/grpc",
                "--header=te: trailers",
            ]
            self.path = GRPC_PATH
        else:
            self.h2load_args = ["--h1"]
            self.path = "/"

    def paced(self, port: int, duration: int) -> dict[str, float]:
        """``rate`` requests/s over ``paced_connections`` connections, whatever the latency."""
        per_client = max(1, round(self.args.rate / self.args.paced_connections))
        return h2load(
            [
                *self.h2load_args,
                f"-c{self.args.paced_connections}",
                "-m1",
                f"--rps={per_client}",
                f"-D{duration}",
                f"http://127.0.0.1:{port}{self.path}",
            ],
            self.log,
        )

    def saturated(self, port: int, duration: int) -> dict[str, float]:
        """As many requests as ``connections`` connections get answered, one at a time each."""
        if self.protocol == "http1":
            return wrk(port, duration, self.args.connections)
        return h2load(
            [
                *self.h2load_args,
                f"-c{self.args.connections}",
                "-m1",
                f"-D{duration}",
                f"http://127.0.0.1:{port}{self.path}",
            ],
            self.log,
        )

    def counted(self, port: int, requests: int) -> dict[str, float]:
        """Exactly ``requests`` requests over ``connections`` connections (h2load, for both protocols)."""
        return h2load(
            [
                *self.h2load_args,
                f"-c{self.args.connections}",
                "-m1",
                f"-n{requests}",
                f"http://127.0.0.1:{port}{self.path}",
            ],
            self.log,
        )


def count_calls(load: Load, port: int, pair: list[Sidecar], requests: int) -> list[dict[str, Any]]:
    """Python calls per request in each sidecar of ``pair`` (A, B) over ``requests`` requests."""
    for sidecar in pair:
        sidecar.count_calls()
    time.sleep(0.2)  # a benchmark, not a test: let the signals land before the load starts
    done = load.counted(port, requests)["requests"]
    for sidecar in pair:
        sidecar.count_calls()
    found = []
    for sidecar in pair:
        counts = sidecar.calls_counted()
        per = max(done, 1)
        found.append(
            {
                "calls": counts["calls"] / per,
                "by_package": {k: v / per for k, v in counts["by_package"].items()},
                "top": [(name, n / per) for name, n in counts["top"]],
            }
        )
    return found


def measured(run: Any, sidecars: list[Sidecar]) -> dict[str, float]:
    """Run the load; add the CPU µs per request of the pair's outbound (A) and inbound (B) sidecar."""
    before = [s.cpu() for s in sidecars]
    result: dict[str, float] = run()
    for side, sidecar, start_cpu in zip("AB", sidecars, before, strict=False):
        result[f"cpu_{side}"] = (sidecar.cpu() - start_cpu) / max(result["requests"], 1) * 1e6
    return result


# -- the run ------------------------------------------------------------------------------


def _handshakes(a: Sidecar, b: Sidecar, protocol: str) -> tuple[float, float, float]:
    """TLS handshakes so far on the A→B link of ``protocol``: A's, of them resumed, and B's."""
    cluster = "b_http" if protocol == "http1" else "b_grpc"
    listener = "inbound_http" if protocol == "http1" else "inbound_grpc"
    return (
        a.stat("cluster_upstream_ssl_handshake", cluster=cluster),
        a.stat("cluster_upstream_ssl_session_reused", cluster=cluster),
        b.stat("listener_ssl_handshake", listener=listener),
    )


def grpc_check(port: int) -> str:
    """One unary call with grpcio through ``port``: its status code and answer size."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_PATH)
        answer, state = call.with_call(b"x" * PAYLOAD, timeout=10)
        return f"{state.code().name}, {len(answer)} bytes"


def check(ports: dict[str, int], protocols: list[str], a: Sidecar, b: Sidecar) -> list[str]:
    """What is wrong with the topology (nothing: []), with one traced request per protocol.

    Each request carries a sampled W3C trace context, so both sidecars record it whatever
    the ratio, and the sink must receive their spans.
    """
    problems = []
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    if "http1" in protocols:
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['a_http']}/", headers={"traceparent": traceparent}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
            body = answer.read()
            if answer.status != 200 or len(body) != PAYLOAD:  # noqa: PLR2004
                problems.append(f"HTTP/1.1 through the sidecars: {answer.status}, {len(body)} bytes")
    if "grpc" in protocols:
        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{ports['a_grpc']}") as channel:
            call = channel.unary_unary(GRPC_PATH)
            answer, state = call.with_call(
                b"x" * PAYLOAD, timeout=10, metadata=[("traceparent", traceparent)]
            )
            if state.code() != grpc.StatusCode.OK or len(answer) != PAYLOAD:
                problems.append(f"gRPC through the sidecars: {state.code().name}, {len(answer)} bytes")
    expected = len(protocols)
    mtls = b.stat("requests_total", reporter="destination", connection_security_policy="mutual_tls")
    if (
        mtls != expected
        or a.stat("requests_total", reporter="source", destination_workload="app") != expected
    ):
        problems.append(f"mesh_metrics: B counted {mtls:.0f} mutual_tls requests, expected {expected}")
    if sum(_handshakes(a, b, p)[0] for p in protocols) != expected:
        problems.append("A did not make exactly one TLS handshake per protocol")
    deadline = time.monotonic() + 10
    spans = 0
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['sink']}/count", timeout=5) as answer:
            spans = json.load(answer)["spans"]
        if spans >= 4 * expected:  # a server and a client span per request, on each sidecar
            break
        time.sleep(0.1)
    else:
        problems.append(f"the OTLP sink received {spans} spans, expected {4 * expected}")
    return problems


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def compare_tag(checkout: str) -> str:
    """The suffix of the targets run from another checkout: ``@<its directory name>``."""
    return f"@{Path(checkout).name}"


def target_name(target: str) -> str:
    """How a target is called in the tables."""
    base, _, tag = target.partition("@")
    name = {"direct": "direct to the app", "plain": "plain hop", "mesh": "mesh hop"}[base]
    if base == "direct":
        return name
    return f"{name} {'@' + tag if tag else '(A→B→app)'}"


def report(protocol: str, kind: str, title: str, rows: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Print one table; return the mesh row's medians."""
    medians = {target: median_of(found) for target, found in rows.items() if found}
    width = max(22, *(len(target_name(t)) for t in medians))
    print(f"\n{protocol} {kind}: {title}")
    print(
        f"{'':{width}} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'A us/req':>9} {'B us/req':>9} {'errors':>7}"
    )
    for target, r in medians.items():
        a = f"{r['cpu_A']:9.1f}" if "cpu_A" in r else f"{'':>9}"
        b = f"{r['cpu_B']:9.1f}" if "cpu_B" in r else f"{'':>9}"
        print(
            f"{target_name(target):{width}} {r['rps']:>8.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {a} {b} {r['errors']:>7.0f}"
        )
    for target in medians:
        if target == "direct":
            continue
        pairs = list(zip(rows[target], rows["direct"], strict=True))
        added50 = statistics.median(m["p50"] - d["p50"] for m, d in pairs)
        added99 = statistics.median(m["p99"] - d["p99"] for m, d in pairs)
        print(
            f"added by the {target_name(target).replace(' (A→B→app)', '')}: p50 {added50:+.3f} ms, "
            f"p99 {added99:+.3f} ms (median of per-round differences to direct)"
        )
    rounds = ", ".join(f"A {m['cpu_A']:.0f} / B {m['cpu_B']:.0f}" for m in rows["mesh"])
    print(f"mesh hop, sidecar CPU us per request by round: {rounds}")
    if "plain" in medians:
        extra = [
            (m["cpu_A"] - p["cpu_A"], m["cpu_B"] - p["cpu_B"])
            for m, p in zip(rows["mesh"], rows["plain"], strict=True)
        ]
        a_extra = statistics.median(e[0] for e in extra)
        b_extra = statistics.median(e[1] for e in extra)
        print(
            f"the mesh's own part (mTLS, mesh_metrics, tracing; mesh minus plain, per round): "
            f"A {a_extra:+.0f} us, B {b_extra:+.0f} us per request"
        )
    for target in medians:
        base, _, tag = target.partition("@")
        if not tag:
            continue
        ratios = [
            (m["cpu_A"] / c["cpu_A"], m["cpu_B"] / c["cpu_B"], m["rps"] / c["rps"])
            for m, c in zip(rows[base], rows[target], strict=True)
        ]
        print(
            f"{base} hop, this checkout / @{tag} (median of per-round ratios): CPU per request "
            f"A {statistics.median(r[0] for r in ratios):.2f}x, B {statistics.median(r[1] for r in ratios):.2f}x; "
            f"req/s {statistics.median(r[2] for r in ratios):.2f}x"
        )
    return medians["mesh"]


def report_calls(protocol: str, calls: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    """Print the Python calls per request of each sidecar (a figure the machine's load does not move)."""
    print(f"\n{protocol}: Python calls per request in each sidecar, over {args.calls} saturated requests")
    for target, (a, b) in calls.items():
        line = f"  {target_name(target)}: A {a['calls']:.0f}, B {b['calls']:.0f}"
        base, _, tag = target.partition("@")
        if tag and base in calls:
            mine = calls[base]
            line += f" (this checkout / @{tag}: A {mine[0]['calls'] / a['calls']:.2f}x, B {mine[1]['calls'] / b['calls']:.2f}x)"
        print(line)
        for side, found in zip("AB", (a, b), strict=True):
            parts = ", ".join(
                f"{k} {v:.0f}"
                for k, v in sorted(found["by_package"].items(), key=lambda kv: -kv[1])
                if v >= SHOWN
            )
            print(f"    {side} by package: {parts}")
            if args.top:
                for name, n in found["top"][:25]:
                    print(f"      {n:6.1f} {name}")


def run(args: argparse.Namespace) -> int:  # noqa: PLR0912, PLR0915 - one linear script: start, measure, report
    """Start the app, the sink and the sidecars; measure in interleaved rounds; print the tables."""
    protocols = args.protocols.split(",")
    me = [sys.executable, str(HERE / "mesh_hop.py")]
    with tempfile.TemporaryDirectory(prefix="meshcore-mesh-hop-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        names = ["nginx", "grpc", "sink"]
        names += [
            f"{side}_{what}"
            for side in ("a", "b", "a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3")
            for what in ("admin", "http", "grpc")
        ]
        ports = {name: free_port() for name in names}
        certs = issue_certificates(tmp)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_APP.format(tmp=tmp, port=ports["nginx"], body="x" * PAYLOAD))
        stack.enter_context(process([nginx, "-c", str(conf)], ready_line=False, port=ports["nginx"]))
        if "grpc" in protocols:
            stack.enter_context(process([*me, "--role", "grpc-app", "--port", str(ports["grpc"])]))
        stack.enter_context(process([*me, "--role", "otlp-sink", "--port", str(ports["sink"])]))
        # The exporters' default interval (1 s) when measuring; --check waits for spans, not more.
        export_interval = 0.1 if args.check else 1.0
        a_config, b_config = sidecar_configs(
            ports, certs, codec=args.codec, ratio=args.ratio, export_interval=export_interval
        )
        # Each pair: its configs, the sides whose ports it takes, what it adds to the environment.
        plan: dict[str, tuple[dict[str, Any], dict[str, Any], str, str, dict[str, str] | None]] = {
            "mesh": (a_config, b_config, "a", "b", None)
        }
        if args.plain and not args.check:
            plan["plain"] = (*plain_configs(a_config, b_config, ports), "a0", "b0", None)
        if args.compare and not args.check:
            tag = compare_tag(args.compare)
            checkout = {"PYTHONPATH": str(Path(args.compare).resolve())}
            plan[f"mesh{tag}"] = (*relocate(a_config, b_config, ports, "a1", "b1"), "a1", "b1", checkout)
            if args.plain:
                plan[f"plain{tag}"] = (
                    *plain_configs(a_config, b_config, ports, "a2", "b2"),
                    "a2",
                    "b2",
                    checkout,
                )
        if args.compare_tls and not args.check:
            sslstream = {"MESHCORE_TLS_TRANSPORT": "sslstream"}
            plan["mesh@sslstream"] = (*relocate(a_config, b_config, ports, "a3", "b3"), "a3", "b3", sslstream)
        pairs: dict[str, list[Sidecar]] = {"direct": []}
        for target, (a_conf, b_conf, a_side, b_side, env) in plan.items():
            b_side_car = Sidecar(b_side.upper(), b_conf, tmp, ports[f"{b_side}_admin"], env)
            stack.callback(b_side_car.stop)
            a_side_car = Sidecar(a_side.upper(), a_conf, tmp, ports[f"{a_side}_admin"], env)
            stack.callback(a_side_car.stop)
            pairs[target] = [a_side_car, b_side_car]
        a, b = pairs["mesh"]
        everyone = [s for pair in pairs.values() for s in pair]
        stack.callback(lambda: [s.proc.terminate() for s in everyone if s.proc.poll() is None])  # all at once
        for sidecar in everyone:
            sidecar.wait_ready()
        targets = {
            protocol: {
                "direct": ports["nginx" if protocol == "http1" else "grpc"],
                **{
                    target: ports[f"{found[2]}_{'http' if protocol == 'http1' else 'grpc'}"]
                    for target, found in plan.items()
                },
            }
            for protocol in ("http1", "grpc")
        }
        if args.check:
            problems = check(ports, protocols, a, b)
            print("\n".join(problems) or "check: the topology works", flush=True)
            return 1 if problems else 0
        if "grpc" in protocols:
            print(f"grpcio call through the sidecars: {grpc_check(ports['a_grpc'])}")
        if args.serve:
            pids = ", ".join(
                f"{t} A pid {p[0].proc.pid} B pid {p[1].proc.pid}" for t, p in pairs.items() if p
            )
            print(f"serving (Ctrl-C ends): {pids}; ", end="")
            print(
                ", ".join(f"{p} " + " ".join(f"{k} :{v}" for k, v in t.items()) for p, t in targets.items())
            )
            print(f"files in {tmp}", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the helpers stopped on the way out
            with suppress(KeyboardInterrupt):
                a.proc.wait()
            return 0
        loads = {p: Load(p, args, tmp) for p in protocols}
        results: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {
            p: {kind: {target: [] for target in pairs} for kind in ("paced", "saturated")} for p in protocols
        }
        for protocol, load in loads.items():  # warm-up: connections opened, code paths hot
            for port in targets[protocol].values():
                load.saturated(port, 1)
        handshakes_before = {p: _handshakes(a, b, p) for p in protocols}
        requests_mesh = dict.fromkeys(protocols, 0.0)
        for round_ in range(args.rounds):
            print(f"round {round_ + 1} of {args.rounds} ...", flush=True)
            for protocol, load in loads.items():
                for kind in ("paced", "saturated"):
                    for target, port in targets[protocol].items():
                        runner = getattr(load, kind)
                        row = measured(
                            lambda runner=runner, port=port: runner(port, args.duration), pairs[target]
                        )
                        results[protocol][kind][target].append(row)
                        if target == "mesh":
                            requests_mesh[protocol] += row["requests"]
        handshakes = {
            p: tuple(n - m for n, m in zip(_handshakes(a, b, p), handshakes_before[p], strict=True))
            for p in protocols
        }
        calls: dict[str, dict[str, list[dict[str, Any]]]] = {p: {} for p in protocols}
        if args.calls:
            for protocol, load in loads.items():
                for target, pair in pairs.items():
                    if pair:
                        calls[protocol][target] = count_calls(
                            load, targets[protocol][target], pair, args.calls
                        )
        mtls_counted = b.stat(
            "requests_total",
            reporter="destination",
            connection_security_policy="mutual_tls",
            source_workload="client",
        )
        a_counted = a.stat("requests_total", reporter="source", destination_workload="app")
        time.sleep(1.5)  # the sidecars export their spans every second
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['sink']}/count", timeout=5) as answer:
            sink = json.load(answer)

    paced_title = (
        f"paced, {args.rate} req/s over {args.paced_connections} keep-alive connections (h2load --rps), "
        f"{args.duration}s x {args.rounds} rounds, medians"
    )
    saturated_title = f"saturated, {args.connections} connections ({'wrk -t1' if 'http1' in protocols else 'h2load -m1'}), {args.duration}s x {args.rounds} rounds, medians"
    summary = []
    for protocol in protocols:
        label = "HTTP/1.1 (1 KB responses)" if protocol == "http1" else "gRPC unary (1 KB messages each way)"
        mesh_paced = report(label, "paced", paced_title, results[protocol]["paced"])
        mesh_saturated = report(
            label,
            "saturated",
            saturated_title.replace("wrk -t1", "wrk -t1" if protocol == "http1" else "h2load -m1"),
            results[protocol]["saturated"],
        )
        summary.append((label, mesh_paced, mesh_saturated))
        if calls[protocol]:
            report_calls(label, calls[protocol], args)
        done, resumed, accepted = handshakes[protocol]
        per_request = done / max(requests_mesh[protocol], 1)
        verdict = "no per-request handshake" if per_request < 0.01 else "HANDSHAKES PER REQUEST"  # noqa: PLR2004
        print(
            f"TLS handshakes A→B during the measured runs: {done:.0f} by A ({resumed:.0f} resumed), "
            f"{accepted:.0f} by B, for {requests_mesh[protocol]:.0f} requests ({verdict})"
        )
    print(
        f"\nmesh_metrics: B counted {mtls_counted:.0f} requests as mutual_tls from workload 'client'; "
        f"A counted {a_counted:.0f} to workload 'app'"
    )
    print(
        f"tracing at {args.ratio:.0%}: the OTLP sink received {sink['spans']} spans in {sink['exports']} exports "
        f"({sink['bytes']} bytes)"
    )
    print(f"\nagainst Istio's {ISTIO_US:.0f} us of CPU per request per sidecar (0.20 vCPU per 1,000 req/s):")
    for label, paced, saturated in summary:
        print(
            f"{label}: paced A {paced['cpu_A']:.0f} us ({paced['cpu_A'] / ISTIO_US:.2f}x), "
            f"B {paced['cpu_B']:.0f} us ({paced['cpu_B'] / ISTIO_US:.2f}x); "
            f"saturated A {saturated['cpu_A']:.0f} us ({saturated['cpu_A'] / ISTIO_US:.2f}x), "
            f"B {saturated['cpu_B']:.0f} us ({saturated['cpu_B'] / ISTIO_US:.2f}x)"
        )
    if args.json:
        print(json.dumps(results))
    return 0


def main() -> int:
    """Run the benchmark, or one of its helper roles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--protocols", default="http1,grpc", help="http1, grpc, or both (comma-separated)")
    parser.add_argument("--rate", type=int, default=1000, help="paced runs: requests/s in all")
    parser.add_argument("--paced-connections", type=int, default=10, help="paced runs: connections")
    parser.add_argument("--connections", type=int, default=16, help="saturated runs: connections")
    parser.add_argument(
        "--codec", choices=["fast", "h11"], default="fast", help="the sidecars' HTTP/1.1 codec"
    )
    parser.add_argument("--ratio", type=float, default=0.01, help="tracing: the share of new traces sampled")
    parser.add_argument(
        "--no-plain",
        dest="plain",
        action="store_false",
        help="leave out the plain hop (the same sidecars without mTLS, metrics and tracing)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="start everything, send one traced request per protocol, check, exit",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="start everything, print the ports and pids, and wait (to profile)",
    )
    parser.add_argument("--json", action="store_true", help="also print every round as JSON")
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="also run the plain and mesh hops with meshcore from the checkout DIR (e.g. main, git archive'd)",
    )
    parser.add_argument(
        "--compare-tls",
        action="store_true",
        help="also run the mesh hop with TLS through trio.SSLStream (the transport before), same rounds",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=2000,
        metavar="N",
        help="Python calls per request in each sidecar, counted over N saturated requests (0: none)",
    )
    parser.add_argument("--top", action="store_true", help="with --calls: print the functions called most")
    parser.add_argument("--role", choices=["grpc-app", "otlp-sink", "sidecar"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--count-calls", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sidecar":
        import _callcount

        _callcount.install(args.count_calls, signal.SIGUSR2)  # meshcore proxy takes SIGUSR1 for its logs
        from meshcore.cli import main as meshcore_main

        return meshcore_main(["proxy", "-c", args.config, "--log-level", "warning"])
    if args.role == "grpc-app":
        run_grpc_app(args.port)
        return 0
    if args.role == "otlp-sink":
        run_otlp_sink(args.port)
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
