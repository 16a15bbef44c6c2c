"""A caller's cancellation never leaves a step in doubt silently (asyncio and trio).

Steps in flight when the caller is cancelled run on, shielded, until they end or the saga's
``cancel_grace`` runs out; a step that ended is compensated like any completed step; one
that had to be cut off is reported in doubt (event, exception note, ``SagaFailed``) and
compensated only by a compensation declared ``in_doubt=True``. No step starts after the
cancellation, and the cancellation is what propagates.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asaga import (
    Resource,
    Retry,
    RunStoreError,
    RunTakenOver,
    Saga,
    SagaFailed,
    StepCancelled,
    compose,
    map_each,
    step,
)
from asaga.locks import MemoryLockProvider
from asaga.runs import MemoryRunStore
from asaga.runs._record import Write
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


class Ledger:
    """Effects that land in the outside world: a write, and its undo."""

    def __init__(self) -> None:
        self.entries: set[str] = set()
        self.written = 0
        self.undone = 0

    def write(self, key: str) -> None:
        self.entries.add(key)
        self.written += 1

    def undo(self, key: str) -> None:
        self.entries.discard(key)
        self.undone += 1


async def test_a_step_whose_write_landed_is_compensated_when_the_caller_is_cancelled() -> None:
    """The caller is cancelled while a step is writing: the step finishes its write (the
    cancellation does not land inside it), is recorded as succeeded, is compensated, and
    the cancellation propagates. Before, the step was cancelled mid-write and counted as
    'never ran': its write stayed."""
    ledger = Ledger()
    writing, release = anyio.Event(), anyio.Event()
    recorder = EventRecorder()

    class Write_(Saga):
        ledger: Resource[Ledger]
        hooks = (recorder,)

        @step
        async def log(ledger: Ledger, run_id: str) -> str:
            writing.set()
            await release.wait()  # the write is on its way when the caller is cancelled
            ledger.write(run_id)
            await anyio.lowlevel.checkpoint()  # where an unshielded step was cut off
            return run_id

        @log.compensate
        async def unlog(log: str, ledger: Ledger) -> None:
            ledger.undo(log)

    async with anyio.create_task_group() as tg:

        async def caller(scope: anyio.CancelScope) -> None:
            with scope:
                await Write_.run(ledger=ledger)
            assert scope.cancelled_caught  # the cancellation propagated out of run()

        scope = anyio.CancelScope()
        tg.start_soon(caller, scope)
        await writing.wait()
        scope.cancel()
        release.set()

    assert ledger.written == 1
    assert ledger.entries == set()
    assert recorder.trace() == [
        ("run_started", None),
        ("step_started", "log"),
        ("step_succeeded", "log"),
        ("compensation_started", "log"),
        ("compensation_succeeded", "log"),
        ("run_failed", None),
    ]
    (failed,) = recorder.of("run_failed")
    assert failed.cancelled is True  # type: ignore[union-attr]
    assert failed.in_doubt == ()  # type: ignore[union-attr]


@pytest.mark.parametrize("grace", [None, 10.0])
async def test_no_step_starts_after_the_caller_is_cancelled(grace: float | None) -> None:
    """Once the caller is cancelled, the step in flight ends, and the next one never
    starts (with or without a task watching for the cancellation)."""
    started: list[str] = []
    ledger = Ledger()
    in_first, release = anyio.Event(), anyio.Event()

    class Chain(Saga):
        cancel_grace = grace
        ledger: Resource[Ledger]

        @step(timeout=5)
        async def first(ledger: Ledger) -> str:
            started.append("first")
            in_first.set()
            await release.wait()
            ledger.write("first")
            return "first"

        @first.compensate
        async def undo_first(first: str, ledger: Ledger) -> None:
            ledger.undo(first)

        @step(timeout=5)
        async def second(first: str, ledger: Ledger) -> str:
            started.append("second")
            ledger.write("second")
            return "second"

    assert Chain.__asaga__ is not None
    assert Chain.__asaga__.watch is False  # timeouts within the grace, or no grace

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with scope:
                await Chain.run(ledger=ledger)

        tg.start_soon(caller)
        await in_first.wait()
        scope.cancel()
        release.set()

    assert scope.cancelled_caught
    assert started == ["first"]
    assert ledger.entries == set()
    assert ledger.undone == 1


async def test_a_step_that_outlasts_the_grace_is_cut_off_and_reported_in_doubt() -> None:
    """A step still running ``cancel_grace`` seconds after the caller's cancellation is cut
    off. Its compensation declared ``in_doubt=True`` runs (receiving ``None`` as the
    result); a step whose compensation is not declared safe is reported in doubt: in the
    step_cancelled and run_failed events, and in a note on the cancellation."""
    recorder = EventRecorder()
    undone: list[tuple[str, Any]] = []
    entered = {"safe": anyio.Event(), "unsafe": anyio.Event()}

    class Stuck(Saga):
        cancel_grace = 0.05
        hooks = (recorder,)

        @step
        async def safe(run_id: str) -> str:
            entered["safe"].set()
            await anyio.sleep_forever()
            return run_id  # pragma: no cover - never reached

        @safe.compensate(in_doubt=True)
        async def undo_safe(safe: str | None, run_id: str) -> None:
            undone.append(("safe", safe))

        @step
        async def unsafe() -> str:
            entered["unsafe"].set()
            await anyio.sleep_forever()
            return "x"  # pragma: no cover - never reached

        @unsafe.compensate
        async def undo_unsafe(unsafe: str) -> None:
            undone.append(("unsafe", unsafe))  # pragma: no cover - must not run

    assert Stuck.__asaga__ is not None
    assert Stuck.__asaga__.watch
    notes: list[str] = []
    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with scope:
                try:
                    await Stuck.run()
                except anyio.get_cancelled_exc_class() as exc:
                    notes.extend(getattr(exc, "__notes__", []))
                    raise

        tg.start_soon(caller)
        await entered["safe"].wait()
        await entered["unsafe"].wait()
        scope.cancel()

    assert scope.cancelled_caught
    assert undone == [("safe", None)]
    cut = {e.step: e for e in recorder.of("step_cancelled")}
    assert set(cut) == {"safe", "unsafe"}
    assert all(isinstance(e, StepCancelled) and e.in_doubt for e in cut.values())
    (failed,) = recorder.of("run_failed")
    assert failed.in_doubt == ("unsafe",)  # type: ignore[union-attr]
    assert any("unsafe" in note and "in doubt" in note for note in notes)


async def test_a_step_still_waiting_for_its_lease_is_not_in_doubt() -> None:
    """A locked step that was still waiting for its lease when the caller was cancelled
    is stopped at once and did nothing: it is not reported in doubt."""
    locks = MemoryLockProvider()
    recorder = EventRecorder()
    waiting = anyio.Event()

    class Locked(Saga):
        locks: Resource[MemoryLockProvider]
        hooks = (recorder,)

        @step(lock="k")
        async def held() -> int:
            return 1  # pragma: no cover - never gets the lease

    async with locks.lease("k", ttl=30):
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                with scope:
                    await Locked.run(locks=locks)

            tg.start_soon(caller)
            while not recorder.of("step_started"):  # the step started: it waits for "k"
                await anyio.lowlevel.checkpoint()
            waiting.set()
            scope.cancel()

    (cut,) = recorder.of("step_cancelled")
    assert isinstance(cut, StepCancelled)
    assert not cut.in_doubt
    (failed,) = recorder.of("run_failed")
    assert failed.in_doubt == ()  # type: ignore[union-attr]


@pytest.mark.parametrize("safe", [False, True])
async def test_on_failure_cancel_reports_the_steps_it_cut_off_as_in_doubt(safe: bool) -> None:
    """With ``on_failure = "cancel"``, a sibling cut off in flight is in doubt:
    ``SagaFailed.in_doubt`` names it, unless its compensation is declared safe for a step
    that may not have happened (then it runs and the step counts as compensated)."""
    in_flight = anyio.Event()
    undone: list[str] = []

    class Fails(Saga):
        on_failure = "cancel"

        @step
        async def slow() -> int:
            in_flight.set()
            await anyio.sleep_forever()
            return 1  # pragma: no cover

        @slow.compensate(in_doubt=safe)
        async def undo_slow(slow: int | None) -> None:
            undone.append("slow")

        @step
        async def boom() -> int:
            await in_flight.wait()
            raise ValueError("boom")

    with pytest.raises(SagaFailed) as info:
        await Fails.run()
    if safe:
        assert info.value.in_doubt == ()
        assert info.value.compensated == ("slow",)
        assert undone == ["slow"]
    else:
        assert info.value.in_doubt == ("slow",)
        assert "in doubt" in str(info.value)
        assert undone == []


async def test_locked_step_on_the_memory_provider_keeps_its_effect_accounted() -> None:
    """A locked step with a compensation on the embedded lock provider, its caller
    cancelled at random moments: every effect belongs to a run that succeeded, or was
    undone. Before, the lease's exit raised the cancellation after the body had returned:
    the step was recorded cancelled and its effect leaked."""
    locks = MemoryLockProvider()
    ledger = Ledger()
    rng = random.Random(12)

    class Locked(Saga):
        locks: Resource[MemoryLockProvider]
        ledger: Resource[Ledger]

        @step(lock="stock")
        async def take(ledger: Ledger, run_id: str) -> str:
            await anyio.lowlevel.checkpoint()
            ledger.write(run_id)
            return run_id

        @take.compensate
        async def give_back(take: str, ledger: Ledger) -> None:
            ledger.undo(take)

    succeeded: set[str] = set()

    async def one() -> None:
        with anyio.move_on_after(rng.uniform(0, 0.002)):
            result = await Locked.run(locks=locks, ledger=ledger)
            succeeded.add(result.output)

    for _ in range(20):  # bounded: 20 waves of 10 concurrent runs
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert ledger.entries == succeeded
    assert ledger.written == len(succeeded) + ledger.undone


async def test_the_exception_does_not_depend_on_the_hooks() -> None:
    """A durable run taken over raises ``RunTakenOver`` itself, with or without an async
    hook (before, an async hook wrapped it in an ExceptionGroup)."""

    class TakenOver(MemoryRunStore):
        async def write(self, write: Write) -> None:
            raise RunTakenOver("another process owns this run", None)

    async def async_hook(event: object) -> None:
        await anyio.lowlevel.checkpoint()

    class Durable(Saga):
        @step
        async def one() -> int:
            return 1

        @step
        async def two(one: int) -> int:
            return one + 1

    for hooks in ([], [async_hook]):
        with pytest.raises(RunStoreError) as info:
            await Durable.run(runs=TakenOver(), hooks=hooks)
        assert type(info.value) is RunTakenOver


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("how", ["task.cancel()", "asyncio.timeout", "twice"])
async def test_asyncio_native_cancellation_does_not_cut_a_step_off(how: str) -> None:
    """asyncio's own cancellation (``Task.cancel()``, ``asyncio.timeout``, ``wait_for``,
    a server cancelling its handler) reaches into any shielded scope of the task it
    cancels; the steps run in a task it cannot reach. A step in flight finishes its write,
    is compensated, and the native cancellation propagates, even when repeated."""
    import asyncio

    ledger = Ledger()
    writing, release = anyio.Event(), anyio.Event()

    class Native(Saga):
        ledger: Resource[Ledger]

        @step
        async def log(ledger: Ledger, run_id: str) -> str:
            writing.set()
            await release.wait()
            ledger.write(run_id)
            return run_id

        @log.compensate
        async def unlog(log: str, ledger: Ledger) -> None:
            ledger.undo(log)

    async def call() -> None:
        if how == "asyncio.timeout":
            async with asyncio.timeout(0):  # expires at its first chance
                await Native.run(ledger=ledger)
        else:
            await Native.run(ledger=ledger)

    task = asyncio.get_running_loop().create_task(call())
    await writing.wait()
    if how != "asyncio.timeout":
        task.cancel()
        if how == "twice":
            await asyncio.sleep(0)
            task.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(TimeoutError if how == "asyncio.timeout" else asyncio.CancelledError):
        await task
    assert ledger.written == 1
    assert ledger.entries == set()


# -- found by an adversarial review ------------------------------------------------------


async def test_a_cut_off_that_surfaces_as_another_error_is_still_in_doubt() -> None:
    """A step cut off after the grace that turns the cancellation into an error of its own
    (a driver's "connection aborted") is in doubt, not failed nor retried: its in-doubt
    compensation runs."""
    recorder = EventRecorder()
    undone: list[object] = []
    entered = anyio.Event()

    class Aborts(Saga):
        cancel_grace = 0.05
        retry_defaults = Retry(max_attempts=3, base_delay=0.01)
        hooks = (recorder,)

        @step
        async def call() -> int:
            entered.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class() as exc:
                raise RuntimeError("connection aborted") from exc
            return 1  # pragma: no cover

        @call.compensate(in_doubt=True)
        async def undo_call(call: int | None) -> None:
            undone.append(call)

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with scope:
                await Aborts.run()

        tg.start_soon(caller)
        await entered.wait()
        scope.cancel()
    assert recorder.steps("step_retrying") == []
    assert recorder.steps("step_failed") == []
    (cut,) = recorder.of("step_cancelled")
    assert isinstance(cut, StepCancelled)
    assert cut.in_doubt
    assert undone == [None]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_native_cancellation_does_not_cut_the_unwinding_short() -> None:
    """asyncio's native cancellation landing while a failed run unwinds (as wait_for's
    does) does not stop a compensation halfway: it finishes, then the cancellation
    propagates."""
    import asyncio

    log: list[str] = []
    undoing, release = anyio.Event(), anyio.Event()

    class Unwinds(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            raise RuntimeError("b failed")

        @a.compensate
        async def undo_a(a: int) -> None:
            log.append("started")
            undoing.set()
            await release.wait()
            log.append("done")

    task = asyncio.get_running_loop().create_task(Unwinds.run())
    await undoing.wait()
    task.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered before the compensation ends
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["started", "done"]


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
async def test_a_keyboard_interrupt_during_the_grace_is_not_lost(
    fatal: type[BaseException],
) -> None:
    """A step that raises KeyboardInterrupt (or SystemExit) while the run's cancelled
    caller waits out the grace: that is what comes out of run(), after the unwind."""
    undone: list[str] = []
    entered = anyio.Event()
    release = anyio.Event()

    class Interrupted(Saga):
        cancel_grace = 5.0

        @step
        async def a() -> int:
            return 1

        @a.compensate
        async def undo_a(a: int) -> None:
            undone.append("a")

        @step
        async def b(a: int) -> int:
            entered.set()
            await release.wait()
            raise fatal

    scope = anyio.CancelScope()
    caught: list[BaseException] = []

    async def caller() -> None:
        with scope:
            try:
                await Interrupted.run()
            except BaseException as exc:
                caught.append(exc)
                if not isinstance(exc, fatal):
                    raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await entered.wait()
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        release.set()
    assert [type(e) for e in caught] == [fatal]
    assert undone == ["a"]


async def test_a_run_cancelled_while_its_async_hooks_drain_is_undone() -> None:
    """With an async hook, a caller cancelled after the last step completed, while the
    hooks drain: either it gets the result (the hooks' drain is bounded), or the run is
    undone, as without async hooks; never a cancellation with the run left in place."""
    log: list[str] = []
    drained = anyio.Event()

    async def slow_hook(event: object) -> None:
        if getattr(event, "kind", None) == "run_succeeded":
            drained.set()
            await anyio.sleep_forever()  # cut when the caller is cancelled

    class Hooked(Saga):
        hooks = (slow_hook,)

        @step
        async def reserve() -> str:
            log.append("reserved")
            return "r1"

        @reserve.compensate
        async def release(reserve: str) -> None:
            log.append("released")

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with scope:
                await Hooked.run()

        tg.start_soon(caller)
        await drained.wait()
        scope.cancel()
    if scope.cancelled_caught:
        assert log == ["reserved", "released"]
    else:
        assert log == ["reserved"]


@pytest.mark.parametrize("shape", ["compose", "map_each"])
async def test_no_child_step_starts_after_the_caller_is_cancelled(shape: str) -> None:
    """A composed sub-saga and the elements of a map start nothing once the caller of the
    parent run is cancelled: the step in flight finishes and is undone."""
    log: list[str] = []
    entered = anyio.Event()
    release = anyio.Event()

    class Child(Saga):
        @step
        async def c1() -> int:
            log.append("c1")
            entered.set()
            await release.wait()
            return 1

        @c1.compensate
        async def u1(c1: int) -> None:
            log.append("undo c1")

        @step
        async def c2(c1: int) -> int:
            log.append("c2")  # pragma: no cover - must not start
            return 2

    class Item(Saga):
        n: int

        @step
        async def take(n: int) -> int:
            log.append(f"take {n}")
            if n == 0:
                entered.set()
                await release.wait()
            return n

        @take.compensate
        async def give(take: int) -> None:
            log.append(f"give {take}")

    class Composed(Saga):
        one = compose(Child)

    class Mapped(Saga):
        many = map_each(Item, over="items", max_concurrency=1)

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with scope:
                if shape == "compose":
                    await Composed.run()
                else:
                    await Mapped.run(items=[{"n": 0}, {"n": 1}, {"n": 2}])

        tg.start_soon(caller)
        await entered.wait()
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        release.set()
    assert scope.cancelled_caught
    if shape == "compose":
        assert log == ["c1", "undo c1"]
    else:
        assert log == ["take 0", "give 0"]


async def test_nested_graces_do_not_add_up() -> None:
    """A composed sub-saga's steps are cut off when the parent's grace runs out: the
    child does not start a grace of its own after it."""
    cut: list[str] = []
    entered = anyio.Event()

    class Child(Saga):
        cancel_grace = 30.0

        @step
        async def slow() -> int:
            entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                cut.append("slow")
            return 1  # pragma: no cover

    class Parent(Saga):
        cancel_grace = 0.05
        one = compose(Child)

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            with scope:
                await Parent.run()

        tg.start_soon(caller)
        await entered.wait()
        with anyio.fail_after(10):  # the child's 30 s grace would have run out this
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    assert cut == ["slow"]
    assert scope.cancelled_caught


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_step_that_swallows_the_cut_off_does_not_keep_its_siblings_running() -> None:
    """After the grace, a step that absorbs its cancellation does not keep a sibling from
    being cut off: the run returns promptly, the sibling in doubt."""
    import asyncio

    recorder = EventRecorder()
    entered = anyio.Event()

    class Swallows(Saga):
        cancel_grace = 0.05
        hooks = (recorder,)

        @step
        async def first() -> int:
            with contextlib.suppress(asyncio.CancelledError):  # a library that does that
                await asyncio.sleep(0.2)
            return 1

        @step
        async def sibling() -> int:
            entered.set()
            await anyio.sleep_forever()
            return 2  # pragma: no cover

    with anyio.fail_after(10):
        with anyio.move_on_after(0.01):
            await Swallows.run()
    (failed,) = recorder.of("run_failed")
    assert "sibling" in failed.in_doubt  # type: ignore[union-attr]
