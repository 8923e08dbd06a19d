"""The pytest plugin of meshcore (entry point ``pytest11``): fixtures for plugin authors and users.

Installing meshcore is enough to have them. In trio tests (pytest-trio):

- ``meshcore_proxy``: ``proxy = await meshcore_proxy(config)`` starts a real proxy from a
  config dict, a config file or a Snapshot, on ``127.0.0.1:0``; ``proxy.url(...)``,
  ``proxy.client().get(...)``, ``proxy.apply(new_config)``, ``proxy.stats``,
  ``await proxy.drain()``. Proxies drain at the end of the test.
- ``meshcore_upstream``: ``upstream = await meshcore_upstream(name="a")`` starts the test
  upstream (echo, status, bytes, delay, chunks, reset); ``upstream.endpoint`` goes in a
  cluster.

In plain synchronous tests (no trio in the test), the same through a trio loop in a
background thread: ``meshcore_proxy_sync(config)`` and ``meshcore_upstream_sync()``.

And: ``meshcore_ca`` (a test CA writing PEM files for TLS listeners, and client contexts),
``meshcore_registry`` (the plugin registry the proxies are built with: override it in a
conftest.py to register a plugin in-process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import meshcore
from meshcore.testing.background import BackgroundLoop, SyncProxyFactory, SyncUpstreamFactory
from meshcore.testing.proxies import ProxyFactory, UpstreamFactory, open_proxies, open_upstreams
from meshcore.testing.tls import MeshcoreCA


@pytest.fixture
def meshcore_registry() -> meshcore.Registry:
    """A plugin registry with the first-party and installed plugins, as the CLI builds it.

    Override it to test a plugin that is not installed::

        @pytest.fixture
        def meshcore_registry():
            return meshcore.build_registry(plugins=[("my_plugin", my_plugin)])
    """
    return meshcore.build_registry()


@pytest.fixture
async def meshcore_proxy(meshcore_registry: meshcore.Registry) -> AsyncIterator[ProxyFactory]:
    """A factory of real proxies for trio tests.

    ``proxy = await meshcore_proxy(config)``, where ``config`` is a config dict, the path of
    a YAML/TOML/JSON file, or a Snapshot. Every listener (and the admin server) is moved to
    ``127.0.0.1:0`` unless ``ephemeral=False``. Returns a
    :class:`~meshcore.testing.proxies.RunningProxy` once it listens. Proxies still running
    at the end of the test are drained (and cancelled after a grace time).
    """
    async with open_proxies(meshcore_registry) as proxies:
        yield proxies


@pytest.fixture
async def meshcore_upstream() -> AsyncIterator[UpstreamFactory]:
    """A factory of test upstreams for trio tests.

    ``upstream = await meshcore_upstream(name="a")`` returns an
    :class:`~meshcore.testing.proxies.Upstream` (``.endpoint`` for a cluster, ``.address``
    for a socket); it stops at the end of the test.
    """
    async with open_upstreams() as upstreams:
        yield upstreams


@pytest.fixture
def meshcore_background_loop(meshcore_registry: meshcore.Registry) -> Iterator[BackgroundLoop]:
    """A trio loop in a background thread, for synchronous tests; closed (bounded) at teardown."""
    with BackgroundLoop(registry=meshcore_registry) as loop:
        yield loop


@pytest.fixture
def meshcore_proxy_sync(meshcore_background_loop: BackgroundLoop) -> SyncProxyFactory:
    """A factory of real proxies for synchronous tests.

    ``proxy = meshcore_proxy_sync(config)``: as ``meshcore_proxy``, with blocking methods
    (:class:`~meshcore.testing.background.SyncProxy`). Point any client library at
    ``proxy.url("/path")``; ``proxy.apply(config)`` reloads.
    """
    return meshcore_background_loop.start_proxy


@pytest.fixture
def meshcore_upstream_sync(meshcore_background_loop: BackgroundLoop) -> SyncUpstreamFactory:
    """A factory of test upstreams for synchronous tests.

    ``upstream = meshcore_upstream_sync(name="a")``: as ``meshcore_upstream``, without trio.
    """
    return meshcore_background_loop.start_upstream


@pytest.fixture
def meshcore_ca(tmp_path_factory: pytest.TempPathFactory) -> MeshcoreCA:
    """A test certificate authority writing its PEM files into a temporary directory.

    ``meshcore_ca.with_tls(config)`` puts TLS on a config's listeners;
    ``meshcore_ca.client_context()`` is an ``ssl.SSLContext`` trusting it;
    ``meshcore_ca.ca_file`` is its certificate for other clients.
    """
    return MeshcoreCA(tmp_path_factory.mktemp("meshcore-ca"))
