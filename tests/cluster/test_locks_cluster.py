"""RedisLockProvider on a real Redis Cluster of three primaries: acquire, release, waiting
woken by a release published on another node, fencing, renewal of a lease whose keys
live in several slots, and where the keys land.

"Processes" are separate providers in this process (each with its own single-flight
queue and subscription, as two processes have).
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from redis.asyncio.cluster import RedisCluster

from asaga.locks import LeaseLost, LeaseTimeout, RedisLockProvider, StaleWrite
from tests.cluster.nodes import keys_by_node, slots_of
from tests.redis_servers import RedisClusterServers

pytestmark = pytest.mark.anyio

KEYS = [f"inventory:sku-{n}" for n in range(12)]
"""Lease keys whose slots are spread over the three nodes."""


async def test_leases_on_keys_of_every_node(
    cluster: RedisCluster, cluster_prefix: str, redis_cluster: RedisClusterServers
) -> None:
    """Leases on twelve keys: each grant's keys (lock, fence) sit in the slot of its key,
    and the keys of all of them on at least two nodes; released, a key is granted again
    with a larger token; two providers exclude each other on every key."""
    counter = dict.fromkeys(KEYS, 0)
    async with (
        RedisLockProvider(cluster, prefix=cluster_prefix) as one,
        RedisLockProvider(cluster, prefix=cluster_prefix) as two,
    ):
        first = {}
        for key in KEYS:
            async with one.lease(key, ttl=5.0) as lease:
                first[key] = lease.token
        placed = keys_by_node(redis_cluster.ports, cluster_prefix)
        assert len(placed) >= 2, placed
        fences = [k for keys in placed.values() for k in keys if ":fence:" in k]
        assert len(slots_of(fences)) == len(KEYS)

        async def work(provider: RedisLockProvider, key: str) -> None:
            for _ in range(5):
                async with provider.lease(key, ttl=5.0, wait=20.0) as lease:
                    assert lease.token > first[key]
                    seen = counter[key]
                    await anyio.lowlevel.checkpoint()
                    counter[key] = seen + 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for key in KEYS:
                    tg.start_soon(work, one, key)
                    tg.start_soon(work, two, key)
    assert counter == dict.fromkeys(KEYS, 10)


async def test_a_release_on_any_node_wakes_the_waiter_at_once(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """A waiter of another provider is woken by the release notification, published on
    the node of the key's slot and heard through the waiter's subscription on whichever
    node it holds it: with a 30 s TTL, the fallback retry would come far too late."""
    async with (
        RedisLockProvider(cluster, prefix=cluster_prefix) as holder,
        RedisLockProvider(cluster, prefix=cluster_prefix) as waiter,
    ):
        waiting = {key: anyio.Event() for key in KEYS[:6]}
        wait_released = waiter._backend.wait_released

        async def watched(key: str) -> None:
            waiting[key].set()  # the waiter found the key held: it waits for the release
            await wait_released(key)

        waiter._backend.wait_released = watched  # type: ignore[method-assign]

        async def wait_for(key: str, got: anyio.Event) -> None:
            async with waiter.lease(key, ttl=30.0, wait=25.0):
                got.set()

        for key in KEYS[:6]:
            got = anyio.Event()
            async with anyio.create_task_group() as tg:
                async with holder.lease(key, ttl=30.0):
                    tg.start_soon(wait_for, key, got)
                    with anyio.fail_after(5):
                        await waiting[key].wait()
                    assert not got.is_set()
                with anyio.fail_after(5):
                    await got.wait()  # woken by the notification: within 5 s, not 30


async def test_a_waiter_times_out_and_a_held_key_stays_held(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """A key held by another provider: ``wait`` runs out with LeaseTimeout."""
    async with (
        RedisLockProvider(cluster, prefix=cluster_prefix) as one,
        RedisLockProvider(cluster, prefix=cluster_prefix) as two,
        one.lease(KEYS[0], ttl=5.0),
    ):
        with pytest.raises(LeaseTimeout):
            await take(two, KEYS[0], wait=0.3)


async def take(provider: RedisLockProvider, key: str, *, wait: float) -> None:
    """Hold ``key`` for an instant."""
    async with provider.lease(key, ttl=5.0, wait=wait):
        pass


async def test_fenced_writes_in_the_lease_key_slot(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """A fenced write to a key tagged with the lease key applies under the current grant
    and is refused (counted) under an older one; a data key of another slot is refused
    before anything is sent."""
    key = "inventory:sku-1"
    stock = f"{cluster_prefix}stock:{{{key}}}"
    async with (
        RedisLockProvider(cluster, prefix=cluster_prefix) as old,
        RedisLockProvider(cluster, prefix=cluster_prefix) as new,
    ):
        await cluster.hset(stock, mapping={"available": 10})
        async with old.lease(key, ttl=5.0) as stale:
            pass
        async with new.lease(key, ttl=5.0) as fresh:
            assert await new.fenced(fresh, ("HINCRBY", stock, "available", -2)) == [8]
            with pytest.raises(ValueError, match="not in the slot of the lease key"):
                await new.fenced(fresh, ("SET", f"{cluster_prefix}elsewhere", 1))
            with pytest.raises(StaleWrite):
                await old.fenced(stale, ("HINCRBY", stock, "available", -2))
        assert await cluster.hget(stock, "available") == b"8"
        assert await old.stale_count(key) == 1


async def test_a_lease_on_keys_of_several_slots_is_renewed_and_lost_as_one(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """A lease on four keys of different slots, held for four of its TTLs, is renewed
    (one script per slot); once one of its keys vanishes, the next renewal loses the whole
    lease: its body is cancelled with LeaseLost."""
    keys = KEYS[:4]
    locks = [f"{cluster_prefix}lock:{{{key}}}" for key in keys]
    assert len(slots_of(locks)) == 4
    async with RedisLockProvider(cluster, prefix=cluster_prefix) as provider:
        async with provider.lease(*keys, ttl=0.3) as lease:
            await anyio.sleep(1.2)
            assert not lease.lost
            assert [await cluster.pttl(lock) > 0 for lock in locks] == [True] * 4

        async def hold_while_a_key_vanishes() -> None:
            async with provider.lease(*keys, ttl=0.3):
                await cluster.delete(locks[2])
                await anyio.sleep_forever()  # until the renewal finds the key gone

        with anyio.fail_after(5), pytest.raises(LeaseLost):
            await hold_while_a_key_vanishes()
        assert [await cluster.exists(lock) for lock in locks] == [0, 0, 0, 0]


async def test_from_url_with_cluster_and_a_prefix_with_a_brace(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    """``from_url(url, cluster=True)`` makes (and closes) a cluster client; a prefix with
    a brace is refused on a cluster (it would move the slots of the keys)."""
    provider = RedisLockProvider.from_url(redis_cluster.url, cluster=True, prefix=cluster_prefix)
    assert isinstance(provider.client, RedisCluster)
    async with provider, provider.lease("k", ttl=5.0) as lease:
        assert lease.token > 0
    with pytest.raises(ValueError, match="prefix may not contain"):
        RedisLockProvider(provider.client, prefix="app{1}:")
