"""Translator for Istio's ``Telemetry``: tracing, as the sidecars' ``tracing`` filter.

``telemetry`` (order 700) gives each HTTP listener of a sidecar the ``tracing`` filter, first
in its chain, configured by the Telemetry resources that apply to the sidecar's workload,
with Istio's precedence: the root namespace's (mesh-wide, no ``selector``), then the
workload's namespace's (no ``selector``), then the one of that namespace whose ``selector``
matches the workload; each level's fields override the level before (``customTags``
add up, key by key). A ``tracing`` item with ``match.mode`` applies to one side only:
``SERVER`` is the inbound listeners (requests to the workload), ``CLIENT`` the outbound
ones (its calls), ``CLIENT_AND_SERVER`` (or no ``match``) both.

- ``providers``: one name of the control plane's ``tracing_providers`` (Istio's
  ``extensionProviders``), where spans go over OTLP/HTTP; none named: the control plane's
  ``default_tracing_providers``, ``meshcore`` by default (its own receiver, shown by the
  dashboard). An unknown name, or more than one, fails that sidecar's translation with the
  resource and field path (it keeps its last Snapshot);
- ``randomSamplingPercentage``: the share of new traces recorded, as Istio's default 1%
  when no level gives it; a caller's decision is followed (``parent_based``), as Envoy does;
- ``disableSpanReporting``: context is still propagated, no span is sent;
- ``customTags``: ``literal`` and ``header`` (with ``defaultValue``) become span attributes.

Any other Telemetry field (``metrics``, ``accessLogging``, ``targetRef``, environment and
formatter tags, ...) is refused as not supported, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import meshcore
from meshcore import TranslatorType
from meshcore.control import MeshResource, TranslationContext, labels_match
from meshcore.plugins.istio_telemetry import CustomTag, Tracing

DEFAULT_SAMPLING = 1.0
"""Percent of new traces recorded when no Telemetry says (Istio's default)."""

_SIDES = {"inbound": "SERVER", "outbound": "CLIENT"}


def _where(resource: MeshResource, path: str) -> str:
    located = f"{resource.file}:{resource.line}: " if resource.file and resource.line else ""
    return f"{located}{resource.ref}: {path}"


def applicable(context: TranslationContext) -> list[MeshResource]:
    """The Telemetry resources that apply to the proxy, least specific first (root, namespace, workload).

    One per level: where a level has several, the first by name applies and the proxy's
    problems say which were passed over (as Istio, which takes the oldest).
    """
    root = context.model.settings.root_namespace
    namespace = context.namespace
    labels = context.labels
    levels: list[list[MeshResource]] = [[], [], []]
    for resource in context.model.resources.of_kind("Telemetry"):
        selector = resource.spec.selector
        match_labels: Mapping[str, str] = selector.matchLabels if selector is not None else {}
        if resource.namespace == namespace and match_labels:
            if context.workload is not None and labels_match(match_labels, labels):
                levels[2].append(resource)
        elif resource.namespace == namespace and namespace != root:
            levels[1].append(resource)
        elif resource.namespace == root and not match_labels:
            levels[0].append(resource)
    out = []
    for level in levels:
        if not level:
            continue
        level.sort(key=lambda r: r.name)
        out.append(level[0])
        if len(level) > 1:
            others = ", ".join(r.ref for r in level[1:])
            context.problems.append(f"{level[0].ref} applies; {others} at the same level passed over")
    return out


class _Effective:
    """The tracing settings of one side, merged level by level."""

    def __init__(self) -> None:
        self.seen = False
        self.providers: tuple[str, ...] | None = None
        self.providers_from = ""
        self.sampling: float | None = None
        self.disabled = False
        self.tags: dict[str, CustomTag] = {}

    def merge(self, resource: MeshResource, index: int, tracing: Tracing) -> None:
        self.seen = True
        if tracing.providers:
            self.providers = tuple(p.name for p in tracing.providers)
            self.providers_from = _where(resource, f"spec.tracing[{index}].providers")
        if tracing.randomSamplingPercentage is not None:
            self.sampling = tracing.randomSamplingPercentage
        if tracing.disableSpanReporting is not None:
            self.disabled = tracing.disableSpanReporting
        self.tags.update(tracing.customTags)


def effective(resources: Sequence[MeshResource], side: str) -> _Effective:
    """The merged tracing settings of ``side`` (``SERVER`` or ``CLIENT``)."""
    found = _Effective()
    for resource in resources:
        for index, tracing in enumerate(resource.spec.tracing):
            mode = tracing.match.mode if tracing.match is not None and tracing.match.mode else None
            if mode in (None, "CLIENT_AND_SERVER", side):
                found.merge(resource, index, tracing)
    return found


def tracing_config(context: TranslationContext, settings: _Effective) -> dict[str, Any]:
    """The ``tracing`` filter's config (as a config file writes it) for merged settings.

    Raises:
        ValueError: a provider is unknown, or more than one is named (the message says where).
    """
    mesh = context.model.settings
    names = settings.providers if settings.providers is not None else mesh.default_tracing_providers
    where = settings.providers_from or "the control plane's default_tracing_providers"
    known = ", ".join(p.name for p in mesh.tracing_providers) or "none"
    if len(names) > 1:
        msg = f"{where}: one tracing provider per workload, got {len(names)} ({', '.join(names)})"
        raise ValueError(msg)
    percent = settings.sampling if settings.sampling is not None else DEFAULT_SAMPLING
    config: dict[str, Any] = {"sampler": "parent_based", "ratio": percent / 100}
    attributes = {k: t.literal.value for k, t in settings.tags.items() if t.literal is not None}
    headers = {
        k: {"header": t.header.name, "default": t.header.defaultValue}
        for k, t in settings.tags.items()
        if t.header is not None
    }
    if attributes:
        config["attributes"] = attributes
    if headers:
        config["header_attributes"] = headers
    if settings.disabled:
        return config
    if not names:
        context.problems.append(
            f"tracing: no provider ({where} names none): context propagated, spans not sent"
        )
        return config
    provider = mesh.tracing_provider(names[0])
    if provider is None:
        msg = f"{where}: no tracing provider {names[0]!r} in the control plane's tracing_providers (known: {known})"
        raise ValueError(msg)
    otlp = provider.opentelemetry
    config["otlp_http"] = {
        "endpoint": otlp.endpoint,
        "timeout": float(otlp.timeout),
        "headers": dict(otlp.headers),
    }
    return config


def telemetry(context: TranslationContext) -> None:
    """The ``tracing`` filter, first, on each HTTP listener whose side some Telemetry traces."""
    resources = applicable(context)
    if not resources:
        return
    configs: dict[str, Any] = {}
    for direction, side in _SIDES.items():
        settings = effective(resources, side)
        if settings.seen:
            data = tracing_config(context, settings)
            configs[direction] = context.plugin_config("http_filter", "tracing", data)
    for listener in context.snapshot.listeners.values():
        config = configs.get(listener.direction)
        if config is None or listener.route_config is None:
            continue
        if all(f.name != "tracing" for f in listener.http_filters):
            listener.http_filters.insert(0, meshcore.HttpFilterRef(name="tracing", config=config))


@meshcore.hookimpl
def meshcore_mesh_translators() -> list[TranslatorType]:
    """Register ``telemetry``."""
    return [
        TranslatorType(
            name="telemetry",
            factory=telemetry,
            order=700,
            description="Telemetry tracing as the tracing filter of every HTTP listener it selects",
            handles=(
                "Telemetry.selector",
                "Telemetry.tracing.match",
                "Telemetry.tracing.providers",
                "Telemetry.tracing.randomSamplingPercentage",
                "Telemetry.tracing.disableSpanReporting",
                "Telemetry.tracing.customTags.literal",
                "Telemetry.tracing.customTags.header",
            ),
        )
    ]
