"""Regression tests for defects found in review (each names what it pins)."""

import anyio
import pytest

from asaga import CompensationFailed, Retry, Saga, SagaFailed, compose, map_each, step
from asaga.locks import LeaseLost
from asaga.locks._lease import Leases
from asaga.locks._memory import _MemoryBackend
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


class Interrupt(BaseException):
    """Like KeyboardInterrupt: a BaseException that is not an Exception."""


async def test_base_exception_in_a_step_still_unwinds() -> None:
    """A step raising a non-Exception BaseException: completed steps are compensated and
    the exception comes out as itself (not wrapped in a group)."""
    undone: list[str] = []

    class S(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> None:
            raise Interrupt("stop")

        @a.compensate
        async def undo_a(a: int) -> None:
            undone.append("a")

    recorder = EventRecorder()
    with pytest.raises(Interrupt):
        await S.run(hooks=[recorder])
    assert undone == ["a"]
    assert recorder.kinds()[-1] == "run_failed"


async def test_child_undone_if_cancelled_while_its_hooks_drain(anyio_backend: str) -> None:
    """A composed child with an async hook completes, then the parent is cancelled (its
    sibling fails with on_failure="cancel") while the child's hooks drain: the child is
    still undone."""
    side_effects: list[str] = []
    draining = anyio.Event()

    async def slow_hook(event: object) -> None:
        if getattr(event, "kind", "") == "run_succeeded":
            draining.set()
            await anyio.sleep(0.5)  # a slow telemetry export, while the parent fails

    class Child(Saga):
        hooks = (slow_hook,)

        @step
        async def reserve() -> str:
            side_effects.append("reserved")
            return "r1"

        @reserve.compensate
        async def unreserve(reserve: str) -> None:
            side_effects.append("unreserved")

    class Parent(Saga):
        on_failure = "cancel"
        child = compose(Child)

        @step
        async def other() -> None:
            await draining.wait()
            raise RuntimeError("payment declined")

    with anyio.fail_after(10), pytest.raises(SagaFailed):
        await Parent.run()
    assert side_effects == ["reserved", "unreserved"]


async def test_map_over_a_one_shot_iterator_is_refused() -> None:
    """A generator would be empty on a retried attempt: map_each asks for a list."""

    async def one(x: int) -> int:
        return x

    class S(Saga):
        @step
        async def numbers():  # type: ignore[no-untyped-def]
            return (n for n in range(3))

        each = map_each(one, over="numbers")

    with pytest.raises(SagaFailed) as info:
        await S.run()
    assert "one-shot iterator" in str(info.value.__cause__)


async def test_a_hung_renewal_stops_the_holder_before_expiry() -> None:
    """If renewing never answers, the holder is cancelled with LeaseLost before its
    lease could expire (so no one else can be granted the key while it works)."""

    class HungRenewal(_MemoryBackend):
        async def renew(self, grants: object, ttl: float) -> bool:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    leases = Leases(HungRenewal())
    reached_end = False

    async def hold() -> None:
        nonlocal reached_end
        async with leases.lease(["k"], ttl=0.3, wait=None):
            await anyio.sleep_forever()  # until LeaseLost cancels this
            reached_end = True

    with anyio.fail_after(5), pytest.raises(LeaseLost):
        await hold()
    assert not reached_end


async def test_step_timeout_names_the_step() -> None:
    """A step over its timeout fails with a TimeoutError that says which and how long."""
    never = anyio.Event()

    class S(Saga):
        @step(timeout=0.01)
        async def slow() -> None:
            await never.wait()

    with pytest.raises(SagaFailed) as info:
        await S.run()
    message = str(info.value.__cause__)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert message == "step 'slow', attempt 1: ran over its timeout of 0.01 s"


async def test_a_steps_own_timeout_error_is_not_taken_for_its_deadline() -> None:
    """A step with a timeout that raises a TimeoutError of its own (its client's) before
    the deadline fails with that error: it is not reported as running over the timeout."""

    class S(Saga):
        @step(timeout=5)
        async def call() -> None:
            raise TimeoutError

    with pytest.raises(SagaFailed) as info:
        await S.run()
    cause = info.value.__cause__
    assert type(cause) is TimeoutError
    assert cause.args == ()


async def test_no_retry_over_work_left_undone() -> None:
    """A composed step whose child could not undo itself is not retried (that would hide
    the state that needs a human); the run reports CompensationFailed."""
    runs: list[int] = []

    class Child(Saga):
        @step
        async def a() -> int:
            runs.append(1)
            return 1

        @step
        async def b(a: int) -> None:
            raise RuntimeError("fails")

        @a.compensate
        async def undo_a(a: int) -> None:
            raise RuntimeError("cannot undo")

    class Parent(Saga):
        child = compose(Child, retry=Retry(max_attempts=3, base_delay=0))

    with pytest.raises(CompensationFailed):
        await Parent.run()
    assert runs == [1]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_redis_provider_refuses_trio_clearly(anyio_backend: str) -> None:
    """RedisLockProvider on trio says it needs asyncio instead of failing obscurely."""
    import redis.asyncio as aioredis

    from asaga.locks import RedisLockProvider

    client = aioredis.Redis(host="127.0.0.1", port=1)
    with pytest.raises(RuntimeError, match="needs asyncio"):
        async with RedisLockProvider(client):
            pass
