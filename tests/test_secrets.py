"""TLS secrets as Snapshot resources: named by listeners and clusters, rotated without a drain.

Certificates come from trustme as PEM text, delivered as ``secrets`` (in a config, or in a
delta as a control plane would send them). A rotation is proved by the certificate the
next handshake presents or accepts, while a connection made before it carries on.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from _h1client import Client

import meshcore
from meshcore.runtime.configdata import to_data
from meshcore.testing import ProxyFactory, RunningProxy, http_proxy_config

TIMEOUT = 15
REGISTRY = meshcore.build_registry(autoload=False)
HOST = "proxy.test"


def pem(blob: trustme.Blob) -> str:
    return blob.bytes().decode()


def secret(name: str, cert: trustme.LeafCert | None = None, ca: trustme.CA | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if cert is not None:
        out["certificate_chain"] = "".join(pem(b) for b in cert.cert_chain_pems)
        out["private_key"] = pem(cert.private_key_pem)
    if ca is not None:
        out["trusted_ca"] = pem(ca.cert_pem)
    return out


def tls_secret(
    name: str, cert: trustme.LeafCert | None = None, ca: trustme.CA | None = None
) -> meshcore.TlsSecret:
    data = secret(name, cert, ca)
    key = data.get("private_key")
    return meshcore.TlsSecret(
        name=name,
        certificate_chain=data.get("certificate_chain"),
        private_key=None if key is None else meshcore.SecretStr(key),
        trusted_ca=data.get("trusted_ca"),
    )


def tls_config(tls: dict[str, Any], secrets: list[dict[str, Any]]) -> dict[str, Any]:
    direct = {"name": "hello", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": "hi"}}
    config = http_proxy_config([], routes=[direct])
    config["listeners"][0]["filter_chains"][0]["tls"] = tls
    config["secrets"] = secrets
    return config


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem(cert.cert_chain_pems[0]))


@asynccontextmanager
async def tls_client(
    proxy: RunningProxy, trust: trustme.CA, client_cert: trustme.LeafCert | None = None
) -> AsyncIterator[tuple[Client, trio.SSLStream[trio.SocketStream]]]:
    context = ssl.create_default_context()
    trust.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    stream = trio.SSLStream(await trio.open_tcp_stream(*proxy.address()), context, server_hostname=HOST)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream.transport_stream)
        raise
    async with Client(stream) as client:
        yield client, stream


# -- in config ---------------------------------------------------------------------------------


def test_secrets_are_structured_checked_and_referenced() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    good = meshcore.snapshot_from_data(
        tls_config(
            {"secret": "server", "validation_secret": "roots"},
            [secret("server", cert), secret("roots", ca=ca)],
        ),
        REGISTRY,
    )
    server = good.secret("server")
    assert server is not None
    assert isinstance(server.private_key, meshcore.SecretStr)
    assert "SecretStr('[redacted]')" in repr(server)  # never in a log line or a traceback

    bad = tls_config(
        {"secret": "server", "certificate_file": "/x.pem"},
        [
            {"name": "server", "certificate_chain": "not PEM", "private_key": pem(cert.private_key_pem)},
            {"name": "half", "certificate_chain": "".join(pem(b) for b in cert.cert_chain_pems)},
            {"name": "empty"},
        ],
    )
    with pytest.raises(meshcore.ConfigError) as caught:
        meshcore.snapshot_from_data(bad, REGISTRY)
    assert [str(p) for p in caught.value.problems] == [
        "listeners[0].filter_chains[0].tls: takes certificate_file and private_key_file, or secret, not both",
        "secrets[0].certificate_chain: must be PEM text with -----BEGIN CERTIFICATE----- blocks",
        "secrets[1]: takes certificate_chain and private_key together",
        "secrets[2]: needs certificate_chain and private_key, or trusted_ca, or both",
    ]
    unknown = tls_config({"secret": "srever"}, [secret("server", cert)])
    with pytest.raises(meshcore.ConfigError) as caught:
        meshcore.snapshot_from_data(unknown, REGISTRY)
    assert [str(p) for p in caught.value.problems] == [
        "listeners[0].filter_chains[0].tls.secret: unknown secret 'srever' (defined: server)"
    ]


def test_config_dump_shows_a_secret_without_its_key() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    snapshot = meshcore.snapshot_from_data(
        tls_config({"secret": "server"}, [secret("server", cert)]), REGISTRY
    )
    (dumped,) = to_data(snapshot)["secrets"]
    assert dumped["private_key"] == "[redacted]"
    assert dumped["certificate_chain"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in str(to_data(snapshot))


def test_a_delta_removing_a_secret_in_use_is_refused() -> None:
    ca = trustme.CA()
    snapshot = meshcore.snapshot_from_data(
        tls_config({"secret": "server"}, [secret("server", ca.issue_cert(HOST))]), REGISTRY
    )
    composed = meshcore.SnapshotDelta(version="2", removed_secrets=("server",)).compose(snapshot)
    assert [str(p) for p in meshcore.config.check_snapshot(composed, REGISTRY)] == [
        "listeners[0].filter_chains[0].tls.secret: unknown secret 'server' (defined: none defined)"
    ]


# -- rotation on a running proxy ---------------------------------------------------------------


async def test_a_rotated_server_certificate_is_presented_by_the_next_handshake_alone(
    meshcore_proxy: ProxyFactory,
) -> None:
    ca = trustme.CA()
    first, second = ca.issue_cert(HOST), ca.issue_cert(HOST)
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(tls_config({"secret": "server"}, [secret("server", first)]))
        chains = list(proxy.proxy.listeners["ingress"].chains)
        async with tls_client(proxy, ca) as (before, stream):
            assert stream.getpeercert(binary_form=True) == der(first)
            assert (await before.get("/")).status == 200

            live = proxy.apply_delta(
                meshcore.SnapshotDelta(version="2", secrets=(tls_secret("server", second),))
            )
            assert live.version == "2"
            async with tls_client(proxy, ca) as (after, new_stream):
                assert new_stream.getpeercert(binary_form=True) == der(second)
                assert (await after.get("/")).status == 200
            reply = await before.get("/")  # the connection made before: carries on
            assert (reply.status, reply.headers.get("connection")) == (200, None)
        assert proxy.proxy.listeners["ingress"].chains == chains  # nothing rebuilt, nothing drained


async def test_rotated_client_roots_decide_the_next_handshake(meshcore_proxy: ProxyFactory) -> None:
    server_ca, old_roots, new_roots = trustme.CA(), trustme.CA(), trustme.CA()
    old_client, new_client = old_roots.issue_cert("client.test"), new_roots.issue_cert("client.test")
    tls = {"secret": "server", "validation_secret": "roots", "require_client_certificate": True}
    secrets = [secret("server", server_ca.issue_cert(HOST)), secret("roots", ca=old_roots)]
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(tls_config(tls, secrets))
        async with tls_client(proxy, server_ca, old_client) as (before, _):
            assert (await before.get("/")).status == 200
            proxy.apply_delta(
                meshcore.SnapshotDelta(version="2", secrets=(tls_secret("roots", ca=new_roots),))
            )
            async with tls_client(proxy, server_ca, new_client) as (after, _):
                assert (await after.get("/")).status == 200
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                async with tls_client(proxy, server_ca, old_client) as (refused, _):
                    await refused.get("/")  # TLS 1.3: the refusal comes after the client's handshake
            assert (await before.get("/")).status == 200


async def test_cluster_tls_from_secrets_is_rotated_for_new_connections(meshcore_proxy: ProxyFactory) -> None:
    """An upstream (a second proxy) that wants a client certificate, reached through secrets."""
    server_ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    upstream_tls = {"secret": "server", "validation_secret": "clients", "require_client_certificate": True}
    upstream_secrets = [secret("server", server_ca.issue_cert(HOST)), secret("clients", ca=client_ca)]
    with trio.fail_after(TIMEOUT):
        upstream = await meshcore_proxy(tls_config(upstream_tls, upstream_secrets))
        cluster = {
            "tls": {"secret": "me", "validation_secret": "upstream-roots", "server_name": HOST},
            "max_idle_connections_per_endpoint": 0,  # a new connection, and handshake, per request
        }
        config = http_proxy_config([upstream.endpoint()], cluster=cluster)
        config["secrets"] = [
            secret("me", client_ca.issue_cert("me.test")),
            secret("upstream-roots", ca=server_ca),
        ]
        proxy = await meshcore_proxy(config)
        assert (await proxy.client().get("/")).status == 200

        distrust = meshcore.SnapshotDelta(version="2", secrets=(tls_secret("upstream-roots", ca=other_ca),))
        proxy.apply_delta(distrust)
        refused = await proxy.client().get("/")
        assert (refused.status, refused.header("x-meshcore-flags")) == (503, "UF")

        proxy.apply_delta(
            meshcore.SnapshotDelta(version="3", secrets=(tls_secret("upstream-roots", ca=server_ca),))
        )
        assert (await proxy.client().get("/")).status == 200
        backend = proxy.proxy.clusters.get("backend")
        assert backend is not None
        assert backend.config.tls is not None


async def test_certificate_files_replaced_on_disk_are_taken_by_a_reload(
    meshcore_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The same config, files replaced at the same paths: the next handshake takes them, no drain."""
    ca = trustme.CA()
    first, second = ca.issue_cert(HOST), ca.issue_cert(HOST)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"

    def install(cert: trustme.LeafCert) -> None:
        for path, blob in ((cert_file, cert.cert_chain_pems[0]), (key_file, cert.private_key_pem)):
            temporary = path.with_suffix(".tmp")
            blob.write_to_path(str(temporary))
            temporary.replace(path)  # a new inode, as deployment tools do

    install(first)
    config = tls_config({"certificate_file": str(cert_file), "private_key_file": str(key_file)}, [])
    with trio.fail_after(TIMEOUT):
        proxy = await meshcore_proxy(config)
        async with tls_client(proxy, ca) as (before, stream):
            assert stream.getpeercert(binary_form=True) == der(first)
            install(second)
            proxy.apply(config)
            async with tls_client(proxy, ca) as (_, new_stream):
                assert new_stream.getpeercert(binary_form=True) == der(second)
            assert (await before.get("/")).headers.get("connection") is None
