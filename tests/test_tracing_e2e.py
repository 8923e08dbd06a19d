"""A trace across two sidecars (client → proxy A → proxy B → app), received by a real OTLP receiver.

The two proxies are ``meshcore proxy`` processes configured by files (the sidecars of
this test); the collector decodes what they export with ``opentelemetry-proto``. The app
forwards the trace context it received on a call of its own through proxy A, as an
instrumented application would, and that call joins the trace.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from _otlp import Collector, attributes, serve_collector
from _proxy_process import start_proxy_process

from meshcore.testing.client import fetch
from meshcore.testing.upstreams import serve_upstream

MODES = {
    # listener name: (propagators the proxies read and write, headers the app forwards)
    "w3c": (["tracecontext"], ("traceparent", "tracestate")),
    "b3": (["b3", "b3multi"], ("b3",)),
}


def listener(name: str, service: str, collector: Collector, route_config: str) -> dict[str, Any]:
    tracing = {
        "service_name": service,
        "propagators": MODES[name][0],
        "sampler": "parent_based",
        "otlp_http": {"endpoint": collector.endpoint, "export_interval": 0.05},
    }
    manager = {"route_config": route_config, "http_filters": [{"tracing": tracing}, "router"]}
    return {
        "name": name,
        "address": "127.0.0.1:0",
        "filter_chains": [{"filters": [{"http_connection_manager": manager}]}],
    }


def routes(name: str, table: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": prefix}, "cluster": cluster} for prefix, cluster in table],
            }
        ],
    }


class App:
    """The application behind proxy B: on /forward it calls /second through proxy A."""

    def __init__(self) -> None:
        self.outbound: dict[str, tuple[str, int]] = {}
        self.seen: list[tuple[str, list[tuple[str, str]]]] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            request: h11.Request | None = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert request is not None
            headers = [(n.decode(), v.decode()) for n, v in request.headers]
            path = request.target.decode()
            self.seen.append((path, headers))
            status = 200
            if path.startswith("/forward/"):
                mode = path.split("/")[2]
                forwarded = [(n, v) for n, v in headers if n in MODES[mode][1]]
                answer = await fetch(self.outbound[mode], "/second", host="app2", headers=forwarded)
                status = answer.status
            await stream.send_all(
                conn.send(h11.Response(status_code=status, headers=[("content-length", "2")]))
                + conn.send(h11.Data(data=b"ok"))
                + conn.send(h11.EndOfMessage())
            )


async def serve_app(app: App, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[:2])
    await trio.serve_listeners(functools.partial(App.serve, app), listeners)


def by_id(spans: list[tuple[str, Any]]) -> dict[bytes, tuple[str, Any]]:
    return {span.span_id: (service, span) for service, span in spans}


@pytest.fixture
async def sidecars(nursery: trio.Nursery, tmp_path: Path) -> tuple[Collector, App, Any]:
    collector = await nursery.start(serve_collector, Collector())
    app = App()
    app_address = await nursery.start(serve_app, app)
    app2 = await nursery.start(serve_upstream)
    proxy_b = await start_proxy_process(
        nursery,
        {
            "admin": {"enabled": False},
            "listeners": [listener(mode, "b", collector, "inbound") for mode in MODES],
            "route_configs": [routes("inbound", [("/", "app")])],
            "clusters": [{"name": "app", "endpoints": ["{}:{}".format(*app_address)]}],
        },
        tmp_path,
        name="b",
    )
    proxy_a = await start_proxy_process(
        nursery,
        {
            "admin": {"enabled": False},
            "listeners": [listener(mode, "a", collector, f"outbound-{mode}") for mode in MODES],
            "route_configs": [
                routes(f"outbound-{mode}", [("/second", "app2"), ("/", f"b-{mode}")]) for mode in MODES
            ],
            "clusters": [
                {"name": "app2", "endpoints": ["{}:{}".format(*app2)]},
                *(
                    {"name": f"b-{mode}", "endpoints": ["{}:{}".format(*proxy_b.addresses[mode])]}
                    for mode in MODES
                ),
            ],
        },
        tmp_path,
        name="a",
    )
    app.outbound = proxy_a.addresses
    return collector, app, proxy_a


@pytest.mark.parametrize("mode", list(MODES))
async def test_one_trace_with_correctly_parented_spans_across_two_sidecars_and_the_app(
    sidecars: tuple[Collector, App, Any], mode: str
) -> None:
    collector, _app, proxy_a = sidecars
    with trio.fail_after(20):
        response = await fetch(proxy_a.addresses[mode], f"/forward/{mode}", host="app")
        assert response.status == 200
        # A: server + client; B: server + client; A again (the app's call): server + client.
        spans = await collector.wait_for(6)
    assert len(spans) == 6
    assert len({span.trace_id for _, span in spans}) == 1
    spans_by_id = by_id(spans)
    roots = [(s, span) for s, span in spans if not span.parent_span_id]
    assert [(s, span.name, span.kind) for s, span in roots] == [("a", "GET /*", 2)]  # SPAN_KIND_SERVER

    def child(parent: Any, service: str, kind: int) -> Any:
        (found,) = [
            span
            for s, span in spans
            if span.parent_span_id == parent.span_id and s == service and span.kind == kind
        ]
        return found

    a_server = roots[0][1]
    a_client = child(a_server, "a", 3)  # SPAN_KIND_CLIENT
    b_server = child(a_client, "b", 2)
    b_client = child(b_server, "b", 3)
    a_server2 = child(b_client, "a", 2)  # the app forwarded B's context: its call joined the trace
    a_client2 = child(a_server2, "a", 3)
    assert set(spans_by_id) == {
        s.span_id for s in (a_server, a_client, b_server, b_client, a_server2, a_client2)
    }
    # Nested in time, as parents and children are.
    assert a_server.start_time_unix_nano <= a_client.start_time_unix_nano <= b_server.start_time_unix_nano
    # Ends nest within each proxy; across processes B may log its end after A relayed the
    # last byte (its record runs once the write returned), so those are not compared.
    assert a_client.end_time_unix_nano <= a_server.end_time_unix_nano
    assert b_client.end_time_unix_nano <= b_server.end_time_unix_nano
    assert attributes(a_server)["url.path"] == f"/forward/{mode}"
    assert attributes(a_server2)["url.path"] == "/second"
    assert attributes(b_client)["http.response.status_code"] == 200
    assert attributes(a_client2)["meshcore.upstream.cluster"] == "app2"
