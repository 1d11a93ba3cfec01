"""Lockouts another web site must not be able to cause: the session cookie is
SameSite=Lax, so a page anywhere can send a signed-in member of staff's browser to
gateway URLs the policy denies them, and each deny counted toward
`lockout.after_denies` (10 locked them out of every app for 30 minutes). In
Chromium against the dev OpenID provider, Redis and a running gateway, and with
the headers alone for the precise rule."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from playwright.async_api import async_playwright

from gateway.audit.chain import DECISION_PATH
from gateway.shared.settings import Lockout, RateLimit, RateLimits
from gateway.shared.state import SharedState
from gateway.shared.third_party import LABEL
from tests.gateway_stack import ServerFactory, Stack, free_port
from tests.redis_server import redis_server, redis_url
from tests.sign_in_stack import (
    Browser,
    DevProvider,
    browser,
    provider,
    start_provider,
    start_sign_in_stack,
)
from tests.test_browser_sign_in import chromium_on, signed_in_tab
from tests.test_shared_state import WAREHOUSE, call, shared, shared_stack

__all__ = ["provider", "redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(120)
PCI = Lockout(after_denies=10, window=900, duration=1800)  # examples/gateway-shared-state.yaml
SITE = "corp.localhost"  # the gateway's registrable domain in Chromium (gw.corp.localhost)
DENIED = "/pos/refunds/"  # alice is in warehouse, not store: POS denies her (no step-up)
STORE_ONLY = "requires membership in one of: store"


def state_of(stack: Stack) -> SharedState:
    assert stack.gateway.shared is not None
    return stack.gateway.shared


async def settled(stack: Stack) -> None:
    """Every background write after a decision done: a deny that was going to be
    counted has been (asserting "not locked out" before that would prove nothing)."""
    state = state_of(stack)
    deadline = time.monotonic() + 10
    while state._background:
        assert time.monotonic() < deadline, "background writes did not finish"
        await asyncio.sleep(0.02)


async def counted_denies(stack: Stack, issuer: str, subject: str) -> tuple[int, bool]:
    """The denies counted for the user now, and whether it is locked out."""
    state = state_of(stack)
    await settled(stack)
    client = state.store.client
    assert client is not None
    denies = await client.zcard(state.keys.user_denies(issuer, subject))
    locked = bool(await client.exists(state.keys.user_lockout(issuer, subject)))
    return int(denies), locked


async def denials(stack: Stack, at_least: int) -> list[dict[str, Any]]:
    events = await stack.events(at_least=at_least)
    return [
        e
        for e in events
        if e["path"] == DECISION_PATH
        and not e["result"]["allow"]
        and e["input"]["attributes"]["request"]["http"]["path"].startswith(DENIED)
    ]


async def test_a_third_party_page_cannot_lock_a_signed_in_user_out(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Alice (warehouse) is signed in at gw.corp.localhost. A page on another site
    (127.0.0.1) sends her Chromium to a POS refund 10 times by script, and a page on
    a sibling subdomain (evil.corp.localhost: a marketing site, a shop) loads 10 of
    them as images, which Chromium sends her Lax cookie with as well (same site).
    Each of the 20 is denied and logged as before, but none counts: she is not
    locked out, and uses the apps. The same 10 denies run into by her own doing
    (typed addresses, links on the gateway's pages) still lock her out."""
    gateway_port = free_port()
    gateway = f"http://gw.{SITE}:{gateway_port}"
    idp = start_provider(tmp_path / "provider", gateway_port, gateway_host=f"gw.{SITE}")

    async def navigate(request: web.Request) -> web.Response:
        target = gateway + DENIED + request.query["n"]
        html = f"<!doctype html><title>Win a prize</title><script>location = {target!r}</script>"
        return web.Response(text=html, content_type="text/html")

    async def images(request: web.Request) -> web.Response:
        tags = "".join(
            f'<img src="{gateway}{DENIED}{n}" onerror="loaded()" onload="loaded()">'
            for n in range(100, 100 + PCI.after_denies)
        )
        script = f"let left = {PCI.after_denies}; "
        script += "function loaded() { if (!--left) document.title = 'done' }"
        html = f"<!doctype html><title>Spring sale</title><script>{script}</script>{tags}"
        return web.Response(text=html, content_type="text/html")

    attacker = web.Application()
    attacker.router.add_get("/", navigate)
    attacker.router.add_get("/sale", images)
    port = (await aiohttp_server(attacker)).port
    other_site, sibling = f"http://127.0.0.1:{port}", f"http://evil.{SITE}:{port}"
    try:
        async with (
            start_sign_in_stack(
                aiohttp_server, tmp_path, idp, shared_state=shared(redis_url, lockout=PCI)
            ) as stack,
            async_playwright() as playwright,
        ):
            chromium = await chromium_on(playwright, SITE)
            page = await signed_in_tab(chromium, gateway, "alice", ["otp"])
            issuer = idp.issuer

            # Another site navigates her browser: each time to the deny page.
            for n in range(PCI.after_denies):
                await page.goto(f"{other_site}/?n={n}")
                await page.wait_for_url(f"{gateway}{DENIED}{n}")
                assert await page.locator("h1").inner_text() == "You can't open this page"
            # A sibling subdomain's images: the cookie goes with them (same site).
            await page.goto(sibling + "/sale")
            await page.wait_for_function("document.title === 'done'")
            assert await counted_denies(stack, issuer, "alice") == (0, False)
            await page.goto(gateway + "/wms/stock")
            assert '"sub": "alice"' in await page.locator("body").inner_text()
            # Each denied and logged all the same, saying it was not counted.
            attack = await denials(stack, at_least=2 * PCI.after_denies + 1)
            sites = sorted(e["labels"].get(LABEL, "counted") for e in attack)
            assert sites == ["cross-site"] * 10 + ["same-site"] * 10, sites
            assert all(e["input"]["identity"]["subject"] == "alice" for e in attack)
            assert all(e["result"]["http_status"] == 403 for e in attack)

            # Her own: typed into the address bar (Sec-Fetch-Site: none) and
            # followed from the gateway's own pages (same-origin). Nine don't lock...
            for n in range(200, 200 + PCI.after_denies):
                if n % 2:
                    await page.goto(f"{gateway}{DENIED}{n}")
                else:
                    await page.goto(gateway + "/wms/stock")
                    await page.evaluate(f"location = {DENIED + str(n)!r}")
                    await page.wait_for_url(f"{gateway}{DENIED}{n}")
                assert await page.locator("h1").inner_text() == "You can't open this page"
                if n == 200 + PCI.after_denies - 2:
                    assert await counted_denies(stack, issuer, "alice") == (9, False)
            # ...the tenth does, for every app.
            assert (await counted_denies(stack, issuer, "alice"))[1]
            await page.goto(gateway + "/wms/stock")
            assert await page.locator("h1").inner_text() == "Your account is locked"
            own = (await denials(stack, at_least=1))[len(attack) :]
            assert len(own) == 10 and not [e for e in own if LABEL in e["labels"]]
            await chromium.close()
    finally:
        idp.stop()


# --- the rule, header by header -------------------------------------------------------------


@contextlib.asynccontextmanager
async def alice_signed_in(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> AsyncIterator[tuple[Stack, Browser]]:
    """A gateway with shared state locking out after 3 counted denies, and alice
    signed in (OTP) with a browser-like client."""
    lockout = Lockout(after_denies=3, window=900, duration=1800)
    async with (
        start_sign_in_stack(
            aiohttp_server, tmp_path, provider, shared_state=shared(redis_url, lockout=lockout)
        ) as stack,
        browser(stack.url) as alice,
    ):
        await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])
        yield stack, alice


async def signed_in_denies(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    provider: DevProvider,
    redis_url: str,
    sent: list[list[str]],
) -> tuple[tuple[int, bool], list[dict[str, Any]]]:
    """Alice signs in with a browser-like client, then asks for a POS refund once
    with each list of Sec-Fetch-Site values in `sent` (none, one, or repeated):
    what was counted for her, and the denies' events."""
    async with alice_signed_in(aiohttp_server, tmp_path, provider, redis_url) as (stack, alice):
        for n, values in enumerate(sent):
            headers = CIMultiDict([("Accept", "application/json")])
            for value in values:
                headers.add("Sec-Fetch-Site", value)
            page = await alice.request("GET", f"{stack.url}{DENIED}{n}", headers=headers)
            body = page.json()
            assert page.status == 403 and STORE_ONLY in body.get("reasons", []), page.text
            assert "step_up" not in body  # a step-up deny counts toward no lockout anyway
        counted = await counted_denies(stack, provider.issuer, "alice")
        return counted, await denials(stack, at_least=len(sent) + 1)


async def test_session_denies_another_site_made_the_browser_send_are_not_counted(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    """Sec-Fetch-Site: cross-site (another site's page) and same-site (a sibling
    subdomain's) on a request with the session cookie: denied, logged as before
    with the label naming what the browser said, and not counted (3 would lock)."""
    sent = [["cross-site"], ["same-site"]] * 3
    counted, events = await signed_in_denies(aiohttp_server, tmp_path, provider, redis_url, sent)
    assert counted == (0, False)
    assert [e["labels"][LABEL] for e in events] == ["cross-site", "same-site"] * 3
    for event in events:
        assert STORE_ONLY in event["result"]["reasons"]
        assert event["input"]["identity"]["method"] == "session"


@pytest.mark.parametrize(
    "values",
    [[], ["none"], ["same-origin"], ["cross-site", "cross-site"], ["Cross-Site"]],
    ids=["no-fetch-metadata", "typed", "same-origin", "sent-twice", "not-a-standard-value"],
)
async def test_session_denies_the_user_or_a_client_without_fetch_metadata_made_still_lock_out(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    provider: DevProvider,
    redis_url: str,
    values: list[str],
) -> None:
    """The user's own requests (typed, Sec-Fetch-Site: none; from the gateway's
    pages, same-origin), and those no browser sent (no Fetch Metadata: an old
    browser, a script holding a session cookie; the header twice; a value the
    standard does not have) count: three lock alice out, none labelled."""
    sent = [values] * 3
    counted, events = await signed_in_denies(aiohttp_server, tmp_path, provider, redis_url, sent)
    assert counted == (0, True)  # locked (the lockout clears the counted denies)
    assert len(events) == 3 and not [e for e in events if LABEL in e["labels"]]


async def test_an_old_browsers_form_posts_from_a_sibling_page_cannot_lock_a_signed_in_user_out(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    """A browser from before Fetch Metadata (Safari 16.3, Firefox 89) sends no
    Sec-Fetch-Site, but every POST carries the page's Origin, a header no page
    can set. A sibling subdomain's page (the Lax cookie goes with its form POSTs)
    auto-submits forms to WMS: the policy refuses each by its Origin, and each
    deny is labelled and not counted (three would lock alice out of every app),
    a sandboxed frame's `null` Origin too. Her own POST from the gateway's page
    still reaches WMS; an Origin sent twice, no browser's, still counts."""
    async with alice_signed_in(aiohttp_server, tmp_path, provider, redis_url) as (stack, alice):
        sibling = "http://evil.corp.localhost:" + stack.url.rsplit(":", 1)[1]
        for n, origin in enumerate([sibling, sibling, "null", sibling]):
            headers = {"Origin": origin, "Accept": "application/json"}
            page = await alice.request(
                "POST", f"{stack.url}/wms/orders/{n}", headers=headers, data="x=1"
            )
            assert page.status == 403, page.text
            assert "requires a request from the app's own pages" in page.json()["reasons"][0]
        assert await counted_denies(stack, provider.issuer, "alice") == (0, False)
        events = [
            e for e in await stack.events(at_least=5)
            if e["path"] == DECISION_PATH
            and e["input"]["attributes"]["request"]["http"]["path"].startswith("/wms/orders/")
        ]  # fmt: skip
        assert [e["labels"].get(LABEL) for e in events] == ["cross-origin"] * 4

        own = {"Origin": stack.url, "Accept": "application/json"}
        page = await alice.request("POST", stack.url + "/wms/orders/own", headers=own, data="x=1")
        assert page.status == 200, page.text
        twice = CIMultiDict([("Origin", sibling), ("Origin", sibling)])
        page = await alice.request("POST", stack.url + "/wms/orders/twice", headers=twice)
        assert page.status == 403, page.text
        assert await counted_denies(stack, provider.issuer, "alice") == (1, False)


async def test_bearer_token_denies_count_toward_a_lockout_whatever_fetch_metadata_says(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A bearer token is sent by the client that holds it, never by a browser on
    another site's behalf: its denies count, Sec-Fetch-Site: cross-site or not."""
    lockout = Lockout(after_denies=3, window=900, duration=1800)
    async with shared_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=lockout)) as stack:
        token = stack.token("alice", **WAREHOUSE)
        for site in ("cross-site", "same-site", "cross-site"):
            status, body, _ = await call(
                stack, stack.url, "/pos/sales", token, headers={"Sec-Fetch-Site": site}
            )
            assert status == 403 and body.get("step_up") is None, body
        assert await counted_denies(stack, stack.issuer.issuer, "alice") == (0, True)
        status, body, _ = await call(stack, stack.url, "/wms/stock", token)
        assert status == 403 and body["error"] == "locked_out"
        events = [e for e in await stack.events(at_least=3) if not e["result"]["allow"]]
        assert not [e for e in events if LABEL in e["labels"]]


# --- rate limits ---------------------------------------------------------------------------


async def test_another_sites_page_cannot_use_up_a_signed_in_users_rate_limit(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    """A sibling subdomain's page (same site: the Lax cookie goes with an <img>)
    loads WMS through the gateway more often than the identity's rate limit
    allows. Those requests are limited in a bucket of their own, with the same
    limit: alice's own requests still get through, and the page's extra ones
    are 429s saying whose they were."""
    limits = RateLimits(identity=RateLimit(requests=4, window=60))
    async with (
        start_sign_in_stack(
            aiohttp_server, tmp_path, provider, shared_state=shared(redis_url, rate_limits=limits)
        ) as stack,
        browser(stack.url) as alice,
    ):
        await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])  # one of her four
        statuses = []
        for n in range(6):
            headers = {"Sec-Fetch-Site": "same-site", "Accept": "application/json"}
            page = await alice.request("GET", f"{stack.url}/wms/stock?n={n}", headers=headers)
            statuses.append(page.status)
        assert statuses == [200] * 4 + [429] * 2, statuses
        assert "other sites' pages" in page.json()["reason"]
        for site in ("none", "same-origin"):  # typed, and from the gateway's own pages
            headers = {"Sec-Fetch-Site": site, "Accept": "application/json"}
            page = await alice.request("GET", stack.url + "/wms/stock", headers=headers)
            assert page.status == 200, page.text
        # Her own bucket is the one a client without Fetch Metadata counts in: after
        # her sign-in's landing and the two above, the next one fills it.
        json_only = {"Accept": "application/json"}
        page = await alice.request("GET", stack.url + "/wms/stock", headers=json_only)
        assert page.status == 200, page.text
        page = await alice.request("GET", stack.url + "/wms/stock", headers=json_only)
        assert page.status == 429 and "this identity on this app" in page.json()["reason"]
