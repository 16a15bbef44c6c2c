"""Bulk reservation: one ReserveItem saga per order line, mapped in ``collect`` mode.

Lines that cannot be reserved are reported, the others stay reserved; if every line
fails, the bulk saga fails. If a later step of the bulk saga fails, every reserved line is
released again, in reverse order.

Run it:  python examples/bulk_reservation.py
"""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
import msgspec
import structlog

from asaga import MapResult, Resource, Saga, SagaFailed, map_each, step


class Stock:
    """Units on hand per SKU, in memory."""

    def __init__(self, levels: dict[str, int]) -> None:
        self.levels = dict(levels)

    async def take(self, sku: str, quantity: int) -> None:
        await anyio.lowlevel.checkpoint()  # stands in for a network call
        if sku not in self.levels:
            raise KeyError(f"unknown product {sku}")
        if self.levels[sku] < quantity:
            raise RuntimeError(f"only {self.levels[sku]} of {sku} left, {quantity} wanted")
        self.levels[sku] -= quantity

    async def give_back(self, sku: str, quantity: int) -> None:
        self.levels[sku] += quantity


class Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: Annotated[int, msgspec.Meta(gt=0)]


class ReserveItem(Saga):
    """Reserve one line."""

    sku: str
    quantity: Annotated[int, msgspec.Meta(gt=0)]
    stock: Resource[Stock]

    @step
    async def reserve(*, sku: str, quantity: int, stock: Stock) -> Line:
        await stock.take(sku, quantity)
        return Line(sku, quantity)

    @reserve.compensate
    async def release(*, reserve: Line, stock: Stock) -> None:
        await stock.give_back(reserve.sku, reserve.quantity)


class BulkReservation(Saga):
    """Reserve up to 100 lines; report per line; fail only if nothing could be reserved."""

    lines: Annotated[list[Line], msgspec.Meta(min_length=1, max_length=100)]
    stock: Resource[Stock]

    reserved = map_each(ReserveItem, over="lines", mode="collect", max_concurrency=8)

    @step
    async def summary(*, reserved: MapResult[Line]) -> dict[str, list[str]]:
        if reserved.all_failed:
            raise RuntimeError("no line could be reserved")
        return {
            "reserved": [
                f"{s.value.sku}x{s.value.quantity}" for s in reserved.successes if s.value
            ],
            "rejected": [f"line {f.index}: {f.error.__cause__}" for f in reserved.failures],
        }


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    stock = Stock({"apple": 5, "pear": 1})

    order = [Line("apple", 2), Line("pear", 3), Line("plum", 1), Line("apple", 1)]
    result = await BulkReservation.run(lines=order, stock=stock)
    print("summary:", result.output)
    print("stock after:", stock.levels)

    try:
        await BulkReservation.run(lines=[Line("pear", 5), Line("plum", 1)], stock=stock)
    except SagaFailed as exc:
        print(f"all lines failed: {exc.__cause__}; stock still {stock.levels}")


if __name__ == "__main__":
    anyio.run(main)
