"""The per-request look-up: revocation, lockout, rate limit and risk signals, in one
Redis round trip (a Lua script: atomic, one command, one reply)."""

from __future__ import annotations

import ipaddress
import math
import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.config import issuer_name
from gateway.identity import Identity
from gateway.mtls.cas import CLIENT_CERTIFICATE_ISSUER
from gateway.shared.settings import RateLimit, SharedStateConfig
from gateway.shared.store import Keys, Store, Unavailable

# KEYS: 1 user revocation, 2 session revocation, 3 provider-session revocation,
# 4 lockout, 5 rate counter (this window), 6 rate counter (previous window),
# 7 addresses seen (on this app), 8 denies, 9 the user's sessions, 10 the session record,
# 11 the subject's revocation under every issuer, 12 its lockout under every issuer
# (keys by subject alone: written before keys named the issuer, or a revocation that
# names none), 13 a client certificate's lockout under every CA (`mtls`, written
# before certificates named their CA; for another identity, 12 again). Read in the
# same call: one round trip still.
# ARGV: 1 now, 2 what to check ("u", "s", "p", "l" letters), 3 rate limit (0: none),
# 4 rate window, 5 source address ("" : no signals), 6 deny window, 7 session id
# ("" : no session), 8 replica, 9 session created, 10 subject, 11 session end
# (epoch), 12 active-session window, 13 issued at (-1: unknown), 14 session lifetime,
# 15 issuer.
# Returns: {user revocation, session revocation, provider revocation, lockout,
# lockout ttl ms, rate count, previous count, admitted, address last seen, denies,
# live sessions, revocation under every issuer}. A revoked or locked-out identity
# writes nothing.
CHECK_SCRIPT = """
local now = tonumber(ARGV[1])
local what = ARGV[2]
local ru, rs, rp, lk, ra = false, false, false, false, false
if string.find(what, 'u', 1, true) then
  ru = redis.call('GET', KEYS[1])
  ra = redis.call('GET', KEYS[11])
end
if string.find(what, 's', 1, true) then rs = redis.call('GET', KEYS[2]) end
if string.find(what, 'p', 1, true) then rp = redis.call('GET', KEYS[3]) end
local ttl = 0
if string.find(what, 'l', 1, true) then
  lk = redis.call('GET', KEYS[4])
  if lk then ttl = redis.call('PTTL', KEYS[4]) end
  -- Locked out under every issuer (or CA) too: the later end is the one to wait for.
  for _, key in ipairs({KEYS[12], KEYS[13]}) do
    local every = redis.call('GET', key)
    if every then
      local left = redis.call('PTTL', key)
      if not lk or left > ttl then lk, ttl = every, left end
    end
  end
end
if rs or rp or lk then
  return {ru, rs, rp, lk, ttl, 0, 0, 0, false, 0, 0, ra}
end
-- Revoked when issued at or before the revocation (an unreadable record: always);
-- this issuer's subject, or the subject under every issuer.
local function revoked(raw)
  if not raw then return false end
  local ok, record = pcall(cjson.decode, raw)
  local at = now
  if ok and type(record) == 'table' and tonumber(record['at']) then at = tonumber(record['at']) end
  return tonumber(ARGV[13]) <= at
end
if revoked(ru) or revoked(ra) then
  return {ru, false, false, false, 0, 0, 0, 0, false, 0, 0, ra}
end
local limit = tonumber(ARGV[3])
local cur, prev, admitted = 0, 0, 1
if limit > 0 then
  local window = tonumber(ARGV[4])
  cur = tonumber(redis.call('GET', KEYS[5]) or '0')
  prev = tonumber(redis.call('GET', KEYS[6]) or '0')
  local elapsed = math.fmod(now, window) / window
  if prev * (1 - elapsed) + cur >= limit then
    admitted = 0
  else
    cur = redis.call('INCR', KEYS[5])
    if cur == 1 then redis.call('EXPIRE', KEYS[5], window * 2) end
  end
end
local seen, denies, sessions = false, 0, 0
if ARGV[5] ~= '' then
  seen = redis.call('ZSCORE', KEYS[7], ARGV[5])
  denies = redis.call('ZCOUNT', KEYS[8], now - tonumber(ARGV[6]), '+inf')
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[10], 'sub', ARGV[10], 'iss', ARGV[15], 'created', ARGV[9],
             'seen', ARGV[1], 'ip', ARGV[5], 'replica', ARGV[8])
  redis.call('EXPIREAT', KEYS[10], ARGV[11])
  redis.call('ZADD', KEYS[9], now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now - tonumber(ARGV[14]))
  if redis.call('TTL', KEYS[9]) < tonumber(ARGV[11]) - now then
    redis.call('EXPIREAT', KEYS[9], ARGV[11])
  end
  sessions = redis.call('ZCOUNT', KEYS[9], now - tonumber(ARGV[12]), '+inf')
end
return {ru, rs, rp, lk, 0, cur, prev, admitted, seen, denies, sessions, ra}
"""


@dataclass(frozen=True)
class Refusal:
    status: int
    rule: str
    reason: str
    retry_after: int | None = None


@dataclass
class Verdict:
    """What the look-up found: a refusal, or the signals for the policy."""

    refusal: Refusal | None = None
    signals: dict[str, Any] | None = None
    # Record this address as known for this subject once the policy allows.
    remember_address: bool = False
    unavailable: str | None = None
    checked: list[str] = field(default_factory=list)


def needs_revocation_check(identity: Identity) -> bool:
    """Sessions and bearer tokens can be revoked; mTLS and anonymous requests can't."""
    return (
        identity.authenticated
        and identity.method in ("session", "bearer")
        and bool(identity.subject)
    )


def issuer_of(identity: Identity) -> str:
    """The issuer whose subject `identity` is, as the shared state keys it: the
    token's, the session's, or the CA's that issued a client certificate
    (`mtls:<its subject>`, gateway/mtls/cas.py)."""
    return identity.issuer or ""


def lockout_under_every_ca(keys: Keys, identity: Identity) -> str:
    """A client certificate's lockout from before lockouts named its CA (keyed under
    `mtls` alone): whichever CA's service earned it, it holds for the name under
    every CA until it expires (fail closed). For another identity, the subject's
    lockout under every issuer (read twice: no key of its own)."""
    subject = identity.subject or ""
    if identity.method == "mtls":
        return keys.user_lockout(CLIENT_CERTIFICATE_ISSUER, subject)
    return keys.lockout_under_every_issuer(subject)


# Whom a rate limit's 429 says it counted, by the limit's scope (limit_for).
WHO_IS_LIMITED = {
    "identity": "this identity on this app",
    "other_sites": "other sites' pages for this identity on this app",
    "ip": "this address",
}


def address_bucket(address: str) -> str:
    """Whom the per-address limit counts: an IPv6 host holds a whole /64 (SLAAC,
    privacy addresses, a cloud VM's prefix) and can take a fresh address for every
    request, so IPv6 counts per /64; an IPv4 client seen over a dual-stack listener
    (::ffff:a.b.c.d) counts as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def when(epoch: float) -> str:
    # A record another application wrote may hold a time no datetime can show
    # (1e20): the refusal must still be made (and logged), so say it as a number.
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{epoch!r} (epoch seconds)"


def _record(raw: str | None) -> dict[str, Any]:
    """A revocation or lockout record: JSON {at, reason, by}; anything else is still a
    record (fail closed), just without details."""
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _at(record: dict[str, Any]) -> float | None:
    """The record's time, when it is a finite number (`true` is no time: the
    script reads it as unreadable, and so must this, or the two disagree)."""
    at = record.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        return None
    return float(at)


def _because(record: dict[str, Any]) -> str:
    reason = record.get("reason")
    return f" ({reason})" if isinstance(reason, str) and reason else ""


class RequestCheck:
    """The one Redis call of a request, and what its answer means."""

    def __init__(self, store: Store, config: SharedStateConfig, replica: str, lifetime: int):
        self.store = store
        self.config = config
        self.replica = replica
        self.lifetime = lifetime
        self.script = store.client.register_script(CHECK_SCRIPT)

    def limit_for(
        self, identity: Identity, app: str, other_site: bool = False
    ) -> tuple[str, str, RateLimit]:
        """(scope, who, limit): per identity per app, else per source address. What
        another site's page made a signed-in browser send (`other_site`,
        gateway/shared/third_party.py) counts in a bucket of the identity's own,
        with the same limit: such a page could otherwise use up the user's."""
        limits = self.config.rate_limits
        if identity.authenticated and identity.subject:
            who = Keys.per_app(app, issuer_of(identity), identity.subject)
            return "other_sites" if other_site else "identity", who, limits.for_app(app)
        return "ip", "", limits.source_ip

    async def check(
        self, identity: Identity, app: str, address: str, other_site: bool = False
    ) -> Verdict:
        keys = self.store.keys
        now = time.time()
        scope, who, limit = self.limit_for(identity, app, other_site)
        if scope == "ip":
            who = address_bucket(address)
        revocable = needs_revocation_check(identity)
        subject, issuer = identity.subject or "", issuer_of(identity)
        what = ""
        if revocable:
            what += "u"
            if identity.session_id:
                what += "s"
            if identity.provider_sid and identity.issuer:
                what += "p"
        if identity.authenticated and subject and self.config.lockout.enabled:
            what += "l"
        index = math.floor(now / limit.window)
        signals_for = address if identity.authenticated and subject else ""
        session_id = (identity.session_id or "") if identity.method == "session" else ""
        end = int((identity.issued_at or now) + self.lifetime)
        args: list[str | int | float] = [
            repr(now), what, limit.requests if limit.enabled else 0, limit.window,
            signals_for, self.config.signals.recent_denies_window, session_id, self.replica,
            int(identity.issued_at or now), subject, end,
            self.config.signals.active_session_window,
            repr(identity.issued_at) if identity.issued_at is not None else -1, self.lifetime,
            issuer_name(issuer),
        ]  # fmt: skip
        key_list = [
            keys.user_revoked(issuer, subject),
            keys.session_revoked(identity.session_id or "-"),
            keys.provider_session_revoked(identity.issuer or "", identity.provider_sid or "-"),
            keys.user_lockout(issuer, subject),
            keys.rate(scope, who, limit.window, index),
            keys.rate(scope, who, limit.window, index - 1),
            keys.user_addresses(issuer, subject, app),
            keys.user_denies(issuer, subject),
            keys.user_sessions(issuer, subject),
            keys.session(identity.session_id or "-"),
            keys.revoked_under_every_issuer(subject),
            keys.lockout_under_every_issuer(subject),
            lockout_under_every_ca(keys, identity),
        ]

        async def call(client: aioredis.Redis) -> list[Any]:
            return list(await self.script(keys=key_list, args=args, client=client))

        reply = await self.store.run(call)
        return self._verdict(reply, identity, limit, now, bool(signals_for), scope)

    def _verdict(
        self,
        reply: list[Any],
        identity: Identity,
        limit: RateLimit,
        now: float,
        signals: bool,
        scope: str,
    ) -> Verdict:
        ru, rs, rp, lk, lock_ms, cur, prev, admitted, seen, denies, sessions, ra = reply
        if rs is not None or rp is not None:
            record = _record(rs if rs is not None else rp)
            at = _at(record)
            since = f" at {when(at)}" if at is not None else ""
            return Verdict(Refusal(401, "session_revoked", f"this session was ended{since}"
                                   f"{_because(record)}; sign in again"))  # fmt: skip
        if lk is not None:
            record = _record(lk)
            retry = max(1, math.ceil(int(lock_ms) / 1000))
            subject = identity.subject or ""
            reason = (
                f"{subject} is locked out until {when(now + retry)}{_because(record)}; "
                # CONFIG: the gateway's config file, which the gateway doesn't show clients.
                "an administrator can lift it: portcullis session unlock --config CONFIG --user "
                f"{shlex.quote(subject)} --issuer {shlex.quote(issuer_name(issuer_of(identity)))}"
            )
            return Verdict(Refusal(403, "locked_out", reason, retry))
        for raw in (ru, ra):  # this issuer's subject, then the subject under every issuer
            if raw is None:
                continue
            record = _record(raw)
            at = _at(record)
            # Unreadable record: fail closed, everything issued so far is revoked.
            revoked_at = at if at is not None else now
            if identity.issued_at is None or identity.issued_at <= revoked_at:
                what = "sessions" if identity.method == "session" else "tokens"
                reason = (
                    f"{identity.subject}'s {what} issued before {when(revoked_at)} were "
                    f"revoked{_because(record)}; sign in again"
                )
                return Verdict(Refusal(401, "revoked", reason))
        if not admitted:
            retry = _retry_after(int(cur), int(prev), limit, now)
            who = WHO_IS_LIMITED[scope]
            reason = f"more than {limit.requests} requests in {limit.window} s from {who}"
            return Verdict(Refusal(429, "rate_limited", reason, retry))
        if not signals:
            return Verdict(signals={"available": True})
        window = self.config.signals.new_source_ip_days * 86400
        last = float(seen) if seen is not None else None
        new_address = last is None or now - last > window
        return Verdict(
            signals={
                "available": True,
                "new_source_ip": new_address,
                "recent_denies": int(denies),
                "concurrent_sessions": int(sessions),
            },
            # Refresh a known address at most daily: one write per day, not per request.
            remember_address=new_address or (last is not None and now - last > 86400),
        )


def _retry_after(cur: int, prev: int, limit: RateLimit, now: float) -> int:
    """Seconds until the sliding estimate prev*(1-elapsed)+cur drops below the limit."""
    window = limit.window
    elapsed = math.fmod(now, window)
    if cur >= limit.requests or prev == 0:
        return max(1, math.ceil(window - elapsed))
    # prev*(1 - t/window) + cur < limit  <=>  t > window*(1 - (limit-cur)/prev)
    needed = window * (1 - (limit.requests - cur) / prev) - elapsed
    return max(1, math.ceil(needed))


def unavailable_signals(why: str) -> dict[str, Any]:
    return {"available": False, "reason": why}


__all__ = ["Refusal", "RequestCheck", "Unavailable", "Verdict", "unavailable_signals", "when"]
