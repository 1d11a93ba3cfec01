"""Send it upstream: stream the request and the response, or bridge a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import Route

# RFC 9110 7.6.1 hop-by-hop fields, plus what a client must never set for us.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class UpstreamError(Exception):
    """The upstream couldn't be reached (502) or didn't answer in time (504)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def upstream_headers(
    request: web.Request,
    route: Route,
    add: Mapping[str, str],
    strip_cookie: Callable[[str], bool] | None = None,
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop and spoofable identity headers, plus ours;
    minus the gateway's own cookies (`strip_cookie` names them): a backend never
    sees the session or its refresh token."""
    connection_listed = _connection_tokens(request.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in connection_listed
            or lower.startswith(("x-portcullis-", "x-forwarded-"))
            or lower in ("forwarded", "host", "x-real-ip")
            or (lower == "authorization" and not route.pass_authorization)
        ):
            continue
        if lower == "cookie" and strip_cookie is not None:
            value = _without_cookies(value, strip_cookie)
            if not value:
                continue
        headers.add(name, value)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    headers["X-Forwarded-For"] = peer[0] if peer else "unknown"
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    for name, value in add.items():
        headers[name] = value
    return headers


def _without_cookies(header: str, strip: Callable[[str], bool]) -> str:
    kept = [
        pair.strip()
        for pair in header.split(";")
        if pair.strip() and not strip(pair.split("=", 1)[0].strip())
    ]
    return "; ".join(kept)


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    """Header names listed in `Connection`: hop-by-hop for this one message."""
    values = headers.getall("Connection", [])
    return {token.strip().lower() for value in values for token in value.split(",")}


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    connection_listed = _connection_tokens(upstream.headers)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.headers.items():
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in connection_listed:
            headers.add(name, value)
    return headers


class Forwarder:
    """One pooled client session per upstream, with the route's timeouts."""

    def __init__(
        self, *, pool_size: int = 256, strip_cookie: Callable[[str], bool] | None = None
    ) -> None:
        self._strip_cookie = strip_cookie
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._pool_size = pool_size
        self._timeouts: dict[Route, aiohttp.ClientTimeout] = {}

    def _session(self, upstream: str) -> aiohttp.ClientSession:
        session = self._sessions.get(upstream)
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ttl_dns_cache=300)
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
            self._sessions[upstream] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def forward(
        self, request: web.Request, route: Route, target: str, add: Mapping[str, str]
    ) -> web.StreamResponse:
        headers = upstream_headers(request, route, add, self._strip_cookie)
        url = URL(route.upstream + target, encoded=True)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, route, url, headers)
        timeout = self._timeouts.get(route)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                sock_connect=route.connect_timeout, sock_read=route.read_timeout
            )
            self._timeouts[route] = timeout
        session = self._session(route.upstream)
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                timeout=timeout,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        except (aiohttp.ServerTimeoutError, TimeoutError) as error:
            raise UpstreamError(504, f"upstream {route.app} did not answer in time") from error
        except aiohttp.ClientError as error:
            raise UpstreamError(502, f"upstream {route.app} unreachable: {error}") from error
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        try:
            response.headers.update(_response_headers(upstream))
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return response  # the client went away; nothing left to tell it
        except (aiohttp.ServerTimeoutError, TimeoutError, aiohttp.ClientPayloadError):
            # Headers are already sent: the only honest signal left is a cut connection.
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            upstream.release()

    async def _websocket(
        self, request: web.Request, route: Route, url: URL, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.pop(name, None)
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p
        ]
        headers.pop("Sec-WebSocket-Protocol", None)
        session = self._session(route.upstream)
        try:
            upstream = await session.ws_connect(
                url.with_scheme("wss" if url.scheme == "https" else "ws"),
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=route.read_timeout),
            )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise UpstreamError(
                502, f"upstream {route.app} refused the WebSocket: {error}"
            ) from error
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await client.prepare(request)

        async def pump(
            source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        ) -> None:
            async for message in source:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                else:
                    break
            await sink.close()

        tasks = [
            asyncio.ensure_future(pump(client, upstream)),
            asyncio.ensure_future(pump(upstream, client)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await upstream.close()
            await client.close()
        return client
