"""The pages a browser sees from the gateway itself: deny, step-up, sign-in errors, signed out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape

from aiohttp import web

from gateway.identity import Identity
from gateway.provider_errors import UNRECOGNISED

METHOD_WORDS = {
    "pwd": "a password",
    "otp": "a one-time code",
    "hwk": "a hardware security key",
    "swk": "a software key",
    "fido": "a FIDO2 authenticator",
    "mfa": "multi-factor authentication",
    "sms": "a text message code",
}
ACR_WORDS = {
    "mfa": "multi-factor verification",
    "phr": "phishing-resistant verification (a security key)",
    "phrh": "phishing-resistant hardware verification",
}
# The gateway's own pages run no script and load nothing from anywhere.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STYLE = """
body{font-family:system-ui,-apple-system,sans-serif;background:#f3f4f7;color:#1d2733;
 margin:0;padding:48px 16px}
main{max-width:560px;margin:0 auto;background:#fff;border-radius:10px;padding:28px 32px;
 box-shadow:0 1px 4px #0002}
h1{font-size:1.35em;margin:0 0 12px}
.brand{font-size:.8em;letter-spacing:.08em;text-transform:uppercase;color:#6b7685}
ul.reasons{padding-left:20px} ul.reasons li{margin:6px 0}
.who{background:#f6f8fb;border-radius:6px;padding:10px 14px;font-size:.92em;margin:16px 0}
a.button,button{display:inline-block;font-size:1em;padding:10px 18px;border-radius:6px;
 border:0;background:#2f62d0;color:#fff;text-decoration:none;margin:8px 8px 0 0;cursor:pointer}
a.secondary{background:#e3e7ee;color:#1d2733}
.meta{color:#6b7685;font-size:.85em;margin-top:20px} code{font-size:.95em}
details{margin-top:14px;font-size:.9em;color:#4a5563}
"""


def _words(methods: str) -> str:
    names = [METHOD_WORDS.get(m.strip(), m.strip()) for m in methods.split(",") if m.strip()]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{seconds // 60} minutes"
    return f"{seconds // 3600} hours"


def plain(reason: str) -> str:
    """A policy reason in words a person acts on (the raw reason stays on the page too)."""
    if match := re.fullmatch(r"requires MFA with one of: (.+)", reason):
        return f"This page needs you to verify with {_words(match[1])}."
    if match := re.fullmatch(r"requires membership in one of: (.+)", reason):
        return (
            f"Your account is not in a group allowed here (one of: {match[1]}). "
            "Ask the app's owner for access."
        )
    if match := re.fullmatch(
        r"requires sign-in within the last (\d+) s; last sign-in was (-?\d+) s ago", reason
    ):
        return (
            f"This page needs a sign-in within the last {_duration(int(match[1]))}; "
            f"yours was {_duration(max(0, int(match[2])))} ago."
        )
    if reason == "authentication required":
        return "You need to sign in."
    if reason.startswith("requires a request from the app's own pages: "):
        # The shipped policy's Fetch Metadata rule (policies/gateway/decision.rego).
        return (
            "Another site's page sent this request to the app with your sign-in, and it "
            "was stopped: nothing was changed. To do this, use the app's own page."
        )
    return reason[:1].upper() + reason[1:] + ("" if reason.endswith(".") else ".")


def _page(
    title: str, body: str, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} - Portcullis</title><style>{STYLE}</style></head>"
        f'<body><main><div class="brand">Portcullis</div>{body}</main></body></html>'
    )
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=headers or HEADERS,
    )


def _who(identity: Identity | None, sign_out_url: str | None) -> str:
    if identity is None or not identity.authenticated:
        return ""
    methods = ", ".join(identity.amr) or "none"
    link = f' &middot; <a href="{escape(sign_out_url)}">Sign out</a>' if sign_out_url else ""
    return (
        f'<div class="who">Signed in as <b>{escape(identity.email or identity.subject or "")}</b>'
        f" &middot; verified with: {escape(methods)}"
        f"{' &middot; level ' + escape(identity.acr) if identity.acr else ''}{link}</div>"
    )


def _reasons(reasons: Sequence[str]) -> str:
    items = "".join(f"<li>{escape(plain(r))}</li>" for r in reasons) or "<li>Access denied.</li>"
    raw = "".join(f"<li><code>{escape(r)}</code></li>" for r in reasons)
    details = f"<details><summary>Policy reasons</summary><ul>{raw}</ul></details>" if raw else ""
    return f'<ul class="reasons">{items}</ul>{details}'


def denied(
    *,
    status: int,
    reasons: Sequence[str],
    decision_id: str,
    identity: Identity | None,
    step_up_url: str | None,
    sign_out_url: str | None,
) -> web.Response:
    """The policy said no: why, in words, and the way forward when there is one."""
    button = (
        f'<a class="button" href="{escape(step_up_url)}">'
        "Sign in again with stronger verification</a>"
        if step_up_url
        else ""
    )
    body = (
        "<h1>You can't open this page</h1>"
        f"{_reasons(reasons)}{button}{_who(identity, sign_out_url)}"
        f'<p class="meta">Decision id <code>{escape(decision_id)}</code>: '
        "quote it when you ask for help.</p>"
    )
    return _page("Access denied", body, status)


def step_up_unmet(
    *,
    reasons: Sequence[str],
    decision_id: str,
    asked: dict[str, object],
    identity: Identity | None,
    retry_url: str,
    sign_out_url: str | None,
    provider_said: str | None = None,
) -> web.Response:
    """One step-up round did not give what the page needs: say so, don't loop."""
    acr = str(asked.get("acr") or "")
    wanted = ACR_WORDS.get(acr, f"authentication level {acr}") if acr else "a fresh sign-in"
    max_age = asked.get("max_age")
    fresh = f", within the last {_duration(int(max_age))}" if isinstance(max_age, int) else ""
    said = (
        f"<p>The sign-in provider did not sign you in: {escape(provider_error(provider_said))}.</p>"
        if provider_said
        else "<p>The sign-in provider signed you in, but without what this page needs.</p>"
    )
    body = (
        "<h1>Stronger verification didn't happen</h1>"
        f"<p>This page needs {escape(wanted)}{escape(fresh)}. "
        "You were sent to the sign-in provider for it once.</p>"
        f"{said}{_reasons(reasons)}"
        f'<a class="button" href="{escape(retry_url)}">Try again</a>'
        '<a class="button secondary" href="/.portcullis/">Back to my session</a>'
        f"{_who(identity, sign_out_url)}"
        "<p>If your account has no security key enrolled, ask your IT team to enrol one.</p>"
        f'<p class="meta">Decision id <code>{escape(decision_id)}</code></p>'
    )
    return _page("Stronger verification needed", body, 403)


def sign_in_needed(sign_in_url: str) -> web.Response:
    body = (
        "<h1>Please sign in</h1><p>Your session has ended or you are not signed in yet.</p>"
        f'<a class="button" href="{escape(sign_in_url)}">Sign in</a>'
    )
    return _page("Sign in", body, 401)


# What an OAuth error code in an authorization response means (RFC 6749 4.1.2.1,
# OIDC Core 3.1.2.6), in the gateway's words: the provider's own description is
# never shown (gateway/provider_errors.py).
_PROVIDER_ERRORS = {
    "access_denied": "the sign-in was cancelled or refused at the provider",
    "login_required": "the provider needs you to sign in there first",
    "interaction_required": "the provider needs you to sign in there first",
    "consent_required": "the provider needs you to sign in there first",
    "account_selection_required": "the provider needs you to choose an account there first",
    "unmet_authentication_requirements": "the provider could not verify you the way asked",
    "server_error": "the provider had a problem; try again in a minute",
    "temporarily_unavailable": "the provider had a problem; try again in a minute",
}


def provider_error(code: str) -> str:
    """An authorization response's OAuth error code (already checked to be a code,
    gateway.provider_errors.oauth_error) in plain words, with the code."""
    if code == UNRECOGNISED:
        return "the provider answered with an error the gateway does not recognise"
    words = _PROVIDER_ERRORS.get(code, "the provider refused the sign-in request")
    return f"{words} ({code})"


def sign_in_failed(message: str, retry_url: str, status: int = 400) -> web.Response:
    body = (
        "<h1>Sign-in didn't complete</h1>"
        f"<p>{escape(message)}</p>"
        f'<a class="button" href="{escape(retry_url)}">Start again</a>'
    )
    return _page("Sign-in failed", body, status)


def sign_out(action: str, token: str, provider_origin: str | None) -> web.Response:
    """Signing out is this page's button (a POST): a link or a GET from any site
    must not end a session. The form may go on to the provider's sign-out."""
    body = (
        "<h1>Sign out?</h1><p>This ends your gateway session in this browser, "
        "and then at the sign-in provider.</p>"
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="token" value="{escape(token)}">'
        '<button type="submit">Sign out</button>'
        '<a class="button secondary" href="/.portcullis/">Stay signed in</a></form>'
    )
    # Under no-referrer a browser sends `Origin: null` with the POST, and the
    # gateway checks Origin: same-origin still sends no Referer anywhere else.
    headers = {**HEADERS, "Referrer-Policy": "same-origin"}
    if provider_origin:
        headers["Content-Security-Policy"] = HEADERS["Content-Security-Policy"].replace(
            "form-action 'self'", f"form-action 'self' {provider_origin}"
        )
    return _page("Sign out", body, 200, headers)


def signed_out(sign_in_url: str) -> web.Response:
    body = (
        "<h1>You are signed out</h1><p>Your gateway session is gone from this browser.</p>"
        f'<a class="button" href="{escape(sign_in_url)}">Sign in again</a>'
    )
    return _page("Signed out", body, 200)


def home(
    identity: Identity | None, apps: Sequence[tuple[str, str, str]], sign_out_url: str
) -> web.Response:
    """/.portcullis/: who the gateway thinks you are, and the apps behind it."""
    if identity is None or not identity.authenticated:
        return sign_in_needed("/.portcullis/sign_in")
    links = "".join(
        f'<li><a href="{escape(prefix)}">{escape(title)}</a> <code>{escape(prefix)}</code></li>'
        for _, title, prefix in apps
    )
    groups = ", ".join(identity.groups) or "none"
    body = (
        "<h1>Your session</h1>"
        f"{_who(identity, sign_out_url)}"
        f"<p>Groups: {escape(groups)}</p><p>Apps behind this gateway:</p><ul>{links}</ul>"
    )
    return _page("Session", body, 200)


def refused(
    *, status: int, title: str, reason: str, decision_id: str, sign_in_url: str | None
) -> web.Response:
    """The gateway refused before the policy: a session ended elsewhere (signed out,
    revoked), a lockout, a rate limit or the shared state being unavailable."""
    button = (
        f'<a class="button" href="{escape(sign_in_url)}">Sign in again</a>' if sign_in_url else ""
    )
    body = (
        f"<h1>{escape(title)}</h1><p>{escape(plain(reason))}</p>{button}"
        f'<p class="meta">Decision id <code>{escape(decision_id)}</code>: '
        "quote it when you ask for help.</p>"
    )
    return _page(title, body, status)
