"""What the benchmarks share.

The measured proxy (three pass-through filters + router), starting role subprocesses,
free ports, and a process's CPU time from /proc.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

__all__ = ["cpu_seconds", "free_port", "milliseconds", "run_proxy", "serve_canned", "start"]


def run_proxy(config: str) -> None:
    """Serve ``config`` with a ``passthrough`` HTTP filter registered in-process; print "ready"."""
    # Imported here: the other roles (upstreams, load generators) need none of meshcore.
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
    if source_type is None or source_type.config is None:
        msg = "the built-in file config source is missing"
        raise RuntimeError(msg)
    source = source_type.factory(
        source_type.config(path=config, poll_interval=meshcore.Duration(0)), registry
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_proxy, source, registry)
            print("ready", flush=True)

    trio.run(main)


def serve_canned(protocol: Callable[[], asyncio.Protocol], port: int) -> None:
    """Serve ``protocol`` (a canned-response upstream) on loopback ``port``; print "ready"."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(argv: list[str]) -> subprocess.Popen[str]:
    """Start a role subprocess and wait for its "ready" line."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: S603 - our own script
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if line.strip() != "ready":
        proc.kill()
        msg = f"{argv} did not start: {line!r}"
        raise RuntimeError(msg)
    return proc


def milliseconds(text: str) -> float:
    """A load generator's duration ("850us", "1.2ms", "2s") in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        msg = f"not a duration: {text!r}"
        raise ValueError(msg)
    return float(match[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
