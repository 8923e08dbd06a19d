"""``local_ratelimit``: token buckets that cap the request rate, per proxy, without a server.

Envoy's local rate limit model: a bucket holds at most ``max_tokens`` tokens (the burst)
and gains ``tokens_per_fill`` every ``fill_interval`` (the rate is
``tokens_per_fill / fill_interval``); a request takes one token or is rejected. Fills are
computed from the time elapsed when a request comes, never by a background task.

Scope: one filter instance, so one bucket, per listener's chain. A route that overrides
the filter (``filters: {local_ratelimit: {...}}``) gets an instance and a bucket of its
own, which replaces the listener's for that route; ``filters: {local_ratelimit:
disabled}`` lets the route's requests through unlimited.

Buckets outlive Snapshots: a Snapshot that leaves the filter alone leaves its buckets
alone, and a rebuilt filter takes over the buckets of the one it replaces (``carry_over``):
the same buckets when their shape is the same; when it changed, the tokens left, less any
past the new ``max_tokens`` and plus whatever ``max_tokens`` grew by. So a config change is
never a free refill, and a changed limit applies from the next request.

``descriptors`` add buckets keyed by something in the request: a header's value
(``key: {header: x-user}``), the client's IP address (``key: client_address``), or the
identity of the caller (``key: identity``; for now the value of
``request.info.metadata["identity"]`` set by an earlier filter). A request whose key is
missing skips that descriptor. A request must find a token in every bucket that applies
to it (the filter's own and one per descriptor); it takes one from each only if it does.
Each descriptor tracks at most ``max_keys`` keys, forgetting the least recently used.

A rejected request gets ``status`` (429) with ``body``, a ``retry-after`` header (whole
seconds until a token is due) and the flag ``RL``; a gRPC request gets HTTP 200 with
``grpc-status: 8`` (RESOURCE_EXHAUSTED), as Envoy answers. Metrics, labelled ``listener``
and ``route``: ``local_ratelimit_allowed`` and ``local_ratelimit_limited``.
"""

from __future__ import annotations

import difflib
import math
from collections import OrderedDict
from collections.abc import Awaitable, Hashable, Mapping
from typing import Any, Literal

import attrs
import trio

import meshcore
from meshcore import (
    Duration,
    FilterContext,
    HttpHandler,
    Request,
    Response,
    ResponseFlag,
    TokenBucket,
    at_least,
    at_most,
    split_host_port,
)

GRPC_MESSAGE = "local rate limited"
_KEY_HELP = 'must be "client_address", "identity" or a mapping {header: NAME}'


def _positive(_instance: Any, _attribute: attrs.Attribute[Any], value: Duration) -> None:
    if value <= 0:
        msg = f"must be longer than 0s, got {float(value):g}s"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class TokenBucketConfig:
    """The shape of a token bucket: its size and how fast it refills."""

    max_tokens: int = attrs.field(validator=at_least(1))
    """The most tokens the bucket holds: the burst allowed after a quiet spell. It starts full."""
    tokens_per_fill: int = attrs.field(default=1, validator=at_least(1))
    """Tokens added at each fill."""
    fill_interval: Duration = attrs.field(validator=_positive)
    """Time between fills; the rate is ``tokens_per_fill / fill_interval``."""


@attrs.frozen
class DescriptorKey:
    """What a descriptor's buckets are keyed by.

    Written as ``client_address``, ``identity``, or ``{header: NAME}``.
    """

    source: Literal["header", "client_address", "identity"]
    """Where the key comes from."""
    header: str | None = None
    """The header's name (lower-case), when the key is a header's value."""

    @classmethod
    def __meshcore_parse__(cls, value: Any) -> DescriptorKey:
        if value in ("client_address", "identity"):
            return cls(value)
        if isinstance(value, Mapping) and list(value) == ["header"]:
            name = value["header"]
            if isinstance(name, str) and name and name.isascii() and not any(c in name for c in ' \t:"'):
                return cls("header", name.lower())
            msg = f"the header name must be a non-empty token, got {name!r}"
            raise ValueError(msg)
        if isinstance(value, str):
            close = difflib.get_close_matches(value, ["client_address", "identity"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"{_KEY_HELP}, got {value!r}{hint}"
        else:
            shown = "a mapping" if isinstance(value, Mapping) else repr(value)
            msg = f"{_KEY_HELP}, got {shown}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class RateLimitDescriptor(TokenBucketConfig):
    """A bucket per distinct key value: per user, per client address, per identity."""

    key: DescriptorKey
    """What the buckets are keyed by."""
    max_keys: int = attrs.field(default=10000, validator=at_least(1))
    """The most keys tracked at once; past it the least recently used key is forgotten (its
    next request starts with a full bucket)."""


@attrs.frozen(kw_only=True)
class LocalRateLimitConfig(TokenBucketConfig):
    """Config of ``local_ratelimit`` (also its per-route override)."""

    descriptors: tuple[RateLimitDescriptor, ...] = ()
    """Buckets keyed by request properties, applied on top of the filter's own bucket."""
    status: int = attrs.field(default=429, validator=[at_least(400), at_most(599)])
    """The HTTP status of a rejection."""
    body: str = "local rate limited\n"
    """The body of a rejection (text/plain)."""


def _new_bucket(config: TokenBucketConfig, now: float) -> TokenBucket:
    return TokenBucket(
        config.max_tokens,
        tokens_per_fill=config.tokens_per_fill,
        fill_interval=float(config.fill_interval),
        now=now,
    )


def _same_shape(config: TokenBucketConfig, other: TokenBucketConfig) -> bool:
    return (config.max_tokens, config.tokens_per_fill, config.fill_interval) == (
        other.max_tokens,
        other.tokens_per_fill,
        other.fill_interval,
    )


def _adopt(config: TokenBucketConfig, bucket: TokenBucket) -> TokenBucket:
    """A bucket of ``config``'s shape continuing ``bucket``.

    No refill and no loss, but the tokens past the new maximum; a grown maximum adds its
    growth. Fills count on from the old bucket's last one.
    """
    last_fill = bucket.start + bucket.fills * bucket.fill_interval if bucket.fills else bucket.start
    adopted = _new_bucket(config, last_fill)
    grown = max(0, config.max_tokens - bucket.max_tokens)
    adopted.tokens = max(0, min(config.max_tokens, bucket.tokens + grown))
    return adopted


class _State:
    """The filter's own bucket, made full on the first request.

    Shared with the filters that replace it with the same shape.
    """

    __slots__ = ("bucket",)

    def __init__(self) -> None:
        self.bucket: TokenBucket | None = None


class _Descriptor:
    """The buckets of one descriptor, by key, least recently used first."""

    __slots__ = ("buckets", "config", "header", "max_keys", "source")

    def __init__(self, config: RateLimitDescriptor) -> None:
        self.config = config
        self.source = config.key.source
        self.header = (config.key.header or "").encode("latin-1")
        self.max_keys = config.max_keys
        self.buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def adopt(self, previous: _Descriptor) -> None:
        """Take over the buckets of ``previous``, a descriptor with the same key."""
        if _same_shape(self.config, previous.config) and self.max_keys == previous.max_keys:
            self.buckets = previous.buckets  # the very same: both filters spend from them
            return
        kept = list(previous.buckets.items())[-self.max_keys :]
        self.buckets = OrderedDict((k, _adopt(self.config, b)) for k, b in kept)

    def key(self, request: Request) -> Hashable | None:
        if self.source == "header":
            return request.headers.get_raw(self.header)
        if self.source == "client_address":
            return split_host_port(request.info.downstream_address)[0]
        identity = request.info.metadata.get("identity")
        return None if identity is None else str(identity)

    def bucket(self, key: Hashable, now: float) -> TokenBucket:
        buckets = self.buckets
        found = buckets.get(key)
        if found is None:
            found = buckets[key] = _new_bucket(self.config, now)
            if len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
        return found


class _RouteStats:
    __slots__ = ("allowed", "limited")

    def __init__(self, stats: meshcore.Stats, listener: str, route: str) -> None:
        self.allowed = stats.counter("local_ratelimit_allowed", listener=listener, route=route)
        self.limited = stats.counter("local_ratelimit_limited", listener=listener, route=route)


class LocalRateLimit:
    """The ``local_ratelimit`` filter for one Snapshot (per listener, and per overriding route)."""

    def __init__(self, config: LocalRateLimitConfig, context: FilterContext) -> None:
        self._config = config
        self._state = _State()
        self._descriptors = tuple(_Descriptor(d) for d in config.descriptors)
        self._status = config.status
        self._body = config.body.encode()
        self._stats = context.stats
        self._listener = context.listener
        self._by_route: dict[str, _RouteStats] = {}

    def carry_over(self, previous: object) -> None:
        """Take over the buckets of the ``local_ratelimit`` this one replaces (see the module doc)."""
        if not isinstance(previous, LocalRateLimit):
            return
        state, config = previous._state, previous._config  # noqa: SLF001 - the filter it replaces
        if _same_shape(self._config, config):
            self._state = state  # the very same bucket: both filters spend from it
        elif state.bucket is not None:
            self._state.bucket = _adopt(self._config, state.bucket)
        old = {d.config.key: d for d in previous._descriptors}  # noqa: SLF001 - the filter it replaces
        for descriptor in self._descriptors:
            same_key = old.get(descriptor.config.key)
            if same_key is not None:
                descriptor.adopt(same_key)

    def __call__(self, request: Request, call_next: HttpHandler) -> Awaitable[Response]:
        """Pass ``request`` on if every bucket that applies has a token, else reject it.

        A plain function handing back ``call_next``'s coroutine (or one that answers the
        rejection): the request's every suspension has one frame less to unwind and resume.
        """
        now = trio.current_time()
        state = self._state
        bucket = state.bucket
        if bucket is None:
            bucket = state.bucket = _new_bucket(self._config, now)
        stats = self._route_stats(request.info.route_name or "")
        if not self._descriptors:
            if bucket.take(now):
                stats.allowed.value += 1
                return call_next(request)
            stats.limited.value += 1
            return _answered(self._reject(request, bucket.wait(now)))
        applying = [bucket]
        for descriptor in self._descriptors:
            key = descriptor.key(request)
            if key is not None:
                applying.append(descriptor.bucket(key, now))
        for b in applying:
            b.refill(now)
        empty = [b.wait(now) for b in applying if b.tokens < 1]
        if empty:
            stats.limited.value += 1
            return _answered(self._reject(request, max(empty)))
        for b in applying:
            b.tokens -= 1
        stats.allowed.value += 1
        return call_next(request)

    def _reject(self, request: Request, wait: float) -> Response:
        request.info.flags.add(ResponseFlag.LOCAL_RATE_LIMITED)
        retry_after = ("retry-after", str(max(1, math.ceil(wait))))
        if meshcore.is_grpc(request):
            return meshcore.grpc_response(
                meshcore.GrpcStatus.RESOURCE_EXHAUSTED, GRPC_MESSAGE, headers=[retry_after]
            )
        return Response.local(self._status, self._body, headers=[retry_after])

    def _route_stats(self, route: str) -> _RouteStats:
        # One pair of counters per route, made on the route's first request and kept.
        found = self._by_route.get(route)
        if found is None:
            found = self._by_route[route] = _RouteStats(self._stats, self._listener, route)
        return found


async def _answered(response: Response) -> Response:
    """A coroutine for a reply the filter already has (a rejection)."""
    return response


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register ``local_ratelimit``."""
    return [
        meshcore.HttpFilterType(
            name="local_ratelimit",
            factory=LocalRateLimit,
            config=LocalRateLimitConfig,
            description="caps the request rate with token buckets (per listener, route, or key)",
        )
    ]
