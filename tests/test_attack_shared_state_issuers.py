"""A subject is unique only within its issuer (OIDC Core 5.7): with two issuers
trusted, "alice" of one is not "alice" of the other. The shared state kept every
per-user record (known addresses, denies, lockouts, rate limits, revocations, the
session index) by subject alone, so one issuer's alice inherited, suffered or
shared the other's. Real gateways trusting two issuers, a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import (
    ConfigError,
    Issuer,
    Listener,
    TlsConfig,
    parse_config,
)
from gateway.demo import AUDIENCE, DevIssuer
from gateway.mtls.cas import CLIENT_CERTIFICATE_ISSUER
from gateway.shared.settings import Lockout, RateLimit, RateLimits, SharedStateConfig
from gateway.shared.store import MAX_KEY_PART, Keys
from tests.gateway_stack import ServerFactory, Stack, free_port, start_stack
from tests.redis_server import redis_server, redis_url
from tests.test_gateway_transport import make_cert
from tests.test_shared_state import (
    STORE_MFA,
    WAREHOUSE,
    admin,
    call,
    shared,
    wait_for,
    well_inside_a_window,
)

__all__ = ["redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(60)
HWK = {"groups": ["store"], "amr": ["pwd", "hwk"]}  # a phishing-resistant sign-in
NO_STORE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}  # POS denies (no store group)


@contextlib.asynccontextmanager
async def two_issuers(
    aiohttp_server: ServerFactory, tmp_path: Path, state: SharedStateConfig
) -> AsyncIterator[tuple[Stack, DevIssuer]]:
    """A gateway trusting the stack's issuer and `staff`, another identity provider
    whose subjects share names with the first one's. Staff names itself with a
    trailing slash (Auth0 does); admin commands may name it with or without."""
    staff = DevIssuer(tmp_path / "staff", "")
    server = await aiohttp_server(staff.app())
    staff.issuer = f"http://127.0.0.1:{server.port}/"
    other = Issuer(staff.issuer, (AUDIENCE,), jwks_url=f"http://127.0.0.1:{server.port}/jwks.json")
    async with start_stack(
        aiohttp_server, tmp_path, shared_state=state, more_issuers=(other,)
    ) as stack:
        yield stack, staff


async def session_command(
    stack: Stack, tmp_path: Path, redis_url: str, client_ca: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """`portcullis session <args>` as an operator runs it: a config (in tmp_path,
    beside server.pem and `client_ca`) trusting the stack's issuer and the CAs of
    `client_ca`, with the stack's Redis."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listeners": [{"port": free_port(), "tls": {"cert": "server.pem", "key": "server.key",
                                                    "client_ca": client_ca}}],
        "routes": [{"app": "wms", "upstream": "http://127.0.0.1:1", "path_prefix": "/wms/"}],
        "issuers": [{"issuer": stack.issuer.issuer, "audiences": ["portcullis"],
                     "jwks_url": stack.issuer.issuer + "/jwks.json"}],
        "shared_state": {"redis": {"url": redis_url}},
    }))  # fmt: skip
    command = [sys.executable, "-m", "portcullis", "session", *args, "--config", str(config)]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=30
    )


def metric(stack: Stack, line: str) -> bool:
    return line in stack.gateway.metrics.render().decode()


async def test_a_subject_of_another_issuer_does_not_inherit_known_addresses_for_pos(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """POS asks for a phishing-resistant sign-in from an address its user was not
    allowed from. Issuer A's bob made 127.0.0.1 known with his security key; a
    token for "bob" from issuer B (another person, or a subject an attacker could
    have minted there) with only an OTP sign-in was let in from it, no step-up."""
    async with two_issuers(aiohttp_server, tmp_path, shared(redis_url)) as (stack, staff):
        assert (await call(stack, stack.url, "/pos/sales", stack.token("bob", **HWK)))[0] == 200
        otp = stack.token("bob", **STORE_MFA)

        async def known() -> bool:  # written after the answer, in the background
            return (await call(stack, stack.url, "/pos/sales", otp))[0] == 200

        await wait_for(known)
        status, body, _ = await call(
            stack, stack.url, "/pos/sales", staff.token("bob", **STORE_MFA)
        )
        assert status == 403 and body["step_up"] == {"acr": "phr", "max_age": 900}, body
        assert any(r.startswith("new source address") for r in body["reasons"]), body


async def test_a_lockout_under_one_issuer_does_not_lock_out_the_same_subject_of_another(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Issuer A's alice is locked out after two denies; B's alice, someone else,
    was locked out with her (anyone able to get denied as "alice" under one issuer
    could lock out every issuer's alice)."""
    lockout = Lockout(after_denies=2, window=900, duration=1800)
    state = shared(redis_url, lockout=lockout)
    async with two_issuers(aiohttp_server, tmp_path, state) as (stack, staff):
        token = stack.token("alice", **NO_STORE)
        for _ in range(2):
            assert (await call(stack, stack.url, "/pos/sales", token))[0] == 403

        async def locked() -> bool:
            status, body, _ = await call(stack, stack.url, "/wms/stock", token)
            return status == 403 and body.get("error") == "locked_out"

        await wait_for(locked)
        status, body, _ = await call(
            stack, stack.url, "/wms/stock", staff.token("alice", **WAREHOUSE)
        )
        assert status == 200, body
        # The refusal says how to lift it, for this alice.
        status, body, _ = await call(stack, stack.url, "/wms/stock", token)
        assert f"--user alice --issuer {stack.issuer.issuer}" in body["reason"], body


async def test_denies_under_one_issuer_do_not_count_toward_the_same_subject_of_anothers_lockout(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """One deny for A's alice and one for B's alice made two for "alice": a lockout
    after two locked both out, though neither had been denied twice."""
    lockout = Lockout(after_denies=2, window=900, duration=1800)
    state = shared(redis_url, lockout=lockout)
    async with two_issuers(aiohttp_server, tmp_path, state) as (stack, staff):
        tokens = [stack.token("alice", **NO_STORE), staff.token("alice", **NO_STORE)]
        for token in tokens:
            assert (await call(stack, stack.url, "/pos/sales", token))[0] == 403

        async def counted() -> bool:
            return metric(
                stack, 'portcullis_shared_state_writes_total{kind="deny",result="ok"} 2.0'
            )

        await wait_for(counted)
        for token in tokens:
            status, body, _ = await call(stack, stack.url, "/wms/stock", token)
            assert status == 200, body
        assert not metric(stack, "portcullis_shared_state_lockouts_total 1.0")


async def test_a_rate_limit_bucket_is_not_shared_with_the_same_subject_of_another_issuer(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """The per-identity limit counted "alice" of both issuers in one bucket: one
    issuer's alice could spend the other's requests (a denial of service)."""
    limits = RateLimits(identity=RateLimit(3, 60), source_ip=RateLimit(1000, 60))
    async with two_issuers(aiohttp_server, tmp_path, shared(redis_url, rate_limits=limits)) as (
        stack,
        staff,
    ):
        await well_inside_a_window(60)
        token = stack.token("alice", **WAREHOUSE)
        statuses = [(await call(stack, stack.url, "/wms/stock", token))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429], statuses
        status, body, _ = await call(
            stack, stack.url, "/wms/stock", staff.token("alice", **WAREHOUSE)
        )
        assert status == 200, body


async def test_a_revocation_under_one_issuer_does_not_revoke_the_same_subject_of_another(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Revoking B's alice revoked A's alice too (over-revocation). With an issuer it
    reaches that issuer's alice only (named with or without its trailing slash);
    without one, alice under every issuer (the fail-closed reading)."""
    async with (
        two_issuers(aiohttp_server, tmp_path, shared(redis_url)) as (stack, staff),
        admin(stack.gateway) as api,
    ):
        ours, theirs = stack.token("alice", **WAREHOUSE), staff.token("alice", **WAREHOUSE)
        answer = await api.post(
            "/sessions/revoke",
            json={"user": "alice", "issuer": staff.issuer.rstrip("/"), "reason": "stolen"},
        )
        assert answer.status == 200, await answer.text()
        status, refused, _ = await call(stack, stack.url, "/wms/stock", theirs)
        assert status == 401 and "stolen" in refused["reason"], refused
        assert (await call(stack, stack.url, "/wms/stock", ours))[0] == 200
        body = await answer.json()
        assert (body["user"], body["issuer"]) == ("alice", staff.issuer.rstrip("/")), body
        answer = await api.post(
            "/sessions/revoke", json={"user": "alice", "issuer": "https://typo"}
        )
        assert answer.status == 400 and (await answer.json())["error"] == "unknown_issuer"
        answer = await api.post("/sessions/revoke", json={"user": "alice"})
        assert answer.status == 200 and (await answer.json())["issuer"] is None
        assert (await call(stack, stack.url, "/wms/stock", ours))[0] == 401


async def test_a_revocation_written_before_the_upgrade_still_refuses(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A revocation the previous version wrote (by subject alone, as a replica not
    yet upgraded still writes it) must refuse every issuer's alice until it
    expires: reading only the keys that name the issuer let the revoked tokens
    back in at the upgrade."""
    async with two_issuers(aiohttp_server, tmp_path, shared(redis_url)) as (stack, staff):
        tokens = [stack.token("alice", **WAREHOUSE), staff.token("alice", **WAREHOUSE)]
        record = orjson.dumps({"at": time.time(), "reason": "laptop stolen", "by": "cli"})
        async with redis.asyncio.from_url(redis_url) as r:
            await r.set("portcullis:revoked:user:alice", record, ex=600)
        for token in tokens:
            status, body, _ = await call(stack, stack.url, "/wms/stock", token)
            assert status == 401 and "laptop stolen" in body["reason"], body
        await asyncio.sleep(1.05)  # iat has a resolution of one second
        fresh = stack.token("alice", **WAREHOUSE)
        assert (await call(stack, stack.url, "/wms/stock", fresh))[0] == 200


async def test_a_lockout_written_before_the_upgrade_still_refuses_and_one_issuers_unlock_keeps_it(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A lockout the previous version wrote (by subject alone) still refuses every
    issuer's alice until it expires. Unlocking one issuer's alice does not lift it:
    which alice earned it can't be told (the answer says until when it holds)."""
    lockout = Lockout(after_denies=10, window=900, duration=1800)
    state = shared(redis_url, lockout=lockout)
    async with (
        two_issuers(aiohttp_server, tmp_path, state) as (stack, staff),
        admin(stack.gateway) as api,
    ):
        tokens = [stack.token("alice", **WAREHOUSE), staff.token("alice", **WAREHOUSE)]
        record = orjson.dumps({"at": time.time(), "reason": "10 denied requests", "by": "gateway"})
        async with redis.asyncio.from_url(redis_url) as r:
            await r.set("portcullis:lockout:alice", record, ex=1800)
        for token in tokens:
            status, body, headers = await call(stack, stack.url, "/wms/stock", token)
            assert status == 403 and body["error"] == "locked_out", body
            assert 1700 < int(headers["Retry-After"]) <= 1800
        answer = await api.post(
            "/sessions/unlock", json={"user": "alice", "issuer": stack.issuer.issuer}
        )
        body = await answer.json()
        assert answer.status == 200 and body["was_locked"] is False, body
        assert "still_locked_until" in body and "left to expire" in body["reason"], body
        for token in tokens:
            assert (await call(stack, stack.url, "/wms/stock", token))[0] == 403


async def test_an_unlock_where_one_issuer_is_trusted_lifts_a_lockout_written_before_the_upgrade(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """With one issuer, a lockout by subject alone can only be that issuer's
    subject's: unlocking it (with or without naming the issuer) lifts it."""
    lockout = Lockout(after_denies=10, window=900, duration=1800)
    async with (
        start_stack(aiohttp_server, tmp_path, shared_state=shared(redis_url, lockout=lockout))
        as stack,
        admin(stack.gateway) as api,
    ):  # fmt: skip
        token = stack.token("alice", **WAREHOUSE)
        record = orjson.dumps({"at": time.time(), "reason": "10 denied requests", "by": "gateway"})
        async with redis.asyncio.from_url(redis_url) as r:
            await r.set("portcullis:lockout:alice", record, ex=1800)
        assert (await call(stack, stack.url, "/wms/stock", token))[0] == 403
        answer = await api.post("/sessions/unlock", json={"user": "alice"})
        body = await answer.json()
        assert body == {"user": "alice", "issuer": stack.issuer.issuer, "was_locked": True}, body
        assert (await call(stack, stack.url, "/wms/stock", token))[0] == 200


async def test_unlock_without_an_issuer_is_refused_when_several_are_trusted(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """ "Unlock alice" with two issuers trusted could mean either alice: unlocking
    one silently (or both) lifts the lockout of someone the administrator did not
    mean. Refused, naming the choices; with an issuer, that alice is unlocked."""
    lockout = Lockout(after_denies=1, window=900, duration=1800)
    state = shared(redis_url, lockout=lockout)
    async with (
        two_issuers(aiohttp_server, tmp_path, state) as (stack, staff),
        admin(stack.gateway) as api,
    ):
        token = stack.token("alice", **NO_STORE)
        assert (await call(stack, stack.url, "/pos/sales", token))[0] == 403

        async def locked() -> bool:
            return (await call(stack, stack.url, "/wms/stock", token))[0] == 403

        await wait_for(locked)
        answer = await api.post("/sessions/unlock", json={"user": "alice"})
        body = await answer.json()
        assert answer.status == 400 and body["error"] == "issuer_required", body
        trusted = [stack.issuer.issuer, staff.issuer.rstrip("/")]
        assert body["issuers"] == trusted, body
        assert all(issuer in body["reason"] for issuer in trusted), body
        assert (await call(stack, stack.url, "/wms/stock", token))[0] == 403
        # The command line says the same, from the gateway's config.
        config = tmp_path / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "routes": [{"app": "wms", "upstream": "http://127.0.0.1:1", "path_prefix": "/wms/"}],
            "issuers": [{"issuer": i.issuer, "audiences": ["portcullis"], "jwks_url": i.jwks_url}
                        for i in stack.config.issuers],
            "shared_state": {"redis": {"url": redis_url}},
        }))  # fmt: skip
        command = [sys.executable, "-m", "portcullis", "session", "unlock", "--config",
                   str(config), "--user", "alice"]  # fmt: skip
        result = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert all(issuer in result.stderr for issuer in trusted), result.stderr
        assert (await call(stack, stack.url, "/wms/stock", token))[0] == 403
        result = await asyncio.to_thread(
            subprocess.run, [*command, "--issuer", stack.issuer.issuer + "/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"unlocked alice ({stack.issuer.issuer})" in result.stdout
        assert (await call(stack, stack.url, "/wms/stock", token))[0] == 200


async def test_a_revocation_of_a_client_certificate_identity_is_refused_not_claimed(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """A client_ca's CA is an issuer the admin commands take (`mtls:CN=ca`; before
    CAs were told apart, `mtls`), but the request check reads no revocation for a
    certificate. A revoke of `billing-bot` under `mtls` was written and answered 200
    ("every session and bearer token ... is refused on every replica") while the
    service kept getting in with its certificate: the operator believed it cut off.
    It is refused (400 not_revocable, exit 2), and nothing is written; its lockout
    can still be lifted under its CA's name."""
    ca = make_cert(tmp_path, "ca", None, ca=True)
    make_cert(tmp_path, "server", ca)
    port = free_port()
    tls = TlsConfig(tmp_path / "server.pem", tmp_path / "server.key", client_ca=tmp_path / "ca.pem")
    async with (
        start_stack(
            aiohttp_server, tmp_path, gateway_port=port, shared_state=shared(redis_url),
            listeners=(Listener("127.0.0.1", port, tls=tls),),
        ) as stack,
        admin(stack.gateway) as api,
    ):  # fmt: skip
        ca_name = "mtls:CN=ca"
        assert ca_name in stack.gateway.shared.issuers
        answer = await api.post("/sessions/revoke", json={"user": "billing-bot", "issuer": ca_name})
        body = await answer.json()
        assert answer.status == 400 and body["error"] == "not_revocable", body
        assert "client_ca" in body["reason"], body
        async with redis.asyncio.from_url(redis_url) as r:
            assert await r.keys("portcullis:*revoked*") == []
        answer = await api.post("/sessions/unlock", json={"user": "billing-bot", "issuer": ca_name})
        assert answer.status == 200, await answer.text()
        result = await session_command(
            stack, tmp_path, redis_url, "ca.pem", "revoke", "--user", "billing-bot",
            "--issuer", ca_name,
        )  # fmt: skip
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "no revocation is checked" in result.stderr, result.stderr
        async with redis.asyncio.from_url(redis_url) as r:
            assert await r.keys("portcullis:*revoked*") == []


def test_a_token_issuer_may_not_take_the_name_of_client_certificates(tmp_path: Path) -> None:
    """mTLS identities were keyed under the issuer "mtls" (still read, for lockouts
    written then): a token issuer of that name would share their state."""
    for name in (CLIENT_CERTIFICATE_ISSUER, CLIENT_CERTIFICATE_ISSUER + "/"):
        data = {"issuers": [{"issuer": name, "audiences": ["a"], "discovery": True}]}
        with pytest.raises(ConfigError, match=r"^issuers\[0\]\.issuer: .* client-certificate"):
            parse_config(data, tmp_path)


# --- the key scheme -----------------------------------------------------------------


def _names() -> st.SearchStrategy[str]:
    """Issuers and subjects that try to pass for another pair: the separator, digits
    (the length prefix), slashes, CR/LF, non-ASCII, and lengths either side of the
    bound past which a key part is hashed."""
    pieces = st.sampled_from(
        [":", "::", "1:", "12:", "/", "//", "\r\n", "\n", "\x00", "#", "é", "İ", "ß", "🔑",
         "https://idp.example", "alice"]
    )  # fmt: skip
    short = st.lists(st.one_of(pieces, st.text(max_size=3)), max_size=6).map("".join)
    near_bound = st.integers(MAX_KEY_PART - 40, MAX_KEY_PART + 10).flatmap(
        lambda n: st.text(alphabet="a:/é", min_size=n, max_size=n)
    )
    return st.one_of(short, near_bound)


def _keys_of(keys: Keys, issuer: str, subject: str) -> list[str]:
    return [
        keys.user_revoked(issuer, subject),
        keys.user_sessions(issuer, subject),
        keys.user_lockout(issuer, subject),
        keys.user_denies(issuer, subject),
        keys.user_addresses(issuer, subject, "pos"),
        keys.rate("identity", Keys.per_app("pos", issuer, subject), 60, 1),
    ]


@settings(max_examples=600, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(_names(), _names(), st.data())
def test_distinct_issuer_subject_pairs_never_share_a_key(
    issuer: str, subject: str, data: st.DataObject
) -> None:
    """Distinct (issuer, subject) pairs map to distinct keys, in every per-user
    family; the same issuer with or without a trailing slash to the same keys;
    no key is one a subject-only key (under every issuer) could also be; every key
    stays within the bound on a key part."""
    keys = Keys("portcullis:")
    # The other pair: mostly made from this one (a piece of the subject moved into
    # the issuer or back, a slash added), where a careless encoding collides.
    cut = data.draw(st.integers(0, len(subject)))
    other_issuer, other_subject = data.draw(
        st.sampled_from([
            (issuer + subject[:cut], subject[cut:]),
            (issuer + ":" + subject[:cut], subject[cut:]),
            (issuer[: len(issuer) // 2], issuer[len(issuer) // 2 :] + ":" + subject),
            (issuer + "/", subject),
            (issuer.rstrip("/"), subject),
            (subject, issuer),
            (issuer, subject + "/"),
        ])
        | st.tuples(_names(), _names())
    )  # fmt: skip
    same = (issuer.rstrip("/"), subject) == (other_issuer.rstrip("/"), other_subject)
    ours, theirs = _keys_of(keys, issuer, subject), _keys_of(keys, other_issuer, other_subject)
    for mine, other in zip(ours, theirs, strict=True):
        assert (mine == other) == same, (issuer, subject, other_issuer, other_subject, mine)
    assert len(set(ours)) == len(ours)  # the families never meet
    # A subject-only key may hold any subject after its family's name: no per-user
    # key may start with one.
    every = [keys.revoked_under_every_issuer(""), keys.lockout_under_every_issuer("")]
    every.append(keys.denies_under_every_issuer(""))
    assert not [key for key in ours if key.startswith(tuple(every))], ours
    prefix = len("portcullis:user_addresses:")
    assert all(len(key) <= prefix + MAX_KEY_PART + 1 for key in ours[:5]), ours


async def test_a_backend_can_tell_two_issuers_subjects_of_one_name_apart(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Both issuers' "alice" reached WMS with assertions saying only `sub: alice`:
    a backend that keys its users by `sub` (as the README's snippet reads the
    assertion) served one as the other. Each assertion now carries RFC 9493's
    `sub_id` (`iss_sub`): the issuer as the gateway names it (no trailing
    slash, as for staff here) and the subject."""
    async with two_issuers(aiohttp_server, tmp_path, shared(redis_url)) as (stack, staff):
        seen = []
        for token in (stack.token("alice", **WAREHOUSE), staff.token("alice", **WAREHOUSE)):
            response = await stack.get("/wms/stock", token)
            assert response.status == 200
            seen.append((await response.json())["assertion"]["claims"])
    assert [claims["sub"] for claims in seen] == ["alice", "alice"]
    assert [claims["sub_id"] for claims in seen] == [
        {"format": "iss_sub", "iss": stack.issuer.issuer, "sub": "alice"},
        {"format": "iss_sub", "iss": staff.issuer.rstrip("/"), "sub": "alice"},
    ]
