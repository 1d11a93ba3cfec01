"""Cross-site WebSocket hijacking: a page's script may open a WebSocket to any host,
the browser attaches the credentials it holds for that host (the SameSite=Lax
session cookie from any page of the same site; a client certificate from any
page at all), and nothing like the same-origin policy keeps the script from
reading and sending on it. In Chromium against the dev OpenID provider and a
running gateway, and header by header for the precise rule."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from playwright.async_api import async_playwright

from gateway.audit.chain import REFUSAL_PATH
from gateway.config import LimitsConfig
from gateway.identity import ANONYMOUS, Identity
from gateway.screening.websocket import cross_origin_refusal
from tests.gateway_stack import ServerFactory, Stack, free_port
from tests.sign_in_stack import DevProvider, browser, provider, start_provider, start_sign_in_stack
from tests.test_attack_sibling_subdomain_csrf import policy_trusting
from tests.test_browser_sign_in import chromium_on, signed_in_tab

__all__ = ["provider"]  # fixture

pytestmark = pytest.mark.timeout(120)
SITE = "corp.localhost"  # the gateway's registrable domain in Chromium (gw.corp.localhost)
SOCKET = "/wms/live"  # alice (warehouse) may use WMS; the demo upstream echoes


async def origin_refusals(stack: Stack, at_least: int) -> list[dict[str, Any]]:
    """The log's cross-origin WebSocket refusals, once `at_least` are written."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        refused = [
            e
            for e in await stack.events(at_least=0, timeout=0)
            if e["path"] == REFUSAL_PATH
            and any(r.startswith("gateway.websocket_origin") for r in e["result"]["reasons"])
        ]
        if len(refused) >= at_least or asyncio.get_running_loop().time() > deadline:
            return refused
        await asyncio.sleep(0.02)


# A page's script: open the WebSocket, send a message, and put what came back (or
# that it failed) in the page's title.
HIJACK = """
url => new Promise(done => {
    const socket = new WebSocket(url);
    socket.onopen = () => socket.send("stock levels please");
    socket.onmessage = message => { done("read: " + message.data); socket.close(); };
    socket.onerror = () => done("failed");
})
"""


async def test_a_sibling_subdomains_page_cannot_use_a_signed_in_users_websocket(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Alice is signed in at gw.corp.localhost. A page on evil.corp.localhost (a
    marketing site, a hosted shop: the same site, so Chromium sends her Lax
    session cookie with its requests) opens a WebSocket to WMS through the
    gateway. It gets nothing: the handshake is refused, and logged with her as
    the user and the page's origin. The gateway's own pages still open theirs."""
    gateway_port = free_port()
    gateway = f"http://gw.{SITE}:{gateway_port}"
    idp = start_provider(tmp_path / "provider", gateway_port, gateway_host=f"gw.{SITE}")

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>Spring sale</title>", content_type="text/html"
        )

    attacker = web.Application()
    attacker.router.add_get("/", page)
    sibling = f"http://evil.{SITE}:{(await aiohttp_server(attacker)).port}"
    socket_url = gateway.replace("http", "ws") + SOCKET
    try:
        async with (
            start_sign_in_stack(aiohttp_server, tmp_path, idp) as stack,
            async_playwright() as playwright,
        ):
            chromium = await chromium_on(playwright, SITE)
            tab = await signed_in_tab(chromium, gateway, "alice", ["otp"])
            # Her own page of the gateway's: the WebSocket works.
            assert await tab.evaluate(HIJACK, socket_url) == "read: wms echo: stock levels please"

            await tab.goto(sibling + "/")
            assert await tab.evaluate(HIJACK, socket_url) == "failed"
            refused = await origin_refusals(stack, at_least=1)
            assert len(refused) == 1, refused
            event = refused[0]
            assert event["result"]["http_status"] == 403
            assert event["input"]["identity"]["subject"] == "alice"
            assert event["input"]["identity"]["method"] == "session"
            assert sibling in event["result"]["reasons"][0]
            await chromium.close()
    finally:
        idp.stop()


# --- the rule, header by header -------------------------------------------------------------


@pytest.mark.parametrize(
    "origins",
    [[], ["null"], ["http://evil.example"], ["https://127.0.0.1:{port}"], ["{own}", "{own}"]],
    ids=["no-origin", "null-origin", "other-site", "other-scheme", "origin-twice"],
)
async def test_session_websockets_from_no_page_of_the_gateways_are_refused(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, origins: list[str]
) -> None:
    """With alice's session cookie: no Origin (every browser sends one), a
    sandboxed frame's or file page's `null`, another site, the gateway's host
    under another scheme, and Origin given twice are each one logged 403, and
    the upstream sees no handshake. The gateway's own origin, in any case and
    with its port, opens the WebSocket."""
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider) as stack,
        browser(stack.url) as alice,
    ):
        await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])
        port = stack.url.rsplit(":", 1)[1]
        headers = CIMultiDict[str]()
        for origin in origins:
            headers.add("Origin", origin.format(own=stack.url, port=port))
        socket_url = stack.url.replace("http", "ws") + SOCKET
        handshakes_before = len(stack.forwarded("wms"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await alice.http.ws_connect(socket_url, headers=headers)
        assert refused.value.status == 403
        assert len(stack.forwarded("wms")) == handshakes_before
        [event] = await origin_refusals(stack, at_least=1)
        assert event["input"]["identity"]["subject"] == "alice"

        own = stack.url.upper().replace("HTTP://", "http://")
        async with alice.http.ws_connect(socket_url, headers={"Origin": own}) as socket:
            await socket.send_str("hello")
            assert await socket.receive_str() == "wms echo: hello"


def handshake(origins: list[str], host: str = "gw.example.com") -> web.Request:
    headers = CIMultiDict([("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade")])
    for origin in origins:
        headers.add("Origin", origin)
    return make_mocked_request("GET", "/wms/live", headers=headers)


SESSION = Identity(authenticated=True, method="session", subject="alice")
CERTIFICATE = Identity(authenticated=True, method="mtls", subject="till-0042")
BEARER = Identity(authenticated=True, method="bearer", subject="wms-sync")
OWN = ("https://gw.example.com", "HTTPS://GW.EXAMPLE.COM", "https://gw.example.com:443")
FRONT_END = "https://wms-ui.example.com"  # an app's own front end on another host


@settings(
    max_examples=300, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(
    st.one_of(
        st.text(max_size=60),
        st.sampled_from(OWN).flatmap(
            lambda own: st.one_of(
                st.builds(lambda tail: own + tail, st.text(min_size=1, max_size=20)),
                st.builds(lambda head: head + own, st.text(min_size=1, max_size=20)),
                st.builds(
                    lambda label: own.replace("gw.", f"{label}."),
                    st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
                ),
            )
        ),
        st.sampled_from(
            [
                "http://gw.example.com",
                "https://gw.example.com:8443",
                "https://gw.example.com.evil.example",
                "https://evil.example/https://gw.example.com",
                "https://gw.example.com@evil.example",
                "wss://gw.example.com",
                "null",
            ]
        ),
    )
)
def test_a_credential_the_browser_attaches_opens_websockets_from_the_gateways_origin_only(
    origin: str,
) -> None:
    """Any Origin but the gateway's own (https, its Host, the default port written
    or not, in any case) is refused for a session and for a client certificate:
    suffixes, prefixes, sibling hosts, other schemes and ports. A bearer token,
    which no browser attaches by itself, is not checked."""
    request = handshake([origin])
    own = origin.lower() in {o.lower() for o in OWN}
    for identity in (SESSION, CERTIFICATE):
        refused = cross_origin_refusal(request, identity, "https")
        assert (refused is None) == own, (origin, refused)
        if refused is not None:
            assert refused.status == 403 and refused.rule == "websocket_origin"
        # An app's allowed_origins let in exactly what they list, `null` never.
        listed = cross_origin_refusal(request, identity, "https", [origin, FRONT_END])
        assert (listed is None) == (own or origin != "null"), (origin, listed)
        elsewhere = cross_origin_refusal(request, identity, "https", [FRONT_END])
        assert (elsewhere is None) == (own or origin == FRONT_END), (origin, elsewhere)
    assert cross_origin_refusal(request, BEARER, "https") is None
    assert cross_origin_refusal(request, ANONYMOUS, "https") is None


def test_a_client_certificate_without_origin_is_a_service_and_passes() -> None:
    """A service holding a client certificate sends no Origin (no browser made
    the request): it passes. A session without one does not."""
    assert cross_origin_refusal(handshake([]), CERTIFICATE, "https") is None
    refused = cross_origin_refusal(handshake([]), SESSION, "https")
    assert refused is not None and refused.status == 403


def test_the_scheme_is_the_one_browsers_use_behind_a_tls_proxy() -> None:
    """Behind a proxy that ends TLS, the connection is http but the browser's
    page is https (sign_in.external_url): only the https origin passes."""
    request = handshake(["https://gw.example.com"])
    assert cross_origin_refusal(request, SESSION, "https") is None
    assert cross_origin_refusal(request, SESSION, "http") is not None
    assert cross_origin_refusal(handshake(["http://gw.example.com"]), SESSION, "https")


async def test_an_apps_own_front_end_on_another_host_opens_its_websockets_and_no_look_alike(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> None:
    """WMS's front end at wms-ui (another host), named in the catalogue's
    allowed_origins for WMS (as for the policy's cross-site writes), opens a
    WebSocket on alice's session. The list is matched exactly, so a look-alike
    (a trailing slash, another case, another port) is still refused, as is any
    origin for an app that doesn't list it."""
    front_end = "http://wms-ui.corp.example"
    policy = policy_trusting(tmp_path, front_end)
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider, policy=policy) as stack,
        browser(stack.url) as alice,
    ):
        await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])
        socket_url = stack.url.replace("http", "ws") + SOCKET
        async with alice.http.ws_connect(socket_url, headers={"Origin": front_end}) as socket:
            await socket.send_str("hello")
            assert await socket.receive_str() == "wms echo: hello"
        for origin in (front_end + "/", front_end.upper(), front_end + ":8080"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await alice.http.ws_connect(socket_url, headers={"Origin": origin})
            assert refused.value.status == 403, origin
        analytics = stack.url.replace("http", "ws") + "/analytics/live"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await alice.http.ws_connect(analytics, headers={"Origin": front_end})
        assert refused.value.status == 403
        assert len(await origin_refusals(stack, at_least=4)) == 4


async def test_an_origin_taken_out_of_allowed_origins_loses_the_websockets_it_opened(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> None:
    """WMS's front end (in allowed_origins) opened a WebSocket on alice's session;
    the front end is then found compromised and taken out of the catalogue. The
    reloaded policy still allows alice on WMS (a GET), but the socket its page
    holds must end at the next recheck as a new one from it is refused, not
    relay for as long as the page keeps it open."""
    front_end = "http://wms-ui.corp.example"
    policy = policy_trusting(tmp_path, front_end)
    limits = LimitsConfig(websocket_recheck_interval=0.3)
    async with (
        start_sign_in_stack(
            aiohttp_server, tmp_path, provider, policy=policy, limits=limits
        ) as stack,
        browser(stack.url) as alice,
    ):
        await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])
        socket_url = stack.url.replace("http", "ws") + SOCKET
        async with alice.http.ws_connect(socket_url, headers={"Origin": front_end}) as socket:
            await asyncio.sleep(0.8)  # rechecks before the change keep it open
            await socket.send_str("hello")
            assert await socket.receive_str(timeout=5) == "wms echo: hello"
            catalogue = policy / "data" / "apps.yaml"
            catalogue.write_text(catalogue.read_text().replace(front_end, "https://wms-ui.new"))
            closed = await socket.receive(timeout=5)
            assert closed.type == aiohttp.WSMsgType.CLOSE, closed
            assert closed.data == 1008
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await alice.http.ws_connect(socket_url, headers={"Origin": front_end})
        assert refused.value.status == 403
        assert len(await origin_refusals(stack, at_least=2)) >= 2
