"""``authz`` against a table of Istio AuthorizationPolicy examples, through a real proxy.

The policies are written as Istio's documentation writes them (istio.io, "Authorization
Policy" reference and tasks), translated by ``meshcore.plugins.istio_security``, and
enforced by a proxy whose listener asks for (optional) client certificates issued with
SPIFFE IDs, with ``jwt_authn`` before ``authz``, and an external authorization service
for CUSTOM. Each row: who calls (mTLS identity, JWT), what they ask, the status expected.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import attrs
import jwt
import pytest
import trio
import yaml
from _apps import Answer, AppRequest, serve_app
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from meshcore import ConfigError
from meshcore.plugins.istio_security import UnsupportedError, authz_config
from meshcore.testing import MeshcoreCA, UpstreamFactory, http_proxy_config, tcp_proxy_config
from meshcore.testing.proxies import ProxyFactory

ISSUER = "https://accounts.google.com"
SIGNER = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(SIGNER.public_key())), "kid": "k"}]})

SLEEP = "cluster.local/ns/default/sa/sleep"
DEV = "cluster.local/ns/dev/sa/tool"
FOO = "cluster.local/ns/foo/sa/app"
ADMIN_SA = "cluster.local/ns/foo/sa/admin"


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "user-1", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, SIGNER, algorithm="ES256", headers={"kid": "k"})


@attrs.frozen
class Call:
    """One request of a row: who (principal, JWT claims), what, and the status expected."""

    status: int
    path: str = "/"
    method: str = "GET"
    principal: str | None = None
    claims: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    host: str | None = None


@attrs.frozen
class Row:
    name: str
    policies: str
    calls: tuple[Call, ...]
    counters: tuple[tuple[str, str, int], ...] = ()  # (metric, policy, value)


def policy(name: str, spec: str, namespace: str = "foo") -> str:
    indented = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{indented}\n"
    )


TABLE = [
    Row(
        "allow by principal or namespace, GET only, iss claim",
        policy(
            "httpbin",
            """
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/default/sa/sleep"]
  - source:
      namespaces: ["dev"]
  to:
  - operation:
      methods: ["GET"]
  when:
  - key: request.auth.claims[iss]
    values: ["https://accounts.google.com"]
""",
        ),
        (
            Call(200, principal=SLEEP, claims={}),
            Call(200, principal=DEV, claims={}),
            Call(403, principal=SLEEP),  # no JWT: the iss condition fails
            Call(403, method="POST", principal=SLEEP, claims={}),
            Call(403, principal=FOO, claims={}),
            Call(403, claims={}),  # no peer identity
        ),
        (("authz_allowed", "foo/httpbin", 2), ("authz_denied", "-", 4)),
    ),
    Row(
        "deny requests from outside namespace foo",
        policy("deny-outside", 'action: DENY\nrules:\n- from:\n  - source:\n      notNamespaces: ["foo"]'),
        (Call(200, principal=FOO), Call(403, principal=SLEEP), Call(403)),
        (("authz_denied", "foo/deny-outside", 2),),
    ),
    Row("allow nothing", policy("allow-nothing", "{}"), (Call(403, principal=FOO), Call(403))),
    Row("deny all", policy("deny-all", "action: DENY\nrules:\n- {}"), (Call(403, principal=FOO),)),
    Row(
        "allow all", policy("allow-all", "action: ALLOW\nrules:\n- {}"), (Call(200), Call(200, principal=DEV))
    ),
    Row(
        "deny paths and methods, allow the rest",
        policy(
            "deny-admin",
            """
action: DENY
rules:
- to:
  - operation:
      paths: ["/admin", "/admin/*"]
  - operation:
      methods: ["DELETE"]
      paths: ["*.html"]
""",
        ),
        (
            Call(200, path="/public"),
            Call(403, path="/admin"),
            Call(403, path="/admin/users?x=1"),
            Call(200, path="/administrator"),
            Call(403, path="/public/../admin"),  # normalised before authz
            Call(403, path="/%61dmin/x"),
            Call(403, method="DELETE", path="/index.html"),
            Call(200, method="GET", path="/index.html"),
        ),
    ),
    Row(
        "require a JWT except on /healthz (notRequestPrincipals, notPaths)",
        policy(
            "require-jwt",
            """
action: DENY
rules:
- from:
  - source:
      notRequestPrincipals: ["*"]
  to:
  - operation:
      notPaths: ["/healthz"]
""",
        ),
        (
            Call(403, path="/data"),
            Call(200, path="/healthz"),
            Call(200, path="/data", claims={}),
        ),
    ),
    Row(
        "request principal and group claim",
        policy(
            "jwt-groups",
            """
action: ALLOW
rules:
- from:
  - source:
      requestPrincipals: ["https://accounts.google.com/user-1"]
  when:
  - key: request.auth.claims[groups]
    values: ["group1"]
""",
        ),
        (
            Call(200, claims={"groups": ["group0", "group1"]}),
            Call(403, claims={"groups": ["group2"]}),
            Call(403, claims={"sub": "user-2", "groups": ["group1"]}),
            Call(403),
        ),
    ),
    Row(
        "hosts and ports, header conditions",
        policy(
            "hosts",
            """
action: ALLOW
rules:
- to:
  - operation:
      hosts: ["*.example.com"]
  when:
  - key: request.headers[version]
    values: ["v1", "v2"]
    notValues: ["v2"]
""",
        ),
        (
            Call(200, host="api.example.com", headers=(("version", "v1"),)),
            Call(200, host="API.Example.com:8443", headers=(("version", "v1"),)),
            Call(403, host="api.example.com", headers=(("version", "v2"),)),
            Call(403, host="example.org", headers=(("version", "v1"),)),
        ),
    ),
    Row(
        "ipBlocks and remoteIpBlocks",
        policy(
            "ips",
            """
action: DENY
rules:
- from:
  - source:
      ipBlocks: ["10.0.0.0/8"]
  - source:
      remoteIpBlocks: ["203.0.113.0/24"]
""",
        ),
        # The loopback peer is not in 10/8; x-forwarded-for from an untrusted client is ignored.
        (Call(200), Call(200, headers=(("x-forwarded-for", "203.0.113.7"),))),
    ),
    Row(
        "audit a path: logged and counted, the decision unchanged",
        policy("audit", 'action: AUDIT\nrules:\n- to:\n  - operation:\n      paths: ["/user/profile/*"]'),
        (Call(200, path="/user/profile/1"), Call(200, path="/other")),
        (("authz_audited", "foo/audit", 1),),
    ),
    Row(
        "CUSTOM through ext_authz, then DENY, then ALLOW",
        policy(
            "ext",
            'action: CUSTOM\nprovider:\n  name: my-ext-authz\nrules:\n- to:\n  - operation:\n      paths: ["/admin/*"]',
        )
        + "---\n"
        + policy("allow-admin", 'action: ALLOW\nrules:\n- from:\n  - source:\n      principals: ["*"]'),
        (
            Call(200, path="/admin/x", principal=ADMIN_SA, headers=(("x-ext-allow", "yes"),)),
            Call(401, path="/admin/x", principal=ADMIN_SA),  # the service's own denial
            Call(403, path="/admin/x", headers=(("x-ext-allow", "yes"),)),  # allowed by CUSTOM, no ALLOW
            Call(200, path="/public", principal=FOO),  # CUSTOM not consulted
        ),
    ),
]


async def ext_authz_service(request: AppRequest) -> Answer:
    """Allows requests that carry ``x-ext-allow: yes``, and says who it saw."""
    if request.headers.get("x-ext-allow") == "yes":
        return 200, [("x-ext-user", "checked")], b""
    return 401, [("www-authenticate", "Basic")], b"ext says no\n"


class Callers:
    """Client TLS contexts per identity, made once."""

    def __init__(self, ca: MeshcoreCA) -> None:
        self.ca = ca
        self.contexts: dict[str | None, ssl.SSLContext] = {}

    def context(self, principal: str | None) -> ssl.SSLContext:
        found = self.contexts.get(principal)
        if found is None:
            uris = [f"spiffe://{principal}"] if principal else []
            found = self.contexts[principal] = self.ca.client_context(client_uris=uris)
        return found


def mtls_config(ca: MeshcoreCA, config: dict[str, Any]) -> dict[str, Any]:
    """Every chain speaks TLS and asks for an optional client certificate from ``ca``."""
    tls = ca.tls_context()
    tls["client_ca_file"] = str(ca.ca_file)
    for chain in config["listeners"][0]["filter_chains"]:
        chain["tls"] = tls
    return config


@pytest.fixture
def callers(meshcore_ca: MeshcoreCA) -> Callers:
    return Callers(meshcore_ca)


@pytest.mark.parametrize("row", TABLE, ids=[row.name for row in TABLE])
async def test_istio_authorization_policy_examples(
    row: Row,
    callers: Callers,
    meshcore_ca: MeshcoreCA,
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
    nursery: trio.Nursery,
) -> None:
    upstream = await meshcore_upstream()
    service = await nursery.start(serve_app, ext_authz_service)
    providers = {"my-ext-authz": {"cluster": "authz", "include_request_headers": ["x-ext-*"]}}
    authz = authz_config(list(yaml.safe_load_all(row.policies)), providers)
    filters = [{"jwt_authn": {"providers": [{"issuer": ISSUER, "jwks": JWKS}]}}, {"authz": authz}, "router"]
    config = mtls_config(meshcore_ca, http_proxy_config([upstream.endpoint], http_filters=filters))
    config["clusters"].append({"name": "authz", "endpoints": [service]})
    outcomes = []
    with trio.fail_after(20):
        proxy = await meshcore_proxy(config)
        for call in row.calls:
            client = proxy.client(ssl_context=callers.context(call.principal), server_hostname="localhost")
            headers = list(call.headers)
            if call.claims is not None:
                headers.append(("authorization", f"Bearer {token(**call.claims)}"))
            reply = await client.request(call.method, call.path, headers=headers, host=call.host)
            outcomes.append(reply.status)
            if reply.status == 403:
                assert reply.header("x-meshcore-flags") == "RBAC", call
    assert outcomes == [call.status for call in row.calls]
    for metric, name, value in row.counters:
        assert proxy.stats.value(metric, listener="ingress", policy=name) == value, (metric, name)


async def test_ext_authz_headers_go_upstream_on_allow(
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
    nursery: trio.Nursery,
) -> None:
    upstream = await meshcore_upstream()
    service = await nursery.start(serve_app, ext_authz_service)
    ext = {
        "cluster": "authz",
        "include_request_headers": ["x-ext-allow"],
        "headers_to_upstream_on_allow": ["x-ext-user"],
    }
    config = http_proxy_config([upstream.endpoint], http_filters=[{"ext_authz": ext}, "router"])
    config["clusters"].append({"name": "authz", "endpoints": [service]})
    with trio.fail_after(10):
        proxy = await meshcore_proxy(config)
        allowed = await proxy.client().get("/x", headers={"x-ext-allow": "yes"})
        denied = await proxy.client().get("/x")
    assert allowed.status == 200
    assert dict(allowed.json()["headers"])["x-ext-user"] == "checked"
    assert (denied.status, denied.body, denied.header("www-authenticate")) == (401, b"ext says no\n", "Basic")
    assert denied.header("x-meshcore-flags") == "UAEX"


@pytest.mark.parametrize(("fail_open", "status"), [(False, 403), (True, 200)])
async def test_ext_authz_down_or_slow_follows_the_failure_mode(
    fail_open: bool,
    status: int,
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
    nursery: trio.Nursery,
) -> None:
    upstream = await meshcore_upstream()
    release = trio.Event()

    async def slow(_request: AppRequest) -> Answer:
        await release.wait()
        return 200, [], b""

    async def broken(_request: AppRequest) -> Answer:
        return 503, [], b""

    slow_at = await nursery.start(serve_app, slow)
    broken_at = await nursery.start(serve_app, broken)
    outcomes = []
    for name, endpoint in (("slow", slow_at), ("broken", broken_at), ("refused", "127.0.0.1:1")):
        ext = {"cluster": "authz", "timeout": "0.2s", "fail_open": fail_open}
        config = http_proxy_config([upstream.endpoint], http_filters=[{"ext_authz": ext}, "router"])
        config["clusters"].append({"name": "authz", "endpoints": [endpoint]})
        with trio.fail_after(10):
            proxy = await meshcore_proxy(config)
            reply = await proxy.client().get("/")
        outcomes.append((name, reply.status))
        if reply.status != 200:
            assert "127.0.0.1" not in reply.text  # a local reply never names internal addresses
    release.set()
    assert outcomes == [("slow", status), ("broken", status), ("refused", status)]


async def test_l4_authz_closes_denied_connections(
    callers: Callers,
    meshcore_ca: MeshcoreCA,
    meshcore_proxy: ProxyFactory,
    meshcore_upstream: UpstreamFactory,
) -> None:
    upstream = await meshcore_upstream()
    spec = (
        "action: ALLOW\nrules:\n- from:\n  - source:\n      namespaces: [foo]\n"
        "- to:\n  - operation:\n      paths: [/open]\n"  # HTTP-only: never matches for TCP
    )
    authz = authz_config([yaml.safe_load(policy("tcp", spec))])
    config = tcp_proxy_config([upstream.endpoint])
    chain = config["listeners"][0]["filter_chains"][0]
    chain["filters"].insert(0, {"authz": authz})
    config = mtls_config(meshcore_ca, config)
    with trio.fail_after(10):
        proxy = await meshcore_proxy(config)
        allowed = await proxy.client(ssl_context=callers.context(FOO), server_hostname="localhost").get("/")
        with pytest.raises((ConnectionError, trio.BrokenResourceError)):
            await proxy.client(ssl_context=callers.context(SLEEP), server_hostname="localhost").get("/open")
    assert allowed.status == 200
    assert proxy.stats.value("authz_denied", listener="ingress", policy="-") == 1


def test_unsupported_fields_and_bad_policies_are_errors() -> None:
    with pytest.raises(UnsupportedError, match="'requestPrincipal' is not supported"):
        authz_config(
            [yaml.safe_load(policy("x", "rules:\n- from:\n  - source:\n      requestPrincipal: [a]"))]
        )
    with pytest.raises(UnsupportedError, match="unknown provider"):
        authz_config([yaml.safe_load(policy("x", "action: CUSTOM\nprovider:\n  name: nope\nrules:\n- {}"))])


async def test_config_errors_name_the_field(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    bad = {
        "policies": [
            {"name": "a", "rules": [{"when": [{"key": "request.bogus", "values": ["x"]}]}]},
            {"name": "b", "rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/33"]}}]}]},
            {"name": "c", "rules": [{"to": [{"operation": {"paths": ["/a/{*}"]}}]}]},
        ]
    }
    config = http_proxy_config([upstream.endpoint], http_filters=[{"authz": bad}, "router"])
    with pytest.raises(ConfigError) as caught:
        await meshcore_proxy(config)
    text = str(caught.value)
    assert "unsupported condition key 'request.bogus'" in text
    assert "ip_blocks must hold IP addresses or CIDR blocks, got '10.0.0.0/33'" in text
    assert "path templates" in text
