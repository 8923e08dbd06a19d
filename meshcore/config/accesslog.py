"""Access-log config: per listener, one or more logs, each a sink, a format and a filter.

Written under a listener as ``access_log``: a list of logs, or ``true`` for the original
single JSON line per request in the process log (the ``process_log`` sink with its
default fields). Access logs go to their own stream (stdout by default), never into the
process's own log unless ``sink: process_log`` asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from meshcore.config.logformat import LogFormat
from meshcore.config.structure import Path, Structurer
from meshcore.config.units import ByteSize, Duration
from meshcore.config.validators import at_least, at_most
from meshcore.flags import ResponseFlag

__all__ = [
    "DEFAULT_FORMAT",
    "DEFAULT_TCP_FORMAT",
    "AccessLog",
    "AccessLogFilter",
    "AccessLogs",
    "access_logs",
]

DEFAULT_FORMAT = LogFormat(
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
    '%BYTES_RECEIVED% %BYTES_SENT% %DURATION% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQUEST_ID%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %TRACE_ID%\n'
)
"""The text format of an HTTP access log that names none (Envoy's default, plus the cluster
and the trace id)."""
DEFAULT_TCP_FORMAT = LogFormat(
    "[%START_TIME%] %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_CLUSTER% "
    "%UPSTREAM_HOST% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%\n"
)
"""The text format of a TCP access log that names none."""


def _flag_codes(_instance: Any, _attribute: Any, value: tuple[str, ...]) -> None:
    known = [flag.value for flag in ResponseFlag]
    for code in value:
        if code not in known:
            msg = f"unknown response flag {code!r} (known: {', '.join(known)})"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class AccessLogFilter:
    """Which requests (or connections) are logged: all conditions set must hold."""

    status_min: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(999)])
    )
    """Log only responses with at least this status (``400``: errors only)."""
    status_max: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([at_least(0), at_most(999)])
    )
    min_duration: Duration | None = None
    """Log only requests that took at least this long."""
    response_flags: tuple[str, ...] = attrs.field(default=(), validator=_flag_codes)
    """Log only requests with one of these response flags (``UF``, ``UT``, ...)."""
    any_response_flag: bool = False
    """Log only requests with a response flag (any)."""


@attrs.frozen(kw_only=True)
class AccessLog:
    """One access log of a listener: where lines go, what they say, which requests."""

    sink: Literal["stdout", "stderr", "file", "process_log"] = "stdout"
    """``stdout``, ``stderr``, a ``file``, or ``process_log`` (a JSON event in the process's log)."""
    path: str | None = None
    """The file of a ``file`` sink (opened for appending; reopened on SIGUSR1 or when moved)."""
    format: LogFormat | None = None
    """A text format (see :data:`DEFAULT_FORMAT`); a line that does not end in a newline gets one."""
    json_format: Mapping[str, LogFormat] | None = None
    """A JSON object per line: each key's value is a format (a lone operator keeps its type)."""
    filter: AccessLogFilter = AccessLogFilter()
    max_size: ByteSize | None = None
    """Rotate the file past this size: ``path`` becomes ``path.1``, ``path.1`` becomes ``path.2``, ..."""
    max_files: int = attrs.field(default=5, validator=at_least(1))
    """Rotated files kept (``path.1`` to ``path.N``); older ones are deleted."""
    flush_interval: Duration = Duration(1)
    """Lines are written in batches at least this often (and whenever 64 KiB wait)."""
    max_buffered: ByteSize = ByteSize(16 * 1024 * 1024)
    """Bytes waiting for a slow sink at most; lines past that are dropped (and counted)."""

    def __attrs_post_init__(self) -> None:
        if self.sink == "file" and not self.path:
            msg = "a file sink needs a path"
            raise ValueError(msg)
        if self.sink != "file" and (self.path or self.max_size is not None):
            msg = f"path and max_size are for file sinks, not {self.sink}"
            raise ValueError(msg)
        if self.format is not None and self.json_format is not None:
            msg = "takes format or json_format, not both"
            raise ValueError(msg)


class AccessLogs(tuple[AccessLog, ...]):
    """A listener's access logs; in config a list of them, or ``true`` for the process-log line."""

    __slots__ = ()

    @classmethod
    def convert(cls, value: bool | Iterable[AccessLog]) -> AccessLogs:
        """``True`` is the original process-log line, ``False`` none, else the logs given."""
        if isinstance(value, AccessLogs):
            return value
        if value is True:
            return cls((AccessLog(sink="process_log"),))
        if value is False:
            return cls()
        return cls(value)

    @classmethod
    def __meshcore_structure__(cls, structurer: Structurer, data: Any, path: Path) -> Any:
        if isinstance(data, bool):
            return cls.convert(data)
        if not isinstance(data, list | tuple):
            structurer.problem(path, f"must be a list of access logs or a boolean, got {type(data).__name__}")
            return structurer.FAILED
        logs = [structurer.structure_attrs(item, AccessLog, (*path, i)) for i, item in enumerate(data)]
        return structurer.FAILED if any(log is structurer.FAILED for log in logs) else cls(logs)


def access_logs(value: bool | Iterable[AccessLog]) -> AccessLogs:
    """The converter of ``Listener.access_log``: see :meth:`AccessLogs.convert`."""
    return AccessLogs.convert(value)
