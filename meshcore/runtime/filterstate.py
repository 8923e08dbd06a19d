"""Filters across Snapshots: who replaces whom, and failures blamed on the right plugin.

When a filter chain is rebuilt for a new Snapshot, each new filter may take over state
from the filter it replaces: the one of the same name at the same place in the chain
being replaced (the first ``local_ratelimit`` replaces the first ``local_ratelimit``,
whatever was inserted before it). A filter that wants to keep state defines::

    def carry_over(self, previous) -> None: ...

and the runtime calls it once, after the factory built the new filter and before it serves
anything, with the instance it replaces (of whatever class that one is: check). It must
not change ``previous``, which keeps serving until the swap and forever if the Snapshot is
rejected later. A chain (or a filter in it) that does not change is not rebuilt at all: it
keeps its state without asking.

A filter that is kept may still want to follow the rest of the Snapshot (the HTTP
connection manager follows its route table). It defines::

    def prepare_snapshot(self, snapshot) -> Callable[[], None] | None: ...

called while a new Snapshot is being built: do whatever may fail there (compile, load,
raise to reject the Snapshot) and return a function that installs the result (called only
if the whole Snapshot goes live, and must not fail), or None when there is nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from meshcore.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from meshcore.config import Snapshot
    from meshcore.config.structure import Catalog

__all__ = ["Commit", "blame", "carry_over", "prepare_snapshot", "successors"]

Commit = Callable[[], None]
"""Installs what a ``prepare_snapshot`` built; called only when the Snapshot goes live."""

_SECTIONS = ("admin", "listeners", "route_configs", "clusters", "secrets", "endpoints")


def successors(
    names: Sequence[str], filters: Sequence[Any], previous_names: Sequence[str], previous: Sequence[Any]
) -> Iterator[tuple[int, Any, Any]]:
    """``(index, new, old)`` for each new filter that replaces an old one (same name, same occurrence)."""
    old: dict[tuple[str, int], Any] = {}
    seen: dict[str, int] = {}
    for name, instance in zip(previous_names, previous, strict=True):
        old[(name, seen.get(name, 0))] = instance
        seen[name] = seen.get(name, 0) + 1
    seen = {}
    for i, (name, instance) in enumerate(zip(names, filters, strict=True)):
        found = old.get((name, seen.get(name, 0)))
        seen[name] = seen.get(name, 0) + 1
        if found is not None and found is not instance:
            yield i, instance, found


def carry_over(instance: Any, previous: Any) -> None:
    """Call ``instance.carry_over(previous)`` if the filter defines it."""
    method = getattr(instance, "carry_over", None)
    if method is not None:
        method(previous)


def prepare_snapshot(instance: Any, snapshot: Snapshot) -> Commit | None:
    """Call ``instance.prepare_snapshot(snapshot)`` if the filter defines it; its commit or None."""
    method = getattr(instance, "prepare_snapshot", None)
    if method is None:
        return None
    commit: Commit | None = method(snapshot)
    return commit


def _who(catalog: Any, kind: str, name: str) -> str:
    owner = catalog.owner(kind, name) if hasattr(catalog, "owner") else None
    return f"plugin {owner.name!r} ({owner.origin})" if owner is not None else "its plugin"


@contextmanager
def blame(path: str, catalog: Catalog | None, kind: str, name: str, what: str) -> Iterator[None]:
    """Turn whatever a plugin's code raises inside into a ConfigError (stage ``apply``) at ``path``.

    Args:
        path: the field path of the plugin's section (``listeners[0].filter_chains[0].filters[1].x``).
        catalog: the registry, to name the plugin that provides ``name`` (if it can).
        kind: the plugin kind (``http_filter``, ...).
        name: the plugin type's name.
        what: what was called (``factory``, ``carry_over``, ...), for the message.

    A ConfigError raised inside keeps its problems; paths not starting with a Snapshot
    section are taken as relative to ``path``. A ValueError is a config problem the plugin
    found (its message is the reason); anything else is a plugin bug, named as such.
    """
    try:
        yield
    except ConfigError as err:
        problems = [
            p if p.path.startswith(_SECTIONS) else ConfigProblem(path=_join(path, p.path), message=p.message)
            for p in err.problems
        ]
        raise ConfigError(problems, stage="apply") from err
    except ValueError as err:
        raise ConfigError([ConfigProblem(path=path, message=str(err))], stage="apply") from err
    except Exception as err:
        message = f"{what} of {_who(catalog, kind, name)} raised {type(err).__name__}: {err}"
        raise ConfigError([ConfigProblem(path=path, message=message)], stage="apply") from err


def _join(path: str, relative: str) -> str:
    if not relative:
        return path
    return f"{path}{relative}" if relative.startswith("[") else f"{path}.{relative}"
