"""The common HTTP/2 frames read and written without hyperframe's per-frame work (sans-IO).

h2 reads every frame through hyperframe: a frame object built with a ``Flags`` set (a
Python ``MutableSet``: a call per flag tested), its body parsed through mixins, then
``repr()``'d for a trace log nobody reads; and it writes every frame the same way back
(``serialize`` iterating the defined flags). For the frames of an ordinary request,
about 40 Python calls. :class:`H2FastConnection` is h2's ``H2Connection`` with two seams
changed, and nothing else of h2's state machines, flow control or limits:

- its frame buffer (:class:`FastFrameBuffer`) parses the common frames itself - DATA and
  HEADERS (whole header block, not padded) and WINDOW_UPDATE with a valid increment -
  into the same hyperframe classes (subclasses whose ``repr`` is C-level, registered with
  h2's dispatch as their parents), and hands everything else (any other type, padding,
  CONTINUATION sequences, a frame too large, an increment out of range, a short body)
  to h2's own buffer, which refuses or accepts it as it always did;
- its ``_prepare_for_sending`` serializes DATA, HEADERS (not padded, no priority),
  WINDOW_UPDATE and RST_STREAM frames directly, and the others through hyperframe.

Both are held to h2 by differential tests (tests/test_h2frames.py): the same frames (or
the same error) from any byte stream in any split, the same bytes for any frame sent,
and the same events, answers and GOAWAY codes from whole connections fed generated
frame sequences, well-formed or not.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

__all__ = ["FastFrameBuffer", "H2FastConnection"]

_DATA, _HEADERS, _RST_STREAM, _WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x8
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_MAX_INCREMENT = 2**31 - 1
_FRAME_HEAD = 9  # bytes of a frame header
_PRIORITY_SIZE = 5  # the priority fields of a HEADERS frame: stream dependency and weight
_INCREMENT_SIZE = 4  # a WINDOW_UPDATE frame's whole body
_HEAD = struct.Struct(">HBBBL")  # length (24 bits, as 16 + 8), type, flags, stream id
_PRIORITY_FIELDS = struct.Struct(">LB")


class _Data(DataFrame):
    """A DATA frame parsed by FastFrameBuffer (h2 dispatches it as a DataFrame)."""

    __repr__ = object.__repr__  # h2 repr()s every frame for its trace log: no Python call


class _Headers(HeadersFrame):
    """A HEADERS frame parsed by FastFrameBuffer (h2 dispatches it as a HeadersFrame)."""

    __repr__ = object.__repr__


class _WindowUpdate(WindowUpdateFrame):
    """A WINDOW_UPDATE frame parsed by FastFrameBuffer (h2 dispatches it as a WindowUpdateFrame)."""

    __repr__ = object.__repr__


# The flags a frame's flag byte sets, as hyperframe reads them (undefined bits ignored).
_DATA_FLAGS = {bits: frozenset({"END_STREAM"} if bits & _END_STREAM else ()) for bits in (0, 1)}
_HEADERS_FLAGS = {
    bits: frozenset(
        name
        for name, bit in (("END_STREAM", _END_STREAM), ("END_HEADERS", _END_HEADERS), ("PRIORITY", _PRIORITY))
        if bits & bit
    )
    for bits in range(0x40)
    if not bits & _PADDED
}
_NO_FLAGS: frozenset[str] = frozenset()


class FastFrameBuffer(FrameBuffer):
    """h2's FrameBuffer, with the common frames parsed without hyperframe's machinery.

    The frames it builds have their flags as a frozenset (h2 only tests them with ``in``
    on frames it receives); everything it does not recognise as common goes to h2's own
    parsing, in order, so the errors are h2's.
    """

    def __next__(self) -> Frame:
        data = self._data
        size = len(data)
        if size < _FRAME_HEAD or self._headers_buffer:  # a header block under way: CONTINUATIONs are h2's
            return super().__next__()
        length = (data[0] << 16) | (data[1] << 8) | data[2]
        end = _FRAME_HEAD + length
        if size < end or length > self.max_frame_size:
            return super().__next__()  # incomplete (stops), or too large (h2 refuses it)
        kind = data[3]
        flags = data[4]
        stream_id = ((data[5] & 0x7F) << 24) | (data[6] << 16) | (data[7] << 8) | data[8]
        frame: Any
        if kind == _DATA and stream_id and not flags & _PADDED:
            frame = _Data.__new__(_Data)
            frame.flags = _DATA_FLAGS[flags & _END_STREAM]
            frame.pad_length = 0
            frame.data = bytes(data[_FRAME_HEAD:end])
        elif kind == _HEADERS and stream_id and flags & _END_HEADERS and not flags & _PADDED:
            frame = _Headers.__new__(_Headers)
            frame.flags = _HEADERS_FLAGS[flags & 0x3F]
            frame.pad_length = 0
            start = _FRAME_HEAD
            if flags & _PRIORITY:
                if length < _PRIORITY_SIZE:
                    return super().__next__()  # hyperframe: "Invalid Priority data"
                depends_on, frame.stream_weight = _PRIORITY_FIELDS.unpack_from(data, _FRAME_HEAD)
                frame.exclusive = bool(depends_on >> 31)
                frame.depends_on = depends_on & 0x7FFFFFFF
                start = _FRAME_HEAD + _PRIORITY_SIZE
            else:
                frame.depends_on = frame.stream_weight = 0
                frame.exclusive = False
            frame.data = bytes(data[start:end])
        elif kind == _WINDOW_UPDATE and length == _INCREMENT_SIZE:
            increment = (data[9] << 24) | (data[10] << 16) | (data[11] << 8) | data[12]
            if not 1 <= increment <= _MAX_INCREMENT:
                return super().__next__()  # h2 refuses it
            frame = _WindowUpdate.__new__(_WindowUpdate)
            frame.flags = _NO_FLAGS
            frame.window_increment = increment
        else:
            return super().__next__()
        frame.stream_id = stream_id
        frame.body_len = length
        del data[:end]
        return frame  # type: ignore[no-any-return]


def _serialize(frame: Frame) -> bytes:
    """``frame.serialize()`` for the frames a server sends per request; hyperframe's for the others."""
    kind = type(frame)
    flags = frame.flags._flags  # noqa: SLF001 - hyperframe's Flags is a set behind Python methods
    bits = 0
    if kind is DataFrame:
        body = frame.data  # type: ignore[attr-defined]
        if "PADDED" in flags or frame.pad_length or type(body) is not bytes:  # type: ignore[attr-defined]
            return frame.serialize()
        if "END_STREAM" in flags:
            bits = _END_STREAM
    elif kind is HeadersFrame:
        body = frame.data  # type: ignore[attr-defined]
        if "PADDED" in flags or "PRIORITY" in flags or frame.pad_length or type(body) is not bytes:  # type: ignore[attr-defined]
            return frame.serialize()
        if "END_STREAM" in flags:
            bits = _END_STREAM
        if "END_HEADERS" in flags:
            bits |= _END_HEADERS
    elif kind is WindowUpdateFrame:
        body = (frame.window_increment & 0x7FFFFFFF).to_bytes(4, "big")  # type: ignore[attr-defined]
    elif kind is RstStreamFrame:
        body = frame.error_code.to_bytes(4, "big")  # type: ignore[attr-defined]
    else:
        return frame.serialize()
    length = len(body)
    frame.body_len = length
    return _HEAD.pack(length >> 8, length & 0xFF, frame.type, bits, frame.stream_id & 0x7FFFFFFF) + body  # type: ignore[no-any-return]


class H2FastConnection(h2.connection.H2Connection):
    """h2's connection, reading and writing its common frames without hyperframe's per-frame work."""

    def __init__(self, config: h2.config.H2Configuration | None = None) -> None:
        super().__init__(config=config)
        self.incoming_buffer = FastFrameBuffer(server=not self.config.client_side)
        table = self._frame_dispatch_table
        table[_Data] = table[DataFrame]
        table[_Headers] = table[HeadersFrame]
        table[_WindowUpdate] = table[WindowUpdateFrame]

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        if not frames:
            return
        if len(frames) == 1:
            data = _serialize(frames[0])
        else:
            data = b"".join([_serialize(frame) for frame in frames])
        limit = self.max_outbound_frame_size
        for frame in frames:
            if frame.body_len > limit:
                msg = f"a frame over the peer's maximum frame size ({limit}) was about to be sent"
                raise AssertionError(msg)  # h2 asserts it: a bug of ours or h2's, never the peer's
        self._data_to_send += data
