"""Session administration on the admin listener: list, revoke, unlock.

The admin listener has no authentication of its own (it binds to an internal
address; the Helm chart's NetworkPolicy says who may reach it). Changes are POSTs
with a JSON body, so a web page can't send one cross-site without a CORS preflight."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.shared import revocation
from gateway.shared.check import when
from gateway.shared.revocation import IssuerChoice, choose_issuer
from gateway.shared.state import SharedState
from gateway.shared.store import Unavailable

SHARED_KEY: web.AppKey[SharedState] = web.AppKey("shared_state", SharedState)
MAX_BODY = 4096


def add_admin_routes(app: web.Application, shared: SharedState) -> None:
    app[SHARED_KEY] = shared
    app.router.add_get("/sessions", list_sessions)
    app.router.add_post("/sessions/revoke", revoke)
    app.router.add_post("/sessions/unlock", unlock)


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_type != "application/json":
        return _error(
            415, "unsupported_media_type", "send a JSON body (Content-Type: application/json)"
        )
    if request.content_length is None or request.content_length > MAX_BODY:
        return _error(400, "bad_request", f"a JSON body of at most {MAX_BODY} bytes")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        return _error(400, "bad_request", f"body is not JSON: {error}")
    if not isinstance(body, dict):
        return _error(400, "bad_request", "body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, limit: int = 512) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{name}: a non-empty string of at most {limit} characters")
    return value


def _issuer_error(given: str | None, error: IssuerChoice, trusted: tuple[str, ...]) -> web.Response:
    """An issuer not trusted here, or none where one must be named: 400, with the
    choices as a list too."""
    code = "issuer_required" if given is None else "unknown_issuer"
    body = {"error": code, "reason": str(error), "issuers": list(trusted)}
    return web.json_response(body, status=400)


async def list_sessions(request: web.Request) -> web.Response:
    shared = request.app[SHARED_KEY]
    user = request.query.get("user", "")
    if not user:
        return _error(400, "bad_request", "?user=<subject> is required")
    given = request.query.get("issuer")
    try:
        issuer = None if given is None else choose_issuer(given, shared.issuers, required=True)
    except IssuerChoice as error:
        return _issuer_error(given, error, shared.issuers)
    # Without an issuer: the subject under each issuer, each session naming its own.
    issuers = shared.issuers if issuer is None else (issuer,)
    try:
        sessions = await shared.store.run(
            lambda r: revocation.list_sessions(r, shared.keys, issuers, user), timeout=2.0
        )
    except Unavailable as error:
        return _error(503, "shared_state_unavailable", str(error))
    return web.json_response(
        {"user": user, "issuer": issuer, "sessions": [s.to_json() for s in sessions]}
    )


async def revoke(request: web.Request) -> web.Response:
    shared = request.app[SHARED_KEY]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        user, session = _text(body, "user"), _text(body, "session", 128)
        given = _text(body, "issuer")
        reason = _text(body, "reason", 200) or "revoked by an administrator"
    except ValueError as error:
        return _error(400, "bad_request", str(error))
    if (user is None) == (session is None):
        return _error(
            400, "bad_request", 'give "user" (every session and token) or "session" (one)'
        )
    try:
        # No issuer: the subject under every issuer (the fail-closed reading of
        # "revoke alice"); answered as "issuer": null.
        issuer = None if given is None else choose_issuer(given, shared.issuers, required=True)
    except IssuerChoice as error:
        return _issuer_error(given, error, shared.issuers)
    why_not = revocation.not_revocable(issuer) if user is not None else None
    if why_not is not None:
        return _error(400, "not_revocable", why_not)
    try:
        if user is not None:
            at = await shared.store.run(
                lambda r: revocation.revoke_user(r, shared.keys, issuer, user, reason,
                                                 "admin-api", shared.revocation_ttl), timeout=2.0,
            )  # fmt: skip
            return web.json_response(
                {"user": user, "issuer": issuer, "revoked_before": at, "at": when(at)}
            )
        assert session is not None
        owner, subject = await shared.store.run(
            lambda r: revocation.session_owner(r, shared.keys, session), timeout=2.0
        )
        await shared.store.run(
            lambda r: revocation.revoke_session(r, shared.keys, session, owner, subject or "",
                                                reason, shared.revocation_ttl), timeout=2.0,
        )  # fmt: skip
        return web.json_response({"session": session, "user": subject, "issuer": owner})
    except Unavailable as error:
        return _error(503, "shared_state_unavailable", str(error))


async def unlock(request: web.Request) -> web.Response:
    shared = request.app[SHARED_KEY]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        user, given = _text(body, "user"), _text(body, "issuer")
    except ValueError as error:
        return _error(400, "bad_request", str(error))
    if user is None:
        return _error(400, "bad_request", '"user" is required')
    try:
        # Never "every issuer": that would lift the lockout of someone else by the
        # same name. Without an issuer, only where one is trusted.
        issuer = choose_issuer(given, shared.issuers, required=True)
    except IssuerChoice as error:
        return _issuer_error(given, error, shared.issuers)
    assert issuer is not None
    try:
        unlocked = await shared.store.run(
            lambda r: revocation.unlock(r, shared.keys, issuer, user, trusted=shared.issuers),
            timeout=2.0,
        )
    except Unavailable as error:
        return _error(503, "shared_state_unavailable", str(error))
    answer: dict[str, Any] = {"user": user, "issuer": issuer, "was_locked": unlocked.was_locked}
    if unlocked.still_locked_ms:
        until = when(time.time() + unlocked.still_locked_ms / 1000)
        answer["still_locked_until"] = until
        answer["reason"] = revocation.still_locked(user, until)
    return web.json_response(answer)
