"""Sagas that wait, for the command-line tests of parked runs (tests/e2e/test_cli_waits.py).

- :class:`Order` reserves, waits for its payment (``payment:{order_id}``, one bad payload
  tolerated), then ships; the reservation is released when it unwinds.
- :class:`Review` reserves, then its ``review`` step halts the run until the order is
  approved (``asaga resume`` runs the step again), then ships.
- :class:`FollowUp` waits for an answer and, in another branch, an hour.
- :class:`Reminder` sleeps a fifth of a second (a durable timer), then reminds.

Their :class:`Ledger` resource is on Redis, so that what the steps did can be read by
the test after the command line ran them: :func:`resources` makes it (``asaga
--resources tests.sagas.waiting:resources``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import redis.asyncio as aioredis

from asaga import Halt, Resource, Saga, sleep_for, step, wait_for

__all__ = [
    "Answer",
    "FollowUp",
    "Ledger",
    "Order",
    "Payment",
    "Reminder",
    "Review",
    "resources",
]


class Payment(msgspec.Struct, frozen=True):
    """The payment event of an :class:`Order`."""

    amount: int
    ref: str


class Answer(msgspec.Struct, frozen=True):
    """The answer a :class:`FollowUp` waits for."""

    text: str


class Ledger:
    """What the steps did, as a Redis list under ``prefix``; and which orders are approved."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def note(self, entry: str) -> None:
        await self.client.rpush(f"{self.prefix}ledger", entry)

    async def entries(self) -> list[str]:
        return [e.decode() for e in await self.client.lrange(f"{self.prefix}ledger", 0, -1)]

    async def approve(self, order_id: str) -> None:
        await self.client.set(f"{self.prefix}approved:{order_id}", 1)

    async def approved(self, order_id: str) -> bool:
        return bool(await self.client.exists(f"{self.prefix}approved:{order_id}"))


@asynccontextmanager
async def resources(url: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The sagas' resources on the Redis at ``url``, under the run store's ``prefix``."""
    client = aioredis.Redis.from_url(url)
    try:
        yield {"ledger": Ledger(client, prefix)}
    finally:
        await client.aclose()


class Order(Saga):
    """Reserve, wait for the payment, ship."""

    order_id: str
    ledger: Resource[Ledger]

    output = "ship"

    @step
    async def reserve(order_id: str, ledger: Ledger) -> str:
        await ledger.note(f"reserve {order_id}")
        return f"res-{order_id}"

    @reserve.compensate
    async def release(reserve: str, ledger: Ledger) -> None:
        await ledger.note(f"release {reserve}")

    paid = wait_for(
        Payment, key="payment:{order_id}", timeout=3600, bad_payloads=1, after=["reserve"]
    )

    @step
    async def ship(reserve: str, paid: Payment, ledger: Ledger) -> str:
        await ledger.note(f"ship {reserve} paid by {paid.ref}")
        return f"shipped {reserve} ({paid.amount} paid by {paid.ref})"


class Review(Saga):
    """Reserve, halt until the order is approved, ship."""

    order_id: str
    ledger: Resource[Ledger]

    output = "ship"

    @step
    async def reserve(order_id: str, ledger: Ledger) -> str:
        await ledger.note(f"reserve {order_id}")
        return f"res-{order_id}"

    @reserve.compensate
    async def release(reserve: str, ledger: Ledger) -> None:
        await ledger.note(f"release {reserve}")

    @step
    async def review(order_id: str, reserve: str, ledger: Ledger) -> bool:
        if not await ledger.approved(order_id):
            raise Halt(f"order {order_id} needs approval")
        return True

    @step
    async def ship(reserve: str, review: bool, ledger: Ledger) -> str:
        await ledger.note(f"ship {reserve}")
        return f"shipped {reserve}"


class FollowUp(Saga):
    """Wait for an answer and, meanwhile, an hour; then close."""

    ticket: str

    answer = wait_for(Answer, key="answer:{ticket}")
    hour = sleep_for(3600)

    @step
    async def close(answer: Answer, hour: float) -> str:
        return f"closed with {answer.text!r}"


class Reminder(Saga):
    """Sleep a fifth of a second (the run parks), then remind."""

    ticket: str

    nap = sleep_for(0.2)

    @step
    async def remind(ticket: str, nap: float) -> str:
        return f"reminded {ticket}"


class PaidOnWorkers(Saga):
    """A saga with a step on workers (queue ``cli-payments``): ``asaga recover`` opens
    the queue itself (tests/e2e/test_cli.py)."""

    order_id: str

    @step(queue="cli-payments")
    async def pay(*, order_id: str) -> str:
        return f"paid {order_id}"
