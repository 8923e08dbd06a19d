"""HTTP/1.1 upgrades (WebSocket) to an upstream endpoint.

An upgrade does not go through the pool: it opens a connection of its own, sends the
request head and, on ``101 Switching Protocols``, hands the connection to the connection
manager as a byte pipe (:class:`~meshcore.http.messages.Upgraded`). An upstream that
declines answers as usual, and that answer is passed on.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING

import trio

from meshcore.errors import ProtocolError, UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.codec import NEED_DATA, Data, Informational, ResponseHead
from meshcore.http.h1 import H11ClientCodec
from meshcore.http.h1fast import FastClientCodec
from meshcore.http.messages import Body, Headers, Request, Response, Upgraded
from meshcore.http.semantics import strip_hop_by_hop
from meshcore.runtime.h1exchange import RECEIVE_SIZE
from meshcore.runtime.host import _close_now

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster
    from meshcore.runtime.host import Host

__all__ = ["send_upgrade"]


async def send_upgrade(cluster: Cluster, request: Request, host: Host, deadline: float) -> Response:
    """Send ``request``, an upgrade, to ``host``; release the request it counts as, however it ends.

    The caller has counted the request active (on ``host`` and in the cluster's stats).
    """
    try:
        return await _upgrade(cluster, request, host, deadline)
    finally:
        host.active_requests -= 1
        cluster.stats_rq_active.value -= 1


async def _upgrade(cluster: Cluster, request: Request, host: Host, deadline: float) -> Response:
    """An HTTP/1.1 upgrade (WebSocket) on a connection of its own: it becomes a byte pipe."""
    assert request.upgrade is not None  # noqa: S101 - checked by the caller
    stream: trio.abc.Stream | None = None
    try:
        with trio.move_on_at(deadline):
            stream = await host.connect()
            codec: H11ClientCodec | FastClientCodec = (
                FastClientCodec() if cluster.config.codec == "fast" else H11ClientCodec()
            )
            headers = [
                (b"host", request.authority.encode("latin-1")),
                *strip_hop_by_hop(request.headers.raw),
                (b"connection", b"upgrade"),
                (b"upgrade", request.upgrade.encode("latin-1")),
            ]
            head = codec.send_request_head(request.method.encode(), request.path.encode("latin-1"), headers)
            await stream.send_all(head + codec.send_end())
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    codec.receive_data(await stream.receive_some(RECEIVE_SIZE))
                    continue
                if type(event) is Informational and event.status == HTTPStatus.SWITCHING_PROTOCOLS:
                    response = Response(101, headers=Headers.from_raw(strip_hop_by_hop(event.headers)))
                    response.upgraded = Upgraded(stream, codec.trailing_data)
                    stream = None  # the connection manager owns it now
                    return response
                if type(event) is ResponseHead:
                    # The upstream declined the upgrade: pass its answer on, small body and all.
                    answer = event
                    parts = []
                    while True:
                        event = codec.next_event()
                        if event is NEED_DATA:
                            codec.receive_data(await stream.receive_some(RECEIVE_SIZE))
                        elif type(event) is Data:
                            parts.append(event.data)
                        else:
                            break
                    headers_out = strip_hop_by_hop(answer.headers)
                    return Response(
                        answer.status,
                        headers=Headers.from_raw(headers_out),
                        body=Body.from_bytes(b"".join(parts)),
                    )
                if type(event) is not Informational:
                    msg = f"upstream {host.label} closed the connection before answering the upgrade"
                    raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, msg)
        cluster.stats_rq_timeout.value += 1
        raise UpstreamError(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError) as err:
        msg = f"upstream {host.label} failed during the upgrade: {err}"
        raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, msg) from err
    finally:
        if stream is not None:
            _close_now(stream)
