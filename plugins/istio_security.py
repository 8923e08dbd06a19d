"""Istio's security resources as proxy config: AuthorizationPolicy, RequestAuthentication, PeerAuthentication.

Pure functions from a resource document (``apiVersion``, ``kind``, ``metadata``, ``spec``,
as written in Istio's manifests) to the config of the filter that enforces it, written as
in a proxy config file (plain data, validated when the Snapshot is built). The control
plane's translator calls them for the policies that select a workload; tests and users
call them to see what a manifest becomes.

A field meshcore does not support is an explicit error naming it (:class:`UnsupportedError`),
never silently dropped: a security policy that half-applies is worse than none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_MODE",
    "OPERATION_FIELDS",
    "PEER_AUTHENTICATION_MODES",
    "SOURCE_FIELDS",
    "UnsupportedError",
    "authorization_policy",
    "authz_config",
    "inbound_filter_chains",
    "jwt_authn_config",
    "peer_authentication_mode",
    "request_authentication",
]

SOURCE_FIELDS = (
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
)
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class UnsupportedError(ValueError):
    """A resource uses a field or value meshcore does not enforce."""


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def _where(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', 'resource')} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def _fields(data: Any, known: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        msg = f"{where}: must be a mapping, got {type(data).__name__}"
        raise UnsupportedError(msg)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            msg = f"{where}: field {key!r} is not supported (supported: {', '.join(known)})"
            raise UnsupportedError(msg)
        values = list(value or ())
        if key in ("ports", "notPorts"):
            values = [int(v) for v in values]
        out[_snake(key)] = values
    return out


def _rule(rule: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rule.items():
        if key == "from":
            out["from"] = [
                {
                    "source": _fields(
                        (item or {}).get("source") or {}, SOURCE_FIELDS, f"{where}.from[{i}].source"
                    )
                }
                for i, item in enumerate(value or ())
            ]
        elif key == "to":
            out["to"] = [
                {
                    "operation": _fields(
                        (item or {}).get("operation") or {}, OPERATION_FIELDS, f"{where}.to[{i}].operation"
                    )
                }
                for i, item in enumerate(value or ())
            ]
        elif key == "when":
            out["when"] = [
                {_snake(k): v for k, v in _fields_when(item, f"{where}.when[{i}]").items()}
                for i, item in enumerate(value or ())
            ]
        else:
            msg = f"{where}: field {key!r} is not supported (supported: from, to, when)"
            raise UnsupportedError(msg)
    return out


def _fields_when(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping) or set(item) - {"key", "values", "notValues"}:
        msg = f"{where}: a condition takes key, values and notValues"
        raise UnsupportedError(msg)
    return dict(item)


def authorization_policy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One ``authz`` policy (a mapping as in a config file) from an AuthorizationPolicy document.

    Its name is ``NAMESPACE/NAME``. ``selector``, ``targetRef(s)`` say which workloads it
    applies to: that is the translator's business, not part of the result.

    Raises:
        UnsupportedError: the policy uses a field or an action meshcore does not enforce.
    """
    where = _where(doc)
    spec = doc.get("spec") or {}
    meta = doc.get("metadata") or {}
    name = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
    action = spec.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY", "AUDIT", "CUSTOM"):
        msg = f"{where}: action {action!r} is not one of ALLOW, DENY, AUDIT, CUSTOM"
        raise UnsupportedError(msg)
    extra = set(spec) - {"action", "rules", "provider", "selector", "targetRef", "targetRefs"}
    if extra:
        msg = f"{where}: field {min(extra)!r} is not supported"
        raise UnsupportedError(msg)
    policy: dict[str, Any] = {
        "name": name,
        "action": action,
        "rules": [_rule(rule or {}, f"{where}.rules[{i}]") for i, rule in enumerate(spec.get("rules") or ())],
    }
    if action == "CUSTOM":
        provider = (spec.get("provider") or {}).get("name")
        if not provider:
            msg = f"{where}: a CUSTOM policy needs provider.name"
            raise UnsupportedError(msg)
        policy["provider"] = provider
    return policy


def authz_config(
    docs: Sequence[Mapping[str, Any]], providers: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The config of an ``authz`` filter enforcing AuthorizationPolicy ``docs``.

    Args:
        docs: the policies that apply to one workload.
        providers: ``ext_authz`` configs by provider name, for CUSTOM policies (Istio's
            ``extensionProviders`` of the mesh config).
    """
    policies = [authorization_policy(doc) for doc in docs]
    used = {p["provider"] for p in policies if "provider" in p}
    known = providers or {}
    missing = sorted(used - set(known))
    if missing:
        msg = f"CUSTOM policies name unknown provider(s) {', '.join(missing)}"
        raise UnsupportedError(msg)
    return {
        "policies": policies,
        "providers": [{"name": name, "ext_authz": dict(known[name])} for name in sorted(used)],
    }


def request_authentication(
    doc: Mapping[str, Any], *, jwks_clusters: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """``jwt_authn`` providers from a RequestAuthentication document (one per ``jwtRules`` entry).

    Args:
        doc: the resource.
        jwks_clusters: for a rule with ``jwksUri``, the cluster serving that URI, by URI
            (the translator makes one per JWKS host); without it, only inline ``jwks`` works.
    """
    where = _where(doc)
    out = []
    for i, rule in enumerate((doc.get("spec") or {}).get("jwtRules") or ()):
        here = f"{where}.jwtRules[{i}]"
        extra = set(rule) - {
            "issuer",
            "audiences",
            "jwks",
            "jwksUri",
            "fromHeaders",
            "fromParams",
            "forwardOriginalToken",
            "outputClaimToHeaders",
        }
        if extra:
            msg = f"{here}: field {min(extra)!r} is not supported"
            raise UnsupportedError(msg)
        provider: dict[str, Any] = {
            "issuer": rule["issuer"],
            "audiences": list(rule.get("audiences") or ()),
            "forward": bool(rule.get("forwardOriginalToken", False)),
            "from_headers": [
                {"name": h["name"], "prefix": h.get("prefix", "")} for h in rule.get("fromHeaders") or ()
            ],
            "from_params": list(rule.get("fromParams") or ()),
            "claim_to_headers": [
                {"header": h["header"], "claim": h["claim"]} for h in rule.get("outputClaimToHeaders") or ()
            ],
        }
        if "jwks" in rule:
            provider["jwks"] = rule["jwks"]
        elif "jwksUri" in rule:
            uri = rule["jwksUri"]
            cluster = (jwks_clusters or {}).get(uri)
            if cluster is None:
                msg = f"{here}: no cluster serves jwksUri {uri!r}"
                raise UnsupportedError(msg)
            path = "/" + uri.split("://", 1)[-1].partition("/")[2]
            host = uri.split("://", 1)[-1].partition("/")[0]
            provider["remote_jwks"] = {"cluster": cluster, "path": path, "authority": host}
        else:
            msg = f"{here}: needs jwks or jwksUri"
            raise UnsupportedError(msg)
        out.append(provider)
    return out


def jwt_authn_config(docs: Sequence[Mapping[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """The config of a ``jwt_authn`` filter enforcing RequestAuthentication ``docs``."""
    providers = [p for doc in docs for p in request_authentication(doc, **kwargs)]
    return {"providers": providers}


# -- PeerAuthentication ----------------------------------------------------------------------

PEER_AUTHENTICATION_MODES = ("STRICT", "PERMISSIVE", "DISABLE")
DEFAULT_MODE = "PERMISSIVE"
"""Istio's mode where no PeerAuthentication says otherwise."""


def _selects(doc: Mapping[str, Any], labels: Mapping[str, str]) -> bool | None:
    """True if ``doc`` selects a workload with ``labels``, False if not, None if it has no selector."""
    selector = ((doc.get("spec") or {}).get("selector") or {}).get("matchLabels")
    if not selector:
        return None
    return all(labels.get(k) == v for k, v in selector.items())


def _mode(spec_mtls: Any, where: str) -> str | None:
    mode = (spec_mtls or {}).get("mode", "UNSET")
    if mode == "UNSET":
        return None
    if mode not in PEER_AUTHENTICATION_MODES:
        msg = f"{where}: mtls.mode {mode!r} is not one of STRICT, PERMISSIVE, DISABLE, UNSET"
        raise UnsupportedError(msg)
    return str(mode)


def peer_authentication_mode(
    docs: Sequence[Mapping[str, Any]],
    *,
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root_namespace: str = "istio-system",
) -> str:
    """The mTLS mode of one workload's port under PeerAuthentication ``docs`` (Istio's precedence).

    The most specific wins: a policy selecting the workload (its ``portLevelMtls`` for the
    port, then its ``mtls``), then the namespace's policy without a selector, then the
    mesh-wide one (in ``root_namespace``); ``UNSET`` defers to the next; PERMISSIVE if none
    says anything.
    """
    workload: list[tuple[str, Mapping[str, Any]]] = []
    namespace_wide: list[tuple[str, Mapping[str, Any]]] = []
    mesh_wide: list[tuple[str, Mapping[str, Any]]] = []
    for doc in docs:
        meta = doc.get("metadata") or {}
        doc_ns = meta.get("namespace", "default")
        selected = _selects(doc, labels)
        if doc_ns == namespace and selected:
            workload.append((_where(doc), doc))
        elif doc_ns == namespace and selected is None:
            namespace_wide.append((_where(doc), doc))
        elif doc_ns == root_namespace and selected is None:
            mesh_wide.append((_where(doc), doc))
    for where, doc in workload:
        spec = doc.get("spec") or {}
        ports = spec.get("portLevelMtls") or {}
        found = _mode(ports.get(str(port)) or ports.get(port), f"{where}.portLevelMtls[{port}]")
        if found is not None:
            return found
    for group in (workload, namespace_wide, mesh_wide):
        for where, doc in group:
            found = _mode((doc.get("spec") or {}).get("mtls"), f"{where}.mtls")
            if found is not None:
                return found
    return DEFAULT_MODE


def inbound_filter_chains(
    mode: str, tls: Mapping[str, Any], filters: Sequence[Any], *, name: str = "inbound"
) -> list[dict[str, Any]]:
    """The filter chains of an inbound listener in ``mode``.

    Args:
        mode: STRICT (mTLS only), PERMISSIVE (mTLS and plaintext on the port, told apart by
            the first byte), DISABLE (plaintext only).
        tls: the ``tls`` section of the workload's certificate (its ``client_ca_file`` or
            ``validation_secret`` the trust bundle); client certificates are required.
        filters: the network filters of every chain.
        name: the chains' name prefix.
    """
    if mode not in PEER_AUTHENTICATION_MODES:
        msg = f"mode {mode!r} is not one of STRICT, PERMISSIVE, DISABLE"
        raise UnsupportedError(msg)
    mtls = {
        "name": f"{name}-mtls",
        "tls": {**tls, "require_client_certificate": True},
        "filters": list(filters),
    }
    plaintext = {"name": f"{name}-plaintext", "filters": list(filters)}
    chains: dict[str, list[dict[str, Any]]] = {
        "STRICT": [mtls],
        "PERMISSIVE": [mtls, plaintext],
        "DISABLE": [plaintext],
    }
    return chains[mode]
