"""Cross-site request forgery from a sibling subdomain: the session cookie is
SameSite=Lax, which keeps it off another site's POST, but a page on another host
of the gateway's registrable domain (a marketing site, a shop, a subdomain taken
over) is the same site, and Chromium sends the cookie with its form POSTs and
credentialed fetches. Without the policy's Fetch Metadata rule such a page made
WMS act as alice, with the gateway's signed assertion that it was her. In
Chromium against the dev OpenID provider, Redis and a running gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from playwright.async_api import Page, async_playwright

from gateway.assertion import HEADER as ASSERTION_HEADER
from gateway.audit.chain import DECISION_PATH
from gateway.shared.settings import Lockout
from gateway.shared.third_party import LABEL
from tests.conftest import POLICIES
from tests.gateway_stack import ServerFactory, Stack, free_port
from tests.redis_server import redis_server, redis_url
from tests.sign_in_stack import DevProvider, browser, provider, start_provider, start_sign_in_stack
from tests.test_attack_lockout import counted_denies
from tests.test_browser_sign_in import chromium_on, signed_in_tab
from tests.test_shared_state import shared

__all__ = ["provider", "redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(120)
SITE = "corp.localhost"  # the gateway is gw.corp.localhost; the pages are siblings
FORGED = "/wms/orders/forged"  # alice (warehouse, otp) may POST to WMS herself
OTHER_SITE = "requires a request from the app's own pages"
# Two uncounted denies would lock her out if they counted.
LOCKOUT = Lockout(after_denies=2, window=900, duration=1800)


def policy_trusting(tmp_path: Path, origin: str) -> Path:
    """The shipped policy set, with WMS's own front end at `origin` in allowed_origins."""
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    catalogue_file = directory / "data" / "apps.yaml"
    catalogue = yaml.safe_load(catalogue_file.read_text())
    catalogue["portcullis"]["catalogue"]["apps"]["wms"]["allowed_origins"] = [origin]
    catalogue_file.write_text(yaml.safe_dump(catalogue))
    return directory


def posted(stack: Stack, path: str) -> list[web.Request]:
    return [r for r in stack.forwarded("wms") if r.method == "POST" and r.path == path]


async def decisions_on(stack: Stack, prefix: str, *, count: int) -> list[dict[str, Any]]:
    """The decision events of requests under `prefix`, once `count` are logged."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        events = [
            e
            for e in await stack.events()
            if e["path"] == DECISION_PATH
            and e["input"]["attributes"]["request"]["http"]["path"].startswith(prefix)
        ]
        if len(events) >= count or asyncio.get_running_loop().time() > deadline:
            assert len(events) == count, events
            return events
        await asyncio.sleep(0.02)


async def run_page_script(page: Page, url: str) -> None:
    """Open a page whose script sets its title to 'done' when it has sent its request."""
    await page.goto(url)
    await page.wait_for_function("document.title === 'done'")


async def test_a_sibling_subdomains_page_cannot_post_to_an_app_with_alices_session(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Alice is signed in at gw.corp.localhost. A page on evil.corp.localhost
    auto-submits a form POST to WMS and sends a credentialed fetch POST: Chromium
    sends her Lax cookie with both (same site). Both are refused with a 403 that
    says why, WMS hears nothing, and each deny is logged with her identity, the
    reason and the not-counted label (they lock her out of nothing). WMS's own
    front end at wms-ui.corp.localhost (in the app's allowed_origins) and the
    gateway's own pages still post as her."""
    gateway_port = free_port()
    gateway = f"http://gw.{SITE}:{gateway_port}"
    idp = start_provider(tmp_path / "provider", gateway_port, gateway_host=f"gw.{SITE}")

    async def auto_submit(request: web.Request) -> web.Response:
        form = (
            f'<form method="post" action="{gateway}{FORGED}/form">'
            '<input name="sku" value="TV-55"><input name="quantity" value="500"></form>'
        )
        html = f"<!doctype html><title>Spring sale</title>{form}"
        html += "<script>document.forms[0].submit()</script>"
        return web.Response(text=html, content_type="text/html")

    def fetch_page(path: str, title: str) -> str:
        script = (
            f"fetch({gateway + path!r}, {{method: 'POST', mode: 'no-cors', "
            "credentials: 'include', body: 'sku=TV-55&quantity=500'})"
            ".finally(() => { document.title = 'done' })"
        )
        return f"<!doctype html><title>{title}</title><script>{script}</script>"

    async def pages(request: web.Request) -> web.Response:
        # One server for both hosts: the Host header says which page this is.
        if request.host.startswith("wms-ui."):
            html = fetch_page("/wms/orders/from-its-own-front-end", "WMS")
        else:
            html = fetch_page(FORGED + "/fetch", "Spring sale")
        return web.Response(text=html, content_type="text/html")

    attacker = web.Application()
    attacker.router.add_get("/form", auto_submit)
    attacker.router.add_get("/fetch", pages)
    port = (await aiohttp_server(attacker)).port
    sibling, front_end = f"http://evil.{SITE}:{port}", f"http://wms-ui.{SITE}:{port}"
    policy = policy_trusting(tmp_path, front_end)
    try:
        async with (
            start_sign_in_stack(
                aiohttp_server,
                tmp_path,
                idp,
                policy=policy,
                shared_state=shared(redis_url, lockout=LOCKOUT),
            ) as stack,
            async_playwright() as playwright,
        ):
            chromium = await chromium_on(playwright, SITE)
            page = await signed_in_tab(chromium, gateway, "alice", ["otp"])

            # The sibling's auto-submitting form: her browser lands on the deny page.
            await page.goto(sibling + "/form")
            await page.wait_for_url(f"{gateway}{FORGED}/form")
            assert posted(stack, f"{FORGED}/form") == []
            assert await page.locator("h1").inner_text() == "You can't open this page"
            assert "Another site's page sent this request" in await page.content()
            # ...and its fetch, whose answer the page can't read.
            await run_page_script(page, sibling + "/fetch")
            assert posted(stack, f"{FORGED}/fetch") == []

            forged = await decisions_on(stack, FORGED, count=2)
            for event in forged:
                assert event["result"]["allow"] is False
                assert event["result"]["http_status"] == 403
                assert event["result"]["step_up"] is None
                (reason,) = event["result"]["reasons"]
                assert reason.startswith(OTHER_SITE) and '"same-site"' in reason
                assert event["input"]["identity"]["subject"] == "alice"
                assert event["input"]["identity"]["method"] == "session"
                headers = event["input"]["attributes"]["request"]["http"]["headers"]
                assert headers["origin"] == sibling
                assert event["labels"][LABEL] == "same-site"
            # Not counted toward her lockout: two would have locked her out.
            assert await counted_denies(stack, idp.issuer, "alice") == (0, False)

            # WMS's own front end, in its allowed_origins: the same fetch goes through.
            await run_page_script(page, front_end + "/fetch")
            (from_front_end,) = posted(stack, "/wms/orders/from-its-own-front-end")
            assert from_front_end.headers["Origin"] == front_end
            assert from_front_end.headers["Sec-Fetch-Site"] == "same-site"

            # The gateway's own page (same origin) posts a form as before.
            await page.goto(gateway + "/wms/stock")
            await page.evaluate(
                """() => {
                    const form = document.createElement('form')
                    form.method = 'post'
                    form.action = '/wms/orders/own-page'
                    document.body.appendChild(form)
                    form.submit()
                }"""
            )
            await page.wait_for_url(gateway + "/wms/orders/own-page")
            answer: dict[str, Any] = json.loads(await page.locator("body").inner_text())
            assert answer["method"] == "POST"
            assert answer["assertion"]["claims"]["sub"] == "alice"
            (own,) = posted(stack, "/wms/orders/own-page")
            assert own.headers["Sec-Fetch-Site"] == "same-origin"
            assert ASSERTION_HEADER in own.headers
            await chromium.close()
    finally:
        idp.stop()


@pytest.mark.parametrize(
    "origin",
    ["http://evil.corp.localhost:{port}", "null", "https://gw.corp.localhost.evil.example"],
)
async def test_an_old_browsers_form_post_from_another_page_is_refused_by_its_origin(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, origin: str
) -> None:
    """A browser from before Fetch Metadata (Safari 16.3, Firefox 89) sends no
    Sec-Fetch-Site, but still the page's Origin with every POST. Alice's session
    cookie on a POST whose Origin is another host's page, a sandboxed frame's
    `null`, or a look-alike is a logged 403 that names the Origin, and WMS hears
    nothing; the same POST from the gateway's own origin, or from no page at all
    (no Origin: a script with her cookie), reaches WMS as before."""
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider) as stack,
        browser(stack.url) as alice,
    ):
        await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])
        origin = origin.format(port=stack.url.rsplit(":", 1)[1])
        forged = await alice.request(
            "POST", stack.url + FORGED, headers={"Origin": origin}, data="x=1"
        )
        assert forged.status == 403
        assert posted(stack, FORGED) == []
        (event,) = await decisions_on(stack, FORGED, count=1)
        (reason,) = event["result"]["reasons"]
        assert reason.startswith(OTHER_SITE)
        assert reason.endswith(f"(Origin: {json.dumps(origin)}, no Sec-Fetch-Site)")
        assert event["input"]["identity"]["subject"] == "alice"

        own_page, script = {"Origin": stack.url}, {}
        for path, headers in [("/wms/orders/own-page", own_page), ("/wms/orders/script", script)]:
            own = await alice.request("POST", stack.url + path, headers=headers, data="x=1")
            assert own.status == 200, own.text
            assert len(posted(stack, path)) == 1
