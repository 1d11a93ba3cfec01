"""The gateway's own pages (sign-in, callback, sign-out, health, JWKS, and what no
route matches) under the limits proxied requests have: the same header checks,
a small request body read within the body timeouts, and refusals logged.

A middleware: the proxied route passes straight through (Gateway.handle screens
its requests, times its bodies and counts them itself); a crash on any route is a
logged refusal as well as a traceback. A request refused off that route is
counted in portcullis_requests_total as one on it is; a page served is not.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.limits import BodyTimeout, timed_body
from gateway.screening.expect import close_if_body_kept, expectation_refusal, send_continue
from gateway.screening.headers import screen

if TYPE_CHECKING:
    from gateway.server import Gateway

# Set by Gateway.refuse on the request it refuses.
REFUSED: web.RequestKey[bool] = web.RequestKey("portcullis_refused", bool)
# A sign-out form or a back-channel logout token fits many times over.
MAX_BODY_BYTES = 16384
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OwnPages:
    """The gateway app's middleware (an aiohttp "new style" one: called with the
    request and the route's handler); ``proxy_route`` is set once the catch-all
    route is added (build_app)."""

    __middleware_version__ = 1

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.proxy_route: web.AbstractRoute | None = None

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        proxied = request.match_info.route is self.proxy_route
        started = time.perf_counter()
        status = 500  # aiohttp's answer to a crash
        try:
            if proxied:
                return await handler(request)
            refused = await self._screen(request)
            if refused is not None:
                status = refused.status
                close_if_body_kept(request, refused)
                return refused
            response = await handler(request)
            durability = self._gateway.durability
            if durability is not None:  # sync: a page that logged an event (a sign-in, a
                response = await durability.hold(response)  # refusal) waits until it's durable
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        except ConnectionError:
            raise
        except Exception as error:
            # aiohttp answers 500 and logs the traceback; the SIEM sees it too.
            reason = f"{type(error).__name__} (see the server log)"
            with contextlib.suppress(Exception):  # the original error is what matters
                self._gateway.refuse(request, 500, "internal_error", reason)
            raise
        finally:
            # Gateway.handle counts the proxied route's requests. Here only refusals
            # (`OPTIONS *`, a sign-out refused) are, not health probes or sign-in pages.
            if not proxied and request.get(REFUSED):
                self._gateway.metrics.request_done("-", status, time.perf_counter() - started)

    async def _screen(self, request: web.Request) -> web.StreamResponse | None:
        gateway = self._gateway
        limits = gateway.config.limits
        refusal = screen(request.raw_headers, request.headers.get("Host"), limits)
        if refusal is None:
            refusal = expectation_refusal(request)
        if refusal is not None:
            return await self._held(gateway.refuse(request, *refusal))
        unmatched = request.match_info.http_exception
        if unmatched is not None:
            # `OPTIONS *`, `CONNECT host:port`: aiohttp's router found nothing.
            reason = "request target is not a path (asterisk or authority form)"
            return await self._held(gateway.refuse(request, unmatched.status, "no_route", reason))
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            reason = f"request body of {length} bytes; at most {MAX_BODY_BYTES} here"
            response = gateway.refuse(request, 413, "body_too_large", reason)
            await gateway.answer_and_close(request, response)
            return response
        await send_continue(request)
        body = bytearray()
        try:
            async for chunk in timed_body(
                request.content, idle=limits.body_idle_timeout, total=limits.body_timeout
            ):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    reason = f"request body over {MAX_BODY_BYTES} bytes"
                    response = gateway.refuse(request, 413, "body_too_large", reason)
                    await gateway.answer_and_close(request, response)
                    return response
        except BodyTimeout as error:
            gateway.metrics.connection_cut("body_timeout")
            response = gateway.refuse(request, 408, "body_timeout", str(error))
            await gateway.answer_and_close(request, response)
            return response
        # What request.read() and request.post() return to the page's handler:
        # aiohttp keeps a body it has read here and never reads the stream again.
        request._read_bytes = bytes(body)
        return None

    async def _held(self, response: web.StreamResponse) -> web.StreamResponse:
        durability = self._gateway.durability
        return response if durability is None else await durability.hold(response)
