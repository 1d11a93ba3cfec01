"""Attacks on browser sign-in that earlier reviews missed, each against the real dev
OpenID provider (npm oidc-provider) and a running gateway: what a stranger can
send to its endpoints, and what a provider's account can make the gateway vouch for."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from gateway.audit.chain import DECISION_PATH
from gateway.signin.oidc import BACKCHANNEL_LOGOUT_EVENT
from tests.gateway_stack import ServerFactory, Stack
from tests.redis_server import redis_server, redis_url
from tests.sign_in_stack import (
    CLIENT_ID,
    DevProvider,
    browser,
    provider,
    sign_in_config,
    start_sign_in_stack,
)
from tests.test_browser_sign_in import page, sign_in_at_provider
from tests.test_shared_state import shared
from tests.test_sign_in import session_of, stack

__all__ = ["page", "provider", "redis_server", "redis_url", "stack"]  # fixtures

pytestmark = pytest.mark.timeout(90)


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


# --- back-channel logout: anyone can POST there ---------------------------------------------


async def test_a_logout_token_naming_the_providers_key_with_another_algorithm_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    """The provider's JWKS is public, so anyone can write a logout token whose header
    names its RSA key (kid) with ES256, an algorithm the gateway allows for other
    keys. PyJWT then raised a TypeError (an RSA key is no EC key): an anonymous 500
    with a traceback on the server log for every POST. Such a token, and one naming
    an algorithm the JWKS says the key is not for, is a 400 like any forged token."""
    config = sign_in_config(provider, algorithms=("RS256", "PS256", "ES256"))
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, sign_in=config, shared_state=shared(redis_url)
    ) as stack:
        async with stack.session.get(provider.url + "/jwks") as response:
            (key,) = (await response.json())["keys"]
        assert (key["kty"], key["alg"]) == ("RSA", "RS256")
        now = int(time.time())
        claims = {"iss": provider.issuer, "aud": CLIENT_ID, "iat": now, "jti": "j1",
                  "sub": "alice", "events": {BACKCHANNEL_LOGOUT_EVENT: {}}}  # fmt: skip
        signature = base64.urlsafe_b64encode(b"\x01" * 64).rstrip(b"=").decode()
        for algorithm in ("ES256", "PS256"):
            token = f"{_b64({'alg': algorithm, 'kid': key['kid']})}.{_b64(claims)}.{signature}"
            async with stack.session.post(
                stack.url + "/.portcullis/backchannel_logout", data={"logout_token": token}
            ) as response:
                assert response.status == 400, (algorithm, await response.text())
                body = await response.json()
            assert body["error"] == "invalid_request"
            assert f"algorithm {algorithm!r} is not the one of the key" in body["error_description"]
        metrics = stack.gateway.metrics.render().decode()
        assert 'portcullis_backchannel_logouts_total{result="invalid"} 2.0' in metrics
        refusals = [e for e in await stack.events(at_least=0) if e["path"] == "gateway"]
        assert not [e for e in refusals if "internal_error" in e["result"]["reasons"][0]]


# --- what the gateway vouches for -----------------------------------------------------------


async def test_an_email_the_provider_did_not_verify_is_never_vouched_for(
    stack: Stack, provider: DevProvider
) -> None:
    """Eve signed up at the provider with alice's address, never confirmed (the
    provider says so: `email_verified: false`). The gateway put that address in
    the session, the policy's input and the signed assertion every backend
    trusts: an app that knows its users by email (most do) served eve as alice."""
    async with browser(stack.url) as eve:
        page = await eve.sign_in(stack.url + "/wms/stock", "eve", ["otp"])
        assert page.status == 200, page.text
        seen = page.json()
        assert seen["assertion"]["verified"]
        claims = seen["assertion"]["claims"]
        assert claims["sub"] == "eve"
        assert claims["email"] is None, "an unverified address is no one's"
        assert session_of(stack, eve).email is None
        home = await eve.go(stack.url + "/.portcullis/")
        assert "Signed in as <b>eve</b>" in home.text and "alice@example.com" not in home.text
    decisions = [e for e in await stack.events(at_least=1) if e["path"] == DECISION_PATH]
    assert decisions and all(e["input"]["identity"].get("email") is None for e in decisions)
    # The provider's verified addresses are still vouched for.
    async with browser(stack.url) as alice:
        page = await alice.sign_in(stack.url + "/wms/stock", "alice", ["otp"])
        assert page.json()["assertion"]["claims"]["email"] == "alice@example.com"


# --- cookies a browser will not keep ---------------------------------------------------------


async def test_an_oversized_return_url_neither_breaks_sign_in_nor_reads_as_a_forged_state(
    stack: Stack, page: Page
) -> None:
    """A link into an app with a query of a few kilobytes (a report's filters, or
    one sent to make sign-ins fail): the pre-auth cookie holding it passed the
    4096 bytes a browser keeps of a cookie (RFC 6265bis 5.6), Chromium ignored
    it, and the callback found no sign-in in flight: the user got "started in
    another browser" and the SIEM a `state_mismatch`, the sign of a forged or
    replayed answer. The sign-in completes, back to the link's path."""
    target = stack.url + "/wms/report?q=" + "a" * 3000
    await page.goto(target)
    assert "/interaction/" in page.url
    await sign_in_at_provider(page, "alice", ["otp"])
    await page.wait_for_url(stack.url + "/wms/report")
    assert '"sub": "alice"' in await page.locator("body").inner_text()
    signed = [e for e in await stack.events(at_least=1) if e["path"] == "gateway/signin"]
    assert [e["result"]["reasons"] for e in signed] == [["gateway.sign_in: signed in"]]
    # What fits is kept whole, as before.
    await page.goto(stack.url + "/wms/report?q=" + "b" * 1000)
    assert page.url == stack.url + "/wms/report?q=" + "b" * 1000
