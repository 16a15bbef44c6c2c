"""Group commit in the Redis inventory store: the atomic path's calls on one product that
arrive while one of its script calls is in flight go together in the next one, each still
checked, idempotent, logged and answered alone.

The script call is gated where a test needs a group to form: the first call sends and
waits at the gate, the others queue behind it, and the gate opens when every task is
blocked (no sleeps).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import SagaFailed
from examples.inventory import AtomicReservationSaga, Notifier
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


class Gate:
    """Wraps the store's group script: counts its calls and the operations of each, and
    holds each call at a gate while ``closed``."""

    def __init__(self, store: RedisInventoryStore) -> None:
        self.script = store._group
        self.sizes: list[int] = []
        self.closed = False
        self.opened = anyio.Event()
        self.fail: Exception | None = None
        store._group = self  # type: ignore[assignment]

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        self.sizes.append(len(msgspec.json.decode(args[4])))  # the operations it carries
        if self.closed:
            await self.opened.wait()
        if self.fail is not None:
            raise type(self.fail)(*self.fail.args)  # a new one per call, as a real failure
        return await self.script(keys=keys, args=args)

    def open(self) -> None:
        self.closed = False
        self.opened.set()


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisInventoryStore]:
    """A store with p1: 150 units, p2: 10 units."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
    await store.put(Product(sku="p1", inventory_count=150))
    await store.put(Product(sku="p2", inventory_count=10))
    yield store
    await client.aclose()


async def reserved(store: RedisInventoryStore, sku: str) -> int:
    return (await store.get(sku)).reserved_count


async def joined(store: RedisInventoryStore, sku: str, count: int) -> None:
    """Until ``count`` calls wait in the product's group (a release or a commit looks its
    product up first, a round trip)."""
    with anyio.fail_after(5):
        while sku not in store._groups or len(store._groups[sku].waiting) < count:
            await anyio.lowlevel.checkpoint()


async def test_a_lone_call_goes_at_once_in_a_group_of_one(store: RedisInventoryStore) -> None:
    gate = Gate(store)
    for n in range(5):
        await store.reserve(f"r-{n}", "p1", 1, 60.0)
    assert await store.release("r-0") is True
    assert await store.commit("r-1") is True
    assert gate.sizes == [1] * 7
    assert await reserved(store, "p1") == 4
    assert store._groups == {}  # nothing kept once no call is in flight


async def test_calls_that_arrive_during_a_call_go_together_and_fail_alone(
    store: RedisInventoryStore,
) -> None:
    """200 concurrent reservations of 150 units: 150 granted, 50 refused alone as
    InsufficientStock, in far fewer script calls than calls; the log matches."""
    gate = Gate(store)
    outcomes: dict[str, object] = {}

    async def reserve(reservation_id: str) -> None:
        try:
            outcomes[reservation_id] = await store.reserve(reservation_id, "p1", 1, 60.0)
        except InsufficientStock as exc:
            outcomes[reservation_id] = exc

    gate.closed = True
    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(reserve, f"r-{n}")
        await anyio.wait_all_tasks_blocked()
        gate.open()

    granted = {k: v for k, v in outcomes.items() if isinstance(v, str)}
    assert len(granted) == 150
    assert len(set(granted.values())) == 150  # an entry of its own each
    assert sum(isinstance(v, InsufficientStock) for v in outcomes.values()) == 50
    assert gate.sizes[0] == 1
    assert sum(gate.sizes) == 200
    assert len(gate.sizes) <= 3  # the first alone, the rest in groups of at most 256
    assert await reserved(store, "p1") == 150
    log = await store.transactions()
    assert sorted(t.run_id for t in log) == sorted(granted)
    assert {t.operation for t in log} == {"reserve"}


async def test_a_group_is_bounded_by_max_group(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:", max_group=8)
    await store.put(Product(sku="p1", inventory_count=100))
    gate = Gate(store)
    gate.closed = True
    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(store.reserve, f"r-{n}", "p1", 1, 60.0)
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert max(gate.sizes) == 8
    assert sum(gate.sizes) == 50
    assert await reserved(store, "p1") == 50
    await client.aclose()


async def test_the_same_id_twice_in_one_group_reserves_once(store: RedisInventoryStore) -> None:
    gate = Gate(store)
    gate.closed = True
    entries: list[str] = []

    async def reserve(reservation_id: str, quantity: int = 2) -> None:
        entries.append(await store.reserve(reservation_id, "p1", quantity, 60.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reserve, "first")  # sends, held at the gate
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(reserve, "same")
        tg.start_soon(reserve, "same")
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert gate.sizes == [1, 2]
    assert entries.count(entries[-1]) == 2  # one entry, answered twice
    assert await reserved(store, "p1") == 4
    assert [t.run_id for t in await store.transactions()] == ["first", "same"]


async def test_a_conflict_or_an_unknown_product_fails_alone(store: RedisInventoryStore) -> None:
    await store.reserve("held", "p1", 3, 60.0)
    gate = Gate(store)
    gate.closed = True
    outcomes: dict[str, object] = {}

    async def call(name: str, reservation_id: str, sku: str, quantity: int) -> None:
        try:
            outcomes[name] = await store.reserve(reservation_id, sku, quantity, 60.0)
        except (ReservationConflict, UnknownProduct) as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "lead", "lead", "p1", 1)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call, "conflict", "held", "p1", 5)  # held for 3
        tg.start_soon(call, "ok", "ok", "p1", 2)
        tg.start_soon(call, "retry", "held", "p1", 3)  # the same reservation again
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert gate.sizes == [1, 3]
    conflict = outcomes["conflict"]
    assert isinstance(conflict, ReservationConflict)
    assert (conflict.held_quantity, conflict.quantity) == (3, 5)
    assert isinstance(outcomes["ok"], str)
    assert isinstance(outcomes["retry"], str)
    assert await reserved(store, "p1") == 3 + 1 + 2

    with pytest.raises(UnknownProduct):
        await store.reserve("nope", "p9", 1, 60.0)
    assert "nope" not in [t.run_id for t in await store.transactions()]


async def test_releases_and_commits_join_the_group_in_arrival_order(
    store: RedisInventoryStore,
) -> None:
    for n in range(4):
        await store.reserve(f"r-{n}", "p2", 2, 60.0)
    gate = Gate(store)
    gate.closed = True
    answers: dict[str, object] = {}

    async def call(name: str, verb: str, *args: Any) -> None:
        try:
            answers[name] = await getattr(store, verb)(*args)
        except InsufficientStock as exc:
            answers[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "lead", "commit", "r-0")
        await anyio.wait_all_tasks_blocked()
        for count, (name, *args) in enumerate(
            [
                ("release-1", "release", "r-1"),
                ("commit-1", "commit", "r-1"),  # released just before: nothing to commit
                ("new", "reserve", "r-9", "p2", 4, 60.0),  # takes the units released
                ("commit-2", "commit", "r-2"),
                ("release-2", "release", "r-2"),  # committed just before: not released
                ("too-many", "reserve", "r-10", "p2", 1, 60.0),
            ],
            start=1,
        ):
            tg.start_soon(call, name, *args)
            await joined(store, "p2", count)
        gate.open()
    assert gate.sizes == [1, 6]
    assert answers["lead"] is True
    assert (answers["release-1"], answers["commit-1"]) == (True, False)
    assert isinstance(answers["new"], str)
    assert (answers["commit-2"], answers["release-2"]) == (True, False)
    assert isinstance(answers["too-many"], InsufficientStock)
    product = await store.get("p2")
    assert (product.inventory_count, product.reserved_count) == (10, 10)
    operations = [(t.operation, t.run_id) for t in await store.transactions()]
    assert operations[4:] == [("release", "r-1"), ("reserve", "r-9")]


async def test_a_call_cancelled_while_it_waits_is_withdrawn(store: RedisInventoryStore) -> None:
    gate = Gate(store)
    gate.closed = True
    waiting = anyio.CancelScope()

    async def withdrawn() -> None:
        with waiting:
            await store.reserve("withdrawn", "p1", 1, 60.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.reserve, "lead", "p1", 1, 60.0)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(withdrawn)
        tg.start_soon(store.reserve, "kept", "p1", 1, 60.0)
        await joined(store, "p1", 2)
        waiting.cancel()
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert gate.sizes == [1, 1]
    assert [t.run_id for t in await store.transactions()] == ["lead", "kept"]
    assert await reserved(store, "p1") == 2


async def test_a_cancelled_sender_still_answers_its_group(store: RedisInventoryStore) -> None:
    """The first call's caller is cancelled while the script call is in flight: the call
    is finished (shielded) and the calls it carries are answered."""
    gate = Gate(store)
    gate.closed = True
    answered: list[str] = []
    sender = anyio.CancelScope()

    async def lead() -> None:
        with sender:
            await store.reserve("lead", "p1", 1, 60.0)  # finished, shielded
            await anyio.lowlevel.checkpoint()  # where the cancellation lands
            answered.append("not cancelled")

    async def follower(reservation_id: str) -> None:
        answered.append(await store.reserve(reservation_id, "p1", 1, 60.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lead)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(follower, "f-1")
        tg.start_soon(follower, "f-2")
        await joined(store, "p1", 2)
        sender.cancel()
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert sender.cancelled_caught
    assert len(answered) == 2
    assert "not cancelled" not in answered
    assert sorted(t.run_id for t in await store.transactions()) == ["f-1", "f-2", "lead"]


async def test_a_call_cancelled_when_its_turn_comes_hands_the_turn_on(
    redis_url: str, redis_prefix: str
) -> None:
    """With max_group=1 each call sends its own script call. The waiting call whose turn
    has just come is cancelled (an asyncio task cancelled by plain asyncio code, before it
    runs again) before it sends: nothing is written for it and the turn goes on."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:", max_group=1)
    await store.put(Product(sku="p1", inventory_count=10))
    gate = Gate(store)
    gate.closed = True
    second: asyncio.Task[str] | None = None

    async def first() -> None:
        await store.reserve("first", "p1", 1, 60.0)
        assert second is not None
        assert store._groups["p1"].waiting[0].args[1] == "third"  # "second" has the turn
        second.cancel()  # no await since the turn was handed over

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        second = asyncio.create_task(store.reserve("second", "p1", 1, 60.0))
        await joined(store, "p1", 1)
        third = asyncio.create_task(store.reserve("third", "p1", 1, 60.0))
        await joined(store, "p1", 2)
        gate.open()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert isinstance(await third, str)
    assert [t.run_id for t in await store.transactions()] == ["first", "third"]
    assert store._groups == {}
    await client.aclose()


async def test_a_failed_script_call_fails_each_call_of_its_group(
    store: RedisInventoryStore,
) -> None:
    gate = Gate(store)
    gate.closed = True
    gate.fail = ConnectionError("Redis went away")
    errors: list[BaseException] = []

    async def reserve(reservation_id: str) -> None:
        try:
            await store.reserve(reservation_id, "p1", 1, 60.0)
        except ConnectionError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reserve, "lead")
        await anyio.wait_all_tasks_blocked()
        for n in range(3):
            tg.start_soon(reserve, f"r-{n}")
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert len(errors) == 4
    assert len({id(e) for e in errors}) == 4  # one exception each
    assert store._groups == {}
    gate.fail = None
    await store.reserve("after", "p1", 1, 60.0)  # the product's calls go on
    assert await reserved(store, "p1") == 1


async def test_concurrent_reserves_and_releases_conserve_stock(
    store: RedisInventoryStore,
) -> None:
    """Many callers reserve, some release, some commit, on two products at once: the
    counts and the log agree with what the callers were told."""
    rng = random.Random(17)
    granted: dict[str, str] = {}
    released: set[str] = set()
    committed: set[str] = set()

    async def caller(n: int) -> None:
        for k in range(5):
            reservation_id = f"c{n}-{k}"
            sku = rng.choice(["p1", "p2"])
            try:
                await store.reserve(reservation_id, sku, rng.randint(1, 3), 60.0)
            except InsufficientStock:
                continue
            granted[reservation_id] = sku
            roll = rng.random()
            if roll < 0.4 and await store.release(reservation_id):
                released.add(reservation_id)
            elif roll < 0.6 and await store.commit(reservation_id):
                committed.add(reservation_id)

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(caller, n)

    log = await store.transactions()
    reserves = {t.run_id: t for t in log if t.operation == "reserve"}
    releases = {t.run_id for t in log if t.operation == "release"}
    assert set(reserves) == set(granted)
    assert releases == released
    for sku, stock in (("p1", 150), ("p2", 10)):
        held = sum(
            t.quantity for t in reserves.values() if t.sku == sku and t.run_id not in released
        )
        product = await store.get(sku)
        assert (product.inventory_count, product.reserved_count) == (stock, held)
        assert product.reserved_count <= product.inventory_count
    assert committed  # the mix happened
    assert released
    assert store._groups == {}


async def test_the_atomic_saga_runs_on_a_grouped_store(store: RedisInventoryStore) -> None:
    """AtomicReservationSaga, unchanged, on the default (grouped) store: 200 concurrent
    runs of 150 units, 150 succeed, the rest fail at reserve and leave nothing behind."""

    class Quiet(Notifier):
        async def send(self, key: str, message: str) -> None:
            pass

    gate = Gate(store)
    succeeded: list[str] = []
    failed: list[str] = []

    async def run(n: int) -> None:
        try:
            result = await AtomicReservationSaga.run(
                product_id="p1",
                quantity=1,
                reservation_id=f"saga-{n}",
                store=store,
                notifier=Quiet(),
            )
        except SagaFailed as exc:
            failed.append(type(exc.__cause__).__name__)
        else:
            succeeded.append(result.output)

    async with anyio.create_task_group() as tg:
        for n in range(200):
            tg.start_soon(run, n)
    assert len(succeeded) == 150
    assert failed == ["InsufficientStock"] * 50
    assert len(gate.sizes) < 200  # grouped
    assert await reserved(store, "p1") == 150
    assert len(await store.transactions()) == 150


async def test_cancelled_saga_callers_leave_nothing_reserved(store: RedisInventoryStore) -> None:
    """100 AtomicReservationSaga runs whose callers are all cancelled while their
    reservations wait in groups (one group sent and held, the rest queued): each run
    finishes its reserve step within its grace, then unwinds; no unit stays reserved,
    and every reserve in the log has its release."""

    class Quiet(Notifier):
        async def send(self, key: str, message: str) -> None:
            pass

    gate = Gate(store)
    gate.closed = True
    callers = [anyio.CancelScope() for _ in range(100)]

    async def run(n: int) -> None:
        with callers[n]:
            await AtomicReservationSaga.run(
                product_id="p1",
                quantity=1,
                reservation_id=f"c-{n}",
                store=store,
                notifier=Quiet(),
            )

    async with anyio.create_task_group() as tg:
        for n in range(100):
            tg.start_soon(run, n)
        await joined(store, "p1", 99)  # one sent (held at the gate), 99 waiting
        for caller in callers:
            caller.cancel()
        await anyio.wait_all_tasks_blocked()
        gate.open()
    assert all(caller.cancelled_caught for caller in callers)
    assert await reserved(store, "p1") == 0
    log = await store.transactions()
    reserves = sorted(t.run_id for t in log if t.operation == "reserve")
    releases = sorted(t.run_id for t in log if t.operation == "release")
    assert reserves == releases
    assert len(reserves) == 100  # every step was let finish (its grace), then undone


async def test_a_script_call_with_no_reply_fails_its_group_with_a_clear_timeout(
    store: RedisInventoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis gives no reply within GROUP_TIMEOUT: every call of the group raises a
    TimeoutError that says so, and the product's next calls go on."""
    import examples.inventory.store as module

    monkeypatch.setattr(module, "GROUP_TIMEOUT", 0.05)
    gate = Gate(store)
    gate.closed = True
    errors: list[TimeoutError] = []

    async def reserve(reservation_id: str) -> None:
        try:
            await store.reserve(reservation_id, "p1", 1, 60.0)
        except TimeoutError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reserve, "lead")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(reserve, "follower")
    assert len(errors) == 2
    assert all("got no reply within 0.05 s" in str(exc) for exc in errors)
    gate.open()
    await store.reserve("after", "p1", 1, 60.0)
    assert store._groups == {}
