"""A corpus of path tricks: none reaches a denied path, through a real proxy, on every codec.

The proxy denies ``/admin`` twice over: a route (prefix ``/admin``, case-insensitive,
answering 403 itself) and an ``authz`` DENY policy (Istio's paths, case-sensitive). Each
attempt is sent as raw bytes (HTTP/1.1 through h11 and through the fast codec, HTTP/2
with prior knowledge), so no client cleans it up first. An attempt is stopped if the
proxy answers it itself (400, 403); if it reaches the upstream, the path the upstream
received, decoded once and resolved as a server would, must not name ``/admin`` in any
case.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any
from urllib.parse import unquote

import pytest
import trio
import yaml
from _apps import h2_get

from meshcore.testing import RunningProxy, UpstreamFactory, fetch, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

CORPUS = [
    # plain and case
    "/admin",
    "/admin/",
    "/admin/users",
    "/ADMIN",
    "/Admin/x",
    "/admin?debug=1",
    "/admin;jsessionid=1",
    "/admin#frag",
    # dot segments
    "/public/../admin",
    "/public/./../admin",
    "/./admin",
    "/public/..//admin",
    "/a/b/../../admin",
    "/../../admin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/%2e./admin",
    "/%2e/admin",
    # slashes
    "//admin",
    "///admin/x",
    "/public//../admin",
    # percent-encoded unreserved characters
    "/%61dmin",
    "/%41DMIN",
    "/a%64m%69n",
    "/%61%64%6d%69%6e/users",
    # encoded separators
    "/public%2F..%2Fadmin",
    "/public%2f..%2fadmin",
    "/%2Fadmin",
    "/public/..%2fadmin",
    "/public%5C..%5Cadmin",
    "/%5cadmin",
    # backslashes
    "/public\\..\\admin",
    "\\admin",
    "/\\admin",
    # double encoding
    "/%2561dmin",
    "/public/%252e%252e/admin",
    "/public%252f..%252fadmin",
    # NUL and control
    "/admin%00",
    "/%00/admin",
    "/admin%00.html",
    "/public/..%00/admin",
    # over-long UTF-8 (RFC 3629 forbids them; some decoders take them for ASCII)
    "/%c0%afadmin",
    "/public/%c0%ae%c0%ae/admin",
    "/public%c0%af..%c0%afadmin",
    "/%e0%80%afadmin",
    "/%c1%81dmin",
    # look-alikes (valid UTF-8, not ASCII: kept encoded, not "admin")
    "/%EF%BD%81dmin",
]

DENY = """
- name: deny-admin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin", "/admin/*"]
"""


def resolved(path: str) -> str:
    """What a lenient upstream would make of ``path``: decoded once, dot segments resolved, lower-case."""
    decoded = unquote(path.partition("?")[0].partition("#")[0], errors="replace").replace("\\", "/")
    return posixpath.normpath("/" + decoded.lstrip("/")).lower()


def names_admin(path: str) -> bool:
    plain = resolved(path)
    return plain == "/admin" or plain.startswith(("/admin/", "/admin;"))


@pytest.fixture(params=["h11", "fast", "h2"])
async def proxy(
    request: pytest.FixtureRequest, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> tuple[str, RunningProxy]:
    upstream = await meshcore_upstream()
    routes = [
        {
            "name": "deny-admin",
            "match": {"prefix": "/admin", "case_sensitive": False},
            "direct_response": {"status": 403, "body": "denied by route\n"},
        },
        {"name": "rest", "match": {"prefix": "/"}, "cluster": "backend"},
    ]
    manager = {"codec": "fast" if request.param == "fast" else "h11"}
    filters = [{"authz": {"policies": yaml.safe_load(DENY)}}, "router"]
    config = http_proxy_config([upstream.endpoint], routes=routes, http_filters=filters, manager=manager)
    return request.param, await meshcore_proxy(config)


async def test_no_path_trick_reaches_a_denied_path(proxy: tuple[str, RunningProxy]) -> None:
    protocol, running = proxy
    address = running.address()
    reached: list[tuple[str, str]] = []
    refused: dict[str, int] = {}
    with trio.fail_after(30):
        for target in CORPUS:
            if protocol == "h2":
                status, headers, body = await h2_get(address, target)
                upstream_saw = headers.get("x-upstream") is not None
            else:
                reply = await fetch(address, target)
                status, body, upstream_saw = reply.status, reply.body, reply.header("x-upstream") is not None
            if upstream_saw:
                seen: dict[str, Any] = json.loads(body)
                reached.append((target, seen["path"]))
            else:
                refused[target] = status
    bypasses = [(target, path) for target, path in reached if names_admin(path)]
    assert bypasses == []
    assert set(refused.values()) <= {400, 403}
    # Every trick that means /admin was stopped, and what passed is what a server would not
    # take for /admin either (double encodings, look-alikes).
    assert all(names_admin(target) is False or target in refused for target in CORPUS if "%25" not in target)
    assert refused["/public/../admin"] == refused["//admin"] == refused["/%61dmin"] == 403
    assert refused["/ADMIN"] == 403  # the route is case-insensitive
    assert refused["/public%2F..%2Fadmin"] == refused["/admin%00"] == refused["/%c0%afadmin"] == 400
    assert dict(reached)["/%2561dmin"] == "/%2561dmin"


async def test_the_upstream_receives_the_normalised_path_unless_told_otherwise(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    with trio.fail_after(10):
        normalised = await meshcore_proxy(http_proxy_config([upstream.endpoint]))
        original = await meshcore_proxy(
            http_proxy_config(
                [upstream.endpoint],
                manager={"path_normalization": {"forward": "original", "escaped_slashes": "keep"}},
            )
        )
        plain = await fetch(normalised.address(), "/a/./b/../%7Ec//d?q=/../x")
        kept = await fetch(original.address(), "/a/./b/../%7Ec//d%2Fe?q=1")
        off = await meshcore_proxy(
            http_proxy_config([upstream.endpoint], manager={"path_normalization": {"enabled": False}})
        )
        untouched = await fetch(off.address(), "/a/../b")
    assert plain.json()["path"] == "/a/~c/d?q=/../x"
    assert kept.json()["path"] == "/a/./b/../%7Ec//d%2Fe?q=1"
    assert untouched.json()["path"] == "/a/../b"
