"""The rules of the ``authz`` filter as config: Istio's ``Rule``, ``Source``, ``Operation``, ``Condition``.

Field names are Istio's in snake case (``notPaths`` is ``not_paths``); what they match is
described in :mod:`meshcore.filters.authz_rules`, which compiles them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = [
    "CLAIM_KEY",
    "CONNECTION_KEYS",
    "HEADER_KEY",
    "SIMPLE_KEYS",
    "Condition",
    "From",
    "Operation",
    "Rule",
    "Source",
    "To",
]

CLAIM_KEY: Final = re.compile(r"^request\.auth\.claims((?:\[[^\[\]]+\])+)$")
HEADER_KEY: Final = re.compile(r"^request\.headers\[([^\[\]]+)\]$")
SIMPLE_KEYS: Final = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
CONNECTION_KEYS: Final = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
"""Condition keys a TCP connection can answer (the others need an HTTP request)."""


def _cidrs(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            msg = f"{attribute.name} must hold IP addresses or CIDR blocks, got {item!r}"
            raise ValueError(msg) from None


def _no_templates(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    for item in value:
        if "{" in item:
            msg = f"{attribute.name}: path templates ({item!r}) are not supported; use a '*' prefix or suffix"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Source:
    """Who the request comes from (Istio's ``Source``)."""

    principals: tuple[str, ...] = ()
    """Peer identities from mTLS, ``cluster.local/ns/NS/sa/SA``; ``*``: any authenticated peer."""
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    """Request identities from a verified JWT, ``ISSUER/SUBJECT``; ``*``: any."""
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    """Namespaces of the peer's identity (mTLS)."""
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_cidrs)
    """The peer's address: IP addresses or CIDR blocks."""
    not_ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_cidrs)
    remote_ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_cidrs)
    """The client's address as ``x-forwarded-for`` tells it (trusted hops counted)."""
    not_remote_ip_blocks: tuple[str, ...] = attrs.field(default=(), validator=_cidrs)


@attrs.frozen(kw_only=True)
class Operation:
    """What the request asks for (Istio's ``Operation``)."""

    hosts: tuple[str, ...] = ()
    """Host or :authority, case-insensitive, with or without the port."""
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    """The local port the connection came in on."""
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = attrs.field(default=(), validator=_no_templates)
    """The normalised path, without its query string."""
    not_paths: tuple[str, ...] = attrs.field(default=(), validator=_no_templates)


@attrs.frozen(kw_only=True)
class From:
    """One entry of a rule's ``from``."""

    source: Source = Source()


@attrs.frozen(kw_only=True)
class To:
    """One entry of a rule's ``to``."""

    operation: Operation = Operation()


def _condition_key(_instance: Any, _attribute: attrs.Attribute[Any], key: str) -> None:
    if key in SIMPLE_KEYS or HEADER_KEY.match(key) or CLAIM_KEY.match(key):
        return
    known = ", ".join(sorted(SIMPLE_KEYS))
    msg = f"unsupported condition key {key!r} (known: request.headers[NAME], request.auth.claims[NAME], {known})"
    raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Condition:
    """One entry of a rule's ``when``: an attribute and the values it must (not) have."""

    key: str = attrs.field(validator=_condition_key)
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.values and not self.not_values:
            msg = f"condition {self.key!r} needs values or not_values"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Rule:
    """A rule: ``from``, ``to`` and ``when``; an empty rule matches every request."""

    from_: tuple[From, ...] = ()
    """Sources (written ``from``): any may match."""
    to: tuple[To, ...] = ()
    """Operations: any may match."""
    when: tuple[Condition, ...] = ()
    """Conditions: all must hold."""

    @classmethod
    def __meshcore_structure__(cls, structurer: Any, data: Any, path: Any) -> Any:
        if isinstance(data, Mapping) and "from" in data:
            data = {("from_" if key == "from" else key): value for key, value in data.items()}
        return structurer.structure_attrs(data, cls, path)
