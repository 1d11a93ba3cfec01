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

from gateway.config import GatewayConfig, Issuer, client_cas, issuer_name
from gateway.mtls.cas import CLIENT_CERTIFICATE_ISSUER, is_certificate_issuer
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


def trusted_issuers(config: GatewayConfig) -> tuple[str, ...]:
    """The issuers whose subjects this gateway keeps state for, as the shared state
    names them: the token issuers, the sign-in provider, and each CA of the
    listeners' client_ca (`mtls:<its subject>`). What an admin command's issuer
    must be one of."""
    names = [issuer_name(issuer.issuer) for issuer in config.issuers]
    if config.sign_in is not None:
        names.append(issuer_name(config.sign_in.issuer))
    names += [ca.issuer for ca in client_cas(config.listeners)]
    return tuple(dict.fromkeys(names))


class IssuerChoice(ValueError):
    """An admin command named an issuer not trusted here, or none where it must."""


def choose_issuer(
    given: str | None, trusted: tuple[str, ...], *, required: bool, option: str = ""
) -> str | None:
    """The issuer an admin command means: `given` when it is a trusted one; without
    one, the only trusted issuer, or None (every issuer) where that may be meant.
    IssuerChoice, naming the choices, for an issuer not trusted here (a typo would
    revoke or unlock nobody, and say it did) and for none given where several are
    trusted and the command must name one (with `option`, the command line's)."""
    choices = ", ".join(trusted) or "(none configured)"
    if given is not None:
        name = issuer_name(given)
        if name not in trusted:
            raise IssuerChoice(f"issuer {given!r} is not one this gateway trusts: one of {choices}")
        return name
    if len(trusted) == 1:
        return trusted[0]
    if required:
        raise IssuerChoice(
            "several issuers are trusted, and a subject is only unique within its issuer: "
            f"name one{f' with {option}' if option else ''} ({choices})"
        )
    return None


def not_revocable(issuer: str | None) -> str | None:
    """Why revoking `issuer`'s subject would refuse nothing, or None. A client
    certificate has no session and no bearer token, and the request check reads no
    revocation for it (it has no issue time to compare): a revocation under a CA's
    name (then under `mtls`) was written and answered as done while the certificate
    kept getting in."""
    if issuer is None or not is_certificate_issuer(issuer):
        return None
    return (
        f"issuer {issuer!r}: a client certificate has no sessions or bearer tokens to "
        "revoke, and no revocation is checked for it; revoke the certificate at its CA "
        "and take it out of the listener's client_ca"
    )


async def revoke_user(
    client: aioredis.Redis,
    keys: Keys,
    issuer: str | None,
    subject: str,
    reason: str,
    by: str,
    ttl: int,
) -> float:
    """Every session and bearer token of `subject` from `issuer` issued until now is
    refused; issuer None: of `subject` from every issuer (one record by subject
    alone, which replicas not yet keying by issuer read too)."""
    at = time.time()
    key = (
        keys.revoked_under_every_issuer(subject)
        if issuer is None
        else keys.user_revoked(issuer, subject)
    )
    await client.set(key, record(reason, by, at), ex=ttl)
    return at


async def revoke_session(
    client: aioredis.Redis,
    keys: Keys,
    session_id: str,
    issuer: str | None,
    subject: str,
    reason: str,
    ttl: int,
) -> None:
    """Revoke one session; issuer None (a record from before sessions named theirs):
    its user's index is left to expire."""
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.session_revoked(session_id), record(reason, "gateway"), ex=max(1, ttl))
    pipe.delete(keys.session(session_id))
    if issuer is not None:
        pipe.zrem(keys.user_sessions(issuer, subject), session_id)
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


@dataclass(frozen=True)
class Unlocked:
    was_locked: bool
    # A lockout from before lockouts named the issuer (by subject alone) or the CA
    # (a certificate's, under `mtls` alone) still in force, in ms: lifted only where
    # one issuer (one CA) is trusted, since it can't tell whose subject earned it.
    still_locked_ms: int = 0


def still_locked(subject: str, until: str) -> str:
    """Why an unlock left a subject locked out."""
    return (
        f"{subject} is still locked out under every issuer until {until}, by a lockout "
        "written before lockouts named the issuer (or a client certificate's CA); which "
        "issuer's subject earned it can't be told, so it is left to expire"
    )


async def unlock(
    client: aioredis.Redis, keys: Keys, issuer: str, subject: str, *, trusted: tuple[str, ...]
) -> Unlocked:
    """Lift `issuer`'s `subject`'s lockout (and forget the denies that led to it).
    Where `trusted` (trusted_issuers) holds no other issuer, the lockout by subject
    alone is that user's too and is lifted with it; for a client certificate, where
    it holds no other CA, so is the lockout under `mtls` alone."""
    older = [(keys.lockout_under_every_issuer(subject), keys.denies_under_every_issuer(subject),
              len(trusted) == 1)]  # fmt: skip
    if is_certificate_issuer(issuer):
        cas = [name for name in trusted if is_certificate_issuer(name)]
        legacy = CLIENT_CERTIFICATE_ISSUER
        older.append(
            (keys.user_lockout(legacy, subject), keys.user_denies(legacy, subject), len(cas) == 1)
        )
    pipe = client.pipeline(transaction=False)
    pipe.delete(keys.user_lockout(issuer, subject), keys.user_denies(issuer, subject))
    for lockout, denies, lift in older:
        if lift:
            pipe.delete(lockout, denies)
        else:
            pipe.pttl(lockout)
    removed, *others = await pipe.execute()
    was_locked = bool(removed) or any(
        bool(other) for other, (_, _, lift) in zip(others, older, strict=True) if lift
    )
    left = [int(other) for other, (_, _, lift) in zip(others, older, strict=True) if not lift]
    return Unlocked(was_locked, max([0, *left]))


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
    client: aioredis.Redis,
    keys: Keys,
    config: SharedStateConfig,
    issuer: str,
    subject: str,
    member: str,
) -> bool:
    """Count a denied decision; True when it locked the identity out."""
    lockout = config.lockout
    window = lockout.window if lockout.enabled else config.signals.recent_denies_window
    reason = f"{lockout.after_denies} denied requests within {lockout.window // 60} min"
    args: list[str | int] = [repr(time.time()), window, lockout.after_denies, lockout.duration,
            record(reason, "gateway"), member]  # fmt: skip
    script = client.register_script(DENY_SCRIPT)
    keys_of = [keys.user_denies(issuer, subject), keys.user_lockout(issuer, subject)]
    reply = await script(keys=keys_of, args=args)
    return bool(reply[1])


async def remember_address(
    client: aioredis.Redis,
    keys: Keys,
    issuer: str,
    subject: str,
    app: str,
    address: str,
    days: int,
) -> None:
    now = time.time()
    key = keys.user_addresses(issuer, subject, app)
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
    issuer: str
    replica: str
    created: float
    last_seen: float
    source_ip: str
    state: str  # "live", "revoked" or "revoked (user)"

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "subject": self.subject,
            "issuer": self.issuer,
            "replica": self.replica,
            "created": self.created,
            "last_seen": self.last_seen,
            "source_ip": self.source_ip,
            "state": self.state,
        }


def _revoked_at(raw: str | None) -> float | None:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    at = value.get("at") if isinstance(value, dict) else None
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None


async def list_sessions(
    client: aioredis.Redis,
    keys: Keys,
    issuers: tuple[str, ...],
    subject: str,
    *,
    include_revoked: bool = False,
) -> list[LiveSession]:
    """The browser sessions of `subject` under each of `issuers`, seen within their
    lifetime, the last seen first."""
    pipe = client.pipeline(transaction=False)
    for issuer in issuers:
        pipe.zrevrange(keys.user_sessions(issuer, subject), 0, 999)
    listed = await pipe.execute()
    found = [(issuer, str(i)) for issuer, ids in zip(issuers, listed, strict=True) for i in ids]
    if not found:
        return []
    pipe = client.pipeline(transaction=False)
    for _, session_id in found:
        pipe.hgetall(keys.session(session_id))
        pipe.exists(keys.session_revoked(session_id))
    for issuer in issuers:
        pipe.get(keys.user_revoked(issuer, subject))
    pipe.get(keys.revoked_under_every_issuer(subject))
    replies = await pipe.execute()
    every_issuer_at = _revoked_at(replies[-1])
    user_at = dict(zip(issuers, replies[2 * len(found) : -1], strict=True))
    sessions = []
    for index, (issuer, session_id) in enumerate(found):
        fields, revoked = replies[2 * index], replies[2 * index + 1]
        if not fields:
            continue  # expired
        created = float(fields.get("created", 0))
        revoked_at = [_revoked_at(user_at[issuer]), every_issuer_at]
        state = "live"
        if revoked:
            state = "revoked"
        elif any(at is not None and created <= at for at in revoked_at):
            state = "revoked (user)"
        if state != "live" and not include_revoked:
            continue
        sessions.append(
            LiveSession(
                session_id,
                fields.get("sub", subject),
                issuer,
                fields.get("replica", ""),
                created,
                float(fields.get("seen", 0)),
                fields.get("ip", ""),
                state,
            )
        )
    return sorted(sessions, key=lambda session: session.last_seen, reverse=True)


async def session_owner(
    client: aioredis.Redis, keys: Keys, session_id: str
) -> tuple[str | None, str | None]:
    """(issuer, subject) of a session's record; issuer None for a record from before
    sessions named theirs, both None for none."""
    issuer, subject = await client.hmget(keys.session(session_id), ["iss", "sub"])
    return (
        issuer if isinstance(issuer, str) else None,
        subject if isinstance(subject, str) else None,
    )
