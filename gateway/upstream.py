"""The HTTP/1.1 client the gateway forwards with: kept-alive connections per upstream,
one request at a time on each, answers read by aiohttp's own (llhttp) parser.

aiohttp's ClientSession costs about five times this per request (measured: 76 µs of
CPU against 16 on the same loop), for redirects, cookies, auth, proxies, tracing and
decompression the gateway never uses. What is kept is what makes forwarding safe:

- The request head is written by us from parts already checked (the method from
  aiohttp's server parser, a normalized path, screened headers) and refused whole if
  any part holds CR or LF but the line ends, or another control character but HTAB.
- The answer is parsed by the same parser aiohttp's client uses: a duplicate or
  conflicting Content-Length and Transfer-Encoding, bad chunking or a bare CR fail
  the exchange (502), never reach the client.
- A connection goes back to the pool only when its answer was read to the end, the
  upstream keeps it alive, the request body was sent whole and not a byte arrived
  that no request asked for (a second answer, bytes while idle): anything else is
  closed, so one exchange can never feed another's answer.
- An idle connection is closed after KEEPALIVE_S, as aiohttp's connector does,
  before most servers' own timeouts; a request without a body that finds its reused
  connection closed under it (not a byte answered) is retried once on a new one, as
  aiohttp retries idempotent requests.
- `read_timeout` is aiohttp's `sock_read`: no byte from the upstream, and none of
  the body sent to it, for that long, and the exchange fails (504 before the answer's
  head, a cut connection after). Time spent waiting for the client's next body chunk
  doesn't count: the body timeouts bound the client (408), never the upstream's.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import ssl
import termios
from collections import deque
from collections.abc import AsyncIterator, Iterable

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpResponseParser, RawResponseMessage
from aiohttp.streams import StreamReader

KEEPALIVE_S = 15.0  # aiohttp's connector default
READ_BUFFER = 2**16  # per answer before the upstream is paused (aiohttp's client default)
# Every byte but the controls (HTAB is no control here): what bytes.translate drops.
_NOT_CONTROL = bytes(b for b in range(256) if b == 0x09 or 0x20 <= b < 0x7F or b > 0x7F)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamFailed(Exception):
    """The upstream couldn't be reached, broke off the exchange or didn't answer HTTP."""


class UpstreamTimedOut(UpstreamFailed):
    """The upstream didn't connect or didn't send a byte within its timeout."""


class _Unanswered(UpstreamFailed):
    """The connection was closed before a byte of the answer: on a reused one, safe
    to retry a request that had no body."""


def request_head(
    method: str, target: str, host: str, headers: Iterable[tuple[str, str]], chunked: bool
) -> bytes:
    """The request line and headers, or ValueError if any part would end a line early.
    Header bytes go as the client sent them (aiohttp's server reads them as UTF-8 with
    surrogate escapes), so what the backend gets is what the policy saw."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    count = 3  # the request line, Host and the blank line that ends the head
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
        count += 1
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
        count += 1
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8", "surrogateescape")
    # One CR LF per line, and no other control character but HTAB: a value with
    # CR or LF would be a header, or a request, of the client's choosing; NUL and
    # the rest are what servers read as line ends or refuse. (The head without
    # its other bytes is what's left to look at: one pass in C, where a regex
    # search over a kilobyte of assertion cost 3 us a request. Non-ASCII text and
    # surrogate-escaped bytes encode to bytes >= 0x80, none of them controls.)
    if head.translate(None, _NOT_CONTROL) != b"\r\n" * count:
        raise ValueError("a request line or header would hold CR, LF or a control character")
    if " " in target or " " in method:
        raise ValueError("a space in the request target or method")
    return head


class _Connection(BaseProtocol):
    """One kept-alive connection to an upstream, carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.idle_since = 0.0
        self.fd = -1  # the socket's, for _quiet
        self.lost = False
        self.spoiled = False  # bytes no request asked for, or a second answer
        self.awaiting_body = False  # the body's next chunk is the client's to send
        self._head: asyncio.Future[tuple[RawResponseMessage, StreamReader]] | None = None
        self._payload: StreamReader | None = None
        self._answered = False  # the head of this exchange's answer has arrived
        self._got_bytes = False
        self._timeout = 0.0
        self._last_progress = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, skip_body: bool, read_timeout: float) -> None:
        """Ready for one exchange: a parser of its own (HEAD answers have no body)."""
        if self.lost:
            raise _Unanswered("upstream closed the connection")
        self._parser = HttpResponseParser(
            self,
            self._loop,
            READ_BUFFER,
            payload_exception=UpstreamFailed,
            response_with_body=not skip_body,
            read_until_eof=True,
            auto_decompress=False,
        )
        self._head = self._loop.create_future()
        self._payload = None
        self._answered = False
        self._got_bytes = False
        self._timeout = read_timeout
        self.progress()
        self._timer = self._loop.call_at(self._last_progress + read_timeout, self._check)

    def progress(self) -> None:
        self._last_progress = self._loop.time()

    async def answer(self) -> tuple[RawResponseMessage, StreamReader]:
        assert self._head is not None
        return await self._head

    def complete(self) -> bool:
        """Whether the exchange ended cleanly and the connection can carry another."""
        payload = self._payload
        return (
            self._answered
            and payload is not None
            and payload.is_eof()
            and payload.exception() is None
            and not self.spoiled
            and not self.lost
            and self.transport is not None
            and not self.transport.is_closing()
            and not self._began_another()
        )

    def _began_another(self) -> bool:
        """Whether the parser holds the start of an answer after this one's end (bytes
        no request asked for, too few to make a message of): the end of the stream
        would complete it. The parser is not used again."""
        parser = self._parser
        try:
            return parser is not None and parser.feed_eof() is not None
        except Exception:
            return True

    def end(self) -> None:
        """The exchange is over, however it went: no timer, no parser."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._parser = None
        self._head = None
        self._payload = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if data:
            self._last_progress = self._loop.time()
            self._got_bytes = True
        parser = self._parser
        if parser is None:
            if data:  # nothing asked for these: the stream can't be trusted again
                self._spoil()
            return
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as error:  # the parser's refusal: not HTTP, or ambiguous
            self.fail(UpstreamFailed(f"upstream sent what isn't a valid HTTP answer: {error}"))
            return
        for message, payload in messages:
            if self._answered:  # a second answer to one request
                self._spoil()
                return
            if message.code < 200:
                if message.code == 101 or upgraded:
                    self.fail(UpstreamFailed("upstream switched protocols unasked"))
                    return
                continue  # 100 Continue, 103 Early Hints: the final answer follows
            self._answered = True
            self._payload = payload
            head = self._head
            if head is not None and not head.done():
                head.set_result((message, payload))
            if message.should_close:
                self.spoiled = True  # closed once this answer is read

    def _spoil(self) -> None:
        self.spoiled = True
        if self.transport is not None:
            self.transport.close()

    def fail(self, error: UpstreamFailed) -> None:
        """End the exchange with `error` (its waiter or its body's reader gets it) and
        close the connection."""
        self.spoiled = True
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        elif self._payload is not None and not self._payload.is_eof():
            self._payload.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def _check(self) -> None:
        self._timer = None
        if self._head is None or (self._answered and self._payload is not None
                                  and self._payload.is_eof()):  # fmt: skip
            return
        now = self._loop.time()
        if self._reading_paused or self.awaiting_body:
            # Our side holds the upstream back (a slow reader, or a client slow to send
            # the body, which the body timeouts bound): not the upstream's silence.
            self._last_progress = now
        due = self._last_progress + self._timeout
        if now < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self.fail(UpstreamTimedOut(f"no byte from the upstream for {self._timeout:g} s"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        super().connection_lost(exc)
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_eof()  # ends an answer that runs to the connection's close
        except Exception as error:
            if self._payload is not None and not self._payload.is_eof():
                self._payload.set_exception(UpstreamFailed(f"upstream answer cut off: {error}"))
        head = self._head
        if head is not None and not head.done():
            reason = "upstream closed the connection without answering"
            if exc is not None:
                reason += f" ({exc})"
            head.set_exception(
                _Unanswered(reason) if not self._got_bytes else UpstreamFailed(reason)
            )
        elif self._payload is not None and not self._payload.is_eof():
            self._payload.set_exception(UpstreamFailed("upstream closed mid-answer"))

    async def drain(self) -> None:
        """Wait until the upstream takes more of the request body."""
        if self.transport is None:
            raise UpstreamFailed("upstream closed the connection")
        if not self._paused:
            return
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        except ConnectionError as error:
            raise UpstreamFailed(f"upstream closed the connection: {error}") from error


class Exchange:
    """One request on a pooled connection: its answer's head and body, and `close()`,
    which returns the connection to the pool only if the exchange ended cleanly."""

    def __init__(
        self, pool: UpstreamPool, connection: _Connection, writer: asyncio.Task[None] | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._writer = writer
        self.message: RawResponseMessage
        self.payload: StreamReader

    def close(self) -> None:
        connection = self._connection
        writer = self._writer
        reusable = connection.complete() and (
            writer is None
            or (writer.done() and not writer.cancelled() and writer.exception() is None)
        )
        if writer is not None and not writer.done():
            writer.cancel()  # the upstream answered before it took the whole body
        connection.end()
        self._pool.release(connection, reusable)


class UpstreamPool:
    """Connections to one upstream (scheme, host, port): at most `limit` open (0: no
    limit), the most recently used idle one first."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        limit: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._host = host
        self._port = port
        self._tls = tls
        self._limit = limit
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._sweep_at: asyncio.TimerHandle | None = None

    async def exchange(
        self,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        skip_body: bool,
        retry: bool,
        connect_timeout: float,
        read_timeout: float,
    ) -> Exchange:
        """Send a request and wait for its answer's head. The caller reads the body
        from `payload` and then calls `close()`. Raises UpstreamFailed (or
        UpstreamTimedOut), and whatever the body's iterator raised."""
        while True:
            connection, reused = await self._acquire(connect_timeout)
            writer: asyncio.Task[None] | None = None
            try:
                connection.begin(skip_body, read_timeout)
                assert connection.transport is not None
                connection.transport.write(head)
                if body is not None:
                    writer = asyncio.ensure_future(_send_body(connection, body, chunked))
                    writer.add_done_callback(_settled)
                message, payload = await connection.answer()
            except _Unanswered:
                if writer is not None:
                    writer.cancel()
                connection.end()
                self.release(connection, False)
                if reused and retry and body is None:
                    retry = False
                    continue
                raise
            except BaseException:
                if writer is not None and not writer.done():
                    writer.cancel()
                connection.spoiled = True
                connection.end()
                self.release(connection, False)
                raise
            exchange = Exchange(self, connection, writer)
            exchange.message = message
            exchange.payload = payload
            return exchange

    async def _acquire(self, connect_timeout: float) -> tuple[_Connection, bool]:
        while True:
            now = self._loop.time()
            idle = self._idle
            while idle:
                connection = idle.pop()
                transport = connection.transport
                if (
                    transport is not None
                    and not connection.lost
                    and not connection.spoiled
                    and now - connection.idle_since < KEEPALIVE_S
                    and not transport.is_closing()
                    and _quiet(connection)
                ):
                    return connection, True
                self._discard(connection)
            if not self._limit or self._open < self._limit:
                break
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.done() or waiter.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                else:  # woken and cancelled at once: pass the turn on
                    self._wake()
                raise
        self._open += 1
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await self._loop.create_connection(
                    lambda: _Connection(self._loop),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except TimeoutError as error:
            self._open -= 1
            self._wake()
            raise UpstreamTimedOut(
                f"could not connect to {self._host}:{self._port} in {connect_timeout:g} s"
            ) from error
        except OSError as error:  # refused, unreachable, no such host, TLS refused
            self._open -= 1
            self._wake()
            raise UpstreamFailed(f"cannot connect to {self._host}:{self._port}: {error}") from error
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return connection, False

    def release(self, connection: _Connection, reusable: bool) -> None:
        if reusable and not self._closed:
            connection.idle_since = self._loop.time()
            self._idle.append(connection)
            if self._sweep_at is None:
                due = connection.idle_since + KEEPALIVE_S
                self._sweep_at = self._loop.call_at(due, self._sweep)
            self._wake()
        else:
            self._discard(connection)

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE_S (the oldest first in the list: the
        most recently used is taken first, so the others may idle on under load)."""
        self._sweep_at = None
        idle = self._idle
        now = self._loop.time() + 0.001  # a timer may fire a little early
        expired = 0
        while expired < len(idle) and now - idle[expired].idle_since >= KEEPALIVE_S:
            expired += 1
        stale, idle[:expired] = idle[:expired], []
        for connection in stale:
            self._discard(connection)
        if idle:
            self._sweep_at = self._loop.call_at(idle[0].idle_since + KEEPALIVE_S, self._sweep)

    def _discard(self, connection: _Connection) -> None:
        self._open -= 1
        if connection.transport is not None:
            connection.transport.close()
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close the idle connections; those in use close when their exchange ends."""
        self._closed = True
        if self._sweep_at is not None:
            self._sweep_at.cancel()
            self._sweep_at = None
        while self._idle:
            self._discard(self._idle.pop())


async def _send_body(connection: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Send the request body (chunk-encoded when the client's was: its length isn't
    known). If it fails (the client stalled or went, the upstream closed), the
    exchange fails with it and the connection is closed: the upstream is left waiting
    for bytes that will never come."""
    try:
        chunks = aiter(body)
        while True:
            connection.awaiting_body = True
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            finally:
                connection.awaiting_body = False
            connection.progress()
            transport = connection.transport
            if transport is None:
                raise UpstreamFailed("upstream closed the connection while taking the body")
            if chunked:
                if chunk:
                    transport.writelines((f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            await connection.drain()
            connection.progress()
        if chunked and connection.transport is not None:
            connection.transport.write(b"0\r\n\r\n")
        connection.progress()  # the answer's time runs from the body's end
    except asyncio.CancelledError:
        raise
    except BaseException as error:
        connection.fail(UpstreamFailed(f"request body not sent whole: {error}"))
        raise


_UNREAD = array.array("i", [0])


def _quiet(connection: _Connection) -> bool:
    """Whether no byte waits unread on an idle connection's socket. Bytes the loop
    hasn't delivered yet (an answer nobody asked for) were sent before the next
    request: taken for its answer, they would answer it. (FIONREAD: 0.4 µs, a tenth
    of a MSG_PEEK recv through a socket object. An upstream's close that the loop
    hasn't read yet reads as quiet: the request then finds the connection closed
    unanswered, and goes again if it may.)"""
    if connection.fd < 0:
        return True
    try:
        fcntl.ioctl(connection.fd, termios.FIONREAD, _UNREAD, True)
    except OSError:
        return False
    return _UNREAD[0] == 0


def _settled(writer: asyncio.Task[None]) -> None:
    """A body writer's error reached its exchange (connection.fail): seen, not lost."""
    if not writer.cancelled():
        writer.exception()
