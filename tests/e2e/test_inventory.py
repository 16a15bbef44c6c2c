"""The inventory example's sagas, on the in-memory store (asyncio and trio) and on Redis.

Every failure of an ``InventorySaga`` leaves stock, reservations, the log and the
replenishment queue exactly as they were; an ``AtomicReservationSaga`` that fails gives its
units back and logs the release, so the log still reconciles with the stock; concurrent
runs conserve stock exactly. Every compensation of the example's sagas, called twice in a
row (a durable run's recovery runs again one that was cut off), changes nothing the
second time.
"""

import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import (
    Compensation,
    CompensationFailed,
    InputValidationError,
    RunParked,
    Saga,
    SagaFailed,
)
from asaga.locks import Lease, RedisLockProvider
from asaga.runs import MemoryRunStore
from examples.inventory import (
    AtomicReservationSaga,
    BulkInventorySaga,
    InsufficientStock,
    InventorySaga,
    InventoryStore,
    InventoryTransferSaga,
    MemoryInventoryStore,
    Notifier,
    Product,
    RedisInventoryStore,
    ReplenishmentSaga,
    Supplier,
    Transaction,
    UnknownProduct,
    delivery_key,
)

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """An injected failure."""


class FaultyStore:
    """Delegates to a store; raises Boom on the n-th call of one method."""

    def __init__(self, inner: InventoryStore, method: str, nth: int) -> None:
        self._inner = inner
        self._method = method
        self._nth = nth
        self._calls = 0
        self.locks = inner.locks

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name != self._method:
            return target

        async def faulty(*args: Any, **kwargs: Any) -> Any:
            self._calls += 1
            if self._calls == self._nth:
                raise Boom(f"{name} #{self._calls}")
            return await target(*args, **kwargs)

        return faulty


class Overtaken:
    """Delegates to a store; before each ``apply``, another writer (which got there first)
    reserves ``units`` of the product, so the check made before the lease no longer holds."""

    def __init__(self, inner: InventoryStore, units: int) -> None:
        self._inner = inner
        self._units = units
        self.locks = inner.locks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def apply(self, lease: Lease, sku: str, d_inventory: int, d_reserved: int) -> Product:
        await self._inner.adjust(sku, 0, self._units)
        return await self._inner.apply(lease, sku, d_inventory, d_reserved)


async def snapshot(store: InventoryStore, skus: list[str]) -> dict[str, Any]:
    return {
        "products": {sku: await store.get(sku) for sku in skus},
        "log": await store.transactions(),
        "replenishments": await store.replenishments(),
    }


async def seeded_memory() -> MemoryInventoryStore:
    store = MemoryInventoryStore()
    await store.put(Product(sku="p1", inventory_count=10, reorder_point=5, max_stock_level=20))
    await store.put(Product(sku="p2", inventory_count=100, reserved_count=10))
    return store


def run_inventory(store: Any, **inputs: Any) -> Any:
    notifier = inputs.pop("notifier", Notifier())
    return InventorySaga.run(store=store, locks=store.locks, notifier=notifier, **inputs)


def reconciled(log: list[Transaction], sku: str, inventory: int, reserved: int) -> tuple[int, int]:
    """(inventory, reserved) of ``sku``: the starting counts plus every logged operation."""
    d = {"reserve": (0, 1), "release": (0, -1), "consume": (-1, -1)}
    for t in log:
        if t.sku == sku:
            inventory += d[t.operation][0] * t.quantity
            reserved += d[t.operation][1] * t.quantity
    return inventory, reserved


async def refused_under_the_lease(store: InventoryStore) -> None:
    """p1 has 10 units; another writer reserves 5 between ``availability`` and ``apply``,
    so reserving 6 is refused under the lease: nothing written, logged or queued."""
    with pytest.raises(SagaFailed) as info:
        await run_inventory(Overtaken(store, 5), product_id="p1", quantity=6, operation="reserve")
    assert info.value.step == "perform"
    assert type(info.value) is SagaFailed
    assert info.value.compensated == ()
    cause = info.value.__cause__
    assert isinstance(cause, InsufficientStock)
    assert str(cause) == "p1: inventory 10, reserved 5; cannot apply (+0, +6)"
    product = await store.get("p1")
    assert (product.inventory_count, product.reserved_count) == (10, 5)  # the other's 5 only
    assert await store.transactions() == []
    assert await store.replenishments() == {}


async def atomic_failure_after_reserve(store: InventoryStore) -> None:
    """notify fails for good after reserve: the reservation is released, and the log holds
    the reserve and the release, so it reconciles with the stock; the id is free again."""
    notifier = Notifier(failures=3)
    with pytest.raises(SagaFailed) as info:
        await AtomicReservationSaga.run(
            product_id="p1", quantity=4, reservation_id="r-1", store=store, notifier=notifier
        )
    assert info.value.step == "notify"
    assert type(info.value) is SagaFailed
    assert info.value.compensated == ("reserve",)
    assert notifier.sent == {}
    product = await store.get("p1")
    assert (product.inventory_count, product.reserved_count) == (10, 0)
    log = await store.transactions()
    assert [(t.operation, t.quantity, t.run_id) for t in log] == [
        ("reserve", 4, "r-1"),
        ("release", 4, "r-1"),
    ]
    assert reconciled(log, "p1", 10, 0) == (10, 0)
    assert await store.release("r-1") is False  # already given back: nothing more logged
    assert len(await store.transactions()) == 2
    await AtomicReservationSaga.run(
        product_id="p1", quantity=4, reservation_id="r-1", store=store, notifier=Notifier()
    )
    assert (await store.get("p1")).reserved_count == 4


async def test_reserve_release_consume() -> None:
    """Each operation changes the counts it should and logs itself."""
    store = await seeded_memory()
    notifier = Notifier()
    result = await run_inventory(
        store, product_id="p2", quantity=5, operation="reserve", notifier=notifier
    )
    assert result.output.d_reserved == 5
    await run_inventory(store, product_id="p2", quantity=3, operation="release")
    await run_inventory(store, product_id="p2", quantity=4, operation="consume")
    product = await store.get("p2")
    assert (product.inventory_count, product.reserved_count) == (96, 8)
    assert [t.operation for t in await store.transactions()] == ["reserve", "release", "consume"]
    assert list(notifier.sent.values()) == ["reserve 5 x p2"]


async def test_low_stock_queues_a_replenishment() -> None:
    """Falling below the reorder point queues a request up to the max stock level."""
    store = await seeded_memory()
    await run_inventory(store, product_id="p1", quantity=6, operation="reserve")
    assert list((await store.replenishments()).values()) == [("p1", 10)]


async def test_validation_failure_runs_no_step() -> None:
    """Bad inputs are refused up front; nothing changes."""
    store = await seeded_memory()
    before = await snapshot(store, ["p1", "p2"])
    with pytest.raises(InputValidationError) as info:
        await run_inventory(store, product_id="p 1", quantity=0, operation="steal")
    assert set(info.value.fields) == {"product_id", "quantity", "operation"}
    assert await snapshot(store, ["p1", "p2"]) == before


async def test_unknown_product_and_insufficient_stock_fail_cleanly() -> None:
    """A missing product or too little stock fails before anything is written."""
    store = await seeded_memory()
    before = await snapshot(store, ["p1", "p2"])
    with pytest.raises(SagaFailed) as info:
        await run_inventory(store, product_id="nope", quantity=1, operation="reserve")
    assert info.value.step == "product"
    with pytest.raises(SagaFailed) as info:
        await run_inventory(store, product_id="p1", quantity=11, operation="reserve")
    assert info.value.step == "availability"
    assert await snapshot(store, ["p1", "p2"]) == before


@pytest.mark.parametrize(
    ("method", "nth", "failing_step"),
    [
        ("get", 1, "product"),
        ("apply", 1, "perform"),
        ("log", 1, "transaction"),
        ("request_replenishment", 1, "replenishment"),
        ("notify", 0, "notify"),
    ],
)
async def test_failure_at_every_step_restores_everything(
    method: str, nth: int, failing_step: str
) -> None:
    """Whichever step fails, stock, log and replenishment queue are as before."""
    inner = await seeded_memory()
    before = await snapshot(inner, ["p1", "p2"])
    notifier = Notifier(failures=3 if method == "notify" else 0)
    store = FaultyStore(inner, method, nth)
    with pytest.raises(SagaFailed) as info:
        await run_inventory(
            store, product_id="p1", quantity=6, operation="reserve", notifier=notifier
        )
    assert info.value.step == failing_step
    assert type(info.value) is SagaFailed  # every compensation succeeded
    assert await snapshot(inner, ["p1", "p2"]) == before


async def test_perform_reads_nothing_replenishment_decides_from_the_write() -> None:
    """A reservation reads the product once (``product``); ``perform`` returns the counts
    its write left, and ``replenishment`` decides from them."""
    store = await seeded_memory()
    faulty = FaultyStore(store, "get", 2)  # a second read would fail the run
    result = await run_inventory(faulty, product_id="p1", quantity=6, operation="reserve")
    assert result.output.after == Product(
        sku="p1", inventory_count=10, reserved_count=6, reorder_point=5, max_stock_level=20
    )
    assert list((await store.replenishments()).values()) == [("p1", 10)]


async def test_a_change_refused_under_the_lease_writes_nothing() -> None:
    """apply's own check refuses what availability allowed, once stock moved meanwhile."""
    await refused_under_the_lease(await seeded_memory())


async def test_200_concurrent_runs_conserve_stock() -> None:
    """Random operations from 200 concurrent runs on one product: counts stay valid and
    equal to the sum of the logged operations."""
    store = MemoryInventoryStore()
    await store.put(Product(sku="hot", inventory_count=300, reserved_count=100))
    rng = random.Random(7)
    causes: list[BaseException | None] = []

    async def one() -> None:
        operation = rng.choice(["reserve", "release", "consume"])
        try:
            await run_inventory(
                store, product_id="hot", quantity=rng.randint(1, 5), operation=operation
            )
        except SagaFailed as exc:
            causes.append(exc.__cause__)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
    # Runs fail only for lack of stock: nothing else is injected here.
    assert all(isinstance(cause, InsufficientStock) for cause in causes)
    assert len(causes) < 200  # and most runs went through
    product = await store.get("hot")
    assert 0 <= product.reserved_count <= product.inventory_count
    inventory, reserved = 300, 100
    for t in await store.transactions():
        d = {
            "reserve": (0, t.quantity),
            "release": (0, -t.quantity),
            "consume": (-t.quantity, -t.quantity),
        }
        inventory += d[t.operation][0]
        reserved += d[t.operation][1]
    assert (product.inventory_count, product.reserved_count) == (inventory, reserved)


async def test_atomic_reservation_is_idempotent_and_undone() -> None:
    """The fast path reserves and logs once per id, and is released when a later step
    fails."""
    store = await seeded_memory()
    notifier = Notifier()
    args = {"product_id": "p1", "quantity": 4, "store": store, "notifier": notifier}
    first = await AtomicReservationSaga.run(reservation_id="r-1", **args)
    again = await AtomicReservationSaga.run(reservation_id="r-1", **args)  # a retried request
    assert again.output == first.output  # the same log entry, so one notification
    assert (await store.get("p1")).reserved_count == 4
    assert [t.operation for t in await store.transactions()] == ["reserve"]
    assert len(notifier.sent) == 1
    with pytest.raises(SagaFailed):
        await AtomicReservationSaga.run(
            reservation_id="r-2", **{**args, "notifier": Notifier(failures=3)}
        )
    assert (await store.get("p1")).reserved_count == 4
    assert reconciled(await store.transactions(), "p1", 10, 0) == (10, 4)


async def test_atomic_reservation_refusals_run_one_step() -> None:
    """A missing product or too little stock fails at ``reserve``, nothing written."""
    store = await seeded_memory()
    before = await snapshot(store, ["p1", "p2"])
    args = {"quantity": 4, "reservation_id": "r-1", "store": store, "notifier": Notifier()}
    with pytest.raises(SagaFailed) as info:
        await AtomicReservationSaga.run(product_id="nope", **args)
    assert (info.value.step, type(info.value.__cause__)) == ("reserve", UnknownProduct)
    with pytest.raises(SagaFailed) as info:
        await AtomicReservationSaga.run(product_id="p1", **{**args, "quantity": 11})
    assert (info.value.step, type(info.value.__cause__)) == ("reserve", InsufficientStock)
    assert str(info.value.__cause__) == "p1: inventory 10, reserved 0; cannot apply (+0, +11)"
    assert await snapshot(store, ["p1", "p2"]) == before


async def test_atomic_failure_after_reserve_releases_and_logs_it() -> None:
    """A failing notify unwinds the reservation; the log reconciles with the stock."""
    await atomic_failure_after_reserve(await seeded_memory())


async def test_expired_atomic_reservations_are_reaped() -> None:
    """A reservation not committed before its hold time is returned by the reaper, which
    logs the release."""
    store = await seeded_memory()
    assert await store.reserve("r-1", "p1", 3, ttl=1.0)
    assert await store.reserve("r-2", "p1", 2, ttl=600.0)
    assert await store.commit("r-2")
    assert await store.reap() == 0  # nothing expired yet
    assert await store.reap(now=time.time() + 60) == 1
    assert (await store.get("p1")).reserved_count == 2
    log = await store.transactions()
    assert [(t.operation, t.run_id) for t in log][-1] == ("release", "r-1")
    assert reconciled(log, "p1", 10, 0) == (10, 2)


async def test_bulk_reports_per_line_and_fails_only_if_all_fail() -> None:
    """Partial success is reported line by line; nothing succeeding fails the saga."""
    store = await seeded_memory()
    ops = [
        {"product_id": "p2", "quantity": 5, "operation": "reserve"},
        {"product_id": "nope", "quantity": 1, "operation": "reserve"},
        {"product_id": "p1", "quantity": 99, "operation": "reserve"},
    ]
    common = {"store": store, "locks": store.locks, "notifier": Notifier()}
    result = await BulkInventorySaga.run(operations=ops, **common)
    assert result.output["succeeded"] == [0]
    assert [f[0] for f in result.output["failed"]] == [1, 2]
    assert (await store.get("p2")).reserved_count == 15
    with pytest.raises(SagaFailed):
        await BulkInventorySaga.run(operations=ops[1:], **common)
    assert (await store.get("p2")).reserved_count == 15


async def test_transfer_moves_stock_and_failure_restores_both_sides() -> None:
    """A transfer moves units between locations; a failed one restores both."""
    store = MemoryInventoryStore()
    await store.put(Product(sku="p@east", inventory_count=10))
    args = {"product_id": "p", "quantity": 4, "source": "east", "destination": "west"}
    await InventoryTransferSaga.run(store=store, locks=store.locks, **args)
    assert (await store.get("p@east")).inventory_count == 6
    assert (await store.get("p@west")).inventory_count == 4
    before = await snapshot(store, ["p@east", "p@west"])
    faulty = FaultyStore(store, "log", 1)
    with pytest.raises(SagaFailed) as info:
        await InventoryTransferSaga.run(store=faulty, locks=store.locks, **args)
    assert info.value.step == "log"
    assert info.value.compensated[0] == "transfer"
    assert await snapshot(store, ["p@east", "p@west"]) == before


async def test_transfer_to_the_same_location_is_refused() -> None:
    """Source and destination must differ."""
    store = await seeded_memory()
    with pytest.raises(SagaFailed) as info:
        await InventoryTransferSaga.run(
            store=store, locks=store.locks, product_id="p1", quantity=1, source="a", destination="a"
        )
    assert "must differ" in str(info.value.__cause__)


# -- every compensation, run twice ---------------------------------------------------------


async def undo_each_twice(
    saga: type[Saga],
    results: Mapping[str, Any],
    inputs: Mapping[str, Any],
    state: Callable[[], Awaitable[Any]],
) -> list[str]:
    """Call every compensation of ``saga`` with the run's ``results`` and ``inputs``, the
    last step's first, each twice in a row: the first undoes its step (``state`` changes,
    unless the step did nothing to undo), the second changes nothing. Returns the
    compensations' names, in the order called."""
    values = {**inputs, **results}
    undos = [v for v in vars(saga).values() if isinstance(v, Compensation)]
    called = []
    for undo in reversed(undos):
        arguments = {name: values[name] for name in inspect.signature(undo.fn).parameters}
        before = await state()
        await undo(**arguments)
        once = await state()
        if results[undo.target.name] is not None:  # a step that did something
            assert once != before, f"{undo.name} undid nothing"
        await undo(**arguments)
        assert await state() == once, f"{undo.name} run again changed the store"
        called.append(undo.name)
    return called


async def inventory_undone_twice(store: InventoryStore) -> None:
    """InventorySaga's compensations (the stock, the log entry, the replenishment
    request), each run twice after a reservation that queued a request and after a
    consumption: the store is as before the run, the second calls changing nothing."""
    skus = ["p1", "p2"]
    for product_id, quantity, operation in (("p1", 6, "reserve"), ("p2", 4, "consume")):
        before = await snapshot(store, skus)
        inputs = {"product_id": product_id, "quantity": quantity, "operation": operation}
        result = await run_inventory(store, **inputs)
        assert await snapshot(store, skus) != before
        called = await undo_each_twice(
            InventorySaga,
            result.results,
            {**inputs, "store": store},
            lambda: snapshot(store, skus),
        )
        assert called == ["undo_replenishment", "undo_transaction", "undo_perform"]
        assert await snapshot(store, skus) == before
    assert (await store.replenishments()) == {}


async def transfer_undone_twice(store: InventoryStore) -> None:
    """InventoryTransferSaga's compensations (unlog, untransfer: both locations,
    unreserve_source), each run twice: both locations as before the transfer."""
    args = {"product_id": "p", "quantity": 4, "source": "east", "destination": "west"}
    await InventoryTransferSaga.run(store=store, locks=store.locks, **args)  # creates west
    skus = ["p@east", "p@west"]
    before = await snapshot(store, skus)
    result = await InventoryTransferSaga.run(store=store, locks=store.locks, **args)
    assert (await store.get("p@west")).inventory_count == 8
    called = await undo_each_twice(
        InventoryTransferSaga,
        result.results,
        {**args, "store": store},
        lambda: snapshot(store, skus),
    )
    assert called == ["unlog", "untransfer", "unreserve_source"]
    assert await snapshot(store, skus) == before


async def atomic_undone_twice(store: InventoryStore) -> None:
    """AtomicReservationSaga's ``unreserve`` twice: released once, the release logged
    once."""
    before = await store.get("p1")
    inputs = {"product_id": "p1", "quantity": 4, "reservation_id": "r-twice"}
    result = await AtomicReservationSaga.run(store=store, notifier=Notifier(), **inputs)
    called = await undo_each_twice(
        AtomicReservationSaga,
        result.results,
        {**inputs, "store": store},
        lambda: snapshot(store, ["p1"]),
    )
    assert called == ["unreserve"]
    assert await store.get("p1") == before
    log = [(t.operation, t.run_id) for t in await store.transactions()]
    assert log == [("reserve", "r-twice"), ("release", "r-twice")]


async def replenishment_undone_twice(store: InventoryStore) -> None:
    """ReplenishmentSaga's compensations (the purchase order, the supplier order), each
    run twice: the store and the supplier as before the run."""
    await store.put(Product(sku="w", inventory_count=20, max_stock_level=100))
    supplier = Supplier({"w": 500})

    async def state() -> dict[str, Any]:
        return {
            "product": await store.get("w"),
            "purchase_orders": await store.purchase_orders(),
            "supplier_stock": dict(supplier.stock),
            "orders": msgspec.to_builtins(supplier.orders),
        }

    before = await state()
    # The run waits for the supplier's delivery confirmation: durable, it parks, and the
    # confirmation delivered takes it on (and books the stock received).
    runs = MemoryRunStore()
    with pytest.raises(RunParked):
        await ReplenishmentSaga.run(product_id="w", store=store, supplier=supplier, runs=runs)
    (order,) = supplier.orders.values()
    assert order.key is not None
    delivery = await ReplenishmentSaga.deliver(
        delivery_key(order.key),
        supplier.confirmation(order.id),
        runs=runs,
        store=store,
        supplier=supplier,
    )
    assert delivery.result is not None
    called = await undo_each_twice(
        ReplenishmentSaga,
        delivery.result.results,
        {"product_id": "w", "store": store, "supplier": supplier},
        state,
    )
    assert called == ["unbook_received_stock", "undo_purchase_order", "cancel_supplier_order"]
    assert await state() == {**before, "orders": msgspec.to_builtins(supplier.orders)}
    assert supplier.live_orders() == {}


async def test_inventory_compensations_run_twice_undo_once() -> None:
    """InventorySaga: each compensation twice, the store as before the run."""
    await inventory_undone_twice(await seeded_memory())


async def test_transfer_compensations_run_twice_undo_once() -> None:
    """InventoryTransferSaga: each compensation twice, both locations as before."""
    store = MemoryInventoryStore()
    await store.put(Product(sku="p@east", inventory_count=10))
    await transfer_undone_twice(store)


async def test_atomic_compensation_run_twice_releases_once() -> None:
    """AtomicReservationSaga: ``unreserve`` twice releases and logs once."""
    await atomic_undone_twice(await seeded_memory())


async def test_replenishment_compensations_run_twice_undo_once() -> None:
    """ReplenishmentSaga: each compensation twice, store and supplier as before."""
    await replenishment_undone_twice(MemoryInventoryStore())


# -- Redis ---------------------------------------------------------------------------------


async def redis_store(redis_url: str, prefix: str) -> AsyncIterator[RedisInventoryStore]:
    """A Redis store under the test's prefix, seeded with the products the tests use."""
    client = aioredis.Redis.from_url(redis_url)
    async with RedisLockProvider(client, prefix=prefix) as locks:
        store = RedisInventoryStore(client, locks, prefix=f"{prefix}inv:")
        await store.put(Product(sku="p1", inventory_count=10, reorder_point=5, max_stock_level=20))
        await store.put(Product(sku="p2", inventory_count=100, reserved_count=10))
        await store.put(Product(sku="p@east", inventory_count=10))
        yield store
    await client.aclose()


class TestRedis:
    """The same sagas against the real server (asyncio: redis-py is asyncio-only)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisInventoryStore]:
        async for store in redis_store(redis_url, redis_prefix):
            yield store

    async def test_happy_path(self, store: RedisInventoryStore) -> None:
        """Reserve on Redis: counts, log stream and replenishment request."""
        await run_inventory(store, product_id="p1", quantity=6, operation="reserve")
        assert (await store.get("p1")).reserved_count == 6
        assert [t.quantity for t in await store.transactions()] == [6]
        assert list((await store.replenishments()).values()) == [("p1", 10)]

    @pytest.mark.parametrize(
        ("method", "nth", "failing_step"),
        [("apply", 1, "perform"), ("log", 1, "transaction"), ("notify", 0, "notify")],
    )
    async def test_failures_restore_everything(
        self, store: RedisInventoryStore, method: str, nth: int, failing_step: str
    ) -> None:
        """Failures undo the Redis writes, the stream entry and the request."""
        before = await snapshot(store, ["p1", "p2"])
        notifier = Notifier(failures=3 if method == "notify" else 0)
        with pytest.raises(SagaFailed) as info:
            await run_inventory(
                FaultyStore(store, method, nth),
                product_id="p1",
                quantity=6,
                operation="reserve",
                notifier=notifier,
            )
        assert info.value.step == failing_step
        assert await snapshot(store, ["p1", "p2"]) == before

    async def test_atomic_path_and_reaper(self, store: RedisInventoryStore) -> None:
        """The Lua reservation is idempotent, never oversells, and expires; every change
        of stock is logged by the same script."""
        entry = await store.reserve("r-1", "p1", 6, ttl=600.0)
        assert await store.reserve("r-1", "p1", 6, ttl=600.0) == entry
        with pytest.raises(InsufficientStock, match=r"^p1: inventory 10, reserved 6; "):
            await store.reserve("r-2", "p1", 5, ttl=600.0)  # only 4 left
        with pytest.raises(UnknownProduct):
            await store.reserve("r-2", "nope", 5, ttl=600.0)
        assert await store.reserve("r-3", "p1", 4, ttl=1.0)
        assert await store.commit("r-1")
        assert await store.reap() == 0  # nothing expired yet
        assert await store.reap(now=time.time() + 60) == 1
        assert (await store.get("p1")).reserved_count == 6
        assert await store.release("r-1") is False  # committed: no longer releasable
        log = await store.transactions()
        assert [(t.operation, t.run_id) for t in log] == [
            ("reserve", "r-1"),
            ("reserve", "r-3"),
            ("release", "r-3"),
        ]
        assert reconciled(log, "p1", 10, 0) == (10, 6)

    async def test_a_change_refused_under_the_lease_writes_nothing(
        self, store: RedisInventoryStore
    ) -> None:
        """The fenced script refuses what availability allowed, once stock moved."""
        await refused_under_the_lease(store)

    async def test_atomic_failure_after_reserve_releases_and_logs_it(
        self, store: RedisInventoryStore
    ) -> None:
        """A failing notify unwinds the reservation; the log reconciles with the stock."""
        await atomic_failure_after_reserve(store)

    async def test_chaos(self, store: RedisInventoryStore) -> None:
        """1,000 concurrent runs on 5 hot products with random step failures (10%) and
        caller cancellations (5%): counts reconcile with the log; nothing oversold."""
        skus = [f"hot{i}" for i in range(5)]
        for sku in skus:
            await store.put(Product(sku=sku, inventory_count=400, reserved_count=100))
        rng = random.Random(11)
        outcomes = {"ok": 0, "failed": 0, "cancelled": 0}

        async def one() -> None:
            sku = rng.choice(skus)
            operation = rng.choice(["reserve", "reserve", "release", "consume"])
            faulty: Any = store
            roll = rng.random()
            if roll < 0.10:
                faulty = FaultyStore(store, rng.choice(["apply", "log", "get"]), rng.randint(1, 3))
            cancel_after = rng.random() < 0.05
            with anyio.CancelScope() as scope:
                if cancel_after:
                    scope.deadline = anyio.current_time() + rng.uniform(0.0, 0.05)
                try:
                    await run_inventory(
                        faulty, product_id=sku, quantity=rng.randint(1, 4), operation=operation
                    )
                    outcomes["ok"] += 1
                except CompensationFailed:
                    raise
                except SagaFailed:
                    outcomes["failed"] += 1
            if scope.cancelled_caught:
                outcomes["cancelled"] += 1

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(one)
        assert sum(outcomes.values()) == 1000
        log = await store.transactions()
        for sku in skus:
            product = await store.get(sku)
            assert 0 <= product.reserved_count <= product.inventory_count
            inventory, reserved = 400, 100
            for t in log:
                if t.sku != sku:
                    continue
                d = {
                    "reserve": (0, t.quantity),
                    "release": (0, -t.quantity),
                    "consume": (-t.quantity, -t.quantity),
                }
                inventory += d[t.operation][0]
                reserved += d[t.operation][1]
            assert (product.inventory_count, product.reserved_count) == (inventory, reserved)

    async def test_atomic_chaos(self, store: RedisInventoryStore) -> None:
        """500 atomic reservations of one product, 50 at a time (the client's pool holds
        100 connections), with notify failing for good (10%), caller cancellations (5%)
        and half already expired when reaped: whatever was interrupted where, the log
        reconciles with the stock; nothing oversold."""
        await store.put(Product(sku="hot", inventory_count=800))
        rng = random.Random(13)
        limiter = anyio.CapacityLimiter(50)
        outcomes = {"ok": 0, "failed": 0, "cancelled": 0}

        async def one(n: int) -> None:
            async with limiter:
                failing = rng.random() < 0.10
                with anyio.CancelScope() as scope:
                    if rng.random() < 0.05:
                        scope.deadline = anyio.current_time() + rng.uniform(0.0, 0.02)
                    try:
                        await AtomicReservationSaga.run(
                            product_id="hot",
                            quantity=rng.randint(1, 3),
                            reservation_id=f"r-{n}",
                            hold_seconds=rng.choice([1.0, 900.0]),
                            store=store,
                            notifier=Notifier(failures=3 if failing else 0),
                        )
                        outcomes["ok"] += 1
                    except CompensationFailed:
                        raise
                    except SagaFailed:
                        outcomes["failed"] += 1
                if scope.cancelled_caught:
                    outcomes["cancelled"] += 1

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for n in range(500):
                    tg.start_soon(one, n)
        assert sum(outcomes.values()) == 500
        assert outcomes["ok"] > 0
        assert outcomes["failed"] > 0
        for _ in range(2):  # before and after returning the expired ones
            product = await store.get("hot")
            assert 0 <= product.reserved_count <= product.inventory_count
            counts = (product.inventory_count, product.reserved_count)
            assert counts == reconciled(await store.transactions(), "hot", 800, 0)
            await store.reap(now=time.time() + 60)  # the 1-second holds have expired


async def test_transfer_failing_between_its_two_writes_restores_the_source() -> None:
    """The destination write fails after the source was debited: the step puts the source
    back before failing, and the unwind leaves both locations as they were."""
    store = MemoryInventoryStore()
    await store.put(Product(sku="p@north", inventory_count=40))
    await store.put(Product(sku="p@south", inventory_count=0))
    before = await snapshot(store, ["p@north", "p@south"])
    faulty = FaultyStore(store, "apply", 3)  # reserve_source, transfer(source), transfer(dest)
    with pytest.raises(SagaFailed) as info:
        await InventoryTransferSaga.run(
            store=faulty,
            locks=store.locks,
            product_id="p",
            quantity=15,
            source="north",
            destination="south",
        )
    assert info.value.step == "transfer"
    assert type(info.value) is SagaFailed
    assert await snapshot(store, ["p@north", "p@south"]) == before


class TestRedisBulkAndTransfer:
    """BulkInventorySaga and InventoryTransferSaga against the real server."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisInventoryStore]:
        async for store in redis_store(redis_url, redis_prefix):
            yield store

    async def test_bulk(self, store: RedisInventoryStore) -> None:
        """Partial success on Redis: the good line is applied, the bad one reported."""
        ops = [
            {"product_id": "p1", "quantity": 3, "operation": "reserve"},
            {"product_id": "p1", "quantity": 99, "operation": "reserve"},
        ]
        result = await BulkInventorySaga.run(
            operations=ops, store=store, locks=store.locks, notifier=Notifier()
        )
        assert result.output["succeeded"] == [0]
        assert (await store.get("p1")).reserved_count == 3

    async def test_transfer_and_its_undo(self, store: RedisInventoryStore) -> None:
        """A transfer on Redis moves units; a failing one restores both locations."""
        args = {"product_id": "p", "quantity": 4, "source": "east", "destination": "west"}
        await InventoryTransferSaga.run(store=store, locks=store.locks, **args)
        assert (await store.get("p@east")).inventory_count == 6
        assert (await store.get("p@west")).inventory_count == 4
        before = await snapshot(store, ["p@east", "p@west"])
        for method, nth in (("log", 1), ("apply", 3)):
            with pytest.raises(SagaFailed):
                await InventoryTransferSaga.run(
                    store=FaultyStore(store, method, nth), locks=store.locks, **args
                )
            assert await snapshot(store, ["p@east", "p@west"]) == before


class TestRedisCompensationsTwice:
    """Every compensation run twice, against the real server."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisInventoryStore]:
        async for store in redis_store(redis_url, redis_prefix):
            yield store

    async def test_inventory(self, store: RedisInventoryStore) -> None:
        """InventorySaga: each compensation twice, the store as before the run."""
        await inventory_undone_twice(store)

    async def test_transfer(self, store: RedisInventoryStore) -> None:
        """InventoryTransferSaga: each compensation twice, both locations as before."""
        await transfer_undone_twice(store)

    async def test_atomic(self, store: RedisInventoryStore) -> None:
        """AtomicReservationSaga: ``unreserve`` twice releases and logs once."""
        await atomic_undone_twice(store)

    async def test_replenishment(self, store: RedisInventoryStore) -> None:
        """ReplenishmentSaga: each compensation twice, store and supplier as before."""
        await replenishment_undone_twice(store)
