"""The delivery protocol's state machines, both sides, sans-IO: messages in, events out.

A proxy opens its stream with one ``discovery_request`` for every type (``type_url: "*"``)
carrying its identity (``node``) and the version of each type it already has
(``initial_versions``, as delta xDS's ``initial_resource_versions``), so that a control
plane it reconnects to sends only what differs. The control plane then sends pushes: one
``discovery_response`` per changed type (a version and a nonce each; the endpoints of only
the clusters that changed when that is all), the last one marked ``last``. The proxy
applies a push whole and answers every response of it: an ACK (its nonce and new version)
or a NACK (its nonce, the version kept, and the error).

:class:`ServerSession` is one proxy's stream seen from the control plane, and
:class:`ClientSession` the same stream seen from the proxy. Neither does I/O nor reads a
clock: the trio shells (``meshcore.control.server`` and ``.client``) feed them.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from meshcore.control.messages import encode_resources, encode_response, field
from meshcore.control.translate import ProxyIdentity
from meshcore.control.wire import PUSH_ORDER
from meshcore.errors import ProtocolError

__all__ = [
    "Acked",
    "CertificateAnswered",
    "CertificateRequested",
    "ClientSession",
    "Nacked",
    "Push",
    "ServerSession",
    "Status",
    "Subscribed",
    "TypeUpdate",
]

WILDCARD = "*"
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Status(enum.Enum):
    """Where a proxy stands: up to date, behind, or refusing what it was sent."""

    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"


@attrs.frozen(kw_only=True)
class TypeUpdate:
    """What one response carries: a type's version, and its resources (all, or the changed ones)."""

    type_url: str
    version: str
    resources: Mapping[str, Any] = _EMPTY
    removed: tuple[str, ...] = ()
    incremental: bool = False
    resources_json: str | None = attrs.field(default=None, eq=False, repr=False)
    """``resources`` already encoded (see :func:`~meshcore.control.messages.encode_resources`), if so."""


# -- events -------------------------------------------------------------------------------------


@attrs.frozen
class Subscribed:
    """The proxy said who it is and which versions it has."""

    node: ProxyIdentity
    versions: Mapping[str, str]


@attrs.frozen
class Acked:
    """The proxy applied ``version`` of ``type_url``."""

    type_url: str
    version: str


@attrs.frozen
class Nacked:
    """The proxy refused ``rejected`` of ``type_url``, kept ``version``, and said why."""

    type_url: str
    version: str
    rejected: str
    message: str


@attrs.frozen
class CertificateRequested:
    """The proxy asked for its workload certificate (a PEM CSR; its key stays with it)."""

    request_id: int
    csr: str


@attrs.frozen
class Push:
    """A whole push the proxy received, to apply at once (then ACK or NACK)."""

    updates: tuple[TypeUpdate, ...]
    nonces: tuple[str, ...]


@attrs.frozen
class CertificateAnswered:
    """The control plane's answer to a certificate request: a certificate, or an error."""

    request_id: int
    certificate_chain: str = ""
    trusted_ca: str = ""
    not_after: float = 0.0
    error: str = ""


# -- the control plane's side -------------------------------------------------------------------


@attrs.define
class _Sent:
    """One type's state toward one proxy."""

    version: str = ""
    nonce: str = ""
    acked: str = ""
    nack: str = ""


class ServerSession:
    """One proxy's stream, as the control plane sees it."""

    def __init__(self) -> None:
        self.node: ProxyIdentity | None = None
        self.types: dict[str, _Sent] = {}
        self._nonces = itertools.count(1)

    # -- input --

    def receive(self, message: Mapping[str, Any]) -> list[Any]:
        """Events for one message from the proxy; ProtocolError if it breaks the protocol."""
        ((kind, body),) = message.items()
        if not isinstance(body, dict):
            msg = f"{kind} must be an object"
            raise ProtocolError(msg)
        if kind == "discovery_request":
            return self._request(body)
        if kind == "certificate_request":
            if self.node is None:
                msg = "certificate_request before the proxy said who it is"
                raise ProtocolError(msg)
            return [CertificateRequested(field(body, "request_id", int), field(body, "csr", str))]
        msg = f"unknown message {kind!r}"
        raise ProtocolError(msg)

    def _request(self, body: dict[str, Any]) -> list[Any]:
        type_url = field(body, "type_url", str, "")
        if self.node is None:
            return [self._subscribe(body, type_url)]
        nonce = field(body, "response_nonce", str, "")
        version = field(body, "version_info", str, "")
        sent = self.types.get(type_url)
        if sent is None or not nonce or nonce != sent.nonce:
            return []  # a stale answer (a newer response is on its way) or a repeated subscription
        error = field(body, "error_detail", dict, None)
        if error is not None:
            message = field(error, "message", str, "") or "rejected without a message"
            sent.nack = message
            sent.acked = version
            return [Nacked(type_url, version, sent.version, message)]
        if version != sent.version:
            msg = f"ACK of {type_url} version {version!r} for nonce {nonce!r}, which carried {sent.version!r}"
            raise ProtocolError(msg)
        sent.acked, sent.nack = version, ""
        return [Acked(type_url, version)]

    def _subscribe(self, body: dict[str, Any], type_url: str) -> Subscribed:
        if type_url != WILDCARD:
            msg = f'the first discovery_request must subscribe to every type ("*"), got {type_url!r}'
            raise ProtocolError(msg)
        node = field(body, "node", dict, None)
        if node is None:
            msg = "the first discovery_request must carry the node"
            raise ProtocolError(msg)
        metadata = field(node, "metadata", dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            msg = "node.metadata must map strings to strings"
            raise ProtocolError(msg)
        identity = ProxyIdentity(
            id=field(node, "id", str, "") or "unnamed",
            workload=field(node, "workload", str, ""),
            namespace=field(node, "namespace", str, "") or "default",
            version=field(node, "version", str, ""),
            metadata=MappingProxyType(dict(metadata)),
        )
        versions = field(body, "initial_versions", dict, {})
        known = {t: v for t, v in versions.items() if t in PUSH_ORDER and isinstance(v, str)}
        self.node = identity
        self.types = {t: _Sent(version=v, acked=v) for t, v in known.items()}
        return Subscribed(identity, MappingProxyType(known))

    # -- output --

    def _stamp(self, updates: Sequence[TypeUpdate]) -> list[tuple[TypeUpdate, str, bool]]:
        """Each update of one push in ``PUSH_ORDER`` with its nonce, and whether it is the last."""
        ordered = sorted(updates, key=lambda u: PUSH_ORDER.index(u.type_url))
        out = []
        for i, update in enumerate(ordered):
            nonce = f"n{next(self._nonces)}"
            sent = self.types.setdefault(update.type_url, _Sent())
            sent.version, sent.nonce = update.version, nonce
            out.append((update, nonce, i == len(ordered) - 1))
        return out

    def push(self, updates: Sequence[TypeUpdate]) -> list[dict[str, Any]]:
        """The responses of one push (in ``PUSH_ORDER``), the last marked as such."""
        return [
            {
                "discovery_response": {
                    "type_url": update.type_url,
                    "version_info": update.version,
                    "nonce": nonce,
                    "resources": [{"name": n, "resource": r} for n, r in update.resources.items()],
                    "removed_resources": list(update.removed),
                    "incremental": update.incremental,
                    "last": last,
                }
            }
            for update, nonce, last in self._stamp(updates)
        ]

    def push_frames(self, updates: Sequence[TypeUpdate]) -> bytes:
        """The framed responses of one push: :meth:`push`, encoded.

        Resources already encoded as JSON text (``resources_json``) are used as they are, so
        that a push to many proxies encodes them once.
        """
        return b"".join(
            encode_response(
                type_url=update.type_url,
                version=update.version,
                nonce=nonce,
                resources_json=update.resources_json or encode_resources(dict(update.resources)),
                removed=list(update.removed),
                incremental=update.incremental,
                last=last,
            )
            for update, nonce, last in self._stamp(updates)
        )

    @staticmethod
    def certificate_response(answer: CertificateAnswered) -> dict[str, Any]:
        """The message answering a certificate request."""
        body: dict[str, Any] = {"request_id": answer.request_id}
        if answer.error:
            body["error"] = answer.error
        else:
            body.update(
                certificate_chain=answer.certificate_chain,
                trusted_ca=answer.trusted_ca,
                not_after=answer.not_after,
            )
        return {"certificate_response": body}

    # -- state --

    def version(self, type_url: str) -> str:
        """The version of ``type_url`` last sent (or the proxy's own before any push)."""
        sent = self.types.get(type_url)
        return sent.version if sent is not None else ""

    def acked_versions(self) -> dict[str, str]:
        """The version of each type the proxy runs."""
        return {t: s.acked for t, s in self.types.items()}

    @property
    def status(self) -> Status:
        """NACKED if the latest of some type was refused; STALE if some type is not applied yet."""
        if any(s.nack for s in self.types.values()):
            return Status.NACKED
        if self.node is None or not self.types or any(s.acked != s.version for s in self.types.values()):
            return Status.STALE
        return Status.SYNCED

    @property
    def nack_message(self) -> str:
        """The message of the latest refusal, "" if none."""
        return next((s.nack for s in self.types.values() if s.nack), "")


# -- the proxy's side ---------------------------------------------------------------------------


class ClientSession:
    """The proxy's end of its stream: subscribes, collects pushes, answers them."""

    def __init__(self, node: ProxyIdentity, versions: Mapping[str, str] | None = None) -> None:
        self.node = node
        self.versions: dict[str, str] = dict(versions or {})
        self._pending: list[tuple[TypeUpdate, str]] = []
        self._requests = itertools.count(1)

    def start(self) -> list[dict[str, Any]]:
        """The opening message: who the proxy is and which versions it has."""
        node = {
            "id": self.node.id,
            "workload": self.node.workload,
            "namespace": self.node.namespace,
            "version": self.node.version,
            "metadata": dict(self.node.metadata),
        }
        request = {"type_url": WILDCARD, "node": node, "initial_versions": dict(self.versions)}
        return [{"discovery_request": request}]

    def receive(self, message: Mapping[str, Any]) -> list[Any]:
        """Events for one message from the control plane; ProtocolError if it breaks the protocol."""
        ((kind, body),) = message.items()
        if not isinstance(body, dict):
            msg = f"{kind} must be an object"
            raise ProtocolError(msg)
        if kind == "discovery_response":
            return self._response(body)
        if kind == "certificate_response":
            return [
                CertificateAnswered(
                    request_id=field(body, "request_id", int),
                    certificate_chain=field(body, "certificate_chain", str, ""),
                    trusted_ca=field(body, "trusted_ca", str, ""),
                    not_after=float(field(body, "not_after", (int, float), 0.0)),
                    error=field(body, "error", str, ""),
                )
            ]
        msg = f"unknown message {kind!r}"
        raise ProtocolError(msg)

    def _response(self, body: dict[str, Any]) -> list[Any]:
        type_url = field(body, "type_url", str)
        if type_url not in PUSH_ORDER:
            msg = f"unknown resource type {type_url!r}"
            raise ProtocolError(msg)
        resources: dict[str, Any] = {}
        for item in field(body, "resources", list, []):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "resource" not in item:
                msg = f"a {type_url} resource must be an object with name and resource"
                raise ProtocolError(msg)
            resources[item["name"]] = item["resource"]
        removed = field(body, "removed_resources", list, [])
        update = TypeUpdate(
            type_url=type_url,
            version=field(body, "version_info", str),
            resources=resources,
            removed=tuple(str(n) for n in removed),
            incremental=field(body, "incremental", bool, default=False),
        )
        self._pending.append((update, field(body, "nonce", str)))
        if not field(body, "last", bool, default=False):
            return []
        pending, self._pending = self._pending, []
        return [Push(tuple(u for u, _ in pending), tuple(n for _, n in pending))]

    def ack(self, push: Push) -> list[dict[str, Any]]:
        """ACK every response of ``push`` (it was applied)."""
        out = []
        for update, nonce in zip(push.updates, push.nonces, strict=True):
            self.versions[update.type_url] = update.version
            out.append(
                {
                    "discovery_request": {
                        "type_url": update.type_url,
                        "version_info": update.version,
                        "response_nonce": nonce,
                    }
                }
            )
        return out

    def nack(self, push: Push, message: str) -> list[dict[str, Any]]:
        """NACK every response of ``push`` with ``message``; the versions before it stay."""
        return [
            {
                "discovery_request": {
                    "type_url": update.type_url,
                    "version_info": self.versions.get(update.type_url, ""),
                    "response_nonce": nonce,
                    "error_detail": {"message": message},
                }
            }
            for update, nonce in zip(push.updates, push.nonces, strict=True)
        ]

    def certificate_request(self, csr: str) -> tuple[int, dict[str, Any]]:
        """A request id and the message asking for a certificate for ``csr`` (PEM)."""
        request_id = next(self._requests)
        return request_id, {"certificate_request": {"request_id": request_id, "csr": csr}}
