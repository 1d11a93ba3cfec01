"""The whole journey in a real browser: Debian's headless Chromium driven by
Playwright, against the dev OpenID provider and the gateway. Screenshots go to
tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urljoin

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, Playwright, async_playwright

from tests.conftest import ROOT
from tests.gateway_stack import ServerFactory, Stack, free_port
from tests.sign_in_stack import (
    COOKIE,
    DevProvider,
    Loopback,
    browser,
    planting_stack,
    provider,
    start_provider,
    start_sign_in_stack,
)

__all__ = ["provider"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test` (it installs Debian's chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = await browser.new_context(viewport={"width": 900, "height": 700})
        context.set_default_timeout(10_000)
        yield await context.new_page()
        await browser.close()


async def sign_in_at_provider(page: Page, user: str, methods: list[str]) -> None:
    await page.fill('input[name="login"]', user)
    for method in methods:
        await page.check(f'input[name="methods"][value="{method}"]')
    await page.click('button[value="sign_in"]')


async def chromium_on(playwright: Playwright, site: str) -> Browser:
    """Chromium with every host under `site` on loopback: a gateway at gw.<site>
    and pages of other hosts of the same site (evil.<site>)."""
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*FLAGS, f"--host-resolver-rules=MAP *.{site} 127.0.0.1"]
    )


async def signed_in_tab(chromium: Browser, gateway: str, user: str, methods: list[str]) -> Page:
    """A tab of a new browser profile in which `user` signed in at the gateway
    (the dev provider's form), on WMS's stock page."""
    context = await chromium.new_context()
    context.set_default_timeout(10_000)
    tab = await context.new_page()
    await tab.goto(gateway + "/wms/stock")
    await sign_in_at_provider(tab, user, methods)
    await tab.wait_for_url(gateway + "/wms/stock")
    return tab


async def test_sign_in_step_up_and_sign_out_in_chromium(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, page: Page
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    p = page
    async with start_sign_in_stack(aiohttp_server, tmp_path, provider) as stack:
        # Not signed in: the gateway sends the browser to the provider's form.
        await p.goto(stack.url + "/wms/stock")
        assert "/interaction/" in p.url
        await sign_in_at_provider(p, "erin", ["otp"])
        await p.wait_for_url(stack.url + "/wms/stock")
        assert '"app": "wms"' in await p.content()
        cookies = {c["name"]: c for c in await p.context.cookies(stack.url)}
        session = cookies[COOKIE]
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"

        # A page the session's groups don't open: the deny page, in words.
        await p.goto(stack.url + "/wms/admin/users")
        assert await p.locator("h1").inner_text() == "You can't open this page"
        assert "wms-admin" in await p.content()
        await p.screenshot(path=str(ARTIFACTS / "deny-page.png"))

        # POS refunds with an otp-only session: stepped up at the provider.
        await p.goto(stack.url + "/pos/refunds/7")
        assert "/interaction/" in p.url
        asked = await p.locator(".asked").inner_text()
        assert "phr" in asked and "900 s" in asked
        assert await p.input_value('input[name="login"]') == "erin"
        await p.screenshot(path=str(ARTIFACTS / "step-up-at-provider.png"))
        # Without the key the page says so, after one round and no loop...
        await sign_in_at_provider(p, "erin", ["otp"])
        await p.wait_for_url(stack.url + "/pos/refunds/7")
        assert await p.locator("h1").inner_text() == "Stronger verification didn't happen"
        await p.screenshot(path=str(ARTIFACTS / "step-up-not-met.png"))
        # ...and "Try again" with the hardware key opens the refund.
        await p.click("text=Try again")
        await sign_in_at_provider(p, "erin", ["hwk"])
        await p.wait_for_url(stack.url + "/pos/refunds/7")
        body = await p.locator("body").inner_text()
        assert '"app": "pos"' in body and '"hwk"' in body and '"acr": "phr"' in body
        await p.screenshot(path=str(ARTIFACTS / "stepped-up-refund.png"))

        # Sign out: a GET shows the gateway's page and ends nothing; its button
        # POSTs, the session goes, the provider confirms, the next visit signs in.
        await p.goto(stack.url + "/.portcullis/sign_out")
        assert await p.locator("h1").inner_text() == "Sign out?"
        names = {c["name"] for c in await p.context.cookies(stack.url)}
        assert COOKIE in names
        await p.screenshot(path=str(ARTIFACTS / "sign-out.png"))
        await p.click('form[action="/.portcullis/sign_out"] button[type="submit"]')
        await p.click('button[value="yes"]')
        await p.wait_for_url(stack.url + "/.portcullis/signed_out")
        assert "You are signed out" in await p.content()
        await p.screenshot(path=str(ARTIFACTS / "signed-out.png"))
        names = {c["name"] for c in await p.context.cookies(stack.url)}
        assert COOKIE not in names
        await p.goto(stack.url + "/wms/stock")
        assert re.search(r"/interaction/[^/]+$", p.url)
        assert _forwarded_paths(stack) == ["/wms/stock", "/pos/refunds/7"]


def _forwarded_paths(stack: Stack) -> list[str]:
    return [r.raw_path for app in ("wms", "pos") for r in stack.forwarded(app)]


async def test_cookies_an_app_or_its_scripts_plant_never_make_chromium_someone_else(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, page: Page
) -> None:
    """Session fixation by an app behind the gateway, as Chromium really keeps and
    sends cookies. Mallory signs in and takes her own session cookie; the wms app
    (hers, or one with her script in it) plants it in alice's Chromium: as the
    gateway's cookie (dropped at the gateway), inside one of its own cookies'
    values (``a=1 portcullis_session=...``: Chromium keeps the space and sends it
    after alice's real cookie, and aiohttp's cookie parser read it as the
    session), and the same by script. Alice stays alice, and mallory's session
    is never taken."""
    async with planting_stack(aiohttp_server, tmp_path, provider) as hostile:
        stack, planted, theirs = hostile.stack, hostile.planted, hostile.mallorys
        planted["headers"] = [
            f"{COOKIE}={theirs}; Path=/; Secure; HttpOnly; SameSite=Lax",
            f"a=1 {COOKIE}={theirs}; Path=/",
        ]
        await page.goto(stack.url + "/wms/stock")
        await sign_in_at_provider(page, "alice", ["otp"])
        await page.wait_for_url(stack.url + "/wms/stock")
        await page.goto(stack.url + "/wms/plant")
        await page.evaluate(f"document.cookie = 'c=2 {COOKIE}={theirs}; path=/'")
        sent = {c["name"]: c["value"] for c in await page.context.cookies(stack.url)}
        assert sent["a"] == f"1 {COOKIE}={theirs}" and sent["c"] == f"2 {COOKIE}={theirs}"
        assert sent[COOKIE] != theirs
        await page.goto(stack.url + "/wms/stock")
        body = await page.locator("body").inner_text()
        assert '"sub": "alice"' in body and "mallory" not in body


# A registrable domain with the gateway and a sibling on it, both on loopback
# (Chromium keeps Secure cookies over plain http on *.localhost, as on 127.0.0.1).
SITE = "corp.localhost"


async def test_a_sibling_subdomain_never_signs_chromium_in_as_someone_else(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """Session fixation and login CSRF from a sibling subdomain (a compromised
    evil.corp.localhost next to the gateway at gw.corp.localhost): a cookie it sets
    with ``Domain=corp.localhost`` is sent to the gateway too. Mallory signs in
    once to the end (her session cookie) and once up to the provider's answer
    (her pre-auth cookie and the callback URL with her code). The sibling plants
    her session in a browser with none, and her pre-auth cookie in alice's
    signed-in browser before sending it to her callback URL: neither browser may
    end up signed in as mallory."""
    gateway_port = free_port()
    gateway = f"http://gw.{SITE}:{gateway_port}"
    idp = start_provider(tmp_path / "provider", gateway_port, gateway_host=f"gw.{SITE}")
    planted: list[str] = []

    async def plant(request: web.Request) -> web.Response:
        headers = [("Set-Cookie", f"{c}; Domain={SITE}; Secure; HttpOnly") for c in planted]
        target = request.query.get("then", gateway + "/wms/stock")
        return web.Response(status=302, headers=[("Location", target), *headers])

    evil_app = web.Application()
    evil_app.router.add_get("/", plant)
    evil = f"http://evil.{SITE}:{(await aiohttp_server(evil_app)).port}/"
    try:
        async with (
            start_sign_in_stack(aiohttp_server, tmp_path, idp) as stack,
            async_playwright() as playwright,
        ):
            assert stack.url.endswith(f":{gateway_port}")
            chromium = await chromium_on(playwright, SITE)
            contexts = [await chromium.new_context() for _ in range(3)]
            for context in contexts:
                context.set_default_timeout(10_000)
            mallory, alice, bob = [await c.new_page() for c in contexts]
            # Mallory's session.
            await mallory.goto(gateway + "/wms/stock")
            await sign_in_at_provider(mallory, "mallory", ["otp"])
            await mallory.wait_for_url(gateway + "/wms/stock")
            # As the gateway names it (the attack uses whatever name the gateway reads).
            (session,) = [
                f"{c['name']}={c['value']}; Path=/"
                for c in await contexts[0].cookies(gateway)
                if c["name"].endswith("portcullis_session")
            ]
            # A sign-in of hers up to the provider's answer, which she keeps.
            async with browser(gateway, resolver=Loopback()) as other:
                login = await other.go(gateway + "/wms/stock")
                url, form = login.form_action(), [("login", "mallory"), ("action", "sign_in")]
                answer = await other.request("POST", url, data=[*form, ("methods", "otp")])
                while "/.portcullis/callback" not in answer.headers["Location"]:
                    url = urljoin(url, answer.headers["Location"])
                    answer = await other.request("GET", url)
                callback = answer.headers["Location"]
                pre_auth = [f"{c.key}={c.value}; Path=/" for c in other.jar if "_auth_" in c.key]
            assert callback.startswith(gateway) and len(pre_auth) == 1

            # Bob has no session: the sibling plants mallory's.
            planted[:] = [session]
            await bob.goto(evil)
            await bob.wait_for_url(re.compile(r".*/(wms/stock|interaction/.*)$"))
            assert "/interaction/" in bob.url  # not signed in: sent to the provider

            # Alice is signed in: the sibling plants mallory's pre-auth cookie and
            # sends her to mallory's callback URL.
            await alice.goto(gateway + "/wms/stock")
            await sign_in_at_provider(alice, "alice", ["otp"])
            await alice.wait_for_url(gateway + "/wms/stock")
            planted[:] = pre_auth
            await alice.goto(evil + "?then=" + quote(callback, safe=""))
            await alice.goto(gateway + "/wms/stock")
            body = await alice.locator("body").inner_text()
            assert "mallory" not in body and '"sub": "alice"' in body
            await chromium.close()
    finally:
        idp.stop()
