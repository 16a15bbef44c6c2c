"""Steps on workers (``@step(queue=...)``), with the worker in this process: the step runs
with the worker's resources, its result comes back typed, its failure, retries, timeout and
compensation behave as a local step's; a missing queue or a bad definition is refused
before any step runs. tests/workers/test_worker_processes.py has a real worker process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import (
    MapFailed,
    NotRecordable,
    Resource,
    Retry,
    Saga,
    SagaDefinitionError,
    SagaFailed,
    compose,
    map_each,
    step,
)
from asaga.runs import RedisRunStore, recover
from asaga.workers import QueueNotOpen, RemoteStepFailed, SaqQueue, Served, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


class Flaky(ConnectionError):
    """A failure a Retry(retry_on=ConnectionError) retries."""


class Charge(msgspec.Struct, frozen=True):
    charge_id: str
    amount: int


class Bank:
    """Where a step's effects land: the caller's and the worker's are different objects."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.calls: list[str] = []
        self.failures_left = 0
        self.entered = anyio.Event()
        self.cut = anyio.Event()
        self.inflight = 0
        self.most = 0


def make_checkout(queue: str, version: str = "1") -> Any:
    class Checkout(Saga):
        saga_version = version
        order_id: str
        amount: int
        bank: Resource[Bank]
        output = "ship"

        @step
        async def reserve(order_id: str, bank: Bank) -> str:
            bank.calls.append(f"{bank.who}: reserve {order_id}")
            return f"r-{order_id}"

        @reserve.compensate
        async def unreserve(order_id: str, bank: Bank) -> None:
            bank.calls.append(f"{bank.who}: unreserve {order_id}")

        @step(queue=queue, retry=Retry(max_attempts=3, base_delay=0.01, retry_on=Flaky))
        async def charge(reserve: str, amount: int, run_id: str, bank: Bank) -> Charge:
            bank.calls.append(f"{bank.who}: charge {amount} for {reserve}")
            if bank.failures_left:
                bank.failures_left -= 1
                raise Flaky("the bank hung up")
            if amount == 13:
                bank.entered.set()
                try:
                    await anyio.sleep_forever()
                finally:
                    bank.cut.set()
            if amount < 0:
                raise ValueError("a refund is not a charge")
            return Charge(charge_id=f"c-{run_id}", amount=amount)

        @charge.compensate
        async def refund(charge: Charge, bank: Bank) -> None:
            bank.calls.append(f"{bank.who}: refund {charge.charge_id}")

        @step(timeout=5)
        async def ship(charge: Charge, bank: Bank) -> str:
            bank.calls.append(f"{bank.who}: ship {charge.amount}")
            if charge.amount == 99:
                raise RuntimeError("no courier")
            return f"shipped {charge.charge_id}"

    return Checkout


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def world(redis_url: str, client: aioredis.Redis) -> AsyncIterator[dict[str, Any]]:
    """A saga with a step on queue ``pay-<random>``, a worker serving it in this process,
    and the queue open for the caller."""
    name = f"pay-{uuid.uuid4().hex[:10]}"
    checkout, timed, mapped = make_checkout(name), make_timed(name), make_mapped(name)
    caller, worker = Bank("caller"), Bank("worker")
    stop = anyio.Event()
    async with (
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as workers,
        anyio.create_task_group() as tg,
    ):
        served = Served(sagas=[checkout, timed, mapped], resources={"bank": worker})
        tg.start_soon(lambda: serve(workers, served, concurrency=4, shutdown_grace=1, stop=stop))
        async with SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue:
            yield {
                "saga": checkout,
                "timed": timed,
                "mapped": mapped,
                "caller": caller,
                "worker": worker,
                "queue": queue,
            }
        stop.set()
    keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
    if keys:
        await client.delete(*keys)


async def test_the_step_runs_on_the_worker_with_its_resources(world: dict[str, Any]) -> None:
    checkout, caller, worker = world["saga"], world["caller"], world["worker"]
    with anyio.fail_after(10):
        result = await checkout.run(order_id="o-1", amount=30, bank=caller, run_id="run-1")
    assert result.output == "shipped c-run-1"
    assert result.results["charge"] == Charge(charge_id="c-run-1", amount=30)  # typed
    assert caller.calls == ["caller: reserve o-1", "caller: ship 30"]
    assert worker.calls == ["worker: charge 30 for r-o-1"]


async def test_its_compensation_runs_on_the_worker_in_reverse_order(
    world: dict[str, Any],
) -> None:
    checkout, caller, worker = world["saga"], world["caller"], world["worker"]
    with anyio.fail_after(10), pytest.raises(SagaFailed) as caught:
        await checkout.run(order_id="o-2", amount=99, bank=caller, run_id="run-2")
    assert caught.value.step == "ship"
    assert caught.value.compensated == ("charge", "reserve")
    assert worker.calls == ["worker: charge 99 for r-o-2", "worker: refund c-run-2"]
    assert caller.calls == ["caller: reserve o-2", "caller: ship 99", "caller: unreserve o-2"]


async def test_a_failure_on_the_worker_fails_the_step_with_what_it_raised(
    world: dict[str, Any],
) -> None:
    checkout, caller, worker = world["saga"], world["caller"], world["worker"]
    with anyio.fail_after(10), pytest.raises(SagaFailed) as caught:
        await checkout.run(order_id="o-3", amount=-5, bank=caller)
    error = caught.value.__cause__
    assert isinstance(error, RemoteStepFailed)
    assert error.step == "charge"
    assert "ValueError('a refund is not a charge')" in error.error
    assert "builtins.ValueError" in error.remote_types
    assert caught.value.compensated == ("reserve",)
    assert worker.calls == ["worker: charge -5 for r-o-3"]  # not retried: not a Flaky


async def test_retry_on_names_what_the_worker_raised(world: dict[str, Any]) -> None:
    checkout, caller, worker = world["saga"], world["caller"], world["worker"]
    worker.failures_left = 2
    with anyio.fail_after(10):
        result = await checkout.run(order_id="o-4", amount=7, bank=caller, run_id="run-4")
    assert result.output == "shipped c-run-4"
    assert worker.calls == ["worker: charge 7 for r-o-4"] * 3


async def test_the_timeout_aborts_the_job_and_its_step_on_the_worker(
    world: dict[str, Any],
) -> None:
    timed, caller, worker = world["timed"], world["caller"], world["worker"]
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with pytest.raises(SagaFailed) as caught:
                    await timed.run(order_id="o-5", bank=caller)
                assert isinstance(caught.value.__cause__, TimeoutError)

            tg.start_soon(run)
            await worker.entered.wait()
        await worker.cut.wait()  # the worker's attempt was cancelled by the abort
    assert caller.calls == ["caller: reserve o-5", "caller: unreserve o-5"]


def make_timed(queue: str) -> Any:
    """A saga whose step on workers never ends but is bounded by its timeout."""

    class Timed(Saga):
        order_id: str
        bank: Resource[Bank]

        @step
        async def reserve(order_id: str, bank: Bank) -> str:
            bank.calls.append(f"{bank.who}: reserve {order_id}")
            return f"r-{order_id}"

        @reserve.compensate
        async def unreserve(order_id: str, bank: Bank) -> None:
            bank.calls.append(f"{bank.who}: unreserve {order_id}")

        @step(queue=queue, timeout=0.5)
        async def hang(reserve: str, bank: Bank) -> None:
            bank.entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                bank.cut.set()

    return Timed


# -- refused before any step runs ---------------------------------------------------------------


async def test_a_run_whose_queue_is_not_open_here_is_refused_before_any_step() -> None:
    checkout = make_checkout(f"closed-{uuid.uuid4().hex[:8]}")
    caller = Bank("caller")
    with pytest.raises(QueueNotOpen) as caught:
        await checkout.run(order_id="o-6", amount=1, bank=caller)
    assert caught.value.step == "charge"
    assert "SaqQueue" in str(caught.value)
    assert caller.calls == []


async def test_recovery_of_a_saga_whose_queue_is_not_open_is_refused_at_once(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    checkout = make_checkout(f"closed-{uuid.uuid4().hex[:8]}")
    async with RedisRunStore(client, prefix=redis_prefix) as runs:
        with pytest.raises(QueueNotOpen):
            await recover(runs, sagas=[checkout], resources={"bank": Bank("r")})


def test_a_bad_queue_and_a_lock_on_a_step_on_workers_are_definition_errors() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Broken(Saga):
            order_id: str

            @step(queue="no spaces allowed")
            async def first(order_id: str) -> str:
                return order_id

            @step(queue="payments", lock="order:{order_id}")
            async def second(first: str) -> str:
                return first

    text = str(caught.value)
    assert "step 'first': queue= takes a queue's name" in text
    assert "step 'second': a step on workers takes no lock=" in text


# -- what cannot travel ---------------------------------------------------------------------------


class Opaque:
    """Not data: cannot be sent to a worker."""


def make_opaque(queue: str) -> Any:
    class Sends(Saga):
        thing: Any  # whatever it is: found out when it is sent

        @step(queue=queue)
        async def use(thing: Any) -> str:
            return "never"

    return Sends


async def test_an_argument_that_cannot_be_sent_fails_the_step_and_sends_nothing(
    world: dict[str, Any], client: aioredis.Redis
) -> None:
    sends = make_opaque(world["queue"].name)
    with pytest.raises(SagaFailed) as caught:
        await sends.run(thing=Opaque())
    assert isinstance(caught.value.__cause__, NotRecordable)
    assert "Resource[...]" in str(caught.value.__cause__)
    assert [k async for k in client.scan_iter(match=f"saq:job:{world['queue'].name}:*")] == []


async def test_a_worker_of_another_saga_version_refuses_the_step(
    redis_url: str, client: aioredis.Redis
) -> None:
    name = f"pay-{uuid.uuid4().hex[:10]}"
    checkout = make_checkout(name)
    newer = make_checkout(name, version="2")  # what a worker of a later deployment serves
    stop = anyio.Event()
    try:
        async with (
            SaqQueue.from_url(redis_url, name=name, heartbeat=5) as workers,
            anyio.create_task_group() as tg,
        ):
            served = Served(sagas=[newer], resources={"bank": Bank("worker")})
            tg.start_soon(
                lambda: serve(workers, served, concurrency=2, shutdown_grace=1, stop=stop)
            )
            async with SaqQueue.from_url(redis_url, name=name, heartbeat=5):
                with anyio.fail_after(10), pytest.raises(SagaFailed) as caught:
                    await checkout.run(order_id="o-7", amount=3, bank=Bank("caller"))
            stop.set()
    finally:
        keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
    error = caught.value.__cause__
    assert isinstance(error, RemoteStepFailed)
    assert "refused" in error.error
    assert "Checkout v2" in error.error


# -- inside durable runs and runs on workers ---------------------------------------------


async def test_a_durable_run_records_its_step_on_workers(
    world: dict[str, Any], redis_prefix: str, client: aioredis.Redis
) -> None:
    checkout, caller = world["saga"], world["caller"]
    async with RedisRunStore(client, prefix=redis_prefix) as runs:
        with anyio.fail_after(10):
            result = await checkout.run(
                order_id="o-8", amount=8, bank=caller, runs=runs, run_id="run-8"
            )
        record = await runs.load("run-8")
    assert result.output == "shipped c-run-8"
    assert record.status == "succeeded"
    assert record.steps["charge"].status == "succeeded"


async def test_a_run_on_workers_sends_its_step_to_the_step_queue(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    """One queue runs whole runs, another the step: the runs' worker opens the step queue
    itself (the caller only starts the run)."""
    steps_name, runs_name = f"pay-{uuid.uuid4().hex[:10]}", f"run-{uuid.uuid4().hex[:10]}"
    checkout = make_checkout(steps_name)
    runner, payer = Bank("runner"), Bank("payer")
    stop = anyio.Event()
    try:
        async with (
            RedisRunStore(client, prefix=redis_prefix) as runs,
            SaqQueue.from_url(redis_url, name=steps_name, heartbeat=5) as step_workers,
            SaqQueue.from_url(redis_url, name=runs_name, heartbeat=5) as run_workers,
            anyio.create_task_group() as tg,
        ):
            pays = Served(sagas=[checkout], resources={"bank": payer})
            drives = Served(sagas=[checkout], runs=runs, resources={"bank": runner})
            tg.start_soon(
                lambda: serve(step_workers, pays, concurrency=2, shutdown_grace=1, stop=stop)
            )
            tg.start_soon(
                lambda: serve(run_workers, drives, concurrency=2, shutdown_grace=1, stop=stop)
            )
            async with SaqQueue.from_url(redis_url, name=runs_name, heartbeat=5) as queue:
                handle = await checkout.start(queue=queue, runs=runs, order_id="o-9", amount=9)
                with anyio.fail_after(10):
                    result = await handle.result()
            stop.set()
    finally:
        for name in (steps_name, runs_name):
            keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
            if keys:
                await client.delete(*keys)
    assert result.output == f"shipped c-{handle.run_id}"
    assert runner.calls == ["runner: reserve o-9", "runner: ship 9"]
    assert payer.calls == ["payer: charge 9 for r-o-9"]


# -- map elements on workers -------------------------------------------------------------


class Line(msgspec.Struct, frozen=True):
    sku: str
    qty: int


async def charge_line(line: Line, bank: Bank) -> int:
    bank.calls.append(f"{bank.who}: charge {line.sku}")
    bank.inflight += 1
    bank.most = max(bank.most, bank.inflight)
    try:
        await anyio.sleep(0.01)
    finally:
        bank.inflight -= 1
    if line.qty < 0:
        raise ValueError(f"bad line {line.sku}")
    return line.qty * 10


async def refund_line(line: Line, charge_line: int, bank: Bank) -> None:
    bank.calls.append(f"{bank.who}: refund {line.sku} ({charge_line})")


def make_mapped(queue: str) -> Any:
    class Basket(Saga):
        lines: list[Line]
        bank: Resource[Bank]
        output = "charged"

        charged = map_each(charge_line, over="lines", undo=refund_line, queue=queue, batch_size=2)

        @step
        async def total(charged: list[int], bank: Bank) -> int:
            bank.calls.append(f"{bank.who}: total")
            if sum(charged) > 1000:
                raise RuntimeError("over the limit")
            return sum(charged)

    return Basket


async def test_map_elements_run_on_the_worker_in_order_at_most_batch_size_at_once(
    world: dict[str, Any],
) -> None:
    basket, caller, worker = world["mapped"], world["caller"], world["worker"]
    lines = [Line(sku=f"s{i}", qty=i) for i in range(1, 8)]
    with anyio.fail_after(20):
        result = await basket.run(lines=lines, bank=caller)
    assert result.output == [10, 20, 30, 40, 50, 60, 70]
    assert sorted(worker.calls) == sorted(f"worker: charge s{i}" for i in range(1, 8))
    assert 1 <= worker.most <= 2  # batch_size=2 jobs in flight, though the worker takes 4
    assert caller.calls == ["caller: total"]


async def test_a_failed_element_undoes_the_completed_ones_on_the_worker(
    world: dict[str, Any],
) -> None:
    basket, caller, worker = world["mapped"], world["caller"], world["worker"]
    lines = [Line(sku="a", qty=1), Line(sku="b", qty=2), Line(sku="bad", qty=-1)]
    with anyio.fail_after(20), pytest.raises(SagaFailed) as caught:
        await basket.run(lines=lines, bank=caller)
    failed = caught.value.__cause__
    assert isinstance(failed, MapFailed)
    assert failed.index == 2
    assert isinstance(failed.__cause__, RemoteStepFailed)
    assert "bad line bad" in failed.__cause__.error
    refunds = [c for c in worker.calls if "refund" in c]
    assert refunds == ["worker: refund b (20)", "worker: refund a (10)"]  # reverse index order
    assert caller.calls == []


async def test_a_later_failure_undoes_every_element_on_the_worker(world: dict[str, Any]) -> None:
    basket, caller, worker = world["mapped"], world["caller"], world["worker"]
    lines = [Line(sku="x", qty=60), Line(sku="y", qty=50)]  # a total over the limit
    with anyio.fail_after(20), pytest.raises(SagaFailed) as caught:
        await basket.run(lines=lines, bank=caller)
    assert caught.value.step == "total"
    refunds = [c for c in worker.calls if "refund" in c]
    assert refunds == ["worker: refund y (500)", "worker: refund x (600)"]


def test_batch_size_needs_a_queue_and_a_queue_needs_a_function() -> None:
    class Child(Saga):
        sku: str

        @step
        async def one(sku: str) -> str:
            return sku

    with pytest.raises(SagaDefinitionError) as caught:

        class Broken(Saga):
            lines: list[Line]

            here = map_each(charge_line, over="lines", batch_size=4)
            there = map_each(Child, over="lines", queue="payments")

    text = str(caught.value)
    assert "batch_size= bounds the jobs in flight of a map on workers (queue=)" in text
    assert "put @step(queue=...) on its steps instead" in text


async def test_a_composed_saga_sends_its_step_to_the_workers(world: dict[str, Any]) -> None:
    checkout, caller, worker = world["saga"], world["caller"], world["worker"]

    class Order(Saga):
        order_id: str
        amount: int
        bank: Resource[Bank]
        output = "paid"

        paid = compose(checkout)

    assert "Checkout.charge" in Order.__asaga__.queues  # checked before any step runs
    with anyio.fail_after(10):
        result = await Order.run(order_id="o-10", amount=10, bank=caller, run_id="run-10")
    assert result.output.startswith("shipped c-")  # the child run's id
    assert worker.calls == ["worker: charge 10 for r-o-10"]
    assert caller.calls == ["caller: reserve o-10", "caller: ship 10"]


# -- cut off, lost, refused -----------------------------------------------------------------------


def make_slow(queue: str) -> Any:
    """A step on workers that takes longer than its timeout, retried on TimeoutError; and
    one whose compensation runs in doubt."""

    class Slow(Saga):
        order_id: str
        bank: Resource[Bank]

        @step(
            queue=queue,
            timeout=0.2,
            retry=Retry(max_attempts=2, base_delay=0.01, retry_on=TimeoutError),
        )
        async def pay(order_id: str, bank: Bank) -> Charge:
            bank.calls.append(f"{bank.who}: pay start")
            bank.entered.set()
            await anyio.sleep(0.8)  # under SAQ's own abort check (jobs over 1 s old)
            bank.calls.append(f"{bank.who}: pay done")
            return Charge(charge_id=order_id, amount=1)

        @pay.compensate(in_doubt=True)
        async def unpay(pay: Charge, order_id: str, bank: Bank) -> None:
            bank.calls.append(f"{bank.who}: unpay {pay!r}")

    return Slow


async def test_an_attempt_that_times_out_is_stopped_on_its_worker_before_the_next(
    redis_url: str, client: aioredis.Redis
) -> None:
    name = f"pay-{uuid.uuid4().hex[:10]}"
    slow, worker = make_slow(name), Bank("worker")
    stop = anyio.Event()
    try:
        async with (
            SaqQueue.from_url(redis_url, name=name, heartbeat=5) as workers,
            anyio.create_task_group() as tg,
        ):
            served = Served(sagas=[slow], resources={"bank": worker})
            tg.start_soon(
                lambda: serve(workers, served, concurrency=4, shutdown_grace=1, stop=stop)
            )
            async with SaqQueue.from_url(redis_url, name=name, heartbeat=5):
                with anyio.fail_after(20), pytest.raises(SagaFailed) as caught:
                    await slow.run(order_id="o-11", bank=Bank("caller"))
            calls = list(worker.calls)  # as the run ends: each attempt was stopped first
            stop.set()
    finally:
        keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
    assert isinstance(caught.value.__cause__, TimeoutError)
    # Two attempts, each cut on the worker (never "pay done"); a timed-out attempt failed,
    # as a local one does (not in doubt: no compensation).
    assert calls == ["worker: pay start", "worker: pay start"]


async def test_a_worker_stopped_mid_step_leaves_it_in_doubt_never_run_twice(
    redis_url: str, client: aioredis.Redis
) -> None:
    """SAQ gives a job its worker cancels at shutdown out again: not a step's that is
    not idempotent. Its attempt is in doubt: not retried (though its Retry would), its
    in-doubt compensation runs, on the other worker."""
    name = f"pay-{uuid.uuid4().hex[:10]}"

    class Lost(Saga):
        order_id: str
        bank: Resource[Bank]

        @step(queue=name, retry=Retry(max_attempts=3, base_delay=0.01))
        async def pay(order_id: str, bank: Bank) -> Charge:
            bank.calls.append(f"{bank.who}: pay start")
            bank.entered.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        @pay.compensate(in_doubt=True)
        async def unpay(pay: Charge, bank: Bank) -> None:
            bank.calls.append(f"{bank.who}: unpay {pay!r}")

    first, second = Bank("first"), Bank("second")
    stop_first, stop_second = anyio.Event(), anyio.Event()
    try:
        async with (
            SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue_1,
            SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue_2,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(
                lambda: serve(
                    queue_1,
                    Served(sagas=[Lost], resources={"bank": first}),
                    concurrency=1,
                    shutdown_grace=0,
                    stop=stop_first,
                )
            )
            async with (
                SaqQueue.from_url(redis_url, name=name, heartbeat=5),
                anyio.create_task_group() as run_tg,
            ):

                async def run() -> None:
                    with pytest.raises(SagaFailed) as caught:
                        await Lost.run(order_id="o-12", bank=Bank("caller"))
                    box.append(caught.value)

                box: list[SagaFailed] = []
                with anyio.fail_after(20):
                    run_tg.start_soon(run)
                    await first.entered.wait()
                    tg.start_soon(
                        lambda: serve(
                            queue_2,
                            Served(sagas=[Lost], resources={"bank": second}),
                            concurrency=1,
                            shutdown_grace=1,
                            stop=stop_second,
                        )
                    )
                    stop_first.set()  # shutdown_grace=0: its running job is cancelled
            stop_second.set()
    finally:
        keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
    (failed,) = box
    error = failed.__cause__
    assert isinstance(error, RemoteStepFailed)
    assert error.in_doubt
    assert first.calls == ["first: pay start"]
    assert second.calls == ["second: unpay None"]  # never "pay start" again
    assert failed.compensated == ("pay",)


async def test_a_worker_refuses_runs_whose_steps_go_to_its_own_queue(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    name = f"pay-{uuid.uuid4().hex[:10]}"
    checkout = make_checkout(name)
    async with (
        RedisRunStore(client, prefix=redis_prefix) as runs,
        SaqQueue.from_url(redis_url, name=name, heartbeat=5) as queue,
    ):
        served = Served(sagas=[checkout], runs=runs, resources={"bank": Bank("w")})
        with pytest.raises(ValueError, match="give the steps a queue of their own"):
            await serve(queue, served, concurrency=2, stop=anyio.Event())


async def test_undo_of_a_saga_whose_queue_is_not_open_is_refused_before_any_compensation(
    world: dict[str, Any], redis_prefix: str, client: aioredis.Redis
) -> None:
    checkout, caller = world["saga"], world["caller"]
    async with RedisRunStore(client, prefix=redis_prefix) as runs:
        with anyio.fail_after(10):
            await checkout.run(order_id="o-13", amount=5, bank=caller, runs=runs, run_id="run-13")
        # The same saga, its step on a queue not open in this process.
        elsewhere = make_checkout(f"closed-{uuid.uuid4().hex[:8]}")
        with pytest.raises(QueueNotOpen):
            await elsewhere.undo("run-13", runs=runs, bank=caller)
        assert (await runs.load("run-13")).status == "succeeded"
    assert "caller: unreserve o-13" not in caller.calls


class Receipt:
    """Not data either."""


def test_a_step_on_workers_whose_result_or_argument_cannot_travel_is_a_definition_error() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Broken(Saga):
            order_id: str
            thing: Opaque

            @step(queue="payments")
            async def charge(order_id: str, thing: Opaque) -> Receipt:
                return Receipt()

    text = str(caught.value)
    assert "step 'charge' runs on workers, but parameter 'thing' is a Opaque" in text
    assert "step 'charge' runs on workers, but its result is a " in text


async def opaque_line(line: Line) -> Receipt:
    return Receipt()


def test_a_map_on_workers_whose_result_cannot_travel_is_a_definition_error() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Broken(Saga):
            lines: list[Line]

            there = map_each(opaque_line, over="lines", queue="payments")

    assert "runs on workers, but the result of opaque_line is a " in str(caught.value)
