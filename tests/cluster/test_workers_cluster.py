"""SaqQueue on a real Redis Cluster of three primaries, with the worker in this process:
a run started on workers returns its result, is cancelled through its handle, and one
idempotency key makes one run; a step and a map's elements run on workers; a queued job
is withdrawn (aborted); SAQ's sweep and queue info run; every key of a queue (SAQ's
lists, its jobs and their abort keys) sits in the slot of the queue's hash tag; a queue
name without a hash tag is refused on a cluster client.

A script or transaction whose keys were in two slots would fail here (CROSSSLOT).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import msgspec
import pytest
from redis.asyncio.cluster import RedisCluster
from saq.queue.redis import RedisQueue

from asaga import Resource, Saga, SagaFailed, map_each, step
from asaga.runs import RedisRunStore
from asaga.workers import RunCancelled, SaqQueue, Served, serve
from tests.cluster.nodes import delete_prefix, keys_by_node, slots_of
from tests.redis_servers import RedisClusterServers

pytestmark = pytest.mark.anyio


class Ledger:
    """Where the steps' effects land (the caller's and the worker's are different)."""

    def __init__(self, who: str) -> None:
        self.who = who
        self.calls: list[str] = []
        self.entered = anyio.Event()
        self.cut = anyio.Event()


class Line(msgspec.Struct, frozen=True):
    sku: str
    qty: int


class Order(Saga):
    """A whole run on workers."""

    order_id: str
    amount: int
    ledger: Resource[Ledger]
    output = "charge"
    cancel_grace = 0.2

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
        ledger.calls.append(f"charge {amount}")
        return amount


async def charge_line(line: Line, ledger: Ledger) -> int:
    ledger.calls.append(f"{ledger.who}: charge {line.sku}")
    if line.qty < 0:
        raise ValueError(f"bad line {line.sku}")
    return line.qty * 10


async def refund_line(line: Line, charge_line: int, ledger: Ledger) -> None:
    ledger.calls.append(f"{ledger.who}: refund {line.sku} ({charge_line})")


def make_remote(queue: str) -> tuple[Any, Any, Any]:
    """A saga with a step on workers of ``queue``, one with a map on them, and one whose
    step on them times out."""

    class Pay(Saga[str]):
        order_id: str
        ledger: Resource[Ledger]
        output = "ship"

        @step(queue=queue)
        async def pay(order_id: str, ledger: Ledger) -> str:
            ledger.calls.append(f"{ledger.who}: pay {order_id}")
            return f"paid {order_id}"

        @step
        async def ship(pay: str, ledger: Ledger) -> str:
            ledger.calls.append(f"{ledger.who}: ship")
            return f"shipped, {pay}"

    class Basket(Saga):
        lines: list[Line]
        ledger: Resource[Ledger]
        output = "charged"

        charged = map_each(charge_line, over="lines", undo=refund_line, queue=queue, batch_size=2)

    class Hang(Saga):
        ledger: Resource[Ledger]

        @step(queue=queue, timeout=0.5)
        async def hang(ledger: Ledger) -> None:
            ledger.entered.set()
            try:
                await anyio.sleep_forever()
            finally:
                ledger.cut.set()

    return Pay, Basket, Hang


def queue_name(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """A hash-tagged queue name of a test's own; SAQ's keys of it (``saq:{name}:...``,
    ``saq:job:{name}:...``, ``saq:abort:{name}...``) are deleted from every node after."""
    name = f"{{t{uuid.uuid4().hex[:10]}}}"
    yield name
    for prefix in saq_prefixes(name):
        delete_prefix(redis_cluster.ports, prefix)
    left = keys_by_node(redis_cluster.ports, "saq:")  # none of the queue's keys elsewhere
    assert not [k for keys in left.values() for k in keys if name in k], left


name = pytest.fixture(queue_name, name="name")
"""The queue of whole runs."""
steps = pytest.fixture(queue_name, name="steps")
"""The queue of steps and map elements on workers."""


def saq_prefixes(name: str) -> list[str]:
    return [f"saq:{name}:", f"saq:job:{name}:", f"saq:abort:{name}"]


def saq_keys(redis_cluster: RedisClusterServers, name: str) -> dict[int, list[str]]:
    """SAQ's keys of queue ``name`` on each node."""
    found: dict[int, list[str]] = {}
    for prefix in saq_prefixes(name):
        for port, keys in keys_by_node(redis_cluster.ports, prefix).items():
            found.setdefault(port, []).extend(keys)
    return found


@pytest.fixture
async def world(
    redis_cluster: RedisClusterServers,
    cluster: RedisCluster,
    cluster_prefix: str,
    name: str,
    steps: str,
) -> AsyncIterator[dict[str, Any]]:
    """A run store and two queues on the cluster (``name``: whole runs of Order; ``steps``:
    the steps and map elements of the sagas of :func:`make_remote`), each with a worker
    in this process."""
    pay, basket, hang = make_remote(steps)
    caller, worker = Ledger("caller"), Ledger("worker")
    stop = anyio.Event()
    url = redis_cluster.url
    async with (
        RedisRunStore(cluster, prefix=cluster_prefix) as runs,
        SaqQueue.from_url(url, name=name, cluster=True, heartbeat=5) as run_workers,
        SaqQueue.from_url(url, name=steps, cluster=True, heartbeat=5) as step_workers,
        anyio.create_task_group() as tg,
    ):
        whole = Served(sagas=[Order], runs=runs, resources={"ledger": worker})
        remote = Served(sagas=[pay, basket, hang], resources={"ledger": worker})
        tg.start_soon(lambda: serve(run_workers, whole, concurrency=4, shutdown_grace=1, stop=stop))
        tg.start_soon(
            lambda: serve(step_workers, remote, concurrency=4, shutdown_grace=1, stop=stop)
        )
        async with (
            SaqQueue.from_url(url, name=name, cluster=True, heartbeat=5) as queue,
            SaqQueue.from_url(url, name=steps, cluster=True, heartbeat=5) as step_queue,
        ):
            yield {
                "queue": queue,
                "step_queue": step_queue,
                "runs": runs,
                "pay": pay,
                "basket": basket,
                "hang": hang,
                "caller": caller,
                "worker": worker,
            }
        stop.set()


def one_slot(redis_cluster: RedisClusterServers, name: str) -> list[str]:
    """SAQ's keys of queue ``name``, checked to sit in the slot of its hash tag."""
    keys = [k for ks in saq_keys(redis_cluster, name).values() for k in ks]
    assert keys
    assert slots_of(keys) == slots_of([name]), keys
    return keys


async def test_a_run_on_workers_returns_its_result(
    world: dict[str, Any], redis_cluster: RedisClusterServers, cluster: RedisCluster, name: str
) -> None:
    queue, runs, worker = world["queue"], world["runs"], world["worker"]
    handle = await Order.start(queue=queue, runs=runs, order_id="o-1", amount=30)
    with anyio.fail_after(10):
        result = await handle.result()
    assert result.output == 30
    assert worker.calls == ["reserve o-1", "charge 30"]
    assert (await runs.load(handle.run_id)).status == "succeeded"
    assert await queue.state(handle.run_id) == "complete"
    keys = one_slot(redis_cluster, name)
    assert any(k.endswith(handle.run_id) and k.startswith("saq:job:") for k in keys), keys
    for key in keys:  # a job's data expires (keep); the queue's lists hold unfinished jobs
        if not key.endswith((":incomplete", ":queued", ":active")):
            assert await cluster.pttl(key) > 0, key


async def test_one_idempotency_key_makes_one_run(world: dict[str, Any]) -> None:
    queue, runs, worker = world["queue"], world["runs"], world["worker"]
    first = await Order.start(queue=queue, runs=runs, order_id="o-2", amount=5, idempotency_key="k")
    again = await Order.start(queue=queue, runs=runs, order_id="o-2", amount=5, idempotency_key="k")
    assert first.run_id == again.run_id
    with anyio.fail_after(10):
        assert (await first.result()).output == 5
        assert (await again.result()).output == 5
    assert worker.calls.count("charge 5") == 1
    info = await queue.saq.info(jobs=True)  # SAQ's own look at the queue and its workers
    assert len(info["workers"]) == 1
    assert info["queued"] == info["active"] == 0


async def test_cancel_through_the_handle_unwinds_a_running_run(
    world: dict[str, Any], redis_cluster: RedisClusterServers, name: str
) -> None:
    queue, runs, worker = world["queue"], world["runs"], world["worker"]
    handle = await Order.start(queue=queue, runs=runs, order_id="o-3", amount=13)
    with anyio.fail_after(10):
        await worker.entered.wait()
        await handle.cancel()
        await worker.cut.wait()
        with pytest.raises(RunCancelled) as caught:
            await handle.result()
    assert caught.value.compensated == ("reserve",)
    assert "unreserve o-3" in worker.calls
    assert (await runs.load(handle.run_id)).status == "cancelled"
    assert await queue.state(handle.run_id) == "aborted"
    one_slot(redis_cluster, name)


async def test_a_step_runs_on_workers(
    world: dict[str, Any], redis_cluster: RedisClusterServers, steps: str
) -> None:
    pay, caller, worker = world["pay"], world["caller"], world["worker"]
    with anyio.fail_after(10):
        result = await pay.run(order_id="o-4", ledger=caller, runs=world["runs"], run_id="run-4")
    assert result.output == "shipped, paid o-4"
    assert worker.calls == ["worker: pay o-4"]
    assert caller.calls == ["caller: ship"]
    assert await world["step_queue"].state("run-4:pay:step:1") == "complete"
    one_slot(redis_cluster, steps)


async def test_a_timed_out_step_is_aborted_on_its_worker(world: dict[str, Any]) -> None:
    """The attempt's timeout aborts the step's job: the worker cuts the step off at once
    (told over pub/sub), and the job ends aborted."""
    hang, worker = world["hang"], world["worker"]
    with anyio.fail_after(10):
        with pytest.raises(SagaFailed) as caught:
            await hang.run(ledger=Ledger("caller"), runs=world["runs"], run_id="run-7")
        await worker.cut.wait()
    assert caught.value.step == "hang"
    assert worker.entered.is_set()
    assert await world["step_queue"].state("run-7:hang:step:1") == "aborted"


async def test_map_elements_run_on_workers_and_are_undone_there(
    world: dict[str, Any], redis_cluster: RedisClusterServers, steps: str
) -> None:
    basket, caller, worker = world["basket"], world["caller"], world["worker"]
    with anyio.fail_after(20):
        result = await basket.run(
            lines=[Line(sku=f"s{i}", qty=i) for i in (1, 2, 3)], ledger=caller
        )
    assert result.output == [10, 20, 30]
    bad = [Line(sku="a", qty=1), Line(sku="b", qty=2), Line(sku="bad", qty=-1)]
    with anyio.fail_after(20), pytest.raises(SagaFailed):
        await basket.run(lines=bad, ledger=caller)
    refunds = [c for c in worker.calls if "refund" in c]
    assert refunds == ["worker: refund b (20)", "worker: refund a (10)"]
    assert caller.calls == []
    one_slot(redis_cluster, steps)


async def test_a_queued_job_is_withdrawn(redis_cluster: RedisClusterServers, name: str) -> None:
    """No worker: the job waits in the queue, and its key refuses a duplicate; abort()
    withdraws it (a recovery's withdraw of a step in doubt): it ends aborted, off the
    queue, its end pushed to a waiter; SAQ's sweep runs on the cluster."""
    async with SaqQueue.from_url(redis_cluster.url, name=name, cluster=True) as queue:
        assert await queue.enqueue("run-5:pay:step:1", {"kind": "step"})
        assert not await queue.enqueue("run-5:pay:step:1", {"kind": "step"})  # a duplicate
        assert await queue.state("run-5:pay:step:1") == "queued"
        assert await queue.saq.count("queued") == 1
        one_slot(redis_cluster, name)
        with anyio.fail_after(5):
            await queue.abort("run-5:pay:step:1", "withdrawn")
            end = await queue.wait("run-5:pay:step:1")
        assert end.state == "aborted"
        assert await queue.state("run-5:pay:step:1") == "aborted"
        assert await queue.saq.count("queued") == 0
        assert await queue.saq.sweep() == []


async def test_a_job_left_by_a_dead_worker_is_swept_back_to_the_queue(
    redis_cluster: RedisClusterServers, cluster: RedisCluster, name: str
) -> None:
    """A job taken off the queue by a worker that died before marking it active: the
    first sweep notes it, the second aborts it and gives it back to the queue (SAQ's
    abort, retry and their notices, on the cluster)."""
    async with SaqQueue.from_url(redis_cluster.url, name=name, cluster=True) as queue:
        assert await queue.enqueue("run-6", {"saga": "Order"})
        with anyio.fail_after(5):
            taken = await queue.saq.dequeue()
        assert taken is not None
        assert taken.key == queue.job_key("run-6") == f"{name}run-6"
        assert await queue.saq.count("active") == 1
        assert await queue.saq.sweep() == []  # being taken, most likely: next time
        await cluster.delete(f"saq:{name}:sweep")  # the next sweep, a minute later
        assert await queue.saq.sweep() == [f"saq:job:{name}:{name}run-6"]
        assert await queue.state("run-6") == "queued"
        assert await queue.saq.count("queued") == 1
        assert await queue.saq.count("active") == 0
        one_slot(redis_cluster, name)


async def test_a_queue_name_without_a_hash_tag_is_refused(
    redis_cluster: RedisClusterServers,
) -> None:
    with pytest.raises(ValueError, match=r'"\{inventory\}"'):
        SaqQueue.from_url(redis_cluster.url, name="inventory", cluster=True)
    with pytest.raises(ValueError, match="hash tag"):
        SaqQueue.from_url(redis_cluster.url, name="{}inventory", cluster=True)


async def test_a_plain_saq_queue_on_a_cluster_client_is_refused(cluster: RedisCluster) -> None:
    with pytest.raises(TypeError, match="cluster=True"):
        SaqQueue(RedisQueue(cluster, name="{inventory}"))  # type: ignore[arg-type]
