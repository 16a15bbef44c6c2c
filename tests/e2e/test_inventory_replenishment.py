"""The replenishment saga of the inventory example, on the memory store (asyncio and
trio) and on the Redis store (asyncio: redis-py's client is asyncio-only).

Every failure must leave the supplier without a live order and the store without the
purchase order: the state before the run, exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import CompensationFailed, SagaFailed
from asaga.locks import RedisLockProvider
from examples.inventory import (
    InventoryStore,
    MemoryInventoryStore,
    NothingToOrder,
    Product,
    PurchaseOrder,
    RedisInventoryStore,
    ReplenishmentSaga,
    Supplier,
)

pytestmark = pytest.mark.anyio

SKU = "widget-1"
OTHER_ORDER = {"id": "po-old", "sku": "gadget", "quantity": 3, "supplier_order_id": "x-1"}


class FlakyStore:
    """Delegates to a store; every save_purchase_order after the first ``saves_ok``
    raises ConnectionError."""

    def __init__(self, inner: InventoryStore, *, saves_ok: int) -> None:
        self.inner = inner
        self.saves_ok = saves_ok

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_purchase_order(self, order_id: str, data: dict[str, Any]) -> None:
        if self.saves_ok <= 0:
            raise ConnectionError("store unavailable")
        self.saves_ok -= 1
        await self.inner.save_purchase_order(order_id, data)


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
        inventory: int,
        max_stock: int,
        supplier_stock: int,
        min_order: int,
        max_order: int,
        expected: int,
    ) -> None:
        """The order is the least of room, availability and max_order; it is placed,
        tracked and recorded as the output purchase order."""
        await self.seed(store, inventory=inventory, max_stock=max_stock)
        supplier = Supplier({SKU: supplier_stock}, min_order=min_order, max_order=max_order)

        result = await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

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
        assert supplier.stock[SKU] == supplier_stock - expected
        assert await store.purchase_orders() == {
            "po-old": OTHER_ORDER,
            order.id: msgspec.to_builtins(order),
        }
        assert await store.get(SKU) == Product(
            sku=SKU, inventory_count=inventory, max_stock_level=max_stock
        )

    async def test_stock_check_reduces_the_quantity(self, store: InventoryStore) -> None:
        """The supplier confirming fewer units than asked orders what it confirmed."""
        await self.seed(store)
        supplier = Supplier({SKU: 500}, min_order=10, max_order=50, confirmable={SKU: 25})

        result = await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

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

    async def test_transient_supplier_errors_are_retried(self, store: InventoryStore) -> None:
        """One ConnectionError per supplier call is retried away; one order results."""
        await self.seed(store)
        supplier = Supplier(
            {SKU: 500},
            min_order=10,
            max_order=50,
            fail_on={"availability": 1, "stock_check": 1, "place_order": 1, "track": 1},
        )

        result = await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

        assert list(supplier.live_orders()) == [result.output.supplier_order_id]
        assert supplier.calls.count("place_order") == 2
        assert result.output.tracking_id is not None

    async def test_lost_place_order_response_orders_once(self, store: InventoryStore) -> None:
        """A place_order that took effect but whose response was lost is retried with
        the same idempotency key: exactly one supplier order."""
        await self.seed(store)
        supplier = Supplier(
            {SKU: 500}, min_order=10, max_order=50, lose_response={"place_order": 1}
        )

        result = await ReplenishmentSaga.run(product_id=SKU, store=store, supplier=supplier)

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


class TestMemoryStore(ReplenishmentContract):
    @pytest.fixture
    def store(self) -> InventoryStore:
        return MemoryInventoryStore()


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
