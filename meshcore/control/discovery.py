"""Discovery: backends that feed services, workloads and endpoints into the mesh model.

A backend is a plugin (``meshcore_mesh_discovery``) whose factory returns a
:class:`Discovery`. The model is rebuilt from scratch on every change: each backend's
:meth:`~Discovery.discover` says what it knows now (a pure function of the resources and
of what it has learnt in the background), and :func:`build_model` merges the answers.
Backends that learn in the background (DNS answers expire) run :meth:`~Discovery.run` and
call ``changed()`` when what they know has changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

import attrs
import structlog
import trio

from meshcore.config import PluginRef
from meshcore.control.model import Endpoint, MeshModel, MeshSettings, Service, Workload
from meshcore.control.resources import MeshResources
from meshcore.errors import ConfigProblem
from meshcore.registry import Registry

__all__ = ["Discovered", "Discovery", "DiscoveryRef", "build_model", "open_discoveries"]

log = structlog.get_logger("meshcore.control.discovery")

_NO_ENDPOINTS: Mapping[tuple[str, str], tuple[Endpoint, ...]] = MappingProxyType({})


class DiscoveryRef(PluginRef):
    """A discovery backend, by name, with its config (``static``, ``dns: {...}``)."""

    kind = "discovery"


@attrs.frozen(kw_only=True)
class Discovered:
    """What one backend contributes to the model.

    Attributes:
        services: services it defines.
        workloads: workloads it defines.
        endpoints: endpoints of services (defined by it or another backend), by ``(namespace, host)``.
        problems: what it refuses in the resources (the edit is refused whole).
    """

    services: tuple[Service, ...] = ()
    workloads: tuple[Workload, ...] = ()
    endpoints: Mapping[tuple[str, str], tuple[Endpoint, ...]] = _NO_ENDPOINTS
    problems: tuple[ConfigProblem, ...] = ()


class Discovery(Protocol):
    """A discovery backend (what a ``DiscoveryType`` factory returns)."""

    def discover(self, resources: MeshResources, settings: MeshSettings) -> Discovered:
        """What the backend knows now about ``resources``; pure and quick (no I/O)."""

    async def run(self, changed: Callable[[], None], *, task_status: Any = ...) -> None:
        """Learn in the background; call ``changed()`` when :meth:`discover` would answer differently.

        Report ``task_status.started()`` once a first round is done (a backend with nothing
        to learn returns right after). Called with the resources already given to
        :meth:`discover` once.
        """


def build_model(resources: MeshResources, backends: Sequence[Discovery], settings: MeshSettings) -> MeshModel:
    """Merge what every backend discovers into one model.

    A host defined twice in one namespace is a problem of the model (the second one is
    named); endpoints of the same service from several backends add up.
    """
    services: list[Service] = []
    workloads: list[Workload] = []
    endpoints: dict[tuple[str, str], list[Endpoint]] = {}
    problems: list[ConfigProblem] = []
    seen: dict[tuple[str, str], Service] = {}
    seen_workloads: set[tuple[str, str]] = set()
    for backend in backends:
        found = backend.discover(resources, settings)
        problems.extend(found.problems)
        for service in found.services:
            first = seen.get(service.key)
            if first is not None:
                problems.append(
                    ConfigProblem(
                        path=service.source,
                        message=f"host {service.host!r} is already defined in namespace {service.namespace!r} by {first.source}",
                    )
                )
                continue
            seen[service.key] = service
            services.append(service)
        for workload in found.workloads:
            if (workload.namespace, workload.name) not in seen_workloads:
                seen_workloads.add((workload.namespace, workload.name))
                workloads.append(workload)
        for key, items in found.endpoints.items():
            endpoints.setdefault(key, []).extend(items)
    return MeshModel(
        resources,
        services=tuple(services),
        workloads=tuple(workloads),
        endpoints=MappingProxyType({k: tuple(v) for k, v in endpoints.items()}),
        settings=settings,
        problems=tuple(problems),
    )


def open_discoveries(refs: Sequence[PluginRef], registry: Registry) -> list[Discovery]:
    """The backends named in config, built by their plugins' factories."""
    out: list[Discovery] = []
    for ref in refs:
        found = registry.get("discovery", ref.name)
        if found is None:  # the structurer checks names; this is a bug guard
            msg = f"unknown discovery backend {ref.name!r}"
            raise ValueError(msg)
        config = ref.config if ref.config is not None or found.config is None else found.config()
        out.append(found.factory(config))
    return out


async def run_discoveries(
    backends: Sequence[Discovery], changed: Callable[[], None], *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every backend's background loop; report started when each has done a first round."""
    async with trio.open_nursery() as nursery:
        for backend in backends:
            await nursery.start(backend.run, changed)
        task_status.started()
