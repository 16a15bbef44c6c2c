"""The replenishment saga: order stock from a supplier, wait for the delivery, book it.

asaga's port of the seed's fourth reactor, which now also waits for the goods. The graph::

    product ──────┐
                  ├─▶ quantity ─▶ confirmed_quantity ─┐
    availability ─┘                                   ├─▶ supplier_order
    purchase_order_id ────────────────────────────────┘         │
                                                                ▼
                                           tracked_order ◀─ purchase_order
                                                 │
                                                 ▼
                            delivery: waits for the event "delivery:{purchase_order_id}"
                                                 │
                                                 ▼
                                       received_order (output)

- the order quantity is decided before anything is ordered: at least the supplier's
  ``min_order``, at most its ``max_order``, what it has available, and the room left
  under the product's ``max_stock_level``; if no quantity fits, the saga fails with
  :class:`NothingToOrder` before any order is placed;
- the supplier's stock check may confirm less than asked; the order is for what it
  confirmed (again refused below ``min_order``);
- the supplier order is placed with the purchase order's id as idempotency key, so a
  retried call whose first response was lost does not order twice; its compensation
  cancels it (idempotent, retried);
- the purchase order is recorded in the store (compensation: deleted, which a second run
  of it finds done), then delivery tracking is scheduled and its id written into the
  purchase order;
- ``delivery`` (:func:`asaga.wait_for`) waits for the supplier's
  :class:`DeliveryConfirmation`, delivered under the key ``delivery:<purchase order id>``
  (:func:`delivery_key`) with ``ReplenishmentSaga.deliver(key, payload, ...)``, from a
  webhook say (see examples/fastapi_app.py). A payload that does not fit the type is
  refused (``InvalidEvent``) and the run keeps waiting, up to :data:`BAD_CONFIRMATIONS`
  of them; without a confirmation within :data:`DELIVERY_TIMEOUT` the step fails with a
  ``TimeoutError`` and the run unwinds: the purchase order is deleted and the supplier
  order cancelled. A durable run (``runs=``) parks meanwhile (``RunParked``) and goes on
  in whichever process delivers the confirmation; without a run store it waits in its
  process;
- ``received_order`` writes the units received into the purchase order and books them
  into the store's stock (a keyed ``adjust``: once, however often it runs); its
  compensation takes them out again (keyed too). A confirmation naming another purchase
  order fails it with :class:`DeliveryMismatch`, and the run unwinds like any other.

Supplier calls are bounded by a timeout and retried on transient errors
(``ConnectionError``, ``TimeoutError``) only; a refusal fails the step at once. The
store's writes after the delivery are retried on the same errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Annotated

import msgspec

from asaga import Resource, Retry, Saga, step, wait_for

from .sagas import Sku
from .store import MAX_QUANTITY, InventoryStore, Product

__all__ = [
    "BAD_CONFIRMATIONS",
    "DELIVERY_TIMEOUT",
    "DeliveryConfirmation",
    "DeliveryMismatch",
    "NothingToOrder",
    "PurchaseOrder",
    "ReplenishmentSaga",
    "Supplier",
    "SupplierOrder",
    "delivery_key",
]

SUPPLIER_RETRY = Retry(
    max_attempts=3, backoff="linear", base_delay=0.01, retry_on=(ConnectionError, TimeoutError)
)
SUPPLIER_TIMEOUT = 5.0
STORE_RETRY = SUPPLIER_RETRY  # the store's writes after the delivery: the same errors

DELIVERY_TIMEOUT = timedelta(days=14)
"""How long a run waits for the supplier's delivery confirmation; then it unwinds."""
BAD_CONFIRMATIONS = 3
"""Invalid confirmations refused while the run keeps waiting; one more fails it."""


class NothingToOrder(ValueError):
    """No order quantity satisfies the stock room and the supplier's limits."""


class DeliveryMismatch(ValueError):
    """A delivery confirmation that names another purchase order than the run's."""


def delivery_key(purchase_order_id: str) -> str:
    """The key of the event that the run of ``purchase_order_id`` waits for: deliver the
    confirmation with ``ReplenishmentSaga.deliver(delivery_key(po_id), payload, ...)``."""
    return f"delivery:{purchase_order_id}"


class DeliveryConfirmation(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The supplier's word that an order arrived: what its webhook posts, as JSON
    (``{"purchase_order_id": "po-...", "quantity_received": 25}``), and the result of
    the saga's ``delivery`` step. ``ReplenishmentSaga.deliver`` validates it against this
    type: a payload that does not fit is refused with ``InvalidEvent``."""

    purchase_order_id: str
    quantity_received: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
    """Units that arrived: fewer than ordered (a partial delivery) or more are booked as
    they are; what the warehouse holds is what counts."""
    delivered_at: datetime | None = None


class PurchaseOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A purchase order as recorded in the store (``msgspec.to_builtins`` of it)."""

    id: str
    sku: str
    quantity: int
    supplier_order_id: str
    tracking_id: str | None = None
    received_quantity: int | None = None
    """Units received, once the delivery is confirmed and booked."""


class SupplierOrder(msgspec.Struct, kw_only=True):
    """An order as the supplier sees it."""

    id: str
    sku: str
    quantity: int
    key: str | None = None
    cancelled: bool = False
    tracking_id: str | None = None


class Supplier:
    """A stand-in supplier: stock per SKU, order limits, recorded orders, injectable
    failures.

    - ``stock``: units per SKU; :meth:`availability` reports them, an order takes them,
      a cancellation gives them back.
    - ``confirmable``: per SKU, the most units :meth:`stock_check` confirms (the
      catalogue's availability can be stale); default: the stock.
    - ``fail_on``: a mapping ``{method: n}`` makes the next ``n`` calls of ``method``
      raise ``ConnectionError`` before doing anything; a collection of method names
      makes every call of those methods fail.
    - ``lose_response``: ``{method: n}``: the next ``n`` calls of ``method`` take effect,
      then raise ``ConnectionError`` (the response was lost on the way back).

    Every call is appended to ``calls``; ``orders`` holds every order ever placed.
    """

    def __init__(
        self,
        stock: Mapping[str, int] | None = None,
        *,
        min_order: int = 1,
        max_order: int = 1_000,
        confirmable: Mapping[str, int] | None = None,
        fail_on: Mapping[str, int] | Collection[str] = (),
        lose_response: Mapping[str, int] | None = None,
    ) -> None:
        if not 1 <= min_order <= max_order:
            raise ValueError(f"need 1 <= min_order <= max_order, got {min_order}, {max_order}")
        self.stock: dict[str, int] = dict(stock or {})
        self.min_order = min_order
        self.max_order = max_order
        self.confirmable: dict[str, int] = dict(confirmable or {})
        if isinstance(fail_on, Mapping):
            self.failures: dict[str, int] = dict(fail_on)
            self.down: set[str] = set()
        else:
            self.failures = {}
            self.down = set(fail_on)
        self.lost_responses: dict[str, int] = dict(lose_response or {})
        self.orders: dict[str, SupplierOrder] = {}
        self.calls: list[str] = []
        self._ids = 0

    def live_orders(self) -> dict[str, SupplierOrder]:
        """Orders placed and not cancelled."""
        return {k: v for k, v in self.orders.items() if not v.cancelled}

    def _called(self, method: str) -> None:
        self.calls.append(method)
        if method in self.down:
            raise ConnectionError(f"supplier: {method} unavailable")
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise ConnectionError(f"supplier: {method} failed")

    def _responded(self, method: str) -> None:
        if self.lost_responses.get(method, 0) > 0:
            self.lost_responses[method] -= 1
            raise ConnectionError(f"supplier: {method} response lost")

    async def availability(self, sku: str) -> int:
        """Units the supplier lists as available."""
        self._called("availability")
        return self.stock.get(sku, 0)

    async def stock_check(self, sku: str, quantity: int) -> int:
        """Units of ``quantity`` the supplier confirms it can ship (may be fewer)."""
        self._called("stock_check")
        stock = self.stock.get(sku, 0)
        return max(0, min(quantity, stock, self.confirmable.get(sku, stock)))

    async def place_order(self, sku: str, quantity: int, *, key: str | None = None) -> str:
        """Order ``quantity`` units; returns the order id. Idempotent per ``key``."""
        self._called("place_order")
        if key is not None:
            for order in self.orders.values():
                if order.key == key:
                    self._responded("place_order")
                    return order.id
        if not self.min_order <= quantity <= self.max_order:
            raise ValueError(
                f"supplier: order {quantity} outside [{self.min_order}, {self.max_order}]"
            )
        if quantity > self.stock.get(sku, 0):
            raise ValueError(f"supplier: only {self.stock.get(sku, 0)} of {sku} in stock")
        self._ids += 1
        order = SupplierOrder(id=f"so-{self._ids}", sku=sku, quantity=quantity, key=key)
        self.orders[order.id] = order
        self.stock[sku] -= quantity
        self._responded("place_order")
        return order.id

    async def cancel_order(self, order_id: str) -> None:
        """Cancel an order and return its units to stock; cancelling twice is a no-op."""
        self._called("cancel_order")
        order = self.orders.get(order_id)
        if order is None:
            raise LookupError(f"supplier: no order {order_id!r}")
        if not order.cancelled:
            order.cancelled = True
            self.stock[order.sku] = self.stock.get(order.sku, 0) + order.quantity
        self._responded("cancel_order")

    async def track(self, order_id: str) -> str:
        """Schedule delivery tracking of a live order; the same id for the same order."""
        self._called("track")
        order = self.orders.get(order_id)
        if order is None or order.cancelled:
            raise LookupError(f"supplier: no live order {order_id!r}")
        if order.tracking_id is None:
            order.tracking_id = f"trk-{order.id}"
        self._responded("track")
        return order.tracking_id

    def confirmation(self, order_id: str, quantity: int | None = None) -> DeliveryConfirmation:
        """The delivery confirmation the supplier sends once an order arrived (``quantity``
        units, by default all): the payload of its webhook. A local call, not counted."""
        order = self.orders[order_id]
        if order.key is None:
            raise LookupError(f"supplier: order {order_id!r} names no purchase order")
        return DeliveryConfirmation(
            purchase_order_id=order.key,
            quantity_received=order.quantity if quantity is None else quantity,
        )


class ReplenishmentSaga(Saga):
    """Order stock of one product from the supplier, record the purchase order, wait for
    the delivery, and book what was received."""

    product_id: Sku
    store: Resource[InventoryStore]
    supplier: Resource[Supplier]

    output = "received_order"

    @step
    async def product(*, product_id: str, store: InventoryStore) -> Product:
        """The product must exist (UnknownProduct otherwise)."""
        return await store.get(product_id)

    @step(retry=SUPPLIER_RETRY, timeout=SUPPLIER_TIMEOUT)
    async def availability(*, product_id: str, supplier: Supplier) -> int:
        """What the supplier lists as available."""
        return await supplier.availability(product_id)

    @step
    async def quantity(*, product: Product, availability: int, supplier: Supplier) -> int:
        """The most that fits the room under max_stock_level, the supplier's availability
        and its max_order; NothingToOrder if that is below its min_order."""
        room = product.max_stock_level - product.inventory_count
        wanted = min(room, availability, supplier.max_order)
        if wanted >= supplier.min_order:
            return wanted
        if room <= 0:
            reason = (
                f"stock {product.inventory_count} already at max_stock_level "
                f"{product.max_stock_level}"
            )
        elif availability < supplier.min_order:
            reason = f"supplier has {availability} available, below its min_order"
        else:
            reason = f"room for only {room} under max_stock_level, below the supplier's min_order"
        raise NothingToOrder(
            f"{product.sku}: nothing to order: {reason} (min_order {supplier.min_order}, "
            f"max_order {supplier.max_order})"
        )

    @step(retry=SUPPLIER_RETRY, timeout=SUPPLIER_TIMEOUT)
    async def confirmed_quantity(*, quantity: int, product_id: str, supplier: Supplier) -> int:
        """What the supplier's stock check confirms of the quantity (may be less)."""
        confirmed = min(await supplier.stock_check(product_id, quantity), quantity)
        if confirmed < supplier.min_order:
            raise NothingToOrder(
                f"{product_id}: supplier confirmed {confirmed} of {quantity}, "
                f"below its min_order {supplier.min_order}"
            )
        return confirmed

    @step
    async def purchase_order_id() -> str:
        """The purchase order's id, chosen up front: it is the supplier order's
        idempotency key."""
        return f"po-{uuid.uuid4().hex}"

    @step(retry=SUPPLIER_RETRY, timeout=SUPPLIER_TIMEOUT)
    async def supplier_order(
        *, confirmed_quantity: int, purchase_order_id: str, product_id: str, supplier: Supplier
    ) -> str:
        """Place the order; a retry after a lost response finds it by key."""
        return await supplier.place_order(product_id, confirmed_quantity, key=purchase_order_id)

    @supplier_order.compensate(retry=SUPPLIER_RETRY, timeout=SUPPLIER_TIMEOUT)
    async def cancel_supplier_order(*, supplier_order: str, supplier: Supplier) -> None:
        """Cancel the order; cancelling it again is a no-op (the supplier's own rule), so
        a retry, or a run of it again by recovery, changes nothing."""
        await supplier.cancel_order(supplier_order)

    @step
    async def purchase_order(
        *,
        purchase_order_id: str,
        supplier_order: str,
        confirmed_quantity: int,
        product_id: str,
        store: InventoryStore,
    ) -> PurchaseOrder:
        """Record the purchase order in the store."""
        order = PurchaseOrder(
            id=purchase_order_id,
            sku=product_id,
            quantity=confirmed_quantity,
            supplier_order_id=supplier_order,
        )
        await store.save_purchase_order(order.id, msgspec.to_builtins(order))
        return order

    @purchase_order.compensate
    async def undo_purchase_order(*, purchase_order: PurchaseOrder, store: InventoryStore) -> None:
        """Delete the purchase order; a second call finds nothing to delete (its id is a
        fresh uuid, never reused)."""
        await store.delete_purchase_order(purchase_order.id)

    @step(retry=SUPPLIER_RETRY, timeout=SUPPLIER_TIMEOUT)
    async def tracked_order(
        *, purchase_order: PurchaseOrder, supplier: Supplier, store: InventoryStore
    ) -> PurchaseOrder:
        """Schedule delivery tracking and write its id into the purchase order (both
        idempotent, so the step is retried as a whole)."""
        tracking_id = await supplier.track(purchase_order.supplier_order_id)
        order = msgspec.structs.replace(purchase_order, tracking_id=tracking_id)
        await store.save_purchase_order(order.id, msgspec.to_builtins(order))
        return order

    # Waits for the event "delivery:<purchase order id>": its key reads the step
    # purchase_order_id, and after= makes it wait once the order is tracked.
    delivery = wait_for(
        DeliveryConfirmation,
        key="delivery:{purchase_order_id}",
        timeout=DELIVERY_TIMEOUT,
        bad_payloads=BAD_CONFIRMATIONS,
        after=["tracked_order"],
    )

    @step(retry=STORE_RETRY, idempotent=True)
    async def received_order(
        *, delivery: DeliveryConfirmation, tracked_order: PurchaseOrder, store: InventoryStore
    ) -> PurchaseOrder:
        """Write the units received into the purchase order, then book them into stock.
        The write replaces the order and the booking is keyed by it (applied once,
        however often the step runs), so the step is retried as a whole; the booking
        comes last, so that a step that fails for good has booked nothing."""
        if delivery.purchase_order_id != tracked_order.id:
            raise DeliveryMismatch(
                f"confirmation for {delivery.purchase_order_id!r} delivered to the run of "
                f"{tracked_order.id!r}"
            )
        received = delivery.quantity_received
        order = msgspec.structs.replace(tracked_order, received_quantity=received)
        await store.save_purchase_order(order.id, msgspec.to_builtins(order))
        await store.adjust(order.sku, received, 0, key=f"{order.id}:received")
        return order

    @received_order.compensate(retry=STORE_RETRY)
    async def unbook_received_stock(
        *, received_order: PurchaseOrder, store: InventoryStore
    ) -> None:
        """Take the booked units out of stock again (keyed too: once); the purchase order
        itself is deleted by ``undo_purchase_order``. Refused (InsufficientStock) if they
        were reserved meanwhile: a human then decides."""
        received = received_order.received_quantity or 0
        key = f"{received_order.id}:received:undone"
        await store.adjust(received_order.sku, -received, 0, key=key)
