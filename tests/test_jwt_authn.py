"""``jwt_authn`` through a real proxy.

Valid, expired, wrong issuer or audience, bad signature, unknown key id (one rate-limited
refresh), JWKS endpoint down (cached keys keep working).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import trio
from _apps import Answer, AppRequest, serve_app
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meshcore.filters.jwks import KeySet
from meshcore.filters.jwt_authn import JwtAuthn
from meshcore.runtime.http_manager import HttpConnectionManager
from meshcore.testing import RunningProxy, UpstreamFactory, http_proxy_config
from meshcore.testing.proxies import ProxyFactory

ISSUER = "https://issuer.example"
AUDIENCE = "shop"


class Key:
    """A signing key and its public JWK."""

    def __init__(self, kid: str, *, kind: str = "rsa") -> None:
        self.kid = kid
        if kind == "rsa":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
            self.alg = "RS256"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
            self.alg = "ES256"
        self.jwk["kid"] = kid

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        # Valid for a day: the parametrized tokens are made at collection, and a full suite on
        # a loaded machine reaches them more than 5 minutes later (they then failed as expired).
        payload = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 86400, **claims}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid})


RSA_KEY = Key("k1")
EC_KEY = Key("k2", kind="ec")


def hmac_with_public_key() -> str:
    """A token an attacker signs with HS256, using the issuer's public key as the HMAC secret."""
    public = RSA_KEY.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "admin", "aud": AUDIENCE, "exp": now + 300}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode())
    signing_input = header.rstrip(b"=") + b"." + payload.rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public, signing_input, hashlib.sha256).digest()).rstrip(
        b"="
    )
    return (signing_input + b"." + signature).decode()


def jwks(*keys: Key) -> str:
    return json.dumps({"keys": [k.jwk for k in keys]})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def config(upstream: str, provider: dict[str, Any], **filter_config: Any) -> dict[str, Any]:
    jwt_filter = {"jwt_authn": {"providers": [{"issuer": ISSUER, **provider}], **filter_config}}
    return http_proxy_config([upstream], http_filters=[jwt_filter, "router"])


@pytest.fixture
async def local_proxy(meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory) -> RunningProxy:
    upstream = await meshcore_upstream()
    provider = {
        "jwks": jwks(RSA_KEY, EC_KEY),
        "audiences": [AUDIENCE],
        "claim_to_headers": [{"header": "x-jwt-sub", "claim": "sub"}],
    }
    return await meshcore_proxy(config(upstream.endpoint, provider))


async def test_a_valid_token_passes_with_its_claims_and_without_itself(local_proxy: RunningProxy) -> None:
    with trio.fail_after(10):
        by_rsa = await local_proxy.client().get("/", headers=bearer(RSA_KEY.token()))
        by_ec = await local_proxy.client().get("/", headers=bearer(EC_KEY.token(sub="bob")))
    assert (by_rsa.status, by_ec.status) == (200, 200)
    seen = dict(by_rsa.json()["headers"])
    assert seen["x-jwt-sub"] == "alice"
    assert "authorization" not in seen  # not forwarded unless `forward: true`
    assert dict(by_ec.json()["headers"])["x-jwt-sub"] == "bob"
    assert local_proxy.stats.value("jwt_authn_allowed", listener="ingress") == 2


@pytest.mark.parametrize(
    ("case", "token", "reason"),
    # Each token made when its test runs: one made at collection, valid from 10 minutes on,
    # was valid by the time a long suite under load reached it.
    [
        ("expired", lambda: RSA_KEY.token(exp=int(time.time()) - 120), "Jwt is expired"),
        ("not yet valid", lambda: RSA_KEY.token(nbf=int(time.time()) + 600), "Jwt not yet valid"),
        ("wrong issuer", lambda: RSA_KEY.token(iss="https://evil.example"), "Jwt issuer is not configured"),
        ("wrong audience", lambda: RSA_KEY.token(aud="other"), "Audiences in Jwt are not allowed"),
        ("bad signature", lambda: Key("k1").token(), "Jwt verification fails"),  # same kid, another key
        ("unknown kid", lambda: Key("k9").token(), "Jwks doesn't have key to match kid or alg from Jwt"),
        (
            "alg none",
            lambda: jwt.encode({"iss": ISSUER, "sub": "x"}, "", algorithm="none"),
            "Jwks doesn't have key",
        ),
        # Key confusion: HMAC "signed" with the RSA key's public PEM, naming the RSA key.
        ("alg confusion", hmac_with_public_key, "Jwks doesn't have key"),
        ("not a jwt", lambda: "abc.def", "Jwt is not in the form"),
    ],
)
async def test_a_bad_token_gets_401_with_a_challenge(
    local_proxy: RunningProxy, case: str, token: Callable[[], str], reason: str
) -> None:
    with trio.fail_after(10):
        reply = await local_proxy.client().get("/", headers=bearer(token()))
    assert reply.status == 401, case
    assert reply.header("www-authenticate") == 'Bearer realm="meshcore", error="invalid_token"'
    assert reply.header("x-meshcore-flags") == "JWT"
    assert reply.text.startswith(reason)
    assert reply.header("x-upstream") is None  # never reached the upstream


async def test_clock_skew_and_missing_tokens(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream()
    provider = {"jwks": jwks(RSA_KEY), "from_params": ["access_token"]}
    with trio.fail_after(10):
        lenient = await meshcore_proxy(config(upstream.endpoint, provider, clock_skew="60s"))
        strict = await meshcore_proxy(
            config(upstream.endpoint, provider, clock_skew="0s", allow_missing=False)
        )
        just_expired = RSA_KEY.token(exp=int(time.time()) - 20)
        skewed = await lenient.client().get("/", headers=bearer(just_expired))
        expired = await strict.client().get("/", headers=bearer(just_expired))
        anonymous = await lenient.client().get("/")
        missing = await strict.client().get("/")
        by_param = await strict.client().get(f"/p?a=1&access_token={RSA_KEY.token()}")
    assert (skewed.status, expired.status) == (200, 401)
    assert (anonymous.status, missing.status) == (200, 401)
    assert missing.text == "Jwt is missing\n"
    assert by_param.status == 200
    assert by_param.json()["path"] == "/p?a=1"  # the token is not passed on


class JwksServer:
    """A JWKS endpoint whose keys and health the test controls, counting fetches."""

    def __init__(self, *keys: Key) -> None:
        self.keys = list(keys)
        self.down = False
        self.fetches = 0

    async def __call__(self, _request: AppRequest) -> Answer:
        self.fetches += 1
        if self.down:
            return 503, [], b"down"
        return 200, [("content-type", "application/json")], jwks(*self.keys).encode()


def remote_config(upstream: str, jwks_at: str, **remote: Any) -> dict[str, Any]:
    provider = {"remote_jwks": {"cluster": "jwks", "path": "/.well-known/jwks.json", **remote}}
    out = config(upstream, provider)
    out["clusters"].append({"name": "jwks", "endpoints": [jwks_at]})
    return out


def jwt_filter(proxy: RunningProxy) -> JwtAuthn:
    """The proxy's live jwt_authn filter (the first HTTP filter of its only listener's chain)."""
    manager = proxy.proxy.listeners["ingress"].chains[0].filters[0]
    assert isinstance(manager, HttpConnectionManager)
    found = manager.chains.filters[0]
    assert isinstance(found, JwtAuthn)
    return found


async def fetched(proxy: RunningProxy, count: int) -> KeySet:
    """The issuer's key set, once ``count`` fetches of it have finished (well or not)."""
    keys = jwt_filter(proxy).providers[ISSUER].keys

    def done() -> int | float:
        return proxy.stats.value("jwt_authn_jwks_fetched", issuer=ISSUER) + proxy.stats.value(
            "jwt_authn_jwks_fetch_failed", issuer=ISSUER
        )

    while done() < count:
        await keys.updated.wait()
    return keys


async def test_an_unknown_kid_refreshes_the_keys_once_rate_limited(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory, nursery: trio.Nursery
) -> None:
    server = JwksServer(RSA_KEY)
    upstream = await meshcore_upstream()
    jwks_at = await nursery.start(serve_app, server)
    with trio.fail_after(10):
        proxy = await meshcore_proxy(remote_config(upstream.endpoint, jwks_at, min_refresh_interval="30s"))
        await fetched(proxy, 1)  # fetched when the filter was built
        assert (await proxy.client().get("/", headers=bearer(RSA_KEY.token()))).status == 200
        rotated = Key("k-new")
        server.keys.append(rotated)
        # The first request with the new key id is refused (never held) and asks for a refresh.
        first = await proxy.client().get("/", headers=bearer(rotated.token()))
        await fetched(proxy, 2)
        after = await proxy.client().get("/", headers=bearer(rotated.token()))
        # Made-up key ids, many: no more fetches within min_refresh_interval.
        for i in range(20):
            assert (
                await proxy.client().get("/", headers=bearer(Key(f"x{i}", kind="ec").token()))
            ).status == 401
    assert (first.status, after.status) == (401, 200)
    assert server.fetches == 2
    assert proxy.stats.value("jwt_authn_jwks_fetched", issuer=ISSUER) == 2


async def test_cached_keys_keep_working_while_the_jwks_endpoint_is_down(
    meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory, nursery: trio.Nursery
) -> None:
    server = JwksServer(RSA_KEY)
    upstream = await meshcore_upstream()
    jwks_at = await nursery.start(serve_app, server)
    settings = {"cache_duration": "0.05s", "min_refresh_interval": "0.05s"}
    statuses = []
    with trio.fail_after(10):
        proxy = await meshcore_proxy(remote_config(upstream.endpoint, jwks_at, **settings))
        await fetched(proxy, 1)
        server.down = True
        for attempt in range(2, 5):
            await trio.sleep(0.06)  # the keys go stale: the next request asks for a refetch
            statuses.append((await proxy.client().get("/", headers=bearer(RSA_KEY.token()))).status)
            await fetched(proxy, attempt)  # ... which fails
        # A new Snapshot that rebuilds the filter (another clock skew), same issuer and source:
        # the new filter takes over the cached keys.
        before = jwt_filter(proxy)
        changed = remote_config(upstream.endpoint, jwks_at, **settings)
        changed["listeners"][0]["filter_chains"][0]["filters"][0]["http_connection_manager"]["http_filters"][
            0
        ]["jwt_authn"]["clock_skew"] = "30s"
        proxy.apply(changed)
        assert jwt_filter(proxy) is not before
        assert jwt_filter(proxy).providers[ISSUER].keys is before.providers[ISSUER].keys
        statuses.append((await proxy.client().get("/", headers=bearer(RSA_KEY.token()))).status)
    assert statuses == [200] * 4
    # Three failed refetches (a fourth may start when the new Snapshot finds the keys stale).
    assert proxy.stats.value("jwt_authn_jwks_fetch_failed", issuer=ISSUER) >= 3
    assert proxy.stats.value("jwt_authn_jwks_fetched", issuer=ISSUER) == 1
