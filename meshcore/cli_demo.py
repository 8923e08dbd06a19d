"""``meshcore demo``: a request through a filter chain within a minute of cloning.

Starts the sample upstream where the example config expects it, a proxy from that
config, sends a few requests through the proxy, prints what came back and what the
proxy logged and counted, then drains the proxy and exits.
"""

from __future__ import annotations

import argparse
import io
import sys
from http import HTTPStatus

import attrs
import structlog
import trio

from meshcore.config import Snapshot, load_snapshot
from meshcore.errors import ConfigError
from meshcore.logs import configure as configure_logging
from meshcore.registry import build_registry
from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import fetch
from meshcore.testing.upstreams import serve_upstream

__all__ = ["cmd_demo"]

DEMO_REQUESTS = (("GET", "/health"), ("GET", "/api/hello?lang=en"), ("POST", "/echo"), ("GET", "/status/503"))


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every request got through."""
    logs = io.StringIO()
    configure_logging("info", fmt="json", stream=logs)
    registry = build_registry()
    try:
        snapshot = load_snapshot(args.config, registry)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 1
    snapshot = _with_access_log(snapshot)
    cluster = snapshot.clusters[0]
    endpoint = cluster.endpoints[0].address

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_upstream, endpoint.host, endpoint.port)
            print(f"sample upstream listening on {endpoint}")
            proxy = Proxy(registry)
            await nursery.start(proxy.run)
            proxy.apply(snapshot)
            listener = snapshot.listeners[0].name
            address = proxy.address(listener)
            print(f"proxy {listener!r} listening on {address[0]}:{address[1]} (config {args.config})\n")
            failures = 0
            for method, path in DEMO_REQUESTS:
                body = b"hello through meshcore" if method == "POST" else None
                with trio.fail_after(10):
                    response = await fetch(address, path, method=method, body=body)
                flags = response.header("x-meshcore-flags") or "-"
                upstream = response.header("x-upstream") or "(answered by the proxy)"
                print(f"{method} {path} -> {response.status}  upstream={upstream}  flags={flags}")
                print(f"    {response.body[:120]!r}")
                failures += response.status >= HTTPStatus.INTERNAL_SERVER_ERROR and path != "/status/503"
            print("\naccess log:")
            for line in logs.getvalue().splitlines():
                if '"request_completed"' in line:
                    print(f"    {line}")
            print("\nstats:")
            for line in proxy.stats.render_text().splitlines():
                if line.startswith(("http.", "cluster.")) and not line.endswith(": 0"):
                    print(f"    {line}")
            proxy.drain()
            nursery.cancel_scope.cancel()
        return 1 if failures else 0

    try:
        return trio.run(main)
    except OSError as err:
        print(f"demo failed: {err} (is another program using the example's ports?)", file=sys.stderr)
        return 1
    finally:
        structlog.reset_defaults()


def _with_access_log(snapshot: Snapshot) -> Snapshot:
    listeners = tuple(attrs.evolve(li, access_log=True) for li in snapshot.listeners)
    return attrs.evolve(snapshot, listeners=listeners)
