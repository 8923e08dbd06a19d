"""``peer_identity``: an HTTP filter that tells the upstream (and the client) who called.

It reads the SPIFFE ID of the client's certificate through the public API only
(``request.connection.peer_principal``) and sets it on the request as ``header``, and on
the response too so that a test can see it. A request without one gets ``anonymous``.
"""

from __future__ import annotations

import attrs

import meshcore

__all__ = ["PeerIdentity", "PeerIdentityConfig"]


@attrs.frozen(kw_only=True)
class PeerIdentityConfig:
    """Config of ``peer_identity``."""

    header: str = attrs.field(default="x-peer-identity", validator=meshcore.non_empty)


class PeerIdentity:
    """The ``peer_identity`` filter."""

    def __init__(self, config: PeerIdentityConfig, _context: meshcore.FilterContext) -> None:
        self.header = config.header

    async def __call__(self, request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        """Name the caller on the request and the response."""
        conn = request.connection
        who = (conn.peer_principal if conn is not None else None) or "anonymous"
        request.headers.set(self.header, who)
        response = await call_next(request)
        response.headers.set(self.header, who)
        return response
