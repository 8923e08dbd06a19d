"""The one error hierarchy of meshcore.

Every error meshcore raises on purpose derives from :class:`MeshcoreError`.
Messages say what, where, and what was found: "`burst` must be >= 1, got 0".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from meshcore.flags import ResponseFlag

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "MeshcoreError",
    "PluginError",
    "ProtocolError",
    "UpstreamError",
]


class MeshcoreError(Exception):
    """Base class of every error meshcore raises on purpose."""


@attrs.frozen(kw_only=True)
class ConfigProblem:
    """One problem found in a config: where it is and what is wrong.

    Attributes:
        path: the field path, e.g. ``listeners[0].filter_chains[0].filters[1].ratelimit.burst``
            (empty for a problem with the document as a whole).
        message: the reason, e.g. ``must be >= 1, got 0``.
        file: the file the config came from, when it came from one.
        line: the 1-based line in that file, where the format gives it.
    """

    path: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        if self.path:
            where += f"{self.path}: "
        return where + self.message


class ConfigError(MeshcoreError):
    """A config that cannot be used, with every problem found in it.

    Attributes:
        problems: every problem found.
        stage: where it was found: ``parse`` (the document is not YAML, TOML or JSON, or
            cannot be read), ``validation`` (fields, references, plugin checks) or
            ``apply`` (building it failed: a filter factory, a TLS context, a socket).
    """

    def __init__(self, problems: Iterable[ConfigProblem], *, stage: str = "validation") -> None:
        self.problems: Sequence[ConfigProblem] = tuple(problems)
        self.stage = stage
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid config")


class PluginError(MeshcoreError):
    """A plugin could not be loaded or registered, or provides a name already taken."""


class ProtocolError(MeshcoreError):
    """A peer broke the protocol (or we did).

    Attributes:
        status: the HTTP status to answer with, when an answer is still possible.
        remote: True when the remote peer is at fault, False when we are (as in h11).
    """

    def __init__(self, message: str, *, status: int = 400, remote: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.remote = remote


class UpstreamError(MeshcoreError):
    """A request could not be served by the upstream; ``flag`` says why (UF, UT, UR, ...).

    Attributes:
        flag: the response flag.
        refused: the upstream refused the request before processing it (an HTTP/2
            REFUSED_STREAM, or a stream past a GOAWAY's last id): safe to send again.
    """

    def __init__(self, flag: ResponseFlag, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.flag = flag
        self.refused = refused
