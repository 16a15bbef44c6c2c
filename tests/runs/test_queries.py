"""The run stores' queries for a runs list (the dashboard's): ``page``, ``find``, ``counts``
and ``note``, the same tests against MemoryRunStore and RedisRunStore (a real server)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import Resource, RunNotFound, Saga, SagaFailed, step
from asaga.events import OperatorAction, RunFailed
from asaga.runs import MemoryRunStore, RedisRunStore, RunPage, RunRecord, RunStore
from asaga.runs._record import FINISHED, PAGE_STATUSES, Claim, Write, encode_event, encode_record
from asaga.runs._show import format_run

pytestmark = pytest.mark.anyio

Store = MemoryRunStore | RedisRunStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py runs on asyncio only


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Store]:
    """An open store of each kind (the Redis one under the test's own prefix)."""
    if request.param == "memory":
        async with MemoryRunStore() as memory:
            yield memory
        return
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisRunStore(client, prefix=redis_prefix) as redis_store:
            yield redis_store
    finally:
        await client.aclose()


def _record(run_id: str, saga: str, status: str, key: str | None = None) -> bytes:
    return encode_record(
        RunRecord(
            saga=saga,
            saga_version="1",
            run_id=run_id,
            status=status,  # type: ignore[arg-type]  # checked by the store's scripts
            inputs=b"",
            fingerprint="f",
            idempotency_key=key,
        )
    )


async def add(
    store: RunStore,
    run_id: str,
    status: str = "succeeded",
    *,
    saga: str = "Checkout",
    doubt: bool = False,
    key: str | None = None,
) -> None:
    """Record run ``run_id`` of ``saga`` and bring it to ``status`` through the store's
    own writes (``in_doubt``: failed, its RunFailed listing a step in doubt;
    ``quarantined``: set aside; ``waiting``: parked)."""
    claim = Claim(saga=saga, key=key, window=600.0) if key else None
    created = Write(
        run_id=run_id, record=_record(run_id, saga, "running", key), status="running", seq=1
    )
    assert await store.create(created, claim) is None
    if status == "running":
        return
    if status == "quarantined":
        assert await store.quarantine(run_id, "does not decode here") is not None
        return
    if status == "waiting":
        write = Write(run_id=run_id, record=_record(run_id, saga, status), status="waiting", seq=2)
        await store.park(write, None)
        return
    events: tuple[bytes, ...] = ()
    if doubt:
        end = RunFailed(saga=saga, run_id=run_id, failed_step="pay", in_doubt=("ship",))
        events = (encode_event(end),)
    await store.write(
        Write(
            run_id=run_id,
            record=_record(run_id, saga, status),
            status=status,  # type: ignore[arg-type]  # a status the test names
            seq=2,
            final=status in FINISHED,
            events=events,
        )
    )


def ids(page: RunPage | Iterable[RunRecord]) -> list[str]:
    runs = page.runs if isinstance(page, RunPage) else page
    return [r.run_id for r in runs]


async def all_pages(store: RunStore, limit: int, **filters: str) -> list[str]:
    """Every page's run ids, following the cursors (bounded)."""
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        page = await store.page(cursor=cursor, limit=limit, **filters)  # type: ignore[arg-type]
        seen += ids(page)
        if page.cursor is None:
            return seen
        cursor = page.cursor
    raise AssertionError("the cursors never ended")


MIX = {
    "r1": ("running", "Checkout", False),
    "s1": ("succeeded", "Checkout", False),
    "s2": ("succeeded", "Refund", False),
    "f1": ("failed", "Checkout", False),
    "d1": ("failed", "Refund", True),
    "c1": ("compensation_failed", "Checkout", False),
    "x1": ("cancelled", "Refund", False),
    "w1": ("waiting", "Checkout", False),
    "q1": ("quarantined", "Refund", False),
    "s3": ("succeeded", "Checkout", False),
}


async def add_mix(store: RunStore) -> None:
    for run_id, (status, saga, doubt) in MIX.items():
        await add(store, run_id, status, saga=saga, doubt=doubt)


def expected(status: str | None = None, saga: str | None = None) -> list[str]:
    """The ids of MIX that a page with these filters lists, newest first."""
    found = []
    for run_id, (st, sg, doubt) in MIX.items():
        if saga is not None and sg != saga:
            continue
        if status == "quarantined":
            ok = st == "quarantined"
        elif st == "quarantined":
            ok = False
        elif status == "in_doubt":
            ok = doubt
        else:
            ok = status is None or st == status
        if ok:
            found.append(run_id)
    return found[::-1]


@pytest.mark.parametrize("status", [None, *sorted(PAGE_STATUSES)])
async def test_page_filters_by_status(store: Store, status: str | None) -> None:
    """Each status (and in_doubt, quarantined) lists exactly its runs, newest first;
    quarantined runs show under ``quarantined`` only; runs in doubt under their own status
    too."""
    await add_mix(store)
    page = await store.page(status=status)
    assert ids(page) == expected(status)
    assert page.cursor is None
    assert all(not r.events for r in page.runs)


@pytest.mark.parametrize("status", [None, "succeeded", "failed", "in_doubt", "quarantined"])
async def test_page_filters_by_saga_and_status(store: Store, status: str | None) -> None:
    """The saga filter, alone and with a status."""
    await add_mix(store)
    for saga in ("Checkout", "Refund", "Nothing"):
        assert ids(await store.page(saga=saga, status=status)) == expected(status, saga)


async def test_page_bounds_by_time(store: Store) -> None:
    """``since`` and ``until`` bound when the run was recorded (both included)."""
    await add(store, "old")
    middle = time.time()
    while time.time() == middle:  # bounded: the clock moves on within microseconds
        pass
    await add(store, "new")
    assert ids(await store.page(since=middle)) == ["new"]
    assert ids(await store.page(until=middle)) == ["old"]
    assert ids(await store.page(since=middle, until=middle - 1)) == []
    assert ids(await store.page(since=0, until=time.time() + 60)) == ["new", "old"]


async def test_cursor_pages_are_stable_while_runs_arrive(store: Store) -> None:
    """Following the cursors gives every older run exactly once, newest first, although
    new runs are recorded between pages (they are on pages before the cursor)."""
    old = [f"old{i:02d}" for i in range(23)]
    for run_id in old:
        await add(store, run_id, "succeeded" if len(run_id) % 2 else "failed")
    seen: list[str] = []
    cursor = None
    for n in range(100):
        page = await store.page(cursor=cursor, limit=5)
        assert len(page.runs) <= 5
        seen += ids(page)
        await add(store, f"new{n:02d}")
        await add(store, f"fresh{n:02d}", "failed")
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == old[::-1]


async def test_cursor_pages_of_a_filter(store: Store) -> None:
    """Pages of a status filter, and of a saga, follow on without gaps or duplicates."""
    for i in range(17):
        await add(store, f"r{i:02d}", "failed" if i % 3 == 0 else "succeeded", saga=f"S{i % 2}")
    failed = [f"r{i:02d}" for i in range(17) if i % 3 == 0][::-1]
    assert await all_pages(store, 2, status="failed") == failed
    s1 = [f"r{i:02d}" for i in range(17) if i % 2 == 1][::-1]
    assert await all_pages(store, 3, saga="S1") == s1
    both = [f"r{i:02d}" for i in range(17) if i % 2 == 1 and i % 3 == 0][::-1]
    assert await all_pages(store, 1, saga="S1", status="failed") == both


async def test_bad_arguments_are_refused(store: Store) -> None:
    """Unknown status, limit out of 1..500, malformed or foreign cursors, bad times, and
    empty or over-long search text raise ValueError saying what to pass."""
    await add(store, "a")
    await add(store, "b")
    with pytest.raises(ValueError, match="unknown status 'stuck'"):
        await store.page(status="stuck")
    for limit in (0, 501, True, 2.5):
        with pytest.raises(ValueError, match="limit must be an int from 1 to 500"):
            await store.page(limit=limit)  # type: ignore[arg-type]
    for cursor in ("", "x", "c1.!!!", "c1.bm90IGpzb24", "c1." + "A" * 5000):
        with pytest.raises(ValueError, match="malformed cursor"):
            await store.page(cursor=cursor)
    first = (await store.page(limit=1)).cursor
    assert first is not None
    assert ids(await store.page(limit=1, cursor=first)) == ["a"]
    with pytest.raises(ValueError, match="other filters"):
        await store.page(limit=1, cursor=first, status="succeeded")
    async with MemoryRunStore() as other:
        with pytest.raises(ValueError, match="or of another store"):
            await other.page(limit=1, cursor=first)
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="since must be a time"):
            await store.page(since=bad)  # type: ignore[arg-type]
    for saga in ("", "x" * 1025, 3):
        with pytest.raises(ValueError, match=r"counts\(\): saga must be a saga's name"):
            await store.counts(saga=saga)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"page\(\): saga must be a saga's name"):
            await store.page(saga=saga)  # type: ignore[arg-type]
    for text in ("", "x" * 1025):
        with pytest.raises(ValueError, match="find\\(\\): text must be"):
            await store.find(text)
    with pytest.raises(ValueError, match="find\\(\\): limit"):
        await store.find("a", limit=0)


async def test_find_by_run_id_key_and_event_key(store: Store) -> None:
    """``find`` matches a run id, an idempotency key of any saga and the correlation key
    of an event a run waits for (or took), exactly."""
    await add(store, "run-1")
    await add(store, "run-2", key="order-7")
    await add(store, "run-3", key="order-8", saga="Refund")
    await add(store, "run-4", "waiting", saga="Shipping")
    assert await store.bind("Shipping", "parcel-9", "run-4", None) == ("bound", None)
    await add(store, "run-5", "waiting", saga="Shipping")
    await store.consume("Shipping", "parcel-10", "run-5")
    assert ids(await store.find("run-1")) == ["run-1"]
    assert ids(await store.find("order-7")) == ["run-2"]
    assert ids(await store.find("order-8")) == ["run-3"]
    assert ids(await store.find("parcel-9")) == ["run-4"]
    assert ids(await store.find("parcel-10")) == ["run-5"]
    assert ids(await store.find("run")) == []
    assert ids(await store.find("order")) == []


async def test_counts(store: Store) -> None:
    """Runs per status, every status named (zeros too), per saga or all."""
    await add_mix(store)
    counts = await store.counts()
    assert set(counts) == PAGE_STATUSES
    want = {s: len(expected(s)) for s in PAGE_STATUSES}
    assert dict(counts) == want
    refund = await store.counts(saga="Refund")
    assert dict(refund) == {s: len(expected(s, "Refund")) for s in PAGE_STATUSES}
    assert refund["in_doubt"] == refund["quarantined"] == 1


async def test_note_appends_an_operator_action(store: Store) -> None:
    """``note`` appends the action to the run's recorded events; a run the store does not
    have raises RunNotFound, an event about another run ValueError."""
    await add(store, "n1")
    action = OperatorAction(saga="Checkout", run_id="n1", action="undo", by="ada", outcome="undone")
    await store.note("n1", action)
    record = await store.load("n1", events=True)
    assert record.events[-1] == action
    assert record.events[-1].kind == "operator_action"
    assert msgspec.json.decode(msgspec.json.encode(action), type=OperatorAction) == action
    with pytest.raises(RunNotFound):
        await store.note("ghost", msgspec.structs.replace(action, run_id="ghost"))
    with pytest.raises(ValueError, match="about run 'n1', not 'n2'"):
        await store.note("n2", action)
    shown = format_run(record)  # what `asaga runs show` prints: who did what, and how
    assert "operator_action" in shown
    assert "undo  by ada: undone" in shown


# -- RedisRunStore: its listing indexes -------------------------------------------------


@pytest.fixture
async def redis_store(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[RedisRunStore]:
    """A RedisRunStore; its retention (seconds) given by indirect parametrization, if any."""
    retention = getattr(request, "param", 3600.0)
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisRunStore(
            client, prefix=redis_prefix, retention=retention, idempotency_window=retention
        ) as s:
            yield s
    finally:
        await client.aclose()


async def listed_in(s: RedisRunStore, run_id: str) -> set[str]:
    """The store's sorted sets that hold ``run_id``."""
    found = set()
    async for raw in s.client.scan_iter(match=f"{s.prefix}runs:*"):
        key = raw.decode()
        if await s.client.type(key) == b"zset" and await s.client.zscore(key, run_id):
            found.add(key.removeprefix(s.prefix))
    return found


async def test_a_status_change_moves_the_run_between_listings(
    redis_store: RedisRunStore,
) -> None:
    """Each write moves the run from the listing of its old status to the new one (and
    its saga's); a run's end that leaves a step in doubt lists it under in_doubt too."""
    s = redis_store
    await add(s, "m1", "running", saga="S")
    assert await listed_in(s, "m1") == {
        "runs:index",
        "runs:running",
        "runs:by-saga:S",
        "runs:by-status:running",
        "runs:by-saga-status:running:S",
    }
    end = RunFailed(saga="S", run_id="m1", failed_step="pay", in_doubt=("ship",))
    await s.write(
        Write(
            run_id="m1",
            record=_record("m1", "S", "failed"),
            status="failed",
            seq=2,
            final=True,
            events=(encode_event(end),),
        )
    )
    assert await listed_in(s, "m1") == {
        "runs:index",
        "runs:by-saga:S",
        "runs:by-status:failed",
        "runs:by-saga-status:failed:S",
        "runs:by-status:in_doubt",
        "runs:by-saga-status:in_doubt:S",
    }
    assert await s.client.hget(s._run_key("m1"), "doubt") == b"1"


@pytest.mark.parametrize("redis_store", [2.0], indirect=True)
async def test_expired_records_leave_the_listings(redis_store: RedisRunStore) -> None:
    """An entry whose record expired is dropped from the set a page met it in, and the
    retention trims the listings a run ends in (its status's, its saga's), like the
    index."""
    s = redis_store
    await add(s, "gone", "failed", saga="S")
    await add(s, "old", "failed", saga="S")
    await s.client.delete(s._run_key("gone"))  # as its TTL would
    assert ids(await s.page(status="failed")) == ["old"]
    assert "runs:by-status:failed" not in await listed_in(s, "gone")
    assert "runs:by-saga:S" in await listed_in(s, "gone")  # until met there, or trimmed
    # The retention (2 s) must pass: not an ordering of tasks, the clock the trim reads.
    await anyio.sleep(s.retention + 0.05)
    await add(s, "new", "failed", saga="S")
    assert await listed_in(s, "gone") == set()
    assert await listed_in(s, "old") == set()
    assert ids(await s.page(saga="S")) == ["new"]
    assert (await s.counts(saga="S"))["failed"] == 1


@pytest.mark.parametrize("redis_store", [2.0], indirect=True)
async def test_runs_older_than_the_retention_stay_listed_while_unfinished(
    redis_store: RedisRunStore,
) -> None:
    """A run that waits (or runs) longer than the retention is still listed, under its
    status, its saga and unfiltered: the trims by creation time (each final write's, and
    the sweep of every listing one final write in 16 makes) keep unfinished runs."""
    s = redis_store
    await add(s, "long-wait", "running", saga="S")
    parked = Write(
        run_id="long-wait", record=_record("long-wait", "S", "waiting"), status="waiting", seq=2
    )
    await s.park(parked, time.time() + 3600)
    await add(s, "long-run", "running", saga="S")
    # The retention (2 s) must pass: not an ordering of tasks, the clock the trim reads.
    await anyio.sleep(s.retention + 0.05)
    for i in range(64):  # 64 final writes: the sweep runs unless 1 in 60 odds say no
        await add(s, f"done-{i}", "succeeded", saga="S")
    assert ids(await s.page(status="waiting")) == ["long-wait"]
    assert ids(await s.page(status="running")) == ["long-run"]
    assert {"long-wait", "long-run"} <= set(ids(await s.page(limit=500)))
    assert {"long-wait", "long-run"} <= set(ids(await s.page(saga="S", limit=500)))
    counts = await s.counts(saga="S")
    assert (counts["waiting"], counts["running"]) == (1, 1)


async def test_a_quarantined_run_is_neither_claimed_nor_taken(store: RunStore) -> None:
    """A run recovery set aside stays aside until readmitted: a claim (a parent's recovery
    taking its child over) and a take of a parked run both refuse it, so its listings do
    not drift."""
    await add(store, "aside", "running", saga="Child")
    assert await store.quarantine("aside", "does not decode here") is not None
    assert await store.claim("aside", "quarantine") is None
    await add(store, "parked-aside", "waiting", saga="Child")
    record = await store.load("parked-aside")
    assert await store.quarantine("parked-aside", "does not decode here", parked=True)
    again = Write(
        run_id="parked-aside",
        record=_record("parked-aside", "Child", "running"),
        status="running",
        seq=record.seq + 1,
    )
    assert not await store.take_parked(again, record.seq)
    assert sorted(ids(await store.page(status="quarantined"))) == ["aside", "parked-aside"]
    counts = await store.counts(saga="Child")
    assert {k: v for k, v in counts.items() if v} == {"quarantined": 2}


async def test_records_of_older_code_are_listed(redis_store: RedisRunStore) -> None:
    """A run recorded before the listing indexes (in the index only) is on the unfiltered
    page; it joins the status and saga listings with its next write."""
    s = redis_store
    await s.client.hset(
        s._run_key("legacy"),
        mapping={
            "record": _record("legacy", "S", "running"),
            "status": "running",
            "owner": s.owner,
            "saga": "S",
            "version": "1",
            "seq": 1,
        },
    )
    await s.client.zadd(s._index(), {"legacy": time.time()})
    await s.client.zadd(s._running(), {"legacy": time.time()})
    assert ids(await s.page()) == ["legacy"]
    assert ids(await s.page(status="running")) == []
    await s.write(
        Write(run_id="legacy", record=_record("legacy", "S", "failed"), status="failed", seq=2)
    )
    assert ids(await s.page(status="failed")) == ["legacy"]
    assert ids(await s.page(saga="S", status="failed")) == ["legacy"]
    assert ids(await s.page(saga="S")) == ["legacy"]


async def test_every_key_of_the_listings_is_bounded(redis_store: RedisRunStore) -> None:
    """After a mix of runs, every key under the prefix expires or is a sorted set that the
    store trims (the index, running, parked, quarantine sets and the listings)."""
    s = redis_store
    await add_mix(s)
    await s.note("s1", OperatorAction(saga="Checkout", run_id="s1", action="undo", outcome="x"))
    assert await s.client.pttl(s._events_key("s1")) > 0
    sets = ("runs:index", "runs:running", "runs:parked", "runs:quarantine", "runs:sagas")
    unbounded = []
    async for raw in s.client.scan_iter(match=f"{s.prefix}*"):
        key = raw.decode().removeprefix(s.prefix)
        if key.startswith(("owner:", "runs:by-")) or key in sets:
            continue
        if key in ("run:r1", "events:r1"):
            continue  # an unfinished run: bounded by the running set, as before

        if await s.client.pttl(raw) < 0:
            unbounded.append(key)
    assert unbounded == []


async def test_every_path_that_changes_a_status_moves_the_listing(store: Store) -> None:
    """Readmitting a quarantined run, taking a parked one and taking a succeeded one to
    undo it each move the run to its new status's page and count."""
    await add(store, "q", "quarantined")
    await add(store, "w", "waiting")
    await add(store, "s", "succeeded")
    assert ids(await store.page(status="quarantined")) == ["q"]
    await store.readmit("q")
    assert ids(await store.page(status="quarantined")) == []
    assert ids(await store.page(status="running")) == ["q"]
    taken = Write(run_id="w", record=_record("w", "Checkout", "running"), status="running", seq=3)
    assert await store.take_parked(taken, 2)
    assert ids(await store.page(status="waiting")) == []
    assert ids(await store.page(status="running")) == ["w", "q"]
    _, undoing = await store.claim_undo("s")
    assert undoing
    assert ids(await store.page(status="undoing", saga="Checkout")) == ["s"]
    counts = await store.counts()
    assert (counts["running"], counts["undoing"], counts["succeeded"]) == (2, 1, 0)
    assert counts["quarantined"] == counts["waiting"] == 0


class CutsOff(Saga):
    """A durable saga whose failure cuts a sibling off in flight: left in doubt."""

    on_failure = "cancel"
    started: Resource[anyio.Event]

    @step
    async def slow(started: anyio.Event) -> int:
        started.set()
        await anyio.sleep_forever()
        return 1  # pragma: no cover

    @slow.compensate
    async def undo_slow(slow: int) -> None:
        pass  # pragma: no cover - not safe for a step in doubt: never runs

    @step
    async def boom(started: anyio.Event) -> int:
        await started.wait()
        raise ValueError("boom")


async def test_a_real_run_left_in_doubt_is_listed_in_doubt(store: Store) -> None:
    """A run whose failure cut a step off (its RunFailed lists it in doubt) is on the
    in_doubt page and its failed page, as recorded by the run itself."""
    with pytest.raises(SagaFailed) as info:
        await CutsOff.run(started=anyio.Event(), runs=store, run_id="cut")
    assert info.value.in_doubt == ("slow",)
    assert ids(await store.page(status="in_doubt")) == ["cut"]
    assert ids(await store.page(status="failed", saga="CutsOff")) == ["cut"]
    assert (await store.counts())["in_doubt"] == 1
