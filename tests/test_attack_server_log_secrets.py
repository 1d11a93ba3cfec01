"""An outside attacker's review of what reaches the gateway's own server log (Python
logging: stderr, the cluster's log store, readable by many) and the decision log
beside it, for the credentials a client or the identity provider sends:

1. no bearer token (valid, expired, malformed, badly signed), session cookie, OIDC
   `code`, `state`, ID token, refresh token, client secret, nor an IdP's echo of
   one, reaches either log: not through exception messages, refusal reasons built
   from untrusted input, aiohttp parser messages quoting header lines, URLs with
   their query strings;
2. sign-in and step-up events hold no token, code or secret, and a failed sign-in
   is logged with its reason (which check failed) but without those values.

Three kinds of stack: the real dev OpenID provider (tests/sign_in_stack.py); a
stub provider written here, whose token endpoint answers what a test says (an
IdP that echoes what it was sent); and the gateway under GatewayRunner, so the
requests aiohttp's parser refuses are logged too. The server log is captured
from every `portcullis*` logger and aiohttp's error loggers at DEBUG, tracebacks
included (aiohttp.access is left out: production runs with access_log=None).

The review's defects are fixed; each test here now checks what held or was fixed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.audit.chain import REDACTED
from gateway.config import SessionConfig, SignInConfig
from gateway.signin.oidc import OidcClient
from gateway.signin.session import Session
from tests.gateway_stack import ServerFactory, Stack, start_stack
from tests.sign_in_stack import (
    CLIENT_SECRET,
    COOKIE,
    SCOPES,
    Browser,
    DevProvider,
    browser,
    provider,
    session_key,
    start_sign_in_stack,
)
from tests.test_attack_redaction_shipping import attack, head
from tests.test_gateway_limits import closed_after, limited_stack, open_raw
from tests.test_sign_in import code_for, put_session, session_of, sign_out_form, start

__all__ = ["provider"]

LOGGERS = ("portcullis", "aiohttp.server", "aiohttp.web", "aiohttp.internal", "aiohttp.client")


# --- the server log ------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # What a log store keeps: the formatted message and any traceback.
        self.lines.append(self.format(record))


@dataclass
class ServerLog:
    handler: _Collect = field(default_factory=_Collect)

    @property
    def text(self) -> str:
        return "\n".join(self.handler.lines)

    def holding(self, secret: str) -> list[str]:
        return [line for line in self.handler.lines if secret in line]


@contextlib.contextmanager
def server_log() -> Iterator[ServerLog]:
    """Everything the gateway's loggers say, at DEBUG and up, while the block runs."""
    captured = ServerLog()
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(captured.handler)
    try:
        yield captured
    finally:
        for logger, level in saved:
            logger.removeHandler(captured.handler)
            logger.setLevel(level)


def decision_log_text(stack: Stack) -> str:
    return stack.log_path.read_text() if stack.log_path.exists() else ""


def where(text: str, secret: str) -> list[str]:
    """JSON pointers of the decision-log values holding ``secret``."""
    found: list[str] = []

    def walk(value: Any, at: str) -> None:
        if isinstance(value, str):
            if secret in value:
                found.append(at or "/")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and secret in key:
                    found.append(f"{at}/{key} (key)")
                walk(item, f"{at}/{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{at}/{index}")

    for line in text.splitlines():
        if secret in line:
            walk(json.loads(line), "")
    return found


def leaks(stack: Stack, log: ServerLog, secrets: dict[str, str]) -> dict[str, Any]:
    """Per secret (by name), where it turned up: server-log lines, decision-log pointers."""
    text = decision_log_text(stack)
    out: dict[str, Any] = {}
    for name, secret in secrets.items():
        if not secret:
            continue
        places: dict[str, Any] = {}
        if lines := log.holding(secret):
            places["server_log"] = [line[:300] for line in lines]
        if pointers := where(text, secret):
            places["decision_log"] = pointers
        if places:
            out[name] = places
    return out


async def sign_in_events(stack: Stack, at_least: int = 1) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        events = [e for e in await stack.events() if e.get("path") == "gateway/signin"]
        if len(events) >= at_least or asyncio.get_running_loop().time() > deadline:
            return events
        await asyncio.sleep(0.05)


# --- the real dev provider ---------------------------------------------------------------------


@pytest.fixture
async def real(
    aiohttp_server: ServerFactory, tmp_path: Path, provider: DevProvider
) -> AsyncIterator[Stack]:
    async with start_sign_in_stack(aiohttp_server, tmp_path, provider) as running:
        yield running


@pytest.fixture
async def client(real: Stack) -> AsyncIterator[Browser]:
    async with browser(real.url) as running:
        yield running


@pytest.fixture
def id_tokens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ID token the provider sent the gateway (to search the logs for it)."""
    seen: list[str] = []
    verify = OidcClient.verify_id_token

    async def recording(self: OidcClient, token: str, **kwargs: Any) -> dict[str, Any]:
        seen.append(token)
        return await verify(self, token, **kwargs)

    monkeypatch.setattr(OidcClient, "verify_id_token", recording)
    return seen


async def test_a_sign_in_refresh_and_sign_out_leave_no_code_token_cookie_or_secret_in_either_log(
    real: Stack, client: Browser, id_tokens: list[str]
) -> None:
    """The whole journey against the real provider: sign-in (code, ID token,
    refresh token, client secret on the back channel), requests with the session
    cookie, a refresh (a new ID token and a rotated refresh token), sign-out. None
    of the values reaches the server log or the decision log (`state` has a test
    of its own, below)."""
    with server_log() as log:
        login, _ = await start(client, real.url + "/wms/")
        answer = await code_for(client, login)
        async with client.http.get(
            real.url + "/.portcullis/callback?" + urlencode(answer), allow_redirects=False
        ) as back:
            assert back.status == 302
        assert (await client.go(real.url + "/wms/stock")).status == 200
        first = session_of(real, client)
        cookie = client.cookie(COOKIE, real.url) or ""
        put_session(real, client, replace(first, expires_at=int(time.time()) - 5))
        assert (await client.go(real.url + "/wms/stock")).status == 200
        second = session_of(real, client)
        assert second.refresh_token != first.refresh_token
        form = sign_out_form(await client.go(real.url + "/.portcullis/sign_out"))
        # A cross-site POST first (refused, logged), then the page's own.
        async with client.http.post(
            real.url + "/.portcullis/sign_out",
            data=form,
            allow_redirects=False,
            headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        ) as refused:
            assert refused.status == 403
        async with client.http.post(
            real.url + "/.portcullis/sign_out",
            data=form,
            allow_redirects=False,
            headers={"Sec-Fetch-Site": "same-origin", "Origin": real.url},
        ) as out:
            assert out.status == 303
        await real.events(at_least=4)
    secrets = {
        "code": answer["code"],
        "session cookie": cookie,
        "refresh token": first.refresh_token or "",
        "rotated refresh token": second.refresh_token or "",
        "client secret": CLIENT_SECRET,
        **{f"ID token {i} signature": t.rsplit(".", 1)[1] for i, t in enumerate(id_tokens)},
    }
    secrets["sign-out token"] = form["token"]
    assert len(id_tokens) == 2
    assert leaks(real, log, secrets) == {}


async def test_the_callbacks_state_never_reaches_either_log(real: Stack, client: Browser) -> None:
    """The callback's `state` is a value that must never be logged (on a failed
    sign-in it names the pending pre-auth cookie too), and the redactor's
    mask_query_params masks `code` but not `state`. A sign-in event's path
    (record_sign_in -> sign_in_input) names the callback's parameters with every
    value masked, `/.portcullis/callback?code=**REDACTED**&state=**REDACTED**&...`,
    so neither the decision log nor the server log holds the state."""
    with server_log() as log:
        login, _ = await start(client, real.url + "/wms/")
        answer = await code_for(client, login)
        async with client.http.get(
            real.url + "/.portcullis/callback?" + urlencode(answer), allow_redirects=False
        ) as back:
            assert back.status == 302
        (event,) = await sign_in_events(real)
    assert event["result"]["reasons"] == ["gateway.sign_in: signed in"]
    assert leaks(real, log, {"state": answer["state"]}) == {}
    path = event["input"]["attributes"]["request"]["http"]["path"]
    assert path == (f"/.portcullis/callback?code={REDACTED}&state={REDACTED}&iss={REDACTED}"), path


# A failed sign-in, each way the brief names; each returns (the values that must
# not be logged, a word the event's reason must hold to say which check failed).
Failure = Callable[[Stack, Browser], Any]


async def _bad_state(stack: Stack, client: Browser) -> tuple[dict[str, str], str]:
    login, _ = await start(client, stack.url + "/wms/")
    answer = await code_for(client, login)
    forged = {**answer, "state": answer["state"][:-4] + "ABCD"}
    page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(forged))
    assert page.status == 400
    return {"code": answer["code"], "state": forged["state"]}, "state"


async def _replayed_code(stack: Stack, client: Browser) -> tuple[dict[str, str], str]:
    login, _ = await start(client, stack.url + "/wms/")
    answer = await code_for(client, login)
    pre_auth = {c.key: c.value for c in client.jar if c.key.startswith(f"{COOKIE}_auth_")}
    callback = stack.url + "/.portcullis/callback?" + urlencode(answer)
    async with client.http.get(callback, allow_redirects=False) as first:
        assert first.status == 302
    # The same answer again, with its pre-auth cookie put back: the provider
    # refuses the used code at the exchange.
    from yarl import URL

    client.jar.update_cookies(pre_auth, URL(stack.url))
    page = await client.go(callback)
    assert page.status == 502, page.text
    return {"code": answer["code"], "state": answer["state"]}, "code"


async def _idp_error(stack: Stack, client: Browser) -> tuple[dict[str, str], str]:
    """The provider's error answer, with an error_description echoing a value it
    was sent (here the sign-in's own code_challenge-like opaque string)."""
    _, params = await start(client, stack.url + "/wms/")
    echoed = "SECRETechoedByTheIdp0123456789"
    answer = {
        "error": "invalid_request",
        "error_description": f"login_hint {echoed} is not valid",
        "state": params["state"],
        "iss": stack.config.sign_in.issuer,  # type: ignore[union-attr]
    }
    page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(answer))
    assert page.status == 401
    return {"state": params["state"], "echoed value": echoed}, "invalid_request"


async def _nonce_mismatch(stack: Stack, client: Browser) -> tuple[dict[str, str], str]:
    _, params = await start(client, stack.url + "/wms/")
    nonce = "attacker-nonce-SECRET-0123456789"
    async with browser(stack.url) as attacker:
        login = await attacker.go(
            stack.config.sign_in.issuer + "/auth?" + urlencode({**params, "nonce": nonce})  # type: ignore[union-attr]
        )
        answer = await code_for(attacker, login, "mallory")
    page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(answer))
    assert page.status == 400 and "nonce does not match" in page.text
    return {"code": answer["code"], "state": answer["state"], "nonce": nonce}, "nonce"


FAILURES = {
    "bad-state": _bad_state,
    "replayed-code": _replayed_code,
    "idp-error": _idp_error,
    "nonce-mismatch": _nonce_mismatch,
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
async def test_a_failed_sign_in_event_says_which_check_failed(
    real: Stack, client: Browser, failure: Failure
) -> None:
    """A SIEM must tell a forged or replayed state, a replayed code, an IdP error
    and a nonce mismatch (a code injection) apart, not see one `sign-in failed`
    for all. BrowserSignIn.callback records each failure with the check that
    failed, from a fixed vocabulary (`sign-in failed: state_mismatch`,
    `code_exchange_failed:invalid_grant`, `provider_error:invalid_request`,
    `id_token_invalid:nonce`), never with text from the request or the provider."""
    _, word = await failure(real, client)
    # A replayed code signs in once first: wait for both events, not the first only.
    events = await sign_in_events(real, at_least=2 if failure is _replayed_code else 1)
    failed = [e for e in events if not e["result"]["allow"]]
    assert len(failed) == 1, events
    (reason,) = failed[0]["result"]["reasons"]
    assert reason.startswith("gateway.sign_in: ")
    assert word in reason, reason


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
async def test_a_failed_sign_in_logs_no_code_state_nonce_or_echoed_value(
    real: Stack, client: Browser, failure: Failure
) -> None:
    """A failed sign-in (forged state, replayed code, IdP error whose
    error_description echoes a value, another sign-in's nonce) is logged without
    the code, the state, the nonce or the echoed value: the event's path holds the
    callback's parameter names with their values masked, and neither the event's
    reason, the server log nor the page repeats the provider's description."""
    with server_log() as log:
        secrets, _ = await failure(real, client)
        await sign_in_events(real)
    assert leaks(real, log, secrets) == {}


async def test_a_step_up_event_holds_the_step_up_asked_and_no_code_or_token(
    real: Stack, client: Browser, id_tokens: list[str]
) -> None:
    """Step-up (pos refunds ask for a hardware key): the sign-in event says
    `signed in with step-up` with what was asked, and no code, token or secret."""
    with server_log() as log:
        await client.sign_in(real.url + "/pos/", "bob", ["otp"])
        login = await client.go(real.url + "/pos/refunds/7")
        page = await client.sign_in_at_provider(login, "bob", ["hwk"])
        assert page.status == 200, page.text
        events = await sign_in_events(real, at_least=2)
    stepped = [e for e in events if "step-up" in e["result"]["reasons"][0]]
    assert len(stepped) == 1, [e["result"] for e in events]
    assert stepped[0]["result"]["step_up"]["acr"]
    session = session_of(real, client)
    secrets = {
        "refresh token": session.refresh_token or "",
        "client secret": CLIENT_SECRET,
        "session cookie": client.cookie(COOKIE, real.url) or "",
        **{f"ID token {i} signature": t.rsplit(".", 1)[1] for i, t in enumerate(id_tokens)},
    }
    assert leaks(real, log, secrets) == {}
    # And the code of each callback is masked in the events' path.
    for event in events:
        path = event["input"]["attributes"]["request"]["http"]["path"]
        assert f"code={REDACTED}" in path, path


# --- a stub provider whose token endpoint says what a test wants --------------------------------


STUB_CLIENT = "portcullis"
STUB_SECRET = "stub-client-SECRET-0123456789abcdef"


@dataclass
class StubProvider:
    url: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    # (form) -> (status, JSON body) of the token endpoint.
    token: Callable[[dict[str, str]], tuple[int, Any]] = lambda form: (500, {})
    forms: list[dict[str, str]] = field(default_factory=list)
    # What a test puts in (or over) the discovery document and the JWKS.
    discovery: dict[str, Any] = field(default_factory=dict)
    extra_keys: list[dict[str, Any]] = field(default_factory=list)

    def id_token(self, nonce: str | None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "sub": "alice", "aud": STUB_CLIENT, "iat": now, "exp": now + 600,
                "email": "alice@example.com", **claims}  # fmt: skip
        if nonce is not None:
            body["nonce"] = nonce
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": "stub"})

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response({
                "issuer": self.url,
                "authorization_endpoint": self.url + "/auth",
                "token_endpoint": self.url + "/token",
                "jwks_uri": self.url + "/jwks",
                "code_challenge_methods_supported": ["S256"],
                **self.discovery,
            })  # fmt: skip

        async def jwks(request: web.Request) -> web.Response:
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            keys = [*self.extra_keys, {**public, "kid": "stub", "alg": "RS256"}]
            return web.json_response({"keys": keys})

        async def token(request: web.Request) -> web.Response:
            form = dict(await request.post())  # type: ignore[arg-type]
            self.forms.append(form)  # type: ignore[arg-type]
            status, body = self.token(form)  # type: ignore[arg-type]
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_post("/token", token)
        return app


@pytest.fixture
async def stub(aiohttp_server: ServerFactory) -> StubProvider:
    provider = StubProvider()
    server = await aiohttp_server(provider.app())
    provider.url = f"http://127.0.0.1:{server.port}"
    return provider


@contextlib.asynccontextmanager
async def stub_stack(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider
) -> AsyncIterator[Stack]:
    sign_in = SignInConfig(
        issuer=stub.url, client_id=STUB_CLIENT, client_secret=STUB_SECRET, scopes=SCOPES
    )
    session = SessionConfig(key_files=(session_key(tmp_path),))
    async with start_stack(aiohttp_server, tmp_path, sign_in=sign_in, session=session) as stack:
        yield stack


async def pending_sign_in(stack: Stack, client: Browser) -> dict[str, str]:
    """Start a sign-in (its pre-auth cookie lands in the jar): the authorization
    request's parameters."""
    page = await client.request("GET", stack.url + "/.portcullis/sign_in?rd=/wms/")
    assert page.status == 302, page.text
    location = page.headers["Location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


ECHOES = {
    # An IdP that repeats the grant it refused in its error_description.
    "code": lambda form: form["code"],
    # One that repeats the client authentication it refused (Basic is not in the
    # form: the test puts the configured secret there, as an IdP reading it would).
    "client-secret": lambda form: STUB_SECRET,
}


@pytest.mark.parametrize("echo", ECHOES.values(), ids=ECHOES.keys())
async def test_a_token_endpoint_error_echoing_the_code_or_secret_never_reaches_the_server_log(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider, echo: Any
) -> None:
    """An IdP whose token endpoint refuses the code with an error_description
    echoing the code, or the client credentials, must not get them written to the
    server log (`portcullis.sign_in` WARNING "sign-in failed at the token
    endpoint"), the event, or the page (the client secret shown to whoever holds
    the browser). OidcClient._token keeps only the OAuth `error` code, when it is
    a short token and none of the values sent; the description is never used."""
    code = "SECRETcode-0123456789abcdefghij"
    stub.token = lambda form: (
        400, {"error": "invalid_grant", "error_description": f"grant {echo(form)} is not valid"}
    )  # fmt: skip
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack, browser(stack.url) as client:
        with server_log() as log:
            params = await pending_sign_in(stack, client)
            callback = {"code": code, "state": params["state"], "iss": stub.url}
            page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(callback))
            assert page.status == 502
            await sign_in_events(stack)
        assert stub.forms and stub.forms[0]["code"] == code
        secrets = {"code": code, "client secret": STUB_SECRET}
        assert leaks(stack, log, secrets) == {}
        assert STUB_SECRET not in page.text, "the browser is shown the client secret"
        assert code not in page.text
        assert "invalid_grant" in page.text, "the error code is still said"


async def test_a_refresh_refusal_echoing_the_refresh_token_never_reaches_the_server_log(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider
) -> None:
    """_refresh_at_provider logs `session refresh for <sub> failed: <ProviderError>`
    (portcullis.sign_in WARNING). A provider that names the refresh token it
    refused in its error_description (`refresh_token <rt> not checked`) must not
    put it in the server log: with `invalid_client` or `temporarily_unavailable`
    the token is still live. The error holds only the OAuth error code."""
    refresh = "SECRETrefresh-0123456789abcdefghij"
    stub.token = lambda form: (
        503, {"error": "temporarily_unavailable",
              "error_description": f"refresh_token {form.get('refresh_token')} not checked"},
    )  # fmt: skip
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack, browser(stack.url) as client:
        now = int(time.time())
        session = Session(subject="alice", issuer=stub.url, expires_at=now - 5, created_at=now - 60,
                          refresh_token=refresh)  # fmt: skip
        cookie = put_session(stack, client, session)
        with server_log() as log:
            response = await stack.session.get(
                stack.url + "/wms/stock",
                headers={"Accept": "application/json", "Cookie": f"{COOKIE}={cookie}"},
            )
            assert response.status == 401
            await stack.events()
        assert stub.forms and stub.forms[0]["refresh_token"] == refresh
        assert leaks(stack, log, {"refresh token": refresh, "session cookie": cookie}) == {}
        assert "temporarily_unavailable" in log.text, "the error code is still logged"


IDTOKEN_CODE = "SECRETcode-idtoken-0123456789"


def _signed_with_header(stub: StubProvider, nonce: str, header: dict[str, Any]) -> str:
    """A valid ID token's claims and signature under a header of the test's own."""
    _, claims, signature = stub.id_token(nonce).split(".")
    return f"{_b64(json.dumps(header).encode())}.{claims}.{signature}"


ID_TOKENS: dict[str, Callable[[StubProvider, str], str]] = {
    "wrong-nonce": lambda stub, nonce: stub.id_token("another-nonce"),
    "expired": lambda stub, nonce: stub.id_token(nonce, exp=int(time.time()) - 3600),
    "wrong-audience": lambda stub, nonce: stub.id_token(nonce, aud="someone-else"),
    "bad-signature": lambda stub, nonce: stub.id_token(nonce)[:-6] + "AAAAAA",
    "not-a-jwt": lambda stub, nonce: "SECRETopaque" + stub.id_token(nonce).replace(".", "~"),
    "unknown-kid": lambda stub, nonce: jwt.encode(
        {"iss": stub.url, "sub": "a", "aud": STUB_CLIENT, "iat": 1, "exp": 2}, stub.key,
        algorithm="RS256", headers={"kid": "other"},
    ),
    "bad-header-json": lambda stub, nonce: base64.urlsafe_b64encode(b'{"alg":').decode().rstrip("=")
    + "." + stub.id_token(nonce).split(".", 1)[1],
    # A provider that puts the code it was sent back into the ID token it answers
    # with: the token's own text is never repeated in a message.
    "kid-echoes-the-code": lambda stub, nonce: _signed_with_header(
        stub, nonce, {"alg": "RS256", "kid": IDTOKEN_CODE}),
    "alg-echoes-the-code": lambda stub, nonce: _signed_with_header(
        stub, nonce, {"alg": IDTOKEN_CODE, "kid": "stub"}),
    "crit-echoes-the-code": lambda stub, nonce: _signed_with_header(
        stub, nonce, {"alg": "RS256", "kid": "stub", "crit": [IDTOKEN_CODE], IDTOKEN_CODE: 1}),
    "alg-is-a-list": lambda stub, nonce: _signed_with_header(
        stub, nonce, {"alg": [IDTOKEN_CODE], "kid": "stub"}),
    "azp-echoes-the-code": lambda stub, nonce: stub.id_token(
        nonce, aud=[STUB_CLIENT, "other"], azp=IDTOKEN_CODE),
}  # fmt: skip


@pytest.mark.parametrize("make", ID_TOKENS.values(), ids=ID_TOKENS.keys())
async def test_an_id_token_that_fails_a_check_is_logged_without_the_token_code_or_refresh_token(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider, make: Any
) -> None:
    """The token endpoint answers 200 with an ID token that fails a check (and a
    refresh token): the refusal is logged (`sign-in refused, ID token failed a
    check: ...`) without the ID token, the code or the refresh token; a header or
    claim echoing the code is not repeated either."""
    code = IDTOKEN_CODE
    refresh = "SECRETrefresh-idtoken-0123456789"
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack, browser(stack.url) as client:
        with server_log() as log:
            params = await pending_sign_in(stack, client)
            token = make(stub, params["nonce"])
            body = {"id_token": token, "refresh_token": refresh, "token_type": "Bearer",
                    "access_token": "SECRETaccess-0123456789", "expires_in": 600}  # fmt: skip
            stub.token = lambda form: (200, body)
            callback = {"code": code, "state": params["state"], "iss": stub.url}
            page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(callback))
            assert page.status in (400, 502), page.text
            await sign_in_events(stack)
        assert any("sign-in" in line for line in log.handler.lines), log.text
        secrets = {
            "code": code,
            "refresh token": refresh,
            "access token": "SECRETaccess-0123456789",
            "ID token signature": token.rsplit(".", 1)[-1][-40:],
            "ID token (opaque)": token[:40] if token.startswith("SECRET") else "",
        }
        assert leaks(stack, log, secrets) == {}


# --- a failed sign-in's reason, and the other places a provider's answer is logged ---------------

ECHO = "SECRETechoedByTheProvider0123"
# Token endpoint (stub, form) -> (status, body); callback answer -> answer; the reason.
Token = Callable[[StubProvider, dict[str, str]], tuple[int, Any]]
CHECKS: dict[str, tuple[Token, Callable[[dict[str, str]], dict[str, str]], str]] = {
    "token-endpoint-error": (
        lambda stub, form: (400, {"error": "invalid_grant", "error_description": ECHO}),
        lambda answer: answer, "code_exchange_failed:invalid_grant"),
    "token-error-code-echoing-the-code": (
        lambda stub, form: (400, {"error": form["code"]}),
        lambda answer: answer, "code_exchange_failed:unrecognised"),
    "token-error-code-not-a-token": (
        lambda stub, form: (400, {"error": f"grant {ECHO} refused"}),
        lambda answer: answer, "code_exchange_failed:unrecognised"),
    "token-answer-not-an-object": (
        lambda stub, form: (200, [ECHO]), lambda answer: answer, "code_exchange_failed:not_json"),
    "no-id-token": (
        lambda stub, form: (200, {"access_token": ECHO, "token_type": "Bearer"}),
        lambda answer: answer, "no_id_token"),
    "expired-id-token": (
        lambda stub, form: (200, {"id_token": stub.id_token(None, exp=int(time.time()) - 3600)}),
        lambda answer: answer, "id_token_invalid:expired"),
    "iss-mismatch": (
        lambda stub, form: (500, {}),
        lambda answer: {**answer, "iss": f"https://{ECHO}.example"}, "iss_mismatch"),
    "provider-error": (
        lambda stub, form: (500, {}),
        lambda answer: {"error": "access_denied", "error_description": ECHO,
                        "state": answer["state"], "iss": answer["iss"]},
        "provider_error:access_denied"),
    "provider-error-echoing-the-state": (
        lambda stub, form: (500, {}),
        lambda answer: {"error": answer["state"], "state": answer["state"], "iss": answer["iss"]},
        "provider_error:unrecognised"),
    "no-code": (
        lambda stub, form: (500, {}),
        lambda answer: {"state": answer["state"], "iss": answer["iss"]}, "no_code"),
    "no-state": (
        lambda stub, form: (500, {}), lambda answer: {"code": answer["code"]}, "no_state"),
}  # fmt: skip


@pytest.mark.parametrize("case", CHECKS.values(), ids=CHECKS.keys())
async def test_each_failed_sign_in_is_named_by_the_check_that_failed(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider, case: Any
) -> None:
    """Every way a callback fails is one word of the reason vocabulary (README
    "Browser sign-in and step-up"), `gateway.sign_in: sign-in failed: <reason>`,
    with an OAuth error code only when it is a short token and no value the
    gateway sent; what the provider wrote (a description, an odd error, the
    access token of an answer without an ID token) reaches no log and no page."""
    token, answer_of, reason = case
    code = "SECRETcode-checks-0123456789"
    stub.token = lambda form: token(stub, form)
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack, browser(stack.url) as client:
        with server_log() as log:
            params = await pending_sign_in(stack, client)
            answer = answer_of({"code": code, "state": params["state"], "iss": stub.url})
            page = await client.go(stack.url + "/.portcullis/callback?" + urlencode(answer))
            assert page.status >= 400, page.text
            (event,) = await sign_in_events(stack)
        assert event["result"]["reasons"] == [f"gateway.sign_in: sign-in failed: {reason}"]
        assert event["result"]["http_status"] == page.status
        secrets = {"code": code, "state": params["state"], "echo": ECHO, "secret": STUB_SECRET}
        assert leaks(stack, log, secrets) == {}
        assert [name for name, value in secrets.items() if value in page.text] == []


async def test_a_sign_in_events_path_and_headers_hold_no_value_of_the_callbacks_query(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider
) -> None:
    """The callback's query is the provider's answer (code, state, an
    error_description echoing either); a browser can carry them in a Referer too.
    A sign-in event names the authorization response's parameters with their
    values masked, any other parameter (its name could be a value) and a fragment
    masked whole, the same in a header holding a URL, and parsed_query empty."""
    code = "SECRETcode-path-0123456789"
    async with stub_stack(aiohttp_server, tmp_path, stub) as stack, browser(stack.url) as client:
        with server_log() as log:
            params = await pending_sign_in(stack, client)
            state = params["state"]
            target = (
                f"/.portcullis/callback?code={code}&state={state}&iss={stub.url}"
                f"&SECRETname{state[:8]}=1;session_state={state}#{state}"
            )
            referer = f"{stub.url}/auth?state={state}&x=1#{state}"
            page = await client.go(stack.url + target, headers={"Referer": referer})
            assert page.status == 502, page.text
            (event,) = await sign_in_events(stack)
        http = event["input"]["attributes"]["request"]["http"]
        assert http["path"] == (
            f"/.portcullis/callback?code={REDACTED}&state={REDACTED}&iss={REDACTED}"
            f"&{REDACTED}={REDACTED}&session_state={REDACTED}"
        )
        assert http["headers"]["referer"] == (
            f"{stub.url}/auth?state={REDACTED}&{REDACTED}={REDACTED}#{REDACTED}"
        )
        assert event["input"]["parsed_query"] == {}
        secrets = {"code": code, "state": state, "name": "SECRETname"}
        assert leaks(stack, log, secrets) == {}


DISCOVERY_ODDITIES = {
    "issuer": ({"issuer": f"https://idp.example/{ECHO}?x=<b>"}, "names another issuer"),
    "pkce-methods": ({"code_challenge_methods_supported": [ECHO]}, "PKCE with S256"),
}


@pytest.mark.parametrize("case", DISCOVERY_ODDITIES.values(), ids=DISCOVERY_ODDITIES.keys())
async def test_a_discovery_document_refused_is_logged_and_shown_without_its_text(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider, case: Any
) -> None:
    """A discovery document the gateway refuses (another issuer: a mix-up; no
    PKCE S256) is logged at start and shown on the sign-in page: what the
    document says is not repeated there (an issuer only when a plain URL), only
    what the gateway found wrong with it."""
    document, said = case
    stub.discovery = document
    with server_log() as log:
        async with stub_stack(aiohttp_server, tmp_path, stub) as stack:
            async with browser(stack.url) as client:
                page = await client.request("GET", stack.url + "/.portcullis/sign_in?rd=/wms/")
            assert page.status == 502, page.text
    assert said in log.text and said in page.text
    assert log.holding(ECHO) == [] and ECHO not in page.text


async def test_a_jwks_key_that_does_not_load_is_logged_without_its_contents(
    stub: StubProvider,
) -> None:
    """PyJWK's error for a key it can't load quotes the whole key (`crv is not
    found: {...}`): a provider publishing a private part by mistake, or any
    text, would reach the server log. The key is named by its kid (when that is
    a plain id) and the error by its kind; the JWKS's other keys still load."""
    from aiohttp import ClientSession

    from gateway.config import Issuer
    from gateway.jwks import JwksCache

    stub.extra_keys = [
        {"kty": "EC", "kid": "broken", "x": ECHO, "y": ECHO, "d": "SECRETprivatePart0123"},
        {"kty": ECHO, "kid": "forged\nWARNING portcullis: forged line"},
    ]
    with server_log() as log:
        async with ClientSession() as session:
            cache = JwksCache(
                Issuer(stub.url, (STUB_CLIENT,), jwks_url=stub.url + "/jwks"), session
            )
            assert await cache.get("stub") is not None
    assert log.holding("SECRET") == [], log.text
    assert "skipping JWKS key 'broken': InvalidKeyError" in log.text
    assert "skipping JWKS key (not shown): InvalidKeyError" in log.text
    assert not [line for line in log.handler.lines if line.startswith("WARNING portcullis: forged")]


async def test_a_token_endpoint_answer_aiohttp_cannot_parse_is_logged_without_its_bytes(
    aiohttp_server: ServerFactory, tmp_path: Path, stub: StubProvider
) -> None:
    """aiohttp's parser quotes the bytes of an HTTP answer it refuses (`Bad status
    line: ... b'HTTP/1.1 4x0 <code>'`): a token endpoint answering so, with the
    code it was sent in the line, is told as `code_exchange_failed:unavailable`
    and the kind of error, never the error's text."""
    code = "SECRETcode-unparsable-0123456789"
    received: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        form = parse_qs((await reader.readexactly(length)).decode())
        received.append(form["code"][0])
        writer.write(b"HTTP/1.1 4x0 grant " + form["code"][0].encode() + b"\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    stub.discovery = {"token_endpoint": f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/t"}
    try:
        async with stub_stack(aiohttp_server, tmp_path, stub) as stack:
            async with browser(stack.url) as client:
                with server_log() as log:
                    params = await pending_sign_in(stack, client)
                    callback = {"code": code, "state": params["state"], "iss": stub.url}
                    url = stack.url + "/.portcullis/callback?" + urlencode(callback)
                    page = await client.go(url)
                    assert page.status == 502, page.text
                    (event,) = await sign_in_events(stack)
            assert received == [code]
            reason = "gateway.sign_in: sign-in failed: code_exchange_failed:unavailable"
            assert event["result"]["reasons"] == [reason]
            assert "ClientResponseError" in log.text
            assert leaks(stack, log, {"code": code}) == {} and code not in page.text
    finally:
        server.close()


LOGOUT_HEADERS = {
    "typ": ({"alg": "RS256", "kid": "stub", "typ": ECHO}, "typ"),
    "kid": ({"alg": "RS256", "kid": ECHO}, "unknown_kid"),
    "alg": ({"alg": ECHO, "kid": "stub"}, "algorithm"),
    "crit": ({"alg": "RS256", "kid": "stub", "crit": [ECHO], ECHO: 1}, "malformed"),
}


@pytest.mark.parametrize("case", LOGOUT_HEADERS.values(), ids=LOGOUT_HEADERS.keys())
async def test_a_logout_token_refused_is_described_without_its_text(
    stub: StubProvider, case: Any
) -> None:
    """Anyone can POST a logout token to the back-channel endpoint, which logs the
    refusal (`back-channel logout refused: ...`) and answers it: the message says
    which check failed (TokenInvalid.check) without repeating the token's header."""
    from aiohttp import ClientSession

    from gateway.signin.oidc import TokenInvalid

    header, check = case
    now = int(time.time())
    claims = {"iss": stub.url, "aud": STUB_CLIENT, "iat": now, "jti": "j", "sub": "alice",
              "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}  # fmt: skip
    signed = jwt.encode(claims, stub.key, algorithm="RS256", headers={"kid": "stub"})
    token = f"{_b64(json.dumps(header).encode())}.{signed.split('.', 1)[1]}"
    config = SignInConfig(issuer=stub.url, client_id=STUB_CLIENT, scopes=SCOPES)
    async with ClientSession() as session:
        with pytest.raises(TokenInvalid) as refused:
            await OidcClient(config, session).verify_logout_token(token)
    assert refused.value.check == check
    assert ECHO not in str(refused.value), str(refused.value)


# --- bearer tokens -------------------------------------------------------------------------


@pytest.fixture
async def bearer_stack(aiohttp_server: ServerFactory, tmp_path: Path) -> AsyncIterator[Stack]:
    async with start_stack(aiohttp_server, tmp_path) as running:
        yield running


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


MARK = "SECRETsig0123456789abcdefXYZ"


async def test_bearer_tokens_refused_every_way_never_reach_either_log(
    bearer_stack: Stack,
) -> None:
    """A valid token, an expired one, one for another audience, one whose
    signature fails, a malformed one, non-Bearer schemes, a token sent in a
    Cookie: the token (its signature, or the marker it holds) reaches neither log.
    A fixed-seed property adds odd tokens whose every part holds the marker."""
    stack = bearer_stack
    loop = asyncio.get_running_loop()
    valid = stack.token("alice", groups=["warehouse"])
    header, payload, _ = stack.token("alice").split(".")
    cases = {
        "valid": valid,
        "expired": stack.token("alice", ttl=-3600),
        "wrong audience": stack.token("alice", audience="someone-else"),
        "bad signature": f"{header}.{payload}.{MARK}",
        "malformed": f"{MARK}.{MARK}",
        "header not json": f"{_b64(MARK.encode())}.{payload}.{MARK}",
        "claims not json": f"{header}.{_b64(MARK.encode())}.{MARK}",
        "too large": f"{header}.{payload}.{MARK}{'A' * 9000}",
    }
    sent: list[str] = []

    async def get(authorization: str | None, cookie: str | None = None) -> int:
        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        if cookie is not None:
            headers["Cookie"] = cookie
        async with stack.session.get(stack.url + "/wms/stock", headers=headers) as response:
            await response.read()
            return response.status

    with server_log() as log:
        for token in cases.values():
            sent.append(token)
            assert await get(f"Bearer {token}") in (200, 401, 403)
        assert await get(f"Basic {_b64(b'alice:' + MARK.encode())}") == 401
        assert await get(f"Token {MARK}") == 401
        assert await get(None, cookie=f"access_token={valid}; portcullis_session={MARK}") == 401

        alphabet = st.sampled_from(["", MARK, "eyJ" + MARK, "%%", "{}", "==", "\t", "..", "é"])

        @settings(max_examples=60, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(st.lists(alphabet, min_size=1, max_size=5), st.sampled_from(["Bearer ", "bearer "]))
        def odd(parts: list[str], scheme: str) -> None:
            token = ".".join(parts)
            try:
                token.encode("latin-1")
            except UnicodeEncodeError:
                return
            status = asyncio.run_coroutine_threadsafe(get(scheme + token), loop).result(30)
            assert status == 401

        await asyncio.to_thread(odd)
        await stack.events(at_least=len(cases) + 3)
    secrets = {"marker": MARK, **{f"{n} signature": t.rsplit(".", 1)[-1][:60]
                                  for n, t in cases.items() if t.count(".") == 2}}  # fmt: skip
    assert leaks(stack, log, secrets) == {}


async def test_a_short_jwt_sent_as_x_request_id_is_not_logged_as_the_correlation_id(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """`X-Request-Id` is masked in headers when it holds a JWT (README: "any header
    value holding a JWT, whatever the header"), and server._request_id copies a
    printable value of at most 200 characters to input.attributes.request.http.id,
    which OCSF and ECS carry on as their correlation ids. A JWT there (a client's,
    or a proxy's in front) is no correlation id: the decision id is used instead
    (it once went to the log and every sink as sent)."""
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.SECRETidSIGNATURE0123456789"
    assert len(token) <= 200
    outcome = await attack(
        aiohttp_server, tmp_path, head(b"/wms/stock", b"X-Request-Id: " + token.encode())
    )
    assert outcome.leaks("SECRETidSIGNATURE") == {}
    (event,) = outcome.events
    assert event["input"]["attributes"]["request"]["http"]["id"] == event["decision_id"]


@pytest.mark.parametrize("encoded", [False, True], ids=["as-is", "percent-encoded"])
def test_a_jwt_in_the_logged_request_id_is_masked_whatever_put_it_there(encoded: bool) -> None:
    """The redactor's backstop: an event whose http.id holds a JWT (from any path
    that fills it), as sent or percent-encoded (server._request_id refuses both),
    is logged with it masked, and says so."""
    from gateway.audit.redaction import ID_POINTER, Redactor

    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.SECRETidBACKSTOP"
    if encoded:
        token = token.replace("eyJ", "%65yJ")
    event = {"input": {"attributes": {"request": {"http": {"id": f"req-{token}"}}}}}
    masked, _ = Redactor().apply(event)
    assert "SECRETidBACKSTOP" not in json.dumps(event)
    assert ID_POINTER in masked


# --- requests aiohttp's parser refuses --------------------------------------------------------


async def _refused_by_parser(
    aiohttp_server: ServerFactory, tmp_path: Path, data: bytes
) -> tuple[ServerLog, str, bytes]:
    with server_log() as log:
        async with limited_stack(aiohttp_server, tmp_path) as stack:
            reader, writer = await open_raw(stack, data)
            _, answer = await closed_after(reader, 5.0)
            writer.close()
            await stack.events()
            text = decision_log_text(stack)
    return log, text, answer


async def test_a_cookie_header_over_16k_keeps_an_app_session_out_of_reasons_and_the_server_log(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """A Cookie header past aiohttp's 16 KiB field cap (a browser with many
    cookies on one host; the gateway's own session alone is up to 4 x 3.8 KB plus
    three pre-auth cookies) is refused by the parser with LineTooLong, whose message
    quotes the value's first 100 bytes: `Got more than 16384 bytes when reading:
    b'sid=<app session>; ...'`. The refusal's reason (`result.reasons[0]` in the
    decision log, never masked, and Gateway.refuse_unparsed's INFO line on
    portcullis.gateway) keeps only the parser's own words (it once was the whole
    message: gateway/parser_refusals.py)."""
    secret = "SECRETappSession0123456789abcdef"
    data = head(b"/wms/stock", b"Cookie: sid=" + secret.encode() + b"; pad=" + b"p" * 17000)
    log, text, answer = await _refused_by_parser(aiohttp_server, tmp_path, data)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    found = {"server_log": log.holding(secret)[:2], "decision_log": where(text, secret)}
    assert found == {"server_log": [], "decision_log": []}


CREDENTIAL_LINES = {
    "authorization-bad-byte": b"Authorization: Bearer %s\x01",
    "authorization-space-before-colon": b"Authorization : Bearer %s",
    "basic-bad-byte": b"Authorization: Basic %s\x7f",
    "cookie-bad-byte": b"Cookie: __Host-portcullis_session=%s\x01",
    "api-key-bad-byte": b"X-Api-Key: %s\x00",
    "proxy-authorization-bad-byte": b"Proxy-Authorization: Bearer %s\x01",
}


@pytest.mark.parametrize("line", CREDENTIAL_LINES.values(), ids=CREDENTIAL_LINES.keys())
async def test_a_credential_header_line_the_parser_refuses_never_reaches_the_server_log(
    aiohttp_server: ServerFactory, tmp_path: Path, line: bytes
) -> None:
    """aiohttp's C parser quotes the offending header line (`Invalid header value
    char: b'Authorization: Bearer <token>\\x01'`); neither refuse_unparsed's INFO
    line on portcullis.gateway nor the event's result.reasons holds it."""
    secret = "SECRETcred0123456789abcdef"
    data = head(b"/wms/stock", line % secret.encode())
    log, text, answer = await _refused_by_parser(aiohttp_server, tmp_path, data)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    found = {"server_log": log.holding(secret)[:2], "decision_log": where(text, secret)}
    assert found == {"server_log": [], "decision_log": []}


async def test_a_query_secret_in_a_request_line_the_parser_refuses_is_not_quoted_in_its_reason(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    """The redactor masks `code=` in the refused request's request_line and path,
    and the parser's message, which quotes the same line (`Bad status line:
    Invalid HTTP version: b'GET /wms/cb?code=<code> HTTP/1.2' ^`), is not the
    event's reason nor in refuse_unparsed's INFO line: any request-line error
    would carry it (bad version, bad method, control byte in the target)."""
    data = b"GET /wms/cb?code=SECRETcodeInLine0123 HTTP/1.2\r\nHost: gw\r\n\r\n"
    log, text, answer = await _refused_by_parser(aiohttp_server, tmp_path, data)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    found = {
        "server_log": log.holding("SECRETcodeInLine"),
        "decision_log": where(text, "SECRETcodeInLine"),
    }
    assert found == {"server_log": [], "decision_log": []}
