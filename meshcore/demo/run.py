"""A demo run: a control plane, a sidecar and an application per workload, and traffic.

Every part is a real process of its own (``meshcore control-plane``, ``meshcore sidecar``,
``python -m meshcore.demo.apps``), in a session of its own so that the terminal's Ctrl-C
reaches the demo only: the demo stops them in order (traffic, applications and sidecars,
then the control plane), waits for each, and kills what does not stop in time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from meshcore.demo.layout import WORKLOADS, Layout, render_mesh, unsupported
from meshcore.registry import build_registry
from meshcore.testing.client import fetch

__all__ = ["RUN_MARKER", "DemoOptions", "TrafficCounts", "run_demo", "state_file"]

_STOP_TIMEOUT = 5.0
START_TIMEOUT = 60.0
"""How long the demo waits for each part to be ready (thirteen processes on a busy machine)."""


def state_file() -> Path:
    """Where a running demo says where it is (for ``meshcore demo shift`` and friends)."""
    return Path(tempfile.gettempdir()) / f"meshcore-demo-{os.getuid()}.json"


@attrs.frozen(kw_only=True)
class DemoOptions:
    """How to run: ports, duration, traffic rate, where to keep the mesh files and logs."""

    layout: Layout
    duration: float | None = None
    rate: float = 10.0
    workdir: Path | None = None


@attrs.define
class TrafficCounts:
    """What the traffic generator got back from the front page."""

    ok: int = 0
    rate_limited: int = 0
    degraded: int = 0
    failed: int = 0
    reasons: dict[str, int] = attrs.field(factory=dict)

    @property
    def total(self) -> int:
        """Every request sent."""
        return self.ok + self.rate_limited + self.degraded + self.failed

    def line(self) -> str:
        """One line for the terminal (and the tests)."""
        return (
            f"traffic: {self.total} requests: {self.ok} ok, {self.rate_limited} rate-limited (429, by design), "
            f"{self.degraded} degraded, {self.failed} failed"
        )


RUN_MARKER = "MESHCORE_DEMO_RUN"
"""The environment variable every process of a run carries: the run's folder (to find strays)."""


class _Processes:
    """The demo's child processes, by name, and their logs."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.marker = str(logs.parent)
        self.running: list[tuple[str, trio.Process, TextIO]] = []

    async def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> trio.Process:
        log = (self.logs / f"{name}.log").open("w")
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=None,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", RUN_MARKER: self.marker, **(env or {})},
            start_new_session=True,
        )
        self.running.append((name, process, log))
        return process

    def check(self) -> None:
        """Fail if a process has exited (with the end of its log)."""
        for name, process, _log in self.running:
            if process.returncode is not None:
                tail = (self.logs / f"{name}.log").read_text()[-1500:]
                msg = f"{name} exited with status {process.returncode}; its log ends:\n{tail}"
                raise RuntimeError(msg)

    async def stop(self, names: set[str] | None = None) -> None:
        """SIGTERM the processes named (all if None), wait, SIGKILL what is left."""
        chosen = [(n, p, f) for n, p, f in self.running if names is None or n in names]
        for _name, process, _log in chosen:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        with trio.move_on_after(_STOP_TIMEOUT):
            for _name, process, _log in chosen:
                await process.wait()
        for _name, process, log in chosen:
            if process.returncode is None:
                process.kill()
                await process.wait()
            log.close()
        self.running = [item for item in self.running if item not in chosen]


def _meshcore(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshcore", *args]


async def _wait_for(what: str, check: Any, processes: _Processes) -> None:
    """Poll ``check()`` until true; fail with ``what`` after START_TIMEOUT s or when a process dies."""
    with trio.move_on_after(START_TIMEOUT):
        while True:
            processes.check()
            if await check():
                return
            await trio.sleep(0.1)
    msg = f"timed out after {START_TIMEOUT:g}s waiting for {what}"
    raise RuntimeError(msg)


async def _get_json(address: str, path: str) -> Any:
    host, _, port = address.rpartition(":")
    try:
        with trio.fail_after(5):
            response = await fetch((host, int(port)), path, host=address)
    except (OSError, trio.TooSlowError):
        return None
    return json.loads(response.body) if response.status == 200 else None  # noqa: PLR2004 - HTTP OK


async def _port_open(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def _traffic(layout: Layout, rate: float, counts: TrafficCounts) -> None:
    """Call the front page through its sidecar at ``rate`` requests a second, forever."""
    address = ("127.0.0.1", layout.ports["productpage_inbound"])

    async def one() -> None:
        try:
            with trio.fail_after(10):
                response = await fetch(address, "/productpage", host="productpage")
        except (OSError, trio.TooSlowError) as err:
            counts.failed += 1
            reason = type(err).__name__
            counts.reasons[reason] = counts.reasons.get(reason, 0) + 1
            return
        if response.status == 429:  # noqa: PLR2004 - the front page's rate limit
            counts.rate_limited += 1
        elif response.status != 200:  # noqa: PLR2004 - HTTP OK
            counts.failed += 1
            reason = f"HTTP {response.status}"
            counts.reasons[reason] = counts.reasons.get(reason, 0) + 1
        elif response.json().get("errors"):
            counts.degraded += 1
            for error in response.json()["errors"]:
                counts.reasons[error] = counts.reasons.get(error, 0) + 1
        else:
            counts.ok += 1

    async with trio.open_nursery() as nursery:
        interval = 1.0 / rate
        deadline = trio.current_time()
        while True:
            nursery.start_soon(one)
            deadline += interval
            await trio.sleep_until(deadline)


def _banner(layout: Layout, workdir: Path, left_out: dict[str, list[str]], out: TextIO) -> None:
    dashboard = f"http://{layout.url('dashboard')}/dashboard"
    lines = [
        "",
        "meshcore demo: a service mesh on this machine",
        "",
        f"  control plane   delivery {layout.url('control')}, admin and dashboard {layout.url('dashboard')}",
    ]
    for w in WORKLOADS:
        proxy = f", HTTP proxy {layout.url(w.key + '_proxy')}" if w.calls else ""
        lines.append(
            f"  {w.name:<12}    app {layout.url(w.key + '_app')}, sidecar {layout.url(w.key + '_inbound')}"
            f"{proxy} (admin {layout.url(w.key + '_admin')})"
        )
    lines += [
        "  traffic         the generator calls the product page through its sidecar",
        "",
        f"  mesh resources  {workdir / 'mesh'}  (edit them: the control plane applies each save)",
        f"  logs            {workdir / 'logs'}",
        "",
        f"Dashboard: {dashboard}",
        f"Front page: curl http://{layout.url('productpage_inbound')}/productpage",
        "",
        "Three things to try (each shows on the dashboard within seconds):",
        "  1. shift the canary:   meshcore demo shift reviews v3 100",
        "  2. break ratings:      meshcore demo break ratings     (meshcore demo fix ratings undoes it)",
        "  3. deny a caller:      meshcore demo deny productpage details   (--undo allows it again)",
        "",
    ]
    if left_out:
        lines.append(
            "Not honoured by this meshcore yet, so left out of the mesh (meshcore refuses, never ignores):"
        )
        for name, reasons in left_out.items():
            lines.append(f"  {name}: {reasons[0]}")
        lines.append("")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), file=out, flush=True)


async def run_demo(options: DemoOptions, counts: TrafficCounts, out: TextIO = sys.stdout) -> None:
    """Run the demo until cancelled (SIGINT/SIGTERM handled by the caller) or ``duration`` passes.

    The traffic generator counts what it got back in ``counts``.
    """
    layout = options.layout
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="meshcore-demo-"))
    mesh = workdir / "mesh"
    logs = workdir / "logs"
    mesh.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    registry = build_registry()
    # The control plane's own config: its CA signs each sidecar's workload certificate.
    settings = workdir / "control-plane.yaml"
    settings.write_text("ca: {meshcore: {directory: ca, workload_lifetime: 1h}}\n")
    left_out: dict[str, list[str]] = {}
    for name, text in render_mesh(layout).items():
        path = mesh / name
        path.write_text(text)
        reasons = unsupported(path, registry)
        if reasons:
            left_out[name] = reasons
            path.rename(mesh / f"{name}.not-supported-yet")  # not a mesh file: the control plane skips it
    processes = _Processes(logs)
    state = state_file()
    try:
        await processes.start(
            "control-plane",
            _meshcore(
                "control-plane", "-c", str(mesh), "--config", str(settings), "--listen", layout.url("control"),
                "--admin", layout.url("dashboard"), "--allow-any-identity", "--poll-interval", "0.5",
                "--log-format", "json",
            ),
        )  # fmt: skip
        await _wait_for("the control plane", lambda: _port_open(layout.ports["dashboard"]), processes)
        for w in WORKLOADS:
            env = {"HTTP_PROXY": f"http://{layout.url(w.key + '_proxy')}", "NO_PROXY": ""} if w.calls else {}
            await processes.start(
                f"app-{w.name}",
                [sys.executable, "-m", "meshcore.demo.apps", w.app, "--port", str(layout.ports[f"{w.key}_app"]),
                 "--version", w.version],
                env=env,
            )  # fmt: skip
            await processes.start(
                f"sidecar-{w.name}",
                _meshcore(
                    "sidecar", "--control-plane", layout.url("control"), "--workload", w.name,
                    "--http-proxy", layout.url(w.key + "_proxy") if w.calls else "",
                    "--admin", layout.url(w.key + "_admin"), "--log-format", "json",
                ),
            )  # fmt: skip

        async def synced() -> bool:
            data = await _get_json(layout.url("dashboard"), "/proxies")
            proxies = (data or {}).get("proxies", [])
            for proxy in proxies:
                if proxy["status"] == "NACKED":
                    msg = f"the {proxy['workload']} sidecar refused its config: {proxy['nack']}"
                    raise RuntimeError(msg)
            ready = [p for p in proxies if p["status"] == "SYNCED" and p["current"]]
            return len(ready) >= len(WORKLOADS)

        await _wait_for(f"{len(WORKLOADS)} sidecars SYNCED", synced, processes)
        for w in WORKLOADS:
            await _wait_for(
                f"the {w.name} application", lambda w=w: _port_open(layout.ports[f"{w.key}_app"]), processes
            )
        state.write_text(
            json.dumps({"admin": layout.url("dashboard"), "mesh": str(mesh), "pid": os.getpid()})
        )
        _banner(layout, workdir, left_out, out)
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_traffic, layout, options.rate, counts)
            while options.duration is None or time.monotonic() - started < options.duration:
                processes.check()
                await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()
            await processes.stop({n for n, _p, _f in processes.running if n != "control-plane"})
            await processes.stop()
