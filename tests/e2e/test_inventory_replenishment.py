"""The replenishment saga of the inventory example, on the memory store (asyncio and
trio) and on the Redis store (asyncio: redis-py's client is asyncio-only).

Every failure must leave the supplier without a live order and the store without the
purchase order: the state before the run, exactly.

The saga waits for the supplier's delivery confirmation once the order is tracked. The
runs that get that far are durable here (a ``MemoryRunStore``, or a ``RedisRunStore``
with the Redis store): they park (``RunParked``), and ``ReplenishmentSaga.deliver`` takes
them on. A run without a store waits in its process: see the tests at the end. Nothing
sleeps: a deadline is passed by moving ``time.time`` forward.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import (
    CompensationFailed,
    DuplicateEvent,
    EventRefused,
    InvalidEvent,
    RunParked,
    SagaFailed,
    SagaResult,
)
from asaga.locks import RedisLockProvider
from asaga.runs import MemoryRunStore, RedisRunStore, RunStore, recover
from examples.inventory import (
    DeliveryConfirmation,
    DeliveryMismatch,
    InventoryStore,
    MemoryInventoryStore,
    NothingToOrder,
    Product,
    PurchaseOrder,
    RedisInventoryStore,
    ReplenishmentSaga,
    Supplier,
    SupplierOrder,
    delivery_key,
)
from examples.inventory.replenishment import BAD_CONFIRMATIONS, DELIVERY_TIMEOUT

pytestmark = pytest.mark.anyio

SKU = "widget-1"
OTHER_ORDER = {"id": "po-old", "sku": "gadget", "quantity": 3, "supplier_order_id": "x-1"}


class FlakyStore:
    """Delegates to a store; every save_purchase_order after the first ``saves_ok``
    raises ``error`` (ConnectionError: transient, retried by the saga), at most
    ``failures`` times."""

    def __init__(
        self,
        inner: InventoryStore,
        *,
        saves_ok: int,
        error: type[Exception] = ConnectionError,
        failures: int | None = None,
    ) -> None:
        self.inner = inner
        self.saves_ok = saves_ok
        self.error = error
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_purchase_order(self, order_id: str, data: dict[str, Any]) -> None:
        if self.saves_ok <= 0 and (self.failures is None or self.failures > 0):
            if self.failures is not None:
                self.failures -= 1
            raise self.error("store unavailable")
        self.saves_ok -= 1
        await self.inner.save_purchase_order(order_id, data)


class PromptSupplier(Supplier):
    """A supplier that ships at once: its delivery confirmation is delivered while the
    run still tracks the order, before the run waits for it (``runs``: the run's store,
    with the saga's resources; None for a run that waits in its process)."""

    def __init__(
        self, *args: Any, runs: RunStore | None, store: InventoryStore | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.runs = runs
        self.resources: dict[str, Any] = {} if runs is None else {"store": store, "supplier": self}
        self.statuses: list[str] = []

    async def track(self, order_id: str) -> str:
        tracking_id = await super().track(order_id)
        confirmation = self.confirmation(order_id)
        key = delivery_key(confirmation.purchase_order_id)
        delivery = await ReplenishmentSaga.deliver(
            key, confirmation, runs=self.runs, **self.resources
        )
        self.statuses.append(delivery.status)
        return tracking_id


async def snapshot(store: InventoryStore, supplier: Supplier) -> dict[str, object]:
    """Everything a replenishment run may change."""
    return {
        "product": await store.get(SKU),
        "purchase_orders": await store.purchase_orders(),
        "supplier_stock": dict(supplier.stock),
        "live_orders": supplier.live_orders(),
    }


def flaky_save(saves_ok: int) -> Callable[[InventoryStore, Supplier], InventoryStore]:
    return lambda store, supplier: FlakyStore(store, saves_ok=saves_ok)


def supplier_down(method: str) -> Callable[[InventoryStore, Supplier], InventoryStore]:
    def inject(store: InventoryStore, supplier: Supplier) -> InventoryStore:
        supplier.down.add(method)
        return store

    return inject


async def park(store: InventoryStore, supplier: Supplier, runs: RunStore) -> RunParked:
    """Run the saga durably up to its wait: the RunParked it raises."""
    with pytest.raises(RunParked) as parked:
        await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier, runs=runs)
    return parked.value


def placed_order(supplier: Supplier) -> tuple[str, str]:
    """The supplier order's id and the purchase order's (its idempotency key)."""
    (order,) = supplier.live_orders().values()
    assert order.key is not None
    return order.id, order.key


async def order_and_receive(
    store: InventoryStore, supplier: Supplier, runs: RunStore, quantity: int | None = None
) -> SagaResult[PurchaseOrder]:
    """Run the saga until it parks, then deliver the supplier's confirmation (of
    ``quantity`` units, default all): the run's result."""
    await park(store, supplier, runs)
    order_id, po = placed_order(supplier)
    delivery = await ReplenishmentSaga.deliver(
        delivery_key(po),
        supplier.confirmation(order_id, quantity),
        runs=runs,
        store=store,
        supplier=supplier,
    )
    assert delivery.status == "succeeded", delivery
    assert delivery.result is not None
    return delivery.result


class ReplenishmentContract:
    """The tests, run against each store (the subclasses provide the ``store`` fixture)."""

    async def seed(
        self, store: InventoryStore, *, inventory: int = 20, max_stock: int = 100
    ) -> None:
        await store.put(Product(sku=SKU, inventory_count=inventory, max_stock_level=max_stock))
        await store.save_purchase_order("po-old", OTHER_ORDER)

    @pytest.mark.parametrize(
        ("inventory", "max_stock", "supplier_stock", "min_order", "max_order", "expected"),
        [
            pytest.param(20, 100, 500, 10, 50, 50, id="capped-by-max-order"),
            pytest.param(90, 100, 500, 5, 50, 10, id="capped-by-room"),
            pytest.param(20, 100, 30, 10, 50, 30, id="capped-by-availability"),
        ],
    )
    async def test_places_and_records_a_clamped_order(
        self,
        store: InventoryStore,
        runs: RunStore,
        inventory: int,
        max_stock: int,
        supplier_stock: int,
        min_order: int,
        max_order: int,
        expected: int,
    ) -> None:
        """The order is the least of room, availability and max_order; it is placed,
        tracked, recorded, and once delivered booked into stock: the output purchase
        order says how much was received."""
        await self.seed(store, inventory=inventory, max_stock=max_stock)
        supplier = Supplier({SKU: supplier_stock}, min_order=min_order, max_order=max_order)

        result = await order_and_receive(store, supplier, runs)

        order = result.output
        assert isinstance(order, PurchaseOrder)
        assert order.sku == SKU
        assert order.quantity == expected
        assert order.id.startswith("po-")
        (placed,) = supplier.live_orders().values()
        assert (placed.id, placed.sku, placed.quantity, placed.key) == (
            order.supplier_order_id,
            SKU,
            expected,
            order.id,
        )
        assert order.tracking_id is not None
        assert order.tracking_id == placed.tracking_id
        assert order.received_quantity == expected
        assert supplier.stock[SKU] == supplier_stock - expected
        assert await store.purchase_orders() == {
            "po-old": OTHER_ORDER,
            order.id: msgspec.to_builtins(order),
        }
        assert await store.get(SKU) == Product(
            sku=SKU, inventory_count=inventory + expected, max_stock_level=max_stock
        )

    async def test_stock_check_reduces_the_quantity(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """The supplier confirming fewer units than asked orders what it confirmed."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50, confirmable={SKU: 25})

        result = await order_and_receive(store, supplier, runs)

        assert result.results["quantity"] == 50
        assert result.output.quantity == 25
        (placed,) = supplier.live_orders().values()
        assert placed.quantity == 25
        stored = (await store.purchase_orders())[result.output.id]
        assert msgspec.convert(stored, PurchaseOrder) == result.output

    @pytest.mark.parametrize(
        ("inventory", "supplier_stock", "min_order", "confirmable", "step", "message"),
        [
            pytest.param(
                100, 500, 1, 500, "quantity", "already at max_stock_level 100", id="at-max-stock"
            ),
            pytest.param(
                20, 4, 5, 500, "quantity", "supplier has 4 available", id="supplier-below-min"
            ),
            pytest.param(97, 500, 5, 500, "quantity", "room for only 3", id="room-below-min"),
            pytest.param(
                20, 500, 1, 0, "confirmed_quantity", "confirmed 0 of 50", id="stock-check-0"
            ),
            pytest.param(
                20, 500, 5, 4, "confirmed_quantity", "confirmed 4 of 50", id="stock-check-below-min"
            ),
        ],
    )
    async def test_nothing_to_order_fails_before_ordering(
        self,
        store: InventoryStore,
        inventory: int,
        supplier_stock: int,
        min_order: int,
        confirmable: int,
        step: str,
        message: str,
    ) -> None:
        """No quantity that fits fails with a NothingToOrder naming why, before any
        order is placed."""
        await self.seed(store, inventory=inventory)
        supplier = Supplier(
            {SKU: supplier_stock}, min_order=min_order, max_order=50, confirmable={SKU: confirmable}
        )
        before = await snapshot(store, supplier)

        with pytest.raises(SagaFailed) as caught:
            await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

        assert caught.value.step == step
        assert isinstance(caught.value.__cause__, NothingToOrder)
        assert message in str(caught.value.__cause__)
        assert caught.value.compensated == ()
        assert "place_order" not in supplier.calls
        assert supplier.orders == {}
        assert await snapshot(store, supplier) == before

    @pytest.mark.parametrize(
        ("inject", "step", "compensated"),
        [
            pytest.param(supplier_down("availability"), "availability", (), id="availability"),
            pytest.param(supplier_down("stock_check"), "confirmed_quantity", (), id="stock-check"),
            pytest.param(supplier_down("place_order"), "supplier_order", (), id="place-order"),
            pytest.param(flaky_save(0), "purchase_order", ("supplier_order",), id="record-po"),
            pytest.param(
                supplier_down("track"),
                "tracked_order",
                ("purchase_order", "supplier_order"),
                id="track",
            ),
            pytest.param(
                flaky_save(1),
                "tracked_order",
                ("purchase_order", "supplier_order"),
                id="save-tracking-id",
            ),
        ],
    )
    async def test_failure_at_each_step_restores_the_state(
        self,
        store: InventoryStore,
        inject: Callable[[InventoryStore, Supplier], InventoryStore],
        step: str,
        compensated: tuple[str, ...],
    ) -> None:
        """A step failing for good (retries exhausted) undoes what came before it, in
        reverse order: no live supplier order, no purchase order, nothing else changed."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        run_store = inject(store, supplier)

        with pytest.raises(SagaFailed) as caught:
            await ReplenishmentSaga.run(product_id=SKU, store=run_store, supplier=supplier)

        assert not isinstance(caught.value, CompensationFailed)
        assert caught.value.step == step
        assert isinstance(caught.value.__cause__, ConnectionError)
        assert caught.value.compensated == compensated
        assert supplier.live_orders() == {}
        assert await snapshot(store, supplier) == before

    async def test_transient_supplier_errors_are_retried(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """One ConnectionError per supplier call is retried away; one order results."""
        await self.seed(store)
        supplier = Supplier(
            {SKU: 500},
            min_order=10,
            max_order=50,
            fail_on={"availability": 1, "stock_check": 1, "place_order": 1, "track": 1},
        )

        result = await order_and_receive(store, supplier, runs)

        assert list(supplier.live_orders()) == [result.output.supplier_order_id]
        assert supplier.calls.count("place_order") == 2
        assert result.output.tracking_id is not None

    async def test_lost_place_order_response_orders_once(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """A place_order that took effect but whose response was lost is retried with
        the same idempotency key: exactly one supplier order."""
        await self.seed(store)
        supplier = Supplier(
            {SKU: 500}, min_order=10, max_order=50, lose_response={"place_order": 1}
        )

        result = await order_and_receive(store, supplier, runs)

        assert supplier.calls.count("place_order") == 2
        assert list(supplier.orders) == [result.output.supplier_order_id]
        assert supplier.stock[SKU] == 450

    async def test_transient_cancel_failure_is_retried(self, store: InventoryStore) -> None:
        """The cancellation compensation is retried, so a transient error still
        unwinds completely."""
        await self.seed(store)
        supplier = Supplier(
            {SKU: 500}, min_order=10, max_order=50, fail_on={"track": 3, "cancel_order": 1}
        )
        before = await snapshot(store, supplier)

        with pytest.raises(SagaFailed) as caught:
            await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

        assert not isinstance(caught.value, CompensationFailed)
        assert supplier.calls.count("cancel_order") == 2
        assert await snapshot(store, supplier) == before

    async def test_refused_cancel_needs_manual_repair(self, store: InventoryStore) -> None:
        """A supplier that never accepts the cancellation is reported as
        CompensationFailed; the purchase order is still removed."""
        await self.seed(store)
        supplier = Supplier(
            {SKU: 500}, min_order=10, max_order=50, fail_on={"track", "cancel_order"}
        )

        with pytest.raises(CompensationFailed) as caught:
            await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

        assert caught.value.step == "tracked_order"
        assert caught.value.failed_compensations == ("supplier_order",)
        assert caught.value.compensated == ("purchase_order",)
        assert len(supplier.live_orders()) == 1
        assert await store.purchase_orders() == {"po-old": OTHER_ORDER}

    # -- waiting for the delivery ---------------------------------------------------------

    async def test_parks_until_the_delivery_is_confirmed(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """The run parks once the order is tracked, waiting for "delivery:<po>" for at most
        DELIVERY_TIMEOUT, with nothing booked; the confirmation delivered takes it on in
        that call: the stock received is booked, the run succeeded."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = time.time()

        parked = await park(store, supplier, runs)

        order_id, po = placed_order(supplier)
        (wait,) = parked.waits
        assert (wait.step, wait.kind, wait.key) == ("delivery", "event", delivery_key(po))
        assert wait.until is not None
        timeout = DELIVERY_TIMEOUT.total_seconds()
        assert before + timeout <= wait.until <= time.time() + timeout
        assert (await runs.load(parked.run_id)).status == "waiting"
        waiting = msgspec.convert(await store.purchase_order(po), PurchaseOrder)
        assert waiting.tracking_id == f"trk-{order_id}"
        assert waiting.received_quantity is None
        assert (await store.get(SKU)).inventory_count == 20  # nothing received yet

        delivery = await ReplenishmentSaga.deliver(
            delivery_key(po),
            b'{"purchase_order_id": "%s", "quantity_received": 50}' % po.encode(),
            runs=runs,
            store=store,
            supplier=supplier,
        )

        assert (delivery.status, delivery.run_id, delivery.key) == (
            "succeeded",
            parked.run_id,
            delivery_key(po),
        )
        assert delivery.result is not None
        order = delivery.result.output
        assert order == msgspec.structs.replace(waiting, received_quantity=50)
        assert delivery.result.results["delivery"] == DeliveryConfirmation(
            purchase_order_id=po, quantity_received=50
        )
        assert await store.purchase_order(po) == msgspec.to_builtins(order)
        assert (await store.get(SKU)).inventory_count == 70
        assert (await runs.load(parked.run_id)).status == "succeeded"

    async def test_a_partial_delivery_books_what_arrived(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """Fewer units than ordered arrived: those are booked, and the purchase order
        says so."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)

        result = await order_and_receive(store, supplier, runs, quantity=35)

        assert (result.output.quantity, result.output.received_quantity) == (50, 35)
        assert (await store.get(SKU)).inventory_count == 55

    async def test_an_early_confirmation_is_kept_for_the_run(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """A confirmation delivered before the run waits (the supplier shipped as soon as
        it tracked the order) is kept; the run takes it when it would park, and finishes
        in its own call: no RunParked."""
        await self.seed(store)
        supplier = PromptSupplier({SKU: 500}, min_order=10, max_order=50, runs=runs, store=store)

        result = await ReplenishmentSaga.run(
            product_id=SKU, store=store, supplier=supplier, runs=runs
        )

        assert supplier.statuses == ["kept"]
        assert result.output.received_quantity == 50
        assert (await store.get(SKU)).inventory_count == 70
        assert (await runs.load(result.run_id)).status == "succeeded"

    async def test_an_invalid_confirmation_is_refused_and_the_run_keeps_waiting(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """A payload that does not fit DeliveryConfirmation is refused with InvalidEvent,
        nothing booked; the run still waits, and a valid confirmation takes it on."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        parked = await park(store, supplier, runs)
        order_id, po = placed_order(supplier)
        key = delivery_key(po)
        resources: dict[str, Any] = {"store": store, "supplier": supplier}

        for bad in (
            {"purchase_order_id": po, "quantity_received": 0},
            {"purchase_order_id": po},
            b"not json",
        ):
            with pytest.raises(InvalidEvent) as caught:
                await ReplenishmentSaga.deliver(key, bad, runs=runs, **resources)
            assert caught.value.run_id == parked.run_id
            assert not caught.value.run_failed
        assert (await runs.load(parked.run_id)).status == "waiting"
        assert (await store.get(SKU)).inventory_count == 20

        delivery = await ReplenishmentSaga.deliver(
            key, supplier.confirmation(order_id), runs=runs, **resources
        )

        assert delivery.status == "succeeded"
        assert (await store.get(SKU)).inventory_count == 70

    async def test_too_many_invalid_confirmations_fail_the_run(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """BAD_CONFIRMATIONS invalid payloads are refused; the next one fails the step:
        the run unwinds, to the state before it."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        parked = await park(store, supplier, runs)
        _, po = placed_order(supplier)
        bad = {"purchase_order_id": po, "quantity_received": -1}
        resources: dict[str, Any] = {"store": store, "supplier": supplier}

        for _ in range(BAD_CONFIRMATIONS):
            with pytest.raises(InvalidEvent) as caught:
                await ReplenishmentSaga.deliver(delivery_key(po), bad, runs=runs, **resources)
            assert not caught.value.run_failed
        with pytest.raises(InvalidEvent) as caught:
            await ReplenishmentSaga.deliver(delivery_key(po), bad, runs=runs, **resources)

        assert caught.value.run_failed
        record = await runs.load(parked.run_id)
        assert (record.status, record.failed_step) == ("failed", "delivery")
        assert await snapshot(store, supplier) == before

    async def test_a_second_confirmation_is_refused(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """Once a confirmation was delivered, another for the same purchase order is a
        DuplicateEvent: nothing booked twice."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        result = await order_and_receive(store, supplier, runs)
        order_id, po = placed_order(supplier)

        with pytest.raises(DuplicateEvent) as caught:
            await ReplenishmentSaga.deliver(
                delivery_key(po),
                supplier.confirmation(order_id),
                runs=runs,
                store=store,
                supplier=supplier,
            )

        assert caught.value.run_id == result.run_id
        assert (await store.get(SKU)).inventory_count == 70

    async def test_a_key_no_run_makes_is_refused(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """A key of another shape than "delivery:<po>" is refused (EventRefused); one of
        that shape for which no run waits yet is kept for the run that will."""
        confirmation = DeliveryConfirmation(purchase_order_id="po-x", quantity_received=1)
        resources: dict[str, Any] = {"store": store, "supplier": Supplier()}
        with pytest.raises(EventRefused, match="delivery:"):
            await ReplenishmentSaga.deliver("payment:po-x", confirmation, runs=runs, **resources)
        kept = await ReplenishmentSaga.deliver(
            "delivery:po-x", confirmation, runs=runs, **resources
        )
        assert (kept.status, kept.run_id) == ("kept", None)

    async def test_no_confirmation_in_time_unwinds_the_run(
        self, store: InventoryStore, runs: RunStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past DELIVERY_TIMEOUT, recover() finds the run's deadline passed: the step
        fails with a TimeoutError and the run unwinds (purchase order deleted, supplier
        order cancelled). A confirmation that comes later is refused."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        parked = await park(store, supplier, runs)
        order_id, po = placed_order(supplier)
        resources: dict[str, Any] = {"store": store, "supplier": supplier}
        assert await recover(runs, sagas=[ReplenishmentSaga], resources=resources) == []

        later = time.time() + DELIVERY_TIMEOUT.total_seconds() + 1
        monkeypatch.setattr(time, "time", lambda: later)
        report = await recover(runs, sagas=[ReplenishmentSaga], resources=resources)

        assert [(r.run_id, r.outcome) for r in report] == [(parked.run_id, "failed")]
        record = await runs.load(parked.run_id)
        assert (record.status, record.failed_step) == ("failed", "delivery")
        assert (record.error or "").startswith("TimeoutError(")
        assert await snapshot(store, supplier) == before
        with pytest.raises(EventRefused):
            await ReplenishmentSaga.deliver(
                delivery_key(po), supplier.confirmation(order_id), runs=runs, **resources
            )
        assert await snapshot(store, supplier) == before

    async def test_a_confirmation_for_another_order_unwinds_the_run(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """A confirmation naming another purchase order, delivered under this run's key,
        fails received_order with DeliveryMismatch: the run unwinds, nothing booked."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        await park(store, supplier, runs)
        _, po = placed_order(supplier)
        other = DeliveryConfirmation(purchase_order_id="po-other", quantity_received=50)

        delivery = await ReplenishmentSaga.deliver(
            delivery_key(po), other, runs=runs, store=store, supplier=supplier
        )

        assert delivery.status == "failed"
        assert delivery.error is not None
        assert delivery.error.step == "received_order"
        assert isinstance(delivery.error.__cause__, DeliveryMismatch)
        assert delivery.error.compensated == ("purchase_order", "supplier_order")
        assert await snapshot(store, supplier) == before

    async def test_a_refused_write_after_the_delivery_books_nothing(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """received_order's write of the purchase order is refused (not a transient
        error: not retried): the run unwinds, and the stock received is not booked."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        await park(store, supplier, runs)
        order_id, po = placed_order(supplier)

        delivery = await ReplenishmentSaga.deliver(
            delivery_key(po),
            supplier.confirmation(order_id),
            runs=runs,
            store=FlakyStore(store, saves_ok=0, error=PermissionError),
            supplier=supplier,
        )

        assert delivery.status == "failed"
        assert delivery.error is not None
        assert delivery.error.step == "received_order"
        assert isinstance(delivery.error.__cause__, PermissionError)
        assert delivery.error.compensated == ("purchase_order", "supplier_order")
        assert await snapshot(store, supplier) == before

    async def test_a_transient_write_error_after_the_delivery_is_retried(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """received_order's write fails twice with a ConnectionError: retried, the third
        attempt books the stock."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        await park(store, supplier, runs)
        order_id, po = placed_order(supplier)

        delivery = await ReplenishmentSaga.deliver(
            delivery_key(po),
            supplier.confirmation(order_id),
            runs=runs,
            store=FlakyStore(store, saves_ok=0, failures=2),
            supplier=supplier,
        )

        assert delivery.status == "succeeded"
        assert (await store.get(SKU)).inventory_count == 70

    async def test_cancelling_a_waiting_run_undoes_the_order(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """ReplenishmentSaga.cancel of a parked run unwinds it; its key then refuses a
        confirmation."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        parked = await park(store, supplier, runs)
        order_id, po = placed_order(supplier)

        done = await ReplenishmentSaga.cancel(
            parked.run_id, runs=runs, store=store, supplier=supplier
        )

        assert done.status == "cancelled"
        assert await snapshot(store, supplier) == before
        with pytest.raises(EventRefused):
            await ReplenishmentSaga.deliver(
                delivery_key(po),
                supplier.confirmation(order_id),
                runs=runs,
                store=store,
                supplier=supplier,
            )

    async def test_undo_takes_the_received_stock_out_again(
        self, store: InventoryStore, runs: RunStore
    ) -> None:
        """Undoing a received replenishment (ReplenishmentSaga.undo) runs every
        compensation, unbook_received_stock first: the state before the run."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
        before = await snapshot(store, supplier)
        result = await order_and_receive(store, supplier, runs)
        assert (await store.get(SKU)).inventory_count == 70

        undone = await ReplenishmentSaga.undo(
            result.run_id, runs=runs, store=store, supplier=supplier
        )

        assert undone.status == "undone"
        assert undone.compensated == ("received_order", "purchase_order", "supplier_order")
        assert await snapshot(store, supplier) == before


class TestMemoryStore(ReplenishmentContract):
    @pytest.fixture
    def store(self) -> InventoryStore:
        return MemoryInventoryStore()

    @pytest.fixture
    def runs(self) -> RunStore:
        return MemoryRunStore()


class TestRedisStore(ReplenishmentContract):
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[InventoryStore]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with RedisLockProvider(client, prefix=redis_prefix) as locks:
                yield RedisInventoryStore(client, locks, prefix=redis_prefix + "inv:")
        finally:
            await client.aclose()

    @pytest.fixture
    async def runs(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RunStore]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with RedisRunStore(client, prefix=redis_prefix + "runs:") as runs:
                yield runs
        finally:
            await client.aclose()


async def test_supplier_enforces_its_limits() -> None:
    """The fake supplier refuses orders outside [min_order, max_order] or above stock,
    and cancelling returns the units once."""
    supplier = Supplier({SKU: 30}, min_order=5, max_order=20)
    for quantity in (4, 21):
        with pytest.raises(ValueError, match="outside"):
            await supplier.place_order(SKU, quantity)
    order_id = await supplier.place_order(SKU, 20)
    with pytest.raises(ValueError, match="in stock"):
        await supplier.place_order(SKU, 20)
    await supplier.cancel_order(order_id)
    await supplier.cancel_order(order_id)
    assert supplier.stock[SKU] == 30
    assert supplier.orders[order_id].cancelled
    with pytest.raises(LookupError):
        await supplier.track(order_id)


# -- a run without a store waits in its process -------------------------------------------


async def seeded() -> MemoryInventoryStore:
    store = MemoryInventoryStore()
    await store.put(Product(sku=SKU, inventory_count=20, max_stock_level=100))
    return store


async def test_without_a_store_the_run_waits_in_its_process() -> None:
    """A run without a run store waits for its confirmation in its own task; delivered
    from another task, it goes on there ("delivered") and succeeds."""
    store = await seeded()
    supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
    results: list[SagaResult[PurchaseOrder]] = []

    async def replenish() -> None:
        results.append(await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier))

    async with anyio.create_task_group() as tg:
        tg.start_soon(replenish)
        await anyio.wait_all_tasks_blocked()  # the run waits for its confirmation
        assert results == []
        order_id, po = placed_order(supplier)
        assert (await store.get(SKU)).inventory_count == 20
        delivery = await ReplenishmentSaga.deliver(
            delivery_key(po), supplier.confirmation(order_id, 40)
        )
        assert delivery.status == "delivered"

    (result,) = results
    assert (delivery.run_id, result.output.received_quantity) == (result.run_id, 40)
    assert (await store.get(SKU)).inventory_count == 60
    with pytest.raises(DuplicateEvent):
        await ReplenishmentSaga.deliver(delivery_key(po), supplier.confirmation(order_id))


async def test_without_a_store_an_early_confirmation_is_kept() -> None:
    """A confirmation delivered before the in-process run waits is kept, and taken by
    the run when it waits."""
    store = await seeded()
    supplier = PromptSupplier({SKU: 500}, min_order=10, max_order=50, runs=None, store=None)

    result = await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

    assert supplier.statuses == ["kept"]
    assert result.output.received_quantity == 50
    assert (await store.get(SKU)).inventory_count == 70


async def test_without_a_store_a_transient_write_error_after_the_delivery_is_retried() -> None:
    """received_order's write fails twice with a ConnectionError: retried, the third
    attempt books the stock."""
    store = await seeded()
    supplier = PromptSupplier({SKU: 500}, min_order=10, max_order=50, runs=None, store=None)
    flaky = FlakyStore(store, saves_ok=2, failures=2)  # purchase_order, tracked_order: ok

    result = await ReplenishmentSaga.run(product_id=SKU, store=flaky, supplier=supplier)

    assert flaky.failures == 0
    assert result.output.received_quantity == 50
    assert (await store.get(SKU)).inventory_count == 70


async def test_without_a_store_an_invalid_confirmation_is_refused() -> None:
    """An invalid payload for a run waiting in its process is refused; the run still
    waits and takes the valid one."""
    store = await seeded()
    supplier = Supplier({SKU: 500}, min_order=10, max_order=50)
    results: list[SagaResult[PurchaseOrder]] = []

    async def replenish() -> None:
        results.append(await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier))

    async with anyio.create_task_group() as tg:
        tg.start_soon(replenish)
        await anyio.wait_all_tasks_blocked()
        order_id, po = placed_order(supplier)
        with pytest.raises(InvalidEvent) as caught:
            await ReplenishmentSaga.deliver(delivery_key(po), {"quantity_received": "lots"})
        assert not caught.value.run_failed
        await anyio.wait_all_tasks_blocked()
        assert results == []
        await ReplenishmentSaga.deliver(delivery_key(po), supplier.confirmation(order_id))

    assert results[0].output.received_quantity == 50


def test_confirmation_of_the_stand_in_supplier() -> None:
    """Supplier.confirmation: the payload its webhook would post for an order."""
    supplier = Supplier({SKU: 30})
    supplier.orders["so-9"] = SupplierOrder(id="so-9", sku=SKU, quantity=7, key="po-9")
    assert supplier.confirmation("so-9") == DeliveryConfirmation(
        purchase_order_id="po-9", quantity_received=7
    )
    assert supplier.confirmation("so-9", 3).quantity_received == 3
    assert msgspec.json.encode(supplier.confirmation("so-9")) == (
        b'{"purchase_order_id":"po-9","quantity_received":7}'
    )
