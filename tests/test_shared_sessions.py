"""Browser sessions across replicas, against the real dev OpenID provider (npm
oidc-provider) and a real Redis: sign-out and back-channel logout reach every
replica, a copied cookie is refused, sessions are listed."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio

from gateway.signin.oidc import OidcClient
from gateway.signin.session import Session
from tests.gateway_stack import ServerFactory, Stack, free_port, logged
from tests.redis_server import redis_server, redis_url
from tests.sign_in_stack import (
    Browser,
    DevProvider,
    browser,
    provider,
    sign_in_config,
    start_provider,
    start_sign_in_stack,
)
from tests.test_shared_state import admin, second_replica, shared, wait_for
from tests.test_sign_in import put_session, session_of

__all__ = ["provider", "redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(90)
COOKIE = "__Host-portcullis_session"


def session_cookies(client: Browser) -> dict[str, str]:
    """What an attacker copies out of a browser: every gateway session cookie."""
    return {
        c.key: c.value for c in client.jar if c.key.startswith(COOKIE) and "_auth_" not in c.key
    }


async def with_copied_cookie(
    base: str, cookies: dict[str, str], path: str = "/wms/"
) -> tuple[int, dict[str, Any]]:
    header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with (
        aiohttp.ClientSession() as attacker,
        attacker.get(
            base + path,
            headers={"Cookie": header, "Accept": "application/json"},
            allow_redirects=False,
        ) as response,
    ):
        body = await response.json(content_type=None) if response.status != 302 else {}
        return response.status, body if isinstance(body, dict) else {}


async def sign_out_at_gateway(stack: Stack, client: Browser) -> None:
    page = await client.go(stack.url + "/.portcullis/sign_out")
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token is not None
    async with client.http.post(
        stack.url + "/.portcullis/sign_out", data={"token": token[1]},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": stack.url}, allow_redirects=False,
    ) as out:  # fmt: skip
        assert out.status == 303


async def sign_out_at_provider(provider: DevProvider, client: Browser) -> None:
    """The user signs out at the provider itself (another app's sign-out button)."""
    confirm = await client.go(f"{provider.url}/session/end")
    action = re.search(r'<form[^>]*action="([^"]+)"', confirm.text)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text)
    assert action and xsrf, confirm.text[:500]
    url = provider.url + action[1] if action[1].startswith("/") else action[1]
    done = await client.go(url, method="POST", data={"xsrf": xsrf[1], "logout": "yes"})
    assert done.status == 200


async def test_sign_out_on_one_replica_refuses_the_copied_cookie_on_the_other(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        other, _ = await second_replica(aiohttp_server, stack, tmp_path)
        async with browser(stack.url) as client:
            page = await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
            assert page.status == 200
            stolen = session_cookies(client)
            assert (await with_copied_cookie(other, stolen))[0] == 200
            await sign_out_at_gateway(stack, client)
            for base in (other, stack.url):
                status, body = await with_copied_cookie(base, stolen)
                assert status == 401 and body["error"] == "session_revoked", body
                assert "signed out" in body["reason"]
            events = await logged(stack, body["decision_id"])
            assert events[0]["result"]["reasons"][0].startswith("gateway.session_revoked: ")
            # The browser itself signs in again (silently: the provider's session
            # is still on), with a new session that is let in.
            again = await client.go(stack.url + "/wms/")
            assert again.status == 200 and session_cookies(client) != stolen


async def test_backchannel_logout_from_the_provider_ends_the_session_everywhere(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        other, _ = await second_replica(aiohttp_server, stack, tmp_path)
        async with browser(stack.url) as client:
            await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
            stolen = session_cookies(client)
            assert (await with_copied_cookie(other, stolen))[0] == 200
            await sign_out_at_provider(provider, client)

            async def refused() -> bool:
                return (await with_copied_cookie(other, stolen))[0] == 401

            await wait_for(refused, timeout=5)
            status, body = await with_copied_cookie(stack.url, stolen)
            assert status == 401 and "signed out at the provider" in body["reason"]
            metrics = stack.gateway.metrics.render().decode()
            assert 'portcullis_backchannel_logouts_total{result="ok"} 1.0' in metrics


async def logouts_answered(stack: Stack, result: str) -> None:
    """Wait until the gateway has answered one back-channel logout with `result`."""
    metric = f'portcullis_backchannel_logouts_total{{result="{result}"}} 1.0'

    async def answered() -> bool:
        return metric in stack.gateway.metrics.render().decode()

    await wait_for(answered, timeout=5)


async def test_backchannel_logout_from_a_provider_whose_issuer_ends_in_a_slash_ends_the_session(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Auth0 and others name themselves `https://tenant.example/`; the gateway reads
    sign_in.issuer without the slash and discovery accepts either. The logout
    token's `iss` keeps the slash: its `sid` must still name the sessions signed in
    through that provider session (it was revoked under another key, and the
    copied cookie kept working on every replica)."""
    slash = start_provider(tmp_path / "provider", free_port(), issuer_slash=True)
    try:
        assert slash.issuer == slash.url + "/"
        async with start_sign_in_stack(
            aiohttp_server, tmp_path, slash, sign_in=sign_in_config(slash),
            shared_state=shared(redis_url),
        ) as stack:  # fmt: skip
            other, _ = await second_replica(aiohttp_server, stack, tmp_path)
            async with browser(stack.url) as client:
                page = await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
                assert page.status == 200
                stolen = session_cookies(client)
                assert session_of(stack, client).provider_sid, "the ID token carries a sid"
                assert (await with_copied_cookie(other, stolen))[0] == 200
                await sign_out_at_provider(slash, client)
                await logouts_answered(stack, "ok")
                for base in (other, stack.url):
                    status, body = await with_copied_cookie(base, stolen)
                    assert status == 401, (base, status, body)
                    assert "signed out at the provider" in body["reason"]
    finally:
        slash.stop()


async def test_a_back_channel_logout_does_not_revoke_the_same_subject_of_another_issuer(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    provider: DevProvider,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A logout token with `sub` and no `sid` revokes that subject's sessions and
    tokens: the provider's subject. It revoked "alice" under every issuer, so the
    token issuer's alice (someone else) was refused too."""
    verify = OidcClient.verify_logout_token

    async def without_sid(self: OidcClient, token: str) -> dict[str, Any]:
        claims = await verify(self, token)
        claims.pop("sid", None)  # as a provider without sessions sends it
        return claims

    monkeypatch.setattr(OidcClient, "verify_logout_token", without_sid)
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        bearer = stack.token("alice", groups=["warehouse"], amr=["pwd", "otp"])
        async with browser(stack.url) as client:
            await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
            stolen = session_cookies(client)
            assert (await with_copied_cookie(stack.url, stolen))[0] == 200
            await sign_out_at_provider(provider, client)
            await logouts_answered(stack, "ok")
            status, body = await with_copied_cookie(stack.url, stolen)
            assert status == 401 and "signed out at the provider" in body["reason"], body
        async with stack.session.get(
            stack.url + "/wms/stock", headers={"Authorization": f"Bearer {bearer}"}
        ) as response:
            assert response.status == 200, await response.text()


async def test_backchannel_logout_that_redis_refused_midway_is_applied_when_the_provider_retries(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    provider: DevProvider,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway answers 503 when it could not apply a logout, so the provider
    retries the same token. If Redis took the token's jti but not the revocation
    (a failure between the two writes), the retry was refused as a replay (400,
    final for the provider) and the session lived on everywhere. The jti and
    the revocation are one write: both, or neither."""
    seen: list[str] = []
    verify = OidcClient.verify_logout_token

    async def spy(self: OidcClient, token: str) -> dict[str, Any]:
        seen.append(token)  # what the provider sent, to send it again as it would
        return await verify(self, token)

    monkeypatch.setattr(OidcClient, "verify_logout_token", spy)
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        other, _ = await second_replica(aiohttp_server, stack, tmp_path)
        assert stack.gateway.shared is not None
        prefix = stack.gateway.shared.keys.prefix
        async with browser(stack.url) as client, redis.asyncio.from_url(redis_url) as r:
            await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
            stolen = session_cookies(client)
            assert (await with_copied_cookie(other, stolen))[0] == 200
            # Redis takes the replay marker but refuses the revocation (here: an
            # ACL; in production a timeout, a dropped connection, a failover).
            await r.execute_command(
                "ACL", "SETUSER", "default", "resetkeys", "%R~*", f"%W~{prefix}logout_jti:*"
            )
            try:
                await sign_out_at_provider(provider, client)
                await logouts_answered(stack, "unavailable")
            finally:
                await r.execute_command("ACL", "SETUSER", "default", "allkeys")
            assert len(seen) == 1

            async def retried() -> int:
                async with stack.session.post(
                    stack.url + "/.portcullis/backchannel_logout", data={"logout_token": seen[0]}
                ) as response:
                    return response.status

            async def applied() -> bool:  # the provider retries until it gets an answer
                return await retried() != 503

            await wait_for(applied, timeout=5)
            for base in (other, stack.url):
                status, body = await with_copied_cookie(base, stolen)
                assert status == 401, (base, status, body)
                assert "signed out at the provider" in body["reason"]
            assert await retried() == 400, "a second retry is a replay"


async def test_sessions_are_listed_with_replica_and_address(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        other, gateway_b = await second_replica(aiohttp_server, stack, tmp_path)
        async with browser(stack.url) as client:
            await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
            assert (await with_copied_cookie(other, session_cookies(client)))[0] == 200
            async with admin(gateway_b) as api:
                listing = await (await api.get("/sessions", params={"user": "alice"})).json()
                sessions = listing["sessions"]
                assert len(sessions) == 1
                assert sessions[0]["replica"] == "replica-b"  # last seen there
                assert sessions[0]["source_ip"] == "127.0.0.1"
                assert sessions[0]["last_seen"] >= sessions[0]["created"]
                # Listed under every issuer the gateway trusts, each naming its own.
                assert listing["issuer"] is None
                assert sessions[0]["issuer"] == provider.issuer.rstrip("/")
                by_token_issuer = await api.get(
                    "/sessions", params={"user": "alice", "issuer": stack.issuer.issuer}
                )
                assert (await by_token_issuer.json())["sessions"] == []
                answer = await api.post(
                    "/sessions/revoke", json={"session": sessions[0]["session_id"]}
                )
                assert answer.status == 200
                assert (await (await api.get("/sessions", params={"user": "alice"})).json())[
                    "sessions"
                ] == []
            page = await client.go(stack.url + "/wms/")
            assert page.status == 401 and "Your session has ended" in page.text
            assert 'href="/.portcullis/sign_in"' in page.text
            assert session_cookies(client) == {}, "the ended session's cookie is cleared"
            again = await client.go(stack.url + "/wms/")
            assert urlsplit(again.url).path == "/wms/" and again.status == 200


async def test_forged_logout_token_is_refused(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        # Signed by the gateway's dev issuer, not the provider: wrong key, wrong issuer.
        forged = stack.token("alice", extra={"events": {
            "http://schemas.openid.net/event/backchannel-logout": {}}, "jti": "x"})  # fmt: skip
        for data in ({"logout_token": forged}, {"logout_token": "a.b.c"}, {}):
            async with stack.session.post(
                stack.url + "/.portcullis/backchannel_logout", data=data
            ) as response:
                assert response.status == 400
                assert (await response.json())["error"] == "invalid_request"


async def test_expired_session_on_two_replicas_refreshes_once_and_keeps_the_grant(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider, redis_url: str
) -> None:
    """The provider rotates refresh tokens: a token used twice (once per replica)
    would be taken as theft and the grant revoked. With the Redis lock, requests
    on both replicas at once share one refresh, and the grant lives on."""
    async with start_sign_in_stack(
        aiohttp_server, tmp_path, provider, shared_state=shared(redis_url)
    ) as stack:
        other, _ = await second_replica(aiohttp_server, stack, tmp_path)
        async with browser(stack.url) as client:
            await client.sign_in(stack.url + "/wms/", "alice", ["otp"])
            expired = replace(session_of(stack, client), expires_at=int(time.time()) - 5)
            cookie = put_session(stack, client, expired)

            async def get(base: str, path: str, value: str) -> tuple[int, list[str]]:
                async with stack.session.get(
                    base + path,
                    headers={"Accept": "application/json", "Cookie": f"{COOKIE}={value}"},
                    allow_redirects=False,
                ) as response:
                    fresh = [
                        c.split(";")[0].split("=", 1)[1]
                        for c in response.headers.getall("Set-Cookie", [])
                        if c.startswith(f"{COOKIE}=")
                    ]
                    return response.status, fresh

            bases = (stack.url, other)
            answers = await asyncio.gather(
                *(get(base, f"/wms/tab/{i}", cookie) for i in range(4) for base in bases)
            )
            assert [status for status, _ in answers] == [200] * 8
            refreshed = {value for _, values in answers for value in values}
            assert refreshed, "the responses carry the refreshed session"
            # The grant survived: the refreshed session refreshes again, on either replica.
            latest = refreshed.pop()
            for base in (other, stack.url):
                assert stack.gateway.sign_in is not None
                opened = stack.gateway.sign_in.cookies.keys.open("session", latest)
                newest = Session.from_bytes(opened or b"")
                assert newest is not None
                again = put_session(stack, client, replace(newest, expires_at=int(time.time()) - 5))
                status, fresh = await get(base, "/wms/next-hour", again)
                assert status == 200 and fresh, (base, status)
                latest = fresh[0]


async def test_a_refresh_lock_call_redis_did_not_take_is_no_refresh_without_the_lock(
    redis_url: str,
) -> None:
    """The lock call got no answer while Redis is up (Busy: this gateway's calls timed
    out under load, or its pool was used up): the replica refreshed anyway, without
    the lock. With another replica refreshing the same session meanwhile, the
    provider saw the rotated refresh token twice and revoked the whole grant (seen as
    invalid_grant on a loaded machine). Now it does not refresh: the next request
    tries again. Redis down still refreshes here, as before."""
    from gateway.shared.refresh import single_flight
    from gateway.shared.store import Store

    config = shared(redis_url)
    store = Store(replace(config, redis=replace(config.redis, max_connections=1)))
    calls: list[str] = []

    async def refresh() -> str | None:
        calls.append("provider")
        return "sealed"

    await store.start()
    holder = asyncio.ensure_future(store.client.blpop(["portcullis-test:none"], timeout=1))
    try:
        await asyncio.sleep(0.2)  # the pool's one connection is in use
        assert not holder.done()
        assert await single_flight(store, "busy", [], refresh) is None
        assert calls == [] and store.available  # Busy, not down
    finally:
        await holder
        await store.close()
    down = Store(shared("redis://127.0.0.1:9/0"))
    try:
        await down.start()
        assert await single_flight(down, "down", [], refresh) == "sealed"
        assert calls == ["provider"]
    finally:
        await down.close()
