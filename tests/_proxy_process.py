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
    ended: bool = False
    addresses: dict[str, tuple[str, int]] = attrs.Factory(dict)
    """Every listener's address, by name."""
    _logged: trio.Event = attrs.Factory(trio.Event)

    def rss_bytes(self) -> int:
        """The process's resident memory now (its own, read from /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        msg = "no VmRSS in /proc/PID/status"
        raise AssertionError(msg)

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The log lines of ``event`` (with these fields) so far."""
        return [
            entry
            for entry in self.logs
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, count: int = 1, **fields: Any) -> dict[str, Any]:
        """The first log line of ``event`` with these fields, once ``count`` of them are written."""
        while True:
            if len(found := self.logged(event, **fields)) >= count:
                return found[0]
            if self.ended:
                msg = f"the proxy exited without logging {event} {fields}; it logged {self.logs}"
                raise AssertionError(msg)
            await self._logged.wait()

    def _add(self, entry: dict[str, Any]) -> None:
        self.logs.append(entry)
        self._logged.set()
        self._logged = trio.Event()


async def _kill(process: trio.Process) -> None:
    process.kill()


async def start_proxy_process(
    nursery: trio.Nursery,
    config: dict[str, Any] | None,
    tmp_path: Path,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    name: str = "proxy",
) -> ProxyProcess:
    """Start ``python -m meshcore proxy`` (listener "ingress"); killed with ``nursery``.

    With ``config``, it runs ``-c`` on that config written to a file; ``args`` are more
    arguments (``--source NAME ...`` instead of a config), ``env`` its environment. ``address``
    is the listener "ingress"'s (if any), ``addresses`` every listener's; ``name`` names the
    config file, so that several proxies can share ``tmp_path``.
    """
    argv = [sys.executable, "-m", "meshcore", "proxy", "--log-format", "json", *args]
    if config is not None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        argv += ["-c", str(path)]
    run = functools.partial(
        trio.run_process,
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        deliver_cancel=_kill,
        env=env,
    )
    process: trio.Process = await nursery.start(run)
    proxy = ProxyProcess(process, ("", 0))
    started = trio.Event()

    async def collect_logs() -> None:
        assert process.stderr is not None
        pending = b""
        try:
            async for chunk in process.stderr:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        entry = {"event": "<not JSON>", "text": line.decode(errors="replace")}
                    proxy._add(entry)
                    if entry["event"] == "proxy_started":
                        for listener, address in entry["listeners"].items():
                            host, _, port = address.rpartition(":")
                            proxy.addresses[listener] = (host, int(port))
                        proxy.address = proxy.addresses.get("ingress", ("", 0))
                        started.set()
        finally:
            proxy.ended = True
            proxy._logged.set()
            started.set()

    nursery.start_soon(collect_logs)
    await started.wait()
    assert proxy.addresses, f"the proxy exited before it started: {proxy.logs}"
    return proxy
