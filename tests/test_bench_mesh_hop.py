"""bench/mesh_hop.py's topology works, so that its figures measure what they say.

The benchmark itself does not run in CI (speed is measured in bench/, on a quiet machine);
its ``--check`` mode does: the app (Debian's nginx, a grpcio server), the two sidecars as
``meshcore proxy`` processes with certificates from the mesh's CA, mTLS between them,
mesh_metrics and tracing to a live OTLP sink, and one traced request per protocol, checked
at every hop (answer, mTLS counted by B, one handshake, spans received).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "mesh_hop.py"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


@pytest.mark.skipif(NGINX is None, reason="nginx (Debian package nginx-light) is not installed")
def test_the_mesh_hop_benchmark_sets_up_a_working_mesh() -> None:
    result = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(BENCH), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=BENCH.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "check: the topology works"
