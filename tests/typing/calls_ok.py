"""Typed calls that both mypy --strict and pyright (standard) accept (tests/typing)."""

from __future__ import annotations

import msgspec

from asaga import Resource, Saga, SagaResult, step
from asaga.runs import MemoryRunStore, RedisRunStore
from asaga.workers import RunHandle, SaqQueue


class Receipt(msgspec.Struct):
    order_id: str
    total: int


class Payments:
    async def charge(self, order_id: str, amount: int) -> int:
        return amount


class Checkout(Saga[Receipt]):
    """Steps take their dependencies as keyword-only parameters: pyright reads a
    function in a class body as a method otherwise."""

    order_id: str
    amount: int = 1
    payments: Resource[Payments]

    @step
    async def charge(*, order_id: str, amount: int, payments: Payments) -> int:
        return await payments.charge(order_id, amount)

    @charge.compensate
    async def refund(*, charge: int) -> None:
        return None

    @step
    async def receipt(*, order_id: str, charge: int) -> Receipt:
        return Receipt(order_id=order_id, total=charge)


class Untyped(Saga):
    """No output type: the output is Any."""

    name: str

    @step
    async def greet(*, name: str) -> str:
        return f"hello {name}"


async def calls() -> None:
    result: SagaResult[Receipt] = await Checkout(order_id="o-1", payments=Payments()).run()
    receipt: Receipt = result.output
    total: int = receipt.total
    durable = await Checkout(order_id="o-2", amount=3, payments=Payments()).run(
        runs=MemoryRunStore(), idempotency_key="o-2"
    )
    assert durable.output.total == 3
    loose = await Checkout.run(order_id="o-3", payments=Payments())  # untyped inputs
    assert loose.output is not None
    greeting = (await Untyped(name="x").run()).output
    assert greeting
    direct: int = await Checkout.charge(order_id="o-4", amount=2, payments=Payments())
    assert total + direct


async def starts(queue: SaqQueue, runs: RedisRunStore) -> None:
    """A called saga starts on workers with its own inputs."""
    handle: RunHandle = await Untyped(name="x").start(queue=queue, runs=runs)
    assert handle.run_id
