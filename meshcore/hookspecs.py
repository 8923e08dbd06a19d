"""The hook specifications of meshcore, grouped by phase.

Every hook is synchronous and runs at startup or when a Snapshot is built, never per
request: the objects they return may have async methods. None is ``firstresult``: every
plugin's answer is collected, attributed to that plugin, and a name provided twice is an
error naming both plugins.

A plugin implements them with ``@meshcore.hookimpl`` in a module registered under the
``meshcore`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from meshcore.plugin import hookspec

if TYPE_CHECKING:
    from meshcore.config import Snapshot
    from meshcore.errors import ConfigProblem
    from meshcore.plugin import (
        CertificateAuthorityType,
        ConfigSourceType,
        DiscoveryType,
        HealthCheckerType,
        HttpFilterType,
        LbPolicyType,
        MeshAnalyzerType,
        MeshKindType,
        NetworkFilterType,
        TranslatorType,
    )

__all__ = [
    "meshcore_certificate_authorities",
    "meshcore_config_sources",
    "meshcore_health_checkers",
    "meshcore_http_filters",
    "meshcore_lb_policies",
    "meshcore_mesh_analyzers",
    "meshcore_mesh_discovery",
    "meshcore_mesh_kinds",
    "meshcore_mesh_translators",
    "meshcore_network_filters",
    "meshcore_snapshot_applied",
    "meshcore_validate_snapshot",
]


# -- registration: called once when the registry is built ------------------------------------


@hookspec
def meshcore_network_filters() -> Sequence[NetworkFilterType]:
    """Return the L4 (network) filter types this plugin provides.

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_http_filters() -> Sequence[HttpFilterType]:
    """Return the L7 (HTTP) filter types this plugin provides.

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_lb_policies() -> Sequence[LbPolicyType]:
    """Return the load-balancing policies this plugin provides.

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_health_checkers() -> Sequence[HealthCheckerType]:
    """Return the active health checkers this plugin provides (``http``, ``tcp``, ``grpc``, ...).

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_config_sources() -> Sequence[ConfigSourceType]:
    """Return the config sources this plugin provides (``file``, a control-plane client, ...).

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_certificate_authorities() -> Sequence[CertificateAuthorityType]:
    """Return the certificate authorities this plugin provides (the built-in CA, an external one).

    Called once when the registry is built. Each name must be unique across all plugins.
    The control plane's ``ca:`` config names the one it signs workload certificates with.
    """
    raise NotImplementedError


# -- control plane: called once when the registry is built ----------------------------------


@hookspec
def meshcore_mesh_kinds() -> Sequence[MeshKindType]:
    """Return the kinds of mesh resources this plugin provides (``VirtualService``, ...).

    Called once when the registry is built. Each kind must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_mesh_translators() -> Sequence[TranslatorType]:
    """Return the translators this plugin provides (mesh model + one proxy -> its Snapshot).

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_mesh_discovery() -> Sequence[DiscoveryType]:
    """Return the discovery backends this plugin provides (``static``, ``dns``, ...).

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


@hookspec
def meshcore_mesh_analyzers() -> Sequence[MeshAnalyzerType]:
    """Return the mesh analyzers this plugin provides (``meshcore analyze``, edit checks).

    Called once when the registry is built. Each name must be unique across all plugins.
    """
    raise NotImplementedError


# -- config: called when a Snapshot is built or applied --------------------------------------


@hookspec
def meshcore_validate_snapshot(snapshot: Snapshot) -> Sequence[str | ConfigProblem]:
    """Check a structured Snapshot beyond its fields; return one problem per thing wrong.

    Called by ``meshcore validate`` and before every apply, once the Snapshot has been
    structured. Any problem rejects the Snapshot (the last good one keeps serving). A
    :class:`~meshcore.ConfigProblem` names the field path (``ConfigProblem(path=
    "clusters[0].endpoints", message="...")``), and ``meshcore validate`` shows its line; a
    plain string is shown as it is, with the plugin's name. Return an empty sequence when
    all is well.
    """
    raise NotImplementedError


@hookspec
def meshcore_snapshot_applied(snapshot: Snapshot) -> None:
    """Observe a Snapshot that the proxy applies (for metrics, caches, audit).

    Called once the Snapshot is checked and built, right before it goes live (nothing can
    fail after). A hook that raises rejects the Snapshot, with an error naming its plugin;
    the hooks of plugins called before it have then seen a Snapshot that did not go live.
    The return value is ignored.
    """
    raise NotImplementedError
