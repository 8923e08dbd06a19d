"""``meshcore validate`` and ``load_snapshot``: valid examples, and precise reports on broken ones.

The examples load; broken copies of them are reported with file, line, field path and
reason, every problem in one run.

Broken configs are copies of the examples with one or a few textual edits, so that each test
says exactly what a user got wrong. Expected lines are computed from the edited text, never
from meshcore's own output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import yaml

import meshcore
from meshcore.cli import main
from meshcore.filters.load_balancers import RoundRobinConfig
from meshcore.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HTTP = "http-proxy.yaml"
TCP = "tcp-proxy.yaml"
HCM = "listeners[0].filter_chains[0].filters[0].http_connection_manager"
ROUTES = "route_configs[0].virtual_hosts[0].routes"
SUBPROCESS_TIMEOUT = 60

Edit = tuple[str, str]


@pytest.fixture(autouse=True)
def _builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the built-in plugins, whatever else is installed: messages list known names."""
    monkeypatch.setenv(AUTOLOAD_ENV, "1")


def broken_copy(tmp_path: Path, example: str, *edits: Edit, name: str | None = None) -> Path:
    """A copy of ``example`` with each ``(old, new)`` edit applied; ``old`` must occur once."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} must occur exactly once in {example}"
        text = text.replace(old, new)
    path = tmp_path / (name or example)
    path.write_text(text, encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the one line of ``path`` that contains ``needle``."""
    found = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found} of {path}"
    return found[0]


def validate(capsys: pytest.CaptureFixture[str], *files: Path | str) -> tuple[int, list[str]]:
    """Run ``meshcore validate FILES`` in-process: the exit status and the lines printed."""
    status = main(["validate", *map(str, files)])
    captured = capsys.readouterr()
    assert captured.err == ""
    return status, captured.out.splitlines()


def run_meshcore(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m meshcore ARGS`` as a real process, built-in plugins only."""
    env = {**os.environ, AUTOLOAD_ENV: "1"}
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "meshcore", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


# -- the examples -------------------------------------------------------------------------------


def test_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = validate(capsys, EXAMPLES / HTTP, EXAMPLES / TCP)
    assert status == 0
    assert [line.split(": ok (version ")[0] for line in out] == [str(EXAMPLES / HTTP), str(EXAMPLES / TCP)]


def test_http_example_structures_into_a_snapshot() -> None:
    snapshot = meshcore.load_snapshot(EXAMPLES / HTTP, meshcore.build_registry(autoload=False))
    (listener,) = snapshot.listeners
    assert listener.address == meshcore.Address("127.0.0.1", 10000)
    (hcm,) = listener.filter_chains[0].filters
    assert hcm.name == "http_connection_manager"
    assert hcm.config.route_config == "main"
    assert hcm.config.request_headers_timeout == 10.0
    assert [f.name for f in hcm.config.http_filters] == ["router"]
    backend = snapshot.cluster("backend")
    assert backend is not None
    assert backend.connect_timeout == pytest.approx(0.25)
    # round_robin takes a config now (slow_start): its defaults when written bare.
    assert backend.lb_policy == meshcore.LbPolicyRef(name="round_robin", config=RoundRobinConfig())
    assert [str(e.address) for e in backend.endpoints] == ["127.0.0.1:8080"]
    routes = snapshot.route_configs[0].virtual_hosts[0].routes
    assert [r.name for r in routes] == ["health", "api", "default"]
    assert routes[1].timeout == 5.0
    assert dict(routes[1].request_headers_to_add) == {"x-meshcore-route": "api"}
    assert len(snapshot.version) == 12


def test_tcp_example_structures_into_a_snapshot() -> None:
    snapshot = meshcore.load_snapshot(EXAMPLES / TCP, meshcore.build_registry(autoload=False))
    (proxy,) = snapshot.listeners[0].filter_chains[0].filters
    assert proxy.name == "tcp_proxy"
    assert proxy.config.cluster == "db"
    assert proxy.config.idle_timeout == 3600.0
    db = snapshot.cluster("db")
    assert db is not None
    assert db.lb_policy.name == "least_request"
    assert db.lb_policy.config.choice_count == 2
    assert [(str(e.address), e.weight) for e in db.endpoints] == [
        ("127.0.0.1:5432", 1),
        ("127.0.0.1:5433", 2),
    ]


# -- one mistake at a time ---------------------------------------------------------------------

# (example, edits, text on the offending line, field path, reason)
MISTAKES: dict[str, tuple[str, Sequence[Edit], str, str, str]] = {
    "typo'd key": (
        HTTP,
        [("    connect_timeout: 250ms", "    conect_timeout: 250ms")],
        "conect_timeout",
        "clusters[0].conect_timeout",
        "unknown field; did you mean 'connect_timeout'?",
    ),
    "unknown key, no close match": (
        HTTP,
        [("  address: 127.0.0.1:9901", "  address: 127.0.0.1:9901\n  colour: blue")],
        "colour",
        "admin.colour",
        "unknown field; known fields: address, enabled",
    ),
    "negative duration": (
        HTTP,
        [("timeout: 5s", "timeout: -5s")],
        "timeout: -5s",
        f"{ROUTES}[1].timeout",
        "must be >= 0, got '-5s'",
    ),
    "unknown HTTP filter lists the known ones": (
        HTTP,
        [("                - router", "                - waf\n                - router")],
        "waf",
        f"{HCM}.http_filters[0]",
        "unknown HTTP filter 'waf' (known: authz, ext_authz, fault, jwt_authn, local_ratelimit, mesh_metrics, router, tracing)",
    ),
    "misspelled network filter": (
        HTTP,
        [("- http_connection_manager:", "- http_conection_manager:")],
        "http_conection_manager",
        "listeners[0].filter_chains[0].filters[0]",
        (
            "unknown network filter 'http_conection_manager'; did you mean 'http_connection_manager'? "
            "(known: authz, connection_limit, http_connection_manager, tcp_mesh_metrics, tcp_proxy)"
        ),
    ),
    "unknown lb policy": (
        HTTP,
        [("lb_policy: round_robin", "lb_policy: quickest")],
        "lb_policy",
        "clusters[0].lb_policy",
        "unknown load-balancing policy 'quickest' (known: least_request, maglev, peak_ewma, random, ring_hash, round_robin)",
    ),
    "misspelled lb policy": (
        TCP,
        [("{least_request: {choice_count: 2}}", "{least_requests: {choice_count: 2}}")],
        "lb_policy",
        "clusters[0].lb_policy",
        (
            "unknown load-balancing policy 'least_requests'; did you mean 'least_request'? "
            "(known: least_request, maglev, peak_ewma, random, ring_hash, round_robin)"
        ),
    ),
    "out of range deep inside a filter's config": (
        HTTP,
        [
            (
                "request_headers_timeout: 10s",
                "request_headers_timeout: 10s\n              max_request_headers: 0",
            )
        ],
        "max_request_headers",
        f"{HCM}.max_request_headers",
        "must be >= 1, got 0",
    ),
    "wrong type deep inside a filter's config": (
        HTTP,
        [
            (
                "request_headers_timeout: 10s",
                "request_headers_timeout: 10s\n              max_request_headers: lots",
            )
        ],
        "max_request_headers",
        f"{HCM}.max_request_headers",
        "must be an integer, got 'lots'",
    ),
    "bad duration deep inside a filter's config": (
        HTTP,
        [("request_headers_timeout: 10s", "request_headers_timeout: 10 seconds")],
        "request_headers_timeout",
        f"{HCM}.request_headers_timeout",
        'must be a duration such as "250ms" or "2s", got \'10 seconds\'',
    ),
    "wrong type deep inside an lb policy's config": (
        TCP,
        [("choice_count: 2", "choice_count: two")],
        "choice_count",
        "clusters[0].lb_policy.least_request.choice_count",
        "must be an integer, got 'two'",
    ),
    "bad size": (
        HTTP,
        [
            (
                "request_headers_timeout: 10s",
                "request_headers_timeout: 10s\n              max_request_headers_size: 60kb",
            )
        ],
        "max_request_headers_size",
        f"{HCM}.max_request_headers_size",
        'must be a size such as "64KiB" or "10MiB", got \'60kb\'',
    ),
    "missing required field": (
        HTTP,
        [("    address: 127.0.0.1:10000\n", "")],
        "- name: ingress",
        "listeners[0].address",
        "is required",
    ),
    "missing required field of a filter": (
        TCP,
        [("{cluster: db, idle_timeout: 1h}", "{idle_timeout: 1h}")],
        "tcp_proxy",
        "listeners[0].filter_chains[0].filters[0].tcp_proxy.cluster",
        "is required",
    ),
    "unknown cluster in a route": (
        HTTP,
        [("cluster: backend\n            prefix_rewrite", "cluster: backnd\n            prefix_rewrite")],
        "backnd",
        f"{ROUTES}[1].cluster",
        "unknown cluster 'backnd' (defined: backend)",
    ),
    "unknown cluster in a filter": (
        TCP,
        [("{cluster: db,", "{cluster: pg,")],
        "cluster: pg",
        "listeners[0].filter_chains[0].filters[0].tcp_proxy.cluster",
        "unknown cluster 'pg' (defined: db)",
    ),
    "unknown route table": (
        HTTP,
        [("route_config: main", "route_config: mian")],
        "mian",
        f"{HCM}.route_config",
        "unknown route config 'mian' (defined: main)",
    ),
    "route with two match kinds": (
        HTTP,
        [("match: {path: /health}", "match: {path: /health, prefix: /}")],
        "path: /health, prefix: /",
        f"{ROUTES}[0].match",
        "needs exactly one of path, prefix, regex; got path, prefix",
    ),
    "rewrite pair with one item": (
        HTTP,
        [("prefix_rewrite: /", "regex_rewrite: [^/api/]")],
        "regex_rewrite",
        f"{ROUTES}[1].regex_rewrite",
        "must be a list of 2 items, got 1",
    ),
    "rewrite pair with a wrong item": (
        HTTP,
        [("prefix_rewrite: /", "regex_rewrite: [^/api/, 7]")],
        "regex_rewrite",
        f"{ROUTES}[1].regex_rewrite[1]",
        "must be a string, got 7",
    ),
    "route with two actions": (
        HTTP,
        [("name: default\n", "name: default\n            redirect: {host: example.com}\n")],
        "- name: default",
        f"{ROUTES}[2]",
        "needs exactly one action of cluster, weighted_clusters, direct_response, redirect; got cluster, redirect",
    ),
    "terminal HTTP filter not last": (
        HTTP,
        [
            (
                "                - router",
                "                - router: {}\n                - router",
            )
        ],
        "router: {}",
        f"{HCM}.http_filters[0]",
        "'router' ends a chain and must be the last filter",
    ),
    "terminal network filter not last": (
        TCP,
        [("idle_timeout: 1h}", "idle_timeout: 1h}\n          - tcp_proxy: {cluster: db}")],
        "idle_timeout: 1h",
        "listeners[0].filter_chains[0].filters[0]",
        "'tcp_proxy' ends a chain and must be the last filter",
    ),
    "bad endpoint address": (
        TCP,
        [("      - 127.0.0.1:5432", "      - localhost")],
        "localhost",
        "clusters[0].endpoints[0].address",
        "must be an address \"host:port\", got 'localhost'",
    ),
    "duplicate cluster": (
        TCP,
        [("clusters:\n", "clusters:\n  - name: db\n")],
        "clusters:",
        "clusters",
        "[1] repeats 'db' already used at [0]",
    ),
    "YAML syntax error": (
        HTTP,
        [("          - name: api\n", "          - name: api\n         oops: misindented\n")],
        "oops",
        "",
        "invalid YAML: expected <block end>, but found '<block mapping start>'",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_one_mistake_is_reported_precisely(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example, edits, needle, field, reason = MISTAKES[case]
    path = broken_copy(tmp_path, example, *edits)
    where = f"{path}:{line_of(path, needle)}"
    expected = f"{where}: {field}: {reason}" if field else f"{where}: {reason}"
    status, out = validate(capsys, path)
    assert (status, out) == (1, [expected])


# -- every problem in one run ------------------------------------------------------------------

# (edit, text on the offending line, field path, reason), in file order
MANY_MISTAKES: list[tuple[Edit, str, str, str]] = [
    (
        ("  address: 127.0.0.1:9901", "  adress: 127.0.0.1:9901"),
        "adress",
        "admin.adress",
        "unknown field; did you mean 'address'?",
    ),
    (
        ("    address: 127.0.0.1:10000", "    address: 127.0.0.1:10000\n    drain_timeout: -1s"),
        "drain_timeout",
        "listeners[0].drain_timeout",
        "must be >= 0, got '-1s'",
    ),
    (
        (
            "request_headers_timeout: 10s",
            "request_headers_timeout: 10s\n              max_request_headers: 0",
        ),
        "max_request_headers",
        f"{HCM}.max_request_headers",
        "must be >= 1, got 0",
    ),
    (
        ("                - router", "                - waf\n                - router"),
        "waf",
        f"{HCM}.http_filters[0]",
        "unknown HTTP filter 'waf' (known: authz, ext_authz, fault, jwt_authn, local_ratelimit, mesh_metrics, router, tracing)",
    ),
    (
        ("match: {path: /health}", "match: {path: /health, prefix: /}"),
        "path: /health, prefix: /",
        f"{ROUTES}[0].match",
        "needs exactly one of path, prefix, regex; got path, prefix",
    ),
    (
        ("cluster: backend\n            prefix_rewrite", "cluster: backnd\n            prefix_rewrite"),
        "backnd",
        f"{ROUTES}[1].cluster",
        "unknown cluster 'backnd' (defined: backend)",
    ),
    (
        ("lb_policy: round_robin", "lb_policy: quickest"),
        "quickest",
        "clusters[0].lb_policy",
        "unknown load-balancing policy 'quickest' (known: least_request, maglev, peak_ewma, random, ring_hash, round_robin)",
    ),
    (
        ("      - 127.0.0.1:8080", "      - localhost"),
        "localhost",
        "clusters[0].endpoints[0].address",
        "must be an address \"host:port\", got 'localhost'",
    ),
]


def test_every_problem_is_reported_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = broken_copy(tmp_path, HTTP, *(edit for edit, *_ in MANY_MISTAKES))
    expected = [
        f"{path}:{line_of(path, needle)}: {field}: {reason}" for _, needle, field, reason in MANY_MISTAKES
    ]
    status, out = validate(capsys, path)
    assert status == 1
    assert out == expected
    assert len(out) == 8

    with pytest.raises(meshcore.ConfigError) as info:
        meshcore.load_snapshot(path, meshcore.build_registry(autoload=False))
    assert [str(problem) for problem in info.value.problems] == expected
    assert str(info.value) == "\n".join(expected)


def test_files_are_reported_one_after_another(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_http = broken_copy(tmp_path, HTTP, ("lb_policy: round_robin", "lb_policy: quickest"))
    bad_tcp = broken_copy(tmp_path, TCP, ("idle_timeout: 1h", "idle_timeout: -1h"))
    status, out = validate(capsys, bad_http, EXAMPLES / TCP, bad_tcp)
    assert status == 1
    assert len(out) == 3
    assert out[0].startswith(f"{bad_http}:{line_of(bad_http, 'quickest')}: clusters[0].lb_policy: unknown")
    assert out[1].startswith(f"{EXAMPLES / TCP}: ok (version ")
    assert out[2] == (
        f"{bad_tcp}:{line_of(bad_tcp, '-1h')}: "
        "listeners[0].filter_chains[0].filters[0].tcp_proxy.idle_timeout: must be >= 0, got '-1h'"
    )


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert validate(capsys, missing) == (1, [f"{missing}: cannot read: No such file or directory"])


def test_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- listeners\n- clusters\n", encoding="utf-8")
    assert validate(capsys, path) == (1, [f"{path}:1: must be a mapping, got a list"])


# -- a third-party filter's config (the example plugin, registered in-process) ------------------


@pytest.fixture
def hello_registry(hello_module: types.ModuleType) -> meshcore.Registry:
    registry = meshcore.build_registry(autoload=False, plugins=[("hello", hello_module)])
    assert registry.problems == []
    return registry


def problems_of(path: Path, registry: meshcore.Registry) -> list[str]:
    with pytest.raises(meshcore.ConfigError) as info:
        meshcore.load_snapshot(path, registry)
    return [str(problem) for problem in info.value.problems]


def test_plugin_filter_is_accepted(
    tmp_path: Path, hello_module: types.ModuleType, hello_registry: meshcore.Registry
) -> None:
    path = broken_copy(
        tmp_path,
        HTTP,
        ("                - router", "                - hello: {greeting: hi}\n                - router"),
    )
    snapshot = meshcore.load_snapshot(path, hello_registry)
    hcm = snapshot.listeners[0].filter_chains[0].filters[0]
    hello, router = hcm.config.http_filters
    assert hello.name == "hello"
    assert hello.config == hello_module.HelloConfig(greeting="hi")
    assert router.name == "router"


def test_plugin_config_problems_deep_inside(tmp_path: Path, hello_registry: meshcore.Registry) -> None:
    path = broken_copy(
        tmp_path,
        HTTP,
        (
            "                - router",
            "                - hello: {greting: hi, header: 7, repeat: 0}\n                - router",
        ),
    )
    where = f"{path}:{line_of(path, 'greting')}: {HCM}.http_filters[0].hello"
    assert problems_of(path, hello_registry) == [
        f"{where}.greting: unknown field; did you mean 'greeting'?",
        f"{where}.header: must be a string, got 7",
        f"{where}.repeat: must be >= 1, got 0",
    ]


def test_plugin_filter_names_are_suggested_and_listed(
    tmp_path: Path, hello_registry: meshcore.Registry
) -> None:
    path = broken_copy(
        tmp_path, HTTP, ("                - router", "                - helo\n                - router")
    )
    assert problems_of(path, hello_registry) == [
        (
            f"{path}:{line_of(path, 'helo')}: {HCM}.http_filters[0]: "
            "unknown HTTP filter 'helo'; did you mean 'hello'? (known: authz, ext_authz, fault, hello, jwt_authn, local_ratelimit, mesh_metrics, router, tracing)"
        )
    ]


def test_chain_must_end_with_a_terminal_filter(tmp_path: Path, hello_registry: meshcore.Registry) -> None:
    path = broken_copy(
        tmp_path, HTTP, ("                - router", "                - router: {}\n                - hello")
    )
    assert problems_of(path, hello_registry) == [
        f"{path}:{line_of(path, 'router: {}')}: {HCM}.http_filters[0]: 'router' ends a chain and must be the last filter",
        f"{path}:{line_of(path, '- hello')}: {HCM}.http_filters[1]: the last filter must end the chain, 'hello' does not",
    ]


def test_per_route_filter_config(tmp_path: Path, hello_registry: meshcore.Registry) -> None:
    def with_overrides(overrides: str) -> Path:
        return broken_copy(
            tmp_path,
            HTTP,
            ("                - router", "                - hello\n                - router"),
            ("match: {prefix: /}", f"match: {{prefix: /}}\n            filters: {overrides}"),
        )

    route = f"{ROUTES}[2].filters"
    snapshot = meshcore.load_snapshot(with_overrides("{hello: disabled}"), hello_registry)
    assert dict(snapshot.route_configs[0].virtual_hosts[0].routes[2].filters.by_filter) == {
        "hello": "disabled"
    }

    path = with_overrides("{hello: {repeat: 0}}")
    assert problems_of(path, hello_registry) == [
        f"{path}:{line_of(path, 'filters: {')}: {route}.hello.repeat: must be >= 1, got 0"
    ]
    path = with_overrides("{helo: disabled}")
    assert problems_of(path, hello_registry) == [
        f"{path}:{line_of(path, 'filters: {')}: {route}.helo: unknown HTTP filter 'helo' (known: authz, ext_authz, fault, hello, jwt_authn, local_ratelimit, mesh_metrics, router, tracing)"
    ]


@attrs.frozen(kw_only=True)
class ModesConfig:
    """A plugin config that uses attrs' own validators rather than meshcore's."""

    mode: str = attrs.field(default="fast", validator=attrs.validators.in_(["fast", "safe"]))


@meshcore.hookimpl
def _modes_http_filters() -> list[meshcore.HttpFilterType]:
    return [meshcore.HttpFilterType(name="modes", factory=ModesConfig, config=ModesConfig)]


def test_attrs_validators_give_plain_reasons(tmp_path: Path) -> None:
    plugin = types.ModuleType("modes_plugin")
    plugin.meshcore_http_filters = _modes_http_filters  # type: ignore[attr-defined]  # a module built at run time
    registry = meshcore.build_registry(autoload=False, plugins=[("modes", plugin)])
    assert registry.problems == []
    path = broken_copy(
        tmp_path,
        HTTP,
        ("                - router", "                - modes: {mode: slow}\n                - router"),
    )
    assert problems_of(path, registry) == [
        f"{path}:{line_of(path, 'slow')}: {HCM}.http_filters[0].modes.mode: 'mode' must be in ['fast', 'safe'] (got 'slow')"
    ]


# -- JSON and TOML -----------------------------------------------------------------------------

TCP_TOML = """\
[[listeners]]
name = "postgres"
address = "127.0.0.1:15432"

[[listeners.filter_chains]]
filters = [{tcp_proxy = {cluster = "db", idle_timeout = "1h"}}]

[[clusters]]
name = "db"
lb_policy = {least_request = {choice_count = 2}}
connect_timeout = "1s"
endpoints = ["127.0.0.1:5432", {address = "127.0.0.1:5433", weight = 2}]
"""


def same_config(a: meshcore.Snapshot, b: meshcore.Snapshot) -> bool:
    return attrs.evolve(a, version="") == attrs.evolve(b, version="")


def test_json_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load((EXAMPLES / HTTP).read_text(encoding="utf-8"))
    path = tmp_path / "http-proxy.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    registry = meshcore.build_registry(autoload=False)
    assert same_config(
        meshcore.load_snapshot(path, registry), meshcore.load_snapshot(EXAMPLES / HTTP, registry)
    )
    assert validate(capsys, path)[0] == 0

    data["clusters"][0]["connect_timeout"] = "-1s"
    data["clusters"][0]["endpoint"] = data["clusters"][0].pop("endpoints")
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    # JSON gives no line numbers once parsed: file, field path and reason.
    assert validate(capsys, path) == (
        1,
        [
            f"{path}: clusters[0].endpoint: unknown field; did you mean 'endpoints'?",
            f"{path}: clusters[0].connect_timeout: must be >= 0, got '-1s'",
        ],
    )


def test_json_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "clusters": [\n    {"name": "a",}\n  ]\n}\n', encoding="utf-8")
    assert validate(capsys, path) == (
        1,
        [f"{path}:3: invalid JSON: Expecting property name enclosed in double quotes"],
    )


def test_toml_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tcp-proxy.toml"
    path.write_text(TCP_TOML, encoding="utf-8")
    registry = meshcore.build_registry(autoload=False)
    assert same_config(
        meshcore.load_snapshot(path, registry), meshcore.load_snapshot(EXAMPLES / TCP, registry)
    )
    assert validate(capsys, path)[0] == 0

    path.write_text(TCP_TOML.replace("choice_count = 2", "choice_count = 1"), encoding="utf-8")
    assert validate(capsys, path) == (
        1,
        [f"{path}: clusters[0].lb_policy.least_request.choice_count: must be >= 2, got 1"],
    )


def test_toml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(TCP_TOML.replace('name = "db"', "name = db"), encoding="utf-8")
    line = TCP_TOML.splitlines().index('name = "db"') + 1
    status, out = validate(capsys, path)
    assert status == 1
    assert out == [f"{path}: invalid TOML: Invalid value (at line {line}, column 8)"]


# -- directories -------------------------------------------------------------------------------

# The smallest config a file may hold: one listener (an empty one is an error, see below).
MINIMAL = {
    "listeners": [
        {
            "name": "l",
            "address": "127.0.0.1:0",
            "filter_chains": [{"filters": [{"tcp_proxy": {"cluster": "c"}}]}],
        }
    ],
    "clusters": [{"name": "c"}],
}


def test_directory_arguments_expand_to_the_config_files_below(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(EXAMPLES / HTTP, tmp_path / "a.yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text((EXAMPLES / TCP).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "sub" / "c.toml").write_text(TCP_TOML, encoding="utf-8")
    (tmp_path / "sub" / "d.json").write_text(json.dumps(MINIMAL), encoding="utf-8")
    # Not config: hidden, a Python project (plugin package) below, other suffixes.
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text("bad: [", encoding="utf-8")
    (tmp_path / ".y.yaml").write_text("bad: [", encoding="utf-8")
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    (tmp_path / "plugin" / "needs-plugin.yaml").write_text("bad: [", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("bad: [", encoding="utf-8")
    status = main(["validate", str(tmp_path)])
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert (
        captured.err
        == f"{tmp_path / 'plugin'}: skipped, a Python project (name its config files to validate them)\n"
    )
    assert status == 0
    checked = [line.split(": ok (version ")[0] for line in out]
    assert checked == [str(tmp_path / name) for name in ("a.yaml", "sub/b.yml", "sub/c.toml", "sub/d.json")]


def test_directory_without_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
    status = main(["validate", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert captured.err == f"{tmp_path}: no config files (*.yaml, *.yml, *.json, *.toml) found\n"


def test_files_of_mesh_resources_are_checked_as_mesh_resources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of Istio-style documents is validated as the control plane loads it, not as a proxy config."""
    (tmp_path / "routes.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
        "spec:\n  hosts: [backend]\n  http: [{route: [{destination: {host: backend}, wieght: 100}]}]\n",
        encoding="utf-8",
    )
    status = main(["validate", str(tmp_path)])
    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        (
            f"{tmp_path / 'routes.yaml'}:6: VirtualService default/r: spec.http[0].route[0].wieght: "
            "unknown field; did you mean 'weight'?"
        )
    ]


def test_the_examples_directory_without_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    """``meshcore validate examples`` with only meshcore installed passes.

    examples/plugin-hello is a Python project (it has a pyproject.toml): its config needs
    the plugin installed, so the folder is skipped with a note and validated by name.
    """
    status = main(["validate", str(EXAMPLES)])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    proxies = [line for line in out if ": ok (version " in line]
    assert len(proxies) == 3
    assert proxies[0].startswith(f"{EXAMPLES / HTTP}: ok (version ")
    assert proxies[1].startswith(f"{EXAMPLES / TCP}: ok (version ")
    assert proxies[2].startswith(f"{EXAMPLES / 'traffic-management.yaml'}: ok (version ")
    # examples/first-mesh holds mesh resources: checked as the control plane loads them.
    mesh = sorted((EXAMPLES / "first-mesh").rglob("*.yaml"))
    assert [line.split(": ok (mesh resources: ")[0] for line in out if line not in proxies] == [
        str(f) for f in mesh
    ]


def test_the_examples_glob_without_plugins(capsys: pytest.CaptureFixture[str]) -> None:
    """``meshcore validate examples/*``, the README's form, passes with meshcore alone."""
    args = sorted(str(p) for p in EXAMPLES.iterdir())
    status = main(["validate", *args])
    captured = capsys.readouterr()
    assert status == 0
    assert captured.err == (
        f"{EXAMPLES / 'plugin-hello'}: skipped, a Python project (name its config files to validate them)\n"
    )
    assert captured.out.count(": ok (version ") == 3
    assert captured.out.count(": ok (mesh resources: ") == len(
        list((EXAMPLES / "first-mesh").rglob("*.yaml"))
    )


def test_a_plugin_config_named_explicitly_needs_the_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    hello = EXAMPLES / "plugin-hello" / "hello.yaml"
    status, out = validate(capsys, hello)
    assert status == 1
    assert out == [
        f"{hello}:{line_of(hello, '- hello:')}: {HCM}.http_filters[0]: unknown HTTP filter 'hello' (known: authz, ext_authz, fault, jwt_authn, local_ratelimit, mesh_metrics, router, tracing)"
    ]


# -- the real command ---------------------------------------------------------------------------


def test_command_exit_status(tmp_path: Path) -> None:
    good = run_meshcore("validate", str(EXAMPLES / HTTP), str(EXAMPLES / TCP))
    assert (good.returncode, good.stderr) == (0, "")
    assert good.stdout.count(": ok (version ") == 2

    broken = broken_copy(tmp_path, HTTP, *(edit for edit, *_ in MANY_MISTAKES))
    bad = run_meshcore("validate", "--quiet", str(EXAMPLES / TCP), str(broken))
    assert (bad.returncode, bad.stderr) == (1, "")
    assert bad.stdout.splitlines() == [
        f"{broken}:{line_of(broken, needle)}: {field}: {reason}" for _, needle, field, reason in MANY_MISTAKES
    ]


def test_console_script() -> None:
    """The ``meshcore`` script that ``pip install`` puts next to the interpreter."""
    script = shutil.which("meshcore", path=str(Path(sys.executable).parent))
    assert script is not None, f"no meshcore script next to {sys.executable}: is meshcore installed?"
    env = {**os.environ, AUTOLOAD_ENV: "1"}
    for args in (["--help"], ["plugins"], ["validate", str(EXAMPLES / HTTP), str(EXAMPLES / TCP)]):
        done = subprocess.run(  # noqa: S603 - the installed script, our arguments
            [script, *args], capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT, check=False
        )
        assert (done.returncode, done.stderr) == (0, ""), args
    help_text = subprocess.run(  # noqa: S603 - as above
        [script, "--help"], capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT, check=True
    ).stdout
    assert "validate" in help_text
    assert "plugins" in help_text
