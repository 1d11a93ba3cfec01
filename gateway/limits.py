"""Bounded resources: no client holds a connection, an upstream slot or a socket for long."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.web_protocol import RequestHandler

from gateway.config import LimitsConfig, Route
from gateway.identity import Identity


class BodyTimeout(Exception):
    """The client announced a request body and stopped sending it.

    Not a TimeoutError: aiohttp's client turns an OSError (TimeoutError is one)
    from a request body into its own error, and this one must stay recognisable."""


async def timed_body(content: StreamReader, *, idle: float, total: float) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk, as long as the client keeps it coming: no byte
    for `idle` seconds, or not all of it within `total`, raises BodyTimeout (and with
    it the upstream request is aborted, freeing its connection)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total
    while True:
        remaining = deadline - loop.time()
        try:
            async with asyncio.timeout(min(idle, remaining)):
                chunk = await content.readany()
        except TimeoutError:
            if idle < remaining:
                raise BodyTimeout(f"no request body byte for {idle:g} s") from None
            raise BodyTimeout(f"request body not complete within {total:g} s") from None
        if not chunk:
            return
        yield chunk


async def answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response`, then close the connection: aiohttp would otherwise linger,
    reading the rest of a body the client has stopped sending."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the answer is flushed before the socket closes


def body_limits(route: Route, limits: LimitsConfig) -> tuple[float, float]:
    """(idle, total) seconds for this route's request bodies."""
    idle = route.body_idle_timeout or limits.body_idle_timeout
    total = route.body_timeout or limits.body_timeout
    return idle, total


def identity_key(identity: Identity, request: web.Request) -> str:
    """Who a concurrency slot belongs to: the subject when authenticated, else the
    source address (the gateway overwrites X-Forwarded-For, so it never trusts it)."""
    if identity.authenticated and identity.subject:
        return f"{identity.method}:{identity.issuer or ''}:{identity.subject}"
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"ip:{peer[0] if peer else 'unknown'}"


class LimitReached(Exception):
    """An identity already holds its limit of concurrent requests or WebSockets."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(f"at most {limit} concurrent {kind}s per identity per app")
        self.kind = kind
        self.limit = limit


class ConcurrencyLimiter:
    """Concurrent upstream requests and WebSockets per identity per app.

    Per process: with several workers an identity may hold up to the limit in each."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._limits = {"request": limits.requests_per_identity}
        self._limits["websocket"] = limits.websockets_per_identity
        self._held: dict[tuple[str, str, str], int] = {}

    def acquire(self, app: str, kind: str, key: str) -> contextlib.AbstractContextManager[None]:
        """A slot to hold while the request or WebSocket runs; LimitReached past the limit."""
        slot = (app, kind, key)
        held = self._held.get(slot, 0)
        if held >= self._limits[kind]:
            raise LimitReached(kind, self._limits[kind])
        self._held[slot] = held + 1
        return self._release(slot)

    @contextlib.contextmanager
    def _release(self, slot: tuple[str, str, str]) -> Iterator[None]:
        try:
            yield
        finally:
            left = self._held[slot] - 1
            if left:
                self._held[slot] = left
            else:
                del self._held[slot]  # no entry per identity ever seen

    def held(self) -> int:
        return sum(self._held.values())


class HeaderTimeoutProtocol(RequestHandler):
    """aiohttp's connection handler plus a header-read deadline, which aiohttp lacks:
    a connection must deliver complete request headers within `header_timeout` of
    being opened, or of the first byte of its next request, or it is closed. (Idle
    kept-alive connections are aiohttp's own keepalive_timeout.)"""

    __slots__ = ("_header_timeout", "_header_timer", "_on_cut")

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        on_cut: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._on_cut = on_cut

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is cut too

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and data and not self._request_in_progress:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self._header_timer is not None and (self._messages or self._request_in_progress):
            self._disarm()  # the headers are complete

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        # A request that started after the timer was set is not slow headers.
        if self._request_in_progress or self._messages or self.transport is None:
            return
        self._on_cut("header_timeout")
        self.force_close()


class LimitedServer(web.Server):
    """web.Server whose connections use HeaderTimeoutProtocol."""

    def __init__(
        self, base: web.Server, *, header_timeout: float, on_cut: Callable[[str], None]
    ) -> None:
        # aiohttp builds its Server inside the app and has no hook for the
        # connection class: take over its handler and settings as they are.
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._header_timeout = header_timeout
        self._on_cut = on_cut

    def __call__(self) -> RequestHandler:
        return HeaderTimeoutProtocol(
            self,
            header_timeout=self._header_timeout,
            on_cut=self._on_cut,
            loop=self._loop,
            **self._kwargs,
        )
