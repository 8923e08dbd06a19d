"""Nothing a config holds can take a proxy down: each way it used to, or could, rejects instead.

A missing CA file (which crashed a proxy at start and made a running one exit 1 on
reload), a file that vanished between validation and apply, a plugin's hook or commit
that raises, a config source that fails after it started. The property-based test in
test_apply_property.py looks for the ways nobody thought of.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trustme
from _proxy_process import start_proxy_process

import meshcore
from meshcore.runtime import sources
from meshcore.testing import UpstreamFactory, fetch, http_proxy_config, open_proxies

TIMEOUT = 20


def with_cluster_tls(config: dict[str, Any], ca_file: str) -> dict[str, Any]:
    config["clusters"][0]["tls"] = {"ca_file": ca_file}
    return config


# -- the CA file that is not there -------------------------------------------------------------


def test_a_missing_ca_file_at_start_is_an_error_per_problem_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "proxy.json"
    config.write_text(json.dumps(with_cluster_tls(http_proxy_config(["127.0.0.1:1"]), "/nonexistent/ca.pem")))
    done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "meshcore", "proxy", "-c", str(config), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert problems, done.stderr
    assert all(line.startswith(f"{config}: clusters[0].tls") for line in problems), problems


async def test_a_running_proxy_refuses_a_reload_with_a_missing_ca_file_and_keeps_serving(
    tmp_path: Path, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream(name="kept")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            good = http_proxy_config([upstream.endpoint])
            proxy = await start_proxy_process(nursery, good, tmp_path, args=("--poll-interval", "0.05"))
            assert (await fetch(proxy.address, "/")).header("x-upstream") == "kept"
            bad = with_cluster_tls(http_proxy_config([upstream.endpoint]), "/nonexistent/ca.pem")
            (tmp_path / "proxy.json").write_text(json.dumps(bad))
            rejected = await proxy.wait_for("config_rejected")
            assert any("clusters[0].tls" in p for p in rejected["problems"]), rejected
            assert (await fetch(proxy.address, "/")).header("x-upstream") == "kept"
            assert proxy.process.returncode is None
            assert not [e for e in proxy.logs if "exception" in e or e.get("event") == "<not JSON>"]
            nursery.cancel_scope.cancel()


class Vanisher:
    """Deletes a file while the Snapshot is checked: after validation found it, before it is used."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @meshcore.hookimpl
    def meshcore_validate_snapshot(self, snapshot: meshcore.Snapshot) -> list[str]:
        if any(c.tls is not None for c in snapshot.clusters):
            self.path.unlink(missing_ok=True)
        return []


async def test_a_file_that_vanished_since_validation_rejects_the_snapshot(
    tmp_path: Path, meshcore_upstream: UpstreamFactory
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # Plugins' checks run after meshcore's own (built-ins first): the file is gone by the build.
    registry = meshcore.build_registry(autoload=False, plugins=[("vanisher", Vanisher(ca_file))])
    upstream = await meshcore_upstream(name="kept")
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(http_proxy_config([upstream.endpoint]))
            with pytest.raises(meshcore.ConfigError) as caught:
                proxy.apply(with_cluster_tls(http_proxy_config([upstream.endpoint]), str(ca_file)))
            (problem,) = caught.value.problems
            assert problem.path == "clusters[0].tls"
            assert problem.message.startswith("cannot build the TLS context: ")
            assert "No such file or directory" in problem.message
            assert caught.value.stage == "apply"
            assert (await proxy.client().get("/")).header("x-upstream") == "kept"
            assert proxy.stats.value("config_snapshots_rejected", reason="apply") == 1


# -- plugins that raise ------------------------------------------------------------------------


class Watcher:
    """A plugin whose ``meshcore_snapshot_applied`` refuses Snapshots without a cluster "ok"."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @meshcore.hookimpl
    def meshcore_snapshot_applied(self, snapshot: meshcore.Snapshot) -> None:
        self.seen.append(snapshot.version)
        if snapshot.cluster("ok") is None:
            msg = "no cluster 'ok'"
            raise ValueError(msg)


async def test_a_snapshot_applied_hook_that_raises_rejects_the_snapshot(
    meshcore_upstream: UpstreamFactory,
) -> None:
    watcher = Watcher()
    registry = meshcore.build_registry(autoload=False, plugins=[("watcher", watcher)])
    upstream = await meshcore_upstream(name="kept")
    good = http_proxy_config([upstream.endpoint])
    good["clusters"].append({"name": "ok"})
    with trio.fail_after(TIMEOUT):
        async with open_proxies(registry) as proxies:
            proxy = await proxies(good)
            with pytest.raises(meshcore.ConfigError) as caught:
                proxy.apply(http_proxy_config(["127.0.0.1:1"]))
            (problem,) = caught.value.problems
            assert problem.message.startswith("plugin 'watcher' (")
            assert problem.message.endswith("): meshcore_snapshot_applied raised ValueError: no cluster 'ok'")
            assert caught.value.stage == "apply"
            assert len(watcher.seen) == 2  # asked, and it said no
            assert (await proxy.client().get("/")).header("x-upstream") == "kept"


class FollowerPlugin:
    """A network filter whose commit, after a successful prepare, raises (a plugin bug)."""

    @meshcore.hookimpl
    def meshcore_network_filters(self) -> list[meshcore.NetworkFilterType]:
        return [meshcore.NetworkFilterType(name="follower", factory=Follower)]


class Follower:
    def __init__(self, _config: None, _context: meshcore.FilterContext) -> None:
        pass

    def prepare_snapshot(self, snapshot: meshcore.Snapshot) -> Any:
        def commit() -> None:
            msg = f"cannot install {snapshot.version}"
            raise RuntimeError(msg)

        return commit

    async def __call__(self, conn: meshcore.Connection, call_next: meshcore.NetworkHandler) -> None:
        await call_next(conn)


async def test_a_commit_that_raises_is_logged_and_the_rest_of_the_snapshot_goes_live(
    meshcore_upstream: UpstreamFactory,
) -> None:
    registry = meshcore.build_registry(autoload=False, plugins=[("follower-plugin", FollowerPlugin())])
    upstream = await meshcore_upstream(name="u")

    def config(body: str) -> dict[str, Any]:
        direct = {"name": "d", "match": {"path": "/d"}, "direct_response": {"status": 200, "body": body}}
        out = http_proxy_config([upstream.endpoint], routes=[direct])
        chain = out["listeners"][0]["filter_chains"][0]
        chain["filters"] = ["follower", *chain["filters"]]
        return out

    with trio.fail_after(TIMEOUT), structlog.testing.capture_logs() as logs:
        async with open_proxies(registry) as proxies:
            proxy = await proxies(config("v1"))
            proxy.apply(config("v2"))  # a route change: the chain is kept, the follower follows
            assert (await proxy.client().get("/d")).text == "v2"
    (failed,) = [e for e in logs if e["event"] == "snapshot_commit_failed"]
    assert failed["log_level"] == "error"


# -- sources that fail -------------------------------------------------------------------------


class FlakySource:
    """Delivers its Snapshot, then fails once; run again, it delivers and stays."""

    def __init__(self, snapshot: meshcore.Snapshot) -> None:
        self.snapshot = snapshot
        self.runs = 0
        self.rerun = trio.Event()

    async def run(self, sink: meshcore.ConfigSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        sink.apply(self.snapshot)
        task_status.started()
        if self.runs == 1:
            msg = "the control plane went away badly"
            raise ConnectionError(msg)
        self.rerun.set()
        await trio.sleep_forever()

    def reload(self) -> None:
        """Nothing to reload."""


async def test_a_source_that_fails_after_starting_is_run_again_and_the_proxy_keeps_serving(
    meshcore_upstream: UpstreamFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "RESTART_DELAYS", (0.01,))
    registry = meshcore.build_registry(autoload=False)
    upstream = await meshcore_upstream(name="kept")
    source = FlakySource(meshcore.snapshot_from_data(http_proxy_config([upstream.endpoint]), registry))
    with trio.fail_after(TIMEOUT), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(
                lambda task_status: meshcore.serve_proxy(source, registry, task_status=task_status)
            )
            await source.rerun.wait()
            assert (await fetch(proxy.address("ingress"), "/")).header("x-upstream") == "kept"
            proxy.drain()
    (failed,) = [e for e in logs if e["event"] == "config_source_failed"]
    assert (failed["source"], failed["restart_in"]) == ("FlakySource", 0.01)
    assert source.runs == 2


async def test_a_source_that_ends_without_a_snapshot_stops_the_start_with_a_config_error() -> None:
    class Silent:
        async def run(
            self, sink: meshcore.ConfigSink, *, task_status: Any = trio.TASK_STATUS_IGNORED
        ) -> None:
            pass

        def reload(self) -> None:
            """Nothing to reload."""

    registry = meshcore.build_registry(autoload=False)
    with trio.fail_after(TIMEOUT), pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: meshcore.serve_proxy(Silent(), registry, task_status=task_status)
            )
    assert caught.group_contains(
        meshcore.ConfigError, match="the config source ended without delivering a Snapshot"
    )
