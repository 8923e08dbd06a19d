"""HTTP/1.1 benchmark: wrk at 50 keep-alive connections, upstream direct vs. through meshcore.

Run: ``python bench/http1.py [--duration 10] [--connections 50]`` (needs ``wrk``).

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
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nhello, world\n"


# -- the upstream ---------------------------------------------------------------------------


class _Canned(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * count)


def run_upstream(port: int) -> None:
    """A canned-response HTTP/1.1 server (GET only, keep-alive, pipelining-safe)."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


# -- the proxy with three pass-through filters ----------------------------------------------


def run_proxy(config: str) -> None:
    """A meshcore proxy with a ``passthrough`` HTTP filter registered in-process."""
    import trio

    import meshcore
    from meshcore.logs import configure
    from meshcore.runtime.server import serve_proxy

    configure("warning", fmt="json")

    class PassThrough:
        def __init__(self, _config: None, _context: meshcore.FilterContext) -> None:
            pass

        async def __call__(
            self, request: meshcore.Request, call_next: meshcore.HttpHandler
        ) -> meshcore.Response:
            return await call_next(request)

    class Plugin:
        @staticmethod
        @meshcore.hookimpl
        def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
            return [meshcore.HttpFilterType(name="passthrough", factory=PassThrough)]

    registry = meshcore.build_registry(plugins=[("bench-passthrough", Plugin())])
    source_type = registry.get("config_source", "file")
    assert source_type is not None
    assert source_type.config is not None
    source = source_type.factory(
        source_type.config(path=config, poll_interval=meshcore.Duration(0)), registry
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_proxy, source, registry)
            print("ready", flush=True)

    trio.run(main)


PROXY_CONFIG = """
admin: {{enabled: false}}
listeners:
  - name: bench
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - http_connection_manager:
              route_config: main
              codec: {codec}
              http_filters: [passthrough, passthrough, passthrough, router]
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            cluster: upstream
clusters:
  - name: upstream
    codec: {codec}
    endpoints: ["127.0.0.1:{upstream}"]
"""


# -- measuring ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: S603 - our own script
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        msg = f"{argv} did not start: {line!r}"
        raise RuntimeError(msg)
    return proc


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, server_pid: int, duration: int, connections: int) -> dict[str, float]:
    """Run wrk against a port; measure the server process's CPU during the run."""
    url = f"http://127.0.0.1:{port}/"
    # Warm up (connections, caches), then measure.
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d1s", url], capture_output=True, check=True)  # noqa: S603, S607 - wrk from PATH, arguments built here
    cpu_before = _cpu_seconds(server_pid)
    out = subprocess.run(  # noqa: S603 - arguments built here
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],  # noqa: S607 - wrk from PATH
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = _cpu_seconds(server_pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "cpu_us_per_request": cpu / requests * 1e6,
        "requests": requests,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": 1 if socket_errors else 0,
    }


def main() -> int:
    """Run the benchmark (or, with ``--role``, one of its server processes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--role", choices=["upstream", "proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        run_upstream(args.port)
        return 0
    if args.role == "proxy":
        run_proxy(args.config)
        return 0

    upstream_port = _free_port()
    me = [sys.executable, __file__]
    procs = [_start([*me, "--role", "upstream", "--port", str(upstream_port)])]
    results: dict[str, dict[str, float]] = {}
    try:
        results["upstream direct"] = wrk(upstream_port, procs[0].pid, args.duration, args.connections)
        with tempfile.TemporaryDirectory() as tmp:
            for codec in ("h11", "fast"):
                port = _free_port()
                config = Path(tmp) / f"bench-{codec}.yaml"
                config.write_text(PROXY_CONFIG.format(port=port, upstream=upstream_port, codec=codec))
                procs.append(_start([*me, "--role", "proxy", "--config", str(config)]))
                results[f"meshcore ({codec})"] = wrk(port, procs[-1].pid, args.duration, args.connections)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
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
