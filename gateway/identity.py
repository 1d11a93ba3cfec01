"""Who is this? A verified identity from a bearer JWT, or none."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from gateway.config import Issuer
from gateway.jwks import JwksCache

MAX_TOKEN_BYTES = 8192
_SAFE_KID = re.compile(r"^[A-Za-z0-9._:+=-]{1,128}$")


class TokenRejected(Exception):
    """The token was refused; the message is the `error_description` for the client."""


@dataclass(frozen=True)
class Identity:
    authenticated: bool
    method: str = "none"  # "bearer", "session", "mtls" or "none"
    subject: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    acr: str | None = None
    auth_time: int | None = None
    issuer: str | None = None
    expires_at: float | None = None
    client_cert: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_input(self) -> dict[str, Any]:
        """The `input.identity` document of the decision contract."""
        if not self.authenticated:
            return {"authenticated": False, "method": self.method}
        return {
            "authenticated": True,
            "method": self.method,
            "subject": self.subject,
            "email": self.email,
            "groups": list(self.groups),
            "amr": list(self.amr),
            "acr": self.acr,
            "auth_time": self.auth_time,
            "issuer": self.issuer,
            "client_cert": self.client_cert,
        }


ANONYMOUS = Identity(authenticated=False)


def client_certificate(transport: Any) -> dict[str, Any]:
    """The verified client certificate of a TLS connection, as plain data; {} without one.

    Only a listener with `client_ca` asks for one, and the TLS handshake has
    already verified it against that CA by the time a request arrives."""
    if transport is None:
        return {}
    peer = transport.get_extra_info("peercert")
    if not peer:
        return {}

    def names(field: str) -> dict[str, str]:
        return {key: value for rdn in peer.get(field, ()) for key, value in rdn}

    return {
        "subject": names("subject"),
        "issuer": names("issuer"),
        "serial_number": peer.get("serialNumber"),
        "not_after": peer.get("notAfter"),
        "sans": [value for kind, value in peer.get("subjectAltName", ()) if kind in ("DNS", "URI")],
    }


def certificate_identity(certificate: dict[str, Any]) -> Identity:
    """A service identified by its client certificate alone (no bearer token)."""
    return Identity(
        authenticated=True,
        method="mtls",
        subject=certificate["subject"].get("commonName"),
        client_cert=certificate,
    )


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _ago(seconds: float) -> str:
    seconds = abs(int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


class TokenVerifier:
    """Verifies bearer JWTs against the configured issuers' JWKS.

    Only the issuer's configured asymmetric algorithms are accepted (never
    `none`, never HS*); `jku`, `x5u` and `jwk` headers are ignored, keys come
    only from the issuer's own JWKS. Verified tokens are cached until they
    expire, so a busy client costs one signature check per token.
    """

    def __init__(self, issuers: dict[str, tuple[Issuer, JwksCache]], *, cache_size: int = 10_000):
        self._issuers = issuers
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"token too large ({len(token)} bytes, limit {MAX_TOKEN_BYTES})")
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at is not None and cached.expires_at > now:
                return cached
            del self._cache[token]
        identity = await self._verify(token, now)
        self._cache[token] = identity
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    async def _verify(self, token: str, now: float) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError as error:
            raise TokenRejected(f"malformed token: {error}") from error
        issuer_name = unverified.get("iss")
        entry = self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if entry is None:
            raise TokenRejected(f"untrusted issuer {issuer_name!r}")
        issuer, keys = entry
        algorithm = header.get("alg")
        if algorithm not in issuer.algorithms:
            raise TokenRejected(
                f"algorithm {algorithm!r} not allowed for this issuer "
                f"(allowed: {', '.join(issuer.algorithms)})"
            )
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRejected("token header has no kid")
        if not _SAFE_KID.match(kid):
            raise TokenRejected("kid has characters a key id never needs (path or control)")
        key = await keys.get(kid)
        if key is None:
            raise TokenRejected(f"unknown signing key kid={kid!r} for issuer {issuer.issuer}")
        declared = keys.algorithm_of(kid)
        if declared is not None and declared != algorithm:
            raise TokenRejected(f"key {kid!r} is for {declared}, token says {algorithm}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": ["exp", "iat", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError as error:
            exp = float(unverified.get("exp", 0))
            raise TokenRejected(
                f"token expired {_ago(now - exp)} ago (exp {_when(exp)} UTC)"
            ) from error
        except jwt.ImmatureSignatureError as error:
            raise TokenRejected(f"token not valid yet: {error}") from error
        except jwt.InvalidAudienceError as error:
            expected = ", ".join(issuer.audiences)
            audience = unverified.get("aud")
            raise TokenRejected(f"token audience {audience!r} is not one of {expected}") from error
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejected(f"token has no {error.claim!r} claim") from error
        except jwt.InvalidSignatureError as error:
            raise TokenRejected("signature verification failed") from error
        except jwt.PyJWTError as error:
            raise TokenRejected(f"invalid token: {error}") from error
        auth_time = claims.get("auth_time")
        return Identity(
            authenticated=True,
            method="bearer",
            subject=str(claims["sub"]),
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
            groups=_strings(claims.get(issuer.groups_claim)),
            amr=_strings(claims.get("amr")),
            acr=claims.get("acr") if isinstance(claims.get("acr"), str) else None,
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
            issuer=issuer.issuer,
            expires_at=float(claims["exp"]),
        )
