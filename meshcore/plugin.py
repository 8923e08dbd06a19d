"""What a plugin provides: typed descriptors returned from the ``meshcore_*`` hooks.

A plugin module implements hooks (see :mod:`meshcore.hookspecs`) that return these
descriptors. Each names a thing users write in config, the attrs class that structures
its config section, and the factory that builds it once per Snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pluggy

__all__ = [
    "CertificateAuthorityType",
    "ConfigSourceType",
    "HttpFilterType",
    "LbPolicyType",
    "NetworkFilterType",
    "PluginType",
    "hookimpl",
    "hookspec",
]

PROJECT = "meshcore"
hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks a hook specification (used by :mod:`meshcore.hookspecs`)."""
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a hook implementation in a plugin: ``@meshcore.hookimpl``."""


@attrs.frozen(kw_only=True)
class PluginType:
    """Common shape of every descriptor.

    Attributes:
        name: the name users write in config.
        factory: builds the thing from its structured config (called once per Snapshot).
        config: the attrs class that structures its config section (None: takes no config).
        description: one line for ``meshcore plugins`` and the docs.
    """

    kind: ClassVar[str] = ""
    name: str
    factory: Callable[..., Any]
    config: type | None = None
    description: str = ""


@attrs.frozen(kw_only=True)
class NetworkFilterType(PluginType):
    """An L4 filter: ``factory(config, context)`` returns ``async (conn, call_next)``.

    Attributes:
        ends_chain: True for a filter that ends a chain (tcp_proxy, http_connection_manager).
    """

    kind: ClassVar[str] = "network_filter"
    ends_chain: bool = False


@attrs.frozen(kw_only=True)
class HttpFilterType(PluginType):
    """An L7 filter: ``factory(config, context)`` returns ``async (request, call_next) -> Response``.

    Attributes:
        route_config: the class of its per-route override (None: the same as ``config``).
        ends_chain: True for the filter that ends the chain (router).
    """

    kind: ClassVar[str] = "http_filter"
    route_config: type | None = None
    ends_chain: bool = False


@attrs.frozen(kw_only=True)
class LbPolicyType(PluginType):
    """A load-balancing policy: ``factory(config)`` returns a picker.

    The picker's ``pick(hosts, request, /)`` returns one of ``hosts`` (healthy, never
    empty; each has ``weight``, ``active_requests``, ``address``) for ``request``: the
    ``Request`` of an HTTP exchange, the ``Connection`` of a TCP one, or None.
    """

    kind: ClassVar[str] = "lb_policy"


@attrs.frozen(kw_only=True)
class ConfigSourceType(PluginType):
    """A config source: ``factory(config, registry)`` returns a source of Snapshots.

    The object it returns yields Snapshots from its ``async run``.
    """

    kind: ClassVar[str] = "config_source"


@attrs.frozen(kw_only=True)
class CertificateAuthorityType(PluginType):
    """A certificate authority: ``factory(config)`` returns a signer of workload certificates.

    What it returns has ``sign(csr_pem: bytes, spiffe_id: str)`` (a signed certificate with
    ``certificate_chain``, ``trusted_ca`` and ``not_after``) and ``trust_bundle() -> str``:
    the control plane's ``Signer`` protocol. The control plane calls it when a sidecar
    sends a CSR; an external CA (Vault, a cloud CA) plugs in here.
    """

    kind: ClassVar[str] = "certificate_authority"
