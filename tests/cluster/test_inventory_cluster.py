"""The inventory example's RedisInventoryStore on a real Redis Cluster of three primaries:
the atomic path (reserve, release, commit, reap), the lease path (apply, keyed adjust),
the log, and the sagas with durable runs and leases on the cluster, products spread
over the nodes; the log reconciles with the stock, and every key is bounded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from asaga import SagaFailed
from asaga.locks import RedisLockProvider, StaleWrite
from asaga.runs import RedisRunStore
from examples.inventory import (
    AtomicReservationSaga,
    InsufficientStock,
    InventorySaga,
    InventoryTransferSaga,
    Notifier,
    Product,
    RedisInventoryStore,
    Transaction,
    UnknownProduct,
)
from examples.inventory.store import AdjustmentConflict, ReservationConflict
from tests.cluster.nodes import keys_by_node, slots_of
from tests.redis_servers import RedisClusterServers

pytestmark = pytest.mark.anyio

SKUS = [f"p{n}" for n in range(8)]
"""Products whose keys land in several slots, on every node."""


@pytest.fixture
async def store(cluster: RedisCluster, cluster_prefix: str) -> AsyncIterator[RedisInventoryStore]:
    """A store on the cluster (its lease provider too), each product with 10 units."""
    async with RedisLockProvider(cluster, prefix=cluster_prefix) as locks:
        store = RedisInventoryStore(cluster, locks, prefix=f"{cluster_prefix}inv:")
        for sku in SKUS:
            await store.put(Product(sku=sku, inventory_count=10))
        yield store


def reconciled(log: list[Transaction], sku: str, inventory: int) -> tuple[int, int]:
    """(inventory, reserved) of ``sku``: its starting stock plus every logged operation
    (a transfer's entry, under the product, changes neither)."""
    reserved = 0
    d = {"reserve": (0, 1), "release": (0, -1), "consume": (-1, -1)}
    for t in log:
        if t.sku == sku and t.operation in d:
            inventory += d[t.operation][0] * t.quantity
            reserved += d[t.operation][1] * t.quantity
    return inventory, reserved


async def assert_reconciled(store: RedisInventoryStore, inventory: int = 10) -> None:
    """Every product's counts are its starting stock plus its logged operations."""
    log = await store.transactions()
    for sku in SKUS:
        product = await store.get(sku)
        counts = (product.inventory_count, product.reserved_count)
        assert counts == reconciled(log, sku, inventory), sku


async def test_the_atomic_path_on_every_node(
    store: RedisInventoryStore, cluster: RedisCluster, redis_cluster: RedisClusterServers
) -> None:
    """Reserve (idempotent per id), conflicts (an id of another product: refused before
    anything is written; another quantity), stock refusals (the id stays free), release,
    commit and the reaper, on products of every node; the products' keys are spread over
    slots and nodes, each product's in one slot; the log reconciles; every key is
    bounded (a TTL, or one of the bounded structures)."""
    entries = {}
    for n, sku in enumerate(SKUS):
        entries[sku] = await store.reserve(f"r-{n}", sku, 3, ttl=600.0)
        assert await store.reserve(f"r-{n}", sku, 3, ttl=600.0) == entries[sku]
    with pytest.raises(ReservationConflict) as conflict:
        await store.reserve("r-0", "p1", 3, ttl=600.0)  # r-0 reserves p0
    assert (conflict.value.held_sku, conflict.value.held_quantity) == ("p0", None)
    with pytest.raises(ReservationConflict) as conflict:
        await store.reserve("r-0", "p0", 4, ttl=600.0)
    assert (conflict.value.held_sku, conflict.value.held_quantity) == ("p0", 3)
    with pytest.raises(InsufficientStock):
        await store.reserve("r-big", "p2", 8, ttl=600.0)  # 7 available
    with pytest.raises(UnknownProduct):
        await store.reserve("r-none", "nope", 1, ttl=600.0)
    assert await store.reserve("r-big", "p3", 7, ttl=600.0)  # refused before: still free
    assert await store.release("r-1") is True
    assert await store.release("r-1") is False
    assert await store.reserve("r-1", "p4", 1, ttl=600.0)  # released: free for another
    assert await store.commit("r-2") is True
    assert await store.commit("r-2") is True
    assert await store.release("r-2") is False  # committed
    assert await store.reserve("r-short", "p5", 2, ttl=1.0)
    assert await store.reap() == 0
    assert await store.reap(now=time.time() + 3600) == 9  # every pending one expired by then
    assert (await store.get("p2")).reserved_count == 3  # the committed r-2
    await assert_reconciled(store)

    placed = keys_by_node(redis_cluster.ports, store.prefix)
    assert len(placed) >= 2, placed
    products = [k for keys in placed.values() for k in keys if k.endswith(":product")]
    assert len(slots_of(products)) == len(SKUS)
    for key in products:
        base = key.removesuffix(":product")
        assert slots_of([key, f"{base}:log", f"{base}:reservations"]) == slots_of([key])
    bounded = (":product", ":log", ":reservations", ":expiry", ":committed", ":index", "skus")
    for key in (k for keys in placed.values() for k in keys):
        assert key.endswith(bounded) or await cluster.pttl(key) > 0, key


async def test_the_lease_path_and_keyed_adjustments(
    store: RedisInventoryStore, cluster: RedisCluster
) -> None:
    """apply under the product's lease (its fence key in the product's slot) writes and
    returns the product; under a lease superseded since, StaleWrite; under a lease key
    of another slot, ValueError before anything is sent. A keyed adjust lands once; other
    deltas under its key are refused. Log entries are removed by the id log() returned."""
    locks = store.locks
    async with locks.lease("inventory:p1", ttl=5.0) as stale:
        pass
    async with locks.lease("inventory:p1", ttl=5.0) as lease:
        after = await store.apply(lease, "p1", 0, 4)
        assert (after.inventory_count, after.reserved_count) == (10, 4)
        with pytest.raises(StaleWrite):
            await store.apply(stale, "p1", 0, 1)
        with pytest.raises(ValueError, match="needs the lease key inventory:p2"):
            await store.apply(lease, "p2", 0, 1)
    assert await store.adjust("p1", 0, -4, key="undo-1") is True
    assert await store.adjust("p1", 0, -4, key="undo-1") is False
    with pytest.raises(AdjustmentConflict):
        await store.adjust("p1", 0, -3, key="undo-1")
    assert (await store.get("p1")).reserved_count == 0
    entry = await store.log(Transaction(sku="p6", operation="reserve", quantity=1, run_id="x"))
    assert [t.run_id for t in await store.transactions()] == ["x"]
    await store.unlog(entry)
    assert await store.transactions() == []


async def test_the_sagas_with_durable_runs_on_the_cluster(
    store: RedisInventoryStore, cluster: RedisCluster, cluster_prefix: str
) -> None:
    """The inventory sagas run durably on the cluster (runs, leases and stock each in
    their slots): reserve, release and consume under leases, an atomic reservation, a
    transfer under a lease on two keys of different slots, and a run that unwinds; the
    log reconciles with the stock."""
    notifier = Notifier()
    locks = store.locks
    async with RedisRunStore(cluster, prefix=f"{cluster_prefix}runs:") as runs:
        for sku in SKUS[:4]:
            for operation, quantity in (("reserve", 5), ("release", 2), ("consume", 3)):
                await InventorySaga.run(
                    product_id=sku,
                    quantity=quantity,
                    operation=operation,
                    store=store,
                    locks=locks,
                    notifier=notifier,
                    runs=runs,
                )
        for n, sku in enumerate(SKUS[4:]):
            await AtomicReservationSaga.run(
                product_id=sku,
                quantity=2,
                reservation_id=f"atomic-{n}",
                store=store,
                notifier=notifier,
                runs=runs,
                idempotency_key=f"atomic-{n}",
            )
        await store.put(Product(sku="p0@east", inventory_count=10))
        await InventoryTransferSaga.run(
            product_id="p0",
            quantity=4,
            source="east",
            destination="west",
            store=store,
            locks=locks,
            runs=runs,
        )
        with pytest.raises(SagaFailed):
            await InventorySaga.run(
                product_id="p7",
                quantity=1,
                operation="reserve",
                store=store,
                locks=locks,
                notifier=Notifier(failures=10),
                runs=runs,
            )
        listed = await runs.list(limit=100)
        assert len(listed) == 12 + 4 + 1 + 1
        assert {r.status for r in listed} == {"succeeded", "failed"}
    await assert_reconciled(store)
    east, west = await store.get("p0@east"), await store.get("p0@west")
    assert (east.inventory_count, west.inventory_count) == (6, 4)
    assert (await store.get("p0")).inventory_count == 7


async def test_stock_buckets_spread_a_hot_product_over_the_nodes(
    cluster: RedisCluster, cluster_prefix: str, redis_cluster: RedisClusterServers
) -> None:
    """A product split over 6 buckets: its keys are on every node; concurrent
    reservations (grouped per bucket) grant exactly its stock; a reservation larger than
    any bucket gathers units from the others (moves across slots, each finished); a
    retry finds its bucket; release, commit and the reaper work per bucket; the log
    reconciles."""
    store = RedisInventoryStore(cluster, None, prefix=f"{cluster_prefix}inv:", buckets={"hot": 6})
    await store.put(Product(sku="hot", inventory_count=60))
    granted: list[str] = []

    async def reserve(n: int) -> None:
        granted.append(await store.reserve(f"h-{n}", "hot", 1, ttl=600.0))

    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(reserve, n)
    assert len(granted) == 50
    assert await store.reserve("h-7", "hot", 1, ttl=600.0) in granted  # a retry
    big = await store.reserve("big", "hot", 8, ttl=600.0)  # at most 2 left in any bucket
    assert big
    with pytest.raises(InsufficientStock):
        await store.reserve("too-big", "hot", 3, ttl=600.0)  # 2 left in all
    assert await store.release("h-0") is True
    assert await store.commit("h-1") is True
    assert await store.reap(now=time.time() + 3600) == 49  # every pending one but h-1
    product = await store.get("hot")
    assert (product.inventory_count, product.reserved_count) == (60, 1)
    log = await store.transactions()
    assert reconciled(log, "hot", 60) == (60, 1)

    placed = keys_by_node(redis_cluster.ports, store.prefix)
    buckets = [k for keys in placed.values() for k in keys if k.endswith(":product")]
    assert len(buckets) == 6
    assert len(placed) == 3, placed  # every node holds some of the product's stock
    bounded = (":product", ":log", ":reservations", ":expiry", ":committed", ":index", "skus")
    for key in (k for keys in placed.values() for k in keys):
        assert key.endswith(bounded) or await cluster.pttl(key) > 0, key
