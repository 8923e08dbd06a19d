"""Consistent hashing: ``ring_hash`` and ``maglev``, keyed by the request's hash policies.

Both send the requests of one key (a user's header, a cookie, the client's address, a query
parameter) to the same endpoint while the endpoints stay, and move few keys when they
change: removing one of N endpoints moves about 1/N of the keys, those of the endpoint
that went.

- ``ring_hash`` (Karger et al.): each endpoint is hashed onto a ring at many points (more
  for a higher weight); a key goes to the first point at or after its own hash.
- ``maglev`` (Eisenbud et al., NSDI 2016, as Envoy builds it): a lookup table of a prime
  size is filled by each endpoint in turn along its own permutation of the slots, so that
  every endpoint owns an equal share (weighted) and a key is one modulo away from its
  endpoint. Faster per request than a ring, a little more movement on changes.

Tables are built once per set of candidate endpoints (a health change gives a new set) and
kept while it stays. Hash policies are Envoy's: ``header``, ``cookie``, ``source_ip``,
``query_parameter``; several combine, and a ``terminal`` one that yields a key stops the
list. A request no policy yields a key for goes to a random endpoint.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl

import attrs

import meshcore
from meshcore import at_least, at_most

__all__ = ["HashPolicy", "Maglev", "MaglevConfig", "RingHash", "RingHashConfig", "key_hash"]

_MASK = (1 << 64) - 1
_MAX_RING = 1 << 20


class Host(Protocol):
    """What a hashing policy needs to know of an endpoint."""

    @property
    def weight(self) -> int:
        """Relative share of the keys, >= 1."""
        ...

    @property
    def label(self) -> str:
        """Its address, "host:port": what is hashed onto the ring or table."""
        ...


H = TypeVar("H", bound=Host)


def key_hash(data: str | bytes, seed: int = 0) -> int:
    """A 64-bit hash of ``data`` (BLAKE2b), stable across processes and runs."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return int.from_bytes(
        hashlib.blake2b(raw, digest_size=8, salt=seed.to_bytes(8, "little")).digest(), "little"
    )


@attrs.frozen(kw_only=True)
class HashPolicy:
    """Where a request's hash key comes from: exactly one of the four sources."""

    header: str | None = None
    """The value of this request header (every value, joined)."""
    cookie: str | None = None
    """The value of this cookie."""
    source_ip: bool = False
    """The client's IP address."""
    query_parameter: str | None = None
    """The value of this query parameter."""
    terminal: bool = False
    """Stop at this policy when it yields a key (the ones after it are fallbacks)."""

    def __attrs_post_init__(self) -> None:
        given = [k for k in ("header", "cookie", "query_parameter") if getattr(self, k) is not None]
        if self.source_ip:
            given.append("source_ip")
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            msg = f"needs exactly one of header, cookie, source_ip, query_parameter; got {got}"
            raise ValueError(msg)

    def key(self, context: Any) -> str | None:
        """This policy's key for ``context`` (a Request, a Connection, or None), if it has one."""
        if context is None:
            return None
        if self.source_ip:
            connection = getattr(context, "connection", context)
            peer = getattr(connection, "peer_host", None)
            if peer is None:
                info = getattr(context, "info", None)
                address = getattr(info, "downstream_address", "") or ""
                peer = address.rpartition(":")[0].strip("[]") or None
            return peer
        headers = getattr(context, "headers", None)
        if headers is None:
            return None  # a connection has no headers, cookies or query
        if self.header is not None:
            values = headers.get_all(self.header)
            return ",".join(values) if values else None
        if self.cookie is not None:
            return _cookie(headers.get_all("cookie"), self.cookie)
        query = context.path.partition("?")[2]
        return next(
            (v for k, v in parse_qsl(query, keep_blank_values=True) if k == self.query_parameter), None
        )


def _cookie(lines: list[str], name: str) -> str | None:
    for line in lines:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(line)
        except CookieError:
            continue
        if name in jar:
            return jar[name].value
    return None


def request_hash(policies: Sequence[HashPolicy], context: Any) -> int | None:
    """The hash of a request's keys under ``policies`` (Envoy's combination), or None."""
    combined: int | None = None
    for policy in policies:
        key = policy.key(context)
        if key is None:
            continue
        value = key_hash(key)
        # Rotate left by one and xor: the order of the policies matters, as in Envoy.
        combined = value if combined is None else (((combined << 1) | (combined >> 63)) & _MASK) ^ value
        if policy.terminal:
            break
    return combined


_TABLES_KEPT = 4  # tables of recent endpoint sets kept: a flapping endpoint costs no rebuild


class _Hashing:
    """What both policies share: hash policies, tables per endpoint set, a random fallback.

    A table holds endpoint labels; the endpoints themselves are looked up by label in the
    candidate list of the moment, so a table can be reused for the same set later.
    """

    def __init__(self, policies: Sequence[HashPolicy]) -> None:
        self._policies = tuple(policies)
        self._hosts: Sequence[Any] | None = None
        self._by_label: dict[str, Any] = {}
        self._tables: OrderedDict[tuple[tuple[str, int], ...], Any] = OrderedDict()
        self._table: Any = None
        self._random = random.Random()  # noqa: S311 - load spreading, not cryptography

    def _key(self, request: Any) -> int:
        value = request_hash(self._policies, request)
        return value if value is not None else self._random.getrandbits(64)

    def _table_for(self, hosts: Sequence[Host]) -> Any:
        """The table of this candidate list: kept, from a recent identical set, or built."""
        if hosts is not self._hosts:
            self._hosts = hosts
            self._by_label = {h.label: h for h in hosts}
            key = tuple(sorted((h.label, h.weight) for h in hosts))
            table = self._tables.pop(key, None)
            if table is None:
                table = self.build(hosts)
            self._tables[key] = table
            while len(self._tables) > _TABLES_KEPT:
                self._tables.popitem(last=False)
            self._table = table
        return self._table

    def build(self, hosts: Sequence[Host]) -> Any:
        """A new table for ``hosts``."""
        raise NotImplementedError


# -- ring hash -----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RingHashConfig:
    """Config of ``ring_hash``."""

    hash_policy: tuple[HashPolicy, ...] = ()
    minimum_ring_size: int = attrs.field(default=1024, validator=[at_least(1), at_most(_MAX_RING)])
    """Points on the ring at least (more points, smoother shares, a slower build)."""
    maximum_ring_size: int = attrs.field(default=1 << 16, validator=[at_least(1), at_most(_MAX_RING)])

    def __attrs_post_init__(self) -> None:
        if self.maximum_ring_size < self.minimum_ring_size:
            msg = f"maximum_ring_size ({self.maximum_ring_size}) must be >= minimum_ring_size ({self.minimum_ring_size})"
            raise ValueError(msg)


class RingHash(_Hashing):
    """A key goes to the first of the endpoints' points at or after its hash on the ring."""

    def __init__(self, config: RingHashConfig | None = None) -> None:
        self.config = config or RingHashConfig()
        super().__init__(self.config.hash_policy)
        self._unit: int | None = None  # points per unit of weight

    def build(self, hosts: Sequence[Host]) -> tuple[list[int], list[str]]:
        """Place ``hosts`` on the ring: ``weight`` times the ring's unit of points each.

        The unit is what makes ``minimum_ring_size`` points for these endpoints, but it is
        kept when endpoints leave (more points per endpoint would move keys between those
        that stay): only the keys of the endpoints that left move. It is recomputed when
        endpoints join, or when the ring has shrunk below half its minimum.
        """
        total = sum(h.weight for h in hosts)
        config = self.config
        needed = max(1, math.ceil(config.minimum_ring_size / total))
        if self._unit is None or needed < self._unit or self._unit * total * 2 < config.minimum_ring_size:
            self._unit = needed
        unit = max(1, min(self._unit, config.maximum_ring_size // total))
        ring: list[tuple[int, str]] = []
        for host in hosts:
            ring.extend((key_hash(f"{host.label}_{i}"), host.label) for i in range(host.weight * unit))
        ring.sort()
        return [point[0] for point in ring], [point[1] for point in ring]

    def pick(self, hosts: Sequence[H], request: Any = None, /) -> H:
        """The endpoint owning the request's key; ``hosts`` must not be empty."""
        if len(hosts) == 1:
            return hosts[0]
        points, owners = self._table_for(hosts)
        index = bisect_left(points, self._key(request))
        owner: H = self._by_label[owners[index if index < len(owners) else 0]]
        return owner


# -- maglev ------------------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    if n < 2:  # noqa: PLR2004 - the first prime
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


@attrs.frozen(kw_only=True)
class MaglevConfig:
    """Config of ``maglev``."""

    hash_policy: tuple[HashPolicy, ...] = ()
    table_size: int = attrs.field(default=65537, validator=[at_least(2), at_most(5_000_011)])
    """Slots of the lookup table: a prime, at least 100 times the endpoints for even shares."""

    def __attrs_post_init__(self) -> None:
        if not _is_prime(self.table_size):
            msg = f"table_size must be a prime number (such as 65537 or 5003), got {self.table_size}"
            raise ValueError(msg)


class Maglev(_Hashing):
    """A key goes to the endpoint in its slot of the Maglev lookup table."""

    def __init__(self, config: MaglevConfig | None = None) -> None:
        self.config = config or MaglevConfig()
        super().__init__(self.config.hash_policy)

    def build(self, hosts: Sequence[Host]) -> list[str]:
        """Fill the table: each endpoint in turn takes its next free slot, weighted."""
        size = self.config.table_size
        ordered = sorted(hosts, key=lambda h: h.label)  # the same table whatever the list's order
        offsets = [key_hash(h.label, 0) % size for h in ordered]
        skips = [key_hash(h.label, 1) % (size - 1) + 1 for h in ordered]
        top = max(h.weight for h in ordered)
        weights = [h.weight / top for h in ordered]
        targets = [0.0] * len(ordered)
        slots = offsets[:]  # each endpoint's next slot along its permutation
        table: list[str | None] = [None] * size
        filled = 0
        iteration = 0
        while filled < size:
            iteration += 1
            for i, host in enumerate(ordered):
                # An endpoint of the top weight takes a slot every round, one of a third of it
                # every third round, and so on.
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += 1.0
                slot, skip = slots[i], skips[i]
                while table[slot] is not None:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = host.label
                slot += skip
                slots[i] = slot - size if slot >= size else slot
                filled += 1
                if filled == size:
                    break
        return table  # type: ignore[return-value]  # every slot is filled

    def pick(self, hosts: Sequence[H], request: Any = None, /) -> H:
        """The endpoint in the request key's slot; ``hosts`` must not be empty."""
        if len(hosts) == 1:
            return hosts[0]
        table = self._table_for(hosts)
        owner: H = self._by_label[table[self._key(request) % len(table)]]
        return owner


@meshcore.hookimpl
def meshcore_lb_policies() -> list[meshcore.LbPolicyType]:
    """Register ``ring_hash`` and ``maglev``."""
    return [
        meshcore.LbPolicyType(
            name="ring_hash",
            factory=RingHash,
            config=RingHashConfig,
            description="consistent hashing on a ring, by the request's hash policies",
        ),
        meshcore.LbPolicyType(
            name="maglev",
            factory=Maglev,
            config=MaglevConfig,
            description="consistent hashing with a Maglev lookup table, by the request's hash policies",
        ),
    ]
