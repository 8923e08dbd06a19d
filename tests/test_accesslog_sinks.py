"""Access-log sinks through real proxies: files, JSON, TCP, stdout apart from the process log, rotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from _ports import free_port

import meshcore
from meshcore.telemetry.sinks import FileSink
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy, tcp_proxy_config
from meshcore.testing.upstreams import serve_upstream


def log_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.name.startswith("access.log") and not p.name.endswith(".lock")
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_a_file_log_with_a_json_format_and_a_status_filter(tmp_path: Path) -> None:
    everything, errors = tmp_path / "all.log", tmp_path / "errors.log"
    access_log = [
        {
            "sink": "file",
            "path": str(everything),
            "json_format": {"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "id": "%REQUEST_ID%"},
        },
        {"sink": "file", "path": str(errors), "filter": {"status_min": 500}},
    ]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_upstream)
            async with trio.open_nursery() as proxies:
                proxy = await start_proxy(
                    proxies, http_proxy_config([upstream], listener={"access_log": access_log})
                )
                for path in ("/a", "/status/503", "/b"):
                    await fetch(proxy.address("ingress"), path)
                proxy.drain()  # the sinks write what they hold when the proxy stops
            nursery.cancel_scope.cancel()
    records = [json.loads(line) for line in lines(everything)]
    assert [(r["code"], r["path"]) for r in records] == [(200, "/a"), (503, "/status/503"), (200, "/b")]
    assert all(len(r["id"]) == 36 for r in records)
    (error,) = lines(errors)
    assert '"GET /status/503 HTTP/1.1" 503 - 0 0 ' in error  # the documented default format


async def test_a_tcp_access_log(tmp_path: Path) -> None:
    path = tmp_path / "tcp.log"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_upstream)
            config = tcp_proxy_config([upstream])
            config["listeners"][0]["access_log"] = [{"sink": "file", "path": str(path)}]
            async with trio.open_nursery() as proxies:
                proxy = await start_proxy(proxies, config)
                response = await fetch(proxy.address("ingress"), "/", body=b"hello")
                proxy.drain()
            nursery.cancel_scope.cancel()
    assert response.status == 200
    (line,) = lines(path)
    # [start] peer uri-san cluster upstream flags received sent duration
    _, peer, san, cluster, host, flags, received, sent, _duration = line.split(" ")
    assert peer.startswith("127.0.0.1:")
    assert (san, cluster, host, flags) == ("-", "backend", "{}:{}".format(*upstream), "-")
    assert int(received) > len("hello")
    assert int(sent) > len(response.body)


async def test_an_unopenable_file_rejects_the_snapshot_with_the_field_path(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = http_proxy_config(
        ["127.0.0.1:1"],
        listener={"access_log": [{"sink": "file", "path": str(tmp_path / "no" / "such" / "dir.log")}]},
    )
    with pytest.raises(meshcore.ConfigError) as caught:
        await start_proxy(nursery, config)
    assert "listeners[ingress].access_log[0].path: cannot open" in str(caught.value)


CONFIG = """
admin: {{enabled: false}}
listeners:
  - name: ingress
    address: 127.0.0.1:{port}
    access_log: {access_log}
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


async def read_until_started(stderr: Any, count: int) -> bytes:
    """What the proxy logs until ``count`` of its processes have logged proxy_started: they serve."""
    said = b""
    while said.count(b'"event": "proxy_started"') < count:
        chunk = await stderr.receive_some(65536)
        assert chunk, f"the proxy exited before it started: {said.decode(errors='replace')}"
        said += chunk
    return said


async def run_proxy_process(
    tmp_path: Path, access_log: Any, upstream: tuple[str, int], *extra: str, workers: int = 1
) -> tuple[trio.Process, int, bytes]:
    """The proxy, started and serving; its port, and what it logged until then (read from its stderr)."""
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        CONFIG.format(port=port, access_log=json.dumps(access_log), upstream="{}:{}".format(*upstream))
    )
    argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--log-format", "json", *extra]
    process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return process, port, await read_until_started(process.stderr, workers)


async def read_all(stream: Any) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_stdout_access_logs_stay_apart_from_the_process_log(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = await nursery.start(serve_upstream)
    with trio.fail_after(20):
        process, port, said = await run_proxy_process(
            tmp_path, [{"sink": "stdout", "flush_interval": "50ms"}], upstream
        )
        for path in ("/one", "/two"):
            await fetch(("127.0.0.1", port), path)
        process.send_signal(signal.SIGTERM)
        async with trio.open_nursery() as readers:
            out: dict[str, bytes] = {}

            async def collect(name: str, stream: Any) -> None:
                out[name] = await read_all(stream)

            readers.start_soon(collect, "stdout", process.stdout)
            readers.start_soon(collect, "stderr", process.stderr)
        await process.wait()
    access = out["stdout"].decode().splitlines()
    assert [line.split('"')[1] for line in access] == ["GET /one HTTP/1.1", "GET /two HTTP/1.1"]
    events = [json.loads(line)["event"] for line in (said + out["stderr"]).decode().splitlines()]
    assert "proxy_started" in events
    assert "request_completed" not in events


async def test_rotation_by_size_and_by_logrotate_loses_and_splits_no_line(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Two workers write one file; it rotates by size, and is moved away + SIGUSR1 mid-traffic."""
    upstream = await nursery.start(serve_upstream)
    log = tmp_path / "access.log"
    access_log = [
        {
            "sink": "file",
            "path": str(log),
            "max_size": "4KiB",
            "max_files": 200,
            "flush_interval": "20ms",
            "json_format": {"id": "%REQ(X-TEST-ID)%", "path": "%REQ(:PATH)%", "pad": "%REQ(X-PAD)%"},
        }
    ]
    total, clients = 300, 10
    with trio.fail_after(60):
        process, port, _ = await run_proxy_process(
            tmp_path, access_log, upstream, "--workers", "2", workers=2
        )
        sent = trio.Event()
        done = 0

        async def client(n: int) -> None:
            nonlocal done
            for i in range(n, total, clients):
                response = await fetch(
                    ("127.0.0.1", port), f"/r/{i}", headers={"x-test-id": str(i), "x-pad": "p" * 60}
                )
                assert response.status == 200
                done += 1
                if done == total // 2:
                    # logrotate's way: move the file, then tell the proxy to reopen it.
                    log.rename(tmp_path / "access.log.moved")
                    process.send_signal(signal.SIGUSR1)
            if done == total:
                sent.set()

        async with trio.open_nursery() as load:
            for n in range(clients):
                load.start_soon(client, n)
        await sent.wait()
        process.send_signal(signal.SIGTERM)  # the workers write what they hold, then exit
        await process.wait()
    files = log_files(tmp_path)
    assert len(files) > 3  # rotated by size, and moved away
    seen: list[int] = []
    for path in files:
        for line in lines(path):
            record = json.loads(line)  # a split or interleaved line would not parse
            assert record["path"] == f"/r/{record['id']}"
            seen.append(int(record["id"]))
    assert sorted(seen) == list(range(total))


async def test_a_line_written_after_its_sink_stopped_is_counted_as_dropped(tmp_path: Path) -> None:
    """A draining chain's last request may log after a reload retired its sink: never lost silently."""
    stats = meshcore.Stats()
    path = tmp_path / "access.log"
    sink = FileSink(
        str(path), max_size=None, max_files=1, flush_interval=60.0, max_buffered=1 << 20, stats=stats
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run)
            sink.write("before\n")
            sink.stop()  # run() flushes what is buffered, then returns
    sink.write("after\n")
    assert path.read_text() == "before\n"
    assert stats.value("access_log_lines_written_total", sink=f"file:{path}") == 1
    assert stats.value("access_log_lines_dropped_total", sink=f"file:{path}") == 1


def test_a_file_moved_away_while_it_rotates_loses_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An external rotation (logrotate, no lock of ours) moves the file just as a worker rotates it."""
    path = tmp_path / "access.log"
    stats = meshcore.Stats()
    sink = FileSink(
        str(path), max_size=64, max_files=3, flush_interval=60.0, max_buffered=1 << 20, stats=stats
    )
    sink.write_batch(b"a" * 60 + b"\n")
    replace = os.replace

    def logrotate_first(source: str, target: str) -> None:
        if source == str(path):  # the instant between the worker's check and its rename
            replace(source, tmp_path / "access.log.moved")
        replace(source, target)

    monkeypatch.setattr("meshcore.telemetry.sinks.os.replace", logrotate_first)
    sink.write_batch(b"b" * 60 + b"\n")  # too big together: rotates, and the file is gone
    monkeypatch.setattr("meshcore.telemetry.sinks.os.replace", replace)
    sink.write_batch(b"c\n")
    sink.close()
    written = sorted(line for p in log_files(tmp_path) for line in lines(p))
    assert written == ["a" * 60, "b" * 60, "c"]


def test_a_rotation_that_fails_keeps_writing_to_the_open_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename refused by the file system costs the rotation, never the lines."""
    path = tmp_path / "access.log"
    stats = meshcore.Stats()
    sink = FileSink(
        str(path), max_size=64, max_files=3, flush_interval=60.0, max_buffered=1 << 20, stats=stats
    )
    sink.write_batch(b"a" * 60 + b"\n")

    def refused(source: str, _target: str) -> None:
        raise PermissionError(1, "Operation not permitted", source)

    monkeypatch.setattr("meshcore.telemetry.sinks.os.replace", refused)
    sink.write_batch(b"b" * 60 + b"\n")
    sink.close()
    assert lines(path) == ["a" * 60, "b" * 60]
    assert stats.value("access_log_write_errors_total", sink=f"file:{path}") == 1
