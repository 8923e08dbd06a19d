"""Request mirroring (shadowing): a copy of a share of a route's requests goes to another cluster.

Fire and forget, as Envoy does it: the copy runs in a nursery the proxy owns, its answer
is read and dropped, and nothing about it can slow or fail the original request:

- the copy's body is fed from the original's as the original is read, through a bounded
  buffer that is never waited on: a copy that falls behind is abandoned, not waited for;
- at most ``max_active`` copies of a route's requests are in flight; past that a request is
  not copied (``mirror_overflow``);
- the copy's Host gets a ``-shadow`` suffix on its host part (``api.example:8080``
  becomes ``api.example-shadow:8080``, as Envoy writes it), so that the mirror's logs tell
  copies from real traffic;
- the share is exact per block of requests (50% is 50 of every 100, at random positions),
  so that a small sample already shows the configured rate.

Metrics, labelled ``cluster`` (the mirror's): ``mirror_requests_total``,
``mirror_overflow``, ``mirror_failed``, and the gauge ``mirror_active``.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshcore.config.traffic import RequestMirrorPolicy
from meshcore.errors import MeshcoreError
from meshcore.http.messages import Body, Headers, Request, StreamInfo

if TYPE_CHECKING:
    from meshcore.runtime.cluster_manager import ClusterManager

__all__ = ["Mirrors", "Sampler", "shadow_authority", "start_mirror"]

log = structlog.get_logger("meshcore.mirror")

BUFFERED_CHUNKS = 16
"""Body chunks a copy may fall behind the original by before it is abandoned."""
_END = object()
_MAX_STATES = 4096


def shadow_authority(authority: str) -> str:
    """``authority`` with Envoy's ``-shadow`` suffix on its host part (the port kept)."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return f"{host}-shadow:{port}"
    return f"{authority}-shadow"


class Sampler:
    """Says, request by request, whether one is in a ``percentage`` share: exactly, per block.

    Each block of 100 requests (1,000 when the percentage has a fraction) holds the share's
    number of chosen positions, shuffled, so the share is exact per block and random within.
    """

    __slots__ = ("_block", "_chosen", "_random", "_slots")

    def __init__(self, percentage: float, rng: random.Random | None = None) -> None:
        self._block = 100 if float(percentage).is_integer() else 1000
        self._chosen = round(percentage * self._block / 100)
        self._slots: list[bool] = []
        self._random = rng or random.Random()  # noqa: S311 - sampling, not cryptography

    def __call__(self) -> bool:
        """Whether the next request is in the share."""
        if not self._slots:
            if self._chosen == 0:
                return False
            self._slots = [True] * self._chosen + [False] * (self._block - self._chosen)
            self._random.shuffle(self._slots)
        return self._slots.pop()


class _Tee:
    """Feeds the original request's body to a copy as the original is read, never waiting."""

    def __init__(self, source: Body) -> None:
        self.source = source
        self.send, self.receive = trio.open_memory_channel[Any](BUFFERED_CHUNKS)

    def original(self) -> Body:
        async def read() -> bytes:
            chunk = await self.source.read()
            item: Any = chunk or (_END, self.source.trailers)
            try:
                self.send.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.send.close()  # the copy fell behind or gave up: it gets no more
            if not chunk:
                self.send.close()
            return chunk

        def close() -> None:
            self.send.close()
            self.source.close()

        return Body(read, length=self.source.length, close=close)

    def copy(self) -> Body:
        body: Body

        async def read() -> bytes:
            try:
                item = await self.receive.receive()
            except trio.EndOfChannel:
                msg = "the original request's body was not copied whole"
                raise MeshcoreError(msg) from None
            if isinstance(item, tuple):
                body.trailers = item[1].copy() if item[1] is not None else None
                return b""
            return bytes(item)

        body = Body(read, length=self.source.length, close=self.receive.close)
        return body


def _copy_request(request: Request) -> tuple[Request, Body | None]:
    """The shadow copy of ``request`` and, if it has a body, the original's new (teeing) body."""
    body = request.body
    teed: Body | None = None
    if body.length == 0 or body.done:
        copy_body = Body.empty()
    else:
        tee = _Tee(body)
        teed, copy_body = tee.original(), tee.copy()
    info = StreamInfo(
        downstream_address=request.info.downstream_address, connection_id=request.info.connection_id
    )
    copy = Request(
        request.method,
        request.path,
        authority=shadow_authority(request.authority),
        scheme=request.scheme,
        headers=Headers.from_raw(list(request.headers.raw)),
        body=copy_body,
        http_version=request.http_version,
        info=info,
        connection=request.connection,
    )
    copy.route = request.route
    return copy, teed


class _MirrorStats:
    __slots__ = ("active", "failed", "overflow", "requests")

    def __init__(self, manager: ClusterManager, cluster: str) -> None:
        stats = manager.stats
        self.requests = stats.counter("mirror_requests_total", cluster=cluster)
        self.overflow = stats.counter("mirror_overflow", cluster=cluster)
        self.failed = stats.counter("mirror_failed", cluster=cluster)
        self.active = stats.gauge("mirror_active", cluster=cluster)


def start_mirror(
    manager: ClusterManager,
    request: Request,
    policy: RequestMirrorPolicy,
    *,
    timeout: float,
    active: list[int],
    ended: trio.lowlevel.ParkingLot | None = None,
) -> bool:
    """Send a copy of ``request`` to ``policy.cluster`` in the background; True if one went.

    Args:
        manager: the proxy's clusters (their nursery runs the copy).
        request: the request, before its body is read (its body is replaced by a teeing one).
        policy: the mirror policy.
        timeout: the copy's own timeout in seconds (0: none).
        active: a one-item list counting the route's copies in flight (checked against
            ``policy.max_active``).
        ended: unparked when the copy ends.
    """
    nursery = manager.nursery
    cluster = manager.get(policy.cluster)
    if nursery is None or cluster is None:
        return False
    stats = _MirrorStats(manager, policy.cluster)
    if active[0] >= policy.max_active:
        stats.overflow.value += 1
        return False
    copy, teed = _copy_request(request)
    if teed is not None:
        request.body = teed
    active[0] += 1
    stats.active.value += 1
    stats.requests.value += 1

    async def send() -> None:
        try:
            with trio.move_on_after(timeout or math.inf):
                response = await cluster.send(copy, timeout=timeout)
                try:
                    while await response.body.read():
                        pass
                finally:
                    response.body.close()
        except Exception as err:  # noqa: BLE001 - a copy's failure is only ever counted
            stats.failed.value += 1
            log.debug("mirror_failed", cluster=policy.cluster, reason=str(err))
        finally:
            copy.body.close()
            active[0] -= 1
            stats.active.value -= 1
            if ended is not None:
                ended.unpark_all()

    nursery.start_soon(send)
    return True


class Mirrors:
    """The mirroring state of a proxy: a sampler and an in-flight count per route and policy.

    Kept across Snapshots (by route name, position and policy), so that a reload in the
    middle of a block does not start the share over.
    """

    def __init__(self, manager: ClusterManager) -> None:
        self.manager = manager
        self._state: dict[tuple[str, int, RequestMirrorPolicy], tuple[Sampler, list[int]]] = {}
        self._ended = trio.lowlevel.ParkingLot()

    async def wait_idle(self) -> None:
        """Wait until no copy is in flight (for tests and tools)."""
        while any(active[0] for _, active in self._state.values()):
            await self._ended.park()

    def mirror(
        self, request: Request, route: str, policies: tuple[RequestMirrorPolicy, ...], *, timeout: float
    ) -> None:
        """Copy ``request`` to each policy's cluster whose share it falls in."""
        for index, policy in enumerate(policies):
            key = (route, index, policy)
            state = self._state.get(key)
            if state is None:
                if len(self._state) > _MAX_STATES:  # routes and policies long gone
                    self._state.clear()
                state = self._state[key] = (Sampler(policy.percentage), [0])
            sampler, active = state
            if sampler():
                start_mirror(self.manager, request, policy, timeout=timeout, active=active, ended=self._ended)
