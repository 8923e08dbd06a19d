"""Human units in config: durations ("250ms"), sizes ("10MiB"), addresses ("host:port"), secrets.

Each type knows how to parse itself from config data through ``__meshcore_parse__``; the
structurer calls it, so a plugin author can define a scalar type of their own the same way.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, Self

import attrs

__all__ = ["Address", "ByteSize", "Duration", "SecretStr", "format_duration"]

_DURATION_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)\s*$")
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*(-?\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_MAX_PORT = 65535


def _type_name(value: object) -> str:
    return type(value).__name__


class Duration(float):
    """A duration in seconds, written in config as "250ms", "2s", "1.5m", "1h" or a number of seconds."""

    __slots__ = ()

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> Self:
        if isinstance(value, bool):
            msg = f'must be a duration such as "250ms" or "2s", got {value!r}'
            raise ValueError(msg)
        if isinstance(value, int | float):
            try:
                seconds = float(value)
            except OverflowError:  # an int beyond float range
                seconds = math.inf
        elif isinstance(value, str):
            match = _DURATION_RE.match(value)
            if match is None:
                msg = f'must be a duration such as "250ms" or "2s", got {value!r}'
                raise ValueError(msg)
            seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        else:
            msg = f'must be a duration such as "250ms" or "2s", got {_type_name(value)}'
            raise ValueError(msg)
        if not math.isfinite(seconds):  # YAML's .nan and .inf, or digits beyond float range
            msg = f"must be a finite duration, got {value!r}"
            raise ValueError(msg)
        if seconds < 0:
            msg = f"must be >= 0, got {value!r}"
            raise ValueError(msg)
        return cls(seconds)

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


def format_duration(seconds: float) -> str:
    """Render seconds the way a human writes them in config ("250ms", "2s").

    15 significant digits: ``{:g}``'s default of 6 would render 1000001s as "1e+06s",
    which is neither the same duration nor one that parses.
    """
    if seconds and seconds < 1:
        ms = seconds * 1000
        return f"{ms:.15g}ms" if ms >= 1 else f"{seconds * 1e6:.15g}us"
    return f"{seconds:.15g}s"


class ByteSize(int):
    """A size in bytes, written in config as "10MiB", "60KiB", "512B" or a number of bytes."""

    __slots__ = ()

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> Self:
        if isinstance(value, bool):
            msg = f'must be a size such as "64KiB" or "10MiB", got {value!r}'
            raise ValueError(msg)
        if isinstance(value, int):
            size = value
        elif isinstance(value, str):
            match = _SIZE_RE.match(value)
            if match is None:
                msg = f'must be a size such as "64KiB" or "10MiB", got {value!r}'
                raise ValueError(msg)
            size = int(match[1]) * _SIZE_UNITS[match[2] or ""]
        else:
            msg = f'must be a size such as "64KiB" or "10MiB", got {_type_name(value)}'
            raise ValueError(msg)
        if size < 0:
            msg = f"must be >= 0, got {value!r}"
            raise ValueError(msg)
        return cls(size)


@attrs.frozen
class Address:
    """A socket address, written in config as "host:port" ("[::1]:8080" for IPv6)."""

    host: str
    port: int

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> Self:
        if not isinstance(value, str):
            msg = f'must be an address "host:port", got {_type_name(value)}'
            raise ValueError(msg)
        host, sep, port_text = value.rpartition(":")
        # isascii: str.isdigit() also accepts digits that int() rejects ("²") or that nobody
        # means as a port (fullwidth "\uff18\uff10").
        if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
            msg = f'must be an address "host:port", got {value!r}'
            raise ValueError(msg)
        if host.startswith("["):
            if not host.endswith("]"):
                msg = f'must be an address "host:port", got {value!r}'
                raise ValueError(msg)
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                msg = f"has an invalid IPv6 address {host!r}"
                raise ValueError(msg) from None
        elif ":" in host:
            msg = f'must put an IPv6 address in brackets ("[::1]:8080"), got {value!r}'
            raise ValueError(msg)
        port = int(port_text)
        if not 0 <= port <= _MAX_PORT:
            msg = f"port must be between 0 and {_MAX_PORT}, got {port}"
            raise ValueError(msg)
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class SecretStr(str):
    """A secret, written in config as a string (an API key, a token, a PEM private key), never shown.

    A config field typed ``SecretStr`` is a declared secret: the admin server's
    ``/config_dump`` shows it as ``[redacted]``, and so does its ``repr`` (a config object
    in a log line or a traceback). It is a ``str``: ``str(secret)``, comparisons and
    string methods see the secret itself, as the filter that uses it needs to.
    """

    __slots__ = ()

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> Self:
        if not isinstance(value, str):
            msg = f"must be a string, got {_type_name(value)}"
            raise ValueError(msg)
        return cls(value)

    def __repr__(self) -> str:
        return "SecretStr('[redacted]')"
