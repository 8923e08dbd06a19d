"""``jwt_authn``: verify JSON Web Tokens, as Istio's RequestAuthentication does.

A token is taken from ``authorization: Bearer ...`` (or, for a provider that says so,
from other headers with their prefix, or query parameters). Its issuer picks the
provider; the provider's keys (see :mod:`meshcore.filters.jwks`) verify its signature
(PyJWT); its ``exp`` and ``nbf`` are checked with ``clock_skew`` of leeway, and its
``aud`` against the provider's ``audiences`` when it has some.

- A valid token: the request goes on. What was verified is in
  ``request.info.metadata["jwt"]`` (``issuer``, ``subject``, ``principal`` =
  ``ISSUER/SUBJECT``, ``claims``, ``audiences``, ``presenter``), where ``authz`` reads
  ``request_principals`` and ``request.auth.*`` conditions; claims named in
  ``claim_to_headers`` are set as request headers; the token is removed from the request
  unless ``forward`` is set.
- An invalid token (bad signature, expired, wrong issuer or audience, unknown key):
  401 with ``www-authenticate: Bearer realm="meshcore", error="invalid_token"`` and the
  flag ``JWT``.
- No token: the request goes on unauthenticated (an ``authz`` rule such as
  ``request_principals: ["*"]`` requires one), unless ``allow_missing`` is false.

Metrics, labelled ``listener``: ``jwt_authn_allowed``, ``jwt_authn_denied`` (with
``reason``), and per issuer ``jwt_authn_jwks_fetched`` / ``jwt_authn_jwks_fetch_failed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import structlog

import meshcore
from meshcore import (
    Duration,
    FilterContext,
    HttpHandler,
    Request,
    Response,
    ResponseFlag,
    SecretStr,
    non_empty,
)
from meshcore.filters.jwks import KeySet, RemoteJwks, check_jwks_file

log = structlog.get_logger("meshcore.jwt_authn")

CHALLENGE = 'Bearer realm="meshcore", error="invalid_token"'


@attrs.frozen(kw_only=True)
class JwtHeader:
    """A header a token may come in, and the prefix before the token (``Bearer ``)."""

    name: str = attrs.field(validator=non_empty)
    prefix: str = ""


@attrs.frozen(kw_only=True)
class ClaimToHeader:
    """Copy a claim of a verified token into a request header."""

    header: str = attrs.field(validator=non_empty)
    claim: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class JwtProvider:
    """An issuer whose tokens are accepted (Istio's ``JWTRule``). Exactly one key source."""

    issuer: str = attrs.field(validator=non_empty)
    audiences: tuple[str, ...] = ()
    """Accepted ``aud`` values; empty: any (the ``aud`` claim is not checked)."""
    jwks: SecretStr | None = None
    """The keys, inline as JWKS JSON (a secret: an ``oct`` key is one; never in /config_dump)."""
    jwks_file: str | None = meshcore.file_field(check=check_jwks_file, default=None)
    """The keys, from a JWKS file (read when the Snapshot is built)."""
    remote_jwks: RemoteJwks | None = None
    """The keys, fetched from a cluster (cached, refreshed in the background)."""
    from_headers: tuple[JwtHeader, ...] = ()
    """Where tokens come (default: ``authorization`` with prefix ``Bearer ``)."""
    from_params: tuple[str, ...] = ()
    """Query parameters tokens may come in."""
    forward: bool = False
    """Keep the token in the request sent upstream."""
    claim_to_headers: tuple[ClaimToHeader, ...] = ()

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("jwks", "jwks_file", "remote_jwks") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            msg = f"issuer {self.issuer!r} needs exactly one of jwks, jwks_file, remote_jwks; got {got}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class JwtAuthnConfig:
    """Config of ``jwt_authn``."""

    providers: tuple[JwtProvider, ...] = attrs.field(validator=non_empty)
    clock_skew: Duration = Duration(60)
    """Leeway for ``exp`` and ``nbf``."""
    allow_missing: bool = True
    """Let requests without a token through (unauthenticated); false: 401."""


_DEFAULT_HEADER = JwtHeader(name="authorization", prefix="Bearer ")


_MESSAGES = {
    "missing": "Jwt is missing",
    "malformed": "Jwt is not in the form of Header.Payload.Signature",
    "issuer": "Jwt issuer is not configured",
    "unknown_key": "Jwks doesn't have key to match kid or alg from Jwt",
    "expired": "Jwt is expired",
    "not_yet_valid": "Jwt not yet valid",
    "audience": "Audiences in Jwt are not allowed",
    "signature": "Jwt verification fails",
    "invalid": "Jwt verification fails",
}
"""Why a token is refused (the ``reason`` label) and what the client is told (Envoy's words)."""


class _Invalid(Exception):  # noqa: N818 - a reason, raised and caught inside this module
    """A token that is refused, with the reason told to the client and counted."""

    def __init__(self, *, reason: str) -> None:
        super().__init__(_MESSAGES[reason])
        self.reason = reason


class _Provider:
    __slots__ = ("config", "headers", "keys")

    def __init__(self, config: JwtProvider, keys: KeySet) -> None:
        self.config = config
        self.keys = keys
        self.headers = config.from_headers or ((_DEFAULT_HEADER,) if not config.from_params else ())


def _key_set(provider: JwtProvider, context: FilterContext) -> KeySet:
    if provider.remote_jwks is not None:
        keys = KeySet(provider.issuer, provider.remote_jwks)
        keys.maybe_refresh(context)  # fetched now, in the proxy's task (unless carry_over adopts keys)
        return keys
    keys = KeySet(provider.issuer)
    if provider.jwks is not None:
        keys.load(provider.jwks, f"jwks of issuer {provider.issuer!r}")
    else:
        assert provider.jwks_file is not None  # noqa: S101 - one source, checked by the config
        try:
            text = Path(provider.jwks_file).read_text(encoding="utf-8")
        except OSError as err:
            msg = (
                f"cannot read jwks_file {provider.jwks_file!r} of issuer {provider.issuer!r}: {err.strerror}"
            )
            raise ValueError(msg) from err
        keys.load(text, f"jwks_file {provider.jwks_file!r}")
    return keys


class JwtAuthn:
    """The ``jwt_authn`` filter for one Snapshot."""

    def __init__(self, config: JwtAuthnConfig, context: FilterContext) -> None:
        # Load PyJWT (and cryptography) now, with the config that uses it, not on the first
        # token: _verify's imports are then lookups in sys.modules.
        import jwt  # noqa: F401, PLC0415

        self.context = context
        self.leeway = float(config.clock_skew)
        self.allow_missing = config.allow_missing
        self.providers = {p.issuer: _Provider(p, _key_set(p, context)) for p in config.providers}
        headers = {
            (h.name.lower().encode("latin-1"), h.prefix) for p in self.providers.values() for h in p.headers
        }
        self.token_headers = tuple(sorted(headers))
        self.token_params = tuple(sorted({q for p in config.providers for q in p.from_params}))
        self.stat_allowed = context.stats.counter("jwt_authn_allowed", listener=context.listener)
        self._denied: dict[str, meshcore.Counter] = {}

    def carry_over(self, previous: object) -> None:
        """Keep the fetched keys of the filter this one replaces, for the same issuer and source."""
        if not isinstance(previous, JwtAuthn):
            return
        for issuer, provider in self.providers.items():
            before = previous.providers.get(issuer)
            remote = provider.config.remote_jwks
            if before is not None and remote is not None and before.config.remote_jwks == remote:
                provider.keys = before.keys  # the very same set: both filters use it while the old drains

    def _token(self, request: Request) -> tuple[str, bytes | None, str | None] | None:
        """The token, and the header or query parameter it came in; None without one."""
        for name, prefix in self.token_headers:
            value = request.headers.get(name)
            if value is not None and value[: len(prefix)].lower() == prefix.lower():
                return value[len(prefix) :].strip(), name, None
        if self.token_params and request.query:
            for part in request.query.split("&"):
                key, _, value = part.partition("=")
                if key in self.token_params and value:
                    return value, None, key
        return None

    async def __call__(self, request: Request, call_next: HttpHandler) -> Response:
        """Verify the request's token, if any, and pass the request on or answer 401."""
        found = self._token(request)
        if found is None:
            if self.allow_missing:
                return await call_next(request)
            return self._refuse(request, _Invalid(reason="missing"))
        token, header, param = found
        try:
            provider, claims = self._verify(token)
        except _Invalid as err:
            return self._refuse(request, err)
        self.stat_allowed.value += 1
        issuer, subject = claims.get("iss", ""), claims.get("sub", "")
        audiences = claims.get("aud", [])
        request.info.metadata["jwt"] = {
            "issuer": issuer,
            "subject": subject,
            "principal": f"{issuer}/{subject}",
            "claims": claims,
            "audiences": [audiences] if isinstance(audiences, str) else list(audiences),
            "presenter": claims.get("azp"),
        }
        for item in provider.config.claim_to_headers:
            value = claims.get(item.claim)
            if value is not None:
                request.headers.set(item.header, str(value))
        if not provider.config.forward:
            if header is not None:
                request.headers.remove(header)
            elif param is not None:
                request.path = _without_param(request.path, param)
        return await call_next(request)

    def _verify(self, token: str) -> tuple[_Provider, dict[str, Any]]:
        # PyJWT, and the cryptography it loads, only for a config with this filter (loaded by
        # __init__): imported with the plugin, they were 10 MiB of an idle proxy, used or not.
        import jwt  # noqa: PLC0415
        from jwt.exceptions import (  # noqa: PLC0415
            DecodeError,
            ExpiredSignatureError,
            ImmatureSignatureError,
            InvalidAudienceError,
            InvalidSignatureError,
            InvalidTokenError,
        )

        try:
            head = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (DecodeError, InvalidTokenError) as err:
            raise _Invalid(reason="malformed") from err
        provider = self.providers.get(str(unverified.get("iss")))
        if provider is None:
            raise _Invalid(reason="issuer")
        kid, alg = head.get("kid"), str(head.get("alg"))
        keys = provider.keys.candidates(kid if isinstance(kid, str) else None, alg)
        if not keys:
            if isinstance(kid, str) and not provider.keys.has_kid(kid):
                provider.keys.maybe_refresh(self.context, unknown_kid=True)
            else:
                provider.keys.maybe_refresh(self.context)
            raise _Invalid(reason="unknown_key")
        provider.keys.maybe_refresh(self.context)  # stale keys are refetched in the background
        config = provider.config
        options: dict[str, Any] = {"verify_aud": bool(config.audiences)}
        failure: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    audience=list(config.audiences) or None,
                    issuer=config.issuer,
                    leeway=self.leeway,
                    options=options,  # type: ignore[arg-type]  # PyJWT's TypedDict of options
                )
            except InvalidSignatureError as err:
                failure = err  # another key of the same kid and alg may still verify it
                continue
            except ExpiredSignatureError as err:
                raise _Invalid(reason="expired") from err
            except ImmatureSignatureError as err:
                raise _Invalid(reason="not_yet_valid") from err
            except InvalidAudienceError as err:
                raise _Invalid(reason="audience") from err
            except InvalidTokenError as err:
                raise _Invalid(reason="invalid") from err
            return provider, claims
        raise _Invalid(reason="signature") from failure

    def _refuse(self, request: Request, err: _Invalid) -> Response:
        counter = self._denied.get(err.reason)
        if counter is None:
            counter = self._denied[err.reason] = self.context.stats.counter(
                "jwt_authn_denied", listener=self.context.listener, reason=err.reason
            )
        counter.value += 1
        request.info.flags.add(ResponseFlag.JWT_REJECTED)
        log.info("jwt_rejected", listener=self.context.listener, reason=err.reason, path=request.path_only)
        return Response.local(401, f"{err}\n", headers=[("www-authenticate", CHALLENGE)])


def _without_param(target: str, name: str) -> str:
    path, _, query = target.partition("?")
    kept = [part for part in query.split("&") if part and part.partition("=")[0] != name]
    return f"{path}?{'&'.join(kept)}" if kept else path


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``jwt_authn``."""
    return [
        meshcore.HttpFilterType(
            name="jwt_authn",
            factory=JwtAuthn,
            config=JwtAuthnConfig,
            description="verifies JSON Web Tokens against their issuers' keys (Istio's RequestAuthentication)",
        )
    ]
