"""Route-table checks (``check_routes``, ``assert_routes``, ``meshcore check-routes``).

The expectations are computed with the real route table and the router's own request
rewriting, so the last test holds a running proxy to what the check predicts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from meshcore import ConfigError
from meshcore.testing import (
    ProxyFactory,
    RouteCase,
    UpstreamFactory,
    assert_routes,
    check_routes,
    load_cases,
)


def route_config(name: str = "main") -> dict[str, Any]:
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": "api",
                "domains": ["api.example.com"],
                "routes": [
                    {
                        "name": "users-v2",
                        "match": {"prefix": "/v2/users"},
                        "cluster": "users",
                        "prefix_rewrite": "/users",
                        "host_rewrite": "users.internal",
                        "request_headers_to_add": {"x-api-version": "2"},
                        "request_headers_to_remove": ["x-debug"],
                    },
                    {
                        "name": "canary",
                        "match": {"prefix": "/orders", "headers": [{"name": "x-canary", "exact": "1"}]},
                        "weighted_clusters": [
                            {"name": "orders-a", "weight": 50},
                            {"name": "orders-b", "weight": 50},
                            {"name": "legacy", "weight": 0},
                        ],
                    },
                    {"name": "health", "match": {"path": "/healthz"}, "direct_response": {"status": 200}},
                    {"match": {"prefix": "/"}, "cluster": "legacy"},
                ],
            },
            {
                "name": "web",
                "domains": ["*.example.com"],
                "routes": [
                    {
                        "name": "static",
                        "match": {"prefix": "/static/"},
                        "regex_rewrite": ["^/static/(.*)$", "/assets/\\1"],
                        "cluster": "web",
                    },
                    {"name": "old", "match": {"path": "/old"}, "redirect": {"path": "/new"}},
                ],
            },
        ],
    }


def config(*route_configs: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"enabled": False},
        "route_configs": list(route_configs or [route_config()]),
        "clusters": [{"name": n} for n in ("users", "orders-a", "orders-b", "legacy", "web")],
    }


def case(authority: str, path: str, /, name: str = "", **expect: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"authority": authority, "path": path}
    if "request_headers" in expect:
        request["headers"] = expect.pop("request_headers")
    return (
        {"name": name, "request": request, "expect": expect}
        if name
        else {"request": request, "expect": expect}
    )


PASSING = [
    case(
        "api.example.com",
        "/v2/users/7?full=1",
        "users v2 rewrites",
        route="users-v2",
        virtual_host="api",
        cluster="users",
        path="/users/7?full=1",
        host="users.internal",
        headers={"x-api-version": "2", "x-debug": None, "x-user": "bob"},
        request_headers={"x-debug": "1", "x-user": "bob"},
    ),
    case(
        "api.example.com:443",
        "/orders/1",
        route="canary",
        cluster="orders-b",
        request_headers={"x-canary": "1"},
    ),
    case("api.example.com", "/orders/1", route="api/3", cluster="legacy", path="/orders/1"),
    case("api.example.com", "/healthz", route="health"),
    case("cdn.example.com", "/static/app.js", route="static", virtual_host="web", path="/assets/app.js"),
    case("cdn.example.com", "/old", route="old"),
    case("cdn.example.com", "/nothing-here", no_route=True),
    case("unknown.test", "/", no_route=True),
]


def test_passing_cases() -> None:
    assert check_routes(config(), PASSING) == []
    assert_routes(config(), PASSING)


def test_each_wrong_expectation_is_reported_with_what_the_table_does() -> None:
    cases = [
        case("api.example.com", "/v2/users", "wrong route", route="users-v1"),
        case("api.example.com", "/v2/users", cluster="users-v1", path="/v2/users", host="api.example.com"),
        case("api.example.com", "/v2/users", headers={"x-api-version": None, "x-missing": "1"}),
        case("api.example.com", "/orders", cluster="legacy", request_headers={"x-canary": "1"}),
        case("api.example.com", "/healthz", cluster="legacy", path="/healthz"),
        case("cdn.example.com", "/static/x", no_route=True),
        case("unknown.test", "/", route="anything"),
        case("cdn.example.com", "/nothing-here", cluster="web"),
        *PASSING,
    ]
    failures = check_routes(config(), cases)
    assert [f.index for f in failures] == list(range(8))
    assert [[str(m) for m in f.mismatches] for f in failures] == [
        ["route: expected 'users-v1', got 'users-v2'"],
        [
            "cluster: expected 'users-v1', got 'users'",
            "path: expected '/v2/users', got '/users'",
            "host: expected 'api.example.com', got 'users.internal'",
        ],
        ["headers.x-api-version: expected absent, got '2'", "headers.x-missing: expected '1', got absent"],
        ["cluster: expected 'legacy', got one of 'orders-a', 'orders-b' (weighted)"],
        [
            "cluster: expected 'legacy', got a direct response 200, nothing sent upstream",
            "path: expected '/healthz', got a direct response 200, nothing sent upstream",
        ],
        ["no_route: expected no route, got route 'static'"],
        ["route: expected 'anything', got no route (no virtual host serves it)"],
        ["route: expected a route, got no route in virtual host 'web'"],
    ]
    assert str(failures[0]) == "wrong route: route: expected 'users-v1', got 'users-v2'"
    assert str(failures[1]).startswith("GET api.example.com/v2/users: cluster: expected 'users-v1'")


def test_assert_routes_shows_a_readable_diff() -> None:
    cases = [
        PASSING[0],
        case("api.example.com", "/v2/users", "wrong", route="users-v1", path="/v2/users"),
    ]
    with pytest.raises(AssertionError) as failed:
        assert_routes(config(), cases)
    assert str(failed.value) == textwrap.dedent(
        """\
        1 of 2 route cases failed:
          [1] wrong:
            route: expected 'users-v1'
                   got      'users-v2'
            path:  expected '/v2/users'
                   got      '/users'"""
    )


def test_cases_loaded_from_a_file_are_route_cases(tmp_path: Path) -> None:
    file = tmp_path / "cases.yaml"
    file.write_text(yaml.safe_dump(PASSING, sort_keys=False))
    cases = load_cases(file)
    assert all(isinstance(c, RouteCase) for c in cases)
    assert check_routes(config(), cases) == []
    assert cases[0].label == "users v2 rewrites"
    assert cases[1].label == "GET api.example.com:443/orders/1"
    assert cases[0].location == f"{file}:1"
    assert cases[1].location is not None
    assert cases[1].location.startswith(f"{file}:")


def test_which_route_config_to_check() -> None:
    two = config(route_config("main"), route_config("other"))
    with pytest.raises(LookupError, match=r"2 route configs \('main', 'other'\): name the one to check"):
        check_routes(two, PASSING)
    with pytest.raises(LookupError, match="no route config 'third'"):
        check_routes(two, PASSING, route_config="third")
    assert check_routes(two, PASSING, route_config="other") == []


def test_a_config_file_and_a_cases_file(tmp_path: Path) -> None:
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(yaml.safe_dump(config()))
    cases_file = tmp_path / "cases.toml"
    cases_file.write_text(
        textwrap.dedent(
            """\
            [[cases]]
            name = "users"
            request = { authority = "api.example.com", path = "/v2/users" }
            expect = { route = "users-v2", path = "/users" }

            [[cases]]
            request = { authority = "api.example.com", path = "/v2/users" }
            expect = { route = "legacy" }
            """
        )
    )
    failures = check_routes(config_file, cases_file)
    assert [f.index for f in failures] == [1]
    assert failures[0].location == str(cases_file)  # TOML gives no line numbers


BAD_CASES = """\
- name: fine
  request: {authority: a.example.com, path: /}
  expect: {no_route: true}
- request: {authority: a.example.com, path: relative}
  expect: {rute: x}
- request: {authority: "", path: /, headers: {x-n: 1}}
  expect: {no_route: true, cluster: c}
- expect: {}
- request: [not, a, mapping]
  expect: {path: 7}
"""


def test_a_bad_cases_file_names_every_problem_with_its_line(tmp_path: Path) -> None:
    file = tmp_path / "cases.yaml"
    file.write_text(BAD_CASES)
    with pytest.raises(ConfigError) as failed:
        load_cases(file)
    assert [str(p) for p in failed.value.problems] == [
        f"{file}:4: [1].request.path: must start with \"/\", got 'relative'",
        f"{file}:5: [1].expect.rute: unknown field; did you mean 'route'?",
        f"{file}:5: [1].expect: expects nothing: give route, virtual_host, cluster, path, host, headers, or no_route: true",
        f"{file}:6: [2].request.authority: must not be empty",
        f"{file}:6: [2].request.headers.x-n: must be a string, got 1",
        f"{file}:7: [2].expect: no_route: true expects nothing else, got cluster",
        f"{file}:8: [3].request: is required",
        f"{file}:8: [3].expect: expects nothing: give route, virtual_host, cluster, path, host, headers, or no_route: true",
        f"{file}:9: [4].request: must be a mapping, got a list",
        f"{file}:10: [4].expect.path: must be a string, got 7",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{request: {}}", "must be a list of cases, or a mapping with one key, cases, holding the list"),
        ("[]", "has no cases"),
        ("- [unclosed", "invalid YAML"),
    ],
)
def test_a_cases_file_that_is_not_a_list_of_cases(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "cases.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_cases(file)


def test_a_missing_cases_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_cases(tmp_path / "missing.yaml")


# -- the command line --------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI, arguments from the test
        [sys.executable, "-m", "meshcore", "check-routes", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    file = tmp_path / "proxy.yaml"
    file.write_text(yaml.safe_dump(config()))
    return file


def test_cli_all_cases_pass(tmp_path: Path, config_file: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump(PASSING))
    done = run_cli("--config", config_file, "--tests", cases)
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr.splitlines()[-1] == f"{len(PASSING)} of {len(PASSING)} route cases passed"


def test_cli_prints_one_line_per_failing_case(tmp_path: Path, config_file: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        textwrap.dedent(
            """\
            - name: users
              request: {authority: api.example.com, path: /v2/users}
              expect: {route: users-v2, path: /users, host: users.internal}
            - name: users without the rewrite
              request: {authority: api.example.com, path: /v2/users}
              expect: {route: users-v2, path: /v2/users, host: users.internal}
            - request: {authority: cdn.example.com, path: /static/a}
              expect: {no_route: true}
            """
        )
    )
    done = run_cli("-c", config_file, "-t", cases)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{cases}:4: users without the rewrite: path: expected '/v2/users', got '/users'",
        f"{cases}:7: GET cdn.example.com/static/a: no_route: expected no route, got route 'static'",
    ]
    assert done.stderr.splitlines()[-1] == "1 of 3 route cases passed"


def test_cli_bad_cases_file(tmp_path: Path, config_file: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(BAD_CASES)
    done = run_cli("--config", config_file, "--tests", cases)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert f"{cases}:5: [1].expect.rute: unknown field; did you mean 'route'?" in lines
    assert len([line for line in lines if line.startswith(f"{cases}:")]) == 10


def test_cli_bad_config_and_ambiguous_route_config(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(yaml.safe_dump(PASSING))
    bad = tmp_path / "bad.yaml"
    bad.write_text("route_configs: [{name: main, virtual_hosts: [{name: x, domains: []}]}]\n")
    done = run_cli("--config", bad, "--tests", cases)
    assert done.returncode == 2
    assert f"{bad}:1: route_configs[0].virtual_hosts[0].domains: must not be empty" in done.stderr
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump(config(route_config("main"), route_config("other"))))
    done = run_cli("--config", two, "--tests", cases)
    assert done.returncode == 2
    assert "name the one to check" in done.stderr
    done = run_cli("--config", two, "--tests", cases, "--route-config", "other")
    assert done.returncode == 0


# -- the prediction holds in a running proxy ---------------------------------------------------


async def test_what_the_check_predicts_is_what_the_upstream_receives(
    meshcore_upstream: UpstreamFactory, meshcore_proxy: ProxyFactory
) -> None:
    upstream = await meshcore_upstream(name="users")
    proxy_config = config()
    proxy_config["clusters"] = [{"name": n, "endpoints": [upstream.endpoint]} for n in ("users", "legacy")]
    proxy_config["clusters"] += [{"name": n} for n in ("orders-a", "orders-b", "web")]
    proxy_config["listeners"] = [
        {
            "name": "ingress",
            "address": "127.0.0.1:0",
            "filter_chains": [
                {
                    "filters": [
                        {"http_connection_manager": {"route_config": "main", "http_filters": ["router"]}}
                    ]
                }
            ],
        }
    ]
    expectation = case(
        "api.example.com",
        "/v2/users/7?full=1",
        route="users-v2",
        path="/users/7?full=1",
        host="users.internal",
        headers={"x-api-version": "2", "x-debug": None, "x-user": "bob"},
        request_headers={"x-debug": "1", "x-user": "bob"},
    )
    assert_routes(proxy_config, [expectation])
    with trio.fail_after(10):
        proxy = await meshcore_proxy(proxy_config)
        response = await proxy.client(host="api.example.com").get(
            "/v2/users/7?full=1", headers={"x-debug": "1", "x-user": "bob"}
        )
    seen = response.json()
    headers = dict(seen["headers"])
    assert seen["path"] == "/users/7?full=1"
    assert headers["host"] == "users.internal"
    assert headers["x-api-version"] == "2"
    assert headers["x-user"] == "bob"
    assert "x-debug" not in headers
