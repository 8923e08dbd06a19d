"""``control_plane``: the config source of a sidecar, whose Snapshots come from the control plane.

See :class:`meshcore.control.ControlPlaneSource`: one long-lived delivery stream, pushes
applied whole and ACKed or NACKed with the proxy's own messages, the last good Snapshot
kept while the control plane is away, jittered exponential backoff to reconnect.
"""

from __future__ import annotations

import meshcore
from meshcore.control import ControlPlaneSource, ControlPlaneSourceConfig


@meshcore.hookimpl
def meshcore_config_sources() -> list[meshcore.ConfigSourceType]:
    """Register the ``control_plane`` config source."""
    return [
        meshcore.ConfigSourceType(
            name="control_plane",
            factory=ControlPlaneSource,
            config=ControlPlaneSourceConfig,
            description="Snapshots pushed by a meshcore control plane over one HTTP/2 stream",
        )
    ]
