"""Durable runs that wait: parked in their record, going on where the event is delivered,
the run resumed or cancelled, or recovery finds their time come. On the in-memory store
and on a real Redis (a second RedisRunStore stands for another process)."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest

from asaga import (
    DuplicateEvent,
    EventRefused,
    Halt,
    InvalidEvent,
    NotParked,
    NotRecordable,
    RecordTooLarge,
    Resource,
    RunNotFound,
    RunParked,
    Saga,
    SagaFailed,
    StoreUnavailable,
    compose,
    map_each,
    sleep_for,
    step,
    wait_for,
)
from asaga.runs import MemoryRunStore, RedisRunStore, RunStore, recover
from asaga.runs._record import Write

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


class Payment(msgspec.Struct):
    amount: int
    note: str = ""


LOG: list[str] = []
HALT_ONCE: set[str] = set()


class Order(Saga):
    order_id: str

    @step
    async def charge(order_id: str) -> str:
        LOG.append(f"charge {order_id}")
        return f"ch-{order_id}"

    @charge.compensate
    async def refund(charge: str) -> None:
        LOG.append(f"refund {charge}")

    paid = wait_for(Payment, key="pay:{order_id}", timeout=3600, bad_payloads=1, after=["charge"])

    @step
    async def ship(paid: Payment, order_id: str) -> str:
        LOG.append(f"ship {order_id} {paid.amount}")
        return f"shipped {paid.amount}"


class Bank:
    """A resource (never recorded): given to whoever drives the run."""


class Paid(Saga):
    order_id: str
    bank: Resource[Bank]
    paid = wait_for(Payment, key="paid:{order_id}")

    @step
    async def book(paid: Payment, bank: Bank) -> int:
        return paid.amount


class Hurried(Saga):
    order_id: str

    @step
    async def charge(order_id: str) -> str:
        LOG.append(f"charge {order_id}")
        return f"ch-{order_id}"

    @charge.compensate
    async def refund(charge: str) -> None:
        LOG.append(f"refund {charge}")

    paid = wait_for(Payment, key="hurry:{order_id}", timeout=0.05, after=["charge"])


class Two(Saga):
    """Two events awaited in parallel branches."""

    order_id: str
    a = wait_for(Payment, key="a:{order_id}")
    b = wait_for(Payment, key="b:{order_id}")

    @step
    async def total(a: Payment, b: Payment) -> int:
        return a.amount + b.amount


class Sequential(Saga):
    """One event, a step, then another event."""

    order_id: str
    first = wait_for(Payment, key="s1:{order_id}")

    @step
    async def middle(first: Payment) -> int:
        return first.amount * 10

    second = wait_for(Payment, key="s2:{order_id}", after=["middle"])

    @step
    async def total(middle: int, second: Payment) -> int:
        return middle + second.amount


class Halting(Saga):
    order_id: str

    @step
    async def check(order_id: str) -> str:
        if order_id not in HALT_ONCE:
            HALT_ONCE.add(order_id)
            raise Halt("needs a manager's approval")
        return "approved"

    @step
    async def book(check: str) -> str:
        return f"booked ({check})"


class Timed(Saga):
    order_id: str
    pause = sleep_for(0.05)

    @step
    async def after(pause: float) -> float:
        return pause


class Inner(Saga):
    """Holds stock, then waits for the payment."""

    order_id: str

    @step
    async def hold(order_id: str) -> str:
        LOG.append(f"hold {order_id}")
        return f"h-{order_id}"

    @hold.compensate
    async def release(hold: str) -> None:
        LOG.append(f"release {hold}")

    paid = wait_for(Payment, key="inner:{order_id}", timeout=3600, after=["hold"])

    @step
    async def settle(paid: Payment) -> int:
        return paid.amount


class QuickInner(Saga):
    """As Inner, with a deadline that passes at once."""

    order_id: str

    @step
    async def hold(order_id: str) -> str:
        LOG.append(f"hold {order_id}")
        return f"h-{order_id}"

    @hold.compensate
    async def release(hold: str) -> None:
        LOG.append(f"release {hold}")

    paid = wait_for(Payment, key="quick:{order_id}", timeout=0.05, after=["hold"])


class Outer(Saga):
    """A composed sub-saga that waits: the parent parks with it."""

    order_id: str

    @step
    async def open_order(order_id: str) -> str:
        LOG.append(f"open {order_id}")
        return order_id

    @open_order.compensate
    async def close_order(open_order: str) -> None:
        LOG.append(f"close {open_order}")

    inner = compose(Inner, order_id="open_order")

    @step
    async def done(inner: int) -> str:
        return f"done {inner}"


class QuickOuter(Saga):
    order_id: str
    inner = compose(QuickInner)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


Stores = Callable[[], AbstractAsyncContextManager[RunStore]]


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> Stores:
    """Makes stores over one backend: each Redis store is another process's view; the
    memory store is one (a process's own)."""
    if request.param == "memory":
        memory = MemoryRunStore()

        @asynccontextmanager
        async def same() -> AsyncIterator[RunStore]:
            yield memory

        return same

    @asynccontextmanager
    async def another() -> AsyncIterator[RunStore]:
        async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as store:
            yield store

    return another


async def park(saga: type[Saga], runs: RunStore, **inputs: object) -> RunParked:
    with pytest.raises(RunParked) as caught:
        await saga.run(runs=runs, **inputs)
    return caught.value


async def test_a_run_parks_and_goes_on_where_its_event_is_delivered(stores: Stores) -> None:
    order = unique("o")
    async with stores() as first:
        parked = await park(Order, first, order_id=order)
        assert [(w.step, w.kind, w.key) for w in parked.waits] == [
            ("paid", "event", f"pay:{order}")
        ]
        record = await first.load(parked.run_id)
        assert record.status == "waiting"
        assert record.steps["paid"].status == "waiting"
        assert record.steps["charge"].status == "succeeded"
        assert record.waits[0].until is not None
        assert record.waits[0].until > time.time()
        listed = await first.list(status="waiting")
        assert parked.run_id in [r.run_id for r in listed]
    async with stores() as second:  # another process: the first one is gone
        delivery = await Order.deliver(f"pay:{order}", {"amount": 7}, runs=second)
        assert delivery.status == "succeeded"
        assert delivery.run_id == parked.run_id
        assert delivery.result is not None
        assert delivery.result.output == "shipped 7"
        record = await second.load(parked.run_id, events=True)
        assert record.status == "succeeded"
        assert [e.kind for e in record.events].count("run_succeeded") == 1
    assert LOG.count(f"ship {order} 7") == 1
    assert LOG.count(f"charge {order}") == 1


async def test_an_event_before_its_run_waits_is_taken_when_it_parks(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        delivery = await Order.deliver(f"pay:{order}", b'{"amount": 2}', runs=runs)
        assert delivery.status == "kept"
        assert delivery.run_id is None
        result = await Order.run(order_id=order, runs=runs)
        assert result.output == "shipped 2"
        with pytest.raises(DuplicateEvent):
            await Order.deliver(f"pay:{order}", {"amount": 2}, runs=runs)


async def test_a_second_event_for_a_consumed_key_is_refused(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        parked = await park(Order, runs, order_id=order)
        await Order.deliver(f"pay:{order}", {"amount": 1}, runs=runs)
        with pytest.raises(DuplicateEvent) as caught:
            await Order.deliver(f"pay:{order}", {"amount": 1}, runs=runs)
        assert caught.value.run_id == parked.run_id
    assert LOG.count(f"ship {order} 1") == 1


async def test_invalid_payloads_are_refused_then_fail_the_run(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        parked = await park(Order, runs, order_id=order)
        with pytest.raises(InvalidEvent) as first:
            await Order.deliver(f"pay:{order}", {"amount": "x"}, runs=runs)
        assert not first.value.run_failed
        assert first.value.run_id == parked.run_id
        assert (await runs.load(parked.run_id)).status == "waiting"
        with pytest.raises(InvalidEvent) as second:  # bad_payloads=1: the second fails it
            await Order.deliver(f"pay:{order}", {"amount": "y"}, runs=runs)
        assert second.value.run_failed
        record = await runs.load(parked.run_id)
        assert record.status == "failed"
        assert record.failed_step == "paid"
        assert record.compensated == ("charge",)
    assert f"refund ch-{order}" in LOG


async def test_a_valid_payload_after_an_invalid_one_goes_on(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        await park(Order, runs, order_id=order)
        with pytest.raises(InvalidEvent):
            await Order.deliver(f"pay:{order}", b"not json", runs=runs)
        delivery = await Order.deliver(f"pay:{order}", {"amount": 3}, runs=runs)
        assert delivery.status == "succeeded"


async def test_fifty_concurrent_deliveries_exactly_one_goes_on(stores: Stores) -> None:
    order = unique("o")
    outcomes: list[str] = []
    async with stores() as runs:
        await park(Order, runs, order_id=order)

        async def deliver(i: int) -> None:
            try:
                outcomes.append(
                    (await Order.deliver(f"pay:{order}", {"amount": i}, runs=runs)).status
                )
            except DuplicateEvent:
                outcomes.append("duplicate")

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(deliver, i)
    assert sorted(outcomes) == ["duplicate"] * 49 + ["succeeded"]
    assert len([line for line in LOG if line.startswith(f"ship {order} ")]) == 1


async def test_a_wait_past_its_deadline_is_failed_by_recovery(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        parked = await park(Hurried, runs, order_id=order)
    await anyio.sleep(0.1)  # the deadline passes while no process runs the saga
    async with stores() as sweeper:
        report = await recover(sweeper, sagas=[Hurried])
        assert [(r.run_id, r.outcome) for r in report] == [(parked.run_id, "failed")]
        record = await sweeper.load(parked.run_id)
        assert record.status == "failed"
        assert record.failed_step == "paid"
        assert "TimeoutError" in (record.steps["paid"].error or "")
        with pytest.raises(EventRefused, match="no longer waits"):  # too late
            await Hurried.deliver(f"hurry:{order}", {"amount": 1}, runs=sweeper)
        assert await recover(sweeper, sagas=[Hurried]) == []
    assert LOG.count(f"refund ch-{order}") == 1


async def test_a_durable_timer_wakes_through_recovery(stores: Stores) -> None:
    async with stores() as runs:
        parked = await park(Timed, runs, order_id=unique("t"))
        assert parked.waits[0].kind == "timer"
        assert await recover(runs, sagas=[Timed]) == []  # not due yet
    await anyio.sleep(0.1)
    async with stores() as sweeper:
        report = await recover(sweeper, sagas=[Timed])
        assert [(r.run_id, r.outcome) for r in report] == [(parked.run_id, "succeeded")]
        record = await sweeper.load(parked.run_id)
        assert record.status == "succeeded"


async def test_two_waits_park_until_both_came(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        parked = await park(Two, runs, order_id=order)
        assert sorted(w.step for w in parked.waits) == ["a", "b"]
        first = await Two.deliver(f"a:{order}", {"amount": 1}, runs=runs)
        assert first.status == "waiting"
        assert [w.step for w in first.waits] == ["b"]
        second = await Two.deliver(f"b:{order}", {"amount": 2}, runs=runs)
        assert second.status == "succeeded"
        assert second.result is not None
        assert second.result.output == 3


async def test_halt_parks_and_resume_runs_the_step_again(stores: Stores) -> None:
    order = unique("h")
    async with stores() as runs:
        parked = await park(Halting, runs, order_id=order)
        assert [(w.step, w.kind, w.reason) for w in parked.waits] == [
            ("check", "halt", "needs a manager's approval")
        ]
    async with stores() as other:
        delivery = await Halting.resume(parked.run_id, runs=other)
        assert delivery.status == "succeeded"
        assert delivery.result is not None
        assert delivery.result.output == "booked (approved)"
        with pytest.raises(NotParked):
            await Halting.resume(parked.run_id, runs=other)


async def test_cancel_a_parked_run_with_and_without_compensation(stores: Stores) -> None:
    kept, undone = unique("k"), unique("u")
    async with stores() as runs:
        first = await park(Order, runs, order_id=undone)
        second = await park(Order, runs, order_id=kept)
    async with stores() as other:
        cancelled = await Order.cancel(first.run_id, runs=other)
        assert cancelled.status == "cancelled"
        record = await other.load(first.run_id)
        assert record.status == "cancelled"
        assert record.compensated == ("charge",)
        terminated = await Order.cancel(second.run_id, runs=other, compensate=False)
        assert terminated.status == "terminated"
        record = await other.load(second.run_id)
        assert record.status == "terminated"
        assert record.compensated == ()
        with pytest.raises(NotParked):
            await Order.cancel(second.run_id, runs=other)
        with pytest.raises(EventRefused):
            await Order.deliver(f"pay:{kept}", {"amount": 1}, runs=other)
    assert f"refund ch-{undone}" in LOG
    assert f"refund ch-{kept}" not in LOG


async def test_an_idempotency_key_of_a_parked_run_says_it_is_parked(stores: Stores) -> None:
    order = unique("o")
    async with stores() as runs:
        parked = await park(Order, runs, order_id=order, idempotency_key=order)
        again = await park(Order, runs, order_id=order, idempotency_key=order)
        assert again.run_id == parked.run_id
    assert LOG.count(f"charge {order}") == 1


async def test_a_parked_run_survives_kill_9_of_its_process(
    redis_url: str, redis_prefix: str
) -> None:
    order = unique("k")
    worker = [sys.executable, str(ROOT / "tests/runs/parking_worker.py"), redis_url, redis_prefix]
    async with await anyio.open_process([*worker, order], cwd=ROOT) as process:
        assert process.stdout is not None
        buffer = b""
        with anyio.fail_after(20):
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()
        line = buffer.decode().splitlines()[0]
        assert line.startswith("parked ")
        process.kill()
        await process.wait()
    run_id = line.split()[-1]
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        assert (await runs.load(run_id)).status == "waiting"
        assert await recover(runs, sagas=[Order]) == []  # parked, not abandoned
        delivery = await Order.deliver(f"pay:{order}", {"amount": 9}, runs=runs)
        assert delivery.status == "succeeded"
        assert delivery.run_id == run_id
        assert (await runs.load(run_id)).status == "succeeded"


async def test_resuming_an_unknown_run_is_refused(stores: Stores) -> None:
    async with stores() as runs:
        with pytest.raises(RunNotFound):
            await Order.resume("no-such-run", runs=runs)
    with pytest.raises(SagaFailed):  # sanity: a plain failure still fails
        await Hurried.run(order_id=unique("x"))


async def test_a_composed_sub_saga_that_waits_parks_its_parent(stores: Stores) -> None:
    order = unique("c")
    async with stores() as runs:
        parked = await park(Outer, runs, order_id=order)
        (wait,) = parked.waits
        assert (wait.step, wait.run_step, wait.key) == ("inner", "paid", f"inner:{order}")
        assert wait.runs == (f"{parked.run_id}/inner/1",)
        child = await runs.load(wait.runs[0])
        assert child.status == "waiting"
    async with stores() as other:
        delivery = await Outer.deliver(f"inner:{order}", {"amount": 4}, runs=other)
        assert delivery.status == "succeeded"
        assert delivery.result is not None
        assert delivery.result.output == "done 4"
        assert (await other.load(wait.runs[0])).status == "succeeded"
    assert LOG.count(f"hold {order}") == 1


async def test_cancelling_a_parent_unwinds_its_waiting_child(stores: Stores) -> None:
    order = unique("c")
    async with stores() as runs:
        parked = await park(Outer, runs, order_id=order)
        done = await Outer.cancel(parked.run_id, runs=runs)
        assert done.status == "cancelled"
        child = await runs.load(parked.waits[0].runs[0])
        assert child.status == "failed"
        assert child.compensated == ("hold",)
    assert f"release h-{order}" in LOG
    assert f"close {order}" in LOG


async def test_a_child_wait_past_its_deadline_unwinds_parent_and_child(stores: Stores) -> None:
    order = unique("q")
    async with stores() as runs:
        parked = await park(QuickOuter, runs, order_id=order)
    await anyio.sleep(0.1)
    async with stores() as sweeper:
        report = await recover(sweeper, sagas=[QuickOuter])
        assert [(r.run_id, r.outcome) for r in report] == [(parked.run_id, "failed")]
        assert (await sweeper.load(parked.run_id)).status == "failed"
    assert f"release h-{order}" in LOG


async def test_a_run_that_parks_again_waits_for_its_next_event(stores: Stores) -> None:
    order, early = unique("s"), unique("e")
    async with stores() as runs:
        await park(Sequential, runs, order_id=order)
        first = await Sequential.deliver(f"s1:{order}", {"amount": 1}, runs=runs)
        assert first.status == "waiting"
        assert [w.key for w in first.waits] == [f"s2:{order}"]
        second = await Sequential.deliver(f"s2:{order}", {"amount": 2}, runs=runs)
        assert second.status == "succeeded"
        assert second.result is not None
        assert second.result.output == 12
        # The second event comes first: kept, and taken when the run parks for it.
        await park(Sequential, runs, order_id=early)
        kept = await Sequential.deliver(f"s2:{early}", {"amount": 3}, runs=runs)
        assert kept.status == "kept"
        done = await Sequential.deliver(f"s1:{early}", {"amount": 4}, runs=runs)
        assert done.status == "succeeded"
        assert done.result is not None
        assert done.result.output == 43


class FlakyTake(MemoryRunStore):
    """A store whose first take of a parked run fails as if Redis went away."""

    failed = False

    async def take_parked(self, write: Write, seen: int) -> bool:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("Redis went away", write.run_id)
        return await super().take_parked(write, seen)


async def test_an_event_whose_take_failed_goes_on_when_delivered_again() -> None:
    runs = FlakyTake()
    order = unique("f")
    parked = await park(Order, runs, order_id=order)
    with pytest.raises(StoreUnavailable):
        await Order.deliver(f"pay:{order}", {"amount": 5}, runs=runs)
    assert (await runs.load(parked.run_id)).status == "waiting"
    # The webhook is retried: the payload kept the first time drives the run on.
    again = await Order.deliver(f"pay:{order}", {"amount": 5}, runs=runs)
    assert again.status == "succeeded"
    with pytest.raises(DuplicateEvent):
        await Order.deliver(f"pay:{order}", {"amount": 5}, runs=runs)
    assert LOG.count(f"ship {order} 5") == 1


GATE: dict[str, anyio.Event] = {}


class Gated(Saga):
    order_id: str
    paid = wait_for(Payment, key="gated:{order_id}")

    @step
    async def ship(paid: Payment, order_id: str) -> str:
        GATE[order_id + ":in"].set()
        await GATE[order_id].wait()
        return "shipped"


async def test_a_cancelled_deliverer_still_drives_the_run_to_its_end() -> None:
    runs = MemoryRunStore()
    order = unique("g")
    GATE[order], GATE[order + ":in"] = anyio.Event(), anyio.Event()
    parked = await park(Gated, runs, order_id=order)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Gated.deliver(f"gated:{order}", {"amount": 1}, runs=runs))
        await GATE[order + ":in"].wait()
        tg.cancel_scope.cancel()  # the webhook's client went away mid-run
        GATE[order].set()
    assert (await runs.load(parked.run_id)).status == "succeeded"


async def test_a_durable_map_of_a_saga_that_waits_is_refused() -> None:
    class Mapped(Saga):
        orders: list[dict[str, str]]
        each = map_each(Inner, over="orders")

    with pytest.raises(NotRecordable, match="waits"):
        await Mapped.run(orders=[{"order_id": "x"}], runs=MemoryRunStore())


# -- regressions found by review --------------------------------------------------------


class HaltingChild(Saga):
    order_id: str

    @step
    async def check(order_id: str) -> str:
        LOG.append(f"check {order_id}")
        if order_id not in HALT_ONCE:
            HALT_ONCE.add(order_id)
            raise Halt("needs a manager")
        return "approved"


class HaltingParent(Saga):
    order_id: str
    approval = compose(HaltingChild)

    @step
    async def book(approval: str) -> str:
        return f"booked {approval}"


async def test_resume_of_a_halt_inside_a_composed_sub_saga_runs_the_step_again(
    stores: Stores,
) -> None:
    order = unique("hc")
    async with stores() as runs:
        parked = await park(HaltingParent, runs, order_id=order)
        assert parked.waits[0].kind == "halt"
        done = await HaltingParent.resume(parked.run_id, runs=runs)
        assert done.status == "succeeded"
        assert done.result is not None
        assert done.result.output == "booked approved"
    assert LOG.count(f"check {order}") == 2


class Sibling(Saga):
    """A composed sub-saga parks while a sibling branch fails."""

    order_id: str
    inner = compose(Inner)

    @step
    async def boom(order_id: str) -> str:
        raise RuntimeError("the sibling fails")


async def test_a_parked_child_is_unwound_when_a_sibling_fails(stores: Stores) -> None:
    order = unique("sb")
    async with stores() as runs:
        with pytest.raises(SagaFailed):
            await Sibling.run(order_id=order, runs=runs)
        assert [r.run_id for r in await runs.list(status="waiting")] == []
    assert f"release h-{order}" in LOG


async def test_a_late_event_is_refused_and_the_run_times_out(stores: Stores) -> None:
    order = unique("late")
    async with stores() as runs:
        parked = await park(Hurried, runs, order_id=order)
        await anyio.sleep(0.1)  # past its deadline, before any sweep
        with pytest.raises(EventRefused, match="after its deadline"):
            await Hurried.deliver(f"hurry:{order}", {"amount": 1}, runs=runs)
        record = await runs.load(parked.run_id)
        assert record.status == "failed"
        with pytest.raises(EventRefused, match="no longer waits"):
            await Hurried.deliver(f"hurry:{order}", {"amount": 1}, runs=runs)
    assert f"refund ch-{order}" in LOG


async def test_a_key_freed_by_a_cancel_can_be_waited_for_again(stores: Stores) -> None:
    order = unique("again")
    async with stores() as runs:
        first = await park(Order, runs, order_id=order)
        await Order.cancel(first.run_id, runs=runs)
        second = await park(Order, runs, order_id=order)
        done = await Order.deliver(f"pay:{order}", {"amount": 8}, runs=runs)
        assert done.run_id == second.run_id
        assert done.status == "succeeded"


async def test_a_refused_delivery_keeps_nothing(stores: Stores) -> None:
    order = unique("ref")
    async with stores() as runs:
        await park(Paid, runs, order_id=order, bank=Bank())
        with pytest.raises(ValueError, match="resources"):
            await Paid.deliver(f"paid:{order}", {"amount": 1}, runs=runs)  # no bank=
        done = await Paid.deliver(f"paid:{order}", {"amount": 2}, runs=runs, bank=Bank())
        assert done.result is not None
        assert done.result.output == 2


class Big(Saga):
    order_id: str

    @step
    async def charge(order_id: str) -> str:
        return "x" * 2500  # fits a 4 KiB record alone

    paid = wait_for(dict[str, str], key="big:{order_id}", after=["charge"])

    @step
    async def ship(paid: dict[str, str]) -> int:
        return len(paid)


async def test_an_event_too_large_for_the_record_does_not_poison_its_key() -> None:
    runs = MemoryRunStore(max_record_bytes=4096)
    order = unique("big")
    await park(Big, runs, order_id=order)
    with pytest.raises(RecordTooLarge):
        await Big.deliver(f"big:{order}", {"note": "y" * 1900}, runs=runs)
    done = await Big.deliver(f"big:{order}", {"note": "small"}, runs=runs)
    assert done.status == "succeeded"


async def test_deliver_without_runs_reaches_a_run_of_the_default_store() -> None:
    order = unique("dflt")
    with pytest.raises(RunParked):
        await Order.run(order_id=order, idempotency_key=order)
    done = await Order.deliver(f"pay:{order}", {"amount": 6})
    assert done.status == "succeeded"


async def test_a_corrupt_parked_record_is_quarantined_by_recovery() -> None:
    runs = MemoryRunStore()
    parked = await park(Hurried, runs, order_id=unique("bad"))
    runs._runs[parked.run_id].record = b"not a record"  # tampered with
    await anyio.sleep(0.1)
    (report,) = await recover(runs, sagas=[Hurried])
    assert report.outcome == "quarantined"
    assert [q.run_id for q in await runs.quarantined()] == [parked.run_id]
    assert await recover(runs, sagas=[Hurried]) == []


async def test_a_binding_kept_as_long_as_the_parked_run() -> None:
    now = [0.0]
    runs = MemoryRunStore(idempotency_window=10.0, retention=100.0, clock=lambda: now[0])
    order = unique("long")
    parked = await park(Order, runs, order_id=order)
    now[0] += 50.0  # past the idempotency window: the run (no deadline yet) still waits
    done = await Order.deliver(f"pay:{order}", {"amount": 2}, runs=runs)
    assert done.run_id == parked.run_id
    assert done.status == "succeeded"


async def test_a_parked_run_of_another_saga_version_is_left_to_its_own_workers() -> None:
    """A sweep of saga_version 2 neither wakes nor quarantines a due run of version 1; a
    sweep of version 1 then does (so the run was due when version 2 left it)."""
    runs = MemoryRunStore()
    order = unique("v")
    parked = await park(Hurried, runs, order_id=order)
    (wait,) = (await runs.load(parked.run_id)).waits
    assert wait.until is not None
    await anyio.sleep(max(wait.until - time.time(), 0) + 0.01)  # its recorded deadline passes

    def newer() -> type[Saga]:
        class Hurried(Saga):  # the same saga, in a newer version
            order_id: str
            saga_version = "2"

            @step
            async def charge(*, order_id: str) -> str:
                return order_id

        return Hurried

    assert await recover(runs, sagas=[newer()]) == []
    assert (await runs.load(parked.run_id)).status == "waiting"
    assert await runs.quarantined() == []
    report = await recover(runs, sagas=[Hurried])
    assert [(r.run_id, r.outcome) for r in report] == [(parked.run_id, "failed")]
    assert LOG.count(f"refund ch-{order}") == 1
