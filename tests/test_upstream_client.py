"""The gateway's upstream client (gateway/upstream.py) against real sockets: hostile
upstreams that smuggle a second answer, send bytes nobody asked for, lie about
lengths, switch protocols, go silent or close mid-exchange; and the pool's limits,
keep-alive and cancellation. Each upstream here is a real TCP server on 127.0.0.1
that answers what the test scripts, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.http import HttpRequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.upstream as upstream_module
from gateway.config import Route
from gateway.upstream import (
    IDEMPOTENT,
    UpstreamFailed,
    UpstreamPool,
    UpstreamTimedOut,
    request_head,
)
from tests.gateway_stack import ServerFactory, start_stack
from tests.test_http_sink_tls import Pki, make_pki

WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


def ok(body: bytes, *extra: str) -> bytes:
    lines = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{lines}\r\n".encode() + body


@dataclass
class Seen:
    """One request as the upstream read it, and which connection it came on."""

    connection: int
    head: bytes
    body: bytes


# What the upstream does with a request: the bytes to answer (None: close without a
# word), given the request and how many it has seen before.
Script = Callable[[Seen, int], Awaitable[bytes | None]]


@dataclass
class Upstream:
    """A scripted HTTP/1.1 server on a real socket."""

    script: Script
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def accepted(self) -> int:
        """Count a new connection, its handler registered so that `stop` ends it: its number."""
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        return self.connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.accepted()
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                body = b""
                lower = head.lower()
                if b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in lower:
                    body = await reader.readuntil(b"0\r\n\r\n")
                request = Seen(number, head, body)
                self.seen.append(request)
                answer = await self.script(request, len(self.seen) - 1)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        except asyncio.CancelledError:
            return  # stopped by the test: ends quietly (asyncio logs a cancelled handler)
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def upstream(script: Script) -> AsyncIterator[Upstream]:
    server = Upstream(script)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await stop(server)


async def stop(server: Upstream) -> None:
    assert server.server is not None
    server.server.close()
    for task in server.tasks:
        task.cancel()
    await asyncio.gather(*server.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def pool_for(server: Upstream, limit: int = 0) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool("127.0.0.1", server.port, None, limit)
    try:
        yield pool
    finally:
        pool.close()


async def fetch(
    pool: UpstreamPool,
    method: str = "GET",
    target: str = "/",
    body: list[bytes] | None = None,
    read_timeout: float = 2.0,
    headers: tuple[tuple[str, str], ...] = (),
) -> tuple[int, bytes]:
    chunks = None
    if body is not None:

        async def produce() -> AsyncIterator[bytes]:
            for chunk in body:
                yield chunk

        chunks = produce()
    head = request_head(method, target, "upstream", headers, body is not None)
    exchange = await pool.exchange(
        head, chunks, chunked=body is not None, skip_body=method == "HEAD",
        retry=method in IDEMPOTENT, connect_timeout=2.0, read_timeout=read_timeout,
    )  # fmt: skip
    try:
        return exchange.message.code, await exchange.payload.read()
    finally:
        exchange.close()


async def echo(request: Seen, index: int) -> bytes:
    return ok(request.head.split(b" ")[1])


# --- the request head -------------------------------------------------------------

TOKEN = st.text("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                min_size=1, max_size=12)  # fmt: skip


def _control(ch: str) -> bool:
    """CR, LF, NUL and every other control character but HTAB."""
    return (ord(ch) < 0x20 and ch != "\t") or ch == "\x7f"


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(st.tuples(TOKEN, st.text(max_size=20).map(lambda v: v.strip(" \t"))), max_size=6))
def test_header_injection_by_cr_lf_or_control_characters_never_reaches_the_wire(
    headers: list[tuple[str, str]],
) -> None:
    """Whatever the values hold, the head either is refused whole, or a server's parser
    (aiohttp's own, llhttp) reads back exactly these headers: never one more, never
    a second request."""
    unsendable = any(_control(ch) for _, value in headers for ch in value)
    try:
        head = request_head("GET", "/a?b=1", "upstream", headers, False)
    except ValueError:
        assert unsendable
        return
    assert not unsendable

    class Protocol:
        _reading_paused = False

        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...

    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(Protocol(), loop, 2**16)  # type: ignore[arg-type]
        messages, _, tail = parser.feed_data(head)
    finally:
        loop.close()
    assert len(messages) == 1 and tail == b""
    message = messages[0][0]
    assert message.path == "/a?b=1"
    assert [(k, v) for k, v in message.headers.items()] == [("Host", "upstream"), *headers]


@pytest.mark.parametrize(
    ("method", "target"), [("GET", "/a b"), ("GET", "/a\r\nX: y"), ("GE T", "/"), ("GET", "/\0")]
)
def test_a_request_line_that_would_split_is_refused(method: str, target: str) -> None:
    with pytest.raises(ValueError):
        request_head(method, target, "upstream", [], False)


def test_header_bytes_reach_the_upstream_as_the_client_sent_them() -> None:
    # aiohttp's server reads a header's bytes as UTF-8 with surrogate escapes.
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    head = request_head("GET", "/", "upstream", [("X-Latin-1", raw)], False)
    assert b"X-Latin-1: caf\xe9 \xff\r\n" in head


# --- hostile answers --------------------------------------------------------------


async def test_a_smuggled_second_answer_never_answers_the_next_request() -> None:
    """Response queue poisoning: an upstream (or a request it was tricked into reading
    as two) answers once more than asked. That answer is never handed to the next
    request; the connection it came on is closed."""

    async def script(request: Seen, index: int) -> bytes:
        answer = ok(request.head.split(b" ")[1])
        return answer + ok(b"/poisoned") if index == 0 else answer

    async with upstream(script) as server, pool_for(server) as pool:
        assert await fetch(pool, target="/first") == (200, b"/first")
        await asyncio.sleep(0.05)
        assert await fetch(pool, target="/second") == (200, b"/second")
        assert await fetch(pool, target="/third") == (200, b"/third")
    assert server.connections == 2


async def test_bytes_sent_while_idle_close_the_connection() -> None:
    async def script(request: Seen, index: int) -> bytes:
        if index == 0:
            asyncio.get_running_loop().call_later(0.02, lambda: None)
            return ok(b"/first") + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n/injected"
        return ok(request.head.split(b" ")[1])

    async with upstream(script) as server, pool_for(server) as pool:
        assert await fetch(pool, target="/first") == (200, b"/first")
        await asyncio.sleep(0.05)
        for path in (b"/second", b"/third"):
            assert await fetch(pool, target=path.decode()) == (200, path)
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "bare-cr", "negative-length", "bad-chunk", "not-http"],
)
async def test_an_ambiguous_or_broken_answer_is_refused_and_its_connection_closed(
    answer: bytes,
) -> None:
    async def script(request: Seen, index: int) -> bytes:
        return answer if index == 0 else ok(b"fine")

    async with upstream(script) as server, pool_for(server) as pool:
        with pytest.raises(UpstreamFailed):
            await fetch(pool)
        assert await fetch(pool) == (200, b"fine")
    assert server.connections == 2


async def test_an_unasked_protocol_switch_is_refused() -> None:
    async def script(request: Seen, index: int) -> bytes:
        return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw bytes"

    async with upstream(script) as server, pool_for(server) as pool:
        with pytest.raises(UpstreamFailed, match="switched protocols"):
            await fetch(pool)


async def test_informational_answers_are_passed_over_for_the_final_one() -> None:
    async def script(request: Seen, index: int) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + ok(b"done")

    async with upstream(script) as server, pool_for(server) as pool:
        assert await fetch(pool) == (200, b"done")
        assert await fetch(pool) == (200, b"done")
    assert server.connections == 1


async def test_an_answer_that_runs_to_the_close_is_read_whole_and_not_reused() -> None:
    async def next_one(request: Seen, index: int) -> bytes:
        return ok(b"next")

    class CloseAfter(Upstream):
        async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.connections == 0:
                self.connections += 1
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                await writer.drain()
                writer.close()
                return
            await super()._serve(reader, writer)

    server = CloseAfter(next_one)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        async with pool_for(server) as pool:
            assert await fetch(pool) == (200, b"until the end")
            assert await fetch(pool) == (200, b"next")
        assert server.connections == 2
    finally:
        await stop(server)


async def test_a_reused_connection_closed_unanswered_is_retried_once_without_a_body() -> None:
    """A kept-alive connection the upstream closes as the request goes out: a GET
    goes again on a new connection; a request with a body is never sent twice."""

    async def script(request: Seen, index: int) -> bytes | None:
        if index in (1, 4):
            return None  # read it, close without a byte
        return ok(request.head.split(b" ")[1])

    async with upstream(script) as server, pool_for(server) as pool:
        assert await fetch(pool, target="/one") == (200, b"/one")
        assert await fetch(pool, target="/two") == (200, b"/two")
        assert [seen.head.split(b" ")[1] for seen in server.seen] == [b"/one", b"/two", b"/two"]
        assert await fetch(pool, target="/three") == (200, b"/three")
        with pytest.raises(UpstreamFailed, match="without answering"):
            await fetch(pool, "POST", "/four", body=[b"pay once"])
        assert [seen.body for seen in server.seen].count(b"8\r\npay once\r\n0\r\n\r\n") == 1


async def test_an_upstream_silent_mid_answer_times_out() -> None:
    async def script(request: Seen, index: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"

    async with upstream(script) as server, pool_for(server) as pool:
        exchange = await pool.exchange(
            request_head("GET", "/", "upstream", [], False), None, chunked=False,
            skip_body=False, retry=True, connect_timeout=1.0, read_timeout=0.3,
        )  # fmt: skip
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamTimedOut):
                await exchange.payload.read()
            assert 0.25 < asyncio.get_running_loop().time() - started < 2.0
        finally:
            exchange.close()


async def test_an_upstream_that_never_answers_times_out() -> None:
    async def script(request: Seen, index: int) -> bytes:
        await asyncio.sleep(5)
        return ok(b"late")

    async with upstream(script) as server, pool_for(server) as pool:
        with pytest.raises(UpstreamTimedOut):
            await fetch(pool, read_timeout=0.2)


async def test_an_answer_before_the_body_is_taken_closes_the_connection() -> None:
    """The upstream refuses early (413) while the body is still coming: the answer is
    relayed, and the connection, left mid-body, is never reused."""
    release = asyncio.Event()

    class Early(Upstream):
        async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            head = await reader.readuntil(b"\r\n\r\n")
            self.seen.append(Seen(self.connections, head, b""))
            if self.connections == 1:
                writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
                await writer.drain()
                await release.wait()
                writer.close()
                return
            await reader.readuntil(b"0\r\n\r\n")
            writer.write(ok(b"second"))
            await writer.drain()
            writer.close()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await asyncio.sleep(0.2)
        yield b"y" * 10

    server = Early(echo)
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        async with pool_for(server) as pool:
            exchange = await pool.exchange(
                request_head("POST", "/", "upstream", [], True), slow_body(), chunked=True,
                skip_body=False, retry=False, connect_timeout=1.0, read_timeout=1.0,
            )  # fmt: skip
            assert (exchange.message.code, await exchange.payload.read()) == (413, b"big")
            exchange.close()
            release.set()
            assert await fetch(pool, "POST", body=[b"b"]) == (200, b"second")
        assert server.connections == 2
    finally:
        await stop(server)


async def test_head_answers_have_no_body_and_keep_the_connection() -> None:
    async def script(request: Seen, index: int) -> bytes:
        if request.head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
        return ok(b"after")

    async with upstream(script) as server, pool_for(server) as pool:
        assert await fetch(pool, "HEAD") == (200, b"")
        assert await fetch(pool) == (200, b"after")
    assert server.connections == 1


# --- the pool ---------------------------------------------------------------------


async def test_connections_never_exceed_the_pool_limit_and_waiting_requests_complete() -> None:
    async def script(request: Seen, index: int) -> bytes:
        await asyncio.sleep(0.05)
        return ok(b"done")

    async with upstream(script) as server, pool_for(server, limit=2) as pool:
        answers = await asyncio.gather(*(fetch(pool) for _ in range(8)))
    assert answers == [(200, b"done")] * 8
    assert server.most_open <= 2
    assert server.connections == 2


async def test_a_cancelled_request_frees_its_connection() -> None:
    async def script(request: Seen, index: int) -> bytes:
        if index == 0:
            await asyncio.sleep(5)
        return ok(b"after")

    async with upstream(script) as server, pool_for(server, limit=1) as pool:
        waiting = asyncio.ensure_future(fetch(pool))
        await asyncio.sleep(0.1)
        queued = asyncio.ensure_future(fetch(pool))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.wait_for(queued, 2) == (200, b"after")
        assert await fetch(pool) == (200, b"after")


async def test_idle_connections_are_closed_after_the_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_module, "KEEPALIVE_S", 0.1)
    async with upstream(echo) as server, pool_for(server) as pool:
        assert await fetch(pool, target="/a") == (200, b"/a")
        assert await fetch(pool, target="/b") == (200, b"/b")
        assert server.connections == 1
        await asyncio.sleep(0.2)
        assert await fetch(pool, target="/c") == (200, b"/c")
    assert server.connections == 2


async def test_an_upstream_that_is_down_fails_fast() -> None:
    async with upstream(echo) as server:
        port = server.port
    pool = UpstreamPool("127.0.0.1", port, None, 0)
    with pytest.raises(UpstreamFailed, match="cannot connect"):
        await fetch(pool)
    pool.close()


# --- through the gateway ----------------------------------------------------------


async def test_the_gateway_never_relays_a_smuggled_answer_to_another_user(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Two users, one kept-alive upstream connection: the extra answer an upstream
    sends after alice's (addressed to whoever asks next) never reaches bob."""

    async def script(request: Seen, index: int) -> bytes:
        answer = ok(request.head.split(b" ")[1])
        return answer + ok(b"meant for the next user") if index == 0 else answer

    async with upstream(script) as server, start_stack(aiohttp_server, tmp_path) as running:
        running.gateway.route_table.routes.insert(
            0, Route("wms", f"http://127.0.0.1:{server.port}", "/wms/")
        )
        first = await running.get("/wms/alice", running.token("alice", **WAREHOUSE))
        assert (first.status, await first.read()) == (200, b"/wms/alice")
        await asyncio.sleep(0.05)
        second = await running.get("/wms/bob", running.token("bob", **WAREHOUSE))
        assert (second.status, await second.read()) == (200, b"/wms/bob")
    assert server.connections == 2


async def test_a_header_value_the_upstream_would_split_is_a_502_never_sent(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """A value with CR or LF can't come from a client (aiohttp's parser refuses it), so
    the one way in is the gateway's own headers: a route's forward_headers can't add
    any, and the policy's are checked, so this plants one in the gateway's `add`."""
    async with upstream(echo) as server, start_stack(aiohttp_server, tmp_path) as running:
        running.gateway.route_table.routes.insert(
            0, Route("wms", f"http://127.0.0.1:{server.port}", "/wms/")
        )
        forwarder = running.gateway.forwarder
        forward = forwarder.forward

        async def planted(request, route, path, add, **options):  # type: ignore[no-untyped-def]
            return await forward(request, route, path, {**add, "X-Planted": "a\r\nX-Admin: 1"},
                                 **options)  # fmt: skip

        forwarder.forward = planted  # type: ignore[method-assign]
        response = await running.get("/wms/stock", running.token("alice", **WAREHOUSE))
        assert response.status == 502
    assert server.seen == []


async def test_the_pool_shrinks_back_after_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections opened for a burst and idle since are closed by later traffic
    once they expire, not kept open (and the upstream's sockets with them) for good."""
    monkeypatch.setattr(upstream_module, "KEEPALIVE_S", 0.2)

    async def slow(request: Seen, index: int) -> bytes:
        await asyncio.sleep(0.05)
        return ok(b"done")

    async with upstream(slow) as server, pool_for(server) as pool:
        await asyncio.gather(*(fetch(pool) for _ in range(6)))
        assert server.open_now == 6
        # One request at a time, never idle long: the most recent connection is
        # always fresh, so only the expired ones behind it are for the pool to close.
        for _ in range(16):  # 0.2 s to expire, then a release each 0.07 s closes one
            assert await fetch(pool) == (200, b"done")
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert server.open_now == 1


# --- https upstreams ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def https_upstream(pki: Pki) -> AsyncIterator[int]:
    """aiohttp's server over TLS with a certificate for `localhost` that `pki`'s CA signed,
    answering each request with its path; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)

    async def path(request: web.Request) -> web.Response:
        return web.Response(body=request.path.encode())

    app = web.Application()
    app.router.add_get("/{tail:.*}", path)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_an_https_upstream_is_verified_and_its_connections_kept_alive(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki", "upstream")
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    async with https_upstream(pki) as port:
        pool = UpstreamPool("localhost", port, trusting, 0)
        try:
            assert await fetch(pool, target="/a") == (200, b"/a")
            assert await fetch(pool, target="/b") == (200, b"/b")
            assert len(pool._idle) == 1  # one TLS connection carried both
        finally:
            pool.close()


@pytest.mark.parametrize("attack", ["untrusted_ca", "wrong_host_name"])
async def test_an_https_upstream_that_does_not_prove_who_it_is_is_never_sent_a_request(
    tmp_path: Path, attack: str
) -> None:
    """A man in the middle with a certificate from another CA, or a certificate for
    another name: the handshake fails, and the request is never sent."""
    pki = make_pki(tmp_path / "pki", "upstream")
    other = make_pki(tmp_path / "other", "other")
    ca = other.ca if attack == "untrusted_ca" else pki.ca
    host = "localhost" if attack == "untrusted_ca" else "127.0.0.1"  # the cert names localhost
    async with https_upstream(pki) as port:
        pool = UpstreamPool(host, port, ssl.create_default_context(cafile=str(ca)), 0)
        try:
            with pytest.raises(UpstreamFailed, match="cannot connect"):
                await fetch(pool)
        finally:
            pool.close()
