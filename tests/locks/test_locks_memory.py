"""Leases in memory: exclusion, FIFO order, fencing tokens, timeouts, loss, multi-key.

The same machinery (single flight, handoff, renewal, shielded release) backs the Redis
provider; these tests run on asyncio and trio.
"""

import time

import anyio
import pytest

from asaga.locks import Lease, LeaseLost, LeaseTimeout, MemoryLockProvider

pytestmark = pytest.mark.anyio


async def test_mutual_exclusion_under_200_contenders() -> None:
    """A read-modify-write counter inside the lease ends exact."""
    locks = MemoryLockProvider()
    counter = 0

    async def worker() -> None:
        nonlocal counter
        for _ in range(5):
            async with locks.lease("inventory:sku-1", ttl=5.0, wait=30.0):
                value = counter
                await anyio.lowlevel.checkpoint()  # another task would interleave here
                counter = value + 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(worker)
    assert counter == 1000


async def test_waiters_are_served_in_arrival_order_with_rising_tokens() -> None:
    """FIFO: contenders get the lease in the order they queued; tokens strictly increase."""
    locks = MemoryLockProvider()
    order: list[int] = []
    tokens: list[int] = []
    release = anyio.Event()

    async def holder(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with locks.lease("k", ttl=5.0) as lease:
            tokens.append(lease.token)
            task_status.started()
            await release.wait()

    async def contender(i: int) -> None:
        async with locks.lease("k", ttl=5.0) as lease:
            order.append(i)
            tokens.append(lease.token)

    def queued() -> int:
        return len(locks._leases._queues["k"].waiters)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(holder)
            for i in range(10):
                tg.start_soon(contender, i)
                while queued() < i + 1:  # wait until contender i is in the queue
                    await anyio.lowlevel.checkpoint()
            release.set()
    assert order == list(range(10))
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 11


async def test_wait_bound_raises_lease_timeout_and_leaves_the_queue() -> None:
    """wait= bounds acquisition; the one that gave up no longer blocks those behind it."""
    locks = MemoryLockProvider()
    release = anyio.Event()
    got: list[str] = []

    async def holder(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with locks.lease("k", ttl=5.0):
            task_status.started()
            await release.wait()

    async def patient() -> None:
        async with locks.lease("k", ttl=5.0, wait=30.0):
            got.append("patient")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(holder)
            with pytest.raises(LeaseTimeout) as info:
                async with locks.lease("k", ttl=5.0, wait=0.01):
                    pass
            assert info.value.keys == ("k",)
            tg.start_soon(patient)
            await anyio.lowlevel.checkpoint()
            release.set()
    assert got == ["patient"]


async def test_cancelled_holder_frees_the_key_at_once() -> None:
    """A holder cancelled mid-body releases at once, not after its (long) TTL."""
    locks = MemoryLockProvider()
    inside = anyio.Event()

    async def holder() -> None:
        async with locks.lease("k", ttl=600.0):
            inside.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await inside.wait()
        tg.cancel_scope.cancel()
    with anyio.fail_after(5):
        async with locks.lease("k", ttl=1.0, wait=0) as lease:
            assert lease.token == 2


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    """A waiter cancelled while queued is removed; the next one still gets the lease."""
    locks = MemoryLockProvider()
    release = anyio.Event()
    got: list[str] = []

    async def holder(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with locks.lease("k", ttl=5.0):
            task_status.started()
            await release.wait()

    async def waiter(name: str) -> None:
        async with locks.lease("k", ttl=5.0):
            got.append(name)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(holder)
            async with anyio.create_task_group() as doomed:
                doomed.start_soon(waiter, "cancelled")
                await anyio.lowlevel.checkpoint()
                doomed.cancel_scope.cancel()
            tg.start_soon(waiter, "second")
            await anyio.lowlevel.checkpoint()
            release.set()
    assert got == ["second"]


async def test_lost_lease_cancels_the_body_with_lease_lost() -> None:
    """If the lease expires while held (here: the event loop was blocked past the TTL),
    the renewal finds it gone, the body is cancelled and LeaseLost raised."""
    locks = MemoryLockProvider()
    reached_end = False
    held: list[Lease] = []

    async def stall_while_holding() -> None:
        nonlocal reached_end
        async with locks.lease("k", ttl=0.05) as lease:
            held.append(lease)
            time.sleep(0.1)  # noqa: ASYNC251 - blocks the loop, renewal included: expiry
            await anyio.sleep_forever()  # the renewal runs now, finds it lost, cancels this
            reached_end = True

    with anyio.fail_after(10), pytest.raises(LeaseLost) as info:
        await stall_while_holding()
    assert not reached_end
    assert held[0].lost
    assert held[0].remaining == 0.0
    assert info.value.keys == ("k",)


async def test_body_exceptions_pass_through_unwrapped() -> None:
    """An exception raised in the body comes out as itself, and the key is freed."""
    locks = MemoryLockProvider()
    with pytest.raises(KeyError):
        async with locks.lease("k", ttl=5.0):
            raise KeyError("inside")
    async with locks.lease("k", ttl=5.0, wait=0):
        pass


async def test_extend_and_remaining() -> None:
    """extend() renews for the given ttl; remaining counts down from it."""
    locks = MemoryLockProvider()
    async with locks.lease("k", ttl=5.0) as lease:
        assert 0 < lease.remaining <= 5.0
        await lease.extend(60.0)
        assert lease.remaining > 5.0
        assert lease.key == "k"


async def test_multi_key_leases_take_keys_in_sorted_order() -> None:
    """Two bulk operations over the same keys in opposite orders never deadlock."""
    locks = MemoryLockProvider()
    done: list[str] = []

    async def bulk(name: str, keys: list[str]) -> None:
        for _ in range(20):
            async with locks.lease(*keys, ttl=5.0, wait=10.0) as lease:
                assert lease.keys == tuple(sorted(keys))
                await anyio.lowlevel.checkpoint()
        done.append(name)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(bulk, "ab", ["sku-a", "sku-b", "sku-c"])
            tg.start_soon(bulk, "ba", ["sku-c", "sku-b", "sku-a"])
    assert sorted(done) == ["ab", "ba"]


async def test_multi_key_is_all_or_nothing() -> None:
    """If one key cannot be had, the keys already taken are given back."""
    locks = MemoryLockProvider()
    release = anyio.Event()

    async def hold_b(task_status: anyio.abc.TaskStatus[None]) -> None:
        async with locks.lease("b", ttl=5.0):
            task_status.started()
            await release.wait()

    async with anyio.create_task_group() as tg:
        await tg.start(hold_b)
        with pytest.raises(LeaseTimeout):
            async with locks.lease("a", "b", ttl=5.0, wait=0.01):
                pass
        async with locks.lease("a", ttl=5.0, wait=0):  # "a" was given back
            pass
        release.set()


async def test_fencing_token_check() -> None:
    """is_current() tells a resource whether a lease is still the newest grant."""
    locks = MemoryLockProvider()
    async with locks.lease("k", ttl=5.0) as old:
        assert locks.is_current(old)
    async with locks.lease("k", ttl=5.0) as new:
        assert locks.is_current(new)
        assert not locks.is_current(old)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl must be a positive number"),
        ({"ttl": float("inf")}, "ttl must be a positive number"),
        ({"ttl": 1e13}, "ttl must be between 0.001 s and"),
        ({"ttl": 0.0001}, "ttl must be between 0.001 s and"),
        ({"ttl": 1, "wait": -1}, "wait must be a number"),
    ],
)
async def test_invalid_arguments(kwargs: dict[str, float], message: str) -> None:
    """TTL is mandatory and finite; wait is >= 0."""
    locks = MemoryLockProvider()
    with pytest.raises(ValueError, match=message):
        async with locks.lease("k", **kwargs):
            pass


async def test_contender_arriving_during_a_release_is_not_stranded() -> None:
    """Regression: a caller that queues while the holder's release is on its way (a round
    trip in a real backend) becomes the head and gets the key, which is free."""
    from asaga.locks._lease import Leases
    from asaga.locks._memory import _MemoryBackend

    releasing = anyio.Event()
    gate = anyio.Event()

    class SlowRelease(_MemoryBackend):
        async def release(self, key: str, grant: int) -> None:
            releasing.set()
            await gate.wait()
            await super().release(key, grant)

    leases = Leases(SlowRelease())
    got: list[int] = []

    async def holder() -> None:
        async with leases.lease(["k"], ttl=5.0, wait=None):
            pass

    async def late() -> None:
        async with leases.lease(["k"], ttl=5.0, wait=5.0) as lease:
            got.append(lease.token)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await releasing.wait()
            tg.start_soon(late)
            while not leases._queues["k"].waiters:
                await anyio.lowlevel.checkpoint()
            gate.set()
    assert got == [2]
    async with leases.lease(["k"], ttl=5.0, wait=0):  # and the key is not stuck
        pass


async def test_per_key_state_is_dropped_when_nobody_holds_or_waits() -> None:
    """Leases on many distinct keys, released, expired or waited for in vain, leave no
    per-key state behind; tokens still rise per key, and an earlier holder is no longer
    current."""
    locks = MemoryLockProvider()
    backend = locks._backend
    for n in range(300):
        async with locks.lease(f"idempotency:{n}", ttl=5.0):
            pass
    async with locks.lease("k", ttl=5.0) as first:  # a waiter that gives up
        with pytest.raises(LeaseTimeout):
            async with locks.lease("k", ttl=5.0, wait=0.01):
                pass

    async def stall_past_the_ttl() -> None:
        async with locks.lease("lost", ttl=0.05):
            time.sleep(0.1)  # noqa: ASYNC251 - the lease expires meanwhile
            await anyio.sleep_forever()  # until LeaseLost cancels this

    with anyio.fail_after(10), pytest.raises(LeaseLost):
        await stall_past_the_ttl()
    kept = {name: value for name, value in vars(backend).items() if isinstance(value, dict)}
    assert kept
    assert {name: value for name, value in kept.items() if value} == {}
    assert locks._leases._queues == {}

    async with locks.lease("k", ttl=5.0) as second:
        assert second.token > first.token
        assert locks.is_current(second)
        assert not locks.is_current(first)
