"""The delivery protocol's messages and their framing on the stream.

Each message is a JSON object framed as gRPC frames a message (one flag byte, 0, and a
4-byte big-endian length), on one long-lived HTTP/2 stream per proxy. The vocabulary is
xDS's (``envoy.service.discovery.v3``), so that a later plugin can serve Envoy itself from
the same model:

- the proxy sends ``{"discovery_request": {type_url, version_info, response_nonce,
  error_detail, node}}`` (``node`` in the first one only): a subscription, an ACK (the
  nonce and the version it applied) or a NACK (the nonce, the version it kept, and
  ``error_detail.message``), and ``{"certificate_request": {request_id, csr}}``;
- the control plane sends ``{"discovery_response": {type_url, version_info, nonce,
  resources, removed_resources, incremental, last}}`` (``incremental``: only the resources
  named changed, as in delta xDS; ``last``: the end of one push, which the proxy applies
  whole) and ``{"certificate_response": {request_id, certificate_chain, trusted_ca,
  not_after}}`` or ``{"certificate_response": {request_id, error}}``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from meshcore.errors import ProtocolError

__all__ = ["MAX_MESSAGE_SIZE", "PATH", "FrameDecoder", "encode", "encode_resources", "encode_response"]

PATH = "/meshcore.delivery.v1.Delivery/Stream"
"""The HTTP/2 path of the delivery stream."""
CONTENT_TYPE = "application/grpc+json"
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""The largest message either side accepts (a Snapshot of a very large mesh fits)."""
_HEADER = struct.Struct(">BI")


def encode(message: dict[str, Any]) -> bytes:
    """One framed message."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(0, len(payload)) + payload


def encode_resources(resources: dict[str, Any]) -> str:
    """The ``resources`` list of a response, as JSON text (encoded once, sent to many proxies)."""
    return json.dumps([{"name": n, "resource": r} for n, r in resources.items()], separators=(",", ":"))


def encode_response(
    *,
    type_url: str,
    version: str,
    nonce: str,
    resources_json: str,
    removed: list[str],
    incremental: bool,
    last: bool,
) -> bytes:
    """One framed ``discovery_response`` whose resources are already JSON text.

    The same message as :func:`encode` of the equivalent dict: a push to a thousand replicas
    encodes its resources once.
    """
    dumps = json.dumps
    payload = (
        f'{{"discovery_response":{{"type_url":{dumps(type_url)},"version_info":{dumps(version)},'
        f'"nonce":{dumps(nonce)},"resources":{resources_json},'
        f'"removed_resources":{dumps(removed, separators=(",", ":"))},'
        f'"incremental":{"true" if incremental else "false"},"last":{"true" if last else "false"}}}}}'
    ).encode()
    return _HEADER.pack(0, len(payload)) + payload


class FrameDecoder:
    """Bytes of the stream in, whole messages out (sans-IO)."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The messages that ``data`` completes; ProtocolError on a malformed one."""
        self._buffer += data
        out = []
        while len(self._buffer) >= _HEADER.size:
            flags, size = _HEADER.unpack_from(self._buffer)
            if flags != 0:
                msg = f"compressed or unknown frame flags {flags:#x}"
                raise ProtocolError(msg)
            if size > self.max_size:
                msg = f"message of {size} bytes exceeds the limit of {self.max_size}"
                raise ProtocolError(msg)
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            try:
                message = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as err:
                msg = f"a message is not JSON: {err}"
                raise ProtocolError(msg) from err
            if not isinstance(message, dict) or len(message) != 1:
                msg = "a message must be an object with one key naming its kind"
                raise ProtocolError(msg)
            out.append(message)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buffer)


_REQUIRED: Any = object()


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
    """``body[name]``, checked to be of ``kind``; ``default`` when absent (ProtocolError if required)."""
    if name not in body or (body[name] is None and default is not _REQUIRED):
        if default is _REQUIRED:
            msg = f"{name} is required"
            raise ProtocolError(msg)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        msg = f"{name} must be {names}, got {type(value).__name__}"
        raise ProtocolError(msg)
    return value
