"""Attacks on the gateway's upstream client (gateway/upstream.py) that its first tests
missed: answers racing a connection's reuse, half an answer nobody asked for, idle
connections kept past their keep-alive, and a slow client's body taken for an
upstream's silence. Real sockets, scripted upstreams (tests/test_upstream_client.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

import gateway.upstream as upstream_module
from gateway.upstream import request_head
from tests.test_upstream_client import Seen, Upstream, echo, fetch, ok, pool_for, stop, upstream


class Scripted(Upstream):
    """An upstream whose connection handler the test writes (`handle`), registered
    so that `stop` ends it."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted()
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()


async def started(server: Upstream) -> Upstream:
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    return server


async def test_an_answer_already_waiting_on_an_idle_connection_never_answers_the_next_request() -> (
    None
):
    """Response queue poisoning by a race: a second answer (a smuggled request's)
    reaches the gateway's socket while the connection is idle, but the loop hasn't
    read it yet when the next request takes that connection. Those bytes were there
    before the request was sent: they must not be read as its answer."""
    go = asyncio.Event()

    class Late(Scripted):
        async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.seen.append(Seen(self.connections, head, b""))
                writer.write(ok(head.split(b" ")[1]))
                if len(self.seen) == 1:
                    await go.wait()
                    writer.write(ok(b"/poisoned"))

    server = await started(Late(echo))
    try:
        async with pool_for(server) as pool:
            assert await fetch(pool, target="/first") == (200, b"/first")
            go.set()
            await asyncio.sleep(0)  # the upstream sends its unasked answer ...
            time.sleep(0.05)  # ... which reaches our socket; the loop hasn't read it
            assert await fetch(pool, target="/second") == (200, b"/second")
    finally:
        await stop(server)


async def test_half_an_unasked_answer_after_the_answer_closes_the_connection() -> None:
    """The start of a second answer arrives with the first (a TCP segment cut inside a
    smuggled answer's head). The parser holds it: the connection was sent a byte no
    request asked for and must not carry another request."""

    async def script(request: Seen, index: int) -> bytes:
        answer = ok(request.head.split(b" ")[1])
        return answer + b"HTTP/1.1 200 OK\r\nContent-Le" if index == 0 else answer

    async with upstream(script) as server, pool_for(server) as pool:
        assert await fetch(pool, target="/first") == (200, b"/first")
        assert await fetch(pool, target="/second") == (200, b"/second")
    assert server.connections == 2


async def test_idle_connections_past_the_keepalive_are_closed_under_steady_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a burst, the pool takes its most recently used connection first: the
    others sit idle. Past KEEPALIVE_S they are closed (as aiohttp's connector's
    cleanup does), not kept open until a burst reaches them."""
    monkeypatch.setattr(upstream_module, "KEEPALIVE_S", 0.2)

    async def script(request: Seen, index: int) -> bytes:
        await asyncio.sleep(0.05)
        return ok(b"done")

    async with upstream(script) as server, pool_for(server) as pool:
        assert await asyncio.gather(*(fetch(pool) for _ in range(3))) == [(200, b"done")] * 3
        assert server.open_now == 3
        for _ in range(8):  # one request at a time, for twice the keep-alive
            assert await fetch(pool) == (200, b"done")
        assert server.open_now == 1
        await asyncio.sleep(0.4)  # no request at all
        assert server.open_now == 0


async def test_a_client_slow_to_send_its_body_is_not_an_upstream_timeout() -> None:
    """read_timeout bounds the upstream (aiohttp's sock_read started once the body was
    sent); a client's pauses between body chunks are the body timeouts' business (a
    408 `body_timeout`), never a 504 that blames the upstream."""

    async def slow_body() -> AsyncIterator[bytes]:
        yield b"a" * 10
        await asyncio.sleep(0.6)
        yield b"b" * 10

    async def script(request: Seen, index: int) -> bytes:
        return ok(request.body)

    async with upstream(script) as server, pool_for(server) as pool:
        exchange = await pool.exchange(
            request_head("POST", "/", "upstream", [], True), slow_body(), chunked=True,
            skip_body=False, retry=False, connect_timeout=1.0, read_timeout=0.3,
        )  # fmt: skip
        try:
            assert exchange.message.code == 200
            assert (await exchange.payload.read()).endswith(b"b" * 10 + b"\r\n0\r\n\r\n")
        finally:
            exchange.close()
