"""Sagas whose runs the dashboard tests list, draw and act on, and the runs they seed."""

from __future__ import annotations

import os

import msgspec

from asaga import Halt, Resource, RunParked, Saga, compose, step, wait_for
from asaga.runs import RunStore
from asaga.runs._record import RunRecord, StepRecord, Write, encode_record
from tests.unfinished_runs import unfinished_run

UNDONE: list[str] = []
"""Reservations whose compensation ran (Shop.unreserve)."""

APPROVED: set[str] = set()
"""Orders whose Approval no longer halts (every order when $DASHBOARD_TEST_APPROVE is set:
the dashboard server of the browser tests, another process)."""


class Payment(msgspec.Struct):
    """The event a Paid run waits for."""

    amount: int


class Shop(Saga):
    """Succeeds: reserve (compensated by unreserve), then charge."""

    order_id: str
    email: str

    @step
    async def reserve(order_id: str) -> str:
        return f"r-{order_id}"

    @reserve.compensate
    async def unreserve(reserve: str) -> None:
        UNDONE.append(reserve)

    @step
    async def charge(reserve: str, email: str) -> int:
        return 42


class Approval(Saga):
    """Halts at check until its order is in APPROVED (then resume finishes it)."""

    order_id: str

    @step
    async def check(order_id: str) -> str:
        if order_id not in APPROVED and not os.environ.get("DASHBOARD_TEST_APPROVE"):
            raise Halt("needs a manager's approval")
        return "approved"

    @step
    async def book(check: str) -> str:
        return f"booked ({check})"


class Paid(Saga):
    """Waits for the payment of its order (cancel compensates hold)."""

    order_id: str

    @step
    async def hold(order_id: str) -> str:
        return f"h-{order_id}"

    @hold.compensate
    async def release(hold: str) -> None:
        UNDONE.append(hold)

    paid = wait_for(Payment, key="pay:{order_id}", after=["hold"])

    @step
    async def ship(paid: Payment, hold: str) -> str:
        return f"shipped {paid.amount}"


class Flaky(Saga):
    """Fails at pay after hold: hold is compensated (status failed)."""

    order_id: str

    @step
    async def hold(order_id: str) -> str:
        return f"h-{order_id}"

    @hold.compensate
    async def release(hold: str) -> None:
        UNDONE.append(hold)

    @step
    async def pay(hold: str) -> int:
        raise ConnectionError("the payment provider timed out")


class Doomed(Saga):
    """Halts at check until its order is in APPROVED; then book fails (the run fails)."""

    order_id: str

    @step
    async def check(order_id: str) -> str:
        if order_id not in APPROVED:
            raise Halt("needs a manager's approval")
        return "approved"

    @step
    async def book(check: str) -> str:
        raise ConnectionError("the booking service is down")


class Carded(Saga):
    """Halts with its card number in the reason (a secret a redact hook hides)."""

    card: str

    @step
    async def check(card: str) -> str:
        raise Halt(f"card {card} needs a manager")


class Bundle(Saga):
    """Composes a Shop run: its child is linked from its page, and back."""

    shop = compose(Shop)


class Mine(Saga):
    """The saga of runs left unfinished by a dead process (recover)."""

    @step
    async def work(run_id: str) -> str:
        return run_id


class Stuck(Saga):
    """Fails at pay after hold, and hold's compensation fails too (compensation_failed)."""

    order_id: str

    @step
    async def hold(order_id: str) -> str:
        return f"h-{order_id}"

    @hold.compensate
    async def release(hold: str) -> None:
        raise ConnectionError("the warehouse does not answer")

    @step
    async def pay(hold: str) -> int:
        raise ConnectionError("the payment provider timed out")


class Billed(Saga):
    """Needs a resource (``payments``): a dashboard not given it cannot act on its runs."""

    order_id: str
    payments: Resource[list[str]]

    @step
    async def bill(order_id: str, payments: list[str]) -> str:
        payments.append(order_id)
        return f"b-{order_id}"

    @bill.compensate
    async def refund(bill: str, payments: list[str]) -> None:
        payments.append(f"refund {bill}")


SAGAS = [Shop, Approval, Paid, Flaky, Doomed, Carded, Bundle, Mine]
"""The sagas of most tests (Stuck and Billed are given by the tests that use them)."""


async def parked(saga: type[Saga], runs: RunStore, **inputs: str) -> str:
    """Start a run of ``saga`` that parks; its run id."""
    try:
        await saga.run(runs=runs, **inputs)
    except RunParked as exc:
        return exc.run_id
    raise AssertionError(f"{saga.__name__} did not park")


async def seed(runs: RunStore) -> dict[str, str]:
    """One succeeded Shop run (key ``key-1``), one halted Approval, one Paid waiting for
    ``pay:o-3``: their run ids by name."""
    shop = await Shop.run(
        order_id="o-1", email="ann@example.com", runs=runs, idempotency_key="key-1"
    )
    halted = await parked(Approval, runs, order_id="o-2")
    waiting = await parked(Paid, runs, order_id="o-3")
    return {"succeeded": shop.run_id, "halted": halted, "waiting": waiting}


async def abandon(dead: RunStore, run_id: str) -> None:
    """An unfinished run of Mine created by ``dead`` (whose process then dies: the
    caller closes that store)."""
    await dead.create(unfinished_run("Mine", run_id), None)


async def dead_in_step(dead: RunStore, saga: str, run_id: str, **done: str) -> None:
    """An unfinished run of ``saga`` (input ``order_id`` = ``run_id``) created by
    ``dead``: the steps in ``done`` succeeded with those results, and ``pay`` had started
    when its process died (in doubt). The caller closes ``dead``."""
    record = RunRecord(
        saga=saga,
        saga_version="1",
        run_id=run_id,
        status="running",
        inputs=msgspec.msgpack.encode({"order_id": run_id}),
        fingerprint="f",
        seq=1,
        steps={
            **{
                name: StepRecord(status="succeeded", result=msgspec.msgpack.encode(value))
                for name, value in done.items()
            },
            "pay": StepRecord(status="running"),
        },
    )
    write = Write(run_id=run_id, record=encode_record(record), status="running", seq=1)
    await dead.create(write, None)
