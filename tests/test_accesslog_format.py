"""Access-log formats: every command operator, JSON typing, filters, and malformed formats."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import socket
import time
from typing import Any

import pytest

from meshcore.config.accesslog import AccessLog, AccessLogFilter
from meshcore.config.logformat import OPERATORS, LogFormat, LogFormatError, parse_format
from meshcore.connection import Connection, PeerTls
from meshcore.flags import ResponseFlag
from meshcore.http.messages import Body, Headers, Request, Response, StreamInfo, UpstreamAttempt
from meshcore.telemetry.accesslog import AccessLogger, LogEntry, compile_format

CERT = b"a DER certificate"


class Lines:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


def entry(*, grpc: bool = False, flags: tuple[ResponseFlag, ...] = (), status: int = 201) -> LogEntry:
    tls = PeerTls(
        version="TLSv1.3",
        certificate=CERT,
        uri_sans=("spiffe://mesh.local/ns/shop/sa/web",),
        dns_sans=("web.shop", "web"),
        subject="CN=web,O=shop",
    )
    conn = Connection(
        None,  # type: ignore[arg-type]  # no stream: nothing is read
        id=42,
        peer="10.1.2.3:5555",
        local="127.0.0.1:8443",
        listener="ingress",
        server_name="shop.example",
        tls=tls,
    )
    info = StreamInfo(downstream_address="10.1.2.3:5555", connection_id=42)
    info.start = time.monotonic() - 0.25
    info.route_name = "orders"
    info.cluster_name = "backend"
    info.upstream_address = "127.0.0.1:9000"
    info.request_id = "rid-7"
    info.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    info.metadata["tenant"] = "acme"
    info.flags.update(flags)
    first = UpstreamAttempt(1, "backend", "127.0.0.1:9001")
    first.start, first.end, first.flag = (
        info.start,
        info.start + 0.01,
        ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
    )
    second = UpstreamAttempt(2, "backend", "127.0.0.1:9000")
    second.start, second.end, second.status = info.start + 0.02, info.start + 0.1, status
    info.attempts += [first, second]
    headers = [("user-agent", "curl/8.5"), ("x-forwarded-for", "203.0.113.7")]
    if grpc:
        headers.append(("content-type", "application/grpc"))
    request = Request(
        "POST",
        "/orders?id=3",
        authority="shop.example",
        scheme="https",
        headers=Headers(headers),
        body=Body.from_bytes(b"12345"),
        http_version="2",
        info=info,
        connection=conn,
    )
    body = Body.from_bytes(b"")
    body.trailers = Headers([("grpc-status", "5"), ("grpc-message", "no such order")]) if grpc else None
    response = Response(
        status, headers=Headers([("content-type", "text/plain"), ("x-served-by", "b")]), body=body
    )
    log_entry = LogEntry(
        info, request=request, response=response, connection=conn, bytes_received=5, bytes_sent=17
    )
    log_entry.end = info.start + 0.25
    return log_entry


def render(fmt: str, **kwargs: Any) -> str:
    return compile_format(fmt)(entry(**kwargs)).rstrip("\n")


# Every operator, with what it renders for entry(): the test below checks none is missing.
CASES: list[tuple[str, Any]] = [
    ("%DURATION%", "250"),
    ("%RESPONSE_DURATION%", "100"),
    ("%RESPONSE_TX_DURATION%", "150"),
    ("%BYTES_RECEIVED%", "5"),
    ("%BYTES_SENT%", "17"),
    ("%PROTOCOL%", "HTTP/2"),
    ("%RESPONSE_CODE%", "201"),
    ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
    ("%RESPONSE_FLAGS%", "-"),
    ("%RESPONSE_FLAGS_LONG%", "-"),
    ("%REQ(:PATH)%", "/orders?id=3"),
    ("%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:SCHEME)%", "POST shop.example https"),
    ("%REQ(USER-AGENT)%", "curl/8.5"),
    ("%REQ(X-ORIGINAL-PATH?:PATH)%", "/orders?id=3"),
    ("%REQ(X-MISSING)%", "-"),
    ("%REQ(USER-AGENT):4%", "curl"),
    ("%RESP(X-SERVED-BY)% %RESP(:STATUS)%", "b 201"),
    ("%ROUTE_NAME%", "orders"),
    ("%REQUEST_ID%", "rid-7"),
    ("%TRACE_ID%", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("%FILTER_STATE(tenant)% %FILTER_STATE(none)%", "acme -"),
    ("%UPSTREAM_HOST%", "127.0.0.1:9000"),
    ("%UPSTREAM_REMOTE_ADDRESS%", "127.0.0.1:9000"),
    ("%UPSTREAM_CLUSTER%", "backend"),
    ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2"),
    ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.1.2.3:5555"),
    ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.1.2.3"),
    ("%DOWNSTREAM_REMOTE_PORT%", "5555"),
    ("%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", "10.1.2.3:5555"),
    ("%DOWNSTREAM_LOCAL_ADDRESS%", "127.0.0.1:8443"),
    ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "127.0.0.1"),
    ("%DOWNSTREAM_LOCAL_PORT%", "8443"),
    ("%REQUESTED_SERVER_NAME%", "shop.example"),
    ("%DOWNSTREAM_TLS_VERSION%", "TLSv1.3"),
    ("%DOWNSTREAM_PEER_URI_SAN%", "spiffe://mesh.local/ns/shop/sa/web"),
    ("%DOWNSTREAM_PEER_DNS_SAN%", "web.shop,web"),
    ("%DOWNSTREAM_PEER_SUBJECT%", "CN=web,O=shop"),
    ("%DOWNSTREAM_PEER_FINGERPRINT_256%", hashlib.sha256(CERT).hexdigest()),
    ("%CONNECTION_ID%", "42"),
    ("100%% done", "100% done"),
]


@pytest.mark.parametrize(("fmt", "expected"), CASES)
def test_operator(fmt: str, expected: str) -> None:
    assert render(fmt) == expected


def test_start_time_default_and_custom() -> None:
    log_entry = entry()
    start = dt.datetime.fromtimestamp(log_entry.start_time, dt.UTC)
    default = compile_format("%START_TIME%")(log_entry).strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", default)
    assert default.startswith(start.strftime("%Y-%m-%dT%H:%M"))
    custom = compile_format("%START_TIME(%Y/%m/%d %s.%3f)%")(log_entry).strip()
    assert re.fullmatch(rf"{start:%Y/%m/%d} \d+\.\d{{3}}", custom)
    assert abs(int(custom.split()[1].split(".")[0]) - log_entry.start_time) <= 1


def test_grpc_status_operators() -> None:
    assert (
        render("%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)%", grpc=True)
        == "NotFound NOT_FOUND 5"
    )
    assert render("%GRPC_STATUS_NUMBER% %TRAILER(GRPC-MESSAGE)%", grpc=True) == "5 no such order"
    assert render("%GRPC_STATUS% %TRAILER(grpc-status)%") == "- -"  # not a gRPC call


def test_flags_and_details_of_a_local_reply() -> None:
    flags = (ResponseFlag.NO_HEALTHY_UPSTREAM, ResponseFlag.UPSTREAM_REQUEST_TIMEOUT)
    assert (
        render("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG%", flags=flags)
        == "UH,UT NoHealthyUpstream,UpstreamRequestTimeout"
    )
    assert render("%RESPONSE_CODE_DETAILS%", flags=flags) == "no_healthy_upstream,upstream_request_timeout"


def test_hostname_unique_id_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_ZONE", "eu-1")
    assert render("%HOSTNAME%") == socket.gethostname()
    first, second = render("%UNIQUE_ID%"), render("%UNIQUE_ID%")
    assert first != second
    assert re.fullmatch(r"[0-9a-f-]{36}", first)
    assert render("%ENVIRONMENT(MESH_ZONE)% %ENVIRONMENT(NOT_SET_ANYWHERE)%") == "eu-1 -"


def test_every_operator_has_a_test() -> None:
    tested = set()
    for fmt, _ in CASES:
        tested |= {seg.name for seg in parse_format(fmt) if not isinstance(seg, str)}
    tested |= {
        "START_TIME",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        "TRAILER",
        "HOSTNAME",
        "UNIQUE_ID",
        "ENVIRONMENT",
    }
    assert tested == set(OPERATORS)


def test_values_with_line_breaks_cannot_forge_lines() -> None:
    log_entry = entry()
    log_entry.info.metadata["tenant"] = "evil\nFAKE LINE"
    assert compile_format("%FILTER_STATE(tenant)%")(log_entry) == "evil\\nFAKE LINE\n"


def test_a_tcp_entry_renders_what_a_connection_has() -> None:
    http = entry()
    tcp = LogEntry(http.info, connection=http.connection, bytes_received=100, bytes_sent=200)
    fmt = "%PROTOCOL% %RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %REQ(:PATH)% %DOWNSTREAM_PEER_URI_SAN%"
    assert compile_format(fmt)(tcp) == "- 0 100 200 - spiffe://mesh.local/ns/shop/sa/web\n"


# -- JSON formats -----------------------------------------------------------------------------


def test_json_keys_map_to_operators_and_lone_operators_keep_their_type() -> None:
    sink = Lines()
    config = AccessLog(
        json_format={
            "status": LogFormat("%RESPONSE_CODE%"),
            "bytes": LogFormat("%BYTES_SENT%"),
            "path": LogFormat("%REQ(:PATH)%"),
            "missing": LogFormat("%REQ(X-NOPE)%"),
            "summary": LogFormat("%REQ(:METHOD)% took %DURATION%ms"),
        }
    )
    logger = AccessLogger("ingress", [(config, sink)])
    log_entry = entry()
    assert log_entry.request is not None
    assert log_entry.response is not None
    logger.log_http(log_entry.request, log_entry.response)
    (line,) = sink.lines
    assert line.endswith("\n")
    data = json.loads(line)
    assert data["status"] == 201
    assert data["path"] == "/orders?id=3"
    assert data["missing"] is None
    assert re.fullmatch(r"POST took \d+ms", data["summary"])
    assert data["bytes"] == 0  # what the response body streamed so far (nothing read here)


# -- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "status", "flags", "logged"),
    [
        (AccessLogFilter(status_min=400), 201, (), False),
        (AccessLogFilter(status_min=400), 503, (), True),
        (AccessLogFilter(status_max=299), 503, (), False),
        (AccessLogFilter(any_response_flag=True), 200, (), False),
        (AccessLogFilter(any_response_flag=True), 503, (ResponseFlag.UPSTREAM_CONNECTION_FAILURE,), True),
        (AccessLogFilter(response_flags=("UT",)), 503, (ResponseFlag.UPSTREAM_CONNECTION_FAILURE,), False),
        (
            AccessLogFilter(response_flags=("UT", "UF")),
            503,
            (ResponseFlag.UPSTREAM_CONNECTION_FAILURE,),
            True,
        ),
        (AccessLogFilter(min_duration=1.0), 200, (), False),  # type: ignore[arg-type]  # seconds
        (AccessLogFilter(min_duration=0.1), 200, (), True),  # type: ignore[arg-type]  # seconds
    ],
)
def test_filters(rule: AccessLogFilter, status: int, flags: tuple[ResponseFlag, ...], logged: bool) -> None:
    sink = Lines()
    logger = AccessLogger("ingress", [(AccessLog(filter=rule), sink)])
    log_entry = entry(status=status, flags=flags)
    assert log_entry.request is not None
    assert log_entry.response is not None
    log_entry.request.info.start = time.monotonic() - 0.25
    logger.log_http(log_entry.request, log_entry.response)
    assert len(sink.lines) == int(logged)


# -- malformed formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "position", "message"),
    [
        (
            "[%START_TIME%] %REQUEST_PATH%",
            15,
            "unknown command operator %REQUEST_PATH% at position 15; did you mean %REQUEST_ID%?",
        ),
        ("%RESPONSE_CODES%", 0, "did you mean %RESPONSE_CODE%?"),
        ("ok %REQ%", 3, "%REQ% at position 3 needs an argument"),
        ("%DURATION(ms)%", 0, "takes no argument, got (ms)"),
        ("code %RESPONSE_CODE", 5, "unterminated command operator '%RESPONSE_CODE' at position 5"),
        ("%REQ(:PATH", 0, "unclosed '('"),
        ("%REQ(:PATH):0%", 0, "must be a positive integer"),
        ("50% off", 2, "a lone % at position 2 (write a literal % as %%)"),
        ("%GRPC_STATUS(HEX)%", 0, "the argument is one of CAMEL_STRING, SNAKE_STRING, NUMBER"),
        ("%REQ(a?b?c)%", 0, "a header name, or two as X?Y"),
    ],
)
def test_malformed_formats_name_the_position(fmt: str, position: int, message: str) -> None:
    with pytest.raises(LogFormatError) as caught:
        parse_format(fmt)
    assert caught.value.position == position
    assert message in str(caught.value)
