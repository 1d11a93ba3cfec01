"""Send it upstream: stream the request and the response, or bridge a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import LimitsConfig, Route
from gateway.limits import BodyTimeout, body_limits, timed_body
from gateway.metrics import Metrics
from gateway.screening.expect import send_continue
from gateway.screening.paths import NormalizedPath
from gateway.screening.trusted_headers import (
    BACKEND_TRUSTED,
    BACKEND_TRUSTED_PREFIXES,
    GATEWAY_OWNED,
    GATEWAY_OWNED_PREFIXES,
    HOP_BY_HOP,
    fold,
)
from gateway.throttle import Throttle
from gateway.upstream import (
    IDEMPOTENT,
    Exchange,
    UpstreamFailed,
    UpstreamPool,
    UpstreamTimedOut,
    request_head,
)

log = logging.getLogger("portcullis.forward")

# Never forwarded from a client: hop-by-hop fields and what the gateway says itself.
_NEVER = HOP_BY_HOP | GATEWAY_OWNED


class UpstreamError(Exception):
    """The upstream couldn't be reached (502) or didn't answer in time (504); or, with
    a `rule`, the client is at fault (408 `body_timeout`): a refusal to log as one."""

    def __init__(self, status: int, reason: str, rule: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.rule = rule


def upstream_headers(
    request: web.Request,
    route: Route,
    add: Mapping[str, str],
    strip_cookie: Callable[[str], bool] | None = None,
    cookie_mark: str = "",
) -> CIMultiDict[str]:
    """The client's headers minus what a backend must hear from the gateway alone,
    plus ours. Dropped: hop-by-hop fields; the gateway's own (X-Portcullis-*,
    X-Forwarded-*, Forwarded, X-Real-IP); headers backends trust for identity,
    client address, method or path (gateway/screening/trusted_headers.py), unless the
    route's `forward_headers` lists one; any `_` spelling of those or of a header
    in `add`; `Authorization` unless the route passes it; and the gateway's own
    cookies (`strip_cookie` names them, each holding `cookie_mark`): a backend
    never sees the session."""
    connection_listed = _connection_tokens(request.headers)
    allowed = route.forward_headers
    ours: set[str] | None = None
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        underscored = "_" in lower
        folded = lower.replace("_", "-") if underscored else lower
        if (
            folded in _NEVER
            or folded.startswith(GATEWAY_OWNED_PREFIXES)
            or lower in connection_listed
            or (lower == "authorization" and not route.pass_authorization)
        ):
            continue
        trusted = folded in BACKEND_TRUSTED or folded.startswith(BACKEND_TRUSTED_PREFIXES)
        if trusted and (underscored or lower not in allowed):
            continue
        if underscored:
            # Rare: fold the names we add only when a client sends a `_` spelling.
            ours = ours if ours is not None else {fold(ours_name) for ours_name in add}
            if folded in ours:
                continue
        if lower == "cookie" and strip_cookie is not None:
            value = without_cookies(value, strip_cookie, cookie_mark)
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


def without_cookies(header: str, strip: Callable[[str], bool], mark: str = "") -> str:
    """A ``Cookie`` header value without the pairs whose name (up to the first
    ``=``, trimmed) ``strip`` names; the rest trimmed, empty pairs dropped, joined
    by ``"; "``. ``mark`` is text every name ``strip`` names holds: only the pairs
    holding it are looked at, and the rest is rewritten in C, so an app's cookies
    (a client may send a thousand) cost about what their length does (one by one,
    1,000 cost 0.2-0.5 ms)."""
    if mark in header:
        kept: list[str] = []
        start = 0  # of the text not yet copied to `kept`
        found = header.find(mark)
        while found != -1:
            begin = header.rfind(";", 0, found) + 1
            end = header.find(";", found)
            end = len(header) if end == -1 else end
            if strip(header[begin:end].split("=", 1)[0].strip()):
                kept.append(header[start:begin])  # the pair leaves an empty one: dropped
                start = end
            found = header.find(mark, end + 1)
        kept.append(header[start:])
        header = "".join(kept)
    return "; ".join(filter(None, map(str.strip, header.split(";"))))


# RFC 9110 5.6.1 and 5.6.3: list elements are separated by commas and optional
# whitespace, which is spaces and tabs; aiohttp's parsers trim exactly these.
_OWS = " \t"


def _connection_tokens(headers: CIMultiDictProxy[str], trim: str | None = None) -> set[str]:
    """Header names listed in `Connection`: hop-by-hop for this one message. Each is
    trimmed of any whitespace (a name dropped too many is harmless), or of `trim`."""
    values = headers.getall("Connection", [])
    return {token.strip(trim).lower() for value in values for token in value.split(",")}


def _response_headers(
    upstream: CIMultiDictProxy[str], host: str, strip_cookie: Callable[[str], bool] | None = None
) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop fields and any ``Set-Cookie``
    for one of the gateway's own cookies (``strip_cookie`` names them): an app
    behind the gateway can't plant a session (its own, signed in as someone else)
    in the browser, nor clear or shadow the real one."""
    connection_listed = _connection_tokens(upstream)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in connection_listed:
            continue
        if lower == "set-cookie" and strip_cookie is not None:
            cookie = sets_cookie(value)
            if strip_cookie(cookie):
                _said_dropped(host, cookie)
                continue
        headers.add(name, value)
    return headers


def sets_cookie(header: str) -> str:
    """The name of the cookie a ``Set-Cookie`` value sets, as the browser will send
    it back: its name (RFC 6265bis 5.6: the part of the first ``;``-separated pair
    before ``=``, trimmed), or for a pair without ``=`` or with an empty name,
    where the browser keeps a nameless cookie and sends its value alone, the name
    that value reads as in a ``Cookie`` header (``=portcullis_session=x`` comes
    back as ``portcullis_session=x``)."""
    pair = header.split(";", 1)[0]
    name, equals, value = pair.partition("=")
    name = name.strip(" \t")
    if not equals:
        name, value = "", pair
    return name or value.partition("=")[0].strip(" \t")


_DROPPED_SAID = Throttle(60.0)  # per upstream host (hosts come from routes)


def _said_dropped(host: str, cookie: str) -> None:
    if _DROPPED_SAID.due(host):
        log.warning(
            "upstream %s set the gateway's own cookie %r: dropped (said once a minute)",
            host, cookie[:100],
        )  # fmt: skip


DEFAULT_LIMITS = LimitsConfig()


class Forwarder:
    """Kept-alive connections per upstream (gateway/upstream.py), with the route's
    timeouts; WebSockets on aiohttp's client, in a pool of their own."""

    def __init__(
        self,
        *,
        limits: LimitsConfig = DEFAULT_LIMITS,
        metrics: Metrics | None = None,
        strip_cookie: Callable[[str], bool] | None = None,
        cookie_mark: str = "",
    ) -> None:
        self._strip_cookie = strip_cookie
        self._cookie_mark = cookie_mark
        self._limits = limits
        self._metrics = metrics or Metrics()
        # WebSockets hold their connection for hours: a pool of their own, so idle
        # sockets never take the HTTP pool's slots (the per-identity limit and the
        # idle timeout bound it instead of a size that would make upgrades queue).
        self._ws_sessions: dict[tuple[str, float, float], aiohttp.ClientSession] = {}
        self._upstreams: dict[str, _Upstream] = {}
        self._tls: ssl.SSLContext | None = None

    def _upstream(self, upstream: str) -> _Upstream:
        known = self._upstreams.get(upstream)
        if known is None:
            known = self._upstreams[upstream] = _Upstream(URL(upstream))
        return known

    def _pool(self, upstream: _Upstream) -> UpstreamPool:
        pool = upstream.pool
        if pool is None:
            tls = None
            if upstream.base.scheme == "https":
                # As aiohttp's client: the system's CAs, the host name checked.
                tls = self._tls = self._tls or ssl.create_default_context()
            pool = UpstreamPool(
                upstream.connect_host, upstream.port, tls, self._limits.upstream_pool_size
            )
            upstream.pool = pool
        return pool

    def _ws_session(self, route: Route) -> aiohttp.ClientSession:
        """The route's WebSocket pool. Its timeouts bound the handshake as they bound
        a request (aiohttp's own default waits five minutes): the connection within
        connect_timeout, the upstream's answer within read_timeout. Once upgraded,
        the idle timeout bounds the socket instead (no ws_receive timeout)."""
        key = (route.upstream, route.connect_timeout, route.read_timeout)
        session = self._ws_sessions.get(key)
        if session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(
                total=None, connect=route.connect_timeout, sock_read=route.read_timeout
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                middlewares=(_redirect_is_the_answer,),
            )
            self._ws_sessions[key] = session
        return session

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            if upstream.pool is not None:
                upstream.pool.close()
        self._upstreams.clear()
        for session in self._ws_sessions.values():
            await session.close()
        self._ws_sessions.clear()

    async def forward(
        self,
        request: web.Request,
        route: Route,
        path: NormalizedPath,
        add: Mapping[str, str],
        *,
        expires_at: float | None = None,
        recheck: Recheck | None = None,
        recheck_by: float | None = None,
    ) -> web.StreamResponse:
        """Send the request upstream and stream the answer back. A WebSocket is
        bridged until either side closes it, it idles, `expires_at` (epoch seconds:
        the identity's end) passes, or `recheck` (run every recheck interval, and
        at `recheck_by`, when the allow stops holding as time passes: a step-up's
        max_age) says it must end: REVOKED (the policy no longer allows it) or
        UNLOGGED (the decision to go on could not be logged durably, `durability:
        sync`)."""
        headers = upstream_headers(request, route, add, self._strip_cookie, self._cookie_mark)
        upstream = self._upstream(route.upstream)
        if is_websocket(request):
            return await self._websocket(
                request, route, upstream.url_for(path), headers, expires_at, recheck, recheck_by
            )
        body = _Body(request.content, *body_limits(route, self._limits))
        await send_continue(request)  # decided and allowed: the body is wanted now
        exchange = await self._send(request, route, upstream, path, headers, body)
        try:
            return await self._relay(request, route, upstream, exchange, body)
        finally:
            exchange.close()

    async def _send(
        self,
        request: web.Request,
        route: Route,
        upstream: _Upstream,
        path: NormalizedPath,
        headers: CIMultiDict[str],
        body: _Body,
    ) -> Exchange:
        """Send the request and wait for the head of its answer, or raise UpstreamError."""
        chunked = request.body_exists and "Content-Length" not in headers
        try:
            head = request_head(
                request.method, upstream.target(path), upstream.host_header, headers.items(),
                chunked,
            )  # fmt: skip
        except ValueError as error:
            reason = f"request to upstream {route.app} not sent: {error}"
            raise UpstreamError(502, reason) from error
        try:
            return await self._pool(upstream).exchange(
                head,
                body.chunks() if request.body_exists else None,
                chunked=chunked,
                skip_body=request.method == "HEAD",
                retry=request.method in IDEMPOTENT,
                connect_timeout=route.connect_timeout,
                read_timeout=route.read_timeout,
            )
        except UpstreamFailed as error:
            if body.stalled is not None:
                # The upstream connection is closed (never reused): it was left mid-body.
                self._metrics.body_timeouts.labels(route.app).inc()
                raise UpstreamError(408, str(body.stalled), "body_timeout") from error
            if isinstance(error, UpstreamTimedOut):
                raise UpstreamError(504, f"upstream {route.app} did not answer in time") from error
            raise UpstreamError(502, f"upstream {route.app} unreachable: {error}") from error

    async def _relay(
        self,
        request: web.Request,
        route: Route,
        upstream: _Upstream,
        exchange: Exchange,
        body: _Body,
    ) -> web.StreamResponse:
        """Stream the answer to the client (whole, in one write, when it is all here)."""
        message, payload = exchange.message, exchange.payload
        # A small answer is usually all here with its headers: then it is sent whole.
        whole = payload.is_eof() and payload.exception() is None
        response = (_Whole if whole else web.StreamResponse)(
            status=message.code, reason=message.reason
        )
        try:
            response.headers.update(
                _response_headers(message.headers, upstream.connect_host, self._strip_cookie)
            )
            await response.prepare(request)
            if whole:
                await response.write_eof(payload.read_nowait())
                return response
            async for chunk in payload.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return response  # the client went away; nothing left to tell it
        except UpstreamFailed:
            # Headers are already sent: the only honest signal left is a cut connection
            # (an upstream timeout or error, or the client's body stalled mid-answer).
            if body.stalled is not None:
                self._metrics.body_timeouts.labels(route.app).inc()
            if request.transport is not None:
                request.transport.close()
            return response

    async def _websocket(
        self,
        request: web.Request,
        route: Route,
        url: URL,
        headers: CIMultiDict[str],
        expires_at: float | None,
        recheck: Recheck | None,
        recheck_by: float | None,
    ) -> web.StreamResponse:
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.pop(name, None)
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p
        ]
        headers.pop("Sec-WebSocket-Protocol", None)
        session = self._ws_session(route)
        try:
            upstream = await session.ws_connect(
                url.with_scheme("wss" if url.scheme == "https" else "ws"),
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=route.read_timeout),
            )
        except TimeoutError as error:  # aiohttp's ServerTimeoutError is one too
            raise UpstreamError(
                504, f"upstream {route.app} did not answer the WebSocket handshake in time"
            ) from error
        except aiohttp.ClientError as error:
            raise UpstreamError(
                502, f"upstream {route.app} refused the WebSocket: {error}"
            ) from error
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close()
            raise
        bridge = _Bridge(client, upstream)
        try:
            ended = await bridge.supervise(
                idle=self._limits.websocket_idle_timeout,
                expires_at=expires_at,
                recheck=recheck,
                recheck_by=recheck_by,
                interval=self._limits.websocket_recheck_interval,
            )
        finally:
            await bridge.stop()
        if ended is not None:
            code, message, reason = ended
            self._metrics.websocket_closes.labels(route.app, reason).inc()
            await client.close(code=code, message=message.encode())
            await upstream.close(code=code, message=message.encode())
        else:
            await upstream.close()
            await client.close()
        return client


# What aiohttp's client follows (its ws_connect has no allow_redirects).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def _redirect_is_the_answer(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """An upstream's redirect of a WebSocket handshake is its answer, never followed.
    Followed, the handshake went to whatever host the Location named, with the
    user's signed assertion and the decision's headers, and the client was bridged
    to a WebSocket the policy never judged. No browser follows one either (WHATWG
    WebSockets: any status but 101 fails the connection)."""
    response = await handler(request)
    if response.status in _REDIRECTS:
        response.close()
        raise aiohttp.WSServerHandshakeError(
            response.request_info,
            response.history,
            status=response.status,
            message="a redirect (not followed)",
            headers=response.headers,
        )
    return response


class _Upstream:
    """A route's `upstream` URL, read once: where to connect, what Host to send, and
    each request's target from exactly the parts the policy saw, never re-parsed from
    a string (a parser would cut at `#` or resolve `..`); and its connections, once
    a request needs them."""

    def __init__(self, base: URL) -> None:
        self.base = base
        self.pool: UpstreamPool | None = None
        self.connect_host = base.raw_host or ""
        default = 443 if base.scheme == "https" else 80
        self.port = base.port or default
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        self._prefix = base.raw_path.rstrip("/")

    def target(self, path: NormalizedPath) -> str:
        target = self._prefix + path.path
        return f"{target}?{path.query}" if path.query else target

    def url_for(self, path: NormalizedPath) -> URL:
        return URL.build(
            scheme=self.base.scheme,
            host=self.connect_host,
            port=self.base.explicit_port,
            path=self._prefix + path.path,
            query_string=path.query,
            encoded=True,
        )


class _Whole(web.StreamResponse):
    """An answer whose body is complete before it is sent: its headers go out with
    the body in one write, as aiohttp's own web.Response does, instead of a write
    (a send syscall) of their own. Same bytes on the wire; no client ever waits
    for headers, since the body is written right after them."""

    _send_headers_immediately = False


def is_websocket(request: web.Request) -> bool:
    """Whether the request asks to upgrade to a WebSocket: `Upgrade: websocket` and
    `upgrade` in `Connection` (RFC 9110 7.8, as aiohttp's parser and Envoy read an
    upgrade). An `Upgrade` alone is no upgrade: the request goes on as a plain one,
    its `Upgrade` dropped as hop-by-hop. So is `Connection: Upgrade` with a
    no-break space or another Unicode space: trimmed of spaces and tabs only, as the
    parser trims it, or aiohttp's WebSocketResponse would answer the allowed
    handshake with its own unlogged 400 after the upstream's WebSocket was opened."""
    return request.headers.get(
        "Upgrade", ""
    ).lower() == "websocket" and "upgrade" in _connection_tokens(request.headers, _OWS)


class _Body:
    """The request body as it goes upstream, remembering whether the client stalled."""

    def __init__(self, content: aiohttp.StreamReader, idle: float, total: float) -> None:
        self._content = content
        self._idle = idle
        self._total = total
        self.stalled: BodyTimeout | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in timed_body(self._content, idle=self._idle, total=self._total):
                yield chunk
        except BodyTimeout as stalled:
            self.stalled = stalled
            raise


FIRST_COMPLETED = asyncio.FIRST_COMPLETED
# Why the gateway ends a WebSocket: (close code, message, metrics label).
# 1008 is RFC 6455's "policy violation".
_IDLE = (1000, "idle timeout", "idle")
_EXPIRED = (1008, "token expired", "expired")
_REVOKED = (1008, "access revoked by policy", "revoked")
# 1011: the server can't go on (its decision to relay on could not be logged).
_UNLOGGED = (1011, "decision log unavailable", "unlogged")
# What a recheck answers when the socket must end (None: it goes on).
REVOKED, UNLOGGED = _REVOKED[2], _UNLOGGED[2]
# A recheck answers (REVOKED, UNLOGGED or None, and, when it goes on, the epoch
# seconds at which its allow stops holding as time passes, None if never).
Recheck = Callable[[], Awaitable[tuple[str | None, float | None]]]
_ENDS = {REVOKED: _REVOKED, UNLOGGED: _UNLOGGED}


class _Bridge:
    """Relays messages both ways and notes when the last one passed."""

    def __init__(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.last_message = self._loop.time()
        self._pumps = [
            asyncio.ensure_future(self._pump(client, upstream)),
            asyncio.ensure_future(self._pump(upstream, client)),
        ]

    async def _pump(
        self,
        source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    ) -> None:
        async for message in source:
            self.last_message = self._loop.time()
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            else:
                break

    async def supervise(
        self,
        *,
        idle: float,
        expires_at: float | None,
        recheck: Recheck | None,
        recheck_by: float | None,
        interval: float,
    ) -> tuple[int, str, str] | None:
        """Wait until either side ends the bridge (None), or the gateway must: the
        (code, message, reason) to close both sides with. The policy decides again
        every `interval`, and as soon as its last allow stops holding (`recheck_by`,
        then each recheck's own): a step-up's max_age ends the socket when it runs
        out, not up to an interval later."""
        loop = self._loop

        def on_loop_clock(epoch: float | None) -> float:
            # exp and valid_until are wall-clock; the loop's clock doesn't jump with NTP.
            return math.inf if epoch is None else loop.time() + epoch - time.time()

        def next_recheck(until: float | None) -> float:
            now = loop.time()
            due = on_loop_clock(until)
            if due <= now:  # an allow already past its own end: not a busy loop
                due = now + min(interval, 1.0)
            return min(now + interval, due)

        expiry = on_loop_clock(expires_at)
        next_check = next_recheck(recheck_by) if recheck is not None else math.inf
        while True:
            wake = min(self.last_message + idle, expiry, next_check)
            timeout = max(0.0, wake - loop.time())
            done, _ = await asyncio.wait(self._pumps, timeout=timeout, return_when=FIRST_COMPLETED)
            if done:
                return None
            now = loop.time()
            if now >= expiry:
                return _EXPIRED
            if now >= self.last_message + idle:
                return _IDLE
            if recheck is not None and now >= next_check:
                ended, until = await recheck()
                if ended is not None:
                    return _ENDS[ended]
                next_check = next_recheck(until)

    async def stop(self) -> None:
        for task in self._pumps:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
