"""The control plane's state: the last good mesh, the proxies, and what each one is sent.

An edit of the mesh resources is checked whole before anything is pushed: the resources
structure, discovery makes sense of them, and no analyzer finds an ERROR. A bad edit is
refused (logged, shown on the admin server and by ``meshcore mesh status``) and the last
good mesh stays. A good edit, or news from discovery, is pushed after a quiet period
(``debounce``, at most ``max_debounce``), to every proxy whose resources it changes and
with only the types (and for endpoints, only the clusters) that changed.

Translation is cached per proxy identity for one model: a thousand replicas of one
workload cost one translation.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import structlog
import trio

from meshcore.config import NodeInfo
from meshcore.control.analyze import Severity, analyze
from meshcore.control.discovery import Discovery, build_model, open_discoveries
from meshcore.control.messages import encode, encode_resources
from meshcore.control.model import MeshModel
from meshcore.control.protocol import (
    Acked,
    CertificateAnswered,
    CertificateRequested,
    Nacked,
    ServerSession,
    Status,
    Subscribed,
    TypeUpdate,
)
from meshcore.control.resources import MeshResources
from meshcore.control.settings import ControlPlaneConfig, Tokens
from meshcore.control.signer import NO_CA, Signer, SigningError
from meshcore.control.translate import ProxyIdentity, TranslationError, translate, translators_of
from meshcore.control.wire import PUSH_ORDER, Memo, digest, resource_sets, unstructure
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.registry import Registry
from meshcore.runtime.stats import Stats

__all__ = ["ControlPlane", "ProxyHandle", "Rejection", "Translated"]

log = structlog.get_logger("meshcore.control")

Send = Callable[[bytes], None]
"""Queues framed messages toward a proxy (never waits)."""


@attrs.frozen(kw_only=True)
class Translated:
    """One identity's translation for one model: resources, their digests, the type versions."""

    resources: dict[str, dict[str, Any]]
    digests: dict[str, dict[str, str]]
    versions: dict[str, str]
    node: NodeInfo | None = None
    problems: tuple[str, ...] = ()
    error: str = ""
    node_data: dict[str, Any] | None = attrs.field(default=None, eq=False)
    """``node`` as plain data; each proxy's own id and version go in when it is sent."""


@attrs.frozen(kw_only=True)
class Rejection:
    """The last mesh edit refused: when, and every problem."""

    at: float
    problems: tuple[ConfigProblem, ...]


@attrs.define(eq=False)
class ProxyHandle:
    """One proxy as the control plane tracks it (connected, or gone and retained a while)."""

    session: ServerSession
    send: Send
    close: Callable[[], None]
    peer: str = ""
    identity: ProxyIdentity | None = None
    connected: bool = True
    connected_at: float = 0.0
    last_contact: float = 0.0
    sent: dict[str, dict[str, str]] = attrs.field(factory=dict)
    translated: Translated | None = None
    history: collections.deque[tuple[float, str]] = attrs.field(factory=lambda: collections.deque(maxlen=8))
    certificate: tuple[str, float] | None = None
    """The SPIFFE ID and expiry (POSIX time) of the last certificate signed for it."""

    @property
    def status(self) -> Status:
        """SYNCED, STALE (behind, or gone) or NACKED."""
        return self.session.status if self.connected else Status.STALE


class ControlPlane:
    """The mesh, the proxies, and the pushes between them (no sockets: the servers drive it)."""

    def __init__(
        self,
        registry: Registry,
        config: ControlPlaneConfig | None = None,
        *,
        tokens: Tokens | None = None,
        signer: Signer | None = None,
        backends: Sequence[Discovery] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.config = config or ControlPlaneConfig()
        self.tokens = tokens or Tokens((), allow_any=self.config.allow_any_identity)
        self.signer = signer
        self.backends = (
            list(backends) if backends is not None else open_discoveries(self.config.discovery, registry)
        )
        self.clock = clock
        self.resources: MeshResources | None = None
        self.model: MeshModel | None = None
        self.rejection: Rejection | None = None
        self.proxies: dict[str, ProxyHandle] = {}
        self.reloader: Callable[[], bool] | None = None
        """Looks at the mesh files now (the admin server's /reload); set by whoever watches them."""
        self.stats = Stats()
        self._translators = translators_of(registry)
        self._cache: dict[tuple[Any, ...], Translated] = {}
        self._memo: Memo = {}  # data of shared config objects, for the current model
        self._digests: dict[int, tuple[Any, str]] = {}  # digests of shared data, by id
        self._fragments: dict[tuple[str, int], tuple[Any, str]] = {}  # encoded resources, by name and id
        self._wake: trio.Event | None = None
        self._pending_since = math.inf
        self._last_change = 0.0
        self._rebuild = False
        self._noted = trio.Event()
        counter = self.stats.counter
        self.stat_rounds = counter("control_push_rounds_total")
        self.stat_pushes = counter("control_pushes_total")
        self.stat_acks = counter("control_acks_total")
        self.stat_nacks = counter("control_nacks_total")
        self.stat_accepted = counter("control_mesh_edits_accepted_total")
        self.stat_rejected = counter("control_mesh_edits_rejected_total")
        self.stat_translations = counter("control_translations_total")
        self.stat_connected = self.stats.gauge("control_proxies_connected")

    # -- the mesh ---------------------------------------------------------------------------

    def check(self, resources: MeshResources) -> MeshModel:
        """The model of ``resources`` if they make a good mesh; ConfigError with every problem if not."""
        model = build_model(resources, self.backends, self.config.mesh_settings)
        problems = list(model.problems)
        problems += [f.as_problem() for f in analyze(model, self.registry) if f.severity >= Severity.ERROR]
        if problems:
            raise ConfigError(problems)
        return model

    def propose(self, resources: MeshResources) -> bool:
        """Take ``resources`` if they make a good mesh (pushed after the debounce); else refuse them.

        Returns whether they were taken. A refusal is logged and kept in :attr:`rejection`.
        """
        try:
            model = self.check(resources)
        except ConfigError as err:
            self.refuse(err.problems)
            return False
        self.resources, self.model, self.rejection = resources, model, None
        self._forget_translations()
        self.stat_accepted.value += 1
        log.info("mesh_accepted", version=model.version, resources=len(resources))
        self._changed()
        return True

    def refuse(self, problems: Sequence[ConfigProblem]) -> None:
        """Record a refused edit (files that do not load count too); the last good mesh stays."""
        self.rejection = Rejection(at=self.clock(), problems=tuple(problems))
        self.stat_rejected.value += 1
        self._noted.set()
        self._noted = trio.Event()
        log.error(
            "mesh_rejected",
            problems=[str(p) for p in problems],
            kept=self.model.version if self.model else None,
        )

    def _forget_translations(self) -> None:
        """A new model: every translation, and what they shared, is stale."""
        self._cache.clear()
        self._memo.clear()
        self._digests.clear()
        self._fragments.clear()

    def discovery_changed(self) -> None:
        """A discovery backend learnt something: rebuild the model and push (debounced)."""
        self._rebuild = True
        self._changed()

    def _changed(self) -> None:
        if self._wake is None:
            return  # not running yet: no proxy to push to
        now = trio.current_time()
        self._pending_since = min(self._pending_since, now)
        self._last_change = now
        self._wake.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Push changes to proxies after the debounce, forever; also forget proxies long gone."""
        self._wake = trio.Event()
        task_status.started()
        while True:
            with trio.move_on_after(max(1.0, float(self.config.proxy_retention) / 10)):
                await self._wake.wait()
            self._forget_gone()
            if self._pending_since == math.inf:
                self._wake = trio.Event()
                continue
            while True:
                now = trio.current_time()
                due = min(
                    self._last_change + float(self.config.debounce),
                    self._pending_since + float(self.config.max_debounce),
                )
                if now >= due:
                    break
                self._wake = trio.Event()
                with trio.move_on_at(due):
                    await self._wake.wait()
            self._wake = trio.Event()
            self._pending_since = math.inf
            self.flush()

    def flush(self) -> None:
        """Push what changed to every proxy now (what the debounce loop does when quiet)."""
        self.stat_rounds.value += 1
        if self._rebuild and self.resources is not None:
            self._rebuild = False
            model = build_model(self.resources, self.backends, self.config.mesh_settings)
            if model.problems:
                log.warning("model_rebuild_refused", problems=[str(p) for p in model.problems])
            else:
                self.model = model
                self._forget_translations()
        for proxy in list(self.proxies.values()):
            if proxy.connected and proxy.identity is not None:
                self.push(proxy)
        self._noted.set()
        self._noted = trio.Event()

    # -- translation --------------------------------------------------------------------------

    def translated(self, identity: ProxyIdentity) -> Translated:
        """The resources of a proxy with ``identity`` (cached per identity for the current model)."""
        key = identity.translation_key
        found = self._cache.get(key)
        if found is not None:
            return found
        if self.model is None:
            found = Translated(resources={}, digests={}, versions={}, error="no mesh loaded yet")
        else:
            self.stat_translations.value += 1
            try:
                translation = translate(self.model, identity, self.registry, self._translators)
            except TranslationError as err:
                log.error(  # noqa: TRY400 - the reason is the message
                    "translation_failed",
                    workload=f"{identity.namespace}/{identity.workload}",
                    reason=str(err),
                )
                found = Translated(resources={}, digests={}, versions={}, error=str(err))
            else:
                sets = resource_sets(translation.snapshot, memo=self._memo)
                sets.pop("node")
                digests = {
                    t: {name: self._digest(data) for name, data in items.items()} for t, items in sets.items()
                }
                versions = {t: digest(sorted(d.items())) for t, d in digests.items()}
                node = translation.snapshot.node
                found = Translated(
                    resources=sets,
                    digests=digests,
                    versions=versions,
                    node=node,
                    problems=translation.problems,
                    node_data=unstructure(node) if node is not None else None,
                )
        self._cache[key] = found
        return found

    def _digest(self, data: Any) -> str:
        """The digest of resource data; data shared by several proxies' translations is digested once."""
        found = self._digests.get(id(data))
        if found is not None and found[0] is data:
            return found[1]
        value = digest(data)
        self._digests[id(data)] = (data, value)
        return value

    def _encode(self, resources: dict[str, Any]) -> str:
        """A response's resources as JSON text, each resource encoded once per model."""
        parts = []
        for name, data in resources.items():
            found = self._fragments.get((name, id(data)))
            if found is None or found[0] is not data:
                found = self._fragments[(name, id(data))] = (data, encode_resources({name: data})[1:-1])
            parts.append(found[1])
        return "[" + ",".join(parts) + "]"

    def updates_for(self, proxy: ProxyHandle) -> list[TypeUpdate]:
        """What ``proxy`` lacks: each type whose version differs, endpoints as a delta when it can be."""
        assert proxy.identity is not None  # noqa: S101 - subscribed proxies only
        translated = proxy.translated = self.translated(proxy.identity)
        if translated.error:
            return []
        node: dict[str, Any] = {}
        if translated.node_data is not None:
            own = {**translated.node_data, "id": proxy.identity.id}
            own.pop("version", None)
            if proxy.identity.version:  # as unstructure writes it: a default left out
                own["version"] = proxy.identity.version
            node = {"node": own}
        resources = {**translated.resources, "node": node}
        digests = {**translated.digests, "node": {"node": digest(node)}}
        versions = {t: translated.versions.get(t) or digest(sorted(digests[t].items())) for t in PUSH_ORDER}
        changed = [t for t in PUSH_ORDER if versions[t] != proxy.session.version(t)]
        if changed:
            # A push is another attempt at what the proxy refused: with it, the types it NACKed.
            refused = [
                t for t in PUSH_ORDER if (sent := proxy.session.types.get(t)) is not None and sent.nack
            ]
            changed = [t for t in PUSH_ORDER if t in changed or t in refused]
        updates = []
        for type_url in changed:
            current = digests[type_url]
            before = proxy.sent.get(type_url)
            if type_url == "endpoints" and before is not None:
                delta = {n: resources[type_url][n] for n, d in current.items() if before.get(n) != d}
                removed = tuple(n for n in before if n not in current)
                updates.append(
                    TypeUpdate(
                        type_url=type_url,
                        version=versions[type_url],
                        resources=delta,
                        removed=removed,
                        incremental=True,
                    )
                )
            else:
                # The node is each proxy's own; other resources are mostly shared, and encoded once.
                encoded = self._encode(resources[type_url]) if type_url != "node" else None
                updates.append(
                    TypeUpdate(
                        type_url=type_url,
                        version=versions[type_url],
                        resources=resources[type_url],
                        resources_json=encoded,
                    )
                )
            proxy.sent[type_url] = current
        return updates

    def push(self, proxy: ProxyHandle) -> None:
        """Send ``proxy`` what it lacks, if anything."""
        updates = self.updates_for(proxy)
        if updates:
            self.stat_pushes.value += 1
            proxy.send(proxy.session.push_frames(updates))
            log.debug(
                "pushed",
                proxy=proxy.identity.id if proxy.identity else "",
                types=[u.type_url for u in updates],
            )
        self._note(proxy)

    # -- proxies ------------------------------------------------------------------------------

    def connect(self, send: Send, close: Callable[[], None], peer: str = "") -> ProxyHandle:
        """A new stream from a proxy (it says who it is in its first message)."""
        now = self.clock()
        return ProxyHandle(
            session=ServerSession(), send=send, close=close, peer=peer, connected_at=now, last_contact=now
        )

    def receive(self, proxy: ProxyHandle, message: dict[str, Any], *, token: str | None = None) -> str | None:
        """Handle one message of ``proxy``; the reason to close its stream, or None.

        Raises:
            ProtocolError: the message breaks the protocol.
        """
        proxy.last_contact = self.clock()
        for event in proxy.session.receive(message):
            if isinstance(event, Subscribed):
                refusal = self.tokens.check(token, event.node.namespace, event.node.workload)
                if refusal is not None:
                    log.warning("proxy_refused", proxy=event.node.id, peer=proxy.peer, reason=refusal)
                    return refusal
                self._subscribed(proxy, event)
            elif isinstance(event, Acked):
                self.stat_acks.value += 1
                self._note(proxy)
            elif isinstance(event, Nacked):
                self.stat_nacks.value += 1
                proxy.sent.pop(event.type_url, None)  # it kept older resources: next time, the whole type
                log.warning(
                    "proxy_nacked",
                    proxy=proxy.identity.id if proxy.identity else "",
                    type=event.type_url,
                    version=event.rejected,
                    reason=event.message,
                )
                self._note(proxy)
            elif isinstance(event, CertificateRequested):
                proxy.send(encode(proxy.session.certificate_response(self._sign(proxy, event))))
        return None

    def _subscribed(self, proxy: ProxyHandle, event: Subscribed) -> None:
        identity = event.node
        old = self.proxies.get(identity.id)
        if old is not None and old is not proxy and old.connected:
            log.warning("proxy_replaced", proxy=identity.id, peer=proxy.peer, previous=old.peer)
            old.connected = False
            old.close()
        proxy.identity = identity
        self.proxies[identity.id] = proxy
        self.stat_connected.value = sum(p.connected for p in self.proxies.values())
        log.info(
            "proxy_connected",
            proxy=identity.id,
            workload=f"{identity.namespace}/{identity.workload}",
            peer=proxy.peer,
        )
        self.push(proxy)

    def disconnect(self, proxy: ProxyHandle) -> None:
        """``proxy``'s stream ended; it stays listed (STALE) for ``proxy_retention``."""
        if proxy.identity is None or self.proxies.get(proxy.identity.id) is not proxy:
            return
        proxy.connected = False
        proxy.last_contact = self.clock()
        self.stat_connected.value = sum(p.connected for p in self.proxies.values())
        log.info("proxy_disconnected", proxy=proxy.identity.id, peer=proxy.peer)
        self._note(proxy)

    def _forget_gone(self) -> None:
        horizon = self.clock() - float(self.config.proxy_retention)
        for name, proxy in list(self.proxies.items()):
            if not proxy.connected and proxy.last_contact < horizon:
                del self.proxies[name]

    def _note(self, proxy: ProxyHandle) -> None:
        status = proxy.status.value
        if not proxy.history or proxy.history[-1][1] != status:
            proxy.history.append((self.clock(), status))
        self._noted.set()
        self._noted = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, looking again whenever a proxy's state changes.

        For tests and tools: bound it with ``trio.fail_after``.
        """
        while not predicate():
            await self._noted.wait()

    def _sign(self, proxy: ProxyHandle, event: CertificateRequested) -> CertificateAnswered:
        if self.signer is None:
            return CertificateAnswered(event.request_id, error=NO_CA)
        assert proxy.identity is not None  # noqa: S101 - a session refuses CSRs before subscribing
        node = self.translated(proxy.identity).node
        if node is None:
            return CertificateAnswered(event.request_id, error="no identity known for this proxy yet")
        try:
            signed = self.signer.sign(event.csr.encode(), node.spiffe_id)
        except SigningError as err:
            return CertificateAnswered(event.request_id, error=str(err))
        except Exception as err:  # noqa: BLE001 - a CA's refusal (or bug) is an answer, never the stream's end
            log.warning(
                "certificate_refused", proxy=proxy.identity.id, spiffe_id=node.spiffe_id, reason=str(err)
            )
            return CertificateAnswered(event.request_id, error=str(err) or type(err).__name__)
        log.info(
            "certificate_issued",
            proxy=proxy.identity.id,
            spiffe_id=node.spiffe_id,
            not_after=signed.not_after,
        )
        proxy.certificate = (node.spiffe_id, signed.not_after)
        return CertificateAnswered(
            event.request_id,
            certificate_chain=signed.certificate_chain,
            trusted_ca=signed.trusted_ca,
            not_after=signed.not_after,
        )
