"""Active health checkers: ``http``, ``tcp`` and ``grpc`` (the standard ``grpc.health.v1``).

Each is a plugin like any third-party checker: its factory takes its config and returns an
object whose ``async check(host) -> bool`` probes one endpoint once. The runtime owns the
rest (interval and jitter, timeout, healthy and unhealthy thresholds; see
``meshcore/runtime/health.py``): a check that raises or runs past the timeout fails.

Every check opens a connection of its own through ``host.connect()`` (with the cluster's
TLS, when it has some) and closes it, so a check never competes with requests for a pooled
connection, and a connection limit never hides a dead endpoint.
"""

from __future__ import annotations

import binascii
import struct
from typing import Protocol

import attrs
import h2.config
import h2.connection
import h2.events
import h11
import trio

import meshcore
from meshcore import at_least, at_most

__all__ = ["Endpoint", "GrpcHealthCheck", "HttpHealthCheck", "TcpHealthCheck"]

RECEIVE_SIZE = 16 * 1024
MAX_RESPONSE = 64 * 1024  # bytes of a health answer read at most
_SERVING = 1  # grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING


class _Cluster(Protocol):
    @property
    def name(self) -> str: ...


class Endpoint(Protocol):
    """What a health checker is given: the endpoint to probe."""

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        ...

    @property
    def cluster(self) -> _Cluster:
        """Its cluster (``cluster.name`` is the default Host and :authority)."""
        ...

    async def connect(self) -> trio.abc.Stream:
        """A new transport to the endpoint, with the cluster's TLS if it has some."""
        ...


def _expected(statuses: tuple[tuple[int, int], ...]) -> None:
    for start, end in statuses:
        if not 100 <= start < end <= 600:  # noqa: PLR2004 - the range of HTTP statuses
            msg = f"expected_statuses must be ranges [start, end) within 100..600, got [{start}, {end}]"
            raise ValueError(msg)


@attrs.frozen(kw_only=True)
class HttpHealthCheckConfig:
    """Config of the ``http`` health checker."""

    path: str = attrs.field(default="/", validator=meshcore.non_empty)
    """The path requested with GET."""
    host: str = ""
    """The Host header (default: the cluster's name, as Envoy sends it)."""
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)
    """Ranges [start, end) of statuses that mean healthy (Envoy's default: 200 only)."""
    request_headers_to_add: tuple[tuple[str, str], ...] = ()

    def __attrs_post_init__(self) -> None:
        _expected(self.expected_statuses)


class HttpHealthCheck:
    """GET the path over HTTP/1.1; healthy if the status is an expected one."""

    def __init__(self, config: HttpHealthCheckConfig | None = None) -> None:
        self.config = config or HttpHealthCheckConfig()

    async def check(self, host: Endpoint) -> bool:
        """One check of ``host``."""
        config = self.config
        stream = await host.connect()
        try:
            conn = h11.Connection(h11.CLIENT)
            headers = [
                ("host", config.host or host.cluster.name),
                ("user-agent", "meshcore-health-check"),
                ("connection", "close"),
                *config.request_headers_to_add,
            ]
            request = h11.Request(method="GET", target=config.path, headers=headers)
            await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            received = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = bytes(await stream.receive_some(RECEIVE_SIZE))
                    received += len(data)
                    if received > MAX_RESPONSE:
                        return False
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    return any(start <= event.status_code < end for start, end in config.expected_statuses)
                if not isinstance(event, h11.InformationalResponse):
                    return False
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()


def _hex(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        msg = f'must be hex bytes such as "0a1b", got {value!r}'
        raise ValueError(msg) from None
    del attribute


@attrs.frozen(kw_only=True)
class TcpHealthCheckConfig:
    """Config of the ``tcp`` health checker (payloads in hex, as Envoy writes them)."""

    send: str = attrs.field(default="", validator=_hex)
    """Bytes sent once connected (hex; empty: a connect-only check)."""
    receive: tuple[str, ...] = attrs.field(default=(), validator=attrs.validators.deep_iterable(_hex))
    """Payloads that must all appear, in order, in what comes back (hex)."""


class TcpHealthCheck:
    """Connect; optionally send bytes and expect bytes back. Healthy if all of it worked."""

    def __init__(self, config: TcpHealthCheckConfig | None = None) -> None:
        config = config or TcpHealthCheckConfig()
        self.send = binascii.unhexlify(config.send)
        self.receive = [binascii.unhexlify(r) for r in config.receive]

    async def check(self, host: Endpoint) -> bool:
        """One check of ``host``."""
        stream = await host.connect()
        try:
            if self.send:
                await stream.send_all(self.send)
            if not self.receive:
                return True
            got = b""
            while len(got) <= MAX_RESPONSE:
                if _contains_in_order(got, self.receive):
                    return True
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return False
                got += data
            return False
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()


def _contains_in_order(data: bytes, parts: list[bytes]) -> bool:
    at = 0
    for part in parts:
        found = data.find(part, at)
        if found < 0:
            return False
        at = found + len(part)
    return True


@attrs.frozen(kw_only=True)
class GrpcHealthCheckConfig:
    """Config of the ``grpc`` health checker."""

    service_name: str = ""
    """The service asked about ("": the server as a whole)."""
    authority: str = ""
    """The :authority of the call (default: the cluster's name)."""
    max_message: int = attrs.field(default=4096, validator=[at_least(16), at_most(MAX_RESPONSE)])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(message: bytes, i: int) -> tuple[int, int]:
    """The varint at ``message[i:]`` and the index after it; ValueError if it is cut short."""
    value = shift = 0
    while i < len(message):
        byte = message[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i
    msg = "truncated varint"
    raise ValueError(msg)


def _serving_status(message: bytes) -> int | None:
    """The ``status`` (field 1, a varint) of a HealthCheckResponse, or None if unreadable."""
    i = 0
    status = 0  # proto3: an absent field is its default, UNKNOWN
    try:
        while i < len(message):
            key, i = _read_varint(message, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _read_varint(message, i)
                if field == 1:
                    status = value
            elif wire == 2:  # noqa: PLR2004 - length-delimited: skipped (unknown fields are allowed)
                length, i = _read_varint(message, i)
                i += length
            else:
                return None
    except ValueError:
        return None
    return status if i == len(message) else None


class GrpcHealthCheck:
    """``grpc.health.v1.Health/Check`` over HTTP/2; healthy if the answer is SERVING."""

    def __init__(self, config: GrpcHealthCheckConfig | None = None) -> None:
        self.config = config or GrpcHealthCheckConfig()
        name = self.config.service_name.encode()
        message = b"\x0a" + _varint(len(name)) + name if name else b""
        self.body = b"\x00" + struct.pack(">I", len(message)) + message

    async def check(self, host: Endpoint) -> bool:
        """One check of ``host``."""
        stream = await host.connect()
        try:
            return await self._call(stream, host)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _call(self, stream: trio.abc.Stream, host: Endpoint) -> bool:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        authority = self.config.authority or host.cluster.name
        conn.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", authority.encode()),
                (b":path", b"/grpc.health.v1.Health/Check"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"meshcore-health-check"),
            ],
        )
        conn.send_data(sid, self.body, end_stream=True)
        await stream.send_all(conn.data_to_send())
        data = b""
        grpc_status: bytes | None = None
        while True:
            received = await stream.receive_some(RECEIVE_SIZE)
            if not received:
                return False
            for event in conn.receive_data(received):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for name, value in event.headers:
                        if name == b":status" and value != b"200":
                            return False
                        if name == b"grpc-status":
                            grpc_status = value
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    if len(data) > self.config.max_message:
                        return False
                elif isinstance(event, h2.events.StreamEnded):
                    return grpc_status == b"0" and _serving(data)
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return False
            await stream.send_all(conn.data_to_send())


def _serving(data: bytes) -> bool:
    """Whether a gRPC length-prefixed HealthCheckResponse says SERVING."""
    if len(data) < 5 or data[0] != 0:  # noqa: PLR2004 - the 5-byte gRPC message prefix; compressed: no
        return False
    (length,) = struct.unpack(">I", data[1:5])
    return len(data) == 5 + length and _serving_status(data[5:]) == _SERVING


@meshcore.hookimpl
def meshcore_health_checkers() -> list[meshcore.HealthCheckerType]:
    """Register the built-in health checkers."""
    return [
        meshcore.HealthCheckerType(
            name="http",
            factory=HttpHealthCheck,
            config=HttpHealthCheckConfig,
            description="GET a path over HTTP/1.1; healthy on an expected status",
        ),
        meshcore.HealthCheckerType(
            name="tcp",
            factory=TcpHealthCheck,
            config=TcpHealthCheckConfig,
            description="connect, optionally send bytes and expect bytes back",
        ),
        meshcore.HealthCheckerType(
            name="grpc",
            factory=GrpcHealthCheck,
            config=GrpcHealthCheckConfig,
            description="the standard grpc.health.v1 Check call; healthy when SERVING",
        ),
    ]
