"""The inventory sagas: asaga's port of the seed's four reactors (three here, the
replenishment saga in replenishment.py).

Where the seed was wrong, these do it right (see docs/inventory.md):

- the lease is held by the step that changes stock (``@step(lock=...)``), not taken and
  released by separate steps, so a failure can never leave it held;
- stock is checked again inside the lease, by the store, atomically with the write, which
  carries the lease's fencing token, so a stale holder cannot oversell;
- every compensation reads what its own step returned, never a key that does not exist;
- a transfer's compensation restores both locations instead of giving up;
- every compensation can run twice and undoes once (a durable run's recovery runs again a
  compensation that was cut off): the stock is restored with ``store.adjust(...,
  key=<the step's reference>)``, applied at most once per key; removing a log entry, a
  queued request or a purchase order, releasing a reservation and cancelling a supplier
  order do nothing the second time.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import anyio
import msgspec

from asaga import Lock, MapResult, Resource, Retry, Saga, map_each, step
from asaga.locks import Lease, LockProvider

from .store import (
    MAX_HOLD_SECONDS,
    InventoryStore,
    Product,
    Transaction,
    check,
    deltas,
)

__all__ = [
    "AtomicReservationSaga",
    "BulkInventorySaga",
    "Change",
    "InventorySaga",
    "InventoryTransferSaga",
    "Notifier",
    "OperationRequest",
]

Quantity = Annotated[int, msgspec.Meta(gt=0, le=1_000_000)]
Sku = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]
NETWORK_TIMEOUT = 2.0
"""Seconds one attempt of a step that calls a service (the store, the notifier) may take."""

HoldSeconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_HOLD_SECONDS)]
"""How long an atomic reservation is held: above 0, at most a day (NaN and infinities refused)."""


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """What a stock operation did: enough to log it and to undo it."""

    reference: str
    """A uuid made by the step that made the change: the ``run_id`` of its log entry, and
    the key of its compensation's ``adjust`` (so that the undo lands once)."""
    sku: str
    operation: str
    quantity: int
    d_inventory: int
    d_reserved: int
    after: Product | None = None
    """The product as the change left it (None for a transfer, which changes two)."""

    async def log_to(self, store: InventoryStore) -> str:
        """Append this change to the store's transaction log; returns the entry id."""
        return await store.log(
            Transaction(
                sku=self.sku,
                operation=self.operation,
                quantity=self.quantity,
                run_id=self.reference,
            )
        )


class Notifier:
    """A stand-in notification service: idempotent by key, with injectable failures."""

    def __init__(self, *, failures: int = 0) -> None:
        self.sent: dict[str, str] = {}
        self.failures = failures  # the next `failures` sends raise ConnectionError

    async def send(self, key: str, message: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("notification service unavailable")
        self.sent.setdefault(key, message)  # the same key twice sends once


class InventorySaga(Saga):
    """Reserve, release or consume stock of one product, under its lease."""

    product_id: Sku
    quantity: Quantity
    operation: Literal["reserve", "release", "consume"]
    store: Resource[InventoryStore]
    locks: Resource[LockProvider]
    notifier: Resource[Notifier]

    output = "perform"

    @step
    async def product(*, product_id: str, store: InventoryStore) -> Product:
        """Validate the request: the product must exist (UnknownProduct otherwise)."""
        return await store.get(product_id)

    @step
    async def availability(*, product: Product, quantity: int, operation: str) -> Product:
        """Fail fast, before queueing for the lease, if the operation cannot succeed."""
        d_inventory, d_reserved = deltas(operation, quantity)  # type: ignore[arg-type]
        check(product, d_inventory, d_reserved)
        return product

    @step(lock=Lock("inventory:{product_id}", ttl=5.0, wait=10.0))
    async def perform(
        *,
        availability: Product,
        product_id: str,
        quantity: int,
        operation: str,
        store: InventoryStore,
        lease: Lease,
    ) -> Change:
        """Write under the lease, with its fencing token. The store checks again, in the
        same atomic step as the write: InsufficientStock, and nothing written, if the
        counts changed since ``availability`` so that the operation no longer fits."""
        d_inventory, d_reserved = deltas(operation, quantity)  # type: ignore[arg-type]
        after = await store.apply(lease, product_id, d_inventory, d_reserved)
        return Change(
            reference=uuid.uuid4().hex,
            sku=product_id,
            operation=operation,
            quantity=quantity,
            d_inventory=d_inventory,
            d_reserved=d_reserved,
            after=after,
        )

    @perform.compensate
    async def undo_perform(*, perform: Change, store: InventoryStore) -> None:
        """The opposite deltas, keyed by the change's reference: run twice (recovery runs
        again a compensation cut off), they land once."""
        await store.adjust(
            perform.sku, -perform.d_inventory, -perform.d_reserved, key=perform.reference
        )

    @step
    async def transaction(*, perform: Change, store: InventoryStore) -> str:
        """Append the change to the transaction log."""
        return await perform.log_to(store)

    @transaction.compensate
    async def undo_transaction(*, transaction: str, store: InventoryStore) -> None:
        """Remove the entry; a second call finds nothing to remove (entry ids are never
        reused)."""
        await store.unlog(transaction)

    @step
    async def replenishment(*, perform: Change, store: InventoryStore) -> str | None:
        """Below the reorder point after this change (the counts ``perform``'s write
        returned): queue a replenishment request."""
        product = perform.after
        if product is None or product.available >= product.reorder_point:
            return None
        wanted = product.max_stock_level - product.inventory_count
        if wanted <= 0:
            return None
        return await store.request_replenishment(perform.sku, wanted)

    @replenishment.compensate
    async def undo_replenishment(*, replenishment: str | None, store: InventoryStore) -> None:
        """Withdraw the request; a second call finds nothing to withdraw (request ids are
        never reused)."""
        if replenishment is not None:
            await store.cancel_replenishment(replenishment)

    @step(retry=Retry(max_attempts=3, backoff="linear", base_delay=0.01), timeout=NETWORK_TIMEOUT)
    async def notify(*, transaction: str, perform: Change, notifier: Notifier) -> str:
        """Tell the warehouse; idempotent (keyed by the log entry), retried, each attempt
        bounded (a cancelled caller waits for it at most that long)."""
        await notifier.send(transaction, f"{perform.operation} {perform.quantity} x {perform.sku}")
        return transaction


class AtomicReservationSaga(Saga):
    """The fast path: reserve and log with one atomic, idempotent script; no lease needed.
    Its output is the id of the reservation's entry in the transaction log."""

    product_id: Sku
    quantity: Quantity
    reservation_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    hold_seconds: HoldSeconds = 900.0
    store: Resource[InventoryStore]
    notifier: Resource[Notifier]

    output = "reserve"

    # Every step has a timeout within the saga's cancel_grace: a cancelled caller waits at
    # most that long, and a run needs no task watching for the cancellation.
    @step(timeout=NETWORK_TIMEOUT)
    async def reserve(
        *,
        product_id: str,
        reservation_id: str,
        quantity: int,
        hold_seconds: float,
        store: InventoryStore,
    ) -> str:
        """Check, reserve and log in one script (UnknownProduct; InsufficientStock if
        fewer are available); returns the log entry's id. A retried call with the same id
        does nothing twice and returns the same entry; unless committed, the reservation
        expires after hold_seconds."""
        return await store.reserve(reservation_id, product_id, quantity, hold_seconds)

    @reserve.compensate
    async def unreserve(*, reservation_id: str, store: InventoryStore) -> None:
        """Give the units back and log the release, in one script: the log keeps
        reconciling with the stock. A second call finds the reservation released and
        changes nothing."""
        await store.release(reservation_id)

    @step(retry=Retry(max_attempts=3, backoff="linear", base_delay=0.01), timeout=NETWORK_TIMEOUT)
    async def notify(*, reserve: str, product_id: str, notifier: Notifier) -> str:
        """Tell the warehouse; idempotent (keyed by the log entry), retried."""
        await notifier.send(reserve, f"reserved {product_id}")
        return reserve


class OperationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a bulk request."""

    product_id: Sku
    quantity: Quantity
    operation: Literal["reserve", "release", "consume"]


class BulkInventorySaga(Saga):
    """Up to 100 operations, each an InventorySaga; partial success is reported."""

    operations: Annotated[list[OperationRequest], msgspec.Meta(min_length=1, max_length=100)]
    store: Resource[InventoryStore]
    locks: Resource[LockProvider]
    notifier: Resource[Notifier]

    items = map_each(InventorySaga, over="operations", mode="collect", max_concurrency=8)

    @step
    async def summary(*, items: MapResult[Change]) -> dict[str, list[object]]:
        """Succeeded and failed lines; every line failing fails the saga."""
        if items.all_failed:
            raise RuntimeError(f"all {len(items.failures)} operations failed")
        return {
            "succeeded": [s.index for s in items.successes],
            "failed": [[f.index, repr(f.error.__cause__ or f.error)] for f in items.failures],
        }


class InventoryTransferSaga(Saga):
    """Move stock of one product from one location to another.

    Stock per location is the product ``<product_id>@<location>``.
    """

    product_id: Sku
    quantity: Quantity
    source: Sku
    destination: Sku
    store: Resource[InventoryStore]
    locks: Resource[LockProvider]

    output = "transfer"

    @step
    async def validate(
        *, product_id: str, quantity: int, source: str, destination: str, store: InventoryStore
    ) -> Product:
        """Different locations; enough available at the source."""
        if source == destination:
            raise ValueError("source and destination must differ")
        origin = await store.get(f"{product_id}@{source}")
        check(origin, 0, quantity)
        return origin

    @step(lock=Lock("inventory:{product_id}@{source}", ttl=5.0, wait=10.0))
    async def reserve_source(
        *,
        validate: Product,
        product_id: str,
        source: str,
        quantity: int,
        store: InventoryStore,
        lease: Lease,
    ) -> Change:
        """Reserve at the source under its lease (the store checks again as it writes)."""
        sku = f"{product_id}@{source}"
        after = await store.apply(lease, sku, 0, quantity)
        return Change(
            reference=uuid.uuid4().hex,
            sku=sku,
            operation="reserve",
            quantity=quantity,
            d_inventory=0,
            d_reserved=quantity,
            after=after,
        )

    @reserve_source.compensate
    async def unreserve_source(*, reserve_source: Change, store: InventoryStore) -> None:
        """Release the reservation, keyed by its reference: run twice, it lands once."""
        await store.adjust(
            reserve_source.sku,
            -reserve_source.d_inventory,
            -reserve_source.d_reserved,
            key=reserve_source.reference,
        )

    @step
    async def prepare_destination(
        *, product_id: str, destination: str, validate: Product, store: InventoryStore
    ) -> tuple[str, bool]:
        """Make sure the destination record exists; remember whether we created it."""
        sku = f"{product_id}@{destination}"
        try:
            await store.get(sku)
        except LookupError:
            await store.put(
                Product(
                    sku=sku,
                    inventory_count=0,
                    reorder_point=validate.reorder_point,
                    max_stock_level=validate.max_stock_level,
                )
            )
            return sku, True
        return sku, False

    @step(
        lock=Lock(
            "inventory:{product_id}@{source}", "inventory:{product_id}@{destination}", ttl=5.0
        )
    )
    async def transfer(
        *,
        reserve_source: Change,
        prepare_destination: tuple[str, bool],
        product_id: str,
        source: str,
        destination: str,
        quantity: int,
        store: InventoryStore,
        lease: Lease,
    ) -> Change:
        """Both locations under one multi-key lease (sorted keys: no deadlock)."""
        origin, target = reserve_source.sku, prepare_destination[0]
        await store.apply(
            lease, origin, -quantity, -quantity, key=f"inventory:{product_id}@{source}"
        )
        try:
            await store.apply(
                lease, target, quantity, 0, key=f"inventory:{product_id}@{destination}"
            )
        except BaseException:
            # The step will not complete, so its compensation will not run: put the source
            # back as it was (reserved) before failing, shielded from cancellation. Not
            # keyed: it runs once per attempt of the step (an attempt cut off by the
            # process's death leaves the step in doubt, and its undo to a human).
            with anyio.CancelScope(shield=True):
                await store.adjust(origin, quantity, quantity)
            raise
        return Change(
            reference=uuid.uuid4().hex,
            sku=product_id,
            operation=f"transfer {source}->{destination}",
            quantity=quantity,
            d_inventory=0,
            d_reserved=0,
        )

    @transfer.compensate
    async def untransfer(
        *,
        transfer: Change,
        reserve_source: Change,
        prepare_destination: tuple[str, bool],
        quantity: int,
        store: InventoryStore,
    ) -> None:
        """Restore both sides: take the units back from the destination (refused if they
        were sold meanwhile: that needs a human), return them to the source reserved.
        Each side is keyed by the transfer's reference: run again after it was cut off
        between the two, the side already restored is not restored twice."""
        key = transfer.reference
        await store.adjust(prepare_destination[0], -quantity, 0, key=f"{key}:destination")
        await store.adjust(reserve_source.sku, quantity, quantity, key=f"{key}:source")

    @step
    async def log(*, transfer: Change, store: InventoryStore) -> str:
        return await transfer.log_to(store)

    @log.compensate
    async def unlog(*, log: str, store: InventoryStore) -> None:
        """Remove the entry; a second call finds nothing to remove."""
        await store.unlog(log)
