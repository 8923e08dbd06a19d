"""``meshcore validate`` finds everything that would make an apply fail, with file, line and path.

Route tables that would not compile, files that are missing or do not parse (TLS
certificates, keys and CA bundles, loaded as the runtime loads them, and files a plugin
declares), addresses that clash, per-route overrides of filters no chain has, an empty
config, a plugin factory that refuses its config. Each case is a small edit of one base
config, and its expected line is computed from the edited text.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

import meshcore
from meshcore.cli import main
from meshcore.config import UpstreamTls
from meshcore.registry import AUTOLOAD_ENV
from meshcore.runtime.proxy import Proxy
from meshcore.runtime.validation import validate_snapshot

BASE = """\
admin: {address: 127.0.0.1:9901}

listeners:
  - name: ingress
    address: 127.0.0.1:10000
    filter_chains:
      - filters:
          - http_connection_manager:
              route_config: main
              http_filters:
                - local_ratelimit: {max_tokens: 10, fill_interval: 1s}
                - router

route_configs:
  - name: main
    virtual_hosts:
      - name: api
        domains: [api.example.com]
        routes:
          - name: users
            match: {prefix: /users/}
            cluster: backend
            prefix_rewrite: /v2/users/
      - name: web
        domains: [www.example.com, "*"]
        routes:
          - name: default
            match: {prefix: /}
            cluster: backend

clusters:
  - name: backend
    endpoints: [127.0.0.1:8080]
"""
CHAIN = "listeners[0].filter_chains[0]"
TLS = f"{CHAIN}.tls"
HCM = f"{CHAIN}.filters[0].http_connection_manager"
ROUTES = "route_configs[0].virtual_hosts"

Edit = tuple[str, str]


@pytest.fixture(autouse=True)
def _builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_ENV, "1")


@attrs.frozen
class Pki:
    cert: Path
    key: Path
    other_key: Path
    ca: Path
    garbage: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("proxy.test")
    files = Pki(*(folder / f"{name}.pem" for name in ("cert", "key", "other_key", "ca", "garbage")))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    trustme.CA().issue_cert("other.test").private_key_pem.write_to_path(str(files.other_key))
    ca.cert_pem.write_to_path(str(files.ca))
    files.garbage.write_text("not a certificate\n", encoding="utf-8")
    return files


def config_file(tmp_path: Path, *edits: Edit, text: str = BASE) -> Path:
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} must occur exactly once"
        text = text.replace(old, new)
    path = tmp_path / "proxy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    found = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


def validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[str]]:
    status = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert captured.err == ""
    return status, captured.out.splitlines()


def override(filters: str) -> Edit:
    """Per-route filter settings on the last route (web's default)."""
    return ("cluster: backend\n\nclusters:", f"cluster: backend\n            filters: {filters}\n\nclusters:")


def another(name: str, address: str) -> str:
    """A second listener, on one line."""
    return f"  - {{name: {name}, address: '{address}', filter_chains: [{{filters: [{{tcp_proxy: {{cluster: backend}}}}]}}]}}\n"


def with_tls(tls: str) -> Edit:
    return ("      - filters:\n", f"      - tls: {tls}\n        filters:\n")


def test_the_base_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = validate(capsys, config_file(tmp_path))
    assert status == 0
    assert out == [f"{tmp_path / 'proxy.yaml'}: ok (version {out[0].rsplit(' ', 1)[1]}"]


# -- one case at a time: (edits, text on the offending line, field path, exact reason) -----------------

Case = tuple[list[Edit], str, str, str]


def cases(pki: Pki) -> dict[str, Case]:
    tls = f"{{certificate_file: {pki.cert}, private_key_file: {pki.key}"
    return {
        "a domain served by two virtual hosts": (
            [('domains: [www.example.com, "*"]', 'domains: [www.example.com, API.example.com, "*"]')],
            "API.example.com",
            f"{ROUTES}[1].domains[1]",
            "domain 'API.example.com' is already served by virtual host 'api' (virtual_hosts[0].domains[0])",
        ),
        "both rewrites on a route": (
            [("prefix_rewrite: /v2/users/", "prefix_rewrite: /v2/users/\n            regex_rewrite: [a, b]")],
            "regex_rewrite",
            f"{ROUTES}[0].routes[0].regex_rewrite",
            "takes one of prefix_rewrite, regex_rewrite, got both",
        ),
        "a substitution naming a group the pattern lacks": (
            [("prefix_rewrite: /v2/users/", "regex_rewrite: ['^/users/(.*)$', '/v2/\\2']")],
            "regex_rewrite",
            f"{ROUTES}[0].routes[0].regex_rewrite[1]",
            "'/v2/\\2' refers to group 2, which pattern '^/users/(.*)$' lacks (it has 1 group)",
        ),
        "a substitution naming a group by a name the pattern lacks": (
            [("prefix_rewrite: /v2/users/", "regex_rewrite: ['^/users/(?P<id>.*)$', '/v2/\\g<user>']")],
            "regex_rewrite",
            f"{ROUTES}[0].routes[0].regex_rewrite[1]",
            "'/v2/\\g<user>' refers to group 'user', which pattern '^/users/(?P<id>.*)$' does not name (its names: 'id')",
        ),
        "a per-route override of a filter not in the chain": (
            [override("{fault: {abort: {http_status: 503}}}")],
            "filters: {fault",
            f"{ROUTES}[1].routes[0].filters.fault",
            (
                "'fault' is not in the HTTP filters of the connection manager using route config 'main' "
                f"({HCM}.http_filters: local_ratelimit, router)"
            ),
        ),
        "a per-route disabling of a filter not in the chain": (
            [override("{fault: disabled}")],
            "filters: {fault",
            f"{ROUTES}[1].routes[0].filters.fault",
            (
                "'fault' is not in the HTTP filters of the connection manager using route config 'main' "
                f"({HCM}.http_filters: local_ratelimit, router)"
            ),
        ),
        "two listeners on one address": (
            [("\nroute_configs:", f"{another('again', '127.0.0.1:10000')}\nroute_configs:")],
            "name: again",
            "listeners[1].address",
            "127.0.0.1:10000 is already the address of listener 'ingress' (listeners[0].address)",
        ),
        "a wildcard listener over another": (
            [("\nroute_configs:", f"{another('any', '0.0.0.0:10000')}\nroute_configs:")],
            "name: any",
            "listeners[1].address",
            (
                "0.0.0.0:10000 overlaps listener 'ingress' on 127.0.0.1:10000 (listeners[0].address): "
                "0.0.0.0 takes every IPv4 address on port 10000"
            ),
        ),
        "the admin server on a listener's address": (
            [("{address: 127.0.0.1:9901}", "{address: 127.0.0.1:10000}")],
            "admin:",
            "admin.address",
            (
                "127.0.0.1:10000 is already the address of listener 'ingress' (listeners[0].address); "
                "the admin server needs its own"
            ),
        ),
        "the admin server on a wildcard over a listener": (
            [("{address: 127.0.0.1:9901}", "{address: '[::]:10000'}")],
            "admin:",
            "admin.address",
            (
                "[::]:10000 overlaps listener 'ingress' on 127.0.0.1:10000 (listeners[0].address): "
                ":: takes every address on port 10000; the admin server needs its own"
            ),
        ),
        "a missing certificate": (
            [
                with_tls(
                    f"{{certificate_file: {pki.cert.parent / 'missing.pem'}, private_key_file: {pki.key}}}"
                )
            ],
            "tls:",
            f"{TLS}.certificate_file",
            f"cannot read '{pki.cert.parent / 'missing.pem'}': No such file or directory",
        ),
        "a certificate that is not one": (
            [with_tls(f"{{certificate_file: {pki.garbage}, private_key_file: {pki.key}}}")],
            "tls:",
            f"{TLS}.certificate_file",
            f"'{pki.garbage}' holds no PEM certificate: no certificate or crl found",
        ),
        "a key that is not one": (
            [with_tls(f"{{certificate_file: {pki.cert}, private_key_file: {pki.cert}}}")],
            "tls:",
            f"{TLS}.private_key_file",
            f"'{pki.cert}' holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)",
        ),
        "a key that is not the certificate's": (
            [with_tls(f"{{certificate_file: {pki.cert}, private_key_file: {pki.other_key}}}")],
            "tls:",
            f"{TLS}.private_key_file",
            "is not the key of certificate_file (key values mismatch)",
        ),
        "a client CA bundle that is not one": (
            [with_tls(f"{tls}, client_ca_file: {pki.garbage}}}")],
            "tls:",
            f"{TLS}.client_ca_file",
            f"'{pki.garbage}' holds no PEM certificate: no certificate or crl found",
        ),
        "an ALPN protocol TLS cannot offer": (
            [with_tls(f"{tls}, alpn: [{'h' * 256}]}}")],
            "tls:",
            TLS,
            "cannot be built: ALPN protocols must be 1 to 255 in length",
        ),
        "a cluster's missing CA bundle": (
            [
                (
                    "    endpoints: [127.0.0.1:8080]",
                    "    endpoints: [127.0.0.1:8080]\n    tls: {ca_file: /nonexistent/ca.pem}",
                )
            ],
            "tls:",
            "clusters[0].tls.ca_file",
            "cannot read '/nonexistent/ca.pem': No such file or directory",
        ),
        "a cluster's key without a certificate": (
            [
                (
                    "    endpoints: [127.0.0.1:8080]",
                    f"    endpoints: [127.0.0.1:8080]\n    tls: {{private_key_file: {pki.key}}}",
                )
            ],
            "tls:",
            "clusters[0].tls.private_key_file",
            "needs certificate_file: a key alone is never presented",
        ),
    }


CASE_NAMES = list(cases(Pki(*(Path("/x"),) * 5)))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_validate_reports_the_case_exactly(
    case: str, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edits, needle, field, reason = cases(pki)[case]
    path = config_file(tmp_path, *edits)
    status, out = validate(capsys, path)
    assert (status, out) == (1, [f"{path}:{line_of(path, needle)}: {field}: {reason}"])


@pytest.mark.parametrize(
    "text", ["", "# nothing yet\n", "{}\n", "admin: {enabled: false}\n", "version: v1\nlisteners: []\n"]
)
def test_an_empty_config_file_is_an_error(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An emptied or truncated file must not stop every listener of a proxy reloading it.
    path = config_file(tmp_path, text=text)
    status, out = validate(capsys, path)
    assert (status, out) == (
        1,
        [
            (
                f"{path}: is empty: it defines no listeners, clusters or route_configs "
                "(a proxy from it would accept no connections)"
            )
        ],
    )


def test_a_file_of_route_tables_alone_is_not_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `meshcore check-routes` reads.
    routes = (
        "route_configs:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: ['*']\n"
        "        routes: [{match: {prefix: /}, direct_response: {status: 200}}]\n"
    )
    status, out = validate(capsys, config_file(tmp_path, text=routes))
    assert status == 0
    assert len(out) == 1


def test_route_overrides_may_name_a_filter_some_chain_using_the_table_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = (
        "  - name: plain\n    address: 127.0.0.1:10001\n    filter_chains:\n      - filters:\n"
        "          - http_connection_manager:\n              route_config: main\n"
        "              http_filters: [fault, router]\n\nroute_configs:"
    )
    path = config_file(
        tmp_path,
        ("\nroute_configs:", second),
        override("{fault: disabled, local_ratelimit: disabled}"),
    )
    assert validate(capsys, path)[0] == 0


def test_every_problem_is_reported_in_one_run(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edits = [
        ("{address: 127.0.0.1:9901}", "{address: 127.0.0.1:10000}"),
        with_tls(f"{{certificate_file: {pki.cert}, private_key_file: {pki.other_key}}}"),
        ('domains: [www.example.com, "*"]', 'domains: [api.example.com, "*"]'),
        (
            "    endpoints: [127.0.0.1:8080]",
            "    endpoints: [127.0.0.1:8080]\n    tls: {ca_file: /nonexistent/ca.pem}",
        ),
    ]
    path = config_file(tmp_path, *edits)
    status, out = validate(capsys, path)
    assert status == 1
    assert [line.split(": ", 2)[1] for line in out] == [
        "admin.address",
        f"{TLS}.private_key_file",
        f"{ROUTES}[1].domains[0]",
        "clusters[0].tls.ca_file",
    ]
    assert [int(line.split(":")[1]) for line in out] == sorted(int(line.split(":")[1]) for line in out)


# -- plugins: declared files, factories, their own checks ------------------------------------------


def check_policy(path: str) -> None:
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if line not in ("allow", "deny"):
            msg = f"{path!r} line {number}: unknown rule {line!r}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class PolicyConfig:
    policy_file: str = meshcore.file_field(check=check_policy)
    ca_file: str | None = meshcore.file_field("pem_certificates", default=None)
    extra_files: tuple[str, ...] = meshcore.file_field(default=())
    batch: int = 1


def policy_factory(config: PolicyConfig, _context: meshcore.FilterContext) -> Any:
    if 1024 % config.batch:
        msg = f"batch must divide 1024, got {config.batch}"
        raise ValueError(msg)

    async def policy(request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        return await call_next(request)

    return policy


@meshcore.hookimpl
def _policy_filters() -> list[meshcore.HttpFilterType]:
    return [meshcore.HttpFilterType(name="policy", factory=policy_factory, config=PolicyConfig)]


@meshcore.hookimpl
def _policy_checks(snapshot: meshcore.Snapshot) -> list[meshcore.ConfigProblem | str]:
    problems: list[meshcore.ConfigProblem | str] = []
    for i, cluster in enumerate(snapshot.clusters):
        if len(cluster.endpoints) > 1:
            problems.append(
                meshcore.ConfigProblem(path=f"clusters[{i}].endpoints", message="one endpoint at most")
            )
    if snapshot.version == "forbidden":
        problems.append("version 'forbidden' is not allowed")
    return problems


@pytest.fixture
def registry() -> meshcore.Registry:
    plugin = types.ModuleType("policy_plugin")
    plugin.meshcore_http_filters = _policy_filters  # type: ignore[attr-defined] # a module built at run time
    plugin.meshcore_validate_snapshot = _policy_checks  # type: ignore[attr-defined] # as above
    found = meshcore.build_registry(autoload=False, plugins=[("policy", plugin)])
    assert found.problems == []
    return found


def problems_of(path: Path, registry: meshcore.Registry) -> list[str]:
    """What ``meshcore validate`` prints for ``path`` with ``registry``'s plugins installed."""
    check: Callable[[meshcore.Snapshot], list[meshcore.ConfigProblem]] = functools.partial(
        validate_snapshot, registry=registry
    )
    with pytest.raises(meshcore.ConfigError) as info:
        meshcore.load_snapshot(path, registry, check=check)
    return [str(problem) for problem in info.value.problems]


def with_policy(section: str) -> Edit:
    return (
        "                - local_ratelimit:",
        f"                - policy: {section}\n                - local_ratelimit:",
    )


def test_a_plugin_s_declared_files_are_checked(pki: Pki, tmp_path: Path, registry: meshcore.Registry) -> None:
    policy = tmp_path / "policy.txt"
    policy.write_text("allow\nalow\n", encoding="utf-8")
    missing = tmp_path / "missing.txt"
    path = config_file(
        tmp_path,
        with_policy(f"{{policy_file: {policy}, ca_file: {pki.garbage}, extra_files: [{pki.ca}, {missing}]}}"),
    )
    where = f"{path}:{line_of(path, '- policy:')}: {HCM}.http_filters[0].policy"
    assert problems_of(path, registry) == [
        f"{where}.policy_file: '{policy}' line 2: unknown rule 'alow'",
        f"{where}.ca_file: '{pki.garbage}' holds no PEM certificate: no certificate or crl found",
        f"{where}.extra_files[1]: cannot read '{missing}': No such file or directory",
    ]
    policy.write_text("allow\ndeny\n", encoding="utf-8")
    path = config_file(tmp_path, with_policy(f"{{policy_file: {policy}, ca_file: {pki.ca}}}"))
    snapshot = meshcore.load_snapshot(
        path, registry, check=functools.partial(validate_snapshot, registry=registry)
    )
    assert snapshot.listeners[0].name == "ingress"


def test_a_plugin_factory_that_refuses_its_config_is_found_by_a_dry_build(
    tmp_path: Path, registry: meshcore.Registry
) -> None:
    policy = tmp_path / "policy.txt"
    policy.write_text("allow\n", encoding="utf-8")
    path = config_file(tmp_path, with_policy(f"{{policy_file: {policy}, batch: 3}}"))
    assert problems_of(path, registry) == [
        (
            f"{path}:{line_of(path, '- policy:')}: {HCM}.http_filters[0].policy: "
            "plugin 'policy' (unknown 0) cannot build it: ValueError: batch must divide 1024, got 3"
        )
    ]


def test_a_plugin_s_own_problems_point_at_their_line(tmp_path: Path, registry: meshcore.Registry) -> None:
    path = config_file(
        tmp_path,
        ("    endpoints: [127.0.0.1:8080]", "    endpoints: [127.0.0.1:8080, 127.0.0.1:8081]"),
        ("admin: {", "version: forbidden\nadmin: {"),
    )
    assert problems_of(path, registry) == [
        f"{path}: plugin 'policy': version 'forbidden' is not allowed",
        f"{path}:{line_of(path, 'endpoints:')}: clusters[0].endpoints: one endpoint at most",
    ]


def test_file_field_refuses_an_unknown_check_at_once() -> None:
    with pytest.raises(
        ValueError, match="unknown file check 'pem_cert'; known: readable, pem_certificates, pem_private_key"
    ):
        meshcore.file_field("pem_cert")


# -- the same checks before every apply ----------------------------------------------------------


async def test_a_running_proxy_refuses_a_cluster_whose_ca_file_is_missing(tmp_path: Path) -> None:
    # It used to pass validate and make the proxy exit on the reload that brought it.
    registry = meshcore.build_registry(autoload=False)
    good = meshcore.snapshot_from_data(
        {
            "admin": {"enabled": False},
            "listeners": [
                {
                    "name": "tcp",
                    "address": "127.0.0.1:0",
                    "filter_chains": [{"filters": [{"tcp_proxy": {"cluster": "c"}}]}],
                }
            ],
            "clusters": [{"name": "c", "endpoints": ["127.0.0.1:1"]}],
        },
        registry,
    )
    bad = attrs.evolve(
        good,
        version="v2",
        clusters=(attrs.evolve(good.clusters[0], tls=UpstreamTls(ca_file=str(tmp_path / "ca.pem"))),),
    )
    proxy = Proxy(registry)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            proxy.apply(good)
            with pytest.raises(meshcore.ConfigError) as info:
                proxy.apply(bad)
            assert proxy.snapshot is good
            proxy.drain()
    assert [str(p) for p in info.value.problems] == [
        f"clusters[0].tls.ca_file: cannot read '{tmp_path / 'ca.pem'}': No such file or directory"
    ]


def test_meshcore_plugins_says_which_plugins_check_snapshots(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    check = "    checks Snapshots before they are applied (meshcore_validate_snapshot)"
    assert (
        lines[lines.index(next(x for x in lines if x.startswith("meshcore.runtime.validation "))) + 1]
        == check
    )
    assert lines.count(check) == 2  # the runtime's checks, and the connection manager's
