"""Graceful GOAWAY frames taken out of the bytes a peer sends (sans-IO, both sides).

See :class:`GracefulGoaway`.
"""

from __future__ import annotations

from h2.errors import ErrorCodes

__all__ = ["GOAWAY_HEAD", "GracefulGoaway"]

# A GOAWAY frame's header: 8 bytes of payload, type 0x7, no flags, stream 0 (RFC 9113 6.8).
GOAWAY_HEAD = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"


_HEAD = 9  # the size of a frame header
_GOAWAY = 0x7  # the frame type
_CONTINUATION = 0x9
_GOAWAY_MIN = _HEAD + 8  # last stream id and error code


class GracefulGoaway:
    """Takes the graceful GOAWAY frames (NO_ERROR) out of the bytes a peer sends.

    h2 takes any GOAWAY it reads for the end of the connection and refuses every frame
    after it, both ways: the streams a peer going away still finishes - an upstream
    draining answers those up to the frame's last stream id, a client closing gracefully
    waits for its answers - would be lost. So h2 never sees a graceful GOAWAY; its last
    stream id is handed over instead. A GOAWAY with an error code goes to h2 as it came.
    Sans-IO, for both sides: ``skip`` is how many bytes come before the first frame (the
    client's connection preface, on the server side).
    """

    __slots__ = ("buffer", "empty_continuations", "largest", "passing")

    def __init__(self, skip: int = 0, max_frame_size: int = 16384) -> None:
        self.empty_continuations = 0  # seen since the last take_empty_continuations()
        self.buffer = b""  # the start of a frame header, or of a GOAWAY frame
        self.passing = skip  # bytes of the current frame (not a GOAWAY) still to come
        self.largest = _HEAD + max_frame_size  # h2 refuses a larger frame: not kept here

    def take_empty_continuations(self) -> int:
        """How many empty CONTINUATION frames went by since the last call (frames that carry nothing)."""
        count, self.empty_continuations = self.empty_continuations, 0
        return count

    def feed(self, data: bytes) -> tuple[bytes, list[int]]:
        """The bytes for h2, and the last stream ids of the graceful GOAWAYs taken out."""
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        lasts: list[int] = []
        kept: list[bytes] = []
        kept_from = 0
        i = min(self.passing, len(data))
        self.passing -= i
        while i < len(data):
            if len(data) - i < _HEAD:
                break
            end = i + _HEAD + int.from_bytes(data[i : i + 3], "big")
            if data[i + 3] == _CONTINUATION and end - i == _HEAD:
                self.empty_continuations += 1  # h2 does not report them: counted here
            if data[i + 3] != _GOAWAY or end - i > self.largest:
                # Not a GOAWAY (or one h2 will refuse for its size): on to h2, whole or in part.
                self.passing = max(0, end - len(data))
                i = min(end, len(data))
                continue
            if end > len(data):
                break
            code = int.from_bytes(data[i + 13 : i + 17], "big")
            if end - i >= _GOAWAY_MIN and code == ErrorCodes.NO_ERROR:
                lasts.append(int.from_bytes(data[i + 9 : i + 13], "big") & 0x7FFFFFFF)
                kept.append(data[kept_from:i])
                kept_from = end
            i = end
        self.buffer = data[i:]
        if not kept_from:
            return data[:i] if self.buffer else data, lasts
        kept.append(data[kept_from:i])
        return b"".join(kept), lasts
