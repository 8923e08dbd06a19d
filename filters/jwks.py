"""JSON Web Key Sets for ``jwt_authn``: parsed once, fetched off the request path, kept when the source fails.

A :class:`KeySet` holds the keys of one issuer. Keys from a file or inline JSON are read
when the Snapshot is built. Keys from a URL are fetched through a cluster of the proxy
(Envoy's ``remote_jwks``), in a task of the proxy's own, never by a request:

- once when the filter is built (a request that comes before the first fetch has
  finished finds no key and is refused: 401, never held);
- again when the keys are older than ``cache_duration`` (the request that notices uses
  the keys it has);
- at once when a token names a key id the set does not have (a key rotated in at the
  issuer), but at most once per ``min_refresh_interval``, so a flood of made-up key ids
  cannot turn into a flood of fetches. Background refreshes of stale keys also start at
  most once per ``min_refresh_interval`` (a failing endpoint is not hammered).

A failed fetch (endpoint down, bad JSON) keeps the keys already there, with a log line
and ``jwt_authn_jwks_fetch_failed``. Key sets outlive Snapshots: a ``jwt_authn`` rebuilt
for a new Snapshot takes over (``carry_over``) the set of the filter it replaces when the
issuer and the source are the same, so a new Snapshot never empties a cache.

Signature checks are PyJWT's. Only asymmetric algorithms matching the key's type (and
its ``alg``, when the JWK names one) are accepted, plus HMAC for ``oct`` keys; ``none``
never.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs
import structlog
import trio

from meshcore import Duration, FilterContext, Headers, Request, UpstreamError, non_empty, ref

log = structlog.get_logger("meshcore.jwt_authn")

MAX_JWKS_SIZE: Final = 1024 * 1024
_ALGORITHMS: Final[Mapping[tuple[str, str | None], frozenset[str]]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("oct", None): frozenset({"HS256", "HS384", "HS512"}),
}


@attrs.frozen(kw_only=True)
class RemoteJwks:
    """Where to fetch an issuer's keys: a path on a cluster of the proxy."""

    cluster: str = ref("cluster", validator=non_empty)
    """The cluster serving the JWKS (its endpoints, TLS and pools as for any cluster)."""
    path: str = attrs.field(validator=non_empty)
    """The JWKS's path, ``/.well-known/jwks.json``."""
    authority: str | None = None
    """The Host to ask (default: the cluster's name)."""
    cache_duration: Duration = Duration(600)
    """How long fetched keys are used before they are fetched again (in the background)."""
    min_refresh_interval: Duration = Duration(5)
    """Fetches start at most this often (a token with an unknown key id asks for one)."""
    timeout: Duration = Duration(5)
    """How long one fetch may take."""


def parse_jwks(text: str | bytes, where: str) -> list[dict[str, Any]]:
    """The keys of a JWKS document; ValueError naming ``where`` if it is not one."""
    try:
        data = json.loads(text)
    except ValueError as err:
        msg = f"{where} is not JSON: {err}"
        raise ValueError(msg) from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) and k.get("kty") for k in keys):
        msg = f'{where} is not a JWKS: expected {{"keys": [{{"kty": ...}}, ...]}}'
        raise ValueError(msg)
    return keys


def check_jwks_file(path: str) -> None:
    """A ``file_field`` check: the file at ``path`` is a JWKS (ValueError saying why if not)."""
    with open(path, "rb") as file:  # noqa: PTH123 - the check is given a path string
        parse_jwks(file.read(), "the file")


def _allowed(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The algorithms a JWK may verify."""
    kty = jwk.get("kty")
    crv = jwk.get("crv") if kty in ("EC", "OKP") else None
    allowed = _ALGORITHMS.get((str(kty), crv), frozenset())
    named = jwk.get("alg")
    return allowed & {named} if isinstance(named, str) else allowed


class KeySet:
    """The verification keys of one issuer (see the module docstring)."""

    def __init__(self, issuer: str, remote: RemoteJwks | None = None) -> None:
        self.issuer = issuer
        self.remote = remote
        self.keys: list[dict[str, Any]] = []
        self.fetched_at = -math.inf
        self.last_attempt = -math.inf
        self.last_forced = -math.inf
        self.fetching = False
        self.updated = trio.Event()
        """Set (and replaced) each time a fetch has finished, well or not: for tests and tools."""
        self._cache: dict[tuple[int, str], Any] = {}

    def load(self, text: str | bytes, where: str) -> None:
        """Replace the keys with those of JWKS ``text``; ValueError if it is not one."""
        self.keys = parse_jwks(text, where)
        self._cache = {}

    def candidates(self, kid: str | None, alg: str) -> list[Any]:
        """Verification keys for a token's ``kid`` and ``alg`` (PyJWT key objects)."""
        from jwt import PyJWK  # noqa: PLC0415 - PyJWT and cryptography load with the first token
        from jwt.exceptions import PyJWKError  # noqa: PLC0415

        out = []
        for index, jwk in enumerate(self.keys):
            if kid is not None and jwk.get("kid") != kid:
                continue
            if alg not in _allowed(jwk):
                continue
            key = self._cache.get((index, alg))
            if key is None:
                try:
                    key = self._cache[(index, alg)] = PyJWK(jwk, algorithm=alg).key
                except PyJWKError as err:
                    log.warning("jwks_key_unusable", issuer=self.issuer, kid=jwk.get("kid"), reason=str(err))
                    continue
            out.append(key)
        return out

    def has_kid(self, kid: str) -> bool:
        """Whether any key carries ``kid``."""
        return any(jwk.get("kid") == kid for jwk in self.keys)

    # -- remote keys ---------------------------------------------------------------------------

    def maybe_refresh(self, context: FilterContext, *, unknown_kid: bool = False) -> None:
        """Start a background fetch if the keys are stale or a token named an unknown key id."""
        remote = self.remote
        nursery = context.clusters.nursery
        if remote is None or self.fetching or nursery is None:
            return  # no running proxy (a dry build by validation, a test harness): nothing to fetch with
        now = trio.current_time()
        interval = float(remote.min_refresh_interval)
        if unknown_kid:
            if now - self.last_forced < interval:
                return
            self.last_forced = now
        elif now - self.fetched_at < float(remote.cache_duration) or now - self.last_attempt < interval:
            return  # fresh, or the last attempt (a failed one) was too recent
        self.fetching = True
        self.last_attempt = now
        nursery.start_soon(self._fetch, context, remote)

    async def _fetch(self, context: FilterContext, remote: RemoteJwks) -> None:
        labels = {"issuer": self.issuer}
        try:
            self.load(await _download(context, remote), f"the JWKS of {self.issuer!r}")
        except (UpstreamError, LookupError, ValueError, OSError) as err:
            context.stats.counter("jwt_authn_jwks_fetch_failed", **labels).value += 1
            log.warning("jwks_fetch_failed", issuer=self.issuer, reason=str(err), keys_kept=len(self.keys))
        except Exception as err:  # noqa: BLE001 - a fetch must never take the proxy's nursery down
            context.stats.counter("jwt_authn_jwks_fetch_failed", **labels).value += 1
            log.warning("jwks_fetch_failed", issuer=self.issuer, reason=f"{type(err).__name__}: {err}")
        else:
            self.fetched_at = trio.current_time()
            context.stats.counter("jwt_authn_jwks_fetched", **labels).value += 1
            log.info("jwks_fetched", issuer=self.issuer, keys=len(self.keys))
        finally:
            self.fetching = False
            done, self.updated = self.updated, trio.Event()
            done.set()


async def _download(context: FilterContext, remote: RemoteJwks) -> bytes:
    """The JWKS document at ``remote``; LookupError or UpstreamError if it cannot be had."""
    cluster = context.clusters.get(remote.cluster)
    if cluster is None:
        msg = f"no cluster {remote.cluster!r}"
        raise LookupError(msg)
    request = Request(
        "GET",
        remote.path,
        authority=remote.authority or remote.cluster,
        headers=Headers([("accept", "application/json")]),
    )
    response = await cluster.send(request, timeout=float(remote.timeout))
    body = await response.body.read_all(MAX_JWKS_SIZE)
    if response.status != 200:  # noqa: PLR2004 - anything else is no JWKS
        msg = f"{remote.path} answered {response.status}"
        raise LookupError(msg)
    return body
