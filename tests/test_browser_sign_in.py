"""The whole journey in a real browser: Debian's headless Chromium driven by
Playwright, against the dev OpenID provider and the gateway. Screenshots go to
tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright

from gateway.config import Route
from tests.conftest import ROOT
from tests.gateway_stack import ServerFactory, Stack
from tests.sign_in_stack import (
    COOKIE,
    DevProvider,
    browser,
    planting_wms,
    provider,
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
        session = cookies["portcullis_session"]
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
        assert "portcullis_session" in names
        await p.screenshot(path=str(ARTIFACTS / "sign-out.png"))
        await p.click('form[action="/.portcullis/sign_out"] button[type="submit"]')
        await p.click('button[value="yes"]')
        await p.wait_for_url(stack.url + "/.portcullis/signed_out")
        assert "You are signed out" in await p.content()
        await p.screenshot(path=str(ARTIFACTS / "signed-out.png"))
        names = {c["name"] for c in await p.context.cookies(stack.url)}
        assert "portcullis_session" not in names
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
    gateway_url = f"http://127.0.0.1:{provider.gateway_port}"
    planted: dict[str, list[str]] = {"headers": []}
    hostile = await aiohttp_server(planting_wms(gateway_url, planted))
    wms = Route("wms", f"http://127.0.0.1:{hostile.port}", "/wms/", read_timeout=5.0)
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider, routes=(wms,)) as stack,
        browser(stack.url) as mallory,
    ):
        await mallory.sign_in(stack.url + "/wms/", "mallory", ["otp"])
        theirs = mallory.cookie(COOKIE, stack.url)
        assert theirs is not None
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
