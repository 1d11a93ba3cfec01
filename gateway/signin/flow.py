"""Browser sign-in: the session behind the cookie (refreshed single-flight), the
redirects to the provider for sign-in and step-up, and the gateway's own pages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiohttp
import orjson
from aiohttp import web

from gateway.config import GatewayConfig, SignInConfig
from gateway.identity import ANONYMOUS, Identity, verified_email
from gateway.policy.decision import Decision
from gateway.provider_errors import oauth_error
from gateway.screening.expect import decide_first
from gateway.shared.check import Refusal
from gateway.signin import pages
from gateway.signin.oidc import OidcClient, ProviderError, TokenInvalid, same
from gateway.signin.session import (
    CookiePolicy,
    KeyRing,
    Session,
    SessionCookies,
    SessionTooLarge,
    apply_cookie_changes,
)
from gateway.throttle import Throttle

if TYPE_CHECKING:
    from gateway.shared.state import SharedState

log = logging.getLogger("portcullis.sign_in")

PREFIX = "/.portcullis/"
HOME_PATH = PREFIX
CALLBACK_PATH = PREFIX + "callback"
SIGN_IN_PATH = PREFIX + "sign_in"
SIGN_OUT_PATH = PREFIX + "sign_out"
SIGNED_OUT_PATH = PREFIX + "signed_out"
BACKCHANNEL_LOGOUT_PATH = PREFIX + "backchannel_logout"
PRE_AUTH_TTL = 600  # a sign-in must come back within 10 minutes
# Sign-ins in flight per browser (tabs); one more drops them all. Each is a pre-auth
# cookie of up to 4 KB sent with every request (Path=/, as __Host- asks): with a
# chunked session, the Cookie header stays under limits.max_request_header_bytes,
# so sign-ins started on someone's behalf can't make every request a 431.
MAX_PENDING = 3
REFRESH_REMEMBERED = 60.0  # a finished refresh answers requests still carrying the old cookie
REFRESH_FAILURE_REMEMBERED = 5.0
SESSION: web.RequestKey[Session] = web.RequestKey("portcullis_session", Session)
_ACR = re.compile(r"^[A-Za-z0-9:._/+-]{1,128}$")
MAX_FORM_BYTES = 4096
# Gateway.refuse(request, status, rule, reason): a logged refusal (gateway/server.py).
# Where the callback keeps the step-up a failed sign-in had asked for.
_STEP_UP_ASKED: web.RequestKey[dict[str, Any] | None] = web.RequestKey(
    "portcullis_step_up_asked", dict
)
Refuse = Callable[[web.Request, int, str, str], web.Response]
# Records a sign-in in the decision log: (request, identity or None, outcome, step-up asked).
RecordSignIn = Callable[[web.Request, Identity | None, int, str, dict[str, Any] | None], None]
_NOT_PENDING = (
    "This sign-in expired, was already used, or was started in another browser. "
    "Start again from here."
)


def safe_return_to(value: str | None, host: str) -> str | None:
    """A path on this gateway to send the browser back to, or None.

    Only a local path (or an absolute URL naming this very host) passes; never
    `//evil.example`, `/\\evil.example`, `https://evil.example`, nor any of
    them percent-encoded (some servers and browsers decode before they resolve).
    """
    if not value or len(value) > 4096:
        return None
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c == "\\" for c in value):
        return None
    decoded = value
    for _ in range(3):
        decoded = unquote(decoded)
        if "\\" in decoded or decoded.startswith("//") or any(ord(c) < 0x20 for c in decoded):
            return None
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. "http://[": no URL at all
        return None
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return None
        if parts.username or parts.password:
            return None
        value = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not value.startswith("/") or value.startswith("//"):
        return None
    if value.startswith(PREFIX):
        return None  # back to a sign-in endpoint would be a loop
    return value


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _redirect(location: str, status: int = 302) -> web.Response:
    headers = {"Location": location, "Cache-Control": "no-store"}
    return web.Response(status=status, headers=headers)


def _step_up(value: Any) -> dict[str, Any]:
    acr = value.get("acr") if isinstance(value, dict) else None
    max_age = value.get("max_age") if isinstance(value, dict) else None
    return {
        "acr": acr if isinstance(acr, str) and _ACR.match(acr) else None,
        "max_age": max_age if isinstance(max_age, int) and not isinstance(max_age, bool) else None,
    }


class BrowserSignIn:
    """Browsers sign in through the configured OpenID provider; the session then
    lives only in an encrypted cookie, so any replica can serve it."""

    def __init__(
        self,
        config: GatewayConfig,
        refuse: Refuse,
        *,
        shared: SharedState | None = None,
        record: RecordSignIn | None = None,
    ) -> None:
        assert config.sign_in is not None
        self.refuse = refuse
        self.record = record
        # With shared state, sign-out revokes the session on every replica, a
        # refresh is single-flight across replicas, and back-channel logout works.
        self.shared = shared
        self.config: SignInConfig = config.sign_in
        session = config.session
        self.lifetime = session.lifetime
        self.margin = session.refresh_margin
        self.cookies = SessionCookies(
            KeyRing.from_files(session.key_files),
            CookiePolicy(session.cookie_name, session.secure, session.lifetime),
        )
        self._client: OidcClient | None = None
        self._catalogue: Callable[[], dict[str, Any]] = dict
        self._refreshing: dict[str, asyncio.Task[Session | None]] = {}
        self._refreshed: OrderedDict[str, tuple[float, Session | None]] = OrderedDict()
        # Anyone can POST a sign-out: each refusal is a decision-log event, and
        # the server log says one a minute, not one per request an attacker sends.
        self._said_sign_out_refused = Throttle(60.0)

    @property
    def client(self) -> OidcClient:
        assert self._client is not None, "BrowserSignIn.start() not called"
        return self._client

    def start(
        self, http: aiohttp.ClientSession, catalogue: Callable[[], dict[str, Any]]
    ) -> asyncio.Task[None]:
        """Bind to the gateway's HTTP client; returns the discovery prefetch task."""
        self._client = OidcClient(self.config, http)
        self._catalogue = catalogue

        async def prefetch() -> None:
            try:
                await self.client.metadata()
            except ProviderError as error:
                log.warning("sign-in provider discovery failed (retried on use): %s", error)

        return asyncio.ensure_future(prefetch())

    def add_routes(self, app: web.Application) -> None:
        # Expect is answered once the request passed the gateway's checks (OwnPages).
        app.router.add_get(CALLBACK_PATH, self.callback, expect_handler=decide_first)
        app.router.add_get(SIGN_IN_PATH, self.sign_in, expect_handler=decide_first)
        app.router.add_route("*", SIGN_OUT_PATH, self.sign_out, expect_handler=decide_first)
        app.router.add_get(SIGNED_OUT_PATH, self.signed_out, expect_handler=decide_first)
        app.router.add_get(HOME_PATH, self.home, expect_handler=decide_first)
        if self.shared is not None:
            from gateway.signin.backchannel import BackChannelLogout

            logout = BackChannelLogout(self.config, lambda: self.client, self.shared, self.lifetime)
            app.router.add_post(BACKCHANNEL_LOGOUT_PATH, logout.handle, expect_handler=decide_first)
        app.on_response_prepare.append(apply_cookie_changes)

    def owns_cookie(self, name: str) -> bool:
        return self.cookies.owns(name)

    # --- who is this browser ------------------------------------------------------------

    async def identity(self, request: web.Request) -> Identity:
        """The session's identity, refreshed when its ID token is about to expire;
        ANONYMOUS for no cookie, a tampered or undecryptable one, or an ended session
        (which is then cleared, so the browser simply signs in again)."""
        try:
            return await self._identity(request)
        except Exception:
            # Fail closed and stay on the decision path: an unexpected error with a
            # session is no session (the request is judged, and logged, as anonymous).
            log.exception("session could not be read; treating the browser as signed out")
            self.cookies.clear(request)
            return ANONYMOUS

    async def _identity(self, request: web.Request) -> Identity:
        session = self.cookies.load(request)
        if session is None:
            if self.cookies.name in self.cookies.sent(request).names():  # tampered, old key
                self.cookies.clear(request)
            return ANONYMOUS
        now = time.time()
        if now >= session.created_at + self.lifetime or session.issuer != self.config.issuer:
            self.cookies.clear(request)
            return ANONYMOUS
        if self.shared is not None and not session.session_id:
            # A cookie from before shared state has no id sign-out could revoke.
            self.cookies.clear(request)
            return ANONYMOUS
        if now >= session.expires_at - self.margin:
            refreshed = await self._refresh(session) if session.refresh_token else None
            if refreshed is not None:
                session = refreshed
                self._save(request, session)
            elif now >= session.expires_at:
                self.cookies.clear(request)
                return ANONYMOUS
        request[SESSION] = session
        return session.identity(self.lifetime)

    async def _refresh(self, session: Session) -> Session | None:
        """Single-flight per refresh token: concurrent requests share one call, and
        requests still carrying the old cookie just after get the same result, so a
        rotated refresh token is never presented twice (the provider would take a
        second use as theft and revoke the whole grant)."""
        assert session.refresh_token is not None
        key = hashlib.sha256(session.refresh_token.encode()).hexdigest()
        now = time.monotonic()
        remembered = self._refreshed.get(key)
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        task = self._refreshing.get(key)
        if task is None:
            task = asyncio.ensure_future(self._refresh_once(session))
            self._refreshing[key] = task

            def done(finished: asyncio.Task[Session | None]) -> None:
                self._refreshing.pop(key, None)
                result = None if finished.cancelled() or finished.exception() else finished.result()
                keep = REFRESH_REMEMBERED if result is not None else REFRESH_FAILURE_REMEMBERED
                self._refreshed[key] = (time.monotonic() + keep, result)
                while len(self._refreshed) > 10_000:
                    self._refreshed.popitem(last=False)

            task.add_done_callback(done)
        return await asyncio.shield(task)

    async def _refresh_once(self, session: Session) -> Session | None:
        if self.shared is None:
            return await self._refresh_at_provider(session)
        from gateway.shared.refresh import single_flight

        assert session.refresh_token is not None
        keys = self.shared.keys
        revoked = [keys.session_revoked(session.session_id)]
        if session.provider_sid:
            revoked.append(keys.provider_session_revoked(session.issuer, session.provider_sid))

        async def refresh() -> str | None:
            fresh = await self._refresh_at_provider(session)
            return None if fresh is None else self.cookies.keys.seal("refreshed", fresh.to_bytes())

        token_hash = hashlib.sha256(session.refresh_token.encode()).hexdigest()
        sealed = await single_flight(self.shared.store, token_hash, revoked, refresh)
        opened = None if sealed is None else self.cookies.keys.open("refreshed", sealed)
        fresh = None if opened is None else Session.from_bytes(opened)
        if fresh is None or fresh.session_id != session.session_id:
            return None
        return fresh

    async def _refresh_at_provider(self, session: Session) -> Session | None:
        assert session.refresh_token is not None
        try:
            tokens = await self.client.refresh(session.refresh_token)
            refresh_token = tokens.refresh_token or session.refresh_token
            if tokens.id_token is None:
                lifetime = tokens.expires_in or 300
                # No new ID token: the provider vouched for the session until
                # the new access token expires; the verified claims stay as they were.
                return replace(
                    session, expires_at=int(time.time()) + lifetime, refresh_token=refresh_token
                )
            claims = await self.client.verify_id_token(
                tokens.id_token, nonce=None, subject=session.subject
            )
        except (ProviderError, TokenInvalid) as error:
            log.warning("session refresh for %s failed: %s", session.subject, error)
            return None
        return self._session_from(
            claims, refresh_token, session.created_at, session.step_up, session.session_id,
            session.provider_sid,
        )  # fmt: skip

    def _session_from(
        self,
        claims: dict[str, Any],
        refresh_token: str | None,
        created_at: int,
        step_up: dict[str, Any] | None,
        session_id: str,
        provider_sid: str | None = None,
    ) -> Session:
        raw_groups = claims.get(self.config.groups_claim)
        groups = (
            [g for g in raw_groups if isinstance(g, str)] if isinstance(raw_groups, list) else []
        )
        known = self._known_groups()
        if known:  # only what policies can use: keeps the cookie small
            groups = [g for g in groups if g in known]
        raw_amr = claims.get("amr")
        auth_time = claims.get("auth_time")
        return Session(
            subject=str(claims["sub"]),
            issuer=self.config.issuer,
            expires_at=int(claims["exp"]),
            created_at=created_at,
            email=verified_email(claims),
            groups=tuple(groups),
            amr=tuple(m for m in raw_amr if isinstance(m, str))
            if isinstance(raw_amr, list)
            else (),
            acr=claims["acr"] if isinstance(claims.get("acr"), str) else None,
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
            refresh_token=refresh_token,
            step_up=step_up,
            session_id=session_id,
            # OIDC back-channel logout names the provider's session by this `sid`.
            provider_sid=claims["sid"] if isinstance(claims.get("sid"), str) else provider_sid,
        )

    def _known_groups(self) -> set[str]:
        groups: set[str] = set()
        for app in self._catalogue().values():
            if not isinstance(app, dict):
                continue
            groups.update(g for g in app.get("groups") or () if isinstance(g, str))
            for override in app.get("paths") or ():
                if isinstance(override, dict):
                    groups.update(g for g in override.get("groups") or () if isinstance(g, str))
        return groups

    def _save(self, request: web.Request, session: Session) -> None:
        try:
            self.cookies.save(request, session)
        except SessionTooLarge as error:
            log.error("session for %s not saved: %s", session.subject, error)

    # --- a browser the policy said no to ---------------------------------------------------

    def wants_page(self, request: web.Request, identity: Identity) -> bool:
        """Browsers get redirects and pages; APIs and bearer clients keep JSON."""
        return identity.method != "bearer" and wants_html(request)

    async def denied(
        self, request: web.Request, decision: Decision, identity: Identity, return_to: str
    ) -> web.Response:
        target = safe_return_to(return_to, request.host) or HOME_PATH
        navigation = request.method in ("GET", "HEAD")
        if not identity.authenticated:
            if navigation:
                return await self._start(request, target, None)
            return pages.sign_in_needed(f"{SIGN_IN_PATH}?rd={quote(target, safe='')}")
        session = request.get(SESSION)
        if decision.step_up is not None and session is not None:
            asked = _step_up(decision.step_up)
            retry = self._sign_in_url(target, asked)
            if self._tried(session, asked):
                return pages.step_up_unmet(
                    reasons=decision.reasons,
                    decision_id=decision.decision_id,
                    asked=asked,
                    identity=identity,
                    retry_url=retry,
                    sign_out_url=SIGN_OUT_PATH,
                )
            if navigation:
                return await self._start(request, target, asked)
            step_up_url: str | None = retry
        else:
            step_up_url = None
        return pages.denied(
            status=decision.http_status,
            reasons=decision.reasons,
            decision_id=decision.decision_id,
            identity=identity,
            step_up_url=step_up_url,
            sign_out_url=SIGN_OUT_PATH,
        )

    @staticmethod
    def _tried(session: Session, asked: dict[str, Any]) -> bool:
        """Whether this very step-up was just tried: then one more redirect would
        only loop. The window is shorter than max_age, so a step-up that worked and
        later aged out is asked for again."""
        last = session.step_up
        if not last or last.get("acr") != asked["acr"] or last.get("max_age") != asked["max_age"]:
            return False
        max_age = asked["max_age"]
        window = 300 if max_age is None else max(30, min(300, max_age))
        at = last.get("at")
        return isinstance(at, int | float) and time.time() - at < window

    @staticmethod
    def _sign_in_url(target: str, asked: dict[str, Any] | None) -> str:
        url = f"{SIGN_IN_PATH}?rd={quote(target, safe='')}"
        if asked is not None:
            if asked["acr"] is not None:
                url += f"&acr={quote(asked['acr'], safe='')}"
            if asked["max_age"] is not None:
                url += f"&max_age={asked['max_age']}"
        return url

    def _base_url(self, request: web.Request) -> str:
        return self.config.external_url or f"{request.scheme}://{request.host}"

    async def _start(
        self, request: web.Request, return_to: str, step_up: dict[str, Any] | None
    ) -> web.Response:
        """Send the browser to the provider, remembering this sign-in in its own
        short-lived cookie (so several tabs can sign in at once)."""
        redirect_uri = self._base_url(request) + CALLBACK_PATH
        try:
            auth = await self.client.authorization_request(
                redirect_uri,
                acr=step_up["acr"] if step_up else None,
                max_age=step_up["max_age"] if step_up else None,
            )
        except ProviderError as error:
            return pages.sign_in_failed(
                f"The sign-in provider can't be used right now: {error}. Try again in a minute.",
                self._sign_in_url(return_to, step_up),
                502,
            )
        pending = self.cookies.pending_names(request)
        if len(pending) >= MAX_PENDING:
            self.cookies.drop_pending(request, pending)
        # A browser ignores a cookie past 4 KB, and the callback then finds no sign-in
        # in flight: a link with a query of a few KB failed every sign-in, logged as
        # a forged state. Its query gives way, then its path, until the cookie fits
        # (home always does: the redirect_uri's host is at most 260 characters).
        path = return_to.partition("?")[0]
        for target in dict.fromkeys((return_to, path, HOME_PATH)):
            data = {
                "state": auth.state,
                "nonce": auth.nonce,
                "verifier": auth.code_verifier,
                "redirect_uri": redirect_uri,
                "return_to": target,
                "step_up": step_up,
                "created": int(time.time()),
            }
            if self.cookies.save_pending(request, auth.state, data, PRE_AUTH_TTL):
                break
        return _redirect(auth.url)

    # --- the gateway's endpoints ------------------------------------------------------------

    async def sign_in(self, request: web.Request) -> web.Response:
        target = safe_return_to(request.query.get("rd"), request.host) or HOME_PATH
        step_up = None
        if "acr" in request.query or "max_age" in request.query:
            max_age = request.query.get("max_age", "")
            # ASCII digits only: '²'.isdigit() is True and int('²') raises.
            if max_age and not (max_age.isascii() and max_age.isdigit() and len(max_age) < 9):
                return pages.sign_in_failed(
                    "max_age must be a whole number of seconds (ASCII digits, at most 8).",
                    SIGN_IN_PATH,
                )
            step_up = _step_up(
                {"acr": request.query.get("acr"), "max_age": int(max_age) if max_age else None}
            )
        return await self._start(request, target, step_up)

    async def callback(self, request: web.Request) -> web.Response:
        """The provider's answer; every outcome is a sign-in event in the decision log
        (OCSF Authentication for the SIEM), a failure with the page's status and
        which check failed (README "Browser sign-in and step-up" lists the words)."""
        response, failed = await self._callback(request)
        if self.record is not None and failed is not None:
            step_up = request.get(_STEP_UP_ASKED)
            self.record(request, None, response.status, f"sign-in failed: {failed}", step_up)
        return response

    async def _callback(self, request: web.Request) -> tuple[web.Response, str | None]:
        """The answer to the browser, and which check failed (None: signed in).

        Nothing the provider wrote reaches the page, the server log or the event
        as it was written: its error_description, or the text of any answer, can
        repeat the state, code or secrets of this sign-in."""
        query = request.query
        state = query.get("state")
        start_again = SIGN_IN_PATH
        if not state:
            return pages.sign_in_failed(
                "The answer from the sign-in provider has no state, so it can't be matched "
                "to a sign-in this browser started.",
                start_again,
            ), "no_state"
        pending = self.cookies.load_pending(request, state)
        self.cookies.drop_pending(request, [self.cookies.pre_auth_name(state)])
        if pending is None or not same(pending.get("state"), state):
            # Forged, replayed, or the answer to another browser's sign-in.
            return pages.sign_in_failed(_NOT_PENDING, start_again), "state_mismatch"
        created = pending.get("created")
        if not isinstance(created, int) or time.time() - created > PRE_AUTH_TTL:
            return pages.sign_in_failed(_NOT_PENDING, start_again), "state_expired"
        return_to = safe_return_to(pending.get("return_to"), request.host) or HOME_PATH
        step_up = pending.get("step_up")
        step_up = _step_up(step_up) if step_up is not None else None
        request[_STEP_UP_ASKED] = step_up
        start_again = self._sign_in_url(return_to, step_up)
        issuer = query.get("iss")
        try:
            metadata = await self.client.metadata()
        except ProviderError as error:
            return pages.sign_in_failed(str(error), start_again, 502), "provider_unavailable"
        if issuer is None and metadata.iss_parameter_supported:
            # RFC 9207: the provider names itself in every answer; this one doesn't.
            return pages.sign_in_failed(
                f"The answer does not name the provider it came from, and {metadata.issuer} "
                "always does (another provider's answer?).",
                start_again,
            ), "iss_missing"
        if issuer is not None and issuer != metadata.issuer:
            # RFC 9207: an answer from another provider (mix-up attack). What it
            # names is not repeated: the page would show whatever it says.
            return pages.sign_in_failed(
                f"The answer is not from {metadata.issuer}: it names another provider.",
                start_again,
            ), "iss_mismatch"
        secrets_sent = (state, pending.get("nonce"), pending.get("verifier"))
        if "error" in query:
            # The error code alone: error_description is the provider's (or, with
            # this browser's state, anyone's) text, and may repeat what it was sent.
            said = oauth_error(query["error"], [str(s) for s in secrets_sent if s])
            if step_up is not None:
                identity = await self.identity(request)
                return pages.step_up_unmet(
                    reasons=[],
                    decision_id="-",
                    asked=step_up,
                    identity=identity,
                    retry_url=start_again,
                    sign_out_url=SIGN_OUT_PATH,
                    provider_said=said,
                ), f"provider_error:{said}"
            return pages.sign_in_failed(
                f"The sign-in provider did not sign you in: {pages.provider_error(said)}.",
                start_again,
                401,
            ), f"provider_error:{said}"
        code = query.get("code")
        if not code:
            return pages.sign_in_failed(
                "The provider's answer has no code.", start_again
            ), "no_code"
        try:
            tokens = await self.client.exchange_code(
                code, str(pending["verifier"]), str(pending["redirect_uri"])
            )
        except ProviderError as error:
            log.warning("sign-in failed at the token endpoint: %s", error)
            return pages.sign_in_failed(
                f"Sign-in failed: {error}.", start_again, 502
            ), f"code_exchange_failed:{error.cause}"
        if tokens.id_token is None:
            log.warning("sign-in failed: the token endpoint's answer has no ID token")
            return pages.sign_in_failed(
                "Sign-in failed: the provider sent no ID token (is 'openid' in the scopes?).",
                start_again,
                502,
            ), "no_id_token"
        try:
            claims = await self.client.verify_id_token(tokens.id_token, nonce=str(pending["nonce"]))
        except ProviderError as error:  # its metadata(): cached by now, so in practice never
            log.warning("sign-in failed, the ID token can't be checked: %s", error)
            return pages.sign_in_failed(
                f"Sign-in failed: {error}.", start_again, 502
            ), "provider_unavailable"
        except TokenInvalid as error:
            log.warning("sign-in refused, ID token failed a check: %s", error)
            return pages.sign_in_failed(
                f"The provider's answer failed a security check: {error}.", start_again
            ), f"id_token_invalid:{error.check}"
        if step_up is not None and step_up["max_age"] is not None and "auth_time" not in claims:
            return pages.sign_in_failed(
                "The provider did not say when you signed in (no auth_time), "
                "so a recent sign-in can't be proven.",
                start_again,
            ), "no_auth_time"
        now = int(time.time())
        marker = {**step_up, "at": now} if step_up is not None else None
        session = self._session_from(
            claims, tokens.refresh_token, now, marker, secrets.token_urlsafe(18)
        )
        await self._revoke_replaced(request, session)
        self._save(request, session)
        if self.record is not None:
            what = "signed in with step-up" if step_up else "signed in"
            self.record(request, session.identity(self.lifetime), 200, what, step_up)
        log.info(
            "signed in %s (amr %s, acr %s)%s",
            session.subject,
            ",".join(session.amr),
            session.acr,
            f" for step-up {step_up}" if step_up else "",
        )
        return _redirect(return_to), None

    async def sign_out(self, request: web.Request) -> web.Response:
        """GET shows a page whose button POSTs here; only that POST signs out.

        A GET (a link, an <img>, a top-level navigation from any site) must not
        end a session (OWASP). The POST needs the page's token, sealed for this
        very session, and a browser that says the request is cross-site (Origin,
        Sec-Fetch-Site) is refused even with one."""
        if request.method in ("GET", "HEAD"):
            return await self._sign_out_page(request)
        if request.method != "POST":
            return self.refuse(request, 405, "method_not_allowed", "sign-out is GET or POST")
        why_not = self._cross_site(request) or await self._bad_sign_out_token(request)
        if why_not is not None:
            if self._said_sign_out_refused.due():
                log.warning("sign-out refused: %s (said once a minute; each is a decision-log "
                            "event)", why_not)  # fmt: skip
            return self.refuse(request, 403, "sign_out_refused", why_not)
        return await self._sign_out(request)

    async def _sign_out_page(self, request: web.Request) -> web.Response:
        token = self.cookies.keys.seal("sign-out", self._session_mark(request))
        with contextlib.suppress(ProviderError):
            await self.client.metadata()  # to name its sign-out origin in the page's CSP
        return pages.sign_out(SIGN_OUT_PATH, token, self.client.logout_origin())

    def _session_mark(self, request: web.Request) -> bytes:
        """What the sign-out token is bound to: this browser's session, or none."""
        session = self.cookies.load(request)
        if session is None:
            return b"-"
        return f"{session.issuer}\n{session.subject}\n{session.created_at}".encode()

    def _cross_site(self, request: web.Request) -> str | None:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site != "same-origin":
            return f"sign-out must come from the gateway's own page (Sec-Fetch-Site: {site})"
        origin = request.headers.get("Origin")
        if origin is not None and origin != self._base_url(request):
            return f"sign-out must come from the gateway's own page (Origin: {origin[:100]})"
        return None

    async def _bad_sign_out_token(self, request: web.Request) -> str | None:
        length = request.content_length
        if length is None or length > MAX_FORM_BYTES:
            return "sign-out form missing or too large"
        form = parse_qs((await request.read()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if self.cookies.keys.open("sign-out", token) != self._session_mark(request):
            return "sign-out token missing or not for this session (reload the sign-out page)"
        return None

    async def _sign_out(self, request: web.Request) -> web.Response:
        await self._revoke(self.cookies.load(request), "signed out")
        self.cookies.clear(request)
        self.cookies.drop_pending(request, self.cookies.pending_names(request))
        done = self._base_url(request) + SIGNED_OUT_PATH
        try:
            await self.client.metadata()
        except ProviderError:
            return _redirect(SIGNED_OUT_PATH, 303)
        return _redirect(self.client.logout_url(done) or SIGNED_OUT_PATH, 303)

    async def _revoke(self, session: Session | None, reason: str) -> None:
        """End the session on every replica: a copy of its cookie is refused too."""
        if self.shared is None or session is None or not session.session_id:
            return
        ttl = session.created_at + self.lifetime - int(time.time()) + 60
        if ttl > 0:
            await self.shared.revoke_session(
                session.session_id, session.issuer, session.subject, reason, ttl
            )

    async def _revoke_replaced(self, request: web.Request, session: Session) -> None:
        """A new sign-in in this browser (a step-up, another user) ends the session
        its cookie held, so a copy of the old cookie can't outlive it."""
        old = self.cookies.load(request)
        if old is not None and old.session_id != session.session_id:
            await self._revoke(old, "replaced by a new sign-in")

    def refused(
        self, request: web.Request, response: web.Response, refusal: Refusal, identity: Identity
    ) -> web.Response:
        """A refusal on the shared state: a revoked session's cookie is cleared, and
        a browser gets a page that says what happened (the JSON otherwise)."""
        ended = refusal.rule in ("session_revoked", "revoked")
        if ended and identity.method == "session":
            self.cookies.clear(request)
        if not self.wants_page(request, identity):
            return response
        titles = {
            "session_revoked": "Your session has ended",
            "revoked": "Your session has ended",
            "locked_out": "Your account is locked",
            "rate_limited": "Too many requests",
            "shared_state_unavailable": "Try again in a moment",
        }
        body = response.body if isinstance(response.body, bytes) else b"{}"
        decision_id = str(orjson.loads(body).get("decision_id", "-"))
        page = pages.refused(
            status=refusal.status,
            title=titles.get(refusal.rule, "Refused"),
            reason=refusal.reason,
            decision_id=decision_id,
            sign_in_url=SIGN_IN_PATH if ended else None,
        )
        if refusal.retry_after:
            page.headers["Retry-After"] = str(refusal.retry_after)
        return page

    async def signed_out(self, request: web.Request) -> web.Response:
        return pages.signed_out(SIGN_IN_PATH)

    async def home(self, request: web.Request) -> web.Response:
        identity = await self.identity(request)
        if not identity.authenticated and request.method == "GET":
            return await self._start(request, HOME_PATH, None)
        apps = [
            (name, str(app.get("title", name)), str(app.get("path_prefix", "")))
            for name, app in sorted(self._catalogue().items())
            if isinstance(app, dict)
        ]
        return pages.home(identity, apps, SIGN_OUT_PATH)
