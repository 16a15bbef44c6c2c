"""A process's mark of wanting a key ("want" key) goes when it is served, and the moment a
process gives another after releasing a key for it is spent by its next lease of the key,
not by the holder whose exit released it."""

from collections.abc import AsyncIterator, Mapping

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from asaga.locks import RedisLockProvider, _lease
from asaga.locks._lease import Leases
from asaga.locks._memory import _MemoryBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_served_want_is_deleted_and_exits_keep_their_idle_grant(
    client: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Q waits for P's key (its want is set), gets it, leaves: its want is gone, so P's
    next lease exits keep the key idle instead of releasing it for nobody."""
    async with (
        RedisLockProvider(client, prefix=redis_prefix) as p,
        RedisLockProvider(client, prefix=redis_prefix) as q,
    ):
        want = p._backend.want_key("k")
        q_waits = anyio.Event()  # Q found the key held (its want is set) and waits
        q_served = anyio.Event()
        wait_released = q._backend.wait_released

        async def waiting(key: str) -> None:
            q_waits.set()
            await wait_released(key)

        monkeypatch.setattr(q._backend, "wait_released", waiting)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def q_lease() -> None:
                    async with q.lease("k", ttl=5.0, wait=5.0):
                        assert not await client.exists(want)
                        q_served.set()

                async with p.lease("k", ttl=5.0):
                    tg.start_soon(q_lease)
                    await q_waits.wait()
                    assert await client.exists(want)
                await q_served.wait()
            assert not await client.exists(want)
            async with p.lease("k", ttl=5.0):
                pass
            # No checkpoint since the exit: the re-granted key is kept idle, not released.
            assert p._leases._queues["k"].idle


async def test_another_process_want_is_kept_when_the_key_is_acquired(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    async with RedisLockProvider(client, prefix=redis_prefix) as p:
        want = p._backend.want_key("k")
        await client.set(want, "someone-else", px=5000)
        async with p.lease("k", ttl=5.0):
            assert await client.get(want) == b"someone-else"


class _Yielding:
    """A memory backend whose handoffs release the key for another process (-1)."""

    def __init__(self) -> None:
        self.inner = _MemoryBackend()
        self.block = self.inner.block
        self.acquires = 0

    async def try_acquire(self, key: str, ttl: float) -> tuple[int, float]:
        self.acquires += 1
        return await self.inner.try_acquire(key, ttl)

    async def renew(self, grants: Mapping[str, int], ttl: float) -> bool:
        return await self.inner.renew(grants, ttl)

    async def release(self, key: str, grant: int) -> None:
        await self.inner.release(key, grant)

    async def handoff(self, key: str, grant: int, ttl: float, streak: int) -> int:
        await self.inner.release(key, grant)
        return -1

    async def extend(self, key: str, grant: int, end: int, ttl: float) -> int:
        return 0

    async def wait_released(self, key: str) -> None:
        await self.inner.wait_released(key)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_courtesy_pause_is_not_spent_in_the_holders_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_lease, "_COURTESY", 3600.0)
    backend = _Yielding()
    leases = Leases(backend)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(leases.run_renewer)
            async with leases.lease(["k"], ttl=5.0, wait=None):
                pass
            # The exit released the key for another process and returned at once.
            assert "k" not in leases._queues
            assert backend.acquires == 1
            entered = False

            async def again() -> None:
                nonlocal entered
                async with leases.lease(["k"], ttl=5.0, wait=None):
                    entered = True

            async with anyio.create_task_group() as inner:
                inner.start_soon(again)
                for _ in range(100):
                    await anyio.lowlevel.checkpoint()
                # The next lease of this process lets the other process go first.
                assert backend.acquires == 1
                assert not entered
                inner.cancel_scope.cancel()
            assert "k" not in leases._queues
            tg.cancel_scope.cancel()
