"""The Redis connection: bounded waits, and a breaker so an outage costs no request a wait."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import MaxConnectionsError, RedisError, ResponseError

from gateway.config import issuer_name, user_name
from gateway.shared.settings import SharedStateConfig

log = logging.getLogger("portcullis.shared_state")
T = TypeVar("T")
MAX_KEY_PART = 200  # longer subjects and addresses are hashed into the key


class Unavailable(Exception):
    """Redis could not answer in time (down, slow, or refusing); the message says which."""


class Busy(Unavailable):
    """Redis is reachable but this call got no answer: every pooled connection is in
    use, or the call timed out while a ping on a connection of its own still answers
    (the gateway's own load), or Redis answered it with an error (a key of another
    type, out of memory). Never "unchecked": the request path refuses it for every
    identity, whatever `on_unavailable` says (a flood must not switch checks off)."""


def connect(config: SharedStateConfig, max_connections: int | None = None) -> aioredis.Redis:
    """A client for `shared_state.redis` (no connection is opened yet)."""
    settings = config.redis
    options: dict[str, Any] = {
        "socket_connect_timeout": config.timeouts.connect,
        # A reply slower than this is a dead connection; requests wait less (Store.run).
        "socket_timeout": max(config.timeouts.connect, config.timeouts.request),
        "max_connections": max_connections or settings.max_connections,
        "health_check_interval": 30,
        "decode_responses": True,
    }
    if settings.password is not None:
        options["password"] = settings.password
    if settings.tls is not None:
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
        if settings.tls.ca_file is not None:
            options["ssl_ca_certs"] = str(settings.tls.ca_file)
        if settings.tls.cert_file is not None and settings.tls.key_file is not None:
            options["ssl_certfile"] = str(settings.tls.cert_file)
            options["ssl_keyfile"] = str(settings.tls.key_file)
    return aioredis.Redis.from_url(settings.url, **options)


class Keys:
    """Every key the gateway writes, under one prefix (README "Shared state": the list)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @staticmethod
    def part(value: str) -> str:
        # Keys are binary-safe; only their length is bounded.
        if len(value) <= MAX_KEY_PART:
            return value
        return "#" + hashlib.sha256(value.encode()).hexdigest()

    @classmethod
    def user(cls, issuer: str, subject: str) -> str:
        """Whose state a key holds: config.user_name (a client certificate's subject
        under its CA's name, gateway/mtls/cas.py). Hashed as a whole by `part`
        when long: a hashed part starts with "#", this one with a digit."""
        return user_name(issuer, subject)

    @classmethod
    def per_app(cls, app: str, issuer: str, subject: str) -> str:
        """A user on one app (known addresses, rate limits), the app length-prefixed too."""
        return f"{len(app)}:{app}:{cls.user(issuer, subject)}"

    # Per user: every key below holds one (issuer, subject). The families are new
    # names (`user_...`), so none of their keys is also a key of the subject-only
    # families before them, whatever a subject holds.

    def user_revoked(self, issuer: str, subject: str) -> str:
        return f"{self.prefix}user_revoked:{self.part(self.user(issuer, subject))}"

    def user_sessions(self, issuer: str, subject: str) -> str:
        return f"{self.prefix}user_sessions:{self.part(self.user(issuer, subject))}"

    def user_lockout(self, issuer: str, subject: str) -> str:
        return f"{self.prefix}user_lockout:{self.part(self.user(issuer, subject))}"

    def user_denies(self, issuer: str, subject: str) -> str:
        return f"{self.prefix}user_denies:{self.part(self.user(issuer, subject))}"

    def user_addresses(self, issuer: str, subject: str, app: str) -> str:
        # Per app: an address is known to an app once it allowed the user from
        # there. Known after an allow anywhere, a weak sign-in's allow on one app
        # made the address known to another (POS) that asks more of a new address.
        return f"{self.prefix}user_addresses:{self.part(self.per_app(app, issuer, subject))}"

    # By subject alone, under every issuer at once: what gateways before the
    # (issuer, subject) keys wrote. A revocation naming no issuer still writes one
    # (every issuer's subject is refused, and replicas not yet upgraded read it
    # too); a lockout is only read, until the last one written expires.

    def revoked_under_every_issuer(self, subject: str) -> str:
        return f"{self.prefix}revoked:user:{self.part(subject)}"

    def lockout_under_every_issuer(self, subject: str) -> str:
        return f"{self.prefix}lockout:{self.part(subject)}"

    def denies_under_every_issuer(self, subject: str) -> str:
        return f"{self.prefix}denies:{self.part(subject)}"

    def session_revoked(self, session_id: str) -> str:
        return f"{self.prefix}revoked:session:{self.part(session_id)}"

    def provider_session_revoked(self, issuer: str, sid: str) -> str:
        # Sessions carry sign_in.issuer (read without a trailing slash); a logout
        # token carries the provider's own `iss`, which may end in one (discovery
        # takes either): both must name the same key, or a back-channel logout is
        # written where no session's check reads it.
        issuer = issuer_name(issuer)
        digest = hashlib.sha256(f"{issuer}\n{sid}".encode()).hexdigest()[:32]
        return f"{self.prefix}revoked:op_session:{digest}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{self.part(session_id)}"

    def rate(self, scope: str, who: str, window: int, index: int) -> str:
        return f"{self.prefix}rate:{scope}:{self.part(who)}:{window}:{index}"

    def logout_jti(self, issuer: str, jti: str) -> str:
        digest = hashlib.sha256(f"{issuer}\n{jti}".encode()).hexdigest()[:32]
        return f"{self.prefix}logout_jti:{digest}"

    def refresh_lock(self, token_hash: str) -> str:
        return f"{self.prefix}refresh:lock:{token_hash}"

    def refresh_result(self, token_hash: str) -> str:
        return f"{self.prefix}refresh:result:{token_hash}"


class Store:
    """Redis with a deadline on every call and a breaker: after a failure, calls fail
    at once (no request waits for a dead Redis) while a probe retries every
    `retry_interval` until Redis answers in time again, then calls go through."""

    def __init__(
        self,
        config: SharedStateConfig,
        *,
        on_state: Callable[[bool], None] | None = None,
        before_up: Callable[[aioredis.Redis], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix)
        # This gateway's name on the refresh locks it takes (shared/refresh.py). One
        # name for all its attempts (the sign-in flow runs one per refresh token at a
        # time): a lock call answered too late (Busy) may have set the lock, and a
        # fresh name each time made this replica wait out its own lock (15 s per
        # request) for a refresh nobody made.
        self.owner = secrets.token_hex(8)
        self.client = connect(config)
        # Pings of the probe and of the reachability check, outside the request pool:
        # an exhausted pool must not make Redis look down.
        self._ping_client = connect(config, max_connections=2)
        self._verify: asyncio.Task[None] | None = None
        # Runs in the probe once Redis answers, before calls go through again (queued
        # sign-outs are written first); an error keeps the breaker open.
        self._before_up = before_up
        self._timeout = config.timeouts.request
        self._up = True
        self._why_down = ""
        self._probe: asyncio.Task[None] | None = None
        self._on_state = on_state or (lambda up: None)
        self._closed = False

    @property
    def available(self) -> bool:
        return self._up

    @property
    def why_down(self) -> str:
        return self._why_down

    async def start(self) -> None:
        """Check Redis once; a gateway starts without it (the breaker opens and the
        probe keeps trying), so a Redis restart never keeps replicas down."""
        try:
            await self.run(lambda r: r.ping(), timeout=self.config.timeouts.connect)
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                async with asyncio.timeout(self.config.timeouts.connect):
                    await self._ping_client.ping()  # connected before it is needed
            log.info("shared state: connected to Redis")
        except Unavailable as error:
            log.error("shared state: Redis unavailable at start (%s); retrying", error)

    async def close(self) -> None:
        self._closed = True
        for task in (self._probe, self._verify):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for client in (self.client, self._ping_client):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def run(
        self,
        call: Callable[[aioredis.Redis], Awaitable[T]],
        *,
        timeout: float | None = None,
    ) -> T:
        """`call(client)` within the request timeout; Unavailable when the breaker is
        open or on a connection error (which opens the breaker); Busy when the pool is
        exhausted, Redis answered with an error, or the call timed out (a ping on a
        connection of its own then tells whether Redis is down, which opens the
        breaker, or only this gateway busy)."""
        if not self._up:
            raise Unavailable(self._why_down)
        started = time.perf_counter()
        limit = timeout or self._timeout
        try:
            async with asyncio.timeout(limit):
                return await call(self.client)
        except TimeoutError:
            why = f"no answer from Redis within {limit * 1000:.0f} ms"
            if self._up:
                # Down, or only this gateway busy? Wait (bounded) for one ping to tell.
                check = self._check_reachable(why)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.timeouts.connect):
                        await asyncio.shield(check)
                if self._up:
                    raise Busy(f"{why}; Redis answers a ping: this gateway is busy") from None
            raise Unavailable(self._why_down or why) from None
        except UnicodeDecodeError:
            # Redis answered with bytes that are not UTF-8: a value another
            # application wrote at one of our keys. Redis is up; this call fails alone.
            raise Busy("Redis answered with a value that is not UTF-8") from None
        except (RedisError, OSError) as error:
            if isinstance(error, MaxConnectionsError) or "Too many connections" in str(error):
                # The pool is exhausted here, Redis itself is fine: this call fails alone.
                raise Busy(
                    f"all {self.config.redis.max_connections} Redis connections busy"
                ) from None
            if isinstance(error, ResponseError):
                # Redis answered, so it is up: an error about this call's keys (one
                # another application wrote with another type: WRONGTYPE) or about
                # Redis' state (out of memory, read-only) refuses this call alone.
                # Opening the breaker made one bad key an outage for every request
                # (unchecked under `on_unavailable: allow`).
                raise Busy(f"Redis refused the call: {error}"[:300]) from None
            self._down(f"Redis error: {type(error).__name__}: {error}"[:300])
        raise Unavailable(
            self._why_down or f"Redis failed after {time.perf_counter() - started:.3f} s"
        )

    def _check_reachable(self, why: str) -> asyncio.Task[None]:
        """After a timed-out call: a ping on a connection of its own. No answer
        within the request timeout opens the breaker; an answer means Redis is up and
        the timeout was this gateway's load (such calls are Busy, refused)."""
        if self._verify is not None and not self._verify.done():
            return self._verify

        async def verify() -> None:
            loop = asyncio.get_running_loop()
            while self._up and not self._closed:
                lag = 0.0

                async def tick() -> None:
                    nonlocal lag
                    while True:
                        started = loop.time()
                        await asyncio.sleep(0.005)
                        lag = max(lag, loop.time() - started - 0.005)

                ticker = asyncio.ensure_future(tick())
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._ping_client.ping()
                except TimeoutError:
                    # A busy event loop (callbacks run late) says this process is
                    # overloaded, not Redis: ask again (calls meanwhile are Busy).
                    if lag <= self._timeout / 10:
                        self._down(f"{why}; no answer to a ping either")
                        return
                except (RedisError, OSError) as error:
                    self._down(f"{why}; ping: {type(error).__name__}: {error}"[:300])
                    return
                else:
                    log.warning("shared state: a Redis call timed out (%s) but Redis answers: "
                                "the gateway is busy; such calls are refused", why)  # fmt: skip
                    return
                finally:
                    ticker.cancel()

        self._verify = asyncio.ensure_future(verify())
        return self._verify

    def _down(self, why: str) -> None:
        if self._closed:
            return
        self._why_down = why
        if self._up:
            self._up = False
            log.error("shared state: Redis unavailable (%s); on_unavailable: %s",
                      why, self.config.on_unavailable)  # fmt: skip
            self._on_state(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        interval = self.config.timeouts.retry_interval
        # An answer slower than a request may wait is not "up": a slow Redis would
        # otherwise flap between timing requests out and letting them wait.
        limit = self._timeout
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                async with asyncio.timeout(max(limit, self.config.timeouts.connect)):
                    await self._ping_client.ping()
                # Connected; now it must also answer quickly enough.
                started = time.perf_counter()
                async with asyncio.timeout(limit):
                    await self._ping_client.ping()
                if self._before_up is not None:
                    await self._before_up(self.client)
                log.info("shared state: Redis is back (ping %.1f ms)",
                         (time.perf_counter() - started) * 1000)  # fmt: skip
                self._up = True
                self._why_down = ""
                self._on_state(True)
                return
            except (TimeoutError, RedisError, OSError) as error:
                self._why_down = self._why_down or str(error)
            except Exception:
                log.exception("shared state: getting ready after Redis came back failed")
