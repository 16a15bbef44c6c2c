"""The inventory store at its edges: arguments out of bounds, one reservation id for two
reservations, keyed adjustments (what compensations use: at most once per key), and keys
that could grow without bound.

Each behaviour is pinned on the memory store and on the real Redis server; the Lua
scripts are also called directly, past the Python checks, with one bad argument at a
time, and must refuse it before their first write (Redis does not roll a failing script
back: what it wrote before the error stays).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from asaga import InputValidationError, SagaFailed
from asaga.locks import RedisLockProvider, StaleWrite
from examples.inventory import AtomicReservationSaga, Notifier
from examples.inventory.store import (
    MAX_QUANTITY,
    AdjustmentConflict,
    InsufficientStock,
    InventoryStore,
    MemoryInventoryStore,
    Product,
    RedisInventoryStore,
    ReservationConflict,
    UnknownProduct,
)

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: redis-py is asyncio-only (each test runs once per store instead)."""
    return "asyncio"


@pytest.fixture(params=["memory", "redis", "redis-per-call"])
async def make_store(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[..., Any]]:
    """A factory of seeded stores (p1: 10 units, p2: 10 units) of one kind."""
    client = aioredis.Redis.from_url(redis_url)

    async def make(**options: Any) -> InventoryStore:
        store: InventoryStore
        if request.param == "memory":
            store = MemoryInventoryStore(**options)
        else:  # group commit (the default), or one script call per call
            options.setdefault("group_commit", request.param == "redis")
            store = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:", **options)
        await store.put(Product(sku="p1", inventory_count=10))
        await store.put(Product(sku="p2", inventory_count=10))
        return store

    yield make
    await client.aclose()


async def state(store: InventoryStore) -> dict[str, Any]:
    """What the store holds, as its public reads see it."""
    return {
        "p1": await store.get("p1"),
        "p2": await store.get("p2"),
        "log": await store.transactions(),
    }


# -- 9. bounds, checked before anything is written -------------------------------------------

BAD_TTLS = [math.nan, math.inf, -math.inf, 0.0, -1.0, 86_400.5, True, "60"]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_a_hold_out_of_bounds_is_refused_and_writes_nothing(
    make_store: Callable[..., Any], ttl: Any
) -> None:
    """NaN, infinities, 0, negatives and more than a day are refused with ValueError, and
    nothing is reserved (NaN used to fail the Redis script after it had reserved, leaving
    units reserved that no index could free)."""
    store = await make_store()
    await store.reserve("r-0", "p1", 1, 60.0)
    before = await state(store)
    with pytest.raises(ValueError, match=r"^ttl must be a number of seconds in \(0, 86400\]"):
        await store.reserve("r-1", "p1", 2, ttl)
    assert await state(store) == before
    assert await store.release("r-1") is False


@pytest.mark.parametrize(
    ("reservation_id", "sku", "quantity", "field"),
    [
        ("r-1", "p1", 0, "quantity"),
        ("r-1", "p1", -3, "quantity"),
        ("r-1", "p1", 2.0, "quantity"),
        ("r-1", "p1", True, "quantity"),
        ("r-1", "p1", MAX_QUANTITY + 1, "quantity"),
        ("", "p1", 2, "reservation_id"),
        ("r" * 1025, "p1", 2, "reservation_id"),
        ("r-1", "", 2, "sku"),
    ],
)
async def test_reserve_arguments_out_of_bounds_are_refused(
    make_store: Callable[..., Any], reservation_id: str, sku: str, quantity: Any, field: str
) -> None:
    """Quantities, ids and SKUs out of bounds: ValueError naming the field, nothing
    written."""
    store = await make_store()
    before = await state(store)
    with pytest.raises(ValueError, match=f"^{field} must be"):
        await store.reserve(reservation_id, sku, quantity, 60.0)
    assert await state(store) == before


@pytest.mark.parametrize("delta", [MAX_QUANTITY + 1, -MAX_QUANTITY - 1, 1.5, math.nan, False])
async def test_adjust_deltas_out_of_bounds_are_refused(
    make_store: Callable[..., Any], delta: Any
) -> None:
    """``adjust`` takes int deltas within MAX_QUANTITY only."""
    store = await make_store()
    before = await state(store)
    with pytest.raises(ValueError, match=r"^d_inventory must be an int"):
        await store.adjust("p1", delta, 0)
    assert await state(store) == before


@pytest.mark.parametrize("hold_seconds", [math.nan, math.inf, 0.0, -5.0, 86_401.0])
async def test_the_saga_refuses_a_hold_out_of_bounds(
    make_store: Callable[..., Any], hold_seconds: float
) -> None:
    """AtomicReservationSaga validates ``hold_seconds`` (above 0, at most a day) before
    any step runs."""
    store = await make_store()
    before = await state(store)
    with pytest.raises(InputValidationError, match="hold_seconds"):
        await AtomicReservationSaga.run(
            product_id="p1",
            quantity=2,
            reservation_id="r-1",
            hold_seconds=hold_seconds,
            store=store,
            notifier=Notifier(),
        )
    assert await state(store) == before


# -- 10. one reservation id, one reservation ------------------------------------------------


async def test_one_id_for_two_products_is_refused(make_store: Callable[..., Any]) -> None:
    """Reserving an id held for another product raises ReservationConflict naming the id
    and both products, alike on both stores; the first reservation stands and is still
    the one its id releases (Redis used to reserve again and re-point the id)."""
    store = await make_store()
    entry = await store.reserve("r-1", "p1", 2, 60.0)
    before = await state(store)
    with pytest.raises(ReservationConflict) as info:
        await store.reserve("r-1", "p2", 2, 60.0)
    assert str(info.value) == (
        "reservation id 'r-1' already reserves p1; refused 2 x p2 under the same id"
    )
    assert (info.value.held_sku, info.value.sku) == ("p1", "p2")
    assert await state(store) == before
    assert await store.reserve("r-1", "p1", 2, 60.0) == entry  # still idempotent
    assert await store.release("r-1") is True
    assert ((await store.get("p1")).reserved_count, (await store.get("p2")).reserved_count) == (
        0,
        0,
    )


@pytest.mark.parametrize("committed", [False, True], ids=["pending", "committed"])
async def test_one_id_for_another_quantity_is_refused(
    make_store: Callable[..., Any], committed: bool
) -> None:
    """The same id, product and quantity again returns the first entry; another quantity
    is refused with ReservationConflict, pending or committed."""
    store = await make_store()
    entry = await store.reserve("r-1", "p1", 2, 60.0)
    if committed:
        assert await store.commit("r-1")
    assert await store.reserve("r-1", "p1", 2, 60.0) == entry
    before = await state(store)
    with pytest.raises(ReservationConflict) as info:
        await store.reserve("r-1", "p1", 3, 60.0)
    assert str(info.value) == (
        "reservation id 'r-1' already reserves 2 x p1; refused 3 x p1 under the same id"
    )
    assert (info.value.held_quantity, info.value.quantity) == (2, 3)
    assert await state(store) == before


async def test_the_conflict_fails_the_saga_at_reserve(make_store: Callable[..., Any]) -> None:
    """AtomicReservationSaga with a reused id fails at ``reserve``, which compensates
    nothing: the other product's reservation is not released by it."""
    store = await make_store()
    args = {"quantity": 2, "reservation_id": "r-1", "store": store, "notifier": Notifier()}
    await AtomicReservationSaga.run(product_id="p1", **args)
    before = await state(store)
    with pytest.raises(SagaFailed) as info:
        await AtomicReservationSaga.run(product_id="p2", **args)
    assert info.value.step == "reserve"
    assert info.value.compensated == ()
    assert isinstance(info.value.__cause__, ReservationConflict)
    assert await state(store) == before


# -- keyed adjustments: at most once per product and key -------------------------------------


async def test_a_keyed_adjust_lands_once(make_store: Callable[..., Any]) -> None:
    """The same key, product and deltas again changes nothing and returns False; the key
    is the product's (another product's same key applies); a keyless adjust adds every
    time."""
    store = await make_store()
    assert await store.adjust("p1", 0, 3, key="undo-1") is True
    after = await state(store)
    assert await store.adjust("p1", 0, 3, key="undo-1") is False
    assert await state(store) == after
    assert (await store.get("p1")).reserved_count == 3
    assert await store.adjust("p2", 0, 3, key="undo-1") is True
    assert (await store.get("p2")).reserved_count == 3
    assert await store.adjust("p1", 0, -1) is True
    assert await store.adjust("p1", 0, -1) is True
    assert (await store.get("p1")).reserved_count == 1


async def test_a_refused_keyed_adjust_marks_nothing(make_store: Callable[..., Any]) -> None:
    """A keyed adjust refused (InsufficientStock, UnknownProduct) writes neither the
    counts nor the key: the same call applies once the stock allows it."""
    store = await make_store()
    before = await state(store)
    with pytest.raises(InsufficientStock, match=r"^p1: inventory 10, reserved 0; "):
        await store.adjust("p1", -11, 0, key="k")
    with pytest.raises(UnknownProduct):
        await store.adjust("nope", 1, 0, key="k")
    assert await state(store) == before
    await store.adjust("p1", 1, 0)  # a delivery
    assert await store.adjust("p1", -11, 0, key="k") is True
    assert await store.adjust("p1", -11, 0, key="k") is False
    assert (await store.get("p1")).inventory_count == 0


async def test_one_key_for_other_deltas_is_refused(make_store: Callable[..., Any]) -> None:
    """A key that applied other deltas to the product raises AdjustmentConflict naming
    both, alike on both stores; nothing written."""
    store = await make_store()
    assert await store.adjust("p1", 0, 3, key="k")
    before = await state(store)
    with pytest.raises(AdjustmentConflict) as info:
        await store.adjust("p1", 0, 4, key="k")
    assert str(info.value) == (
        "adjustment key 'k' already applied (+0, +3) to p1; refused (+0, +4) under the same key"
    )
    assert (info.value.held, info.value.d_reserved) == ((0, 3), 4)
    assert await state(store) == before
    assert await store.adjust("p1", 0, 3, key="k") is False  # the same deltas: a retry


@pytest.mark.parametrize(
    ("key", "d_inventory", "field"),
    [("", 1, "key"), ("k" * 1025, 1, "key"), (7, 1, "key"), ("k", 1.5, "d_inventory")],
)
async def test_adjust_keys_out_of_bounds_are_refused(
    make_store: Callable[..., Any], key: Any, d_inventory: Any, field: str
) -> None:
    """Keys of 1 to MAX_ID_LENGTH bytes only, and the deltas as without a key:
    ValueError naming the argument, nothing written (the key is not marked either)."""
    store = await make_store()
    before = await state(store)
    with pytest.raises(ValueError, match=f"^{field} must be"):
        await store.adjust("p1", d_inventory, 0, key=key)
    assert await state(store) == before
    if isinstance(key, str) and key:
        assert await store.adjust("p1", 1, 0, key=key[:1024]) is True


@pytest.mark.parametrize("make_store", ["memory"], indirect=True)
async def test_memory_adjustment_keys_are_forgotten_after_the_retention(
    make_store: Callable[..., Any],
) -> None:
    """The memory store remembers a key for ``retention`` seconds (of its clock), then
    forgets it: the marks stay bounded by the keyed adjusts of one retention."""
    clock = Clock()
    store = await make_store(retention=3600.0, clock=clock)
    assert isinstance(store, MemoryInventoryStore)
    assert await store.adjust("p1", 1, 0, key="k-0")
    clock.now += 3599
    assert await store.adjust("p1", 1, 0, key="k-0") is False  # still remembered
    for n in range(1, 4):
        assert await store.adjust("p1", 1, 0, key=f"k-{n}")
    clock.now += 2
    assert await store.adjust("p1", 1, 0, key="k-0") is True  # forgotten: applied again
    assert len(store._adjusted) == 4  # k-1..k-3, and k-0 again
    clock.now += 3601
    assert await store.reap() == 0
    assert store._adjusted == {}


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_redis_adjustment_marks_expire_after_the_retention(
    make_store: Callable[..., Any],
) -> None:
    """On Redis, a key's mark is ``{sku}:adjusted:<key>`` (the product's slot), holding
    the deltas, with the store's ``retention`` as its TTL: the marks are bounded by the
    keyed adjusts of one retention. Once it has expired, the key applies again."""
    store = await make_store(retention=3600.0)
    assert isinstance(store, RedisInventoryStore)
    await store.adjust("p1", 2, 0, key="k-0")
    await store.adjust("p2", 0, 1, key="k-0")
    mark = store._adjusted_key("p1", "k-0")
    assert mark == f"{store.prefix}{{p1}}:adjusted:k-0"
    assert await store.client.get(mark) == b"2 0"
    assert 3_590_000 < await store.client.pttl(mark) <= 3_600_000
    assert await redis_keys(store) == {
        "skus",
        "{p1}:product",
        "{p2}:product",
        "{p1}:adjusted:k-0",
        "{p2}:adjusted:k-0",
    }
    short = await make_store(retention=0.05)
    assert await short.adjust("p1", 1, 0, key="k-1") is True
    assert await short.adjust("p1", 1, 0, key="k-1") is False
    await anyio.sleep(0.2)
    assert not await store.client.exists(store._adjusted_key("p1", "k-1"))
    assert await short.adjust("p1", 1, 0, key="k-1") is True  # forgotten: applied again


# -- bounds on what the stores keep ----------------------------------------------------------


async def test_the_log_keeps_its_newest_entries(make_store: Callable[..., Any]) -> None:
    """The transaction log is bounded by ``log_max_entries`` (on Redis, XADD MAXLEN ~:
    at most one stream node more)."""
    store = await make_store(log_max_entries=10)
    for n in range(150):
        await store.reserve(f"r-{n}", "p1" if n % 2 else "p2", 1, 60.0)
        await store.release(f"r-{n}")
    log = await store.transactions()
    if isinstance(store, RedisInventoryStore):
        node = int(
            (await store.client.config_get("stream-node-max-entries"))["stream-node-max-entries"]
        )
        assert 10 <= len(log) <= 10 + node
    else:
        assert len(log) == 10
    assert (log[-1].operation, log[-1].run_id) == ("release", "r-149")


async def test_committed_reservations_are_forgotten_after_their_retention(
    make_store: Callable[..., Any],
) -> None:
    """A committed reservation stays idempotent for ``retention`` seconds, then is
    forgotten: by the reaper, and by later commits of the product (2 per commit) without
    one."""
    clock = Clock()
    store = await make_store(retention=3600.0, clock=clock)
    first = await store.reserve("r-0", "p1", 1, 60.0)
    assert await store.commit("r-0")
    clock.now += 3599
    assert await store.reserve("r-0", "p1", 1, 60.0) == first  # still remembered
    clock.now += 2
    for n in range(1, 4):  # the commits forget r-0 on their own
        await store.reserve(f"r-{n}", "p1", 1, 60.0)
        assert await store.commit(f"r-{n}")
    again = await store.reserve("r-0", "p1", 1, 60.0)  # forgotten: a new reservation
    assert again != first
    clock.now += 3601
    assert await store.reap() == 1  # r-0 again (pending, expired); r-1..r-3 forgotten
    if isinstance(store, RedisInventoryStore):
        assert await redis_keys(store) == {"skus", "{p1}:product", "{p2}:product", "log"}


async def redis_keys(store: RedisInventoryStore) -> set[str]:
    """The store's keys, without its prefix."""
    keys = [k.decode() async for k in store.client.scan_iter(match=f"{store.prefix}*")]
    return {k.removeprefix(store.prefix) for k in keys}


@pytest.mark.parametrize("make_store", ["redis"], indirect=True)
async def test_every_redis_key_has_a_ttl_or_a_bound(make_store: Callable[..., Any]) -> None:
    """After reservations pending, released, committed and reaped, every key the Redis
    store wrote is one whose size is bounded: the product hashes and the SKU set by the
    products, the log by ``log_max_entries``, the reservation hash, expiry and index by
    the pending reservations (each holds a unit) plus the committed ones within their
    retention. No other key exists."""
    clock = Clock()
    store = await make_store(retention=3600.0, clock=clock, log_max_entries=20)
    assert isinstance(store, RedisInventoryStore)
    await store.put(Product(sku="p1", inventory_count=100))
    for n in range(40):
        await store.reserve(f"r-{n}", "p1", 1, 60.0)
        if n % 3 == 0:
            await store.commit(f"r-{n}")
        elif n % 3 == 1:
            await store.release(f"r-{n}")
        if n == 4:
            await store.reserve("r-held", "p2", 1, 60.0)
    c = store.client
    p = store.prefix
    pending = await c.zcard(f"{p}{{p1}}:expiry")
    committed = await c.zcard(f"{p}{{p1}}:committed")
    assert (pending, committed) == (13, 14)
    assert (await store.get("p1")).reserved_count == pending + committed
    assert await c.hlen(f"{p}{{p1}}:reservations") == pending + committed
    assert await c.hlen(f"{p}reservation-index") == pending + committed + 1
    assert await c.xlen(f"{p}log") <= 20 + 100
    for key in await redis_keys(store):  # no key without a TTL outside these
        assert (
            key
            in {
                "skus",
                "log",
                "reservation-index",
                "{p1}:product",
                "{p1}:reservations",
                "{p1}:expiry",
                "{p1}:committed",
                "{p2}:product",
                "{p2}:reservations",
                "{p2}:expiry",
            }
            or await c.ttl(f"{p}{key}") > 0
        ), key
    clock.now += 3601
    assert await store.reap() == pending + 1
    assert await redis_keys(store) == {"skus", "{p1}:product", "{p2}:product", "log"}


# -- the scripts themselves, past the Python checks ------------------------------------------


@pytest.fixture
async def redis_store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisInventoryStore]:
    """p1 with a pending reservation (r-1) and a committed one (r-c) whose retention has
    ended, so that a commit or a reap would forget it; a fence for the lease key."""
    client = aioredis.Redis.from_url(redis_url)
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        store = RedisInventoryStore(client, locks, prefix=f"{redis_prefix}inv:", retention=1.0)
        await store.put(Product(sku="p1", inventory_count=10))
        await store.reserve("r-1", "p1", 2, 60.0)
        await store.reserve("r-c", "p1", 1, 60.0)
        await store.commit("r-c")
        await client.zadd(store._committed_key("p1"), {"r-c": 1.0})  # due to be forgotten
        await client.set(locks.fence_key("inventory:p1"), 5)
        # Bucket 0 of p1 as a bucketed store would hold it: what the take script moves from.
        await client.hset(store.product_key("p1#0"), mapping={"inventory_count": 5})
        yield store
    await client.aclose()


async def dump(store: RedisInventoryStore) -> dict[bytes, Any]:
    """Every key under the store's prefix and the lock provider's, serialized."""
    prefix = store.prefix.removesuffix("inv:")
    keys = [k async for k in store.client.scan_iter(match=f"{prefix}*")]
    return {k: await store.client.dump(k) for k in sorted(keys)}


def script_cases() -> list[tuple[str, str, list[Any], int, list[Any]]]:
    """(script, argument name, good arguments, index of the bad one, bad values)."""
    at = str(NOW)
    numbers = ["nan", "inf", "-inf", "0", "-1", "", "abc", "0x10", " 5", "1e999"]
    integers = ["nan", "inf", "1.5", "1e3", "0x10", " 2", "", "abc", "99999999999999999"]
    cases: list[tuple[str, str, list[Any], int, list[Any]]] = []

    def add(script: str, good: list[Any], names: list[str], bad: dict[str, list[Any]]) -> None:
        for index, name in enumerate(names):
            if name in bad:
                cases.append((script, name, good, index, bad[name]))

    add(
        "adjust",
        ["0", "1"],
        ["d_inventory", "d_reserved"],
        {
            "d_inventory": [*integers, str(MAX_QUANTITY + 1), None],
            "d_reserved": [*integers, str(-MAX_QUANTITY - 1), None],
        },
    )
    add(
        "adjust_once",
        ["0", "1", "k-1", "3600"],
        ["d_inventory", "d_reserved", "key", "retention"],
        {
            "d_inventory": [*integers, str(MAX_QUANTITY + 1), None],
            "d_reserved": [*integers, str(-MAX_QUANTITY - 1), None],
            "key": ["", "k" * 1025, "k-2", "k", "k-1 ", None],
            "retention": [*numbers, "1e9", None],
        },
    )
    add(
        "apply",
        ["0", "1", "7"],
        ["d_inventory", "d_reserved", "token"],
        {
            "d_inventory": integers,
            "d_reserved": integers,
            "token": [*integers, "0", "-7", None],
        },
    )
    add(
        "reserve",
        ["r-2", "p1", "2", "60", at, "1000"],
        ["reservation_id", "sku", "quantity", "ttl", "at", "log_max_entries"],
        {
            "reservation_id": ["", "r" * 1025, None],
            "sku": ["", "p2", "p", None],
            "quantity": [*integers, "0", "-2", str(MAX_QUANTITY + 1)],
            "ttl": [*numbers, "86401"],
            "at": [*numbers, "1e12"],
            "log_max_entries": [*integers, "0"],
        },
    )
    add(
        "release",
        ["r-1", "p1", at, "1000"],
        ["reservation_id", "sku", "at", "log_max_entries"],
        {
            "reservation_id": ["", None],
            "sku": ["", "p2", None],
            "at": numbers,
            "log_max_entries": [*integers, "0"],
        },
    )
    add(
        "commit",
        ["r-1", at, "3600"],
        ["reservation_id", "at", "retention"],
        {"reservation_id": ["", None], "at": numbers, "retention": [*numbers, "1e9"]},
    )
    reserve = '["reserve","r-2",2,60]'
    add(
        "group",
        ["p1", at, "1000", "3600", f'[{reserve},["commit","r-1"]]'],
        ["sku", "at", "log_max_entries", "retention", "operations"],
        {
            "sku": ["", "p2", "p", None],
            "at": [*numbers, "1e12"],
            "log_max_entries": [*integers, "0"],
            "retention": [*numbers, "1e9"],
            "operations": [
                None,
                "",
                "[",
                "{}",
                "[]",
                '"reserve"',
                f"[{reserve}," + ",".join(['["commit","r-1"]'] * 1000) + "]",  # 1001
                f'[{reserve},["commit","r-1"]]junk',
            ],
        },
    )
    # One bad field of the second operation: the first (good) is not written either.
    for name, bad in [
        ("operation", ['["consume","r-1"]', '["Commit","r-1"]', '[null,"r-1"]', "[1]"]),
        ("operation", ['["commit","r-1",0]', '["release","r-1",1,2]', '["reserve","r-3",1]']),
        ("operation", ['["reserve","r-3",1,60,0]', "[]", "null", '"commit"']),
        ("reservation_id", ['["commit",""]', '["commit",7]', '["commit"]', '["commit",null]']),
        ("reservation_id", [f'["commit","{"r" * 1025}"]', '["reserve",["r-3"],1,60]']),
        ("quantity", ['["reserve","r-3",0,60]', '["reserve","r-3",-1,60]']),
        ("quantity", ['["reserve","r-3",1.5,60]', '["reserve","r-3","1",60]']),
        ("quantity", ['["reserve","r-3",1000000001,60]', '["reserve","r-3",1e999,60]']),
        ("quantity", ['["reserve","r-3",null,60]', '["reserve","r-3",nan,60]']),
        ("ttl", ['["reserve","r-3",1,0]', '["reserve","r-3",1,-1]', '["reserve","r-3",1,"60"]']),
        ("ttl", ['["reserve","r-3",1,86401]', '["reserve","r-3",1,1e999]']),
        ("ttl", ['["reserve","r-3",1,null]', '["reserve","r-3",1,nan]']),
    ]:
        cases.append(
            (
                "group",
                name,
                ["p1", at, "1000", "3600", f'[{reserve},["commit","r-1"]]'],
                4,
                [f"[{reserve},{second}]" for second in bad],
            )
        )
    add(
        "take",
        ["p1", "m-1", "2", "p1#1", at],
        ["sku", "move_id", "quantity", "to", "at"],
        {
            "sku": ["", "p2", "p1#0", None],  # p1#0: the bucket's own name, not its SKU
            "move_id": ["", "m" * 1025, None],
            "quantity": [*integers, "0", "-2", str(MAX_QUANTITY + 1)],
            "to": ["", "p1#0", "p2#1", "p1#", "p1#1234", "p1#x", "p1", None],
            "at": numbers,
        },
    )
    add(
        "forget",
        [at, "10"],
        ["now", "limit"],
        {"now": numbers, "limit": [*integers, "0", "10001"]},
    )
    return cases


def script_keys(store: RedisInventoryStore, script: str) -> list[str]:
    """The keys the store passes to ``script`` for p1."""
    fence = [store.locks.fence_key("inventory:p1"), store.locks.stale_key("inventory:p1")]
    return {
        "adjust": [store.product_key("p1")],
        "adjust_once": [store.product_key("p1"), store._adjusted_key("p1", "k-1")],
        "apply": [store.product_key("p1"), *fence],
        "reserve": store._atomic_keys("p1"),
        "release": store._atomic_keys("p1"),
        "commit": [
            store._reservations_key("p1"),
            store._expiry_key("p1"),
            store._committed_key("p1"),
            store._index_key,
        ],
        "forget": [store._reservations_key("p1"), store._committed_key("p1"), store._index_key],
        "group": store._group_keys("p1"),
        "take": [store.product_key("p1#0"), store._moves_key("p1#0")],
    }[script]


def test_every_script_of_the_store_is_checked() -> None:
    """The cases below cover every script the Redis store registers."""

    class Client:
        def register_script(self, text: str) -> str:
            return text

    store = RedisInventoryStore(Client(), None)
    registered = {
        k.lstrip("_") for k, v in vars(store).items() if isinstance(v, str) and "redis.call" in v
    }
    assert registered == {case[0] for case in script_cases()}


@pytest.mark.parametrize(
    ("script", "name", "good", "index", "bad"),
    [
        pytest.param(*case[:4], bad, id=f"{case[0]}-{case[1]}={bad!r}")
        for case in script_cases()
        for bad in case[4]
    ],
)
async def test_a_script_refuses_a_bad_argument_before_writing(
    redis_store: RedisInventoryStore,
    script: str,
    name: str,
    good: list[Any],
    index: int,
    bad: Any,
) -> None:
    """Called directly with one bad argument (or without it), each script replies
    ``BAD_ARGUMENT <name> ...`` and every key is as it was."""
    store = redis_store
    args = list(good)
    if bad is None:
        del args[index:]  # missing
    else:
        args[index] = bad
    before = await dump(store)
    with pytest.raises(ResponseError, match=f"^BAD_ARGUMENT {name} "):
        await getattr(store, f"_{script}")(keys=script_keys(store, script), args=args)
    assert await dump(store) == before


@pytest.mark.parametrize(
    "script",
    ["adjust", "adjust_once", "apply", "reserve", "release", "commit", "forget", "group", "take"],
)
async def test_the_good_arguments_of_the_script_cases_are_accepted(
    redis_store: RedisInventoryStore, script: str
) -> None:
    """The cases above break one argument of a call that the script accepts."""
    store = redis_store
    goods = dict.fromkeys(tuple(case[2]) for case in script_cases() if case[0] == script)
    for good in goods:
        await getattr(store, f"_{script}")(keys=script_keys(store, script), args=list(good))


async def test_the_group_script_refuses_an_argument_too_many(
    redis_store: RedisInventoryStore,
) -> None:
    store = redis_store
    before = await dump(store)
    args = ["p1", str(NOW), "1000", "3600", '[["commit","r-1"]]', "extra"]
    with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT operations "):
        await store._group(keys=store._group_keys("p1"), args=args)
    assert await dump(store) == before


async def test_the_adjust_once_script_writes_the_counts_and_the_mark_together(
    redis_store: RedisInventoryStore,
) -> None:
    """Called directly: refused for stock (INSUFFICIENT_STOCK) or for another product's
    mark key (BAD_ARGUMENT), nothing written; applied, the counts and the mark change in
    the one call (1); called again, nothing changes (0); other deltas under the key,
    ADJUSTMENT_CONFLICT, nothing written."""
    store = redis_store
    keys = script_keys(store, "adjust_once")
    before = await dump(store)
    with pytest.raises(ResponseError, match="INSUFFICIENT_STOCK"):
        await store._adjust_once(keys=keys, args=["-11", "0", "k-1", "3600"])
    other = [store.product_key("p1"), store._adjusted_key("p2", "k-1")]
    with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT key "):
        await store._adjust_once(keys=other, args=["0", "-1", "k-1", "3600"])
    assert await dump(store) == before
    assert await store._adjust_once(keys=keys, args=["0", "-1", "k-1", "3600"]) == 1
    assert (await store.get("p1")).reserved_count == 2
    assert await store.client.get(keys[1]) == b"0 -1"
    applied = await dump(store)
    assert await store._adjust_once(keys=keys, args=["0", "-1", "k-1", "3600"]) == 0
    with pytest.raises(ResponseError, match=r"^ADJUSTMENT_CONFLICT 0 -1$"):
        await store._adjust_once(keys=keys, args=["0", "-2", "k-1", "3600"])
    assert await dump(store) == applied


async def test_a_script_refusal_is_a_value_error(redis_store: RedisInventoryStore) -> None:
    """The store raises a script's BAD_ARGUMENT reply as ValueError naming the argument."""
    store = redis_store
    args = ["r-2", "p1", 2, "nan", NOW, 1000]
    with pytest.raises(ValueError, match=r'^refused by the store\'s script: ttl "nan": not a '):
        await store._scripted(store._reserve, store._atomic_keys("p1"), args, "p1")


async def test_apply_refuses_a_token_past_the_grants_block(
    redis_store: RedisInventoryStore,
) -> None:
    """The apply script checks the provider's rule: current iff the lease key is held and
    grant <= token < grant + MAX_FAIRNESS (the fixture's grant is 5); a token above the
    block (a grant from a clock ahead, before a data loss) is stale."""
    from asaga.locks._redis import MAX_FAIRNESS

    store = redis_store
    keys = script_keys(store, "apply")
    before = await dump(store)
    for token in (4, 5 + MAX_FAIRNESS):
        with pytest.raises(ResponseError, match="STALE_WRITE"):
            await store._apply(keys=keys, args=["0", "1", str(token)])
    assert await store.client.get(keys[2]) == b"2"  # both counted
    await store._apply(keys=keys, args=["0", "1", str(4 + MAX_FAIRNESS)])
    assert await dump(store) != before


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_stale_apply_names_the_lease_key_and_token(
    kind: str, redis_url: str, redis_prefix: str
) -> None:
    """A write under a lease that no longer holds its key raises StaleWrite naming the
    lease key (not the SKU) and the write's token, worded alike by both stores; a bad
    delta under such a lease is a ValueError, not counted as stale."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisLockProvider(client, prefix=redis_prefix) as redis_locks:
            store: InventoryStore
            if kind == "memory":
                store = MemoryInventoryStore()
            else:
                store = RedisInventoryStore(client, redis_locks, prefix=f"{redis_prefix}inv:")
            await store.put(Product(sku="p1", inventory_count=10))
            async with store.locks.lease("inventory:p1", ttl=5.0) as old:
                pass  # released: no longer current
            with pytest.raises(ValueError, match=r"^d_inventory must be"):
                await store.apply(old, "p1", 1.5, 0)  # type: ignore[arg-type]
            with pytest.raises(StaleWrite) as info:
                await store.apply(old, "p1", 0, 1)
            assert info.value.keys == ("inventory:p1",)
            assert info.value.token == old.token
            assert str(info.value) == (
                f"write under lease token {old.token} on 'inventory:p1' rejected: the lease "
                "no longer holds the key (it expired, or another lease was granted since)"
            )
            if isinstance(store, MemoryInventoryStore):
                assert store.stale_writes == 1
            else:  # an ended lease is refused before anything is sent: not counted
                assert await redis_locks.stale_count("inventory:p1") == 0
            assert (await store.get("p1")).reserved_count == 0
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_apply_refuses_a_lease_that_ended_while_the_next_holder_has_its_grant(
    kind: str, redis_url: str, redis_prefix: str
) -> None:
    """After a local hand-on the next holder has the next token of the same grant, which
    the apply script's range check would accept from the lease that ended: apply refuses
    an ended lease (Lease.ended) with StaleWrite, before sending anything."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisLockProvider(client, prefix=redis_prefix) as redis_locks:
            store: InventoryStore
            if kind == "memory":
                store = MemoryInventoryStore()
            else:
                store = RedisInventoryStore(client, redis_locks, prefix=f"{redis_prefix}inv:")
            await store.put(Product(sku="p1", inventory_count=10))
            leases: list[Any] = []
            second_holds = anyio.Event()
            done = anyio.Event()

            async def first() -> None:
                async with store.locks.lease("inventory:p1", ttl=5.0) as lease:
                    leases.append(lease)
                    while not store.locks._leases._queues["inventory:p1"].waiters:
                        await anyio.lowlevel.checkpoint()

            async def second() -> None:
                async with store.locks.lease("inventory:p1", ttl=5.0) as lease:
                    leases.append(lease)
                    second_holds.set()
                    await done.wait()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first)
                    tg.start_soon(second)
                    await second_holds.wait()
                    ended, current = leases
                    assert ended.ended
                    assert not current.ended
                    if kind == "redis":  # handed on within the grant: the next token
                        assert current.token == ended.token + 1
                    with pytest.raises(StaleWrite) as info:
                        await store.apply(ended, "p1", 0, 1)
                    assert info.value.token == ended.token
                    assert (await store.get("p1")).reserved_count == 0
                    await store.apply(current, "p1", 0, 1)
                    done.set()
            assert (await store.get("p1")).reserved_count == 1
            if kind == "redis":
                assert await redis_locks.stale_count("inventory:p1") == 0  # nothing sent
    finally:
        await client.aclose()
