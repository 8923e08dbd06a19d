"""The control plane's delivery server: the trio and h2 shell around :class:`ControlPlane`.

Each proxy holds one HTTP/2 connection (TLS when configured) with one long-lived stream,
``POST /meshcore.delivery.v1.Delivery/Stream`` carrying framed messages both ways (see
``meshcore.control.messages``), its bootstrap token in ``authorization: Bearer TOKEN``.
The stream ends with gRPC's trailers: ``grpc-status: 0``, or a code and ``grpc-message``
saying why the control plane ended it (an identity the token may not claim: 7).

Reading and writing are two tasks per connection: the plane queues messages (it never
waits on a slow proxy), and the writer sends them no faster than the proxy's HTTP/2
windows allow. A proxy silent for longer than the idle timeout (it pings every few
seconds) is dropped.
"""

from __future__ import annotations

import collections
import contextlib
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio

from meshcore.config import Address
from meshcore.control.messages import CONTENT_TYPE, PATH, FrameDecoder
from meshcore.control.plane import ControlPlane, ProxyHandle
from meshcore.errors import ProtocolError
from meshcore.http.h2flow import send_flow_controlled
from meshcore.runtime.listener import open_listener_socket

__all__ = ["WINDOW", "serve_delivery", "server_ssl_context"]

log = structlog.get_logger("meshcore.control.delivery")

WINDOW = 16 * 1024 * 1024
"""The HTTP/2 window both sides advertise: a whole push of a large mesh in flight."""
IDLE_TIMEOUT = 60.0
"""Seconds a connection may stay silent (proxies ping every few seconds) before it is dropped."""
HANDSHAKE_TIMEOUT = 10.0
MAX_QUEUED = 256 * 1024 * 1024
"""Bytes queued toward one proxy that does not read, beyond which it is dropped."""
RECEIVE_SIZE = 64 * 1024

_OK, _INVALID_ARGUMENT, _PERMISSION_DENIED, _ABORTED = 0, 3, 7, 10


def server_ssl_context(certificate_file: str, private_key_file: str) -> ssl.SSLContext:
    """TLS for the delivery server: TLS 1.2 or later, ALPN h2."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate_file, private_key_file)
    context.set_alpn_protocols(["h2"])
    return context


class _Stream:
    """One delivery stream: its proxy, decoder and queued output."""

    __slots__ = ("closing", "decoder", "id", "outbox", "proxy", "queued", "token", "window")

    def __init__(self, stream_id: int, token: str | None) -> None:
        self.id = stream_id
        self.token = token
        self.decoder = FrameDecoder()
        self.outbox: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.closing: tuple[int, str] | None = None
        self.proxy: ProxyHandle | None = None
        self.window = trio.Event()


class _Connection:
    """One HTTP/2 connection from a proxy."""

    def __init__(self, plane: ControlPlane, stream: trio.abc.Stream, peer: str) -> None:
        self.plane = plane
        self.stream = stream
        self.peer = peer
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _Stream] = {}
        self.wake = trio.Event()
        self.send_lock = trio.Lock()

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            async with self.send_lock:
                await self.stream.send_all(data)

    async def run(self) -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.h2.increment_flow_control_window(WINDOW - 65535)
        await self.flush()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            for state in self.streams.values():
                if state.proxy is not None:
                    self.plane.disconnect(state.proxy)

    async def _reader(self) -> None:
        while True:
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            if idle.cancelled_caught:
                log.warning("proxy_idle", peer=self.peer, timeout=IDLE_TIMEOUT)
                return
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as err:
                log.warning("delivery_protocol_error", peer=self.peer, reason=str(err))
                await self.flush()
                return
            for event in events:
                self._event(event)
            await self.flush()
            if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                return

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            state = self.streams.get(event.stream_id)
            if state is not None and state.closing is None:
                self._data(state, event.data)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            self._ended(event)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for state in self.streams.values():
                state.window.set()
        elif isinstance(event, h2.events.PingReceived):
            for state in self.streams.values():
                if state.proxy is not None:
                    state.proxy.last_contact = self.plane.clock()

    def _ended(self, event: h2.events.StreamEnded | h2.events.StreamReset) -> None:
        """The proxy ended its stream (answered with status 0) or reset it."""
        state = self.streams.get(event.stream_id)
        if state is None:
            return
        if isinstance(event, h2.events.StreamEnded):
            self._close(state, _OK, "")
        else:
            self.streams.pop(event.stream_id)
        if state.proxy is not None:
            self.plane.disconnect(state.proxy)

    def _request(self, event: h2.events.RequestReceived) -> None:
        headers = {bytes(n): bytes(v) for n, v in event.headers}
        stream_id = event.stream_id
        status = b"200"
        if headers.get(b":path") != PATH.encode():
            status = b"404"
        elif headers.get(b":method") != b"POST":
            status = b"405"
        elif not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            status = b"415"
        if status != b"200":
            self.h2.send_headers(
                stream_id, [(b":status", status), (b"content-length", b"0")], end_stream=True
            )
            return
        auth = headers.get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        state = _Stream(stream_id, token)
        self.streams[stream_id] = state
        self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", CONTENT_TYPE.encode())])
        state.proxy = self.plane.connect(
            lambda frames: self._queue(state, frames),
            lambda: self._close(state, _ABORTED, "replaced by a newer stream of the same proxy"),
            self.peer,
        )

    def _data(self, state: _Stream, data: bytes) -> None:
        assert state.proxy is not None  # noqa: S101 - set with the stream
        try:
            for message in state.decoder.feed(data):
                refusal = self.plane.receive(state.proxy, message, token=state.token)
                if refusal is not None:
                    self._close(state, _PERMISSION_DENIED, refusal)
                    self.plane.disconnect(state.proxy)
                    return
        except ProtocolError as err:
            log.warning("delivery_message_refused", peer=self.peer, reason=str(err))
            self._close(state, _INVALID_ARGUMENT, str(err))
            self.plane.disconnect(state.proxy)

    def _queue(self, state: _Stream, frames: bytes) -> None:
        if state.closing is not None:
            return
        state.outbox.append(frames)
        state.queued += len(frames)
        if state.queued > MAX_QUEUED:
            self._close(state, _ABORTED, "the proxy does not read what it is sent")
        self.wake.set()

    def _close(self, state: _Stream, code: int, message: str) -> None:
        """End the stream after what is queued: gRPC status trailers."""
        if state.closing is None:
            state.closing = (code, message)
            self.wake.set()

    async def _writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            for state in list(self.streams.values()):
                while state.outbox:
                    frame = state.outbox.popleft()
                    state.queued -= len(frame)
                    try:
                        await send_flow_controlled(self.h2, state, frame, self.flush)
                    except h2.exceptions.StreamClosedError:
                        state.outbox.clear()
                        break
                if state.closing is not None:
                    self.streams.pop(state.id, None)
                    code, message = state.closing
                    trailers = [(b"grpc-status", str(code).encode())]
                    if message:
                        trailers.append((b"grpc-message", message.encode()))
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        self.h2.send_headers(state.id, trailers, end_stream=True)
            await self.flush()


async def serve_delivery(
    plane: ControlPlane,
    address: Address,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the delivery protocol on ``address`` until cancelled; report the bound address."""
    listener = open_listener_socket(address.host, address.port)
    bound = (address.host, int(listener.socket.getsockname()[1]))

    async def handle(stream: trio.SocketStream) -> None:
        host, port = stream.socket.getpeername()[:2]
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        transport: trio.abc.Stream = stream
        try:
            if ssl_context is not None:
                transport = trio.SSLStream(stream, ssl_context, server_side=True)
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    await transport.do_handshake()
            await _Connection(plane, transport, peer).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as err:
            log.info("delivery_connection_ended", peer=peer, reason=str(err) or type(err).__name__)
        except Exception:
            log.exception("delivery_connection_failed", peer=peer)  # one proxy's bug, not the server's end
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await transport.aclose()

    async with listener, trio.open_nursery() as connections:
        task_status.started(bound)
        log.info("delivery_started", address=str(Address(*bound)), tls=ssl_context is not None)
        await trio.serve_listeners(handle, [listener], handler_nursery=connections)
