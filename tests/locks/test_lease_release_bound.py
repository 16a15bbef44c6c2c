"""A release or handoff cut short by the release bound (a backend that stalls) never
leaves a key's local queue busy: the turn is passed on, nothing is assumed held, and the
next local contender acquires as any other once the backend frees the key (its TTL)."""

from collections.abc import Mapping

import anyio
import anyio.abc
import pytest

from asaga.locks import _lease
from asaga.locks._lease import Leases
from asaga.locks._memory import _MemoryBackend

pytestmark = pytest.mark.anyio

_BOUND = 0.05


@pytest.fixture(autouse=True)
def _short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lease, "_RELEASE_BOUND", _BOUND)


class _Stalling:
    """A memory backend whose calls named in ``stall`` (the n-th of each, counted from
    1) never answer: they wait until cancelled, as a call to a stalled Redis would."""

    def __init__(self, stall: Mapping[str, int]) -> None:
        self.inner = _MemoryBackend()
        self.block = self.inner.block
        self.stall = dict(stall)
        self.calls: dict[str, int] = {}
        self.stalled = anyio.Event()  # a stalled call has started

    async def _maybe_stall(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.stall.get(name) == self.calls[name]:
            self.stalled.set()
            await anyio.Event().wait()  # never set: only the bound ends it

    async def try_acquire(self, key: str, ttl: float) -> tuple[int, float]:
        return await self.inner.try_acquire(key, ttl)

    async def renew(self, grants: Mapping[str, int], ttl: float) -> bool:
        return await self.inner.renew(grants, ttl)

    async def release(self, key: str, grant: int) -> None:
        await self._maybe_stall("release")
        await self.inner.release(key, grant)

    async def handoff(self, key: str, grant: int, ttl: float, streak: int) -> int:
        await self._maybe_stall("handoff")
        return await self.inner.handoff(key, grant, ttl, streak)

    async def extend(self, key: str, grant: int, end: int, ttl: float) -> int:
        return await self.inner.extend(key, grant, end, ttl)

    async def wait_released(self, key: str) -> None:
        await self.inner.wait_released(key)

    def expire(self, key: str) -> None:
        """What the key's TTL does: free it, whoever holds it."""
        if key in self.inner.holders:
            self.inner._free(key)


async def test_a_release_cut_short_leaves_the_key_free_for_the_next_lease() -> None:
    backend = _Stalling({"release": 1})
    leases = Leases(backend)
    with anyio.fail_after(10):
        async with leases.lease(["k"], ttl=30.0, wait=None) as first:
            pass
        assert backend.stalled.is_set()
        assert "k" not in leases._queues  # not busy: nothing assumed held here
        backend.expire("k")
        async with leases.lease(["k"], ttl=30.0, wait=0) as second:
            assert second.token > first.token


async def test_a_handoff_cut_short_makes_the_waiter_head_not_stuck() -> None:
    """A waiter with wait=None is not left waiting forever: it becomes the head and gets
    the key once the backend frees it."""
    backend = _Stalling({"handoff": 1})
    leases = Leases(backend)
    got: list[int] = []
    holding = anyio.Event()
    leave = anyio.Event()

    async def holder() -> None:
        async with leases.lease(["k"], ttl=30.0, wait=None) as lease:
            got.append(lease.token)
            holding.set()
            await leave.wait()

    async def waiter() -> None:
        async with leases.lease(["k"], ttl=30.0, wait=None) as lease:
            got.append(lease.token)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await holding.wait()
            tg.start_soon(waiter)
            while not leases._queues["k"].waiters:
                await anyio.lowlevel.checkpoint()
            leave.set()
            await backend.stalled.wait()
            # The holder's handoff is cut short by the bound: the waiter is the head now
            # and waits for the backend, which still has the holder's grant.
            while leases._queues["k"].waiters:
                await anyio.lowlevel.checkpoint()
            assert len(got) == 1
            backend.expire("k")
    assert len(got) == 2
    assert got[1] > got[0]
    assert "k" not in leases._queues


async def test_multi_key_release_cut_short_passes_every_keys_turn() -> None:
    backend = _Stalling({"release": 1})
    leases = Leases(backend)
    with anyio.fail_after(10):
        async with leases.lease(["a", "b", "c"], ttl=30.0, wait=None):
            pass
        assert not leases._queues  # keys not reached within the bound are not left busy
        for key in ("a", "b", "c"):
            backend.expire(key)
        async with leases.lease(["a", "b", "c"], ttl=30.0, wait=0):
            pass


@pytest.mark.parametrize("stall", ["handoff", "release"])
async def test_idle_grant_cut_short_leaves_the_key_free(stall: str) -> None:
    """With the provider's background tasks: the re-grant at the holder's exit (handoff)
    or the background release of the idle grant (release) stalls; later leases of the key
    in this process, with wait=None too, acquire once the backend frees the key."""
    backend = _Stalling({stall: 1})
    leases = Leases(backend)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(leases.run_renewer)
            async with leases.lease(["k"], ttl=30.0, wait=None) as first:
                pass
            await backend.stalled.wait()
            queue = leases._queues.get("k")
            while queue is not None and (queue.busy or queue.idle):
                await anyio.lowlevel.checkpoint()
                queue = leases._queues.get("k")
            backend.expire("k")
            async with leases.lease(["k"], ttl=30.0, wait=None) as second:
                assert second.token > first.token
            tg.cancel_scope.cancel()


async def test_idle_regrant_cut_short_at_the_next_lease_acquires_normally() -> None:
    """The next lease finds the key idle but asks another TTL: the one-step re-grant
    (handoff) stalls; it is not taken for a grant, and the lease acquires normally."""
    backend = _Stalling({"handoff": 2})
    leases = Leases(backend)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(leases.run_renewer)

            async def free_when_stalled() -> None:
                await backend.stalled.wait()
                backend.expire("k")

            tg.start_soon(free_when_stalled)
            # No checkpoint between the two leases: the idle grant is still there.
            async with leases.lease(["k"], ttl=30.0, wait=None) as first:
                pass
            assert leases._queues["k"].idle
            async with leases.lease(["k"], ttl=20.0, wait=None) as second:
                assert second.token > first.token
            assert backend.calls["handoff"] >= 2
            tg.cancel_scope.cancel()
