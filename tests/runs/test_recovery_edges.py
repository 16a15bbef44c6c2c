"""Durable runs at the edges: records recovery cannot drive (corrupt, of a newer schema,
foreign, more of them than a sweep's limit), and a Redis that loses writes (no
persistence) or keeps them (AOF) across a kill -9 of the server.

Tests against the shared Redis use their own key prefix; those that restart or kill Redis
start a redis-server of their own (tests/redis_servers.py) and kill it by its PID.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from asaga import Event, RunRecordLost, Saga, SagaFailed, step
from asaga.locks import RedisLockProvider
from asaga.runs import MemoryRunStore, RedisRunStore, recover
from tests.redis_servers import AOF_ALWAYS, NO_PERSISTENCE, RedisServer, redis_server
from tests.unfinished_runs import unfinished_run

PICKLE = b"\x80\x03cos\nsystem\nq\x00."  # what a tampered record might hold


class Mine(Saga):
    """The saga whose runs the sweeps recover."""

    @step
    async def work(run_id: str) -> str:
        return run_id


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def abandon_bad_records(client: aioredis.Redis, prefix: str, count: int) -> list[str]:
    """``count`` unfinished runs listed as runs of Mine whose records recovery cannot
    drive (in turn: not a record, a newer schema, a record of another saga), then one
    genuine run of Mine, ``mine-ok``; their process is gone (its lease dropped)."""
    bad: list[str] = []
    async with RedisRunStore(client, prefix=prefix) as dead:
        for n in range(count):
            kind = ("corrupt", "newer", "foreign")[n % 3]
            run_id = f"{kind}-{n}"
            if kind == "newer":  # written by a newer asaga, before a rollback
                await dead.create(unfinished_run("Mine", run_id), None)
                newer = unfinished_run("Mine", run_id, version=2).record
                await client.hset(f"{prefix}run:{run_id}", "record", newer)
            elif kind == "foreign":  # the index says Mine, the record another saga
                await dead.create(unfinished_run("Other", run_id), None)
                await client.hset(f"{prefix}run:{run_id}", "saga", "Mine")
            else:
                await dead.create(unfinished_run("Mine", run_id), None)
                await client.hset(f"{prefix}run:{run_id}", "record", PICKLE)
            bad.append(run_id)
        await dead.create(unfinished_run("Mine", "mine-ok"), None)
    return bad


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet_logs")
async def test_a_foreign_record_does_not_crash_the_sweep(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """A run listed under saga Mine whose record says saga Other (a KeyError before) is
    quarantined; the genuine run next to it is recovered by the same sweep."""
    prefix = f"{redis_prefix}runs:"
    async with RedisRunStore(client, prefix=prefix) as dead:
        await dead.create(unfinished_run("Other", "foreign-1"), None)
        await client.hset(f"{prefix}run:foreign-1", "saga", "Mine")
        await dead.create(unfinished_run("Mine", "mine-1"), None)
    async with RedisRunStore(client, prefix=prefix) as runs:
        report = await recover(runs, sagas=[Mine])
        outcomes = {r.run_id: r.outcome for r in report}
        assert outcomes == {"foreign-1": "quarantined", "mine-1": "succeeded"}
        [aside] = await runs.quarantined()
        assert (aside.run_id, aside.saga, aside.by) == ("foreign-1", "Mine", runs.owner)
        assert "foreign" in aside.reason
        assert "saga Other" in aside.reason
        assert await recover(runs, sagas=[Mine]) == []  # out of every later sweep


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet_logs")
async def test_more_bad_records_than_the_limit_do_not_wedge_recovery(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """120 corrupt, newer-schema and foreign records at the head of the running set, more
    than a sweep's limit (100): one sweep quarantines them all, with their reasons, and
    still recovers the genuine run behind them; the next sweep finds nothing."""
    prefix = f"{redis_prefix}runs:"
    bad = await abandon_bad_records(client, prefix, 120)
    async with RedisRunStore(client, prefix=prefix) as runs:
        report = await recover(runs, sagas=[Mine], limit=100)
        assert [(r.run_id, r.outcome) for r in report if r.outcome != "quarantined"] == [
            ("mine-ok", "succeeded")
        ]
        assert sorted(r.run_id for r in report if r.outcome == "quarantined") == sorted(bad)
        assert await recover(runs, sagas=[Mine]) == []
        aside = {q.run_id: q.reason for q in await runs.quarantined(limit=1000)}
        assert sorted(aside) == sorted(bad)
        assert "not an asaga record" in aside["corrupt-0"]
        assert "schema version 2" in aside["newer-1"]
        assert "foreign" in aside["foreign-2"]
        # Kept, readable, and not listed among the runs (which it would break).
        listed = [r.run_id for r in await runs.list(limit=1000)]
        assert listed == ["mine-ok"]


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet_logs")
async def test_a_quarantined_run_is_readmitted_after_an_upgrade(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """A record of a newer schema is quarantined; readmitted unchanged it is quarantined
    again; once its record reads (the asaga that wrote it is back), readmitted, the next
    sweep recovers it. Readmitting a run that is not quarantined says so."""
    prefix = f"{redis_prefix}runs:"
    async with RedisRunStore(client, prefix=prefix) as dead:
        await dead.create(unfinished_run("Mine", "newer-1"), None)
        newer = unfinished_run("Mine", "newer-1", version=2).record
        await client.hset(f"{prefix}run:newer-1", "record", newer)
    async with RedisRunStore(client, prefix=prefix) as runs:
        assert [r.outcome for r in await recover(runs, sagas=[Mine])] == ["quarantined"]
        await runs.readmit("newer-1")
        assert await runs.quarantined() == []
        assert [r.outcome for r in await recover(runs, sagas=[Mine])] == ["quarantined"]
        await client.hset(
            f"{prefix}run:newer-1", "record", unfinished_run("Mine", "newer-1").record
        )  # what the newer asaga would read
        await runs.readmit("newer-1")
        report = await recover(runs, sagas=[Mine])
        assert [(r.run_id, r.outcome) for r in report] == [("newer-1", "succeeded")]
        record = await runs.load("newer-1")
        assert record.status == "succeeded"
        assert await client.hget(f"{prefix}run:newer-1", "quarantined") is None
        from asaga import RunNotFound

        with pytest.raises(RunNotFound, match="not quarantined"):
            await runs.readmit("newer-1")


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet_logs")
async def test_the_quarantine_script_checks_its_arguments_before_writing(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """A quarantine script call with a retention that is not a number is refused before
    it writes anything: the run stays in the running set, unexpiring, out of quarantine;
    readmit of a run whose running score is missing puts it back all the same."""
    prefix = f"{redis_prefix}runs:"
    async with RedisRunStore(client, prefix=prefix) as runs:
        await runs.create(unfinished_run("Mine", "m-1"), None)
        keys = [f"{prefix}run:m-1", f"{prefix}events:m-1", f"{prefix}runs:running"]
        keys.append(f"{prefix}runs:quarantine")
        with pytest.raises(aioredis.ResponseError, match="asaga quarantine"):
            await runs._quarantine(keys=keys, args=["m-1", runs.owner, "r", 1.0, "x", 0, 5])
        assert await client.zscore(f"{prefix}runs:running", "m-1") is not None
        assert await client.hget(f"{prefix}run:m-1", "quarantined") is None
        assert await client.pttl(f"{prefix}run:m-1") == -1
        assert await runs.quarantine("m-1", "does not fit") is not None
        await client.hdel(f"{prefix}run:m-1", "running_score")
        await runs.readmit("m-1")
        assert await client.zscore(f"{prefix}runs:running", "m-1") == 0
        assert await client.pttl(f"{prefix}run:m-1") == -1


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet_logs")
async def test_every_key_has_a_ttl_or_a_bound(
    redis_prefix: str, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After runs finished, failed, were keyed and quarantined, every key under the prefix
    expires, or is one of the three sorted sets, each bounded: the running set holds only
    unfinished runs, the index is trimmed to the retention, and the quarantine set to the
    retention and to its size cap (5 here)."""
    import asaga.runs._redis

    monkeypatch.setattr(asaga.runs._redis, "_MAX_QUARANTINED", 5)
    prefix = f"{redis_prefix}runs:"
    await abandon_bad_records(client, prefix, 8)
    async with RedisRunStore(client, prefix=prefix) as runs:
        await Mine.run(runs=runs, idempotency_key="k-1")
        await recover(runs, sagas=[Mine])
        assert len(await runs.quarantined(limit=100)) == 5  # the 5 newest kept
    sets = {f"{prefix}runs:running", f"{prefix}runs:index", f"{prefix}runs:quarantine"}
    assert await client.zcard(f"{prefix}runs:running") == 0
    assert await client.zcard(f"{prefix}runs:quarantine") == 5
    # the listing indexes (RunStore.page): trimmed to the retention on each run's end, the
    # quarantined ones capped like the quarantine set
    listings = (f"{prefix}runs:by-status:", f"{prefix}runs:by-saga", f"{prefix}runs:sagas")
    assert await client.zcard(f"{prefix}runs:by-status:quarantined") == 5
    unbounded = []
    async for raw in client.scan_iter(match=f"{prefix}*"):
        key = raw.decode()
        if key not in sets and not key.startswith(listings) and await client.pttl(key) < 0:
            unbounded.append(key)
    assert unbounded == []


# -- a Redis that loses writes ----------------------------------------------------------


def test_a_vanished_record_is_unwound_by_its_process_in_memory() -> None:
    """The memory store tells a vanished record (RunRecordLost) from a run taken over:
    the run's process compensates what it completed, writes nothing more, and raises
    SagaFailed caused by RunRecordLost; the events say why."""

    async def main() -> None:
        runs = MemoryRunStore()
        undone: list[str] = []
        events: list[Event] = []

        class Two(Saga):
            hooks = (events.append,)

            @step
            async def first() -> str:
                return "one"

            @first.compensate
            async def unfirst(first: str) -> None:
                undone.append(first)

            @step
            async def second(first: str) -> str:
                runs._runs.pop("lost-1")  # the store forgets the run
                return first + "+two"

        with pytest.raises(SagaFailed) as caught:
            await Two.run(runs=runs, run_id="lost-1")
        assert isinstance(caught.value.__cause__, RunRecordLost)
        assert undone == ["one"]
        assert caught.value.compensated == ("first",)
        assert "lost-1" not in runs._runs  # nothing written after the loss
        failed = [e for e in events if e.kind == "run_failed"]
        assert len(failed) == 1
        assert "RunRecordLost" in (failed[0].error or "")

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)


def saga_with_a_gate() -> tuple[type[Saga], anyio.Event, anyio.Event, list[str]]:
    """A saga whose second step waits for the test (between them Redis is killed)."""
    gate, proceed = anyio.Event(), anyio.Event()
    undone: list[str] = []

    class Two(Saga):
        @step
        async def first() -> str:
            return "one"

        @first.compensate
        async def unfirst(first: str) -> None:
            undone.append(first)

        @step
        async def second(first: str) -> str:
            gate.set()
            await proceed.wait()
            return first + "+two"

    return Two, gate, proceed, undone


async def run_across_a_redis_kill(
    server: RedisServer, client: aioredis.Redis
) -> tuple[BaseException | str, list[str], list[dict[str, Any]]]:
    """Run the gated saga with an idempotency key; kill -9 ``server`` during its second
    step and start it again (same directory, same config). Returns the run's outcome, the
    compensations and the logs."""
    saga, gate, proceed, undone = saga_with_a_gate()
    outcome: list[BaseException | str] = []
    with capture_logs() as logs:
        async with RedisRunStore(client, write_timeout=10.0, owner_ttl=3.0) as runs:

            async def run() -> None:
                try:
                    outcome.append((await saga.run(runs=runs, idempotency_key="k-1")).output)
                except SagaFailed as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                with anyio.fail_after(5):
                    await gate.wait()
                await server.restart()
                proceed.set()
    return outcome[0], undone, logs


@pytest.mark.anyio
async def test_redis_without_persistence_killed_mid_run(tmp_path: Path) -> None:
    """Redis without persistence is killed (-9) and restarted empty while a run is in
    its second step: the run's next write finds no record (RunRecordLost, not
    RunTakenOver), so its process compensates the first step itself, writes nothing
    more, and raises SagaFailed; the store had warned when it opened."""
    async with (
        redis_server(tmp_path, NO_PERSISTENCE) as server,
        aioredis.Redis(port=server.port, socket_connect_timeout=0.5) as client,
    ):
        outcome, undone, logs = await run_across_a_redis_kill(server, client)
        assert isinstance(outcome, SagaFailed), outcome
        assert isinstance(outcome.__cause__, RunRecordLost)
        assert undone == ["one"]
        assert await client.keys("asaga:run:*") == []  # nothing written after the loss
        kinds = [entry["event"] for entry in logs]
        assert kinds.count("redis_without_persistence") == 1
        assert "run_record_lost" in kinds
        failed = [entry for entry in logs if entry["event"] == "run_failed"]
        assert "RunRecordLost" in failed[0]["error"]


@pytest.mark.anyio
async def test_redis_with_aof_killed_mid_run(tmp_path: Path) -> None:
    """Redis with an append-only file (appendfsync always) is killed (-9) and restarted
    while a run is in its second step: the record is still there, the run succeeds, and
    the store gave no persistence warning."""
    async with (
        redis_server(tmp_path, AOF_ALWAYS) as server,
        aioredis.Redis(port=server.port, socket_connect_timeout=0.5) as client,
    ):
        outcome, undone, logs = await run_across_a_redis_kill(server, client)
        assert outcome == "one+two"
        assert undone == []
        assert [e for e in logs if e["event"] == "redis_without_persistence"] == []
        [key] = await client.keys("asaga:run:*")
        assert await client.hget(key, "status") == b"succeeded"


@pytest.mark.anyio
async def test_the_persistence_warning(tmp_path: Path) -> None:
    """On a server with appendonly no, a RedisRunStore and a RedisLockProvider each warn
    once (entered twice, still once); a user refused CONFIG GET (managed Redis) gets no
    warning and no failure."""
    async with (
        redis_server(tmp_path, NO_PERSISTENCE) as server,
        aioredis.Redis(port=server.port) as admin,
    ):
        await admin.execute_command(
            "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-config"
        )
        with capture_logs() as logs:
            store = RedisRunStore(admin)
            for _ in range(2):
                async with store:
                    pass
            async with RedisLockProvider(admin):
                pass
        warnings = [e for e in logs if e["event"] == "redis_without_persistence"]
        assert [e["store"] for e in warnings] == ["RedisRunStore", "RedisLockProvider"]
        assert all(e["log_level"] == "warning" for e in warnings)
        with capture_logs() as logs:
            async with aioredis.Redis.from_url(
                f"redis://app:pw@127.0.0.1:{server.port}/0"
            ) as limited:
                async with RedisRunStore(limited) as runs:
                    await Mine.run(runs=runs)
                async with RedisLockProvider(limited):
                    pass
        assert [e for e in logs if e["event"] == "redis_without_persistence"] == []


def test_the_memory_store_quarantines_and_readmits_too() -> None:
    """MemoryRunStore has the same quarantine API: a run it owns is set aside (out of
    list(), kept with the reason), a run it does not own is refused, readmit puts it back
    once; past its retention it is neither listed nor readmitted."""
    from asaga import RunNotFound

    async def main() -> None:
        runs = MemoryRunStore()
        await runs.create(unfinished_run("Mine", "m-1"), None)
        aside = await runs.quarantine("m-1", "does not fit")
        assert aside is not None
        assert (aside.run_id, aside.saga, aside.reason) == ("m-1", "Mine", "does not fit")
        assert await runs.quarantined() == [aside]
        assert await runs.list() == []
        assert await runs.quarantine("m-1", "again") is None  # not owned any more
        await runs.readmit("m-1")
        assert [r.run_id for r in await runs.list()] == ["m-1"]
        with pytest.raises(RunNotFound):
            await runs.readmit("m-1")

        now = [0.0]
        runs = MemoryRunStore(clock=lambda: now[0], retention=10.0, idempotency_window=5.0)
        await runs.create(unfinished_run("Mine", "m-2"), None)
        assert await runs.quarantine("m-2", "does not fit") is not None
        now[0] = 11.0  # past retention: neither listed nor readmitted
        assert await runs.quarantined() == []
        with pytest.raises(RunNotFound):
            await runs.readmit("m-2")

    for backend in ("asyncio", "trio"):
        anyio.run(main, backend=backend)
