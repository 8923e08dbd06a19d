"""``header_hash``: a ring-hash load balancer keyed by a request header, written as a plugin.

Each host owns ``replicas`` points on a ring of 64-bit hashes; a request goes to the owner
of the first point at or after the hash of its header's value. The same value always finds
the same host, and a host that leaves moves only the values it owned. Requests without the
header (and TCP connections, which have none) go round the hosts in turn.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Any

import attrs

import meshcore

__all__ = ["HeaderHash", "HeaderHashConfig"]


@attrs.frozen(kw_only=True)
class HeaderHashConfig:
    """Config of ``header_hash``."""

    header: str = attrs.field(validator=meshcore.non_empty)
    """The request header whose value is hashed."""
    replicas: int = attrs.field(default=100, validator=meshcore.at_least(1))
    """Points per host on the ring: more spread the load more evenly."""


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HeaderHash:
    """The ``header_hash`` picker of one cluster."""

    def __init__(self, config: HeaderHashConfig) -> None:
        self.header = config.header.lower()
        self.replicas = config.replicas
        self._hosts: tuple[Any, ...] = ()
        self._points: list[int] = []
        self._owners: list[Any] = []
        self._next = 0

    def _ring(self, hosts: Sequence[Any]) -> None:
        """Rebuild the ring when the hosts changed (kept across requests otherwise)."""
        ring = sorted(
            (_hash(f"{host.address[0]}:{host.address[1]}#{i}"), n)
            for n, host in enumerate(hosts)
            for i in range(self.replicas)
        )
        self._points = [point for point, _ in ring]
        self._owners = [hosts[n] for _, n in ring]
        self._hosts = tuple(hosts)

    def pick(self, hosts: Sequence[Any], request: object = None, /) -> Any:
        """The owner of the header value's point, or the next host in turn without one."""
        value = request.headers.get(self.header) if isinstance(request, meshcore.Request) else None
        if value is None:
            self._next = (self._next + 1) % len(hosts)
            return hosts[self._next]
        if tuple(hosts) != self._hosts:
            self._ring(hosts)
        at = bisect.bisect_left(self._points, _hash(value)) % len(self._points)
        return self._owners[at]
