"""The rules of the ``authz`` filter (see :mod:`meshcore.filters.authz_model`), compiled once per Snapshot.

An ``AuthorizationPolicy``'s ``rules`` read the same here, field names in snake case
(``notPaths`` is ``not_paths``). A rule matches when each of its parts does: ``from``
(any of its sources), ``to`` (any of its operations), ``when`` (every condition). Within
a source or an operation every field given must match (a field matches when any of its
values does; a ``not_*`` field when none does). Values match exactly, by prefix
(``/api/*``), by suffix (``*.html``), or by presence (``*``). A principal is written as
Istio writes it, ``cluster.local/ns/NS/sa/SA`` (``spiffe://`` in front is accepted too).

Compiled into plain predicates over :class:`Attributes`, what one request (or, for the
L4 form, one connection) says about itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from meshcore import Connection, Request
from meshcore.filters.authz_model import (
    CLAIM_KEY,
    CONNECTION_KEYS,
    HEADER_KEY,
    Condition,
    From,
    Operation,
    Rule,
    Source,
    To,
)

__all__ = [
    "Attributes",
    "Condition",
    "From",
    "Operation",
    "Rule",
    "Source",
    "To",
    "compile_rule",
]

SPIFFE: Final = "spiffe://"
_IP_KEYS: Final = frozenset({"source.ip", "remote.ip", "destination.ip"})


# -- what a request says about itself ------------------------------------------------------


class Attributes:
    """The attributes rules look at, taken from one request or one connection.

    Attributes:
        principal: the peer's identity in Istio's form (no ``spiffe://``), or None.
        namespace: the namespace of that identity, or None.
        source_ip: the peer's address.
        remote_ip: the client's address as trusted ``x-forwarded-for`` hops tell it.
        destination_ip: the local address the connection came in on.
        port: the local port.
        sni: the TLS server name, or None.
        request: the request (None for a connection).
        jwt: what jwt_authn verified (``request.info.metadata["jwt"]``), or None.
    """

    __slots__ = (
        "destination_ip",
        "jwt",
        "namespace",
        "port",
        "principal",
        "remote_ip",
        "request",
        "sni",
        "source_ip",
    )

    def __init__(self, conn: Connection | None, request: Request | None = None) -> None:
        principal = conn.peer_principal if conn is not None else None
        self.principal = principal[len(SPIFFE) :] if principal is not None else None
        parts = self.principal.split("/") if self.principal is not None else []
        self.namespace = parts[2] if len(parts) >= 3 and parts[1] == "ns" else None  # noqa: PLR2004 - TD/ns/NS
        self.source_ip = conn.peer_host if conn is not None else ""
        self.destination_ip = conn.local.rpartition(":")[0].strip("[]") if conn is not None else ""
        self.port = conn.local_port if conn is not None else 0
        self.sni = conn.server_name if conn is not None else None
        self.request = request
        self.remote_ip = self.source_ip
        self.jwt: Mapping[str, Any] | None = None
        if request is not None:
            metadata = request.info.metadata
            self.remote_ip = metadata.get("remote_address") or self.source_ip
            self.jwt = metadata.get("jwt")


Predicate = Callable[[Attributes], bool]


def _strings(patterns: Sequence[str], *, lower: bool = False) -> Callable[[str | None], bool]:
    """Whether a value matches any pattern: exact, ``prefix*``, ``*suffix``, or ``*`` (present)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    anything = False
    for raw in patterns:
        pattern = raw.lower() if lower else raw
        if pattern == "*":
            anything = True
        elif pattern.endswith("*"):
            prefixes.append(pattern[:-1])
        elif pattern.startswith("*"):
            suffixes.append(pattern[1:])
        else:
            exact.add(pattern)
    prefix_t, suffix_t = tuple(prefixes), tuple(suffixes)

    def matches(value: str | None) -> bool:
        if value is None:
            return False
        if lower:
            value = value.lower()
        return (
            (anything and value != "")
            or value in exact
            or bool(prefix_t and value.startswith(prefix_t))
            or bool(suffix_t and value.endswith(suffix_t))
        )

    return matches


def _networks(blocks: Sequence[str]) -> Callable[[str | None], bool]:
    networks = [ipaddress.ip_network(b, strict=False) for b in blocks]

    def matches(value: str | None) -> bool:
        if not value:
            return False
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(address in net for net in networks)

    return matches


def _principal_patterns(values: Sequence[str]) -> list[str]:
    return [v.removeprefix(SPIFFE) for v in values]


def _field(
    checks: list[Predicate],
    values: Sequence[Any],
    negated: Sequence[Any],
    get: Callable[[Attributes], Any],
    make: Callable[[Sequence[Any]], Callable[[Any], bool]],
) -> None:
    """Add the checks of a field and its ``not_*`` twin to ``checks``."""
    if values:
        matches = make(values)
        checks.append(lambda a: matches(get(a)))
    if negated:
        excluded = make(negated)
        checks.append(lambda a: not excluded(get(a)))


def _request_principal(a: Attributes) -> str | None:
    return a.jwt.get("principal") if a.jwt else None


def _host_matcher(patterns: Sequence[str]) -> Callable[[Any], bool]:
    matches = _strings(patterns, lower=True)

    def host_matches(request: Request | None) -> bool:
        if request is None:
            return False
        return matches(request.authority) or matches(request.host)

    return host_matches


def _compile_source(source: Source, *, http: bool) -> list[Predicate]:
    checks: list[Predicate] = []
    _field(
        checks,
        _principal_patterns(source.principals),
        _principal_patterns(source.not_principals),
        lambda a: a.principal,
        _strings,
    )
    _field(checks, source.namespaces, source.not_namespaces, lambda a: a.namespace, _strings)
    _field(checks, source.ip_blocks, source.not_ip_blocks, lambda a: a.source_ip, _networks)
    _field(checks, source.remote_ip_blocks, source.not_remote_ip_blocks, lambda a: a.remote_ip, _networks)
    if http:
        _field(checks, source.request_principals, source.not_request_principals, _request_principal, _strings)
    return checks


def _ports(ports: Sequence[int]) -> Callable[[Any], bool]:
    wanted = frozenset(ports)
    return lambda port: port in wanted


def _compile_operation(operation: Operation, *, http: bool) -> list[Predicate]:
    checks: list[Predicate] = []
    _field(checks, operation.ports, operation.not_ports, lambda a: a.port, _ports)
    if http:
        _field(checks, operation.hosts, operation.not_hosts, lambda a: a.request, _host_matcher)
        _field(
            checks,
            operation.methods,
            operation.not_methods,
            lambda a: a.request and a.request.method,
            _strings,
        )
        _field(
            checks,
            operation.paths,
            operation.not_paths,
            lambda a: a.request and a.request.path_only,
            _strings,
        )
    return checks


def _claim(jwt: Mapping[str, Any] | None, names: list[str]) -> list[str]:
    """The values of a (nested) claim as strings; a list claim gives each of its items."""
    value: Any = jwt.get("claims") if jwt else None
    for name in names:
        value = value.get(name) if isinstance(value, Mapping) else None
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [
        item if isinstance(item, str) else str(item).lower() if isinstance(item, bool) else str(item)
        for item in items
    ]


def _condition_values(key: str) -> Callable[[Attributes], list[str]]:
    header = HEADER_KEY.match(key)
    if header is not None:
        name = header.group(1).lower()
        return lambda a: a.request.headers.get_all(name) if a.request is not None else []
    claim = CLAIM_KEY.match(key)
    if claim is not None:
        names = re.findall(r"\[([^\[\]]+)\]", claim.group(1))
        return lambda a: _claim(a.jwt, names)
    simple: Mapping[str, Callable[[Attributes], Any]] = {
        "source.ip": lambda a: a.source_ip,
        "remote.ip": lambda a: a.remote_ip,
        "destination.ip": lambda a: a.destination_ip,
        "source.namespace": lambda a: a.namespace,
        "source.principal": lambda a: a.principal,
        "destination.port": lambda a: str(a.port),
        "connection.sni": lambda a: a.sni,
        "request.auth.principal": _request_principal,
        "request.auth.presenter": lambda a: a.jwt.get("presenter") if a.jwt else None,
    }
    if key == "request.auth.audiences":
        return lambda a: list(a.jwt.get("audiences", ())) if a.jwt else []
    get = simple[key]

    def values(a: Attributes) -> list[str]:
        value = get(a)
        return [] if value is None else [value]

    return values


def _compile_condition(condition: Condition) -> Predicate:
    key = condition.key
    get = _condition_values(key)
    make = _networks if key in _IP_KEYS else _strings
    if key == "source.principal":
        make = lambda values: _strings(_principal_patterns(values))  # noqa: E731 - a one-line adapter
    wanted = make(condition.values) if condition.values else None
    excluded = make(condition.not_values) if condition.not_values else None

    def holds(a: Attributes) -> bool:
        found = get(a)
        if wanted is not None and not any(wanted(v) for v in found):
            return False
        return excluded is None or not any(excluded(v) for v in found)

    return holds


def _http_only(rule: Rule) -> bool:
    """Whether a rule says something only an HTTP request can tell (for the L4 form)."""
    for source in (f.source for f in rule.from_):
        if source.request_principals or source.not_request_principals:
            return True
    for op in (t.operation for t in rule.to):
        if op.hosts or op.not_hosts or op.methods or op.not_methods or op.paths or op.not_paths:
            return True
    return any(c.key not in CONNECTION_KEYS for c in rule.when)


def compile_rule(rule: Rule, *, http: bool = True, deny: bool = False) -> Predicate:
    """``rule`` as one predicate.

    For a TCP connection (``http=False``) a rule that needs HTTP fields is as Istio treats
    it: in an ALLOW policy it never matches; in a DENY policy its HTTP fields are dropped,
    so it matches more (denying too much is the safe side).
    """
    if not http and _http_only(rule) and not deny:
        return lambda _a: False
    sources = [_compile_source(f.source, http=http) for f in rule.from_]
    operations = [_compile_operation(t.operation, http=http) for t in rule.to]
    conditions = [_compile_condition(c) for c in rule.when if http or c.key in CONNECTION_KEYS]

    def any_of(groups: list[list[Predicate]], a: Attributes) -> bool:
        return not groups or any(all(check(a) for check in group) for group in groups)

    def matches(a: Attributes) -> bool:
        return any_of(sources, a) and any_of(operations, a) and all(check(a) for check in conditions)

    return matches
