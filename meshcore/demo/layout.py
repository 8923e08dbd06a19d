"""What the demo runs, where: workloads, ports, and the mesh resources rendered for a run.

The mesh resources are package data (``meshcore/demo/mesh/*.yaml``): ordinary Istio-style
YAML with ``${name}`` placeholders for the ports this run chose. A file whose kinds or fields
no installed plugin handles yet (meshcore refuses them rather than ignore them) is left out
of the run and named, so the demo runs the most the installed meshcore supports.
"""

from __future__ import annotations

import contextlib
import random
import socket
import string
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import yaml

from meshcore.errors import ConfigError
from meshcore.registry import Registry

__all__ = [
    "WORKLOADS",
    "Layout",
    "PortInUseError",
    "Workload",
    "deny",
    "mesh_templates",
    "render_mesh",
    "set_abort",
    "shift",
    "unsupported",
]


@attrs.frozen
class Workload:
    """One application and its sidecar: ``reviews-v2`` is app ``reviews``, version ``v2``."""

    name: str
    app: str
    version: str
    calls: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Its name as a template placeholder: ``reviews_v2``."""
        return self.name.replace("-", "_")


WORKLOADS = (
    Workload("productpage", "productpage", "v1", ("details", "reviews")),
    Workload("details", "details", "v1"),
    Workload("reviews-v1", "reviews", "v1"),
    Workload("reviews-v2", "reviews", "v2", ("ratings",)),
    Workload("reviews-v3", "reviews", "v3", ("ratings",)),
    Workload("ratings", "ratings", "v1"),
)


class PortInUseError(Exception):
    """A port the demo needs is taken (one line, for the terminal)."""


@attrs.frozen
class Layout:
    """Every port of a run, by name.

    ``control``, ``dashboard``, and per workload ``KEY_inbound``, ``KEY_app``, ``KEY_admin``
    and, for callers, ``KEY_proxy``.
    """

    ports: dict[str, int]

    @staticmethod
    def names() -> list[str]:
        """The port names, in the order ``--port-base`` numbers them."""
        out = ["dashboard", "control"]
        for w in WORKLOADS:
            out += [f"{w.key}_inbound", f"{w.key}_app", f"{w.key}_admin"]
            if w.calls:
                out.append(f"{w.key}_proxy")
        return out

    @classmethod
    def allocate(cls, base: int | None = None, dashboard: int | None = None, *, check: bool = True) -> Layout:
        """Ports from ``base`` up, or free ones below the ephemeral range; ``dashboard`` fixed if given.

        Free ports are not asked of the system (port 0): it hands out ports of the
        ephemeral range, which outgoing connections take too, so one could be gone by the
        time its process listens. Raises :class:`PortInUseError` for a port given and taken
        (unless ``check`` is false: ports only to print).
        """
        names = cls.names()
        ports: dict[str, int] = {}
        free = _free_ports(len(names), {dashboard} if dashboard else set()) if base is None else iter(())
        with contextlib.ExitStack() as stack:
            for i, name in enumerate(names):
                wanted = dashboard if name == "dashboard" and dashboard is not None else None
                if wanted is None:
                    wanted = base + i if base is not None else next(free)
                if not check:
                    ports[name] = wanted
                    continue
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                # as the servers do: a port whose last connections linger in TIME_WAIT is free
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", wanted))
                except OSError as err:
                    msg = f"port {wanted} ({_describe(name)}) is in use: {err.strerror}"
                    raise PortInUseError(msg) from None
                ports[name] = wanted
        return cls(ports)

    def url(self, name: str) -> str:
        """``127.0.0.1:PORT`` of port ``name``."""
        return f"127.0.0.1:{self.ports[name]}"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; BSDs and macOS start at 49152


def _free_ports(count: int, taken: set[int]) -> Iterator[int]:
    """``count`` ports free now, below the ephemeral range (each checked by binding it)."""
    high = min(_ephemeral_low(), 65536)
    low = max(1024, high - 12000)
    rng = random.Random()  # noqa: S311 - spreading ports, not a secret
    found = 0
    for port in rng.sample(range(low, high), high - low):
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found += 1
        yield port
        if found == count:
            return
    msg = f"no {count} free ports between {low} and {high}"
    raise PortInUseError(msg)


def _describe(name: str) -> str:
    if name in {"dashboard", "control"}:
        return (
            "the control plane's admin server and dashboard" if name == "dashboard" else "the control plane"
        )
    key, _, what = name.rpartition("_")
    workload = key.replace("_", "-")
    return {
        "inbound": f"the {workload} sidecar's inbound listener",
        "app": f"the {workload} application",
        "admin": f"the {workload} sidecar's admin server",
        "proxy": f"the {workload} sidecar's HTTP proxy",
    }[what]


def mesh_templates() -> dict[str, str]:
    """The demo's mesh resource files (package data) by file name, with their placeholders."""
    folder = resources.files("meshcore.demo") / "mesh"
    return {
        f.name: f.read_text()
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".yaml")
    }


def render_mesh(layout: Layout) -> dict[str, str]:
    """The mesh files with this run's ports."""
    return {name: string.Template(text).substitute(layout.ports) for name, text in mesh_templates().items()}


def unsupported(path: Path, registry: Registry) -> list[str]:
    """Why the mesh file at ``path`` is not honoured by the installed plugins ([] if it is).

    Any other problem with the file is a defect of the demo: its ConfigError propagates.
    """
    from meshcore.control import load_resources  # noqa: PLC0415 - the control plane, only for a run

    try:
        load_resources([path], registry)
    except ConfigError as err:
        reasons = [p for p in err.problems if "not supported by meshcore yet" in p.message]
        if len(reasons) != len(err.problems):
            raise
        return [f"{p.path}: {p.message}" for p in reasons]
    return []


# -- the guided tour's edits ---------------------------------------------------------------------


def _documents(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The file's leading comment and its documents."""
    text = path.read_text()
    comment = "".join(line + "\n" for line in _leading_comments(text.splitlines()))
    return comment, [d for d in yaml.safe_load_all(text) if d]


def _leading_comments(lines: list[str]) -> Iterator[str]:
    for line in lines:
        if not line.startswith("#"):
            return
        yield line


def _write(path: Path, comment: str, documents: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=None)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(comment + text)
    tmp.replace(path)  # the control plane never reads half a file


def _find(folder: Path, kind: str, name: str) -> tuple[Path, str, list[dict[str, Any]], dict[str, Any]]:
    for path in sorted(folder.glob("*.yaml")):
        comment, documents = _documents(path)
        for doc in documents:
            if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
                return path, comment, documents, doc
    msg = f"no {kind} {name!r} in {folder}"
    raise LookupError(msg)


def shift(folder: Path, service: str, subset: str, percent: int) -> str:
    """Give ``subset`` of ``service`` ``percent``% of the traffic, the others the rest, pro rata."""
    path, comment, documents, doc = _find(folder, "VirtualService", service)
    routes = doc["spec"]["http"][0]["route"]
    subsets = [r["destination"].get("subset") for r in routes]
    if subset not in subsets:
        msg = f"{service} has no subset {subset!r} in its VirtualService (it has: {', '.join(map(str, subsets))})"
        raise LookupError(msg)
    others = [r for r in routes if r["destination"].get("subset") != subset]
    rest = 100 - percent
    total = sum(int(r.get("weight", 0)) for r in others)
    shares = [(rest * int(r.get("weight", 0)) // total) if total else rest // len(others) for r in others]
    if others:
        shares[0] += rest - sum(shares)  # what integer division left over
    for route, share in zip(others, shares, strict=True):
        route["weight"] = share
    next(r for r in routes if r["destination"].get("subset") == subset)["weight"] = percent
    _write(path, comment, documents)
    split = ", ".join(f"{r['destination'].get('subset')} {r['weight']}%" for r in routes)
    return f"{path.name}: {service} now {split}"


def set_abort(folder: Path, service: str, percent: float) -> str:
    """Abort ``percent``% of the calls to ``service`` with HTTP 503 (0: no abort)."""
    path, comment, documents, doc = _find(folder, "VirtualService", service)
    rule = doc["spec"]["http"][0]
    fault = rule.setdefault("fault", {})
    if percent > 0:
        fault["abort"] = {"httpStatus": 503, "percentage": {"value": percent}}
    else:
        fault.pop("abort", None)
        if not fault:
            del rule["fault"]
    _write(path, comment, documents)
    return (
        f"{path.name}: {percent:g}% of the calls to {service} now fail with 503"
        if percent
        else (f"{path.name}: calls to {service} no longer aborted")
    )


def deny(folder: Path, caller: str, service: str, *, restore: bool = False) -> str:
    """Refuse ``caller``'s calls to ``service`` (``restore``: take that back).

    Where meshcore enforces AuthorizationPolicy (the demo's security.yaml is in the run),
    with a DENY policy on the service's workloads for the caller's identity, in a file of
    its own; else by the caller's Sidecar no longer importing the service.
    """
    if (folder / "security.yaml").exists():
        return _deny_policy(folder, caller, service, restore=restore)
    path, comment, documents, doc = _find(folder, "Sidecar", caller)
    spec = doc["spec"]
    if restore:
        spec.pop("egress", None)
        spec.pop("outboundTrafficPolicy", None)
        _write(path, comment, documents)
        return f"{path.name}: {caller} may call every service again"
    callers = next(w for w in WORKLOADS if w.name == caller)
    allowed = [f"./{s}.default.svc.cluster.local" for s in callers.calls if s != service]
    spec["egress"] = [{"hosts": allowed or ["./none.invalid"]}]
    spec["outboundTrafficPolicy"] = {"mode": "REGISTRY_ONLY"}
    _write(path, comment, documents)
    return f"{path.name}: {caller} may no longer call {service}"


def _deny_policy(folder: Path, caller: str, service: str, *, restore: bool) -> str:
    workload = next((w for w in WORKLOADS if w.name == caller), None)
    if workload is None or all(w.app != service for w in WORKLOADS):
        msg = f"the demo has no workload {caller!r} or no service {service!r}"
        raise LookupError(msg)
    path = folder / f"deny-{caller}-{service}.yaml"
    if restore:
        path.unlink(missing_ok=True)
        return f"{path.name} removed: {caller} may call {service} again"
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": f"deny-{caller}-{service}"},
        "spec": {
            "selector": {"matchLabels": {"app": service}},
            "action": "DENY",
            "rules": [
                {"from": [{"source": {"principals": [f"cluster.local/ns/default/sa/{workload.app}"]}}]}
            ],
        },
    }
    comment = (
        f"# {service}'s sidecars refuse every call from {caller}'s identity (mutual TLS tells who calls).\n"
    )
    _write(path, comment, [policy])
    return f"{path.name}: {service} now refuses {caller} (AuthorizationPolicy, action DENY)"
