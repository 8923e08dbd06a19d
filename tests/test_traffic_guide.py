"""docs/traffic-management.md: its samples are real, and its example config does what it says.

Every fenced block of the page is either an excerpt of ``examples/traffic-management.yaml``
(marked ``<!-- meshcore: FILE -->``: it must appear in that file as written, indentation
aside) or an Istio manifest (marked ``<!-- istio -->``: a VirtualService or DestinationRule
of ``networking.istio.io/v1``). A block of any other kind fails the test: a sample that is
neither checked nor run could rot unseen.

The example config then runs as a proxy, its endpoints moved to real upstreams on
loopback, and each section's claim is tried on it.
"""

from __future__ import annotations

import collections
import re
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import yaml
from _faulty import FaultyUpstream
from _mesh import REGISTRY, model_of, route, translated

import meshcore
from meshcore import ConfigError
from meshcore.control import Translation, load_resources
from meshcore.runtime.cluster import Cluster
from meshcore.runtime.proxy import Proxy
from meshcore.testing.client import fetch
from meshcore.testing.harness import start_proxy

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "traffic-management.md"
EXAMPLE = ROOT / "examples" / "traffic-management.yaml"
FENCE = re.compile(r"^```(\S*)\s*$")
MARK = re.compile(r"^<!-- (istio|meshcore: (\S+)) -->$")
ISTIO_KINDS = {"VirtualService", "DestinationRule"}


@attrs.frozen
class Sample:
    """A fenced block of the guide and the mark before it."""

    mark: str | None
    text: str
    line: int


def samples() -> list[Sample]:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    found: list[Sample] = []
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]) and lines[i] != "```":
            start = i
            mark = MARK.match(lines[i - 1]) if i else None
            i += 1
            body = []
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            found.append(Sample(mark.group(1) if mark else None, "\n".join(body), start + 1))
        i += 1
    return found


def _is_excerpt(text: str, source: str) -> bool:
    """Whether ``text`` is a run of ``source``'s lines, as written but for a common indent."""
    want = text.splitlines()
    have = source.splitlines()
    return any(
        textwrap.dedent("\n".join(have[i : i + len(want)])) == "\n".join(want)
        for i in range(len(have) - len(want) + 1)
    )


def test_every_sample_is_an_excerpt_of_the_example_or_an_istio_manifest() -> None:
    found = samples()
    assert len(found) >= 15
    example = EXAMPLE.read_text(encoding="utf-8")
    for sample in found:
        where = f"docs/traffic-management.md:{sample.line}"
        assert sample.mark is not None, (
            f"{where}: a sample with no <!-- istio --> or <!-- meshcore: FILE --> mark"
        )
        if sample.mark == "istio":
            for document in yaml.safe_load_all(sample.text):
                assert document["apiVersion"] == "networking.istio.io/v1", where
                assert document["kind"] in ISTIO_KINDS, where
                assert document["metadata"]["name"], where
        else:
            assert sample.mark == "meshcore: examples/traffic-management.yaml", where
            assert _is_excerpt(sample.text, example), f"{where}: not in {EXAMPLE.name} as written"


def test_every_retry_condition_of_the_code_is_in_the_guide() -> None:
    from meshcore.config.traffic import RETRY_ON  # noqa: PLC0415 - the one place it is needed

    text = GUIDE.read_text(encoding="utf-8")
    for condition in RETRY_ON:
        assert f"`{condition}`" in text, condition


# -- the example, run ------------------------------------------------------------------------------


async def example(nursery: trio.Nursery) -> tuple[Proxy, dict[int, FaultyUpstream]]:
    """The example config as a proxy, each endpoint port moved to a real upstream of its own."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    upstreams: dict[int, FaultyUpstream] = {}

    async def upstream(port: int) -> str:
        upstreams[port] = FaultyUpstream(name=str(port), paths={"/healthz": "200"})
        await nursery.start(upstreams[port].serve)
        return upstreams[port].endpoint

    for cluster in data["clusters"]:
        moved: list[Any] = []
        for endpoint in cluster["endpoints"]:
            address = endpoint if isinstance(endpoint, str) else endpoint["address"]
            new = await upstream(int(address.rpartition(":")[2]))
            moved.append(new if isinstance(endpoint, str) else {**endpoint, "address": new})
        cluster["endpoints"] = moved
    data["admin"] = {"enabled": False}
    data["listeners"][0]["address"] = "127.0.0.1:0"
    proxy = await start_proxy(nursery, data)
    return proxy, upstreams


def _cluster(proxy: Proxy, name: str) -> Cluster:
    cluster = proxy.clusters.get(name)
    assert cluster is not None
    return cluster


async def test_the_example_does_what_the_guide_says(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        proxy, upstreams = await example(nursery)
        address = proxy.address("ingress")
        reviews = _cluster(proxy, "reviews")
        while sum(h.healthy for h in reviews.hosts) < 3:  # active checks make them healthy
            await reviews.wait_health_change()

        # Timeouts and retries: a 503 and a reset are retried on the other endpoints.
        upstreams[9101].default = upstreams[9102].default = "503"
        upstreams[9103].then(["reset"])
        statuses = [(await fetch(address, f"/reviews/{i}")).status for i in range(6)]
        assert statuses.count(200) >= 5  # only the request that met the reset may fail

        # Outlier detection: the endpoint that keeps answering 503 is ejected (five in a row),
        # its failures hidden by the retries meanwhile; traffic then goes to the other two.
        # It fails its health check too, which would otherwise let it back at once.
        sick = upstreams[9101]
        sick.paths["/healthz"] = "503"
        upstreams[9102].default = "200"
        sick_host = next(h for h in reviews.hosts if h.label == sick.endpoint)
        i = 0
        while not sick_host.ejected:
            assert (await fetch(address, f"/reviews/more-{i}")).status == 200
            i += 1
        assert [h.label for h in reviews.hosts if h.ejected] == [sick.endpoint]
        served = {(await fetch(address, f"/reviews/after-{i}")).header("x-upstream") for i in range(6)}
        assert served <= {"9102", "9103"}
        assert sum(1 for s in sick.seen if s.path.startswith("/reviews/after-")) == 0

        # Canary split: ratings go to v1 and v2 only.
        names = collections.Counter(
            [(await fetch(address, f"/ratings/{i}")).header("x-upstream") for i in range(20)]
        )
        assert set(names) <= {"9111", "9112"}
        assert names["9111"] > names["9112"]

        # Mirroring: copies of the orders reach the shadow (half of each 100), with a -shadow host.
        for i in range(20):
            assert (await fetch(address, f"/orders/{i}")).header("x-upstream") == "9121"
        await proxy.clusters.mirrors.wait_idle()
        copies = upstreams[9122].count
        assert copies == proxy.stats.value("mirror_requests_total", cluster="orders-shadow")
        assert 0 < copies < 20
        assert {s.host for s in upstreams[9122].seen} == {"example.com-shadow"}

        # Consistent hashing: a user's cart stays on one endpoint.
        for user in ("ann", "bob", "cy"):
            served = {
                (await fetch(address, "/cart", headers={"x-user": user})).header("x-upstream")
                for _ in range(4)
            }
            assert len(served) == 1

        # Locality: the catalog stays in the proxy's zone.
        catalog = {(await fetch(address, f"/catalog/{i}")).header("x-upstream") for i in range(6)}
        assert catalog == {"9141"}


# -- the Istio side, translated ------------------------------------------------------------------

SERVICES = "---\n".join(
    f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.{i}, labels: {{version: v{i % 2 + 1}}}}}, {{address: 10.0.1.{i}, labels: {{version: v{i % 2 + 2}}}}}]
"""
    for i, name in enumerate(("reviews", "cart", "ratings", "orders", "orders-shadow", "catalog"), 1)
)
SUBSETS = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings-subsets}
spec:
  host: ratings
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def _outbound(host: str, subset: str = "") -> str:
    return f"outbound|80|{subset}|{host}.default.svc.cluster.local"


def test_the_istio_samples_translate_to_their_meshcore_side() -> None:
    """Each Istio manifest of the guide, through the control plane: the settings its meshcore side shows."""
    istio = [s for s in samples() if s.mark == "istio"]
    assert len(istio) == 7, "a new Istio sample: say here what it becomes"
    # One model per sample: two DestinationRules for one host would leave one out, as in Istio.
    translations = []
    for sample in istio:
        if "localityLbSetting" in sample.text:
            continue
        t = translated(model_of("---\n".join([SERVICES, SUBSETS, sample.text + "\n"])))
        assert not t.problems, (sample.line, t.problems)
        translations.append(t)
    routes_of, limits, outliers, hashing, canary, mirroring = translations

    def cluster(t: Translation, name: str) -> meshcore.Cluster:
        return next(c for c in t.snapshot.clusters if c.name == name)

    reviews = route(routes_of, "reviews").config
    assert reviews.timeout == 3.0
    policy = reviews.retry_policy
    assert (policy.num_retries, policy.per_try_timeout) == (2, 1.0)
    assert sorted(policy.retry_on) == ["5xx", "connect-failure", "reset"]

    breakers = cluster(limits, _outbound("reviews")).circuit_breakers
    assert (breakers.max_connections, breakers.max_pending_requests, breakers.max_requests) == (100, 10, 100)
    assert breakers.retry_budget is not None
    assert (breakers.retry_budget.budget_percent, breakers.retry_budget.min_retry_concurrency) == (20.0, 3)

    od = cluster(outliers, _outbound("reviews")).outlier_detection
    assert od is not None
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent) == (
        5,
        10.0,
        30.0,
        50.0,
    )

    lb = cluster(hashing, _outbound("cart")).lb_policy
    assert (lb.name, [p.header for p in lb.config.hash_policy]) == ("ring_hash", ["x-user"])

    split = route(canary, "ratings").config.weighted_clusters
    assert [(w.name, w.weight) for w in split] == [
        (_outbound("ratings", "v1"), 90),
        (_outbound("ratings", "v2"), 10),
    ]

    mirrors = route(mirroring, "orders").config.request_mirror_policies
    assert [(m.cluster, m.percentage) for m in mirrors] == [(_outbound("orders-shadow"), 50.0)]


def test_the_locality_sample_is_refused_until_the_control_plane_knows_localities(tmp_path: Path) -> None:
    (sample,) = [s for s in samples() if s.mark == "istio" and "localityLbSetting" in s.text]
    path = tmp_path / "catalog.yaml"
    path.write_text(sample.text)
    with pytest.raises(ConfigError) as caught:
        load_resources([path], REGISTRY)
    assert "spec.trafficPolicy.loadBalancer.localityLbSetting: is not supported by meshcore yet" in str(
        caught.value
    )
