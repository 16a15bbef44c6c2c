"""The job of a step on workers is keyed by its run, step and attempt
(``<run id>:<step>:step:<attempt>``): the same attempt is never enqueued twice while its
job is unfinished, and a recovery withdraws the job of a step its record says is in doubt
before it decides anything, so that a job left queued by a dead process never runs after
(with no worker up when the run was recovered, a worker that starts later would run it).

The run's process "dies" by closing its run store (its lease is dropped: the run is
abandoned at once, as in tests/runs) while the run waits for its step's job on a queue
no worker serves yet."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from asaga import Resource, Saga, step
from asaga.runs import RedisRunStore, recover
from asaga.workers import SaqQueue, Served, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


class Bank:
    """Where a step's calls land (the worker's and the caller's are different objects)."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.calls: list[str] = []


def make_pay(queue: str, *, idempotent: bool) -> Any:
    class Pay(Saga[str]):
        order_id: str
        bank: Resource[Bank]
        output = "pay"

        @step(queue=queue, idempotent=idempotent)
        async def pay(order_id: str, bank: Bank) -> str:
            bank.calls.append(f"{bank.who}: pay {order_id}")
            return f"paid {order_id}"

    return Pay


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def name(client: aioredis.Redis) -> AsyncIterator[str]:
    """A queue name of this test's own; its keys are deleted afterwards."""
    name = f"pay-{uuid.uuid4().hex[:10]}"
    yield name
    keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
    if keys:
        await client.delete(*keys)


async def until_state(queue: SaqQueue, key: str, state: str) -> None:
    """Wait (a bounded poll) until the job under ``key`` is in ``state``."""
    for _ in range(1000):
        if await queue.state(key) == state:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"job {key} never {state}: {await queue.state(key)}")


class Abandoned:
    """A durable run of a saga (``pay``) in this process, whose "process" can die: its
    run store is closed (its lease dropped: the run is abandoned at once), while the
    run's coroutine is left waiting for its step's job."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.store = RedisRunStore(client, prefix=prefix)
        self._dying = anyio.Event()
        self._dead = anyio.Event()

    async def hold(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Keep the store open until :meth:`die` (in a task of its own, so that it closes
        while the run's coroutine goes on)."""
        async with self.store:
            task_status.started()
            await self._dying.wait()
        self._dead.set()

    async def die(self) -> None:
        self._dying.set()
        await self._dead.wait()


@contextlib.asynccontextmanager
async def abandoned(
    pay: Any, client: aioredis.Redis, prefix: str, run_id: str
) -> AsyncIterator[Abandoned]:
    """Start the run ``run_id`` of ``pay`` (see :class:`Abandoned`); its coroutine is
    cancelled on exit (its writes are refused by then: the run was taken over)."""
    run = Abandoned(client, prefix)
    async with anyio.create_task_group() as tg:
        await tg.start(run.hold)

        async def caller() -> None:
            with contextlib.suppress(Exception):  # taken over: its writes are refused
                await pay.run(order_id="o-1", bank=Bank("caller"), runs=run.store, run_id=run_id)

        tg.start_soon(caller)
        try:
            yield run
        finally:
            await run.die()
            tg.cancel_scope.cancel()


async def test_recovery_withdraws_the_queued_job_of_a_step_in_doubt(
    redis_url: str, redis_prefix: str, client: aioredis.Redis, name: str
) -> None:
    """A step (not idempotent) whose job is queued when its run's process dies: the same
    attempt cannot be enqueued again; recovery withdraws the job, then unwinds the run
    with the step in doubt; a worker that starts afterwards never runs it (it runs a
    later job, and only that one)."""
    pay = make_pay(name, idempotent=False)
    key = f"{name}-w1:pay:step:1"
    worker = Bank("worker")
    stop = anyio.Event()
    async with (
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue,
        abandoned(pay, client, redis_prefix, f"{name}-w1") as run,
    ):
        with anyio.fail_after(10):
            await until_state(queue, key, "queued")
        assert not await queue.enqueue(key, {"kind": "step"})  # the same attempt: refused
        await run.die()
        async with RedisRunStore(client, prefix=redis_prefix) as runs:
            with anyio.fail_after(20):
                report = await recover(runs, sagas=[pay], resources={"bank": Bank("sweep")})
            record = await runs.load(f"{name}-w1", events=True)
            in_doubt = (await runs.page(status="in_doubt")).runs
        assert [(r.run_id, r.outcome, r.in_doubt) for r in report] == [
            (f"{name}-w1", "failed", ("pay",))
        ]
        assert record.status == "failed"
        assert record.events[-1].kind == "run_failed"  # recorded with the recovery's end
        assert [r.run_id for r in in_doubt] == [f"{name}-w1"]
        assert await queue.state(key) == "aborted"
        async with (
            SaqQueue.from_url(redis_url, name=name, heartbeat=5) as jobs,
            anyio.create_task_group() as tg,
        ):
            served = Served(sagas=[pay], resources={"bank": worker})
            tg.start_soon(lambda: serve(jobs, served, concurrency=1, shutdown_grace=1, stop=stop))
            with anyio.fail_after(10):
                later = await pay.run(order_id="o-2", bank=Bank("caller"))
            stop.set()
    assert later.output == "paid o-2"
    assert worker.calls == ["worker: pay o-2"]  # never "pay o-1"


async def test_recovery_resumes_an_idempotent_step_at_its_next_attempt_only(
    redis_url: str, redis_prefix: str, client: aioredis.Redis, name: str
) -> None:
    """An idempotent step whose job (attempt 1) is queued when its run's process dies:
    recovery withdraws that job and sends attempt 2 (a job of its own key); the worker
    that starts then runs the step once, for attempt 2, and the run succeeds."""
    pay = make_pay(name, idempotent=True)
    first, second = f"{name}-w2:pay:step:1", f"{name}-w2:pay:step:2"
    worker = Bank("worker")
    stop = anyio.Event()
    async with (
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue,
        abandoned(pay, client, redis_prefix, f"{name}-w2") as run,
        RedisRunStore(client, prefix=redis_prefix) as runs,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(10):
            await until_state(queue, first, "queued")
        await run.die()
        report: list[Any] = []
        swept = anyio.Event()

        async def sweep() -> None:
            report.extend(await recover(runs, sagas=[pay], resources={"bank": Bank("sweep")}))
            swept.set()

        tg.start_soon(sweep)
        with anyio.fail_after(10):
            await until_state(queue, second, "queued")  # attempt 2 waits for a worker
        assert await queue.state(first) == "aborted"
        async with SaqQueue.from_url(redis_url, name=name, heartbeat=5) as jobs:
            served = Served(sagas=[pay], resources={"bank": worker})
            tg.start_soon(lambda: serve(jobs, served, concurrency=1, shutdown_grace=1, stop=stop))
            with anyio.fail_after(10):
                await swept.wait()
            stop.set()
    assert [(r.run_id, r.outcome, r.resumed) for r in report] == [
        (f"{name}-w2", "succeeded", ("pay",))
    ]
    assert worker.calls == ["worker: pay o-1"]  # once: attempt 2, never attempt 1


async def test_a_run_whose_step_job_cannot_be_withdrawn_is_left_for_the_next_sweep(
    redis_url: str,
    redis_prefix: str,
    client: aioredis.Redis,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the job of a step in doubt cannot be withdrawn (the queue's Redis away), the
    sweep reports an error and leaves the run abandoned, not taken: the next sweep (here,
    once the queue answers again) withdraws the job and decides."""
    from asaga.workers._remote import OnWorkers

    pay = make_pay(name, idempotent=False)
    key = f"{name}-w3:pay:step:1"
    withdraw = OnWorkers.withdraw

    async def unreachable(self: OnWorkers, run_id: str, attempt: int) -> None:
        raise ConnectionError("the queue's Redis is away")

    async with (
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue,
        abandoned(pay, client, redis_prefix, f"{name}-w3") as run,
    ):
        with anyio.fail_after(10):
            await until_state(queue, key, "queued")
        await run.die()
        async with RedisRunStore(client, prefix=redis_prefix) as runs:
            monkeypatch.setattr(OnWorkers, "withdraw", unreachable)
            with anyio.fail_after(20):
                first = await recover(runs, sagas=[pay], resources={"bank": Bank("sweep")})
            assert [(r.run_id, r.outcome) for r in first] == [(f"{name}-w3", "error")]
            assert "left for the next sweep" in (first[0].error or "")
            assert (await runs.load(f"{name}-w3")).status == "running"  # not taken
            assert await queue.state(key) == "queued"
            calls: list[int] = []

            async def counted(self: OnWorkers, run_id: str, attempt: int) -> None:
                calls.append(attempt)
                await withdraw(self, run_id, attempt)

            monkeypatch.setattr(OnWorkers, "withdraw", counted)
            with anyio.fail_after(20):
                second = await recover(runs, sagas=[pay], resources={"bank": Bank("sweep")})
            assert [(r.run_id, r.outcome, r.in_doubt) for r in second] == [
                (f"{name}-w3", "failed", ("pay",))
            ]
            assert calls == [1]  # withdrawn once, before the run was taken
        assert await queue.state(key) == "aborted"


async def test_a_withdrawn_attempt_is_refused_if_its_job_comes_later(
    redis_url: str, name: str
) -> None:
    """A withdrawal finds no job (its process was only paused past its lease, before it
    sent the job): the job of that attempt, if it comes later, is refused, so it never
    runs after the recovery decided; other keys are not affected."""
    pay = make_pay(name, idempotent=False)
    step = pay.__asaga__.plan.nodes["pay"].fn
    key = step.job_key(f"{name}-w4", "1")
    async with SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue:
        await step.withdraw(f"{name}-w4", 1)
        assert await queue.state(key) == "missing"
        assert not await queue.enqueue(key, {"kind": "step"})  # the late job: refused
        assert await queue.state(key) == "missing"
        assert await queue.enqueue(step.job_key(f"{name}-w4", "2"), {"kind": "step"})
