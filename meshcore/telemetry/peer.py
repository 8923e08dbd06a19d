"""Workload identity for telemetry, and the peer-metadata exchange between sidecars.

A sidecar knows its own workload (``Snapshot.node`` when a control plane configures it,
else what its filter config says). It learns its peer's from the header
``x-meshcore-peer-metadata``: the outbound (client-side) sidecar sets it on the request
and the inbound (server-side) sidecar reads and removes it; the inbound sidecar sets it
on the response, and the outbound one reads and removes it there. The value is
``workload=W;namespace=N;service=S;version=V``, each value percent-encoded. A value that
does not parse, or is longer than ``MAX_LENGTH``, is ignored: peers outside the mesh never
get to set it (the edge strips ``x-meshcore-*``), and label cardinality is capped anyway.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import attrs

__all__ = ["HEADER", "MAX_LENGTH", "Workload", "own_workload"]

HEADER = b"x-meshcore-peer-metadata"
MAX_LENGTH = 1024
_FIELDS = ("workload", "namespace", "service", "version")


@attrs.frozen
class Workload:
    """Who a sidecar serves: workload, namespace, service and version ("" when unknown)."""

    workload: str = ""
    namespace: str = ""
    service: str = ""
    version: str = ""

    def encode(self) -> bytes:
        """The header value that tells a peer who we are."""
        return ";".join(
            f"{k}={quote(getattr(self, k), safe='')}" for k in _FIELDS if getattr(self, k)
        ).encode("ascii")

    @classmethod
    def decode(cls, value: bytes) -> Workload | None:
        """A peer's identity from its header value; None if the value is not one."""
        if len(value) > MAX_LENGTH or not value.isascii():
            return None
        fields: dict[str, str] = {}
        for item in value.decode("ascii").split(";"):
            key, sep, raw = item.strip().partition("=")
            if not sep or key not in _FIELDS or key in fields:
                return None
            fields[key] = unquote(raw)
            if not fields[key].isprintable():
                return None
        return cls(**fields) if fields else None


def own_workload(node: Any, config: Any) -> Workload:
    """This proxy's identity: ``Snapshot.node`` (NodeInfo) when set, else the filter's config.

    From a NodeInfo: its workload and namespace, its first service host, and the version
    label of the workload (Istio's ``version``, else ``service.istio.io/canonical-revision``;
    ``NodeInfo.version`` is the proxy's own software version, not the workload's).
    """
    if node is not None:
        services = getattr(node, "services", ()) or ()
        labels = getattr(node, "labels", None) or {}
        return Workload(
            workload=getattr(node, "workload", "") or "",
            namespace=getattr(node, "namespace", "") or "",
            service=(services[0] if services else labels.get("app", "")) or "",
            version=labels.get("version") or labels.get("service.istio.io/canonical-revision") or "",
        )
    return Workload(
        workload=getattr(config, "workload", None) or "",
        namespace=getattr(config, "namespace", None) or "",
        service=getattr(config, "service", None) or "",
        version=getattr(config, "version", None) or "",
    )
