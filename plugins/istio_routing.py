"""The traffic kinds: ``VirtualService`` and ``DestinationRule``.

A VirtualService says how requests to some hosts are routed; a DestinationRule names
subsets of a service's endpoints and the policies toward them.

Every field Istio defines is structured and checked, with Istio's names, in
:mod:`~meshcore.plugins.istio_virtualservice` and :mod:`~meshcore.plugins.istio_destinationrule`;
this module registers the two kinds. Which fields meshcore acts on is declared by the
translators (``handles``); a field no translator handles is refused as not supported yet.
"""

from __future__ import annotations

import meshcore
from meshcore.plugins.istio_destinationrule import DestinationRuleSpec
from meshcore.plugins.istio_services import NETWORKING
from meshcore.plugins.istio_virtualservice import VirtualServiceSpec


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[meshcore.MeshKindType]:
    """Register ``VirtualService`` and ``DestinationRule``."""
    return [
        meshcore.MeshKindType(
            name="VirtualService",
            config=VirtualServiceSpec,
            api_versions=NETWORKING,
            description="how requests to some hosts are routed: matches, weights, rewrites, faults",
        ),
        meshcore.MeshKindType(
            name="DestinationRule",
            config=DestinationRuleSpec,
            api_versions=NETWORKING,
            description="subsets of a service's endpoints and the policies toward them",
        ),
    ]
