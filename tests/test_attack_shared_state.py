"""Attacks on the shared state across replicas (Redis): what a hostile client or a
bad day in production (a Redis that hangs, restarts empty, or holds keys the
gateway did not write) does to revocation, lockouts, rate limits and signals."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
import redis.asyncio
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.identity import ANONYMOUS, Identity
from gateway.shared import revocation
from gateway.shared.refresh import single_flight
from gateway.shared.settings import Lockout, RateLimit, RateLimits
from gateway.shared.state import SharedState
from gateway.shared.store import Store
from tests.gateway_stack import ServerFactory, logged
from tests.redis_server import LatencyProxy, RedisServer, redis_server, redis_url
from tests.test_shared_state import IDP, WAREHOUSE, admin, call, shared, shared_stack, wait_for

__all__ = ["redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(60)


async def test_a_wrong_type_key_of_one_user_switches_off_revocation_for_everyone(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Another app sharing the database left a string where the gateway keeps a
    user's known addresses: Redis answers that user's check with WRONGTYPE. That is
    Redis up and answering, not an outage: it opened the breaker, and under
    `on_unavailable: allow` a revoked user's token then went on unchecked (under
    deny, every session and token was refused). Only that request is refused."""
    async with shared_stack(
        aiohttp_server, tmp_path, shared(redis_url, on_unavailable="allow")
    ) as stack:
        state = stack.gateway.shared
        assert state is not None
        stolen = stack.token("alice", **WAREHOUSE)
        async with admin(stack.gateway) as client:
            answer = await client.post("/sessions/revoke", json={"user": "alice"})
            assert answer.status == 200
        async with redis.asyncio.Redis.from_url(redis_url) as other_app:
            mallory = state.keys.user_addresses(stack.issuer.issuer, "mallory", "wms")
            await other_app.set(mallory, "not a sorted set")
        status, body, _ = await call(
            stack, stack.url, "/wms/stock", stack.token("mallory", **WAREHOUSE)
        )
        assert status == 503 and body["error"] == "shared_state_unavailable", body
        assert state.store.available, "Redis answered: not an outage"
        status, body, _ = await call(stack, stack.url, "/wms/stock", stolen)
        assert status == 401 and body["error"] == "revoked", body
        # Everyone else is checked (and let in) as ever.
        erin = stack.token("erin", **WAREHOUSE)
        assert (await call(stack, stack.url, "/wms/stock", erin))[0] == 200


def _foreign_values() -> st.SearchStrategy[bytes]:
    """What another application (or a hand-edit) may leave at one of our keys:
    any bytes, or a record shaped like ours with `at` and `reason` of any type."""
    anything = st.one_of(
        st.none(), st.booleans(), st.text(max_size=12),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=2),
    )  # fmt: skip
    records = st.fixed_dictionaries({"at": anything}, optional={"reason": anything}).map(
        orjson.dumps
    )
    edges = st.sampled_from(
        [b'{"at": 1e20}', b'{"at": 1e999}', b'{"at": true}', b"\xff\xfe", b"{}", b"null"]
    )
    return st.one_of(edges, records, st.binary(max_size=40))


async def test_a_foreign_value_at_a_revocation_or_lockout_key_never_lets_in_or_goes_unlogged(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A user's revocation or lockout key holds what the gateway did not write: a
    record whose `at` is no time a datetime can show (1e20: OverflowError), bytes
    that are not UTF-8 (UnicodeDecodeError), `at: true` (read as revoked at 1970 in
    Python, as "unreadable, revoked now" in the script). The request escaped the
    decision path as a 500 with no decision event, or was refused for the wrong
    reason. Each is refused as revoked or locked out (or 503), and logged; only a
    well-formed revocation from before the token lets it in. The same for the keys
    by subject alone (under every issuer), read beside the user's own."""
    lockout = Lockout(after_denies=1000, window=900, duration=1800)
    async with shared_stack(aiohttp_server, tmp_path, shared(redis_url, lockout=lockout)) as stack:
        state = stack.gateway.shared
        assert state is not None
        loop = asyncio.get_running_loop()
        token = stack.token("alice", **WAREHOUSE)
        issued = int(time.time())
        store = redis.asyncio.Redis.from_url(redis_url)
        keys, alice = state.keys, (stack.issuer.issuer, "alice")
        where = {
            ("revoked", "user"): keys.user_revoked(*alice),
            ("revoked", "every issuer"): keys.revoked_under_every_issuer("alice"),
            ("locked_out", "user"): keys.user_lockout(*alice),
            ("locked_out", "every issuer"): keys.lockout_under_every_issuer("alice"),
        }

        async def attempt(key: str, value: bytes) -> tuple[int, dict[str, Any]]:
            await store.delete(*where.values())
            await store.set(key, value)
            status, body, _ = await call(stack, stack.url, "/wms/stock", token)
            if status != 200:
                assert await logged(stack, body["decision_id"]), body
            return status, body

        def well_formed_before(value: bytes) -> bool:
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError:
                return False
            at = record.get("at") if isinstance(record, dict) else None
            return (
                isinstance(at, int | float) and not isinstance(at, bool)
                and math.isfinite(at) and at < issued
            )  # fmt: skip

        @settings(max_examples=80, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(_foreign_values(), st.sampled_from(sorted(where)))
        def foreign(value: bytes, at: tuple[str, str]) -> None:
            kind, key = at[0], where[at]
            status, body = asyncio.run_coroutine_threadsafe(attempt(key, value), loop).result(30)
            if kind == "revoked" and well_formed_before(value):
                assert status == 200, (value, status, body)
                return
            assert status in (401, 403, 503), (value, status, body)
            assert body["error"] in (kind, "shared_state_unavailable"), (value, body)

        try:
            await asyncio.to_thread(foreign)
        finally:
            await store.aclose()


async def test_an_allow_on_another_app_makes_a_new_address_known_to_pos(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """POS asks for a phishing-resistant sign-in from an address the user has not
    been allowed from; an allow anywhere made the address known. A stolen OTP-level
    token (or session) of a user in two groups opened a warehouse page first, and
    POS then let it in without the security key. An address becomes known per app:
    on POS only by an allow on POS."""
    async with shared_stack(aiohttp_server, tmp_path, shared(redis_url)) as stack:
        state = stack.gateway.shared
        assert state is not None
        stolen = stack.token("bob", groups=["store", "warehouse"], amr=["pwd", "otp"])
        status, body, _ = await call(stack, stack.url, "/pos/sales", stolen)
        assert status == 403 and body["step_up"]["acr"] == "phr", body
        assert (await call(stack, stack.url, "/wms/stock", stolen))[0] == 200

        async def remembered() -> bool:
            known = await state.store.client.zscore(
                state.keys.user_addresses(stack.issuer.issuer, "bob", "wms"), "127.0.0.1"
            )
            return known is not None

        await wait_for(remembered)
        status, body, _ = await call(stack, stack.url, "/pos/sales", stolen)
        assert status == 403 and body["step_up"]["acr"] == "phr", body
        assert stack.forwarded("pos") == []


async def test_a_refresh_lock_taken_unseen_hangs_every_request_of_the_session(
    redis_server: RedisServer, redis_url: str
) -> None:
    """The lock call reached Redis but its answer came after the request timeout
    while Redis still answered a ping (Busy: this gateway loaded): the lock was
    ours, set, and nobody knew. Every later request of the session, on any replica
    and on this one, waited the lock's 15 s for a refresh nobody made, then went
    on without it (an expired session signed out). The replica that took the lock
    unseen knows it as its own on the next request and refreshes then."""
    proxy = LatencyProxy(redis_server.port)
    await proxy.start()
    store = Store(shared(proxy.url, request_timeout=0.1))
    calls: list[str] = []

    async def refresh() -> str | None:
        calls.append("provider")
        return "sealed"

    try:
        await store.start()
        proxy.delay = 0.3  # the lock call's answer is late, the ping's (50 ms on) is not
        asyncio.get_running_loop().call_later(0.05, setattr, proxy, "delay", 0.0)
        assert await single_flight(store, "unseen", [], refresh) is None
        assert calls == [] and store.available  # Busy: no refresh without the lock
        await asyncio.sleep(0.4)  # the late answer is gone; the lock stays in Redis
        started = time.monotonic()
        async with asyncio.timeout(3):
            sealed = await single_flight(store, "unseen", [], refresh)
        assert (sealed, calls) == ("sealed", ["provider"]), time.monotonic() - started
    finally:
        await store.close()
        await proxy.close()


async def test_a_kept_sign_out_redis_refuses_keeps_the_gateway_in_outage_mode(
    redis_server: RedisServer, redis_url: str
) -> None:
    """A sign-out kept while Redis was down is written by the recovery probe before
    requests go to Redis again. When Redis answered that write with an error (here
    a string another application left at the user's session index: WRONGTYPE on
    its cleanup), the probe took Redis for down and tried again forever: under
    `on_unavailable: allow` every request went on unchecked (a revoked user's token
    passed), under deny every session and token got a 503, for as long as the kept
    session lived (12 h). The revocation itself is written; Redis is back."""
    state = SharedState(
        shared(redis_url, on_unavailable="allow"), replica="r", session_lifetime=43200,
        token_lifetime=86400, registry=CollectorRegistry(),
    )  # fmt: skip
    await state.start()
    try:
        redis_server.stop()
        assert not await state.revoke_session("kept-sid", IDP, "mallory", "signed out", 3600)
        redis_server.start()
        async with redis.asyncio.Redis.from_url(redis_url) as other_app:
            await other_app.set(state.keys.user_sessions(IDP, "mallory"), "not a sorted set")
            deadline = time.monotonic() + 5
            while not state.store.available and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert state.store.available, f"still down: {state.store.why_down}"
            assert await other_app.exists(state.keys.session_revoked("kept-sid"))
        now = time.time()
        alice = Identity(
            authenticated=True, method="bearer", subject="alice", issued_at=float(int(now)),
            expires_at=now + 3600,
        )  # fmt: skip
        await state.revoke_user("alice", "stolen", "test")
        refusal = (await state.check(make_mocked_request("GET", "/wms/"), "wms", alice)).refusal
        assert refusal is not None and refusal.rule == "revoked", refusal
    finally:
        await state.close()


async def test_unauthenticated_requests_from_one_ipv6_host_rotate_past_the_address_limit(
    redis_url: str,
) -> None:
    """The per-address limit on unauthenticated requests and invalid tokens was per
    exact address: an IPv6 host holds a whole /64 (SLAAC, privacy addresses, a
    cloud VM's prefix) and took a fresh address for each request, never limited.
    It is per /64 for IPv6 (and an IPv4-mapped address is its IPv4 one)."""
    limits = RateLimits(source_ip=RateLimit(5, 60))
    state = SharedState(
        shared(redis_url, rate_limits=limits), replica="r", session_lifetime=43200,
        token_lifetime=86400, registry=CollectorRegistry(),
    )  # fmt: skip
    await state.start()

    def from_address(address: str) -> Any:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (
            (address, 40000, 0, 0) if name == "peername" else default
        )
        return make_mocked_request("GET", "/wms/", transport=transport)

    try:
        rotated = [f"2001:db8:1:2:{i:x}::{i + 1:x}" for i in range(20)]
        refusals = [(await state.check(from_address(a), "wms", ANONYMOUS)).refusal for a in rotated]
        assert [r.rule if r else None for r in refusals][5:] == ["rate_limited"] * 15, refusals
        # Another /64 is another host; an IPv4 client counts the same over a dual-stack
        # listener (::ffff:192.0.2.7) and an IPv4 one (192.0.2.7).
        assert (
            await state.check(from_address("2001:db8:1:3::1"), "wms", ANONYMOUS)
        ).refusal is None
        for address in ["::ffff:192.0.2.7", "192.0.2.7"] * 3:
            last = await state.check(from_address(address), "wms", ANONYMOUS)
        assert last.refusal is not None and last.refusal.rule == "rate_limited"
    finally:
        await state.close()


async def test_revocations_and_lockouts_hold_for_subjects_with_redis_special_characters(
    redis_url: str,
) -> None:
    """Subjects with CRLF, RESP framing, glob and hash-tag characters, spaces,
    non-ASCII, and past the 200 characters at which a key part is hashed: a
    revocation or a lockout of one reaches that subject exactly, never a case or
    prefix variant of it, never another subject."""
    state = SharedState(
        shared(redis_url, lockout=Lockout(after_denies=1, window=900, duration=1800)),
        replica="r", session_lifetime=43200, token_lifetime=86400,
        registry=CollectorRegistry(),
    )  # fmt: skip
    await state.start()
    loop = asyncio.get_running_loop()
    request = make_mocked_request("GET", "/wms/")
    issued = float(int(time.time()) - 5)

    def bearer(subject: str) -> Identity:
        return Identity(
            authenticated=True, method="bearer", subject=subject, issued_at=issued,
            expires_at=issued + 3600, issuer=IDP,
        )  # fmt: skip

    async def attempt(subject: str, variant: str, lock: bool) -> tuple[str | None, str | None]:
        await state.store.client.flushdb()  # nothing left by an earlier example
        if lock:
            await state.store.run(
                lambda r: revocation.note_denied(r, state.keys, state.config, IDP, subject, "m")
            )
        else:
            await state.revoke_user(subject, "test", "test", issuer=IDP)
        hit = (await state.check(request, "wms", bearer(subject))).refusal
        miss = (await state.check(request, "wms", bearer(variant))).refusal
        return (hit.rule if hit else None), (miss.rule if miss else None)

    special = st.sampled_from(["\r\n", "*1\r\n$4\r\nPING\r\n", "{", "}", "*", "?", "[a]", " ", ":",
                               "\x00", "é", "ß", "İ", "#", "\\"])  # fmt: skip
    subjects = st.one_of(
        st.lists(st.one_of(special, st.text(max_size=4)), min_size=1, max_size=8).map("".join),
        st.text(min_size=195, max_size=210),
    ).filter(lambda s: s.strip() != "" and s != s.upper())

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(subjects, st.sampled_from(["upper", "prefix", "suffix"]), st.booleans())
    def holds(subject: str, how: str, lock: bool) -> None:
        variant = {"upper": subject.upper(), "prefix": subject[:-1], "suffix": subject + "x"}[how]
        if not variant.strip() or variant == subject:
            return
        future = asyncio.run_coroutine_threadsafe(attempt(subject, variant, lock), loop)
        hit, miss = future.result(30)
        assert hit == ("locked_out" if lock else "revoked"), (subject, hit)
        assert miss is None, (subject, variant, miss)

    try:
        await asyncio.to_thread(holds)
    finally:
        await state.close()
