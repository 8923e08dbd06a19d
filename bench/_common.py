"""What the benchmarks share.

The measured proxy (three pass-through filters + router) and its config, a canned HTTP/1.1
upstream, starting role subprocesses and waiting for them, free ports, the CPU time and
memory of a process (or its whole tree) from /proc, and wrk and h2load: run, parsed, with
the CPU a server spent during the measured run.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CannedHttp1",
    "cpu_seconds",
    "free_port",
    "h2load",
    "milliseconds",
    "passthrough_registry",
    "proxy_config",
    "run_proxy",
    "serve_canned",
    "start",
    "stop",
    "tree",
    "tree_cpu",
    "tree_rss_mib",
    "wait_listening",
    "wrk",
]


def passthrough_registry() -> Any:
    """The plugin registry with a ``passthrough`` HTTP filter too (it calls the next one: a chain's cost).

    meshcore is imported here: the other roles (upstreams, load generators) need none of it.
    """
    import meshcore

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

    return meshcore.build_registry(plugins=[("bench-passthrough", Plugin())])


def run_proxy(config: str) -> None:
    """Serve ``config`` with a ``passthrough`` HTTP filter registered in-process; print "ready"."""
    # Imported here: the other roles (upstreams, load generators) need none of meshcore.
    import trio

    import meshcore
    from meshcore.logs import configure
    from meshcore.runtime.server import serve_proxy

    configure("warning", fmt="json")
    registry = passthrough_registry()
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


def proxy_config(
    port: int,
    upstream: int,
    *,
    filters: str = "[router]",
    codec: str | None = None,
    l4: str = "",
    admin: int | None = None,
    cluster: str = "upstream",
    protocol: str | None = None,
    routes: str = "",
) -> str:
    """The config of a proxy on 127.0.0.1:``port``: ``l4`` filters, then HTTP ``filters``, to one upstream.

    Args:
        port: the listener's port.
        upstream: the port of the cluster's one endpoint on loopback.
        filters: the HTTP filter chain, in YAML.
        codec: the HTTP/1.1 codec of both sides ("h11", "fast"); the default if None.
        l4: network filters before the connection manager, YAML list items indented 10.
        admin: the admin server's port; disabled if None.
        cluster: the cluster's name.
        protocol: the cluster's upstream protocol ("http2"); the default if None.
        routes: routes before the catch-all one to the cluster, YAML list items indented 10.
    """
    codec_line = f"              codec: {codec}\n" if codec else ""
    cluster_lines = f"    codec: {codec}\n" if codec else ""
    if protocol:
        cluster_lines += f"    protocol: {protocol}\n"
    return (
        f"admin: {{{'address: 127.0.0.1:' + str(admin) if admin is not None else 'enabled: false'}}}\n"
        "listeners:\n"
        "  - name: bench\n"
        f"    address: 127.0.0.1:{port}\n"
        "    filter_chains:\n"
        "      - filters:\n"
        f"{l4}"
        "          - http_connection_manager:\n"
        "              route_config: main\n"
        f"{codec_line}"
        f"              http_filters: {filters}\n"
        "route_configs:\n"
        "  - name: main\n"
        "    virtual_hosts:\n"
        "      - name: all\n"
        '        domains: ["*"]\n'
        "        routes:\n"
        f"{routes}"
        "          - match: {prefix: /}\n"
        f"            cluster: {cluster}\n"
        "clusters:\n"
        f"  - name: {cluster}\n"
        f"{cluster_lines}"
        f'    endpoints: ["127.0.0.1:{upstream}"]\n'
    )


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


# -- upstreams ------------------------------------------------------------------------------------

CANNED_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nhello, world\n"


class CannedHttp1(asyncio.Protocol):
    """A canned 200 for every HTTP/1.1 request (GET only, keep-alive, pipelining-safe): cheap."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(CANNED_RESPONSE * count)


# -- processes ------------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, now (workers, acceptors: children of any of its threads)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (those alive now)."""
    total = 0.0
    for member in tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue
    return total


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB."""
    total = 0
    for member in tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def stop(procs: list[subprocess.Popen[Any]]) -> None:
    """Terminate every process of ``procs`` at once, then wait for each (30 s at most)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """Wait until something accepts on loopback ``port`` (``proc`` started it and prints no "ready")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"process {proc.args!r} exited with {proc.returncode}"
            raise RuntimeError(msg)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    proc.kill()
    msg = f"nothing listens on {port} after {timeout} s: {proc.args!r}"
    raise RuntimeError(msg)


# -- load generators ------------------------------------------------------------------------------


def wrk(
    port: int,
    connections: int,
    duration: int,
    meters: Mapping[str, Callable[[], float]] | None = None,
    *,
    warm_up: bool = True,
) -> dict[str, float]:
    """``wrk -t1`` at ``http://127.0.0.1:port/`` (after a 1 s warm-up), parsed.

    Returns requests, requests_per_s, p50_ms, p99_ms, non_2xx (non-2xx or 3xx answers) and
    socket_errors (connect, read, write and timeout errors added up); and by the name of
    each of ``meters`` (such as ``lambda: cpu_seconds(pid)``), what it grew by during the
    measured run.
    """
    url = f"http://127.0.0.1:{port}/"
    if warm_up:  # connections, caches
        subprocess.run(["wrk", "-t1", f"-c{connections}", "-d1s", url], capture_output=True, check=True)  # noqa: S603, S607 - wrk from PATH, arguments built here
    meters = meters or {}
    before = {name: meter() for name, meter in meters.items()}
    out = subprocess.run(  # noqa: S603 - arguments built here
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],  # noqa: S607 - wrk from PATH
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    grown = {name: meter() - before[name] for name, meter in meters.items()}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": milliseconds(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)),  # type: ignore[union-attr]
        "p99_ms": milliseconds(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
        **grown,
    }


def h2load(
    port: int,
    connections: int,
    streams: int,
    duration: int,
    meters: Mapping[str, Callable[[], float]],
    *,
    path: str = "/",
) -> dict[str, float]:
    """``h2load -t1`` (h2c, prior knowledge) at ``http://127.0.0.1:port{path}`` after a 1 s warm-up, parsed.

    Returns done, succeeded, failed, errored, non_2xx (3xx, 4xx and 5xx answers),
    requests_per_s, min_ms, max_ms and mean_ms (time for request); and by the name of each
    of ``meters``, what it grew by during the measured run.
    """
    url = f"http://127.0.0.1:{port}{path}"
    load = ["h2load", "-t1", f"-c{connections}", f"-m{streams}"]
    subprocess.run([*load, "-D1", url], capture_output=True, check=True)  # noqa: S603 - h2load from PATH, warm-up
    before = {name: meter() for name, meter in meters.items()}
    out = subprocess.run([*load, f"-D{duration}", url], capture_output=True, text=True, check=True).stdout  # noqa: S603 - arguments built here
    grown = {name: meter() - before[name] for name, meter in meters.items()}
    counts = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
    )
    statuses = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    rate = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    assert counts is not None, out
    assert statuses is not None, out
    assert times is not None, out
    assert rate is not None, out
    done, succeeded, failed, errored = (int(n) for n in counts.groups())
    return {
        "done": done,
        "succeeded": succeeded,
        "failed": failed,
        "errored": errored,
        "non_2xx": sum(int(n) for n in statuses.groups()),
        "requests_per_s": float(rate.group(1)),
        "min_ms": milliseconds(times.group(1)),
        "max_ms": milliseconds(times.group(2)),
        "mean_ms": milliseconds(times.group(3)),
        **grown,
    }
