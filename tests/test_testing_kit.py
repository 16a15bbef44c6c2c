"""The testing kit (asaga.testing): step doubles, virtual time, assertions on events."""

import asyncio
import time
import uuid
from typing import Any

import anyio
import msgspec
import pytest

import asaga._waits
import asaga.runs._parking
from asaga import (
    CompensationFailed,
    Retry,
    RunParked,
    Saga,
    SagaFailed,
    compose,
    map_each,
    sleep_for,
    step,
    wait_for,
)
from asaga.locks import Lease
from asaga.runs import MemoryRunStore, recover
from asaga.testing import (
    EventRecorder,
    VirtualClock,
    fail_step,
    replace_step,
    run_virtual,
    virtual_time,
)

pytestmark = pytest.mark.anyio

pytest_plugins = ["pytester"]


class Checkout(Saga):
    """reserve -> charge -> ship; reserve and charge are compensated."""

    order_id: str

    @step
    async def reserve(order_id: str) -> str:
        return f"res-{order_id}"

    @reserve.compensate
    async def release(reserve: str) -> None: ...

    @step(retry=Retry(max_attempts=3, base_delay=0))
    async def charge(reserve: str, order_id: str) -> str:
        return f"ch-{order_id}"

    @charge.compensate
    async def refund(charge: str) -> None:
        REFUNDED.append(charge)

    @step
    async def ship(charge: str) -> str:
        return f"shipped ({charge})"


REFUNDED: list[str] = []


class Order(Saga):
    """Composes Checkout, then maps it over more orders, then may fail."""

    order_id: str
    others: list[dict[str, str]]

    pay = compose(Checkout)
    pay_others = map_each(Checkout, over="others")

    @step
    async def confirm(pay: str, pay_others: list[str]) -> str:
        return pay


@pytest.fixture(autouse=True)
def _no_refunds() -> None:
    REFUNDED.clear()


# -- fail_step --------------------------------------------------------------------------


async def test_fail_step_fails_the_given_attempts() -> None:
    """Attempts 1 and 2 fail with the error given, the retry runs attempt 3, which runs
    the step; the block gives the attempts it failed."""
    recorder = EventRecorder()
    with fail_step(Checkout, "charge", at={1, 2}, error=ConnectionError("down")) as failed:
        result = await Checkout.run(order_id="o-1", hooks=[recorder])
    assert result.output == "shipped (ch-o-1)"
    assert failed == [1, 2]
    assert recorder.attempts("charge") == 3
    assert [e.error for e in recorder.of("step_retrying")] == ["ConnectionError('down')"] * 2
    recorder.assert_succeeded(["reserve", "charge", "ship"])
    recorder.assert_compensated([])


async def test_fail_step_fails_every_attempt_by_default() -> None:
    """Without ``at`` every attempt fails, by default with a RuntimeError naming it: the
    run fails and the completed steps are compensated."""
    recorder = EventRecorder()
    with fail_step(Checkout, "charge") as failed, pytest.raises(SagaFailed) as info:
        await Checkout.run(order_id="o-1", hooks=[recorder])
    cause = info.value.__cause__
    assert type(cause) is RuntimeError
    assert str(cause) == "fail_step: attempt 3 of step 'charge' of saga Checkout fails on purpose"
    assert failed == [1, 2, 3]
    recorder.assert_compensated(["reserve"])
    recorder.assert_not_compensated("charge", "ship")


async def test_fail_step_with_an_exception_class() -> None:
    """An exception class is called with a message naming the attempt."""
    with fail_step(Checkout, "reserve", error=PermissionError), pytest.raises(SagaFailed) as info:
        await Checkout.run(order_id="o-1")
    assert isinstance(info.value.__cause__, PermissionError)
    assert "attempt 1 of step 'reserve'" in str(info.value.__cause__)


async def test_fail_step_counts_attempts_per_run() -> None:
    """``at=1`` fails the first attempt of each run, not the first call ever."""
    with fail_step(Checkout, "charge", at=1) as failed:
        for order in ("o-1", "o-2"):
            recorder = EventRecorder()
            await Checkout.run(order_id=order, hooks=[recorder])
            assert recorder.attempts("charge") == 2
    assert failed == [1, 1]


async def test_fail_step_keeps_a_run_id_parameter() -> None:
    """A step that takes ``run_id`` still receives it."""
    seen: list[str] = []

    class Keyed(Saga):
        @step(retry=Retry(max_attempts=2, base_delay=0))
        async def pay(run_id: str) -> str:
            seen.append(run_id)
            return run_id

    with fail_step(Keyed, "pay", at=1):
        result = await Keyed.run(run_id="r-1")
    assert (result.output, seen) == ("r-1", ["r-1"])


async def test_fail_step_of_a_composed_step_runs_no_child() -> None:
    """A composed step's attempt fails before its sub-saga runs: its child runs once,
    at the attempt that does not fail."""

    class Parent(Saga):
        order_id: str
        pay = compose(Checkout, retry=Retry(max_attempts=2, base_delay=0))

    recorder = EventRecorder()
    with fail_step(Parent, "pay", at=1) as failed:
        result = await Parent.run(order_id="o-1", hooks=[recorder])
    assert result.output == "shipped (ch-o-1)"
    assert failed == [1]
    assert recorder.attempts("pay") == 2
    assert recorder.attempts("pay/reserve") == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"at": 0}, ValueError, "ints >= 1"),
        ({"at": [1, "2"]}, ValueError, "ints >= 1"),
        ({"at": True}, ValueError, "ints >= 1"),
    ],
)
async def test_fail_step_checks_its_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Bad attempt numbers are refused when the block starts."""
    with pytest.raises(error, match=message), fail_step(Checkout, "charge", **kwargs):
        pass  # pragma: no cover - never entered


async def test_an_unknown_step_or_saga_is_refused() -> None:
    """A step the saga does not have is refused with the saga's steps and a suggestion;
    a sub-saga's step is named in the saga that defines it."""
    with (
        pytest.raises(ValueError, match=r"no step 'chrage' \(did you mean 'charge'\?\)"),
        fail_step(Checkout, "chrage"),
    ):
        pass  # pragma: no cover
    with (
        pytest.raises(ValueError, match="name the step in the saga that defines it"),
        replace_step(Order, "pay/charge", Checkout.charge),
    ):
        pass  # pragma: no cover
    with pytest.raises(TypeError, match="takes a Saga subclass"), fail_step(Saga, "charge"):
        pass  # pragma: no cover


# -- replace_step -----------------------------------------------------------------------


async def test_replace_step_runs_the_fake() -> None:
    """The fake takes the parameters it names (a subset), its result is the step's
    result for the following steps, and the step's compensation undoes it."""
    calls: list[str] = []

    async def charge(order_id: str, run_id: str) -> str:
        calls.append(order_id)
        assert run_id  # a fake may take the run's id, as any step may
        return "ch-fake"

    with replace_step(Checkout, "charge", charge):
        result = await Checkout.run(order_id="o-1")
        assert result.output == "shipped (ch-fake)"
        with fail_step(Checkout, "ship"), pytest.raises(SagaFailed):
            await Checkout.run(order_id="o-2")
    assert calls == ["o-1", "o-2"]
    assert REFUNDED == ["ch-fake"]


async def test_replace_step_keeps_the_retry_policy() -> None:
    """A fake that raises fails the attempt, and the step's retry policy applies."""
    attempts = 0

    async def flaky(**kwargs: Any) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("flaky")
        return f"ch-{kwargs['order_id']}"

    recorder = EventRecorder()
    with replace_step(Checkout, "charge", flaky):
        await Checkout.run(order_id="o-1", hooks=[recorder])
    assert recorder.attempts("charge") == 3


async def test_replace_step_refuses_a_fake_that_does_not_fit() -> None:
    """A fake needing a value the step does not receive is refused at once; one that is
    not async fails its attempt, saying so."""

    async def wrong(order_id: str, card: str) -> str:  # pragma: no cover - never called
        return card

    with (
        pytest.raises(TypeError, match=r"parameter 'card' is no value the step receives"),
        replace_step(Checkout, "charge", wrong),
    ):
        pass  # pragma: no cover

    def sync(order_id: str) -> str:
        return "ch"

    with replace_step(Checkout, "charge", sync), pytest.raises(SagaFailed) as info:  # type: ignore[arg-type]
        await Checkout.run(order_id="o-1")
    assert "make it `async def`" in str(info.value.__cause__)


async def test_doubles_of_a_locked_step_keep_its_lease(virtual_clock: VirtualClock) -> None:
    """A locked step keeps its lock: a failed attempt holds the lease too, and a fake
    receives the lease, as the step would (renewals run in virtual time)."""
    keys: list[str] = []

    class Locked(Saga):
        sku: str

        @step(lock="stock:{sku}", retry=Retry(max_attempts=2, base_delay=1))
        async def take(sku: str, lease: Lease) -> str:
            keys.append(lease.key)
            return sku

    async def take(lease: Lease) -> str:
        keys.append(f"fake {lease.key}")
        return "fake"

    with fail_step(Locked, "take", at=1) as failed:
        assert (await Locked.run(sku="s-1")).output == "s-1"
    with replace_step(Locked, "take", take):
        assert (await Locked.run(sku="s-2")).output == "fake"
    assert failed == [1]
    assert keys == ["stock:s-1", "fake stock:s-2"]


async def test_a_replaced_waiting_step_does_not_wait() -> None:
    """``wait_for`` replaced gives the fake's result: no event needed."""

    class Payment(msgspec.Struct):
        reference: str

    class Paid(Saga):
        order_id: str
        paid = wait_for(Payment, key="payment:{order_id}")

        @step
        async def ship(paid: Payment) -> str:
            return paid.reference

    async def paid(order_id: str) -> Payment:
        return Payment(reference=f"ref-{order_id}")

    with replace_step(Paid, "paid", paid):
        assert (await Paid.run(order_id="o-1")).output == "ref-o-1"


# -- composed sub-sagas and restoring ---------------------------------------------------


async def test_doubles_reach_composed_and_mapped_sub_sagas() -> None:
    """A double of Checkout applies wherever Checkout runs: composed and mapped by
    Order; and Order's unwind compensates the children's fake results."""

    async def charge(order_id: str) -> str:
        return f"fake-{order_id}"

    recorder = EventRecorder()
    with (
        replace_step(Checkout, "charge", charge),
        fail_step(Order, "confirm"),
        pytest.raises(SagaFailed),
    ):
        await Order.run(order_id="o-1", others=[{"order_id": "o-2"}], hooks=[recorder])
    assert sorted(REFUNDED) == ["fake-o-1", "fake-o-2"]
    # The two composed steps unwind concurrently, each by its child's compensations.
    recorder.assert_compensated(
        {
            *("pay/charge", "pay/reserve", "pay"),
            *("pay_others[0]/charge", "pay_others[0]/reserve", "pay_others"),
        }
    )

    recorder.clear()
    with fail_step(Checkout, "ship", at=1), pytest.raises(SagaFailed) as info:
        await Order.run(order_id="o-1", others=[], hooks=[recorder])
    assert info.value.step == "pay"
    # The failed child unwinds itself; then the parent undoes its other completed step.
    recorder.assert_compensated(["pay/charge", "pay/reserve", "pay_others"])


async def test_the_saga_is_restored_after_an_error() -> None:
    """The block ends with an error: the saga's plan is the very one it had, and runs
    are themselves again, also in the sagas that compose it."""
    plan = Checkout.__asaga__.plan  # type: ignore[union-attr]

    async def charge() -> str:
        return "fake"

    with (
        pytest.raises(KeyError),
        replace_step(Checkout, "charge", charge),
        fail_step(Checkout, "reserve"),
    ):
        raise KeyError("the test failed")
    assert Checkout.__asaga__.plan is plan  # type: ignore[union-attr]
    assert (await Checkout.run(order_id="o-1")).output == "shipped (ch-o-1)"
    assert (await Order.run(order_id="o-1", others=[])).output == "shipped (ch-o-1)"


async def test_doubles_of_one_step_stack() -> None:
    """A failure over a fake: the fake's attempt 1 fails, attempt 2 runs the fake; when
    the blocks end out of order, each step still gets its own node back."""

    async def charge() -> str:
        return "fake"

    recorder = EventRecorder()
    with replace_step(Checkout, "charge", charge), fail_step(Checkout, "charge", at=1):
        result = await Checkout.run(order_id="o-1", hooks=[recorder])
    assert result.output == "shipped (fake)"
    assert recorder.attempts("charge") == 2

    nodes = dict(Checkout.__asaga__.plan.nodes)  # type: ignore[union-attr]
    first = fail_step(Checkout, "reserve")
    second = replace_step(Checkout, "charge", charge)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert dict(Checkout.__asaga__.plan.nodes) == nodes  # type: ignore[union-attr]


# -- virtual time -----------------------------------------------------------------------


class Slow(Saga):
    """A step that hangs past its timeout of 60 s, five attempts, backoff 10 s doubling."""

    @step
    async def open() -> str:
        return "opened"

    @open.compensate
    async def close(open: str) -> None: ...

    @step(retry=Retry(max_attempts=5, base_delay=10, max_delay=100), timeout=60)
    async def call(open: str) -> str:
        await anyio.sleep_forever()
        return "never"  # pragma: no cover


async def test_backoffs_and_timeouts_pass_in_virtual_time(virtual_clock: VirtualClock) -> None:
    """Five attempts of 60 s and backoffs of 10, 20, 40 and 80 s: 450 virtual seconds,
    exactly, at once; twice the same."""
    for _ in range(2):
        recorder = EventRecorder()
        started = virtual_clock.elapsed
        with pytest.raises(SagaFailed) as info:
            await Slow.run(hooks=[recorder])
        assert virtual_clock.elapsed - started == 5 * 60 + 10 + 20 + 40 + 80
        assert isinstance(info.value.__cause__, TimeoutError)
        assert [e.delay for e in recorder.of("step_retrying")] == [10, 20, 40, 80]  # type: ignore[union-attr]
        assert [e.duration for e in recorder.of("step_retrying")] == [60] * 4
        recorder.assert_compensated(["open"])
        assert recorder.attempts("call") == 5


async def test_a_compensation_timeout_passes_in_virtual_time(virtual_clock: VirtualClock) -> None:
    """A compensation that hangs is abandoned after its timeout: 30 virtual seconds."""

    class Stuck(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> None:
            raise ValueError("b")

        @a.compensate(timeout=30)
        async def undo_a(a: int) -> None:
            await anyio.sleep_forever()

    with pytest.raises(CompensationFailed) as info:
        await Stuck.run()
    assert isinstance(info.value.errors.exceptions[0], TimeoutError)
    assert virtual_clock.elapsed == 30


async def test_timers_and_event_deadlines_in_virtual_time(virtual_clock: VirtualClock) -> None:
    """``sleep_for`` wakes an hour later by the wall clock asaga reads; a ``wait_for``
    with no event times out after its timeout."""

    class Later(Saga):
        pause = sleep_for(3600)

    class Payment(msgspec.Struct):
        reference: str

    class Paid(Saga):
        order_id: str
        paid = wait_for(Payment, key="payment:{order_id}", timeout=600)

    wall = virtual_clock.time()
    result = await Later.run()
    assert virtual_clock.elapsed == 3600
    assert result.output == wall + 3600 == virtual_clock.time()
    with pytest.raises(SagaFailed) as info:
        await Paid.run(order_id=uuid.uuid4().hex)  # a key of its own in the mailbox
    assert isinstance(info.value.__cause__, TimeoutError)
    assert virtual_clock.elapsed == 3600 + 600


async def test_durable_timers_fall_due_in_virtual_time(virtual_clock: VirtualClock) -> None:
    """A parked durable run's timer is epoch seconds in its record: ``recover()`` finds
    it due once an hour of virtual time passed, not a second earlier."""

    class Reminder(Saga):
        pause = sleep_for(3600)

        @step
        async def remind(pause: float) -> str:
            return "reminded"

    runs = MemoryRunStore()
    with pytest.raises(RunParked) as info:
        await Reminder.run(runs=runs)
    await anyio.sleep(3599)
    assert await recover(runs, sagas=[Reminder]) == []
    await anyio.sleep(1)
    (woken,) = await recover(runs, sagas=[Reminder])
    assert (woken.run_id, woken.outcome) == (info.value.run_id, "succeeded")


async def test_virtual_time_in_a_block(anyio_backend: str) -> None:
    """``virtual_time()`` without the fixture: on asyncio it drives the running loop and
    gives everything back afterwards; on trio it needs a MockClock, and says so."""
    if anyio_backend == "trio":
        with pytest.raises(RuntimeError, match="needs the run to start with a"), virtual_time():
            pass  # pragma: no cover
        return
    loop = asyncio.get_running_loop()
    with virtual_time() as clock:
        await anyio.sleep(86_400)
        assert asaga._waits.time.time() == clock.time()
        assert asaga.runs._parking.time.time() == clock.time()
        with virtual_time() as inner:  # the same time goes on
            await anyio.sleep(5)
            assert (inner.elapsed, inner.time()) == (5, clock.time())
    assert clock.elapsed == 86_405
    assert asaga._waits.time is time
    assert "time" not in vars(loop)
    assert loop.time() == pytest.approx(time.monotonic(), abs=1)


def test_virtual_time_needs_an_event_loop() -> None:
    """Outside an event loop, ``virtual_time()`` says where to use it."""
    with pytest.raises(RuntimeError, match="in an async function"), virtual_time():
        pass  # pragma: no cover


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_virtual(backend: str) -> None:
    """Without pytest's fixture: ``run_virtual`` runs a function in virtual time."""

    async def main() -> float:
        with virtual_time() as clock:
            with pytest.raises(SagaFailed):
                await Slow.run()
            return clock.elapsed

    assert run_virtual(main, backend=backend) == 450


# -- assertions on events ---------------------------------------------------------------


async def test_assertions_show_the_timeline() -> None:
    """A failed assertion says what was expected, what happened, and the timeline."""
    recorder = EventRecorder()
    with fail_step(Checkout, "ship", error=ValueError("no truck")), pytest.raises(SagaFailed):
        await Checkout.run(order_id="o-1", hooks=[recorder])
    recorder.assert_compensated(["charge", "reserve"])
    recorder.assert_compensated([{"charge"}, {"reserve"}])
    recorder.assert_succeeded({"charge", "reserve"})
    with pytest.raises(AssertionError) as info:
        recorder.assert_compensated(["reserve", "charge"])
    message = str(info.value)
    assert "expected: ['reserve', 'charge']" in message
    assert "actual:   ['charge', 'reserve']" in message
    assert "step_failed             ship" in message
    assert "ValueError('no truck')" in message
    with pytest.raises(AssertionError, match=r"'charge' was compensated \(or tried\)"):
        recorder.assert_not_compensated("ship", "charge")
    with pytest.raises(AssertionError, match="steps that succeeded differ"):
        recorder.assert_succeeded(["reserve", "charge", "ship"])
    with pytest.raises(AssertionError, match="steps compensated differ"):
        recorder.assert_compensated(["charge"])  # not the whole story


def test_assertion_arguments_are_checked() -> None:
    """A str where a list is expected, a name twice, no name: refused, not passed."""
    recorder = EventRecorder()
    with pytest.raises(TypeError, match="list of step names"):
        recorder.assert_compensated("charge")
    with pytest.raises(ValueError, match="expected twice"):
        recorder.assert_compensated(["a", {"a", "b"}])
    with pytest.raises(TypeError, match="one or more steps"):
        recorder.assert_not_compensated()
    with pytest.raises(AssertionError, match="no event recorded"):
        recorder.assert_succeeded(["a"])


# -- the pytest plugin ------------------------------------------------------------------


def test_plugin_gives_trio_a_mock_clock(pytester: pytest.Pytester) -> None:
    """The fixture works with trio's backend options given as a tuple; an
    ``anyio_backend`` of module scope set up without a clock is named in the error."""
    pytester.makepyfile(
        test_given="""
        import anyio, pytest

        TRIO = ("trio", {"restrict_keyboard_interrupt_to_checkpoints": True})

        @pytest.fixture(params=[TRIO, "asyncio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_sleeps(virtual_clock):
            await anyio.sleep(1000)
            assert virtual_clock.elapsed == 1000
        """,
        test_module_scope="""
        import anyio, pytest

        @pytest.fixture(scope="module")
        def anyio_backend():
            return "trio"

        @pytest.mark.anyio
        async def test_first():
            await anyio.sleep(0)

        @pytest.mark.anyio
        async def test_then(virtual_clock):
            pass
        """,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*needs the run to start with a trio.testing.MockClock*"])
