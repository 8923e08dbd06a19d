"""``control_plane``: the config source of a sidecar, whose Snapshots come from the control plane.

See :class:`meshcore.control.ControlPlaneSource`: one long-lived delivery stream, pushes
applied whole and ACKed or NACKed with the proxy's own messages, the last good Snapshot
kept while the control plane is away, jittered exponential backoff to reconnect; and the
workload certificate kept by the security work's agent (``workload_certs``), its key made
here and its CSR signed by the control plane's CA over the same stream.
"""

from __future__ import annotations

from typing import Any

import meshcore
from meshcore.control import ControlPlaneSource, ControlPlaneSourceConfig
from meshcore.plugins.workload_certs import keep_certificate


def control_plane_source(config: ControlPlaneSourceConfig, registry: Any) -> ControlPlaneSource:
    """The source, with the sidecar's certificate agent (used once the mesh asks for mTLS)."""
    return ControlPlaneSource(config, registry, keep_certificate=keep_certificate)


@meshcore.hookimpl
def meshcore_config_sources() -> list[meshcore.ConfigSourceType]:
    """Register the ``control_plane`` config source."""
    return [
        meshcore.ConfigSourceType(
            name="control_plane",
            factory=control_plane_source,
            config=ControlPlaneSourceConfig,
            description="Snapshots pushed by a meshcore control plane over one HTTP/2 stream",
        )
    ]
