"""``file``: the simplest config source, a YAML, TOML or JSON file on disk."""

from __future__ import annotations

from typing import Any

import attrs

import meshcore
from meshcore import non_empty


@attrs.frozen(kw_only=True)
class FileSourceConfig:
    """Config of the ``file`` source."""

    path: str = attrs.field(validator=non_empty)


def _factory(config: FileSourceConfig, registry: Any) -> Any:
    return meshcore.file_source(config.path, registry)


@meshcore.hookimpl
def meshcore_config_sources() -> list[meshcore.ConfigSourceType]:
    """Register the ``file`` config source."""
    return [
        meshcore.ConfigSourceType(
            name="file",
            factory=_factory,
            config=FileSourceConfig,
            description="a YAML, TOML or JSON file, reloaded on change and on SIGHUP",
        )
    ]
