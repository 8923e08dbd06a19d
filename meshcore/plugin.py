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
    "DiscoveryType",
    "HealthCheckerType",
    "HttpFilterType",
    "LbPolicyType",
    "MeshAnalyzerType",
    "MeshKindType",
    "NetworkFilterType",
    "PluginType",
    "TranslatorType",
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


# -- control plane ----------------------------------------------------------------------------


def _spec_as_is(spec: Any) -> Any:
    return spec


@attrs.frozen(kw_only=True)
class MeshKindType(PluginType):
    """A kind of mesh resource (``VirtualService``, ...): ``config`` structures its ``spec``.

    ``name`` is the kind as documents write it. ``factory`` is not called by meshcore (a
    kind is data); checks beyond one field belong in the spec class's ``__attrs_post_init__``.

    Attributes:
        api_versions: the ``apiVersion`` values a document of this kind may give, the
            preferred one first (``networking.istio.io/v1``, ...).
    """

    kind: ClassVar[str] = "mesh_kind"
    factory: Callable[..., Any] = _spec_as_is
    api_versions: tuple[str, ...]


@attrs.frozen(kw_only=True)
class TranslatorType(PluginType):
    """A translator: ``factory(context)`` adds to one proxy's Snapshot under construction.

    Translators run in ``order`` (lowest first; the built-in ones use 100 to 500), each one
    given the same :class:`meshcore.control.TranslationContext`. They must be pure: no I/O.

    Attributes:
        order: when it runs relative to the others.
        handles: the fields of mesh resources this translator gives meaning to, as
            ``Kind.field.subfield`` (``VirtualService.http.retries``) or a whole kind
            (``AuthorizationPolicy``). A field that a resource sets and that no translator
            handles is refused as "not supported by meshcore yet", never silently ignored.
    """

    kind: ClassVar[str] = "translator"
    order: int = 1000
    handles: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class DiscoveryType(PluginType):
    """A discovery backend: ``factory(config)`` returns a :class:`meshcore.control.Discovery`.

    It feeds services, workloads and endpoints into the mesh model (``static`` from
    ServiceEntry and WorkloadEntry resources, ``dns``, a third party's registry).

    Attributes:
        handles: the fields of mesh resources it gives meaning to, as for translators.
    """

    kind: ClassVar[str] = "discovery"
    handles: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class MeshAnalyzerType(PluginType):
    """A mesh analyzer: ``factory(model)`` returns the :class:`meshcore.control.Finding` list.

    Attributes:
        codes: the stable codes it reports (``MC0001``, ...), each documented.
    """

    kind: ClassVar[str] = "mesh_analyzer"
    codes: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class HealthCheckerType(PluginType):
    """An active health checker: ``factory(config)`` returns a checker.

    The checker's ``async check(host) -> bool`` probes one endpoint (``host.address``,
    ``await host.connect()`` for a transport with the cluster's TLS) and says whether it is
    healthy; raising counts as a failure. The runtime calls it on the cluster's interval,
    bounded by its timeout, and applies the healthy and unhealthy thresholds.
    """

    kind: ClassVar[str] = "health_checker"
