"""A durable checkout on the inventory example's Redis store, for the crash tests.

``reserve`` and ``commit`` are idempotent (keyed by the run's id, through the store's
atomic reservation scripts); ``charge`` is not: every execution is counted, so a test can
tell whether one ran twice.
"""

from __future__ import annotations

from typing import Any

import anyio

from asaga import Resource, Saga, step
from examples.inventory import InventoryStore


class PaymentDeclined(Exception):
    """The fake payment service said no."""


class Payments:
    """A payment service stand-in on Redis: counts charges and refunds per run."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def charge(self, run_id: str) -> None:
        await self.client.incr(f"{self.prefix}charges:{run_id}")

    async def refund(self, run_id: str) -> None:
        await self.client.set(f"{self.prefix}refunded:{run_id}", 1)  # idempotent

    async def charges(self, run_id: str) -> int:
        return int(await self.client.get(f"{self.prefix}charges:{run_id}") or 0)

    async def refunded(self, run_id: str) -> bool:
        return bool(await self.client.exists(f"{self.prefix}refunded:{run_id}"))


class DurableCheckout(Saga):
    """Reserve stock, charge (slow), commit the reservation."""

    sku: str
    quantity: int
    delay: float = 0.0
    decline: bool = False
    store: Resource[InventoryStore]
    payments: Resource[Payments]

    output = "commit"

    @step(idempotent=True)
    async def reserve(sku: str, quantity: int, run_id: str, store: InventoryStore) -> str:
        """The reservation is keyed by the run: doing it again changes nothing."""
        return await store.reserve(run_id, sku, quantity, 3600.0)

    @reserve.compensate
    async def release(run_id: str, store: InventoryStore) -> None:
        await store.release(run_id)

    @step
    async def charge(
        reserve: str, run_id: str, delay: float, decline: bool, payments: Payments
    ) -> str:
        """Not idempotent: each execution charges again."""
        await payments.charge(run_id)
        await anyio.sleep(delay)
        if decline:
            raise PaymentDeclined(run_id)
        return f"ch-{run_id}"

    @charge.compensate
    async def refund(charge: str, run_id: str, payments: Payments) -> None:
        await payments.refund(run_id)

    @step(idempotent=True)
    async def commit(charge: str, run_id: str, store: InventoryStore) -> bool:
        return await store.commit(run_id)


class DurableHold(Saga):
    """Reserve stock and charge: a run that can be undone after it succeeded."""

    sku: str
    quantity: int
    store: Resource[InventoryStore]
    payments: Resource[Payments]

    @step(idempotent=True)
    async def reserve(sku: str, quantity: int, run_id: str, store: InventoryStore) -> str:
        return await store.reserve(run_id, sku, quantity, 3600.0)

    @reserve.compensate
    async def release(run_id: str, store: InventoryStore) -> None:
        await store.release(run_id)

    @step
    async def charge(reserve: str, run_id: str, payments: Payments) -> str:
        await payments.charge(run_id)
        return f"ch-{run_id}"

    @charge.compensate
    async def refund(charge: str, run_id: str, payments: Payments) -> None:
        await payments.refund(run_id)
