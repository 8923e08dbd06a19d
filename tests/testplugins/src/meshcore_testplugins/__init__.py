"""Plugins that meshcore's tests install for real, as a user installs a third-party plugin.

- ``delta_dir``: a config source that delivers a Snapshot and then deltas from a
  directory, and acknowledges each delta as a control-plane client would.
- ``header_hash``: a ring-hash load balancer keyed by a request header.
- ``peer_identity``: an HTTP filter that passes on the caller's SPIFFE ID.

They import only the public API, ``meshcore``.
"""

from __future__ import annotations

import meshcore
from meshcore_testplugins.balancing import HeaderHash, HeaderHashConfig
from meshcore_testplugins.identity import PeerIdentity, PeerIdentityConfig
from meshcore_testplugins.source import DeltaDirConfig, DeltaDirSource

__all__ = ["meshcore_config_sources", "meshcore_http_filters", "meshcore_lb_policies"]


@meshcore.hookimpl
def meshcore_config_sources() -> list[meshcore.ConfigSourceType]:
    """Register ``delta_dir``."""
    return [
        meshcore.ConfigSourceType(
            name="delta_dir",
            factory=DeltaDirSource,
            config=DeltaDirConfig,
            description="a Snapshot, then deltas, from files in a directory (for tests)",
        )
    ]


@meshcore.hookimpl
def meshcore_lb_policies() -> list[meshcore.LbPolicyType]:
    """Register ``header_hash``."""
    return [
        meshcore.LbPolicyType(
            name="header_hash",
            factory=HeaderHash,
            config=HeaderHashConfig,
            description="ring hash on a request header (for tests)",
        )
    ]


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``peer_identity``."""
    return [
        meshcore.HttpFilterType(
            name="peer_identity",
            factory=PeerIdentity,
            config=PeerIdentityConfig,
            description="passes on the caller's SPIFFE ID in a header (for tests)",
        )
    ]
