"""The OpenID Connect relying party: discovery, the authorization request with
PKCE, state and nonce, the code exchange, ID token verification and refresh."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import jwt

from gateway.config import Issuer, SignInConfig
from gateway.identity import subject_problem
from gateway.jwks import JwksCache
from gateway.provider_errors import UNRECOGNISED, oauth_error, transport_error

log = logging.getLogger("portcullis.oidc")
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
DISCOVERY_RETRY_SECONDS = 5.0
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)


class ProviderError(Exception):
    """The provider couldn't be reached or answered with an error; the message
    is shown to the user and logged, so it says what happened in plain words and
    holds none of the provider's own text. `cause` is one word for the decision
    log: the provider's OAuth error code (gateway.provider_errors.oauth_error),
    ``unavailable`` or ``not_json``."""

    def __init__(self, message: str, cause: str = "unavailable") -> None:
        super().__init__(message)
        self.cause = cause


class TokenInvalid(Exception):
    """A token that must not be trusted. The message says which check failed in
    the gateway's words, never with text from the token (the provider's answer,
    or an attacker's): it is logged and shown. `check` names the check for the
    decision log (README "Browser sign-in and step-up")."""

    def __init__(self, message: str, check: str) -> None:
        super().__init__(message)
        self.check = check


# The JWS algorithm names a message may repeat (`none`, `HS256`); any other text
# in a token's `alg` is not shown.
_KNOWN_ALGORITHMS = frozenset(jwt.algorithms.get_default_algorithms()) | {"none"}
# What the token endpoint is sent that its answer must never be seen to repeat.
_SECRET_FIELDS = ("code", "code_verifier", "refresh_token")


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None = None
    iss_parameter_supported: bool = False


@dataclass(frozen=True)
class TokenResponse:
    id_token: str | None
    refresh_token: str | None
    expires_in: int | None


@dataclass(frozen=True)
class AuthorizationRequest:
    """One sign-in in flight: what the browser is sent to, and what the callback
    must check against (kept in the pre-auth cookie, never in the URL)."""

    url: str
    state: str
    nonce: str
    code_verifier: str


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality for secrets that came from the network."""
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class OidcClient:
    """A relying party of one provider. Metadata comes from discovery (fetched
    once, retried after a failure); signing keys from its JWKS with rotation."""

    def __init__(self, config: SignInConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self._session = session
        self._metadata: ProviderMetadata | None = None
        self._inflight: asyncio.Task[ProviderMetadata] | None = None
        self._last_failure = float("-inf")
        self._last_error = ""
        self._keys: JwksCache | None = None

    # --- discovery ----------------------------------------------------------------------

    async def _signing_key(self, header: dict[str, Any], what: str) -> tuple[str, Any]:
        """The token's algorithm (one the config allows) and the provider's key for
        its kid; TokenInvalid naming `what` otherwise."""
        assert self._keys is not None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.config.algorithms:
            known = isinstance(algorithm, str) and algorithm in _KNOWN_ALGORITHMS
            named = repr(algorithm) if known else "of another kind"
            raise TokenInvalid(
                f"{what} algorithm {named} not allowed "
                f"(allowed: {', '.join(self.config.algorithms)})",
                "algorithm",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenInvalid(f"{what} header has no kid", "no_kid")
        key = await self._keys.get(kid)
        if key is None:
            raise TokenInvalid(
                f"{what} signed with a key (kid) the provider's JWKS doesn't have", "unknown_kid"
            )
        # The header names both the key and the algorithm, and anyone can POST a
        # logout token: one naming the provider's RSA key (its kid is public) with
        # ES256 made PyJWT raise a TypeError, a 500 and a traceback per request.
        # An algorithm the JWKS says the key is not for is refused too (RFC 7517 4.4).
        declared = self._keys.algorithm_of(kid)
        if (declared is not None and declared != algorithm) or not _key_fits(key, algorithm):
            raise TokenInvalid(
                f"{what} algorithm {algorithm!r} is not the one of the key its kid names",
                "algorithm",
            )
        return algorithm, key

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is not None:
            return self._metadata
        if self._inflight is None:
            if time.monotonic() - self._last_failure < DISCOVERY_RETRY_SECONDS:
                raise ProviderError(self._last_error)
            self._inflight = asyncio.ensure_future(self._discover())
        task = self._inflight
        try:
            return await asyncio.shield(task)
        except ProviderError as error:
            self._last_failure = time.monotonic()
            self._last_error = str(error)
            raise
        finally:
            if task.done():
                self._inflight = None

    async def _discover(self) -> ProviderMetadata:
        url = f"{self.config.issuer}/.well-known/openid-configuration"
        document = await self._get_json(url)
        issuer = document.get("issuer")
        if issuer != self.config.issuer and issuer != self.config.issuer + "/":
            # OpenID Discovery 4.3: a document for another issuer is a mix-up.
            raise ProviderError(
                f"the provider's discovery document names {_issuer_shown(issuer)}, "
                f"not the configured {self.config.issuer!r}"
            )
        fields = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document.get(name)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ProviderError(f"the provider's discovery document has no {name}")
            fields[name] = value
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ProviderError(
                "the provider does not support PKCE with S256 (its discovery document's "
                "code_challenge_methods_supported leaves it out); the gateway requires it"
            )
        end_session = document.get("end_session_endpoint")
        metadata = ProviderMetadata(
            issuer=str(issuer),
            end_session_endpoint=end_session if isinstance(end_session, str) else None,
            iss_parameter_supported=document.get("authorization_response_iss_parameter_supported")
            is True,
            **fields,
        )
        self._keys = JwksCache(
            Issuer(
                metadata.issuer,
                (self.config.client_id,),
                jwks_url=metadata.jwks_uri,
                algorithms=self.config.algorithms,
            ),
            self._session,
            min_refresh_interval=10.0,
        )
        self._metadata = metadata
        return metadata

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session.get(
                url, timeout=HTTP_TIMEOUT, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise ProviderError(f"the provider answered {response.status} for {url}")
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ProviderError(
                f"the provider at {self.config.issuer} can't be reached ({transport_error(error)})"
            ) from error
        except ValueError as error:
            raise ProviderError(f"{url} did not return JSON", "not_json") from error
        if not isinstance(document, dict):
            raise ProviderError(f"{url} did not return a JSON object")
        return document

    # --- the authorization request ---------------------------------------------------------

    async def authorization_request(
        self, redirect_uri: str, *, acr: str | None = None, max_age: int | None = None
    ) -> AuthorizationRequest:
        metadata = await self.metadata()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43-128
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": _challenge(verifier),
            "code_challenge_method": "S256",
        }
        if acr is not None:
            params["acr_values"] = acr
        if max_age is not None:
            params["max_age"] = str(max_age)
            if max_age == 0:
                params["prompt"] = "login"
        separator = "&" if "?" in metadata.authorization_endpoint else "?"
        url = f"{metadata.authorization_endpoint}{separator}{urlencode(params, quote_via=quote)}"
        return AuthorizationRequest(url, state, nonce, verifier)

    # --- the token endpoint ----------------------------------------------------------------

    async def exchange_code(self, code: str, verifier: str, redirect_uri: str) -> TokenResponse:
        return await self._token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
            "the sign-in code",
        )

    async def refresh(self, refresh_token: str) -> TokenResponse:
        return await self._token(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}, "the refresh token"
        )

    async def _token(self, form: dict[str, str], what: str) -> TokenResponse:
        """The token endpoint's answer. A refusal is told by its OAuth error code
        alone: the provider's error_description can repeat the code, verifier,
        refresh token or client secret it was sent, and the message is logged
        and shown to the browser."""
        metadata = await self.metadata()
        sent = [form.get(name) for name in _SECRET_FIELDS] + [self.config.client_secret]
        headers = {"Accept": "application/json"}
        if self.config.client_secret is None:
            form = {**form, "client_id": self.config.client_id}
        else:
            # RFC 6749 2.3.1: id and secret are form-encoded before Basic.
            user, secret = self.config.client_id, self.config.client_secret
            pair = f"{quote(user, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with self._session.post(
                metadata.token_endpoint,
                data=form,
                headers=headers,
                timeout=HTTP_TIMEOUT,
                allow_redirects=False,
            ) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ProviderError(
                f"the provider's token endpoint can't be reached ({transport_error(error)})"
            ) from error
        except ValueError as error:
            raise ProviderError(
                "the provider's token endpoint did not answer with JSON", "not_json"
            ) from error
        if not isinstance(body, dict):
            raise ProviderError(
                f"the provider's token endpoint answered {status} without a JSON object", "not_json"
            )
        if status != 200:
            code = oauth_error(body.get("error"), sent)
            shown = "an unrecognised error" if code == UNRECOGNISED else code
            raise ProviderError(f"the provider refused {what}: {shown} (HTTP {status})", code)
        id_token = body.get("id_token")
        refresh_token = body.get("refresh_token")
        expires_in = body.get("expires_in")
        return TokenResponse(
            id_token if isinstance(id_token, str) else None,
            refresh_token if isinstance(refresh_token, str) else None,
            int(expires_in) if isinstance(expires_in, int | float) else None,
        )

    # --- ID tokens ---------------------------------------------------------------------------

    async def verify_id_token(
        self, token: str, *, nonce: str | None, subject: str | None = None
    ) -> dict[str, Any]:
        """The verified claims: signature (the provider's JWKS), iss, aud, exp,
        iat, azp, and the nonce of this sign-in (or, on refresh, the same sub)."""
        metadata = await self.metadata()
        assert self._keys is not None
        header = _header(token, "ID token")
        algorithm, key = await self._signing_key(header, "ID token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.config.client_id,
                issuer=metadata.issuer,
                leeway=self.config.leeway,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenInvalid("ID token expired", "expired") from error
        except jwt.InvalidAudienceError as error:
            raise TokenInvalid(
                f"ID token is not for client {self.config.client_id!r}", "audience"
            ) from error
        except jwt.InvalidIssuerError as error:
            raise TokenInvalid(f"ID token is not from {metadata.issuer}", "issuer") from error
        except jwt.InvalidSignatureError as error:
            raise TokenInvalid("ID token signature verification failed", "signature") from error
        except jwt.PyJWTError as error:
            raise _claims_invalid(error, "ID token") from error
        problem = subject_problem(claims)
        if problem is not None:
            raise TokenInvalid(f"ID token: {problem}", "subject")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp")
        if (azp is not None or len(audiences) > 1) and azp != self.config.client_id:
            raise TokenInvalid(
                f"ID token azp (authorized party) is not {self.config.client_id!r}", "azp"
            )
        if nonce is not None and not same(claims.get("nonce"), nonce):
            raise TokenInvalid(
                "ID token nonce does not match this sign-in (a replayed token?)", "nonce"
            )
        if subject is not None and claims.get("sub") != subject:
            raise TokenInvalid("refreshed ID token is for another subject", "another_subject")
        return claims

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """OpenID Connect Back-Channel Logout 1.0, 2.6: the provider's signature (its
        JWKS), iss, aud, iat (recent), exp when present, an `events` claim naming
        back-channel logout, `sub` or `sid`, a `jti`, and no `nonce` (so an ID token
        can't pass as a logout token). Replay of the jti is the caller's check."""
        metadata = await self.metadata()
        assert self._keys is not None
        if len(token) > 8192:
            raise TokenInvalid("logout token too large", "too_large")
        header = _header(token, "logout token")
        typ = header.get("typ")
        if typ is not None and str(typ).lower() not in (
            "logout+jwt",
            "application/logout+jwt",
            "jwt",
        ):
            raise TokenInvalid("logout token typ is not logout+jwt", "typ")
        algorithm, key = await self._signing_key(header, "logout token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.config.client_id,
                issuer=metadata.issuer,
                leeway=self.config.leeway,
                options={"require": ["iat", "iss", "aud", "jti"], "verify_exp": True},
            )
        except jwt.InvalidAudienceError as error:
            raise TokenInvalid(
                f"logout token is not for client {self.config.client_id!r}", "audience"
            ) from error
        except jwt.InvalidIssuerError as error:
            raise TokenInvalid(f"logout token is not from {metadata.issuer}", "issuer") from error
        except jwt.InvalidSignatureError as error:
            raise TokenInvalid("logout token signature verification failed", "signature") from error
        except jwt.PyJWTError as error:
            raise _claims_invalid(error, "logout token") from error
        _check_logout_claims(claims, self.config.leeway)
        return claims

    def logout_origin(self) -> str | None:
        """Where sign-out sends the browser (the sign-out page's CSP form-action
        must allow it: browsers check a form's redirects against it too)."""
        if self._metadata is None or self._metadata.end_session_endpoint is None:
            return None
        parts = urlsplit(self._metadata.end_session_endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        # It goes into a CSP header: a plain origin or nothing.
        return origin if _ORIGIN.fullmatch(origin) else None

    def logout_url(self, post_logout_redirect_uri: str) -> str | None:
        if self._metadata is None or self._metadata.end_session_endpoint is None:
            return None
        endpoint = self._metadata.end_session_endpoint
        params = {"client_id": self.config.client_id}
        params["post_logout_redirect_uri"] = post_logout_redirect_uri
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{urlencode(params, quote_via=quote)}"


BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_MAX_AGE = 300  # seconds; replayed jtis are remembered longer than this


def _header(token: str, what: str) -> dict[str, Any]:
    """The token's JOSE header; TokenInvalid (`malformed`) naming only the kind of
    error, as PyJWT's messages may quote the token."""
    try:
        return jwt.get_unverified_header(token)
    except (jwt.PyJWTError, UnicodeError) as error:  # PyJWT's header checks (kid, crit) too
        raise TokenInvalid(f"malformed {what} ({type(error).__name__})", "malformed") from error


def _key_fits(key: jwt.PyJWK, algorithm: str) -> bool:
    """Whether the key is of the algorithm's kind (RSA for RS*/PS*, EC for ES*, OKP
    for EdDSA): PyJWT raises outside its own errors when it is not."""
    try:
        jwt.get_algorithm_by_name(algorithm).prepare_key(key.key)
    except (jwt.PyJWTError, TypeError, ValueError):
        return False
    return True


def _claims_invalid(error: jwt.PyJWTError, what: str) -> TokenInvalid:
    """A check PyJWT failed that has no message of its own above, said in the
    gateway's words: PyJWT's messages may quote the token."""
    if isinstance(error, jwt.MissingRequiredClaimError):  # the claim is one of ours
        return TokenInvalid(f"{what} has no {error.claim!r} claim", "claims")
    if isinstance(error, jwt.ImmatureSignatureError):
        return TokenInvalid(f"{what} is not valid yet (iat or nbf in the future)", "claims")
    if isinstance(error, jwt.DecodeError):
        return TokenInvalid(f"malformed {what} ({type(error).__name__})", "malformed")
    return TokenInvalid(f"invalid {what} ({type(error).__name__})", "claims")


def _issuer_shown(issuer: object) -> str:
    """A discovery document's issuer as a message may name it: a plain http(s)
    URL is repeated (an operator needs it to fix the config), other text is not."""
    if isinstance(issuer, str) and len(issuer) <= 200 and _ISSUER_URL.fullmatch(issuer):
        return f"issuer {issuer!r}"
    return "another issuer"


_ISSUER_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?")


def _check_logout_claims(claims: dict[str, Any], leeway: float) -> None:
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise TokenInvalid(
            f"logout token has no events claim with {BACKCHANNEL_LOGOUT_EVENT}", "events"
        )
    if "nonce" in claims:
        raise TokenInvalid("logout token carries a nonce (an ID token?); refused", "nonce")
    sub, sid = claims.get("sub"), claims.get("sid")
    if not isinstance(sub, str) and not isinstance(sid, str):
        raise TokenInvalid("logout token names neither sub nor sid", "subject")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise TokenInvalid("logout token jti must be a non-empty string", "jti")
    iat = claims["iat"]
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise TokenInvalid("logout token iat is not a number", "claims")
    age = time.time() - float(iat)
    if age > LOGOUT_TOKEN_MAX_AGE + leeway:
        raise TokenInvalid(
            f"logout token issued {int(age)} s ago; at most {LOGOUT_TOKEN_MAX_AGE} s", "too_old"
        )
