"""A whole control plane: mesh files, discovery, pushes, delivery and admin servers, signals.

:func:`serve_control_plane` is what ``meshcore control-plane`` runs and what tests embed.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from meshcore.config import Address
from meshcore.control.admin import handle
from meshcore.control.dashboard import Dashboard
from meshcore.control.discovery import run_discoveries
from meshcore.control.plane import ControlPlane
from meshcore.control.serve import serve_delivery, server_ssl_context
from meshcore.control.settings import ControlPlaneConfig, Tokens
from meshcore.control.signer import Signer
from meshcore.control.traces import MAX_EXPORT_SIZE, TRACES_PATH, TraceStore
from meshcore.control.watch import MeshWatcher
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.registry import Registry
from meshcore.runtime.admin import AdminResponse, serve_admin_answers

__all__ = ["RunningControlPlane", "serve_control_plane"]

log = structlog.get_logger("meshcore.control")


@attrs.frozen
class RunningControlPlane:
    """A started control plane: its state, and where it listens."""

    plane: ControlPlane
    watcher: MeshWatcher
    delivery: tuple[str, int]
    admin: tuple[str, int]


async def serve_control_plane(
    config: ControlPlaneConfig,
    registry: Registry,
    *,
    mesh: Sequence[str] = (),
    signer: Signer | None = None,
    handle_signals: bool = False,
    settings_file: str | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a control plane until cancelled (or, with ``handle_signals``, SIGTERM or SIGINT).

    The mesh files must make a good mesh to start: their ConfigError propagates. Reports a
    :class:`RunningControlPlane` through ``task_status``. SIGHUP reloads the mesh files.
    """
    paths = [*config.mesh, *mesh]
    if not paths:
        raise ConfigError([ConfigProblem(path="mesh", message="no mesh files or folders given (-c DIR)")])
    if signer is None and config.ca is not None:
        signer = certificate_authority(config, registry, settings_file)
    base = Path(settings_file).parent if settings_file else None
    tokens = Tokens(config.bootstrap_tokens, allow_any=config.allow_any_identity, base=base)
    plane = ControlPlane(registry, config, tokens=tokens, signer=signer)
    watcher = MeshWatcher(plane, paths, float(config.poll_interval))
    plane.reloader = watcher.check_now
    resources = watcher.load()
    if not plane.propose(resources):
        assert plane.rejection is not None  # noqa: S101 - set by a refusal
        raise ConfigError(plane.rejection.problems)
    ssl_context = None
    if config.tls is not None:
        try:
            ssl_context = server_ssl_context(config.tls.certificate_file, config.tls.private_key_file)
        except (OSError, ValueError) as err:
            raise ConfigError(
                [ConfigProblem(path="tls", message=f"cannot load TLS files: {err}", file=settings_file)]
            ) from err
    async with trio.open_nursery() as nursery:
        await nursery.start(plane.run)
        await nursery.start(run_discoveries, plane.backends, plane.discovery_changed)
        plane.flush()  # what discovery learnt in its first round, before any proxy connects
        nursery.start_soon(watcher.run)
        delivery = await _listen(
            nursery,
            "listen",
            config.listen,
            settings_file,
            functools.partial(serve_delivery, plane, config.listen, ssl_context=ssl_context),
        )
        admin = await _listen(
            nursery,
            "admin",
            config.admin,
            settings_file,
            functools.partial(
                serve_admin_answers, _answer(plane), config.admin, max_body_size=MAX_EXPORT_SIZE
            ),
        )
        if handle_signals:
            await nursery.start(_signals, watcher, signer, nursery.cancel_scope)
        log.info(
            "control_plane_started",
            delivery=_text(delivery),
            admin=_text(admin),
            mesh=plane.model.version if plane.model else None,
        )
        task_status.started(RunningControlPlane(plane, watcher, delivery, admin))


def certificate_authority(
    config: ControlPlaneConfig, registry: Registry, settings_file: str | None
) -> Signer:
    """The signer of the ``ca:`` section: the registry's certificate authority of that name, built.

    Raises:
        ConfigError: naming ``ca``, when the CA is not installed or cannot start (its files).
    """
    assert config.ca is not None  # noqa: S101 - called with a ca: section
    found = registry.types("certificate_authority").get(config.ca.name)
    if found is None:
        message = f"no certificate authority {config.ca.name!r} is installed"
        raise ConfigError([ConfigProblem(path="ca", message=message, file=settings_file)])
    try:
        signer: Signer = found.factory(config.ca.config)
    except (OSError, ValueError) as err:
        message = f"the certificate authority {config.ca.name!r} cannot start: {err}"
        raise ConfigError([ConfigProblem(path="ca", message=message, file=settings_file)]) from err
    log.info("certificate_authority_started", name=config.ca.name, roots=signer.trust_bundle().count("BEGIN"))
    return signer


def _answer(plane: ControlPlane) -> Any:
    traces = TraceStore()
    dashboard = Dashboard(plane, traces=traces)

    async def answer(method: str, target: str, body: bytes) -> AdminResponse:
        if target.partition("?")[0] == TRACES_PATH:
            return traces.receive(method, body)
        return await dashboard.answer(method, target) or handle(plane, method, target)

    return answer


async def _listen(
    nursery: trio.Nursery, field: str, address: Address, file: str | None, serve: Any
) -> tuple[str, int]:
    """Start a server; a busy or unusable address is a ConfigError naming the field."""
    try:
        bound: tuple[str, int] = await nursery.start(serve)
    except OSError as err:
        message = f"cannot listen on {address}: {err.strerror}"
        raise ConfigError([ConfigProblem(path=field, message=message, file=file)]) from err
    except ConfigError as err:  # the admin server says it itself, as a proxy's admin
        problems = [attrs.evolve(p, path=field, file=file) for p in err.problems]
        raise ConfigError(problems) from err
    return bound


def _reload_ca(signer: Signer | None) -> None:
    """SIGHUP: a CA that keeps state on disk (a root rotation's step) reads it again."""
    reload = getattr(signer, "reload", None)
    if reload is None:
        return
    try:
        reload()
    except (OSError, ValueError) as err:
        log.error("certificate_authority_reload_failed", reason=str(err))  # noqa: TRY400 - the reason says it


def _text(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _signals(
    watcher: MeshWatcher,
    signer: Signer | None,
    scope: trio.CancelScope,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("reload_requested", signal="SIGHUP")
                watcher.reload()
                _reload_ca(signer)
            else:
                log.info("control_plane_stopping", signal=signal.Signals(signum).name)
                scope.cancel()
