"""Failure and compensation: what is undone, in which order, and under cancellation."""

import anyio
import pytest

from asaga import CompensationFailed, Retry, Saga, SagaFailed, step
from asaga.testing import EventRecorder, VirtualClock, fail_step

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The failure the tests inject."""


def make_diamond(log: list[str]) -> type[Saga]:
    """a -> (b, c) -> d; every step compensable (a test makes one fail with fail_step)."""

    class Diamond(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            return a + 1

        @step
        async def c(a: int) -> int:
            return a + 2

        @step
        async def d(b: int, c: int) -> int:
            return b + c

        @a.compensate
        async def undo_a(a: int) -> None:
            log.append(f"undo a={a}")

        @b.compensate
        async def undo_b(b: int) -> None:
            log.append(f"undo b={b}")

        @c.compensate
        async def undo_c(c: int, a: int) -> None:
            log.append(f"undo c={c} a={a}")

        @d.compensate
        async def undo_d(d: int) -> None:
            log.append(f"undo d={d}")

    return Diamond


async def test_success_compensates_nothing() -> None:
    """A run that succeeds never calls a compensation."""
    log: list[str] = []
    result = await make_diamond(log).run()
    assert result.output == 5
    assert log == []


async def test_failure_compensates_completed_steps_in_reverse_order() -> None:
    """d fails: c and b are undone (in any order) before a; d itself is not undone."""
    log: list[str] = []
    recorder = EventRecorder()
    diamond = make_diamond(log)
    with fail_step(diamond, "d", error=Boom("d")), pytest.raises(SagaFailed) as info:
        await diamond.run(hooks=[recorder])
    err = info.value
    assert type(err) is SagaFailed
    assert err.step == "d"
    assert isinstance(err.__cause__, Boom)
    assert err.run_id
    assert sorted(log[:2]) == ["undo b=2", "undo c=3 a=1"]
    assert log[2] == "undo a=1"
    assert len(log) == 3
    assert set(err.compensated[:2]) == {"b", "c"}
    assert err.compensated[2] == "a"
    assert recorder.steps("compensation_succeeded") == list(err.compensated)
    recorder.assert_compensated([{"b", "c"}, "a"])
    recorder.assert_not_compensated("d")
    assert recorder.kinds()[-1] == "run_failed"


async def test_only_completed_steps_are_compensated() -> None:
    """b fails: a and (if it completed) c are undone; b and d never."""
    log: list[str] = []
    recorder = EventRecorder()
    diamond = make_diamond(log)
    with fail_step(diamond, "b", error=Boom("b")), pytest.raises(SagaFailed) as info:
        await diamond.run(hooks=[recorder])
    assert "b" not in info.value.compensated
    assert "d" not in info.value.compensated
    recorder.assert_not_compensated("b", "d")
    assert info.value.compensated[-1] == "a"
    assert log[-1] == "undo a=1"


async def test_independent_compensations_run_concurrently() -> None:
    """Compensations of independent branches overlap: each waits for the other's signal."""
    left_in, right_in = anyio.Event(), anyio.Event()

    class Branches(Saga):
        @step
        async def left() -> int:
            return 1

        @step
        async def right() -> int:
            return 2

        @step
        async def fail(left: int, right: int) -> None:
            raise Boom

        @left.compensate
        async def undo_left(left: int) -> None:
            left_in.set()
            await right_in.wait()

        @right.compensate
        async def undo_right(right: int) -> None:
            right_in.set()
            await left_in.wait()

    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await Branches.run()
    assert sorted(info.value.compensated) == ["left", "right"]


async def test_transitive_order_through_a_step_without_compensation() -> None:
    """a -> b (no compensation) -> c: a is undone only after c, through b."""
    log: list[str] = []

    class Chain(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            return a

        @step
        async def c(b: int) -> int:
            return b

        @step
        async def d(c: int) -> int:
            raise Boom

        @a.compensate
        async def undo_a(a: int) -> None:
            log.append("a")

        @c.compensate
        async def undo_c(c: int) -> None:
            await anyio.lowlevel.checkpoint()
            log.append("c")

    with pytest.raises(SagaFailed):
        await Chain.run()
    assert log == ["c", "a"]


async def test_failing_compensation_does_not_stop_the_others(
    virtual_clock: VirtualClock,
) -> None:
    """A compensation that fails for good (after its retry's backoff, in virtual time) is
    collected; the rest still run."""
    log: list[str] = []
    attempts = 0
    recorder = EventRecorder()

    class Broken(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            return 2

        @step
        async def c(b: int) -> None:
            raise Boom("step")

        @a.compensate
        async def undo_a(a: int) -> None:
            log.append("a")

        @b.compensate(retry=Retry(max_attempts=2, base_delay=5))
        async def undo_b(b: int) -> None:
            nonlocal attempts
            attempts += 1
            raise RuntimeError("cannot undo b")

    with pytest.raises(CompensationFailed) as info:
        await Broken.run(hooks=[recorder])
    err = info.value
    assert isinstance(err, SagaFailed)
    assert err.step == "c"
    assert isinstance(err.__cause__, Boom)
    assert err.compensated == ("a",)
    assert err.failed_compensations == ("b",)
    assert isinstance(err.errors, ExceptionGroup)
    assert [str(e) for e in err.errors.exceptions] == ["cannot undo b"]
    assert attempts == 2
    assert virtual_clock.elapsed == 5  # the backoff between b's compensation attempts
    assert log == ["a"]
    recorder.assert_compensated(["a"])
    finals = [e for e in recorder.of("compensation_failed") if getattr(e, "final", False)]
    assert [e.step for e in finals] == ["b"]


async def test_compensation_timeout_counts_as_failure(virtual_clock: VirtualClock) -> None:
    """A compensation over its timeout is abandoned and reported, not awaited forever
    (its 30 s pass in virtual time)."""
    never = anyio.Event()

    class Stuck(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> None:
            raise Boom

        @a.compensate(timeout=30)
        async def undo_a(a: int) -> None:
            await never.wait()

    with pytest.raises(CompensationFailed) as info:
        await Stuck.run()
    assert isinstance(info.value.errors.exceptions[0], TimeoutError)
    assert virtual_clock.elapsed == 30


async def test_in_flight_steps_settle_then_are_compensated() -> None:
    """on_failure = "wait": a step in flight when another fails finishes and is undone,
    and nothing that depends on it starts."""
    log: list[str] = []
    failing = anyio.Event()
    slow_running = anyio.Event()

    class Settle(Saga):
        @step
        async def slow() -> int:
            slow_running.set()
            await failing.wait()
            await anyio.lowlevel.checkpoint()
            return 1

        @step
        async def fails() -> None:
            await slow_running.wait()
            failing.set()
            raise Boom

        @step
        async def after_slow(slow: int) -> int:
            log.append("after_slow ran")
            return slow

        @slow.compensate
        async def undo_slow(slow: int) -> None:
            log.append("undo slow")

    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await Settle.run()
    assert info.value.step == "fails"
    assert log == ["undo slow"]


async def test_on_failure_cancel_cancels_in_flight_steps() -> None:
    """on_failure = "cancel": steps in flight are cancelled and, not having completed,
    not compensated."""
    recorder = EventRecorder()
    log: list[str] = []
    forever = anyio.Event()
    started = anyio.Event()

    class Cancel(Saga):
        on_failure = "cancel"

        @step
        async def hang() -> int:
            started.set()
            await forever.wait()
            return 1

        @step
        async def fails() -> None:
            await started.wait()
            raise Boom

        @hang.compensate
        async def undo_hang(hang: int) -> None:
            log.append("undo hang")

    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await Cancel.run(hooks=[recorder])
    assert info.value.compensated == ()
    assert log == []
    assert recorder.steps("step_cancelled") == ["hang"]


async def test_external_cancellation_unwinds_then_propagates(virtual_clock: VirtualClock) -> None:
    """A cancelled caller (client disconnect): running steps are cancelled (once the
    default ``cancel_grace`` of 10 s ran out: virtual time), completed steps compensated
    shielded, and the cancellation is what the caller sees."""
    log: list[str] = []
    recorder = EventRecorder()
    second_running = anyio.Event()

    class Request(Saga):
        @step
        async def reserve() -> str:
            return "r1"

        @step
        async def charge(reserve: str) -> str:
            second_running.set()
            await anyio.sleep_forever()
            return "never"

        @reserve.compensate
        async def release(reserve: str) -> None:
            await anyio.lowlevel.checkpoint()  # a real await inside the shield
            log.append(f"released {reserve}")

    async with anyio.create_task_group() as tg:

        async def handler() -> None:
            await Request.run(hooks=[recorder])

        tg.start_soon(handler)
        with anyio.fail_after(5):
            await second_running.wait()
        tg.cancel_scope.cancel()

    assert log == ["released r1"]
    assert virtual_clock.elapsed == 10  # the grace the step in flight had
    assert recorder.steps("step_cancelled") == ["charge"]
    failed = recorder.of("run_failed")
    assert len(failed) == 1
    assert getattr(failed[0], "cancelled", False) is True


async def test_cancel_scope_sees_its_cancellation_not_saga_failed(
    virtual_clock: VirtualClock,
) -> None:
    """``move_on_after`` around run() catches its own cancellation: nothing else escapes
    (once the step in flight had its grace, in virtual time)."""
    log: list[str] = []
    running = anyio.Event()

    class Request(Saga):
        @step
        async def reserve() -> str:
            return "r1"

        @step
        async def wait(reserve: str) -> None:
            running.set()
            await anyio.sleep_forever()

        @reserve.compensate
        async def release(reserve: str) -> None:
            log.append("released")

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(Request.run)
            await running.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert virtual_clock.elapsed == 10
    assert log == ["released"]


async def test_cancellation_during_unwinding_lets_compensations_finish() -> None:
    """If the caller is cancelled while compensations run, they still finish; then the
    cancellation (not SagaFailed) propagates."""
    log: list[str] = []
    unwinding = anyio.Event()
    proceed = anyio.Event()

    class Unwinding(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> None:
            raise Boom

        @a.compensate
        async def undo_a(a: int) -> None:
            unwinding.set()
            await proceed.wait()
            log.append("undo a finished")

    outcome: list[str] = []

    async def caller() -> None:
        try:
            await Unwinding.run()
        except SagaFailed:
            outcome.append("SagaFailed")
            raise
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        with anyio.fail_after(5):
            await unwinding.wait()
        tg.cancel_scope.cancel()  # the caller is cancelled mid-unwind...
        proceed.set()  # ...and the shielded compensation still completes

    assert log == ["undo a finished"]
    assert outcome == ["cancelled"]


async def test_compensation_receives_inputs_and_optional_steps() -> None:
    """Compensations resolve parameters like steps; a non-ancestor with a default gets the
    default when that step did not complete."""
    seen: list[tuple[str, object, object]] = []
    a_done = anyio.Event()

    class Optional(Saga):
        @step
        async def a(order_id: str) -> str:
            a_done.set()
            return f"a:{order_id}"

        @step
        async def sibling(order_id: str) -> str:
            await a_done.wait()
            raise Boom

        @a.compensate
        async def undo_a(a: str, order_id: str, sibling: str = "absent") -> None:
            seen.append((a, order_id, sibling))

    with pytest.raises(SagaFailed):
        await Optional.run(order_id="o-9")
    assert seen == [("a:o-9", "o-9", "absent")]
