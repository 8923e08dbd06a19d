"""Access logs: what each command operator renders, filters, and one logger per listener.

A listener's :class:`AccessLogger` is built once per Snapshot from its ``access_log``
config. When a request ends (the connection manager calls :meth:`AccessLogger.log_http`)
or a TCP connection closes (``tcp_proxy`` calls :meth:`AccessLogger.log_tcp`), each log
whose filter takes it renders one line and hands it to its sink: buffered writers that
the proxy runs as services (:mod:`meshcore.telemetry.sinks`), or the process log. A value
that is not known renders as ``-`` in text, ``null`` in JSON; durations are in
milliseconds; a lone operator in a JSON value keeps its type (numbers stay numbers).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from meshcore.config.accesslog import DEFAULT_FORMAT, DEFAULT_TCP_FORMAT, AccessLog
from meshcore.config.logformat import OPERATORS, LogFormat, Operator, parse_format
from meshcore.connection import Connection, split_host_port
from meshcore.flags import ResponseFlag
from meshcore.http.grpc import GrpcStatus, grpc_message_of, grpc_status_of, is_grpc
from meshcore.http.messages import Request, Response, StreamInfo

__all__ = ["RENDERERS", "AccessLogger", "LogEntry", "build_access_logger", "compile_format", "legacy_fields"]

process_log = structlog.get_logger("meshcore.access")

Value = str | int | None
Render = Callable[["LogEntry"], Value]


class LogEntry:
    """What an access-log line is rendered from: a finished request, or a closed TCP connection.

    Attributes:
        request: the request (None for TCP).
        response: its response (None for TCP).
        info: what happened (timing, route, upstream, flags).
        connection: the downstream connection, when known.
        bytes_received: body bytes (HTTP) or bytes (TCP) received from the client.
        bytes_sent: likewise sent to it.
        end: monotonic time it ended.
    """

    __slots__ = ("bytes_received", "bytes_sent", "connection", "end", "info", "request", "response")

    def __init__(
        self,
        info: StreamInfo,
        *,
        request: Request | None = None,
        response: Response | None = None,
        connection: Connection | None = None,
        bytes_received: int = 0,
        bytes_sent: int = 0,
    ) -> None:
        self.info = info
        self.request = request
        self.response = response
        self.connection = connection
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.end = time.monotonic()

    @property
    def duration_ms(self) -> int:
        """Milliseconds from the request head (or the connection) to the end."""
        return _milliseconds(self.end - self.info.start)

    @property
    def start_time(self) -> float:
        """The start as Unix time."""
        return time.time() - (time.monotonic() - self.info.start)


# -- the operators ------------------------------------------------------------------------------


def _header(source: Callable[[LogEntry, str], Value], argument: str) -> Render:
    names = [name.strip().lower() for name in argument.split("?")]

    def render(entry: LogEntry) -> Value:
        for name in names:
            value = source(entry, name)
            if value is not None:
                return str(value)
        return None

    return render


def _request_header(entry: LogEntry, name: str) -> Value:
    request = entry.request
    if request is None:
        return None
    pseudo = {":path": request.path, ":method": request.method, ":authority": request.authority}
    if name in pseudo:
        return pseudo[name]
    if name == ":scheme":
        return request.scheme
    if name == "host":
        return request.authority or None
    return request.headers.get(name)


def _response_header(entry: LogEntry, name: str) -> Value:
    response = entry.response
    if response is None:
        return None
    if name == ":status":
        return str(response.status)
    return response.headers.get(name)


def _trailer(entry: LogEntry, name: str) -> Value:
    response = entry.response
    if response is None or response.body.trailers is None:
        return None
    return response.body.trailers.get(name)


_FRACTION = re.compile(r"%([1-9])f")


def _start_time(argument: str | None) -> Render:
    if not argument:

        def iso(entry: LogEntry) -> Value:
            start = dt.datetime.fromtimestamp(entry.start_time, dt.UTC)
            return start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z"

        return iso

    def custom(entry: LogEntry) -> Value:
        stamp = entry.start_time
        start = dt.datetime.fromtimestamp(stamp, dt.UTC)
        nanos = f"{int(stamp * 1e9) % 1_000_000_000:09d}"
        text = _FRACTION.sub(lambda m: nanos[: int(m.group(1))], argument)
        text = text.replace("%s", str(int(stamp)))
        return start.strftime(text)

    return custom


def _grpc_status(argument: str | None) -> Render:
    def render(entry: LogEntry) -> Value:
        code = _grpc_code(entry)
        if code is None:
            return None
        if argument == "NUMBER":
            return code
        try:
            name = GrpcStatus(code).name
        except ValueError:
            return code
        if argument == "SNAKE_STRING":
            return name
        return "".join(word.capitalize() for word in name.split("_"))  # CAMEL_STRING, Envoy's default

    return render


def _grpc_code(entry: LogEntry) -> int | None:
    request, response = entry.request, entry.response
    if request is None or response is None or not is_grpc(request):
        return None
    return grpc_status_of(response)


def _peer(entry: LogEntry) -> tuple[str, int]:
    return split_host_port(entry.info.downstream_address)


def _local(entry: LogEntry) -> tuple[str, int] | None:
    return split_host_port(entry.connection.local) if entry.connection is not None else None


def _tls(entry: LogEntry) -> Any:
    return entry.connection.tls if entry.connection is not None else None


def _milliseconds(seconds: float) -> int:
    """Whole milliseconds, as Envoy truncates them, of a difference of two monotonic times.

    Rounded to the microsecond first: the difference of two floats is off by a few ulps,
    and 0.1 s could otherwise print as 99 ms (it did, depending on the clock's value).
    """
    return round(seconds * 1_000_000) // 1000


def _response_duration(entry: LogEntry) -> int | None:
    """Milliseconds to the first byte of the upstream's answer (the last attempt's head)."""
    attempts = entry.info.attempts
    if not attempts or attempts[-1].end is None:
        return None
    return _milliseconds(attempts[-1].end - entry.info.start)


def _response_tx_duration(entry: LogEntry) -> int | None:
    first = _response_duration(entry)
    return None if first is None else entry.duration_ms - first


def _code_details(entry: LogEntry) -> Value:
    flags = entry.info.flags
    if flags:
        return ",".join(sorted(flag.name.lower() for flag in flags))
    return "via_upstream" if entry.info.upstream_address else None


def _flags_long(entry: LogEntry) -> Value:
    flags = entry.info.flags
    return ",".join(sorted(_camel(flag) for flag in flags)) if flags else None


def _camel(flag: ResponseFlag) -> str:
    return "".join(word.capitalize() for word in flag.name.split("_"))


def _fingerprint(entry: LogEntry) -> Value:
    tls = _tls(entry)
    return hashlib.sha256(tls.certificate).hexdigest() if tls is not None and tls.certificate else None


def _joined(values: Sequence[str]) -> Value:
    return ",".join(values) if values else None


_HOSTNAME = socket.gethostname()

RENDERERS: dict[str, Callable[[str | None], Render]] = {
    "START_TIME": _start_time,
    "DURATION": lambda _: lambda e: e.duration_ms,
    "RESPONSE_DURATION": lambda _: _response_duration,
    "RESPONSE_TX_DURATION": lambda _: _response_tx_duration,
    "BYTES_RECEIVED": lambda _: lambda e: e.bytes_received,
    "BYTES_SENT": lambda _: lambda e: e.bytes_sent,
    "PROTOCOL": lambda _: lambda e: f"HTTP/{e.request.http_version}" if e.request is not None else None,
    "RESPONSE_CODE": lambda _: lambda e: e.response.status if e.response is not None else 0,
    "RESPONSE_CODE_DETAILS": lambda _: _code_details,
    "RESPONSE_FLAGS": lambda _: lambda e: e.info.flag_string(),
    "RESPONSE_FLAGS_LONG": lambda _: _flags_long,
    "GRPC_STATUS": _grpc_status,
    "GRPC_STATUS_NUMBER": lambda _: _grpc_code,
    "REQ": lambda arg: _header(_request_header, arg or ""),
    "RESP": lambda arg: _header(_response_header, arg or ""),
    "TRAILER": lambda arg: _header(_trailer, arg or ""),
    "ROUTE_NAME": lambda _: lambda e: e.info.route_name,
    "REQUEST_ID": lambda _: lambda e: e.info.request_id,
    "TRACE_ID": lambda _: lambda e: e.info.trace_id,
    "FILTER_STATE": lambda arg: lambda e: _str(e.info.metadata.get(arg or "")),
    "UPSTREAM_HOST": lambda _: lambda e: e.info.upstream_address,
    "UPSTREAM_REMOTE_ADDRESS": lambda _: lambda e: e.info.upstream_address,
    "UPSTREAM_CLUSTER": lambda _: lambda e: e.info.cluster_name,
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda _: lambda e: len(e.info.attempts),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda _: lambda e: e.info.downstream_address or None,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda _: lambda e: _peer(e)[0] or None,
    "DOWNSTREAM_REMOTE_PORT": lambda _: lambda e: _peer(e)[1] or None,
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda _: lambda e: e.info.downstream_address or None,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda _: lambda e: e.connection.local if e.connection is not None else None,
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda _: lambda e: (_local(e) or (None,))[0],
    "DOWNSTREAM_LOCAL_PORT": lambda _: lambda e: (_local(e) or (None, None))[1],
    "REQUESTED_SERVER_NAME": lambda _: (
        lambda e: e.connection.server_name if e.connection is not None else None
    ),
    "DOWNSTREAM_TLS_VERSION": lambda _: (
        lambda e: e.connection.tls_version if e.connection is not None else None
    ),
    "DOWNSTREAM_PEER_URI_SAN": lambda _: (
        lambda e: _joined(e.connection.peer_uri_sans) if e.connection else None
    ),
    "DOWNSTREAM_PEER_DNS_SAN": lambda _: lambda e: _joined(_tls(e).dns_sans) if _tls(e) is not None else None,
    "DOWNSTREAM_PEER_SUBJECT": lambda _: lambda e: _tls(e).subject if _tls(e) is not None else None,
    "DOWNSTREAM_PEER_FINGERPRINT_256": lambda _: _fingerprint,
    "CONNECTION_ID": lambda _: lambda e: e.info.connection_id or None,
    "HOSTNAME": lambda _: lambda _e: _HOSTNAME,
    "UNIQUE_ID": lambda _: lambda _e: str(uuid.uuid4()),
    "ENVIRONMENT": lambda arg: _constant(os.environ.get(arg or "")),
}
"""What each command operator renders: operator name → (argument → renderer)."""


def _constant(value: Value) -> Render:
    """A value read once, when the format is compiled (environment variables)."""
    return lambda _entry: value


def _str(value: Any) -> Value:
    return None if value is None else str(value)


def _operator(op: Operator) -> Render:
    render = RENDERERS[op.name](op.argument)
    if op.length is None:
        return render
    length = op.length

    def truncated(entry: LogEntry) -> Value:
        value = render(entry)
        return str(value)[:length] if value is not None else None

    return truncated


_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r"})


def _text(value: Value) -> str:
    if value is None:
        return "-"
    text = str(value)
    return text.translate(_ESCAPES) if "\n" in text or "\r" in text else text


def compile_format(text: LogFormat | str) -> Callable[[LogEntry], str]:
    """A text format as a function of a log entry; one line, ending in a newline."""
    parts: list[str | Render] = [
        seg if isinstance(seg, str) else _operator(seg) for seg in parse_format(text)
    ]
    if not parts or not (isinstance(parts[-1], str) and parts[-1].endswith("\n")):
        parts.append("\n")

    def render(entry: LogEntry) -> str:
        return "".join(part if isinstance(part, str) else _text(part(entry)) for part in parts)

    return render


def _compile_json(fields: dict[str, LogFormat]) -> Callable[[LogEntry], dict[str, Any]]:
    compiled: list[tuple[str, Render | Callable[[LogEntry], str]]] = []
    for key, text in fields.items():
        segments = parse_format(text)
        if len(segments) == 1 and isinstance(segments[0], Operator):
            compiled.append((key, _operator(segments[0])))  # a lone operator keeps its type
        else:
            parts = [seg if isinstance(seg, str) else _operator(seg) for seg in segments]
            compiled.append((key, _joiner(parts)))

    def render(entry: LogEntry) -> dict[str, Any]:
        return {key: fn(entry) for key, fn in compiled}

    return render


def _joiner(parts: list[str | Render]) -> Callable[[LogEntry], str]:
    def join(entry: LogEntry) -> str:
        return "".join(p if isinstance(p, str) else _text(p(entry)) for p in parts)

    return join


def legacy_fields(entry: LogEntry, listener: str) -> dict[str, Any]:
    """The fields of the original ``request_completed`` process-log event (``access_log: true``)."""
    request, response, info = entry.request, entry.response, entry.info
    assert request is not None  # noqa: S101 - HTTP only
    assert response is not None  # noqa: S101 - HTTP only
    grpc = is_grpc(request)
    return {
        "listener": listener,
        "method": request.method,
        "authority": request.authority,
        "path": request.path,
        "protocol": f"HTTP/{request.http_version}",
        "status": response.status,
        "grpc_status": grpc_status_of(response) if grpc else None,
        "grpc_message": grpc_message_of(response) if grpc else None,
        "flags": info.flag_string(),
        "bytes_received": entry.bytes_received,
        "bytes_sent": entry.bytes_sent,
        "duration_ms": round((entry.end - info.start) * 1000, 3),
        "upstream": info.upstream_address,
        "cluster": info.cluster_name,
        "route": info.route_name,
        "peer": info.downstream_address,
        "peer_principal": entry.connection.peer_principal if entry.connection is not None else None,
        "request_id": info.request_id,
        "trace_id": info.trace_id,
    }


# -- filters and the logger ---------------------------------------------------------------------


def _accepts(config: AccessLog, entry: LogEntry) -> bool:
    rule = config.filter
    status = entry.response.status if entry.response is not None else 0
    if rule.status_min is not None and status < rule.status_min:
        return False
    if rule.status_max is not None and status > rule.status_max:
        return False
    if rule.min_duration is not None and entry.end - entry.info.start < float(rule.min_duration):
        return False
    flags = entry.info.flags
    if rule.any_response_flag and not flags:
        return False
    return not (rule.response_flags and not any(f.value in rule.response_flags for f in flags))


class _Log:
    """One configured log: its filter, formatters (HTTP and TCP) and sink."""

    __slots__ = ("config", "http", "json", "sink", "tcp")

    def __init__(self, config: AccessLog, sink: Any) -> None:
        self.config = config
        self.sink = sink
        self.json = _compile_json(dict(config.json_format)) if config.json_format is not None else None
        self.http = compile_format(config.format or DEFAULT_FORMAT)
        self.tcp = compile_format(config.format or DEFAULT_TCP_FORMAT)


class AccessLogger:
    """The access logs of one listener for one Snapshot.

    Args:
        listener: the listener's name (the process-log sink names it).
        logs: its ``access_log`` configs, each with the sink to write to (see
            :func:`meshcore.telemetry.sinks.open_sink`).
    """

    def __init__(self, listener: str, logs: Sequence[tuple[AccessLog, Any]]) -> None:
        self.listener = listener
        self.logs = [_Log(config, sink) for config, sink in logs]

    def __bool__(self) -> bool:
        return bool(self.logs)

    def log_http(self, request: Request, response: Response) -> None:
        """Log a finished request (the connection manager calls this)."""
        entry = LogEntry(
            request.info,
            request=request,
            response=response,
            connection=request.connection,
            bytes_received=request.body.consumed,
            bytes_sent=response.body.consumed,
        )
        self._write(entry, tcp=False)

    def log_tcp(self, conn: Connection, info: StreamInfo, *, bytes_received: int, bytes_sent: int) -> None:
        """Log a closed TCP connection (``tcp_proxy`` calls this)."""
        entry = LogEntry(info, connection=conn, bytes_received=bytes_received, bytes_sent=bytes_sent)
        self._write(entry, tcp=True)

    def _write(self, entry: LogEntry, *, tcp: bool) -> None:
        for log in self.logs:
            try:
                if not _accepts(log.config, entry):
                    continue
                if log.config.sink == "process_log":
                    self._process_log(log, entry, tcp=tcp)
                elif log.json is not None:
                    log.sink.write(json.dumps(log.json(entry), separators=(",", ":"), default=str) + "\n")
                else:
                    log.sink.write((log.tcp if tcp else log.http)(entry))
            except Exception:  # noqa: BLE001 - a log must never cost the request or the other logs
                process_log.exception("access_log_failed", listener=self.listener)

    def _process_log(self, log: _Log, entry: LogEntry, *, tcp: bool) -> None:
        if log.json is not None:
            process_log.info("request_completed", listener=self.listener, **log.json(entry))
        elif log.config.format is not None:
            process_log.info("request_completed", listener=self.listener, line=log.http(entry).rstrip("\n"))
        elif tcp:
            info = entry.info
            process_log.info(
                "connection_completed",
                listener=self.listener,
                peer=info.downstream_address,
                cluster=info.cluster_name,
                upstream=info.upstream_address,
                flags=info.flag_string(),
                bytes_received=entry.bytes_received,
                bytes_sent=entry.bytes_sent,
                duration_ms=round((entry.end - info.start) * 1000, 3),
            )
        else:
            process_log.info("request_completed", **legacy_fields(entry, self.listener))


def build_access_logger(listener: Any, services: Any, stats: Any) -> AccessLogger:
    """The access logger of a listener for a Snapshot, its sinks opened or shared.

    Raises:
        ConfigError: a file sink's file cannot be opened (with the field path).
    """
    from meshcore.errors import ConfigError, ConfigProblem  # noqa: PLC0415 - only when building
    from meshcore.telemetry.sinks import open_sink  # noqa: PLC0415 - sinks need trio; this module does not

    logs = []
    for i, config in enumerate(listener.access_log):
        try:
            logs.append((config, open_sink(config, services, stats)))
        except OSError as err:
            path = f"listeners[{listener.name}].access_log[{i}].path"
            raise ConfigError(
                [ConfigProblem(path=path, message=f"cannot open {config.path}: {err.strerror}")]
            ) from err
    return AccessLogger(listener.name, logs)


assert set(RENDERERS) == set(OPERATORS), "every command operator needs a renderer"  # noqa: S101 - import-time invariant
