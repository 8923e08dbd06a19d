"""No config can take a running proxy down: generated and mutated configs fed to its apply.

One proxy runs for the whole module (in a :class:`~meshcore.testing.BackgroundLoop`), on a
config that uses every resource kind: HTTP and TCP listeners, a TLS listener and a TLS
cluster on secrets, route tables with overrides, filters with state, and a plugin of this
module whose filter and hook raise when a config says so. Hypothesis mutates that config
(values replaced by odd ones, keys deleted or made up, items repeated) or writes deltas,
and each result goes through validation (``snapshot_from_data``) and the running proxy's
``apply``/``apply_delta``. Whatever happens must be one of: applied, or ConfigError. Then
the base config is applied again and a request through the proxy must be answered by the
upstream: the process never exited, no traceback was logged, traffic kept flowing.

In CI a fixed set of examples runs (derandomized). A longer, random run is a command:

    MESHCORE_APPLY_EXAMPLES=20000 python -m pytest tests/test_apply_property.py -p no:cacheprovider
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, MutableMapping
from typing import Any, Literal

import attrs
import pytest
import structlog
import trustme
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import meshcore
from meshcore.testing import BackgroundLoop, SyncProxy, http_proxy_config

EXAMPLES = int(os.environ.get("MESHCORE_APPLY_EXAMPLES", "0"))
LONG = EXAMPLES > 0


# -- a plugin that fails when told to ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CrashyConfig:
    """Where the ``crashy`` filter raises: nowhere, its factory, carry_over or prepare_snapshot."""

    fail: Literal["never", "factory", "carry_over", "prepare"] = "never"


class Crashy:
    def __init__(self, config: CrashyConfig, _context: meshcore.FilterContext) -> None:
        self.fail = config.fail
        if self.fail == "factory":
            msg = "factory asked to fail"
            raise KeyError(msg)

    def carry_over(self, previous: object) -> None:
        if self.fail == "carry_over":
            msg = f"carry_over asked to fail ({type(previous).__name__})"
            raise RuntimeError(msg)

    def prepare_snapshot(self, snapshot: meshcore.Snapshot) -> None:
        if self.fail == "prepare":
            msg = f"prepare_snapshot asked to fail at {snapshot.version}"
            raise ZeroDivisionError(msg)

    async def __call__(self, request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        return await call_next(request)


class CrashyPlugin:
    @meshcore.hookimpl
    def meshcore_http_filters(self) -> list[meshcore.HttpFilterType]:
        return [meshcore.HttpFilterType(name="crashy", factory=Crashy, config=CrashyConfig)]

    @meshcore.hookimpl
    def meshcore_snapshot_applied(self, snapshot: meshcore.Snapshot) -> None:
        if any(c.name == "boom" for c in snapshot.clusters):
            msg = "a cluster called boom"
            raise LookupError(msg)


# -- the base config -------------------------------------------------------------------------------

CA = trustme.CA()
CERT = CA.issue_cert("proxy.test")


def base_config(upstream: str, ca_file: str) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"name": "probe", "match": {"path": "/probe"}, "cluster": "backend"},
        {
            "name": "split",
            "match": {"prefix": "/split", "headers": [{"name": "x-a", "regex": "a.*"}]},
            "weighted_clusters": [{"name": "backend", "weight": 3}, {"name": "tls-backend", "weight": 0}],
            "prefix_rewrite": "/",
            "filters": {"local_ratelimit": {"max_tokens": 5, "fill_interval": "1s"}, "crashy": "disabled"},
        },
        {"name": "away", "match": {"prefix": "/old"}, "redirect": {"path": "/new", "status": 302}},
        {"name": "here", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "hi"}},
    ]
    http_filters = [
        {"local_ratelimit": {"max_tokens": 1000000, "fill_interval": "1s"}},
        {"crashy": {"fail": "never"}},
        {"fault": {}},
        "router",
    ]
    config = http_proxy_config([upstream], routes=routes, http_filters=http_filters)
    config["listeners"][0]["name"] = "probe"
    chain = {
        "tls": {"secret": "server", "validation_secret": "roots", "alpn": ["h2", "http/1.1"]},
        "filters": copy.deepcopy(config["listeners"][0]["filter_chains"][0]["filters"]),
    }
    config["listeners"] += [
        {
            "name": "tcp",
            "address": "127.0.0.1:0",
            "filter_chains": [
                {
                    "filters": [
                        {"connection_limit": {"max_connections": 10}},
                        {"tcp_proxy": {"cluster": "backend"}},
                    ]
                }
            ],
        },
        {"name": "tls", "address": "127.0.0.1:0", "drain_timeout": "1s", "filter_chains": [chain]},
    ]
    config["clusters"] += [
        {
            "name": "tls-backend",
            "endpoints": [upstream],
            "lb_policy": {"least_request": {"choice_count": 2}},
            "tls": {"validation_secret": "roots", "server_name": "proxy.test"},
        },
        {
            "name": "file-tls",
            "endpoints": [upstream],
            "tls": {"ca_file": ca_file, "server_name": "proxy.test"},
        },
    ]
    config["secrets"] = [
        {
            "name": "server",
            "certificate_chain": CERT.cert_chain_pems[0].bytes().decode(),
            "private_key": CERT.private_key_pem.bytes().decode(),
        },
        {"name": "roots", "trusted_ca": CA.cert_pem.bytes().decode()},
    ]
    return config


def base_delta(upstream: str) -> dict[str, Any]:
    return {
        "version": "delta",
        "endpoints": {"backend": [upstream, "127.0.0.1:1"]},
        "clusters": [{"name": "extra", "endpoints": ["127.0.0.1:2"]}],
        "removed_clusters": ["nothing"],
        "secrets": [{"name": "roots", "trusted_ca": CA.cert_pem.bytes().decode()}],
    }


# -- mutations ---------------------------------------------------------------------------------------

ODD_STRINGS = (
    "",
    "x",
    "(",
    "*",
    "\x00",
    "☃",
    "boom",
    "router",
    "tcp_proxy",
    "fault",
    "crashy",
    "local_ratelimit",
    "connection_limit",
    "http_connection_manager",
    "backend",
    "tls-backend",
    "main",
    "server",
    "roots",
    "disabled",
    "never",
    "factory",
    "carry_over",
    "prepare",
    "/nonexistent/ca.pem",
    "/dev/null",
    "127.0.0.1:0",
    "127.0.0.2:0",
    "[::1]:0",
    "127.0.0.1:1",
    "127.0.0.1:99999",
    "[::1",
    "1.2.3.4",
    "0ms",
    "1h",
    "-1s",
    "10MiB",
    "1e999",
    "http2",
    "h2",
    "fast",
    "h11",
    "auto",
    "10.0.0.0/8",
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    CA.cert_pem.bytes().decode(),
)

Json = Any
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 65536, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=12),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(ODD_STRINGS), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(tree: Json, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in ``tree``, parents before children."""
    yield at
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*at, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, (*at, i))


def path_given(tree: Json, base: Json) -> bool:
    """Whether ``tree`` differs from ``base`` already (a targeted edit was made)."""
    return bool(tree != base)


def _parent(tree: Json, path: tuple[Any, ...]) -> Json:
    for part in path[:-1]:
        tree = tree[part]
    return tree


def mutate(tree: Json, path: tuple[Any, ...], op: str, value: Json) -> Json:
    """``tree`` with one change at ``path`` (the root itself can only be replaced)."""
    if not path:
        return value if op == "set" else tree
    parent = _parent(tree, path)
    key = path[-1]
    if op == "set":
        parent[key] = value
    elif op == "delete":
        del parent[key]
    elif op == "repeat" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif op == "add" and isinstance(parent[key], dict):
        parent[key][str(value)[:12]] = value
    return tree


def same_kind(current: Json) -> st.SearchStrategy[Json]:
    """Odd values of the kind already there: they pass structuring more often, and go further."""
    if isinstance(current, bool):
        return st.booleans()
    if isinstance(current, int):
        return st.sampled_from([0, 1, -1, 2, 3, 1000, 2**31, 65535, 65536, 10**30])
    if isinstance(current, str):
        return st.sampled_from(ODD_STRINGS) | st.text(max_size=12)
    return values


def targeted(taken: str) -> list[tuple[tuple[Any, ...], Json]]:
    """Edits that pass structuring and fail later, at apply: one of them starts half the examples.

    ``taken`` is an address another listener of the proxy is bound to.
    """
    hcm = ("listeners", 0, "filter_chains", 0, "filters", 0, "http_connection_manager")
    secret = ("secrets", 0)
    return [
        ((*hcm, "http_filters", 1, "crashy", "fail"), "factory"),
        ((*hcm, "http_filters", 1, "crashy", "fail"), "carry_over"),
        ((*hcm, "http_filters", 1, "crashy", "fail"), "prepare"),
        (("clusters", 2, "tls", "ca_file"), "/nonexistent/ca.pem"),
        (("clusters", 2, "tls", "ca_file"), "/dev/null"),
        (("clusters", 0, "name"), "boom"),
        ((*secret, "certificate_chain"), CA.cert_pem.bytes().decode()),  # not the key's certificate
        ((*secret, "private_key"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        (("secrets", 1, "trusted_ca"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        (("listeners", 0, "address"), taken),
        (("listeners", 2, "filter_chains", 0, "tls", "alpn"), ["x" * 300]),
        (("route_configs", 0, "virtual_hosts", 0, "domains"), ["*", "*"]),
    ]


DELTA_TARGETS: list[tuple[tuple[Any, ...], Json]] = [
    (("removed_clusters",), ["backend"]),
    (("removed_secrets",), ["server"]),
    (("removed_route_configs",), ["main"]),
    (("endpoints", "ghost"), ["127.0.0.1:3"]),
    (("clusters", 0, "tls"), {"ca_file": "/nonexistent/ca.pem"}),
    (("clusters", 0, "name"), "boom"),
    (("secrets", 0, "trusted_ca"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
    (("clusters",), [{"name": "backend"}, {"name": "backend"}]),
]


@st.composite
def mutated(draw: st.DrawFn, base: Json, targets: list[tuple[tuple[Any, ...], Json]]) -> Json:
    tree = copy.deepcopy(base)
    if draw(st.booleans()):
        path, value = draw(st.sampled_from(targets))
        tree = mutate(tree, path, "set", copy.deepcopy(value))
    for _ in range(draw(st.integers(min_value=0 if path_given(tree, base) else 1, max_value=3))):
        places = list(paths(tree))
        path = places[draw(st.integers(min_value=0, max_value=len(places) - 1))]
        op = draw(st.sampled_from(["like", "like", "like", "set", "delete", "repeat", "add"]))
        if op == "like":
            current = _parent(tree, path)[path[-1]] if path else tree
            tree = mutate(tree, path, "set", draw(same_kind(current)))
        else:
            tree = mutate(tree, path, op, draw(values))
    return tree


# -- the proxy under test --------------------------------------------------------------------------


@attrs.define
class World:
    loop: BackgroundLoop
    proxy: SyncProxy
    registry: meshcore.Registry
    base: meshcore.Snapshot
    config: dict[str, Any]
    delta: dict[str, Any]
    logs: list[MutableMapping[str, Any]]
    taken: str = "127.0.0.1:0"

    def apply(self, snapshot: meshcore.Snapshot) -> None:
        self.loop.run_sync(self.proxy.running.proxy.apply, snapshot)

    def apply_delta(self, delta: meshcore.SnapshotDelta) -> None:
        self.loop.run_sync(self.proxy.running.proxy.apply_delta, delta)

    def probe(self) -> None:
        """The last good config serves: the upstream answers through the probe listener."""
        assert not self.proxy.running.stopped
        response = self.proxy.client(listener="probe").get("/probe")
        assert (response.status, response.header("x-upstream")) == (200, "backend-up")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    registry = meshcore.build_registry(autoload=False, plugins=[("crashy-plugin", CrashyPlugin())])
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    CA.cert_pem.write_to_path(str(ca_file))
    with structlog.testing.capture_logs() as logs, BackgroundLoop(registry=registry) as loop:
        upstream = loop.start_upstream(name="backend-up")
        config = base_config(upstream.endpoint, str(ca_file))
        base = meshcore.snapshot_from_data(config, registry, version="base")
        proxy = loop.start_proxy(base, ephemeral=False)
        world = World(loop, proxy, registry, base, config, base_delta(upstream.endpoint), logs)
        world.taken = proxy.endpoint("tcp")
        world.probe()
        yield world
    assert not [e for e in logs if e.get("exc_info") or e.get("log_level") in ("error", "critical")]


PROFILE = settings(
    max_examples=EXAMPLES or 120,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def check(world: World, outcome: str, *, example: bool = True) -> None:
    """After an example: back to the base config (it must apply), and traffic flows."""
    if example:
        event(outcome)  # --hypothesis-show-statistics: how often each outcome came
    if outcome == "applied":
        world.apply(world.base)
    world.probe()
    bad = [e for e in world.logs if e.get("exc_info") or e.get("log_level") in ("error", "critical")]
    assert not bad, f"logged with a traceback or as an error: {bad}"
    world.logs.clear()


@PROFILE
@given(data=st.data())
def test_no_config_takes_a_running_proxy_down(world: World, data: st.DataObject) -> None:
    config = data.draw(mutated(world.config, targeted(world.taken)), label="config")
    try:
        snapshot = meshcore.snapshot_from_data(config, world.registry, version="mutated")
    except meshcore.ConfigError:
        check(world, "invalid")
        return
    try:
        world.apply(snapshot)
    except meshcore.ConfigError as err:
        rejected: meshcore.ConfigError | None = err
    else:
        rejected = None
    if rejected is not None:
        assert rejected.problems
        assert rejected.stage in ("validation", "apply")
    check(world, "applied" if rejected is None else "rejected")


@PROFILE
@given(data=st.data())
def test_no_delta_takes_a_running_proxy_down(world: World, data: st.DataObject) -> None:
    document = data.draw(mutated(world.delta, DELTA_TARGETS), label="delta")
    try:
        delta = meshcore.delta_from_data(document, world.registry)
    except meshcore.ConfigError:
        check(world, "invalid")
        return
    try:
        world.apply_delta(delta)
    except meshcore.ConfigError as err:
        rejected: meshcore.ConfigError | None = err
    else:
        rejected = None
    if rejected is not None:
        assert rejected.problems
    check(world, "applied" if rejected is None else "rejected")


def test_the_plugin_failures_are_reachable(world: World) -> None:
    """The mutations can reach each failure of the crashy plugin: each one rejects, naming it."""
    for fail, where in (
        ("factory", "factory"),
        ("carry_over", "carry_over"),
        ("prepare", "prepare_snapshot"),
    ):
        config = copy.deepcopy(world.config)
        config["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]["http_filters"][
            1
        ] = {"crashy": {"fail": fail}}
        if fail == "prepare":  # a kept chain: only the route table changes, the filter follows
            world.apply(meshcore.snapshot_from_data(_with_prepare_failing(world.config), world.registry))
            config = _with_prepare_failing(world.config)
            config["route_configs"][0]["virtual_hosts"][0]["routes"][-1]["direct_response"]["body"] = (
                "changed"
            )
        with pytest.raises(meshcore.ConfigError) as caught:
            world.apply(meshcore.snapshot_from_data(config, world.registry))
        (problem,) = caught.value.problems
        assert f"{where} of plugin 'crashy-plugin'" in problem.message
        check(world, "rejected", example=False)
    boom = copy.deepcopy(world.config)
    boom["clusters"].append({"name": "boom"})
    with pytest.raises(
        meshcore.ConfigError, match=r"plugin 'crashy-plugin'.*meshcore_snapshot_applied raised LookupError"
    ):
        world.apply(meshcore.snapshot_from_data(boom, world.registry))
    check(world, "applied", example=False)  # the crashy filter that follows may be live: back to the base


def _with_prepare_failing(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    hcm = out["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]
    hcm["http_filters"][1] = {"crashy": {"fail": "prepare"}}
    return out
