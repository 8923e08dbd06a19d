"""``tcp_proxy``: the terminal L4 filter that pipes bytes to an upstream cluster."""

from __future__ import annotations

from typing import Any

import attrs

import meshcore
from meshcore import ByteSize, Duration, non_empty, ref


@attrs.frozen(kw_only=True)
class TcpProxyConfig:
    """Config of ``tcp_proxy``."""

    cluster: str = ref("cluster", validator=non_empty)
    stat_prefix: str = ""
    idle_timeout: Duration = Duration(3600)
    buffer_size: ByteSize = ByteSize(64 * 1024)


def _factory(config: TcpProxyConfig, context: Any) -> Any:
    return meshcore.tcp_proxy(config, context)


@meshcore.hookimpl
def meshcore_network_filters() -> list[meshcore.NetworkFilterType]:
    """Register ``tcp_proxy``."""
    return [
        meshcore.NetworkFilterType(
            name="tcp_proxy",
            factory=_factory,
            config=TcpProxyConfig,
            ends_chain=True,
            description="pipes bytes both ways to an endpoint of an upstream cluster",
        )
    ]
