"""``meshcore demo``: a whole service mesh on this machine, with a live dashboard, in one command.

``meshcore demo`` starts a control plane, the four applications of a Bookinfo-style shop
(six workloads) each behind its own sidecar, and traffic (:mod:`meshcore.demo`), prints
what runs and three things to try, and stops everything on Ctrl-C or SIGTERM (exit 0).
``meshcore demo shift|break|fix|deny`` edit the running demo's mesh files and have its
control plane apply them at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog
import trio

from meshcore.demo.layout import Layout, PortInUseError, render_mesh
from meshcore.errors import ConfigError

__all__ = ["add_demo_command"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when stopped (Ctrl-C, SIGTERM, or after ``--duration``)."""
    from meshcore.demo.run import DemoOptions, TrafficCounts, run_demo  # noqa: PLC0415 - only a run needs trio and the control plane

    layout = _layout(args, check=not args.print_config)
    if layout is None:
        return 1
    if args.print_config:
        print("".join(f"---\n# {name}\n{text}" for name, text in render_mesh(layout).items()), end="")
        return 0
    options = DemoOptions(
        layout=layout,
        duration=args.duration,
        rate=args.rate,
        workdir=Path(args.workdir).resolve() if args.workdir else None,
    )

    counts = TrafficCounts()

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        print("\nstopping...", flush=True)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(stop_on_signal)
            await run_demo(options, counts)
            nursery.cancel_scope.cancel()
        print(counts.line(), flush=True)
        for reason, n in sorted(counts.reasons.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {n} x {reason}")

    failed = False
    try:
        trio.run(main)
    except* (RuntimeError, ConfigError, OSError) as group:
        for err in group.exceptions:
            print(f"meshcore demo: {err}", file=sys.stderr)
        failed = True
    finally:
        structlog.reset_defaults()
    if failed:
        return 1
    print("demo stopped: every process it started has exited")
    return 0


def _layout(args: argparse.Namespace, *, check: bool = True) -> Layout | None:
    try:
        return Layout.allocate(args.port_base, args.dashboard_port, check=check)
    except PortInUseError as err:
        print(
            f"meshcore demo: {err} (choose other ports with --port-base / --dashboard-port)", file=sys.stderr
        )
        return None


# -- the guided tour: edits to the running demo's mesh ----------------------------------------------


def _running(args: argparse.Namespace) -> tuple[Path, str] | None:
    from meshcore.demo.run import state_file  # noqa: PLC0415 - only the tour commands

    path = state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        print("meshcore demo: no demo is running (start one with `meshcore demo`)", file=sys.stderr)
        return None
    return Path(args.mesh or state["mesh"]), args.admin or state["admin"]


def _reload(admin: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{admin}/reload", method="POST")
    try:
        with opener.open(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        answer = json.loads(err.read() or b"{}")
    except (urllib.error.URLError, OSError) as err:
        print(f"meshcore demo: cannot reach the demo's control plane at {admin}: {err}", file=sys.stderr)
        return 2
    if answer.get("accepted"):
        print(f"the control plane took it (mesh version {answer['version']}); watch the dashboard")
        return 0
    print("the control plane REFUSED the edit, the mesh before it is still served:")
    for problem in answer.get("problems", [answer.get("error", "")]):
        print(f"  {problem}")
    return 1


def _edit(args: argparse.Namespace, change: Any) -> int:
    from meshcore.demo import layout  # noqa: PLC0415 - only the tour commands

    running = _running(args)
    if running is None:
        return 1
    mesh, admin = running
    try:
        print(change(layout, mesh))
    except (LookupError, OSError, ValueError) as err:
        print(f"meshcore demo: {err}", file=sys.stderr)
        return 1
    return _reload(admin)


def cmd_shift(args: argparse.Namespace) -> int:
    """Give a subset a share of its service's traffic."""
    if not 0 <= args.percent <= 100:  # noqa: PLR2004 - a percentage
        print(f"meshcore demo: the percentage must be 0 to 100, got {args.percent}", file=sys.stderr)
        return 1
    return _edit(args, lambda layout, mesh: layout.shift(mesh, args.service, args.subset, args.percent))


def cmd_break(args: argparse.Namespace) -> int:
    """Abort a share of the calls to a service."""
    return _edit(args, lambda layout, mesh: layout.set_abort(mesh, args.service, args.percent))


def cmd_fix(args: argparse.Namespace) -> int:
    """Stop aborting calls to a service."""
    return _edit(args, lambda layout, mesh: layout.set_abort(mesh, args.service, 0))


def cmd_deny(args: argparse.Namespace) -> int:
    """Cut a caller off from a service (or, with --undo, let it call again)."""
    return _edit(args, lambda layout, mesh: layout.deny(mesh, args.caller, args.service, restore=args.undo))


def add_demo_command(commands: Any) -> None:
    """Add ``meshcore demo`` and its tour commands to ``meshcore``'s sub-command parser."""
    demo = commands.add_parser(
        "demo",
        help="run a whole mesh on this machine (a control plane, six sidecars, their apps, traffic) with a live "
        "dashboard",
        description="Start a Bookinfo-style application on loopback, each workload behind its own sidecar, "
        "configured by a control plane whose admin server serves a live dashboard; send it traffic; print "
        "what runs and three things to try. Ctrl-C (or SIGTERM) stops every process, exit 0.",
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long (default: run until Ctrl-C)"
    )
    demo.add_argument(
        "--port-base", type=int, metavar="PORT", help="use ports PORT, PORT+1, ... (default: free ports)"
    )
    demo.add_argument(
        "--dashboard-port", type=int, metavar="PORT", help="the dashboard's port (default: free)"
    )
    demo.add_argument(
        "--rate", type=float, default=10.0, metavar="RPS", help="front page requests a second (10)"
    )
    demo.add_argument(
        "--workdir", metavar="DIR", help="where the mesh files and logs go (default: a new temp dir)"
    )
    demo.add_argument(
        "--print-config",
        action="store_true",
        help="print the demo's mesh resources (Istio-style YAML) and exit",
    )
    demo.set_defaults(func=cmd_demo)
    tour = demo.add_subparsers(
        dest="demo_command",
        metavar="COMMAND",
        help="with no command, run the demo; the commands below change the running demo's mesh",
    )
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument(
        "--admin", metavar="HOST:PORT", help="the demo's control plane admin (default: the running demo's)"
    )
    running.add_argument("--mesh", metavar="DIR", help="the demo's mesh folder (default: the running demo's)")
    shift = tour.add_parser("shift", parents=[running], help="give a subset a share of its service's traffic")
    shift.add_argument("service", help="the service (reviews)")
    shift.add_argument("subset", help="the subset (v3)")
    shift.add_argument("percent", type=int, help="its share, 0 to 100; the others share the rest pro rata")
    shift.set_defaults(func=cmd_shift)
    brk = tour.add_parser("break", parents=[running], help="abort a share of the calls to a service with 503")
    brk.add_argument("service", help="the service (ratings)")
    brk.add_argument("--percent", type=float, default=50.0, help="the share of calls aborted (50)")
    brk.set_defaults(func=cmd_break)
    fix = tour.add_parser("fix", parents=[running], help="undo `break`")
    fix.add_argument("service", help="the service (ratings)")
    fix.set_defaults(func=cmd_fix)
    deny = tour.add_parser("deny", parents=[running], help="cut a caller off from a service")
    deny.add_argument("caller", help="the calling workload (productpage)")
    deny.add_argument("service", help="the service it may no longer call (details)")
    deny.add_argument("--undo", action="store_true", help="let it call every service again")
    deny.set_defaults(func=cmd_deny)
