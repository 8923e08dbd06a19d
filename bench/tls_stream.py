"""TLS transports compared: CPU per request/response exchange, and Python calls per exchange.

Run: ``python bench/tls_stream.py [--duration 2] [--rounds 5] [--connections 16] [--size 1024]``

One process, one trio loop, real TLS on loopback (trustme certificates, mutual TLS, the
contexts the runtime builds: :func:`meshcore.runtime.tls.server_context` and
``client_context``): ``--connections`` client connections each send a request of about
200 bytes and read a response of ``--size`` bytes, again and again, to a server on the same
loop. That is one sidecar's TLS work per proxied request, both sides (the inbound server's
receive and send, the outbound client's send and receive). Three transports, in
interleaved rounds (medians reported):

- ``socket``: :class:`meshcore.runtime.tlssocket.TlsSocketStream`, OpenSSL on the descriptor;
- ``sslstream``: ``trio.SSLStream`` over a MemoryBIO with :class:`meshcore.runtime.tls.RecordsStream`
  on top (what the runtime used before);
- ``plain``: trio's ``SocketStream`` without TLS (the floor, for scale).

Figures: CPU µs per exchange (the process's user + system time over the run, divided by the
exchanges), exchanges/s, and Python function calls per exchange (``sys.setprofile`` over a
fixed number of exchanges: a figure load does not change). The last line is the ratio
socket / sslstream. ``--split`` writes each response as head and body separately (two
records), as a proxy that does not join them would.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trustme

from meshcore.config import TlsContext, UpstreamTls
from meshcore.runtime.tls import RecordsStream, client_context, server_context
from meshcore.runtime.tlssocket import TlsSocketStream

REQUEST = (
    b"GET /bench HTTP/1.1\r\nhost: app.bench.svc\r\nuser-agent: bench\r\naccept: */*\r\n"
    + b"x" * 100
    + b"\r\n\r\n"
)
TRANSPORTS = ("socket", "sslstream", "plain")

Wrap = Callable[[trio.SocketStream, bool], Awaitable[trio.abc.Stream]]


def contexts(tmp: str) -> tuple[Any, Any]:
    """Server and client contexts the runtime's way, mutual TLS, from a trustme CA."""
    ca = trustme.CA()
    server = ca.issue_cert("app.bench.svc")
    client = ca.issue_cert("client.bench.svc")
    paths = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("server.pem", server.cert_chain_pems[0]),
        ("server.key", server.private_key_pem),
        ("client.pem", client.cert_chain_pems[0]),
        ("client.key", client.private_key_pem),
    ):
        paths[name] = f"{tmp}/{name}"
        blob.write_to_path(paths[name])
    sctx = server_context(
        TlsContext(
            certificate_file=paths["server.pem"],
            private_key_file=paths["server.key"],
            client_ca_file=paths["ca.pem"],
            require_client_certificate=True,
        )
    )
    cctx = client_context(
        UpstreamTls(
            ca_file=paths["ca.pem"],
            certificate_file=paths["client.pem"],
            private_key_file=paths["client.key"],
        )
    )
    return sctx, cctx


def wrapper(transport: str, sctx: Any, cctx: Any) -> Wrap:
    """How ``transport`` turns a connected socket stream into the stream to measure."""

    async def wrap(stream: trio.SocketStream, server: bool) -> trio.abc.Stream:
        if transport == "plain":
            return stream
        if transport == "socket":
            fast = (
                TlsSocketStream(stream, sctx, server_side=True)
                if server
                else TlsSocketStream(stream, cctx, server_hostname="app.bench.svc")
            )
            await fast.do_handshake()
            return fast
        tls = (
            trio.SSLStream(stream, sctx, server_side=True)
            if server
            else trio.SSLStream(stream, cctx, server_hostname="app.bench.svc")
        )
        await tls.do_handshake()
        return RecordsStream(tls)

    return wrap


async def exchange_loop(
    wrap: Wrap, connections: int, size: int, *, split: bool, stop: Callable[[int], bool]
) -> tuple[int, float]:
    """Run exchanges until ``stop(count)``; (exchanges, CPU seconds) for the measured part."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n" % size
    body = b"b" * size
    response = head + body
    done = 0
    state = {"stop": False}

    async def serve(stream: trio.SocketStream) -> None:
        s = await wrap(stream, True)  # noqa: FBT003 - the server side
        try:
            while await s.receive_some(65536):
                if split:
                    await s.send_all(head)
                    await s.send_all(body)
                else:
                    await s.send_all(response)
        except trio.BrokenResourceError:
            pass
        finally:
            await s.aclose()

    async def client(port: int) -> None:
        nonlocal done
        s = await wrap(await trio.open_tcp_stream("127.0.0.1", port), False)  # noqa: FBT003 - client
        want = len(response)
        while not state["stop"]:
            await s.send_all(REQUEST)
            got = 0
            while got < want:
                data = await s.receive_some(65536)
                if not data:
                    msg = "the server closed the connection"
                    raise RuntimeError(msg)
                got += len(data)
            done += 1
            if stop(done):
                state["stop"] = True
        await s.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        # warm up: handshakes and first exchanges do not count
        start_cpu = time.process_time()
        async with trio.open_nursery() as clients:
            for _ in range(connections):
                clients.start_soon(client, port)
        used = time.process_time() - start_cpu
        nursery.cancel_scope.cancel()
    return done, used


def measure(wrap: Wrap, args: argparse.Namespace) -> dict[str, float]:
    """One timed run: CPU µs per exchange and exchanges/s."""
    deadline = [0.0]

    def timed(_count: int) -> bool:
        return time.monotonic() >= deadline[0]

    async def main() -> tuple[int, float, float]:
        deadline[0] = time.monotonic() + args.duration
        t0 = time.monotonic()
        count, cpu = await exchange_loop(wrap, args.connections, args.size, split=args.split, stop=timed)
        return count, cpu, time.monotonic() - t0

    count, cpu, wall = trio.run(main)
    return {"cpu_us": cpu / count * 1e6, "rate": count / wall}


def calls_per_exchange(wrap: Wrap, args: argparse.Namespace, exchanges: int = 400) -> float:
    """Python calls per exchange over ``exchanges`` exchanges (after 100 unprofiled)."""
    calls = [0]
    warm = 100

    def profile(_frame: Any, event: str, _arg: Any) -> None:
        if event == "call":
            calls[0] += 1

    def stop(count: int) -> bool:
        if count == warm:
            sys.setprofile(profile)
        if count >= warm + exchanges:
            sys.setprofile(None)
            return True
        return False

    trio.run(lambda: exchange_loop(wrap, 1, args.size, split=args.split, stop=stop))
    return calls[0] / exchanges


def main() -> int:
    """Measure the transports in interleaved rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians reported)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--size", type=int, default=1024, help="response body bytes")
    parser.add_argument("--split", action="store_true", help="send response head and body as two writes")
    args = parser.parse_args()

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sctx, cctx = contexts(tmp)
        wraps = {t: wrapper(t, sctx, cctx) for t in TRANSPORTS}
        rows: dict[str, list[dict[str, float]]] = {t: [] for t in TRANSPORTS}
        for round_ in range(args.rounds):
            for t in TRANSPORTS if round_ % 2 == 0 else reversed(TRANSPORTS):
                rows[t].append(measure(wraps[t], args))
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{t} {rows[t][-1]['cpu_us']:.1f} us" for t in TRANSPORTS),
                flush=True,
            )
        calls = {t: calls_per_exchange(wraps[t], args) for t in TRANSPORTS}
    print(
        f"\nTLS transports, {args.connections} connections, ~{len(REQUEST)} B request / {args.size} B response"
        f"{' (head and body written apart)' if args.split else ''}, {args.duration:g}s x {args.rounds} rounds, medians"
    )
    print(f"{'transport':<10} {'CPU us/exchange':>16} {'exchanges/s':>12} {'Python calls/exchange':>22}")
    med = {}
    for t in TRANSPORTS:
        med[t] = {k: statistics.median(r[k] for r in rows[t]) for k in ("cpu_us", "rate")}
        print(f"{t:<10} {med[t]['cpu_us']:>16.1f} {med[t]['rate']:>12.0f} {calls[t]:>22.1f}")
    ratios = [s["cpu_us"] / b["cpu_us"] for s, b in zip(rows["socket"], rows["sslstream"], strict=True)]
    print(
        f"socket / sslstream CPU per exchange: {statistics.median(ratios):.2f} (per round: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + f"); TLS's own part (minus plain): socket {med['socket']['cpu_us'] - med['plain']['cpu_us']:.1f} us, "
        f"sslstream {med['sslstream']['cpu_us'] - med['plain']['cpu_us']:.1f} us; "
        f"calls {calls['socket']:.0f} vs {calls['sslstream']:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
