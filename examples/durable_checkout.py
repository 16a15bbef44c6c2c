"""Durable checkout: a run recorded write-ahead survives its process; a retried request
with the same idempotency key runs once; a succeeded run can be undone later.

Run it:

    python examples/durable_checkout.py                      # in memory: keys and undo
    python examples/durable_checkout.py --redis redis://127.0.0.1:6379/0   # + a crash

With Redis it also starts a second process that begins a checkout and dies (``os._exit``)
in the middle of the slow ``charge`` step; once that process's lease has expired, this one
recovers the run: ``charge`` is not idempotent and was in doubt, so the run is
compensated, and the record says the charge needs a human look. From the command line:

    asaga runs list --redis redis://127.0.0.1:6379/0 --prefix demo-durable:
    asaga recover --redis redis://127.0.0.1:6379/0 --prefix demo-durable: \\
        --saga examples.durable_checkout:DurableCheckout \\
        --resources examples.durable_checkout:resources
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec
import structlog

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asaga import Resource, Saga, SagaFailed, step
from asaga.runs import MemoryRunStore, RunStore, recover
from examples.inventory import (
    InventoryStore,
    MemoryInventoryStore,
    Product,
    RedisInventoryStore,
)

PREFIX = os.environ.get("DURABLE_DEMO_PREFIX", "demo-durable:")
"""Where the demo keeps its keys in Redis (its own: it deletes them when it starts)."""
Quantity = Annotated[int, msgspec.Meta(gt=0, le=100)]


class Payments:
    """A payment service stand-in: charges and refunds by key, kept in memory."""

    def __init__(self) -> None:
        self.charged: dict[str, int] = {}

    async def charge(self, key: str, amount: int) -> str:
        await anyio.sleep(0.05)  # the slow part of a checkout
        self.charged[key] = amount
        return f"ch-{key[:8]}"

    async def refund(self, key: str) -> None:
        self.charged.pop(key, None)  # idempotent


class DurableCheckout(Saga):
    """Reserve stock, then charge. The reservation is keyed by the run's id, so running
    ``reserve`` again after a crash does nothing twice; ``charge`` is not idempotent. (The
    reservation is committed later, when the order ships; until then it can be undone.)"""

    sku: str
    quantity: Quantity
    store: Resource[InventoryStore]
    payments: Resource[Payments]

    output = "charge"

    @step(idempotent=True)
    async def reserve(*, sku: str, quantity: int, run_id: str, store: InventoryStore) -> str:
        return await store.reserve(run_id, sku, quantity, 900.0)

    @reserve.compensate
    async def release(*, run_id: str, store: InventoryStore) -> None:
        await store.release(run_id)

    @step
    async def charge(*, reserve: str, quantity: int, run_id: str, payments: Payments) -> str:
        if os.environ.get("DURABLE_DEMO_CRASH") == "1":
            os._exit(1)  # the process dies mid-step: no cleanup, no compensation
        return await payments.charge(run_id, quantity * 10)

    @charge.compensate
    async def refund(*, charge: str, run_id: str, payments: Payments) -> None:
        await payments.refund(run_id)


@asynccontextmanager
async def resources(
    url: str | None = None, prefix: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The sagas' resources, also for ``asaga recover --resources`` (which passes the
    run store's URL and prefix): they are never recorded, so recovery needs them again."""
    if url is None:
        yield {"store": MemoryInventoryStore(), "payments": Payments()}
        return
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        store = RedisInventoryStore(client, None, prefix=f"{prefix or PREFIX}inv:")
        yield {"store": store, "payments": Payments()}
    finally:
        await client.aclose()


async def forget(url: str) -> None:
    """The demo owns its prefix: it starts from nothing each time it runs."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        stale = [key async for key in client.scan_iter(match=f"{PREFIX}*")]
        if stale:
            await client.delete(*stale)
    finally:
        await client.aclose()


async def keys_and_undo(runs: RunStore, things: dict[str, Any]) -> None:
    store: InventoryStore = things["store"]
    print("1. A checkout with idempotency key 'order-17', sent twice (a retried request)")
    first = await DurableCheckout.run(
        sku="widget", quantity=2, runs=runs, idempotency_key="order-17", **things
    )
    again = await DurableCheckout.run(
        sku="widget", quantity=2, runs=runs, idempotency_key="order-17", **things
    )
    product = await store.get("widget")
    print(f"   run {first.run_id[:8]}: replayed={first.replayed}; again: replayed={again.replayed}")
    print(f"   widget reserved {product.reserved_count} (once, not twice)")

    print("2. The same key with other inputs is refused")
    try:
        await DurableCheckout.run(
            sku="widget", quantity=3, runs=runs, idempotency_key="order-17", **things
        )
    except Exception as exc:  # noqa: BLE001 - shown to the reader
        print(f"   {type(exc).__name__}: {exc}")

    print("3. Undo a checkout that had succeeded (its record has every result)")
    hold = await DurableCheckout.run(sku="widget", quantity=1, runs=runs, **things)
    done = await DurableCheckout.undo(hold.run_id, runs=runs, **things)
    twice = await DurableCheckout.undo(hold.run_id, runs=runs, **things)
    product = await store.get("widget")
    print(f"   undo: status {done.status}, compensated {list(done.compensated)}")
    print(f"   again: already={twice.already}; widget reserved {product.reserved_count}")


async def crash_and_recover(url: str, runs: RunStore, things: dict[str, Any]) -> None:
    print("4. Another process starts a checkout and dies in the middle of 'charge'")
    env = {**os.environ, "DURABLE_DEMO_CRASH": "1"}
    done = await anyio.run_process(
        [sys.executable, __file__, "--redis", url, "--prefix", PREFIX, "--child"],
        env=env,
        check=False,
    )
    print(f"   the process exited with status {done.returncode} (no cleanup ran)")
    print("   ... its lease expires after 1 s; then recover() takes the run over")
    await anyio.sleep(1.2)
    report = await recover(runs, sagas=[DurableCheckout], resources=things)
    for item in report:
        print(
            f"   run {item.run_id[:8]}: {item.outcome}; compensated {list(item.compensated)};"
            f" in doubt {list(item.in_doubt)}"
        )
    product = await things["store"].get("widget")
    print(f"   widget reserved {product.reserved_count} (the dead run's reservation released)")


async def child(url: str) -> None:
    """The process that dies: a checkout under a store whose lease lasts 1 s."""
    from asaga.runs import RedisRunStore

    async with (
        resources(url) as things,
        RedisRunStore.from_url(url, prefix=PREFIX, owner_ttl=1.0) as runs,
    ):
        await DurableCheckout.run(sku="widget", quantity=4, runs=runs, **things)


async def main(url: str | None) -> None:
    if url is not None:
        await forget(url)
    async with resources(url) as things:
        await things["store"].put(Product(sku="widget", inventory_count=100))
        if url is None:
            await keys_and_undo(MemoryRunStore(), things)
            print("(run with --redis URL to see a crashed process's run recovered)")
            return
        from asaga.runs import RedisRunStore

        async with RedisRunStore.from_url(url, prefix=PREFIX) as runs:
            await keys_and_undo(runs, things)
            await crash_and_recover(url, runs, things)


def run(argv: Sequence[str] | None = None) -> int:
    global PREFIX
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--redis", metavar="URL", help="record runs in Redis (and show a crash)")
    parser.add_argument("--prefix", help=f"key prefix in Redis (default: {PREFIX})")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prefix:
        PREFIX = os.environ["DURABLE_DEMO_PREFIX"] = args.prefix  # the child gets it too
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        anyio.run(child if args.child else main, args.redis)
    except SagaFailed as exc:
        print(f"failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
