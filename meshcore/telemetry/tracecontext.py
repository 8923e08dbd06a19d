"""Trace context propagation: W3C ``traceparent``/``tracestate`` and B3 (single and multi header).

Sans-IO: headers in, a :class:`SpanContext` out, and back. Ids are ints (128-bit trace id,
64-bit span id); a 64-bit B3 trace id is widened with zeros on the left, as the B3 spec
says. Malformed headers are ignored (the request starts a new trace), never an error:
they come from clients.

Propagator names are OpenTelemetry's (``OTEL_PROPAGATORS``): ``tracecontext``, ``b3``
(single header) and ``b3multi``. Extraction tries them in the order given and takes the
first valid context; injection writes every one of them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from meshcore.http.messages import Headers

__all__ = ["PROPAGATORS", "SpanContext", "extract", "inject", "new_span_id", "new_trace_id"]

PROPAGATORS = ("tracecontext", "b3", "b3multi")

_random = random.Random()  # noqa: S311 - trace ids must be unique, not secret
MAX_TRACESTATE = 512
"""A longer ``tracestate`` is dropped (W3C: vendors keep it short; 32 members at most)."""

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX = re.compile(rb"[0-9a-f]+")
_TRUE = (b"1", b"true")
_B3_TRACE_LENGTHS = (16, 32)  # hex digits: 64 or 128 bits
_B3_SPAN_LENGTH = 16
_B3_FIELDS = ("trace", "span", "sampled", "parent")  # the b3 header: trace-span[-sampled[-parent]]


def new_trace_id() -> int:
    """A random, non-zero 128-bit trace id."""
    return _random.getrandbits(128) or 1


def new_span_id() -> int:
    """A random, non-zero 64-bit span id."""
    return _random.getrandbits(64) or 1


class SpanContext:
    """What crosses a process boundary: trace id, parent span id, the sampling decision.

    Attributes:
        trace_id: 128-bit trace id.
        span_id: 64-bit id of the span that sent the request (the parent of ours).
        sampled: the sender's decision (True, False), or None when it left it to us (B3).
        debug: B3's debug flag (``d``, ``X-B3-Flags: 1``): sample, whatever the ratio.
        trace_state: the W3C ``tracestate`` to pass on, unchanged ("" if none).
    """

    __slots__ = ("debug", "sampled", "span_id", "trace_id", "trace_state")

    def __init__(
        self, trace_id: int, span_id: int, *, sampled: bool | None, debug: bool = False, trace_state: str = ""
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.debug = debug
        self.trace_state = trace_state

    def __repr__(self) -> str:
        return f"<SpanContext {self.trace_id:032x}-{self.span_id:016x} sampled={self.sampled}>"


def _traceparent(headers: Headers) -> SpanContext | None:
    value = headers.get_raw(b"traceparent")
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace, span, flags, rest = match.groups()
    # Version ff is invalid; version 00 has nothing after the flags. A later version may
    # add fields after a dash: read the four we know (W3C Trace Context, section 4.3).
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    state = b",".join(v for n, v in headers.raw if n == b"tracestate")
    trace_state = state.decode("latin-1") if len(state) <= MAX_TRACESTATE else ""
    return SpanContext(trace_id, span_id, sampled=bool(int(flags, 16) & 1), trace_state=trace_state)


def _b3_ids(trace: bytes, span: bytes) -> tuple[int, int] | None:
    if len(trace) not in _B3_TRACE_LENGTHS or len(span) != _B3_SPAN_LENGTH:
        return None
    if not _HEX.fullmatch(trace) or not _HEX.fullmatch(span):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    return (trace_id, span_id) if trace_id and span_id else None


def _b3_single(headers: Headers) -> SpanContext | None:
    value = headers.get_raw(b"b3")
    if value is None:
        return None
    parts = value.strip().lower().split(b"-")
    if len(parts) == 1:
        # A lone sampling state ("0") is a decision with no ids: it cannot be continued.
        return None
    ids = _b3_ids(parts[0], parts[1])
    if ids is None or len(parts) > len(_B3_FIELDS):
        return None
    state = parts[_B3_FIELDS.index("sampled")] if len(parts) > _B3_FIELDS.index("sampled") else b""
    if state not in (b"", b"0", b"1", b"d"):
        return None
    sampled = None if not state else state != b"0"
    return SpanContext(*ids, sampled=sampled, debug=state == b"d")


def _b3_multi(headers: Headers) -> SpanContext | None:
    trace, span = headers.get_raw(b"x-b3-traceid"), headers.get_raw(b"x-b3-spanid")
    if trace is None or span is None:
        return None
    ids = _b3_ids(trace.strip().lower(), span.strip().lower())
    if ids is None:
        return None
    flag = headers.get_raw(b"x-b3-sampled")
    debug = headers.get_raw(b"x-b3-flags") == b"1"
    sampled = None if flag is None else flag.strip().lower() in _TRUE
    return SpanContext(*ids, sampled=True if debug else sampled, debug=debug)


_EXTRACTORS = {"tracecontext": _traceparent, "b3": _b3_single, "b3multi": _b3_multi}


def extract(headers: Headers, propagators: Sequence[str]) -> SpanContext | None:
    """The first valid context in ``headers`` by ``propagators``' order, or None."""
    for name in propagators:
        context = _EXTRACTORS[name](headers)
        if context is not None:
            return context
    return None


_B3_MULTI = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags")
_OWNED = {
    "tracecontext": (b"traceparent",),
    "b3": (b"b3",),
    "b3multi": _B3_MULTI,
}


def owned_headers(propagators: Sequence[str]) -> frozenset[bytes]:
    """The header names that injecting with ``propagators`` replaces."""
    return frozenset(name for p in propagators for name in _OWNED[p])


def inject(
    headers: Headers,
    propagators: Sequence[str],
    trace_id: int,
    span_id: int,
    *,
    sampled: bool,
    parent_id: int = 0,
    trace_state: str = "",
    owned: frozenset[bytes] | None = None,
    trace_hex: str | None = None,
) -> None:
    """Write the context ``(trace_id, span_id, sampled)`` into ``headers`` in every format.

    Stale values of the same headers are removed first. ``parent_id`` (B3's parent span id,
    the span that ``span_id`` is a child of) is optional; ``trace_state`` is written back as
    the W3C ``tracestate`` when the request has none. ``owned`` is :func:`owned_headers`
    precomputed, ``trace_hex`` the trace id as 32 hex digits, if the caller has it already.
    """
    raw = headers.raw
    if len(propagators) == 1 and propagators[0] == "tracecontext":
        # The common case, on every traced request: replace one header in place.
        value = f"00-{trace_hex or '%032x' % trace_id}-{span_id:016x}-0{1 if sampled else 0}".encode()  # noqa: UP031 - the fastest int-to-hex
        for i, (header, _) in enumerate(raw):
            if header == b"traceparent":
                raw[i] = (b"traceparent", value)
                break
        else:
            raw.append((b"traceparent", value))
        if trace_state and headers.get_raw(b"tracestate") is None:
            raw.append((b"tracestate", trace_state.encode("latin-1")))
        return
    if owned is None:
        owned = owned_headers(propagators)
    raw = [(n, v) for n, v in raw if n not in owned]
    trace = (trace_hex or "%032x" % trace_id).encode()  # noqa: UP031 - the fastest int-to-hex
    span = b"%016x" % span_id
    flag = b"1" if sampled else b"0"
    for name in propagators:
        if name == "tracecontext":
            raw.append((b"traceparent", b"00-%s-%s-0%s" % (trace, span, flag)))
            if trace_state and not any(n == b"tracestate" for n, _ in raw):
                raw.append((b"tracestate", trace_state.encode("latin-1")))
        elif name == "b3":
            single = b"%s-%s-%s" % (trace, span, flag)
            raw.append((b"b3", single + (b"-%016x" % parent_id if parent_id else b"")))
        else:
            raw += [(b"x-b3-traceid", trace), (b"x-b3-spanid", span), (b"x-b3-sampled", flag)]
            if parent_id:
                raw.append((b"x-b3-parentspanid", b"%016x" % parent_id))
    headers.raw = raw
