"""Scheduling: eager dataflow, real concurrency, the concurrency cap, results and output."""

import anyio
import pytest

from asaga import Retry, Saga, SagaFailed, step
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


async def test_checkout_example_runs() -> None:
    """The README's shape: two concurrent reservations feed a charge; output is the sink."""

    class Checkout(Saga):
        @step
        async def reserve_a(order_id: str) -> str:
            return f"a:{order_id}"

        @step
        async def reserve_b(order_id: str) -> str:
            return f"b:{order_id}"

        @step
        async def charge(reserve_a: str, reserve_b: str, amount: int) -> str:
            return f"{reserve_a}+{reserve_b}={amount}"

    result = await Checkout.run(order_id="o-1", amount=30)
    assert result.output == "a:o-1+b:o-1=30"
    assert dict(result.results) == {
        "reserve_a": "a:o-1",
        "reserve_b": "b:o-1",
        "charge": "a:o-1+b:o-1=30",
    }
    assert isinstance(result.run_id, str)
    assert result.run_id
    with pytest.raises(TypeError):
        result.results["charge"] = "x"  # type: ignore[index]


async def test_independent_branches_run_concurrently() -> None:
    """Two branches that each wait for an event the other sets can only finish together."""
    ping, pong = anyio.Event(), anyio.Event()

    class PingPong(Saga):
        @step
        async def left() -> str:
            ping.set()
            await pong.wait()
            return "left"

        @step
        async def right() -> str:
            pong.set()
            await ping.wait()
            return "right"

    with anyio.fail_after(5):
        result = await PingPong.run()
    assert dict(result.results) == {"left": "left", "right": "right"}
    assert result.output is None  # two sinks and no `output`: None


async def test_eager_dataflow_not_levels() -> None:
    """A step starts when its own dependencies finish, even while a same-level step runs.

    ``slow`` (level 0) blocks until ``after_fast`` (level 1) has run: with level-by-level
    scheduling this deadlocks.
    """
    released = anyio.Event()

    class Eager(Saga):
        @step
        async def fast() -> int:
            return 1

        @step
        async def slow() -> int:
            await released.wait()
            return 2

        @step
        async def after_fast(fast: int) -> int:
            released.set()
            return fast + 10

        @step
        async def join(after_fast: int, slow: int) -> int:
            return after_fast + slow

    with anyio.fail_after(5):
        result = await Eager.run()
    assert result.output == 13


async def test_no_step_starts_before_its_dependencies() -> None:
    """Each step's start comes after its dependencies succeeded (recorded event order)."""
    recorder = EventRecorder()

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

    result = await Diamond.run(hooks=[recorder])
    assert result.output == 5
    trace = recorder.trace()
    for child, parents in {"b": ["a"], "c": ["a"], "d": ["b", "c"]}.items():
        start = trace.index(("step_started", child))
        for parent in parents:
            assert trace.index(("step_succeeded", parent)) < start
    assert trace[0] == ("run_started", None)
    assert trace[-1] == ("run_succeeded", None)


async def test_max_concurrency_caps_running_steps() -> None:
    """With max_concurrency = 2, never more than two steps run at once."""
    running = 0
    peak = 0
    gate = anyio.Event()

    async def body() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            gate.set()
        await gate.wait()
        await anyio.lowlevel.checkpoint()
        running -= 1

    class Capped(Saga):
        max_concurrency = 2

        @step
        async def s1() -> None:
            await body()

        @step
        async def s2() -> None:
            await body()

        @step
        async def s3() -> None:
            await body()

        @step
        async def s4() -> None:
            await body()

    with anyio.fail_after(5):
        await Capped.run()
    assert peak == 2


async def test_output_attribute_picks_the_step() -> None:
    """``output = "name"`` chooses which step's result is ``.output``."""

    class Named(Saga):
        output = "first"

        @step
        async def first() -> int:
            return 1

        @step
        async def second(first: int) -> int:
            return first + 1

    assert (await Named.run()).output == 1


async def test_retry_until_success_counts_attempts() -> None:
    """A failing attempt is retried per the policy; events count the attempts."""
    calls = 0
    recorder = EventRecorder()

    class Flaky(Saga):
        @step(retry=Retry(max_attempts=3, backoff="fixed", base_delay=0))
        async def flaky() -> int:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError("try again")
            return calls

    assert (await Flaky.run(hooks=[recorder])).output == 3
    assert [e.attempt for e in recorder.of("step_started")] == [1, 2, 3]
    assert [e.attempt for e in recorder.of("step_retrying")] == [1, 2]


async def test_retry_defaults_apply_and_retry_on_filters() -> None:
    """retry_defaults covers steps without a policy; retry_on limits what is retried."""
    calls = {"net": 0, "bug": 0}

    class Defaults(Saga):
        retry_defaults = Retry(max_attempts=3, base_delay=0, retry_on=(ConnectionError,))

        @step
        async def net() -> str:
            calls["net"] += 1
            if calls["net"] == 1:
                raise ConnectionError
            return "ok"

        @step
        async def bug(net: str) -> str:
            calls["bug"] += 1
            raise KeyError("not retried")

    with pytest.raises(SagaFailed) as info:
        await Defaults.run()
    assert calls == {"net": 2, "bug": 1}
    assert info.value.step == "bug"
    assert isinstance(info.value.__cause__, KeyError)


async def test_timeout_is_a_failed_attempt() -> None:
    """An attempt over its timeout is cancelled and retried; the last gives TimeoutError."""
    recorder = EventRecorder()
    never = anyio.Event()

    class Slow(Saga):
        @step(timeout=0.01, retry=Retry(max_attempts=2, base_delay=0))
        async def slow() -> None:
            await never.wait()

    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await Slow.run(hooks=[recorder])
    assert isinstance(info.value.__cause__, TimeoutError)
    assert recorder.steps("step_retrying") == ["slow"]
    assert [e.attempt for e in recorder.of("step_failed")] == [2]


async def test_retry_wait_blocks_nothing_and_stops_when_the_run_fails() -> None:
    """A step waiting out a long backoff does not hold up other branches, and once the run
    fails it gives up at once instead of starting another attempt."""
    first_attempt_failed = anyio.Event()
    attempts = 0
    recorder = EventRecorder()

    class Backoff(Saga):
        @step(retry=Retry(max_attempts=5, backoff="fixed", base_delay=60))
        async def patient() -> None:
            nonlocal attempts
            attempts += 1
            first_attempt_failed.set()
            raise ConnectionError("down")

        @step
        async def other() -> None:
            await first_attempt_failed.wait()
            raise ValueError("other branch fails while patient waits")

    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await Backoff.run(hooks=[recorder])
    assert info.value.step == "other"
    assert attempts == 1
    assert recorder.steps("step_failed") == ["other", "patient"]


async def test_results_and_inputs_feed_parameters() -> None:
    """A step gets step results and inputs by parameter name, including defaults."""

    class Mixed(Saga):
        @step
        async def base(n: int) -> int:
            return n

        @step
        async def scaled(base: int, factor: int = 3) -> int:
            return base * factor

    assert (await Mixed.run(n=2)).output == 6
    assert (await Mixed.run(n=2, factor=5)).output == 10


async def test_a_step_can_be_called_directly() -> None:
    """Calling a Step calls its function: steps are unit-testable on their own."""

    class Direct(Saga):
        @step
        async def double(n: int) -> int:
            return n * 2

    assert await Direct.double(n=4) == 8


async def test_empty_saga_runs() -> None:
    """A saga with no steps succeeds with no results."""

    class Empty(Saga):
        pass

    result = await Empty.run()
    assert dict(result.results) == {}
    assert result.output is None


async def test_base_class_cannot_run() -> None:
    """Saga itself has no steps to run."""
    with pytest.raises(TypeError, match="base class"):
        await Saga.run()


async def test_retry_wait_gives_its_slot_back() -> None:
    """Under max_concurrency = 1, a step waiting out a backoff does not hold the only slot:
    the other branch runs (and fails the run, which ends the wait at once).

    ``other`` never waits while holding the slot, so the run cannot deadlock whatever the
    backend's start order; if ``patient`` starts first (always on asyncio), ``other`` can
    only run while ``patient`` waits its 60 s backoff.
    """
    recorder = EventRecorder()

    class OneSlot(Saga):
        max_concurrency = 1

        @step(retry=Retry(max_attempts=3, backoff="fixed", base_delay=60))
        async def patient() -> None:
            raise ConnectionError("down")

        @step
        async def other() -> None:
            raise ValueError("ran")

    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await OneSlot.run(hooks=[recorder])
    assert info.value.step == "other"
    if recorder.steps("step_started")[0] == "patient":
        assert recorder.trace()[1:5] == [
            ("step_started", "patient"),
            ("step_retrying", "patient"),
            ("step_started", "other"),
            ("step_failed", "other"),
        ]


async def test_cancellation_during_backoff_is_an_event() -> None:
    """A step cancelled while waiting to retry reports step_cancelled."""
    recorder = EventRecorder()
    waiting = anyio.Event()

    def hook(event: object) -> None:
        if getattr(event, "kind", None) == "step_retrying":
            waiting.set()

    class Waits(Saga):
        @step(retry=Retry(max_attempts=2, backoff="fixed", base_delay=60))
        async def patient() -> None:
            raise ConnectionError("down")

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Waits.run(hooks=[recorder, hook]))
        with anyio.fail_after(5):
            await waiting.wait()
        tg.cancel_scope.cancel()
    assert recorder.trace()[-2:] == [("step_cancelled", "patient"), ("run_failed", None)]


@pytest.mark.parametrize("bounded_by", ["timeouts", "no grace"])
async def test_a_chain_runs_in_one_task(bounded_by: str, anyio_backend: str) -> None:
    """A saga whose steps can only run one after another runs them all in one task: on
    trio, when nothing needs watching for the caller's cancellation (every step has a
    timeout within the ``cancel_grace``, or there is no grace), the task that called
    run(); on asyncio, one task of the run's own (asyncio's native cancellation would
    reach into the caller's task)."""
    caller = anyio.get_current_task().id
    seen: list[int] = []
    timeout = 5.0 if bounded_by == "timeouts" else None

    class Chain(Saga):
        cancel_grace = 10.0 if bounded_by == "timeouts" else None

        @step(timeout=timeout)
        async def first() -> int:
            seen.append(anyio.get_current_task().id)
            return 1

        @step(timeout=timeout)
        async def second(first: int) -> int:
            seen.append(anyio.get_current_task().id)
            return first + 1

        @step(timeout=timeout)
        async def third(second: int, first: int) -> int:
            seen.append(anyio.get_current_task().id)
            return second + first

    assert (await Chain.run()).output == 3
    assert len(set(seen)) == 1
    assert (seen[0] == caller) is (anyio_backend == "trio")


async def test_a_chain_that_may_outlast_the_grace_is_watched(anyio_backend: str) -> None:
    """With a step that has no timeout (it may outlast ``cancel_grace``), the caller's task
    watches for its cancellation; the steps run in one task of their own."""
    caller = anyio.get_current_task().id
    seen: list[int] = []

    class Chain(Saga):
        @step
        async def first() -> int:
            seen.append(anyio.get_current_task().id)
            return 1

        @step
        async def second(first: int) -> int:
            seen.append(anyio.get_current_task().id)
            return first + 1

    assert Chain.__asaga__ is not None
    assert Chain.__asaga__.watch
    assert (await Chain.run()).output == 2
    assert len(set(seen)) == 1
    assert caller not in seen


async def test_a_task_goes_on_with_the_first_step_it_made_ready() -> None:
    """In a branching saga the task of the first root carries on with the first dependent
    it releases; a second branch gets a task of its own. (On trio with bounded steps,
    that first task is the caller's.)"""
    caller = anyio.get_current_task().id
    seen: dict[str, int] = {}

    class Fork(Saga):
        @step
        async def root() -> int:
            seen["root"] = anyio.get_current_task().id
            return 1

        @step
        async def left(root: int) -> int:
            seen["left"] = anyio.get_current_task().id
            await anyio.lowlevel.checkpoint()
            return root

        @step
        async def right(root: int) -> int:
            seen["right"] = anyio.get_current_task().id
            await anyio.lowlevel.checkpoint()
            return root

        @step
        async def join(left: int, right: int) -> int:
            return left + right

    assert (await Fork.run()).output == 2
    assert seen["root"] == seen["left"]
    assert seen["right"] != seen["root"]
    assert seen["right"] != caller


async def test_a_run_id_parameter_receives_the_runs_id() -> None:
    """A parameter named ``run_id`` (in a step, a condition, a compensation) is neither a
    dependency nor an input: it receives the run's id, a stable key for idempotent
    effects."""
    seen: list[tuple[str, str]] = []

    class Keyed(Saga):
        amount: int

        @step(when=lambda run_id: run_id.startswith("r-"))
        async def reserve(amount: int, run_id: str) -> str:
            seen.append(("reserve", run_id))
            return f"{run_id}:reserve"

        @reserve.compensate
        async def release(reserve: str, run_id: str) -> None:
            seen.append(("release", run_id))

        @step
        async def charge(reserve: str) -> str:
            raise RuntimeError("declined")

    with pytest.raises(SagaFailed):
        await Keyed.run(amount=1, run_id="r-1")
    assert seen == [("reserve", "r-1"), ("release", "r-1")]
    assert "run_id" not in Keyed.__asaga__.plan.inputs  # type: ignore[union-attr]
