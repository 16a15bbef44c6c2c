"""Leases in Redis, against the real server (asyncio: redis-py's client is asyncio-only).

Each test uses its own key prefix (deleted afterwards). "Processes" are either separate
providers in this process (each with its own single-flight queue, as two processes have)
or real OS processes running tests/locks/lock_worker.py.
"""

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from asaga.locks import (
    Lease,
    LeaseLost,
    LeaseTimeout,
    LeaseUnavailable,
    RedisLockProvider,
    StaleWrite,
)

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("lock_worker.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def locks(client: aioredis.Redis, redis_prefix: str) -> AsyncIterator[RedisLockProvider]:
    async with RedisLockProvider(client, prefix=redis_prefix) as provider:
        yield provider


async def test_mutual_exclusion_under_200_contenders(
    locks: RedisLockProvider, client: aioredis.Redis, redis_prefix: str
) -> None:
    """A counter in Redis updated read-modify-write inside the lease ends exact."""
    counter = f"{redis_prefix}counter"

    async def worker() -> None:
        for _ in range(3):
            async with locks.lease("inventory:sku-1", ttl=5.0, wait=30.0):
                value = int(await client.get(counter) or 0)
                await client.set(counter, value + 1)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(worker)
    assert int(await client.get(counter) or 0) == 600


async def test_two_providers_exclude_each_other_and_both_progress(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Two providers (as two processes) on one hot key: exact counter, both progress."""
    counter = f"{redis_prefix}counter"
    done = {"a": 0, "b": 0}

    async def run(name: str) -> None:
        async with RedisLockProvider(client, prefix=redis_prefix) as locks:

            async def worker() -> None:
                for _ in range(10):
                    async with locks.lease("hot", ttl=5.0, wait=30.0):
                        value = int(await client.get(counter) or 0)
                        await client.set(counter, value + 1)
                        done[name] += 1

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(worker)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a")
            tg.start_soon(run, "b")
    assert done == {"a": 200, "b": 200}
    assert int(await client.get(counter) or 0) == 400


async def test_tokens_increase_across_providers(client: aioredis.Redis, redis_prefix: str) -> None:
    """Fencing tokens are per key and strictly increasing, whoever is granted."""
    tokens = []
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as one,
        RedisLockProvider(client, prefix=redis_prefix) as two,
    ):
        for provider in (one, two, one, two):
            async with provider.lease("k", ttl=5.0) as lease:
                tokens.append(lease.token)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 4


async def test_taken_over_lease_cancels_holder_and_rejects_stale_write(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """The holder's key expires and another process takes it: the stale holder's fenced
    write is rejected (and counted), and its work is cancelled with LeaseLost."""
    stock = f"{redis_prefix}stock"
    await client.set(stock, 10)
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as slow,
        RedisLockProvider(client, prefix=redis_prefix) as fast,
    ):

        async def stale_holder() -> None:
            async with slow.lease("sku", ttl=3.0) as stale:
                seen = int(await client.get(stock) or 0)
                # The key expires while this holder is stalled (simulated: the lock key
                # vanishes), and the other process is granted it and writes.
                await client.delete(f"{redis_prefix}lock:{{sku}}")
                async with fast.lease("sku", ttl=3.0) as fresh:
                    assert fresh.token > stale.token
                    await fast.fenced(fresh, ("SET", stock, seen - 1))
                with pytest.raises(StaleWrite):
                    await slow.fenced(stale, ("SET", stock, seen - 1))
                await anyio.sleep_forever()  # until the renewal (every 1 s) finds it gone

        with anyio.fail_after(10), pytest.raises(LeaseLost):
            await stale_holder()
        assert slow.stale_writes == 1
        assert await slow.stale_count("sku") == 1
    assert int(await client.get(stock) or 0) == 9


async def test_cancelled_holder_releases_immediately(locks: RedisLockProvider) -> None:
    """A holder cancelled mid-body frees the key at once, not after its TTL."""
    inside = anyio.Event()

    async def holder() -> None:
        async with locks.lease("k", ttl=600.0):
            inside.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await inside.wait()
        tg.cancel_scope.cancel()
    async with locks.lease("k", ttl=1.0, wait=0):
        pass


async def test_crashed_holder_frees_the_key_after_its_ttl(
    locks: RedisLockProvider, redis_url: str, redis_prefix: str
) -> None:
    """A process that dies holding the lease (no release) blocks the key only until TTL."""
    with anyio.fail_after(60):
        out = await anyio.run_process(
            [sys.executable, str(WORKER), redis_url, redis_prefix, "crash", "0.3"]
        )
    assert out.stdout.decode().strip() == "held"
    with pytest.raises(LeaseTimeout):
        async with locks.lease("crash", ttl=1.0, wait=0):
            pass
    with anyio.fail_after(10):
        async with locks.lease("crash", ttl=1.0, wait=5.0) as lease:
            assert lease.token > 1  # a newer grant than the crashed holder's (token 1)


async def test_two_os_processes_with_a_bounded_pool(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """Two worker processes and this one contend on one key; each finishes its share;
    here 100 contenders share a pool of 3 connections without deadlock."""
    counter = f"{redis_prefix}counter"
    workers = [
        await anyio.open_process(
            [sys.executable, str(WORKER), redis_url, redis_prefix, "count", "100"]
        )
        for _ in range(2)
    ]
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=3, timeout=30)
    bounded = aioredis.Redis(connection_pool=pool)
    try:
        async with RedisLockProvider(bounded, prefix=redis_prefix) as locks:

            async def worker() -> None:
                for _ in range(2):
                    async with locks.lease("counter", ttl=5.0, wait=60.0):
                        value = int(await bounded.get(counter) or 0)
                        await bounded.set(counter, value + 1)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for _ in range(100):
                        tg.start_soon(worker)
                outputs = []
                for process in workers:
                    assert process.stdout is not None
                    await process.wait()
                    outputs.append((await process.stdout.receive()).decode().strip())
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
            await process.aclose()
        await bounded.aclose()
        await pool.disconnect()
    assert outputs == ["100", "100"]
    assert int(await client.get(counter) or 0) == 400


async def test_no_oversell_with_stalled_holders(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """The measured failure of plain locks: 100 ms TTL, holders stalling 150 ms. With
    fenced writes, every unit counted as reserved was taken from stock exactly once."""
    stock = f"{redis_prefix}stock"
    initial = 300
    await client.set(stock, initial)
    processes = [
        await anyio.open_process(
            [sys.executable, str(WORKER), redis_url, redis_prefix, "reserve", "200", "0.05"]
        )
        for _ in range(2)
    ]
    reserved = stale = 0
    try:
        with anyio.fail_after(120):
            for process in processes:
                await process.wait()
                assert process.stdout is not None
                words = (await process.stdout.receive()).decode().split()
                reserved += int(words[1])
                stale += int(words[3])
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
            await process.aclose()
    final = int(await client.get(stock) or 0)
    assert final >= 0
    assert reserved == initial - final  # no oversell: nothing sold twice
    assert reserved > 0
    assert stale > 0  # stalls did lose leases, and the fence refused those writes


async def test_unreachable_redis_fails_fast_with_a_clear_error() -> None:
    """Redis down: LeaseUnavailable at acquire, well within the wait bound."""
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        async with RedisLockProvider(client, prefix="unused:") as locks:
            with anyio.fail_after(10), pytest.raises(LeaseUnavailable) as info:
                async with locks.lease("k", ttl=1.0, wait=30.0):
                    pass
        assert "Redis is unreachable" in str(info.value)
    finally:
        await client.aclose()


async def test_local_handoffs_need_no_round_trip_but_stay_fenced(
    locks: RedisLockProvider, client: aioredis.Redis, redis_prefix: str
) -> None:
    """Queued tasks of one process get consecutive tokens of the process's grant; every
    holder's fenced write is accepted, and a write from an earlier grant is refused."""
    tokens: list[int] = []
    held: list[Lease] = []
    release = anyio.Event()
    stock = f"{redis_prefix}stock"

    async def first(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with locks.lease("k", ttl=5.0) as lease:
            held.append(lease)
            tokens.append(lease.token)
            task_status.started()
            await release.wait()

    async def next_holder() -> None:
        async with locks.lease("k", ttl=5.0, wait=10.0) as lease:
            tokens.append(lease.token)
            await locks.fenced(lease, ("INCR", stock))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(first)
            for _ in range(20):
                tg.start_soon(next_holder)
            await anyio.lowlevel.checkpoint()
            release.set()
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 21
    assert int(await client.get(stock) or 0) == 20
    async with locks.lease("k", ttl=5.0) as newest:
        assert newest.token > tokens[-1]
        with pytest.raises(StaleWrite) as info:  # the first holder, from an older grant
            await locks.fenced(held[0], ("INCR", stock))
    assert info.value.keys == ("k",)
    assert info.value.token == held[0].token == tokens[0]


async def test_a_lease_held_past_its_ttl_is_renewed(
    locks: RedisLockProvider, client: aioredis.Redis, redis_prefix: str
) -> None:
    """Held for several TTLs, the lease is renewed (by the provider's renewer) and stays
    this holder's: no one else gets it meanwhile, and its fenced writes are accepted."""
    stock = f"{redis_prefix}stock"
    async with locks.lease("k", ttl=0.3) as lease:
        await anyio.sleep(1.0)  # over three TTLs
        assert not lease.lost
        async with RedisLockProvider(client, prefix=redis_prefix) as other:
            with pytest.raises(LeaseTimeout):
                await _hold_briefly(other, "k")
        await locks.fenced(lease, ("SET", stock, 1))
    assert int(await client.get(stock) or 0) == 1


async def _hold_briefly(locks: RedisLockProvider, key: str) -> None:
    async with locks.lease(key, ttl=1.0, wait=0.2):
        pass


async def test_errors_inside_the_provider_block_are_not_wrapped(client: aioredis.Redis) -> None:
    """An exception raised in `async with RedisLockProvider(...)` comes out as itself."""
    with pytest.raises(KeyError):
        async with RedisLockProvider(client, prefix="unused-wrap:"):
            raise KeyError("mine")


async def test_every_key_the_provider_writes_expires(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """300 distinct Idempotency-Keys, each leased once and released, leave no key without
    a TTL under the provider's prefix; neither do a contended key (``want:``) nor a
    refused stale write (``stale:``). Nothing the lock provider writes lives forever."""
    from asaga.integrations.idempotency import Idempotency, Outcome, RedisOutcomeStore

    prefix = f"{redis_prefix}locks:"

    async def work() -> Outcome:
        return Outcome(status=201, body=b"{}")

    async with (
        RedisLockProvider(client, prefix=prefix) as locks,
        RedisLockProvider(client, prefix=prefix) as other,
    ):
        idem = Idempotency(RedisOutcomeStore(client, prefix=f"{redis_prefix}idem:"), locks)
        for n in range(300):
            await idem.run(f"key-{n}", "request", work)

        async with locks.lease("hot", ttl=5.0) as stale:
            with pytest.raises(LeaseTimeout):  # marks the key as wanted by another process
                await _hold_briefly(other, "hot")
            assert 0 < await client.pttl(f"{prefix}want:{{hot}}") <= 2000
        async with other.lease("hot", ttl=5.0):  # served: its want is deleted
            with pytest.raises(StaleWrite):  # counted under stale:{hot}
                await locks.fenced(stale, ("SET", f"{prefix}data:{{hot}}", 1))

    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    written = {key.decode().removeprefix(prefix).split(":")[0] for key in keys}
    assert "stale" in written
    no_ttl = [key for key in keys if await client.pttl(key) == -1]
    assert no_ttl == []


async def test_tokens_keep_rising_when_the_fence_counter_is_gone(
    locks: RedisLockProvider, client: aioredis.Redis, redis_prefix: str
) -> None:
    """The per-key counter expires some time after the last grant (or is lost): the next
    grant's token is still larger than every earlier one, and the earlier holder's write
    is still refused."""
    async with locks.lease("k", ttl=5.0) as first:
        pass
    await client.delete(f"{redis_prefix}fence:{{k}}")  # as if it had expired
    async with locks.lease("k", ttl=5.0) as second:
        assert second.token > first.token
        with pytest.raises(StaleWrite):
            await locks.fenced(first, ("SET", f"{redis_prefix}data:{{k}}", 1))


async def test_a_head_leaves_no_per_key_state_behind(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A head that waited in vain for a key another process held (``LeaseTimeout``), and
    saw no release notification afterwards (the holder released it after the key's
    ``want:`` mark expired), leaves no waiting state in the provider: its bookkeeping does
    not grow per distinct key."""
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as holder,
        RedisLockProvider(client, prefix=redis_prefix) as waiter,
    ):
        for n in range(20):
            key = f"k{n}"
            async with holder.lease(key, ttl=30.0):
                with pytest.raises(LeaseTimeout):
                    async with waiter.lease(key, ttl=5.0, wait=0.01):
                        pass
                await client.delete(f"{redis_prefix}want:{{{key}}}")  # as if expired
        assert waiter._backend.waiting == {}
        assert waiter._leases._queues == {}


async def test_a_command_redis_refuses_is_not_reported_as_redis_down(
    locks: RedisLockProvider, client: aioredis.Redis, redis_prefix: str
) -> None:
    """A fenced call whose command Redis refuses (a typo, WRONGTYPE) raises Redis's own
    ResponseError, noting that the commands before it were applied, not LeaseUnavailable
    ("Redis is unreachable"); a malformed command or a key the lease does not hold is a
    ValueError, before anything is sent."""
    from redis.exceptions import ResponseError

    data, hash_key = f"{redis_prefix}data:{{k}}", f"{redis_prefix}hash:{{k}}"
    await client.hset(hash_key, "f", 1)
    async with locks.lease("k", ttl=5.0) as lease:
        with pytest.raises(ResponseError, match="WRONGTYPE") as info:
            await locks.fenced(lease, ("SET", data, 1), ("INCR", hash_key))
        assert "the commands before it were applied" in info.value.__notes__[0]
        assert await client.get(data) == b"1"
        with pytest.raises(ResponseError, match="Unknown Redis command"):
            await locks.fenced(lease, ("HINCR", hash_key, "f", 1))
        with pytest.raises(ValueError, match=r"each command is \(name, redis_key"):
            await locks.fenced(lease, ("SET",))
        with pytest.raises(ValueError, match="the lease holds \\['k'\\], not 'other'"):
            await locks.fenced(lease, ("SET", data, 2), key="other")
    assert locks.stale_writes == 0


async def test_a_token_from_a_clock_that_went_back_is_still_refused(
    locks: RedisLockProvider, client: aioredis.Redis, redis_prefix: str
) -> None:
    """After a data loss, a server whose clock is behind the old one (a failover, a clock
    stepped back) grants tokens below those of an earlier holder: that holder's write is
    refused all the same, as its token is not of the new grant's block."""
    data = f"{redis_prefix}data:{{k}}"
    lock, fence = f"{redis_prefix}lock:{{k}}", f"{redis_prefix}fence:{{k}}"
    async with locks.lease("k", ttl=5.0) as old:
        await client.delete(lock, fence)  # the data loss
        # A new holder, granted by a clock 10 s behind the one that granted `old`.
        behind = old.token - 10_000_000
        await client.set(lock, behind, px=5000)
        with pytest.raises(StaleWrite, match=f"another grant \\(tokens from {behind}\\)"):
            await locks.fenced(old, ("SET", data, "old"))
    assert await client.get(data) is None


@pytest.mark.parametrize("fairness", [0, -1, 1001, 2.0, True, "8"])
async def test_fairness_out_of_bounds_is_refused(client: aioredis.Redis, fairness: object) -> None:
    """fairness is an int from 1 to MAX_FAIRNESS (a grant's tokens span fewer than that,
    which fenced writes check)."""
    with pytest.raises(ValueError, match="fairness must be an int from 1 to 1000"):
        RedisLockProvider(client, fairness=fairness)  # type: ignore[arg-type]
