"""Runs on workers with real ``asaga worker`` processes (tests/workers/test_runs_on_workers.py
has the worker in the test's process).

Each test starts its workers as ::

    python -m asaga worker examples.inventory.workers:served --redis URL --prefix PREFIX \\
        --queue NAME --concurrency 8 --heartbeat 2 --shutdown-grace 5

from the repository root, on a queue of its own, and starts ``InventorySaga`` runs from
this process with ``InventorySaga.start(queue=..., runs=...)``. What they pin:

- 1,000 runs across three workers all succeed, each worker runs some, and the stock, the
  transaction log and the replenishment requests reconcile exactly with the results;
- a worker killed with SIGKILL at a seeded random moment (four seeds): the other workers'
  recovery sweeps and SAQ's sweep of its stuck jobs finish every run; exactly the runs
  it had in flight fail, around the step it left in doubt; each handle gives its run's
  outcome; the stock and the log reconcile with the records, up to exactly the writes
  in doubt. (It is an expected failure while handles of a dead worker's runs wait for
  SAQ's sweep after their records are finished: see the test.)
- SIGTERM lets a run in flight finish, then the worker exits 0 and says it stopped; an
  idle worker exits at once, whatever its grace;
- two callers starting with one idempotency key make one run (one record, one
  reservation, one log entry).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import CompensationFailed, RunNotFound, SagaFailed
from asaga.locks import RedisLockProvider
from asaga.runs import RedisRunStore, RunRecord
from asaga.workers import RunHandle, SaqQueue
from examples.inventory import Change, InventorySaga, Product, RedisInventoryStore
from examples.inventory.store import deltas

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
SERVED = "examples.inventory.workers:served"
HEARTBEAT = 2
CONCURRENCY = 8
SHUTDOWN_GRACE = 5
READY = "serving queue"
STARTUP = 30.0
"""Seconds a worker may take to print its ready line (imports, Redis, on a busy machine)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


# -- worker processes ---------------------------------------------------------------------------


class Worker:
    """One ``asaga worker`` process; its stdout is read as it comes (so the pipe never
    fills), line by line, into :attr:`lines`."""

    def __init__(self, process: anyio.abc.Process, log: Path) -> None:
        self.process = process
        self.pid = process.pid
        self.log = log
        self.lines: list[str] = []
        self.closed = anyio.Event()
        """Set once stdout is closed (the process is gone)."""
        self._changed = anyio.Event()

    async def drain(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        try:
            async for chunk in self.process.stdout:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                self.lines.extend(line.decode(errors="replace") for line in complete)
                self._changed.set()
                self._changed = anyio.Event()
        finally:
            if pending:
                self.lines.append(pending.decode(errors="replace"))
            self.closed.set()
            self._changed.set()

    async def wait_for(self, text: str, *, count: int = 1) -> str:
        """The ``count``-th line of stdout holding ``text`` (bound the wait with
        fail_after)."""
        seen = found = 0
        while True:
            for line in self.lines[seen:]:
                if text in line:
                    found += 1
                    if found == count:
                        return line
            seen = len(self.lines)
            if self.closed.is_set():
                raise AssertionError(
                    f"worker {self.pid} ended without printing {text!r} "
                    f"(exit {self.process.returncode}); stderr in {self.log}"
                )
            await self._changed.wait()

    def count(self, text: str) -> int:
        """How many lines of stdout so far hold ``text``."""
        return sum(text in line for line in self.lines)

    def owns(self, record: RunRecord) -> bool:
        """Whether ``record`` is owned by this worker's run store (its owner id is
        ``host-PID-random``)."""
        return owner_pid(record) == self.pid

    async def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        """Signal the worker, wait for it (bounded), kill it if it does not end."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(how)
        with anyio.move_on_after(SHUTDOWN_GRACE + 10):
            return await self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        return await self.process.wait()


def owner_pid(record: RunRecord) -> int | None:
    if record.owner is None:
        return None
    return int(record.owner.rsplit("-", 2)[-2])


class Cluster:
    """A queue of the test's own, the workers serving it, and a caller's view of it (a
    queue object, a run store and the inventory store, all on Redis under the test's
    prefix)."""

    def __init__(
        self,
        url: str,
        prefix: str,
        tmp: Path,
        tg: anyio.abc.TaskGroup,
        client: aioredis.Redis,
        runs: RedisRunStore,
        queue: SaqQueue,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.tmp = tmp
        self.tg = tg
        self.client = client
        self.runs = runs
        self.queue = queue
        self.name = queue.name
        self.store = RedisInventoryStore(client, None, prefix=f"{prefix}inv:")
        self.workers: list[Worker] = []

    async def start_workers(self, count: int, *, grace: float = SHUTDOWN_GRACE) -> list[Worker]:
        """Start ``count`` workers at once (``--shutdown-grace grace``); return when each
        has said it is ready."""
        started: list[Worker] = []
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(self._start_one, started, grace)
        return started

    async def _start_one(self, started: list[Worker], grace: float) -> None:
        command = [
            sys.executable,
            "-m",
            "asaga",
            "worker",
            SERVED,
            "--redis",
            self.url,
            "--prefix",
            self.prefix,
            "--queue",
            self.name,
            "--concurrency",
            str(CONCURRENCY),
            "--heartbeat",
            str(HEARTBEAT),
            "--shutdown-grace",
            str(grace),
        ]
        log = self.tmp / f"worker-{uuid.uuid4().hex[:8]}.stderr"
        with log.open("wb") as stderr:
            # Every event on stdout: the tests follow the workers' steps there.
            env = {**os.environ, "ASAGA_LOG": "debug"}
            process = await anyio.open_process(command, cwd=ROOT, stderr=stderr, env=env)
        worker = Worker(process, log)
        self.workers.append(worker)
        self.tg.start_soon(worker.drain)
        with anyio.fail_after(STARTUP):
            line = await worker.wait_for(READY)
        assert line.startswith(f"asaga worker {worker.pid}: serving queue {self.name!r}"), line
        started.append(worker)

    async def stop_all(self) -> None:
        """SIGTERM every worker still running, then kill those that do not end."""
        async with anyio.create_task_group() as tg:
            for worker in self.workers:
                if worker.process.returncode is None:
                    tg.start_soon(worker.stop)

    async def stock(self, products: Iterable[Product]) -> None:
        for product in products:
            await self.store.put(product)

    async def records(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        found: dict[str, RunRecord] = {}
        for run_id in run_ids:
            with contextlib.suppress(RunNotFound):
                found[run_id] = await self.runs.load(run_id)
        return found


@pytest.fixture
async def cluster(redis_url: str, redis_prefix: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A queue of this test's own and a way to start workers on it; every worker is
    stopped at the end (SIGTERM, then SIGKILL after a bounded wait), by its PID, and the
    queue's keys are deleted."""
    name = f"wp{uuid.uuid4().hex[:10]}"
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=100, timeout=30)
    client = aioredis.Redis(connection_pool=pool)
    try:
        async with (
            RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs,
            # The heartbeat a job is swept by is the one it was enqueued with (the
            # caller's queue), not the worker's --heartbeat: they must agree.
            SaqQueue.from_url(redis_url, name=name, heartbeat=HEARTBEAT) as queue,
            anyio.create_task_group() as tg,
        ):
            cluster = Cluster(redis_url, redis_prefix, tmp_path, tg, client, runs, queue)
            try:
                yield cluster
            finally:
                with anyio.CancelScope(shield=True):
                    await cluster.stop_all()
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            keys = [k async for k in client.scan_iter(match=f"saq:*{name}*", count=1000)]
            if keys:
                await client.delete(*keys)
            await client.aclose()
            await pool.disconnect()


async def start(cluster: Cluster, sku: str, quantity: int, **options: Any) -> RunHandle:
    return await InventorySaga.start(
        queue=cluster.queue,
        runs=cluster.runs,
        product_id=sku,
        quantity=quantity,
        operation="reserve",
        **options,
    )


def change_of(record: RunRecord) -> Change | None:
    """What the run's ``perform`` wrote, if its result was recorded."""
    step = record.steps.get("perform")
    if step is None or step.status != "succeeded" or step.result is None:
        return None
    return msgspec.msgpack.decode(step.result, type=Change)


def request_of(record: RunRecord) -> tuple[str, int]:
    inputs = msgspec.msgpack.decode(record.inputs)
    return inputs["product_id"], inputs["quantity"]


# -- 1,000 runs on three workers ----------------------------------------------------------------

RUNS = 1000
IN_FLIGHT = 200
SKUS = tuple(f"wp-{n}" for n in range(5))
STOCK = 10_000
REORDER_POINT = 9_700
"""Replenishment requests start after about 300 units of a product are reserved."""


@pytest.mark.timeout(120)
async def test_a_thousand_runs_across_three_workers_reconcile(cluster: Cluster) -> None:
    """1,000 reservations (1 to 3 units of one of five products), 200 in flight at once,
    on three worker processes: every run succeeds; each worker ran some; every record is
    finished; each product's reserved count is the sum of the runs' quantities and what
    the transaction log says, the log holds each run's change exactly once, and the
    replenishment requests are exactly those the runs made."""
    await cluster.stock(
        Product(sku=sku, inventory_count=STOCK, reorder_point=REORDER_POINT) for sku in SKUS
    )
    workers = await cluster.start_workers(3)
    rng = random.Random(1)
    plan = [(rng.choice(SKUS), rng.randint(1, 3)) for _ in range(RUNS)]
    results: dict[int, tuple[str, Any]] = {}
    limiter = anyio.CapacityLimiter(IN_FLIGHT)

    async def one(n: int, sku: str, quantity: int) -> None:
        async with limiter:
            handle = await start(cluster, sku, quantity)
            results[n] = (handle.run_id, await handle.result())

    began = time.perf_counter()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for n, (sku, quantity) in enumerate(plan):
                tg.start_soon(one, n, sku, quantity)
    elapsed = time.perf_counter() - began
    print(f"\n{RUNS} runs on 3 worker processes in {elapsed:.1f} s: {RUNS / elapsed:.0f} runs/s")

    assert len(results) == RUNS
    changes = {n: result.output for n, (_, result) in results.items()}
    for n, (sku, quantity) in enumerate(plan):
        assert (changes[n].sku, changes[n].quantity, changes[n].d_reserved) == (
            sku,
            quantity,
            quantity,
        )
    # Every record finished, and the three workers shared the runs.
    records = await cluster.records(run_id for run_id, _ in results.values())
    assert len(records) == RUNS
    assert Counter(r.status for r in records.values()) == {"succeeded": RUNS}
    per_worker = Counter(owner_pid(r) for r in records.values())
    print(f"runs per worker: {sorted(per_worker.values())}")
    assert set(per_worker) == {w.pid for w in workers}, per_worker
    # Stock: exactly the runs' reservations, and the log says the same, once per run.
    log = await cluster.store.transactions()
    assert Counter(t.run_id for t in log) == Counter(c.reference for c in changes.values())
    for sku in SKUS:
        product = await cluster.store.get(sku)
        reserved = sum(quantity for s, quantity in plan if s == sku)
        assert (product.inventory_count, product.reserved_count) == (STOCK, reserved), sku
        logged = sum(t.quantity for t in log if t.sku == sku and t.operation == "reserve")
        assert logged == reserved, sku
    # Replenishment requests: one per run that made one, and no other.
    made = {result.results["replenishment"] for _, result in results.values()} - {None}
    assert made, "no replenishment was requested: raise the reorder point"
    assert set(await cluster.store.replenishments()) == made


# -- kill -9 of a worker ------------------------------------------------------------------------

KILL_SEEDS = range(4)
KILL_RUNS = 60
KILL_SKUS = tuple(f"wk-{n}" for n in range(4))
KILL_STOCK = 1_000
WAIT_RECORDS = 60.0
"""Seconds every run may take to be recorded as finished once the worker is dead: the
recovery sweeps (every 2 s, after the dead worker's 2 s owner lease) finish the runs it
had started; SAQ's sweep gives the jobs it had taken and not started to another worker."""
WAIT_HANDLES = 10.0
"""Seconds every handle may take to give its outcome once every record is finished."""
COMPENSABLE = frozenset({"perform", "transaction", "replenishment"})
"""InventorySaga's steps that have a compensation."""


class Doubt(msgspec.Struct, frozen=True):
    """A write the dead worker may or may not have made: ``d_reserved`` units of ``sku``."""

    sku: str
    d_reserved: int


def subset_sums(values: Iterable[int]) -> set[int]:
    found = {0}
    for value in values:
        found |= {total + value for total in found}
    return found


def in_doubt(record: RunRecord, before: Mapping[str, RunRecord]) -> set[str]:
    """The steps of ``record`` that the dead worker left running (in doubt)."""
    was = before.get(record.run_id)
    if was is None:
        return set()
    return {name for name, step in was.steps.items() if step.status == "running"}


async def finished(runs: RedisRunStore, run_id: str) -> RunRecord:
    """The run's record once finished (bound the wait with fail_after); a run no worker
    has taken yet has no record: looked for again."""
    while True:
        try:
            return await runs.wait_finished(run_id)
        except RunNotFound:
            await anyio.sleep(0.2)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seed", KILL_SEEDS)
async def test_a_worker_killed_mid_run_leaves_every_run_finished_or_undone(
    cluster: Cluster, seed: int
) -> None:
    """kill -9 of one of two or three workers at a seeded random moment while it runs
    some of 60 runs (after its n-th step, n seeded, once each of its job slots holds a
    run): within a minute every run is recorded finished, and every handle then gives
    its outcome; exactly the runs the victim had in flight failed, around the step it
    left in doubt (``SagaFailed``, and ``CompensationFailed`` exactly when that step has
    a compensation: ``perform``, ``transaction`` or ``replenishment``), never cancelled
    nor refused; no step ran twice, a failed run left no write standing, and the stock
    and the log reconcile with the records up to exactly the writes that were in
    doubt."""
    rng = random.Random(seed)
    await cluster.stock(Product(sku=sku, inventory_count=KILL_STOCK) for sku in KILL_SKUS)
    workers = await cluster.start_workers(2 + seed % 2)
    victim = workers[rng.randrange(len(workers))]
    plan = [(rng.choice(KILL_SKUS), rng.randint(1, 3)) for _ in range(KILL_RUNS)]
    kill_after = rng.randint(1, 25)  # steps the victim finishes once the runs go on
    kill_delay = rng.uniform(0.0, 0.01)
    handles: list[RunHandle] = []
    outcomes: dict[str, Any] = {}
    all_started, all_ended = anyio.Event(), anyio.Event()

    async def one(sku: str, quantity: int) -> None:
        handle = await start(cluster, sku, quantity)
        handles.append(handle)
        if len(handles) == KILL_RUNS:
            all_started.set()
        try:
            outcomes[handle.run_id] = await handle.result()
        except Exception as exc:  # noqa: BLE001 - every outcome is checked below
            outcomes[handle.run_id] = exc
        if len(outcomes) == KILL_RUNS:
            all_ended.set()

    async with anyio.create_task_group() as tg:
        # The products' leases are held until every job slot of the victim holds a run
        # (each waits in ``perform``): it has runs in flight when it is killed, however
        # the queue would have shared them out.
        async with (
            RedisLockProvider(cluster.client, prefix=f"{cluster.prefix}locks:") as locks,
            locks.lease(*(f"inventory:{sku}" for sku in KILL_SKUS), ttl=30.0, wait=5.0),
        ):
            for sku, quantity in plan:
                tg.start_soon(one, sku, quantity)
            with anyio.fail_after(8):  # within perform's wait for its lease (10 s)
                await victim.wait_for("run_started", count=CONCURRENCY)
            done = victim.count("step_succeeded")
        with anyio.fail_after(30):
            await victim.wait_for("step_succeeded", count=done + kill_after)
        await anyio.sleep(kill_delay)
        victim.process.kill()
        killed_at = time.perf_counter()
        with anyio.fail_after(10):
            await all_started.wait()
        run_ids = [h.run_id for h in handles]
        # The dead worker's records, as it left them: nobody can take them over before
        # its owner lease (2 s) expires.
        before = {
            r.run_id: r
            for r in (await cluster.records(run_ids)).values()
            if victim.owns(r) and not r.finished
        }
        with anyio.move_on_after(WAIT_RECORDS) as waiting:
            async with anyio.create_task_group() as records_tg:
                for run_id in run_ids:
                    records_tg.start_soon(finished, cluster.runs, run_id)
        if waiting.cancelled_caught:
            stuck = await pending(cluster, run_ids)
            raise AssertionError(f"seed {seed}: runs unfinished a minute after the kill: {stuck}")
        recorded_in = time.perf_counter() - killed_at
        with anyio.move_on_after(WAIT_HANDLES):
            await all_ended.wait()
        handled_in = time.perf_counter() - killed_at
        waited_for = [run_id for run_id in run_ids if run_id not in outcomes]
        late = await pending(cluster, waited_for)
        tg.cancel_scope.cancel()
    print(
        f"\nseed {seed}: {len(workers)} workers, the victim killed after its step "
        f"{kill_after}; every run recorded finished {recorded_in:.1f} s after the kill, "
        f"{len(run_ids) - len(waited_for)} of {len(run_ids)} handles answered within "
        f"{handled_in:.1f} s"
    )
    assert await victim.process.wait() == -signal.SIGKILL
    assert before, f"seed {seed}: the kill interrupted no run of the victim"

    records = await cluster.records(run_ids)
    statuses: Counter[str] = Counter()
    for run_id in run_ids:
        record = records[run_id]
        statuses[record.status] += 1
        check_record(record, outcomes.get(run_id), before)
    print(f"seed {seed}: {dict(statuses)}; the victim had {len(before)} runs in flight")
    # Every step of InventorySaga is not idempotent: each run the victim had in flight
    # was failed around its step in doubt, and no other run failed.
    failed = {run_id for run_id, record in records.items() if record.status != "succeeded"}
    assert failed == set(before), (failed, set(before))
    await reconcile(cluster, records, before)
    # Every handle answered within WAIT_HANDLES seconds of every record finishing.
    assert not waited_for, (seed, late)


def check_record(record: RunRecord, outcome: Any, before: Mapping[str, RunRecord]) -> None:
    """A run finished as it may after its worker died, and its handle (``outcome``:
    a result, an exception, or ``None`` if it has not answered) says the same."""
    assert record.finished, record
    for name, step in record.steps.items():
        assert step.attempt == 1, (name, record)  # nothing ran twice
    if record.status == "succeeded":
        if outcome is not None:
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.output == change_of(record)
        return
    # Failed: only because the dead worker left one of its steps in doubt.
    doubted = in_doubt(record, before)
    assert doubted, (record, outcome)
    assert record.failed_step in doubted, record
    assert "in doubt" in (record.error or ""), record
    if record.status == "compensation_failed":
        assert set(record.failed_compensations) <= doubted & COMPENSABLE, record
    else:
        assert record.status == "failed", record
        assert not doubted & COMPENSABLE, record
    if outcome is not None:
        assert isinstance(outcome, SagaFailed), outcome
        assert outcome.step == record.failed_step
        assert isinstance(outcome, CompensationFailed) == (
            record.status == "compensation_failed"
        ), outcome
    # Nothing of it stands: every completed step with a compensation was compensated.
    for name in COMPENSABLE:
        step = record.steps.get(name)
        if step is not None and step.status == "succeeded":
            assert step.compensation == "succeeded", (name, record)


async def pending(cluster: Cluster, run_ids: Iterable[str]) -> list[str]:
    """Where each run stands, for a failure message: its record and its job."""
    found = []
    for run_id in run_ids:
        try:
            record = await cluster.runs.load(run_id)
        except RunNotFound:
            where = "no record"
        else:
            steps = {name: step.status for name, step in record.steps.items()}
            where = f"{record.status} {steps} owner {owner_pid(record)}"
        saq = cluster.queue.saq
        job = await saq.job(run_id)
        state = "no job" if job is None else f"job {job.status} attempts {job.attempts}"
        job_id = saq.job_id(run_id)
        lists = {
            "queued": await cluster.client.lpos(saq.namespace("queued"), job_id),
            "active": await cluster.client.lpos(saq.namespace("active"), job_id),
            "incomplete": await cluster.client.zscore(saq.namespace("incomplete"), job_id),
        }
        state += f" {lists} error {job.error if job else None!r}"
        found.append(f"{run_id}: {where}; {state}")
    return found


async def reconcile(
    cluster: Cluster, records: Mapping[str, RunRecord], before: Mapping[str, RunRecord]
) -> None:
    """The stock is the starting stock plus the writes of the runs that stand, up to the
    writes in doubt when the worker died (a ``perform`` cut off may or may not have
    written); the log holds each standing write once, and an entry of an undone run only
    if its ``transaction`` was in doubt."""
    slack: list[Doubt] = []
    maybe_logged: set[str] = set()
    for record in before.values():
        sku, quantity = request_of(record)
        steps = record.steps
        if "perform" in steps and steps["perform"].status == "running":
            slack.append(Doubt(sku, deltas("reserve", quantity)[1]))
        change = change_of(record)
        if "transaction" in steps and steps["transaction"].status == "running" and change:
            maybe_logged.add(change.reference)
    standing: dict[str, Change] = {}
    logged_once: set[str] = set()
    for record in records.values():
        change = change_of(record)
        if change is None:
            continue
        if record.steps["perform"].compensation != "succeeded":
            assert record.status == "succeeded", record
            standing[change.reference] = change
        transaction = record.steps.get("transaction")
        if (
            transaction is not None
            and transaction.status == "succeeded"
            and transaction.compensation != "succeeded"
        ):
            logged_once.add(change.reference)
    log = await cluster.store.transactions()
    entries = Counter(entry.run_id for entry in log)
    assert all(n == 1 for n in entries.values()), entries
    assert logged_once <= set(entries), logged_once - set(entries)
    assert set(entries) - logged_once <= maybe_logged, set(entries) - logged_once
    for entry in log:
        change = standing.get(entry.run_id)
        if change is not None:
            assert (entry.sku, entry.operation, entry.quantity) == (
                change.sku,
                change.operation,
                change.quantity,
            )
    for sku in KILL_SKUS:
        product = await cluster.store.get(sku)
        assert product.inventory_count == KILL_STOCK
        expected = sum(c.d_reserved for c in standing.values() if c.sku == sku)
        doubts = [d.d_reserved for d in slack if d.sku == sku]
        assert product.reserved_count - expected in subset_sums(doubts), (sku, product, doubts)
        if not doubts and not maybe_logged:  # nothing in doubt: the log alone gives the stock
            logged = sum(
                deltas(e.operation, e.quantity)[1]  # type: ignore[arg-type]
                for e in log
                if e.sku == sku
            )
            assert product.reserved_count == logged, sku
    assert await cluster.store.replenishments() == {}  # the reorder point is 0


# -- SIGTERM ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sigterm_lets_a_run_in_flight_finish_then_the_worker_exits(
    cluster: Cluster,
) -> None:
    """A worker gets SIGTERM while a run waits in ``perform`` for the product's lease
    (held by the test): once the lease is free the run finishes, within the shutdown
    grace, its handle gives its result, and the worker exits 0 after printing its
    stopped line."""
    await cluster.stock([Product(sku="wt-1", inventory_count=10)])
    (worker,) = await cluster.start_workers(1)
    async with (
        RedisLockProvider(cluster.client, prefix=f"{cluster.prefix}locks:") as locks,
        locks.lease("inventory:wt-1", ttl=30.0, wait=5.0),
    ):
        handle = await start(cluster, "wt-1", 2)
        with anyio.fail_after(20):
            while True:  # the run has reached perform, which waits for the lease
                with contextlib.suppress(RunNotFound):
                    record = await cluster.runs.load(handle.run_id)
                    if "perform" in record.steps:
                        break
                await anyio.sleep(0.05)
        assert record.steps["perform"].status == "running"
        worker.process.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        await anyio.sleep(1.0)  # the run goes on a second into the shutdown
        assert worker.process.returncode is None
    with anyio.fail_after(SHUTDOWN_GRACE + 10):
        result = await handle.result()
        code = await worker.process.wait()
    stopped = time.perf_counter() - signalled
    print(f"\nthe worker stopped {stopped:.1f} s after SIGTERM (grace {SHUTDOWN_GRACE} s)")
    assert code == 0, f"exit {code}; stderr in {worker.log}"
    assert result.output.quantity == 2
    assert (await cluster.runs.load(handle.run_id)).status == "succeeded"
    assert (await cluster.store.get("wt-1")).reserved_count == 2
    with anyio.fail_after(5):
        await worker.closed.wait()
    assert worker.lines[-1] == f"asaga worker {worker.pid}: stopped", worker.lines[-5:]


@pytest.mark.timeout(60)
async def test_sigterm_stops_an_idle_worker_at_once_whatever_its_grace(
    cluster: Cluster,
) -> None:
    """A worker with no job running (it ran one) and a 30 s shutdown grace exits 0 within
    a few seconds of SIGTERM: the grace is for running jobs, not for idle job slots."""
    await cluster.stock([Product(sku="wi-1", inventory_count=10)])
    (worker,) = await cluster.start_workers(1, grace=30)
    handle = await start(cluster, "wi-1", 1)
    with anyio.fail_after(20):
        assert (await handle.result()).output.quantity == 1
    worker.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(5):
        code = await worker.process.wait()
        await worker.closed.wait()
    assert code == 0, f"exit {code}; stderr in {worker.log}"
    assert worker.lines[-1] == f"asaga worker {worker.pid}: stopped", worker.lines[-5:]


# -- one idempotency key ------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_two_callers_with_one_idempotency_key_make_one_run(
    cluster: Cluster, redis_url: str
) -> None:
    """Two callers (each its own queue object, run store and Redis client) start the same
    reservation with one idempotency key, 10 times each, at once, on two workers: one
    run id, one record, one reservation, one log entry; every handle gives the same
    result; a later start with the key gets it again, and other inputs are refused."""
    from asaga import IdempotencyKeyReused

    await cluster.stock([Product(sku="wd-1", inventory_count=10)])
    await cluster.start_workers(2)
    key = f"order-{uuid.uuid4().hex[:8]}"
    handles: list[RunHandle] = []
    other = aioredis.Redis.from_url(redis_url)
    try:
        async with (
            RedisRunStore(other, prefix=f"{cluster.prefix}runs:") as runs,
            SaqQueue.from_url(redis_url, name=cluster.name, heartbeat=HEARTBEAT) as queue,
        ):

            async def caller(queue: SaqQueue, runs: RedisRunStore) -> None:
                for _ in range(10):
                    handles.append(
                        await InventorySaga.start(
                            queue=queue,
                            runs=runs,
                            idempotency_key=key,
                            product_id="wd-1",
                            quantity=3,
                            operation="reserve",
                        )
                    )

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(caller, cluster.queue, cluster.runs)
                    tg.start_soon(caller, queue, runs)
                results = [await handle.result() for handle in handles]
    finally:
        await other.aclose()
    assert len({h.run_id for h in handles}) == 1
    assert len({r.output for r in results}) == 1
    change = results[0].output
    again = await start(cluster, "wd-1", 3, idempotency_key=key)
    with anyio.fail_after(10):
        assert (await again.result()).output == change
    with anyio.fail_after(10), pytest.raises(IdempotencyKeyReused):
        # Refused at start while the first run's job is unfinished; once it is finished,
        # SAQ takes a job under its key again, and the handle refuses it (see
        # test_a_key_reused_with_other_inputs_after_its_run_is_refused_at_start).
        await (await start(cluster, "wd-1", 2, idempotency_key=key)).result()
    listed = await cluster.runs.list(saga="InventorySaga", limit=100)
    assert [r.run_id for r in listed] == [handles[0].run_id]
    assert listed[0].status == "succeeded"
    product = await cluster.store.get("wd-1")
    assert product.reserved_count == 3
    log = await cluster.store.transactions()
    assert [(t.run_id, t.quantity) for t in log] == [(change.reference, 3)]


@pytest.mark.timeout(60)
async def test_a_key_reused_with_other_inputs_after_its_run_is_refused_at_start(
    cluster: Cluster,
) -> None:
    """Once a keyed run has finished, a start with the same key and other inputs raises
    ``IdempotencyKeyReused`` at once, and enqueues nothing."""
    from asaga import IdempotencyKeyReused

    await cluster.stock([Product(sku="wd-2", inventory_count=10)])
    await cluster.start_workers(1)
    key = f"order-{uuid.uuid4().hex[:8]}"
    first = await start(cluster, "wd-2", 1, idempotency_key=key)
    with anyio.fail_after(10):
        await first.result()
    with pytest.raises(IdempotencyKeyReused):
        await start(cluster, "wd-2", 2, idempotency_key=key)
