"""Durable compose and map_each after a crash, on Redis (asyncio: redis-py is asyncio-only).

A crash is made in one process by forking the world at a point: every Redis key of the
run store is copied, as it stands, under a second prefix (the dead process's owner lease
left behind), and the effects of the steps are copied alike, while the event loop stands
still; a recoverer then takes the copy over. tests/runs/test_durable_map_kill.py kills
real processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from asaga import Resource, Saga, compose, map_each, step
from asaga.runs import Recovered, RedisRunStore, recover
from tests.runs.test_durable_children import LINES, Bulk, Hold, Ledger

pytestmark = pytest.mark.anyio


# -- crashes, on Redis ------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py is asyncio-only


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def fork(url: str, source: str, target: str) -> None:
    """Copy every key under ``source`` to ``target``, as it stands (TTLs kept), but the
    owners' leases: the copy is the world a dead process left. Blocking on purpose: the
    event loop, and so the live run, stands still while the world is copied."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{source}*", count=1000):
            name = key.decode()
            if name.startswith(f"{source}owner:"):
                continue
            dumped = client.dump(name)
            ttl = client.pttl(name)
            client.restore(f"{target}{name[len(source) :]}", max(ttl, 0), dumped)
    finally:
        client.close()


async def crash_at_block(
    client: aioredis.Redis,
    url: str,
    saga: type[Saga],
    inputs: dict[str, Any],
    ledger: Ledger,
    prefix: str,
) -> Ledger:
    """Run ``saga`` on a store under ``prefix``live/ until an element blocks; fork the
    world to ``prefix``dead/ there; end the live run. The dead world's ledger."""
    async with (
        RedisRunStore(client, prefix=f"{prefix}live/") as live,
        anyio.create_task_group() as tg,
    ):

        async def go() -> None:
            await saga.run(**inputs, ledger=ledger, runs=live, run_id="p")

        tg.start_soon(go)
        with anyio.fail_after(10):
            await ledger.blocked.wait()
        # The element's step has begun; its record says so. The world is copied while
        # nothing moves (no await between the two copies).
        fork(url, f"{prefix}live/", f"{prefix}dead/")
        dead = ledger.copy()
        tg.cancel_scope.cancel()
    return dead


async def drive(
    client: aioredis.Redis, prefix: str, saga: type[Saga], ledger: Ledger
) -> tuple[Recovered, dict[str, str]]:
    """Recover the dead world: only the parent is swept (its children are driven by it),
    and then every run in it has finished. The parent's report, every run's status."""
    async with RedisRunStore(client, prefix=f"{prefix}dead/") as runs:
        report = await recover(runs, sagas=[saga], resources={"ledger": ledger})
        assert [r.run_id for r in report] == ["p"]  # the children are driven by "p"
        assert not await recover(runs, sagas=[saga, Hold], resources={"ledger": ledger})
        records = await runs.list(limit=100)
        assert all(r.finished for r in records), [(r.run_id, r.status) for r in records]
        return report[0], {r.run_id: r.status for r in records}


async def test_a_recovered_parent_resumes_its_map_where_each_child_stands(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """Killed while element 1 ran: the recoverer replays element 0 (never runs it again),
    takes element 1 over from its record, runs element 2, then the parent's last step."""
    ledger = Ledger()
    ledger.block_on.add("b")
    dead = await crash_at_block(
        client, redis_url, Bulk, {"lines": LINES}, ledger, f"{redis_prefix}resume:"
    )
    assert dead.calls.count("hold a") == 1
    report, statuses = await drive(client, f"{redis_prefix}resume:", Bulk, dead)
    # Element 1's step was in doubt and is not idempotent: that child unwinds itself,
    # which fails the map, which undoes element 0 (and 2, if it ran): nothing held.
    assert report.outcome == "failed"
    assert all(units == 0 for units in dead.held.values()), dead.held
    assert dead.calls.count("hold a") == 1  # replayed, never run twice
    assert statuses["p"] == "failed"
    # Its step in doubt has a compensation that needs the result it never recorded: the
    # child says a human must look (as a top-level run would).
    assert statuses["p/holds/1/1"] == "compensation_failed"
    assert statuses["p/holds/1/0"] == "undone"


class IdempotentHold(Hold):
    """The same element, whose step may run again after a crash."""

    saga_version = "1"

    @step(idempotent=True)
    async def hold(item: str, qty: int, ledger: Ledger) -> int:
        ledger.calls.append(f"hold {item}")
        if item in ledger.block_on:
            ledger.blocked.set()
            await anyio.sleep_forever()
        ledger.held[item] = qty  # setting, not adding: safe to repeat
        return qty

    @hold.compensate
    async def release(item: str, ledger: Ledger) -> None:
        ledger.calls.append(f"release {item}")
        ledger.held[item] = 0


class IdempotentBulk(Saga):
    cancel_grace = 0  # the live run of a crash test ends at once
    lines: list[dict[str, Any]]
    ledger: Resource[Ledger]
    output = "confirm"

    holds = map_each(IdempotentHold, over="lines", max_concurrency=1)

    @step
    async def confirm(holds: list[int]) -> int:
        return sum(holds)


async def test_a_recovered_parent_finishes_its_map_and_can_be_undone_once(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}finish:"
    ledger = Ledger()
    ledger.block_on.add("b")
    dead = await crash_at_block(client, redis_url, IdempotentBulk, {"lines": LINES}, ledger, prefix)
    dead.block_on.clear()
    report, statuses = await drive(client, prefix, IdempotentBulk, dead)
    assert report.outcome == "succeeded"
    assert dead.held == {"a": 1, "b": 2, "c": 3}
    assert dead.calls.count("hold a") == 1  # element 0 was replayed from its record
    assert set(statuses.values()) == {"succeeded"}
    async with RedisRunStore(client, prefix=f"{prefix}dead/") as runs:
        # The element in doubt went on at its next attempt (its retries not given back);
        # the mapped step at the same attempt, whose children it picked up.
        assert (await runs.load("p/holds/1/1")).steps["hold"].attempt == 2
        assert (await runs.load("p")).steps["holds"].attempt == 1
    async with RedisRunStore(client, prefix=f"{prefix}dead/") as runs:
        undone = await IdempotentBulk.undo("p", runs=runs, ledger=dead)
        assert not undone.already
        assert dead.held == {"a": 0, "b": 0, "c": 0}
        assert (await IdempotentBulk.undo("p", runs=runs, ledger=dead)).already
        assert dead.calls.count("release a") == 1


async def test_a_recovered_parent_that_unwinds_undoes_children_from_their_records(
    client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """Killed while its composed child ran, after the parent had failed elsewhere: the
    recoverer unwinds the child from its record (its step in doubt)."""
    prefix = f"{redis_prefix}unwind:"

    class Both(Saga):
        cancel_grace = 0  # the live run of a crash test ends at once
        item: str
        qty: int
        ledger: Resource[Ledger]

        one = compose(Hold)

        @step
        async def other(ledger: Ledger) -> None:
            await ledger.blocked.wait()
            raise RuntimeError("other failed")

    ledger = Ledger()
    ledger.block_on.add("a")
    dead = await crash_at_block(client, redis_url, Both, {"item": "a", "qty": 1}, ledger, prefix)
    report, statuses = await drive(client, prefix, Both, dead)
    assert report.outcome in ("failed", "compensation_failed")
    assert statuses["p/one/1"] in ("failed", "compensation_failed")
    assert dead.held.get("a", 0) == 0


async def test_a_child_whose_record_is_gone_is_reported_not_skipped(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """A child run that ran but whose record is gone (past retention, deleted) cannot be
    undone from it: the parent's undo says so instead of passing it over silently."""
    from asaga import UndoFailed

    ledger = Ledger()
    async with RedisRunStore(client, prefix=f"{redis_prefix}gone/") as runs:
        await Bulk.run(lines=LINES, ledger=ledger, runs=runs, run_id="p")
        await client.delete(f"{redis_prefix}gone/run:p/holds/1/1")
        with pytest.raises(UndoFailed) as caught:
            await Bulk.undo("p", runs=runs, ledger=ledger)
    assert caught.value.failed_compensations == ("holds",)
    assert "p/holds/1/1" in repr(caught.value.errors.exceptions)
    assert "is gone" in repr(caught.value.errors.exceptions)
    assert ledger.held == {"a": 0, "b": 2, "c": 0}  # the others were undone


async def test_child_runs_never_hide_top_level_runs_from_a_sweep(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    """Abandoned child runs are left to their parent inside the store's search, so they
    never count against a sweep's ``limit``."""
    from tests.unfinished_runs import unfinished_run

    async with RedisRunStore(client, prefix=f"{redis_prefix}hide/") as dead:
        for index in range(5):
            await dead.create(unfinished_run("Hold", f"gone/holds/1/{index}"), None)
        await dead.create(unfinished_run("Hold", "top"), None)
        owner = dead.owner
    await client.delete(f"{redis_prefix}hide/owner:{owner}")  # its process died
    async with RedisRunStore(client, prefix=f"{redis_prefix}hide/") as runs:
        report = await recover(runs, sagas=[Hold], resources={"ledger": Ledger()}, limit=3)
    assert [r.run_id for r in report] == ["top"]
