"""HTTP/2 benchmark: h2load, 10 connections x 10 streams, upstream direct vs. through meshcore.

Run: ``python bench/http2.py [--duration 10] [--connections 10] [--streams 10]`` (needs
``h2load``, Debian package nghttp2-client).

It starts a minimal HTTP/2 upstream (asyncio + h2, cleartext with prior knowledge, a canned
200 per request: as cheap as Python HTTP/2 gets, so that the proxy is what is measured),
then drives load with h2load (a) at the upstream directly, (b) at a meshcore proxy whose
chain is the router plus three pass-through filters, forwarding over HTTP/2 to the same
upstream, and (c) at a route of that proxy that answers directly (meshcore's own HTTP/2
ceiling, no upstream). For each it prints requests/s, mean and max request time, CPU
microseconds per request of the serving process (utime + stime from /proc; for (b) the
proxy alone) and errors; then the ratios to the upstream reached directly. All runs happen
in one invocation, because these machines are noisy: quote ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from _common import cpu_seconds, free_port, proxy_config, run_proxy, serve_canned, start, stop
from _common import h2load as run_h2load

BODY = b"hello, world\n"


# -- the upstream ---------------------------------------------------------------------------


class _CannedH2(asyncio.Protocol):
    """One HTTP/2 connection: a canned 200 for every request, once its stream has ended."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.write(self.h2.data_to_send())
            self.transport.close()
            return
        try:
            for event in events:
                if isinstance(event, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers = [
                        (b":status", b"200"),
                        (b"content-type", b"text/plain"),
                        (b"content-length", b"13"),
                    ]
                    self.h2.send_headers(event.stream_id, headers)
                    self.h2.send_data(event.stream_id, BODY, end_stream=True)
        except h2.exceptions.ProtocolError:  # the client said GOAWAY (end of a run) and then more
            self.transport.close()
        self.transport.write(self.h2.data_to_send())


def run_upstream(port: int) -> None:
    """A canned-response HTTP/2 server (cleartext, prior knowledge)."""
    serve_canned(_CannedH2, port)


# -- the proxy with three pass-through filters ----------------------------------------------


DIRECT_ROUTE = '          - match: {prefix: /direct}\n            direct_response: {status: 200, body: "hello, world\\n"}\n'


# -- measuring ------------------------------------------------------------------------------


def h2load(
    port: int, server_pid: int, duration: int, connections: int, streams: int, path: str = "/"
) -> dict[str, float]:
    """Run h2load against ``port``; measure the server process's CPU during the run."""
    run = run_h2load(
        port, connections, streams, duration, {"cpu_seconds": lambda: cpu_seconds(server_pid)}, path=path
    )
    return {
        "requests_per_s": run["requests_per_s"],
        "mean_ms": run["mean_ms"],
        "max_ms": run["max_ms"],
        "cpu_us_per_request": run["cpu_seconds"] / max(run["done"], 1) * 1e6,
        "requests": run["done"],
        # Failed or errored requests, and any answer but 2xx.
        "errors": run["failed"] + run["errored"] + run["non_2xx"],
    }


def main() -> int:
    """Measure, or (with ``--role``) be one of the measured processes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per connection")
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

    upstream_port, proxy_port = free_port(), free_port()
    me = [sys.executable, __file__]
    procs = [start([*me, "--role", "upstream", "--port", str(upstream_port)])]
    load = (args.duration, args.connections, args.streams)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "bench.yaml"
            config.write_text(
                proxy_config(
                    proxy_port,
                    upstream_port,
                    filters="[passthrough, passthrough, passthrough, router]",
                    protocol="http2",
                    routes=DIRECT_ROUTE,
                )
            )
            procs.append(start([*me, "--role", "proxy", "--config", str(config)]))
            upstream, proxy = procs[0].pid, procs[1].pid
            direct = h2load(upstream_port, upstream, *load)
            proxied = h2load(proxy_port, proxy, *load)
            local = h2load(proxy_port, proxy, *load, path="/direct")
    finally:
        stop(procs)
    rows = [
        ("upstream direct", direct),
        ("through meshcore", proxied),
        ("meshcore direct_response", local),
    ]
    print(
        f"h2load -c{args.connections} -m{args.streams} -D{args.duration}s, "
        "HTTP/2 cleartext (prior knowledge) both hops, 13-byte responses"
    )
    print(f"{'':25} {'req/s':>9} {'mean ms':>8} {'max ms':>8} {'server CPU us/req':>18} {'errors':>7}")
    for label, r in rows:
        print(
            f"{label:25} {r['requests_per_s']:>9.0f} {r['mean_ms']:>8.2f} {r['max_ms']:>8.2f}"
            f" {r['cpu_us_per_request']:>18.1f} {r['errors']:>7.0f}"
        )
    print(
        f"ratio through meshcore / upstream direct: throughput {proxied['requests_per_s'] / direct['requests_per_s']:.3f}, "
        f"mean latency {proxied['mean_ms'] / direct['mean_ms']:.2f}x, "
        f"CPU per request {proxied['cpu_us_per_request'] / direct['cpu_us_per_request']:.1f}x"
    )
    print(
        f"ratio meshcore direct_response / upstream direct: throughput "
        f"{local['requests_per_s'] / direct['requests_per_s']:.3f}"
    )
    if args.json:
        print(json.dumps({"direct": direct, "proxied": proxied, "direct_response": local}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
