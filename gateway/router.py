"""The gateway's router: aiohttp's, but every answer it gives keeps the gateway's
expect handler (gateway/screening/expect.py), and a path costs its length to route."""

from __future__ import annotations

import warnings
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, MatchInfoError

from gateway.screening.expect import decide_first


class _NoRoute(MatchInfoError):
    """aiohttp's answer for a target no route matches (a refusal the gateway logs:
    gateway/own_pages.py), with the gateway's expect handler instead of aiohttp's,
    which sent `100 Continue` or an unlogged 417 before any middleware ran."""

    __slots__ = ()

    @property
    def expect_handler(self) -> Any:
        return decide_first


class Router(web.UrlDispatcher):
    """aiohttp's router, but a target no route matches (`OPTIONS *`, `CONNECT
    host:port`: every path is proxied) keeps the gateway's expect handler too,
    and a path costs its length to route, not its length times its segments.

    aiohttp's own walk looks up every prefix of the path, each cut and hashed
    anew: 4.4 ms of CPU for an 8 KiB path of 4,000 segments (32 us for one
    segment), on the event loop before any of the gateway's checks, so a few
    such requests stalled every other. The gateway's routes are plain pages and
    one pattern, its catch-all: the page of the exact path, then the pattern (it
    checks the whole path itself), is the answer aiohttp's walk gives for such a
    table. Another table (a second pattern, whose order would matter; a sub-app,
    which answers whatever it is asked) is refused when the app starts."""

    def __init__(self) -> None:
        super().__init__()
        # Set when the app starts (freeze); until then every resource is tried.
        self._exact: dict[str, list[AbstractResource]] = {}
        self._others: list[AbstractResource] | None = None

    def freeze(self) -> None:
        super().freeze()
        exact: dict[str, list[AbstractResource]] = {}
        others: list[AbstractResource] = []
        for resource in self.resources():
            if isinstance(resource, web.PlainResource):
                exact.setdefault(resource.canonical, []).append(resource)
            else:
                others.append(resource)
        if len(others) > 1 or not all(type(r) is web.DynamicResource for r in others):
            raise RuntimeError(
                "the gateway's router routes plain pages and one pattern only, as "
                f"aiohttp's would; not {', '.join(repr(r) for r in others)}"
            )
        self._exact, self._others = exact, others

    async def resolve(self, request: web.Request) -> Any:
        allowed: set[str] = set()
        others = self._others if self._others is not None else list(self.resources())
        exact = self._exact.get(request.rel_url.path_safe, [])
        for resource in (*exact, *others):
            match_info, methods = await resource.resolve(request)
            if match_info is not None:
                return match_info
            allowed |= methods
        if allowed:
            return _NoRoute(web.HTTPMethodNotAllowed(request.method, allowed))
        return _NoRoute(web.HTTPNotFound())


def application(**kwargs: Any) -> web.Application:
    """A web.Application on `Router`. aiohttp 3 calls its `router` argument
    deprecated, with nothing in its place: a resource can't catch a CONNECT's
    target (aiohttp's walk never reaches the index for an empty path), and
    subclassing Application is discouraged more (pyproject pins aiohttp < 4)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "router argument is deprecated", DeprecationWarning)
        return web.Application(router=Router(), **kwargs)
