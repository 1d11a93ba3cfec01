"""The demo's parts: a dev token issuer with its own keys, and backends that show
what they received and verify the gateway's identity assertion."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.assertion import HEADER as ASSERTION_HEADER

AUDIENCE = "portcullis"
REQUESTS: web.AppKey[list[web.Request]] = web.AppKey("requests", list)
KEY_FILE = "issuer-key.pem"


class DevIssuer:
    """Signs RS256 tokens with a key kept in the state directory, and serves its
    discovery document and JWKS so a gateway can verify them. For demos and
    tests only: it asks nobody anything before signing."""

    def __init__(self, state_dir: Path, issuer: str) -> None:
        self.issuer = issuer.rstrip("/")
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / KEY_FILE
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError(f"{path}: not an RSA private key")
            self.key = loaded
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            path.touch(mode=0o600)
            path.write_bytes(
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.kid = jwt.PyJWK(public).key_id or _thumbprint(public)
        self.jwk = {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def token(
        self,
        subject: str,
        *,
        groups: list[str] | None = None,
        amr: list[str] | None = None,
        acr: str | None = None,
        auth_age: int = 0,
        ttl: int = 3600,
        email: str | None = None,
        audience: str = AUDIENCE,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + ttl,
            "auth_time": now - auth_age,
            "email": email or f"{subject}@example.com",
            "email_verified": True,
            "groups": groups or [],
            "amr": amr or ["pwd"],
        }
        if acr is not None:
            claims["acr"] = acr
        claims.update(extra or {})
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(
                {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks.json"}
            )

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response({"keys": [self.jwk]})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
        return app


def _thumbprint(jwk: dict[str, Any]) -> str:
    import base64
    import hashlib

    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    return (
        base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    )


def demo_backend(name: str, gateway_url: str) -> web.Application:
    """A backend that answers with the request it got and the verified assertion."""
    keys: dict[str, Any] = {}

    async def assertion_claims(token: str | None) -> dict[str, Any]:
        if token is None:
            return {"verified": False, "error": f"no {ASSERTION_HEADER} header"}
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            if kid not in keys:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{gateway_url}/.well-known/portcullis/jwks.json") as response,
                ):
                    for jwk in (await response.json())["keys"]:
                        keys[jwk["kid"]] = jwt.PyJWK(jwk)
            claims = jwt.decode(token, keys[kid].key, algorithms=["ES256"], audience=name)
        except (jwt.PyJWTError, KeyError, aiohttp.ClientError) as error:
            return {"verified": False, "error": str(error)}
        return {"verified": True, "claims": claims}

    async def handle(request: web.Request) -> web.StreamResponse:
        request.app[REQUESTS].append(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(f"{name} echo: {message.data}")
            return ws
        body = await request.read()
        return web.json_response(
            {
                "app": name,
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "body_bytes": len(body),
                "assertion": await assertion_claims(request.headers.get(ASSERTION_HEADER)),
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[REQUESTS] = []  # what reached this backend, for tests that prove what didn't
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
