"""A checkout saga: two reservations in parallel, then a charge; a failed charge unwinds.

Run it:  python examples/checkout.py
"""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
import msgspec
import structlog

from asaga import Resource, Retry, Saga, SagaFailed, step


class PaymentClient:
    """A stand-in payment provider; it declines amounts above its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def charge(self, order_id: str, amount: int) -> str:
        await anyio.sleep(0.01)  # pretend network latency
        if amount > self.limit:
            raise RuntimeError(f"card declined for {amount}")
        return f"charge-{order_id}"


class Warehouse:
    """Stock held in memory: what the reservations take and the compensations return."""

    def __init__(self) -> None:
        self.stock = {"A": 5, "B": 5}

    async def take(self, sku: str) -> str:
        await anyio.sleep(0.01)
        if self.stock[sku] == 0:
            raise RuntimeError(f"{sku} is out of stock")
        self.stock[sku] -= 1
        return f"hold-{sku}"

    async def give_back(self, sku: str) -> None:
        self.stock[sku] += 1


class Checkout(Saga):
    order_id: str
    amount: Annotated[int, msgspec.Meta(gt=0)]
    payments: Resource[PaymentClient]
    warehouse: Resource[Warehouse]

    retry_defaults = Retry(max_attempts=2, backoff="fixed", base_delay=0.01)

    @step
    async def reserve_a(*, warehouse: Warehouse) -> str:
        return await warehouse.take("A")

    @step
    async def reserve_b(*, warehouse: Warehouse) -> str:  # runs concurrently with reserve_a
        return await warehouse.take("B")

    @step(retry=Retry(max_attempts=3, backoff="exponential", base_delay=0.02), timeout=2)
    async def charge(
        *, reserve_a: str, reserve_b: str, order_id: str, amount: int, payments: PaymentClient
    ) -> str:
        return await payments.charge(order_id, amount)

    @reserve_a.compensate
    async def release_a(*, reserve_a: str, warehouse: Warehouse) -> None:
        await warehouse.give_back("A")

    @reserve_b.compensate
    async def release_b(*, reserve_b: str, warehouse: Warehouse) -> None:
        await warehouse.give_back("B")


async def main() -> None:
    # Show only warnings and worse from asaga's structlog events.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    warehouse = Warehouse()
    payments = PaymentClient(limit=100)

    result = await Checkout.run(order_id="o-1", amount=30, payments=payments, warehouse=warehouse)
    print(f"o-1 succeeded: output={result.output!r} stock={warehouse.stock}")

    try:
        await Checkout.run(order_id="o-2", amount=500, payments=payments, warehouse=warehouse)
    except SagaFailed as exc:
        print(f"o-2 failed at {exc.step!r} ({exc.__cause__}); undone: {list(exc.compensated)}")
        print(f"stock after unwinding: {warehouse.stock}")


if __name__ == "__main__":
    anyio.run(main)
