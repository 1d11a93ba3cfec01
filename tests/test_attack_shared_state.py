"""Attacks on the shared state across replicas (Redis): what a hostile client or a
bad day in production (a Redis that hangs, restarts empty, or holds keys the
gateway did not write) does to revocation, lockouts, rate limits and signals."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio

from tests.gateway_stack import ServerFactory
from tests.redis_server import redis_server, redis_url
from tests.test_shared_state import WAREHOUSE, admin, call, shared, shared_stack

__all__ = ["redis_server", "redis_url"]  # fixtures

pytestmark = pytest.mark.timeout(60)


async def test_a_wrong_type_key_of_one_user_switches_off_revocation_for_everyone(
    aiohttp_server: ServerFactory, tmp_path: Path, redis_url: str
) -> None:
    """Another app sharing the database left a string where the gateway keeps a
    user's known addresses: Redis answers that user's check with WRONGTYPE. That is
    Redis up and answering, not an outage: it opened the breaker, and under
    `on_unavailable: allow` a revoked user's token then went on unchecked (under
    deny, every session and token was refused). Only that request is refused."""
    async with shared_stack(
        aiohttp_server, tmp_path, shared(redis_url, on_unavailable="allow")
    ) as stack:
        state = stack.gateway.shared
        assert state is not None
        stolen = stack.token("alice", **WAREHOUSE)
        async with admin(stack.gateway) as client:
            answer = await client.post("/sessions/revoke", json={"user": "alice"})
            assert answer.status == 200
        async with redis.asyncio.Redis.from_url(redis_url) as other_app:
            await other_app.set(state.keys.addresses("mallory"), "not a sorted set")
        status, body, _ = await call(
            stack, stack.url, "/wms/stock", stack.token("mallory", **WAREHOUSE)
        )
        assert status == 503 and body["error"] == "shared_state_unavailable", body
        assert state.store.available, "Redis answered: not an outage"
        status, body, _ = await call(stack, stack.url, "/wms/stock", stolen)
        assert status == 401 and body["error"] == "revoked", body
        # Everyone else is checked (and let in) as ever.
        erin = stack.token("erin", **WAREHOUSE)
        assert (await call(stack, stack.url, "/wms/stock", erin))[0] == 200
