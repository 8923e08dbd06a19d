"""The admin server: endpoints answered from a proxy's state (sans-IO), then over loopback."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import h11
import httpx
import pytest
import structlog
import trio
import trustme
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import meshcore
from meshcore import testing
from meshcore.config import Address, ByteSize, Duration, HttpFilterRef, SecretStr
from meshcore.runtime.admin import (
    ENDPOINTS,
    IDLE_TIMEOUT,
    MAX_BODY_SIZE,
    MAX_HEAD_SIZE,
    REQUEST_TIMEOUT,
    handle,
    serve_admin,
    serve_admin_connection,
)
from meshcore.runtime.configdata import REDACTED, to_data
from meshcore.runtime.proxy import Proxy

TIMEOUT = 10

# -- helpers ----------------------------------------------------------------------------------


def config(**extra: Any) -> dict[str, Any]:
    """A proxy config: one TCP listener to cluster ``c``, the admin on a free loopback port."""
    chain: dict[str, Any] = {"filters": [{"tcp_proxy": {"cluster": "c"}}]}
    if "tls" in extra:
        chain["tls"] = extra.pop("tls")
    return {
        "version": "v1",
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [{"name": "tcp", "address": "127.0.0.1:0", "filter_chains": [chain]}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:1", "weight": 3}]}],
        **extra,
    }


@asynccontextmanager
async def running(
    data: dict[str, Any], registry: meshcore.Registry | None = None
) -> AsyncIterator[tuple[Proxy, httpx.AsyncClient, tuple[str, int]]]:
    """A running proxy with ``data`` applied, its admin server, and a client for it."""
    proxy = Proxy(registry or meshcore.build_registry())
    snapshot = meshcore.snapshot_from_data(data, proxy.registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        proxy.apply(snapshot)
        host, port = await nursery.start(serve_admin, proxy, snapshot.admin.address)
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            yield proxy, client, (host, port)
        nursery.cancel_scope.cancel()


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the server sends until it closes."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def raw_exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a new connection, then read until the server closes it."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        return await read_until_closed(stream)


@pytest.fixture
def proxy() -> Proxy:
    """A proxy that was never started: no Snapshot, no listeners, no clusters."""
    return Proxy(meshcore.build_registry())


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Undo a log level change made through the admin server."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# -- config as data: units, plugin references, redaction --------------------------------------


class Color(enum.Enum):
    RED = "red"


@attrs.frozen
class Credentials:
    user: str
    api_key: SecretStr
    password: SecretStr | None
    max_tokens: int
    keys: tuple[SecretStr, ...]
    by_tenant: Any
    pin: int = attrs.field(metadata={"secret": True})
    hint: str | None = attrs.field(default=None, metadata={"secret": True})


@attrs.frozen
class Everything:
    timeout: Duration
    size: ByteSize
    address: Address
    v6: Address
    headers: Any
    ref: HttpFilterRef
    color: Color
    items: tuple[int, ...]
    odd: object
    ratio: float


def credentials() -> Credentials:
    return Credentials(
        user="u",
        api_key=SecretStr("k"),
        password=None,
        max_tokens=5,
        keys=(SecretStr("a"), SecretStr("b")),
        by_tenant=MappingProxyType({"t1": SecretStr("s1")}),
        pin=1234,
    )


def test_to_data_redacts_declared_secrets_only_and_keeps_unset_ones() -> None:
    # Declared: SecretStr wherever it is, and fields with metadata {"secret": True}. Names are
    # not guessed from: max_tokens is shown.
    assert to_data(credentials()) == {
        "user": "u",
        "api_key": REDACTED,
        "password": None,
        "max_tokens": 5,
        "keys": [REDACTED, REDACTED],
        "by_tenant": {"t1": REDACTED},
        "pin": REDACTED,
        "hint": None,
    }


def test_a_secret_str_is_a_str_whose_repr_hides_it() -> None:
    key = SecretStr("hunter2")
    assert key == "hunter2"
    assert key.upper() == "HUNTER2"
    assert "hunter2" not in repr(key)
    assert "hunter2" not in repr(credentials())


def test_to_data_converts_units_refs_and_mappings() -> None:
    value = Everything(
        timeout=Duration(0.25),
        size=ByteSize(1024),
        address=Address("127.0.0.1", 80),
        v6=Address("::1", 8080),
        headers=MappingProxyType({"x-request-id": "1", "X-Auth-Token": "abc"}),
        ref=HttpFilterRef(name="token_auth", config=credentials()),
        color=Color.RED,
        items=(1, 2),
        odd=Path("/x"),
        ratio=math.inf,
    )
    data = to_data(value)
    assert data == {
        "timeout": 0.25,
        "size": 1024,
        "address": "127.0.0.1:80",
        "v6": "[::1]:8080",
        "headers": {"x-request-id": "1", "X-Auth-Token": "abc"},
        "ref": {"token_auth": to_data(credentials())},
        "color": "red",
        "items": [1, 2],
        "odd": "/x",
        "ratio": "inf",
    }
    assert type(data["timeout"]) is float
    assert type(data["size"]) is int
    json.dumps(data, allow_nan=False)


# -- endpoints without sockets ----------------------------------------------------------------


def test_unknown_path_is_404(proxy: Proxy) -> None:
    assert handle(proxy, "GET", "/nope").status == 404
    assert handle(proxy, "GET", "/stats/").status == 404


def test_wrong_method_is_405_with_allow(proxy: Proxy) -> None:
    response = handle(proxy, "DELETE", "/stats")
    assert response.status == 405
    assert dict(response.headers)["allow"] == "GET, HEAD"
    response = handle(proxy, "GET", "/logging?level=debug")
    assert response.status == 405
    assert dict(response.headers)["allow"] == "POST"


def test_not_ready_before_a_snapshot(proxy: Proxy) -> None:
    assert handle(proxy, "GET", "/ready").status == 503
    assert handle(proxy, "GET", "/ready").body == "NOT READY\n"
    assert handle(proxy, "GET", "/config_dump").status == 503


def test_index_lists_every_endpoint(proxy: Proxy) -> None:
    body = handle(proxy, "GET", "/").body
    for path in (
        "/ready",
        "/stats",
        "/stats/prometheus",
        "/config_dump",
        "/config_status",
        "/clusters",
        "/listeners",
        "/logging",
    ):
        assert f"\n{path} " in body


def test_stats_filter_keeps_matching_lines(proxy: Proxy) -> None:
    proxy.stats.counter("admin_test_hits", route="r").value += 3
    proxy.stats.counter("admin_test_misses").value += 1
    assert "admin.r.test_hits: 3\n" in handle(proxy, "GET", "/stats").body
    assert handle(proxy, "GET", "/stats?filter=test_h").body == "admin.r.test_hits: 3\n"
    assert handle(proxy, "GET", "/stats?filter=%5Eadmin%5C.test").body == "admin.test_misses: 1\n"
    assert handle(proxy, "GET", "/stats?filter=nothing-matches").body == ""


@pytest.mark.parametrize(
    "target",
    ["/stats?filter=(", "/stats?" + "&".join(["a=1"] * 100), "//[/stats"],
    ids=["bad-regex", "too-many-fields", "bad-authority"],
)
def test_bad_query_is_400(proxy: Proxy, target: str) -> None:
    assert handle(proxy, "GET", target).status == 400


def test_failing_endpoint_is_500_and_logged(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        msg = "boom"
        raise RuntimeError(msg)

    # Fault injection: no real stats source fails, but the server must survive one that does.
    monkeypatch.setattr(proxy.stats, "render_text", broken)
    with capture_logs() as logs:
        response = handle(proxy, "GET", "/stats")
    assert response.status == 500
    assert [e["event"] for e in logs] == ["admin_request_failed"]
    assert logs[0]["path"] == "/stats"


TARGETS = st.one_of(
    st.text(),
    st.builds("{}?{}".format, st.sampled_from(list(ENDPOINTS)), st.text()),
    st.builds("{}?filter={}".format, st.just("/stats"), st.text()),
)


@pytest.mark.usefixtures("restore_structlog")
def test_any_target_gets_an_answer(proxy: Proxy) -> None:
    # One proxy for every example: building a registry per example is the slow part.
    @given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT"]), target=TARGETS)
    def check(method: str, target: str) -> None:
        assert handle(proxy, method, target).status in {200, 400, 404, 405, 503}

    check()


# -- over loopback ----------------------------------------------------------------------------


async def test_ready_is_live_then_draining() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (proxy, client, _):
            response = await client.get("/ready")
            assert (response.status_code, response.text) == (200, "LIVE\n")
            proxy.drain()
            response = await client.get("/ready")
            assert (response.status_code, response.text) == (503, "DRAINING\n")


async def test_stats_text_and_prometheus() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (proxy, client, _):
            proxy.stats.counter("admin_test_bumped", cluster="c").value += 7
            response = await client.get("/stats", params={"filter": "bumped"})
            assert response.headers["content-type"].startswith("text/plain")
            assert response.text == "admin.c.test_bumped: 7\n"
            response = await client.get("/stats/prometheus")
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            lines = response.text.splitlines()
            # Counters end in _total in the exposition (promtool's rule), whatever they are called inside.
            assert "# TYPE meshcore_admin_test_bumped_total counter" in lines
            assert 'meshcore_admin_test_bumped_total{cluster="c"} 7' in lines
            assert "meshcore_config_snapshots_applied_total 1" in lines


async def test_config_dump_shows_the_snapshot(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = {"certificate_file": str(cert_file), "private_key_file": str(key_file)}
    with trio.fail_after(TIMEOUT):
        async with running(config(tls=tls)) as (_, client, _):
            response = await client.get("/config_dump")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    dump = response.json()
    assert dump["version"] == "v1"
    assert dump["admin"] == {"address": "127.0.0.1:0", "enabled": True}
    [listener] = dump["listeners"]
    assert listener["name"] == "tcp"
    assert listener["drain_timeout"] == 30.0
    [chain] = listener["filter_chains"]
    assert chain["tls"]["certificate_file"] == str(cert_file)
    # A key file's path is not the key: shown, as Envoy shows it.
    assert chain["tls"]["private_key_file"] == str(key_file)
    assert chain["filters"] == [{"tcp_proxy": {"cluster": "c", "idle_timeout": 3600.0, "buffer_size": 65536}}]
    assert dump["clusters"][0]["lb_policy"] == {"round_robin": None}


@attrs.frozen(kw_only=True)
class ApiKeyConfig:
    api_key: SecretStr
    max_tokens: int = 10
    backup_keys: dict[str, SecretStr] = attrs.field(factory=dict)


class ApiKeyPlugin:
    @staticmethod
    @meshcore.hookimpl
    def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
        async def passthrough(
            request: meshcore.Request, call_next: meshcore.HttpHandler
        ) -> meshcore.Response:
            return await call_next(request)

        return [
            meshcore.HttpFilterType(
                name="api_key", factory=lambda _config, _context: passthrough, config=ApiKeyConfig
            )
        ]


async def test_config_dump_redacts_a_plugin_s_declared_secrets() -> None:
    registry = meshcore.build_registry(autoload=False, plugins=[("api-key", ApiKeyPlugin())])
    data = {
        **testing.http_proxy_config(["127.0.0.1:1"]),
        "admin": {"address": "127.0.0.1:0"},
    }
    filters = [{"api_key": {"api_key": "sk-live-123", "backup_keys": {"old": "sk-old-456"}}}, "router"]
    data["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]["http_filters"] = (
        filters
    )
    with trio.fail_after(TIMEOUT):
        async with running(data, registry) as (_, client, _):
            response = await client.get("/config_dump")
    assert "sk-live-123" not in response.text
    assert "sk-old-456" not in response.text
    hcm = response.json()["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]
    assert hcm["http_filters"][0] == {
        "api_key": {"api_key": REDACTED, "max_tokens": 10, "backup_keys": {"old": REDACTED}}
    }


async def test_clusters_lists_endpoints_with_health_and_load() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (_, client, _):
            response = await client.get("/clusters")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "clusters": [
            {
                "name": "c",
                "lb_policy": "round_robin",
                "panic": False,
                "endpoints": [
                    {
                        "address": "127.0.0.1:1",
                        "weight": 3,
                        "healthy": True,
                        "health_flags": [],
                        "priority": 0,
                        "locality": None,
                        "active_requests": 0,
                        "open_connections": 0,
                    }
                ],
            }
        ]
    }


async def test_listeners_show_the_bound_port() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (proxy, client, _):
            response = await client.get("/listeners")
            host, port = proxy.address("tcp")
    assert port != 0
    assert response.json() == {
        "listeners": [{"name": "tcp", "address": f"{host}:{port}", "active_connections": 0}]
    }


async def test_unknown_path_and_wrong_method_over_http() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (_, client, _):
            reflected = await client.get("/%3Cscript%3Ealert(1)%3C/script%3E")
            assert reflected.status_code == 404
            # The answer quotes the path: as plain text a browser must not sniff into HTML.
            assert reflected.headers["content-type"] == "text/plain; charset=utf-8"
            assert reflected.headers["x-content-type-options"] == "nosniff"
            response = await client.post("/ready")
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, HEAD"
            response = await client.head("/ready")
            assert (response.status_code, response.content) == (200, b"")
            assert response.headers["content-length"] == "5"


@pytest.mark.usefixtures("restore_structlog")
async def test_logging_sets_the_level() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (_, client, _):
            assert (await client.get("/logging", params={"level": "error"})).status_code == 405
            response = await client.post("/logging", params={"level": "loud"})
            assert response.status_code == 400
            assert "loud" in response.text
            response = await client.post("/logging", params={"level": "error"})
            assert (response.status_code, response.text) == (200, "level set to error\n")
    with capture_logs() as logs:
        structlog.get_logger().warning("dropped")
        structlog.get_logger().error("kept")
    assert [e["event"] for e in logs] == ["kept"]


async def get(stream: trio.abc.Stream, conn: h11.Connection, target: str) -> tuple[int, bytes]:
    """One GET over an h11 client connection: status and body; ready for the next one."""
    request = h11.Request(method="GET", target=target, headers=[("host", "admin")])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif type(event) is h11.Response:
            status = event.status_code
        elif type(event) is h11.Data:
            body += event.data
        elif type(event) is h11.EndOfMessage:
            conn.start_next_cycle()
            return status, body


async def test_keep_alive_serves_requests_on_one_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (_, _, address):
            stream = await trio.open_tcp_stream(*address)
            conn = h11.Connection(h11.CLIENT)
            async with stream:
                assert await get(stream, conn, "/ready") == (200, b"LIVE\n")
                assert (await get(stream, conn, "/nope"))[0] == 404
                assert (await get(stream, conn, "/clusters"))[0] == 200


async def test_pipelined_requests_are_answered_in_order() -> None:
    requests = (
        b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\nGET /nope HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (_, _, address):
            answer = await raw_exchange(address, requests)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1 ") == 2
    assert b"LIVE\n" + b"HTTP/1.1 404 " in answer


async def test_request_split_across_reads(proxy: Proxy) -> None:
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_admin_connection, proxy, server, "test")
            await client.send_all(b"GET /ready HT")
            await trio.testing.wait_all_tasks_blocked()  # the server has taken the first part
            await client.send_all(b"TP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            answer = await read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert answer.endswith(b"\r\n\r\nNOT READY\n")


BAD_REQUESTS = {
    "garbage": (b"\x00\xff not http\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\nhost: a\n\n", 400),
    "cl-and-te": (
        b"POST /logging HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        400,
    ),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "head-too-large": (b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * MAX_HEAD_SIZE + b"\r\n\r\n", 431),
    "body-too-large": (
        b"POST /logging HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % (MAX_BODY_SIZE + 1)
        + b"a" * (MAX_BODY_SIZE + 1),
        413,
    ),
}


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_request_is_answered_then_closed(data: bytes, status: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(config()) as (_, client, address):
            with capture_logs() as logs:
                answer = await raw_exchange(address, data)
            assert answer.startswith(b"HTTP/1.1 %d " % status)
            assert b"\r\nconnection: close\r\n" in answer.lower()
            assert next(e for e in logs if e["event"] == "admin_request_rejected")["status"] == status
            # The server is still there for the next client.
            assert (await client.get("/ready")).status_code == 200


async def test_cancel_closes_the_admin_socket() -> None:
    proxy = Proxy(meshcore.build_registry())
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_admin, proxy, Address("127.0.0.1", 0))
            assert (await raw_exchange(address, b"GET /ready HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError, match="failed"):
            await trio.open_tcp_stream(*address)


async def test_idle_connection_is_closed(proxy: Proxy, autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    start = autojump_clock.current_time()  # virtual: the timeouts pass at once
    with trio.fail_after(IDLE_TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_admin_connection, proxy, server, "test")
            assert await client.receive_some() == b""
    assert trio.current_time() - start >= IDLE_TIMEOUT


async def test_slow_request_gets_408(proxy: Proxy, autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    start = autojump_clock.current_time()  # virtual: the timeouts pass at once
    with trio.fail_after(REQUEST_TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_admin_connection, proxy, server, "test")
            await client.send_all(b"GET /ready HTTP/1.1\r\n")
            answer = await read_until_closed(client)
            await client.aclose()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert REQUEST_TIMEOUT <= trio.current_time() - start < IDLE_TIMEOUT
