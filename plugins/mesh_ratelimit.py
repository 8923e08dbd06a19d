"""``LocalRateLimit`` (``meshcore.dev/v1alpha1``): a token bucket on a workload's inbound traffic.

Istio has no kind for a local rate limit (it takes an EnvoyFilter patching Envoy's
``local_ratelimit``); this one says the same in a few fields, and shows how a plugin adds a
kind and its translator. The workloads its ``workloadSelector`` selects (in its namespace)
get the ``local_ratelimit`` filter on every inbound HTTP listener: beyond the bucket, their
sidecar answers 429 itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

import meshcore
from meshcore import Duration, MeshKindType, TranslatorType, at_least
from meshcore.control import TranslationContext, labels_match

__all__ = ["LocalRateLimitSpec", "local_ratelimit"]


def _positive(_instance: object, _attribute: attrs.Attribute[Duration], value: Duration) -> None:
    if value <= 0:
        msg = f"must be > 0, got {value}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class RateLimitSelector:
    """The workloads a rate limit applies to, by labels."""

    labels: Mapping[str, str] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class LocalRateLimitSpec:
    """A token bucket: ``maxTokens`` at most, ``tokensPerFill`` added every ``fillInterval``."""

    workloadSelector: RateLimitSelector  # noqa: N815 - the kind's field names are camelCase, as Istio's
    maxTokens: int = attrs.field(validator=at_least(1))  # noqa: N815 - as above
    tokensPerFill: int = attrs.field(default=1, validator=at_least(1))  # noqa: N815 - as above
    fillInterval: Duration = attrs.field(validator=_positive)  # noqa: N815 - as above


def local_ratelimit(context: TranslationContext) -> None:
    """Put ``local_ratelimit`` on the inbound listeners of the workloads a LocalRateLimit selects."""
    selected = [
        r
        for r in context.model.resources.of_kind("LocalRateLimit")
        if r.namespace == context.namespace and labels_match(r.spec.workloadSelector.labels, context.labels)
    ]
    if not selected:
        return
    spec: LocalRateLimitSpec = min(selected, key=lambda r: r.name).spec
    config = {
        "max_tokens": spec.maxTokens,
        "tokens_per_fill": spec.tokensPerFill,
        "fill_interval": float(spec.fillInterval),
    }
    for listener in context.snapshot.listeners.values():
        if listener.direction == "inbound" and listener.route_config is not None:
            listener.ensure_http_filter("local_ratelimit", config)


@meshcore.hookimpl
def meshcore_mesh_kinds() -> list[MeshKindType]:
    """Register ``LocalRateLimit``."""
    return [
        MeshKindType(
            name="LocalRateLimit",
            config=LocalRateLimitSpec,
            api_versions=("meshcore.dev/v1alpha1",),
            description="a token bucket on the inbound traffic of the workloads it selects",
        )
    ]


@meshcore.hookimpl
def meshcore_mesh_translators() -> list[TranslatorType]:
    """Register ``local_ratelimit``."""
    return [
        TranslatorType(
            name="local_ratelimit",
            factory=local_ratelimit,
            order=150,
            description="the local_ratelimit filter on the inbound listeners LocalRateLimit selects",
            handles=("LocalRateLimit",),
        )
    ]
