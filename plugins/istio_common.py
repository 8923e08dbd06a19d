"""Message types that several Istio kinds share: string matches, selectors, percentages.

Field names are Istio's own, camelCase as Istio's YAML writes them, so that a manifest
written for Istio structures here unchanged (see istio/api, ``networking/v1``,
``security/v1``, ``type/v1beta1``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from meshcore import at_least, at_most, non_empty, regex

EMPTY: Mapping[str, Any] = MappingProxyType({})

PROTOCOLS = ("HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS")
"""The port protocols Istio names (case-insensitive in documents)."""


def port_number(_instance: Any, _attribute: Any, value: int) -> None:
    """A TCP port: 1..65535."""
    if not 1 <= value <= 65535:  # noqa: PLR2004 - the TCP port range
        msg = f"must be a port number from 1 to 65535, got {value!r}"
        raise ValueError(msg)


def optional_port_number(_instance: Any, _attribute: Any, value: int) -> None:
    """A TCP port, or 0 for unset (proto3's default)."""
    if value != 0:
        port_number(_instance, _attribute, value)


def protocol(_instance: Any, _attribute: Any, value: str) -> None:
    """One of Istio's port protocols (any case), or "" for unset."""
    if value and value.upper() not in PROTOCOLS:
        msg = f"must be one of {', '.join(PROTOCOLS)}, got {value!r}"
        raise ValueError(msg)


_HOST = re.compile(
    r"^(\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*)$"
)


def host_name(_instance: Any, _attribute: Any, value: str) -> None:
    """A DNS name, optionally with a ``*.`` wildcard prefix, or ``*``."""
    if not _HOST.match(value):
        msg = f'must be a host name such as "reviews.default.svc.cluster.local" or "*.example.com", got {value!r}'
        raise ValueError(msg)


def host_names(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    """Every item a host name."""
    for item in value:
        host_name(_instance, _attribute, item)


def export_to(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    """``.`` (this namespace), ``*`` (every namespace) or namespace names."""
    for item in value:
        if item not in (".", "*") and not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", item):
            msg = f'must be ".", "*" or namespace names, got {item!r}'
            raise ValueError(msg)
    if "*" in value and len(value) > 1:
        msg = '"*" already exports to every namespace; list nothing else with it'
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class StringMatch:
    """How to match a string: exactly one of ``exact``, ``prefix``, ``regex`` (RE2-like)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = attrs.field(default=None, validator=regex)

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            msg = f"needs exactly one of exact, prefix, regex; got {got}"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class Percent:
    """A percentage, 0 to 100 (fractions allowed: 0.1 is one request in a thousand)."""

    value: float = attrs.field(validator=[at_least(0), at_most(100)])


@attrs.frozen(kw_only=True)
class PortSelector:
    """A port of a service, by number."""

    number: int = attrs.field(default=0, validator=optional_port_number)


@attrs.frozen(kw_only=True)
class WorkloadSelector:
    """Workloads by labels (networking's selector: ``labels``)."""

    labels: Mapping[str, str] = EMPTY


@attrs.frozen(kw_only=True)
class PolicySelector:
    """Workloads by labels (the security and telemetry kinds' selector: ``matchLabels``)."""

    matchLabels: Mapping[str, str] = EMPTY


@attrs.frozen(kw_only=True)
class PolicyTargetReference:
    """A Kubernetes resource a policy attaches to (a Gateway, a Service)."""

    group: str = ""
    kind: str = attrs.field(validator=non_empty)
    name: str = attrs.field(validator=non_empty)
    namespace: str = ""


def label_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` carry every label of ``selector`` (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())
