"""Mesh metrics between two sidecars: who called whom, scraped by promtool and a real Prometheus."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import trio
from _proxy_process import start_proxy_process

import meshcore
from meshcore import telemetry
from meshcore.runtime.admin import serve_admin
from meshcore.telemetry import Workload
from meshcore.testing import MeshcoreCA
from meshcore.testing.client import fetch
from meshcore.testing.filters import FilterHarness, make_request
from meshcore.testing.harness import http_proxy_config, start_proxy, tcp_proxy_config
from meshcore.testing.upstreams import serve_upstream

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def metrics(reporter: str, workload: str, **extra: Any) -> dict[str, Any]:
    return {"mesh_metrics": {"reporter": reporter, "workload": workload, "namespace": "shop", **extra}}


WEB = "spiffe://cluster.local/ns/shop/sa/web"
REVIEWS = "spiffe://cluster.local/ns/shop/sa/reviews"
EXCHANGE = "x-meshcore-peer-metadata"
PLAINTEXT_OPT_IN = {"trust": {"internal_headers": [EXCHANGE]}}
"""What B says to take the exchange from a plaintext peer (A's router says the same of B's answer)."""


async def two_sidecars(
    nursery: trio.Nursery, ca: MeshcoreCA | None = None, *, opt_in: bool = True, **inbound: Any
) -> tuple[Any, Any, tuple[str, int]]:
    """Client → A (outbound, workload "web") → B (inbound, workload "reviews" v1) → upstream.

    With ``ca``, A and B are mesh peers: mutual TLS with SPIFFE IDs, A checking B's
    (``peer_identities``), so that each takes the other's ``x-meshcore-peer-metadata``, as
    the edge of trust lets a mesh peer's ``x-meshcore-*`` headers through. Without, they
    talk plaintext, and take it only if told to (``opt_in``).
    """
    upstream = await nursery.start(serve_upstream)
    b_config = http_proxy_config(
        [upstream],
        http_filters=[
            metrics("destination", "reviews", version="v1", service="reviews", **inbound),
            "router",
        ],
        manager=PLAINTEXT_OPT_IN if ca is None and opt_in else None,
    )
    a_router: Any = "router"
    a_cluster: dict[str, Any] | None = None
    if ca is not None:
        server = ca.issue("127.0.0.1", "localhost", uris=[REVIEWS])
        b_config["listeners"][0]["filter_chains"][0]["tls"] = {
            "certificate_file": server.certificate_file,
            "private_key_file": server.private_key_file,
            "client_ca_file": str(ca.ca_file),
            "require_client_certificate": True,
        }
        client = ca.issue(uris=[WEB])
        a_cluster = {
            "tls": {
                "ca_file": str(ca.ca_file),
                "server_name": "localhost",
                "certificate_file": client.certificate_file,
                "private_key_file": client.private_key_file,
                "peer_identities": [REVIEWS],
            }
        }
    elif opt_in:
        a_router = {"router": {"internal_response_headers": [EXCHANGE]}}
    b = await start_proxy(nursery, b_config)
    a = await start_proxy(
        nursery,
        http_proxy_config(
            ["{}:{}".format(*b.address("ingress"))],
            http_filters=[metrics("source", "web"), a_router],
            cluster=a_cluster,
        ),
    )
    return a, b, a.address("ingress")


def series(stats: meshcore.Stats, name: str, **match: str) -> int | float:
    total: int | float = 0
    for metric_name, labels, metric in stats.items():
        if metric_name == name and all(dict(labels).get(k) == v for k, v in match.items()):
            total += metric.count if isinstance(metric, meshcore.Histogram) else metric.value
    return total


async def test_both_sidecars_count_the_request_with_both_workloads(
    nursery: trio.Nursery, meshcore_ca: MeshcoreCA
) -> None:
    with trio.fail_after(10):
        a, b, address = await two_sidecars(nursery, meshcore_ca)
        responses = [await fetch(address, path) for path in ("/", "/", "/status/503")]
    pair = {"source_workload": "web", "destination_workload": "reviews"}
    assert series(b.stats, "requests_total", reporter="destination", response_code="200", **pair) == 2
    assert series(b.stats, "requests_total", reporter="destination", response_code="503", **pair) == 1
    assert series(a.stats, "requests_total", reporter="source", destination_version="v1", **pair) == 3
    assert series(a.stats, "requests_total", destination_cluster="backend", request_protocol="http") == 3
    assert series(b.stats, "request_duration_seconds", **pair) == 3
    assert series(b.stats, "response_bytes", **pair) == 3
    mtls = {"connection_security_policy": "mutual_tls", "source_principal": WEB}
    assert series(b.stats, "requests_total", reporter="destination", **mtls, **pair) == 3
    # The exchange header never reaches the app nor the client.
    assert all(response.header(EXCHANGE) is None for response in responses)


async def test_plaintext_peers_exchange_metadata_only_when_told_to(nursery: trio.Nursery) -> None:
    """Outside mTLS a peer is a client like any other: what it says of itself is not taken by default."""
    with trio.fail_after(10):
        a, b, address = await two_sidecars(nursery, opt_in=False)
        await fetch(address, "/")
        a_trusting, b_trusting, trusting = await two_sidecars(nursery)
        await fetch(trusting, "/")
    assert series(b.stats, "requests_total", source_workload="unknown", destination_workload="reviews") == 1
    assert series(a.stats, "requests_total", source_workload="web", destination_workload="unknown") == 1
    pair = {"source_workload": "web", "destination_workload": "reviews"}
    assert series(b_trusting.stats, "requests_total", reporter="destination", **pair) == 1
    assert series(a_trusting.stats, "requests_total", reporter="source", **pair) == 1


async def test_a_client_outside_the_mesh_cannot_claim_a_workload(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    proxy = await start_proxy(
        nursery, http_proxy_config([upstream], http_filters=[metrics("destination", "reviews"), "router"])
    )
    forged = Workload("payments", "shop").encode().decode("latin-1")
    with trio.fail_after(10):
        await fetch(proxy.address("ingress"), "/", headers={EXCHANGE: forged})
    assert series(proxy.stats, "requests_total", source_workload="payments") == 0
    assert series(proxy.stats, "requests_total", source_workload="unknown") == 1


async def test_the_exchange_header_is_removed_before_the_app(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        _, _, address = await two_sidecars(nursery)
        response = await fetch(address, "/")
    assert "x-meshcore-peer-metadata" not in {name for name, _ in response.json()["headers"]}


async def test_label_values_past_the_cap_are_folded_into_other(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    proxy = await start_proxy(
        nursery,
        http_proxy_config(
            [upstream],
            http_filters=[
                metrics("destination", "api", max_label_values=2, labels=["response_code"]),
                "router",
            ],
        ),
    )
    with trio.fail_after(10):
        for code in (200, 201, 202, 203, 200):
            await fetch(proxy.address("ingress"), f"/status/{code}")
    codes = {
        dict(labels)["response_code"]: m.value
        for n, labels, m in proxy.stats.items()
        if isinstance(m, meshcore.Counter)
        if n == "requests_total"
    }
    assert codes == {"200": 2, "201": 1, "other": 2}
    # Only the labels asked for.
    assert {tuple(dict(labels)) for n, labels, _ in proxy.stats.items() if n == "requests_total"} == {
        ("response_code",)
    }


def test_peer_metadata_round_trips_and_rejects_junk() -> None:
    peer = Workload("reviews-v1", "shop; x=1", "reviews", "v1")
    assert Workload.decode(peer.encode()) == peer
    for junk in (b"nonsense", b"workload=a;workload=b", b"color=red", b"x" * 2000, "workload=é".encode()):
        assert Workload.decode(junk) is None


async def test_tcp_bytes_and_connections_are_counted(nursery: trio.Nursery) -> None:
    upstream = await nursery.start(serve_upstream)
    config = tcp_proxy_config([upstream])
    chain = config["listeners"][0]["filter_chains"][0]
    chain["filters"].insert(0, {"tcp_mesh_metrics": {"reporter": "destination", "workload": "db"}})
    proxy = await start_proxy(nursery, config)
    with trio.fail_after(10):
        response = await fetch(proxy.address("ingress"), "/", body=b"x" * 1000)
    assert response.status == 200
    labels = {"destination_workload": "db", "destination_cluster": "backend", "request_protocol": "tcp"}
    assert series(proxy.stats, "tcp_connections_opened_total", **labels) == 1
    with trio.fail_after(5):
        # The proxy sees the client's close on its own time; the counter is the only sign of it.
        while series(proxy.stats, "tcp_connections_closed_total", **labels) != 1:  # noqa: ASYNC110 - see above
            await trio.sleep(0.01)
    assert series(proxy.stats, "tcp_received_bytes_total", **labels) > 1000
    # Sent to the client: the upstream's whole answer, head and body.
    assert series(proxy.stats, "tcp_sent_bytes_total", **labels) > len(response.body)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
async def test_promtool_accepts_a_busy_proxys_exposition(
    nursery: trio.Nursery, meshcore_ca: MeshcoreCA
) -> None:
    with trio.fail_after(20):
        a, b, address = await two_sidecars(nursery, meshcore_ca)
        async with trio.open_nursery() as clients:
            for i in range(40):
                clients.start_soon(fetch, address, f"/status/{200 + i % 3 * 100}")
    for proxy in (a, b):
        exposition = proxy.stats.render_prometheus()
        assert "meshcore_requests_total{" in exposition
        assert PROMTOOL is not None
        checked = await trio.run_process(
            [PROMTOOL, "check", "metrics"],
            stdin=exposition.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 200ms
  scrape_timeout: 150ms
scrape_configs:
  - job_name: sidecar
    metrics_path: /stats/prometheus
    static_configs:
      - targets: ["{target}"]
"""


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package prometheus) is not installed")
async def test_prometheus_scrapes_the_sidecar_and_answers_a_promql_query(
    nursery: trio.Nursery, tmp_path: Path, meshcore_ca: MeshcoreCA
) -> None:
    with trio.fail_after(40):
        _, b, address = await two_sidecars(nursery, meshcore_ca)
        admin = await nursery.start(serve_admin, b, meshcore.Address("127.0.0.1", 0))
        for _ in range(25):
            assert (await fetch(address, "/")).status == 200
        with trio.socket.socket() as s:
            await s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(target="{}:{}".format(*admin)))
        assert PROMETHEUS is not None
        argv = [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        run = functools.partial(
            trio.run_process, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        process = await nursery.start(run)
        query = 'sum(meshcore_requests_total{source_workload="web",destination_workload="reviews",reporter="destination"})'
        value = None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # Prometheus is an external system: ask until its scrape has landed (bounded above).
            while value != "25":
                await trio.sleep(0.2)
                try:
                    answer = await client.get("/api/v1/query", params={"query": query})
                except httpx.TransportError:
                    continue  # not listening yet
                result = answer.json()["data"]["result"] if answer.status_code == 200 else []
                value = result[0]["value"][1] if result else None
        process.terminate()
    assert value == "25"


async def test_every_request_is_counted_right_past_the_filters_caches() -> None:
    """Past the filter's bounded caches each request still lands in its own series.

    Peers and label combinations are remembered per filter (300 peers > 256 remembered);
    the cap on distinct values still folds the rest into ``other``.
    """
    harness = FilterHarness(
        "mesh_metrics", {"reporter": "destination", "workload": "reviews", "max_label_values": 280}
    )
    statuses = iter([200] * 300 + [503] * 300)  # the first round answered 200, the second 503

    async def upstream(_request: meshcore.Request) -> meshcore.Response:
        return meshcore.Response.local(next(statuses), b"ok")

    harness.next = upstream
    for _ in range(2):
        for i in range(300):
            peer = Workload(f"client-{i}", "shop").encode().decode("latin-1")
            request = make_request(headers={EXCHANGE: peer})
            request.info.internal = True  # as the edge marks a mesh peer's request
            response = await harness(request)
            request.info.complete(request, response)
            assert response.headers.get(EXCHANGE) == Workload("reviews").encode().decode("latin-1")
            assert EXCHANGE not in request.headers
    assert series(harness.stats, "requests_total") == 600
    assert series(harness.stats, "requests_total", source_workload="client-7", response_code="503") == 1
    assert series(harness.stats, "requests_total", source_workload="client-7", response_code="200") == 1
    # The first 280 workloads have their own series; the last 20 are "other", both times.
    assert series(harness.stats, "requests_total", source_workload="client-279") == 2
    assert series(harness.stats, "requests_total", source_workload="other") == 40
    assert series(harness.stats, "request_duration_seconds") == 600


def test_the_own_identity_comes_from_the_node_when_a_control_plane_sets_one() -> None:
    class Node:
        id = "sidecar-1"
        workload = "reviews-v2"
        namespace = "shop"
        services = ("reviews.shop.svc.cluster.local",)
        labels: ClassVar[dict[str, str]] = {"app": "reviews", "version": "v2"}
        version = "0.1.0"  # the proxy's software version: not the workload's

    class Config:
        workload = "from-the-file"

    assert telemetry.own_workload(Node(), Config()) == Workload(
        "reviews-v2", "shop", "reviews.shop.svc.cluster.local", "v2"
    )
    assert telemetry.own_workload(None, Config()) == Workload("from-the-file")


def samples(exposition: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


async def test_workers_expositions_sum_sample_by_sample_to_one_proxys(nursery: trio.Nursery) -> None:
    """What an aggregator of --workers does (and Prometheus's sum): histograms add bucket by bucket.

    Two proxies with the same config share the requests; the sum of their expositions,
    sample by sample, equals the exposition of one proxy that took every request.
    """
    upstream = await nursery.start(serve_upstream)
    buckets = {
        "duration_buckets": [1000.0, 2000.0],
        "size_buckets": [10.0, 100000.0],
    }  # values land in fixed buckets
    chain = [metrics("destination", "api", labels=["response_code"], **buckets), "router"]
    proxies = [
        await start_proxy(nursery, http_proxy_config([upstream], http_filters=chain)) for _ in range(3)
    ]
    one, workers = proxies[0], proxies[1:]
    with trio.fail_after(10):
        for i, path in enumerate(("/", "/status/404", "/", "/bytes/50", "/", "/status/404")):
            await fetch(one.address("ingress"), path)
            await fetch(workers[i % 2].address("ingress"), path)
    mesh = (
        "meshcore_requests_total",
        "meshcore_request_bytes",
        "meshcore_response_bytes",
        "meshcore_request_duration",
    )
    whole = {k: v for k, v in samples(one.stats.render_prometheus()).items() if k.startswith(mesh)}
    summed: dict[str, float] = {}
    for worker in workers:
        for key, value in samples(worker.stats.render_prometheus()).items():
            if key.startswith(mesh) and "_sum" not in key:
                summed[key] = summed.get(key, 0) + value
    assert summed == {k: v for k, v in whole.items() if "_sum" not in k}
    assert 'meshcore_response_bytes_bucket{response_code="200",le="100000"}' in summed


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
async def test_two_workers_add_up_in_one_promtool_clean_exposition(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream = await nursery.start(serve_upstream)
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        admin_port = s.getsockname()[1]
    config = http_proxy_config([upstream], http_filters=[metrics("destination", "reviews"), "router"])
    config["admin"] = {"address": f"127.0.0.1:{admin_port}"}
    with trio.fail_after(30):
        proxy = await start_proxy_process(nursery, config, tmp_path, args=("--workers", "2"))
        # Both workers listening, and the group's admin server up (it starts after them).
        await proxy.wait_for("proxy_started", count=2)
        await proxy.wait_for("admin_started")
        for _ in range(30):  # new connections: SO_REUSEPORT spreads them over both workers
            assert (await fetch(proxy.address, "/")).status == 200
        async with httpx.AsyncClient() as client:
            exposition = (await client.get(f"http://127.0.0.1:{admin_port}/stats/prometheus")).text
        assert PROMTOOL is not None
        checked = await trio.run_process(
            [PROMTOOL, "check", "metrics"],
            stdin=exposition.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
    total = sum(
        float(line.rpartition(" ")[2])
        for line in exposition.splitlines()
        if line.startswith("meshcore_requests_total{") and 'destination_workload="reviews"' in line
    )
    assert total == 30
    assert "# HELP meshcore_requests_total Requests, by source" in exposition
