"""The security kinds: ``PeerAuthentication``, ``AuthorizationPolicy``, ``RequestAuthentication``.

Structured and checked with every field Istio defines (istio/api ``security/v1``). Their
meaning (mTLS modes, authorization rules, JWT validation) is given by the translators of
the security work; until one handles a kind, a resource of it is refused as not supported
yet, never silently ignored (an authorization policy that is not enforced would be worse
than none).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs

import meshcore
from meshcore import Duration, non_empty
from meshcore.plugins.istio_common import PolicySelector, PolicyTargetReference

SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


@attrs.frozen(kw_only=True)
class MutualTLS:
    """The mutual TLS mode of a workload's inbound traffic."""

    mode: MtlsMode | None = None


@attrs.frozen
class PortLevelMtls:
    """``portLevelMtls``: mTLS settings by port number (YAML keys are numbers)."""

    by_port: Mapping[int, MutualTLS] = MappingProxyType({})

    @classmethod
    def __meshcore_structure__(cls, structurer: Any, data: Any, path: Any) -> Any:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            structurer.problem(path, "must be a mapping of port numbers to mTLS settings")
            return structurer.FAILED
        out: dict[int, MutualTLS] = {}
        failed = False
        for key, value in data.items():
            try:
                port = int(key)
            except (TypeError, ValueError):
                port = 0
            if isinstance(key, bool) or not 1 <= port <= 65535:  # noqa: PLR2004 - the TCP port range
                structurer.problem((*path, str(key)), f"must be a port number from 1 to 65535, got {key!r}")
                failed = True
                continue
            item = structurer.structure_attrs(value, MutualTLS, (*path, str(key)))
            failed = failed or item is structurer.FAILED
            out[port] = item
        return structurer.FAILED if failed else cls(MappingProxyType(out))


@attrs.frozen(kw_only=True)
class PeerAuthenticationSpec:
    """How a workload's inbound traffic must be authenticated: mutual TLS or not."""

    selector: PolicySelector | None = None
    mtls: MutualTLS | None = None
    portLevelMtls: PortLevelMtls = PortLevelMtls()


@attrs.frozen(kw_only=True)
class Source:
    """Who a request comes from."""

    principals: tuple[str, ...] = ()
    notPrincipals: tuple[str, ...] = ()
    requestPrincipals: tuple[str, ...] = ()
    notRequestPrincipals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    notNamespaces: tuple[str, ...] = ()
    serviceAccounts: tuple[str, ...] = ()
    notServiceAccounts: tuple[str, ...] = ()
    ipBlocks: tuple[str, ...] = ()
    notIpBlocks: tuple[str, ...] = ()
    remoteIpBlocks: tuple[str, ...] = ()
    notRemoteIpBlocks: tuple[str, ...] = ()
    trustDomains: tuple[str, ...] = ()
    notTrustDomains: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Operation:
    """What a request asks for."""

    hosts: tuple[str, ...] = ()
    notHosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    notPorts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    notMethods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    notPaths: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RuleFrom:
    """A ``from`` clause."""

    source: Source


@attrs.frozen(kw_only=True)
class RuleTo:
    """A ``to`` clause."""

    operation: Operation


@attrs.frozen(kw_only=True)
class Condition:
    """A ``when`` condition on a request attribute."""

    key: str = attrs.field(validator=non_empty)
    values: tuple[str, ...] = ()
    notValues: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Rule:
    """Requests matching every clause given (``from``, ``to``, ``when``)."""

    from_: tuple[RuleFrom, ...] = attrs.field(default=(), metadata={"key": "from"})
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()


@attrs.frozen(kw_only=True)
class ExtensionProvider:
    """The external authorizer of a CUSTOM policy."""

    name: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class AuthorizationPolicySpec:
    """Which requests a workload allows, denies, audits or sends to an external authorizer."""

    selector: PolicySelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: tuple[PolicyTargetReference, ...] = ()
    rules: tuple[Rule, ...] = ()
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] | None = None
    provider: ExtensionProvider | None = None


@attrs.frozen(kw_only=True)
class JWTHeader:
    """A header a token is read from."""

    name: str = attrs.field(validator=non_empty)
    prefix: str = ""


@attrs.frozen(kw_only=True)
class ClaimToHeader:
    """A claim copied into a request header."""

    header: str = attrs.field(validator=non_empty)
    claim: str = attrs.field(validator=non_empty)


@attrs.frozen(kw_only=True)
class JWTRule:
    """How tokens of one issuer are found and checked."""

    issuer: str = ""
    audiences: tuple[str, ...] = ()
    jwksUri: str = ""
    jwks: str = ""
    fromHeaders: tuple[JWTHeader, ...] = ()
    fromParams: tuple[str, ...] = ()
    outputPayloadToHeader: str = ""
    fromCookies: tuple[str, ...] = ()
    forwardOriginalToken: bool = False
    outputClaimToHeaders: tuple[ClaimToHeader, ...] = ()
    timeout: Duration | None = None
    spaceDelimitedClaims: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RequestAuthenticationSpec:
    """Which request credentials (JWTs) a workload accepts."""

    selector: PolicySelector | None = None
    targetRef: PolicyTargetReference | None = None
    targetRefs: tuple[PolicyTargetReference, ...] = ()
    jwtRules: tuple[JWTRule, ...] = ()


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[meshcore.MeshKindType]:
    """Register ``PeerAuthentication``, ``AuthorizationPolicy`` and ``RequestAuthentication``."""
    return [
        meshcore.MeshKindType(
            name="PeerAuthentication",
            config=PeerAuthenticationSpec,
            api_versions=SECURITY,
            description="the mutual TLS mode of workloads' inbound traffic",
        ),
        meshcore.MeshKindType(
            name="AuthorizationPolicy",
            config=AuthorizationPolicySpec,
            api_versions=SECURITY,
            description="which requests workloads allow, deny or audit",
        ),
        meshcore.MeshKindType(
            name="RequestAuthentication",
            config=RequestAuthenticationSpec,
            api_versions=SECURITY,
            description="which JWTs workloads accept",
        ),
    ]
