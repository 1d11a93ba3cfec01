"""Attacks on the WebSocket's way upstream (gateway/forward.py `_websocket`): the
handshake the gateway sends an upstream on the user's behalf once the policy
allowed it, and what it does with the answer. The gateway stack and scripted
upstreams, each a real server."""

from __future__ import annotations

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
        stack.gateway.routes.insert(0, Route("wms", f"http://127.0.0.1:{upstream.port}", "/wms/"))
        token = stack.token("alice", **WAREHOUSE)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await stack.session.ws_connect(
                stack.url.replace("http", "ws") + "/wms/live",
                headers={"Authorization": f"Bearer {token}"},
            )
        assert refused.value.status == 502
        assert reached == []
