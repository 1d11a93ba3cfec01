"""One refresh per session across replicas: a short Redis lock around the provider
call, and its (sealed) result kept briefly for the replicas that waited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from gateway.shared.store import Busy, Keys, Store, Unavailable

LOCK_MS = 15_000  # longer than the provider call may take (its timeout is 10 s)
RESULT_MS = 60_000  # requests still carrying the old cookie get the new session
POLL_SECONDS = 0.05
FAILED = "-"
# KEYS: 1 the lock. ARGV: 1 owner, 2 ms. 1 when the caller holds the lock now (taken,
# or already its own: renewed for the whole provider call), else 0.
TAKE_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


async def single_flight(
    store: Store,
    token_hash: str,
    revoked_keys: list[str],
    refresh: Callable[[], Awaitable[str | None]],
) -> str | None:
    """The sealed refreshed session: from `refresh()` when this replica holds the
    lock, else from the replica that does. None: the refresh failed, the session was
    revoked, the lock holder vanished, or Redis is up but did not answer in time (the
    next request tries again). Without Redis, refresh here (single-flight then holds
    per process only)."""
    keys: Keys = store.keys
    lock, result = keys.refresh_lock(token_hash), keys.refresh_result(token_hash)

    async def take(r: aioredis.Redis) -> list[object]:
        pipe = r.pipeline(transaction=False)
        pipe.get(result)
        pipe.eval(TAKE_SCRIPT, 1, lock, store.owner, LOCK_MS)
        for key in revoked_keys:
            pipe.exists(key)
        return list(await pipe.execute())

    try:
        done, locked, *revoked = await store.run(take)
    except Busy:
        # Redis is up, only this call got no answer (this gateway busy): another
        # replica may hold the lock, or our SET went through unseen (our next try
        # knows it as ours: store.owner, the same on every try). Refreshing
        # without it presents the rotated refresh token twice, and the provider
        # takes that as theft and revokes the whole grant.
        return None
    except Unavailable:
        return await refresh()
    if any(revoked):
        return None  # signed out: no provider call for a session that is over
    if isinstance(done, str):
        return None if done == FAILED else done
    if locked:
        sealed = await refresh()

        async def publish(r: aioredis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            pipe.set(result, sealed or FAILED, px=RESULT_MS)
            pipe.delete(lock)  # ours: LOCK_MS outlasts the provider call
            await pipe.execute()

        with contextlib.suppress(Unavailable):
            await store.run(publish)
        return sealed
    return await _wait(store, lock, result)


async def _wait(store: Store, lock: str, result: str) -> str | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOCK_MS / 1000

    async def look(r: aioredis.Redis) -> list[object]:
        pipe = r.pipeline(transaction=False)
        pipe.get(result)
        pipe.exists(lock)
        return list(await pipe.execute())

    while loop.time() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        try:
            done, held = await store.run(look)
        except Unavailable:
            return None
        if isinstance(done, str):
            return None if done == FAILED else done
        if not held:
            return None
    return None
