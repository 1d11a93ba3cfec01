"""Session administration on the admin listener: list, revoke, unlock.

The admin listener has no authentication of its own (it binds to an internal
address; the Helm chart's NetworkPolicy says who may reach it). Changes are POSTs
with a JSON body, so a web page can't send one cross-site without a CORS preflight."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.shared import revocation
from gateway.shared.check import when
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


async def list_sessions(request: web.Request) -> web.Response:
    shared = request.app[SHARED_KEY]
    user = request.query.get("user", "")
    if not user:
        return _error(400, "bad_request", "?user=<subject> is required")
    try:
        sessions = await shared.store.run(
            lambda r: revocation.list_sessions(r, shared.keys, user), timeout=2.0
        )
    except Unavailable as error:
        return _error(503, "shared_state_unavailable", str(error))
    return web.json_response({"user": user, "sessions": [s.to_json() for s in sessions]})


async def revoke(request: web.Request) -> web.Response:
    shared = request.app[SHARED_KEY]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        user, session = _text(body, "user"), _text(body, "session", 128)
        reason = _text(body, "reason", 200) or "revoked by an administrator"
    except ValueError as error:
        return _error(400, "bad_request", str(error))
    if (user is None) == (session is None):
        return _error(
            400, "bad_request", 'give "user" (every session and token) or "session" (one)'
        )
    try:
        if user is not None:
            at = await shared.store.run(
                lambda r: revocation.revoke_user(r, shared.keys, user, reason, "admin-api",
                                                 shared.revocation_ttl), timeout=2.0,
            )  # fmt: skip
            return web.json_response({"user": user, "revoked_before": at, "at": when(at)})
        assert session is not None
        subject = await shared.store.run(
            lambda r: revocation.session_subject(r, shared.keys, session), timeout=2.0
        )
        await shared.store.run(
            lambda r: revocation.revoke_session(r, shared.keys, session, subject or "",
                                                reason, shared.revocation_ttl), timeout=2.0,
        )  # fmt: skip
        return web.json_response({"session": session, "user": subject})
    except Unavailable as error:
        return _error(503, "shared_state_unavailable", str(error))


async def unlock(request: web.Request) -> web.Response:
    shared = request.app[SHARED_KEY]
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    try:
        user = _text(body, "user")
    except ValueError as error:
        return _error(400, "bad_request", str(error))
    if user is None:
        return _error(400, "bad_request", '"user" is required')
    try:
        was_locked = await shared.store.run(
            lambda r: revocation.unlock(r, shared.keys, user), timeout=2.0
        )
    except Unavailable as error:
        return _error(503, "shared_state_unavailable", str(error))
    return web.json_response({"user": user, "was_locked": was_locked})
