"""Fencing survives Redis data loss: a grant made before the loss cannot write after it.

Each test starts a ``redis-server`` of its own without persistence
(tests/redis_servers.py), kills it by PID to lose every key, starts it again on the same
port, and kills it by PID at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from asaga.locks import RedisLockProvider, StaleWrite
from examples.inventory import Product, RedisInventoryStore
from tests.redis_servers import NO_PERSISTENCE, RedisServer, redis_server

pytestmark = pytest.mark.anyio

PREFIX = "asaga:"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path, NO_PERSISTENCE) as server:
        yield server


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()


async def _grant_a_few(locks: RedisLockProvider, key: str, times: int) -> None:
    for _ in range(times):
        async with locks.lease(key, ttl=30.0):
            pass


async def test_a_grant_from_before_a_restart_cannot_write_after_it(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """A holder granted the key before Redis lost its data (restart without persistence)
    has its fenced write refused after it: while nobody holds the key, and once a new
    holder is granted it, whose token is larger than the old holder's."""
    stock = f"{PREFIX}stock:{{sku}}"
    async with RedisLockProvider(client, prefix=PREFIX) as before:
        await _grant_a_few(before, "sku", 5)
        async with before.lease("sku", ttl=60.0) as stale:
            await before.fenced(stale, ("SET", stock, 10))
            await server.restart()
            await client.connection_pool.disconnect()  # the old connections are dead
            assert await client.dbsize() == 0  # every key is gone, the counter too

            with pytest.raises(StaleWrite):  # nobody holds the key now
                await before.fenced(stale, ("SET", stock, 9))
            async with (
                RedisLockProvider.from_url(server.url, prefix=PREFIX) as after,
                after.lease("sku", ttl=60.0) as fresh,
            ):
                assert fresh.token > stale.token
                await after.fenced(fresh, ("SET", stock, 8))
                with pytest.raises(StaleWrite):  # a newer holder exists
                    await before.fenced(stale, ("SET", stock, 7))
            with pytest.raises(StaleWrite):  # the newer holder released it
                await before.fenced(stale, ("SET", stock, 6))
    assert await client.get(stock) == b"8"


async def test_a_resource_checking_tokens_refuses_a_grant_from_before_a_restart(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """The inventory example's store checks tokens in its own script (against
    ``fence_key``): after a restart it refuses the old holder too, before and after a new
    grant, and accepts the new holder."""
    async with RedisLockProvider(client, prefix=PREFIX) as locks:
        store = RedisInventoryStore(client, locks, prefix="inv:")
        await _grant_a_few(locks, "inventory:sku-1", 5)
        async with locks.lease("inventory:sku-1", ttl=60.0) as stale:
            await server.restart()
            await client.connection_pool.disconnect()
            await store.put(Product(sku="sku-1", inventory_count=10))  # stock re-seeded

            with pytest.raises(StaleWrite):
                await store.apply(stale, "sku-1", 0, 2)
            async with (
                RedisLockProvider(client, prefix=PREFIX) as other,  # another process
                other.lease("inventory:sku-1", ttl=60.0, wait=0) as fresh,
            ):
                assert fresh.token > stale.token
                product = await RedisInventoryStore(client, other, prefix="inv:").apply(
                    fresh, "sku-1", 0, 3
                )
                assert product.reserved_count == 3
                with pytest.raises(StaleWrite):
                    await store.apply(stale, "sku-1", 0, 2)
        assert (await store.get("sku-1")).reserved_count == 3


async def test_tokens_keep_rising_across_restarts(
    server: RedisServer, client: aioredis.Redis
) -> None:
    """Tokens per key strictly increase across several restarts, each losing the
    counter."""
    tokens: list[int] = []
    for _ in range(3):
        async with RedisLockProvider(client, prefix=PREFIX) as locks:
            for _ in range(3):
                async with locks.lease("k", ttl=5.0) as lease:
                    tokens.append(lease.token)
        await server.restart()
        await client.connection_pool.disconnect()
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)
