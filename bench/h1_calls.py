"""Python function calls per proxied HTTP/1.1 request: a figure that does not depend on the CPU.

Run: ``python bench/h1_calls.py [--requests 3000] [--connections 4] [--runs 3]``.

It starts a canned-response upstream (bench/http1.py's, in a process of its own), then
serves the issue's chain (``connection_limit``, ``fault``, ``local_ratelimit``, router; fast
codec on both sides) in this process under cProfile while a thread drives keep-alive
requests over ``--connections`` sockets (one request in flight on each). It prints the
calls per request (every Python and C function call cProfile sees, a coroutine's each
resumption counted as a call) and the functions called most per request. How often a
socket read finds its data already there changes the count from run to run (a wait for
readiness is some twenty calls more than a ready read, and the machine's load decides
which happens): the fewest of the runs (the fewest waits) is the steadiest figure, the
median is printed beside it. A last, unprofiled run samples the connection tasks' await
chains and prints the deepest common one at each wait of a request (for the upstream's
answer, for the client's next request): the frames every suspension unwinds and resumes.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import socket
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import free_port, start

HERE = Path(__file__).resolve().parent

CONFIG = """
admin: {{enabled: false}}
listeners:
  - name: bench
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - connection_limit: {{max_connections: 100000}}
          - http_connection_manager:
              route_config: main
              codec: fast
              http_filters:
                - fault: {{abort: {{http_status: 503, percentage: 0}}}}
                - local_ratelimit: {{max_tokens: 100000000, tokens_per_fill: 100000000, fill_interval: 1s}}
                - router
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
    endpoints: ["127.0.0.1:{upstream}"]
"""


def _client(port: int, requests: int, connections: int) -> None:
    """Keep-alive GETs, one in flight per connection; reads each response to its end."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: h1_calls\r\n\r\n"
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        for _ in range(requests // connections):
            for s in socks:
                s.sendall(request)
            for s in socks:
                data = b""
                while not data.endswith(b"hello, world\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        msg = "the proxy closed the connection"
                        raise RuntimeError(msg)
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    msg = f"unexpected response: {data[:80]!r}"
                    raise RuntimeError(msg)
    finally:
        for s in socks:
            s.close()


def _await_chain(coro: Any) -> tuple[str, ...]:
    """The functions a task's coroutine awaits, one inside the other, down to its yield."""
    names = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        names.append(frame.f_code.co_qualname)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return tuple(names)


async def _sample_chains(seen: collections.Counter[tuple[str, ...]]) -> None:
    """Every half millisecond, the await chain of every connection task of the proxy."""
    import trio

    while True:
        await trio.sleep(0.0005)
        tasks = [trio.lowlevel.current_root_task()]
        while tasks:
            task = tasks.pop()
            for nursery in task.child_nurseries:
                tasks.extend(nursery.child_tasks)
            chain = _await_chain(task.coro)
            if chain and chain[0].endswith("._handle"):
                seen[chain] += 1


def measure(
    config: Path, port: int, args: argparse.Namespace, chains: collections.Counter[tuple[str, ...]]
) -> list[tuple[float, pstats.Stats]]:
    """Serve ``config`` here; per run, the calls per request and the profile."""
    import trio

    import meshcore
    from meshcore.logs import configure
    from meshcore.runtime.server import serve_proxy

    configure("warning", fmt="json")
    registry = meshcore.build_registry()
    source_type = registry.get("config_source", "file")
    if source_type is None or source_type.config is None:
        msg = "the built-in file config source is missing"
        raise RuntimeError(msg)
    source = source_type.factory(
        source_type.config(path=str(config), poll_interval=meshcore.Duration(0)), registry
    )
    results: list[tuple[float, pstats.Stats]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_proxy, source, registry)
            await trio.to_thread.run_sync(_client, port, 200, args.connections)  # warm-up
            for _ in range(args.runs):
                profile = cProfile.Profile()
                profile.enable()
                await trio.to_thread.run_sync(_client, port, args.requests, args.connections)
                profile.disable()
                stats = pstats.Stats(profile)
                calls = sum(row[1] for row in stats.stats.values())  # type: ignore[attr-defined]
                results.append((calls / args.requests, stats))
            nursery.start_soon(_sample_chains, chains)  # after the profiles: it costs calls too
            await trio.to_thread.run_sync(_client, port, args.requests, args.connections)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return results


def main() -> int:
    """Start the upstream, profile the proxy in this process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    args = parser.parse_args()
    chains: collections.Counter[tuple[str, ...]] = collections.Counter()
    upstream_port, port = free_port(), free_port()
    upstream = start(
        [sys.executable, str(HERE / "http1.py"), "--role", "upstream", "--port", str(upstream_port)]
    )
    try:
        with tempfile.TemporaryDirectory(prefix="meshcore-h1calls-") as tmp:
            config = Path(tmp) / "proxy.yaml"
            config.write_text(CONFIG.format(port=port, upstream=upstream_port))
            results = measure(config, port, args, chains)
    finally:
        upstream.kill()
    per_request = sorted(r[0] for r in results)
    median = statistics.median(per_request)
    print(
        f"Python calls per proxied request (cProfile, {args.requests} requests over "
        f"{args.connections} keep-alive connections, {args.runs} runs): fewest {per_request[0]:.0f}, "
        f"median {median:.0f}, runs {', '.join(f'{x:.0f}' for x in per_request)}"
    )
    stats = min(results, key=lambda r: abs(r[0] - median))[1]
    rows = sorted(
        (
            (row[1] / args.requests, f"{Path(f).name}:{line}({name})")
            for (f, line, name), row in stats.stats.items()
        ),  # type: ignore[attr-defined]
        reverse=True,
    )
    # The frames every suspension of a request unwinds and resumes: from the connection's
    # task to the socket wait (try_receive's checkpoint when the bytes are there already).
    for label, where, unless in (
        ("the upstream's answer", "H1Exchange", "-"),
        ("the next request", "H1Session._read_head", "H1Exchange"),  # the session's own wait
    ):
        found = [
            c
            for c in chains
            if "try_receive" in " ".join(c)
            and any(where in name for name in c)
            and not any(unless in name for name in c)
        ]
        if found:
            chain = max(found, key=lambda c: chains[c])
            print(f"await chain at the wait for {label}: {len(chain)} frames: {' > '.join(chain)}")
    print("most called, per request (of the median run):")
    for count, name in rows[: args.top]:
        print(f"{count:7.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
