"""A worker's stop (``stop`` set, or SIGTERM: see tests/workers/test_worker_processes.py for
the ``asaga worker`` process): its grace is for the jobs it runs, not for its idle job
slots. An idle worker stops at once whatever its grace; a busy one takes no new job, lets
its running run finish within the grace, and cuts off (unwinds) what outlives it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import structlog
from structlog.testing import capture_logs

from asaga import Resource, Saga, step
from asaga.runs import RedisRunStore
from asaga.workers import SaqQueue, Served, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


class Gate:
    """What the test and a run's step share: the step says it entered, waits for
    ``release``, and says if it was cut off."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.cut = anyio.Event()


class Held(Saga[str]):
    """One step that waits at the gate when asked to."""

    text: str
    wait: bool
    gate: Resource[Gate]
    output = "hold"
    cancel_grace = 0.2

    @step
    async def hold(text: str, wait: bool, gate: Gate) -> str:
        if wait:
            gate.entered.set()
            try:
                await gate.release.wait()
            except BaseException:
                gate.cut.set()
                raise
        return text.upper()


class Worker:
    """A worker serving ``Held`` in this process, and a caller's queue and store."""

    def __init__(self, queue: SaqQueue, runs: RedisRunStore, gate: Gate) -> None:
        self.queue = queue
        self.runs = runs
        self.gate = gate
        self.stop = anyio.Event()
        self.stopped = anyio.Event()

    async def start(self, text: str, *, wait: bool = False) -> Any:
        return await Held.start(queue=self.queue, runs=self.runs, text=text, wait=wait)


@pytest.fixture
def worker(redis_url: str, redis_prefix: str) -> Callable[[float], Any]:
    """``async with worker(grace) as w``: a worker with that shutdown grace, running until
    ``w.stop`` is set (``w.stopped`` is set once ``serve`` returned); the queue's keys are
    deleted afterwards."""

    @asynccontextmanager
    async def make(grace: float) -> AsyncIterator[Worker]:
        name = f"ws{uuid.uuid4().hex[:10]}"
        client = aioredis.Redis.from_url(redis_url)
        gate = Gate()
        try:
            async with (
                RedisRunStore(client, prefix=redis_prefix) as runs,
                SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue,
                SaqQueue.from_url(redis_url, name=name, heartbeat=5) as jobs,
                anyio.create_task_group() as tg,
            ):
                w = Worker(queue, runs, gate)
                served = Served(sagas=[Held], runs=runs, resources={"gate": gate})

                async def work() -> None:
                    await serve(jobs, served, concurrency=4, shutdown_grace=grace, stop=w.stop)
                    w.stopped.set()

                tg.start_soon(work)
                try:
                    yield w
                finally:
                    w.stop.set()
        finally:
            keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    return make


@contextmanager
def _told(event: str, seen: anyio.Event) -> Iterator[None]:
    """Set ``seen`` once ``event`` is logged. Every level is let through meanwhile: a
    module imported by another test may have configured structlog to drop INFO."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))

    def processor(logger: Any, method: str, entry: Any) -> Any:
        if entry.get("event") == event:
            seen.set()
        return entry

    try:
        with capture_logs(processors=[processor]):
            yield
    finally:
        structlog.configure(wrapper_class=wrapper)


async def test_an_idle_worker_stops_at_once_whatever_its_grace(worker: Any) -> None:
    """With no job running, a worker whose grace is 30 s stops within a couple of seconds
    of being told (SAQ's own stop waits the whole grace for its idle job slots)."""
    async with worker(30.0) as w:
        handle = await w.start("up")
        with anyio.fail_after(10):  # the worker is up: it ran a run
            assert (await handle.result()).output == "UP"
        w.stop.set()
        with anyio.fail_after(3):
            await w.stopped.wait()


async def test_a_busy_worker_takes_no_new_job_and_lets_its_run_finish(worker: Any) -> None:
    """A worker told to stop while a run waits in its step: it takes no new job (a run
    started then stays queued), waits for the run (within its 30 s grace), which finishes
    and is not cut off, then stops."""
    async with worker(30.0) as w:
        handle = await w.start("busy", wait=True)
        stopping = anyio.Event()
        with _told("worker_stopping", stopping):
            with anyio.fail_after(10):
                await w.gate.entered.wait()
            w.stop.set()
            with anyio.fail_after(5):
                await stopping.wait()
        late = await w.start("late")
        assert not w.stopped.is_set()  # its run still runs
        w.gate.release.set()
        with anyio.fail_after(10):
            await w.stopped.wait()
            result = await handle.result()
        assert result.output == "BUSY"
        assert not w.gate.cut.is_set()
        assert (await w.runs.load(handle.run_id)).status == "succeeded"
        assert await late.status() == "queued"  # no job was taken after the stop


async def test_a_run_that_outlives_the_grace_is_cut_off_and_unwound(worker: Any) -> None:
    """A run still in its step when the grace (1 s) ends is cancelled on its worker: its
    step is cut off and the run recorded as cancelled; the worker stops."""
    async with worker(1.0) as w:
        handle = await w.start("stuck", wait=True)
        with anyio.fail_after(10):
            await w.gate.entered.wait()
        w.stop.set()
        with anyio.fail_after(10):
            await w.gate.cut.wait()
            await w.stopped.wait()
        assert (await w.runs.load(handle.run_id)).status == "cancelled"
