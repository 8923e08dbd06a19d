"""Proxies and upstreams for tests that are not trio tests: a trio loop in a thread of its own.

A team whose application is synchronous (or asyncio-based) puts a meshcore proxy between
its code and a dependency, the way people use Toxiproxy, and injects faults from plain
``def test_...`` functions:

    with BackgroundLoop() as loop:
        upstream = loop.start_upstream(name="payments")
        proxy = loop.start_proxy(http_proxy_config([upstream.endpoint]))
        response = httpx.get(proxy.url("/charge"))  # any client library, any thread
        proxy.apply(config_with_a_fault)  # reload, as a changed config file would be

The loop thread runs ``trio.run`` with one nursery; every call from the test's thread goes
through ``trio.from_thread`` and is bounded by a timeout. Closing the loop drains the
proxies, stops the upstreams and joins the thread, also bounded; a failure inside the loop
is raised in the test's thread, at the next call or at close.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import trio

from meshcore import Registry, Snapshot, Stats, build_registry
from meshcore.testing.client import Client, ClientResponse, HeadersArg
from meshcore.testing.proxies import (
    TEARDOWN_GRACE,
    ConfigLike,
    ProxyFactory,
    RunningProxy,
    Upstream,
    UpstreamFactory,
    open_proxies,
    open_upstreams,
    to_snapshot,
)

__all__ = ["BackgroundLoop", "SyncClient", "SyncProxy", "SyncProxyFactory", "SyncUpstreamFactory"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
"""Seconds any one call into the loop may take (starting a proxy, a request, a reload)."""


class SyncProxyFactory(Protocol):
    """What the ``meshcore_proxy_sync`` fixture is: :meth:`BackgroundLoop.start_proxy`."""

    def __call__(self, config: ConfigLike, *, ephemeral: bool = True) -> SyncProxy:
        """Start a proxy serving ``config``; return it once it listens."""
        ...


class SyncUpstreamFactory(Protocol):
    """What the ``meshcore_upstream_sync`` fixture is: :meth:`BackgroundLoop.start_upstream`."""

    def __call__(self, *, name: str = "upstream", host: str = "127.0.0.1") -> Upstream:
        """Start a test upstream; return it once it listens."""
        ...


class BackgroundLoop:
    """A trio event loop in a daemon thread, running proxies and upstreams for sync tests.

    Use it as a context manager (or call :meth:`start` and :meth:`close`).

    Args:
        registry: the plugin registry proxies are built with (default: built-ins and
            installed plugins).
        timeout: seconds any one call into the loop may take before ``trio.TooSlowError``.
        shutdown_timeout: seconds :meth:`close` waits for the loop to stop.
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        shutdown_timeout: float = TEARDOWN_GRACE + DEFAULT_TIMEOUT,
    ) -> None:
        self.registry = registry or build_registry()
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._proxies: ProxyFactory | None = None
        self._upstreams: UpstreamFactory | None = None
        self._error: BaseException | None = None

    # -- life --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the loop thread; return once the loop is ready for calls.

        Raises:
            RuntimeError: already started, or the loop failed to start.
        """
        if self._thread is not None:
            msg = "the background loop is already started"
            raise RuntimeError(msg)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="meshcore-background-loop", daemon=True
        )
        self._thread.start()
        if not ready.wait(self.timeout) or self._token is None:
            self.close()
            msg = f"the background trio loop did not start within {self.timeout} s"
            raise RuntimeError(msg)

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            trio.run(self._main, ready)
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread by run() and close()
            self._error = err
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        async with open_upstreams() as upstreams, open_proxies(self.registry) as proxies:
            self._upstreams, self._proxies = upstreams, proxies
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            ready.set()
            await self._stop.wait()
        # Leaving the blocks drains the proxies (bounded) and stops the upstreams.

    def close(self) -> None:
        """Drain the proxies, stop the upstreams and the loop, join its thread (bounded).

        Raises:
            RuntimeError: the loop did not stop within ``shutdown_timeout``, or it failed
                (the failure is the cause).
        """
        thread = self._thread
        if thread is None:
            return
        if self._token is not None and self._stop is not None and thread.is_alive():
            # If it already stopped on its own, that was a failure: reported below.
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        thread.join(self.shutdown_timeout)
        if thread.is_alive():
            msg = f"the background trio loop did not stop within {self.shutdown_timeout} s"
            raise RuntimeError(msg)
        self._thread = None
        self._token = None
        if self._error is not None:
            error, self._error = self._error, None
            msg = "the background trio loop failed"
            raise RuntimeError(msg) from error

    # -- calls into the loop -----------------------------------------------------------------

    def _check_running(self) -> trio.lowlevel.TrioToken:
        if self._token is None:
            msg = "the background loop is not running: use it in a with block, or call start()"
            raise RuntimeError(msg)
        return self._token

    def _stopped_error(self) -> RuntimeError:
        if self._thread is not None:
            self._thread.join(self.shutdown_timeout)
        return RuntimeError("the background trio loop has stopped (see the cause)")

    def run(self, afn: Callable[..., Awaitable[T]], *args: Any, timeout: float | None = None) -> T:
        """Run ``await afn(*args)`` in the loop and return its result, within ``timeout``.

        Raises:
            trio.TooSlowError: it took longer than ``timeout`` (default: the loop's).
            RuntimeError: the loop is not running (a failure in it is the cause).
        """
        token = self._check_running()
        limit = self.timeout if timeout is None else timeout

        async def bounded() -> T:
            with trio.fail_after(limit):
                return await afn(*args)

        try:
            return trio.from_thread.run(bounded, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            # Cancelled: the loop shut down (it failed) while the call was running.
            error = self._stopped_error()
            raise error from self._error

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` in the loop's thread and return its result.

        Raises:
            RuntimeError: the loop is not running (a failure in it is the cause).
        """
        token = self._check_running()
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            # Cancelled: the loop shut down (it failed) while the call was running.
            error = self._stopped_error()
            raise error from self._error

    def start_proxy(self, config: ConfigLike, *, ephemeral: bool = True) -> SyncProxy:
        """Start a proxy serving ``config`` in the loop (see :class:`~meshcore.testing.proxies.ProxyFactory`).

        Args:
            config: a config dict, the path of a config file, or a Snapshot.
            ephemeral: move every listener and the admin server to ``127.0.0.1:0``.

        Raises:
            ConfigError: the config is invalid or cannot be applied.
        """
        self._check_running()
        assert self._proxies is not None  # set before the loop reports ready
        # Built here, in the test's thread: a bad config fails before the loop is involved.
        snapshot = to_snapshot(config, self.registry, ephemeral=ephemeral)
        running = self.run(functools.partial(self._proxies, snapshot, ephemeral=ephemeral))
        return SyncProxy(self, running)

    def start_upstream(self, *, name: str = "upstream", host: str = "127.0.0.1") -> Upstream:
        """Start a test upstream in the loop (see :class:`~meshcore.testing.proxies.UpstreamFactory`)."""
        self._check_running()
        assert self._upstreams is not None  # set before the loop reports ready
        return self.run(functools.partial(self._upstreams, name=name, host=host))


class SyncProxy:
    """A proxy running in a :class:`BackgroundLoop`, driven from a synchronous test.

    The same handle as :class:`~meshcore.testing.proxies.RunningProxy`, with blocking
    methods; each call is bounded by the loop's timeout.

    Attributes:
        running: the proxy's handle inside the loop.
    """

    def __init__(self, loop: BackgroundLoop, running: RunningProxy) -> None:
        self.running = running
        self._loop = loop

    @property
    def snapshot(self) -> Snapshot:
        """The Snapshot being served."""
        return self._loop.run_sync(lambda: self.running.snapshot)

    @property
    def stats(self) -> Stats:
        """The proxy's metrics. Read single values with ``stats.value(name, **labels)``."""
        return self.running.stats

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """Where the admin server listens, if the config enables it."""
        return self.running.admin_address

    def address(self, listener: str | None = None) -> tuple[str, int]:
        """The bound ``(host, port)`` of ``listener`` (default: the only listener)."""
        return self._loop.run_sync(self.running.address, listener)

    def endpoint(self, listener: str | None = None) -> str:
        """``"host:port"`` of ``listener``."""
        return self._loop.run_sync(self.running.endpoint, listener)

    def url(self, path: str = "/", *, listener: str | None = None) -> str:
        """``http(s)://host:port/path`` of ``listener``, for any HTTP client library."""
        return self._loop.run_sync(functools.partial(self.running.url, path, listener=listener))

    def apply(self, config: ConfigLike) -> Snapshot:
        """Reload: apply a new config atomically; return the Snapshot now served.

        Raises:
            ConfigError: the config is invalid or cannot be applied; the old one keeps serving.
        """
        snapshot = to_snapshot(config, self.running.registry, ephemeral=self.running.ephemeral)
        return self._loop.run_sync(self.running.apply, snapshot)

    def drain(self, *, timeout: float | None = None) -> None:
        """Drain the proxy and wait until it has stopped (within ``timeout``, default the loop's)."""
        self._loop.run(self.running.drain, timeout=timeout)

    def client(
        self,
        *,
        listener: str | None = None,
        host: str | None = None,
        ssl_context: Any = None,
        server_hostname: str | None = None,
    ) -> SyncClient:
        """A blocking :class:`SyncClient` for ``listener`` (arguments as :class:`~meshcore.testing.client.Client`)."""
        client = self._loop.run_sync(
            functools.partial(
                self.running.client,
                listener=listener,
                host=host,
                ssl_context=ssl_context,
                server_hostname=server_hostname,
            )
        )
        return SyncClient(self._loop, client)

    def __repr__(self) -> str:
        return f"<SyncProxy {self.running!r}>"


class SyncClient:
    """A blocking :class:`~meshcore.testing.client.Client`: each request runs in the loop.

    Attributes:
        client: the client inside the loop.
    """

    def __init__(self, loop: BackgroundLoop, client: Client) -> None:
        self.client = client
        self._loop = loop

    def request(
        self,
        method: str,
        path: str = "/",
        *,
        headers: HeadersArg = (),
        body: bytes | None = None,
        host: str | None = None,
    ) -> ClientResponse:
        """Send one request and read the whole response (see :meth:`Client.request`)."""
        call = functools.partial(self.client.request, method, path, headers=headers, body=body, host=host)
        return self._loop.run(call)

    def get(self, path: str = "/", *, headers: HeadersArg = (), host: str | None = None) -> ClientResponse:
        """A GET request."""
        return self.request("GET", path, headers=headers, host=host)

    def post(
        self, path: str = "/", body: bytes = b"", *, headers: HeadersArg = (), host: str | None = None
    ) -> ClientResponse:
        """A POST request with ``body``."""
        return self.request("POST", path, headers=headers, body=body, host=host)
