"""Config health on the admin server: the live version, when it was applied, what was refused.

Rejections are counted by the stage that refused them: ``parse`` (a file that is not
YAML), ``validation`` (a field, a reference, a plugin's check) and ``apply`` (building it
failed: here, a port another process holds). Each one is also the last rejection shown at
``/config_status``, with every problem and the time it happened.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import trio
import yaml

import meshcore
from meshcore.runtime.admin import handle
from meshcore.runtime.sources import build_source
from meshcore.testing import UpstreamFactory, fetch, http_proxy_config

TIMEOUT = 20


def status(proxy: Any) -> dict[str, Any]:
    response = handle(proxy, "GET", "/config_status")
    assert (response.status, response.content_type) == (200, "application/json")
    data: dict[str, Any] = json.loads(response.body)
    return data


def parse_time(text: str) -> dt.datetime:
    assert text.endswith("Z")
    return dt.datetime.fromisoformat(text)


async def test_config_status_counts_rejections_by_stage_and_shows_the_last(
    tmp_path: Path, meshcore_upstream: UpstreamFactory
) -> None:
    upstream = await meshcore_upstream(name="u")
    config = http_proxy_config([upstream.endpoint])
    config["admin"] = {"address": "127.0.0.1:0"}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    registry = meshcore.build_registry(autoload=False)
    source = build_source(registry, "file", {"path": str(path), "poll_interval": 0})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(
                lambda task_status: meshcore.serve_proxy(source, registry, task_status=task_status)
            )
            first = status(proxy)
            assert (first["version"], first["snapshots_applied"], first["last_rejection"]) == (
                proxy.snapshot.version,
                1,
                None,
            )
            assert first["snapshots_rejected"] == {"parse": 0, "validation": 0, "apply": 0}
            before = dt.datetime.now(tz=dt.UTC)
            assert abs((parse_time(first["applied_at"]) - before).total_seconds()) < 10

            path.write_text("listeners: [\n")  # not YAML
            await _reload(source, proxy, 1)
            config["clusters"][0]["lb_policy"] = "round_robbin"  # a field problem
            path.write_text(yaml.safe_dump(config))
            await _reload(source, proxy, 2)
            config["clusters"][0]["lb_policy"] = "round_robin"
            with socket.socket() as taken:  # a port another process holds: only binding finds out
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                port = taken.getsockname()[1]
                config["listeners"][0]["address"] = f"127.0.0.1:{port}"
                path.write_text(yaml.safe_dump(config))
                await _reload(source, proxy, 3)

            now = status(proxy)
            assert now["snapshots_rejected"] == {"parse": 1, "validation": 1, "apply": 1}
            assert now["version"] == first["version"]  # the first one still serves
            last = now["last_rejection"]
            assert last["stage"] == "apply"
            assert last["version"] not in (None, first["version"])
            assert last["problems"] == [
                f"{path}: listeners[0].address: cannot listen on 127.0.0.1:{port}: Address already in use"
            ]
            assert parse_time(last["at"]) >= parse_time(first["applied_at"])
            for stage in ("parse", "validation", "apply"):
                assert proxy.stats.value("config_snapshots_rejected", reason=stage) == 1
            assert (await fetch(proxy.address("ingress"), "/")).header("x-upstream") == "u"

            # The same over HTTP, from the admin server.
            assert proxy.admin_address is not None
            response = await fetch(proxy.admin_address, "/config_status")
            assert json.loads(response.body) == now
            proxy.drain()


async def _reload(source: meshcore.ConfigSource, proxy: Any, rejections: int) -> None:
    """SIGHUP's effect, without a signal: the file source looks at the file now."""
    source.reload()
    await proxy.wait_rejected(rejections)
