"""One request over a multiplexed HTTP/2 connection to an upstream endpoint.

The endpoint's HTTP/2 pool (:mod:`meshcore.runtime.h2pool`) gives a connection with room
for a stream; a stream the upstream refuses (it cannot have processed it) is tried again
on a new one, a bounded number of times, while the request body is untouched. The request
stays counted active until its response body ends (``finish``), not when its head arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from meshcore.errors import UpstreamError
from meshcore.flags import ResponseFlag
from meshcore.http.messages import Request, Response
from meshcore.runtime.h2pool import StreamRefused, upstream_error

if TYPE_CHECKING:
    from meshcore.runtime.cluster import Cluster
    from meshcore.runtime.host import Host

__all__ = ["send_h2"]

# How many times a request may go out on HTTP/2: again only when the upstream cannot have
# processed it (a stream refused).
_ATTEMPTS = 3


async def send_h2(cluster: Cluster, request: Request, host: Host, deadline: float) -> Response:
    """Forward over a multiplexed HTTP/2 connection; retry streams the upstream refused."""
    finished = False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            host.active_requests -= 1
            cluster.stats_rq_active.value -= 1
            host.wake_waiters()

    nursery = cluster.manager.nursery if cluster.manager is not None else None
    if nursery is None:
        finish()
        msg = "HTTP/2 upstreams need a running proxy (no nursery for their connections)"
        raise UpstreamError(ResponseFlag.UPSTREAM_CONNECTION_FAILURE, msg)
    try:
        response = await _attempts(request, host, deadline, nursery, finish)
    except (TimeoutError, StreamRefused, ConnectionResetError, trio.BrokenResourceError) as err:
        finish()
        flag, msg = upstream_error(err, host.label)
        if flag is ResponseFlag.UPSTREAM_REQUEST_TIMEOUT:
            cluster.stats_rq_timeout.value += 1
        raise UpstreamError(flag, msg, refused=isinstance(err, StreamRefused)) from err
    except BaseException:
        finish()
        raise
    if response is None:
        cluster.stats_rq_timeout.value += 1
        finish()
        raise UpstreamError(ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "upstream request timeout")
    return response


async def _attempts(
    request: Request,
    host: Host,
    deadline: float,
    nursery: trio.Nursery,
    finish: Callable[[], None],
) -> Response | None:
    """The response, on a new stream after each refused one; None when the deadline passed."""
    for attempt in range(_ATTEMPTS):
        with trio.move_on_at(deadline) as scope:
            conn = await host.h2_pool.acquire(nursery)
            try:
                return await conn.exchange(request, deadline, finish)
            except StreamRefused:
                if attempt == _ATTEMPTS - 1 or request.body.consumed:
                    raise
        if scope.cancelled_caught:
            return None
    msg = "unreachable"
    raise AssertionError(msg)  # pragma: no cover - the last attempt returns or raises
