"""Step timeouts kept by one timer per event loop (asyncio): attempts of many runs time out
on time, whatever order they end in, and the timer goes once no attempt is left."""

import anyio
import pytest

from asaga import Saga, SagaFailed, step
from asaga._deadlines import deadlines
from asaga.testing import virtual_time

pytestmark = pytest.mark.anyio


class Timed(Saga):
    """One step with a timeout: it waits ``wait`` seconds (longer: it times out)."""

    wait: float

    @step(timeout=0.2)
    async def work(wait: float) -> float:
        await anyio.sleep(wait)
        return wait


async def test_concurrent_runs_time_out_on_time_whatever_order_they_end_in() -> None:
    """Runs started together, ending in an order unrelated to their start: those over the
    timeout fail with TimeoutError, the others complete; none waits past its deadline."""
    waits = [0.5 if i % 3 == 0 else 0.01 * (20 - i % 17) / 20 for i in range(60)]
    outcomes: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            outcomes[i] = (await Timed.run(wait=waits[i])).output
        except SagaFailed as exc:
            outcomes[i] = exc.__cause__

    started = anyio.current_time()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(len(waits)):
                tg.start_soon(one, i)
    assert anyio.current_time() - started < 0.45  # the slow ones were cut at 0.2 s
    for i, wait in enumerate(waits):
        if wait > 0.2:
            assert isinstance(outcomes[i], TimeoutError), outcomes[i]
        else:
            assert outcomes[i] == wait


async def test_a_shorter_timeout_is_not_held_up_by_a_longer_one() -> None:
    """An attempt with a short timeout that starts while one with a long timeout is in
    flight still times out at its own deadline."""

    class Long(Saga):
        @step(timeout=30)
        async def long(running: anyio.Event) -> None:
            running.set()
            await anyio.sleep(0.5)

    class Short(Saga):
        @step(timeout=0.05)
        async def short() -> None:
            await anyio.sleep(10)

    running = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Long.run(running=running))
        await running.wait()  # the long attempt is in flight
        started = anyio.current_time()
        with pytest.raises(SagaFailed) as info:
            await Short.run()
        assert isinstance(info.value.__cause__, TimeoutError)
        assert anyio.current_time() - started < 0.4


async def test_the_timer_goes_once_no_attempt_is_left(anyio_backend: str) -> None:
    """Nothing of the timer is left behind (it would keep a closed event loop alive)."""
    if anyio_backend != "asyncio":
        pytest.skip("trio's cancel scopes keep their own deadlines")

    async def one(wait: float) -> None:
        await Timed.run(wait=wait)

    async with anyio.create_task_group() as tg:
        for wait in (0.05, 0.01, 0.03):  # the first started ends last
            tg.start_soon(one, wait)
    with pytest.raises(SagaFailed):
        await Timed.run(wait=1)
    timer = deadlines()
    assert timer._timed == 0
    assert timer._handle is None
    assert all(not queue for queue in timer._queues.values())


async def test_attempts_that_ended_are_not_kept_behind_a_long_one(anyio_backend: str) -> None:
    """One attempt runs long; many others with the same timeout end meanwhile: the timer
    keeps only a bounded share of them (their flights are not kept alive)."""
    if anyio_backend != "asyncio":
        pytest.skip("trio's cancel scopes keep their own deadlines")

    class Hang(Saga):
        @step(timeout=60)
        async def hang(ready: anyio.Event, release: anyio.Event) -> None:
            ready.set()
            await release.wait()

    class Quick(Saga):
        @step(timeout=60)
        async def quick() -> int:
            return 1

    ready, release = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Hang.run(ready=ready, release=release))
        await ready.wait()
        for _ in range(2000):
            await Quick.run()
        timer = deadlines()
        assert timer._timed < 200  # was 2001: every ended attempt behind the long one
        release.set()
    assert timer._timed == 0


async def test_a_timeout_fires_after_virtual_time_ends(anyio_backend: str) -> None:
    """An attempt started inside a virtual_time() block (a deadline far ahead in virtual
    time) still runs when the block ends and the clock goes back: an attempt with the same
    timeout started after it times out on the real clock, not behind it."""
    if anyio_backend != "asyncio":
        pytest.skip("virtual time of the event loop: asyncio (trio's scopes keep their own)")

    class Slow(Saga):
        cancel_grace = 0.01

        @step(timeout=0.2)
        async def slow(release: anyio.Event) -> None:
            await release.wait()

    class Short(Saga):
        @step(timeout=0.2)
        async def short() -> None:
            await anyio.sleep(5)

    release = anyio.Event()
    async with anyio.create_task_group() as tg:
        with virtual_time():
            await anyio.sleep(3600)  # an hour of virtual time
            tg.start_soon(lambda: Slow.run(release=release))
            await anyio.wait_all_tasks_blocked()
        started = anyio.current_time()
        with pytest.raises(SagaFailed) as info:
            await Short.run()
        assert isinstance(info.value.__cause__, TimeoutError)
        assert anyio.current_time() - started < 2
        release.set()
