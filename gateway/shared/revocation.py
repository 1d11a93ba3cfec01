"""Writes to the shared state: revoke a session, a provider session or a user, lock
out and unlock, remember addresses, list a user's sessions. Used by the gateway, its
admin API and `portcullis session`, so all three write the same records."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.config import Issuer
from gateway.shared.settings import SharedStateConfig
from gateway.shared.store import Keys

MAX_ADDRESSES = 100  # per subject: the newest are kept
MAX_DENIES = 200
REVOCATION_LEEWAY = 300  # clock skew on top of the longest lifetime


def record(reason: str, by: str, at: float | None = None) -> str:
    return orjson.dumps({"at": at or time.time(), "reason": reason[:200], "by": by[:100]}).decode()


def revocation_ttl(session_lifetime: int, token_lifetime: float) -> int:
    """How long a revocation must be kept: past it, everything it refuses has expired."""
    return int(max(session_lifetime, token_lifetime)) + REVOCATION_LEEWAY


def longest_token_life(issuers: Iterable[Issuer]) -> float:
    """How long after its `iat` a bearer token can still be accepted: its exp may be
    max_token_lifetime + leeway after iat, and it passes until exp + leeway. A
    revocation kept for less lets a token it refused through again."""
    return max((i.max_token_lifetime + 2 * i.leeway for i in issuers), default=86400.0)


async def revoke_user(
    client: aioredis.Redis, keys: Keys, subject: str, reason: str, by: str, ttl: int
) -> float:
    """Every session and bearer token of `subject` issued until now is refused."""
    at = time.time()
    await client.set(keys.user_revoked(subject), record(reason, by, at), ex=ttl)
    return at


async def revoke_session(
    client: aioredis.Redis, keys: Keys, session_id: str, subject: str, reason: str, ttl: int
) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.session_revoked(session_id), record(reason, "gateway"), ex=max(1, ttl))
    pipe.delete(keys.session(session_id))
    pipe.zrem(keys.user_sessions(subject), session_id)
    written, *_ = await pipe.execute(raise_on_error=False)
    # Only the revocation must be written; the record and the index are tidying. An
    # error there (a key another application left, of another type) made a written
    # sign-out look failed: kept and retried for the session's life, and the
    # recovery probe, which writes kept ones first, kept Redis "down" meanwhile.
    if isinstance(written, Exception):
        raise written


# KEYS: 1 the logout token's replay marker, 2 the revocation it asks for. ARGV: 1
# marker TTL, 2 revocation record, 3 revocation TTL. One script, so Redis holds both
# or neither: a marker without its revocation would refuse the provider's retry as
# a replay while the session lived on. Returns 1 when applied, 0 for a replay.
LOGOUT_SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""


async def apply_logout(
    client: aioredis.Redis,
    jti_key: str,
    jti_ttl: int,
    revocation_key: str,
    revocation: str,
    ttl: int,
) -> bool:
    """Revoke what a back-channel logout token names, once per token (its jti):
    False, and nothing written, when the token was already used."""
    script = client.register_script(LOGOUT_SCRIPT)
    reply = await script(keys=[jti_key, revocation_key], args=[jti_ttl, revocation, ttl])
    return bool(reply)


async def unlock(client: aioredis.Redis, keys: Keys, subject: str) -> bool:
    """Lift a lockout (and forget the denies that led to it); True if one was set."""
    removed = await client.delete(keys.lockout(subject), keys.denies(subject))
    return bool(removed)


# KEYS: 1 denies, 2 lockout. ARGV: 1 now, 2 window, 3 lock after (0: off),
# 4 lock duration, 5 lockout record, 6 unique member. Returns {denies, locked}.
DENY_SCRIPT = """
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -MAX_DENIES_PLUS_ONE)
redis.call('EXPIRE', KEYS[1], ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
local after = tonumber(ARGV[3])
if after > 0 and n >= after then
  redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[4])
  redis.call('DEL', KEYS[1])
  return {n, 1}
end
return {n, 0}
""".replace("MAX_DENIES_PLUS_ONE", str(MAX_DENIES + 1))


async def note_denied(
    client: aioredis.Redis, keys: Keys, config: SharedStateConfig, subject: str, member: str
) -> bool:
    """Count a denied decision; True when it locked the identity out."""
    lockout = config.lockout
    window = lockout.window if lockout.enabled else config.signals.recent_denies_window
    reason = f"{lockout.after_denies} denied requests within {lockout.window // 60} min"
    args: list[str | int] = [repr(time.time()), window, lockout.after_denies, lockout.duration,
            record(reason, "gateway"), member]  # fmt: skip
    script = client.register_script(DENY_SCRIPT)
    reply = await script(keys=[keys.denies(subject), keys.lockout(subject)], args=args)
    return bool(reply[1])


async def remember_address(
    client: aioredis.Redis, keys: Keys, subject: str, app: str, address: str, days: int
) -> None:
    now = time.time()
    key = keys.addresses(subject, app)
    pipe = client.pipeline(transaction=False)
    pipe.zadd(key, {address: now})
    pipe.zremrangebyscore(key, "-inf", now - days * 86400)
    pipe.zremrangebyrank(key, 0, -(MAX_ADDRESSES + 1))
    pipe.expire(key, days * 86400)
    await pipe.execute()


@dataclass(frozen=True)
class LiveSession:
    session_id: str
    subject: str
    replica: str
    created: float
    last_seen: float
    source_ip: str
    state: str  # "live", "revoked" or "revoked (user)"

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "subject": self.subject,
            "replica": self.replica,
            "created": self.created,
            "last_seen": self.last_seen,
            "source_ip": self.source_ip,
            "state": self.state,
        }


async def list_sessions(
    client: aioredis.Redis, keys: Keys, subject: str, *, include_revoked: bool = False
) -> list[LiveSession]:
    """The subject's browser sessions seen within their lifetime, newest first."""
    ids = [str(i) for i in await client.zrevrange(keys.user_sessions(subject), 0, 999)]
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for session_id in ids:
        pipe.hgetall(keys.session(session_id))
        pipe.exists(keys.session_revoked(session_id))
    pipe.get(keys.user_revoked(subject))
    replies = await pipe.execute()
    user_record = orjson.loads(replies[-1]) if replies[-1] else {}
    user_revoked_at = user_record.get("at") if isinstance(user_record, dict) else None
    sessions = []
    for index, session_id in enumerate(ids):
        fields, revoked = replies[2 * index], replies[2 * index + 1]
        if not fields:
            continue  # expired
        created = float(fields.get("created", 0))
        state = "live"
        if revoked:
            state = "revoked"
        elif isinstance(user_revoked_at, int | float) and created <= user_revoked_at:
            state = "revoked (user)"
        if state != "live" and not include_revoked:
            continue
        sessions.append(
            LiveSession(
                session_id,
                fields.get("sub", subject),
                fields.get("replica", ""),
                created,
                float(fields.get("seen", 0)),
                fields.get("ip", ""),
                state,
            )
        )
    return sessions


async def session_subject(client: aioredis.Redis, keys: Keys, session_id: str) -> str | None:
    subject = await client.hget(keys.session(session_id), "sub")
    return subject if isinstance(subject, str) else None
