"""``meshcore proxy --workers N``: N processes serve the same listener (SO_REUSEPORT)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from meshcore.testing.client import fetch
from meshcore.testing.upstreams import serve_upstream

CONFIG = """
admin: {{enabled: false}}
listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    filter_chains:
      - filters:
          - http_connection_manager: {{route_config: main}}
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
    endpoints: ["{upstream}"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _holds_sockets(pid: int) -> bool:
    return any(str(fd.readlink()).startswith("socket:") for fd in Path(f"/proc/{pid}/fd").iterdir())


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def _wait_for_started(stream: trio.abc.ReceiveStream, count: int) -> None:
    """Read the workers' JSON logs until ``count`` of them have logged proxy_started.

    Two processes share the pipe and a log line can reach it in two writes (the line, then
    its newline), so lines may interleave: count the event itself, not parsed lines.
    """
    seen = b""
    while seen.count(b'"event": "proxy_started"') < count:
        chunk = await stream.receive_some(65536)
        assert chunk, "the proxy exited before it started"
        seen += chunk


async def test_two_workers_share_a_listener_and_stop_on_sigterm(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        upstream = await nursery.start(serve_upstream)
        port = _free_port()
        config = tmp_path / "proxy.yaml"
        config.write_text(CONFIG.format(port=port, upstream=f"{upstream[0]}:{upstream[1]}"))
        argv = [
            sys.executable,
            "-m",
            "meshcore",
            "proxy",
            "-c",
            str(config),
            "--workers",
            "2",
            "--log-format",
            "json",
        ]
        proc = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            assert proc.stderr is not None
            await _wait_for_started(proc.stderr, 2)
            workers = _children(proc.pid)
            assert len(workers) == 2
            # Each worker holds its own sockets (its listener on the shared port among them).
            assert all(_holds_sockets(worker) for worker in workers)
            responses = [await fetch(("127.0.0.1", port), f"/bytes/{n}") for n in range(1, 21)]
            assert [len(r.body) for r in responses] == list(range(1, 21))
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            assert not any(_alive(pid) for pid in workers)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
