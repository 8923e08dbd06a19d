"""Mesh resource files, watched: every change is loaded whole and proposed to the plane.

Files are polled (``poll_interval``) and reloaded on demand (SIGHUP). A change that does not
load (a syntax error, an unknown field, a file half written) is refused like one that loads
but makes a bad mesh: logged, shown, and the last good mesh stays.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from meshcore.control.plane import ControlPlane
from meshcore.control.resources import MeshResources, load_resources, mesh_files
from meshcore.errors import ConfigError

__all__ = ["MeshWatcher"]

log = structlog.get_logger("meshcore.control.watch")

SETTLE = 0.05
"""Seconds the mesh files must stay unchanged before a change is loaded (writes in progress)."""


class MeshWatcher:
    """The mesh files of a control plane."""

    def __init__(self, plane: ControlPlane, paths: Sequence[str], poll_interval: float = 1.0) -> None:
        self.plane = plane
        self.paths = list(paths)
        self.poll_interval = poll_interval
        self._reload = trio.Event()
        self._signature: tuple[Any, ...] = ()

    def signature(self) -> tuple[Any, ...]:
        """What changes when a file is added, removed or written.

        The files' contents are part of it (a digest): a rewrite that keeps the size and
        lands within the file system's timestamp granularity would otherwise go unseen.
        """
        out = []
        for file in mesh_files(self.paths):
            try:
                st = file.stat()
                digest = hashlib.sha256(file.read_bytes()).digest()
            except OSError:
                continue
            out.append((str(file), st.st_mtime_ns, st.st_size, st.st_ino, digest))
        return tuple(out)

    def load(self) -> MeshResources:
        """Load the files now; ConfigError with every problem."""
        self._signature = self.signature()
        return load_resources([Path(p) for p in self.paths], self.plane.registry)

    def reload(self) -> None:
        """Reload now, changed or not (SIGHUP)."""
        self._reload.set()

    def check_now(self) -> bool:
        """Load and propose the files; whether the plane took them."""
        try:
            resources = self.load()
        except ConfigError as err:
            self.plane.refuse(err.problems)
            return False
        return self.plane.propose(resources)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Propose every change of the files, forever."""
        task_status.started()
        interval = self.poll_interval or math.inf
        while True:
            with trio.move_on_after(interval):
                await self._reload.wait()
            forced = self._reload.is_set()
            self._reload = trio.Event()
            if forced:
                log.info("mesh_changed", forced=True)
                self.check_now()
            elif self.signature() != self._signature:
                await self._settled()
                log.info("mesh_changed", forced=False)
                self.check_now()

    async def _settled(self) -> None:
        """Return once the files stay as they are for ``SETTLE`` seconds.

        A file written in place (``cp``, most editors) is empty or half written for a moment:
        loading it then would propose a mesh nobody wrote (a VirtualService gone, say), and it
        would be pushed.
        """
        seen = self.signature()
        while True:
            await trio.sleep(SETTLE)
            now = self.signature()
            if now == seen:
                return
            seen = now
