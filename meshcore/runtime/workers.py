"""``meshcore proxy --workers N``: N proxy processes, one admin server for the group.

Python has a GIL, so processes are the cores: N workers share the listeners
(SO_REUSEPORT) and each runs a whole proxy. The parent process supervises them and serves
the admin address itself, for the whole group:

- each worker answers the admin endpoints on a private unix socket, which the parent
  creates in a private directory (mode 0700) and hands down as an open file descriptor, so
  that nothing can take its place and a request made before the worker is up waits for
  it (``--admin-fd``, a hidden flag);
- the parent answers each admin request by asking every worker, at once, each bounded by
  :data:`WORKER_TIMEOUT`: ``/stats`` and ``/stats/prometheus`` are the workers' metrics
  added up (``?worker=N`` shows one worker's own); ``/ready`` is LIVE only when every
  worker is, and says which is not; ``/clusters`` and ``/listeners`` add up the load and
  take an endpoint for healthy only when every worker does; ``/workers`` lists them;
  ``/logging`` sets every worker's level; the rest is worker 0's answer (``?worker=N``);
- each worker holds the read end of a pipe whose write end only the parent holds
  (``--lifeline-fd``, hidden too): when the parent is gone, however it went (SIGKILL, the
  OOM killer), the worker reads end-of-file and stops as on SIGTERM, so that no orphaned
  worker keeps serving the port with a config nobody updates.

No shared memory and no snapshot files: a worker's figures are read when asked for, so
they are never stale, and a worker that died or hangs is reported as such, not summed.
A worker that dies on its own is started again (with a growing delay if it keeps dying);
its figures start from zero.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import structlog
import trio

from meshcore.config import Address
from meshcore.errors import ConfigError
from meshcore.runtime.admin import (
    AdminResponse,
    proxy_answer,
    serve_admin_answers,
    serve_admin_listener,
    stats_response,
)
from meshcore.runtime.proxy import Proxy
from meshcore.runtime.stats import Stats
from meshcore.runtime.statsdata import merge

__all__ = ["WORKER_TIMEOUT", "WorkerGroup", "serve_worker_admin", "supervise", "watch_supervisor"]

log = structlog.get_logger("meshcore.workers")

WORKER_TIMEOUT = 2.0
"""Seconds a worker has to answer the parent's admin request before it counts as unavailable."""
_JSON = "application/json"
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class WorkerGroup:
    """The workers' private admin sockets, and the group's admin answers made from them.

    Args:
        sockets: the path of each worker's admin socket, by worker number.
        pids: each worker's process id (for ``/workers``), by worker number.
    """

    def __init__(self, sockets: Sequence[str], pids: Sequence[int] = ()) -> None:
        self.sockets = list(sockets)
        self.pids = list(pids)
        self._answers: dict[str, Callable[[dict[str, list[str]], str, str], Awaitable[AdminResponse]]] = {
            "/": self._index,
            "/ready": self._ready,
            "/stats": self._stats,
            "/stats/prometheus": self._prometheus,
            "/clusters": self._clusters,
            "/listeners": self._listeners,
            "/config_status": self._config_status,
            "/workers": self._workers,
            "/logging": self._logging,
        }

    # -- talking to the workers ---------------------------------------------------------------

    async def ask(self, worker: int, method: str, target: str) -> AdminResponse | None:
        """Worker ``worker``'s answer to ``method target``; None if it did not answer in time."""
        with trio.move_on_after(WORKER_TIMEOUT):
            try:
                return await _request(self.sockets[worker], method, target)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as err:
                log.info("worker_unavailable", worker=worker, reason=str(err) or type(err).__name__)
                return None
        log.info("worker_unavailable", worker=worker, reason="no answer in time")
        return None

    async def ask_all(self, method: str, target: str) -> list[AdminResponse | None]:
        """Every worker's answer (None where there was none), asked all at once."""
        answers: list[AdminResponse | None] = [None] * len(self.sockets)

        async def one(worker: int) -> None:
            answers[worker] = await self.ask(worker, method, target)

        async with trio.open_nursery() as nursery:
            for worker in range(len(self.sockets)):
                nursery.start_soon(one, worker)
        return answers

    # -- the group's answers ------------------------------------------------------------------

    async def answer(self, method: str, target: str, _body: bytes = b"") -> AdminResponse:
        """The group's answer to an admin request (an :data:`~meshcore.runtime.admin.Answer`)."""
        try:
            parts = urlsplit(target)
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=16)
        except ValueError as err:
            return AdminResponse(400, f"bad request target: {err}\n")
        worker = query.pop("worker", [None])[-1]
        if worker is not None:
            return await self._one_worker(worker, method, parts.path, query)
        found = self._answers.get(parts.path)
        if found is None:  # any other endpoint (config_dump, ...): the workers run one config
            return await self._one_worker("0", method, parts.path, query)
        if method not in ("GET", "HEAD") and parts.path != "/logging":
            return AdminResponse(405, f"{parts.path} takes GET, HEAD\n", headers=(("allow", "GET, HEAD"),))
        return await found(query, method, parts.path)

    async def _one_worker(
        self, worker: str, method: str, path: str, query: dict[str, list[str]]
    ) -> AdminResponse:
        if not worker.isdigit() or int(worker) >= len(self.sockets):
            return AdminResponse(400, f"no worker {worker!r}: workers are 0 to {len(self.sockets) - 1}\n")
        target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
        found = await self.ask(int(worker), method, target)
        return found if found is not None else AdminResponse(503, f"worker {worker} did not answer\n")

    async def _index(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        found = await self._one_worker("0", "GET", "/", {})
        if not _ok(found):
            return found
        extra = (
            f"/workers             GET HEAD  the {len(self.sockets)} workers, their pids and readiness (JSON)\n"
            "\nEvery endpoint covers all workers (stats summed); ?worker=N asks one worker alone.\n"
        )
        return AdminResponse(200, found.body + extra)

    async def _ready(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        answers = await self.ask_all("GET", "/ready")
        not_live = [
            f"worker {i}: {a.body.strip() if a is not None else 'NOT ANSWERING'}"
            for i, a in enumerate(answers)
            if not _ok(a)
        ]
        if not_live:
            return AdminResponse(503, "NOT READY\n" + "".join(f"{line}\n" for line in not_live))
        return AdminResponse(200, "LIVE\n")

    async def _metrics(self) -> tuple[Stats, list[int]]:
        parts, missing = await self._json_parts("/stats?format=json")
        return merge(parts), missing

    async def _stats(self, query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        total, missing = await self._metrics()
        if missing:
            return _unavailable(missing)
        return stats_response(total, query)

    async def _prometheus(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        total, missing = await self._metrics()
        if missing:
            return _unavailable(missing)
        return AdminResponse(200, total.render_prometheus(), _PROMETHEUS)

    async def _json_parts(self, path: str) -> tuple[list[Any], list[int]]:
        answers = await self.ask_all("GET", path)
        missing = [i for i, a in enumerate(answers) if not _ok(a)]
        return [json.loads(a.body) for a in answers if _ok(a)], missing

    async def _clusters(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        parts, missing = await self._json_parts("/clusters")
        if missing:
            return _unavailable(missing)
        return _json({"clusters": _merge_clusters(parts), "workers": len(parts)})

    async def _listeners(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        parts, missing = await self._json_parts("/listeners")
        if missing:
            return _unavailable(missing)
        listeners: dict[str, dict[str, Any]] = {}
        for part in parts:
            for listener in part["listeners"]:
                kept = listeners.setdefault(listener["name"], {**listener, "active_connections": 0})
                kept["active_connections"] += listener["active_connections"]
        return _json({"listeners": [listeners[name] for name in sorted(listeners)], "workers": len(parts)})

    async def _config_status(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        """Every worker's config status: counts summed (as in /stats), each worker's own listed.

        ``version`` is the one every worker serves (null while they differ, during a
        reload), ``applied_at`` the latest, ``last_rejection`` the latest of any worker.
        """
        parts, missing = await self._json_parts("/config_status")
        if missing:
            return _unavailable(missing)
        versions = {part.get("version") for part in parts}
        rejected: dict[str, int] = {}
        for part in parts:
            for stage, count in part.get("snapshots_rejected", {}).items():
                rejected[stage] = rejected.get(stage, 0) + count
        rejections = [part["last_rejection"] for part in parts if part.get("last_rejection")]
        applied_at = [part["applied_at"] for part in parts if part.get("applied_at")]
        return _json(
            {
                "version": versions.pop() if len(versions) == 1 else None,
                "applied_at": max(applied_at, default=None),
                "snapshots_applied": sum(part.get("snapshots_applied", 0) for part in parts),
                "snapshots_rejected": rejected,
                "last_rejection": max(rejections, key=lambda r: r.get("at") or "", default=None),
                "workers": parts,
            }
        )

    async def _workers(self, _query: dict[str, list[str]], _method: str, _path: str) -> AdminResponse:
        answers = await self.ask_all("GET", "/ready")
        workers = [
            {
                "worker": i,
                "pid": self.pids[i] if i < len(self.pids) else None,
                "ready": _ok(a),
                "state": a.body.strip() if a is not None else "NOT ANSWERING",
            }
            for i, a in enumerate(answers)
        ]
        return _json({"workers": workers})

    async def _logging(self, query: dict[str, list[str]], method: str, path: str) -> AdminResponse:
        target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
        answers = await self.ask_all(method, target)
        first = answers[0]
        if first is None:
            return _unavailable([0])
        failed = [i for i, a in enumerate(answers) if a is None or a.status != first.status]
        if failed:
            return AdminResponse(502, "".join(f"worker {i}: no answer or another one\n" for i in failed))
        return first


def _ok(answer: AdminResponse | None) -> TypeGuard[AdminResponse]:
    return answer is not None and answer.status == HTTPStatus.OK


def _merge_clusters(parts: list[Any]) -> list[dict[str, Any]]:
    """Clusters of every worker as one: load summed, healthy only where every worker says so."""
    clusters: dict[str, dict[str, Any]] = {}
    for part in parts:
        for cluster in part["clusters"]:
            kept = clusters.setdefault(cluster["name"], {**cluster, "endpoints": []})
            by_address = {e["address"]: e for e in kept["endpoints"]}
            for endpoint in cluster["endpoints"]:
                seen = by_address.get(endpoint["address"])
                if seen is None:
                    kept["endpoints"].append(dict(endpoint))
                    continue
                seen["healthy"] = seen["healthy"] and endpoint["healthy"]
                seen["active_requests"] += endpoint["active_requests"]
                seen["open_connections"] += endpoint["open_connections"]
    return [clusters[name] for name in sorted(clusters)]


def _json(data: Any) -> AdminResponse:
    return AdminResponse(200, json.dumps(data, indent=2) + "\n", _JSON)


def _unavailable(workers: list[int]) -> AdminResponse:
    listing = ", ".join(str(i) for i in workers)
    return AdminResponse(503, f"worker {listing} did not answer: the figures would be partial\n")


async def _request(path: str, method: str, target: str) -> AdminResponse:
    """One request to a worker's admin socket, on a connection of its own."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_unix_socket(path)
    async with stream:
        request = h11.Request(
            method=method, target=target, headers=[("host", "worker"), ("connection", "close")]
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, content_type, body = 0, "text/plain", b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                content_type = dict(event.headers).get(b"content-type", b"text/plain").decode("latin-1")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return AdminResponse(status, body.decode("utf-8", "replace"), content_type)
            else:
                msg = f"the worker closed the connection before answering ({event!r})"
                raise trio.BrokenResourceError(msg)


# -- the supervisor -------------------------------------------------------------------------------


def _admin_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again; doubled at each death in a row."""
RESTART_DELAY_MAX = 30.0
"""The longest wait before a restart (a worker that dies at once, again and again)."""
STABLE_AFTER = 60.0
"""Seconds of life after which a worker's next death waits :data:`RESTART_DELAY` again."""


class _Supervision:
    """The workers of a group: started, restarted when they die, stopped on a signal."""

    def __init__(self, worker_argv: Sequence[str], paths: Sequence[Path], group: WorkerGroup) -> None:
        self.worker_argv = list(worker_argv)
        self.paths = list(paths)
        self.group = group
        self.processes: list[trio.Process | None] = [None] * len(paths)
        self.codes = [0] * len(paths)
        self.stopping = trio.Event()
        # The parent never writes to it: a worker reads end-of-file once the parent is gone.
        self.lifeline, self._lifeline_write = os.pipe()

    def close(self) -> None:
        """Let go of the lifeline pipe (the workers have exited, or are told so by it)."""
        os.close(self.lifeline)
        os.close(self._lifeline_write)

    async def spawn(self, worker: int) -> None:
        """Start worker ``worker`` on a new admin socket at its path (the parent asks there)."""
        path = self.paths[worker]
        path.unlink(missing_ok=True)  # the socket of a worker that died
        sock = _admin_socket(path)
        try:
            fd = sock.fileno()
            argv = [*self.worker_argv, "--admin-fd", str(fd), "--lifeline-fd", str(self.lifeline)]
            process = await trio.lowlevel.open_process(argv, pass_fds=(fd, self.lifeline))
        finally:
            sock.close()  # the worker holds it now: when it exits, its socket goes
        self.processes[worker] = process
        self.group.pids[worker] = process.pid
        if self.stopping.is_set():  # a stop signal came while it was being started
            process.send_signal(signal.SIGTERM)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every live worker; SIGTERM and SIGINT also stop the restarts."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping.set()
        for process in self.processes:
            if process is not None and process.returncode is None:
                process.send_signal(signum)

    async def keep(self, worker: int) -> None:
        """Wait for worker ``worker``; start it again when it dies, until the group stops."""
        delay = RESTART_DELAY
        served = False  # this worker slot has had a worker that answered /ready
        while True:
            process = self.processes[worker]
            assert process is not None  # noqa: S101 - spawned before keep() runs
            started = trio.current_time()
            ready = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_ready, worker, ready)
                code = await process.wait()
                nursery.cancel_scope.cancel()
            served = served or ready.is_set()
            status = code if code >= 0 else 128 - code  # killed by a signal: 128 + its number
            if self.stopping.is_set() or not served:  # stopped, or could not start (a port taken)
                # Every exit is said, 0 included: one that exits 0 before it was ever ready
                # (and is not started again) is as much news as one that fails.
                report = log.warning if status or not self.stopping.is_set() else log.info
                report("worker_exited", worker=worker, pid=process.pid, status=status, ready=ready.is_set())
                self.codes[worker] = status
                return
            if trio.current_time() - started > STABLE_AFTER:
                delay = RESTART_DELAY
            log.warning("worker_died", worker=worker, pid=process.pid, status=status, restart_in=delay)
            with trio.move_on_after(delay):
                await self.stopping.wait()
            if self.stopping.is_set():
                self.codes[worker] = status
                return
            await self.spawn(worker)
            log.info("worker_restarted", worker=worker, pid=self.group.pids[worker])
            delay = min(delay * 2, RESTART_DELAY_MAX)

    async def _watch_ready(self, worker: int, ready: trio.Event) -> None:
        """Set ``ready`` once the worker answers ``/ready`` with LIVE (asked every 0.2 s)."""
        while True:
            with trio.move_on_after(WORKER_TIMEOUT):
                try:
                    answer = await _request(str(self.paths[worker]), "GET", "/ready")
                except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                    answer = None
                if _ok(answer):
                    log.info("worker_ready", worker=worker, pid=self.group.pids[worker])
                    ready.set()
                    return
            await trio.sleep(0.2)

    async def run(self) -> list[int]:
        """Keep every worker running until the group stops; their exit statuses."""
        async with trio.open_nursery() as nursery:
            for worker in range(len(self.paths)):
                nursery.start_soon(self.keep, worker)
        return self.codes


async def supervise(worker_argv: Sequence[str], count: int) -> int:
    """Run ``count`` workers (``worker_argv`` + ``--admin-fd FD``) and the group's admin server.

    Forwards SIGTERM, SIGINT, SIGHUP and SIGUSR1 to every worker. A worker that dies on its
    own (a crash, the OOM killer) is started again after :data:`RESTART_DELAY` seconds, doubled
    at each death in a row up to :data:`RESTART_DELAY_MAX`; one that exits before it ever
    answered ``/ready`` is not (it could not start: a port taken by another program, say, and
    would only fail again). Returns when every worker has exited after SIGTERM or SIGINT (or
    could not start), with the highest exit status.

    Raises:
        ConfigError: the admin address cannot be listened on (``admin.address: cannot
            listen on ...``); the workers were stopped first.
    """
    with tempfile.TemporaryDirectory(prefix="meshcore-workers-") as folder:  # mode 0700
        paths = [Path(folder) / f"worker-{i}.sock" for i in range(count)]
        group = WorkerGroup([str(path) for path in paths], [0] * count)
        workers = _Supervision(worker_argv, paths, group)
        try:
            for worker in range(count):
                await workers.spawn(worker)
            log.info("workers_started", pids=group.pids)
            admin_errors: list[ConfigError] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward_signals, workers)
                nursery.start_soon(_serve_group_admin, group, workers, admin_errors)
                codes = await workers.run()
                nursery.cancel_scope.cancel()
        finally:
            workers.close()
        if admin_errors:
            raise admin_errors[0]
        return max(codes)


async def _forward_signals(workers: _Supervision) -> None:
    # SIGUSR1: the workers reopen their access-log files (logrotate).
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
        async for signum in signals:
            log.info("signal_forwarded", signal=signal.Signals(signum).name)
            workers.signal_all(signum)


async def _serve_group_admin(group: WorkerGroup, workers: _Supervision, errors: list[ConfigError]) -> None:
    """The admin server of the group, on the address of the workers' config (if enabled)."""
    dump = None
    for worker in range(len(group.sockets)):  # worker 0, or the first that is up
        try:
            dump = await _request(group.sockets[worker], "GET", "/config_dump")
        except (OSError, trio.BrokenResourceError, h11.ProtocolError):
            continue
        if _ok(dump):
            break
    if dump is None or not _ok(dump):
        log.error("admin_not_started", reason="no worker answered")
        return
    admin = json.loads(dump.body)["admin"]
    if not admin["enabled"]:
        return
    try:
        await serve_admin_answers(group.answer, Address.__meshcore_parse__(admin["address"]))
    except ConfigError as err:
        errors.append(err)
        workers.signal_all(signal.SIGTERM)


async def serve_worker_admin(proxy: Proxy, fd: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A worker's side: answer ``proxy``'s admin endpoints on the socket the parent handed down."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
    await serve_admin_listener(proxy_answer(proxy), listener, task_status=task_status)


async def watch_supervisor(fd: int) -> None:
    """A worker's side: stop as on SIGTERM once the parent is gone (``fd`` reads end-of-file).

    The parent holds the pipe's only write end and never writes, so ``fd`` becomes readable
    exactly when the parent has exited, whatever ended it; SIGTERM to ourselves takes the
    usual way out (stop accepting, drain, exit).
    """
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    log.warning("supervisor_gone", pid=os.getpid(), parent=os.getppid())
    os.kill(os.getpid(), signal.SIGTERM)
