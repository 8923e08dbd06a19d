"""``x-request-id``: generated when a request has none, kept when it has one, optionally echoed.

Every request that leaves a proxy carries one, so that the access logs of every hop, and
the spans of its trace, can be joined on it. At the edge of the mesh a client's id is not
trusted by default (Envoy's ``preserve_external_request_id``): a client could reuse one to
make its requests look like another's in the logs. Whom to trust is the edge of trust's
decision (:mod:`meshcore.http.edge`), the same one that lets a mesh peer's ``x-forwarded-*``
and ``x-meshcore-*`` headers through: a request is *internal* when its connection is a
mesh peer's (a verified SPIFFE ID of the mesh's trust domains, ``request.info.internal``);
otherwise it is external, and its id is replaced. An address alone proves nothing (there
is no counterpart of Envoy's ``internal_address_config``).
"""

from __future__ import annotations

import random
from typing import Any

from meshcore.http.messages import ParsedHeaders, Request, Response

__all__ = ["HEADER", "RequestIds", "new_request_id"]

HEADER = b"x-request-id"
MAX_LENGTH = 200
"""A longer incoming id is replaced: ids end up in every log line of every hop."""

_random = random.Random()  # noqa: S311 - an id to join logs on, not a secret
_V4 = (4 << 76) | (2 << 62)  # the version (4) and variant (RFC 9562) bits of a UUID
_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)


def new_request_id() -> str:
    """A random UUID (version 4) as 36 characters, in a third of the time of ``uuid.uuid4``."""
    h = "%032x" % (_random.getrandbits(128) & _MASK | _V4)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_PRINTABLE = bytes(range(0x20, 0x7F))


def _valid(value: bytes) -> bool:
    """Not empty, not too long, printable ASCII only (deleting those leaves nothing)."""
    return 0 < len(value) <= MAX_LENGTH and not value.translate(None, _PRINTABLE)


class RequestIds:
    """The request-id policy of one connection manager, compiled once per Snapshot.

    Args:
        config: a ``RequestIdConfig`` (``generate``, ``preserve_external``,
            ``set_in_response``), or None for the defaults.
    """

    __slots__ = ("generate", "in_response", "preserve_external")

    def __init__(self, config: Any = None) -> None:
        self.generate: bool = getattr(config, "generate", True)
        self.preserve_external: bool = getattr(config, "preserve_external", False)
        self.in_response: bool = getattr(config, "set_in_response", False)

    def apply(self, request: Request) -> None:
        """Keep, replace or generate the request's id; record it in ``request.info.request_id``.

        Called once the edge of trust has seen the request (``request.info.internal``).
        """
        headers = request.headers
        value = headers.get_raw(HEADER)
        if value is not None and _valid(value) and (self.preserve_external or request.info.internal):
            request.info.request_id = value.decode("ascii")
            return
        if not self.generate:
            if value is not None:  # an invalid or untrusted id, and none to replace it with
                headers.remove(HEADER)
            return
        request_id = new_request_id()
        if value is None:
            if type(headers) is ParsedHeaders:  # ours: hex digits and dashes, no check needed
                headers.add_checked(HEADER, request_id.encode("ascii"))
            else:
                headers.raw.append((HEADER, request_id.encode("ascii")))
        else:
            headers.set(HEADER, request_id)
        request.info.request_id = request_id

    def respond(self, request: Request, response: Response) -> None:
        """Echo the id in the response, when configured to."""
        if self.in_response and request.info.request_id is not None:
            response.headers.set(HEADER, request.info.request_id)
