"""``meshcore proxy --workers N``: N processes serve the same listener (SO_REUSEPORT), one admin server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _ports import free_port
from _proxy_process import start_proxy_process

from meshcore import split_host_port
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

    The processes share the pipe and a read may end inside a line: count the event itself,
    not parsed lines.
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
        port = free_port()
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


async def _exited(pid: int) -> None:
    """Wait until ``pid`` (not our child: the worker of a supervisor) has exited."""
    fd = os.pidfd_open(pid)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_workers_stop_when_their_supervisor_is_killed(nursery: trio.Nursery, tmp_path: Path) -> None:
    # SIGKILL (or the OOM killer) leaves the supervisor no chance to stop its workers: each
    # must notice on its own, or it keeps serving the port with a config nobody updates.
    with trio.fail_after(30):
        upstream = await nursery.start(serve_upstream)
        port = free_port()
        config = tmp_path / "proxy.yaml"
        config.write_text(CONFIG.format(port=port, upstream=f"{upstream[0]}:{upstream[1]}"))
        argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--workers", "2"]
        proc = await trio.lowlevel.open_process(
            [*argv, "--log-format", "json"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert proc.stderr is not None
        try:
            await _wait_for_started(proc.stderr, 2)
            workers = _children(proc.pid)
            assert len(workers) == 2
            assert (await fetch(("127.0.0.1", port), "/bytes/3")).status == 200
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
            for pid in workers:
                await _exited(pid)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        said = b""
        while chunk := await proc.stderr.receive_some(65536):  # the workers held the pipe
            said += chunk
    assert said.count(b'"event": "supervisor_gone"') == 2
    assert said.count(b'"event": "proxy_stopped"') == 2
    with pytest.raises(OSError, match="all attempts to connect"):  # nobody serves the port any more
        await fetch(("127.0.0.1", port), "/bytes/3")


# -- one admin server for the whole group ----------------------------------------------------------


def _config(upstream: tuple[str, int], admin: str = "127.0.0.1:0") -> dict[str, Any]:
    return {
        "admin": {"address": admin},
        "listeners": [
            {
                "name": "ingress",
                "address": f"127.0.0.1:{free_port()}",
                "filter_chains": [{"filters": [{"http_connection_manager": {"route_config": "main"}}]}],
            }
        ],
        "route_configs": [
            {
                "name": "main",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "cluster": "backend"}],
                    }
                ],
            }
        ],
        "clusters": [{"name": "backend", "endpoints": [f"{upstream[0]}:{upstream[1]}"]}],
    }


def _requests_total(metrics: list[dict[str, Any]]) -> int:
    return sum(
        int(m["value"])
        for m in metrics
        if m["name"] == "http_downstream_rq_total" and m["labels"] == {"listener": "ingress"}
    )


async def test_the_admin_server_shows_every_worker_summed_and_each_alone(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(40):
        upstream = await nursery.start(serve_upstream)
        proxy = await start_proxy_process(nursery, _config(upstream), tmp_path, args=("--workers", "2"))
        await proxy.wait_for("proxy_started", count=2)
        admin = split_host_port((await proxy.wait_for("admin_started"))["address"])
        sent = 24
        for n in range(sent):  # a connection each: the kernel spreads them over the workers
            assert (await fetch(proxy.address, f"/bytes/{n + 1}")).status == 200

        async with httpx.AsyncClient(base_url=f"http://{admin[0]}:{admin[1]}") as client:
            assert (await client.get("/ready")).text == "LIVE\n"
            workers = (await client.get("/workers")).json()["workers"]
            total = _requests_total((await client.get("/stats?format=json")).json())
            each = [
                _requests_total((await client.get(f"/stats?format=json&worker={i}")).json()) for i in (0, 1)
            ]
            prometheus = (await client.get("/stats/prometheus")).text
            text = (await client.get("/stats?filter=downstream_rq_total")).text
            clusters = (await client.get("/clusters")).json()
            listeners = (await client.get("/listeners")).json()
            dump = (await client.get("/config_dump")).json()
            status = (await client.get("/config_status")).json()
            one_worker = (await client.get("/ready?worker=1")).text
            no_worker = await client.get("/stats?worker=2")

            # Each worker has a pid of its own, a child of the parent; the sum covers both.
            assert [w["ready"] for w in workers] == [True, True]
            assert sorted(w["pid"] for w in workers) == sorted(_children(proxy.process.pid))
            assert total == sent
            assert sum(each) == sent
            assert all(each), each  # both took some (24 connections: all on one is a 2**-23 chance)
            # The config status covers both workers too: one version, each one's applies counted.
            versions = [w["version"] for w in status["workers"]]
            assert (versions, status["snapshots_applied"], status["snapshots_rejected"]) == (
                [dump["version"]] * 2,
                2,
                {"parse": 0, "validation": 0, "apply": 0},
            )
            assert (
                f'meshcore_http_downstream_rq_total{{listener="ingress"}} {sent}' in prometheus.splitlines()
            )
            assert f"http.ingress.downstream_rq_total: {sent}\n" == text
            [backend] = clusters["clusters"]
            assert backend["endpoints"][0]["address"] == f"{upstream[0]}:{upstream[1]}"
            assert backend["endpoints"][0]["healthy"] is True
            assert clusters["workers"] == 2
            assert listeners["listeners"][0]["name"] == "ingress"
            assert dump["listeners"][0]["name"] == "ingress"
            assert one_worker == "LIVE\n"
            assert (no_worker.status_code, no_worker.text) == (400, "no worker '2': workers are 0 to 1\n")

            # A worker that hangs: the group is not ready, and says which; sums would be partial.
            os.kill(workers[1]["pid"], signal.SIGSTOP)
            try:
                ready = await client.get("/ready")
                stats = await client.get("/stats")
            finally:
                os.kill(workers[1]["pid"], signal.SIGCONT)
            assert (ready.status_code, ready.text) == (503, "NOT READY\nworker 1: NOT ANSWERING\n")
            assert (stats.status_code, stats.text) == (
                503,
                "worker 1 did not answer: the figures would be partial\n",
            )
            assert (await client.get("/ready")).text == "LIVE\n"
        proxy.process.send_signal(signal.SIGTERM)
        assert await proxy.process.wait() == 0


async def test_a_worker_that_dies_is_started_again(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(40):
        upstream = await nursery.start(serve_upstream)
        proxy = await start_proxy_process(nursery, _config(upstream), tmp_path, args=("--workers", "2"))
        await proxy.wait_for("proxy_started", count=2)
        admin = split_host_port((await proxy.wait_for("admin_started"))["address"])
        # The supervisor restarts only a worker it saw ready (else it could not start at all).
        await proxy.wait_for("worker_ready", count=2)
        async with httpx.AsyncClient(base_url=f"http://{admin[0]}:{admin[1]}") as client:
            before = (await client.get("/workers")).json()["workers"]
            assert [w["ready"] for w in before] == [True, True]

            os.kill(before[1]["pid"], signal.SIGKILL)  # a crash, or the OOM killer
            died = await proxy.wait_for("worker_died")
            restarted = await proxy.wait_for("worker_restarted")
            await proxy.wait_for("proxy_started", count=3)
            assert (died["worker"], died["status"]) == (1, 128 + signal.SIGKILL)
            after = (await client.get("/workers")).json()["workers"]
            assert after[0]["pid"] == before[0]["pid"]
            assert after[1]["pid"] == restarted["pid"] != before[1]["pid"]
            assert sorted(w["pid"] for w in after) == sorted(_children(proxy.process.pid))
            assert (await client.get("/ready")).text == "LIVE\n"
            for n in range(10):  # both workers serve (a connection each: the kernel spreads them)
                assert (await fetch(proxy.address, f"/bytes/{n + 1}")).status == 200
            assert _requests_total((await client.get("/stats?format=json")).json()) == 10
        proxy.process.send_signal(signal.SIGTERM)
        assert await proxy.process.wait() == 0
        assert not any(_alive(w["pid"]) for w in after)


# -- a busy admin port: one line, exit 1 ----------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_busy_admin_port_is_one_line_naming_the_address(
    nursery: trio.Nursery, tmp_path: Path, workers: str
) -> None:
    with trio.fail_after(30):
        upstream = await nursery.start(serve_upstream)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = tmp_path / "proxy.json"
            config.write_text(json.dumps(_config(upstream, admin=f"127.0.0.1:{port}")))
            argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--workers", workers]
            done = await trio.run_process([*argv, "--log-format", "json"], capture_stderr=True, check=False)
    lines = done.stderr.decode().splitlines()
    not_logs = [line for line in lines if not line.startswith("{")]
    assert done.returncode == 1
    assert not_logs == [f"admin.address: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in done.stderr.decode()


async def test_workers_that_cannot_start_are_not_started_again(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A listener port held by another program: every worker fails to start; the group exits 1."""
    with trio.fail_after(30):
        upstream = await nursery.start(serve_upstream)
        with socket.socket() as taken:  # no SO_REUSEPORT: the workers cannot share it
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            config = _config(upstream)
            config["listeners"][0]["address"] = f"127.0.0.1:{port}"
            path = tmp_path / "proxy.json"
            path.write_text(json.dumps(config))
            argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(path), "--workers", "2"]
            done = await trio.run_process([*argv, "--log-format", "json"], capture_stderr=True, check=False)
    lines = done.stderr.decode().splitlines()
    logs = [json.loads(line) for line in lines if line.startswith("{")]
    exits = sorted(
        (log["worker"], log["status"], log["ready"]) for log in logs if log["event"] == "worker_exited"
    )
    assert done.returncode == 1
    assert exits == [(0, 1, False), (1, 1, False)]
    assert "worker_restarted" not in [log["event"] for log in logs]
    # Each worker says why in one line of its own: the processes share the pipe, and a line
    # written in two writes (print's newline apart) once had the supervisor's log glued to it.
    problem = f"{path}: listeners[0].address: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert [line for line in lines if not line.startswith("{")] == [problem, problem]
