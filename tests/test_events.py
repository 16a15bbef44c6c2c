"""Events: one record per transition, logged by structlog and delivered to hooks in order."""

import contextvars

import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

from asaga import Event, Retry, Saga, SagaFailed, step
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio

class_seen: list[Event] = []


class Recorded(Saga):
    hooks = (class_seen.append,)

    @step(retry=Retry(max_attempts=2, base_delay=0))
    async def first(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n

    @step
    async def second(first: int) -> int:
        return first + 1

    @first.compensate
    async def undo_first(first: int) -> None:
        return None


async def test_success_event_sequence() -> None:
    """A successful run emits run_started, step start/success pairs, run_succeeded."""
    recorder = EventRecorder()
    result = await Recorded.run(n=1, hooks=[recorder])
    assert recorder.trace() == [
        ("run_started", None),
        ("step_started", "first"),
        ("step_succeeded", "first"),
        ("step_started", "second"),
        ("step_succeeded", "second"),
        ("run_succeeded", None),
    ]
    events = recorder.events
    assert {e.run_id for e in events} == {result.run_id}
    assert {e.saga for e in events} == {"Recorded"}
    stamps = [e.monotonic for e in events]
    assert stamps == sorted(stamps)
    for e in events:
        ends = e.kind in ("step_succeeded", "run_succeeded")
        assert (e.duration is not None) == ends
        assert e.attempt == (1 if e.step else 0)


async def test_failure_event_sequence() -> None:
    """A failing run: retry, failure, compensation, run_failed; errors are recorded."""
    recorder = EventRecorder()
    with pytest.raises(SagaFailed):
        await Recorded.run(n=-1, hooks=[recorder])
    assert recorder.trace() == [
        ("run_started", None),
        ("step_started", "first"),
        ("step_retrying", "first"),
        ("step_started", "first"),
        ("step_failed", "first"),
        ("run_failed", None),
    ]
    failed = recorder.of("step_failed")[0]
    assert failed.attempt == 2
    assert failed.error == "ValueError('negative')"
    assert getattr(recorder.of("run_failed")[0], "failed_step", None) == "first"


async def test_class_hooks_see_every_run() -> None:
    """The class attribute ``hooks`` receives the events of every run of the saga."""
    class_seen.clear()
    one = await Recorded.run(n=1)
    two = await Recorded.run(n=2)
    assert [e.run_id for e in class_seen if e.kind == "run_started"] == [one.run_id, two.run_id]
    assert len(class_seen) == 12


async def test_async_hooks_receive_events_in_order() -> None:
    """An async hook is awaited for every event, in order, before run() returns."""
    seen: list[str] = []

    async def hook(event: Event) -> None:
        seen.append(event.kind)

    sync = EventRecorder()
    await Recorded.run(n=1, hooks=[hook, sync])
    assert seen == sync.kinds()
    assert seen[-1] == "run_succeeded"


async def test_async_hooks_get_events_of_failed_runs() -> None:
    """With async hooks, a failed run still raises SagaFailed (not an ExceptionGroup) and
    the hook sees the whole unwind."""
    seen: list[str] = []

    async def hook(event: Event) -> None:
        seen.append(event.kind)

    with pytest.raises(SagaFailed):
        await Recorded.run(n=-1, hooks=[hook])
    assert seen[-1] == "run_failed"


async def test_broken_hooks_are_logged_not_raised() -> None:
    """A hook that raises does not break the saga; the failure is logged."""

    def bad(event: Event) -> None:
        raise RuntimeError("hook bug")

    async def bad_async(event: Event) -> None:
        raise RuntimeError("async hook bug")

    with capture_logs() as logs:
        result = await Recorded.run(n=1, hooks=[bad, bad_async])
    assert result.output == 2
    failures = [entry for entry in logs if entry["event"] == "hook_failed"]
    assert len(failures) == 12  # six events, two broken hooks
    assert {f["error"] for f in failures} == {
        "RuntimeError('hook bug')",
        "RuntimeError('async hook bug')",
    }


async def test_structlog_gets_each_event_with_run_fields() -> None:
    """Each event is logged under its kind with saga, run_id and step; levels differ."""
    with capture_logs() as logs:
        result = await Recorded.run(n=1)
    events = [entry for entry in logs if entry["event"] != "hook_failed"]
    assert [entry["event"] for entry in events] == [
        "run_started",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded",
        "run_succeeded",
    ]
    assert {entry["run_id"] for entry in events} == {result.run_id}
    assert {entry["saga"] for entry in events} == {"Recorded"}
    assert events[1]["step"] == "first"
    assert events[0]["log_level"] == "info"
    assert events[1]["log_level"] == "debug"


async def test_steps_log_with_bound_context() -> None:
    """Inside a step, structlog's contextvars carry saga, run_id and step."""
    seen: list[dict[str, object]] = []

    class Binds(Saga):
        @step
        async def a() -> None:
            seen.append(structlog.contextvars.get_contextvars())

    result = await Binds.run()
    assert seen == [{"saga": "Binds", "run_id": result.run_id, "step": "a"}]
    assert "run_id" not in structlog.contextvars.get_contextvars()


@pytest.mark.parametrize("shape", ["chain", "fork"])
async def test_step_binding_does_not_leak_to_the_caller(shape: str) -> None:
    """Steps may run in the caller's own task; the ``step`` key they bind is unbound again
    when run() returns, whether the saga succeeded or failed."""

    class Chain(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            raise RuntimeError("boom")

    class Fork(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            return a

        @step
        async def c(a: int) -> int:
            raise RuntimeError("boom")

    saga = Chain if shape == "chain" else Fork
    structlog.contextvars.bind_contextvars(request="r-1")
    try:
        with pytest.raises(SagaFailed):
            await saga.run()
        assert structlog.contextvars.get_contextvars() == {"request": "r-1"}
    finally:
        structlog.contextvars.unbind_contextvars("request")


@pytest.mark.parametrize("shape", ["chain", "fork"])
async def test_what_a_step_binds_stays_in_the_run(shape: str) -> None:
    """A step that binds structlog contextvars (or sets a ContextVar) does not leak them
    into the caller, even though a chain runs in the caller's own task."""
    tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant", default=None)
    seen: list[object] = []

    class Chain(Saga):
        @step
        async def a() -> int:
            structlog.contextvars.bind_contextvars(order_id="o-17")
            tenant.set("acme")
            return 1

        @step
        async def b(a: int) -> int:
            seen.append((structlog.contextvars.get_contextvars().get("order_id"), tenant.get()))
            return a

    class Fork(Chain):
        @step
        async def c(a: int) -> int:
            return a

    await (Chain if shape == "chain" else Fork).run()
    assert seen == [("o-17", "acme")]  # the next step of the chain sees it
    assert "order_id" not in structlog.contextvars.get_contextvars()
    assert tenant.get() is None


async def test_events_round_trip_through_msgspec() -> None:
    """A stream of events encodes and decodes as the tagged union ``Event``."""
    recorder = EventRecorder()
    with pytest.raises(SagaFailed):
        await Recorded.run(n=-1, hooks=[recorder])
    data = msgspec.json.encode(recorder.events)
    assert b'"kind":"step_retrying"' in data
    decoded = msgspec.json.decode(data, type=list[Event])
    assert decoded == recorder.events


async def test_async_hooks_see_the_unwind_of_a_cancelled_run() -> None:
    """A cancelled caller still gets its compensations reported to async hooks."""
    import anyio

    seen: list[tuple[str, str | None]] = []
    running = anyio.Event()

    async def hook(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append((event.kind, event.step))

    class Cancelled(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> None:
            running.set()
            await anyio.sleep_forever()

        @a.compensate
        async def undo_a(a: int) -> None:
            return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Cancelled.run(hooks=[hook]))
        await running.wait()
        tg.cancel_scope.cancel()
    assert seen[-3:] == [
        ("compensation_started", "a"),
        ("compensation_succeeded", "a"),
        ("run_failed", None),
    ]
    assert ("step_cancelled", "b") in seen
