"""The route table: virtual host selection, route criteria, rewrites, weighted picks. Sans-IO."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from meshcore.config.model import (
    DirectResponse,
    HeaderMatch,
    QueryParamMatch,
    Route,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from meshcore.errors import ConfigError
from meshcore.http.messages import Headers, Request
from meshcore.http.routing import INDEX_FROM, RouteTable, parse_query


def route(name: str = "", *, cluster: str = "c", **kwargs: Any) -> Route:
    """A route to ``cluster``; keyword arguments go to RouteMatch (prefix "/" if no path kind)."""
    route_kwargs = {k: kwargs.pop(k) for k in ("prefix_rewrite", "regex_rewrite") if k in kwargs}
    if not {"path", "prefix", "regex"} & kwargs.keys():
        kwargs["prefix"] = "/"
    return Route(name=name, match=RouteMatch(**kwargs), cluster=cluster, **route_kwargs)


def table(*vhosts: VirtualHost, rng: random.Random | None = None) -> RouteTable:
    return RouteTable.compile(RouteConfiguration(name="rc", virtual_hosts=vhosts), rng=rng)


def vhost(name: str, *domains: str, routes: tuple[Route, ...] | None = None) -> VirtualHost:
    return VirtualHost(name=name, domains=domains, routes=routes if routes is not None else (route(name),))


def one(*routes: Route, rng: random.Random | None = None) -> RouteTable:
    """A table with one virtual host taking every domain."""
    return table(VirtualHost(name="vh", domains=("*",), routes=routes), rng=rng)


def req(path: str = "/", method: str = "GET", authority: str = "example.com", **headers: str) -> Request:
    pairs = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return Request(method, path, authority=authority, headers=Headers(pairs))


def matched(t: RouteTable, request: Request) -> str | None:
    found = t.match(request)
    return None if found is None else found.name


# -- virtual hosts ----------------------------------------------------------------------------

DOMAINS = table(
    vhost("exact", "api.example.com"),
    vhost("short-suffix", "*.com"),
    vhost("long-suffix", "*.example.com"),
    vhost("dash-suffix", "*-svc.example.com"),
    vhost("prefix", "api.*"),
    vhost("long-prefix", "api.internal.*"),
    vhost("ported", "ported.example.com:8080"),
    vhost("ipv6", "[::1]"),
    vhost("default", "*"),
)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("api.example.com", "exact"),  # exact beats every wildcard
        ("API.Example.COM", "exact"),  # case-insensitive
        ("www.example.com", "long-suffix"),  # longer suffix beats *.com
        ("foo-svc.example.com", "dash-suffix"),
        ("example.com", "short-suffix"),  # *.example.com does not take example.com itself
        ("other.com", "short-suffix"),
        ("api.example.org", "prefix"),
        ("api.internal.org", "long-prefix"),  # longer prefix wins
        ("api.", "default"),  # a wildcard stands for at least one character
        ("nothing.org", "default"),  # "*" comes last
        ("", "default"),
        ("api.example.com:8443", "exact"),  # port stripped when the full authority is not listed
        ("www.example.com:8443", "long-suffix"),
        ("ported.example.com:8080", "ported"),  # a listed port matches the full authority
        ("ported.example.com:9090", "long-suffix"),  # ... and only that port
        ("ported.example.com", "long-suffix"),
        ("[::1]:8080", "ipv6"),
        ("[::1]", "ipv6"),
        ("api.example.com:http", "prefix"),  # not a numeric port: not stripped
    ],
)
def test_virtual_host_selection(authority: str, expected: str) -> None:
    selected = DOMAINS.select_virtual_host(authority)
    assert selected is not None
    assert selected.name == expected
    assert matched(DOMAINS, req(authority=authority)) == expected


def test_wildcards_stand_for_at_least_one_character() -> None:
    t = table(vhost("suffix", "*example.com"), vhost("prefix", "api*"))
    assert matched(t, req(authority="myexample.com")) == "suffix"
    assert matched(t, req(authority="apis")) == "prefix"
    assert t.select_virtual_host("example.com") is None
    assert t.select_virtual_host("api") is None


def test_no_virtual_host_without_default() -> None:
    t = table(vhost("a", "a.example.com"))
    assert t.select_virtual_host("b.example.com") is None
    assert t.match(req(authority="b.example.com")) is None


def test_port_specific_suffix_wildcard_beats_portless() -> None:
    t = table(vhost("ported", "*.example.com:8080"), vhost("any", "*.example.com"))
    assert matched(t, req(authority="a.example.com:8080")) == "ported"
    assert matched(t, req(authority="a.example.com:80")) == "any"


def test_selection_cache_is_bounded_and_consistent() -> None:
    t = table(vhost("a", "a.example.com"), vhost("rest", "*"))
    for i in range(5000):
        assert t.select_virtual_host(f"h{i}.example.com") is t.virtual_hosts[1]
    assert len(t._cache) <= 4096
    assert t.select_virtual_host("A.example.com") is t.virtual_hosts[0]
    assert t.select_virtual_host("A.example.com") is t.virtual_hosts[0]


def test_duplicate_domain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"virtual_hosts\[1\].domains\[0\]: domain 'A.example.com'"):
        table(vhost("a", "a.example.com"), vhost("b", "A.example.com"))


# -- routes -------------------------------------------------------------------------------------


def test_first_matching_route_wins_and_unnamed_routes_get_an_index_name() -> None:
    t = one(route("api", prefix="/api"), route(prefix="/api/v2"), route(prefix="/"))
    assert matched(t, req("/api/v2/x")) == "api"
    assert matched(t, req("/other")) == "vh/2"
    found = t.match(req("/"))
    assert found is not None
    assert found.virtual_host == "vh"
    assert found.chain is None
    assert found.config is t.config.virtual_hosts[0].routes[2]


def test_no_route_matches() -> None:
    assert one(route(prefix="/api")).match(req("/other")) is None
    assert table(vhost("e", "*", routes=())).match(req()) is None


@pytest.mark.parametrize(
    ("kwargs", "path", "expected"),
    [
        ({"path": "/a"}, "/a", True),
        ({"path": "/a"}, "/a?x=1", True),  # the query is not part of the path
        ({"path": "/a"}, "/a/", False),
        ({"path": "/a"}, "/A", False),
        ({"path": "/a", "case_sensitive": False}, "/A", True),
        ({"prefix": "/api"}, "/api/x?y", True),
        ({"prefix": "/api"}, "/apiary", True),
        ({"prefix": "/api"}, "/ap", False),
        ({"prefix": "/api"}, "/?/api", False),
        ({"prefix": "/api"}, "/API/x", False),
        ({"prefix": "/api", "case_sensitive": False}, "/API/x", True),
        ({"prefix": "/a.b", "case_sensitive": False}, "/aXb", False),  # literal, not a regex
        ({"regex": r"/item/\d+"}, "/item/42?q=1", True),
        ({"regex": r"/item/\d+"}, "/item/42/x", False),  # a full match, not a search
        ({"regex": r"/item/\d+"}, "/x/item/42", False),
        ({"regex": r"/item/\d+", "case_sensitive": False}, "/ITEM/42", False),  # regex ignores it
    ],
)
def test_path_criteria(kwargs: dict[str, Any], path: str, expected: bool) -> None:
    assert (one(route(**kwargs)).match(req(path)) is not None) is expected


def test_methods() -> None:
    t = one(route("write", methods=("POST", "PUT")), route("rest"))
    assert matched(t, req(method="POST")) == "write"
    assert matched(t, req(method="PUT")) == "write"
    assert matched(t, req(method="GET")) == "rest"


H = HeaderMatch


@pytest.mark.parametrize(
    ("criterion", "headers", "expected"),
    [
        (H(name="X-Env", exact="prod"), {"x_env": "prod"}, True),
        (H(name="x-env", exact="prod"), {"x_env": "Prod"}, False),
        (H(name="x-env", exact="prod"), {}, False),
        (H(name="x-env", exact="prod", invert=True), {"x_env": "dev"}, True),
        (H(name="x-env", exact="prod", invert=True), {"x_env": "prod"}, False),
        (
            H(name="x-env", exact="prod", invert=True),
            {},
            False,
        ),  # Envoy: a missing header has no value to invert
        (H(name="x-env", prefix="pr"), {"x_env": "prod"}, True),
        (H(name="x-env", prefix="pr"), {"x_env": "dev"}, False),
        (H(name="x-env", prefix="pr", invert=True), {"x_env": "dev"}, True),
        (H(name="x-v", regex=r"\d{3}"), {"x_v": "123"}, True),
        (H(name="x-v", regex=r"\d{3}"), {"x_v": "1234"}, False),  # full match
        (H(name="x-v", regex=r"\d{3}", invert=True), {"x_v": "1234"}, True),
        (H(name="x-env"), {"x_env": ""}, True),  # no kind: presence
        (H(name="x-env"), {}, False),
        (H(name="x-env", present=True), {"x_env": "a"}, True),
        (H(name="x-env", present=True, invert=True), {}, True),
        (H(name="x-env", present=True, invert=True), {"x_env": "a"}, False),
        (H(name="x-env", present=False), {}, True),
        (H(name="x-env", present=False), {"x_env": "a"}, False),
        (H(name="x-env", present=False, invert=True), {"x_env": "a"}, True),
        (H(name="x-env", present=False, invert=True), {}, False),
        (H(name="host", exact="example.com"), {}, True),  # Host lives in request.authority
        (H(name=":method", exact="GET"), {}, True),
        (H(name=":authority", prefix="other"), {}, False),
    ],
)
def test_header_criteria(criterion: HeaderMatch, headers: dict[str, str], expected: bool) -> None:
    assert (one(route(headers=(criterion,))).match(req(**headers)) is not None) is expected


def test_header_with_several_values_matches_them_joined_by_commas() -> None:
    t = one(route(headers=(H(name="x-a", exact="1,2"),)))
    assert t.match(Request("GET", "/", headers=Headers([("X-A", "1"), ("x-b", "z"), ("x-a", "2")])))
    assert not t.match(Request("GET", "/", headers=Headers([("x-a", "1")])))
    three = one(route(headers=(H(name="x-a", regex=r"1,2,3"),)))
    assert three.match(Request("GET", "/", headers=Headers([("x-a", "1"), ("x-a", "2"), ("x-a", "3")])))


def test_every_header_criterion_must_hold() -> None:
    t = one(route(headers=(H(name="x-a", exact="1"), H(name="x-b", present=False))))
    assert t.match(req(x_a="1"))
    assert not t.match(req(x_a="1", x_b="2"))
    assert not t.match(req(x_b="2"))


Q = QueryParamMatch


@pytest.mark.parametrize(
    ("criterion", "path", "expected"),
    [
        (Q(name="v", exact="2"), "/?v=2", True),
        (Q(name="v", exact="2"), "/?v=3", False),
        (Q(name="v", exact="2"), "/", False),
        (Q(name="v", exact="2"), "/?v=2&v=3", True),  # first value wins
        (Q(name="v", exact="2"), "/?v=3&v=2", False),
        (Q(name="v", exact="a b/c"), "/?x&v=a+b%2Fc", True),  # decoded with unquote_plus
        (Q(name="a b", exact=""), "/?a%20b", True),  # names decoded too; no "=" means ""
        (Q(name="v", regex=r"\d+"), "/?v=42", True),
        (Q(name="v", regex=r"\d+"), "/?v=42x", False),
        (Q(name="v"), "/?v", True),  # no kind: presence
        (Q(name="v"), "/?w=1", False),
        (Q(name="v", present=True), "/?&&v=&", True),
        (Q(name="v", present=False), "/?w=1", True),
        (Q(name="v", present=False), "/?v=1", False),
    ],
)
def test_query_criteria(criterion: QueryParamMatch, path: str, expected: bool) -> None:
    assert (one(route(query_params=(criterion,))).match(req(path)) is not None) is expected


def test_all_criteria_together_and_query_parsed_for_later_routes() -> None:
    t = one(
        route("q1", query_params=(Q(name="a", exact="1"),)),
        route("q2", methods=("POST",), headers=(H(name="x", exact="y"),), query_params=(Q(name="b"),)),
        route("rest"),
    )
    assert matched(t, req("/?a=1")) == "q1"
    assert matched(t, req("/?b", method="POST", x="y")) == "q2"
    assert matched(t, req("/?b", method="GET", x="y")) == "rest"
    compiled = t.virtual_hosts[0].routes[1]
    assert compiled.matches(req("/p?b", method="POST", x="y"))  # standalone, nothing pre-split


def test_parse_query() -> None:
    assert parse_query("") == {}
    assert parse_query("a=1&a=2&b&=c&d=x=y&&e=%41+") == {"a": "1", "b": "", "": "c", "d": "x=y", "e": "A "}


# -- actions: rewrites and clusters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "path", "expected"),
    [
        ({"prefix": "/api/", "prefix_rewrite": "/"}, "/api/users?id=1&x", "/users?id=1&x"),
        ({"prefix": "/api", "prefix_rewrite": "/v2"}, "/api/users", "/v2/users"),
        ({"prefix": "/api", "case_sensitive": False, "prefix_rewrite": "/v2"}, "/API/u?q", "/v2/u?q"),
        ({"path": "/old", "prefix_rewrite": "/new"}, "/old?q=1", "/new?q=1"),  # whole path
        ({"regex": "/x/.*", "prefix_rewrite": "/y"}, "/x/z?q", "/y?q"),  # whole path, as Envoy
        (
            {"regex_rewrite": (r"^/svc/([^/]+)/(.*)$", r"/\2/instance/\1")},
            "/svc/a/b/c?q=/svc/",
            "/b/c/instance/a?q=/svc/",
        ),
        ({"regex_rewrite": ("o", "0")}, "/foo/boo?o=o", "/f00/b00?o=o"),  # every match
        ({"prefix": "/api"}, "/api/x?q", "/api/x?q"),  # no rewrite
    ],
)
def test_rewrite_path(kwargs: dict[str, Any], path: str, expected: str) -> None:
    found = one(route(**kwargs)).match(req(path))
    assert found is not None
    assert found.rewrite_path(path) == expected


def test_both_rewrites_or_bad_substitution_is_a_config_error() -> None:
    # Validation finds these first (meshcore.config.consistency); compiling refuses them too.
    with pytest.raises(ConfigError) as both:
        one(route(prefix_rewrite="/", regex_rewrite=("a", "b")))
    assert str(both.value) == (
        "virtual_hosts[0].routes[0].regex_rewrite: takes one of prefix_rewrite, regex_rewrite, got both"
    )
    with pytest.raises(ConfigError) as bad:
        one(route(), route(regex_rewrite=("(a)", r"\2")))
    assert str(bad.value) == (
        "virtual_hosts[0].routes[1].regex_rewrite[1]: '\\2' refers to group 2, which pattern '(a)' lacks (it has 1 group)"
    )


def weighted(*weights: int) -> Route:
    clusters = tuple(WeightedCluster(name=f"w{i}", weight=w) for i, w in enumerate(weights))
    return Route(match=RouteMatch(prefix="/"), weighted_clusters=clusters)


def test_pick_cluster_plain_and_non_cluster_actions() -> None:
    t = one(route(cluster="backend"))
    assert t.virtual_hosts[0].routes[0].pick_cluster() == "backend"
    direct = Route(match=RouteMatch(prefix="/"), direct_response=DirectResponse(status=204))
    assert one(direct).virtual_hosts[0].routes[0].pick_cluster() is None


def test_weighted_pick_honours_weights_and_never_picks_weight_zero() -> None:
    rng = random.Random(1234)  # noqa: S311 - seeded on purpose: a reproducible statistical test
    found = one(weighted(1, 0, 3, 0, 6), rng=rng).virtual_hosts[0].routes[0]
    n = 20_000
    counts = Counter(found.pick_cluster() for _ in range(n))
    assert set(counts) == {"w0", "w2", "w4"}
    # Binomial standard deviation is at most ~0.0035 here; 0.02 is over 5 sigma.
    for name, share in {"w0": 0.1, "w2": 0.3, "w4": 0.6}.items():
        assert abs(counts[name] / n - share) < 0.02, counts


def test_weighted_pick_edges() -> None:
    all_zero, single, leading_zero = (
        one(r).virtual_hosts[0].routes[0] for r in (weighted(0, 0), weighted(0, 5, 0), weighted(0, 1, 1))
    )
    assert all_zero.pick_cluster() is None
    assert {single.pick_cluster() for _ in range(50)} == {"w1"}
    assert {leading_zero.pick_cluster() for _ in range(200)} == {"w1", "w2"}


# -- properties -------------------------------------------------------------------------------

SEGMENT = st.text(alphabet=st.characters(exclude_characters="?#", exclude_categories=["Cs"]), max_size=12)


@given(prefix=SEGMENT, rest=SEGMENT, query=SEGMENT, upper=st.booleans())
def test_prefix_route_matches_every_path_under_its_prefix(
    prefix: str, rest: str, query: str, upper: bool
) -> None:
    t = one(route(prefix="/" + prefix, case_sensitive=False), route("other", cluster="o"))
    path = "/" + prefix + rest
    sent = path.upper() if upper and path.upper().lower() == path.lower() else path
    found = t.match(req(f"{sent}?{query}"))
    assert found is not None
    assert found.name == "vh/0"
    assert one(route(prefix="/" + prefix)).match(req(f"{path}?{query}")) is not None


@given(name=st.text(min_size=1, max_size=8), value=st.text(max_size=8), other=st.text(max_size=8))
def test_query_exact_value_survives_encoding(name: str, value: str, other: str) -> None:
    assume(name != "z")  # "z" comes first in the query: the first value wins (Envoy's rule)
    t = one(route(query_params=(Q(name=name, exact=value),)))
    assert t.match(req(f"/?z={quote_plus(other)}&{quote_plus(name)}={quote_plus(value)}"))


@given(label=st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True), upper=st.booleans())
def test_suffix_wildcard_takes_any_subdomain_but_not_the_bare_domain(label: str, upper: bool) -> None:
    host = f"{label}.example.com"
    selected = DOMAINS.select_virtual_host(host.upper() if upper else host)
    assert selected is not None
    assert selected.name in {"exact", "long-suffix", "dash-suffix"}


# -- the path index: the same first match as a scan in config order ---------------------------

PIECES = st.sampled_from(["", "a", "b", "ab", "a/", "A", "/", "x"])
PATHS = st.lists(PIECES, max_size=4).map(lambda parts: "/" + "".join(parts))
CRITERIA = st.one_of(
    st.fixed_dictionaries({"path": PATHS}),
    st.fixed_dictionaries({"prefix": PATHS}),
    st.fixed_dictionaries({"regex": st.sampled_from(["/a.*", "/b", "/.*x", "/[ab]+/?"])}),
    st.fixed_dictionaries({"path": PATHS, "case_sensitive": st.just(value=False)}),
    st.fixed_dictionaries({"prefix": PATHS, "case_sensitive": st.just(value=False)}),
)
EXTRA: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.just({"methods": ("POST",)}),
    st.just({"headers": (H(name="x-v", exact="1"),)}),
    st.just({"query_params": (Q(name="q", present=True),)}),
)
ROUTES = st.lists(st.tuples(CRITERIA, EXTRA).map(lambda pair: {**pair[0], **pair[1]}), max_size=40)
REQUEST_REST = st.tuples(
    st.sampled_from(["", "?q", "?q=1&r"]), st.sampled_from(["GET", "POST"]), st.booleans()
)


@given(criteria=ROUTES, data=st.data())
def test_indexed_match_is_the_first_route_in_config_order(criteria: list[dict[str, Any]], data: Any) -> None:
    routes = tuple(route(f"r{i}", **kwargs) for i, kwargs in enumerate(criteria))
    (vh,) = one(*routes).virtual_hosts
    # Paths near the routes' own: each path or prefix itself, then a piece more or less.
    near = st.sampled_from([c.get("path") or c.get("prefix") or "/" for c in criteria] or ["/"])
    paths = st.one_of(
        PATHS, near, st.tuples(near, PIECES).map(lambda p: p[0] + p[1]), near.map(lambda p: p[:-1])
    )
    for _ in range(12):
        path = data.draw(paths)
        query, method, header = data.draw(REQUEST_REST)
        request = req(path + query, method, **({"x_v": "1"} if header else {}))
        found, scanned = vh.match(request), vh.scan(request)
        assert (found and found.name) == (scanned and scanned.name), (path + query, method, header)


def test_index_keeps_config_order_across_exact_prefix_and_regex_routes() -> None:
    filler = tuple(route(f"f{i}", path=f"/filler/{i}") for i in range(INDEX_FROM))
    routes = (
        route("long-prefix-post", prefix="/api/v1/", methods=("POST",)),
        route("regex", regex="/api/.*"),
        route("exact", path="/api/v1/users"),
        route("short-prefix", prefix="/api"),
    )
    (vh,) = one(*filler, *routes).virtual_hosts
    assert vh._index is not None
    assert vh.match(req("/api/v1/users", "POST")).name == "long-prefix-post"  # type: ignore[union-attr]
    assert vh.match(req("/api/v1/users")).name == "regex"  # type: ignore[union-attr]
    (no_regex,) = one(*filler, *routes[:1], *routes[2:]).virtual_hosts
    assert no_regex.match(req("/api/v1/users")).name == "exact"  # type: ignore[union-attr]
    assert no_regex.match(req("/api/v2")).name == "short-prefix"  # type: ignore[union-attr]
    assert no_regex.match(req("/ap")) is None
    assert no_regex.match(req("/filler/3?x=1")).name == "f3"  # type: ignore[union-attr]


def test_ten_thousand_routes_are_looked_up_not_scanned() -> None:
    """With 10,000 path and prefix routes, a request tries only the routes its path can match."""
    routes = tuple(
        route(f"r{i}", **({"path": f"/svc/{i}"} if i % 2 else {"prefix": f"/svc/{i}/"}))
        for i in range(10_000)
    )
    (vh,) = one(*routes).virtual_hosts
    index = vh._index
    assert index is not None
    assert [vh.routes[i].name for i in index.candidates("/svc/9999")] == ["r9999"]
    assert [vh.routes[i].name for i in index.candidates("/svc/9998/x")] == ["r9998"]
    assert index.candidates("/elsewhere") == []
    assert vh.match(req("/svc/9999")).name == "r9999"  # type: ignore[union-attr]
    assert vh.match(req("/svc/9998/x?y")).name == "r9998"  # type: ignore[union-attr]
