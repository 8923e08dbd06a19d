"""The TLS transports, with real TLS on loopback sockets: OpenSSL on the socket, and SSLStream.

:func:`meshcore.runtime.tls.start_tls` and :func:`~meshcore.runtime.tls.connect_tls` put a
TCP connection under :class:`~meshcore.runtime.tlssocket.TlsSocketStream` (OpenSSL reads
and writes the descriptor); ``MESHCORE_TLS_TRANSPORT=sslstream`` makes them take
``trio.SSLStream`` (the transport before, kept for streams that are not sockets). Each
semantic test runs on both, with the runtime's own contexts (``server_context`` and
``client_context``), certificates of a test CA with SPIFFE IDs, and mutual TLS.

"No busy loop" is checked with ``trio.testing.wait_all_tasks_blocked``: it returns only
once every task waits; a task that retried in a loop (checkpointing on every pass) would
keep it from returning, and the test would time out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from meshcore.config import TlsContext, UpstreamTls
from meshcore.connection import peer_tls
from meshcore.runtime import listener as listener_module
from meshcore.runtime.sockio import StreamIO
from meshcore.runtime.tls import (
    TLS_TRANSPORT_ENV,
    TlsStream,
    client_context,
    connect_tls,
    identity_mismatch,
    server_context,
    start_tls,
)
from meshcore.runtime.tlssocket import TlsSocketStream, fast_tls_available
from meshcore.testing import http_proxy_config
from meshcore.testing.harness import start_proxy
from meshcore.testing.proxies import ProxyFactory
from meshcore.testing.tls import MeshcoreCA

APP_ID = "spiffe://cluster.local/ns/default/sa/app"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
BIG = 4 * 1024 * 1024


@pytest.fixture(params=["socket", "sslstream"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which transport start_tls / connect_tls take in this test."""
    name: str = request.param
    if name == "sslstream":
        monkeypatch.setenv(TLS_TRANSPORT_ENV, "sslstream")
    else:
        monkeypatch.delenv(TLS_TRANSPORT_ENV, raising=False)
    return name


class Pki:
    """Server and client contexts the runtime's way, from one test CA, mutual TLS."""

    def __init__(self, ca: MeshcoreCA) -> None:
        self.ca = ca
        server = ca.issue("localhost", uris=[APP_ID])
        client = ca.issue(uris=[CLIENT_ID])
        self.server_tls = TlsContext(
            certificate_file=server.certificate_file,
            private_key_file=server.private_key_file,
            client_ca_file=str(ca.ca_file),
            require_client_certificate=True,
            alpn=("h2", "http/1.1"),
        )
        self.client_tls = UpstreamTls(
            ca_file=str(ca.ca_file),
            certificate_file=client.certificate_file,
            private_key_file=client.private_key_file,
            peer_identities=(APP_ID,),
            alpn=("http/1.1",),
        )

    def server(self) -> ssl.SSLContext:
        return server_context(self.server_tls)

    def client(self, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = client_context(self.client_tls)
        if version is not None:
            context.minimum_version = context.maximum_version = version
        return context


@pytest.fixture
def pki(meshcore_ca: MeshcoreCA) -> Pki:
    return Pki(meshcore_ca)


async def connected() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of a new TCP connection on loopback (client, server)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    return client, server


async def tls_pair(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    *,
    session: ssl.SSLSession | None = None,
    server_name: str = "localhost",
    expect: str,
) -> tuple[TlsStream, TlsStream]:
    """A TLS connection, handshake done on both sides: (client, server), on the ``expect`` transport."""
    client_tcp, server_tcp = await connected()
    found: dict[str, TlsStream] = {}

    async def serve() -> None:
        found["server"] = await start_tls(server_tcp, server_context)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        found["client"] = await connect_tls(client_tcp, client_context, server_name, session=session)
    for stream in found.values():
        assert isinstance(stream, TlsSocketStream) == (expect == "socket")
    return found["client"], found["server"]


async def receive_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    """Receive into ``into`` until the stream ends."""
    while chunk := await stream.receive_some(65536):
        into += chunk


async def receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, f"the stream ended after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_mutual_tls_gives_each_side_identity_alpn_sni_and_data(
    transport: str, pki: Pki, version: ssl.TLSVersion
) -> None:
    server_ctx = pki.server()
    other_files = pki.ca.issue("other.example", uris=[APP_ID])
    other_ctx = server_context(
        TlsContext(
            certificate_file=other_files.certificate_file,
            private_key_file=other_files.private_key_file,
            client_ca_file=str(pki.ca.ca_file),
            require_client_certificate=True,
            alpn=("h2", "http/1.1"),
        )
    )
    names: list[tuple[str, str | None]] = []

    def by_sni(ssl_object: Any, name: str | None, _context: ssl.SSLContext) -> None:
        names.append((type(ssl_object).__name__, name))
        if name == "other.example":
            ssl_object.context = other_ctx

    server_ctx.sni_callback = by_sni
    with trio.fail_after(10):
        client, server = await tls_pair(
            server_ctx, pki.client(version), server_name="other.example", expect=transport
        )
        assert names == [("TlsSocketStream" if transport == "socket" else "SSLObject", "other.example")]
        # The certificate of the context the SNI callback chose.
        assert ("DNS", "other.example") in client.getpeercert()["subjectAltName"]
        assert client.version() == server.version() == version.name.replace("TLSv1_", "TLSv1.")
        assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "http/1.1"
        # What filters see of the client (meshcore.connection.peer_tls), and secure naming.
        seen = peer_tls(server)
        assert seen.uri_sans == (CLIENT_ID,)
        assert seen.certificate is not None
        assert identity_mismatch(client, (APP_ID,)) is None
        assert APP_ID in (identity_mismatch(client, ("spiffe://cluster.local/ns/x/sa/y",)) or "")
        # Data both ways, and close_notify is the end of the stream.
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
        await server.send_all(b"pong")
        assert await client.receive_some() == b"pong"
        await client.aclose()
        assert await server.receive_some() == b""
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"after close")


async def test_records_received_together_come_back_from_one_receive(pki: Pki) -> None:
    with trio.fail_after(10):
        client, server = await tls_pair(pki.server(), pki.client(), expect="socket")
        parts = [bytes([65 + i]) * 100 for i in range(5)]
        for part in parts:
            await client.send_all(part)  # one record each
        await trio.testing.wait_all_tasks_blocked()
        assert await server.receive_some() == b"".join(parts)
        # max_bytes holds; the rest of a record comes next, with the records after it.
        for part in parts:
            await client.send_all(part)
        assert await server.receive_some(150) == parts[0] + parts[1][:50]
        assert server.pending() == 50
        assert await server.receive_some() == parts[1][50:] + b"".join(parts[2:])
        await client.aclose()
        await server.aclose()


async def test_large_writes_wait_on_the_full_socket_and_resume_with_the_same_buffer(
    transport: str, pki: Pki
) -> None:
    up, down = os.urandom(BIG), os.urandom(BIG)
    with trio.fail_after(30):
        client, server = await tls_pair(pki.server(), pki.client(), expect=transport)
        sent = trio.Event()

        async def send_up() -> None:
            await client.send_all(up)
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_up)
            # Nobody reads yet: the send fills the socket buffers and waits on the descriptor
            # (this returns only if it waits rather than spins), with a record partly sent.
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()
            # Now both directions at once, on each stream a receiving and a sending task.
            nursery.start_soon(server.send_all, down)
            got_up = await receive_exactly(server, BIG)
            got_down = await receive_exactly(client, BIG)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        await client.aclose()
        assert await server.receive_some() == b""
        await server.aclose()


async def test_a_cancelled_send_breaks_the_stream_and_never_corrupts_it(transport: str, pki: Pki) -> None:
    data = os.urandom(BIG)
    with trio.fail_after(30):
        client, server = await tls_pair(pki.server(), pki.client(), expect=transport)
        with trio.CancelScope() as scope:

            async def cancel_when_stuck() -> None:
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_stuck)
                await client.send_all(data)
        assert scope.cancelled_caught
        # A record is partly on the wire: nothing else may follow it on this stream.
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"more")
        await client.aclose()  # no close_notify after a broken record: just the socket
        received = bytearray()
        with pytest.raises(trio.BrokenResourceError):  # truncated, and said so; never b""
            await receive_all(server, received)
        assert 0 < len(received) < len(data)
        assert received == data[: len(received)]  # a prefix of what was sent, never garbage
        await server.aclose()


@pytest.mark.parametrize("closing", ["client", "server"])
async def test_close_notify_ends_the_stream_and_an_abrupt_close_breaks_it(
    transport: str, pki: Pki, closing: str
) -> None:
    with trio.fail_after(10):
        client, server = await tls_pair(pki.server(), pki.client(), expect=transport)
        closer, other = (client, server) if closing == "client" else (server, client)
        await closer.aclose()  # close_notify, then the socket
        assert await other.receive_some() == b""
        await other.aclose()

        client, server = await tls_pair(pki.server(), pki.client(), expect=transport)
        closer, other = (client, server) if closing == "client" else (server, client)
        await closer.send_all(b"last words")
        await closer.transport_stream.aclose()  # TCP FIN without close_notify: a truncation
        assert await other.receive_some() == b"last words"
        with pytest.raises(trio.BrokenResourceError):
            await other.receive_some()
        await other.aclose()

        client, server = await tls_pair(pki.server(), pki.client(), expect=transport)
        closer, other = (client, server) if closing == "client" else (server, client)
        tcp = closer.transport_stream
        assert isinstance(tcp, trio.SocketStream)
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await tcp.aclose()  # a reset
        with pytest.raises(trio.BrokenResourceError):
            await other.receive_some()
        await other.aclose()


async def test_the_peer_may_half_close_and_still_read_the_answer(transport: str, pki: Pki) -> None:
    """A client that sends its request and close_notify, then reads (TLS 1.3 allows it).

    The client is the standard library's ``ssl.SSLObject`` driven by hand over the socket,
    so that it can send close_notify without closing anything.
    """
    with trio.fail_after(10):
        client_tcp, server_tcp = await connected()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        peer = pki.client().wrap_bio(incoming, outgoing, server_hostname="localhost")
        found: dict[str, TlsStream] = {}

        async def serve() -> None:
            found["server"] = await start_tls(server_tcp, pki.server())

        async def flush() -> None:
            if data := outgoing.read():
                await client_tcp.send_all(data)

        async def fill() -> None:
            data = await client_tcp.receive_some(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            while True:
                try:
                    peer.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await flush()
                    await fill()
            await flush()
        server = found["server"]
        assert isinstance(server, TlsSocketStream) == (transport == "socket")
        peer.write(b"request")
        with pytest.raises(ssl.SSLWantReadError):
            peer.unwrap()  # close_notify sent; the server's not come yet
        await flush()
        assert await server.receive_some() == b"request"
        assert await server.receive_some() == b""  # the client is done sending...
        await server.send_all(b"answer")  # ...and still reads
        await server.aclose()
        answer = b""
        while True:
            try:
                answer += peer.read(65536)
            except ssl.SSLWantReadError:
                await fill()
            except ssl.SSLZeroReturnError:
                break
        assert answer == b"answer"
        await client_tcp.aclose()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_session_resumes_on_the_next_connection(
    transport: str, pki: Pki, version: ssl.TLSVersion
) -> None:
    server_ctx, client_ctx = pki.server(), pki.client(version)
    with trio.fail_after(10):
        client, server = await tls_pair(server_ctx, client_ctx, expect=transport)
        assert not client.session_reused
        await server.send_all(b"x")  # TLS 1.3: the ticket comes after the handshake, read with this
        assert await client.receive_some() == b"x"
        session = client.session
        assert session is not None
        assert session.has_ticket
        await client.aclose()
        await server.aclose()
        client, server = await tls_pair(server_ctx, client_ctx, session=session, expect=transport)
        assert client.session_reused
        assert server.session_reused
        assert peer_tls(server).uri_sans == (CLIENT_ID,)  # the identity comes with the session
        await client.aclose()
        await server.aclose()


async def test_handshake_failures_raise_broken_resource_with_the_reason(transport: str, pki: Pki) -> None:
    stranger = MeshcoreCA(pki.ca.directory / "stranger").issue(uris=[CLIENT_ID])  # not of the mesh's CA
    wrong = client_context(
        UpstreamTls(
            ca_file=str(pki.ca.ca_file),
            certificate_file=stranger.certificate_file,
            private_key_file=stranger.private_key_file,
        )
    )
    with trio.fail_after(10):
        client_tcp, server_tcp = await connected()
        errors: list[BaseException] = []

        async def serve() -> None:
            try:
                await start_tls(server_tcp, pki.server())
            except trio.BrokenResourceError as err:
                errors.append(err)
                await server_tcp.aclose()  # as the listener does

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = await connect_tls(client_tcp, wrong, "localhost")  # TLS 1.3: the client is done first
            assert isinstance(client, TlsSocketStream) == (transport == "socket")
            with pytest.raises(trio.BrokenResourceError):
                await client.receive_some()  # ...and learns of the refusal from the alert
        assert len(errors) == 1
        assert isinstance(errors[0].__cause__, ssl.SSLError)
        assert "certificate" in str(errors[0].__cause__).lower()
        await client_tcp.aclose()
        await server_tcp.aclose()


async def test_a_stalled_handshake_waits_without_spinning_and_a_cancel_breaks_it(pki: Pki) -> None:
    with trio.fail_after(10):
        client_tcp, server_tcp = await connected()
        await client_tcp.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, no more
        with trio.CancelScope() as scope:

            async def cancel_when_waiting() -> None:
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_waiting)
                await start_tls(server_tcp, pki.server())
        assert scope.cancelled_caught
        await client_tcp.aclose()
        await server_tcp.aclose()


def mtls_proxy_config(pki: Pki, body: str) -> dict[str, Any]:
    """A proxy with one mTLS listener ("mtls") answering 200 with ``body`` itself."""
    tls = {
        "certificate_file": pki.server_tls.certificate_file,
        "private_key_file": pki.server_tls.private_key_file,
        "client_ca_file": str(pki.ca.ca_file),
        "require_client_certificate": True,
    }
    route = {"name": "all", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}
    return {
        "admin": {"enabled": False},
        "listeners": [
            {
                "name": "mtls",
                "address": "127.0.0.1:0",
                "filter_chains": [
                    {
                        "tls": tls,
                        "filters": [
                            {"http_connection_manager": {"route_config": "r", "http_filters": ["router"]}}
                        ],
                    }
                ],
            }
        ],
        "route_configs": [
            {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}
        ],
    }


async def test_the_listener_logs_and_survives_a_handshake_that_times_out(
    nursery: trio.Nursery, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "TLS_HANDSHAKE_TIMEOUT", 0.3)
    config = mtls_proxy_config(pki, body="ok")
    with trio.fail_after(20):
        proxy = await start_proxy(nursery, config)
        port = proxy.address("mtls")[1]
        with capture_logs() as logs:
            async with await trio.open_tcp_stream("127.0.0.1", port) as silent:
                await silent.send_all(b"\x16\x03\x01")  # a handshake begun, never finished
                try:
                    closed = await silent.receive_some()
                except trio.BrokenResourceError:  # a reset is a close too
                    closed = b""
                assert closed == b""  # closed by the proxy once the handshake ran out of time...
            # ...and the next client is served, over the socket transport.
            client_tcp = await trio.open_tcp_stream("127.0.0.1", port)
            client = await connect_tls(client_tcp, pki.client(), "localhost")
            await client.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = b""
            while data := await client.receive_some():
                answer += data
            await client.aclose()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"ok")
    failed = [e for e in logs if e["event"] == "tls_handshake_failed"]
    assert [(e["listener"], e["reason"]) for e in failed] == [("mtls", "TooSlowError")]
    assert proxy.stats.value("listener_ssl_handshake", listener="mtls") == 1


S_CLIENT = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command (Debian package openssl) is missing"
)


@contextlib.asynccontextmanager
async def s_client(pki: Pki, version: str) -> AsyncIterator[tuple[trio.Process, TlsStream]]:
    """``openssl s_client`` (mutual TLS, ``version`` such as "-tls1_2") connected to a server here."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_cert = pki.ca.issue(uris=[CLIENT_ID])
    argv = ["openssl", "s_client", version, "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    argv += ["-CAfile", str(pki.ca.ca_file), "-cert", client_cert.certificate_file]
    argv += ["-key", client_cert.private_key_file]
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        async with listeners[0]:
            server_tcp = await listeners[0].accept()
        server = await start_tls(server_tcp, pki.server())
        assert isinstance(server, TlsSocketStream)
        try:
            yield process, server
        finally:
            await server.aclose()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def output_of(process: trio.Process) -> bytes:
    """What ``process`` printed, to its end (its stdin closed first)."""
    assert process.stdin is not None
    assert process.stdout is not None
    await process.stdin.aclose()
    output = bytearray()
    await receive_all(process.stdout, output)
    await process.wait()
    return bytes(output)


@S_CLIENT
async def test_renegotiation_is_refused(pki: Pki) -> None:
    """``openssl s_client`` asks for a TLS 1.2 renegotiation (its ``R`` command): refused."""
    with trio.fail_after(20):
        async with s_client(pki, "-tls1_2") as (process, server):
            assert process.stdin is not None
            assert server.version() == "TLSv1.2"
            await process.stdin.send_all(b"hello\n")
            assert await server.receive_some() == b"hello\n"
            await process.stdin.send_all(b"R\n")  # renegotiate
            with pytest.raises(trio.BrokenResourceError):
                await receive_all(server, bytearray())
            output = await output_of(process)
    assert b"RENEGOTIATING" in output
    assert b"no renegotiation" in output


@S_CLIENT
async def test_a_tls13_key_update_is_answered_and_the_stream_goes_on(pki: Pki) -> None:
    """``openssl s_client``'s ``K``: a KeyUpdate asking for ours; OpenSSL answers it while reading."""
    with trio.fail_after(20):
        async with s_client(pki, "-tls1_3") as (process, server):
            assert process.stdin is not None
            assert server.version() == "TLSv1.3"
            await process.stdin.send_all(b"hello\n")
            assert await server.receive_some() == b"hello\n"
            await process.stdin.send_all(b"K\n")  # key update, update requested
            # s_client drops what it read with a command: the next line only once it is done.
            assert process.stdout is not None
            printed = bytearray()
            while b"KEYUPDATE" not in printed:
                chunk = await process.stdout.receive_some(65536)
                assert chunk, bytes(printed)
                printed += chunk
            await process.stdin.send_all(b"after the update\n")
            assert await server.receive_some() == b"after the update\n"
            await server.send_all(b"answer under the new keys\n")
            await server.aclose()
            output = bytes(printed) + await output_of(process)
    assert b"answer under the new keys" in output


async def test_only_tcp_socket_streams_take_the_socket_transport(pki: Pki) -> None:
    """A memory stream (say, a test's) takes SSLStream: the fallback, and the one case for it."""
    left, right = trio.testing.memory_stream_pair()
    assert not fast_tls_available(left)
    client_tcp, server_tcp = await connected()
    assert fast_tls_available(client_tcp)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            found: dict[str, TlsStream] = {}

            async def serve() -> None:
                found["server"] = await start_tls(right, pki.server())

            nursery.start_soon(serve)
            client = await connect_tls(left, pki.client(), "localhost")
        assert not isinstance(client, TlsSocketStream)
        assert not isinstance(found["server"], TlsSocketStream)
        await client.send_all(b"over memory")
        assert await found["server"].receive_some() == b"over memory"
    await client_tcp.aclose()
    await server_tcp.aclose()


async def test_streamio_takes_tls_on_a_socket_without_waiting_when_it_can(pki: Pki) -> None:
    """The HTTP/1.1 path's I/O (StreamIO) on TLS: try first, wait (in the caller's scope) only if needed.

    A try_send that did not fit leaves part of its bytes with OpenSSL: send_rest resumes it
    with the same bytes; anything else sent instead breaks the stream rather than corrupt it.
    """
    data = os.urandom(BIG)
    with trio.fail_after(30):
        client, server = await tls_pair(pki.server(), pki.client(), expect="socket")
        io = StreamIO(client)
        assert io.tls is client
        assert await StreamIO(server).try_receive(65536) is None  # nothing there: no wait
        assert io.try_send(b"small") == len(b"small")  # fits: no schedule point, no scope
        assert await StreamIO(server).try_receive(65536) == b"small"
        sent = io.try_send(data)
        assert sent == 0  # did not fit: OpenSSL holds a record partly sent

        async def read_all() -> None:
            got = await receive_exactly(server, BIG)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await io.send_rest(data, sent)
        received = trio.Event()

        async def wait_for_it() -> None:
            assert await StreamIO(server).wait_receive(65536) == b"later"
            received.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_it)
            await trio.testing.wait_all_tasks_blocked()  # waiting on the descriptor, not spinning
            assert not received.is_set()
            await io.send(b"later")
        assert io.try_send(os.urandom(BIG)) == 0
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"something else")  # not the bytes OpenSSL holds part of
        await client.aclose()
        await server.aclose()


def records(raw: bytes) -> list[tuple[int, int]]:
    """The TLS records in ``raw``: (content type, length) each."""
    found = []
    while len(raw) >= 5:
        kind, length = raw[0], int.from_bytes(raw[3:5], "big")
        found.append((kind, length))
        raw = raw[5 + length :]
    assert not raw
    return found


async def test_a_response_head_and_body_leave_in_one_record(nursery: trio.Nursery, pki: Pki) -> None:
    """One TLS record for a response: its head and body are written together.

    TLS 1.2: every record after the handshake is application data, so they can be counted unread.
    """
    with trio.fail_after(20):
        proxy = await start_proxy(nursery, mtls_proxy_config(pki, body="b" * 1024))
        client_tcp = await trio.open_tcp_stream("127.0.0.1", proxy.address("mtls")[1])
        client = await connect_tls(client_tcp, pki.client(ssl.TLSVersion.TLSv1_2), "localhost")
        assert isinstance(client, TlsSocketStream)
        await client.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw = bytearray()
        await receive_all(client_tcp, raw)  # the ciphertext, to the proxy's close
        await client_tcp.aclose()
    application_data, alert = 23, 21
    assert [kind for kind, _ in records(bytes(raw))] == [application_data, alert]  # the answer; close_notify


async def test_an_upstream_that_never_answers_the_handshake_fails_the_request_in_time(
    nursery: trio.Nursery, pki: Pki, meshcore_proxy: ProxyFactory
) -> None:
    """Client side: the cluster's connect_timeout bounds the handshake; the socket is closed, counted."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []
    ended = trio.Event()

    async def silent_upstream() -> None:
        async with listeners[0]:
            stream = await listeners[0].accept()
            accepted.append(stream)
            async with stream:
                client_hello = await stream.receive_some(65536)
                assert client_hello[:1] == b"\x16"  # a handshake record; never answered
                while await stream.receive_some(65536):  # until the proxy gives up and closes
                    pass
            ended.set()

    nursery.start_soon(silent_upstream)
    tls = {
        "ca_file": str(pki.ca.ca_file),
        "certificate_file": pki.client_tls.certificate_file,
        "private_key_file": pki.client_tls.private_key_file,
        "peer_identities": [APP_ID],
    }
    config = http_proxy_config([f"127.0.0.1:{port}"], cluster={"tls": tls, "connect_timeout": "300ms"})
    with trio.fail_after(20):
        proxy = await meshcore_proxy(config)
        reply = await proxy.client().get("/")
        await ended.wait()
    assert (reply.status, reply.header("x-meshcore-flags")) == (503, "UF")
    assert proxy.stats.value("cluster_upstream_cx_connect_fail", cluster="backend") == 1
    assert proxy.stats.value("cluster_upstream_ssl_handshake", cluster="backend") == 0
    assert len(accepted) == 1
