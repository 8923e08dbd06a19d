"""``meshcore analyze``: every code, reported with its file, line, resource and field.

Each case is a small mesh that has exactly one kind of problem; the command runs as a
user runs it (``meshcore analyze FILE``) and its output is compared line by line.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from meshcore.cli import main
from meshcore.plugins.mesh_analyzers import CODES
from meshcore.registry import AUTOLOAD_ENV

ROOT = Path(__file__).resolve().parent.parent

SERVICE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
"""


def vs(http: str, hosts: str = "[reviews]") -> str:
    rules = textwrap.indent(textwrap.dedent(http), "  ")
    return f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: {hosts}\n  http:\n{rules}\n"


CASES = {
    "MC0001": (
        vs("- route: [{destination: {host: ratings}}]"),
        (
            "mesh.yaml:22: Error [MC0001] VirtualService default/reviews: spec.http[0].route[0].destination.host: host "
            "'ratings.default.svc.cluster.local' is not a service of the mesh (services: reviews.default.svc.cluster.local)"
        ),
    ),
    "MC0002": (
        vs("- route: [{destination: {host: reviews, subset: v2}}]"),
        (
            "mesh.yaml:22: Error [MC0002] VirtualService default/reviews: spec.http[0].route[0].destination.subset: subset "
            "'v2' of 'reviews.default.svc.cluster.local' is not defined (defined: v1)"
        ),
    ),
    "MC0003": (
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: extra}\nspec:\n  host: reviews\n"
            "  workloadSelector: {matchLabels: {app: reviews}}\n  subsets: [{name: v9, labels: {version: v9}}]\n"
        ),
        (
            "mesh.yaml:22: Warning [MC0003] DestinationRule default/extra: spec.subsets[0].labels: subset 'v9' selects no "
            "endpoint of 'reviews.default.svc.cluster.local' (labels version=v9)"
        ),
    ),
    "MC0004": (
        vs("- route: [{destination: {host: reviews}}]")
        + "---\n"
        + vs("- route: [{destination: {host: reviews}}]").replace("name: reviews}", "name: reviews-2}"),
        (
            "mesh.yaml:22: Warning [MC0004] VirtualService default/reviews: spec.hosts: VirtualService default/reviews-2 also "
            "route 'reviews.default.svc.cluster.local'; only this one is used"
        ),
    ),
    "MC0005": (
        vs(
            "- match: [{uri: {prefix: /api}}]\n  route: [{destination: {host: reviews}}]\n- match: [{uri: {prefix: /api/v1}}]\n  route: [{destination: {host: reviews}}]"
        ),
        (
            "mesh.yaml:22: Warning [MC0005] VirtualService default/reviews: spec.http[1]: spec.http[0] takes every request "
            "this route could match"
        ),
    ),
    "MC0006": (
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  workloadSelector: {labels: {app: ratings}}\n",
        "mesh.yaml:22: Warning [MC0006] Sidecar default/s: spec.workloadSelector: selects no workload of namespace 'default' (labels app=ratings)",
    ),
    "MC0007": (
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db.example.com]\n"
            "  ports: [{number: 5432, name: postgres}]\n  resolution: DNS_ROUND_ROBIN\n"
        ),
        (
            "mesh.yaml:22: Warning [MC0007] ServiceEntry default/db: spec.ports[0]: port 5432 ('postgres') has no protocol: it "
            "is proxied as TCP; set protocol (HTTP, GRPC, TCP, ...)"
        ),
    ),
    "MC0008": (
        vs("- route: [{destination: {host: reviews}}]", hosts="[reviews, details]"),
        "mesh.yaml:22: Warning [MC0008] VirtualService default/reviews: spec.hosts[1]: host 'details' is not a service of the mesh",
    ),
    "MC0009": (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: details}\nspec:\n  host: details\n",
        "mesh.yaml:22: Warning [MC0009] DestinationRule default/details: spec.host: host 'details.default.svc.cluster.local' is not a service of the mesh",
    ),
    "MC0010": (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-2}\nspec:\n  host: reviews.default.svc.cluster.local\n",
        (
            "mesh.yaml:22: Warning [MC0010] DestinationRule default/reviews-2: spec.host: DestinationRule default/reviews applies to "
            "'reviews.default.svc.cluster.local' too; only one of them is used"
        ),
    ),
    "MC0011": (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-v2}\nspec: {address: 127.0.0.1, labels: {app: reviews}}\n",
        (
            "mesh.yaml:22: Warning [MC0011] WorkloadEntry default/reviews-v2: spec.address: address 127.0.0.1 is where the "
            "application listens too; give the workload another address, or a Sidecar with ingress listeners and their defaultEndpoint"
        ),
    ),
    "MC0012": (
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  egress: [{hosts: ['./ratings.default.svc.cluster.local']}]\n",
        "mesh.yaml:22: Warning [MC0012] Sidecar default/s: spec.egress[0].hosts[0]: './ratings.default.svc.cluster.local' imports no service",
    ),
    "MC0013": (
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: a}\nspec:\n  workloadSelector: {labels: {app: reviews}}\n---\n"
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: b}\nspec:\n  workloadSelector: {labels: {version: v1}}\n"
        ),
        "mesh.yaml:22: Warning [MC0013] Sidecar default/a: spec.workloadSelector: Sidecar default/b select default/reviews-v1 too; only this one applies",
    ),
    "MC0014": (
        vs("- route: [{destination: {host: reviews, port: {number: 80}}}]"),
        (
            "mesh.yaml:22: Error [MC0014] VirtualService default/reviews: spec.http[0].route[0].destination.port.number: "
            "'reviews.default.svc.cluster.local' has no port 80 (ports: 9080)"
        ),
    ),
    "MC0015": (
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: batch}\nspec: {address: 10.0.0.7, labels: {app: batch}}\n",
        "mesh.yaml:22: Info [MC0015] WorkloadEntry default/batch: no ServiceEntry selects this workload: nothing routes to it",
    ),
}


@pytest.fixture(autouse=True)
def _no_autoload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only meshcore's own plugins: the codes checked here are theirs."""
    monkeypatch.setenv(AUTOLOAD_ENV, "1")


def analyze(
    tmp_path: Path, text: str, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    status = main(["analyze", str(path), *args])
    out = capsys.readouterr().out.replace(f"{path}", "mesh.yaml")
    return status, out.splitlines()


def test_a_sound_mesh_has_nothing_to_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = analyze(
        tmp_path,
        SERVICE + vs("- route: [{destination: {host: reviews, subset: v1}}]"),
        "--failure-threshold",
        "info",
        capsys=capsys,
    )
    assert (status, lines) == (0, ["no problems found in 4 resources"])


@pytest.mark.parametrize("code", sorted(CASES))
def test_each_code(code: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, expected = CASES[code]
    status, lines = analyze(tmp_path, SERVICE + extra, "--failure-threshold", "info", capsys=capsys)
    assert lines == [expected]
    assert status == 1
    severity = CODES[code][0].name
    status, _ = analyze(tmp_path, SERVICE + extra, capsys=capsys)
    assert status == (1 if severity == "ERROR" else 0), "the default threshold is error"


def test_every_code_is_tested_and_documented() -> None:
    assert set(CASES) == set(CODES)
    doc = (ROOT / "docs" / "mesh-analysis.md").read_text(encoding="utf-8")
    documented = re.findall(r"^## (MC\d{4})$", doc, re.MULTILINE)
    assert sorted(documented) == sorted([*CODES, "MC0000"])
    for code, (severity, _) in CODES.items():
        section = doc.split(f"## {code}\n", 1)[1]
        assert section.lstrip().startswith(f"**{severity.name.capitalize()}:"), code


def test_json_output_and_suppression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = CASES["MC0002"][0]
    status, lines = analyze(tmp_path, SERVICE + extra, "-o", "json", capsys=capsys)
    found = json.loads("\n".join(lines))
    assert [(f["code"], f["severity"], f["line"]) for f in found] == [("MC0002", "ERROR", 22)]
    assert status == 1
    status, lines = analyze(tmp_path, SERVICE + extra, "--suppress", "MC0002", capsys=capsys)
    assert status == 0


def test_files_that_do_not_validate_are_reported_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(SERVICE + vs("- route: [{destination: {host: reviews}}]\n  timout: 1s"))
    assert main(["analyze", str(path)]) == 1
    err = capsys.readouterr().err
    assert "spec.http[0].timout: unknown field; did you mean 'timeout'?" in err
