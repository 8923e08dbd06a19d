"""The proxy's end of delivery: the trio and h2 shell around :class:`ClientSession`.

:class:`DeliveryStream` is one connection and stream to the control plane. One task reads
(and pings the control plane every ``ping_interval``, so that it sees the proxy alive and
the proxy sees a dead connection); any task may send. The stream's end is raised as
:class:`DeliveryClosedError` with the control plane's reason when it gave one.
"""

from __future__ import annotations

import enum
import math
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio

from meshcore.config import Address
from meshcore.control.messages import CONTENT_TYPE, PATH, FrameDecoder, encode
from meshcore.control.protocol import CertificateAnswered, ClientSession, Push
from meshcore.control.serve import WINDOW
from meshcore.errors import MeshcoreError, ProtocolError

__all__ = ["DEFERRED", "Deferred", "DeliveryClosedError", "DeliveryStream", "client_ssl_context"]


class Deferred(enum.Enum):
    """What a push handler returns to answer a push later (:meth:`DeliveryStream.answer`)."""

    DEFERRED = "deferred"


DEFERRED = Deferred.DEFERRED

log = structlog.get_logger("meshcore.control.client")

RECEIVE_SIZE = 64 * 1024


class DeliveryClosedError(MeshcoreError):
    """The delivery stream ended; ``status`` is the control plane's gRPC status (None: the connection was lost)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """TLS toward the control plane: its certificate checked against ``ca_file`` (or the system's roots)."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


class DeliveryStream:
    """One HTTP/2 connection to the control plane and its delivery stream.

    Open it with :meth:`connect`; then :meth:`run` until it ends, with another task
    free to :meth:`send`.
    """

    def __init__(
        self, transport: trio.abc.Stream, session: ClientSession, *, ping_interval: float = 5.0
    ) -> None:
        self.transport = transport
        self.session = session
        self.ping_interval = ping_interval
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=True
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.stream_id = 0
        self.decoder = FrameDecoder()
        self._lock = trio.Lock()
        self._status: tuple[int, str] | None = None
        self._certificates: dict[int, tuple[trio.Event, list[CertificateAnswered]]] = {}

    @classmethod
    async def connect(
        cls,
        address: Address,
        session: ClientSession,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        ping_interval: float = 5.0,
    ) -> DeliveryStream:
        """Connect (TLS when ``ssl_context`` is given), open the stream and subscribe."""
        transport: trio.abc.Stream = await trio.open_tcp_stream(address.host, address.port)
        try:
            if ssl_context is not None:
                transport = trio.SSLStream(
                    transport, ssl_context, server_hostname=server_name or address.host
                )
                await transport.do_handshake()
            self = cls(transport, session, ping_interval=ping_interval)
            await self._open(address, token)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await transport.aclose()
            raise
        return self

    async def _open(self, address: Address, token: str | None) -> None:
        conn = self.h2
        conn.initiate_connection()
        conn.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, h2.settings.SettingCodes.ENABLE_PUSH: 0}
        )
        conn.increment_flow_control_window(WINDOW - 65535)
        self.stream_id = conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https" if isinstance(self.transport, trio.SSLStream) else b"http"),
            (b":authority", str(address).encode()),
            (b":path", PATH.encode()),
            (b"content-type", CONTENT_TYPE.encode()),
            (b"te", b"trailers"),
        ]
        if token is not None:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        conn.send_headers(self.stream_id, headers)
        await self.send(self.session.start())

    async def send(self, messages: list[dict[str, Any]]) -> None:
        """Send ``messages`` on the stream (any task may)."""
        async with self._lock:
            for message in messages:
                data = encode(message)
                if len(data) > self.h2.local_flow_control_window(self.stream_id):
                    msg = "the control plane's HTTP/2 window is full"
                    raise ProtocolError(msg, remote=True)
                self.h2.send_data(self.stream_id, data)
            await self._flush()

    async def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.transport.send_all(data)

    async def answer(self, push: Push, error: str | None) -> None:
        """ACK ``push`` (``error`` None) or NACK it with ``error``: for a push whose answer was deferred."""
        await self.send(self.session.nack(push, error) if error else self.session.ack(push))

    async def run(self, handle_push: Callable[[Push], Awaitable[str | Deferred | None]]) -> None:
        """Receive pushes until the stream ends; each one's error from ``handle_push`` NACKs it, None ACKs.

        ``DEFERRED`` answers nothing yet: the caller answers later with :meth:`answer` (a push
        that needs the workload certificate waits for it).

        Raises:
            DeliveryClosedError: always, when the stream or connection ends.
        """
        next_ping = trio.current_time() + self.ping_interval
        while True:
            data: bytes | None = None
            with trio.move_on_at(next_ping):
                try:
                    data = bytes(await self.transport.receive_some(RECEIVE_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
                    msg = f"connection lost: {err}"
                    raise DeliveryClosedError(msg) from err
            if data is None:  # time to ping (only the reading is bounded by it: never a send half done)
                next_ping = trio.current_time() + self.ping_interval
                async with self._lock:
                    self.h2.ping(os.urandom(8))
                    await self._flush()
                continue
            if not data:
                raise DeliveryClosedError(self._ended())
            for message in self._receive(data):
                for event in self.session.receive(message):
                    if isinstance(event, Push):
                        error = await handle_push(event)
                        if error is not DEFERRED:
                            await self.answer(event, error)
                    elif isinstance(event, CertificateAnswered):
                        self._answered(event)
            if self._status is not None:
                code, reason = self._status
                raise DeliveryClosedError(
                    reason or f"the control plane ended the stream (grpc-status {code})", code
                )
            async with self._lock:
                await self._flush()

    def _ended(self) -> str:
        if self._status is not None:
            return self._status[1] or f"the control plane ended the stream (grpc-status {self._status[0]})"
        return "the control plane closed the connection"

    def _receive(self, data: bytes) -> list[dict[str, Any]]:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            msg = f"HTTP/2 error from the control plane: {err}"
            raise DeliveryClosedError(msg) from err
        messages: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id == self.stream_id:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                messages.extend(self.decoder.feed(event.data))
            elif isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                if headers.get(b":status") != b"200":
                    status = headers.get(b":status", b"?").decode()
                    msg = f"the control plane answered HTTP {status} (is that address a meshcore control plane?)"
                    raise DeliveryClosedError(msg)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = dict(event.headers)
                code = int(trailers.get(b"grpc-status", b"2"))
                self._status = (code, trailers.get(b"grpc-message", b"").decode("utf-8", "replace"))
            elif isinstance(event, h2.events.StreamReset):
                msg = f"the control plane reset the stream ({event.error_code!r})"
                raise DeliveryClosedError(msg)
            elif isinstance(event, h2.events.ConnectionTerminated):
                msg = f"the control plane went away ({event.error_code!r})"
                raise DeliveryClosedError(msg)
        return messages

    async def request_certificate(self, csr_pem: str, *, timeout: float = 10.0) -> CertificateAnswered:  # noqa: ASYNC109 - the answer comes through run()
        """Send a CSR; wait for the control plane's answer (a certificate or an error).

        :meth:`run` must be running in another task: it receives the answer.
        """
        request_id, message = self.session.certificate_request(csr_pem)
        done = trio.Event()
        answers: list[CertificateAnswered] = []
        self._certificates[request_id] = (done, answers)
        try:
            await self.send([message])
            with trio.fail_after(timeout if timeout > 0 else math.inf):
                await done.wait()
        finally:
            self._certificates.pop(request_id, None)
        return answers[0]

    def _answered(self, answer: CertificateAnswered) -> None:
        waiting = self._certificates.get(answer.request_id)
        if waiting is not None:
            waiting[1].append(answer)
            waiting[0].set()

    async def aclose(self) -> None:
        """Close the connection."""
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self.transport.aclose()
