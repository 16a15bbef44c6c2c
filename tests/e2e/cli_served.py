"""What ``asaga dashboard --served`` and ``asaga worker`` load in tests/e2e/test_cli.py."""

from __future__ import annotations

from asaga import Resource, Saga, step
from asaga.workers import Served


class Ledger:
    """A resource the saga declares."""


class Booked(Saga):
    order_id: str
    ledger: Resource[Ledger]

    @step
    async def book(order_id: str, ledger: Ledger) -> str:
        return order_id


LEDGER = Ledger()


def served() -> Served:
    return Served(sagas=[Booked], resources={"ledger": LEDGER})
