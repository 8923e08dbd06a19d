"""testssl.sh (Debian's ``testssl.sh`` package) against an mTLS listener: no HIGH or CRITICAL finding.

The listener presents a workload certificate of the mesh's CA and requires client
certificates. The scan covers protocols (``-p``), forward secrecy (``-f``) and the
vulnerability checks (``-U``), bounded to about half a minute: ``--nodns none`` (loopback
has no DNS to ask), ``--openssl-timeout`` against hangers. The certificate section
(``-S``) is left out on purpose, see docs/security.md: it grades by web-PKI rules
(a DNS name, 30+ days of validity, CRL/OCSP, a public CA) that short-lived SPIFFE
workload certificates break by design. The same command is in docs/security.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio
from test_workload_tls import SERVER_ID, issue, mtls_config

from meshcore import Duration
from meshcore.plugins.ca import CaConfig, LocalCA
from meshcore.testing import UpstreamFactory
from meshcore.testing.proxies import ProxyFactory

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
SCAN = (
    "--quiet",
    "--warnings",
    "off",
    "--color",
    "0",
    "--nodns",
    "none",
    "--openssl-timeout",
    "5",
    "-p",
    "-f",
    "-U",
)


@pytest.mark.skipif(
    TESTSSL is None, reason="needs testssl.sh (Debian package testssl.sh, installed by .ci/run)"
)
async def test_testssl_finds_nothing_high_or_critical_on_an_mtls_listener(
    tmp_path: Path, meshcore_proxy: ProxyFactory, meshcore_upstream: UpstreamFactory
) -> None:
    assert TESTSSL is not None
    ca = LocalCA(CaConfig(directory=str(tmp_path / "ca"), workload_lifetime=Duration(3600)))
    server = issue(ca, SERVER_ID, tmp_path, "server")
    upstream = await meshcore_upstream()
    report = tmp_path / "testssl.json"
    with trio.fail_after(180):
        proxy = await meshcore_proxy(mtls_config(upstream.endpoint, server))
        host, port = proxy.address()
        result = await trio.run_process(
            [TESTSSL, *SCAN, "--add-ca", str(server.bundle), "--jsonfile", str(report), f"{host}:{port}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    output = result.stdout.decode(errors="replace")
    findings = {item["id"]: item for item in json.loads(report.read_text())}
    severe = [
        f"{f['severity']} {f['id']}: {f['finding']}"
        for f in findings.values()
        if f["severity"] in ("HIGH", "CRITICAL")
    ]
    assert severe == [], output
    # The scan did run: the protocols and the checks are in the report.
    assert findings["TLS1"]["finding"] == "not offered"
    assert findings["TLS1_1"]["finding"] == "not offered"
    assert findings["TLS1_3"]["finding"].startswith("offered")
    assert findings["heartbleed"]["severity"] == "OK"
    assert findings["LUCKY13"]["severity"] == "OK"  # no CBC suites in TLS 1.2
    assert "ROBOT" in findings
