"""Config sources are plugins: chosen by name from the CLI and the public API, fed deltas.

The third-party source is ``delta_dir`` from tests/testplugins, a real distribution that pip
installs (the ``testplugins_site`` fixture): a Snapshot from ``snapshot.yaml``, then every
``delta-*.json`` that appears, each answered with ``.ack`` (the version now live) or
``.nack`` (the problems), as a control-plane client answers a push.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from _distributions import env_with, run
from _proxy_process import start_proxy_process

import meshcore
from meshcore.runtime.sources import build_source
from meshcore.testing import UpstreamFactory, fetch, http_proxy_config

REGISTRY = meshcore.build_registry(autoload=False)


def write_snapshot(directory: Path, endpoint: str) -> None:
    config = http_proxy_config([endpoint], listener={"address": "127.0.0.1:0"})
    (directory / "snapshot.yaml").write_text(yaml.safe_dump(config))


def write_delta(directory: Path, name: str, delta: dict[str, Any]) -> Path:
    path = directory / f"delta-{name}.json"
    temporary = directory / f".{name}.tmp"  # whole or not at all, as a careful writer does
    temporary.write_text(json.dumps(delta))
    temporary.rename(path)
    return path


# -- choosing a source by name -----------------------------------------------------------------


def test_an_unknown_source_is_named_with_the_known_ones() -> None:
    with pytest.raises(meshcore.ConfigError) as caught:
        build_source(REGISTRY, "fil")
    assert str(caught.value) == "source: unknown config source 'fil' (known: control_plane, file)"


def test_a_source_config_is_structured_with_field_paths() -> None:
    with pytest.raises(meshcore.ConfigError) as caught:
        build_source(REGISTRY, "file", {"poll_interval": "soon", "pth": "x"})
    assert [str(p) for p in caught.value.problems] == [
        "source.file.pth: unknown field; did you mean 'path'?",
        "source.file.path: is required",
        'source.file.poll_interval: must be a duration such as "250ms" or "2s", got \'soon\'',
    ]


def test_a_source_whose_factory_fails_is_named() -> None:
    class Broken:
        @meshcore.hookimpl
        def meshcore_config_sources(self) -> list[meshcore.ConfigSourceType]:
            def factory(_config: None, _registry: meshcore.Registry) -> meshcore.ConfigSource:
                msg = "no credentials"
                raise RuntimeError(msg)

            return [meshcore.ConfigSourceType(name="broken", factory=factory)]

    registry = meshcore.build_registry(autoload=False, plugins=[("broken-source", Broken())])
    with pytest.raises(meshcore.ConfigError) as caught:
        build_source(registry, "broken")
    (problem,) = caught.value.problems
    assert problem.path == "source.broken"
    assert problem.message.startswith("config source 'broken' of plugin 'broken-source' (")
    assert problem.message.endswith(") failed to start: RuntimeError: no credentials")


async def test_serve_proxy_runs_a_source_chosen_by_name(
    tmp_path: Path, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream(name="by-name")
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(http_proxy_config([upstream.endpoint])))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(
                lambda task_status: meshcore.serve_proxy(
                    "file", REGISTRY, source_config={"path": str(config)}, task_status=task_status
                )
            )
            response = await fetch(proxy.address("ingress"), "/")
            proxy.drain()
    assert response.header("x-upstream") == "by-name"


# -- a third-party source, in-process, through the public API ----------------------------------


@pytest.mark.usefixtures("installed_testplugins")
async def test_a_third_party_source_from_the_api_delivers_deltas_and_gets_nacks(
    tmp_path: Path, meshcore_upstream: UpstreamFactory
) -> None:
    registry = meshcore.build_registry()
    owner = registry.owner("config_source", "delta_dir")
    assert owner is not None
    assert owner.origin == "meshcore-testplugins 0.1.0"

    first = await meshcore_upstream(name="first")
    second = await meshcore_upstream(name="second")
    write_snapshot(tmp_path, first.endpoint)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(
                lambda task_status: meshcore.serve_proxy(
                    "delta_dir", registry, source_config={"directory": str(tmp_path)}, task_status=task_status
                )
            )
            address = proxy.address("ingress")
            assert (await fetch(address, "/")).header("x-upstream") == "first"

            ok = write_delta(tmp_path, "001", {"version": "v1", "endpoints": {"backend": [second.endpoint]}})
            await proxy.wait_applied("v1")
            assert ok.with_name(ok.name + ".ack").read_text() == "v1\n"
            assert (await fetch(address, "/")).header("x-upstream") == "second"

            bad = write_delta(tmp_path, "002", {"version": "v2", "removed_clusters": ["backend"]})
            await proxy.wait_rejected(1)
            assert bad.with_name(bad.name + ".nack").read_text() == (
                "route_configs[0].virtual_hosts[0].routes[0].cluster: unknown cluster 'backend' "
                "(defined: none defined)\n"
            )
            garbled = write_delta(tmp_path, "003", {"version": "v3", "endpoints": {"backend": ["nowhere"]}})
            await proxy.wait_rejected(2)
            assert garbled.with_name(garbled.name + ".nack").read_text() == (
                f"{garbled}: endpoints.backend[0].address: must be an address \"host:port\", got 'nowhere'\n"
            )
            assert proxy.snapshot.version == "v1"
            assert (await fetch(address, "/")).header("x-upstream") == "second"
            proxy.drain()


async def test_the_same_source_registered_in_process(
    tmp_path: Path, meshcore_upstream: UpstreamFactory, testplugins_module: types.ModuleType
) -> None:
    """A source plugin registered with ``build_registry(plugins=...)``, as tests of a plugin do."""
    registry = meshcore.build_registry(autoload=False, plugins=[("testplugins", testplugins_module)])
    upstream = await meshcore_upstream(name="only")
    write_snapshot(tmp_path, "127.0.0.1:1")
    source = build_source(registry, "delta_dir", {"directory": str(tmp_path), "poll_interval": 0})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(
                lambda task_status: meshcore.serve_proxy(source, registry, task_status=task_status)
            )
            write_delta(tmp_path, "001", {"version": "v1", "endpoints": {"backend": [upstream.endpoint]}})
            source.reload()  # poll_interval 0: only on request, as on SIGHUP
            await proxy.wait_applied("v1")
            assert (await fetch(proxy.address("ingress"), "/")).header("x-upstream") == "only"
            proxy.drain()


# -- a third-party source from the command line ------------------------------------------------


async def test_a_third_party_source_from_the_cli_delivers_deltas(
    tmp_path: Path, meshcore_upstream: UpstreamFactory, testplugins_site: Path
) -> None:
    first = await meshcore_upstream(name="first")
    second = await meshcore_upstream(name="second")
    write_snapshot(tmp_path, first.endpoint)
    args = (
        "--source",
        "delta_dir",
        "--source-arg",
        f"directory={tmp_path}",
        "--source-arg",
        "poll_interval=20ms",
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            proxy = await start_proxy_process(
                nursery, None, tmp_path, args=args, env=env_with(testplugins_site)
            )
            assert (await fetch(proxy.address, "/")).header("x-upstream") == "first"

            write_delta(tmp_path, "001", {"version": "v1", "endpoints": {"backend": [second.endpoint]}})
            await proxy.wait_for("delta_acked", file="delta-001.json", version="v1")
            assert (await fetch(proxy.address, "/")).header("x-upstream") == "second"

            write_delta(tmp_path, "002", {"version": "v2", "removed_clusters": ["backend"]})
            nacked = await proxy.wait_for("delta_nacked", file="delta-002.json")
            assert nacked["stage"] == "validation"
            assert nacked["problems"] == [
                (
                    "route_configs[0].virtual_hosts[0].routes[0].cluster: unknown cluster 'backend' "
                    "(defined: none defined)"
                )
            ]
            assert proxy.logged("snapshot_rejected", stage="validation", kept="v1")
            assert (await fetch(proxy.address, "/")).header("x-upstream") == "second"
            assert proxy.process.returncode is None
            nursery.cancel_scope.cancel()


def test_the_cli_reports_bad_source_arguments_in_one_line_each(
    testplugins_site: Path, tmp_path: Path
) -> None:
    env = env_with(testplugins_site)
    unknown = run("-m", "meshcore", "proxy", "--source", "delta_dri", env=env)
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert (
        unknown.stderr
        == "source: unknown config source 'delta_dri' (known: control_plane, delta_dir, file)\n"
    )

    (tmp_path / "source.yaml").write_text("poll_interval: fast\n")
    bad = run(
        "-m",
        "meshcore",
        "proxy",
        "--source",
        "delta_dir",
        "--source-config",
        str(tmp_path / "source.yaml"),
        env=env,
    )
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "source.delta_dir.directory: is required",
        'source.delta_dir.poll_interval: must be a duration such as "250ms" or "2s", got \'fast\'',
    ]
    neither = run("-m", "meshcore", "proxy", env=env)
    assert (neither.returncode, neither.stderr) == (1, "source: give -c FILE or --source NAME\n")
    malformed = run("-m", "meshcore", "proxy", "--source", "delta_dir", "--source-arg", "directory", env=env)
    assert (malformed.returncode, malformed.stderr) == (
        1,
        "source.delta_dir: --source-arg must be KEY=VALUE, got 'directory'\n",
    )


def test_meshcore_plugins_lists_the_third_party_source(testplugins_site: Path) -> None:
    done = run("-m", "meshcore", "plugins", env=env_with(testplugins_site))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    at = out.index("testplugins  (meshcore-testplugins 0.1.0)")
    assert (
        "    config source: delta_dir - a Snapshot, then deltas, from files in a directory (for tests)"
        in out[at:]
    )
