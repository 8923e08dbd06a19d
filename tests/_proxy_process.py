"""``meshcore proxy`` as a child process, for tests that measure its memory or read its logs."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import trio


@attrs.define
class ProxyProcess:
    """A proxy child process: its address, memory and JSON log lines."""

    process: trio.Process
    address: tuple[str, int]
    logs: list[dict[str, Any]] = attrs.Factory(list)

    def rss_bytes(self) -> int:
        """The process's resident memory now (its own, read from /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        msg = "no VmRSS in /proc/PID/status"
        raise AssertionError(msg)

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The log lines of ``event`` so far."""
        return [entry for entry in self.logs if entry.get("event") == event]


async def _kill(process: trio.Process) -> None:
    process.kill()


async def start_proxy_process(nursery: trio.Nursery, config: dict[str, Any], tmp_path: Path) -> ProxyProcess:
    """Start ``python -m meshcore proxy`` on ``config`` (listener "ingress"); killed with ``nursery``."""
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(path), "--log-format", "json"]
    run = functools.partial(
        trio.run_process,
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        deliver_cancel=_kill,
    )
    process: trio.Process = await nursery.start(run)
    proxy = ProxyProcess(process, ("", 0))
    started = trio.Event()

    async def collect_logs() -> None:
        assert process.stderr is not None
        pending = b""
        async for chunk in process.stderr:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                entry = json.loads(line)
                proxy.logs.append(entry)
                if entry["event"] == "proxy_started":
                    host, _, port = entry["listeners"]["ingress"].rpartition(":")
                    proxy.address = (host, int(port))
                    started.set()
        started.set()

    nursery.start_soon(collect_logs)
    await started.wait()
    assert proxy.address[1], f"the proxy exited before it started: {proxy.logs}"
    return proxy
