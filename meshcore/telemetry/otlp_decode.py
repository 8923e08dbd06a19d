"""Decoding the body of an OTLP/HTTP trace export (protobuf), for the control plane's receiver.

Sans-IO, no dependency: the few messages a trace view needs are read from the protobuf
wire format by hand, as :mod:`meshcore.telemetry.otlp` writes them (field numbers of
``opentelemetry/proto/collector/trace/v1/trace_service.proto``, ``trace/v1/trace.proto``
and ``common/v1/common.proto``); unknown fields are skipped, as protobuf says. Bad bytes
raise :class:`OtlpDecodeError`, never anything else, and nesting is bounded by the message
shapes (no recursion on input). Attribute values other than strings, integers, doubles and
booleans (arrays, key-value lists, bytes) are skipped.
"""

from __future__ import annotations

import struct

import attrs

__all__ = ["OtlpDecodeError", "ReceivedSpan", "decode_export"]

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class OtlpDecodeError(ValueError):
    """The body is not an ``ExportTraceServiceRequest`` (truncated, bad wire type, ...)."""


@attrs.frozen(kw_only=True)
class ReceivedSpan:
    """A span as received: ids in hex, times in nanoseconds since the epoch."""

    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status: int
    attributes: tuple[tuple[str, str | int | float | bool], ...] = ()


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:  # noqa: PLR2004 - a varint has at most 10 bytes
            msg = "truncated or overlong varint"
            raise OtlpDecodeError(msg)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of one message: ints for scalars, bytes for LEN."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _I64:
            if pos + 8 > end:
                msg = "truncated fixed64"
                raise OtlpDecodeError(msg)
            value = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            if pos + size > end:
                msg = "truncated length-delimited field"
                raise OtlpDecodeError(msg)
            value = data[pos : pos + size]
            pos += size
        elif wire == _I32:
            if pos + 4 > end:
                msg = "truncated fixed32"
                raise OtlpDecodeError(msg)
            value = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            msg = f"unsupported wire type {wire}"
            raise OtlpDecodeError(msg)
        out.append((number, wire, value))
    return out


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        msg = "expected a length-delimited field"
        raise OtlpDecodeError(msg)
    return value


def _text(value: int | bytes) -> str:
    return _bytes(value).decode("utf-8", "replace")


def _any_value(data: bytes) -> str | int | float | bool | None:
    for number, wire, value in _fields(data):
        if number == 1 and wire == _LEN:  # string_value
            return _text(value)
        if number == 2 and wire == _VARINT:  # bool_value  # noqa: PLR2004 - field numbers
            return bool(value)
        if number == 3 and wire == _VARINT:  # int_value  # noqa: PLR2004
            assert isinstance(value, int)  # noqa: S101 - a varint
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 4 and wire == _I64:  # double_value  # noqa: PLR2004
            assert isinstance(value, int)  # noqa: S101 - a fixed64
            return float(struct.unpack("<d", value.to_bytes(8, "little"))[0])
    return None


def _attribute(data: bytes) -> tuple[str, str | int | float | bool] | None:
    key = ""
    found: str | int | float | bool | None = None
    for number, _wire, value in _fields(data):
        if number == 1:
            key = _text(value)
        elif number == 2:  # noqa: PLR2004 - field number
            found = _any_value(_bytes(value))
    return (key, found) if key and found is not None else None


def _attributes(items: list[bytes]) -> tuple[tuple[str, str | int | float | bool], ...]:
    return tuple(a for a in (_attribute(i) for i in items) if a is not None)


def _int(value: int | bytes) -> int:
    if not isinstance(value, int):
        msg = "expected a scalar field"
        raise OtlpDecodeError(msg)
    return value


def _span(data: bytes, service: str) -> ReceivedSpan:
    trace_id = span_id = parent_id = b""
    name = ""
    kind = start = end = status = 0
    attributes: list[bytes] = []
    for number, _wire, value in _fields(data):
        if number == 1:
            trace_id = _bytes(value)
        elif number == 2:  # noqa: PLR2004 - field numbers of trace.proto's Span
            span_id = _bytes(value)
        elif number == 4:  # noqa: PLR2004
            parent_id = _bytes(value)
        elif number == 5:  # noqa: PLR2004
            name = _text(value)
        elif number == 6:  # noqa: PLR2004
            kind = _int(value)
        elif number == 7:  # noqa: PLR2004
            start = _int(value)
        elif number == 8:  # noqa: PLR2004
            end = _int(value)
        elif number == 9:  # noqa: PLR2004
            attributes.append(_bytes(value))
        elif number == 15:  # noqa: PLR2004
            status = next((_int(v) for n, _w, v in _fields(_bytes(value)) if n == 3), 0)  # noqa: PLR2004
    if len(trace_id) != 16 or len(span_id) != 8 or len(parent_id) not in (0, 8):  # noqa: PLR2004 - id sizes
        msg = "a span needs a 16-byte trace id and an 8-byte span id"
        raise OtlpDecodeError(msg)
    return ReceivedSpan(
        service=service,
        trace_id=trace_id.hex(),
        span_id=span_id.hex(),
        parent_id=parent_id.hex(),
        name=name,
        kind=kind,
        start_ns=start,
        end_ns=end,
        status=status,
        attributes=_attributes(attributes),
    )


def decode_export(body: bytes) -> list[ReceivedSpan]:
    """The spans of an ``ExportTraceServiceRequest``, each with its resource's ``service.name``.

    Raises:
        OtlpDecodeError: the body is not one.
    """
    spans: list[ReceivedSpan] = []
    for number, _wire, resource_spans in _fields(body):
        if number != 1:
            continue
        service = "unknown"
        scopes: list[bytes] = []
        for n, _w, value in _fields(_bytes(resource_spans)):
            if n == 1:  # resource
                for key, found in _attributes([_bytes(v) for m, _x, v in _fields(_bytes(value)) if m == 1]):
                    if key == "service.name":
                        service = str(found)
            elif n == 2:  # noqa: PLR2004 - scope_spans
                scopes.append(_bytes(value))
        for scope in scopes:
            spans.extend(_span(_bytes(v), service) for m, _w, v in _fields(scope) if m == 2)  # noqa: PLR2004
    return spans
