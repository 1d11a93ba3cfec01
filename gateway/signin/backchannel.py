"""OpenID Connect Back-Channel Logout 1.0: the provider tells the gateway, server to
server, that a user signed out; the matching sessions are revoked on every replica."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway.config import SignInConfig
from gateway.shared.store import Unavailable
from gateway.signin.oidc import LOGOUT_TOKEN_MAX_AGE, OidcClient, ProviderError, TokenInvalid

if TYPE_CHECKING:
    from gateway.shared.state import SharedState

log = logging.getLogger("portcullis.backchannel_logout")
MAX_BODY = 16384
HEADERS = {"Cache-Control": "no-store"}


def _answer(status: int, error: str | None = None, description: str = "") -> web.Response:
    body: dict[str, Any] = (
        {} if error is None else {"error": error, "error_description": description}
    )
    return web.json_response(body, status=status, headers=HEADERS)


class BackChannelLogout:
    """POST /.portcullis/backchannel_logout with `logout_token` (form-encoded).

    `sid` in the token revokes that provider session's gateway sessions; `sub`
    alone revokes every session and bearer token of the subject issued so far by
    this provider (its `iss`): the per-user revocation of `portcullis session
    revoke --issuer`. The same subject of another issuer is someone else."""

    def __init__(
        self,
        config: SignInConfig,
        client: Callable[[], OidcClient],
        shared: SharedState,
        lifetime: int,
    ) -> None:
        self.config = config
        self.client = client
        self.shared = shared
        self.lifetime = lifetime

    async def handle(self, request: web.Request) -> web.Response:
        metrics = self.shared.metrics.backchannel
        length = request.content_length
        if length is None or length > MAX_BODY:
            metrics.labels("invalid").inc()
            return _answer(400, "invalid_request", "a form body with logout_token is required")
        form = parse_qs((await request.read()).decode("utf-8", "replace"))
        tokens = form.get("logout_token") or []
        if len(tokens) != 1:
            metrics.labels("invalid").inc()
            return _answer(400, "invalid_request", "exactly one logout_token is required")
        try:
            claims = await self.client().verify_logout_token(tokens[0])
        except TokenInvalid as error:
            metrics.labels("invalid").inc()
            log.warning("back-channel logout refused: %s", error)
            return _answer(400, "invalid_request", str(error))
        except ProviderError as error:
            metrics.labels("provider_unavailable").inc()
            return _answer(503, "temporarily_unavailable", str(error))
        issuer = str(claims["iss"])
        sid, sub = claims.get("sid"), claims.get("sub")
        keys = self.shared.keys
        if isinstance(sid, str) and sid:
            target = keys.provider_session_revoked(issuer, sid)
            what = f"provider session of {sub if isinstance(sub, str) else '?'} revoked"
        else:
            assert isinstance(sub, str)
            target = keys.user_revoked(issuer, sub)
            what = f"every session and token of {sub} revoked"
        try:
            # The replay check and the revocation are one write: a failure between
            # two would leave the token used and nothing revoked, and the provider's
            # retry refused as a replay.
            applied = await self.shared.apply_logout(
                keys.logout_jti(issuer, claims["jti"]),
                LOGOUT_TOKEN_MAX_AGE * 2 + int(self.config.leeway) * 2,
                target,
                "signed out at the provider",
                issuer,
            )
        except Unavailable as error:
            # The provider may retry; nothing was revoked, so say so.
            metrics.labels("unavailable").inc()
            log.error("back-channel logout not applied: shared state unavailable: %s", error)
            return _answer(503, "temporarily_unavailable", f"shared state unavailable: {error}")
        if not applied:
            metrics.labels("replayed").inc()
            log.warning("back-channel logout refused: jti %r replayed", claims["jti"][:64])
            return _answer(400, "invalid_request", "logout token already used (jti replay)")
        metrics.labels("ok").inc()
        log.info("back-channel logout from %s: %s", issuer, what)
        return _answer(200)
