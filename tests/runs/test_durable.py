"""Durable runs with the in-memory store (asyncio and trio): what is recorded and when,
idempotency keys, undo, and the errors for what cannot be recorded."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import msgspec
import pytest

from asaga import (
    IdempotencyKeyReused,
    InputValidationError,
    NotRecordable,
    RecordedError,
    RecordTooLarge,
    Resource,
    RunNotFound,
    RunStoreError,
    Saga,
    SagaFailed,
    StoreUnavailable,
    compose,
    map_each,
    step,
)
from asaga.runs import MemoryRunStore, RunRecord, recover
from asaga.runs._record import Write, decode_record
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    id: str
    quantity: int


class Handle:
    """An object msgspec cannot encode (an open connection, say)."""


class Payments:
    """An injected client."""


class Recording(MemoryRunStore):
    """A memory store that keeps every write it was given, decoded, in order."""

    def __init__(self, log: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.log = log if log is not None else []
        self.records: list[RunRecord] = []

    async def create(self, write: Write, claim: Any) -> str | None:
        self._note(write)
        return await super().create(write, claim)

    async def write(self, write: Write) -> None:
        self._note(write)
        await super().write(write)

    def _note(self, write: Write) -> None:
        record = decode_record(write.record)
        self.records.append(record)
        steps = ",".join(f"{n}={s.status}" for n, s in record.steps.items())
        self.log.append(f"write {record.status} [{steps}]")


async def test_each_transition_is_written_before_it_is_acted_on() -> None:
    """A step starts only after a write says it is starting; its dependents start only
    after a write holds its result; the run's end is written last."""
    log: list[str] = []
    runs = Recording(log)

    class Chain(Saga):
        quantity: int

        @step
        async def reserve(quantity: int, run_id: str) -> Order:
            log.append("reserve runs")
            return Order(id=f"{run_id}:r", quantity=quantity)

        @step
        async def charge(reserve: Order) -> str:
            log.append("charge runs")
            return "ch-1"

        @step
        async def ship(charge: str, reserve: Order) -> str:
            log.append("ship runs")
            return "sh-1"

    result = await Chain.run(quantity=2, runs=runs)
    assert log == [
        "write running [reserve=running]",
        "reserve runs",
        "write running [reserve=succeeded,charge=running]",
        "charge runs",
        "write running [reserve=succeeded,charge=succeeded,ship=running]",
        "ship runs",
        "write succeeded [reserve=succeeded,charge=succeeded,ship=succeeded]",
    ]
    # N steps in a chain: N + 1 writes (the last step's result rides on the final one).
    assert len(runs.records) == 4
    record = await runs.load(result.run_id, events=True)
    assert record.status == "succeeded"
    assert msgspec.msgpack.decode(record.inputs) == {"quantity": 2}
    assert msgspec.msgpack.decode(record.steps["reserve"].result or b"", type=Order) == Order(
        id=f"{result.run_id}:r", quantity=2
    )
    assert [e.kind for e in record.events] == [
        "run_started",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded",
        "run_succeeded",
    ]


async def test_a_failed_run_records_its_unwinding() -> None:
    """The failure is written before compensations start, each compensation before and
    after it runs, and the final status last; resources are never recorded."""
    log: list[str] = []
    runs = Recording(log)

    class Fails(Saga):
        payments: Resource[Payments]

        @step
        async def reserve() -> str:
            return "r1"

        @reserve.compensate
        async def release(reserve: str) -> None:
            log.append("release runs")

        @step
        async def charge(reserve: str, payments: Payments) -> str:
            raise RuntimeError("declined")

    with pytest.raises(SagaFailed) as failed:
        await Fails.run(payments=Payments(), runs=runs)
    run_id = failed.value.run_id
    record = await runs.load(run_id)
    assert record.status == "failed"
    assert record.failed_step == "charge"
    assert record.error == "RuntimeError('declined')"
    assert record.steps["charge"].status == "failed"
    assert record.steps["reserve"].compensation == "succeeded"
    assert record.compensated == ("reserve",)
    release = log.index("release runs")
    assert log[release - 1].startswith("write compensating")
    assert log[-1].startswith("write failed")


async def test_inputs_without_a_resource_annotation_must_be_recordable() -> None:
    """An input msgspec cannot encode is refused before any step runs, naming it, with
    the fix (declare injected objects as Resource[...])."""
    ran: list[str] = []

    class Client:
        pass

    class Uses(Saga):
        @step
        async def call(client: Any) -> None:
            ran.append("call")

    with pytest.raises(NotRecordable, match=r"input 'client' cannot be recorded.*Resource"):
        await Uses.run(client=Client(), runs=MemoryRunStore())
    assert ran == []


async def test_a_result_type_that_cannot_be_recorded_is_refused_before_any_step() -> None:
    """A step annotated to return a type msgspec cannot encode makes a durable run fail
    before any step runs; the same saga still runs without a store."""
    ran: list[str] = []

    class Opens(Saga):
        @step
        async def first() -> int:
            ran.append("first")
            return 1

        @step
        async def open_(first: int) -> Handle:
            return Handle()

    with pytest.raises(NotRecordable, match=r"step 'open_' returns `.*Handle`"):
        await Opens.run(runs=MemoryRunStore())
    assert ran == []
    assert isinstance((await Opens.run()).output, Handle)


async def test_a_result_that_cannot_be_recorded_fails_the_run_at_that_step() -> None:
    """An unannotated step returning something msgspec cannot encode fails the run at
    that step, naming the step and the type; the step is compensated (it did run)."""
    undone: list[str] = []

    class Opens(Saga):
        @step
        async def open_():  # type: ignore[no-untyped-def]  # no annotation on purpose
            return Handle()

        @open_.compensate
        async def close(open_: Any) -> None:
            undone.append("close")

    with pytest.raises(SagaFailed) as failed:
        await Opens.run(runs=MemoryRunStore())
    cause = failed.value.__cause__
    assert isinstance(cause, NotRecordable)
    assert "step 'open_' returned a" in str(cause)
    assert "Handle" in str(cause)
    assert undone == ["close"]


async def test_a_record_over_the_size_limit_fails_the_run_cleanly() -> None:
    """A result that would make the record larger than max_record_bytes fails the run
    (RecordTooLarge, saying what to do); completed steps are compensated."""
    undone: list[str] = []

    class Big(Saga):
        @step
        async def small() -> str:
            return "s"

        @small.compensate
        async def unsmall(small: str) -> None:
            undone.append(small)

        @step
        async def big(small: str) -> str:
            return "x" * 5000

        @step
        async def after(big: str) -> int:
            return len(big)

    with pytest.raises(SagaFailed) as failed:
        await Big.run(runs=MemoryRunStore(max_record_bytes=4096))
    assert isinstance(failed.value.__cause__, RecordTooLarge)
    assert "over the store's limit of 4096" in str(failed.value.__cause__)
    assert failed.value.step == "big"
    assert undone == ["s"]


async def test_a_composed_step_runs_as_a_child_run_named_by_its_parent() -> None:
    """A composed step runs durably: the sub-saga is a run of its own, recorded under
    ``<parent>/<step>/<attempt>``, naming its parent, and the parent names it."""

    class Child(Saga):
        @step
        async def work() -> int:
            return 1

    class Parent(Saga):
        child = compose(Child)

    store = MemoryRunStore()
    result = await Parent.run(runs=store, run_id="p-1")
    assert result.output == 1
    child = await store.load("p-1/child/1")
    assert (child.saga, child.status, child.parent) == ("Child", "succeeded", "p-1")
    parent = await store.load("p-1")
    assert parent.steps["child"].children == ("p-1/child/1",)


async def test_a_mapped_function_with_undo_cannot_run_durably() -> None:
    """Its elements could not be undone from the record: the durable run is refused
    before any step, saying why; the in-memory run still works."""
    ran: list[int] = []

    async def bump(item: int) -> int:
        ran.append(item)
        return item

    async def unbump(item: int) -> None:
        ran.remove(item)

    class Parent(Saga):
        items: list[int]
        first = map_each(bump, over="items", undo=unbump)

    with pytest.raises(NotRecordable, match="undo="):
        await Parent.run(items=[1, 2], runs=MemoryRunStore())
    assert ran == []
    await Parent.run(items=[1, 2])
    assert ran == [1, 2]


async def test_a_durable_run_id_may_not_hold_the_child_separator() -> None:
    class One(Saga):
        @step
        async def work() -> int:
            return 1

    with pytest.raises(ValueError, match="without '/'"):
        await One.run(runs=MemoryRunStore(), run_id="a/b")


async def test_an_idempotency_key_runs_once_and_replays_the_outcome() -> None:
    """The same key returns the first run's result without running again, also with no
    store given (the process's default); other inputs with the key are refused."""
    runs: list[str] = []

    class Charge(Saga):
        amount: int

        @step
        async def charge(amount: int, run_id: str) -> str:
            runs.append(run_id)
            return f"ch-{amount}"

    key, other = uuid.uuid4().hex, uuid.uuid4().hex  # the default store is process-wide
    first = await Charge.run(amount=5, idempotency_key=key)
    again = await Charge.run(amount=5, idempotency_key=key)
    assert runs == [first.run_id]
    assert (again.run_id, again.output, again.replayed) == (first.run_id, "ch-5", True)
    assert first.replayed is False
    with pytest.raises(IdempotencyKeyReused):
        await Charge.run(amount=6, idempotency_key=key)
    assert (await Charge.run(amount=6, idempotency_key=other)).output == "ch-6"


async def test_a_failed_run_is_replayed_as_its_failure() -> None:
    """A key whose run failed raises the same SagaFailed again (the cause is the recorded
    error, as text), without running anything."""
    attempts = 0

    class Declines(Saga):
        @step
        async def charge() -> str:
            nonlocal attempts
            attempts += 1
            raise RuntimeError("card declined")

    store = MemoryRunStore()
    with pytest.raises(SagaFailed) as first:
        await Declines.run(runs=store, idempotency_key="k")
    with pytest.raises(SagaFailed) as second:
        await Declines.run(runs=store, idempotency_key="k")
    assert attempts == 1
    assert second.value.run_id == first.value.run_id
    assert second.value.step == "charge"
    assert isinstance(second.value.__cause__, RecordedError)
    assert str(second.value.__cause__) == "RuntimeError('card declined')"


async def test_concurrent_calls_with_one_key_wait_for_the_first() -> None:
    """Duplicates that arrive while the first run is still running wait for it and get
    its result; the step ran once."""
    executions = 0
    running, release = anyio.Event(), anyio.Event()

    class Slow(Saga):
        @step
        async def work() -> int:
            nonlocal executions
            executions += 1
            running.set()
            await release.wait()
            return 42

    store = MemoryRunStore()
    outputs: list[tuple[int, bool]] = []

    async def call() -> None:
        result = await Slow.run(runs=store, idempotency_key="once")
        outputs.append((result.output, result.replayed))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call)
        with anyio.fail_after(5):
            await running.wait()
        release.set()
    assert executions == 1
    assert sorted(outputs) == [(42, False)] + [(42, True)] * 19


async def test_a_cancelled_run_lets_its_key_go() -> None:
    """A run whose caller was cancelled (it was undone) does not hold its key: a retry
    runs again."""
    started = anyio.Event()
    calls = 0

    class Blocks(Saga):
        @step
        async def work() -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                started.set()
                await anyio.sleep_forever()
            return calls

    store = MemoryRunStore()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Blocks.run(runs=store, idempotency_key="k"))
        with anyio.fail_after(5):
            await started.wait()
        tg.cancel_scope.cancel()
    result = await Blocks.run(runs=store, idempotency_key="k")
    assert (result.output, result.replayed) == (2, False)
    cancelled = [r for r in await store.list() if r.status == "cancelled"]
    assert len(cancelled) == 1


async def test_undo_after_success_compensates_once() -> None:
    """undo() compensates a succeeded run from its record in reverse graph order; a
    second undo does nothing and says so; events reach the saga's hooks."""
    undone: list[str] = []
    recorder = EventRecorder()

    class Booking(Saga):
        hotel: str

        @step
        async def flight(run_id: str) -> str:
            return f"fl-{run_id[:4]}"

        @flight.compensate
        async def cancel_flight(flight: str) -> None:
            undone.append(flight)

        @step
        async def room(flight: str, hotel: str) -> Order:
            return Order(id=f"{hotel}-1", quantity=1)

        @room.compensate
        async def cancel_room(room: Order) -> None:
            undone.append(room.id)

    store = MemoryRunStore()
    result = await Booking.run(hotel="h", runs=store)
    first = await Booking.undo(result.run_id, runs=store, hooks=[recorder])
    second = await Booking.undo(result.run_id, runs=store)
    assert undone == ["h-1", result.results["flight"]]  # room first, then flight
    assert (first.status, first.already, first.compensated) == (
        "undone",
        False,
        ("room", "flight"),
    )
    assert (second.status, second.already) == ("undone", True)
    assert recorder.steps("compensation_succeeded") == ["room", "flight"]


async def test_undo_of_what_cannot_be_undone_says_why() -> None:
    """Undoing an unknown run raises RunNotFound; a run of another saga is refused; a
    failed run (compensated when it failed) has nothing left to undo."""

    class Fails(Saga):
        @step
        async def boom() -> None:
            raise RuntimeError("boom")

    class Other(Saga):
        @step
        async def ok() -> int:
            return 1

    store = MemoryRunStore()
    with pytest.raises(RunNotFound):
        await Fails.undo("nope", runs=store)
    with pytest.raises(SagaFailed) as failed:
        await Fails.run(runs=store)
    done = await Fails.undo(failed.value.run_id, runs=store)
    assert (done.status, done.already, done.compensated) == ("failed", True, ())
    other = await Other.run(runs=store)
    with pytest.raises(RunStoreError, match="is a run of saga Other, not Fails"):
        await Fails.undo(other.run_id, runs=store)


async def test_nothing_to_recover_in_memory() -> None:
    """The memory store's runs end with its process: recovery finds nothing."""

    class One(Saga):
        @step
        async def a() -> int:
            return 1

    store = MemoryRunStore()
    await One.run(runs=store)
    assert await recover(store, sagas=[One]) == []


async def test_recover_needs_the_resources() -> None:
    """Resources are never recorded: recover() says which ones it needs."""

    class Needs(Saga):
        client: Resource[object]

        @step
        async def a(client: object) -> int:
            return 1

    with pytest.raises(
        ValueError, match=r"never recorded: pass resources=\{...\} with \['client'\]"
    ):
        await recover(MemoryRunStore(), sagas=[Needs])


async def test_bad_idempotency_keys_are_refused() -> None:
    """An empty or over-long key is a ValueError before anything runs."""

    class One(Saga):
        @step
        async def a() -> int:
            return 1

    for key in ("", "k" * 256):
        with pytest.raises(ValueError, match="1 to 255 characters"):
            await One.run(idempotency_key=key)


async def test_an_unwinding_run_says_so_before_compensating() -> None:
    """A failed or cancelled run is recorded as compensating before its first
    compensation runs, and steps released but never started are not left "running": a
    recovery must never take such a run for one to resume."""
    runs = MemoryRunStore()
    seen: list[tuple[str, dict[str, str]]] = []
    started = anyio.Event()

    class Cancelled(Saga):
        @step
        async def first(run_id: str) -> str:
            return run_id

        @first.compensate
        async def unfirst(first: str) -> None:
            record = await runs.load(first)
            seen.append((record.status, {n: s.status for n, s in record.steps.items()}))

        @step
        async def second(first: str) -> str:
            started.set()
            await anyio.sleep_forever()
            return first

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Cancelled.run(runs=runs))
        with anyio.fail_after(5):
            await started.wait()
        tg.cancel_scope.cancel()
    assert seen == [("compensating", {"first": "succeeded", "second": "cancelled"})]

    class Fork(Saga):
        on_failure = "cancel"

        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            raise RuntimeError("b failed")

        @step
        async def c(a: int) -> int:
            await anyio.sleep_forever()
            return a

        @step
        async def d(c: int) -> int:
            return c

    with pytest.raises(SagaFailed) as failed:
        await Fork.run(runs=runs)
    record = await runs.load(failed.value.run_id)
    assert record.status == "failed"
    assert "running" not in {s.status for s in record.steps.values()}


async def test_a_record_too_large_does_not_block_the_next_writes() -> None:
    """After RecordTooLarge the oversized result is dropped from the record (the step is
    kept as succeeded without it), so the unwinding and the final status are written
    (the run does not stay "running")."""
    runs = MemoryRunStore(max_record_bytes=4096)

    class Big(Saga):
        @step
        async def small() -> str:
            return "s"

        @small.compensate
        async def unsmall(small: str) -> None:
            return None

        @step
        async def big(small: str) -> str:
            return "x" * 5000  # the last step: its write would ride on the final one

    with pytest.raises(SagaFailed) as failed:
        await Big.run(runs=runs)
    record = await runs.load(failed.value.run_id)
    assert record.status == "failed"
    assert record.steps["big"].status == "succeeded"  # it ran...
    assert record.steps["big"].result is None  # ...but its result is not kept
    assert (record.steps["big"].error or "").startswith("result not recorded: RecordTooLarge")
    assert record.compensated == ("small",)


async def test_undo_refuses_before_taking_the_run() -> None:
    """An undo that cannot start (a resource left out) changes nothing: the run can
    still be undone afterwards."""

    class Booking(Saga):
        desk: Resource[Payments]

        @step
        async def book(desk: Payments) -> str:
            return "b-1"

        @book.compensate
        async def unbook(book: str, desk: Payments) -> None:
            return None

    store = MemoryRunStore()
    result = await Booking.run(desk=Payments(), runs=store)
    with pytest.raises(InputValidationError):
        await Booking.undo(result.run_id, runs=store)
    assert (await store.load(result.run_id)).status == "succeeded"
    done = await Booking.undo(result.run_id, runs=store, desk=Payments())
    assert (done.status, done.already) == ("undone", False)


async def test_a_run_id_used_twice_is_refused() -> None:
    """A run id already recorded in the store is refused, even by the same store: a
    second run must not overwrite the first one's record."""
    charged: list[int] = []

    class Charge(Saga):
        amount: int

        @step
        async def charge(amount: int) -> int:
            charged.append(amount)
            return amount

    store = MemoryRunStore()
    await Charge.run(amount=30, runs=store, run_id="r-0001")
    with pytest.raises(RunStoreError, match="run r-0001 is already recorded"):
        await Charge.run(amount=99, runs=store, run_id="r-0001")
    assert charged == [30]


async def test_the_key_fingerprint_ignores_the_order_of_the_inputs() -> None:
    """The same inputs given in another order (a JSON body with its keys reordered) are
    the same request for an idempotency key."""

    class Order(Saga):
        sku: str
        quantity: int

        @step
        async def place(sku: str, quantity: int) -> int:
            return quantity

    store = MemoryRunStore()
    first = await Order.run(runs=store, idempotency_key="o-1", **{"sku": "a", "quantity": 3})
    again = await Order.run(runs=store, idempotency_key="o-1", **{"quantity": 3, "sku": "a"})
    assert (again.run_id, again.replayed) == (first.run_id, True)


def test_a_key_may_not_outlive_its_run() -> None:
    """An idempotency window longer than the retention of records is refused."""
    with pytest.raises(ValueError, match="must not outlast retention"):
        MemoryRunStore(retention=3600, idempotency_window=7200)


async def test_a_late_write_does_not_undo_a_newer_one() -> None:
    """A write older than the last one applied (sent again after its reply was lost) is
    ignored by the store."""
    store = MemoryRunStore()

    class One(Saga):
        @step
        async def a() -> int:
            return 1

    result = await One.run(runs=store)
    record = await store.load(result.run_id)
    from asaga.runs._record import encode_record

    stale = msgspec.structs.replace(record, status="running", seq=1)
    await store.write(
        Write(run_id=result.run_id, record=encode_record(stale), status="running", seq=1)
    )
    assert (await store.load(result.run_id)).status == "succeeded"


async def test_a_lost_write_keeps_what_the_step_returned() -> None:
    """The store cannot take the write of a step's success: the run fails, but the record
    still says the step succeeded, with its result (so a recovery could undo it), and
    that it was compensated."""

    class Flaky(MemoryRunStore):
        failed = False

        async def write(self, write: Write) -> None:
            record = decode_record(write.record)
            if "ship" in record.steps and not self.failed:
                self.failed = True
                raise StoreUnavailable("Redis went away", write.run_id)
            await super().write(write)

    class Pay(Saga):
        @step
        async def charge() -> str:
            return "ch-1"

        @charge.compensate
        async def refund(charge: str) -> None:
            return None

        @step
        async def ship(charge: str) -> str:
            return "sh-1"

        @step
        async def confirm(ship: str) -> str:
            return ship

    store = Flaky()
    with pytest.raises(SagaFailed) as failed:
        await Pay.run(runs=store)
    assert isinstance(failed.value.__cause__, StoreUnavailable)
    record = await store.load(failed.value.run_id)
    assert record.steps["charge"].status == "succeeded"
    assert record.steps["charge"].result is not None
    assert record.steps["charge"].compensation == "succeeded"


async def test_a_step_interrupted_mid_attempt_stays_in_doubt() -> None:
    """A step that a SystemExit interrupts began and did not end: the record leaves it in
    doubt (not "never started"), for a recovery to treat as such."""

    class Order(Saga):
        @step
        async def reserve() -> str:
            return "r-1"

        @reserve.compensate
        async def release(reserve: str) -> None:
            return None

        @step
        async def charge(reserve: str) -> str:
            raise SystemExit(3)

    store = MemoryRunStore()
    with pytest.raises(SystemExit):
        await Order.run(runs=store, run_id="interrupted-1")
    record = await store.load("interrupted-1")
    assert record.steps["charge"].status == "running"
    assert record.steps["reserve"].compensation == "succeeded"
