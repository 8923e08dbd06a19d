"""Fuzz targets: both HTTP/1.1 codecs side by side (differential), and the config loader.

Each target takes one input (bytes) and raises on a finding: an exception a codec or the
loader must never raise (anything but ProtocolError, or ConfigError), or a disagreement
between the h11 codecs (the reference) and the fast ones. A hang is caught by the
fuzzer's per-input timeout. ``fuzz/run.py`` runs them under atheris (coverage-guided);
tests/test_fuzz.py runs each for a few seconds in CI.

Input layout of the codec targets: byte 0 holds flags (EOF at the end; the request
method, on the client side), bytes 1-3 where the input is split into reads, the rest is
what the peer sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshcore.config.loader import parse_document, snapshot_from_data
from meshcore.errors import ConfigError, ProtocolError
from meshcore.http.codec import Data, EndOfMessage, Informational, RequestHead, ResponseHead
from meshcore.http.h1 import H11ClientCodec, H11ServerCodec
from meshcore.http.h1fast import FastClientCodec, FastServerCodec
from meshcore.registry import build_registry

__all__ = ["SEEDS", "TARGETS", "DisagreementError"]

MAX_HEAD = 2048  # small, so that size limits are reached too
Outcome = tuple[list[Any], int | None]


class DisagreementError(AssertionError):
    """The two codecs read the same bytes differently."""


def _chunks(data: bytes) -> tuple[int, list[bytes], bytes]:
    """Flags, the peer's bytes split into reads, and the raw bytes (from the layout above)."""
    flags = data[0] if data else 0
    raw = data[4:]
    cuts = sorted(b % (len(raw) + 1) for b in data[1:4])
    chunks, last = [], 0
    for cut in cuts:
        chunks.append(raw[last:cut])
        last = cut
    chunks.append(raw[last:])
    return flags, [c for c in chunks if c], raw


def _server_run(codec: Any, chunks: list[bytes], eof: bool) -> Outcome:
    """Every event of every request (pipelined ones too), or the status of the first error."""
    seen: list[Any] = []
    body = b""
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            codec.receive_data(chunk)
            while True:
                event = codec.next_event()
                if type(event) is RequestHead:
                    seen.append(("head", event.method, event.target, event.http_version, event.headers))
                    if event.method == b"CONNECT":  # the proxy refuses it (501) and closes
                        return seen, None
                elif type(event) is Data:
                    body += event.data
                elif type(event) is EndOfMessage:
                    seen.append(("body", body, event.trailers or []))
                    body = b""
                    # Answer it, so that a pipelined next request is read too.
                    codec.send_response_head(200, [(b"content-length", b"0")])
                    codec.send_end()
                    if not codec.start_next_cycle():
                        return seen, None
                else:  # NEED_DATA or CLOSED
                    break
    except ProtocolError as err:
        heads = [s for s in seen if s[0] == "head"]
        return heads, err.status
    return [*seen, ("partial", body)], None


def h1_server(data: bytes, fast_codec: Callable[..., Any] = FastServerCodec) -> None:
    """The server codecs on the same request bytes: the same events, or the same rejection."""
    flags, chunks, _ = _chunks(data)
    eof = bool(flags & 1)
    reference = _server_run(H11ServerCodec(max_head_size=MAX_HEAD), chunks, eof)
    fast = _server_run(fast_codec(max_head_size=MAX_HEAD), chunks, eof)
    if reference != fast:
        msg = f"server codecs disagree:\nh11:  {reference}\nfast: {fast}"
        raise DisagreementError(msg)


def _client_run(codec: Any, method: bytes, chunks: list[bytes], eof: bool) -> Outcome:
    """The events of the response to one ``method`` request, and whether it could be reused."""
    codec.send_request_head(method, b"/", [(b"host", b"a")])
    codec.send_end()
    seen: list[Any] = []
    body = b""
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            codec.receive_data(chunk)
            while True:
                event = codec.next_event()
                if type(event) is ResponseHead:
                    seen.append(("head", event.status, event.headers, event.http_version))
                elif type(event) is Informational:
                    seen.append(("informational", event.status, event.headers))
                    if event.status == 101:  # noqa: PLR2004 - Switching Protocols: HTTP ends here
                        return seen, None
                elif type(event) is Data:
                    body += event.data
                elif type(event) is EndOfMessage:
                    seen.append(("body", body, event.trailers or []))
                    if chunk:
                        seen.append(("reusable", codec.start_next_cycle()))
                    return seen, None
                else:
                    break
    except ProtocolError as err:
        heads = [s for s in seen if s[0] == "head"]
        return heads, err.status
    return [*seen, ("partial", body)], None


def h1_client(data: bytes) -> None:
    """The client codecs on the same response bytes: the same events, or the same rejection."""
    flags, chunks, _ = _chunks(data)
    eof = bool(flags & 1)
    method = (b"GET", b"HEAD", b"POST", b"GET")[(flags >> 1) & 3]
    reference = _client_run(H11ClientCodec(max_head_size=MAX_HEAD), method, chunks, eof)
    fast = _client_run(FastClientCodec(max_head_size=MAX_HEAD), method, chunks, eof)
    if reference != fast:
        msg = f"client codecs disagree:\nh11:  {reference}\nfast: {fast}"
        raise DisagreementError(msg)


_REGISTRY: list[Any] = []


def config(data: bytes) -> None:
    """The config loader on any document: a Snapshot or a ConfigError, never another exception."""
    if not _REGISTRY:
        _REGISTRY.append(build_registry())
    name = ("c.yaml", "c.json", "c.toml")[data[0] % 3] if data else "c.yaml"
    text = data[1:].decode("utf-8", errors="replace")
    try:
        document, _ = parse_document(text, name)
        snapshot_from_data(document, _REGISTRY[0])
    except ConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "h1_server": h1_server,
    "h1_client": h1_client,
    "config": config,
}

_GET = b"GET /a?b=c HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n"
_CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
_LENGTH = b"POST / HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc"
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_RESPONSE_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n"
_INTERIM = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.0 204 No Content\r\n\r\n"
_CONFIG = b"""\x00admin: {enabled: false}
listeners:
  - name: ingress
    address: 127.0.0.1:0
    filter_chains:
      - filters:
          - http_connection_manager:
              route_config: main
              http_filters: [router]
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            cluster: backend
            timeout: 5s
clusters:
  - name: backend
    endpoints: ["127.0.0.1:8080"]
"""

SEEDS: dict[str, list[bytes]] = {
    "h1_server": [
        b"\x01\x10\x20\x30" + _GET,
        b"\x00\x05\x40\x80" + _CHUNKED + _GET,
        b"\x01\x00\x00\x00" + _LENGTH,
    ],
    "h1_client": [
        b"\x01\x10\x20\x30" + _RESPONSE,
        b"\x00\x05\x40\x80" + _RESPONSE_CHUNKED,
        b"\x02\x00\x00\x00" + _INTERIM,
    ],
    "config": [
        _CONFIG,
        b'\x01{"clusters": [{"name": "a", "endpoints": ["h:1"]}]}',
        b"\x02[admin]\nenabled = false\n",
    ],
}
