"""The proxy's life: drain on SIGTERM, reload on change and on SIGHUP, bad reloads, reloads under load.

The CLI tests run ``python -m meshcore proxy`` as a real process and follow it through its
JSON log lines on stderr. Requests that must be in flight at a given moment go to
``/gate/...`` on the in-test upstream: it counts them as they arrive and holds every answer
until the test opens the gate, so "in flight" is a fact, not a timing guess.
"""

from __future__ import annotations

import functools
import hashlib
import json
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from _h1client import Client, Reply

from meshcore.config import snapshot_from_data
from meshcore.registry import build_registry
from meshcore.testing.client import fetch
from meshcore.testing.harness import http_proxy_config, start_proxy
from meshcore.testing.upstreams import _Session

DRAIN_TIMEOUT = 5.0


# -- the in-test upstream ----------------------------------------------------------------------


class GatedUpstream:
    """The sample upstream, plus ``/gate/...``: counted on arrival, answered once the gate opens."""

    def __init__(self) -> None:
        self.arrived = 0
        self.gate = trio.Event()
        self._arrival = trio.Event()

    def _arrive(self) -> None:
        self.arrived += 1
        self._arrival.set()
        self._arrival = trio.Event()

    async def wait_arrived(self, count: int) -> None:
        """Wait until ``count`` gated requests have reached the upstream."""
        while self.arrived < count:
            await self._arrival.wait()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on a loopback port until cancelled; report ``(host, port)``."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]

        async def session(stream: trio.SocketStream) -> None:
            await _GatedSession(stream, self).run()

        async with trio.open_nursery() as nursery:
            task_status.started((host, port))
            await trio.serve_listeners(session, listeners, handler_nursery=nursery)


class _GatedSession(_Session):
    def __init__(self, stream: trio.SocketStream, upstream: GatedUpstream) -> None:
        super().__init__(stream, "gated")
        self.upstream = upstream

    async def _answer(self, request: h11.Request) -> None:
        if not request.target.startswith(b"/gate/"):
            await super()._answer(request)
            return
        self.upstream._arrive()
        await self.upstream.gate.wait()
        await self._describe(request, 0)


def described_path(reply: Reply) -> str:
    """The path the sample upstream says it was asked for (its JSON body must be whole)."""
    path: str = json.loads(reply.body)["path"]
    return path


# -- the proxy as a real process ----------------------------------------------------------------


class ProxyProcess:
    """``meshcore proxy`` running as a child process, with its JSON log lines collected."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.logs: list[dict[str, Any]] = []
        self.ended = False
        self._logged = trio.Event()

    async def collect_logs(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        try:
            async for chunk in self.process.stderr:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        entry = {"event": "<not JSON>", "text": line.decode(errors="replace")}
                    self.logs.append(entry)
                self._logged.set()
                self._logged = trio.Event()
        finally:
            self.ended = True
            self._logged.set()

    def found(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.logs if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        """The first log line with this event and fields, once it is written."""
        while True:
            if found := self.found(event, **fields):
                return found[0]
            if self.ended:
                msg = f"the proxy exited without logging {event} {fields}; it logged {self.logs}"
                raise AssertionError(msg)
            await self._logged.wait()

    async def listener_address(self) -> tuple[str, int]:
        started = await self.wait_for("proxy_started")
        host, _, port = started["listeners"]["ingress"].rpartition(":")
        return host, int(port)


async def start_proxy_process(nursery: trio.Nursery, config: Path, *, poll_interval: float) -> ProxyProcess:
    """Start ``python -m meshcore proxy -c CONFIG``; it is killed when ``nursery`` is cancelled."""
    argv = [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--log-format", "json"]
    argv += ["--poll-interval", str(poll_interval)]
    run = functools.partial(
        trio.run_process, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    process: trio.Process = await nursery.start(run)
    proxy = ProxyProcess(process)
    nursery.start_soon(proxy.collect_logs)
    return proxy


ROUTES_V1 = """\
          - name: gate
            match: {prefix: /gate/}
            cluster: backend
          - name: hello
            match: {path: /hello}
            direct_response: {status: 200, body: "v1\\n"}
"""
ROUTES_V2 = """\
          - name: gate
            match: {prefix: /gate/}
            cluster: backend
          - name: hello
            match: {path: /hello}
            direct_response: {status: 200, body: "v2\\n"}
          - name: new
            match: {path: /new}
            direct_response: {status: 200, body: "new in v2\\n"}
"""
# A typo'd key (line 22 of the file) and a cluster nobody defined (line 25).
ROUTES_BROKEN = """\
          - name: gate
            match: {prefix: /gate/}
            cluster: backend
          - name: hello
            match: {path: /hello}
            direct_respons: {status: 200, body: "v2\\n"}
          - name: new
            match: {path: /new}
            cluster: payments
"""


def config_text(upstream: tuple[str, int], routes: str) -> str:
    return f"""\
admin: {{address: "127.0.0.1:0"}}
listeners:
  - name: ingress
    address: 127.0.0.1:0
    drain_timeout: {DRAIN_TIMEOUT}s
    filter_chains:
      - filters:
          - http_connection_manager:
              route_config: main
              http_filters: [router]
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
{routes}clusters:
  - name: backend
    endpoints: ["{upstream[0]}:{upstream[1]}"]
"""


def write_config(path: Path, text: str) -> str:
    """Replace the config file atomically, as deployment tools do; return the version it gets."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)  # rename(2): readers see the old file or the new one, never half
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- SIGTERM ------------------------------------------------------------------------------------


async def test_sigterm_finishes_the_request_in_flight_refuses_new_connections_and_exits_0(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        upstream = GatedUpstream()
        config = tmp_path / "proxy.yaml"
        write_config(config, config_text(await nursery.start(upstream.serve), ROUTES_V1))
        proxy = await start_proxy_process(nursery, config, poll_interval=1)
        address = await proxy.listener_address()

        replies: list[Reply] = []
        answered = trio.Event()

        async def slow_request() -> None:
            async with await Client.connect(address) as client:
                replies.append(await client.get("/gate/slow"))
            answered.set()

        nursery.start_soon(slow_request)
        await upstream.wait_arrived(1)
        proxy.process.send_signal(signal.SIGTERM)
        signalled = trio.current_time()
        await proxy.wait_for("drain_started", signal="SIGTERM")

        # No answer: refused once the socket is closed; reset if it was still in the backlog then.
        with pytest.raises((OSError, trio.BrokenResourceError)):
            await fetch(address, "/hello")
        assert not answered.is_set()  # the slow request was still in flight

        upstream.gate.set()
        await answered.wait()
        with trio.fail_after(DRAIN_TIMEOUT):
            returncode = await proxy.process.wait()
        exited_after = trio.current_time() - signalled
    [reply] = replies
    assert (reply.status, described_path(reply)) == (200, "/gate/slow")
    assert reply.headers["connection"] == "close"
    assert returncode == 0
    assert exited_after < DRAIN_TIMEOUT
    assert proxy.found("proxy_stopped")


async def test_a_reload_during_the_drain_is_ignored_and_the_drain_completes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        upstream = GatedUpstream()
        upstream_address = await nursery.start(upstream.serve)
        config = tmp_path / "proxy.yaml"
        write_config(config, config_text(upstream_address, ROUTES_V1))
        proxy = await start_proxy_process(nursery, config, poll_interval=0)
        address = await proxy.listener_address()

        async with await Client.connect(address) as client:
            await client.send("/gate/slow")
            await upstream.wait_arrived(1)
            proxy.process.send_signal(signal.SIGTERM)
            await proxy.wait_for("drain_started", signal="SIGTERM")
            write_config(config, config_text(upstream_address, ROUTES_V2))
            proxy.process.send_signal(signal.SIGHUP)
            await proxy.wait_for("reload_requested", signal="SIGHUP")

            upstream.gate.set()
            reply = await client.receive()
        with trio.fail_after(DRAIN_TIMEOUT):
            returncode = await proxy.process.wait()
    assert (reply.status, described_path(reply)) == (200, "/gate/slow")
    assert returncode == 0
    assert len(proxy.found("snapshot_applied")) == 1
    assert [e for e in proxy.logs if e.get("level") in ("error", "critical")] == []


# -- reloads ------------------------------------------------------------------------------------


async def test_a_changed_route_table_is_applied_for_the_next_request_of_a_kept_alive_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Only the route table changed: it is swapped in, and no connection is drained.

    The request in flight during the reload finishes on the routes it was matched with;
    the next request on the same connection takes the new ones.
    """
    with trio.fail_after(30):
        upstream = GatedUpstream()
        upstream_address = await nursery.start(upstream.serve)
        config = tmp_path / "proxy.yaml"
        first = write_config(config, config_text(upstream_address, ROUTES_V1))
        proxy = await start_proxy_process(nursery, config, poll_interval=0.05)
        address = await proxy.listener_address()
        assert proxy.found("snapshot_applied", version=first)

        async with await Client.connect(address) as client:
            before = await client.get("/hello")
            await client.send("/gate/during-reload")  # on the same keep-alive connection
            await upstream.wait_arrived(1)

            second = write_config(config, config_text(upstream_address, ROUTES_V2))
            await proxy.wait_for("snapshot_applied", version=second)
            new_route = await fetch(address, "/new")
            changed = await fetch(address, "/hello")

            upstream.gate.set()
            during = await client.receive()
            after = await client.get("/hello")  # the same connection, kept alive
    assert (before.status, before.body, before.headers.get("connection")) == (200, b"v1\n", None)
    assert (new_route.status, new_route.text) == (200, "new in v2\n")
    assert (changed.status, changed.text) == (200, "v2\n")
    assert (during.status, described_path(during)) == (200, "/gate/during-reload")
    assert "connection" not in during.headers
    assert (after.status, after.body, after.headers.get("connection")) == (200, b"v2\n", None)


async def test_a_changed_filter_chain_drains_its_connections_after_the_request_in_flight(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The listener's own filter chain changed: its connections drain.

    They finish the request in flight on the old chain, then close; new connections take
    the new chain.
    """
    with trio.fail_after(30):
        upstream = GatedUpstream()
        upstream_address = await nursery.start(upstream.serve)
        config = tmp_path / "proxy.yaml"
        write_config(config, config_text(upstream_address, ROUTES_V1))
        proxy = await start_proxy_process(nursery, config, poll_interval=0.05)
        address = await proxy.listener_address()

        async with await Client.connect(address) as client:
            before = await client.get("/hello")
            await client.send("/gate/during-reload")
            await upstream.wait_arrived(1)

            text = config_text(upstream_address, ROUTES_V1).replace(
                "http_filters: [router]", "http_filters: [router]\n              idle_timeout: 299s"
            )
            second = write_config(config, text)
            await proxy.wait_for("snapshot_applied", version=second)
            fresh = await fetch(address, "/hello")

            upstream.gate.set()
            during = await client.receive()
            closed = await client.closed_by_server()
    assert (before.status, before.headers.get("connection")) == (200, None)
    assert (fresh.status, fresh.text) == (200, "v1\n")
    # Not dropped mid-request: answered in full, then closed because its chain was replaced.
    assert (during.status, described_path(during)) == (200, "/gate/during-reload")
    assert during.headers["connection"] == "close"
    assert closed


async def test_sighup_alone_reloads_when_polling_is_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(30):
        upstream_address = await nursery.start(GatedUpstream().serve)
        config = tmp_path / "proxy.yaml"
        write_config(config, config_text(upstream_address, ROUTES_V1))
        proxy = await start_proxy_process(nursery, config, poll_interval=0)
        address = await proxy.listener_address()

        second = write_config(config, config_text(upstream_address, ROUTES_V2))
        unchanged = await fetch(address, "/hello")  # nobody looks at the file on their own
        proxy.process.send_signal(signal.SIGHUP)
        await proxy.wait_for("snapshot_applied", version=second)
        changed = await fetch(address, "/hello")
    assert (unchanged.status, unchanged.text) == (200, "v1\n")
    assert proxy.found("reload_requested", signal="SIGHUP")
    assert (changed.status, changed.text) == (200, "v2\n")


async def test_a_broken_reload_is_rejected_with_every_problem_and_the_old_routes_keep_serving(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        upstream = GatedUpstream()
        upstream.gate.set()
        upstream_address = await nursery.start(upstream.serve)
        config = tmp_path / "proxy.yaml"
        first = write_config(config, config_text(upstream_address, ROUTES_V1))
        proxy = await start_proxy_process(nursery, config, poll_interval=0)
        address = await proxy.listener_address()

        write_config(config, config_text(upstream_address, ROUTES_BROKEN))
        proxy.process.send_signal(signal.SIGHUP)
        rejected = await proxy.wait_for("config_rejected")
        hello = await fetch(address, "/hello")
        gated = await fetch(address, "/gate/still-routed")
        new = await fetch(address, "/new")

        fixed = write_config(config, config_text(upstream_address, ROUTES_V2))
        proxy.process.send_signal(signal.SIGHUP)
        await proxy.wait_for("snapshot_applied", version=fixed)
    routes = "route_configs[0].virtual_hosts[0].routes"
    assert rejected["path"] == str(config)
    assert rejected["problems"] == [
        (
            f"{config}:20: {routes}[1]: needs exactly one action of cluster, weighted_clusters, "
            "direct_response, redirect; got none"
        ),
        f"{config}:22: {routes}[1].direct_respons: unknown field; did you mean 'direct_response'?",
        f"{config}:25: {routes}[2].cluster: unknown cluster 'payments' (defined: backend)",
    ]
    assert rejected["kept"] == "previous snapshot"
    assert (hello.status, hello.text) == (200, "v1\n")
    assert (gated.status, json.loads(gated.body)["path"]) == (200, "/gate/still-routed")
    assert new.status == 404
    assert [e["version"] for e in proxy.found("snapshot_applied")] == [first, fixed]


# -- a reload under load --------------------------------------------------------------------------

IN_FLIGHT = 1000


@pytest.fixture
def open_files() -> Iterator[None]:
    """Enough file descriptors for IN_FLIGHT requests: client, downstream, upstream and server sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * IN_FLIGHT + 512
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"this test needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("open_files")
async def test_a_reload_while_1000_requests_are_in_flight_loses_none_of_them(nursery: trio.Nursery) -> None:
    upstream = GatedUpstream()
    upstream_address = await nursery.start(upstream.serve)
    routes = [
        {"name": "gate", "match": {"prefix": "/gate/"}, "cluster": "backend"},
        {"name": "hello", "match": {"path": "/hello"}, "direct_response": {"status": 200, "body": "v1\n"}},
    ]
    cluster = {"max_connections_per_endpoint": IN_FLIGHT}
    registry = build_registry()
    config = http_proxy_config([upstream_address], routes=routes, cluster=cluster)
    proxy = await start_proxy(nursery, config, registry=registry)
    address = proxy.address("ingress")
    replies: dict[int, tuple[Reply, bool]] = {}

    async def request(i: int) -> None:
        async with await Client.connect(address) as client:
            reply = await client.get(f"/gate/{i}")
            replies[i] = (reply, await client.closed_by_server())

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            for i in range(IN_FLIGHT):
                clients.start_soon(request, i)
            await upstream.wait_arrived(IN_FLIGHT)
            assert proxy.stats.value("http_downstream_rq_active", listener="ingress") == IN_FLIGHT

            routes_v2 = [
                *routes[:1],
                {
                    "name": "hello",
                    "match": {"path": "/hello"},
                    "direct_response": {"status": 200, "body": "v2\n"},
                },
            ]
            # The chain changes too (a route table alone is swapped without a drain): every
            # connection finishes its request in flight on the old chain, then closes.
            manager = {"idle_timeout": "299s"}
            config_v2 = http_proxy_config(
                [upstream_address], routes=routes_v2, cluster=cluster, manager=manager
            )
            proxy.apply(snapshot_from_data(config_v2, registry, version="v2"))
            hello = await fetch(address, "/hello")
            assert upstream.arrived == IN_FLIGHT  # nothing was retried or sent twice
            assert not replies  # all of them were still in flight across the reload
            upstream.gate.set()
    assert (hello.status, hello.text) == (200, "v2\n")
    assert sorted(replies) == list(range(IN_FLIGHT))
    for i, (reply, closed) in replies.items():
        assert (reply.status, described_path(reply)) == (200, f"/gate/{i}")
        assert reply.headers["connection"] == "close"
        assert closed
