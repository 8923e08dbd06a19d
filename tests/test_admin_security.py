"""The admin server at the edge of trust: loopback by default, mutations by POST only, no secrets dumped."""

from __future__ import annotations

import ipaddress
import json

import httpx
import trio

from meshcore.config import AdminConfig
from meshcore.runtime.admin import ENDPOINTS, _is_loopback
from meshcore.testing import MeshcoreCA, UpstreamFactory, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

SYMMETRIC_JWKS = '{"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0LWhtYWMta2V5LW5ldmVyLWR1bXBlZA"}]}'


def test_the_admin_server_listens_on_loopback_unless_told_otherwise() -> None:
    assert ipaddress.ip_address(AdminConfig().address.host).is_loopback


def test_an_admin_server_off_loopback_is_told_apart() -> None:
    """``serve_admin`` warns (``admin_exposed``) when it listens beyond loopback."""
    assert _is_loopback("127.0.0.1")
    assert _is_loopback("::1")
    assert _is_loopback("[::1]")
    assert _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0")  # noqa: S104 - the case checked, nothing binds it
    assert not _is_loopback("10.1.2.3")


def test_every_endpoint_that_changes_something_takes_post_only() -> None:
    reads = {path for path, endpoint in ENDPOINTS.items() if set(endpoint.methods) <= {"GET", "HEAD"}}
    mutations = {path: endpoint.methods for path, endpoint in ENDPOINTS.items() if path not in reads}
    assert mutations  # /logging at least
    assert set(mutations.values()) == {("POST",)}


async def test_no_secret_reaches_the_config_dump(
    meshcore_ca: MeshcoreCA, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    jwt = {"jwt_authn": {"providers": [{"issuer": "https://issuer.example", "jwks": SYMMETRIC_JWKS}]}}
    config = meshcore_ca.with_tls(http_proxy_config([upstream.endpoint], http_filters=[jwt, "router"]))
    config["admin"] = {"address": "127.0.0.1:0"}
    key_file = config["listeners"][0]["filter_chains"][0]["tls"]["private_key_file"]
    with trio.fail_after(10):
        proxy = await meshcore_proxy(config)
        assert proxy.admin_address is not None
        host, port = proxy.admin_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            dump = await client.get("/config_dump")
            changed = await client.get("/logging", params={"level": "debug"})
    assert dump.status_code == 200
    text = dump.text
    assert "c2VjcmV0LWhtYWMta2V5" not in text  # the inline JWKS (an HMAC key) is a SecretStr
    assert (
        await trio.Path(key_file).read_text()
    ) not in text  # a key file's path is shown, never its content
    (provider,) = json.loads(text)["listeners"][0]["filter_chains"][0]["filters"][0][
        "http_connection_manager"
    ]["http_filters"][0]["jwt_authn"]["providers"]
    assert provider["jwks"] == "[redacted]"
    assert changed.status_code == 405  # a GET cannot change the log level
