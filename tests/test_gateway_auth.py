"""Bearer tokens at the gateway: the good one passes, every attack is refused
with 401 and a reason, and nothing refused reaches a backend."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gateway.demo import DevIssuer
from tests.gateway_stack import ServerFactory, Stack

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


async def refused(stack: Stack, token: str, reason: str) -> None:
    response = await stack.get("/wms/stock", token)
    body = await response.text()
    assert response.status == 401, body
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="portcullis", error="invalid_token"')
    assert reason in challenge, challenge
    assert stack.total_forwarded() == 0


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
