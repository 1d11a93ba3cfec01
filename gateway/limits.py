"""Bounded resources: no client holds a connection, an upstream slot or a socket for long."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from gateway.config import LimitsConfig, Route, user_name
from gateway.identity import Identity
from gateway.parser_refusals import describe
from gateway.transport_security import HEADER as HSTS_HEADER
from gateway.transport_security import TransportSecurity


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
        # Issuer and subject as one user (user_name: joined with colons alone, issuer
        # http://idp's subject "8443:alice" was the same slot owner as issuer
        # http://idp:8443's alice, and could hold all of her slots).
        return f"{identity.method}:{user_name(identity.issuer or '', identity.subject)}"
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


# Peer address, status, why, and the first bytes of the request as received.
BadRequest = Callable[[Any, int, str, bytes], None]
HEAD_KEPT = 512  # bytes of a request's start kept to log it if the parser refuses it
HEAD_END = b"\r\n\r\n"  # a request head ends at its first empty line (aiohttp wants CR LF)
CUTS_PER_READ = 32  # at most this many parser calls for one read from the socket


class ConnectionCounter:
    """Open connections per source address: past `limit`, a new one is closed at
    once, so one client can't hold every file descriptor of the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        left = self._open.get(address, 1) - 1
        if left > 0:
            self._open[address] = left
        else:
            self._open.pop(address, None)  # no entry per address ever seen


class HeaderTimeoutProtocol(RequestHandler):
    """aiohttp's connection handler plus what aiohttp lacks:

    - a header-read deadline: a connection must deliver complete request headers
      within `header_timeout` of being opened, or of the first byte of its next
      request, or it is closed (idle kept-alive connections are aiohttp's own
      keepalive_timeout);
    - a cap on the bytes of unfinished headers (aiohttp would buffer up to 128
      fields of 16 KiB, 2 MiB a connection): past `pending_header_bytes` a 431;
    - a cap on open connections per source address (`ConnectionCounter`);
    - requests aiohttp's parser refuses reach `on_bad_request` (a decision-log
      event) and the server log as one line, not a traceback each, with what
      the parser found wrong (not the bytes it quotes) and the start of the
      request refused (not of another request pipelined before it)."""

    __slots__ = (
        "_body",
        "_carry",
        "_counted",
        "_counter",
        "_fresh",
        "_head",
        "_header_timeout",
        "_header_timer",
        "_held",
        "_on_bad_request",
        "_on_cut",
        "_pending",
        "_pending_limit",
        "_refused",
        "_security",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        on_cut: Callable[[str], None],
        on_bad_request: BadRequest | None = None,
        counter: ConnectionCounter | None = None,
        pending_header_bytes: int = 0,
        transport_security: TransportSecurity | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        # The answers this connection writes itself carry the gateway's HSTS too:
        # no app's on_response_prepare runs for them.
        self._security = transport_security
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._on_cut = on_cut
        self._on_bad_request = on_bad_request
        self._counter = counter
        self._counted: str | None = None  # the address this connection counts against
        self._pending = 0  # bytes received since the current request began
        self._pending_limit = pending_header_bytes
        # Which request the parser is in, to name it if the parser refuses it
        # (_parse): its first bytes, or None when where it began is not known.
        self._head: bytes | None = None
        self._fresh = True  # the next byte received starts a request
        self._body: StreamReader | None = None  # the body of the request _head names
        self._carry = b""  # the last 3 bytes received: a head's end may straddle two reads
        self._refused = False  # the parser refused; it reads nothing more
        # The rest of a read once aiohttp's queue of requests filled in it: given to
        # the parser when aiohttp asks for what it kept (data_received(b"")).
        self._held = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._counter is not None:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if peer else ""
            if not self._counter.admit(address):
                self._on_cut("connections_per_ip")
                self.force_close()
                return
            self._counted = address
        self._arm()  # a connection that never sends a byte is cut too

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and data and not self._request_in_progress:
            self._arm()  # the first byte of the next request on a kept-alive connection
        if self._header_timer is not None:
            self._pending += len(data)
        self._parse(data)
        if self._header_timer is not None:
            if self._messages or self._request_in_progress:
                self._disarm()  # the headers are complete
            elif self._pending_limit and self._pending > self._pending_limit:
                self._headers_too_large()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._counted is not None and self._counter is not None:
            self._counter.release(self._counted)
            self._counted = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or self._on_bad_request is None:
            return super().handle_error(request, status, exc, message)
        # The parser refused the request (no handler ran): logged as a refusal, and
        # one line in the server log instead of aiohttp's traceback per request.
        # Only the parser's own words: its message quotes the offending bytes.
        reason = describe(exc)
        self._on_bad_request(self.peername, status, reason, self._head or b"")
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        response = web.Response(status=status, text=f"{status} Bad Request: {reason}\n")
        if (hsts := self._hsts()) is not None:
            response.headers[HSTS_HEADER] = hsts
        response.force_close()
        return response

    def _hsts(self) -> str | None:
        """Strict-Transport-Security for an answer on this connection, or None."""
        if self._security is None or self.transport is None:
            return None
        tls = self.transport.get_extra_info("sslcontext") is not None
        return self._security.over("https" if tls else "http")

    def _parse(self, data: bytes) -> None:
        """Hand `data` to aiohttp's parser and keep, in `_head`, the first bytes of
        the request the parser is in, so a refusal names the request refused.

        A read can hold several pipelined requests, and an attacker can put a
        harmless one before the one the parser refuses: the first bytes of the
        read would name the wrong target. So the parser gets the read in pieces
        cut after every CR LF CR LF. A request head ends at its first one (both
        of aiohttp's parsers refuse a bare LF), so within a piece at most one head
        ends, at the piece's end; when it does and the request has no body, the
        next piece starts the next request. Where that can't be known (after a
        body, an upgrade, once aiohttp's queue of requests is full and its parser
        keeps the rest for later, or past CUTS_PER_READ pieces) `_head` is None
        until a bodiless request ends a piece again: no request line is claimed.

        Cut, a read is parsed as if its pieces came in separate reads: aiohttp
        parses incrementally, and when a piece is refused the requests of the
        earlier pieces of the same read are dropped, as aiohttp drops them when
        one call refuses. Two things aiohttp decides per call do change, to what
        a client gets anyway by sending the rest in a later read: its C parser
        ignores the rest of a read after an Upgrade it doesn't take, and its
        pure-Python parser refuses a read with more after `Connection: close`."""
        if not data and self._held:
            # aiohttp drained its queue and asks its parser for what it kept: ours
            # follows that in the stream (its C parser puts its own first).
            data, self._held = self._held, b""
            self._forget()
            super().data_received(data)
            return
        if (
            not data  # aiohttp re-reading what its parser kept while the queue was full
            or self._refused
            or self._upgraded
            or self._payload_parser is not None
        ):
            if data:
                self._forget()
            super().data_received(data)
            return
        queued = len(self._messages)
        if (
            self._fresh
            and not self._buffer_paused
            and data.find(HEAD_END) == len(data) - len(HEAD_END)
            and data[:1] not in b"\r\n"  # (so no head end straddles the last read and this)
        ):
            # The usual read: one request's whole head and nothing more. What the loop
            # below does with it, less its bookkeeping (3 us a request in (c) under wrk).
            self._fresh = False
            self._head, self._body = data[:HEAD_KEPT], None
            super().data_received(data)
            self._after_piece(queued, queued, cut=True)
            self._carry = data[-3:]
            return
        start = 0
        for cuts in itertools.count():
            if cuts and self._buffer_paused:
                # aiohttp's queue filled: its C parser would still parse (and queue)
                # what it is given next, past the queue's limit, and a refusal in it
                # would drop the requests queued before. So the rest waits, as it
                # waits in aiohttp's own parser when one call fills the queue.
                self._held = data[start:]
                self._forget()
                return
            if self._body is not None and self._body.is_eof():
                self._forget()  # the body ended somewhere in what was read: not known where
            cutting = self._body is None and not self._buffer_paused and cuts < CUTS_PER_READ
            end = self._next_head_end(data, start) if cutting else -1
            piece = data[start:] if end < 0 else data[start:end]
            if self._fresh:
                self._fresh = False
                self._head, self._body = b"", None
            if self._head is not None and self._body is None and len(self._head) < HEAD_KEPT:
                # Empty lines before a request line are skipped by the parser too.
                more = piece[:HEAD_KEPT] if self._head else piece[:HEAD_KEPT].lstrip(b"\r\n")
                self._head = (self._head + more)[:HEAD_KEPT]
            before = len(self._messages)
            super().data_received(piece)
            if self._after_piece(queued, before, cut=cutting):
                return
            if end < 0 or end == len(data):
                break  # nothing left after this piece
            start = end
        self._carry = (self._carry + data[-3:])[-3:]

    def _after_piece(self, queued: int, before: int, *, cut: bool) -> bool:
        """After the parser took a piece (with ``before`` messages queued; the
        read began at ``queued``): True if it refused it."""
        if len(self._messages) == before + 1:  # the usual: one request, or one refusal
            message, payload = self._messages[-1]
            if isinstance(message, RawRequestMessage):
                self._ended([(message, payload)], cut=cut and not self._buffer_paused)
                return False
        new = list(itertools.islice(self._messages, before, None))
        if any(not isinstance(message, RawRequestMessage) for message, _ in new):
            self._refused_in(queued, cut=cut)
            return True
        if new:
            self._ended(new, cut=cut and not self._buffer_paused)
        return False

    def _next_head_end(self, data: bytes, start: int) -> int:
        """Where in `data` past `start` a request head could end (just after a
        CR LF CR LF, the first from `start` on), or -1."""
        if start == 0 and self._carry:
            joined = self._carry + data[:3]
            at = joined.find(HEAD_END)
            if at >= 0:
                return at + len(HEAD_END) - len(self._carry)
        # From 3 bytes back: a CR LF CR LF may overlap the one that ended at `start`.
        at = data.find(HEAD_END, max(start - 3, 0))
        return at + len(HEAD_END) if at >= 0 else -1

    def _ended(self, new: list[Any], *, cut: bool) -> None:
        """Requests the parser completed from the last piece: `_head` names the next
        one if the piece ended exactly with one request head and it has no body."""
        message, payload = new[-1]
        if not cut or len(new) != 1 or self._upgraded or message.upgrade:
            self._forget()
        elif payload is EMPTY_PAYLOAD:
            self._fresh = True
        else:
            self._body = payload  # `_head` still names the request its body belongs to

    def _refused_in(self, queued: int, *, cut: bool) -> None:
        """The parser refused the last piece: keep aiohttp's answer to such a read
        (only the 400: the requests completed earlier in the read are dropped, as
        when the read is parsed in one call), and whether `_head` names the
        request refused: not if the request it names had a body that had ended,
        nor if the piece was not cut (requests may have ended in it before)."""
        self._refused = True
        refusal = self._messages[-1]
        while len(self._messages) > queued:
            self._messages.pop()
            self._request_count -= 1
        self._messages.append(refusal)
        self._request_count += 1
        # Refused in the body of the request `_head` names, or in a cut piece.
        named = not self._body.is_eof() if self._body is not None else cut
        if not named:
            self._head = None

    def _forget(self) -> None:
        """Where the current request began is not known: claim no request line."""
        self._head, self._fresh, self._body = None, False, None

    def _headers_too_large(self) -> None:
        reason = f"more than {self._pending_limit} bytes of request headers"
        self._on_cut("header_bytes")
        if self._on_bad_request is not None:
            self._on_bad_request(self.peername, 431, reason, self._head or b"")
        if self.transport is not None:
            body = f"431 Request Header Fields Too Large: {reason}\n".encode()
            hsts = self._hsts()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                + (b"" if hsts is None else f"{HSTS_HEADER}: {hsts}\r\n".encode())
                + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.force_close()

    def _arm(self) -> None:
        self._pending = 0
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
        self,
        base: web.Server,
        *,
        header_timeout: float,
        on_cut: Callable[[str], None],
        on_bad_request: BadRequest | None = None,
        connections_per_ip: int = 0,
        pending_header_bytes: int = 0,
        transport_security: TransportSecurity | None = None,
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
        self._on_bad_request = on_bad_request
        self._counter = ConnectionCounter(connections_per_ip) if connections_per_ip else None
        self._pending_header_bytes = pending_header_bytes
        self._transport_security = transport_security

    def __call__(self) -> RequestHandler:
        return HeaderTimeoutProtocol(
            self,
            header_timeout=self._header_timeout,
            on_cut=self._on_cut,
            on_bad_request=self._on_bad_request,
            counter=self._counter,
            pending_header_bytes=self._pending_header_bytes,
            transport_security=self._transport_security,
            loop=self._loop,
            **self._kwargs,
        )
