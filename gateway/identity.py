"""Who is this? A verified identity from a bearer JWT, or none (a client
certificate's: gateway/mtls/subject.py)."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson

from gateway.config import Issuer
from gateway.jwks import JwksCache

log = logging.getLogger("portcullis.identity")
MAX_TOKEN_BYTES = 8192
_SAFE_KID = re.compile(r"[A-Za-z0-9._:+=-]{1,128}")
# JWS compact serialization: base64url header, payload and (maybe empty) signature.
# Checked first, so a token with control, non-ASCII or undecodable bytes is refused
# by its shape before any library sees it.
_JWS_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
DATE_CLAIMS = ("exp", "iat", "nbf", "auth_time")
MAX_NUMERIC_DATE = 253402300799  # 9999-12-31T23:59:59Z


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
    # Until when the gateway accepts the credential: a bearer token passes until its
    # exp plus the issuer's leeway. None: until expires_at.
    accepted_until: float | None = field(default=None, compare=False)
    client_cert: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # The certificate's principal as Envoy's ext_authz names it (input.attributes.
    # source.principal): taken with the certificate, since the connection may be
    # gone by the time the decision input is built.
    principal: str | None = field(default=None, compare=False)
    # For revocation (gateway/shared/): when the token or session was issued (a
    # per-user revocation refuses what was issued before it), the browser session's
    # id, and the provider's session id (`sid`) that back-channel logout names.
    issued_at: float | None = field(default=None, compare=False)
    session_id: str | None = field(default=None, compare=False, repr=False)
    provider_sid: str | None = field(default=None, compare=False, repr=False)

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
# The methods whose credential a browser attaches by itself to any page's request,
# whichever site the page is on: the session cookie, and a client certificate
# installed in the browser. Another site's page can act with these (never with a
# bearer token, which the client holding it sends).
BROWSER_CREDENTIALS = frozenset({"session", "mtls"})


def verified_email(claims: dict[str, Any]) -> str | None:
    """A token's email, when its issuer says it verified it (`email_verified`
    true; absent is not). Where users sign up with any address (self-service
    without a confirmation mail, Entra ID's editable `email`: "nOAuth"), an
    unverified one is whatever was typed, and the gateway would vouch for it to
    the policy and, in the assertion, to every backend: one that knows its users
    by email would serve the typist as them. Sessions (the ID token's claims)
    and bearer tokens alike."""
    email = claims.get("email")
    return email if isinstance(email, str) and claims.get("email_verified") is True else None


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(item for item in value if isinstance(item, str))
    return ()


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _when_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(seconds: float) -> str:
    seconds = abs(int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{round(seconds / 86400)}d"


class TokenVerifier:
    """Verifies bearer JWTs against the configured issuers' JWKS.

    Only the issuer's configured asymmetric algorithms are accepted (never
    `none`, never HS*); `jku`, `x5u` and `jwk` headers are ignored, keys come
    only from the issuer's own JWKS. Verified tokens are cached until they
    expire, so a busy client costs one signature check per token.
    """

    def __init__(self, issuers: dict[str, tuple[Issuer, JwksCache]], *, cache_size: int = 10_000):
        self._issuers = issuers
        # token -> (identity, the issuer's keys, kid, the key that verified it)
        self._cache: OrderedDict[str, tuple[Identity, JwksCache, str, jwt.PyJWK]] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRejected(f"token too large ({len(token)} bytes, limit {MAX_TOKEN_BYTES})")
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            identity, keys, kid, key = cached
            # Only while its key is still the one the issuer publishes: a key
            # withdrawn from the JWKS (it leaked) ends its cached tokens too.
            live = identity.expires_at is not None and identity.expires_at > now
            if live and keys.current(kid) is key:
                return identity
            del self._cache[token]
        try:
            identity, keys, kid, key = await self._verify(token, now)
        except TokenRejected:
            raise
        except Exception as error:
            # Fail closed: whatever a crafted token trips over in a library is a
            # refused token (401, logged), never a 500 without a decision record.
            log.warning("token refused on an unexpected %s: %s", type(error).__name__, error)
            raise TokenRejected(f"malformed token ({type(error).__name__})") from error
        self._cache[token] = (identity, keys, kid, key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    async def _verify(self, token: str, now: float) -> tuple[Identity, JwksCache, str, jwt.PyJWK]:
        """The token's identity, and the issuer's keys, kid and key that verified it."""
        header, unverified = _unverified(token)
        issuer_name = unverified.get("iss")
        entry = self._issuers.get(issuer_name) if isinstance(issuer_name, str) else None
        if entry is None:
            raise TokenRejected(f"untrusted issuer {show(issuer_name)}")
        issuer, keys = entry
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in issuer.algorithms:
            raise TokenRejected(
                f"algorithm {show(algorithm)} not allowed for this issuer "
                f"(allowed: {', '.join(issuer.algorithms)})"
            )
        kid = header.get("kid")
        if kid is None:
            raise TokenRejected("token header has no kid")
        if not isinstance(kid, str):
            raise TokenRejected(f"kid must be a string, got {type(kid).__name__}")
        if not _SAFE_KID.fullmatch(kid):
            raise TokenRejected("kid has characters a key id never needs (path or control)")
        _check_dates(unverified)
        key = await keys.get(kid)
        if key is None:
            raise TokenRejected(f"unknown signing key kid={kid!r} for issuer {issuer.issuer}")
        declared = keys.algorithm_of(kid)
        if declared is not None and declared != algorithm:
            raise TokenRejected(f"key {kid!r} is for {declared}, token says {algorithm}")
        claims = _decode(token, key, algorithm, issuer, unverified, now)
        problem = subject_problem(claims)
        if problem is not None:
            raise TokenRejected(problem)
        _check_lifetime(claims, issuer, now)
        _check_authorized_party(claims, issuer)
        auth_time = claims.get("auth_time")
        identity = Identity(
            authenticated=True,
            method="bearer",
            subject=str(claims["sub"]),
            email=verified_email(claims),
            groups=_strings(claims.get(issuer.groups_claim)),
            amr=_strings(claims.get("amr")),
            acr=claims.get("acr") if isinstance(claims.get("acr"), str) else None,
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
            issuer=issuer.issuer,
            expires_at=float(claims["exp"]),
            accepted_until=float(claims["exp"]) + issuer.leeway,
            issued_at=float(claims["iat"]),
        )
        return identity, keys, kid, key


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims before any key is chosen: only to pick the issuer and
    key, and to refuse what no verification should even be tried on."""
    if not _JWS_COMPACT.match(token):
        raise TokenRejected("malformed token: not three base64url parts (header.payload.signature)")
    encoded_header, encoded_claims, _ = token.split(".")
    header = _json_object(encoded_header, "header")
    if "crit" in header:
        # RFC 7515 4.1.11: a recipient must refuse critical extensions it doesn't
        # understand, and the gateway understands none.
        raise TokenRejected(f"critical header extensions {show(header['crit'])} not supported")
    if "b64" in header:
        raise TokenRejected("unencoded-payload tokens (b64 header) are not accepted")
    # orjson is strict where PyJWT's json isn't: no NaN or Infinity, no lone
    # surrogates, no integers past 64 bits. What passes here decodes the same there.
    return header, _json_object(encoded_claims, "claims")


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_unb64(part))
    except (ValueError, binascii.Error) as error:
        raise TokenRejected(f"malformed token: {what} is not base64url JSON") from error
    if not isinstance(value, dict):
        raise TokenRejected(f"malformed token: {what} is not a JSON object")
    return value


def _decode(
    token: str,
    key: jwt.PyJWK,
    algorithm: str,
    issuer: Issuer,
    unverified: dict[str, Any],
    now: float,
) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[algorithm],
            audience=list(issuer.audiences),
            issuer=issuer.issuer,
            leeway=issuer.leeway,
            options={"require": ["exp", "iat", "iss", "sub"]},
        )
    except jwt.ExpiredSignatureError as error:
        exp = float(unverified["exp"])
        raise TokenRejected(
            f"token expired {_ago(now - exp)} ago (exp {_when(exp)} UTC)"
        ) from error
    except jwt.ImmatureSignatureError as error:
        raise TokenRejected(f"token not valid yet: {error}") from error
    except jwt.InvalidAudienceError as error:
        expected = ", ".join(issuer.audiences)
        audience = show(unverified.get("aud"))
        raise TokenRejected(f"token audience {audience} is not one of {expected}") from error
    except jwt.MissingRequiredClaimError as error:
        raise TokenRejected(f"token has no {error.claim!r} claim") from error
    except jwt.InvalidSignatureError as error:
        raise TokenRejected("signature verification failed") from error
    except jwt.PyJWTError as error:
        raise TokenRejected(f"invalid token: {error}") from error
    return claims


def _check_dates(claims: dict[str, Any]) -> None:
    """NumericDate claims are JSON numbers (RFC 7519 2): PyJWT would take "123" or
    choke on an infinite or a list one, so refuse anything else first."""
    for name in DATE_CLAIMS:
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TokenRejected(
                f"claim {name!r} must be a number of seconds since 1970, got {type(value).__name__}"
            )
        if not math.isfinite(value) or abs(value) > MAX_NUMERIC_DATE:
            raise TokenRejected(f"claim {name!r} is not a plausible time ({value})")


def _check_lifetime(claims: dict[str, Any], issuer: Issuer, now: float) -> None:
    ahead = float(claims["exp"]) - now
    if ahead > issuer.max_token_lifetime + issuer.leeway:
        raise TokenRejected(
            f"token expires too far ahead (in {_ago(ahead)}, exp {_when_day(ahead + now)} UTC); "
            f"this issuer's tokens may live at most {_ago(issuer.max_token_lifetime)} "
            "(issuers[].max_token_lifetime)"
        )
    # Its whole life too, not only what is left of it: a per-user revocation is
    # kept for max_token_lifetime, so an older token must not outlive it.
    lifetime = float(claims["exp"]) - float(claims["iat"])
    if lifetime > issuer.max_token_lifetime + issuer.leeway:
        raise TokenRejected(
            f"token was issued to live {_ago(lifetime)} (iat to exp); this issuer's tokens "
            f"may live at most {_ago(issuer.max_token_lifetime)} (issuers[].max_token_lifetime)"
        )


def subject_problem(claims: dict[str, Any]) -> str | None:
    """What is wrong with a verified token's ``sub``, None if nothing. The subject
    is who the policy decides for and the decision log names: a blank one is no
    one (RFC 9068 2.2 and OIDC Core 2 require it; an issuer that mints it blank
    has a bug the gateway should not turn into an allowed, nameless access)."""
    subject = claims.get("sub")
    if not isinstance(subject, str):
        return f"token's 'sub' claim must be a string, got {type(subject).__name__}"
    if not subject.strip():
        return "token's 'sub' claim is blank: no identity to decide for"
    return None


def _check_authorized_party(claims: dict[str, Any], issuer: Issuer) -> None:
    """OIDC Core 3.1.3.7: a token for several audiences names the client it was
    issued to (azp), and only a trusted client's token is accepted, so another
    relying party's token that merely lists the gateway too can't be replayed."""
    audience = claims.get("aud")
    if not isinstance(audience, list) or len(set(audience)) < 2:
        return
    party = claims.get("azp")
    if party is None:
        raise TokenRejected(
            f"token has several audiences {show(audience)} but no azp claim naming its client"
        )
    if party not in issuer.trusted_parties:
        raise TokenRejected(
            f"token for several audiences was issued to client azp={show(party)}, "
            f"not one of {', '.join(issuer.trusted_parties)} (issuers[].authorized_parties)"
        )


def show(value: Any) -> str:
    """A claim or header value for an error message: repr, shortened (it is
    attacker-chosen and ends up in a response header and the log)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
