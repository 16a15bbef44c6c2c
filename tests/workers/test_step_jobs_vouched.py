"""A worker given the runs' store (``Served(records=runs)``) runs a job of a step on
workers only if the job's run vouches for it: its record says that attempt of that step
(or of its compensation) is running. A crafted job (a run that is not recorded, a stale
attempt, another saga's run) and the step of a run with no store are refused, the
refusal logged as an error; the steps and compensations of recorded runs run as ever.
(Without ``records`` a worker checks only that it serves the saga, its version and the
step: see tests/workers/test_steps_on_workers.py.)"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from asaga import Resource, Saga, SagaFailed, map_each, step
from asaga.runs import RedisRunStore
from asaga.workers import RemoteStepFailed, SaqQueue, Served, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


class Bank:
    def __init__(self, who: str) -> None:
        self.who = who
        self.calls: list[str] = []


def make_pay(queue: str) -> Any:
    class Pay(Saga[str]):
        order_id: str
        amount: int
        bank: Resource[Bank]
        output = "ship"

        @step(queue=queue)
        async def pay(order_id: str, amount: int, bank: Bank) -> str:
            bank.calls.append(f"{bank.who}: pay {order_id}")
            return f"p-{order_id}"

        @pay.compensate
        async def refund(pay: str, bank: Bank) -> None:
            bank.calls.append(f"{bank.who}: refund {pay}")

        @step
        async def ship(pay: str, amount: int) -> str:
            if amount == 99:
                raise RuntimeError("no courier")
            return f"shipped {pay}"

    return Pay


async def price(line: int, bank: Bank) -> int:
    bank.calls.append(f"{bank.who}: price {line}")
    return line * 10


def make_priced(queue: str) -> Any:
    class Priced(Saga[list[int]]):
        lines: list[int]
        bank: Resource[Bank]
        output = "prices"

        prices = map_each(price, over="lines", queue=queue, batch_size=2)

    return Priced


@pytest.fixture
async def world(
    redis_url: str, redis_prefix: str
) -> AsyncIterator[tuple[Any, SaqQueue, RedisRunStore, Bank, Any]]:
    """A saga with a step on a queue of its own, a worker serving it with the runs' store
    as ``records``, and the queue open for the caller."""
    name = f"pay-{uuid.uuid4().hex[:10]}"
    pay, priced = make_pay(name), make_priced(name)
    worker = Bank("worker")
    stop = anyio.Event()
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with (
            RedisRunStore(client, prefix=redis_prefix) as runs,
            SaqQueue.from_url(redis_url, name=name, heartbeat=5) as jobs,
            anyio.create_task_group() as tg,
        ):
            served = Served(sagas=[pay, priced], resources={"bank": worker}, records=runs)
            tg.start_soon(lambda: serve(jobs, served, concurrency=2, shutdown_grace=1, stop=stop))
            async with SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue:
                yield pay, queue, runs, worker, priced
            stop.set()
    finally:
        keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def crafted(pay: Any, run_id: str, attempt: str | None) -> dict[str, Any]:
    """A job of step ``pay`` that asaga did not send: the right saga, version and step."""
    return {
        "kind": "step",
        "saga": pay.__name__,
        "saga_version": pay.__asaga__.saga_version,
        "step": "pay",
        "run_id": run_id,
        "attempt": attempt,
        "arguments": base64.b64encode(
            msgspec.msgpack.encode({"order_id": "o-x", "amount": 1})
        ).decode(),
    }


async def test_the_steps_and_compensations_of_recorded_runs_run(world: Any) -> None:
    """A durable run's step runs on the worker; a run that then fails has the step's
    compensation run there too (its record says each is running)."""
    pay, _, runs, worker, _ = world
    with anyio.fail_after(10):
        result = await pay.run(order_id="o-1", amount=1, bank=Bank("caller"), runs=runs)
        with pytest.raises(SagaFailed) as caught:
            await pay.run(order_id="o-2", amount=99, bank=Bank("caller"), runs=runs)
    assert result.output == "shipped p-o-1"
    assert caught.value.compensated == ("pay",)
    assert worker.calls == ["worker: pay o-1", "worker: pay o-2", "worker: refund p-o-2"]


async def test_crafted_jobs_are_refused_and_logged(world: Any) -> None:
    """Jobs of the step that no run vouches for are refused, never run: a run that is not
    recorded, an attempt of a recorded run that is not running (it succeeded), no
    attempt at all. Each refusal is logged as an error."""
    pay, queue, runs, worker, _ = world
    with anyio.fail_after(10):
        done = await pay.run(order_id="o-3", amount=1, bank=Bank("caller"), runs=runs)
    worker.calls.clear()
    cases = {
        "ghost": (crafted(pay, "no-such-run", "1"), "run no-such-run is not recorded"),
        "stale": (
            crafted(pay, done.run_id, "1"),
            f"the record of run {done.run_id} does not say step 'pay' at attempt 1 is running",
        ),
        "bare": (crafted(pay, done.run_id, None), "names no recorded attempt"),
    }
    with capture_logs() as logs:
        for key, (arguments, _) in cases.items():
            assert await queue.enqueue(key, arguments)
        with anyio.fail_after(10):
            ends = {key: await queue.wait(key) for key in cases}
    for key, (_, reason) in cases.items():
        assert ends[key].state == "complete", ends[key]
        assert reason in ends[key].result["refused"], ends[key].result
    assert worker.calls == []
    refusals = [e for e in logs if e["event"] == "step_job_refused"]
    assert sorted(e["run_id"] for e in refusals) == sorted(
        [done.run_id, done.run_id, "no-such-run"]
    )
    assert {e["log_level"] for e in refusals} == {"error"}


async def test_the_step_of_a_run_with_no_store_is_refused(world: Any) -> None:
    """A run with no store has no record to vouch for its step: the worker refuses it,
    and the step fails with what the worker said."""
    pay, _, _, worker, _ = world
    with anyio.fail_after(10), pytest.raises(SagaFailed) as caught:
        await pay.run(order_id="o-4", amount=1, bank=Bank("caller"))
    error = caught.value.__cause__
    assert isinstance(error, RemoteStepFailed)
    assert "recorded runs only" in error.error
    assert worker.calls == []


async def test_the_elements_of_a_recorded_map_run(world: Any) -> None:
    """The elements of a mapped step on workers in a durable run run on the worker (their
    jobs name the mapped step's attempt, which its record says is running)."""
    _, _, runs, worker, priced = world
    with anyio.fail_after(10):
        result = await priced.run(lines=[1, 2, 3], bank=Bank("caller"), runs=runs)
    assert result.output == [10, 20, 30]
    assert sorted(worker.calls) == ["worker: price 1", "worker: price 2", "worker: price 3"]
