"""Steps that wait (wait_for, sleep_for, sleep_until, Halt) in runs without a store: the
run waits inside its process; events are delivered with Saga.deliver."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import anyio
import anyio.lowlevel
import msgspec
import pytest

from asaga import (
    DuplicateEvent,
    EventRefused,
    Halt,
    InvalidEvent,
    Saga,
    SagaDefinitionError,
    SagaFailed,
    compose,
    sleep_for,
    sleep_until,
    step,
    wait_for,
)
from asaga._render import to_mermaid
from asaga._waits import MAILBOX

pytestmark = pytest.mark.anyio


class Payment(msgspec.Struct):
    amount: int


def checkout(log: list[str]) -> type[Saga]:
    class Checkout(Saga):
        order_id: str

        @step
        async def charge(order_id: str) -> str:
            log.append("charge")
            return f"ch-{order_id}"

        @charge.compensate
        async def refund(charge: str) -> None:
            log.append(f"refund {charge}")

        paid = wait_for(Payment, key="payment:{order_id}", timeout=30, after=["charge"])

        @step
        async def ship(paid: Payment) -> str:
            log.append(f"ship {paid.amount}")
            if paid.amount < 0:
                raise ValueError("negative")
            return "shipped"

    return Checkout


async def wait_until_waiting(saga: str, key: str) -> None:
    """Until a run waits for ``key`` in this process (bounded)."""
    with anyio.fail_after(5):
        while MAILBOX.waiting(saga, key) is None:
            await anyio.lowlevel.checkpoint()


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


async def test_a_run_waits_for_its_event_and_goes_on() -> None:
    log: list[str] = []
    Checkout = checkout(log)
    order = unique("o")
    results = {}

    async def run() -> None:
        results["r"] = await Checkout.run(order_id=order)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until_waiting("Checkout", f"payment:{order}")
        assert log == ["charge"]
        delivery = await Checkout.deliver(f"payment:{order}", {"amount": 5})
        assert delivery.status == "delivered"
    assert results["r"].output == "shipped"
    assert results["r"].results["paid"] == Payment(5)
    assert log == ["charge", "ship 5"]


async def test_an_event_before_its_run_waits_is_kept_then_taken() -> None:
    log: list[str] = []
    Checkout = checkout(log)
    order = unique("o")
    delivery = await Checkout.deliver(f"payment:{order}", b'{"amount": 3}')
    assert delivery.status == "kept"
    assert delivery.run_id is None
    result = await Checkout.run(order_id=order)
    assert result.output == "shipped"
    assert log == ["charge", "ship 3"]
    with pytest.raises(DuplicateEvent):  # consumed: a second one is refused
        await Checkout.deliver(f"payment:{order}", {"amount": 3})


async def test_a_second_event_for_a_key_is_refused() -> None:
    Checkout = checkout([])
    order = unique("o")
    await Checkout.deliver(f"payment:{order}", {"amount": 1})
    with pytest.raises(DuplicateEvent) as caught:
        await Checkout.deliver(f"payment:{order}", {"amount": 2})
    assert caught.value.key == f"payment:{order}"


async def test_an_invalid_payload_is_refused_and_the_run_keeps_waiting() -> None:
    log: list[str] = []
    Checkout = checkout(log)
    order = unique("o")
    results = {}

    async def run() -> None:
        results["r"] = await Checkout.run(order_id=order)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until_waiting("Checkout", f"payment:{order}")
        with pytest.raises(InvalidEvent) as caught:
            await Checkout.deliver(f"payment:{order}", {"amount": "lots"})
        assert not caught.value.run_failed
        assert "amount" in caught.value.errors
        assert MAILBOX.waiting("Checkout", f"payment:{order}") is not None  # still waits
        await Checkout.deliver(f"payment:{order}", {"amount": 4})
    assert results["r"].output == "shipped"


async def test_too_many_bad_payloads_fail_the_step_and_unwind() -> None:
    log: list[str] = []

    class Strict(Saga):
        order_id: str

        @step
        async def charge(order_id: str) -> str:
            log.append("charge")
            return "c"

        @charge.compensate
        async def refund(charge: str) -> None:
            log.append("refund")

        paid = wait_for(Payment, key="strict:{order_id}", bad_payloads=1, after=["charge"])

    order = unique("o")
    errors: list[BaseException] = []

    async def run() -> None:
        try:
            await Strict.run(order_id=order)
        except SagaFailed as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until_waiting("Strict", f"strict:{order}")
        with pytest.raises(InvalidEvent) as first:
            await Strict.deliver(f"strict:{order}", {"amount": "x"})
        assert not first.value.run_failed  # one bad payload is tolerated
        with pytest.raises(InvalidEvent) as second:
            await Strict.deliver(f"strict:{order}", {"amount": "y"})
        assert second.value.run_failed
    assert len(errors) == 1
    assert errors[0].step == "paid"
    assert isinstance(errors[0].__cause__, InvalidEvent)
    assert log == ["charge", "refund"]


async def test_a_wait_that_times_out_fails_its_step_and_the_run_unwinds() -> None:
    log: list[str] = []

    class Hurried(Saga):
        order_id: str

        @step
        async def charge(order_id: str) -> str:
            log.append("charge")
            return "c"

        @charge.compensate
        async def refund(charge: str) -> None:
            log.append("refund")

        paid = wait_for(Payment, key="hurried:{order_id}", timeout=0.01, after=["charge"])

    with pytest.raises(SagaFailed) as caught:
        await Hurried.run(order_id=unique("o"))
    assert caught.value.step == "paid"
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert log == ["charge", "refund"]


async def test_a_cancelled_waiting_run_unwinds_and_frees_its_key() -> None:
    log: list[str] = []
    Checkout = checkout(log)
    order = unique("o")
    with anyio.move_on_after(0.05):
        await Checkout.run(order_id=order)
    assert log == ["charge", "refund ch-" + order]
    assert MAILBOX.waiting("Checkout", f"payment:{order}") is None
    # Nobody took the key's event: a later run may wait for it.
    assert (await Checkout.deliver(f"payment:{order}", {"amount": 1})).status == "kept"


async def test_fifty_concurrent_deliveries_one_is_taken() -> None:
    log: list[str] = []
    Checkout = checkout(log)
    order = unique("o")
    taken: list[str] = []
    refused: list[BaseException] = []

    async def deliver(i: int) -> None:
        try:
            taken.append((await Checkout.deliver(f"payment:{order}", {"amount": i})).status)
        except DuplicateEvent as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Checkout.run(order_id=order))
        await wait_until_waiting("Checkout", f"payment:{order}")
        for i in range(50):
            tg.start_soon(deliver, i)
    assert taken == ["delivered"]
    assert len(refused) == 49
    assert [entry for entry in log if entry.startswith("ship")] == [log[-1]]


async def test_an_unknown_key_is_refused_with_the_keys_the_saga_waits_for() -> None:
    Checkout = checkout([])
    with pytest.raises(EventRefused, match=r"payment:\{order_id\}"):
        await Checkout.deliver("paymnet:o-1", {"amount": 1})


async def test_a_child_run_waits_in_the_process() -> None:
    log: list[str] = []
    Child = checkout(log)

    class Parent(Saga):
        order_id: str
        order = compose(Child)

        @step
        async def done(order: str) -> str:
            return f"done {order}"

    order = unique("o")
    results = {}

    async def run() -> None:
        results["r"] = await Parent.run(order_id=order)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_until_waiting("Checkout", f"payment:{order}")
        # Delivered through the parent, which composes the saga that waits.
        assert (await Parent.deliver(f"payment:{order}", {"amount": 2})).status == "delivered"
    assert results["r"].output == "done shipped"


async def test_timers_sleep_in_the_process() -> None:
    class Timed(Saga):
        at: datetime

        pause = sleep_for(timedelta(milliseconds=1))
        until = sleep_until("at", after=["pause"])

    before = time.time()
    result = await Timed.run(at=datetime.now(UTC) + timedelta(milliseconds=5))
    assert result.results["pause"] >= before
    assert result.results["until"] >= result.results["pause"]


async def test_halt_without_a_store_fails_the_step() -> None:
    class Halting(Saga):
        @step
        async def check() -> int:
            raise Halt("needs a human")

    with pytest.raises(SagaFailed) as caught:
        await Halting.run()
    assert isinstance(caught.value.__cause__, Halt)


def test_waiting_steps_are_in_the_graph() -> None:
    Checkout = checkout([])
    plan = Checkout.__asaga__.plan  # type: ignore[union-attr]
    assert plan.nodes["paid"].deps == ("charge",)
    assert plan.nodes["ship"].deps == ("paid",)
    assert "wait_for(Payment)" in to_mermaid(Checkout)


def test_bad_waits_fail_at_class_creation_all_listed() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Broken(Saga):
            order_id: str
            a = wait_for(Payment, key="p:{}", timeout=-1, bad_payloads=-2)
            b = sleep_for(0)
            c = wait_for(Payment, key="q:{nowhere}")

    message = str(caught.value)
    for part in ("positional", "timeout=-1", "bad_payloads=-2", "seconds=0", "nowhere"):
        assert part in message, part


def test_two_waits_for_one_key_are_a_definition_error() -> None:
    with pytest.raises(SagaDefinitionError, match="both wait for the event key"):

        class Twice(Saga):
            order_id: str
            a = wait_for(Payment, key="k:{order_id}")
            b = wait_for(Payment, key="k:{order_id}")


async def test_a_key_longer_than_keys_may_be_fails_its_step_at_once() -> None:
    class Long(Saga):
        order_id: str
        paid = wait_for(Payment, key="p:{order_id}")

    with pytest.raises(SagaFailed) as caught:
        await Long.run(order_id="x" * 1200)
    assert "1 to 1000 characters" in str(caught.value.__cause__)


@dataclass
class PaymentObject:
    amount: int


class PaymentDict(TypedDict):
    amount: int


async def test_an_object_payload_fits_a_typeddict_by_its_fields() -> None:
    class Typed(Saga):
        order_id: str
        paid = wait_for(PaymentDict, key="typed:{order_id}")

    order = unique("t")
    await Typed.deliver(f"typed:{order}", PaymentObject(amount=7))
    result = await Typed.run(order_id=order)
    assert result.output == {"amount": 7}
