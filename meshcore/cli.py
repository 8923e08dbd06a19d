"""The ``meshcore`` command line: validate configs, list plugins, run a proxy."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio
import yaml

import meshcore
from meshcore.cli_ca import add_ca_parser
from meshcore.cli_demo import add_demo_command
from meshcore.cli_mesh import add_commands as add_mesh_commands
from meshcore.config import CONFIG_SUFFIXES, parse_document
from meshcore.config.loader import parse_documents
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.logs import LEVELS, say
from meshcore.logs import configure as configure_logging
from meshcore.registry import KINDS, Registry, build_registry
from meshcore.runtime.server import serve_proxy
from meshcore.runtime.sources import build_source
from meshcore.runtime.validation import validate_snapshot
from meshcore.runtime.workers import serve_worker_admin, supervise, watch_supervisor

__all__ = ["main"]


def _is_project(path: Path) -> bool:
    """A Python project folder (a plugin package), not a folder of proxy configs."""
    return (path / "pyproject.toml").is_file()


def _config_files(arg: str) -> tuple[list[Path], list[Path]]:
    """A file argument as is; a folder as the config files below it.

    Folders that are Python projects (a plugin package with its pyproject.toml) are not
    searched: their configs may need the plugin installed; name such files explicitly.
    Returns the files and the skipped project folders.
    """
    path = Path(arg)
    if not path.is_dir():
        return [path], []
    if _is_project(path):
        return [], [path]
    files, skipped = [], []
    for found in sorted(path.rglob("*")):
        relative = found.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if any(_is_project(path / parent) for parent in relative.parents if str(parent) != "."):
            continue
        if found.is_dir() and _is_project(found):
            skipped.append(found)
        elif found.is_file() and found.suffix in CONFIG_SUFFIXES:
            files.append(found)
    return files, skipped


def _is_mesh_file(file: Path) -> bool:
    """Whether every document of ``file`` is a mesh resource (``apiVersion`` and ``kind``)."""
    try:
        documents = parse_documents(file.read_text(encoding="utf-8"), str(file))
    except (OSError, UnicodeDecodeError, ConfigError):
        return False  # the proxy config's loader reports it
    return bool(documents) and all(
        isinstance(data, dict) and "apiVersion" in data and "kind" in data for data, _ in documents
    )


def _validate_mesh_file(file: Path, registry: Registry, *, quiet: bool) -> bool:
    """Check a file of mesh resources as the control plane would load it; whether it is good."""
    from meshcore.control import load_resources  # noqa: PLC0415 - only for mesh files

    try:
        resources = load_resources([file], registry)
    except ConfigError as err:
        for problem in err.problems:
            print(problem)
        return False
    if not quiet:
        print(f"{file}: ok (mesh resources: {len(resources)}; `meshcore analyze` checks them together)")
    return True


def _report_plugin_problems(registry: Registry, out: TextIO) -> None:
    for problem in registry.problems:
        say(f"plugin problem: {problem}", out)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate config files; one line per problem; exit 1 if any."""
    registry = build_registry()
    _report_plugin_problems(registry, sys.stderr)
    check = functools.partial(validate_snapshot, registry=registry)
    failed = False
    checked = 0
    for arg in args.files:
        files, skipped = _config_files(arg)
        for project in skipped:
            print(
                f"{project}: skipped, a Python project (name its config files to validate them)",
                file=sys.stderr,
            )
        if not files and not skipped:
            print(
                f"{arg}: no config files ({', '.join('*' + s for s in CONFIG_SUFFIXES)}) found",
                file=sys.stderr,
            )
            failed = True
        for file in files:
            checked += 1
            if _is_mesh_file(file):
                failed = not _validate_mesh_file(file, registry, quiet=args.quiet) or failed
                continue
            try:
                snapshot = meshcore.load_snapshot(file, registry, check=check)
            except ConfigError as err:
                failed = True
                for problem in err.problems:
                    print(problem)
                continue
            if not args.quiet:
                print(f"{file}: ok (version {snapshot.version})")
    return 1 if failed or checked == 0 else 0


def cmd_plugins(_args: argparse.Namespace) -> int:
    """List every plugin, its distribution and version, and what it provides."""
    registry = build_registry()
    checkers = {impl.plugin_name for impl in registry.hook.meshcore_validate_snapshot.get_hookimpls()}
    for info in registry.plugins.values():
        print(f"{info.name}  ({info.origin})")
        if info.name in checkers:
            print("    checks Snapshots before they are applied (meshcore_validate_snapshot)")
        for kind in KINDS:
            for item in info.provides:
                item_kind, _, name = item.partition(":")
                if item_kind == kind:
                    found = registry.get(kind, name)
                    description = f" - {found.description}" if found is not None and found.description else ""
                    print(f"    {kind.replace('_', ' ')}: {name}{description}")
    _report_plugin_problems(registry, sys.stdout)
    return 1 if registry.problems else 0


def _source_choice(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The config source the command line names, and its config section as plain data.

    ``-c FILE`` is the ``file`` source; ``--source NAME`` any registered one, configured by
    ``--source-config FILE`` (a YAML, TOML or JSON mapping) and ``--source-arg KEY=VALUE``
    (each value read as a YAML scalar, so ``2s``, ``10`` and ``true`` mean what they say).

    Raises:
        ConfigError: the arguments do not name a source, or its config cannot be read.
    """
    if args.config is not None:
        if args.source not in (None, "file"):
            message = "-c FILE runs the file source; give the other source's config with --source-config"
            raise ConfigError([ConfigProblem(path="source", message=message)])
        name, data = "file", {"path": args.config, "poll_interval": args.poll_interval}
    elif args.source is None:
        raise ConfigError([ConfigProblem(path="source", message="give -c FILE or --source NAME")])
    else:
        name, data = args.source, {}
    if args.source_config is not None:
        data.update(_source_config_file(args.source_config))
    for arg in args.source_arg:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            message = f"--source-arg must be KEY=VALUE, got {arg!r}"
            raise ConfigError([ConfigProblem(path=f"source.{name}", message=message)])
        data[key] = _scalar(value)
    return name, data


def _source_config_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "is not UTF-8 text"
        raise ConfigError([ConfigProblem(path="", message=f"cannot read: {reason}", file=path)]) from err
    data, _ = parse_document(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        message = f"a source config must be a mapping, got {type(data).__name__}"
        raise ConfigError([ConfigProblem(path="", message=message, file=path)])
    return data


def _scalar(text: str) -> Any:
    """A ``--source-arg`` value: a YAML scalar (``10``, ``true``, ``2s``), else the text itself."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def _print_problems(err: ConfigError) -> None:
    for problem in err.problems:
        say(str(problem))


def cmd_proxy(args: argparse.Namespace) -> int:
    """Run a proxy from a config source until SIGTERM/SIGINT (drain); SIGHUP reloads."""
    configure_logging(args.log_level, fmt=args.log_format)
    registry = build_registry()
    _report_plugin_problems(registry, sys.stderr)
    try:
        name, source_config = _source_choice(args)
        source = build_source(registry, name, source_config)
    except ConfigError as err:
        _print_problems(err)
        return 1
    if args.workers > 1:
        return run_workers(args, source)

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def run_proxy(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await serve_proxy(
                    source,
                    registry,
                    handle_signals=True,
                    reuse_port=args.reuse_port,
                    admin=not args.no_admin and args.admin_fd is None,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # drained: the worker's private admin goes too

            proxy = await nursery.start(run_proxy)
            if args.admin_fd is not None:  # a worker of --workers N: the parent asks on this socket
                await nursery.start(serve_worker_admin, proxy, args.admin_fd)
            if args.lifeline_fd is not None:  # ... and stops when the parent is gone
                nursery.start_soon(watch_supervisor, args.lifeline_fd)

    failed = False
    try:
        trio.run(main)
    except* ConfigError as group:
        # The first Snapshot was rejected (a bad file, a port in use): say why, exit 1.
        for leaf in _leaves(group):
            for problem in getattr(leaf, "problems", ()):
                say(str(problem))
        failed = True
    return 1 if failed else 0


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    for err in group.exceptions:
        if isinstance(err, BaseExceptionGroup):
            yield from _leaves(err)
        else:
            yield err


def run_workers(args: argparse.Namespace, source: Any) -> int:
    """Run ``--workers N`` processes sharing the listeners (SO_REUSEPORT)."""
    load = getattr(source, "load", None)
    if load is not None:
        try:
            load()  # fail fast, once, before starting N processes (the file source can)
        except ConfigError as err:
            _print_problems(err)
            return 1
    argv = [sys.executable, "-m", "meshcore", "proxy", "--workers", "1", "--reuse-port"]
    if args.config is not None:
        argv += ["-c", args.config, "--poll-interval", str(args.poll_interval)]
    if args.source is not None:
        argv += ["--source", args.source]
    if args.source_config is not None:
        argv += ["--source-config", args.source_config]
    for arg in args.source_arg:
        argv += ["--source-arg", arg]
    argv += ["--log-level", args.log_level, "--log-format", args.log_format, "--no-admin"]
    try:
        return trio.run(supervise, argv, args.workers)
    except ConfigError as err:  # the admin address is taken: said in one line
        _print_problems(err)
        return 1


def cmd_upstream(args: argparse.Namespace) -> int:
    """Run the sample upstream (echo, status, bytes, delay, ...) until interrupted."""
    from meshcore.testing.upstreams import serve_upstream  # noqa: PLC0415 - only this command

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                functools.partial(serve_upstream, args.host, args.port, name=args.name)
            )
            print(f"sample upstream listening on {host}:{port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
    return 0


def cmd_check_routes(args: argparse.Namespace) -> int:
    """Check a route table against expected routing: one line per failing case.

    Exits 0 if every case passes, 1 if some fail, 2 if the config or the cases are unusable.
    """
    from meshcore.testing.routecheck import check_routes, load_cases  # noqa: PLC0415 - only this command

    registry = build_registry()
    _report_plugin_problems(registry, sys.stderr)
    try:
        snapshot = meshcore.load_snapshot(args.config, registry)
        cases = load_cases(args.tests, registry)
        failures = check_routes(snapshot, cases, route_config=args.route_config, registry=registry)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    except LookupError as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    for failure in failures:
        print(failure)
    print(f"{len(cases) - len(failures)} of {len(cases)} route cases passed", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``meshcore``."""
    parser = argparse.ArgumentParser(
        prog="meshcore",
        description="meshcore: a service mesh whose every behaviour is a plugin.",
    )
    parser.add_argument("--version", action="version", version=f"meshcore {meshcore.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check config files and report every problem",
        description="Check config files (YAML, TOML, JSON; directories are searched). "
        "Prints one line per problem: file:line: field.path: reason. Exits 1 if any.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="config files or directories")
    validate.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    validate.set_defaults(func=cmd_validate)

    check_routes = commands.add_parser(
        "check-routes",
        help="check a route table against expected routing (like Envoy's route table check tool)",
        description="Route each case's request with the config's route table and compare the route, "
        "cluster, and the path, host and headers sent upstream with the case's expectations. Prints one "
        "line per failing case: file:line: case: field: expected ..., got .... Exits 0 if every case "
        "passes, 1 if some fail, 2 if the config or the cases file is unusable.",
    )
    check_routes.add_argument("-c", "--config", required=True, metavar="FILE", help="the proxy config file")
    check_routes.add_argument(
        "-t", "--tests", required=True, metavar="CASES", help="the cases file (YAML, JSON or TOML)"
    )
    check_routes.add_argument(
        "--route-config", metavar="NAME", help="the route config to check (default: the only one)"
    )
    check_routes.set_defaults(func=cmd_check_routes)

    plugins = commands.add_parser(
        "plugins",
        help="list plugins and what they provide",
        description="List every plugin meshcore found (its own first, then the `meshcore` entry points of "
        "installed distributions), with its distribution and version and the filters, load-balancing "
        "policies and config sources it provides; then the problems of plugins that failed to load. "
        "Exits 1 if there were any. MESHCORE_DISABLE_PLUGIN_AUTOLOAD=1 skips installed plugins.",
    )
    plugins.set_defaults(func=cmd_plugins)

    proxy = commands.add_parser(
        "proxy",
        help="run a proxy from a config file or another config source",
        description="Run a proxy fed by a config source: a config file (-c FILE), or any registered "
        "source (--source NAME, configured by --source-config and --source-arg). SIGTERM/SIGINT drain "
        "in-flight requests and exit 0; SIGHUP asks the source to reload (the file source also reloads "
        "when the file changes). A bad config is logged and the old one keeps serving. SIGUSR1 reopens "
        "access-log files (after logrotate moved them).",
    )
    proxy.add_argument("-c", "--config", metavar="FILE", help="the config file (the file source)")
    proxy.add_argument(
        "--source", metavar="NAME", help="the config source to run (see `meshcore plugins`); default: file"
    )
    proxy.add_argument(
        "--source-config", metavar="FILE", help="the source's config section, a YAML, TOML or JSON file"
    )
    proxy.add_argument(
        "--source-arg",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="one field of the source's config (repeatable; overrides --source-config)",
    )
    proxy.add_argument("--workers", type=int, default=1, help="processes sharing the listeners (default 1)")
    proxy.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    proxy.add_argument("--no-admin", action="store_true", help=argparse.SUPPRESS)
    proxy.add_argument("--admin-fd", type=int, default=None, help=argparse.SUPPRESS)
    proxy.add_argument("--lifeline-fd", type=int, default=None, help=argparse.SUPPRESS)
    proxy.add_argument("--poll-interval", type=float, default=1.0, help="seconds between config file checks")
    proxy.add_argument("--log-level", default="info", choices=sorted(LEVELS), help="the least level logged")
    proxy.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="log lines as JSON, or for people; auto: console on a terminal, else JSON",
    )
    proxy.set_defaults(func=cmd_proxy)

    upstream = commands.add_parser(
        "upstream",
        help="run the sample upstream server (for demos and tests)",
        description="Run the sample HTTP/1.1 upstream that the demo and the tests use, until interrupted.\n"
        "Every answer carries x-upstream: NAME.",
        epilog="It answers by path:\n"
        "  /echo            streams the request body back (same length, chunk by chunk)\n"
        "  /status/NNN      answers with status NNN and no body\n"
        "  /bytes/N         N bytes of x\n"
        "  /delay/MS        answers (as any other path) after MS milliseconds\n"
        "  /chunks/N        N chunks of 1 KiB with chunked encoding, flushed one by one\n"
        "  /reset/N         promises more, sends N body bytes, then resets the connection\n"
        "  /anything/else   200 with a JSON description of the request (method, path, headers, body "
        "size, name)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upstream.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    upstream.add_argument(
        "--port", type=int, default=8080, help="the port to listen on (default 8080; 0: any)"
    )
    upstream.add_argument("--name", default="upstream", help="sent back in the x-upstream header")
    upstream.set_defaults(func=cmd_upstream)

    add_demo_command(commands)
    add_ca_parser(commands)
    add_mesh_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshcore`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
