"""``meshcore demo``: the whole mesh from one command, run as a newcomer runs it.

The demo runs from a folder outside the checkout, installed (not editable) into a fresh
virtualenv from a copy of the checkout, so that its applications, mesh files and dashboard
must come as package data; and for real: a control plane, six sidecars and six
applications as processes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _demo import start_demo, strays
from test_tutorial import OFFLINE_PIP, checkout, clean_env, link_to_our_packages

WANTED_KINDS = {
    "ServiceEntry",
    "WorkloadEntry",
    "Sidecar",
    "DestinationRule",
    "VirtualService",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "Telemetry",
    "LocalRateLimit",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with meshcore installed from a copy of the checkout (offline, no editable)."""
    base = tmp_path_factory.mktemp("fresh")
    env = clean_env()
    venv = base / "venv"
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env, timeout=120, check=True
    )
    link_to_our_packages(venv, env)  # the dependencies (and pip), as the test environment has them
    subprocess.run(  # noqa: S603 - the new environment's own interpreter
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            *OFFLINE_PIP.split(),
            str(checkout(base)),
        ],
        env=env,
        cwd=base,
        timeout=240,
        check=True,
    )
    return venv


def test_a_run_serves_traffic_shows_it_and_leaves_no_process(tmp_path: Path, installed: Path) -> None:
    meshcore = [str(installed / "bin" / "meshcore")]
    where = subprocess.run(  # noqa: S603 - the new environment's own interpreter
        [str(installed / "bin" / "python"), "-c", "import meshcore.demo; print(meshcore.demo.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert where.stdout.startswith(str(installed)), where.stdout  # the installed copy, not the checkout
    with start_demo(tmp_path, "--duration", "6", meshcore=meshcore) as run:
        run.wait_for("Ctrl-C stops everything.")
        assert "Three things to try" in run.text
        assert "meshcore demo shift reviews v3 100" in run.text
        # the dashboard sees the traffic: the front page, its calls, the 90/10 canary
        deadline = time.monotonic() + 5
        while not {
            ("client", "productpage"),
            ("productpage", "details"),
            ("productpage", "reviews-v1"),
        } <= set(edges := run.edges()):
            assert time.monotonic() < deadline, edges
            time.sleep(0.2)
        assert all(e["rps"] > 0 for e in edges.values()), edges
        # inside the mesh every edge is mutual TLS (STRICT); the traffic from outside is not
        assert all(e["mtls"] for (source, _), e in edges.items() if source != "client"), edges
        assert not edges[("client", "productpage")]["mtls"]
        # every sidecar got its workload certificate from the control plane's CA
        proxies = run.data()["proxies"]
        assert len(proxies) == 6
        assert all(p["status"] == "SYNCED" and p["certificate"]["expires_in"] > 0 for p in proxies), proxies
        status, counts = run.finish()
        assert status == 0, run.text
        assert "demo stopped: every process it started has exited" in run.text
        # every request succeeded but those the front page's rate limit refuses by design
        assert counts["ok"] > 20, run.text
        assert counts["failed"] == 0, run.text
        assert counts["degraded"] == 0, run.text
        assert counts["ok"] + counts["limited"] == counts["total"]
        assert strays(run.workdir) == []


def test_print_config_is_istio_style_yaml_with_every_policy_of_the_demo() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshcore", "demo", "--print-config", "--port-base", "23400"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    documents = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert {d["kind"] for d in documents} == WANTED_KINDS
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    routes = by_name[("VirtualService", "reviews")]["spec"]["http"][0]["route"]
    assert [r["weight"] for r in routes] == [90, 10, 0]
    assert by_name[("PeerAuthentication", "default")]["spec"]["mtls"]["mode"] == "STRICT"
    assert by_name[("Telemetry", "mesh-default")]["spec"]["tracing"][0]["randomSamplingPercentage"] == 100
    assert "fault" in by_name[("VirtualService", "ratings")]["spec"]["http"][0]
    assert "{number: 23402, protocol: HTTP" in done.stdout  # the ports given: the front page sidecar's


def test_a_port_clash_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(  # noqa: S603 - our own command
            [
                sys.executable,
                "-m",
                "meshcore",
                "demo",
                "--dashboard-port",
                str(port),
                "--workdir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"port {port} (the control plane's admin server and dashboard) is in use" in done.stderr
