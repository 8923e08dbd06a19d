"""Config sources: the plugins a proxy takes its Snapshots from, and the sink they feed.

A config source is registered by a plugin (``meshcore_config_sources``) and chosen by
name: ``meshcore proxy --source NAME`` or ``serve_proxy(NAME, registry, source_config=...)``.
Its factory gets its structured config and the registry; the object it returns has an
``async run(sink)`` that delivers whole Snapshots (``await sink.apply_async``) or deltas
(``await sink.apply_delta_async``) for as long as the proxy runs. Each call either applies
or raises :class:`~meshcore.errors.ConfigError` with every problem (the source's cue to
NACK); the last good Snapshot keeps serving either way. The synchronous ``sink.apply`` and
``sink.apply_delta`` do the same but hold the event loop meanwhile (0.4 s for 10,000
routes); they stay for sources written before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from meshcore.config import Snapshot, SnapshotDelta, Structurer
from meshcore.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from meshcore.registry import Registry
    from meshcore.runtime.proxy import Proxy

__all__ = ["RESTART_DELAYS", "ConfigSink", "ConfigSource", "ProxySink", "build_source", "run_source"]

RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before a config source that failed is run again: the first time, the second, ..."""

log = structlog.get_logger("meshcore.sources")


class ConfigSink(Protocol):
    """Where a config source delivers: the running proxy, seen from the source.

    Every method returns once the change is live (or raises). The async ones let traffic
    flow meanwhile (see :meth:`Proxy.apply_async <meshcore.runtime.proxy.Proxy.apply_async>`):
    a source calls those; concurrent calls go live in the order they were made.
    """

    async def apply_async(self, snapshot: Snapshot, *, file: str | None = None) -> None:
        """:meth:`apply` without stalling traffic on the event loop."""

    async def apply_delta_async(self, delta: SnapshotDelta) -> Snapshot:
        """:meth:`apply_delta` without stalling traffic on the event loop."""

    def apply(self, snapshot: Snapshot, *, file: str | None = None) -> None:
        """Make ``snapshot`` the live config, or raise ConfigError with every problem.

        ``file``: the file it was read from, if any; problems that name no file name it.
        """

    def apply_delta(self, delta: SnapshotDelta) -> Snapshot:
        """Compose ``delta`` onto the live Snapshot, validate the result whole and apply it.

        Returns the Snapshot now live. Raises ConfigError with every problem (the live
        Snapshot stays), including when no Snapshot is live yet to compose onto.
        """

    def rejected(self, error: ConfigError) -> None:
        """Report a config the source could not even turn into a Snapshot or delta.

        A file that does not parse, a document with field problems: counted and shown on
        the admin server like a rejected apply.
        """


class ConfigSource(Protocol):
    """What a config source plugin's factory returns."""

    async def run(self, sink: ConfigSink, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """Deliver the first Snapshot, report started, then every update until cancelled.

        The first delivery's ConfigError should propagate (the proxy cannot start without
        a config); later ones are the source's to report (log, NACK) and survive.
        """

    def reload(self) -> None:
        """Look for a new config now (the CLI calls it on SIGHUP); may do nothing."""


def build_source(registry: Registry, name: str, config: Mapping[str, Any] | None = None) -> ConfigSource:
    """The config source ``name``, built from plain config data (structured by its config class).

    Args:
        registry: where the source is looked up.
        name: the source's registered name (``file``, ...).
        config: its config section, as in a config file (None: its defaults).

    Raises:
        ConfigError: no such source, a problem in its config (with field paths under
            ``source.NAME``), or its factory failed.
    """
    found = registry.get("config_source", name)
    if found is None:
        known = ", ".join(sorted(registry.names("config_source"))) or "none"
        raise ConfigError(
            [ConfigProblem(path="source", message=f"unknown config source {name!r} (known: {known})")]
        )
    structured: Any = None
    if found.config is not None:
        structurer = Structurer(registry)
        structured = structurer.structure(dict(config or {}), found.config, ("source", name))
        if structurer.problems or structured is None:
            raise ConfigError(
                structurer.problems or [ConfigProblem(path=f"source.{name}", message="invalid")]
            )
    elif config:
        raise ConfigError([ConfigProblem(path=f"source.{name}", message=f"{name!r} takes no config")])
    try:
        source: ConfigSource = found.factory(structured, registry)
    except ConfigError:
        raise
    except Exception as err:
        owner = registry.owner("config_source", name)
        who = f"plugin {owner.name!r} ({owner.origin})" if owner is not None else "its plugin"
        message = f"config source {name!r} of {who} failed to start: {type(err).__name__}: {err}"
        raise ConfigError([ConfigProblem(path=f"source.{name}", message=message)]) from err
    return source


class ProxySink:
    """The sink a proxy gives its config source.

    While the proxy drains, deliveries are ignored (a SIGHUP, a file change, a control
    plane push must not end the drain), and ``apply_delta`` returns the live Snapshot.
    """

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def apply(self, snapshot: Snapshot, *, file: str | None = None) -> None:
        """Apply ``snapshot`` (see :meth:`ConfigSink.apply`)."""
        if self.proxy.draining:
            log.info("snapshot_ignored", version=snapshot.version, reason="draining")
            return
        self.proxy.apply(snapshot, file=file)

    def apply_delta(self, delta: SnapshotDelta) -> Snapshot:
        """Apply ``delta`` (see :meth:`ConfigSink.apply_delta`)."""
        if self.proxy.draining and self.proxy.snapshot is not None:
            log.info("snapshot_ignored", version=delta.version, reason="draining")
            return self.proxy.snapshot
        return self.proxy.apply_delta(delta)

    async def apply_async(self, snapshot: Snapshot, *, file: str | None = None) -> None:
        """Apply ``snapshot`` without stalling traffic (see :meth:`ConfigSink.apply_async`)."""
        try:
            await self.proxy.apply_async(snapshot, file=file)
        except RuntimeError:
            if not self.proxy.draining:
                raise
            log.info("snapshot_ignored", version=snapshot.version, reason="draining")

    async def apply_delta_async(self, delta: SnapshotDelta) -> Snapshot:
        """Apply ``delta`` without stalling traffic (see :meth:`ConfigSink.apply_delta_async`)."""
        try:
            return await self.proxy.apply_delta_async(delta)
        except RuntimeError:
            if not self.proxy.draining or self.proxy.snapshot is None:
                raise
            log.info("snapshot_ignored", version=delta.version, reason="draining")
            return self.proxy.snapshot

    def rejected(self, error: ConfigError) -> None:
        """Count a config the source could not read (see :meth:`ConfigSink.rejected`)."""
        self.proxy.record_rejection(error)


class _Started:
    """Forwards a source's first ``started()`` to the caller's task status; later ones are no-ops."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self.task_status = task_status
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.task_status.started(value)


async def run_source(
    source: ConfigSource, sink: ConfigSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``source`` for as long as the proxy runs; a source that fails once started is run again.

    Until the source reports started, its failure is the caller's (a proxy without a first
    Snapshot does not start). After that, nothing it raises ends the proxy: the failure is
    logged (``config_source_failed``) and the source is run again after a growing delay
    (:data:`RESTART_DELAYS`), while the last good Snapshot keeps serving.
    """
    status = _Started(task_status)
    failures = 0
    while True:
        try:
            await source.run(sink, task_status=status)
        except Exception:
            if not status.done:
                raise
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            log.exception("config_source_failed", source=type(source).__name__, restart_in=delay)
        else:
            if not status.done:
                message = "the config source ended without delivering a Snapshot"
                raise ConfigError([ConfigProblem(path="source", message=message)])
            log.warning("config_source_ended", source=type(source).__name__, kept="last good Snapshot")
            return
        await trio.sleep(delay)
