"""Stock buckets in the Redis inventory store: a hot product's stock split over several
keys (each its own hash tag, so its own cluster slot), reservations spread over them, and
never a false "sold out" while the buckets together hold enough: a dry bucket sends a
reservation to the others, and units are gathered from the others when none alone holds
a reservation's quantity. Moves between buckets are recorded, added at most once, and
finished by the reaper when cut off half-way.

Each test runs with group commit (the default) and with one script call per call.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from asaga.locks import RedisLockProvider
from examples.inventory.store import (
    InsufficientStock,
    Product,
    RedisInventoryStore,
    ReservationConflict,
    UnknownProduct,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: redis-py is asyncio-only."""
    return "asyncio"


@pytest.fixture(params=["grouped", "per-call"])
async def make_store(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[..., Any]]:
    """A factory of stores where ``hot`` is split over ``buckets`` buckets and ``cold``
    is not; both seeded."""
    client = aioredis.Redis.from_url(redis_url, max_connections=400)  # 200 callers at once

    async def make(hot: int = 100, buckets: int = 4, **options: Any) -> RedisInventoryStore:
        store = RedisInventoryStore(
            client,
            None,
            prefix=f"{redis_prefix}inv:",
            buckets={"hot": buckets},
            group_commit=request.param == "grouped",
            **options,
        )
        await store.put(Product(sku="hot", inventory_count=hot, reorder_point=7))
        await store.put(Product(sku="cold", inventory_count=10))
        return store

    yield make
    await client.aclose()


async def available(store: RedisInventoryStore) -> list[int]:
    return [bucket.available for bucket in await store.buckets_of("hot")]


async def test_put_splits_the_stock_and_get_sums_it(make_store: Callable[..., Any]) -> None:
    store = await make_store(hot=10, buckets=4)
    assert await available(store) == [3, 3, 2, 2]
    assert [b.sku for b in await store.buckets_of("hot")] == [f"hot#{n}" for n in range(4)]
    product = await store.get("hot")
    assert (product.sku, product.inventory_count, product.reserved_count) == ("hot", 10, 0)
    assert product.reorder_point == 7
    slots = {key_slot(store.product_key(f"hot#{n}").encode()) for n in range(4)}
    assert len(slots) == 4  # each bucket in a slot of its own
    with pytest.raises(ValueError, match="not a bucketed product"):
        await store.buckets_of("cold")


async def test_reservations_spread_and_release_and_commit_find_their_bucket(
    make_store: Callable[..., Any],
) -> None:
    store = await make_store(hot=100, buckets=4)
    entries = {f"r-{n}": await store.reserve(f"r-{n}", "hot", 1, 60.0) for n in range(40)}
    spread = await available(store)
    assert sum(spread) == 60
    assert all(a < 25 for a in spread)  # every bucket served some
    assert await store.reserve("r-3", "hot", 1, 60.0) == entries["r-3"]  # a retry
    with pytest.raises(ReservationConflict) as conflict:
        await store.reserve("r-3", "hot", 2, 60.0)
    assert (conflict.value.held_sku, conflict.value.held_quantity) == ("hot", 1)
    with pytest.raises(ReservationConflict) as other:
        await store.reserve("r-4", "cold", 1, 60.0)
    assert other.value.held_sku == "hot"  # the product, not its bucket
    assert await store.release("r-0") is True
    assert await store.release("r-0") is False
    assert await store.commit("r-1") is True
    product = await store.get("hot")
    assert (product.inventory_count, product.reserved_count) == (100, 39)
    log = await store.transactions()
    assert {t.sku for t in log} == {"hot"}
    assert [t.operation for t in log].count("reserve") == 40
    assert [(t.operation, t.run_id) for t in log][-1] == ("release", "r-0")


async def test_a_dry_bucket_sends_a_reservation_to_the_others(
    make_store: Callable[..., Any],
) -> None:
    """10 units over 4 buckets and 30 concurrent one-unit reservations: exactly 10 are
    granted, whichever bucket each id hashes to; the rest are refused with 0 left."""
    store = await make_store(hot=10, buckets=4)
    granted: list[str] = []
    refused: list[InsufficientStock] = []

    async def reserve(n: int) -> None:
        try:
            granted.append(await store.reserve(f"r-{n}", "hot", 1, 60.0))
        except InsufficientStock as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(reserve, n)
    assert len(granted) == 10
    assert len(refused) == 20
    assert {exc.available for exc in refused} == {0}
    assert await available(store) == [0, 0, 0, 0]


async def test_units_are_gathered_when_no_bucket_alone_has_enough(
    make_store: Callable[..., Any],
) -> None:
    store = await make_store(hot=8, buckets=4)  # 2 units in each
    entry = await store.reserve("big", "hot", 5, 60.0)
    product = await store.get("hot")
    assert (product.inventory_count, product.reserved_count) == (8, 5)
    assert sum(await available(store)) == 3
    assert await store.reserve("big", "hot", 5, 60.0) == entry  # a retry finds it
    for n in range(4):
        assert not await store.client.hlen(store._moves_key(f"hot#{n}"))  # moves finished
    with pytest.raises(InsufficientStock) as sold_out:
        await store.reserve("too-big", "hot", 4, 60.0)
    assert sold_out.value.available == 3
    assert sum(await available(store)) == 3  # nothing moved for a refusal
    assert await store.release("big") is True
    assert (await store.get("hot")).reserved_count == 0


async def test_many_reservations_at_once_grant_exactly_the_stock(
    make_store: Callable[..., Any],
) -> None:
    """100 units over 8 buckets, 200 concurrent callers asking 1 to 3 units: the units
    granted never exceed the stock, and what is left is less than any refused ask
    (no false "sold out" once the rush is over)."""
    store = await make_store(hot=100, buckets=8)
    rng = random.Random(5)
    asks = [rng.randint(1, 3) for _ in range(200)]
    granted: dict[int, int] = {}
    refused: list[int] = []

    async def reserve(n: int) -> None:
        try:
            await store.reserve(f"r-{n}", "hot", asks[n], 60.0)
        except InsufficientStock:
            refused.append(asks[n])
        else:
            granted[n] = asks[n]

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(reserve, n)
    product = await store.get("hot")
    assert product.inventory_count == 100
    assert product.reserved_count == sum(granted.values()) <= 100
    assert refused
    assert 100 - sum(granted.values()) < min(refused)
    log = await store.transactions()
    assert sum(t.quantity for t in log if t.operation == "reserve") == sum(granted.values())


async def test_a_move_cut_off_half_way_is_finished_once_by_the_reaper(
    make_store: Callable[..., Any],
) -> None:
    store = await make_store(hot=8, buckets=2)
    keys = [store.product_key("hot#0"), store._moves_key("hot#0")]
    await store._take(keys=keys, args=["hot", "m-1", 3, "hot#1", store.clock()])  # then died
    assert await available(store) == [1, 4]
    assert (await store.get("hot")).inventory_count == 8  # the 3 units are on their way
    await store.reap()
    assert await available(store) == [1, 7]
    await store._finish_move("hot", "hot#0", "m-1", 3, "hot#1")  # the mover, late: no-op
    assert await available(store) == [1, 7]
    assert (await store.get("hot")).inventory_count == 8
    assert not await store.client.hlen(store._moves_key("hot#0"))


async def test_rebalance_evens_the_buckets_out(make_store: Callable[..., Any]) -> None:
    store = await make_store(hot=40, buckets=4)
    for n in range(10):
        await store.reserve(f"a-{n}", "hot", 1, 60.0)
    keys = [store.product_key("hot#2"), store._moves_key("hot#2")]
    await store._take(keys=keys, args=["hot", "m-1", 5, "hot#3", store.clock()])
    moved = await store.rebalance("hot")
    assert moved > 0
    spread = await available(store)
    assert sum(spread) == 30
    assert max(spread) - min(spread) <= 1
    assert (await store.get("hot")).inventory_count == 40


async def test_what_a_bucketed_product_refuses(make_store: Callable[..., Any]) -> None:
    store = await make_store(hot=10, buckets=2)
    with pytest.raises(ValueError, match="names a stock bucket"):
        await store.put(Product(sku="hot#1", inventory_count=5))
    with pytest.raises(UnknownProduct):
        await store.reserve("r-1", "hot#1", 1, 60.0)
    with pytest.raises(ValueError, match="split over 2 buckets"):
        await store.adjust("hot", 5, 0)
    async with (
        RedisLockProvider(store.client, prefix=store.prefix) as locks,
        locks.lease("inventory:hot", ttl=5) as lease,
    ):
        with pytest.raises(ValueError, match="split over 2 buckets"):
            await store.apply(lease, "hot", 0, 1)
    with pytest.raises(ValueError, match="buckets of 'x'"):
        RedisInventoryStore(store.client, None, buckets={"x": 1})
    with pytest.raises(UnknownProduct):
        await RedisInventoryStore(store.client, None, prefix="nothing:", buckets={"x": 2}).get("x")
    assert await available(store) == [5, 5]  # nothing written by a refusal


async def test_the_reaper_returns_expired_reservations_of_every_bucket(
    make_store: Callable[..., Any],
) -> None:
    store = await make_store(hot=20, buckets=4)
    for n in range(12):
        await store.reserve(f"r-{n}", "hot", 1, 5.0)
    assert await store.reap(now=store.clock() + 60.0) == 12
    assert await available(store) == [5, 5, 5, 5]
