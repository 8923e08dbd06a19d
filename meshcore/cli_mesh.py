"""The mesh commands of ``meshcore``: control-plane, sidecar, mesh status, mesh config, analyze."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import attrs
import trio
import yaml

from meshcore.config import Address, Duration
from meshcore.errors import ConfigError
from meshcore.logs import LEVELS, say
from meshcore.logs import configure as configure_logging
from meshcore.registry import build_registry

__all__ = ["add_commands"]

DEFAULT_ADMIN = "127.0.0.1:15014"


def _address(text: str) -> Address:
    try:
        return Address.__meshcore_parse__(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _print_problems(err: ConfigError) -> None:
    for problem in err.problems:
        say(str(problem))


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for err in group.exceptions:
        out.extend(_leaves(err) if isinstance(err, BaseExceptionGroup) else [err])
    return out


def _run(main: Any) -> int:
    """Run ``main`` under trio; a ConfigError (bad config, port in use) is printed, exit 1."""
    failed = False
    try:
        trio.run(main)
    except* ConfigError as group:
        for err in _leaves(group):
            if isinstance(err, ConfigError):
                _print_problems(err)
        failed = True
    except* KeyboardInterrupt:
        pass
    return 1 if failed else 0


# -- control-plane ---------------------------------------------------------------------------------


def cmd_control_plane(args: argparse.Namespace) -> int:
    """Run a control plane until SIGTERM/SIGINT; SIGHUP reloads the mesh files."""
    from meshcore.control.process import serve_control_plane  # noqa: PLC0415 - only this command
    from meshcore.control.settings import load_settings  # noqa: PLC0415 - only this command

    configure_logging(args.log_level, fmt=args.log_format)
    registry = build_registry()
    for problem in registry.problems:
        say(f"plugin problem: {problem}")
    try:
        config = load_settings(args.config, registry)
    except ConfigError as err:
        _print_problems(err)
        return 1
    overrides: dict[str, Any] = {}
    if args.listen is not None:
        overrides["listen"] = args.listen
    if args.admin is not None:
        overrides["admin"] = args.admin
    if args.allow_any_identity:
        overrides["allow_any_identity"] = True
    if args.poll_interval is not None:
        overrides["poll_interval"] = Duration(args.poll_interval)
    config = attrs.evolve(config, **overrides)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(
                    serve_control_plane,
                    config,
                    registry,
                    mesh=args.mesh or (),
                    handle_signals=True,
                    settings_file=args.config,
                )
            )

    return _run(main)


# -- sidecar --------------------------------------------------------------------------------------


def cmd_sidecar(args: argparse.Namespace) -> int:
    """Run a proxy configured by the control plane until SIGTERM/SIGINT (drain)."""
    from meshcore.control.source import ControlPlaneSourceConfig  # noqa: PLC0415 - only this command
    from meshcore.runtime.server import serve_proxy  # noqa: PLC0415 - only this command

    configure_logging(args.log_level, fmt=args.log_format)
    registry = build_registry()
    for problem in registry.problems:
        say(f"plugin problem: {problem}")
    config = ControlPlaneSourceConfig(
        address=args.control_plane,
        workload=args.workload,
        namespace=args.namespace,
        id=args.id,
        token_file=args.token_file,
        tls=args.tls,
        ca_file=args.ca_file,
        server_name=args.server_name,
        http_proxy=args.http_proxy,
        admin=args.admin,
    )
    found = registry.types("config_source").get("control_plane")
    if found is None:
        print(
            "the control_plane config source is not installed (meshcore.plugins.control_plane_source)",
            file=sys.stderr,
        )
        return 1
    source = found.factory(config, registry)  # the plugin's: with the workload certificate agent

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_proxy, source, registry, handle_signals=True))

    return _run(main)


# -- operator tools ---------------------------------------------------------------------------------


def _get(admin: str, path: str) -> Any:
    """GET ``path`` from the control plane's admin server as JSON (never through a proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://{admin}{path}"
    try:
        with opener.open(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return json.loads(body)
        except ValueError:
            msg = f"{url}: HTTP {err.code}: {body.decode(errors='replace').strip()}"
            raise SystemExit(msg) from None
    except (urllib.error.URLError, OSError) as err:
        msg = f"cannot reach the control plane's admin server at {admin}: {getattr(err, 'reason', err)}"
        raise SystemExit(msg) from None


def _ago(seconds: float) -> str:
    if seconds < 60:  # noqa: PLR2004 - a minute
        return f"{seconds:.1f}s ago"
    return f"{seconds / 60:.0f}m ago"


def cmd_mesh_status(args: argparse.Namespace) -> int:
    """Print every proxy's status; exit 0 (2 if the control plane cannot be reached)."""
    try:
        data = _get(args.admin, "/proxies")
        mesh = _get(args.admin, "/mesh")
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps({**data, "rejected": mesh.get("rejected")}, indent=2))
        return 0
    types = ("listeners", "routes", "clusters", "endpoints")
    rows = [("PROXY", "WORKLOAD", "STATUS", *(t.upper() for t in types), "LAST CONTACT")]
    notes = []
    for proxy in data["proxies"]:
        versions = proxy["versions"]
        status = proxy["status"] if proxy["connected"] else f"{proxy['status']} (disconnected)"
        rows.append(
            (
                proxy["id"],
                f"{proxy['workload'] or '-'}.{proxy['namespace']}",
                status,
                *((versions.get(t, {}).get("acked") or "-")[:8] for t in types),
                _ago(proxy["since_last_contact"]),
            )
        )
        if proxy["nack"]:
            notes.append(f"{proxy['id']}: NACKED: " + proxy["nack"].replace("\n", "\n    "))
        if proxy["error"]:
            notes.append(f"{proxy['id']}: not translated: {proxy['error']}")
        notes.extend(f"{proxy['id']}: {problem}" for problem in proxy["problems"])
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    print(f"mesh version {data['mesh']}, {len(data['proxies'])} proxies")
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for note in notes:
        print(note)
    rejected = mesh.get("rejected")
    if rejected:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rejected["at"]))
        print(f"last mesh edit REFUSED at {when} (the mesh before it is served):")
        for problem in rejected["problems"]:
            print(f"  {problem}")
    return 0


def cmd_mesh_reload(args: argparse.Namespace) -> int:
    """Ask the control plane to look at its mesh files now; exit 1 if it refuses them."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{args.admin}/reload", method="POST")
    try:
        with opener.open(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        answer = json.loads(err.read() or b"{}")
    except (urllib.error.URLError, OSError) as err:
        print(
            f"cannot reach the control plane's admin server at {args.admin}: {getattr(err, 'reason', err)}",
            file=sys.stderr,
        )
        return 2
    if answer.get("accepted"):
        print(f"mesh accepted (version {answer['version']})")
        return 0
    print(f"mesh REFUSED, version {answer.get('version')} is still served:")
    for problem in answer.get("problems", [answer.get("error", "")]):
        print(f"  {problem}")
    return 1


def cmd_mesh_wait(args: argparse.Namespace) -> int:
    """Wait until at least N proxies run the current mesh (SYNCED); exit 1 on timeout."""
    deadline = time.monotonic() + args.timeout
    ready: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            proxies = _get(args.admin, "/proxies")["proxies"]
        except SystemExit:
            proxies = []  # not up yet
        ready = [p for p in proxies if p["status"] == "SYNCED" and p["current"]]
        if len(ready) >= args.proxies and len(ready) == len([p for p in proxies if p["connected"]]):
            print(f"{len(ready)} proxies SYNCED")
            return 0
        time.sleep(0.1)
    print(f"{len(ready)} of {args.proxies} proxies SYNCED after {args.timeout:g}s", file=sys.stderr)
    return 1


def cmd_mesh_config(args: argparse.Namespace) -> int:
    """Print the Snapshot a workload's proxy gets, as YAML (or JSON)."""
    if args.proxy:
        query = urllib.parse.urlencode({"proxy": args.proxy})
    else:
        query = urllib.parse.urlencode({"workload": args.workload, "namespace": args.namespace})
    try:
        data = _get(args.admin, f"/config_dump?{query}")
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2
    if "error" in data:
        print(data["error"], file=sys.stderr)
        return 1
    for problem in data["problems"]:
        print(f"# not translated: {problem}")
    if args.output == "json":
        print(json.dumps(data["snapshot"], indent=2))
    else:
        print(yaml.safe_dump(data["snapshot"], sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyze mesh files offline; exit 1 if a finding reaches the failure threshold."""
    from meshcore.control.analyze import Severity, analyze  # noqa: PLC0415 - only this command
    from meshcore.control.discovery import build_model, open_discoveries  # noqa: PLC0415 - only this command
    from meshcore.control.resources import load_resources  # noqa: PLC0415 - only this command
    from meshcore.control.settings import load_settings  # noqa: PLC0415 - only this command

    registry = build_registry()
    try:
        settings = load_settings(args.config, registry)
        resources = load_resources(args.files, registry)
    except ConfigError as err:
        _print_problems(err)
        return 1
    offline = [ref for ref in settings.discovery if ref.name != "dns"]  # no network offline
    model = build_model(resources, open_discoveries(offline, registry), settings.mesh_settings)
    for problem in model.problems:
        print(problem)
    findings = [f for f in analyze(model, registry) if f.code not in args.suppress]
    threshold = Severity[args.failure_threshold.upper()]
    if args.output == "json":
        print(json.dumps([{**attrs.asdict(f), "severity": f.severity.name} for f in findings], indent=2))
    else:
        for found in findings:
            print(found)
        if not findings and not model.problems:
            print(f"no problems found in {len(resources)} resources")
    failed = bool(model.problems) or any(f.severity >= threshold for f in findings)
    return 1 if failed else 0


def add_commands(commands: Any) -> None:
    """Add the mesh commands to ``meshcore``'s sub-command parser."""
    logging = argparse.ArgumentParser(add_help=False)
    logging.add_argument("--log-level", default="info", choices=sorted(LEVELS), help="the least level logged")
    logging.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="JSON lines, or console text (auto: console on a terminal)",
    )

    _add_control_plane(commands, logging)
    _add_sidecar(commands, logging)
    _add_mesh(commands)
    _add_analyze(commands)


def _add_control_plane(commands: Any, logging: argparse.ArgumentParser) -> None:
    cp = commands.add_parser(
        "control-plane",
        parents=[logging],
        help="run a control plane: mesh resources in, a Snapshot per proxy out",
        description="Load the mesh resources (Istio's kinds) from files and folders, watch them, and push "
        "each proxy its Snapshot. A bad edit is refused whole: the last good mesh stays. SIGHUP reloads; "
        "SIGTERM/SIGINT stop.",
    )
    cp.add_argument(
        "-c", "--mesh", action="extend", nargs="+", metavar="PATH", help="mesh resource files and folders"
    )
    cp.add_argument("--config", metavar="FILE", help="the control plane's own config (YAML, TOML, JSON)")
    cp.add_argument(
        "--listen", type=_address, metavar="HOST:PORT", help="where proxies connect (default 127.0.0.1:15010)"
    )
    cp.add_argument(
        "--admin", type=_address, metavar="HOST:PORT", help=f"the admin server (default {DEFAULT_ADMIN})"
    )
    cp.add_argument(
        "--allow-any-identity", action="store_true", help="accept proxies without a bootstrap token"
    )
    cp.add_argument(
        "--poll-interval", type=float, metavar="SECONDS", help="how often mesh files are checked (default 1)"
    )
    cp.set_defaults(func=cmd_control_plane)


def _add_sidecar(commands: Any, logging: argparse.ArgumentParser) -> None:
    sidecar = commands.add_parser(
        "sidecar",
        parents=[logging],
        help="run a proxy configured by the control plane",
        description="Run a proxy whose every listener, route and cluster comes from the control plane. It keeps "
        "serving its last good config while the control plane is away, and reconnects. When the control "
        "plane has a CA, it makes its own key, has its workload certificate signed over the same stream, "
        "and renews it at about half its lifetime.",
    )
    sidecar.add_argument(
        "--control-plane",
        required=True,
        type=_address,
        metavar="HOST:PORT",
        help="the control plane's delivery address",
    )
    sidecar.add_argument(
        "--workload", default="", help="the workload this proxy serves (its WorkloadEntry's name)"
    )
    sidecar.add_argument("--namespace", default="default", help="the workload's namespace (default: default)")
    sidecar.add_argument("--id", default="", help="this proxy's id (default: WORKLOAD.NAMESPACE~HOST~PID)")
    sidecar.add_argument(
        "--token-file", metavar="FILE", help="the bootstrap token the control plane knows this workload by"
    )
    sidecar.add_argument("--tls", action="store_true", help="connect to the control plane with TLS")
    sidecar.add_argument(
        "--ca-file", metavar="FILE", help="roots to check the control plane's certificate (implies --tls)"
    )
    sidecar.add_argument("--server-name", metavar="NAME", help="the name in the control plane's certificate")
    sidecar.add_argument(
        "--http-proxy",
        default="127.0.0.1:15001",
        metavar="HOST:PORT",
        help='the HTTP proxy listener for HTTP_PROXY ("" for none)',
    )
    sidecar.add_argument(
        "--admin",
        type=_address,
        default=Address("127.0.0.1", 15000),
        metavar="HOST:PORT",
        help="this proxy's admin server",
    )
    sidecar.set_defaults(func=cmd_sidecar)


def _add_mesh(commands: Any) -> None:
    mesh = commands.add_parser(
        "mesh",
        help="operator tools: proxies' status, the Snapshot of a workload",
        description="Ask a running control plane (its admin server) about the proxies it serves: their "
        "status, the Snapshot a workload gets; have it reload its mesh files; wait until proxies are synced.",
    )
    mesh_commands = mesh.add_subparsers(
        dest="mesh_command", required=True, metavar="COMMAND", help="status, reload, wait or config"
    )
    status = mesh_commands.add_parser(
        "status",
        help="every proxy: SYNCED, STALE or NACKED (with the NACK message), versions, last contact",
    )
    status.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="HOST:PORT", help="the control plane's admin server"
    )
    status.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default="table",
        help="a table, or the admin server's JSON",
    )
    status.set_defaults(func=cmd_mesh_status)
    reload = mesh_commands.add_parser(
        "reload", help="have the control plane look at its mesh files now (as SIGHUP does)"
    )
    reload.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="HOST:PORT", help="the control plane's admin server"
    )
    reload.set_defaults(func=cmd_mesh_reload)
    wait = mesh_commands.add_parser(
        "wait",
        help="wait until proxies run the current mesh (for scripts: after starting sidecars, after an edit)",
    )
    wait.add_argument("--proxies", type=int, default=1, metavar="N", help="at least this many (default 1)")
    wait.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="give up after (default 30)"
    )
    wait.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="HOST:PORT", help="the control plane's admin server"
    )
    wait.set_defaults(func=cmd_mesh_wait)
    config = mesh_commands.add_parser("config", help="the Snapshot a workload's proxy gets, as YAML")
    config.add_argument("workload", nargs="?", default="", help="the workload")
    config.add_argument("-n", "--namespace", default="default", help="the workload's namespace")
    config.add_argument("--proxy", default="", help="a connected proxy's id instead of a workload")
    config.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="HOST:PORT", help="the control plane's admin server"
    )
    config.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="YAML or JSON")
    config.set_defaults(func=cmd_mesh_config)


def _add_analyze(commands: Any) -> None:
    analyze = commands.add_parser(
        "analyze",
        help="check mesh resource files offline for cross-resource problems (codes MC0001...)",
        description="Load mesh resources and report what is wrong between them, each finding with a stable "
        "code documented in the docs (mesh analysis). Exits 1 if a finding reaches --failure-threshold.",
    )
    analyze.add_argument("files", nargs="+", metavar="PATH", help="mesh resource files and folders")
    analyze.add_argument("--config", metavar="FILE", help="the control plane's config (trust domain, ...)")
    analyze.add_argument(
        "--failure-threshold",
        choices=["error", "warning", "info"],
        default="error",
        help="the least severity that makes the exit status 1 (default error)",
    )
    analyze.add_argument(
        "--suppress", action="append", default=[], metavar="CODE", help="a code not to report"
    )
    analyze.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="one line per finding, or JSON"
    )
    analyze.set_defaults(func=cmd_analyze)
