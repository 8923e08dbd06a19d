"""TLS listeners over loopback: SNI picks the filter chain and its certificate, checked with curl.

How a connection finds its chain: the first chain (in config order) whose criteria match,
a chain without ``server_names`` matching any name or none. The certificate presented is
that chain's. An SNI that no chain takes is refused: closed with no answer.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme
from structlog.testing import capture_logs

from meshcore.testing.harness import start_proxy


@attrs.frozen
class Pki:
    ca: Path
    certs: dict[str, tuple[str, str]]  # name -> (certificate file, key file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = trustme.CA()
    out = tmp_path_factory.mktemp("pki")
    ca_file = out / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certs = {}
    for name in ("a.example", "b.example", "other.example"):
        issued = ca.issue_cert(name)
        cert_file, key_file = out / f"{name}.pem", out / f"{name}.key"
        cert_file.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key_file))
        certs[name] = (str(cert_file), str(key_file))
    return Pki(ca_file, certs)


def tls_config(pki: Pki, chains: Sequence[tuple[str, str, Sequence[str]]]) -> dict[str, Any]:
    """One listener; per ``(answer, certificate name, server_names)`` a TLS chain answering ``answer``."""
    filter_chains = []
    route_configs = []
    for answer, cert_name, server_names in chains:
        cert_file, key_file = pki.certs[cert_name]
        filter_chains.append(
            {
                "name": answer,
                "match": {"server_names": list(server_names)},
                "tls": {"certificate_file": cert_file, "private_key_file": key_file},
                "filters": [
                    {"http_connection_manager": {"route_config": answer, "http_filters": ["router"]}}
                ],
            }
        )
        route = {
            "name": "answer",
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": f"{answer}\n"},
        }
        route_configs.append(
            {"name": answer, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}
        )
    return {
        "admin": {"enabled": False},
        "listeners": [{"name": "tls", "address": "127.0.0.1:0", "filter_chains": filter_chains}],
        "route_configs": route_configs,
    }


@attrs.frozen
class CurlResult:
    returncode: int
    body: str
    error: str


async def curl(pki: Pki, name: str, port: int) -> CurlResult:
    """``curl https://NAME:PORT/`` to loopback, trusting only the test CA (curl verifies by default)."""
    argv = ["curl", "-sS", "--max-time", "5", "--cacert", str(pki.ca)]
    argv += ["--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/"]
    with trio.fail_after(10):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    return CurlResult(done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_sni_selects_each_chain_and_curl_verifies_its_certificate(
    nursery: trio.Nursery, pki: Pki
) -> None:
    config = tls_config(pki, [("A", "a.example", ["a.example"]), ("B", "b.example", ["b.example"])])
    with trio.fail_after(20):
        proxy = await start_proxy(nursery, config)
        port = proxy.address("tls")[1]
        a = await curl(pki, "a.example", port)
        b = await curl(pki, "b.example", port)
    assert a == CurlResult(0, "A\n", "")
    assert b == CurlResult(0, "B\n", "")


async def test_unknown_sni_gets_the_catch_all_chain_and_its_own_certificate(
    nursery: trio.Nursery, pki: Pki
) -> None:
    chains = [
        ("A", "a.example", ["a.example"]),
        ("B", "b.example", ["b.example"]),
        ("default", "other.example", []),
    ]
    with trio.fail_after(20):
        proxy = await start_proxy(nursery, tls_config(pki, chains))
        port = proxy.address("tls")[1]
        unknown = await curl(pki, "other.example", port)  # a name no chain lists
        a = await curl(pki, "a.example", port)
    assert unknown == CurlResult(0, "default\n", "")
    assert a == CurlResult(0, "A\n", "")


async def request_over_tls(port: int, server_hostname: str | None, ca: Path) -> tuple[Any, bytes]:
    """One HTTP/1.1 request with TLS (chain verified, host name not): the peer certificate and all bytes back."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    async with trio.SSLStream(raw, context, server_hostname=server_hostname) as stream:
        await stream.do_handshake()
        cert = stream.getpeercert()
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        chunks = []
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return cert, b"".join(chunks)


def names(cert: Any) -> list[str]:
    return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]


async def test_a_client_without_sni_gets_the_catch_all_chain_and_its_own_certificate(
    nursery: trio.Nursery, pki: Pki
) -> None:
    chains = [("A", "a.example", ["a.example"]), ("default", "other.example", [])]
    with trio.fail_after(10):
        proxy = await start_proxy(nursery, tls_config(pki, chains))
        cert, answer = await request_over_tls(proxy.address("tls")[1], None, pki.ca)
    assert names(cert) == ["other.example"]
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"\r\n\r\ndefault\n")


async def test_chains_are_tried_in_order_so_a_catch_all_listed_first_takes_every_name(
    nursery: trio.Nursery, pki: Pki
) -> None:
    chains = [("default", "other.example", []), ("A", "a.example", ["a.example"])]
    with trio.fail_after(10):
        proxy = await start_proxy(nursery, tls_config(pki, chains))
        cert, answer = await request_over_tls(proxy.address("tls")[1], "a.example", pki.ca)
    assert names(cert) == ["other.example"]  # the certificate always belongs to the chain that answers
    assert answer.endswith(b"\r\n\r\ndefault\n")


async def test_unknown_sni_without_a_catch_all_chain_is_closed_without_an_answer(
    nursery: trio.Nursery, pki: Pki
) -> None:
    config = tls_config(pki, [("A", "a.example", ["a.example"]), ("B", "b.example", ["b.example"])])
    with trio.fail_after(10):
        proxy = await start_proxy(nursery, config)
        with capture_logs() as logs:
            _, answer = await request_over_tls(proxy.address("tls")[1], "other.example", pki.ca)
    assert answer == b""
    unmatched = [e for e in logs if e["event"] == "no_filter_chain_matched"]
    assert [(e["listener"], e["server_name"]) for e in unmatched] == [("tls", "other.example")]


async def test_plain_http_to_the_tls_port_is_dropped_and_the_listener_keeps_serving(
    nursery: trio.Nursery, pki: Pki
) -> None:
    config = tls_config(pki, [("A", "a.example", ["a.example"])])
    with trio.fail_after(20):
        proxy = await start_proxy(nursery, config)
        port = proxy.address("tls")[1]
        with capture_logs() as logs:
            async with await trio.open_tcp_stream("127.0.0.1", port) as plain:
                await plain.send_all(b"GET / HTTP/1.1\r\nhost: a.example\r\n\r\n")
                reply = b""
                try:
                    while data := await plain.receive_some(65536):
                        reply += data
                except trio.BrokenResourceError:  # a reset is as good as a close here
                    pass
        after = await curl(pki, "a.example", port)
    assert b"HTTP/1.1" not in reply  # at most a TLS alert, never an HTTP answer in clear
    assert [e["listener"] for e in logs if e["event"] == "tls_handshake_failed"] == ["tls"]
    assert after == CurlResult(0, "A\n", "")
