"""Idempotency keys: the work runs at most once per key; duplicates replay its outcome."""

from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from asaga.integrations.idempotency import (
    Idempotency,
    IdempotencyKeyReused,
    MemoryOutcomeStore,
    Outcome,
    RedisOutcomeStore,
)
from asaga.locks import MemoryLockProvider, RedisLockProvider

pytestmark = pytest.mark.anyio


def counting_work(calls: list[int], gate: anyio.Event | None = None):  # type: ignore[no-untyped-def]
    async def work() -> Outcome:
        calls.append(1)
        if gate is not None:
            await gate.wait()
        return Outcome(status=201, body=b'{"n": %d}' % len(calls))

    return work


async def test_sequential_duplicates_replay_the_first_outcome() -> None:
    """The second call with the key runs nothing and gets the first outcome, marked."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []
    first, replayed = await idem.run("k1", "req-a", counting_work(calls))
    again, replayed_again = await idem.run("k1", "req-a", counting_work(calls))
    assert (replayed, replayed_again) == (False, True)
    assert again == first
    assert again.body == b'{"n": 1}'
    assert calls == [1]


async def test_concurrent_duplicates_wait_for_the_first() -> None:
    """Duplicates arriving while the first runs wait for it and replay its outcome."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []
    gate = anyio.Event()
    results: list[tuple[Outcome, bool]] = []

    async def request() -> None:
        results.append(await idem.run("k1", "req-a", counting_work(calls, gate)))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(request)
            while not calls:
                await anyio.lowlevel.checkpoint()
            gate.set()
    assert calls == [1]
    assert sorted(replayed for _, replayed in results) == [False, True, True, True, True]
    assert len({outcome.body for outcome, _ in results}) == 1


async def test_a_cancelled_request_stores_nothing() -> None:
    """If the work is cancelled (the client left), a retry runs it again."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []
    with anyio.move_on_after(0.01):
        await idem.run("k1", "req-a", counting_work(calls, anyio.Event()))
    outcome, replayed = await idem.run("k1", "req-a", counting_work(calls))
    assert not replayed
    assert calls == [1, 1]
    assert outcome.body == b'{"n": 2}'


async def test_reused_key_for_another_request_is_refused() -> None:
    """The same key with a different request fingerprint raises IdempotencyKeyReused."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    await idem.run("k1", "req-a", counting_work([]))
    with pytest.raises(IdempotencyKeyReused):
        await idem.run("k1", "req-b", counting_work([]))


async def test_window_expires() -> None:
    """After the window the key is free again."""
    now = [100.0]
    store = MemoryOutcomeStore(clock=lambda: now[0])
    idem = Idempotency(store, MemoryLockProvider(), window=60.0)
    calls: list[int] = []
    await idem.run("k1", "req-a", counting_work(calls))
    now[0] += 59.0
    _, replayed = await idem.run("k1", "req-a", counting_work(calls))
    assert replayed
    now[0] += 2.0  # past the window
    _, replayed = await idem.run("k1", "req-a", counting_work(calls))
    assert not replayed
    assert calls == [1, 1]


class TestRedis:
    """The Redis outcome store with the Redis lease provider."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def idem(self, redis_url: str, redis_prefix: str) -> AsyncIterator[Idempotency]:
        client = aioredis.Redis.from_url(redis_url)
        async with RedisLockProvider(client, prefix=redis_prefix) as locks:
            yield Idempotency(RedisOutcomeStore(client, prefix=f"{redis_prefix}idem:"), locks)
        await client.aclose()

    async def test_replay_across_processes(self, idem: Idempotency) -> None:
        """Outcomes survive in Redis and replay byte for byte."""
        calls: list[int] = []
        first, _ = await idem.run("k1", "req-a", counting_work(calls))
        again, replayed = await idem.run("k1", "req-a", counting_work(calls))
        assert replayed
        assert again == first
        assert calls == [1]
