"""Trace context propagation, sampling, span attributes, and export that never hurts requests."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio
from _otlp import Collector, attributes, serve_collector

import meshcore
from meshcore import telemetry
from meshcore.http.messages import Headers
from meshcore.telemetry import extract, inject
from meshcore.testing import MeshcoreCA, UpstreamFactory
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.proxies import ProxyFactory
from meshcore.testing.upstreams import serve_upstream

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def headers(**pairs: str) -> Headers:
    return Headers([(k.replace("_", "-"), v) for k, v in pairs.items()])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", (TRACE, SPAN, True)),
        (f"00-{TRACE}-{SPAN}-00", (TRACE, SPAN, False)),
        (f"00-{TRACE}-{SPAN}-09", (TRACE, SPAN, True)),  # other flag bits are not ours to read
        (f"cc-{TRACE}-{SPAN}-01-future-stuff", (TRACE, SPAN, True)),  # a later version: read what we know
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 has nothing after the flags
        (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero ids are invalid
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE.upper()}-{SPAN}-01", None),  # lower-case hex only
        (f"00-{TRACE[:-1]}-{SPAN}-01", None),
        ("garbage", None),
    ],
)
def test_w3c_traceparent(value: str, expected: tuple[str, str, bool] | None) -> None:
    context = extract(headers(traceparent=value), ["tracecontext"])
    got = (
        None if context is None else (f"{context.trace_id:032x}", f"{context.span_id:016x}", context.sampled)
    )
    assert got == expected


def test_w3c_tracestate_is_joined_passed_on_and_dropped_when_too_long() -> None:
    h = Headers([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("tracestate", "a=1"), ("tracestate", "b=2")])
    context = extract(h, ["tracecontext"])
    assert context is not None
    assert context.trace_state == "a=1,b=2"
    long = Headers([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("tracestate", "x=" + "y" * 600)])
    context = extract(long, ["tracecontext"])
    assert context is not None
    assert context.trace_state == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{TRACE}-{SPAN}-1", (TRACE, SPAN, True, False)),
        (f"{TRACE}-{SPAN}-0", (TRACE, SPAN, False, False)),
        (f"{TRACE}-{SPAN}-d", (TRACE, SPAN, True, True)),
        (f"{TRACE}-{SPAN}", (TRACE, SPAN, None, False)),  # deferred: the receiver decides
        (f"{TRACE}-{SPAN}-1-{SPAN}", (TRACE, SPAN, True, False)),
        (f"{TRACE[16:]}-{SPAN}-1", ("0" * 16 + TRACE[16:], SPAN, True, False)),  # 64-bit trace id
        ("0", None),  # a lone decision: nothing to continue
        (f"{TRACE}-{SPAN}-x", None),
        (f"{TRACE}-{SPAN[:-2]}-1", None),
    ],
)
def test_b3_single_header(value: str, expected: tuple[str, str, bool | None, bool] | None) -> None:
    context = extract(headers(b3=value), ["b3"])
    got = (
        None
        if context is None
        else (f"{context.trace_id:032x}", f"{context.span_id:016x}", context.sampled, context.debug)
    )
    assert got == expected


def test_b3_multi_headers() -> None:
    context = extract(headers(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_sampled="1"), ["b3multi"])
    assert context is not None
    assert (f"{context.trace_id:032x}", context.sampled) == (TRACE, True)
    debug = extract(headers(x_b3_traceid=TRACE, x_b3_spanid=SPAN, x_b3_flags="1"), ["b3multi"])
    assert debug is not None
    assert debug.sampled
    assert debug.debug
    assert extract(headers(x_b3_traceid=TRACE), ["b3multi"]) is None


def test_extraction_takes_the_first_valid_format_in_order() -> None:
    other = "a" * 32
    h = headers(traceparent=f"00-{TRACE}-{SPAN}-01", b3=f"{other}-{SPAN}-1")
    first = extract(h, ["b3", "tracecontext"])
    assert first is not None
    assert f"{first.trace_id:032x}" == other
    broken = headers(traceparent="broken", b3=f"{other}-{SPAN}-1")
    fallback = extract(broken, ["tracecontext", "b3"])
    assert fallback is not None
    assert f"{fallback.trace_id:032x}" == other


def test_injection_writes_every_format_and_replaces_stale_values() -> None:
    h = headers(traceparent="stale", x_b3_spanid="stale", b3="stale", other="kept")
    inject(h, ["tracecontext", "b3", "b3multi"], int(TRACE, 16), 0x1234, sampled=True, parent_id=0x99)
    assert h.get_all("traceparent") == [f"00-{TRACE}-0000000000001234-01"]
    assert h.get_all("b3") == [f"{TRACE}-0000000000001234-1-0000000000000099"]
    assert h.get_all("x-b3-spanid") == ["0000000000001234"]
    assert h.get("x-b3-parentspanid") == "0000000000000099"
    assert h.get("x-b3-sampled") == "1"
    assert h.get("other") == "kept"
    # What is written reads back the same.
    for fmt in ("tracecontext", "b3", "b3multi"):
        back = extract(h, [fmt])
        assert back is not None
        assert (back.trace_id, back.span_id, back.sampled) == (int(TRACE, 16), 0x1234, True)


# -- through a proxy --------------------------------------------------------------------------


async def traced_proxy(nursery: trio.Nursery, endpoint: str, **tracing: Any) -> tuple[str, int]:
    upstream = await nursery.start(serve_upstream)
    config = {"otlp_http": {"endpoint": endpoint, "export_interval": 0.02, "timeout": 0.5}, **tracing}
    proxy = await start_proxy(
        nursery, http_proxy_config([upstream], http_filters=[{"tracing": config}, "router"])
    )
    return proxy.address("ingress")


def sent_upstream(body: Any, name: str) -> str | None:
    return next((v for n, v in body["headers"] if n == name), None)


@pytest.mark.parametrize(
    ("tracing", "request_headers", "recorded"),
    [
        ({"sampler": "always"}, {}, True),
        ({"sampler": "never"}, {}, False),
        ({"sampler": "never"}, {"x-meshcore-force-trace": "1"}, False),  # not from outside the mesh
        ({"sampler": "ratio", "ratio": 0.0}, {}, False),
        ({"sampler": "ratio", "ratio": 1.0}, {}, True),
        ({"sampler": "parent_based", "ratio": 0.0}, {"traceparent": f"00-{TRACE}-{SPAN}-01"}, True),
        ({"sampler": "parent_based", "ratio": 1.0}, {"traceparent": f"00-{TRACE}-{SPAN}-00"}, False),
        ({"sampler": "parent_based", "ratio": 0.0}, {}, False),
        ({"sampler": "ratio", "ratio": 0.0, "propagators": ["b3"]}, {"b3": f"{TRACE}-{SPAN}-d"}, False),
        # Debug implies sampled (B3): a parent-based sampler follows it, from anyone.
        ({"sampler": "parent_based", "ratio": 0.0, "propagators": ["b3"]}, {"b3": f"{TRACE}-{SPAN}-d"}, True),
    ],
)
async def test_sampling_decisions_are_recorded_and_passed_on(
    nursery: trio.Nursery, tracing: dict[str, Any], request_headers: dict[str, str], recorded: bool
) -> None:
    with trio.fail_after(10):
        collector = await nursery.start(serve_collector, Collector())
        address = await traced_proxy(nursery, collector.endpoint, **tracing)
        response = await fetch(address, "/", headers=request_headers)
        spans = await collector.wait_for(2) if recorded else []
    fmt = tracing.get("propagators", ["tracecontext"])[0]
    sent = Headers([(n, v) for n, v in response.json()["headers"]])
    context = extract(sent, [fmt])
    assert context is not None
    assert context.sampled is recorded
    if recorded:
        assert {span.kind for _, span in spans} == {2, 3}
        client = next(span for _, span in spans if span.kind == 3)
        assert context.span_id == int.from_bytes(client.span_id, "big")  # the upstream's parent
    else:
        assert collector.spans == []


async def test_only_a_mesh_peer_can_force_a_trace(
    nursery: trio.Nursery,
    meshcore_ca: MeshcoreCA,
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
) -> None:
    """Forcing follows the edge of trust, whatever the force header is called (Envoy: internal only)."""
    upstream = await meshcore_upstream()
    collector = await nursery.start(serve_collector, Collector())
    tracing = {
        "otlp_http": {"endpoint": collector.endpoint, "export_interval": 0.02, "timeout": 0.5},
        "sampler": "never",
        "force_header": "x-force-trace",
        "propagators": ["tracecontext", "b3multi"],
    }
    config = http_proxy_config([upstream.endpoint], http_filters=[{"tracing": tracing}, "router"])
    tls = meshcore_ca.tls_context()
    tls["client_ca_file"] = str(meshcore_ca.ca_file)
    config["listeners"][0]["filter_chains"][0]["tls"] = tls
    peer = meshcore_ca.client_context(client_uris=["spiffe://cluster.local/ns/shop/sa/frontend"])
    outsider = meshcore_ca.client_context()
    debug = {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"}
    with trio.fail_after(10):
        proxy = await meshcore_proxy(config)
        for context in (outsider, peer):
            client = proxy.client(ssl_context=context, server_hostname="localhost")
            await client.get("/forced", headers={"x-force-trace": "1"})
            await client.get("/debug", headers=debug)
        spans = await collector.wait_for(4)  # the peer's two requests: a server and a client span each
    servers = [attributes(span) for _, span in spans if span.kind == 2]
    assert sorted(a["url.path"] for a in servers) == ["/debug", "/forced"]
    assert all(a["client.address"] == "127.0.0.1" for a in servers)
    assert len(collector.spans) == 4  # the outsider's requests were not recorded


async def test_ratio_sampling_is_decided_by_the_trace_id(nursery: trio.Nursery) -> None:
    """Every hop with the same ratio takes the same decision for a trace it starts or continues."""
    with trio.fail_after(10):
        collector = await nursery.start(serve_collector, Collector())
        address = await traced_proxy(nursery, collector.endpoint, sampler="ratio", ratio=0.5)
        low = f"00-{'1' * 16}{'0' * 16}-{SPAN}-00"  # lower 64 bits 0: under any ratio > 0
        high = f"00-{'1' * 16}{'f' * 16}-{SPAN}-01"  # lower 64 bits all ones: over a ratio of 0.5
        kept = await fetch(address, "/", headers={"traceparent": low})
        dropped = await fetch(address, "/", headers={"traceparent": high})
    assert sent_upstream(kept.json(), "traceparent").endswith("-01")  # type: ignore[union-attr]
    assert sent_upstream(dropped.json(), "traceparent").endswith("-00")  # type: ignore[union-attr]


async def test_span_attributes_follow_the_http_semantic_conventions(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        collector = await nursery.start(serve_collector, Collector())
        address = await traced_proxy(
            nursery,
            collector.endpoint,
            sampler="always",
            attributes={"team": "payments"},
            request_headers=["x-tenant"],
        )
        await fetch(
            address,
            "/status/503?q=1",
            method="POST",
            host="shop.local:8080",
            body=b"12345",
            headers={"user-agent": "curl/8", "x-tenant": "acme", "x-request-id": "rid-1"},
        )
        spans = await collector.wait_for(2)
    server = next(span for _, span in spans if span.kind == 2)
    client = next(span for _, span in spans if span.kind == 3)
    got = attributes(server)
    assert server.name == "POST /*"
    assert {
        k: got[k]
        for k in (
            "http.request.method",
            "url.path",
            "url.query",
            "url.scheme",
            "server.address",
            "server.port",
            "http.response.status_code",
            "network.protocol.version",
            "user_agent.original",
            "http.route",
            "error.type",
            "meshcore.upstream.cluster",
            "http.request.header.x-tenant",
            "team",
            "client.address",
        )
    } == {
        "http.request.method": "POST",
        "url.path": "/status/503",
        "url.query": "q=1",
        "url.scheme": "http",
        "server.address": "shop.local",
        "server.port": 8080,
        "http.response.status_code": 503,
        "network.protocol.version": "1.1",
        "user_agent.original": "curl/8",
        "http.route": "/*",
        "error.type": "503",
        "meshcore.upstream.cluster": "backend",
        "http.request.header.x-tenant": "acme",
        "team": "payments",
        "client.address": "127.0.0.1",
    }
    # The id the proxy gave the request: a client outside the mesh does not choose it.
    assert uuid.UUID(got["meshcore.request_id"]).version == 4
    assert server.status.code == 2  # STATUS_CODE_ERROR: a 5xx at a server span
    assert client.name == "POST"
    client_attributes = attributes(client)
    assert client_attributes["url.full"].endswith("/status/503?q=1")
    assert client_attributes["error.type"] == "503"
    assert "http.request.resend_count" not in client_attributes  # a first attempt


async def test_an_unreachable_upstream_is_an_errored_attempt_span_with_its_flag(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        collector = await nursery.start(serve_collector, Collector())
        config = http_proxy_config(
            ["127.0.0.1:1"],
            http_filters=[
                {
                    "tracing": {
                        "sampler": "always",
                        "otlp_http": {"endpoint": collector.endpoint, "export_interval": 0.02},
                    }
                },
                "router",
            ],
        )
        proxy = await start_proxy(nursery, config)
        response = await fetch(proxy.address("ingress"), "/")
        spans = await collector.wait_for(2)
    assert response.status == 503
    client = next(span for _, span in spans if span.kind == 3)
    assert attributes(client)["error.type"] == "UF"
    server = next(span for _, span in spans if span.kind == 2)
    assert attributes(server)["meshcore.response_flags"] == "UF"


# -- a collector that is dead, or never answers ---------------------------------------------------


async def blackhole(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accepts connections and never reads or answers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[:2])
    held = []
    try:
        while True:
            held.append(await listeners[0].accept())
    finally:
        for stream in held:
            stream.socket.close()
        listeners[0].socket.close()


@pytest.mark.parametrize("collector", ["refused", "silent"])
async def test_a_dead_collector_never_slows_or_fails_requests(nursery: trio.Nursery, collector: str) -> None:
    if collector == "refused":
        with trio.socket.socket() as s:
            await s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nobody listens here once the socket is closed
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
    else:
        host, port = await nursery.start(blackhole)
        endpoint = f"http://{host}:{port}/v1/traces"
    upstream = await nursery.start(serve_upstream)
    tracing = {
        "sampler": "always",
        "otlp_http": {
            "endpoint": endpoint,
            "export_interval": 0.01,
            "timeout": 2.0,
            "max_queue_size": 50,
            "max_batch_size": 10,
        },
    }
    proxy = await start_proxy(
        nursery, http_proxy_config([upstream], http_filters=[{"tracing": tracing}, "router"])
    )
    address = proxy.address("ingress")
    slowest = 0.0
    with trio.fail_after(20):
        for _ in range(150):
            start = trio.current_time()
            response = await fetch(address, "/")
            slowest = max(slowest, trio.current_time() - start)
            assert response.status == 200
    # An export to the silent collector takes its whole 2 s timeout: no request waited for one.
    assert slowest < 1.0
    dropped = sum(
        proxy.stats.value("tracing_spans_dropped_total", endpoint=endpoint, reason=reason)
        for reason in ("queue_full", "export_failed")
    )
    assert proxy.stats.value("tracing_spans_exported_total", endpoint=endpoint) == 0
    # 300 spans made: all dropped but those still queued (50 at most) or in the export under way (10).
    assert dropped >= 300 - 50 - 10
    assert proxy.stats.value("tracing_spans_dropped_total", endpoint=endpoint, reason="queue_full") > 0


async def test_spans_of_an_exporter_that_has_stopped_are_counted_as_dropped(nursery: trio.Nursery) -> None:
    """A draining chain's last request may end after a reload retired its exporter."""
    collector = await nursery.start(serve_collector, Collector())
    stats = meshcore.Stats()
    exporter = telemetry.OtlpHttpExporter(collector.endpoint, resource=[("service.name", "t")], stats=stats)

    def span(span_id: int) -> telemetry.SpanData:
        return telemetry.SpanData(1, span_id, 0, "GET", telemetry.KIND_SERVER, 1, 2, [], 0, "")

    with trio.fail_after(10):
        async with trio.open_nursery() as own:
            own.start_soon(exporter.run)
            exporter.submit(span(1))
            exporter.stop()  # exports what is queued, then returns
    exporter.submit(span(2))
    labels = {"endpoint": collector.endpoint}
    assert [int.from_bytes(s.span_id, "big") for _, s in collector.spans] == [1]
    assert stats.value("tracing_spans_exported_total", **labels) == 1
    assert stats.value("tracing_spans_dropped_total", reason="exporter_stopped", **labels) == 1
