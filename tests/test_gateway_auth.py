"""Bearer tokens at the gateway: the good one passes, every attack is refused
with 401 and a reason, and nothing refused reaches a backend."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, parse_config
from gateway.demo import DevIssuer
from tests.gateway_stack import ServerFactory, Stack, logged, raw_request, start_stack

WAREHOUSE = {"groups": ["warehouse"], "amr": ["pwd", "otp"]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(stack: Stack, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": stack.issuer.issuer,
        "sub": "mallory",
        "aud": "portcullis",
        "iat": now,
        "exp": now + 600,
        "groups": ["warehouse", "store", "wms-admin"],
        "amr": ["hwk"],
        "auth_time": now,
    }
    return {**base, **extra}


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    return f"{head}.{body}.{b64(signature)}"


def signed(stack: Stack, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Signed with the trusted issuer's real key whatever the header and claims
    hold (PyJWT's encode would check some of them first)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = stack.issuer.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


async def refused(stack: Stack, token: str, reason: str) -> str:
    """Refused as invalid_token saying why; returns the decision id."""
    response = await stack.get("/wms/stock", token)
    body = await response.text()
    assert response.status == 401, body
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="portcullis", error="invalid_token"')
    assert reason in challenge, challenge
    assert stack.total_forwarded() == 0
    return str(json.loads(body)["decision_id"])


async def raw_get(stack: Stack, authorization: bytes) -> tuple[int, dict[str, str], bytes]:
    """A GET with exactly these Authorization bytes."""
    head = b"GET /wms/stock HTTP/1.1\r\nHost: {host}\r\nAuthorization: " + authorization + b"\r\n"
    return await raw_request(stack.url, head)


async def assert_logged_as_invalid_token(stack: Stack, decision_id: str, reason: str) -> None:
    events = await logged(stack, decision_id)
    assert len(events) == 1, events
    assert events[0]["path"] == "gateway"  # refused before any policy was asked
    assert events[0]["result"]["allow"] is False
    assert events[0]["result"]["http_status"] == 401
    assert events[0]["result"]["reasons"][0].startswith("gateway.invalid_token: ")
    assert reason in events[0]["result"]["reasons"][0]


async def test_valid_token_reaches_wms_with_a_verified_assertion(stack: Stack) -> None:
    response = await stack.get("/wms/stock?sku=42", stack.token("alice", **WAREHOUSE))
    assert response.status == 200
    seen = await response.json()
    assert seen["app"] == "wms"
    assert seen["path"] == "/wms/stock?sku=42"
    assert seen["assertion"]["verified"] is True
    assertion = seen["assertion"]["claims"]
    assert (assertion["sub"], assertion["aud"], assertion["iss"]) == ("alice", "wms", "portcullis")
    assert assertion["groups"] == ["warehouse"]
    assert assertion["amr"] == ["pwd", "otp"]
    assert assertion["exp"] - assertion["iat"] <= 60
    assert "Authorization" not in seen["headers"]


@pytest.mark.parametrize(
    ("verified", "passed_on"),
    [(True, True), (False, False), ("true", False), (1, False), (None, False)],
    ids=["verified", "unverified", "string-true", "number-1", "no-email_verified"],
)
async def test_an_unverified_email_in_a_bearer_token_is_vouched_for_to_no_one(
    stack: Stack, verified: Any, passed_on: bool
) -> None:
    """nOAuth with a bearer token: the issuer lets users set their own email
    (Entra ID's editable `email`, self-service sign-up with no confirmation
    mail), so mallory's token says alice's address. Unless the issuer says it
    verified it (`email_verified` the JSON true, as sessions need too), the
    policy and the decision log see no email, and the assertion a backend
    trusts carries none."""
    extra = {} if verified is None else {"email_verified": verified}
    token = stack.issuer.token("mallory", email="alice@example.com", **WAREHOUSE, extra=extra)
    if verified is None:  # the dev issuer says verified unless told otherwise
        claims = jwt.decode(token, options={"verify_signature": False})
        del claims["email_verified"]
        token = jwt.encode(claims, stack.issuer.key, "RS256", {"kid": stack.issuer.kid})
    response = await stack.get("/wms/stock", token)
    assert response.status == 200
    assertion = (await response.json())["assertion"]["claims"]
    [event] = await stack.events(at_least=1)
    email = "alice@example.com" if passed_on else None
    assert assertion.get("email") == email
    assert event["input"]["identity"]["email"] == email


async def test_no_token_gets_401_from_the_policy_without_redirect(stack: Stack) -> None:
    response = await stack.get("/wms/stock")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="portcullis"'
    body = await response.json()
    assert body["reasons"] == ["authentication required"]
    assert stack.total_forwarded() == 0


async def test_alg_none_is_refused(stack: Stack) -> None:
    token = unsigned({"alg": "none", "typ": "JWT", "kid": stack.issuer.kid}, claims(stack))
    await refused(stack, token, "algorithm 'none' not allowed")


async def test_hs256_signed_with_the_rsa_public_key_is_refused(stack: Stack) -> None:
    public_pem = stack.issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": stack.issuer.kid}
    signing_input = unsigned(header, claims(stack)).rsplit(".", 1)[0]
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    await refused(stack, f"{signing_input}.{b64(mac)}", "algorithm 'HS256' not allowed")


async def test_a_token_let_in_within_the_clock_leeway_reaches_the_backend_with_a_live_assertion(
    stack: Stack,
) -> None:
    """A token whose exp passed 5 s ago is within the issuer's leeway (30 s): the gateway
    allows it, so the assertion it forwards must verify at the backend (a backend
    verifies exp with no leeway of its own, as the README's PyJWT example does), and
    live no longer than the gateway would accept the token."""
    token = stack.token("alice", ttl=-5, **WAREHOUSE)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    response = await stack.get("/wms/stock", token)
    assert response.status == 200
    seen = await response.json()
    assert seen["assertion"]["verified"] is True, seen["assertion"]
    assert time.time() < seen["assertion"]["claims"]["exp"] <= exp + 30


async def test_expired_token_is_refused_saying_how_long_ago(stack: Stack) -> None:
    token = stack.token("alice", ttl=-300, **WAREHOUSE)
    await refused(stack, token, "token expired 5m ago")


async def test_token_with_nbf_in_the_future_is_refused(stack: Stack) -> None:
    token = stack.token("alice", extra={"nbf": int(time.time()) + 600}, **WAREHOUSE)
    await refused(stack, token, "token not valid yet")


async def test_token_from_another_issuer_is_refused(stack: Stack, tmp_path: Path) -> None:
    other = DevIssuer(tmp_path / "other", "https://evil.example")
    await refused(
        stack, other.token("alice", **WAREHOUSE), "untrusted issuer 'https://evil.example'"
    )


async def test_same_key_but_wrong_issuer_claim_is_refused(stack: Stack) -> None:
    token = stack.token("alice", extra={"iss": stack.issuer.issuer + "/"}, **WAREHOUSE)
    await refused(stack, token, "untrusted issuer")


async def test_wrong_audience_is_refused(stack: Stack) -> None:
    token = stack.token("alice", audience="payroll", **WAREHOUSE)
    await refused(stack, token, "token audience 'payroll' is not one of portcullis")


async def test_unknown_kid_is_refused(stack: Stack, tmp_path: Path) -> None:
    stranger = DevIssuer(tmp_path / "stranger", stack.issuer.issuer)
    await refused(stack, stranger.token("alice", **WAREHOUSE), "unknown signing key")


async def test_kid_with_path_characters_is_refused(stack: Stack) -> None:
    token = jwt.encode(
        claims(stack), stack.issuer.key, algorithm="RS256", headers={"kid": "../../etc/passwd"}
    )
    await refused(stack, token, "kid has characters a key id never needs")


async def test_jku_and_x5u_headers_are_never_followed(
    stack: Stack, tmp_path: Path, aiohttp_server: ServerFactory
) -> None:
    attacker = DevIssuer(tmp_path / "attacker", stack.issuer.issuer)
    hits: list[str] = []

    async def keys(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"keys": [attacker.jwk]})

    app = web.Application()
    app.router.add_get("/{tail:.*}", keys)
    server = await aiohttp_server(app)
    where = f"http://127.0.0.1:{server.port}/jwks.json"
    for header in ({"jku": where}, {"x5u": where}, {"jwk": attacker.jwk}):
        token = jwt.encode(
            claims(stack), attacker.key, algorithm="RS256", headers={"kid": attacker.kid, **header}
        )
        await refused(stack, token, "unknown signing key")
    assert hits == []


async def test_oversized_token_is_refused(stack: Stack) -> None:
    token = stack.token("alice", extra={"padding": "x" * 9000}, **WAREHOUSE)
    await refused(stack, token, "token too large")


async def test_20kb_token_never_reaches_a_backend(stack: Stack) -> None:
    token = stack.token("alice", extra={"padding": "x" * 20_000}, **WAREHOUSE)
    response = await stack.get("/wms/stock", token)
    assert response.status in (400, 401, 431)
    assert stack.total_forwarded() == 0


async def test_bad_base64_is_refused(stack: Stack) -> None:
    await refused(stack, "eyJ!!!.%%%.***", "malformed token")


async def test_signature_of_another_payload_is_refused(stack: Stack) -> None:
    good = stack.token("alice", groups=["store"], amr=["otp"])
    head, _, signature = good.split(".")
    forged = b64(json.dumps(claims(stack, sub="alice")).encode())
    await refused(stack, f"{head}.{forged}.{signature}", "signature verification failed")


async def test_token_with_a_blank_subject_is_refused_not_allowed_as_no_one(stack: Stack) -> None:
    """A validly signed token whose sub is blank (an issuer bug, or a claim a user
    could clear) names no one: refused, never an allowed access the decision log
    and the SIEM can't attribute to a user."""
    ids = []
    for subject in ("", "  "):
        token = signed(stack, {"alg": "RS256", "kid": stack.issuer.kid}, claims(stack, sub=subject))
        ids.append(await refused(stack, token, "'sub' claim is blank"))
    events = {event["decision_id"]: event for event in await stack.events(at_least=2)}
    assert [events[i]["result"]["allow"] for i in ids] == [False, False]


async def test_non_bearer_authorization_is_refused(stack: Stack) -> None:
    response = await stack.get("/wms/stock", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert response.status == 401
    assert stack.total_forwarded() == 0


async def test_jwks_down_cached_keys_keep_working_unknown_kid_refused(
    stack: Stack, tmp_path: Path
) -> None:
    assert (await stack.get("/wms/a", stack.token("alice", **WAREHOUSE))).status == 200
    await stack.issuer_server.close()
    # A different token (not in the verified-token cache) with the cached key still works.
    assert (await stack.get("/wms/b", stack.token("bob", **WAREHOUSE))).status == 200
    stranger = DevIssuer(tmp_path / "stranger", stack.issuer.issuer)
    response = await stack.get("/wms/c", stranger.token("eve", **WAREHOUSE))
    assert response.status == 401
    assert len(stack.forwarded("wms")) == 2


async def test_a_signing_key_withdrawn_from_the_jwks_is_refused_once_the_keys_age_out(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """An issuer whose signing key leaked takes it out of its JWKS. The gateway
    fetched keys only at start and for an unknown kid, so tokens the attacker
    mints with the leaked key (a kid the gateway knows) were accepted until a
    restart, and tokens it had verified stayed cached until they expired. Keys
    older than issuers[].jwks_max_age are fetched again; a withdrawn key's tokens,
    cached ones too, are refused."""
    async with start_stack(aiohttp_server, tmp_path, issuer_options={"jwks_max_age": 1.0}) as stack:
        leaked = DevIssuer(tmp_path / "leaked", stack.issuer.issuer)
        leaked.key, leaked.kid, leaked.jwk = stack.issuer.key, stack.issuer.kid, stack.issuer.jwk
        cached = leaked.token("alice", **WAREHOUSE)
        assert (await stack.get("/wms/a", cached)).status == 200
        fresh = DevIssuer(tmp_path / "rotated", stack.issuer.issuer)
        stack.issuer.key, stack.issuer.kid, stack.issuer.jwk = fresh.key, fresh.kid, fresh.jwk

        async def refused(token: str) -> bool:
            response = await stack.get("/wms/c", token)
            return response.status == 401

        deadline = time.monotonic() + 5
        forged = leaked.token("mallory", **WAREHOUSE)
        while not await refused(forged):
            assert time.monotonic() < deadline, "a withdrawn key is still trusted"
            await asyncio.sleep(0.2)
            forged = leaked.token("mallory", **WAREHOUSE)  # never a cached one
        assert await refused(cached), "a token verified with the withdrawn key stays cached"
        assert (await stack.get("/wms/d", stack.token("bob", **WAREHOUSE))).status == 200


def test_jwks_max_age_is_configurable_and_bounded() -> None:
    assert parse_config(issuer_config()).issuers[0].jwks_max_age == 300.0
    assert parse_config(issuer_config(jwks_max_age=60)).issuers[0].jwks_max_age == 60.0
    with pytest.raises(ConfigError, match=r"issuers\[0\]\.jwks_max_age"):
        parse_config(issuer_config(jwks_max_age=0))


async def test_insufficient_mfa_is_403_with_step_up_and_not_forwarded(stack: Stack) -> None:
    token = stack.token("bob", groups=["store"], amr=["pwd", "otp"])
    response = await stack.get("/pos/refunds/1", token, method="POST")
    assert response.status == 403
    body = await response.json()
    assert body["reasons"] == ["requires MFA with one of: fido, hwk"]
    assert body["step_up"] == {"acr": "phr", "max_age": 900}
    assert body["decision_id"]
    assert stack.forwarded("pos") == []


async def test_fresh_hardware_key_reaches_pos_refunds(stack: Stack) -> None:
    token = stack.token("bob", groups=["store"], amr=["pwd", "hwk"], auth_age=60)
    response = await stack.get("/pos/refunds/1", token, method="POST", data=b"amount=5")
    assert response.status == 200
    seen = await response.json()
    assert seen["app"] == "pos" and seen["body_bytes"] == 8


# --- crafted tokens: a 401 with a reason and a decision record, never a 500 ---------------


async def test_crit_header_token_is_refused_and_logged(stack: Stack) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": stack.issuer.kid, "crit": ["exp"]}
    decision_id = await refused(
        stack, signed(stack, header, claims(stack)), "critical header extensions"
    )
    await assert_logged_as_invalid_token(stack, decision_id, "['exp'] not supported")


async def test_numeric_kid_token_is_refused_and_logged(stack: Stack) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": 7}
    decision_id = await refused(stack, signed(stack, header, claims(stack)), "kid must be a string")
    await assert_logged_as_invalid_token(stack, decision_id, "got int")


async def test_non_utf8_authorization_is_refused_and_logged(stack: Stack) -> None:
    good = stack.token("alice", **WAREHOUSE).encode()
    decision_ids = []
    for value in (b"Bearer \xff\xfe" + good, b"Bearer " + good[:20] + b"\xc3\x28" + good[20:]):
        status, headers, body = await raw_get(stack, value)
        assert status == 401, body
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert "malformed token" in headers["WWW-Authenticate"]
        decision_ids.append(json.loads(body)["decision_id"])
    status, headers, body = await raw_get(stack, b"B\xe9arer " + good)
    assert status == 401, body
    assert "Authorization must be 'Bearer <token>'" in headers["WWW-Authenticate"]
    assert stack.total_forwarded() == 0
    for decision_id in decision_ids:
        await assert_logged_as_invalid_token(stack, decision_id, "malformed token")


async def test_infinite_exp_is_refused(stack: Stack) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": stack.issuer.kid}
    token = signed(stack, header, claims(stack, exp=float("inf")))  # json writes Infinity
    await refused(stack, token, "malformed token: claims is not base64url JSON")


async def test_exp_as_a_string_is_refused(stack: Stack) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": stack.issuer.kid}
    token = signed(stack, header, claims(stack, exp=str(int(time.time()) + 600)))
    await refused(stack, token, "claim 'exp' must be a number of seconds since 1970, got str")


# --- lifetime and authorized party -------------------------------------------------------


async def test_token_valid_for_a_year_is_refused(stack: Stack) -> None:
    token = stack.token("alice", ttl=365 * 86400, **WAREHOUSE)
    decision_id = await refused(stack, token, "token expires too far ahead (in 365d")
    await assert_logged_as_invalid_token(stack, decision_id, "may live at most 24h")


async def test_long_lived_token_cannot_outlive_a_revocation(stack: Stack) -> None:
    """Issued three days ago, expiring in an hour: within the limit ahead, but a
    per-user revocation is kept for max_token_lifetime, so such a token would
    pass again once its revocation expired."""
    now = int(time.time())
    token = stack.token("alice", extra={"iat": now - 3 * 86400, "exp": now + 3600}, **WAREHOUSE)
    decision_id = await refused(stack, token, "token was issued to live 3d")
    await assert_logged_as_invalid_token(stack, decision_id, "may live at most 24h")


async def test_token_within_the_maximum_lifetime_is_accepted(stack: Stack) -> None:
    response = await stack.get("/wms/stock", stack.token("alice", ttl=86000, **WAREHOUSE))
    assert response.status == 200


async def test_issuer_max_token_lifetime_is_configurable(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    options = {"max_token_lifetime": 3600}
    async with start_stack(aiohttp_server, tmp_path, issuer_options=options) as running:
        token = running.token("alice", ttl=7200, **WAREHOUSE)
        await refused(running, token, "may live at most 60m")
        ok = running.token("alice", ttl=1800, **WAREHOUSE)
        assert (await running.get("/wms/stock", ok)).status == 200


async def test_multi_audience_token_without_trusted_azp_is_refused(stack: Stack) -> None:
    audiences = ["portcullis", "payroll"]
    token = stack.token("alice", extra={"aud": audiences}, **WAREHOUSE)
    await refused(stack, token, "several audiences ['portcullis', 'payroll'] but no azp claim")
    token = stack.token("alice", extra={"aud": audiences, "azp": "payroll"}, **WAREHOUSE)
    decision_id = await refused(
        stack, token, "issued to client azp='payroll', not one of portcullis"
    )
    await assert_logged_as_invalid_token(stack, decision_id, "authorized_parties")


async def test_multi_audience_token_from_a_trusted_azp_is_accepted(stack: Stack) -> None:
    extra = {"aud": ["portcullis", "payroll"], "azp": "portcullis"}
    response = await stack.get("/wms/stock", stack.token("alice", extra=extra, **WAREHOUSE))
    assert response.status == 200


async def test_single_audience_token_needs_no_azp(stack: Stack) -> None:
    for extra in ({"aud": ["portcullis"]}, {"aud": ["portcullis"], "azp": "another-client"}):
        response = await stack.get("/wms/stock", stack.token("alice", extra=extra, **WAREHOUSE))
        assert response.status == 200


async def test_authorized_parties_config_trusts_a_named_client(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    options = {"authorized_parties": ("store-frontend",)}
    async with start_stack(aiohttp_server, tmp_path, issuer_options=options) as running:
        extra = {"aud": ["portcullis", "account"], "azp": "portcullis"}
        await refused(running, running.token("alice", extra=extra, **WAREHOUSE), "store-frontend")
        extra = {"aud": ["portcullis", "account"], "azp": "store-frontend"}
        response = await running.get("/wms/a", running.token("alice", extra=extra, **WAREHOUSE))
        assert response.status == 200


def issuer_config(**options: Any) -> dict[str, Any]:
    issuer = {"issuer": "https://idp.example", "audiences": ["portcullis"], "discovery": True}
    return {"issuers": [{**issuer, **options}], "policy": {"source": "policies"}}


def test_issuer_token_rules_default_to_a_day_and_the_issuers_audiences() -> None:
    issuer = parse_config(issuer_config()).issuers[0]
    assert issuer.max_token_lifetime == 86400
    assert issuer.trusted_parties == ("portcullis",)
    options = {"max_token_lifetime": 3600, "authorized_parties": ["store-frontend"]}
    issuer = parse_config(issuer_config(**options)).issuers[0]
    assert (issuer.max_token_lifetime, issuer.trusted_parties) == (3600, ("store-frontend",))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_token_lifetime": 0}, "issuers[0].max_token_lifetime: must be 60-31622400 seconds"),
        ({"max_token_lifetime": 10**9}, "issuers[0].max_token_lifetime: must be 60-31622400"),
        ({"max_token_lifetime": "1d"}, "issuers[0].max_token_lifetime: expected float, got str"),
        ({"authorized_parties": []}, "issuers[0].authorized_parties: list at least one client id"),
        ({"authorized_parties": [7]}, "issuers[0].authorized_parties[0]: expected a non-empty"),
    ],
)
def test_bad_issuer_token_rules_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(issuer_config(**options))
    assert message in str(raised.value)


# --- property: whatever the header, claims or bytes, a 401 or the policy's answer --------

MISSING = object()
Options = dict[str, list[tuple[Any, bool]]]


def _header_options(kid: str) -> Options:
    """Each field's values, each with whether a correct gateway may accept it."""
    return {
        "alg": [
            ("RS256", True), ("rs256", False), ("none", False), ("HS256", False),
            (MISSING, False), (1, False), (["RS256"], False), ({"a": 1}, False),
            (True, False), (None, False),
        ],
        "kid": [
            (kid, True), (MISSING, False), (7, False), ([kid], False), (None, False),
            ("../../etc/passwd", False), ("unknown-kid", False), (kid + "\u0000", False),
            (1.5, False), ({"kid": kid}, False),
        ],
        "typ": [(MISSING, True), ("JWT", True), ("at+jwt", True), (1, True), ([], True)],
        "crit": [
            (MISSING, True), (["exp"], False), ([], False), ("b64", False), (7, False),
            (["b64"], False),
        ],
        "jku": [(MISSING, True), ("http://127.0.0.1:9/keys", True), (5, True)],
        "b64": [(MISSING, True), (False, False), ("no", False)],
    }  # fmt: skip


def _claim_options(issuer: str, now: int) -> Options:
    several = ["portcullis", "payroll"]
    return {
        "iss": [
            (issuer, True), (issuer + "/", False), (7, False), ([issuer], False),
            (MISSING, False), (None, False),
        ],
        "sub": [
            ("alice", True), (7, False), (["alice"], False), (MISSING, False), ("", False),
            (" \t", False), (None, False),
        ],
        "exp": [
            (now + 600, True), (now + 600.5, True), (now - 600, False),
            (now + 400 * 86400, False), (str(now + 600), False), ([now + 600], False),
            (True, False), (MISSING, False), (None, False), (10**30, False),
            (float("inf"), False),
        ],
        "iat": [
            (now, True), (now - 100.5, True), ([now], False), ("now", False),
            (now + 3600, False), (MISSING, False), ({"t": now}, False),
        ],
        "nbf": [(MISSING, True), (now - 10, True), (now + 600, False), ("x", False)],
        "auth_time": [(now, True), (MISSING, True), ("x", False), (False, False)],
        "groups": [(["warehouse"], True), ("warehouse", True), (7, True), (None, True)],
        "amr": [(["pwd", "otp"], True), ("pwd", True), ({"a": 1}, True)],
        "email": [("a@example.com", True), (7, True), (MISSING, True)],
        # (aud, azp): several audiences need a trusted azp (OIDC Core 3.1.3.7).
        "aud+azp": [
            (("portcullis", MISSING), True), ((["portcullis"], "payroll"), True),
            ((several, "portcullis"), True), ((several, MISSING), False),
            ((several, "payroll"), False), ((several, 7), False), (("payroll", MISSING), False),
            ((7, MISSING), False), (([7], MISSING), False), (([], MISSING), False),
            ((MISSING, MISSING), False), (({"aud": "portcullis"}, MISSING), False),
        ],
    }  # fmt: skip


@st.composite
def _crafted(
    draw: st.DrawFn, header_options: Options, claim_options: Options
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """A JOSE header and claims where a few fields (maybe none) hold a value a
    gateway must refuse and the rest a good (if odd) one, so each refusal reason
    is tried alone and valid tokens come up too. Returns them and what's spoiled."""
    names = [
        (part, name)
        for part, options in (("header", header_options), ("claims", claim_options))
        for name, choices in options.items()
        if not all(ok for _, ok in choices)
    ]
    spoil = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    parts: dict[str, dict[str, Any]] = {"header": {}, "claims": {}}
    for part, options in (("header", header_options), ("claims", claim_options)):
        for name, choices in options.items():
            bad = (part, name) in spoil
            value = draw(st.sampled_from([v for v, ok in choices if ok is not bad]))
            if name == "aud+azp":
                parts[part].update(zip(("aud", "azp"), value, strict=True))
            else:
                parts[part][name] = value
    header, claims = (
        {name: value for name, value in parts[part].items() if value is not MISSING}
        for part in ("header", "claims")
    )
    return header, claims, [f"{part}.{name}" for part, name in spoil]


async def _raw(stack: Stack, authorization: bytes) -> tuple[int, dict[str, str], bytes, int]:
    before = stack.total_forwarded()
    status, headers, body = await raw_get(stack, authorization)
    return status, headers, body, stack.total_forwarded() - before


async def test_crafted_tokens_are_refused_with_401_or_answered_by_the_policy(
    stack: Stack,
) -> None:
    """Tokens signed with the trusted issuer's real key (so the signature passes)
    with odd JOSE headers and odd claim types, and arbitrary Authorization bytes:
    the gateway answers 401 invalid_token, or for a valid token the policy's
    answer; never a 5xx, never forwards an invalid token, one event per request."""
    loop = asyncio.get_running_loop()
    now = int(time.time())
    refused_ids: list[str] = []
    accepted: list[int] = []
    requests = 0

    def send(authorization: bytes) -> tuple[int, dict[str, str], bytes, int]:
        nonlocal requests
        requests += 1
        return asyncio.run_coroutine_threadsafe(_raw(stack, authorization), loop).result(30)

    def check_refused(status: int, headers: dict[str, str], body: bytes, forwarded: int) -> None:
        assert status == 401, (status, body)
        assert 'error="invalid_token"' in headers["WWW-Authenticate"], headers
        assert forwarded == 0
        refused_ids.append(json.loads(body)["decision_id"])

    @settings(max_examples=300, derandomize=True, deadline=None, database=None)
    @given(_crafted(_header_options(stack.issuer.kid), _claim_options(stack.issuer.issuer, now)))
    def signed_tokens(crafted: tuple[dict[str, Any], dict[str, Any], list[str]]) -> None:
        header, payload, spoiled = crafted
        status, headers, body, forwarded = send(
            b"Bearer " + signed(stack, header, payload).encode()
        )
        assert status < 500, (status, body)
        if spoiled:
            check_refused(status, headers, body, forwarded)
        else:
            assert "invalid_token" not in headers.get("WWW-Authenticate", ""), (headers, payload)
            assert status in (200, 401, 403), (status, body)
            assert forwarded == (1 if status == 200 else 0)
            accepted.append(status)

    token_shaped = st.lists(
        st.text("ABCXYZabcxyz0129-_=+/ .\t", max_size=40), min_size=1, max_size=4
    ).map(lambda parts: ".".join(parts).encode())
    # What HTTP lets through in a header value: HTAB, visible ASCII, space, obs-text.
    header_bytes = st.binary(max_size=60).map(
        lambda raw: bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128)
    )

    @settings(max_examples=200, derandomize=True, deadline=None, database=None)
    @given(
        st.sampled_from([b"", b"Bearer ", b"bearer ", b"Bearer  ", b"Basic ", b"Bearer\t"]),
        st.one_of(token_shaped, header_bytes),
    )
    def arbitrary_authorization(scheme: bytes, rest: bytes) -> None:
        check_refused(*send(scheme + rest))

    await asyncio.to_thread(signed_tokens)
    await asyncio.to_thread(arbitrary_authorization)
    assert accepted.count(200) >= 15  # the property saw valid tokens too, not only refusals
    events = await stack.events(at_least=requests)
    assert len(events) == requests
    reasons = {e["decision_id"]: e["result"]["reasons"] for e in events}
    for decision_id in refused_ids:
        assert reasons[decision_id][0].startswith("gateway.invalid_token: "), reasons[decision_id]
