"""Access-log format strings: Envoy-style command operators, parsed and checked at config time.

A format is text with command operators: ``%NAME%``, ``%NAME(ARGUMENT)%``, and
``%NAME(ARGUMENT):LENGTH%`` (the value cut to LENGTH characters); ``%%`` is a literal
percent sign. ``REQ``, ``RESP`` and ``TRAILER`` take a header name, or two as ``X?Y`` (the
first one present). A mistake is a config error naming the position of the operator
(0-based) and, for an unknown name, the closest known one. What each operator renders is
in :mod:`meshcore.telemetry.accesslog`; this module only knows their names and arguments.
"""

from __future__ import annotations

import difflib
import enum
import re
from typing import Any, Self

import attrs

__all__ = ["OPERATORS", "Arg", "LogFormat", "LogFormatError", "Operator", "Segment", "parse_format"]


class Arg(enum.Enum):
    """Whether an operator takes an argument in parentheses."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


OPERATORS: dict[str, Arg] = {
    # time and size
    "START_TIME": Arg.OPTIONAL,  # strftime format, plus %3f, %6f, %9f (fractions) and %s (epoch)
    "DURATION": Arg.NONE,
    "RESPONSE_DURATION": Arg.NONE,
    "RESPONSE_TX_DURATION": Arg.NONE,
    "BYTES_RECEIVED": Arg.NONE,
    "BYTES_SENT": Arg.NONE,
    # the exchange
    "PROTOCOL": Arg.NONE,
    "RESPONSE_CODE": Arg.NONE,
    "RESPONSE_CODE_DETAILS": Arg.NONE,
    "RESPONSE_FLAGS": Arg.NONE,
    "RESPONSE_FLAGS_LONG": Arg.NONE,
    "GRPC_STATUS": Arg.OPTIONAL,  # CAMEL_STRING (default), SNAKE_STRING or NUMBER
    "GRPC_STATUS_NUMBER": Arg.NONE,
    "REQ": Arg.REQUIRED,
    "RESP": Arg.REQUIRED,
    "TRAILER": Arg.REQUIRED,
    "ROUTE_NAME": Arg.NONE,
    "REQUEST_ID": Arg.NONE,
    "TRACE_ID": Arg.NONE,
    "FILTER_STATE": Arg.REQUIRED,  # a key of request.info.metadata
    # upstream
    "UPSTREAM_HOST": Arg.NONE,
    "UPSTREAM_REMOTE_ADDRESS": Arg.NONE,
    "UPSTREAM_CLUSTER": Arg.NONE,
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": Arg.NONE,
    # downstream connection
    "DOWNSTREAM_REMOTE_ADDRESS": Arg.NONE,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": Arg.NONE,
    "DOWNSTREAM_REMOTE_PORT": Arg.NONE,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": Arg.NONE,
    "DOWNSTREAM_LOCAL_ADDRESS": Arg.NONE,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": Arg.NONE,
    "DOWNSTREAM_LOCAL_PORT": Arg.NONE,
    "REQUESTED_SERVER_NAME": Arg.NONE,
    "DOWNSTREAM_TLS_VERSION": Arg.NONE,
    "DOWNSTREAM_PEER_URI_SAN": Arg.NONE,
    "DOWNSTREAM_PEER_DNS_SAN": Arg.NONE,
    "DOWNSTREAM_PEER_SUBJECT": Arg.NONE,
    "DOWNSTREAM_PEER_FINGERPRINT_256": Arg.NONE,
    "CONNECTION_ID": Arg.NONE,
    # the process
    "HOSTNAME": Arg.NONE,
    "UNIQUE_ID": Arg.NONE,
    "ENVIRONMENT": Arg.REQUIRED,
}
"""Every command operator, and whether it takes an argument."""

_NAME = re.compile(r"[A-Z0-9_]+")
_GRPC_STATUS_FORMATS = ("CAMEL_STRING", "SNAKE_STRING", "NUMBER")


class LogFormatError(ValueError):
    """A format string that cannot be parsed: the message names the position."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@attrs.frozen
class Operator:
    """One command operator of a format: its name, argument, length limit and position."""

    name: str
    argument: str | None = None
    length: int | None = None
    position: int = 0


Segment = str | Operator


def _operator(text: str, start: int) -> tuple[Operator, int]:
    """The operator that starts at ``text[start] == "%"``, and the index after its closing "%"."""
    match = _NAME.match(text, start + 1)
    name = match.group() if match else ""
    if not name:
        msg = f"a lone % at position {start} (write a literal % as %%)"
        raise LogFormatError(msg, start)
    i = start + 1 + len(name)
    argument = length = None
    if i < len(text) and text[i] == "(":
        close = text.find(")", i)
        if close < 0:
            msg = f"unclosed '(' in command operator %{name}( at position {start}"
            raise LogFormatError(msg, start)
        argument = text[i + 1 : close]
        i = close + 1
    if i < len(text) and text[i] == ":":
        digits = re.match(r"\d+", text[i + 1 :])
        if digits is None or int(digits.group()) < 1:
            msg = f"the length after %{name}(...): at position {start} must be a positive integer"
            raise LogFormatError(msg, start)
        length = int(digits.group())
        i += 1 + len(digits.group())
    if i >= len(text) or text[i] != "%":
        shown = text[start : min(i + 1, len(text))]
        msg = f"unterminated command operator {shown!r} at position {start} (write a literal % as %%)"
        raise LogFormatError(msg, start)
    _check(name, argument, start)
    return Operator(name, argument, length, start), i + 1


def _check(name: str, argument: str | None, position: int) -> None:
    arg = OPERATORS.get(name)
    if arg is None:
        close = difflib.get_close_matches(name, list(OPERATORS), n=1, cutoff=0.5)
        hint = f"; did you mean %{close[0]}%?" if close else ""
        msg = f"unknown command operator %{name}% at position {position}{hint}"
        raise LogFormatError(msg, position)
    if arg is Arg.REQUIRED and not argument:
        msg = f"%{name}% at position {position} needs an argument: %{name}(...)%"
        raise LogFormatError(msg, position)
    if arg is Arg.NONE and argument is not None:
        msg = f"%{name}% at position {position} takes no argument, got ({argument})"
        raise LogFormatError(msg, position)
    if (
        name in ("REQ", "RESP", "TRAILER")
        and argument
        and (argument.count("?") > 1 or "" in argument.split("?"))
    ):
        msg = f"%{name}({argument})% at position {position}: the argument is a header name, or two as X?Y"
        raise LogFormatError(msg, position)
    if name == "GRPC_STATUS" and argument is not None and argument not in _GRPC_STATUS_FORMATS:
        msg = f"%GRPC_STATUS({argument})% at position {position}: the argument is one of {', '.join(_GRPC_STATUS_FORMATS)}"
        raise LogFormatError(msg, position)


def parse_format(text: str) -> tuple[Segment, ...]:
    """The literal text and operators of a format string; LogFormatError if it is malformed."""
    segments: list[Segment] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        percent = text.find("%", i)
        if percent < 0:
            literal.append(text[i:])
            break
        literal.append(text[i:percent])
        if text.startswith("%%", percent):
            literal.append("%")
            i = percent + 2
            continue
        operator, i = _operator(text, percent)
        if "".join(literal):
            segments.append("".join(literal))
        literal = []
        segments.append(operator)
    if "".join(literal):
        segments.append("".join(literal))
    return tuple(segments)


class LogFormat(str):
    """A format string, checked when the config is loaded (see :func:`parse_format`)."""

    __slots__ = ()

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> Self:
        if not isinstance(value, str):
            msg = (
                f'must be a format string such as "%REQ(:PATH)% %RESPONSE_CODE%", got {type(value).__name__}'
            )
            raise ValueError(msg)  # noqa: TRY004 - the structurer's contract: every bad value is a ValueError
        parse_format(value)
        return cls(value)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The parsed format."""
        return parse_format(self)
