"""Telling TLS from plaintext on one port, by the first byte a client sends (PERMISSIVE mTLS).

A listener with both TLS and plaintext filter chains (Istio's PERMISSIVE mode: mTLS from
mesh peers, plaintext from the rest, on one port) looks at the first byte of each
connection without consuming it (``MSG_PEEK``): a TLS connection starts with a handshake
record (content type 22, RFC 8446 section 5.1), which no HTTP/1.1 request (a method's
letter) and no HTTP/2 connection preface (``P``) starts with. The connection then takes a
TLS chain, handshake and all, or a plaintext one.
"""

from __future__ import annotations

import socket
from typing import Final

import trio

__all__ = ["TLS_HANDSHAKE_RECORD", "looks_like_tls", "sniff_tls"]

TLS_HANDSHAKE_RECORD: Final = 0x16
"""The first byte of a TLS ClientHello: a record of content type ``handshake``."""


def looks_like_tls(first: bytes) -> bool:
    """Whether a connection that began with ``first`` speaks TLS."""
    return first[:1] == bytes([TLS_HANDSHAKE_RECORD])


async def sniff_tls(stream: trio.SocketStream, timeout: float) -> bool | None:  # noqa: ASYNC109 - the caller's handshake budget, passed on
    """Whether the client on ``stream`` starts a TLS handshake; None if it sent nothing in ``timeout``.

    Nothing is consumed: the bytes stay for the TLS handshake or the plaintext codec.
    """
    with trio.move_on_after(timeout):
        try:
            first = await stream.socket.recv(1, socket.MSG_PEEK)
        except OSError:
            return None
        return looks_like_tls(first) if first else None
    return None
