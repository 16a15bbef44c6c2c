"""A saga with one of each thing a graph drawing marks (for tests/test_render.py and the CLI).

``Order`` has a locked step (two keys), a composed step, a compensation, a condition, a
mapped ``async def`` and an explicit output; ``ReserveItem`` is the composed child.
"""

from __future__ import annotations

from asaga import Lock, Saga, compose, map_each, step


class ReserveItem(Saga):
    """The sub-saga behind ``Order.reserve``."""

    @step(lock="inventory:{sku}")
    async def hold(sku: str) -> str:
        return f"hold-{sku}"

    @hold.compensate
    async def release(hold: str) -> None:
        pass


def is_gift(gift: bool) -> bool:
    """``Order.wrap``'s condition."""
    return gift


async def notify(address: str, order_id: str) -> str:
    """One element of ``Order.emails``."""
    return f"sent {order_id} to {address}"


class Order(Saga):
    """Open, reserve, charge; then wrap (if a gift) and notify every recipient."""

    order_id: str
    customer: str
    sku: str
    gift: bool = False

    output = "charge"

    @step(lock=Lock("orders:{order_id}", "customers:{customer}"))
    async def open_order(order_id: str, customer: str) -> str:
        return order_id

    reserve = compose(ReserveItem)

    @step
    async def charge(open_order: str, reserve: str) -> str:
        return f"paid {open_order}"

    @charge.compensate
    async def refund(charge: str) -> None:
        pass

    @step(when=is_gift)
    async def wrap(charge: str) -> str:
        return "wrapped"

    @step
    async def recipients(customer: str) -> list[str]:
        return [customer]

    emails = map_each(notify, over="recipients")


class NotASaga:
    """A class that is not a saga (for the CLI's error messages)."""
