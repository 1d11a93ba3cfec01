"""Browser sign-in through the real dev OpenID provider (npm oidc-provider), at the
HTTP level: the code flow with PKCE, state and nonce, the encrypted session, its
refresh, and the attacks on each."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pytest
from yarl import URL

from gateway.audit.shipping.formats.ocsf import format as format_ocsf
from gateway.signin.session import KeyRing, Session, write_key_file
from tests.gateway_stack import ServerFactory, Stack, logged, raw_request
from tests.sign_in_stack import (
    CLIENT_ID,
    CLIENT_SECRET,
    COOKIE,
    LAX_CLIENT_ID,
    PUBLIC_CLIENT_ID,
    Browser,
    DevProvider,
    Page,
    browser,
    planting_stack,
    provider,
    sign_in_config,
    start_sign_in_stack,
)

__all__ = ["provider"]


@pytest.fixture
async def stack(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> AsyncIterator[Stack]:
    async with start_sign_in_stack(aiohttp_server, tmp_path, provider) as running:
        yield running


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Browser]:
    async with browser(stack.url) as running:
        yield running


def session_of(stack: Stack, client: Browser) -> Session:
    value = client.cookie(COOKIE, stack.url)
    assert value is not None, "no session cookie"
    assert stack.gateway.sign_in is not None
    plaintext = stack.gateway.sign_in.cookies.keys.open("session", value)
    assert plaintext is not None
    session = Session.from_bytes(plaintext)
    assert session is not None
    return session


def put_session(stack: Stack, client: Browser, session: Session) -> str:
    assert stack.gateway.sign_in is not None
    value = stack.gateway.sign_in.cookies.keys.seal("session", session.to_bytes())
    client.jar.update_cookies({COOKIE: value}, URL(stack.url))
    return value


async def api_get(stack: Stack, path: str, cookie: str | None = None) -> aiohttp.ClientResponse:
    headers = {"Accept": "application/json"}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return await stack.session.get(stack.url + path, headers=headers, allow_redirects=False)


# --- the code flow ------------------------------------------------------------------------


async def test_browser_is_sent_to_the_provider_with_pkce_state_and_nonce(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    async with client.http.get(stack.url + "/wms/stock", allow_redirects=False) as response:
        assert response.status == 302
        location = response.headers["Location"]
        set_cookie = response.headers.getall("Set-Cookie")
    assert location.startswith(provider.url + "/auth?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert params["response_type"] == "code"
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == stack.url + "/.portcullis/callback"
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 43 and len(params["nonce"]) >= 43
    assert "acr_values" not in params and "max_age" not in params
    (pre_auth,) = set_cookie
    assert pre_auth.startswith(f"{COOKIE}_auth_")
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/;", "Max-Age=600"):
        assert attribute in pre_auth
    # The state and the verifier are sealed in the cookie, never readable in it.
    assert params["state"] not in pre_auth


async def test_sign_in_reaches_wms_and_the_backend_never_sees_the_session(
    stack: Stack, client: Browser
) -> None:
    page = await client.sign_in(stack.url + "/wms/stock?sku=42", "alice", ["otp"])
    assert page.status == 200, page.text
    seen = page.json()
    assert seen["path"] == "/wms/stock?sku=42"
    claims = seen["assertion"]["claims"]
    assert (claims["sub"], claims["amr"], claims["acr"]) == ("alice", ["pwd", "otp"], "mfa")
    assert COOKIE not in seen["headers"].get("Cookie", "")
    assert "_session" in seen["headers"].get("Cookie", ""), "other cookies still pass"
    # The session cookie: Secure, HttpOnly, SameSite=Lax, Path=/ (read from the jar).
    (morsel,) = [c for c in client.jar if c.key == COOKIE]
    assert morsel["secure"] and morsel["httponly"] and morsel["path"] == "/"
    assert morsel["samesite"] == "Lax"
    # Every decision for it says method "session", once the writer thread wrote them
    # (a fixed 0.6 s was not always enough on a loaded machine).
    deadline = time.monotonic() + 10
    while '"method":"session"' not in stack.log_path.read_text().replace(" ", ""):
        assert time.monotonic() < deadline, "no decision with method session logged in 10 s"
        await asyncio.sleep(0.05)


async def test_session_holds_only_the_claims_policies_use(stack: Stack, client: Browser) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    session = session_of(stack, client)
    assert session.subject == "alice"
    assert session.groups == ("warehouse",), "sales-eu is in no catalogue rule: dropped"
    assert session.amr == ("pwd", "otp") and session.acr == "mfa"
    assert abs(session.auth_time - time.time()) < 30 if session.auth_time else False
    assert session.refresh_token
    assert len(client.cookie(COOKIE, stack.url) or "") < 1000


async def test_api_requests_keep_401_json_and_never_a_redirect(stack: Stack) -> None:
    response = await api_get(stack, "/wms/stock")
    assert response.status == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert (await response.json())["reasons"] == ["authentication required"]
    assert "Location" not in response.headers


async def test_a_script_in_the_app_uses_the_session_cookie(stack: Stack, client: Browser) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    response = await api_get(stack, "/wms/api/items", client.cookie(COOKIE, stack.url))
    assert response.status == 200
    assert (await response.json())["assertion"]["claims"]["sub"] == "alice"


async def test_public_client_signs_in_with_pkce_alone(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> None:
    config = sign_in_config(provider, client_id=PUBLIC_CLIENT_ID, client_secret=None)
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider, sign_in=config) as stack,
        browser(stack.url) as client,
    ):
        page = await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
        assert page.status == 200, page.text


# --- the session cookie -----------------------------------------------------------------


async def test_tampered_cookie_is_no_session_and_is_cleared(stack: Stack, client: Browser) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    value = client.cookie(COOKIE, stack.url)
    assert value is not None
    flipped = value[:-5] + ("A" if value[-5] != "A" else "B") + value[-4:]
    response = await api_get(stack, "/wms/", flipped)
    assert response.status == 401
    async with stack.session.get(
        stack.url + "/wms/",
        headers={"Accept": "text/html", "Cookie": f"{COOKIE}={flipped}"},
        allow_redirects=False,
    ) as page:
        assert page.status == 302, "a browser just signs in again: no error page"
        cleared = [c for c in page.headers.getall("Set-Cookie") if c.startswith(f"{COOKIE}=")]
        assert cleared and "Max-Age=0" in cleared[0]
    for garbage in ("", "v1", "v1.x.y", "v2.abc.def", "%00", "v1." + "A" * 5000):
        assert (await api_get(stack, "/wms/", garbage)).status == 401
    assert stack.total_forwarded() == 1  # only the signed-in request


async def test_garbage_session_cookies_are_no_session_never_a_500(stack: Stack) -> None:
    """Bytes no browser would send in the session cookies (non-UTF-8, odd names,
    a chunk without its head) are no session: 401 or sign-in, logged, never a 500."""
    cookies = [
        b"portcullis_session=\xff\xfe\x80",
        b"portcullis_session=v1.\xc3\x28.abc; portcullis_session_1=\xff",
        b"portcullis_session_\xff=1; portcullis_session=v1.x.y",
        b"portcullis_session_1=orphan-chunk",
        b"portcullis_session=" + b"A" * 3000 + b"; portcullis_session_2=\x80",
        b"portcullis_session_auth_\xe9=1; portcullis_session=%00",
    ]
    decision_ids = []
    for cookie in cookies:
        for accept in (b"application/json", b"text/html"):
            head = (
                b"GET /wms/stock HTTP/1.1\r\nHost: {host}\r\nAccept: " + accept + b"\r\n"
                b"Cookie: " + cookie + b"\r\n"
            )
            status, _, body = await raw_request(stack.url, head)
            assert status == (401 if accept == b"application/json" else 302), (cookie, body)
            if status == 401:
                decision_ids.append(json.loads(body)["decision_id"])
    assert stack.total_forwarded() == 0
    events = await logged(stack, *decision_ids)
    assert len(events) == len(decision_ids)
    assert all(e["input"]["identity"]["authenticated"] is False for e in events)


async def test_key_rotation_keeps_sessions_and_dropping_a_key_ends_them(
    stack: Stack, client: Browser, tmp_path: Path
) -> None:
    assert stack.gateway.sign_in is not None
    cookies = stack.gateway.sign_in.cookies
    old = cookies.keys
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    cookie = client.cookie(COOKIE, stack.url)
    assert cookie is not None
    new_key = tmp_path / "new.key"
    write_key_file(new_key)
    # What a restart with `key_files: [new.key, session.key]` loads:
    cookies.keys = KeyRing.from_files([new_key, tmp_path / "session.key"])
    assert (await api_get(stack, "/wms/", cookie)).status == 200, "the old key still opens"
    resealed = cookies.keys.seal("session", b"{}")
    assert resealed.split(".")[1] != cookie.split(".")[1], "the new key seals"
    assert old.open("session", resealed) is None
    # ...and with the old key dropped from the list, its sessions are gone.
    cookies.keys = KeyRing.from_files([new_key])
    assert (await api_get(stack, "/wms/", cookie)).status == 401


async def test_session_fixation_by_an_app_behind_the_gateway_is_dropped(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> None:
    """An app behind the gateway (compromised, or just careless) answers with a
    Set-Cookie for the gateway's own session, holding a session of the attacker's:
    the browser would then act as mallory everywhere (login CSRF, session
    fixation), or a chunk or pre-auth cookie would shadow or clear the real ones.
    Every spelling of those is dropped, the app's own cookie passes, and the
    browser is still alice's."""
    async with (
        planting_stack(aiohttp_server, tmp_path, provider) as hostile,
        browser(hostile.stack.url) as alice,
    ):
        stack, planted, theirs = hostile.stack, hostile.planted, hostile.mallorys
        planted["headers"] = [
            f"{COOKIE}={theirs}; Path=/; Secure; HttpOnly; SameSite=Lax",
            f" {COOKIE} = {theirs} ; Path=/wms/",
            f"={COOKIE}={theirs}; Path=/",  # nameless: sent back as "portcullis_session=..."
            f"{COOKIE}_1=shadowing-chunk; Path=/",
            f"{COOKIE}_auth_x=; Path=/.portcullis/; Max-Age=0",
            "wms_cart=42; Path=/wms/",  # the app's own: passes
        ]
        await alice.sign_in(stack.url + "/wms/", "alice", ["otp"])
        ours = alice.cookie(COOKIE, stack.url)
        async with alice.http.get(stack.url + "/wms/plant") as response:
            assert response.status == 200
            assert response.headers.getall("Set-Cookie") == ["wms_cart=42; Path=/wms/"]
        assert alice.cookie(COOKIE, stack.url) == ours
        assert alice.cookie("wms_cart", stack.url + "/wms/") == "42"
        seen = (await alice.go(stack.url + "/wms/stock")).json()
        assert seen["assertion"]["claims"]["sub"] == "alice"


async def test_a_session_planted_beside_alices_makes_neither_count(
    stack: Stack, client: Browser
) -> None:
    """Mallory's session cookie planted beside alice's (under /wms/, or by a parent
    domain): the browser sends both, in an order that says nothing about whose is
    whose. Neither is taken: no request goes through as mallory, nor as alice."""
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    alice = client.cookie(COOKIE, stack.url)
    async with browser(stack.url) as other:
        await other.sign_in(stack.url + "/wms/", "mallory", ["otp"])
        mallory = other.cookie(COOKIE, stack.url)
    assert alice and mallory and alice != mallory
    for cookie in (f"{mallory}; {COOKIE}={alice}", f"{alice}; {COOKIE}={mallory}"):
        assert (await api_get(stack, "/wms/stock", cookie)).status == 401
    assert (await api_get(stack, "/wms/stock", f"{alice}; {COOKIE}={alice}")).status == 200


# --- refresh ----------------------------------------------------------------------------


async def test_expired_session_is_refreshed_with_the_refresh_token(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    before = session_of(stack, client)
    put_session(stack, client, replace(before, expires_at=int(time.time()) - 5))
    page = await client.go(stack.url + "/wms/stock")
    assert page.status == 200 and page.hops == [], "refreshed in place, no sign-in"
    after = session_of(stack, client)
    assert after.expires_at > time.time() + 600
    assert after.refresh_token != before.refresh_token, "the provider rotated it"
    assert (after.subject, after.amr, after.auth_time) == (
        before.subject,
        before.amr,
        before.auth_time,
    ), "a refresh proves no new sign-in"


async def test_concurrent_requests_share_one_refresh_and_keep_the_grant(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    expired = replace(session_of(stack, client), expires_at=int(time.time()) - 5)
    old_cookie = put_session(stack, client, expired)
    responses = await asyncio.gather(
        *(api_get(stack, f"/wms/tab/{i}", old_cookie) for i in range(8))
    )
    assert [r.status for r in responses] == [200] * 8
    new_cookies = {
        c.split(";")[0].split("=", 1)[1]
        for r in responses
        for c in r.headers.getall("Set-Cookie")
        if c.startswith(f"{COOKIE}=")
    }
    assert len(new_cookies) == 8, "each response carries the refreshed session"
    # A request sent before the new cookie arrived still works (no second refresh
    # with the rotated-away token, which the provider would take as theft).
    assert (await api_get(stack, "/wms/late", old_cookie)).status == 200
    # And the grant is alive: the refreshed session refreshes again later.
    newest = Session.from_bytes(
        stack.gateway.sign_in.cookies.keys.open("session", new_cookies.pop()) or b""  # type: ignore[union-attr]
    )
    assert newest is not None
    again = put_session(stack, client, replace(newest, expires_at=int(time.time()) - 5))
    response = await api_get(stack, "/wms/next-hour", again)
    assert response.status == 200
    assert any(c.startswith(f"{COOKIE}=") for c in response.headers.getall("Set-Cookie"))


async def test_refresh_refused_by_the_provider_ends_the_session(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    session = session_of(stack, client)
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    async with stack.session.post(
        provider.url + "/token/revocation",
        data={"token": session.refresh_token, "token_type_hint": "refresh_token"},
        headers={"Authorization": f"Basic {basic}"},
    ) as revoked:
        assert revoked.status == 200
    cookie = put_session(stack, client, replace(session, expires_at=int(time.time()) - 5))
    assert (await api_get(stack, "/wms/", cookie)).status == 401
    page = await client.go(stack.url + "/wms/")
    # Back to the provider, which still knows the browser: signed in again, silently.
    assert any(hop.startswith(provider.url + "/auth?") for hop in page.hops)
    assert page.status == 200 and session_of(stack, client).refresh_token != session.refresh_token


async def test_session_past_its_lifetime_ends_without_refresh(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    old = replace(session_of(stack, client), created_at=int(time.time()) - 13 * 3600)
    assert (await api_get(stack, "/wms/", put_session(stack, client, old))).status == 401


# --- attacks on the callback -------------------------------------------------------------


async def start(client: Browser, url: str) -> tuple[Page, dict[str, str]]:
    """Open a gateway URL; the provider's login page and the authorization params."""
    page = await client.go(url)
    authorize = page.hops[-1]
    return page, {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}


async def code_for(client: Browser, login: Page, user: str = "alice") -> dict[str, str]:
    """Sign in at the provider and stop at the redirect back: its code, state, iss."""
    async with client.http.post(
        login.form_action(),
        data=[("login", user), ("methods", "otp")],
        allow_redirects=False,
    ) as response:
        resume = response.headers["Location"]
    async with client.http.get(resume, allow_redirects=False) as response:
        back = response.headers["Location"]
    assert "/.portcullis/callback?" in back, back
    return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}


async def test_callback_without_a_matching_state_cookie_is_refused(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    login, _ = await start(client, stack.url + "/wms/")
    answer = await code_for(client, login)
    async with browser(stack.url) as other:  # another browser: no pre-auth cookie
        page = await other.go(stack.url + "/.portcullis/callback?" + urlencode(answer))
        assert page.status == 400
        assert "started in another browser" in page.text
        assert other.cookie(COOKIE, stack.url) is None
    forged = {**answer, "state": answer["state"][:-2] + "xx"}
    page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(forged))
    assert page.status == 400 and client.cookie(COOKIE, stack.url) is None
    page = await client.go(stack.url + "/.portcullis/callback?code=abc")
    assert page.status == 400 and "no state" in page.text
    assert stack.total_forwarded() == 0


async def test_callback_replayed_after_sign_in_is_refused(stack: Stack, client: Browser) -> None:
    login, _ = await start(client, stack.url + "/wms/")
    answer = await code_for(client, login)
    callback = stack.url + "/.portcullis/callback?" + urlencode(answer)
    async with client.http.get(callback, allow_redirects=False) as first:
        assert first.status == 302
    client.jar.clear(lambda c: c.key == COOKIE)
    page = await client.go(callback)
    assert page.status == 400 and client.cookie(COOKIE, stack.url) is None


async def test_sign_ins_and_failed_sign_ins_are_authentication_events_for_the_siem(
    stack: Stack, client: Browser
) -> None:
    login, _ = await start(client, stack.url + "/wms/")
    answer = await code_for(client, login)
    callback = stack.url + "/.portcullis/callback?" + urlencode(answer)
    async with client.http.get(callback, allow_redirects=False) as first:
        assert first.status == 302
    client.jar.clear(lambda c: c.key == COOKIE)
    assert (await client.go(callback)).status == 400  # a replayed answer
    events = [e for e in await stack.events(at_least=3) if e["path"] == "gateway/signin"]
    assert [e["result"]["allow"] for e in events] == [True, False]
    signed_in, failed = events
    assert signed_in["input"]["identity"]["subject"] == "alice"
    assert signed_in["input"]["identity"]["amr"] == ["pwd", "otp"]
    assert signed_in["result"]["reasons"] == ["gateway.sign_in: signed in"]
    assert failed["result"]["http_status"] == 400
    assert failed["input"]["identity"] == {"authenticated": False, "method": "none"}
    ocsf = format_ocsf(signed_in, "0" * 64)
    assert (ocsf["class_uid"], ocsf["activity_name"], ocsf["is_mfa"]) == (3002, "Logon", True)
    assert ocsf["user"]["uid"] == "alice"


async def test_answer_from_another_issuer_is_refused(stack: Stack, client: Browser) -> None:
    login, _ = await start(client, stack.url + "/wms/")
    answer = await code_for(client, login)
    mixed = {**answer, "iss": "https://evil.example"}
    page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(mixed))
    assert page.status == 400 and "not from" in page.text
    assert client.cookie(COOKIE, stack.url) is None


async def test_provider_refuses_an_authorization_request_without_pkce(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    _, params = await start(client, stack.url + "/wms/")
    del params["code_challenge"], params["code_challenge_method"]
    page = await client.go(provider.url + "/auth?" + urlencode(params))
    assert "/.portcullis/callback?" in page.url
    assert page.query["error"] == ["invalid_request"]
    assert "requires PKCE" in page.query["error_description"][0]
    assert page.status == 401 and client.cookie(COOKIE, stack.url) is None


async def test_code_minted_without_pkce_is_refused_at_the_exchange(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> None:
    # A client whose provider lets PKCE be left out: an attacker's code from a
    # flow without a challenge, injected into the victim's callback, still fails,
    # because the gateway always sends its code_verifier.
    config = sign_in_config(provider, client_id=LAX_CLIENT_ID)
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider, sign_in=config) as stack,
        browser(stack.url) as victim,
        browser(stack.url) as attacker,
    ):
        _, params = await start(victim, stack.url + "/wms/")
        mine = {k: v for k, v in params.items() if not k.startswith("code_challenge")}
        login = await attacker.go(provider.url + "/auth?" + urlencode(mine))
        stolen = await code_for(attacker, login, "mallory")
        page = await victim.go(stack.url + "/.portcullis/callback?" + urlencode(stolen))
        assert page.status == 502
        # oidc-provider hides the cause ("PKCE verification failed") from clients.
        assert "the provider refused the sign-in code: invalid_grant" in page.text
        assert victim.cookie(COOKIE, stack.url) is None


async def test_id_token_with_another_nonce_is_refused(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    # The attacker reuses the victim's code_challenge (visible in the URL) with
    # a nonce of their own: PKCE passes, so only the nonce check stops it.
    _, params = await start(client, stack.url + "/wms/")
    async with browser(stack.url) as attacker:
        login = await attacker.go(
            provider.url + "/auth?" + urlencode({**params, "nonce": "attacker-nonce-0123456789"})
        )
        answer = await code_for(attacker, login, "mallory")
    page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(answer))
    assert page.status == 400
    assert "nonce does not match" in page.text
    assert client.cookie(COOKIE, stack.url) is None


async def test_several_tabs_signing_in_at_once_all_succeed(stack: Stack, client: Browser) -> None:
    tabs = [await start(client, stack.url + f"/wms/tab/{i}") for i in range(3)]
    # Each tab has its own pre-auth cookie; finishing them in any order works.
    for index in (2, 0, 1):
        login, _ = tabs[index]
        page = await client.sign_in_at_provider(login, "alice", ["otp"])
        assert page.status == 200, page.text
        assert page.json()["path"] == f"/wms/tab/{index}"
    assert not [c for c in client.cookie_names() if c.startswith(f"{COOKIE}_auth_")]


# --- return-to ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "//evil.example/wms/",
        "https://evil.example",
        "https://evil.example/wms/",
        "/\\evil.example",
        "\\\\evil.example",
        "/%2Fevil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "%2F%5Cevil.example",
        "/%252F%252Fevil.example",
        "http:evil.example",
        "javascript:alert(1)",
        "/\t/evil.example",
        "https://127.0.0.1@evil.example/",
    ],
)
async def test_return_to_never_leaves_the_gateway(
    stack: Stack, client: Browser, target: str
) -> None:
    page = await client.go(stack.url + "/.portcullis/sign_in?rd=" + quote(target, safe=""))
    page = await client.sign_in_at_provider(page, "alice", ["otp"])
    assert page.url == stack.url + "/.portcullis/", page.hops
    assert "Your session" in page.text


async def test_return_to_a_same_host_url_is_kept(stack: Stack, client: Browser) -> None:
    for target, landed in (
        ("/wms/stock?sku=1", "/wms/stock?sku=1"),
        (stack.url + "/wms/x", "/wms/x"),
    ):
        page = await client.go(stack.url + "/.portcullis/sign_in?rd=" + quote(target, safe=""))
        if "/interaction/" in page.url:
            page = await client.sign_in_at_provider(page, "alice", ["otp"])
        assert page.url == stack.url + landed


# --- step-up ----------------------------------------------------------------------------


async def test_otp_session_is_stepped_up_for_pos_refunds(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    page = await client.sign_in(stack.url + "/pos/", "bob", ["otp"])
    assert page.status == 200
    login = await client.go(stack.url + "/pos/refunds/7")
    authorize = dict(parse_qs(urlsplit(login.hops[-1]).query))
    assert authorize["acr_values"] == ["phr"] and authorize["max_age"] == ["900"]
    assert "prompt" not in authorize
    assert "The application asks for" in login.text and "phr" in login.text
    page = await client.sign_in_at_provider(login, "bob", ["hwk"])
    assert page.status == 200, page.text
    assert page.url == stack.url + "/pos/refunds/7"
    claims = page.json()["assertion"]["claims"]
    assert claims["amr"] == ["pwd", "hwk"] and claims["acr"] == "phr"


async def test_step_up_the_provider_cant_satisfy_stops_after_one_round(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/pos/", "dave", ["otp"])
    login = await client.go(stack.url + "/pos/refunds/7")
    # dave has no security key: the provider signs him in with what he has.
    page = await client.sign_in_at_provider(login, "dave", ["otp"])
    assert page.status == 403
    assert page.url == stack.url + "/pos/refunds/7"
    assert "Stronger verification didn't happen" in page.text
    assert "a FIDO2 authenticator or a hardware security key" in page.text
    assert sum("/.portcullis/callback" in hop for hop in page.hops) == 1, "one round, no loop"
    again = await client.go(stack.url + "/pos/refunds/7")
    assert again.status == 403 and again.hops == [], "still no loop on the next visit"
    assert 'href="/.portcullis/sign_in?rd=%2Fpos%2Frefunds%2F7&amp;acr=phr&amp;max_age=900"' in (
        again.text
    ), "a person may try again, on purpose"
    assert stack.total_forwarded() == 1


async def test_step_up_cancelled_at_the_provider_names_its_error_code_in_the_gateways_words(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/pos/", "bob", ["otp"])
    login = await client.go(stack.url + "/pos/refunds/7")
    page = await client.sign_in_at_provider(login, "bob", action="cancel")
    assert page.status == 403
    assert "access_denied" in page.text and "cancelled" in page.text
    assert (await client.go(stack.url + "/pos/")).status == 200, "the session survives"


async def test_step_up_request_tampered_on_the_way_grants_nothing(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    # Like oauth2-proxy PR #2861: drop acr_values from the authorization request.
    # The provider then asks for nothing more, and the gateway checks what came back.
    await client.sign_in(stack.url + "/pos/", "bob", ["otp"])
    async with client.http.get(stack.url + "/pos/refunds/7", allow_redirects=False) as response:
        authorize = response.headers["Location"]
    params = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    del params["acr_values"]
    page = await client.go(provider.url + "/auth?" + urlencode(params))
    assert page.url == stack.url + "/pos/refunds/7"
    assert page.status == 403 and "Stronger verification didn't happen" in page.text
    assert stack.total_forwarded() == 1


async def test_non_navigation_gets_a_page_with_a_step_up_button(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/pos/", "bob", ["otp"])
    page = await client.request("POST", stack.url + "/pos/refunds/7", data={"amount": "5"})
    assert page.status == 403
    assert "Sign in again with stronger verification" in page.text
    assert re.search(r"Decision id <code>[0-9a-f-]{36}</code>", page.text)


# --- deny pages and sign-out --------------------------------------------------------------


async def test_deny_page_says_why_in_words_with_the_decision_id(
    stack: Stack, client: Browser
) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    page = await client.go(stack.url + "/wms/admin/users")
    assert page.status == 403 and page.hops == []
    assert page.headers["Content-Type"].startswith("text/html")
    assert "not in a group allowed here (one of: wms-admin)" in page.text
    assert "stronger verification" not in page.text, "a new sign-in adds no group"
    assert "Signed in as <b>alice@example.com</b>" in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    response = await api_get(stack, "/wms/admin/users", client.cookie(COOKIE, stack.url))
    assert response.status == 403
    assert (await response.json())["reasons"] == ["requires membership in one of: wms-admin"]


async def test_browser_post_without_a_session_gets_a_sign_in_page(stack: Stack) -> None:
    async with browser(stack.url) as client:
        page = await client.request("POST", stack.url + "/wms/items", data={"x": "1"})
    assert page.status == 401
    assert 'href="/.portcullis/sign_in?rd=%2Fwms%2Fitems"' in page.text


def sign_out_form(page: Page) -> dict[str, str]:
    assert page.status == 200, page.text
    assert '<form method="post" action="/.portcullis/sign_out">' in page.text
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token is not None
    return {"token": html.unescape(token[1])}


SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


async def test_sign_out_clears_the_session_and_signs_out_at_the_provider(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    form = sign_out_form(await client.go(stack.url + "/.portcullis/sign_out"))
    headers = {**SAME_ORIGIN, "Origin": stack.url}
    async with client.http.post(
        stack.url + "/.portcullis/sign_out", data=form, headers=headers, allow_redirects=False
    ) as out:
        assert out.status == 303
        location = out.headers["Location"]
        assert any(
            c.startswith(f"{COOKIE}=") and "Max-Age=0" in c
            for c in out.headers.getall("Set-Cookie")
        )
    assert location.startswith(provider.url + "/session/end?")
    query = parse_qs(urlsplit(location).query)
    assert query["client_id"] == [CLIENT_ID]
    assert query["post_logout_redirect_uri"] == [stack.url + "/.portcullis/signed_out"]
    confirm = await client.go(location)
    assert "Sign out of the dev provider?" in confirm.text
    action = re.search(r'<form[^>]*action="([^"]+)"', confirm.text)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text)
    assert action and xsrf
    done = await client.go(
        provider.url + action[1] if action[1].startswith("/") else action[1],
        method="POST",
        data={"xsrf": xsrf[1], "logout": "yes"},
    )
    assert done.url == stack.url + "/.portcullis/signed_out"
    assert "You are signed out" in done.text
    page = await client.go(stack.url + "/wms/")
    assert "/interaction/" in page.url, "the next request goes to sign-in"


async def test_get_sign_out_shows_a_page_and_signs_nobody_out(
    stack: Stack, client: Browser, provider: DevProvider
) -> None:
    """A link, an <img> or a top-level navigation from any site is a GET: it
    shows the sign-out button and ends nothing."""
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    async with client.http.get(
        stack.url + "/.portcullis/sign_out",
        headers={"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/"},
        allow_redirects=False,
    ) as response:
        assert response.status == 200
        assert "Set-Cookie" not in response.headers
        csp = response.headers["Content-Security-Policy"]
        assert f"form-action 'self' {provider.url};" in csp  # the POST goes on to the provider
        sign_out_form(Page(str(response.url), 200, await response.text(), {}, []))
    assert client.cookie(COOKIE, stack.url) is not None
    page = await client.go(stack.url + "/wms/stock")
    assert page.status == 200 and '"app": "wms"' in page.text
    assert len(stack.forwarded("wms")) == 2


async def test_cross_site_sign_out_is_refused(stack: Stack, client: Browser) -> None:
    await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
    form = sign_out_form(await client.go(stack.url + "/.portcullis/sign_out"))
    async with browser(stack.url) as stranger:  # a page for no session: its token is no use
        other = sign_out_form(await stranger.go(stack.url + "/.portcullis/sign_out"))
    url = stack.url + "/.portcullis/sign_out"
    attempts = [
        # A form on evil.example posting here: the browser says where it comes from.
        (form, {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, "cross-site"),
        (form, {"Origin": "https://evil.example"}, "Origin: https://evil.example"),
        (form, {"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),
        (form, {"Origin": "null"}, "Origin: null"),
        # A browser that sends neither header still needs this session's token.
        ({}, {}, "token missing or not for this session"),
        ({"token": "v1.x.y"}, SAME_ORIGIN, "token missing or not for this session"),
        (other, SAME_ORIGIN, "token missing or not for this session"),
    ]
    refused = []
    for data, headers, reason in attempts:
        async with client.http.post(url, data=data, headers=headers, allow_redirects=False) as out:
            assert out.status == 403, await out.text()
            assert "Set-Cookie" not in out.headers
            body = await out.json()
            assert body["error"] == "sign_out_refused" and reason in body["reason"], body
            refused.append(body["decision_id"])
    page = await client.go(stack.url + "/wms/stock")
    assert page.status == 200, "still signed in"
    events = {e["decision_id"]: e for e in await logged(stack, *refused)}
    for decision_id in refused:
        assert events[decision_id]["result"]["reasons"][0].startswith("gateway.sign_out_refused:")
    async with client.http.post(url, data=form, headers=SAME_ORIGIN, allow_redirects=False) as out:
        assert out.status == 303, "the page's own button still works"


async def test_max_age_zero_asks_the_provider_for_a_fresh_login(
    stack: Stack, client: Browser
) -> None:
    async with client.http.get(
        stack.url + "/.portcullis/sign_in?rd=%2Fpos%2F&acr=phr&max_age=0", allow_redirects=False
    ) as response:
        query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert (query["acr_values"], query["max_age"], query["prompt"]) == (["phr"], ["0"], ["login"])


async def test_provider_down_is_a_page_saying_so_and_no_session(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> None:
    from tests.gateway_stack import free_port

    config = sign_in_config(provider, issuer=f"http://127.0.0.1:{free_port()}")
    async with (
        start_sign_in_stack(aiohttp_server, tmp_path, provider, sign_in=config) as stack,
        browser(stack.url) as client,
    ):
        page = await client.go(stack.url + "/wms/")
        assert page.status == 502
        text = html.unescape(page.text)
        assert "The sign-in provider can't be used right now" in text
        assert "can't be reached" in text and "Try again in a minute" in text
        assert (await api_get(stack, "/wms/")).status == 401, "APIs are unaffected: 401 JSON"
