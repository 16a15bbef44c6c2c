"""Runs on workers, with the worker in this process (tests/workers/test_worker_processes.py
has real worker processes): start, result pushed back, failure, cancellation through the
handle, duplicate starts, bad input refused before anything is enqueued."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import InputValidationError, Resource, RunParked, Saga, SagaFailed, step, wait_for
from asaga.runs import MemoryRunStore, RedisRunStore
from asaga.workers import JobFailed, RunCancelled, SaqQueue, Served, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


class Opaque:
    """A result msgspec cannot encode."""


class Ledger:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered = anyio.Event()
        self.cut = anyio.Event()


class Order(Saga):
    order_id: str
    amount: int
    ledger: Resource[Ledger]
    output = "charge"
    cancel_grace = 0.2  # a step in flight when the run is cancelled is cut off after this

    @step
    async def reserve(order_id: str, ledger: Ledger) -> str:
        ledger.calls.append(f"reserve {order_id}")
        return f"r-{order_id}"

    @reserve.compensate
    async def unreserve(order_id: str, ledger: Ledger) -> None:
        ledger.calls.append(f"unreserve {order_id}")

    @step
    async def charge(reserve: str, amount: int, ledger: Ledger) -> int:
        if amount == 13:
            ledger.entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                ledger.cut.set()
        if amount < 0:
            raise ValueError("refund is not a charge")
        ledger.calls.append(f"charge {amount}")
        return amount


class Confirmation(msgspec.Struct):
    amount: int


class PaidOrder(Saga):
    """Waits for the payment's confirmation after reserving."""

    order_id: str
    ledger: Resource[Ledger]

    @step
    async def reserve(order_id: str, ledger: Ledger) -> str:
        ledger.calls.append(f"reserve {order_id}")
        return f"r-{order_id}"

    confirmed = wait_for(Confirmation, key="confirm:{order_id}", after=["reserve"])

    @step
    async def book(confirmed: Confirmation, ledger: Ledger) -> int:
        ledger.calls.append(f"book {confirmed.amount}")
        return confirmed.amount


class Stamp(Saga[str]):
    """No resources, so that it can be called with all its inputs: ``Stamp(text=...)``."""

    text: str
    output = "stamp"

    @step
    async def stamp(text: str) -> str:
        return text.upper()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def world(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> AsyncIterator[tuple[SaqQueue, RedisRunStore, Ledger]]:
    """A queue, a run store and a worker serving Order, all in this process."""
    name = f"t{uuid.uuid4().hex[:10]}"
    ledger = Ledger()
    stop = anyio.Event()
    async with (
        RedisRunStore(client, prefix=redis_prefix) as runs,
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue,
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as workers,
        anyio.create_task_group() as tg,
    ):
        served = Served(sagas=[Order, PaidOrder, Stamp], runs=runs, resources={"ledger": ledger})
        tg.start_soon(lambda: serve(workers, served, concurrency=4, shutdown_grace=1, stop=stop))
        yield queue, runs, ledger
        stop.set()
    keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
    if keys:
        await client.delete(*keys)


async def test_a_run_started_on_workers_returns_its_result(world: Any) -> None:
    queue, runs, ledger = world
    handle = await Order.start(queue=queue, runs=runs, order_id="o-1", amount=30)
    with anyio.fail_after(10):
        result = await handle.result()
    assert result.output == 30
    assert result.run_id == handle.run_id
    assert not result.replayed
    assert ledger.calls == ["reserve o-1", "charge 30"]
    assert (await runs.load(handle.run_id)).status == "succeeded"
    assert await handle.status() == "succeeded"


async def test_a_failed_run_raises_its_saga_failed_after_compensating(world: Any) -> None:
    queue, runs, ledger = world
    handle = await Order.start(queue=queue, runs=runs, order_id="o-2", amount=-1)
    with anyio.fail_after(10), pytest.raises(SagaFailed) as caught:
        await handle.result()
    assert caught.value.step == "charge"
    assert caught.value.compensated == ("reserve",)
    assert ledger.calls == ["reserve o-2", "unreserve o-2"]


async def test_one_idempotency_key_makes_one_run(world: Any) -> None:
    queue, runs, ledger = world
    first = await Order.start(queue=queue, runs=runs, order_id="o-3", amount=5, idempotency_key="k")
    again = await Order.start(queue=queue, runs=runs, order_id="o-3", amount=5, idempotency_key="k")
    assert first.run_id == again.run_id
    with anyio.fail_after(10):
        assert (await first.result()).output == 5
        assert (await again.result()).output == 5
    assert ledger.calls.count("charge 5") == 1


async def test_cancel_through_the_handle_unwinds_a_running_run(world: Any) -> None:
    queue, runs, ledger = world
    handle = await Order.start(queue=queue, runs=runs, order_id="o-4", amount=13)
    with anyio.fail_after(10):
        await ledger.entered.wait()
        await handle.cancel()
        await ledger.cut.wait()  # the worker cancelled the run: its step was cut off
        with pytest.raises(RunCancelled) as caught:
            await handle.result()
    assert caught.value.run_id == handle.run_id
    assert caught.value.compensated == ("reserve",)
    assert "unreserve o-4" in ledger.calls
    assert (await runs.load(handle.run_id)).status == "cancelled"


async def test_bad_inputs_are_refused_before_anything_is_enqueued(world: Any) -> None:
    queue, runs, _ = world
    with pytest.raises(InputValidationError):
        await Order.start(queue=queue, runs=runs, order_id="o-5", amount="lots")
    with pytest.raises(ValueError, match="resources"):
        await Order.start(queue=queue, runs=runs, order_id="o-5", amount=1, ledger=Ledger())
    with pytest.raises(ValueError, match="RedisRunStore"):
        await Order.start(queue=queue, runs=MemoryRunStore(), order_id="o-5", amount=1)
    assert await queue.saq.count("queued") == 0


async def test_a_saga_no_worker_serves_fails_its_job_clearly(world: Any) -> None:
    queue, runs, _ = world

    class Unserved(Saga):
        @step
        async def work() -> int:
            return 1

    handle = await Unserved.start(queue=queue, runs=runs)
    with anyio.fail_after(10), pytest.raises(JobFailed, match="this worker serves Order v1"):
        await handle.result()


async def test_a_saga_that_cannot_run_durably_is_refused_before_it_is_enqueued(
    world: Any,
) -> None:
    from asaga import NotRecordable

    class Unrecordable(Saga):
        @step
        async def make() -> Opaque:
            return Opaque()

    queue, runs, _ = world
    with pytest.raises(NotRecordable, match="cannot run durably"):
        await Unrecordable.start(queue=queue, runs=runs)
    assert await queue.saq.count("queued") == 0


async def test_start_and_serve_refuse_what_cannot_work(world: Any) -> None:
    """A queue given by name, or a recovery sweep with no pause, is refused clearly."""
    _, runs, ledger = world
    with pytest.raises(TypeError, match="open job queue"):
        await Order.start(queue="inventory", runs=runs, order_id="o-6", amount=1)  # type: ignore[arg-type]
    served = Served(sagas=[Order], runs=runs, resources={"ledger": ledger})
    with pytest.raises(ValueError, match="recover_every"):
        await serve(object(), served, recover_every=0)


async def test_a_run_on_workers_parks_and_goes_on_where_its_event_is_delivered(
    world: Any,
) -> None:
    queue, runs, ledger = world
    handle = await PaidOrder.start(queue=queue, runs=runs, order_id="o-9")
    with anyio.fail_after(10), pytest.raises(RunParked) as parked:
        await handle.result()
    assert [w.key for w in parked.value.waits] == ["confirm:o-9"]
    assert await handle.status() == "waiting"
    delivery = await PaidOrder.deliver("confirm:o-9", {"amount": 12}, runs=runs, ledger=ledger)
    assert delivery.status == "succeeded"
    assert delivery.result is not None
    assert delivery.result.output == 12
    assert ledger.calls == ["reserve o-9", "book 12"]


async def test_a_called_saga_starts_with_its_own_inputs(world: Any) -> None:
    queue, runs, _ = world
    handle = await Stamp(text="paid").start(queue=queue, runs=runs)
    with anyio.fail_after(10):
        result = await handle.result()
    assert result.output == "PAID"
    assert msgspec.msgpack.decode((await runs.load(handle.run_id)).inputs) == {"text": "paid"}
    with pytest.raises(TypeError, match="has its inputs already"):
        await Stamp(text="a").start(queue=queue, runs=runs, text="b")
    # A saga with resources is called with them, and resources are the workers': refused.
    with pytest.raises(ValueError, match="which the workers give"):
        await Order(order_id="o-d", amount=7, ledger=Ledger()).start(queue=queue, runs=runs)


async def test_a_called_saga_refuses_what_acts_on_a_recorded_run(world: Any) -> None:
    _, runs, ledger = world
    called = Order(order_id="o-e", amount=7, ledger=ledger)
    for act in (
        lambda: called.undo("run-1", runs=runs, ledger=ledger),
        lambda: called.resume("run-1", runs=runs, ledger=ledger),
        lambda: called.cancel("run-1", runs=runs, ledger=ledger),
        lambda: called.deliver("confirm:o-e", {"amount": 1}, runs=runs, ledger=ledger),
    ):
        with pytest.raises(TypeError, match=r"call it on the class, Order\."):
            await act()
    assert ledger.calls == []
