"""``authz``: access decided by identity, request and conditions, as Istio's AuthorizationPolicy decides it.

An HTTP filter and a network filter (the L4 form, for TCP) of the same name and config.
The config is a list of policies, each with an action and rules (see
:mod:`meshcore.filters.authz_rules` for what a rule matches). They are evaluated in
Istio's order:

1. **CUSTOM**: if a CUSTOM policy matches, its provider (an external authorization
   service, see ``ext_authz``) is asked; if it denies, the request is denied with its
   answer (flag ``UAEX``);
2. **DENY**: if a DENY policy matches, the request is denied;
3. **ALLOW**: if there is no ALLOW policy, the request is allowed; if an ALLOW policy
   matches, it is allowed; otherwise it is denied.

**AUDIT** policies do not change the decision: a request one matches is logged
(``request_audited``) and marked in ``info.metadata["authz_audit"]`` for access logs.

A denied request gets 403 ``RBAC: access denied`` with the flag ``RBAC``; a denied TCP
connection is closed before a byte is forwarded. The filter reads the peer's mTLS
identity from the connection, the normalised path, and what ``jwt_authn`` verified
(``request.info.metadata["jwt"]``: put ``jwt_authn`` before ``authz`` in the chain).
Metrics, labelled ``listener`` and ``policy``: ``authz_allowed``, ``authz_denied``
(``policy="-"``: no ALLOW policy matched), ``authz_audited``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import structlog

import meshcore
from meshcore import (
    Connection,
    Counter,
    FilterContext,
    HttpHandler,
    NetworkHandler,
    Request,
    Response,
    ResponseFlag,
    non_empty,
)
from meshcore.filters.authz_rules import Attributes, Rule, compile_rule
from meshcore.filters.ext_authz import ExtAuthzClient, ExtAuthzConfig

log = structlog.get_logger("meshcore.authz")

DENIED_BODY = "RBAC: access denied\n"
NO_ALLOW_MATCH = "-"
"""The ``policy`` label of denials for want of a matching ALLOW policy."""


@attrs.frozen(kw_only=True)
class Policy:
    """One authorization policy: an action and the rules that trigger it."""

    name: str = attrs.field(validator=non_empty)
    """Its name in logs and metrics (a translated AuthorizationPolicy: ``NAMESPACE/NAME``)."""
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    rules: tuple[Rule, ...] = ()
    """Any may match. No rules: the policy matches nothing (an ALLOW policy without rules
    allows nothing); one empty rule ``{}`` matches everything."""
    provider: str | None = None
    """The provider a CUSTOM policy asks (one of ``providers``)."""

    def __attrs_post_init__(self) -> None:
        if (self.action == "CUSTOM") != (self.provider is not None):
            msg = (
                f"policy {self.name!r}: a CUSTOM policy needs a provider, and only a CUSTOM policy takes one"
            )
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Provider:
    """An external authorization service for CUSTOM policies."""

    name: str = attrs.field(validator=non_empty)
    ext_authz: ExtAuthzConfig


@attrs.frozen(kw_only=True)
class AuthzConfig:
    """Config of ``authz`` (HTTP and network filter alike)."""

    policies: tuple[Policy, ...] = ()
    providers: tuple[Provider, ...] = ()
    """Services CUSTOM policies name."""

    def __attrs_post_init__(self) -> None:
        names = [p.name for p in self.policies]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            msg = f"policy names must be unique, {', '.join(map(repr, twice))} appear twice"
            raise ValueError(msg)
        known = {p.name for p in self.providers}
        for policy in self.policies:
            if policy.provider is not None and policy.provider not in known:
                listing = ", ".join(sorted(known)) or "none"
                msg = f"policy {policy.name!r} names provider {policy.provider!r}, which is not in providers (known: {listing})"
                raise ValueError(msg)


class _Compiled:
    """A policy ready to evaluate, with its metric."""

    __slots__ = ("counter", "matches", "name", "provider")

    def __init__(
        self, policy: Policy, *, http: bool, counter: Counter, provider: ExtAuthzClient | None
    ) -> None:
        rules = [compile_rule(rule, http=http, deny=policy.action == "DENY") for rule in policy.rules]
        self.name = policy.name
        self.counter = counter
        self.provider = provider

        def matches(a: Attributes) -> bool:
            return any(rule(a) for rule in rules)

        self.matches = matches


class Engine:
    """The policies of one filter instance, compiled; decides per request or connection."""

    def __init__(self, config: AuthzConfig, context: FilterContext, *, http: bool) -> None:
        stats, listener = context.stats, context.listener
        clients = {p.name: ExtAuthzClient(p.ext_authz, context) for p in config.providers} if http else {}
        by_action: dict[str, list[_Compiled]] = {"ALLOW": [], "DENY": [], "AUDIT": [], "CUSTOM": []}
        metric = {
            "ALLOW": "authz_allowed",
            "DENY": "authz_denied",
            "AUDIT": "authz_audited",
            "CUSTOM": "authz_custom_checked",
        }
        for policy in config.policies:
            counter = stats.counter(metric[policy.action], listener=listener, policy=policy.name)
            provider = clients.get(policy.provider) if policy.provider is not None else None
            by_action[policy.action].append(_Compiled(policy, http=http, counter=counter, provider=provider))
        self.custom = by_action["CUSTOM"]
        self.deny = by_action["DENY"]
        self.allow = by_action["ALLOW"]
        self.audit = by_action["AUDIT"]
        self.no_allow_match = stats.counter("authz_denied", listener=listener, policy=NO_ALLOW_MATCH)
        self.allowed_by_default = stats.counter("authz_allowed", listener=listener, policy=NO_ALLOW_MATCH)
        self.listener = listener

    def decide(self, a: Attributes) -> str | None:
        """The name of the policy that denies (``-``: no ALLOW match), or None if allowed.

        CUSTOM policies are not evaluated here (they need an await): see :meth:`custom_for`.
        """
        for policy in self.audit:
            if policy.matches(a):
                policy.counter.value += 1
                if a.request is not None:
                    a.request.info.metadata["authz_audit"] = policy.name
                log.info("request_audited", listener=self.listener, policy=policy.name, principal=a.principal)
        for policy in self.deny:
            if policy.matches(a):
                policy.counter.value += 1
                return policy.name
        if not self.allow:
            self.allowed_by_default.value += 1
            return None
        for policy in self.allow:
            if policy.matches(a):
                policy.counter.value += 1
                return None
        self.no_allow_match.value += 1
        return NO_ALLOW_MATCH

    def custom_for(self, a: Attributes) -> _Compiled | None:
        """The first CUSTOM policy that matches, if any."""
        for policy in self.custom:
            if policy.matches(a):
                policy.counter.value += 1
                return policy
        return None


class HttpAuthz:
    """The ``authz`` HTTP filter for one Snapshot."""

    def __init__(self, config: AuthzConfig, context: FilterContext) -> None:
        self.engine = Engine(config, context, http=True)

    async def __call__(self, request: Request, call_next: HttpHandler) -> Response:
        """Pass ``request`` on if the policies allow it, else answer 403."""
        a = Attributes(request.connection, request)
        custom = self.engine.custom_for(a) if self.engine.custom else None
        if custom is not None and custom.provider is not None:
            decision = await custom.provider.check(request)
            if not decision.allowed:
                assert decision.response is not None  # noqa: S101 - a denial carries its reply
                return decision.response
        denied = self.engine.decide(a)
        if denied is None:
            return await call_next(request)
        request.info.flags.add(ResponseFlag.RBAC_DENIED)
        log.info(
            "request_denied",
            listener=self.engine.listener,
            policy=denied,
            principal=a.principal,
            method=request.method,
            path=request.path_only,
        )
        return Response.local(403, DENIED_BODY)


class NetworkAuthz:
    """The ``authz`` network filter (L4) for one Snapshot: a denied connection is closed."""

    def __init__(self, config: AuthzConfig, context: FilterContext) -> None:
        if any(p.action == "CUSTOM" for p in config.policies):
            msg = "CUSTOM policies need HTTP: the network form of authz cannot ask an HTTP service"
            raise ValueError(msg)
        self.engine = Engine(config, context, http=False)

    async def __call__(self, conn: Connection, call_next: NetworkHandler) -> None:
        """Hand ``conn`` on if the policies allow it, else close it."""
        a = Attributes(conn)
        denied = self.engine.decide(a)
        if denied is None:
            await call_next(conn)
            return
        log.info(
            "connection_denied",
            listener=self.engine.listener,
            policy=denied,
            principal=a.principal,
            peer=conn.peer,
        )


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register the HTTP form of ``authz``."""
    return [
        meshcore.HttpFilterType(
            name="authz",
            factory=HttpAuthz,
            config=AuthzConfig,
            description="allows or denies requests by identity, request and conditions (Istio's AuthorizationPolicy)",
        )
    ]


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    """Register the network (TCP) form of ``authz``."""
    return [
        meshcore.NetworkFilterType(
            name="authz",
            factory=NetworkAuthz,
            config=AuthzConfig,
            description="allows or denies TCP connections by identity, address and port",
        )
    ]
