"""``hello``: an example third-party HTTP filter that adds a greeting header to every response.

It shows the whole shape of a meshcore plugin: a frozen attrs class for its config section
(validated by meshcore when a config is loaded, problems reported with file, line and field
path), a factory called once per Snapshot, and a hook that registers both under a name. It
imports only the public API, ``meshcore``.
"""

from __future__ import annotations

import attrs

import meshcore

__all__ = ["HelloConfig", "HelloFilter", "meshcore_http_filters"]


@attrs.frozen(kw_only=True)
class HelloConfig:
    """Config of ``hello``.

    Attributes:
        greeting: the header value.
        header: the header name.
        repeat: how many times the header is added (at least once).
    """

    greeting: str = attrs.field(default="hello", validator=meshcore.non_empty)
    header: str = attrs.field(default="x-hello", validator=meshcore.non_empty)
    repeat: int = attrs.field(default=1, validator=meshcore.at_least(1))


class HelloFilter:
    """Adds ``header: greeting`` to the response of every request it passes on.

    An onion-shaped L7 filter: it calls the rest of the chain, then decorates the answer.
    It is built once per Snapshot; nothing here runs per request but ``__call__``.
    """

    def __init__(self, config: HelloConfig) -> None:
        self._header = config.header
        self._greeting = config.greeting
        self._repeat = config.repeat

    async def __call__(self, request: meshcore.Request, call_next: meshcore.HttpHandler) -> meshcore.Response:
        """Pass ``request`` on and add the greeting header to the response."""
        response = await call_next(request)
        for _ in range(self._repeat):
            response.headers.add(self._header, self._greeting)
        return response


def _factory(config: HelloConfig, _context: meshcore.FilterContext) -> HelloFilter:
    return HelloFilter(config)


@meshcore.hookimpl
def meshcore_http_filters() -> list[meshcore.HttpFilterType]:
    """Register the ``hello`` HTTP filter."""
    return [
        meshcore.HttpFilterType(
            name="hello",
            factory=_factory,
            config=HelloConfig,
            description="adds a greeting header to every response",
        )
    ]
