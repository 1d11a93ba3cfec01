"""Attacks on the WebSocket's way upstream (gateway/forward.py `_websocket`): the
handshake the gateway sends an upstream on the user's behalf once the policy
allowed it, and what it does with the answer. The gateway stack and scripted
upstreams, each a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config import Route
from tests.gateway_stack import ServerFactory, start_stack

pytestmark = pytest.mark.timeout(60)
WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_an_upstreams_redirect_never_takes_the_users_websocket_to_another_host(
    aiohttp_server: ServerFactory, tmp_path: Path, status: int
) -> None:
    """WMS answers the handshake for /wms/live with a redirect to another host (an
    open redirect in the app, `/wms/go?to=...`, does it for anyone). A browser
    never follows one (WHATWG WebSockets: any status but 101 fails the
    connection); aiohttp's client did: the other host got the handshake with
    alice's signed X-Portcullis-Assertion, which any app behind the gateway takes
    for her, and she was bridged to a WebSocket the policy never judged (an
    internal service's, on any path). The redirect is the upstream's answer, a
    502, and the other host hears nothing."""
    reached: list[web.Request] = []

    async def internal(request: web.Request) -> web.StreamResponse:
        reached.append(request)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_str(f"internal: {message.data}")
        return socket

    inside = web.Application()
    inside.router.add_get("/{tail:.*}", internal)
    elsewhere = await aiohttp_server(inside)

    async def redirect(request: web.Request) -> web.Response:
        location = f"http://127.0.0.1:{elsewhere.port}/admin/console"
        return web.Response(status=status, headers={"Location": location})

    wms = web.Application()
    wms.router.add_get("/{tail:.*}", redirect)
    upstream = await aiohttp_server(wms)
    async with start_stack(aiohttp_server, tmp_path) as stack:
        stack.gateway.route_table.routes.insert(
            0, Route("wms", f"http://127.0.0.1:{upstream.port}", "/wms/")
        )
        token = stack.token("alice", **WAREHOUSE)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stack.session.ws_connect(
                stack.url.replace("http", "ws") + "/wms/live",
                headers={"Authorization": f"Bearer {token}"},
            )
        assert refused.value.status == 502
        assert reached == []


async def test_an_upstream_that_never_answers_the_handshake_is_a_504_within_its_read_timeout(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The route's read_timeout bounds how long the upstream may send nothing, and a
    request to a silent WMS is a 504 within it; its WebSocket handshake waited on
    aiohttp's own default, five minutes, holding the client's connection and one of
    alice's `websockets_per_identity` slots all the while (sixteen such sockets and
    she can open no other). The handshake gets the route's timeouts too."""
    answer = asyncio.Event()

    async def silent(request: web.Request) -> web.Response:
        await answer.wait()
        return web.Response(text="too late")

    wms = web.Application()
    wms.router.add_get("/{tail:.*}", silent)
    upstream = await aiohttp_server(wms)
    async with start_stack(aiohttp_server, tmp_path) as stack:
        stack.gateway.route_table.routes.insert(
            0, Route("wms", f"http://127.0.0.1:{upstream.port}", "/wms/", read_timeout=0.3)
        )
        token = stack.token("alice", **WAREHOUSE)
        try:
            async with asyncio.timeout(10):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await stack.session.ws_connect(
                        stack.url.replace("http", "ws") + "/wms/live",
                        headers={"Authorization": f"Bearer {token}"},
                    )
        finally:
            answer.set()
        assert refused.value.status == 504


async def test_an_open_websocket_may_be_silent_longer_than_the_read_timeout(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The read_timeout bounds the handshake's answer only: once upgraded, a socket
    neither side speaks on is the idle timeout's to end (`websocket_idle_timeout`)."""
    async with start_stack(aiohttp_server, tmp_path) as stack:
        wms = next(route for route in stack.gateway.route_table.routes if route.app == "wms")
        stack.gateway.route_table.routes.insert(
            0, Route("wms", wms.upstream, "/wms/", read_timeout=0.3)
        )
        token = stack.token("alice", **WAREHOUSE)
        async with stack.session.ws_connect(
            stack.url.replace("http", "ws") + "/wms/live",
            headers={"Authorization": f"Bearer {token}"},
        ) as socket:
            await asyncio.sleep(1.0)
            await socket.send_str("still there?")
            assert await socket.receive_str(timeout=5) == "wms echo: still there?"
