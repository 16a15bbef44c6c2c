"""The inventory demo: the example's sagas at work, in memory or on Redis.

Run it from the root of the asaga repository::

    python -m examples.inventory                                # in memory
    python -m examples.inventory --redis redis://127.0.0.1:6379/0
    asaga demo [--redis URL]                                     # the same

It stocks a few products, then runs: a reservation that succeeds; one with invalid inputs
(rejected before any step); one whose notification fails for good, so the run unwinds; a
burst of 200 concurrent reservations of a product with 150 units; a transfer between two
locations; a replenishment order from a supplier, a durable run that parks until the
supplier's delivery confirmation is delivered to it, then books the stock received, and a
second order undone; and a bulk request of four lines (``BulkInventorySaga``, one line
refused). Runs (1) and (3) print their events as a trace, from a hook
(:class:`EventTrace`).

The replenishment run is recorded in a ``MemoryRunStore`` (in memory) or the
``RedisRunStore`` (on Redis). On Redis the bulk request is a durable run too: each line is
a child run with a record of its own, listed; then ``BulkInventorySaga.undo`` undoes it
from its records, every line once, and the stock is as before.

Logging: asaga logs every event through structlog, and never configures it.
:func:`main` owns the process, so it silences everything below ERROR while the demo runs
(:func:`quiet_logs`; a compensation that fails for good is still shown) and puts the
previous configuration back afterwards. :func:`run_demo` does not touch logging: a caller
that embeds it, such as a test, decides.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TextIO, cast

import anyio
import msgspec
import structlog

from asaga import DuplicateEvent, Event, InputValidationError, RunParked, SagaFailed
from asaga.locks import LockProvider
from asaga.runs import MemoryRunStore, RunStore
from asaga.testing import EventRecorder

from .replenishment import (
    DELIVERY_TIMEOUT,
    PurchaseOrder,
    ReplenishmentSaga,
    Supplier,
    delivery_key,
)
from .sagas import (
    BulkInventorySaga,
    Change,
    InventorySaga,
    InventoryTransferSaga,
    Notifier,
    OperationRequest,
)
from .store import InventoryStore, MemoryInventoryStore, Product, RedisInventoryStore

__all__ = ["EventTrace", "main", "quiet_logs", "run_demo"]

PRODUCTS = (
    Product(sku="widget", inventory_count=100, reorder_point=10, max_stock_level=200),
    Product(sku="gadget", inventory_count=20, reorder_point=15, max_stock_level=50),
    Product(sku="gizmo", inventory_count=150),
    Product(sku="widget@north", inventory_count=40, reorder_point=5, max_stock_level=100),
)
BURST = 200
"""Concurrent reservations of one unit of ``gizmo`` (which has 150) in part 4."""
BULK = (
    OperationRequest(product_id="widget", quantity=3, operation="reserve"),
    OperationRequest(product_id="gadget", quantity=2, operation="reserve"),
    OperationRequest(product_id="gizmo", quantity=1, operation="reserve"),  # sold out in part 4
    OperationRequest(product_id="widget", quantity=2, operation="consume"),
)
"""The lines of the bulk request of part 7."""


class EventTrace:
    """A sync event hook that prints one plain line per event, timed from the run's start.

    ``  +  3.2 ms  step_succeeded          perform``: milliseconds since ``run_started``,
    the kind, the step's path, the attempt when it is not the first, and the error.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.start: float | None = None

    def __call__(self, event: Event) -> None:
        if self.start is None:
            self.start = event.monotonic
        elapsed = (event.monotonic - self.start) * 1000
        line = f"  +{elapsed:6.1f} ms  {event.kind:<24}{event.path or ''}"
        if event.attempt > 1:
            line += f" (attempt {event.attempt})"
        if event.error is not None:
            line += f"  {event.error}"
        print(line.rstrip(), file=self.out)


@contextmanager
def quiet_logs(level: int = logging.ERROR) -> Iterator[None]:
    """Filter asaga's structlog events below ``level`` for the body, then restore the
    configuration that was in place (or structlog's defaults if there was none)."""
    configured = structlog.is_configured()
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        if configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


async def run_demo(redis_url: str | None = None, out: TextIO = sys.stdout) -> None:
    """Run the demo, writing its report to ``out``: in memory, or on the Redis server at
    ``redis_url`` (under a fresh key prefix, whose keys are deleted at the end; asyncio
    only, as redis-py is)."""
    async with _backend(redis_url) as (store, runs, description):
        await _Demo(store, out, runs).run(description)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.inventory [--redis URL]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.inventory",
        description="Run the inventory example's sagas: in memory, or on Redis with --redis.",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="use the Redis server at URL (redis://host:6379/0)"
    )
    try:
        args = parser.parse_args(argv)
        if args.redis is not None and not args.redis.startswith(_REDIS_SCHEMES):
            parser.error(f"--redis {args.redis}: expected a URL like redis://127.0.0.1:6379/0")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    with quiet_logs():
        try:
            return _run(args.redis)
        except BrokenPipeError:
            return _reader_gone()
        except BaseExceptionGroup as group:  # the same, raised inside a run's task group
            if group.split(BrokenPipeError)[1] is not None:
                raise
            return _reader_gone()


def _run(redis_url: str | None) -> int:
    if redis_url is None:
        anyio.run(run_demo, None, sys.stdout)  # sys.stdout now, not at import time
        return 0
    from redis.exceptions import RedisError

    try:
        anyio.run(run_demo, redis_url, sys.stdout)
    except RedisError as exc:  # the server cannot be reached (checked before any output)
        print(f"demo: error: cannot use Redis at {redis_url}: {exc}", file=sys.stderr)
        return 1
    return 0


def _reader_gone() -> int:
    """stdout's reader went away (``| head``): stop quietly, as Python's docs advise."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so that the final flush does not fail again
    return 1


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@asynccontextmanager
async def _backend(
    redis_url: str | None,
) -> AsyncIterator[tuple[InventoryStore, RunStore | None, str]]:
    """The inventory store, the run store of the durable part (``None`` in memory), and
    how the report describes them."""
    if redis_url is None:
        # cast: the protocol's `locks: LockProvider` is a mutable attribute, which mypy
        # holds invariant, so MemoryInventoryStore's MemoryLockProvider does not match it.
        store = cast(InventoryStore, MemoryInventoryStore())
        yield store, None, "in memory: MemoryInventoryStore, MemoryLockProvider"
        return
    import redis.asyncio as aioredis

    from asaga.locks import RedisLockProvider
    from asaga.runs import RedisRunStore

    prefix = f"asaga-demo:{secrets.token_hex(6)}:"
    # 200 concurrent runs want more connections than redis-py's default pool allows (it
    # raises MaxConnectionsError past 100): a blocking pool makes them wait for one.
    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=50, timeout=10.0, socket_connect_timeout=2.0
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        await client.ping()  # fail before any output if the server cannot be reached
    except BaseException:
        await client.aclose()
        raise
    try:
        # The run store's keys live under the demo's prefix too: deleted with the others
        # (after the store has closed, so that its owner lease is not renewed meanwhile).
        async with (
            RedisLockProvider(client, prefix=prefix) as locks,
            RedisRunStore(client, prefix=f"{prefix}runs:") as runs,
        ):
            yield (
                RedisInventoryStore(client, locks, prefix=f"{prefix}inv:"),
                runs,
                f"on Redis at {redis_url}: RedisInventoryStore, RedisLockProvider, "
                f"RedisRunStore, keys under {prefix}*",
            )
    finally:
        with anyio.CancelScope(shield=True):
            try:
                keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


class _Demo:
    def __init__(self, store: InventoryStore, out: TextIO, runs: RunStore | None = None) -> None:
        self.store = store
        self.locks: LockProvider = store.locks
        self.notifier = Notifier()
        self.out = out
        self.runs = runs

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def resources(self, notifier: Notifier | None = None) -> dict[str, Any]:
        return {
            "store": self.store,
            "locks": self.locks,
            "notifier": notifier or self.notifier,
        }

    async def run(self, description: str) -> None:
        self.say(f"asaga inventory demo ({description})")
        for product in PRODUCTS:
            await self.store.put(product)
        self.say()
        await self.table([p.sku for p in PRODUCTS])
        await self.reserve_ok()
        await self.invalid()
        await self.unwinds()
        await self.burst()
        await self.transfer()
        await self.replenish()
        await self.bulk()

    async def table(self, skus: Sequence[str]) -> None:
        self.say("  product        inventory  reserved  available  reorder at")
        for sku in skus:
            p = await self.store.get(sku)
            self.say(
                f"  {sku:<13}{p.inventory_count:>10}{p.reserved_count:>10}"
                f"{p.available:>11}{p.reorder_point:>12}"
            )

    async def counts(self, sku: str) -> str:
        p = await self.store.get(sku)
        return (
            f"inventory {p.inventory_count}, reserved {p.reserved_count}, available {p.available}"
        )

    async def reserve_ok(self) -> None:
        self.say()
        self.say("1. Reserve 5 x widget: every step succeeds")
        result = await InventorySaga.run(
            product_id="widget",
            quantity=5,
            operation="reserve",
            hooks=[EventTrace(self.out)],
            **self.resources(),
        )
        change: Change = result.results["perform"]
        self.say(f"  perform returned: {change.operation} {change.quantity} x {change.sku}")
        self.say(f"  widget: {await self.counts('widget')}")
        log = await self.store.transactions()
        self.say(
            f"  transaction log: {len(log)} entry; notifications sent: {len(self.notifier.sent)}"
        )

    async def invalid(self) -> None:
        self.say()
        self.say("2. Reserve 0 x widget with operation 'borrow': rejected before any step")
        recorder = EventRecorder()
        before = await self.counts("widget")
        try:
            await InventorySaga.run(
                product_id="widget",
                quantity=0,
                operation="borrow",
                hooks=[recorder],
                **self.resources(),
            )
        except InputValidationError as exc:
            self.say(f"  InputValidationError, {len(exc.errors)} fields:")
            for error in exc.errors:
                self.say(f"    - {error.field}: {error.message}")
        else:
            raise AssertionError("the invalid request was accepted")
        unchanged = "unchanged" if await self.counts("widget") == before else "CHANGED"
        self.say(f"  events emitted: {len(recorder.events)} (no step ran); widget {unchanged}")

    async def unwinds(self) -> None:
        self.say()
        self.say("3. Reserve 8 x gadget while notifications fail: notify gives up, the run unwinds")
        notifier = Notifier(failures=3)  # notify makes 3 attempts
        log_before = len(await self.store.transactions())
        try:
            await InventorySaga.run(
                product_id="gadget",
                quantity=8,
                operation="reserve",
                hooks=[EventTrace(self.out)],
                **self.resources(notifier),
            )
        except SagaFailed as exc:
            self.say(f"  SagaFailed at {exc.step!r}: {exc.__cause__!r}")
            self.say(f"  compensated, in order: {', '.join(exc.compensated)}")
        else:
            raise AssertionError("the run did not fail")
        log_after = len(await self.store.transactions())
        requests = await self.store.replenishments()
        self.say(f"  gadget: {await self.counts('gadget')} (as before the run)")
        self.say(
            f"  transaction log: {log_after - log_before} new entries; "
            f"replenishment requests: {len(requests)}"
        )

    async def burst(self) -> None:
        self.say()
        self.say(f"4. {BURST} concurrent reservations of 1 x gizmo (150 in stock)")
        succeeded = 0
        failed: Counter[str] = Counter()

        async def one() -> None:
            nonlocal succeeded
            try:
                await InventorySaga.run(
                    product_id="gizmo", quantity=1, operation="reserve", **self.resources()
                )
            except SagaFailed as exc:
                failed[f"{type(exc.__cause__).__name__} at {exc.step!r}"] += 1
            else:
                succeeded += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(BURST):
                tg.start_soon(one)
        elapsed = time.perf_counter() - started
        where = ", ".join(f"{n} {reason}" for reason, n in sorted(failed.items()))
        self.say(f"  succeeded: {succeeded}, failed: {failed.total()} ({where}) in {elapsed:.2f} s")
        self.say(
            "  ('availability' refuses before queueing for the lease; 'perform' re-checks under it)"
        )
        gizmo = await self.store.get("gizmo")
        exact = "== successes" if gizmo.reserved_count == succeeded else "!= successes: OVERSOLD"
        negative = min(gizmo.inventory_count, gizmo.reserved_count, gizmo.available) < 0
        self.say(
            f"  gizmo: {await self.counts('gizmo')}; reserved {gizmo.reserved_count} {exact}; "
            f"{'a count went NEGATIVE' if negative else 'no count negative'}"
        )

    async def transfer(self) -> None:
        self.say()
        self.say("5. Transfer 15 x widget from north to south (south does not exist yet)")
        result = await InventoryTransferSaga.run(
            product_id="widget",
            quantity=15,
            source="north",
            destination="south",
            store=self.store,
            locks=self.locks,
        )
        change: Change = result.output
        self.say(f"  transfer returned: {change.operation} x {change.quantity}")
        self.say(f"  widget@north: {await self.counts('widget@north')}")
        self.say(f"  widget@south: {await self.counts('widget@south')}")
        self.say()
        await self.table([p.sku for p in PRODUCTS] + ["widget@south"])
        entries = Counter((t.operation, t.sku) for t in await self.store.transactions())
        self.say(f"  transaction log: {entries.total()} entries")
        for (operation, sku), count in entries.items():
            self.say(f"    {count:>4} x {operation} {sku}")

    async def replenish(self) -> None:
        self.say()
        runs = self.runs if self.runs is not None else MemoryRunStore()
        self.say(
            "6. Order gadget from a supplier (ReplenishmentSaga), recorded in a "
            f"{type(runs).__name__}: the run parks until the goods arrive"
        )
        supplier = Supplier({"gadget": 100}, max_order=25)
        resources: dict[str, Any] = {"store": self.store, "supplier": supplier}
        try:
            await ReplenishmentSaga.run(product_id="gadget", runs=runs, **resources)
        except RunParked as exc:
            parked = exc
        else:
            raise AssertionError("the run did not park")
        # The order is placed, recorded and tracked; the run waits for the goods.
        (placed,) = supplier.orders.values()
        assert placed.key is not None  # the purchase order's id: the order's idempotency key
        order = msgspec.convert(await self.store.purchase_order(placed.key), PurchaseOrder)
        self.say(
            f"  purchase order: {order.quantity} x {order.sku} (room 30, supplier's max_order "
            f"25), supplier order {order.supplier_order_id}, tracking {order.tracking_id}"
        )
        for wait in parked.waits:
            self.say(
                f"  RunParked: run {parked.run_id} waits in step {wait.step!r} for the event "
                f"{wait.key} (at most {DELIVERY_TIMEOUT.days} days)"
            )
        self.say(f"  gadget: {await self.counts('gadget')} (nothing received yet)")

        # The goods arrive; the supplier's webhook posts its confirmation, as JSON.
        body = msgspec.json.encode(supplier.confirmation(placed.id))
        self.say(f"  the goods arrive; the supplier's confirmation: {body.decode()}")
        key = delivery_key(order.id)
        delivery = await ReplenishmentSaga.deliver(key, body, runs=runs, **resources)
        assert delivery.result is not None, delivery
        received: PurchaseOrder = delivery.result.output
        self.say(
            f"  ReplenishmentSaga.deliver({key!r}, confirmation): {delivery.status}; the run "
            f"went on in this call and booked {received.received_quantity} x {received.sku}"
        )
        self.say(f"  gadget: {await self.counts('gadget')}")
        try:
            await ReplenishmentSaga.deliver(key, body, runs=runs, **resources)
        except DuplicateEvent:
            self.say("  the same confirmation again: DuplicateEvent (nothing booked twice)")
        else:
            raise AssertionError("a second confirmation was accepted")

        self.say("  another order, with the supplier's tracking down: it fails before it waits")
        down = Supplier({"gadget": 100}, max_order=25, fail_on=("track",))
        try:
            await ReplenishmentSaga.run(product_id="gadget", store=self.store, supplier=down)
        except SagaFailed as exc:
            self.say(f"  SagaFailed at {exc.step!r}: {exc.__cause__!r}")
            self.say(f"  compensated, in order: {', '.join(exc.compensated)}")
        else:
            raise AssertionError("the run did not fail")
        orders = await self.store.purchase_orders()
        self.say(
            f"  supplier orders still live: {len(down.live_orders())}; "
            f"purchase orders in the store: {len(orders)} (the first run's)"
        )

    async def bulk(self) -> None:
        self.say()
        recorded = self.runs is not None
        how = (
            "recorded in the RedisRunStore, then undone"
            if recorded
            else "in memory (with --redis it is recorded, then undone)"
        )
        self.say(f"7. A bulk request of {len(BULK)} lines (BulkInventorySaga), {how}")
        for index, line in enumerate(BULK):
            self.say(f"  line {index}: {line.operation} {line.quantity} x {line.product_id}")
        skus = sorted({line.product_id for line in BULK})
        before = {sku: await self.counts(sku) for sku in skus}
        result = await BulkInventorySaga.run(
            operations=list(BULK), runs=self.runs, **self.resources()
        )
        summary = result.output
        done = ", ".join(str(index) for index in summary["succeeded"])
        self.say(f"  summary: lines {done} succeeded")
        for index, error in summary["failed"]:
            self.say(f"  line {index} failed (the others stand): {error}")
        for sku in skus:
            self.say(f"  {sku}: {await self.counts(sku)}")
        if self.runs is None:
            return
        await self.records(result.run_id, detail=True)
        undone = await BulkInventorySaga.undo(result.run_id, runs=self.runs, **self.resources())
        self.say(
            f"  BulkInventorySaga.undo: {undone.status}, compensated "
            f"{', '.join(undone.compensated)} (each line from its own record)"
        )
        await self.records(result.run_id)
        for sku in skus:
            same = "as before the request" if await self.counts(sku) == before[sku] else "CHANGED"
            self.say(f"  {sku}: {await self.counts(sku)} ({same})")
        again = await BulkInventorySaga.undo(result.run_id, runs=self.runs, **self.resources())
        self.say(f"  undo again: {again.status}, already {again.already} (nothing undone twice)")

    async def records(self, run_id: str, *, detail: bool = False) -> None:
        """The bulk run's record and its children's, as the run store has them: each
        child on a line of its own (``detail``), or their statuses on one line."""
        assert self.runs is not None
        parent = await self.runs.load(run_id)
        children = [await self.runs.load(c) for c in parent.steps["items"].children]
        if not detail:
            statuses = ", ".join(child.status for child in children)
            self.say(f"  recorded: run {run_id} {parent.status}; child runs {statuses}")
            return
        self.say(
            f"  recorded: run {run_id} {parent.saga} {parent.status}; "
            f"step items: {len(children)} child runs"
        )
        for child in children:
            failed = f" at {child.failed_step}" if child.failed_step else ""
            self.say(f"    {child.run_id}  {child.saga}  {child.status}{failed}")
