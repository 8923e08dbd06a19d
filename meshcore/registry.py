"""The plugin registry: every named thing in config is looked up here.

Built by :func:`build_registry`: first-party plugins first, then the ``meshcore``
entry-point group (unless ``MESHCORE_DISABLE_PLUGIN_AUTOLOAD`` is set), then
``check_pending()``. A plugin that fails to import, implements a misspelled hook, raises
in a hook, or provides a name already taken is reported with its distribution and the
name, and does not take the other plugins down.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from meshcore import hookspecs
from meshcore.config.typecheck import config_type_problems
from meshcore.errors import ConfigProblem
from meshcore.plugin import (
    PROJECT,
    CertificateAuthorityType,
    ConfigSourceType,
    DiscoveryType,
    HealthCheckerType,
    HttpFilterType,
    LbPolicyType,
    MeshAnalyzerType,
    MeshKindType,
    NetworkFilterType,
    PluginType,
    TranslatorType,
)

if TYPE_CHECKING:
    from meshcore.config import Snapshot

__all__ = ["AUTOLOAD_ENV", "BUILTIN_PLUGINS", "PluginInfo", "Registry", "build_registry"]

AUTOLOAD_ENV = "MESHCORE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGINS = (
    "meshcore.runtime.validation",
    "meshcore.runtime.http_manager_plugin",
    "meshcore.filters.router",
    "meshcore.filters.tcp_proxy",
    "meshcore.filters.connection_limit",
    "meshcore.filters.fault",
    "meshcore.filters.local_ratelimit",
    "meshcore.filters.load_balancers",
    "meshcore.filters.ext_authz",
    "meshcore.filters.authz",
    "meshcore.filters.jwt_authn",
    "meshcore.filters.tracing",
    "meshcore.filters.mesh_metrics",
    "meshcore.filters.hash_lb",
    "meshcore.filters.ewma_lb",
    "meshcore.filters.health_checks",
    "meshcore.plugins.file_source",
    "meshcore.plugins.ca",
    "meshcore.plugins.istio_services",
    "meshcore.plugins.istio_routing",
    "meshcore.plugins.istio_sidecar",
    "meshcore.plugins.istio_security_kinds",
    "meshcore.plugins.istio_telemetry",
    "meshcore.plugins.discovery_static",
    "meshcore.plugins.discovery_dns",
    "meshcore.plugins.translate_sidecar",
    "meshcore.plugins.translate_outbound",
    "meshcore.plugins.translate_security",
    "meshcore.plugins.translate_telemetry",
    "meshcore.plugins.control_plane_source",
    "meshcore.plugins.mesh_analyzers",
    "meshcore.plugins.mesh_ratelimit",
)

# hook name -> descriptor class it must return
_REGISTRATION_HOOKS: Mapping[str, type[PluginType]] = {
    "meshcore_network_filters": NetworkFilterType,
    "meshcore_http_filters": HttpFilterType,
    "meshcore_lb_policies": LbPolicyType,
    "meshcore_config_sources": ConfigSourceType,
    "meshcore_certificate_authorities": CertificateAuthorityType,
    "meshcore_mesh_kinds": MeshKindType,
    "meshcore_mesh_translators": TranslatorType,
    "meshcore_mesh_discovery": DiscoveryType,
    "meshcore_mesh_analyzers": MeshAnalyzerType,
    "meshcore_health_checkers": HealthCheckerType,
}
KINDS = tuple(cls.kind for cls in _REGISTRATION_HOOKS.values())


@attrs.frozen(kw_only=True)
class PluginInfo:
    """A registered plugin: its name, where it comes from, and what it provides."""

    name: str
    distribution: str
    version: str
    provides: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """``distribution version`` for messages."""
        return f"{self.distribution} {self.version}"


class Registry:
    """The plugins of one process and the named types they provide (a config Catalog)."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self._types: dict[str, dict[str, PluginType]] = {kind: {} for kind in KINDS}
        self._owner: dict[tuple[str, str], str] = {}

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for the lifecycle hooks."""
        return self.manager.hook

    # -- the Catalog protocol ----------------------------------------------------------------

    def get(self, kind: str, name: str) -> PluginType | None:
        """The descriptor of plugin type ``name`` of ``kind``, or None."""
        return self._types.get(kind, {}).get(name)

    def config_type(self, kind: str, name: str) -> type | None:
        """The config class of ``name`` (None when it takes no config or does not exist)."""
        found = self.get(kind, name)
        return None if found is None else found.config

    def route_config_type(self, kind: str, name: str) -> type | None:
        """The per-route config class of HTTP filter ``name``, if it differs from its config."""
        found = self.get(kind, name)
        return found.route_config if isinstance(found, HttpFilterType) else None

    def names(self, kind: str) -> Sequence[str]:
        """Every registered name of ``kind``."""
        return tuple(self._types.get(kind, {}))

    def is_terminal(self, kind: str, name: str) -> bool:
        """Whether filter ``name`` ends a chain."""
        found = self.get(kind, name)
        return bool(getattr(found, "ends_chain", False))

    def types(self, kind: str) -> Mapping[str, PluginType]:
        """All descriptors of ``kind`` by name."""
        return types.MappingProxyType(self._types[kind])

    def owner(self, kind: str, name: str) -> PluginInfo | None:
        """The plugin that provides ``name`` of ``kind``."""
        plugin = self._owner.get((kind, name))
        return None if plugin is None else self.plugins[plugin]

    # -- building ----------------------------------------------------------------------------

    def add_plugin(self, plugin: object, name: str, distribution: str, version: str) -> None:
        """Register ``plugin`` under ``name``; a misspelled hook or a clash is recorded in ``problems``."""
        where = f"plugin {name!r} ({distribution} {version})"
        unknown = _unknown_hooks(plugin, self.manager)
        if unknown:
            self.problems.extend(f"{where}: {problem}" for problem in unknown)
            return
        try:
            self.manager.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as err:
            self.problems.append(f"{where} cannot be registered: {err}")
            return
        self.plugins[name] = PluginInfo(name=name, distribution=distribution, version=version)

    def collect_types(self) -> None:
        """Call every registration hook of every plugin, one plugin at a time."""
        for hook_name, descriptor in _REGISTRATION_HOOKS.items():
            for impl in self._impls(hook_name):
                info = self.plugins[impl.plugin_name]
                where = f"plugin {info.name!r} ({info.origin})"
                try:
                    provided = list(impl.function())
                except Exception as err:  # noqa: BLE001 - one plugin must not take the others down
                    self.problems.append(f"{where}: hook {hook_name} raised {type(err).__name__}: {err}")
                    continue
                for item in provided:
                    self._add(info, hook_name, descriptor, item)

    def _impls(self, hook_name: str) -> list[Any]:
        """A hook's implementations in registration order (built-ins first)."""
        order = {name: i for i, name in enumerate(self.plugins)}
        caller = getattr(self.manager.hook, hook_name)
        return sorted(caller.get_hookimpls(), key=lambda impl: order.get(impl.plugin_name, len(order)))

    def snapshot_problems(self, snapshot: Snapshot) -> list[ConfigProblem]:
        """Every plugin's objections to ``snapshot`` (``meshcore_validate_snapshot``), one plugin at a time.

        A plugin's ConfigProblem keeps its field path (so that ``meshcore validate`` can
        point at the line); a plain message is attributed to its plugin. A plugin whose hook
        raises objects in its own name: a bug in one plugin neither crashes the caller nor
        lets a Snapshot through unchecked.
        """
        problems: list[ConfigProblem] = []
        for impl in self._impls("meshcore_validate_snapshot"):
            where = f"plugin {impl.plugin_name!r}"
            try:
                found = list(impl.function(snapshot=snapshot))
            except Exception as err:  # noqa: BLE001 - one plugin must not take the others down
                message = f"{where}: meshcore_validate_snapshot raised {type(err).__name__}: {err}"
                problems.append(ConfigProblem(path="", message=message))
                continue
            problems += [
                item
                if isinstance(item, ConfigProblem)
                else ConfigProblem(path="", message=f"{where}: {item}")
                for item in found
            ]
        return problems

    def validate_snapshot(self, snapshot: Snapshot) -> list[str]:
        """:meth:`snapshot_problems` as lines ("field.path: reason")."""
        return [str(problem) for problem in self.snapshot_problems(snapshot)]

    def _add(self, info: PluginInfo, hook_name: str, descriptor: type[PluginType], item: object) -> None:
        where = f"plugin {info.name!r} ({info.origin})"
        if not isinstance(item, descriptor):
            self.problems.append(
                f"{where}: hook {hook_name} must return {descriptor.__name__} objects, got {type(item).__name__}"
            )
            return
        kind = descriptor.kind
        taken = self._owner.get((kind, item.name))
        if taken is not None:
            other = self.plugins[taken]
            self.problems.append(
                f"{where}: {kind.replace('_', ' ')} {item.name!r} is already provided by plugin "
                f"{other.name!r} ({other.origin}); rename it or uninstall one of them"
            )
            return
        self._check_config_types(where, item)
        self._types[kind][item.name] = item
        self._owner[(kind, item.name)] = info.name
        current = self.plugins[info.name]
        self.plugins[info.name] = attrs.evolve(current, provides=(*current.provides, f"{kind}:{item.name}"))

    def _check_config_types(self, where: str, item: PluginType) -> None:
        """Record a problem for each field of the item's config classes that config cannot hold.

        The item is registered all the same: a config that leaves such a field at its
        default works, and one that sets it gets a problem at its field path.
        """
        word = item.kind.replace("_", " ").replace("http", "HTTP")
        classes = [("config", item.config), ("route_config", getattr(item, "route_config", None))]
        for attribute, cls in classes:
            if cls is None:
                continue
            self.problems += [
                f"{where}: {word} {item.name!r} ({attribute}): {problem}"
                for problem in config_type_problems(cls)
            ]


def _unknown_hooks(plugin: object, manager: pluggy.PluginManager) -> list[str]:
    """Misspelled hooks: ``meshcore_*`` attributes that match no specification."""
    known = [name for name in dir(manager.hook) if name.startswith(f"{PROJECT}_")]
    out = []
    for attr in dir(plugin):
        if attr.startswith(f"{PROJECT}_") and attr not in known and callable(getattr(plugin, attr)):
            close = difflib.get_close_matches(attr, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known hooks: {', '.join(known)}"
            out.append(f"implements unknown hook {attr!r}{hint}")
    return out


def _distribution_of(module: str) -> tuple[str, str]:
    top = module.split(".", 1)[0]
    if top == PROJECT:
        # meshcore's own distribution, found by name: packages_distributions() reads the
        # file list of every installed distribution (0.4 s per registry).
        try:
            return PROJECT, importlib.metadata.version(PROJECT)
        except importlib.metadata.PackageNotFoundError:
            return "unknown", "0"
    dists = importlib.metadata.packages_distributions().get(top, [])
    if not dists:
        return "unknown", "0"
    name = dists[0]
    return name, importlib.metadata.version(name)


def build_registry(
    *,
    autoload: bool | None = None,
    plugins: Iterable[tuple[str, object]] = (),
) -> Registry:
    """Build the plugin registry of this process.

    Args:
        autoload: load plugins from the ``meshcore`` entry-point group. Default: yes, unless
            the environment sets ``MESHCORE_DISABLE_PLUGIN_AUTOLOAD``.
        plugins: extra ``(name, plugin)`` pairs registered after the entry points (tests,
            embedding applications).
    """
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    own_dist, own_version = _distribution_of("meshcore")
    for module_name in BUILTIN_PLUGINS:
        registry.add_plugin(importlib.import_module(module_name), module_name, own_dist, own_version)
    if autoload:
        for ep in importlib.metadata.entry_points(group=PROJECT):
            if ep.name in registry.plugins or ep.value in registry.plugins:
                continue
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "0"
            try:
                plugin = ep.load()
            except Exception as err:  # noqa: BLE001 - a broken plugin must not take the others down
                registry.problems.append(
                    f"plugin {ep.name!r} ({dist} {version}) failed to import {ep.value!r}: "
                    f"{type(err).__name__}: {err}; fix or uninstall {dist}, "
                    f"or set {AUTOLOAD_ENV}=1 to skip installed plugins"
                )
                continue
            registry.add_plugin(plugin, ep.name, dist, version)
    for name, plugin in plugins:
        module = getattr(plugin, "__name__", type(plugin).__module__)
        registry.add_plugin(plugin, name, *_distribution_of(module))
    manager.check_pending()
    registry.collect_types()
    return registry
