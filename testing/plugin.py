"""The pytest plugin of meshcore (entry point ``pytest11``): fixtures for plugin authors."""

from __future__ import annotations

import pytest

import meshcore


@pytest.fixture
def meshcore_registry() -> meshcore.Registry:
    """A plugin registry with the first-party and installed plugins, as the CLI builds it."""
    return meshcore.build_registry()
