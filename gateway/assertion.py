"""The identity assertion the gateway hands each backend: a short-lived ES256 JWT."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import ConfigError, GatewayConfig, issuer_name
from gateway.identity import Identity

HEADER = "X-Portcullis-Assertion"
JWKS_PATH = "/.well-known/portcullis/jwks.json"
# Where a decision log keeps its key when assertion.key_file isn't set: beside it,
# as the demo and the Docker example do.
KEY_BESIDE_LOG = "assertion-key.pem"

log = logging.getLogger("portcullis.gateway")


def settle_key_file(config: GatewayConfig, workers: int = 1) -> GatewayConfig:
    """``config`` with the key file its processes will sign with, or a ConfigError.

    A key made in memory dies with its process: the decision log it signed can't
    be verified once the process exits, and each of several workers would make
    its own (a backend that fetched the JWKS from one refuses the others'
    assertions). So without ``assertion.key_file`` a decision log keeps the key
    beside it, and several workers without a log are refused.
    """
    assertion = config.assertion
    if assertion.key_file is not None:
        return config
    if config.decision_log.path is not None:
        key_file = config.decision_log.path.parent / KEY_BESIDE_LOG
        log.warning(
            "assertion.key_file not set: assertions and the decision log are signed with "
            "%s, beside the log (created if missing); set key_file to keep it elsewhere",
            key_file,
        )
        return dataclasses.replace(
            config, assertion=dataclasses.replace(assertion, key_file=key_file)
        )
    if workers > 1 and config.auth:
        raise ConfigError(
            f"assertion.key_file: required with --workers {workers}: each worker would sign "
            "with a key of its own, and backends would refuse the assertions of all but one "
            "(a missing file is created, mode 0600)"
        )
    return config


def load_or_create_key(path: Path | None) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 signing key from a PEM file; a new one (kept in memory) without a path.

    A missing file at a given path is created, mode 0600, so a fresh
    deployment (and the demo) starts without a manual key step.
    """
    if path is None:
        return ec.generate_private_key(ec.SECP256R1())
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError(f"{path}: assertion key must be an EC P-256 private key")
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return key


def _b64(number: int) -> str:
    return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The key's public JWK, its kid the RFC 7638 thumbprint (what the gateway signs
    assertions and decision-log signatures with)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    numbers = public.public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": _b64(numbers.x), "y": _b64(numbers.y)}
    # RFC 7638 thumbprint as the key id: stable across restarts for the same key.
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=")
    return {**jwk, "kid": kid.decode(), "alg": "ES256", "use": "sig"}


class AssertionSigner:
    """Signs `X-Portcullis-Assertion` JWTs; reuses one per identity and app for a while,
    so a busy client doesn't cost an ECDSA signature per request."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, issuer: str, ttl: int = 60) -> None:
        self.key = key
        self.jwk = public_jwk(key)
        self.issuer = issuer
        self.ttl = ttl
        self._cache: dict[tuple[Any, ...], tuple[float, str]] = {}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def sign(self, identity: Identity, app: str) -> str:
        now = time.time()
        cache_key = (identity, app)
        cached = self._cache.get(cache_key)
        # Reuse only while more than half the lifetime is left.
        if cached is not None and cached[0] - now > self.ttl / 2:
            return cached[1]
        expires = now + self.ttl
        # Until the gateway stops accepting the credential: for a bearer token its
        # exp plus the issuer's leeway, not its exp, or a token let through within
        # the leeway would reach the backend with an assertion already expired.
        accepted_until = identity.accepted_until
        if accepted_until is None:
            accepted_until = identity.expires_at
        if accepted_until is not None:
            expires = min(expires, accepted_until)
        claims = {
            "iss": self.issuer,
            "aud": app,
            "sub": identity.subject,
            "sub_id": _subject_identifier(identity),
            "email": identity.email,
            "groups": list(identity.groups),
            "amr": list(identity.amr),
            "acr": identity.acr,
            "auth_time": identity.auth_time,
            "iat": int(now),
            "exp": int(expires),
        }
        token = jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": self.jwk["kid"]})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[cache_key] = (expires, token)
        return token


def _subject_identifier(identity: Identity) -> dict[str, str] | None:
    """Whom `sub` names, with its issuer: RFC 9493's `sub_id` claim in its `iss_sub`
    format. `sub` is unique only within its issuer (OIDC Core 5.7), and with several
    issuers trusted (a staff IdP, a service-token issuer, client certificates of two
    CAs) two users can share one; a backend that keys its users by `sub` alone would
    take one for the other. The issuer is named as the gateway names it everywhere
    (config.issuer_name: a token's `iss` without a trailing slash, `mtls:<CA>` for
    a client certificate), so a session and a bearer token of one provider agree.
    None for an identity without an issuer or subject."""
    if not identity.issuer or not identity.subject:
        return None
    return {"format": "iss_sub", "iss": issuer_name(identity.issuer), "sub": identity.subject}
