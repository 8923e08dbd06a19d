"""A reload that retires an exporter or an access-log sink loses nothing of the draining chains.

A request in flight on the old config when the new one is applied ends on the old chain:
its span goes to the old config's collector, its access-log line to the old config's file,
because a retired service serves until the chains it served have drained. A service that
the new config asks for again keeps serving without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from _otlp import Collector, attributes, serve_collector

from meshcore import snapshot_from_data
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class GatedUpstream:
    """An upstream that holds every request until ``release`` is set; ``arrived`` says one came."""

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.release = trio.Event()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[:2])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    _, _, data = data.partition(b"\r\n\r\n")  # GET requests: no body
                    self.arrived.set()
                    await self.release.wait()
                    await stream.send_all(RESPONSE)


def tracing_config(upstream: tuple[str, int], endpoint: str, access_log: Path) -> dict[str, Any]:
    otlp = {"endpoint": endpoint, "export_interval": 0.02, "timeout": 0.5}
    config: dict[str, Any] = http_proxy_config(
        [upstream],
        http_filters=[{"tracing": {"sampler": "always", "otlp_http": otlp}}, "router"],
        listener={"access_log": [{"sink": "file", "path": str(access_log)}]},
    )
    return config


async def test_a_request_in_flight_across_a_reload_reaches_the_old_collector_and_log(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    old_log, new_log = tmp_path / "old.log", tmp_path / "new.log"
    with trio.fail_after(10):
        old, new = Collector(), Collector()
        await nursery.start(serve_collector, old)
        await nursery.start(serve_collector, new)
        gated = GatedUpstream()
        upstream = await nursery.start(gated.serve)
        async with trio.open_nursery() as proxies:
            proxy = await start_proxy(proxies, tracing_config(upstream, old.endpoint, old_log))
            address = proxy.address("ingress")
            answered = trio.Event()
            responses = []

            async def in_flight() -> None:
                responses.append(await fetch(address, "/slow"))
                answered.set()

            nursery.start_soon(in_flight)
            await gated.arrived.wait()
            # Another collector and another log file: the old exporter and sink are retired.
            proxy.apply(snapshot_from_data(tracing_config(upstream, new.endpoint, new_log), proxy.registry))
            gated.release.set()
            await answered.wait()
            assert responses[0].status == 200
            spans = await old.wait_for(2)  # the server span and its attempt's
            assert sorted(
                attributes(span)["url.path" if span.kind == 2 else "url.full"][-5:] for _, span in spans
            ) == [
                "/slow",
                "/slow",
            ]
            # Requests on the new config go to the new collector.
            await fetch(address, "/fresh")
            fresh = await new.wait_for(2)
            assert {attributes(span).get("url.path") for _, span in fresh if span.kind == 2} == {"/fresh"}
            proxy.drain()  # the sinks write what they hold when the proxy stops
        dropped = proxy.stats.value(
            "tracing_spans_dropped_total", endpoint=old.endpoint, reason="exporter_stopped"
        )
        assert dropped == 0
        assert len(old.spans) == 2  # nothing of the new config's went to the old collector
    assert [line.split('"')[1] for line in old_log.read_text().splitlines()] == ["GET /slow HTTP/1.1"]
    assert [line.split('"')[1] for line in new_log.read_text().splitlines()] == ["GET /fresh HTTP/1.1"]


async def test_a_service_asked_for_again_while_retiring_serves_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A -> B while a request drains on A, then back to A: A's exporter is the same, still running."""
    log = tmp_path / "access.log"
    with trio.fail_after(10):
        first, second = Collector(), Collector()
        await nursery.start(serve_collector, first)
        await nursery.start(serve_collector, second)
        gated = GatedUpstream()
        upstream = await nursery.start(gated.serve)
        async with trio.open_nursery() as proxies:
            proxy = await start_proxy(proxies, tracing_config(upstream, first.endpoint, log))
            address = proxy.address("ingress")
            answered = trio.Event()
            nursery.start_soon(lambda: _fetch_then(address, "/slow", answered))
            await gated.arrived.wait()
            proxy.apply(snapshot_from_data(tracing_config(upstream, second.endpoint, log), proxy.registry))
            proxy.apply(snapshot_from_data(tracing_config(upstream, first.endpoint, log), proxy.registry))
            gated.release.set()
            await answered.wait()
            await fetch(address, "/again")
            spans = await first.wait_for(4)
            assert {attributes(span).get("url.path") for _, span in spans if span.kind == 2} == {
                "/slow",
                "/again",
            }
            proxy.drain()
        stopped = proxy.stats.value(
            "tracing_spans_dropped_total", endpoint=first.endpoint, reason="exporter_stopped"
        )
        assert stopped == 0
        assert second.spans == []
    assert [line.split('"')[1] for line in log.read_text().splitlines()] == [
        "GET /slow HTTP/1.1",
        "GET /again HTTP/1.1",
    ]


async def _fetch_then(address: tuple[str, int], path: str, done: trio.Event) -> None:
    await fetch(address, path)
    done.set()
