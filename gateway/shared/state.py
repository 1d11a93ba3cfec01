"""What the request path asks of the shared state, and what an outage means for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.identity import ANONYMOUS, Identity
from gateway.shared import revocation
from gateway.shared.check import (
    Refusal,
    RequestCheck,
    Verdict,
    issuer_of,
    needs_revocation_check,
    unavailable_signals,
)
from gateway.shared.metrics import SharedStateMetrics
from gateway.shared.settings import SharedStateConfig
from gateway.shared.store import Busy, Store, Unavailable
from gateway.shared.third_party import another_sites_request

log = logging.getLogger("portcullis.shared_state")
MAX_BACKGROUND = 1000  # background writes in flight; past it they are dropped (counted)
# Sign-outs Redis did not take yet, kept per process (lost on a restart): past this
# many (after dropping the expired) a sign-out is refused (logged, counted), never
# one kept evicted.
MAX_PENDING_REVOCATIONS = 100_000
# The input.signals document, kept on the request between the look-up and the decision.
SIGNALS: web.RequestKey[dict[str, Any]] = web.RequestKey("portcullis_signals", dict)
REMEMBER_ADDRESS: web.RequestKey[bool] = web.RequestKey("portcullis_remember_address", bool)


def source_address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else "unknown"


class SharedState:
    """One gateway process' view of the shared state."""

    def __init__(
        self,
        config: SharedStateConfig,
        *,
        replica: str,
        session_lifetime: int,
        token_lifetime: float,
        registry: CollectorRegistry,
        issuers: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.replica = replica
        # The issuers whose subjects this gateway keeps state for (revocation.
        # trusted_issuers): what the admin API's "issuer" may name.
        self.issuers = issuers
        self.session_lifetime = session_lifetime
        self.revocation_ttl = revocation.revocation_ttl(session_lifetime, token_lifetime)
        self.metrics = SharedStateMetrics(registry)
        self.store = Store(config, on_state=self._state_changed, before_up=self._write_pending)
        self.keys = self.store.keys
        self.checker = RequestCheck(self.store, config, replica, session_lifetime)
        self._background: set[asyncio.Task[None]] = set()
        # Sign-outs Redis did not take, by session id: (issuer, subject, reason,
        # expires at). Refused here at once, and written before calls go to Redis again.
        self._pending: dict[str, tuple[str, str, str, float]] = {}
        self._retry: asyncio.Task[None] | None = None

    @property
    def deny_when_unavailable(self) -> bool:
        return self.config.on_unavailable == "deny"

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._retry is not None:
            self._retry.cancel()
        await self.store.close()

    def _state_changed(self, up: bool) -> None:
        # Queued sign-outs are written by the probe before Redis counts as up again.
        self.metrics.up.set(1 if up else 0)

    # --- the request path -------------------------------------------------------------

    async def check(self, request: web.Request, app: str, identity: Identity) -> Verdict:
        """The one round trip of a request. An outage is a 503 for what needs a
        revocation check under `on_unavailable: deny`; otherwise the request goes on,
        its signals saying `available: false` (logged with the decision, counted)."""
        started = time.perf_counter()
        if identity.method == "session" and identity.session_id in self._pending:
            # Signed out while Redis did not take it: refused on this replica meanwhile.
            self.metrics.refusals.labels(app, "session_revoked").inc()
            reason = "this session was ended (sign-out not yet written to the shared state)"
            return Verdict(Refusal(401, "session_revoked", reason))
        try:
            other_site = another_sites_request(request, identity) is not None
            verdict = await self.checker.check(
                identity, app, source_address(request), other_site=other_site
            )
        except Busy as error:
            return Verdict(self._busy(str(error)), unavailable=str(error))
        except Unavailable as error:
            return self._unavailable(request, identity, str(error))
        self.metrics.seconds.observe(time.perf_counter() - started)
        if verdict.refusal is not None:
            self.metrics.refusals.labels(app, verdict.refusal.rule).inc()
        elif verdict.signals is not None:
            request[SIGNALS] = verdict.signals
            request[REMEMBER_ADDRESS] = verdict.remember_address
        return verdict

    def _busy(self, why: str) -> Refusal:
        """Redis is reachable but took no call of ours (pool exhausted, or this
        gateway too busy to get the answer in time): refused for every identity in
        both modes; going on unchecked would let a flood switch the checks off."""
        self.metrics.unavailable.labels("busy").inc()
        reason = f"shared state (Redis) busy: {why}; refused (retry shortly)"
        return Refusal(503, "shared_state_unavailable", reason, 1)

    def _unavailable(self, request: web.Request, identity: Identity, why: str) -> Verdict:
        if needs_revocation_check(identity) and self.deny_when_unavailable:
            self.metrics.unavailable.labels("refused").inc()
            reason = (
                f"revocation can't be checked: shared state (Redis) unavailable: {why}; "
                "refused (shared_state.on_unavailable: deny)"
            )
            return Verdict(Refusal(503, "shared_state_unavailable", reason, 1), unavailable=why)
        outcome = "unchecked" if needs_revocation_check(identity) else "no_check_needed"
        self.metrics.unavailable.labels(outcome).inc()
        request[SIGNALS] = unavailable_signals(why)
        return Verdict(signals=request[SIGNALS], unavailable=why)

    async def check_invalid_token(self, request: web.Request, app: str) -> Refusal | None:
        """Invalid tokens count against their source address's limit (guessing)."""
        try:
            verdict = await self.checker.check(ANONYMOUS, app, source_address(request))
        except Busy as error:
            return self._busy(str(error))
        except Unavailable:
            self.metrics.unavailable.labels("no_check_needed").inc()
            return None
        if verdict.refusal is not None:
            self.metrics.refusals.labels(app, verdict.refusal.rule).inc()
        return verdict.refusal

    def after_decision(
        self,
        request: web.Request,
        app: str,
        identity: Identity,
        *,
        allowed: bool,
        step_up: bool,
        decision_id: str,
        remember_address: bool,
        count_deny: bool = True,
    ) -> None:
        """Background writes after a decision, off the request's round trip: a deny
        counts toward the lockout (a step-up deny doesn't: it is the normal way to a
        stronger sign-in; nor does one with `count_deny` false, which another site's
        page caused: gateway/shared/third_party.py); an allow from a new address
        makes it a known one, to this app (`app`) only."""
        subject, issuer = identity.subject, issuer_of(identity)
        if not identity.authenticated or not subject or not self.store.available:
            return
        if not allowed and not step_up and count_deny:
            self._spawn(self._note_denied(issuer, subject, decision_id), "deny")
        elif allowed and remember_address:
            address = source_address(request)
            days = self.config.signals.new_source_ip_days
            remember = revocation.remember_address
            self._spawn(
                self._write(lambda r: remember(r, self.keys, issuer, subject, app, address, days)),
                "address",
            )

    async def _note_denied(self, issuer: str, subject: str, decision_id: str) -> None:
        member = f"{time.time():.6f}:{decision_id}"
        locked = await self._write(
            lambda r: revocation.note_denied(r, self.keys, self.config, issuer, subject, member)
        )
        if locked:
            self.metrics.lockouts.inc()
            log.warning("locked out %s (issuer %s): %d denied requests within %d s", subject,
                        issuer, self.config.lockout.after_denies,
                        self.config.lockout.window)  # fmt: skip

    # --- sign-out and back-channel logout ---------------------------------------------

    async def revoke_session(
        self, session_id: str, issuer: str, subject: str, reason: str, ttl: int
    ) -> bool:
        """Revoke one browser session; when Redis is away, kept (and refused on this
        replica) until it is written (True: written now). Kept sign-outs are per
        process, lost on a restart; past MAX_PENDING_REVOCATIONS one is refused."""
        revoke = revocation.revoke_session
        try:
            await self._write(
                lambda r: revoke(r, self.keys, session_id, issuer, subject, reason, ttl)
            )
        except Unavailable as error:
            self._keep(session_id, issuer, subject, reason, ttl, str(error))
            return False
        self.metrics.writes.labels("sign_out", "ok").inc()
        return True

    def _keep(
        self, session_id: str, issuer: str, subject: str, reason: str, ttl: int, why: str
    ) -> None:
        now = time.time()
        if session_id not in self._pending and len(self._pending) >= MAX_PENDING_REVOCATIONS:
            for sid in [sid for sid, kept in self._pending.items() if kept[3] <= now]:
                del self._pending[sid]
        if session_id not in self._pending and len(self._pending) >= MAX_PENDING_REVOCATIONS:
            self.metrics.writes.labels("sign_out", "refused").inc()
            log.error("shared state: sign-out of session %s by %s NOT recorded: Redis "
                      "unavailable (%s) and %d sign-outs already kept; a copy of its cookie "
                      "stays valid until the session expires", session_id[:8], subject, why,
                      MAX_PENDING_REVOCATIONS)  # fmt: skip
            return
        self._pending[session_id] = (issuer, subject, reason, now + max(1, ttl))
        self.metrics.writes.labels("sign_out", "pending").inc()
        log.error("shared state: sign_out kept for retry (%s)", why)
        if self.store.available and (self._retry is None or self._retry.done()):
            # Redis is up but busy: no recovery will flush this, so retry shortly.
            self._retry = asyncio.ensure_future(self._retry_pending())

    async def revoke_user(
        self, subject: str, reason: str, by: str, *, issuer: str | None = None
    ) -> float:
        """Revoke `issuer`'s `subject` (None: the subject under every issuer)."""
        revoke, ttl = revocation.revoke_user, self.revocation_ttl
        return await self.store.run(
            lambda r: revoke(r, self.keys, issuer, subject, reason, by, ttl)
        )

    async def apply_logout(
        self, jti_key: str, jti_ttl: int, revocation_key: str, reason: str, by: str
    ) -> bool:
        """Write a back-channel logout's revocation and its token's replay marker
        together (both or neither); False for a token already used."""
        record = revocation.record(reason, by)
        return await self.store.run(
            lambda r: revocation.apply_logout(
                r, jti_key, jti_ttl, revocation_key, record, self.revocation_ttl
            )
        )

    # --- background writes ------------------------------------------------------------

    def _spawn(self, work: Awaitable[Any], kind: str) -> None:
        if len(self._background) >= MAX_BACKGROUND:
            self.metrics.writes.labels(kind, "dropped").inc()
            if asyncio.iscoroutine(work):
                work.close()
            return

        async def run() -> None:
            try:
                await work
                self.metrics.writes.labels(kind, "ok").inc()
            except Unavailable as error:
                self.metrics.writes.labels(kind, "unavailable").inc()
                log.debug("shared state write (%s) skipped: %s", kind, error)
            except Exception:
                self.metrics.writes.labels(kind, "error").inc()
                log.exception("shared state write (%s) failed", kind)

        task = asyncio.ensure_future(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        return await self.store.run(call, timeout=self.config.timeouts.connect)

    async def _write_pending(self, client: aioredis.Redis) -> None:
        """Write the kept sign-outs with `client`, a batch at a time; an error is
        raised (Redis stays down for the request path, the probe tries again)."""
        batch = max(1, min(16, self.config.redis.max_connections // 2))
        while self._pending:
            chunk = list(self._pending.items())[:batch]

            async def one(session_id: str, kept: tuple[str, str, str, float]) -> None:
                issuer, subject, reason, expires = kept
                now = time.time()
                if expires > now:
                    ttl = max(1, int(expires - now))
                    async with asyncio.timeout(self.config.timeouts.connect):
                        await revocation.revoke_session(
                            client, self.keys, session_id, issuer, subject, reason, ttl
                        )
                    self.metrics.writes.labels("sign_out", "retried").inc()
                if self._pending.get(session_id) == kept:
                    del self._pending[session_id]

            await asyncio.gather(*(one(sid, kept) for sid, kept in chunk))

    async def _retry_pending(self) -> None:
        while self._pending:
            await asyncio.sleep(self.config.timeouts.retry_interval)
            if not self.store.available:
                return  # the probe writes them before Redis is up again
            with contextlib.suppress(Unavailable):
                await self.store.run(self._write_pending, timeout=self.config.timeouts.connect * 4)
