"""Control-plane benchmark: one mesh edit to the ACK of 1,000 proxies, and memory per proxy.

Run: ``python bench/control_plane.py [--proxies 1000] [--services 10] [--workloads 20]
[--distinct] [--plaintext]``.

It starts ``meshcore control-plane`` (TLS unless ``--plaintext``, bootstrap tokens) on a
generated mesh: ``--services`` services, each with its ServiceEntry, DestinationRule (two
subsets) and VirtualService, and ``--workloads`` WorkloadEntries spread over them, so that
each proxy's Snapshot carries the routes and clusters of every service. Then
``--simulators`` processes open ``--proxies`` delivery streams between them, over real
sockets, each stream a proxy of one of the workloads (replicas, as in a real mesh: the
control plane translates once per workload): the real client session and framing,
applying nothing and ACKing each push at once.

It prints:

- the control plane's resident memory before and after the proxies connected, and per proxy;
- the time from one mesh edit (a VirtualService shifting traffic; the control plane told
  at once through ``POST /reload``, as ``meshcore mesh reload`` does) to the moment every
  proxy has ACKed the push it caused, the debounce (``--debounce``) included;
- with ``--distinct``, the same again with one workload per proxy: as many translations
  as proxies.

Run it on a quiet machine; it measures one process's work, and quote it with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import free_port

HERE = Path(__file__).resolve().parent
TOKEN = "bench"  # noqa: S105 - the bootstrap token of a throwaway control plane


def rss_bytes(pid: int) -> int:
    """A process's resident memory now, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    msg = "no VmRSS"
    raise RuntimeError(msg)


def mesh_files(directory: Path, services: int, workloads: int, weights: tuple[int, int]) -> None:
    """Write the generated mesh: services with subsets and routes, and workloads spread over them."""
    docs = []
    for i in range(services):
        name = f"svc{i}"
        docs.append(
            textwrap.dedent(
                f"""\
                apiVersion: networking.istio.io/v1
                kind: ServiceEntry
                metadata: {{name: {name}}}
                spec:
                  hosts: [{name}.default.svc.cluster.local]
                  location: MESH_INTERNAL
                  ports: [{{number: 80, name: http, protocol: HTTP}}]
                  workloadSelector: {{labels: {{app: {name}}}}}
                ---
                apiVersion: networking.istio.io/v1
                kind: DestinationRule
                metadata: {{name: {name}}}
                spec:
                  host: {name}
                  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
                """
            )
        )
    docs.extend(
        textwrap.dedent(
            f"""\
            apiVersion: networking.istio.io/v1
            kind: WorkloadEntry
            metadata: {{name: wl{k}}}
            spec: {{address: 10.{k // 62500}.{k // 250 % 250}.{k % 250 + 1}, labels: {{app: svc{k % services}, version: v{1 + k % 2}}}}}
            """
        )
        for k in range(workloads)
    )
    (directory / "services.yaml").write_text("---\n".join(docs))
    routes = "---\n".join(
        textwrap.dedent(
            f"""\
            apiVersion: networking.istio.io/v1
            kind: VirtualService
            metadata: {{name: svc{i}}}
            spec:
              hosts: [svc{i}]
              http:
              - route:
                - {{destination: {{host: svc{i}, subset: v1}}, weight: {weights[0]}}}
                - {{destination: {{host: svc{i}, subset: v2}}, weight: {weights[1]}}}
            """
        )
        for i in range(services)
    )
    (directory / "routes.yaml").write_text(routes)


# -- the simulated proxies ---------------------------------------------------------------------


def run_simulator(args: argparse.Namespace) -> None:
    """Open ``args.count`` delivery streams; print when each round of pushes is all ACKed."""
    import ssl

    import trio

    from meshcore.config import Address
    from meshcore.control.client import DeliveryClosedError, DeliveryStream
    from meshcore.control.protocol import ClientSession, Push
    from meshcore.control.translate import ProxyIdentity

    context = None
    if args.ca:
        context = ssl.create_default_context(cafile=args.ca)
        context.set_alpn_protocols(["h2"])
    first: dict[int, str] = {}  # each proxy's routes version at its first push
    changed: set[int] = set()  # the proxies that have had a push of other routes since
    synced, edited = trio.Event(), trio.Event()
    limiter = trio.CapacityLimiter(
        64
    )  # TLS handshakes a few at a time, as proxies starting over minutes would

    async def proxy(i: int) -> None:
        workload = f"wl{(args.first + i) % args.workloads}"
        identity = ProxyIdentity(
            id=f"sim-{args.first + i}", workload=workload, metadata={"http_proxy": "127.0.0.1:15001"}
        )

        async def on_push(push: Push) -> str | None:
            routes = next((u.version for u in push.updates if u.type_url == "routes"), None)
            if routes is not None:
                first.setdefault(i, routes)
                if routes != first[i]:
                    changed.add(i)
            if len(first) == args.count:
                synced.set()
            if len(changed) == args.count:
                edited.set()
            return None

        while True:
            try:
                async with limiter:
                    stream = await DeliveryStream.connect(
                        Address("127.0.0.1", args.port),
                        ClientSession(identity),
                        token=TOKEN,
                        ssl_context=context,
                        server_name="localhost",
                        ping_interval=60,
                    )
                await stream.run(on_push)
            except (OSError, trio.BrokenResourceError, DeliveryClosedError):
                await trio.sleep(random.uniform(0.1, 1.0))  # noqa: S311 - jitter, not secrets

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(args.count):
                nursery.start_soon(proxy, i)
            await synced.wait()
            print(json.dumps({"round": 1, "at": time.time()}), flush=True)
            await edited.wait()
            print(json.dumps({"round": 2, "at": time.time()}), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- the parent ------------------------------------------------------------------------------


def admin_json(port: int, path: str, method: str = "GET") -> Any:
    """The control plane's admin server's JSON answer (no proxy on the way)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read())


def wait_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """A simulator's next report line."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            found: dict[str, Any] = json.loads(line)
            return found
        if process.poll() is not None:
            msg = f"a simulator exited ({process.returncode})"
            raise RuntimeError(msg)
    msg = "timed out"
    raise RuntimeError(msg)


def measure(args: argparse.Namespace, workloads: int) -> dict[str, float]:  # noqa: PLR0915 - one story, start to end
    """One run: start the control plane and the simulators, connect, edit, and measure."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "mesh").mkdir()
        mesh_files(base / "mesh", args.services, workloads, (100, 0))
        (base / "token").write_text(TOKEN)
        port, admin = free_port(), free_port()
        settings = [
            f"listen: 127.0.0.1:{port}",
            f"admin: 127.0.0.1:{admin}",
            "bootstrap_tokens: [{token_file: token, namespace: default}]",
            f"debounce: {args.debounce}",
            "poll_interval: 0s",
        ]
        ca = None
        if not args.plaintext:
            import trustme

            authority = trustme.CA()
            cert = authority.issue_cert("localhost", "127.0.0.1")
            cert.cert_chain_pems[0].write_to_path(str(base / "cp.pem"))
            cert.private_key_pem.write_to_path(str(base / "cp.key"))
            authority.cert_pem.write_to_path(str(base / "ca.pem"))
            settings.append("tls: {certificate_file: cp.pem, private_key_file: cp.key}")
            ca = str(base / "ca.pem")
        (base / "cp.yaml").write_text("\n".join(settings) + "\n")
        cp = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "meshcore", "control-plane", "-c", str(base / "mesh"), "--config", str(base / "cp.yaml"), "--log-level", "warning", "--log-format", "json"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        sims: list[subprocess.Popen[str]] = []
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    admin_json(admin, "/proxies")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            before = rss_bytes(cp.pid)
            per = -(-args.proxies // args.simulators)
            started = time.time()
            for s in range(args.simulators):
                count = min(per, args.proxies - s * per)
                argv = [
                    sys.executable,
                    __file__,
                    "--role",
                    "sim",
                    "--port",
                    str(port),
                    "--count",
                    str(count),
                    "--first",
                    str(s * per),
                    "--workloads",
                    str(workloads),
                    "--rounds",
                    "2",
                ]
                if ca:
                    argv += ["--ca", ca]
                sims.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))  # noqa: S603 - this script
            synced = max(wait_line(sim, 300)["at"] for sim in sims)
            time.sleep(1)  # let the control plane settle (the last ACKs, garbage)
            after = rss_bytes(cp.pid)
            mesh_files(base / "mesh", args.services, workloads, (0, 100))
            edited = time.time()
            admin_json(admin, "/reload", "POST")
            acked = max(wait_line(sim, 300)["at"] for sim in sims)
            return {
                "connect_and_sync_s": synced - started,
                "edit_to_all_acked_s": acked - edited,
                "rss_before_mb": before / 1e6,
                "rss_after_mb": after / 1e6,
                "kb_per_proxy": (after - before) / 1e3 / args.proxies,
            }
        finally:
            for sim in sims:
                sim.kill()
                sim.wait()
            cp.send_signal(signal.SIGTERM)
            try:
                cp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                cp.kill()


def main() -> int:
    """Parse the options; run as the parent (measuring) or as a simulator."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", default="parent", choices=["parent", "sim"])
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--workloads", type=int, default=20, help="workloads the proxies are replicas of")
    parser.add_argument("--simulators", type=int, default=2, help="processes the proxies are simulated in")
    parser.add_argument("--debounce", default="100ms")
    parser.add_argument(
        "--plaintext", action="store_true", help="no TLS between proxies and the control plane"
    )
    parser.add_argument("--distinct", action="store_true", help="also measure with one workload per proxy")
    # the simulator's own
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ca")
    args = parser.parse_args()
    if args.role == "sim":
        run_simulator(args)
        return 0
    os.environ.pop("HTTP_PROXY", None)
    runs = [("replicas", args.workloads)] + ([("distinct", args.proxies)] if args.distinct else [])
    for label, workloads in runs:
        found = measure(args, workloads)
        tls = "plaintext" if args.plaintext else "TLS"
        print(
            f"{args.proxies} proxies of {workloads} workloads, {args.services} services ({label}, {tls}, debounce {args.debounce}):"
        )
        print(f"  connected and synced in          {found['connect_and_sync_s']:8.2f} s")
        print(f"  one edit to every proxy's ACK    {found['edit_to_all_acked_s']:8.2f} s   (goal: < 2 s)")
        print(
            f"  control plane memory             {found['rss_before_mb']:8.1f} MB -> {found['rss_after_mb']:.1f} MB"
        )
        print(f"  per proxy                        {found['kb_per_proxy']:8.1f} KB   (goal: < 100 KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
