"""The demo's layout and the tour's edits, without processes: ports, rendered mesh, YAML edits."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from meshcore.control import load_resources
from meshcore.demo.layout import Layout, PortInUseError, deny, render_mesh, set_abort, shift, unsupported
from meshcore.registry import build_registry


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    """The demo's mesh files, as a run writes them: those this meshcore does not enforce left out."""
    registry = build_registry()
    for name, text in render_mesh(Layout.allocate(23600, check=False)).items():
        (tmp_path / name).write_text(text)
        if unsupported(tmp_path / name, registry):
            (tmp_path / name).unlink()
    return tmp_path


def _doc(path: Path, kind: str) -> dict:  # type: ignore[type-arg]
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == kind)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    layout = Layout.allocate()
    ports = list(layout.ports.values())
    assert len(set(ports)) == len(ports) == len(Layout.names())
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(1024 <= p < low for p in ports)


def test_a_taken_port_is_named_with_what_needed_it() -> None:
    base = next(p for p in range(21000, 30000, 3) if all(_free(p + i) for i in range(3)))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 2))  # the front page's sidecar: dashboard, control, then it
        taken.listen()
        with pytest.raises(
            PortInUseError, match=rf"port {base + 2} \(the productpage sidecar's inbound listener\)"
        ):
            Layout.allocate(base)


def test_the_rendered_mesh_loads_whole_with_every_plugin(mesh: Path) -> None:
    resources = load_resources([mesh], build_registry())
    kinds = {r.kind for r in resources}
    assert {
        "VirtualService",
        "DestinationRule",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "LocalRateLimit",
    } <= kinds


def test_shift_gives_the_rest_pro_rata_and_keeps_the_file_loadable(mesh: Path) -> None:
    assert shift(mesh, "reviews", "v3", 50) == "reviews.yaml: reviews now v1 45%, v2 5%, v3 50%"
    assert shift(mesh, "reviews", "v3", 100) == "reviews.yaml: reviews now v1 0%, v2 0%, v3 100%"
    assert shift(mesh, "reviews", "v1", 40) == "reviews.yaml: reviews now v1 40%, v2 0%, v3 60%"
    assert (mesh / "reviews.yaml").read_text().startswith("# The canary:")  # its comment kept
    load_resources([mesh / "reviews.yaml"], build_registry())
    with pytest.raises(LookupError, match="reviews has no subset 'v4'"):
        shift(mesh, "reviews", "v4", 10)
    with pytest.raises(LookupError, match="no VirtualService 'nope'"):
        shift(mesh, "nope", "v1", 10)


def test_break_and_fix_add_and_remove_an_abort(mesh: Path) -> None:
    set_abort(mesh, "ratings", 25)
    fault = _doc(mesh / "ratings.yaml", "VirtualService")["spec"]["http"][0]["fault"]
    assert fault["abort"] == {"httpStatus": 503, "percentage": {"value": 25}}
    assert "delay" in fault  # the demo's delay stays
    set_abort(mesh, "ratings", 0)
    assert "abort" not in _doc(mesh / "ratings.yaml", "VirtualService")["spec"]["http"][0]["fault"]


def test_deny_writes_a_deny_policy_and_undo_removes_it(mesh: Path) -> None:
    assert deny(mesh, "productpage", "details").startswith(
        "deny-productpage-details.yaml: details now refuses"
    )
    policy = _doc(mesh / "deny-productpage-details.yaml", "AuthorizationPolicy")
    assert policy["spec"]["action"] == "DENY"
    assert policy["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        "cluster.local/ns/default/sa/productpage"
    ]
    load_resources([mesh], build_registry())
    deny(mesh, "productpage", "details", restore=True)
    assert not (mesh / "deny-productpage-details.yaml").exists()


def test_deny_without_authorization_policies_cuts_the_callers_sidecar_off(mesh: Path) -> None:
    (mesh / "security.yaml").unlink()  # as when the installed meshcore does not enforce them
    assert deny(mesh, "productpage", "details") == "workloads.yaml: productpage may no longer call details"
    sidecar = next(
        d
        for d in yaml.safe_load_all((mesh / "workloads.yaml").read_text())
        if d["kind"] == "Sidecar" and d["metadata"]["name"] == "productpage"
    )
    assert sidecar["spec"]["egress"] == [{"hosts": ["./reviews.default.svc.cluster.local"]}]
    load_resources([mesh], build_registry())
