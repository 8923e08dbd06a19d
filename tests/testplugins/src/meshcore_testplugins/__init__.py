"""Plugins that meshcore's tests install for real, as a user installs a third-party plugin.

- ``delta_dir``: a config source that delivers a Snapshot and then deltas from a
  directory, and acknowledges each delta as a control-plane client would.

They import only the public API, ``meshcore``.
"""

from __future__ import annotations

import meshcore
from meshcore_testplugins.source import DeltaDirConfig, DeltaDirSource

__all__ = ["meshcore_config_sources"]


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
