"""Discovery: services, workloads and endpoints from the mesh resources (``static``) and DNS.

DNS is tested with a resolver the test controls (answers, TTLs, failures) on trio's
autojump clock, and once with the system's resolver on ``localhost``.
"""

from __future__ import annotations

import trio
import trio.testing
from _mesh import model_of

from meshcore.config import Duration
from meshcore.control import MeshSettings, build_model
from meshcore.plugins.discovery_dns import DnsConfig, DnsDiscovery, NameNotFoundError, SystemResolver
from meshcore.plugins.discovery_static import StaticDiscovery

SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com, api-alias.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  endpoints:
  - {address: primary.example.com, labels: {site: a}}
  - {address: 192.0.2.10, labels: {site: b}, weight: 2}
"""


class Resolver:
    """DNS answers the test sets, and the questions it was asked."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[tuple[str, ...], float] | Exception] = {}
        self.asked: list[tuple[float, str]] = []

    async def resolve(self, name: str) -> tuple[tuple[str, ...], float]:
        self.asked.append((trio.current_time(), name))
        answer = self.answers.get(name, NameNotFoundError(name))
        if isinstance(answer, Exception):
            raise answer
        return answer


def addresses(model: object, host: str = "api.example.com") -> list[tuple[str, str]]:
    eps = model.endpoints[("default", host)]  # type: ignore[attr-defined]
    return sorted((e.address, e.labels.get("site", "")) for e in eps)


def test_static_services_follow_their_workloads() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r2, namespace: other}
spec: {address: 10.0.0.2, labels: {app: reviews}}
"""
    model = model_of(text)
    (service,) = model.services
    assert (service.resolution, service.selector, service.location) == (
        "STATIC",
        {"app": "reviews"},
        "MESH_EXTERNAL",
    )
    (endpoint,) = model.endpoints_of(service)
    assert (endpoint.address, endpoint.port_for(service.ports[0]), endpoint.workload) == (
        "10.0.0.1",
        8080,
        "default/r1",
    )
    gone = model_of(text.split("---", maxsplit=1)[0])
    assert gone.endpoints_of(gone.services[0]) == (), "a workload that goes away leaves its services"


def test_dns_round_robin_endpoints_are_names_resolved_when_connecting() -> None:
    model = model_of(SE.replace("resolution: DNS", "resolution: DNS_ROUND_ROBIN"))
    assert addresses(model) == [("192.0.2.10", "b"), ("primary.example.com", "a")]


def test_resolution_none_and_unresolvable_wildcards_are_refused() -> None:
    from _mesh import REGISTRY  # noqa: PLC0415

    from meshcore.config.loader import parse_documents  # noqa: PLC0415
    from meshcore.control.resources import resources_from_documents  # noqa: PLC0415

    text = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec: {hosts: [a.example.com]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec: {hosts: ["*.example.com"], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c}
spec: {hosts: [c.example.com], resolution: STATIC}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c2}
spec: {hosts: [c.example.com], resolution: STATIC}
"""
    docs = [(d, lines, "mesh.yaml") for d, lines in parse_documents(text, "mesh.yaml")]
    model = build_model(resources_from_documents(docs, REGISTRY), [StaticDiscovery()], MeshSettings())
    assert [str(p) for p in model.problems] == [
        (
            "mesh.yaml:1: ServiceEntry default/a: spec.resolution: NONE (the default without endpoints or a "
            "workloadSelector) is not supported by meshcore yet: give endpoints or a workloadSelector (STATIC), or set DNS"
        ),
        "mesh.yaml:6: ServiceEntry default/b: spec.hosts: wildcard host '*.example.com' cannot be resolved (DNS)",
        "ServiceEntry default/c2: host 'c.example.com' is already defined in namespace 'default' by ServiceEntry default/c",
    ]


async def test_dns_answers_become_endpoints_and_are_asked_again_when_they_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert autojump_clock.autojump_threshold == 0  # virtual time: TTLs pass at once
    resolver = Resolver()
    resolver.answers["primary.example.com"] = (("192.0.2.1", "192.0.2.2"), 30.0)
    dns = DnsDiscovery(DnsConfig(min_ttl=Duration(5)), resolver=resolver)
    resources = model_of(SE).resources
    first = dns.discover(resources, MeshSettings())
    assert sorted(e.address for e in first.endpoints[("default", "api.example.com")]) == ["192.0.2.10"]
    changes: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(dns.run, lambda: changes.append(trio.current_time()))
        start = trio.current_time()
        assert changes == [start], "the first answers changed what discover() says"
        model = build_model(resources, [dns], MeshSettings())
        assert addresses(model) == [("192.0.2.1", "a"), ("192.0.2.10", "b"), ("192.0.2.2", "a")]
        assert addresses(model, "api-alias.example.com") == addresses(model)
        # The same answer when its TTL runs out: asked again, nothing changed.
        await trio.sleep(31)
        assert [t - start for t, _ in resolver.asked] == [0, 30]
        assert len(changes) == 1
        # A new answer, with a TTL below the floor: kept min_ttl (5s), and the change is told.
        resolver.answers["primary.example.com"] = (("192.0.2.3",), 0.0)
        await trio.sleep(30)
        assert len(changes) == 2
        assert addresses(build_model(resources, [dns], MeshSettings())) == [
            ("192.0.2.10", "b"),
            ("192.0.2.3", "a"),
        ]
        await trio.sleep(5)
        assert [round(t - start) for t, _ in resolver.asked][-2:] == [60, 65]
        # The resolver fails: the last answer stays, and it is asked again 5s later.
        resolver.answers["primary.example.com"] = OSError("SERVFAIL")
        await trio.sleep(5)
        assert addresses(build_model(resources, [dns], MeshSettings()))[1] == ("192.0.2.3", "a")
        # The name is gone: its endpoints go.
        resolver.answers.pop("primary.example.com")
        await trio.sleep(10)
        assert addresses(build_model(resources, [dns], MeshSettings())) == [("192.0.2.10", "b")]
        # The ServiceEntry goes: the name is not asked any more.
        asked = len(resolver.asked)
        dns.discover(model_of(SE.replace("resolution: DNS", "resolution: STATIC")).resources, MeshSettings())
        await trio.sleep(120)
        assert len(resolver.asked) == asked
        nursery.cancel_scope.cancel()


async def test_a_name_that_is_new_is_asked_at_once(autojump_clock: trio.testing.MockClock) -> None:
    assert autojump_clock.autojump_threshold == 0  # virtual time
    resolver = Resolver()
    resolver.answers["primary.example.com"] = (("192.0.2.1",), 300.0)
    resolver.answers["other.example.com"] = (("192.0.2.9",), 300.0)
    dns = DnsDiscovery(resolver=resolver)
    dns.discover(model_of(SE).resources, MeshSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(dns.run, lambda: None)
        await trio.sleep(1)
        dns.discover(
            model_of(SE.replace("primary.example.com", "other.example.com")).resources, MeshSettings()
        )
        await trio.sleep(0.01)
        assert [name for _, name in resolver.asked] == ["primary.example.com", "other.example.com"]
        nursery.cancel_scope.cancel()


async def test_the_system_resolver_knows_localhost() -> None:
    with trio.fail_after(5):
        found, ttl = await SystemResolver(30).resolve("localhost")
    assert {"127.0.0.1", "::1"} & set(found)
    assert ttl == 30
