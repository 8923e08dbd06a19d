"""The ``meshcore`` command line: validate configs, list plugins, run a proxy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import meshcore
from meshcore.config import CONFIG_SUFFIXES
from meshcore.errors import ConfigError
from meshcore.registry import KINDS, Registry, build_registry

__all__ = ["main"]

_SKIPPED_FILES = frozenset({"pyproject.toml"})


def _config_files(arg: str) -> Iterator[Path]:
    """A file argument as is; a directory as the config files below it."""
    path = Path(arg)
    if not path.is_dir():
        yield path
        return
    for found in sorted(path.rglob("*")):
        hidden = any(part.startswith(".") for part in found.relative_to(path).parts)
        if (
            found.is_file()
            and found.suffix in CONFIG_SUFFIXES
            and found.name not in _SKIPPED_FILES
            and not hidden
        ):
            yield found


def _report_plugin_problems(registry: Registry, out: TextIO) -> None:
    for problem in registry.problems:
        print(f"plugin problem: {problem}", file=out)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate config files; one line per problem; exit 1 if any."""
    registry = build_registry()
    _report_plugin_problems(registry, sys.stderr)
    failed = False
    checked = 0
    for arg in args.files:
        files = list(_config_files(arg))
        if not files:
            print(
                f"{arg}: no config files ({', '.join('*' + s for s in CONFIG_SUFFIXES)}) found",
                file=sys.stderr,
            )
            failed = True
        for file in files:
            checked += 1
            try:
                snapshot = meshcore.load_snapshot(file, registry)
            except ConfigError as err:
                failed = True
                for problem in err.problems:
                    print(problem)
                continue
            extra = [
                msg for msgs in registry.hook.meshcore_validate_snapshot(snapshot=snapshot) for msg in msgs
            ]
            for msg in extra:
                print(f"{file}: {msg}")
            failed = failed or bool(extra)
            if not args.quiet and not extra:
                print(f"{file}: ok (version {snapshot.version})")
    return 1 if failed or checked == 0 else 0


def cmd_plugins(_args: argparse.Namespace) -> int:
    """List every plugin, its distribution and version, and what it provides."""
    registry = build_registry()
    for info in registry.plugins.values():
        print(f"{info.name}  ({info.origin})")
        for kind in KINDS:
            for item in info.provides:
                item_kind, _, name = item.partition(":")
                if item_kind == kind:
                    found = registry.get(kind, name)
                    description = f" - {found.description}" if found is not None and found.description else ""
                    print(f"    {kind.replace('_', ' ')}: {name}{description}")
    _report_plugin_problems(registry, sys.stdout)
    return 1 if registry.problems else 0


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

    plugins = commands.add_parser("plugins", help="list plugins and what they provide")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``meshcore`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
