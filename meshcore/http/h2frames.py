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
  WINDOW_UPDATE and RST_STREAM frames directly, and the others through hyperframe;
- on the server side, with h2's outbound normalization and validation off (meshcore's
  h2fields does them), ``send_headers`` and ``send_data`` on a stream the client opened
  take the same steps as h2's, in the same order, through the same state machines and
  windows - less the generality the server never uses (str fields re-encoded, priority,
  padding, validation flags computed for checks that are off, frame objects): the frames
  go out as bytes. Anything else (a new stream, priority, padding, a str field, a window
  or frame size exceeded) is h2's, which refuses it as it always did;
- on the server side, with h2's inbound normalization and validation off and no header
  decoding (h2fields does those), a HEADERS frame without priority goes through h2's
  steps (stream limit, HPACK, state machines, content length, trailer rules) in h2's
  order, less the calls for what is off;
- its count of open streams (which also forgets closed ones, for every new stream)
  reads each stream's state once, with no property call per stream.

The server session (meshcore.runtime.h2server) and the upstream connection
(meshcore.runtime.h2upstream, the client side: the frame buffer, serialization and stream
count apply, the lean head paths switch themselves off) both run it. Both are held to h2
by differential tests (tests/test_h2frames.py): the same frames (or the same error) from
any byte stream in any split, the same bytes for any frame sent, and the same events,
answers and GOAWAY codes from whole connections, server and client side, fed generated
frame sequences, well-formed or not.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import h2.config
import h2.connection
from h2.connection import AllowedStreamIDs, ConnectionInputs
from h2.events import Event, TrailersReceived
from h2.exceptions import ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.stream import STREAM_OPEN, StreamInputs, StreamState
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from meshcore.http.h2hpack import CachingDecoder
from meshcore.http.h2quiet import SILENT, silence_hpack

__all__ = ["FastFrameBuffer", "H2FastConnection", "meshcore_connection"]

_DATA, _HEADERS, _RST_STREAM, _WINDOW_UPDATE, _CONTINUATION = 0x0, 0x1, 0x3, 0x8, 0x9
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
        if isinstance(getattr(self.incoming_buffer, "_data", None), bytearray):
            # (an h2 whose FrameBuffer holds its bytes otherwise keeps its own FrameBuffer)
            self.incoming_buffer = FastFrameBuffer(server=not self.config.client_side)
        table = self._frame_dispatch_table
        table[_Data] = table[DataFrame]
        table[_Headers] = table[HeadersFrame]
        table[_WindowUpdate] = table[WindowUpdateFrame]
        self._lean = _lean_send(self)
        config = self.config
        self._lean_receive = not (
            config.client_side
            or config.normalize_inbound_headers
            or config.validate_inbound_headers
            or config.header_encoding
        )

    def _open_streams(self, remainder: int) -> int:
        """h2's count of the open streams of one parity; closed streams are forgotten as h2 does."""
        count = 0
        closed = []
        for stream_id, stream in self.streams.items():
            state = stream.state_machine.state
            if STREAM_OPEN[state] and stream_id % 2 == remainder:
                count += 1
            elif state == StreamState.CLOSED:
                closed.append(stream_id)
        for stream_id in closed:
            self._closed_streams[stream_id] = self.streams.pop(stream_id).state_machine.stream_closed_by
        return count

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        """h2's, for a request head or trailers without priority: its steps, less what is off."""
        if not self._lean_receive or "PRIORITY" in frame.flags:
            return super()._receive_headers_frame(frame)
        stream_id = frame.stream_id
        if (
            stream_id not in self.streams
            and self.open_inbound_streams + 1 > self.local_settings.max_concurrent_streams
        ):
            return super()._receive_headers_frame(frame)  # h2 refuses it
        headers = list(h2.connection._decode_headers(self.decoder, frame.data))  # noqa: SLF001 - h2's HPACK errors
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(stream_id, AllowedStreamIDs.ODD)
        end_stream = "END_STREAM" in frame.flags
        if _informational(headers):  # a 1xx from a client: h2's own steps refuse it
            frames, more = stream.receive_headers(headers, end_stream, self.config.header_encoding)
            return frames, events + more
        machine = stream.state_machine
        stream_events = machine.process_input(StreamInputs.RECV_HEADERS)
        head: Any = stream_events[0]  # RequestReceived, or TrailersReceived
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            head.stream_ended = ended[0]
            stream_events += ended
        stream._initialize_content_length(headers)  # noqa: SLF001 - h2's own check
        if not end_stream and isinstance(head, TrailersReceived):
            msg = "Trailers must have END_STREAM set"
            raise ProtocolError(msg)
        head.headers = headers
        return [], events + stream_events

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's send_headers; a server's head or trailers on an open stream without h2's generality."""
        stream = self.streams.get(stream_id)
        if (
            stream is None
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or type(headers) is not list
            or not headers
            or not self._lean
            or not _all_bytes(headers)
        ):
            super().send_headers(
                stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive
            )
            return
        _send_headers(self, stream, headers, end_stream)

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        """h2's send_data; a server's unpadded bytes within the windows without h2's frame objects."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or pad_length is not None
            or type(data) is not bytes
            or not self._lean
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or size > self.max_outbound_frame_size
        ):
            super().send_data(stream_id, data, end_stream, pad_length)  # h2 refuses what does not fit
            return
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self._data_to_send += (
            _HEAD.pack(size >> 8, size & 0xFF, _DATA, _END_STREAM if end_stream else 0, stream_id) + data
        )
        self.outbound_flow_control_window -= size

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


def _all_bytes(headers: list[Any]) -> bool:
    """Whether every name and value is bytes (C-level: one join, no Python call per field)."""
    try:
        b"".join(itertools.chain.from_iterable(headers))
    except TypeError:
        return False
    return True


def _lean_send(conn: H2FastConnection) -> bool:
    config = conn.config
    return not (config.client_side or config.normalize_outbound_headers or config.validate_outbound_headers)


def _send_headers(conn: H2FastConnection, stream: Any, headers: list[Any], end_stream: bool) -> None:
    """h2's send_headers for a head (or trailers) on a stream the client opened, its frames as bytes."""
    conn.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
    informational = _informational(headers)
    machine = stream.state_machine
    if informational:
        if end_stream:
            msg = "Cannot set END_STREAM on informational responses."
            raise ProtocolError(msg)
        machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
    else:
        machine.process_input(StreamInputs.SEND_HEADERS)
    block = conn.encoder.encode(headers)
    size = stream.max_outbound_frame_size
    if end_stream:
        machine.process_input(StreamInputs.SEND_END_STREAM)
    if machine.trailers_sent and not end_stream:
        msg = "Trailers must have END_STREAM set."
        raise ProtocolError(msg)
    method = None  # h2's extract_method_header
    for name, value in headers:
        if name == b":method":
            method = value
            break
    stream.request_method = method
    if min(len(block), size) > conn.max_outbound_frame_size:  # h2 asserts every frame fits
        msg = "a frame over the peer's maximum frame size was about to be sent"
        raise AssertionError(msg)
    out = _header_frames(stream.stream_id, block, size, _END_STREAM if end_stream else 0)
    conn._data_to_send += out  # noqa: SLF001 - h2's output buffer, as its _prepare_for_sending fills it


def _informational(headers: list[Any]) -> bool:
    """h2's is_informational_response: a 1xx ``:status`` among the pseudo-header fields."""
    for name, value in headers:
        if name[:1] != b":":
            return False
        if name == b":status":
            return bool(value[:1] == b"1")
    return False


def _header_frames(sid: int, block: bytes, size: int, bits: int) -> bytes:
    """A header block as h2 frames it: HEADERS, then CONTINUATIONs past ``size`` bytes."""
    if len(block) <= size:
        length = len(block)
        return _HEAD.pack(length >> 8, length & 0xFF, _HEADERS, bits | _END_HEADERS, sid) + block
    parts = [block[i : i + size] for i in range(0, len(block), size)]
    frames = []
    for i, part in enumerate(parts):
        kind = _HEADERS if i == 0 else _CONTINUATION
        flags = (bits if i == 0 else 0) | (_END_HEADERS if i == len(parts) - 1 else 0)
        frames.append(_HEAD.pack(len(part) >> 8, len(part) & 0xFF, kind, flags, sid) + part)
    return b"".join(frames)


def meshcore_connection(*, client_side: bool, encoder: Any) -> H2FastConnection:
    """h2's connection as meshcore runs it, on either side.

    Fields are normalized and checked by meshcore.http.h2fields (``fields_received``,
    ``fields_to_send``), each in one pass held to h2's pipelines by differential tests, so
    h2's own checks are off (its generators cost about 170 Python calls per request, and its
    character checks loop over every byte); h2 and hpack log nothing; the common frames go
    through :class:`H2FastConnection`; heads are decoded once per table state by a
    :class:`CachingDecoder` with h2's header list limit, and encoded by ``encoder`` (the
    side's caching encoder).
    """
    silence_hpack()
    config = h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        logger=SILENT,
    )
    conn = H2FastConnection(config=config)
    conn.encoder = encoder
    conn.decoder = CachingDecoder(conn.decoder.max_header_list_size)
    return conn
