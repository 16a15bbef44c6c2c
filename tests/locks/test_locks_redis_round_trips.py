"""Round trips a Redis lease saves, and the guarantees it keeps while saving them.

A process's grant outlives its holder until the next turn of the event loop (an *idle*
grant), so a task that leases a key again and again has it re-granted in one round trip
instead of a release and an acquire; holders queued in one process pass the grant along
without a round trip, and a background task extends the grant's block of tokens (renewing
it) before it runs out. These tests pin that the work is saved (counting the backend's
calls) and that every guarantee still holds: tokens rise, stale and ended leases cannot
write, a loss is detected, other processes get their turn, and nothing is left held.
"""

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from asaga.locks import Lease, LeaseLost, RedisLockProvider, StaleWrite
from asaga.locks._redis import _EXTEND, MAX_FAIRNESS

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def count_calls(locks: RedisLockProvider) -> Counter[str]:
    """Count the calls the provider's backend makes to Redis, by kind."""
    calls: Counter[str] = Counter()
    backend = locks._backend
    for name in ("try_acquire", "renew", "release", "handoff", "extend"):
        method: Callable[..., Awaitable[Any]] = getattr(backend, name)

        def counted(*args: Any, _name: str = name, _method: Any = method) -> Awaitable[Any]:
            calls[_name] += 1
            return _method(*args)

        setattr(backend, name, counted)
    return calls


async def test_a_task_leasing_a_key_again_and_again_pays_one_round_trip_per_lease(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """100 leases in a row by one task: one acquire, then one re-grant as each lease
    ends (the next lease takes the new grant's first token), no release until the key is
    left alone; each lease has a new, larger token and its fenced write is accepted."""
    stock = f"{redis_prefix}stock:{{k}}"
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        calls = count_calls(locks)
        tokens = []
        for _ in range(100):
            async with locks.lease("k", ttl=5.0) as lease:
                tokens.append(lease.token)
                await locks.fenced(lease, ("INCR", stock))
        assert tokens == sorted(set(tokens))
        assert calls == {"try_acquire": 1, "handoff": 100}
        with anyio.fail_after(5):  # the next turns of the event loop free the idle grant
            while calls["release"] < 1:  # noqa: ASYNC110 (a count)
                await anyio.sleep(0.01)
        assert calls["release"] == 1
        assert await client.exists(f"{redis_prefix}lock:{{k}}") == 0
    assert int(await client.get(stock) or 0) == 100


# A resource's own Lua check of a lease's token, as docs/locks.md describes it.
CHECK = """
local grant = tonumber(redis.call('get', KEYS[1]) or '-1')
local token = tonumber(ARGV[1])
if grant < 0 or token < grant or token >= grant + 1000 then return 0 end
redis.call('set', KEYS[2], ARGV[2])
return 1
"""


async def test_an_ended_lease_cannot_write_once_the_next_lease_of_its_process_starts(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A lease that ends has the key re-granted (kept idle for the next lease of its
    process, which takes it with no round trip): neither fenced() nor a resource's own
    check of the token (fence_key) takes a write of the lease that ended, even before the
    next lease starts (refused and counted by fenced())."""
    data = f"{redis_prefix}data:{{k}}"
    check = client.register_script(CHECK)
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        calls = count_calls(locks)
        async with locks.lease("k", ttl=5.0) as first:
            pass
        fence = locks.fence_key("k")
        assert await check(keys=[fence, data], args=[first.token, "first"]) == 0
        assert calls["handoff"] == 1  # as the first ended
        async with locks.lease("k", ttl=5.0) as second:
            assert second.token > first.token
            with pytest.raises(StaleWrite) as info:
                await locks.fenced(first, ("SET", data, "first"))
            assert info.value.token == first.token
            assert "the lease has ended" in str(info.value)
            assert await check(keys=[fence, data], args=[first.token, "first"]) == 0
            assert await check(keys=[fence, data], args=[second.token, "second"]) == 1
        assert locks.stale_writes == 1
        assert await locks.stale_count("k") == 1
    assert await client.get(data) == b"second"


async def test_a_lease_on_an_idle_grant_lost_meanwhile_is_stopped_and_fenced(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """The idle grant's key vanished (a data loss; deleted here) and another process took
    it before the next lease of this process, which is handed the idle grant's token
    without a round trip: its fenced write is refused, and its first renewal (a third of
    the TTL after the grant) finds the loss and cancels it with LeaseLost; the next lease
    waits for the other process and gets a newer grant."""
    data = f"{redis_prefix}data:{{k}}"
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        async with locks.lease("k", ttl=0.6) as first:
            pass
        reached_end = False
        held: list[Lease] = []

        async def on_the_idle_grant() -> None:
            nonlocal reached_end
            async with locks.lease("k", ttl=0.6) as lease:
                held.append(lease)
                with pytest.raises(StaleWrite):
                    await locks.fenced(lease, ("SET", data, "stale"))
                await anyio.sleep(5)  # cancelled by the first renewal
                reached_end = True

        # Before the next turn of the loop (the idle grant is still this process's), the
        # key vanishes and another process is granted it: done from a blocking client, so
        # that this event loop runs nothing meanwhile.
        lock, fence = f"{redis_prefix}lock:{{k}}", f"{redis_prefix}fence:{{k}}"
        with redis.Redis.from_url(redis_url) as blocking:
            theirs = int(blocking.get(fence) or 0) + 1
            blocking.set(fence, theirs, px=60_000)
            blocking.set(lock, theirs, px=5_000)
        with anyio.fail_after(5), pytest.raises(LeaseLost):
            await on_the_idle_grant()
        assert not reached_end
        assert held[0].lost
        assert first.token < held[0].token < theirs
        await client.delete(lock)  # the other process's lease ends
        async with locks.lease("k", ttl=5.0, wait=5.0) as mine:
            assert mine.token > theirs
    assert await client.get(data) is None


async def test_a_grant_handed_on_late_is_renewed_before_it_expires(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A grant handed to the next holder of the process a while after it was made is
    renewed by when two thirds of its TTL are left, counted from the grant, not from the
    new holder's start: held for several TTLs, that holder keeps the key, and its fenced
    write is accepted."""
    data = f"{redis_prefix}data:{{k}}"
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        calls = count_calls(locks)
        first_token = 0
        entered = anyio.Event()

        async def first() -> None:
            nonlocal first_token
            async with locks.lease("k", ttl=0.6) as lease:
                first_token = lease.token
                entered.set()
                await anyio.sleep(0.15)  # a quarter of the TTL: no renewal yet

        async def second() -> None:
            await entered.wait()
            async with locks.lease("k", ttl=0.6) as lease:
                assert lease.token == first_token + 1  # handed on, no round trip
                assert lease.remaining <= 0.6 - 0.15
                await anyio.sleep(2.0)  # over three TTLs
                assert not lease.lost
                assert calls["renew"] >= 3
                await locks.fenced(lease, ("SET", data, 1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
        assert calls["try_acquire"] == 1
        assert calls["handoff"] == 1  # as the second ended (its key kept idle)


async def test_a_grant_with_less_than_two_thirds_of_its_ttl_left_is_renewed_by_redis(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A holder that stalls past a third of the TTL without a renewal (the event loop was
    blocked) leaves a grant too close to its expiry to be handed on: its queued successor
    gets a new grant from Redis (one round trip), with a full TTL."""
    import time

    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        calls = count_calls(locks)
        first_token = 0
        entered = anyio.Event()

        async def first() -> None:
            nonlocal first_token
            async with locks.lease("k", ttl=0.6) as lease:
                first_token = lease.token
                entered.set()
                await anyio.lowlevel.checkpoint()  # the second one queues
                time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop: no renewal runs

        async def second() -> None:
            await entered.wait()
            async with locks.lease("k", ttl=0.6) as lease:
                assert lease.token > first_token + 1  # a new grant, not the next token
                assert lease.remaining > 0.6 * 2 / 3

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
        assert calls["handoff"] == 2  # for the second, and as it ended
        assert calls["try_acquire"] == 1


async def test_a_lease_handed_on_and_lost_while_held_cancels_its_holder(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A lease on the next token of the process's grant is watched like any other: when
    the key is lost while it is held (deleted here, and granted to another process), its
    renewal finds it gone, its body is cancelled with LeaseLost, and its write is
    refused."""
    data = f"{redis_prefix}data:{{k}}"
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as locks,
        RedisLockProvider(client, prefix=redis_prefix) as other,
    ):
        reached_end = False
        first_token = 0
        entered = anyio.Event()
        held: list[Lease] = []

        async def first() -> None:
            nonlocal first_token
            async with locks.lease("k", ttl=0.6) as lease:
                first_token = lease.token
                entered.set()
                await anyio.lowlevel.checkpoint()  # the second one queues

        async def second_holder() -> None:
            nonlocal reached_end
            await entered.wait()
            async with locks.lease("k", ttl=0.6) as second:
                held.append(second)
                assert second.token == first_token + 1
                await client.delete(f"{redis_prefix}lock:{{k}}")
                async with other.lease("k", ttl=5.0):
                    with pytest.raises(StaleWrite):
                        await locks.fenced(second, ("SET", data, "stale"))
                await anyio.sleep(5)  # cancelled by the next renewal
                reached_end = True

        async def second() -> None:
            with pytest.raises(LeaseLost):
                await second_holder()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                tg.start_soon(second)
        assert not reached_end
        assert held[0].lost
    assert await client.get(data) is None


async def test_another_process_gets_its_turn_from_a_task_leasing_in_a_loop(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A task that leases a hot key back to back never lets its grant go idle long
    enough for a release; another process that wants the key still gets it within a few
    blocks of holders: the block's extension is refused when another process wants the
    key, and the grant is released to it when the block runs out."""
    counts = {"loop": 0, "other": 0}
    other_got_it_after: list[int] = []
    stop = anyio.Event()
    twenty = anyio.Event()

    async with (
        RedisLockProvider(client, prefix=redis_prefix) as locks,
        RedisLockProvider(client, prefix=redis_prefix) as other,
    ):

        async def loop() -> None:
            while not stop.is_set():
                async with locks.lease("hot", ttl=5.0):
                    counts["loop"] += 1
                    if counts["loop"] == 20:
                        twenty.set()
                    await client.ping()

        async def wants() -> None:
            await twenty.wait()
            started = counts["loop"]
            async with other.lease("hot", ttl=5.0, wait=10.0):
                other_got_it_after.append(counts["loop"] - started)
                counts["other"] += 1
            stop.set()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(loop)
                tg.start_soon(wants)
    assert counts["other"] == 1
    assert other_got_it_after[0] <= 3 * 8


async def test_idle_grants_are_released_when_the_provider_exits(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A grant left idle just before the provider exits is released on the way out: no
    key stays held until its TTL."""
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as locks,
        locks.lease("a", ttl=60.0),
        locks.lease("b", ttl=60.0),
    ):
        pass
    assert await client.exists(f"{redis_prefix}lock:{{a}}", f"{redis_prefix}lock:{{b}}") == 0
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as again,
        again.lease("a", "b", ttl=1.0, wait=0),
    ):
        pass


async def test_a_contender_arriving_during_an_idle_release_is_not_refused(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """With `wait=0` ("only if free now"), a lease asked for while this process releases
    its idle grant (nobody holds the key) is granted, not refused."""
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        for n in range(20):
            async with locks.lease("k", ttl=5.0):
                pass
            await anyio.lowlevel.checkpoint()  # the idle release starts
            async with locks.lease("k", ttl=1.0 + n, wait=0):
                pass


async def test_extensions_keep_tokens_in_the_fenced_range_and_below_the_counter(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Holders queued in one process pass its grant along, the block extended in the
    background: a grant's tokens stay within the range fenced writes accept (grant +
    MAX_FAIRNESS) however many holders its extensions serve, the counter always covers
    them, and every holder's fenced write is accepted; the next grant, by any process, is
    above every token handed out."""
    stock = f"{redis_prefix}stock:{{k}}"
    tokens: list[int] = []
    async with (
        RedisLockProvider(client, prefix=redis_prefix, fairness=100) as locks,
        RedisLockProvider(client, prefix=redis_prefix) as other,
    ):
        calls = count_calls(locks)

        async def worker() -> None:
            for _ in range(30):
                async with locks.lease("k", ttl=5.0, wait=30.0) as lease:
                    tokens.append(lease.token)
                    grant = int(await client.get(f"{redis_prefix}lock:{{k}}") or 0)
                    assert grant <= lease.token < grant + MAX_FAIRNESS
                    counter = int(await client.get(f"{redis_prefix}fence:{{k}}") or 0)
                    assert lease.token <= counter
                    await locks.fenced(lease, ("INCR", stock))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(worker)
        assert tokens == sorted(set(tokens))
        assert calls["extend"] >= 10
        # Far fewer round trips for the lease than holders: about one per 1000 tokens.
        assert calls["try_acquire"] + calls["handoff"] <= 10
        with anyio.fail_after(5):  # waits for the idle grant's release
            async with other.lease("k", ttl=5.0) as theirs:
                assert theirs.token > tokens[-1]
    assert int(await client.get(stock) or 0) == 1500


async def test_the_extension_script_checks_its_arguments_before_writing(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Bad arguments to the extension script raise before anything is written."""
    extend = client.register_script(_EXTEND)
    lock, fence = f"{redis_prefix}lock:{{k}}", f"{redis_prefix}fence:{{k}}"
    keys = [lock, fence, f"{redis_prefix}want:{{k}}"]
    await client.set(lock, 100, px=5000)
    good = ["100", "108", 8, 5000, "me", MAX_FAIRNESS, 60000]
    # grant, end, block, ttl_ms, identity, max fairness, keep_ms: one bad at a time
    for index, bad in [(0, ""), (1, "x"), (1, "100"), (2, 0), (3, "soon"), (3, 0), (3, -5),
                       (4, ""), (5, "many"), (6, -1), (6, None)]:  # fmt: skip
        args = list(good)
        if bad is None:
            args = args[:index]
        else:
            args[index] = bad
        with pytest.raises(ResponseError, match="bad arguments"):
            await extend(keys=keys, args=args)
    assert await client.exists(fence) == 0
    assert await client.pttl(lock) <= 5000
    assert await extend(keys=keys, args=good) == 116
    assert await client.get(fence) == b"115"


async def test_a_fenced_write_loads_its_script_when_redis_does_not_know_it(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Fenced writes send EVALSHA straight away; a server that does not know the script
    (restarted, flushed, another node) gets it loaded, and the write goes through once."""
    import uuid

    from asaga.locks._redis import _FENCED

    data = f"{redis_prefix}data:{{k}}"
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        # The same script under a SHA no server has seen.
        locks._backend.fenced = client.register_script(f"{_FENCED}\n-- {uuid.uuid4().hex}")
        async with locks.lease("k", ttl=5.0) as lease:
            assert await locks.fenced(lease, ("INCR", data)) == [1]
            assert await locks.fenced(lease, ("INCR", data)) == [2]
