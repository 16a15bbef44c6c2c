"""Runs on workers: Saga.start on SAQ worker processes vs. a raw SAQ job, and vs. in-process.

What is measured (every worker a separate OS process this script starts and stops by PID)
-----------------------------------------------------------------------------------------
1. **Round trip, one request in flight.** A 1-step saga (``Echo``: one step returning
   ``x + 1``) started with ``Echo.start(queue=SaqQueue, runs=RedisRunStore, x=i)`` and
   waited for with ``await handle.result()``, served by one ``python -m asaga worker
   benchmarks.distributed:served_echo`` process; against a raw SAQ job doing the same work
   (``queue.enqueue("echo", x=i)``, then ``job.refresh(until_complete=...)`` until it is
   done, as asaga's own wait does), served by one plain ``saq.Worker`` process (this script
   with ``--saq-worker``). Both jobs are enqueued with the options asaga uses (a key,
   ``timeout=0``, ``heartbeat``, ``retries``, ``ttl``) and both workers run SAQ with the same
   timers and concurrency. Batches alternate between the two. p50/p99 of enqueue -> result;
   the ratio asaga / SAQ (target <= 1.5x).
2. **Throughput, many in flight.** The inventory example's ``InventorySaga`` (6 steps, the
   product's lease, the store's fenced write, the log; a durable run recorded in a
   ``RedisRunStore``) reserving one unit, on ``RedisInventoryStore`` +
   ``RedisLockProvider``, every store and notifier call delayed by 1 ms (``Delayed``, in
   this module's ``served_inventory``). N runs (500), C in flight (200), each its own
   product, on a queue served by 1 worker process and on a queue served by 2; rounds
   alternate between the two. Sagas/s and the ratio 2 workers / 1 worker (target >= 1.6x).
   The caller (this process), the workers and Redis share the machine's cores: the CPU
   each used per run is reported, to say where the time goes.
3. **A mapped saga.** ``BulkInventorySaga`` (``map_each(InventorySaga, max_concurrency=8)``
   over its operations, 100 per run, each its own product, the same 1 ms per call): run
   whole on a worker with ``Saga.start`` vs. run in this process with ``Saga.run`` (with
   the same ``RedisRunStore``, so both are durable alike; and without a store). The
   elements of a mapped *saga* run in the process that runs the saga, so a second worker
   does not speed one bulk run up (a row shows it); only separate runs spread over workers.
4. **Map elements on workers.** ``MapTicks``: one step, ``map_each(tick, over="items",
   queue=..., batch_size=MAP_BATCH)``, where ``tick`` sleeps 1 ms (simulated I/O) and then
   increments its element's field of a Redis hash (``HINCRBY``). Each element is a job on
   the queue's ``asaga worker benchmarks.distributed:served_map_1`` / ``served_map_2``
   processes (1 or 2 of them, started after section 3, once section 2's and 3's workers
   are stopped); against the same map in this process (``max_concurrency=MAP_BATCH``, no
   queue). One run at a time, rounds alternate. Elements/s and the ratios workers /
   in-process and 2 workers / 1 worker. After each cell every run's hash is checked: each
   element's field exactly 1 (its effect happened exactly once), or the benchmark stops
   with an error.

Usage::

    python benchmarks/distributed.py            # full run, about 70 s on a quiet machine
    python benchmarks/distributed.py --quick    # smoke test, < 20 s
    python benchmarks/distributed.py --redis-url redis://127.0.0.1:6379/0   # the default
    python benchmarks/distributed.py --render   # the tables again from the saved JSON

On a shared machine each cell of a full run first waits (at most 60 s) for the other
processes to go under 0.25 busy cores, and reports what they used during the cell.

It prints Markdown tables and the ratios, writes ``benchmarks/results/distributed.json``
and ``benchmarks/results/distributed.md``. Every Redis key it makes is under a random token
(``bench-dist:<hex>:`` for asaga's stores, SAQ queues named ``bench-dist-<hex>-...``) and is
deleted at the end; the number of keys left is reported (0).

This module is also what the worker processes import (``benchmarks.distributed:
served_echo`` / ``served_inventory`` / ``served_map_1`` / ``served_map_2``): keep its top
level free of side effects.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import structlog

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the examples live in examples/, beside benchmarks/

import asaga  # noqa: E402
from asaga import Resource, Saga, map_each, step  # noqa: E402
from examples.inventory.sagas import (  # noqa: E402
    BulkInventorySaga,
    InventorySaga,
    Notifier,
    OperationRequest,
)
from examples.inventory.store import Product  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"
DELAY = 0.001
"""Simulated I/O per store or notifier call, in seconds."""
STOCK = 10**9
HEARTBEAT = 30.0
"""The job heartbeat (SaqQueue's default); the raw SAQ jobs get the same."""
JOB_OPTIONS = {"timeout": 0, "heartbeat": round(HEARTBEAT), "retries": 5, "ttl": 3600}
"""What SaqQueue.enqueue passes to SAQ (asaga/workers/_saq.py); the raw jobs get the same."""
SAQ_TIMERS = {"schedule": 1, "worker_info": 10, "sweep": round(HEARTBEAT), "abort": 1}
"""SaqQueue's worker timers (asaga/workers/_saq.py:_timers); the raw worker gets the same."""
RECHECK = 2.0
"""Seconds of one ``refresh(until_complete=...)`` wait, as SaqQueue.wait."""
MAP_BATCH = 32
"""Section 4: ``batch_size`` of the map on workers (jobs in flight), and ``max_concurrency``
of the same map in-process."""


# -- what the workers serve (imported by `python -m asaga worker benchmarks.distributed:...`) --


class Echo(Saga):
    """One step, no I/O: the whole round trip is the engine's and the framework's."""

    x: int
    output = "echo"

    @step
    async def echo(x: int) -> int:
        return x + 1


class Delayed:
    """``inner`` with ``anyio.sleep(delay)`` before each of its coroutine methods (as in
    benchmarks/realistic.py). Other attributes (the store's ``locks``) pass through."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner = inner
        self._delay = delay
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def delayed(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            await anyio.sleep(self._delay)
            return await attribute(*args, **kwargs)

        return delayed


def configure_logging() -> None:
    """structlog dropping asaga's debug/info events by level (as the other benchmarks): the
    worker's default would render every run's events to its stdout."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )


@asynccontextmanager
async def inventory_resources(url: str, prefix: str) -> AsyncIterator[dict[str, Any]]:
    """The inventory's store (Redis, every call delayed 1 ms), its lock provider and a
    notifier (delayed 1 ms); ``raw_store`` is the undelayed store, for seeding and checks."""
    import redis.asyncio as aioredis

    from asaga.locks import RedisLockProvider
    from examples.inventory.store import RedisInventoryStore

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=500, timeout=30, socket_connect_timeout=2.0, socket_timeout=None
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        async with RedisLockProvider(client, prefix=f"{prefix}locks:") as locks:
            store = RedisInventoryStore(client, locks, prefix=f"{prefix}inv:")
            yield {
                "store": Delayed(store, DELAY),
                "locks": locks,
                "notifier": Delayed(Notifier(), DELAY),
                "raw_store": store,
            }
    finally:
        await client.aclose()


@asynccontextmanager
async def served_echo(url: str, prefix: str) -> AsyncIterator[Any]:
    """``asaga worker benchmarks.distributed:served_echo``: the Echo saga."""
    from asaga.runs import RedisRunStore
    from asaga.workers import Served

    configure_logging()
    async with RedisRunStore.from_url(url, prefix=f"{prefix}runs:") as runs:
        yield Served(sagas=[Echo], runs=runs)


@asynccontextmanager
async def served_inventory(url: str, prefix: str) -> AsyncIterator[Any]:
    """``asaga worker benchmarks.distributed:served_inventory``: InventorySaga and
    BulkInventorySaga on the Redis store, 1 ms per store and notifier call."""
    from asaga.runs import RedisRunStore
    from asaga.workers import Served

    configure_logging()
    async with (
        RedisRunStore.from_url(url, prefix=f"{prefix}runs:") as runs,
        inventory_resources(url, prefix) as resources,
    ):
        yield Served(
            sagas=[InventorySaga, BulkInventorySaga],
            runs=runs,
            resources={k: resources[k] for k in ("store", "locks", "notifier")},
        )


class Tally:
    """Where each element of section 4's map leaves its effect: ``HINCRBY key field 1`` in
    Redis, so that the caller can check afterwards that every element ran exactly once."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def add(self, key: str, field: str) -> int:
        return int(await self.client.hincrby(key, field, 1))


async def tick(item: int, tally_key: str, tally: Tally) -> int:
    """One element of section 4's map: 1 ms of simulated I/O, then its effect (field
    ``item`` of hash ``tally_key`` incremented); the new count, 1 for an element's first
    run."""
    await anyio.sleep(DELAY)
    return await tally.add(tally_key, str(item))


def map_saga(queue: str | None) -> type[Saga]:
    """Section 4's saga: one step, ``map_each(tick, over="items")``: on the workers of
    ``queue`` (``batch_size=MAP_BATCH`` jobs in flight) or, with ``queue=None``, in the
    process that runs it (``max_concurrency=MAP_BATCH``). A worker builds the same class
    for its queue (the queue name is part of the class, so each queue has its own)."""

    class MapTicks(Saga):
        items: list[int]
        tally_key: str
        tally: Resource[Tally]
        output = "ticks"

        ticks = (
            map_each(tick, over="items", max_concurrency=MAP_BATCH)
            if queue is None
            else map_each(tick, over="items", queue=queue, batch_size=MAP_BATCH)
        )

    return MapTicks


def map_queue(prefix: str, workers: int) -> str:
    """The SAQ queue of section 4 served by ``workers`` processes, from the run's prefix
    (``bench-dist:<hex>:``): the worker processes get only ``url`` and ``prefix``."""
    return f"bench-dist-{prefix.split(':')[1]}-map{workers}"


@asynccontextmanager
async def tally_client(url: str) -> AsyncIterator[Tally]:
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=200, timeout=30, socket_connect_timeout=2.0, socket_timeout=None
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        yield Tally(client)
    finally:
        await client.aclose()


@asynccontextmanager
async def _served_map(url: str, prefix: str, workers: int) -> AsyncIterator[Any]:
    from asaga.workers import Served

    configure_logging()
    async with tally_client(url) as tally:
        # elements only: no run store
        yield Served(sagas=[map_saga(map_queue(prefix, workers))], resources={"tally": tally})


@asynccontextmanager
async def served_map_1(url: str, prefix: str) -> AsyncIterator[Any]:
    """``asaga worker benchmarks.distributed:served_map_1``: the elements of section 4's
    map on the queue served by 1 worker process."""
    async with _served_map(url, prefix, 1) as served:
        yield served


@asynccontextmanager
async def served_map_2(url: str, prefix: str) -> AsyncIterator[Any]:
    """``asaga worker benchmarks.distributed:served_map_2``: the same, on the queue served
    by 2 worker processes."""
    async with _served_map(url, prefix, 2) as served:
        yield served


async def echo_job(ctx: Any, *, x: int) -> int:
    """The raw SAQ job: the same work as Echo's step."""
    return x + 1


async def saq_worker(url: str, name: str, concurrency: int) -> None:
    """A plain SAQ worker for ``echo_job`` (``--saq-worker``); SIGTERM stops it."""
    from saq import Queue, Worker

    queue = Queue.from_url(url, name=name)
    await queue.connect()
    worker = Worker(
        queue,
        functions=[("echo", echo_job)],
        concurrency=concurrency,
        timers=SAQ_TIMERS,  # type: ignore[arg-type]
        shutdown_grace_period_s=1,
    )
    print(f"saq worker {os.getpid()}: serving queue {name!r}", flush=True)
    try:
        await worker.start()  # returns on SIGTERM / SIGINT (SAQ's own signal handlers)
    finally:
        await queue.disconnect()
    print(f"saq worker {os.getpid()}: stopped", flush=True)


# -- budget, rows ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """Every loop is bounded in count and in time."""

    latency_warmup: int  # requests per path before timing
    latency_batches: int  # per path, alternating
    latency_batch_requests: int
    throughput_rounds: int  # per worker count, alternating
    throughput_runs: int  # per round
    throughput_in_flight: int
    bulk_elements: int  # operations per BulkInventorySaga run
    bulk_rounds: int  # rounds over the bulk variants
    bulk_runs: int  # bulk runs per variant per round
    cell_timeout: float  # seconds, any one cell
    timeout: float  # seconds, the whole benchmark
    quiet_wait: float  # seconds a cell may wait for the machine's other processes to calm down
    # 4. (defaults: a saved run from before section 4 still renders)
    map_elements: int = 0  # elements per MapTicks run
    map_rounds: int = 0  # rounds over in-process / 1 worker / 2 workers, alternating
    map_runs: int = 0  # MapTicks runs per cell, one after the other


FULL = Budget(
    latency_warmup=50,
    latency_batches=10,
    latency_batch_requests=100,
    throughput_rounds=3,
    throughput_runs=500,
    throughput_in_flight=200,
    bulk_elements=100,
    bulk_rounds=3,
    bulk_runs=5,
    cell_timeout=120.0,
    timeout=1800.0,
    quiet_wait=60.0,
    map_elements=500,
    map_rounds=3,
    map_runs=3,
)
QUICK = Budget(
    latency_warmup=5,
    latency_batches=2,
    latency_batch_requests=15,
    throughput_rounds=1,
    throughput_runs=60,
    throughput_in_flight=30,
    bulk_elements=16,
    bulk_rounds=1,
    bulk_runs=1,
    cell_timeout=30.0,
    timeout=90.0,
    quiet_wait=0.0,
    map_elements=40,
    map_rounds=1,
    map_runs=1,
)


@dataclass(slots=True)
class LatencyRow:
    path: str
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    enqueue_p50_ms: float  # start() / enqueue() returned
    wait_p50_ms: float  # then result() / refresh until complete
    caller_cpu_ms: float | None  # per request
    worker_cpu_ms: float | None
    redis_cpu_ms: float | None
    redis_commands: float | None  # per request, every client of the server
    over_1s: int  # requests that took over a second (an end missed: the 2 s recheck)
    others_busy: float | None  # cores busy with every other process of the machine
    # means over the requests of at most 1 s, from SAQ's job timestamps (whole ms):
    queued_ms_mean: float | None = None  # enqueued -> the worker took the job
    on_worker_ms_mean: float | None = None  # taken -> finished
    back_ms_mean: float | None = None  # finished -> the caller had the result
    jobs: dict[str, Any] = field(default_factory=dict)  # jobs given out twice; the slowest


@dataclass(slots=True)
class ThroughputRow:
    workers: int
    round: int
    runs: int
    in_flight: int
    seconds: float
    runs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    failed: int
    caller_cpu_ms: float | None  # per run
    workers_cpu_ms: float | None  # per run, all workers of the queue
    redis_cpu_ms: float | None  # per run
    cpu_busy: float | None  # (caller + workers + Redis) CPU seconds / wall seconds
    others_busy: float | None  # cores busy with every other process of the machine
    reserved_ok: bool
    # medians, from SAQ's job timestamps (ms) and the caller's clock:
    queued_ms: float | None = None  # enqueued -> a worker took the job
    on_worker_ms: float | None = None  # taken -> finished (the run, its records, SAQ's own)
    back_ms: float | None = None  # finished -> handle.result() returned in the caller
    errors: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)  # jobs given out twice; the slowest


@dataclass(slots=True)
class BulkRow:
    variant: str
    round: int
    bulk_runs: int
    elements: int
    seconds: float
    elements_per_s: float
    p50_run_ms: float
    failed_elements: int
    caller_cpu_ms: float | None  # per element
    workers_cpu_ms: float | None
    redis_cpu_ms: float | None
    others_busy: float | None  # cores busy with every other process of the machine
    reserved_ok: bool
    max_run_ms: float = float("nan")  # the slowest bulk run
    errors: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)  # on workers: as ThroughputRow.jobs


@dataclass(slots=True)
class MapRow:
    workers: int  # 0: the map in the caller (no queue)
    round: int
    runs: int  # MapTicks runs that succeeded
    elements: int  # their elements
    seconds: float
    elements_per_s: float
    p50_run_ms: float
    max_run_ms: float
    failed_runs: int
    caller_cpu_ms: float | None  # per element
    workers_cpu_ms: float | None
    redis_cpu_ms: float | None
    redis_commands: float | None  # per element, every client of the server
    cpu_busy: float | None  # (caller + workers + Redis) CPU seconds / wall seconds
    others_busy: float | None  # cores busy with every other process of the machine
    # conservation, from the Redis hashes (every field of every run must be 1):
    effects: dict[str, int] = field(default_factory=dict)
    effects_ok: bool = False
    errors: dict[str, int] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- processes and CPU -----------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid`` so far (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> float | None:
    """CPU seconds the whole machine has been busy (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) / CLOCK_TICKS


class WorkerProcess:
    """A worker process started by this script, its output in a log file; stopped by PID."""

    def __init__(self, label: str, argv: list[str], ready: str, log_dir: Path) -> None:
        self.label = label
        self.ready = ready
        self.log = log_dir / f"{label}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.pid = self.proc.pid

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def wait_ready(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            while True:
                if self.ready in self.tail():
                    return
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker {self.label} exited ({self.proc.returncode}):\n{self.tail()}"
                    )
                await anyio.sleep(0.05)
        raise RuntimeError(f"worker {self.label} not ready after {seconds} s:\n{self.tail()}")

    def cpu(self) -> float | None:
        return process_cpu(self.pid)

    def terminate(self) -> None:
        """SIGTERM to this PID (the worker stops taking jobs and exits)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, grace: float = 20.0) -> int | None:
        """Wait for the exit; SIGKILL to this PID if it outlives ``grace``."""
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.returncode


def stop_all(workers: list[WorkerProcess]) -> dict[str, int | None]:
    """SIGTERM to each worker's PID at once, then wait for each (a worker takes about its
    shutdown grace to exit: SAQ waits that long for its idle dequeue loops)."""
    for worker in workers:
        worker.terminate()
    return {worker.label: worker.reap() for worker in workers}


def asaga_worker(
    label: str, target: str, url: str, prefix: str, queue: str, concurrency: int, log_dir: Path
) -> WorkerProcess:
    argv = [
        sys.executable,
        "-m",
        "asaga",
        "worker",
        f"benchmarks.distributed:{target}",
        "--redis",
        url,
        "--prefix",
        prefix,
        "--queue",
        queue,
        "--concurrency",
        str(concurrency),
        "--shutdown-grace",
        "1",
        "--heartbeat",
        str(HEARTBEAT),
    ]
    return WorkerProcess(label, argv, "serving queue", log_dir)


def raw_saq_worker(
    label: str, url: str, queue: str, concurrency: int, log_dir: Path
) -> WorkerProcess:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--saq-worker",
        queue,
        "--redis-url",
        url,
        "--worker-concurrency",
        str(concurrency),
    ]
    return WorkerProcess(label, argv, "serving queue", log_dir)


class Meter:
    """CPU of this process, of some worker processes and of Redis, and Redis's command
    count, between ``start()`` and ``stop()``."""

    def __init__(self, client: Any, workers: list[WorkerProcess]) -> None:
        self.client = client
        self.workers = workers

    async def _redis(self) -> tuple[float | None, int | None]:
        try:
            cpu = await self.client.info("cpu")
            stats = await self.client.info("stats")
        except Exception:  # noqa: BLE001 - a diagnostic; the cell goes on without it
            return None, None
        return (
            float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            int(stats["total_commands_processed"]),
        )

    async def start(self) -> None:
        self.redis_cpu, self.commands = await self._redis()
        self.machine_cpu = machine_cpu()
        self.worker_cpu = [w.cpu() for w in self.workers]
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    async def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        worker_cpu: float | None = 0.0
        for worker, before in zip(self.workers, self.worker_cpu, strict=True):
            after = worker.cpu()
            if worker_cpu is None or before is None or after is None:
                worker_cpu = None
            else:
                worker_cpu += after - before
        machine = machine_cpu()
        redis_cpu, commands = await self._redis()
        redis = None if redis_cpu is None or self.redis_cpu is None else redis_cpu - self.redis_cpu
        ours = [cpu, worker_cpu, redis]
        others = (
            None
            if machine is None or self.machine_cpu is None or any(x is None for x in ours)
            else max(0.0, (machine - self.machine_cpu - sum(x for x in ours if x)) / wall)
        )
        return {
            "others": others,
            "wall": wall,
            "caller": cpu,
            "workers": worker_cpu,
            "redis": redis,
            # INFO's own calls excluded (2 at each end)
            "commands": (
                None if commands is None or self.commands is None else commands - self.commands - 2
            ),
        }


def per(total: float | None, count: int, scale: float = 1e3) -> float | None:
    return None if total is None or count == 0 else total / count * scale


QUIET = 0.25
"""Cores the machine's other processes may keep busy when a cell starts."""
QUIET_WAITS: list[float] = []
"""Seconds each cell waited for quiet (reported)."""


async def wait_for_quiet(client: Any, workers: list[WorkerProcess], budget: Budget) -> None:
    """Before a cell: wait (at most ``budget.quiet_wait`` seconds) until the processes that
    are not this benchmark's (the caller, its workers, Redis) keep under ``QUIET`` cores
    busy over half a second. A shared machine's other work would otherwise be measured;
    what is left of it during the cell is reported per cell."""
    if budget.quiet_wait <= 0:
        return
    start = time.perf_counter()
    while True:
        meter = Meter(client, workers)
        await meter.start()
        await anyio.sleep(0.5)
        others = (await meter.stop())["others"]
        waited = time.perf_counter() - start
        if others is None or others < QUIET or waited >= budget.quiet_wait:
            QUIET_WAITS.append(round(waited, 1))
            return


# -- 1. round trip ---------------------------------------------------------------------------


@dataclass(slots=True)
class World:
    url: str
    prefix: str  # asaga's stores: bench-dist:<hex>:
    token: str
    client: Any  # redis-py, for INFO and cleanup
    runs: Any  # RedisRunStore (the callers')
    resources: dict[str, Any]
    echo_queue: Any = None  # SaqQueue
    raw_queue: Any = None  # saq.Queue
    inventory_queues: dict[int, Any] = field(default_factory=dict)  # workers -> SaqQueue
    map_sagas: dict[int, type[Saga]] = field(default_factory=dict)  # workers (0: none) -> class
    tally: Tally | None = None  # the caller's, for the in-process map
    workers: dict[str, list[WorkerProcess]] = field(default_factory=dict)

    def running(self) -> list[WorkerProcess]:
        """Every worker process of the benchmark still running."""
        return [w for group in self.workers.values() for w in group if w.proc.poll() is None]


async def latency(world: World, budget: Budget) -> list[LatencyRow]:
    from saq.job import TERMINAL_STATUSES, Status

    clock = time.perf_counter

    async def via_asaga(i: int) -> tuple[str, float, float]:
        t0 = clock()
        handle = await Echo.start(queue=world.echo_queue, runs=world.runs, x=i)
        t1 = clock()
        result = await handle.result()
        t2 = clock()
        if result.output != i + 1:
            raise RuntimeError(f"Echo gave {result.output!r} for {i}")
        return handle.run_id, t1 - t0, t2 - t1

    async def via_saq(i: int) -> tuple[str, float, float]:
        t0 = clock()
        job = await world.raw_queue.enqueue("echo", key=uuid.uuid4().hex, x=i, **JOB_OPTIONS)
        t1 = clock()
        while job.status not in TERMINAL_STATUSES:  # as SaqQueue.wait
            try:
                await job.refresh(until_complete=RECHECK)
            except TimeoutError:
                continue
        t2 = clock()
        if job.status != Status.COMPLETE or job.result != i + 1:
            raise RuntimeError(f"echo job {job.status}: {job.result!r} for {i}")
        return job.key, t1 - t0, t2 - t1

    paths: dict[str, tuple[Callable[[int], Awaitable[tuple[str, float, float]]], str, Any]] = {
        "raw SAQ job (enqueue + refresh)": (via_saq, "saq", world.raw_queue),
        "asaga Echo.start + handle.result()": (via_asaga, "echo", world.echo_queue),
    }
    samples: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
    returned: dict[str, dict[str, float]] = {p: {} for p in paths}  # key -> epoch ms, <= 1 s
    parts = ("caller", "workers", "redis", "commands", "others_cpu", "wall")
    totals: dict[str, dict[str, float | None]] = {p: dict.fromkeys(parts, 0.0) for p in paths}
    for call, _, _ in paths.values():  # warm up both, untimed
        with anyio.fail_after(budget.cell_timeout):
            for i in range(budget.latency_warmup):
                await call(i)
    for batch in range(budget.latency_batches):
        order = list(paths) if batch % 2 == 0 else list(reversed(paths))
        await wait_for_quiet(world.client, world.running(), budget)
        for name in order:
            call, workers, _ = paths[name]
            meter = Meter(world.client, world.workers[workers])
            await meter.start()
            with anyio.fail_after(budget.cell_timeout):
                for n in range(budget.latency_batch_requests):
                    key, sent, waited = await call(batch * 100_000 + n)
                    samples[name].append((sent, waited))
                    if sent + waited <= 1.0:
                        returned[name][key] = time.time() * 1e3
            spent = await meter.stop()
            others = spent["others"]
            spent["others_cpu"] = None if others is None else others * (spent["wall"] or 0.0)
            for part in parts:
                acc, value = totals[name][part], spent[part]
                totals[name][part] = None if acc is None or value is None else acc + value
    rows = []
    for name, (_, _, queue) in paths.items():
        enqueue = [a * 1e3 for a, _ in samples[name]]
        wait = [b * 1e3 for _, b in samples[name]]
        total = [a + b for a, b in zip(enqueue, wait, strict=True)]
        n = len(total)
        phases, jobs = await job_phases(queue, returned[name], statistics.fmean)
        spent = totals[name]
        rows.append(
            LatencyRow(
                path=name,
                requests=n,
                p50_ms=statistics.median(total),
                p99_ms=percentile(total, 0.99),
                mean_ms=statistics.fmean(total),
                max_ms=max(total),
                over_1s=sum(t > 1e3 for t in total),
                enqueue_p50_ms=statistics.median(enqueue),
                wait_p50_ms=statistics.median(wait),
                caller_cpu_ms=per(spent["caller"], n),
                worker_cpu_ms=per(spent["workers"], n),
                redis_cpu_ms=per(spent["redis"], n),
                redis_commands=per(spent["commands"], n, scale=1.0),
                others_busy=(
                    None
                    if spent["others_cpu"] is None or not spent["wall"]
                    else spent["others_cpu"] / spent["wall"]
                ),
                **{f"{k}_mean": v for k, v in phases.items()},
                jobs=jobs,
            )
        )
        print(
            f"  {name:38} p50 {rows[-1].p50_ms:6.2f} ms  p99 {rows[-1].p99_ms:6.2f} ms",
            file=sys.stderr,
        )
    return rows


# -- 2. throughput ---------------------------------------------------------------------------


async def seed(world: World, skus: list[str]) -> None:
    store = world.resources["raw_store"]
    for sku in skus:
        await store.put(Product(sku=sku, inventory_count=STOCK, reorder_point=0))


async def reserved(world: World, skus: list[str]) -> dict[str, int]:
    store = world.resources["raw_store"]
    return {sku: (await store.get(sku)).reserved_count for sku in skus}


async def throughput_round(
    world: World, workers: int, round_: int, skus: list[str], budget: Budget
) -> ThroughputRow:
    queue = world.inventory_queues.get(workers)  # None: workers=0, runs in this process
    resources = {k: world.resources[k] for k in ("store", "locks", "notifier")}
    before = await reserved(world, skus)
    latencies: list[float] = []
    returned: dict[str, float] = {}  # run id -> epoch ms when result() returned
    errors: dict[str, int] = {}
    next_index = 0
    clock = time.perf_counter

    async def client() -> None:
        nonlocal next_index
        while next_index < budget.throughput_runs:
            sku = skus[next_index]
            next_index += 1
            t0 = clock()
            try:
                if queue is None:
                    result = await InventorySaga.run(
                        runs=world.runs,
                        product_id=sku,
                        quantity=1,
                        operation="reserve",
                        **resources,
                    )
                    run_id = result.run_id
                else:
                    handle = await InventorySaga.start(
                        queue=queue,
                        runs=world.runs,
                        product_id=sku,
                        quantity=1,
                        operation="reserve",
                    )
                    await handle.result()
                    run_id = handle.run_id
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                continue
            latencies.append((clock() - t0) * 1e3)
            returned[run_id] = time.time() * 1e3

    await wait_for_quiet(world.client, world.running(), budget)
    meter = Meter(world.client, world.workers[f"inventory-{workers}"] if workers else [])
    await meter.start()
    with anyio.fail_after(budget.cell_timeout):
        async with anyio.create_task_group() as tg:
            for _ in range(min(budget.throughput_in_flight, budget.throughput_runs)):
                tg.start_soon(client)
    spent = await meter.stop()
    after = await reserved(world, skus)
    phases, jobs = await job_phases(queue, returned, statistics.median) if queue else ({}, {})
    done = len(latencies)
    wall = spent["wall"] or float("nan")
    parts = [spent["caller"], spent["workers"], spent["redis"]]
    busy = None if any(p is None for p in parts) else sum(p for p in parts if p) / wall
    return ThroughputRow(
        workers=workers,
        round=round_,
        runs=done,
        in_flight=budget.throughput_in_flight,
        seconds=round(wall, 3),
        runs_per_s=done / wall,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies) if latencies else float("nan"),
        failed=sum(errors.values()),
        caller_cpu_ms=per(spent["caller"], done),
        workers_cpu_ms=per(spent["workers"], done) if workers else None,
        redis_cpu_ms=per(spent["redis"], done),
        cpu_busy=busy,
        others_busy=spent["others"],
        reserved_ok=sum(after[s] - before[s] for s in skus) == done,
        errors=errors,
        jobs=jobs,
        **phases,
    )


async def job_phases(
    saq_queue: Any, returned: dict[str, float], stat: Callable[[list[float]], float]
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Where a run's time went, from SAQ's timestamps of its job (whole ms, read after the
    cell, untimed): waiting in the queue, on the worker, and back to the caller; ``stat``
    (median, mean) of each. Then how many jobs SAQ gave out more than once (swept: their
    worker stopped beating), and the phases of the slowest. ``saq_queue``: a SaqQueue or
    a saq.Queue; ``returned``: job key -> epoch ms when the caller had the result."""
    saq_queue = getattr(saq_queue, "saq", saq_queue)
    keys = list(returned)
    jobs = []
    for start in range(0, len(keys), 200):
        jobs += await saq_queue.jobs(keys[start : start + 200])
    found = [(job, returned[key]) for job, key in zip(jobs, keys, strict=True) if job]
    if not found:
        return {"queued_ms": None, "on_worker_ms": None, "back_ms": None}, {}
    slow, done_at = max(found, key=lambda pair: pair[1] - pair[0].queued)
    return {
        "queued_ms": stat([j.started - j.queued for j, _ in found]),
        "on_worker_ms": stat([j.completed - j.started for j, _ in found]),
        "back_ms": stat([done - j.completed for j, done in found]),
    }, {
        "jobs_found": len(found),
        "retried_jobs": sum(j.attempts > 1 for j, _ in found),
        "slowest": {
            "total_ms": round(done_at - slow.queued, 1),
            "queued_ms": slow.started - slow.queued,
            "on_worker_ms": slow.completed - slow.started,
            "back_ms": round(done_at - slow.completed, 1),
            "attempts": slow.attempts,
        },
    }


async def throughput(world: World, budget: Budget) -> list[ThroughputRow]:
    skus = [f"t{i}" for i in range(budget.throughput_runs)]  # each run its own product
    await seed(world, skus)
    for workers in (1, 2):  # warm both queues' workers, untimed
        with anyio.fail_after(budget.cell_timeout):
            for i in range(2 * workers):
                handle = await InventorySaga.start(
                    queue=world.inventory_queues[workers],
                    runs=world.runs,
                    product_id=skus[i],
                    quantity=1,
                    operation="reserve",
                )
                await handle.result()
    rows = []
    for round_ in range(budget.throughput_rounds):
        for workers in (0, 1, 2) if round_ % 2 == 0 else (2, 1, 0):
            row = await throughput_round(world, workers, round_, skus, budget)
            rows.append(row)
            print(
                f"  InventorySaga, {workers or 'in-process, no'} worker(s), round {round_}: "
                f"{row.runs_per_s:7.0f} runs/s  p50 {row.p50_ms:7.1f} ms  failed {row.failed}",
                file=sys.stderr,
            )
    return rows


# -- 3. a mapped saga ------------------------------------------------------------------------

BULK_VARIANTS = (
    "in-process Saga.run (RedisRunStore)",
    "in-process Saga.run (no store)",
    "Saga.start, 1 worker",
    "Saga.start, 2 workers, 1 run in flight",
    "Saga.start, 2 workers, 2 runs in flight",
)


async def bulk_round(
    world: World, variant: str, round_: int, skus: list[str], budget: Budget
) -> BulkRow:
    size = budget.bulk_elements
    before = await reserved(world, skus)
    durations: list[float] = []
    errors: dict[str, int] = {}
    failed_elements = 0
    elements = 0  # succeeded
    returned: dict[str, float] = {}  # run id -> epoch ms (runs on workers)
    clock = time.perf_counter
    resources = {k: world.resources[k] for k in ("store", "locks", "notifier")}
    in_flight = 2 if "2 runs in flight" in variant else 1
    workers_of = {"1 worker": ("inventory-1", 1), "2 workers": ("inventory-2", 2)}
    pool, count = next(
        (v for k, v in workers_of.items() if k in variant), ("inventory-1", 0)
    )  # in-process rows meter no worker (they stay idle)

    async def one(slot: int) -> None:
        nonlocal failed_elements, elements
        # each run in flight has its own products
        ops = [
            OperationRequest(product_id=skus[slot * size + j], quantity=1, operation="reserve")
            for j in range(size)
        ]
        t0 = clock()
        try:
            if variant.startswith("in-process"):
                runs = world.runs if "RedisRunStore" in variant else None
                result = await BulkInventorySaga.run(operations=ops, runs=runs, **resources)
            else:
                handle = await BulkInventorySaga.start(
                    queue=world.inventory_queues[count], runs=world.runs, operations=ops
                )
                result = await handle.result()
                returned[handle.run_id] = time.time() * 1e3
        except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            failed_elements += size
            return
        durations.append((clock() - t0) * 1e3)
        failed_elements += len(result.output["failed"])
        elements += len(result.output["succeeded"])

    async def slot_runner(slot: int) -> None:
        for _ in range(budget.bulk_runs):
            await one(slot)

    await wait_for_quiet(world.client, world.running(), budget)
    meter = Meter(world.client, world.workers[pool] if count else [])
    await meter.start()
    with anyio.fail_after(budget.cell_timeout):
        async with anyio.create_task_group() as tg:
            for slot in range(in_flight):
                tg.start_soon(slot_runner, slot)
    spent = await meter.stop()
    after = await reserved(world, skus)
    jobs = (
        (await job_phases(world.inventory_queues[count], returned, statistics.median))[1]
        if count
        else {}
    )
    runs_done = len(durations)
    wall = spent["wall"] or float("nan")
    return BulkRow(
        variant=variant,
        round=round_,
        bulk_runs=runs_done,
        elements=elements,
        seconds=round(wall, 3),
        elements_per_s=elements / wall,
        p50_run_ms=percentile(durations, 0.5),
        failed_elements=failed_elements,
        caller_cpu_ms=per(spent["caller"], elements),
        workers_cpu_ms=per(spent["workers"], elements) if count else None,
        redis_cpu_ms=per(spent["redis"], elements),
        others_busy=spent["others"],
        reserved_ok=sum(after[s] - before[s] for s in skus) == elements,
        max_run_ms=max(durations) if durations else float("nan"),
        errors=errors,
        jobs=jobs,
    )


async def bulk(world: World, budget: Budget) -> list[BulkRow]:
    skus = [f"b{i}" for i in range(2 * budget.bulk_elements)]
    await seed(world, skus)
    warm = [OperationRequest(product_id=skus[0], quantity=1, operation="reserve")]
    with anyio.fail_after(budget.cell_timeout):  # untimed: each path once
        resources = {k: world.resources[k] for k in ("store", "locks", "notifier")}
        await BulkInventorySaga.run(operations=warm, runs=world.runs, **resources)
        for workers in (1, 2):
            handle = await BulkInventorySaga.start(
                queue=world.inventory_queues[workers], runs=world.runs, operations=warm
            )
            await handle.result()
    rows = []
    for round_ in range(budget.bulk_rounds):
        order = BULK_VARIANTS if round_ % 2 == 0 else tuple(reversed(BULK_VARIANTS))
        for variant in order:
            row = await bulk_round(world, variant, round_, skus, budget)
            rows.append(row)
            print(
                f"  BulkInventorySaga x{budget.bulk_elements}, {variant:40} round {round_}: "
                f"{row.elements_per_s:6.0f} elements/s  failed {row.failed_elements}",
                file=sys.stderr,
            )
    return rows


# -- 4. map elements on workers --------------------------------------------------------------


async def check_effects(client: Any, key: str, size: int, succeeded: bool) -> dict[str, int]:
    """Conservation of one MapTicks run, from its hash: each element's field must be 1
    (its effect happened exactly once). ``missing``: fields absent (allowed only if the run
    failed), ``duplicated``: fields above 1, ``extra``: fields of no element."""
    counts = {k.decode(): int(v) for k, v in (await client.hgetall(key)).items()}
    expected = {str(i) for i in range(size)}
    found = {
        "elements": size,
        "done_once": sum(1 for k, v in counts.items() if k in expected and v == 1),
        "missing": len(expected - counts.keys()),
        "duplicated": sum(1 for k, v in counts.items() if k in expected and v != 1),
        "extra": len(counts.keys() - expected),
    }
    if found["duplicated"] or found["extra"] or (succeeded and found["missing"]):
        raise RuntimeError(
            f"map elements not conserved in {key}: {found} (expected every one of the "
            f"{size} fields at 1); counts other than 1: "
            f"{ {k: v for k, v in counts.items() if v != 1} }"
        )
    return found


async def map_round(world: World, workers: int, round_: int, budget: Budget) -> MapRow:
    saga = world.map_sagas[workers]
    size = budget.map_elements
    durations: list[float] = []
    errors: dict[str, int] = {}
    keys: list[tuple[str, bool]] = []  # tally hash, whether its run succeeded
    clock = time.perf_counter

    await wait_for_quiet(world.client, world.running(), budget)
    meter = Meter(world.client, world.workers[f"map-{workers}"] if workers else [])
    await meter.start()
    with anyio.fail_after(budget.cell_timeout):
        for n in range(budget.map_runs):  # one run at a time: its map is what is measured
            key = f"{world.prefix}map:{workers}:{round_}:{n}"
            t0 = clock()
            try:
                result = await saga.run(items=list(range(size)), tally_key=key, tally=world.tally)
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                keys.append((key, False))
                continue
            durations.append((clock() - t0) * 1e3)
            keys.append((key, True))
            if result.output != [1] * size:
                raise RuntimeError(
                    f"MapTicks on {workers} worker(s): an element saw a count other than 1 "
                    f"(its effect happened twice?): {sorted(set(result.output))}"
                )
    spent = await meter.stop()
    effects: dict[str, int] = {}
    for key, succeeded in keys:  # untimed
        for k, v in (await check_effects(world.client, key, size, succeeded)).items():
            effects[k] = effects.get(k, 0) + v
    done = len(durations) * size
    wall = spent["wall"] or float("nan")
    parts = [spent["caller"], spent["workers"], spent["redis"]]
    return MapRow(
        workers=workers,
        round=round_,
        runs=len(durations),
        elements=done,
        seconds=round(wall, 3),
        elements_per_s=done / wall,
        p50_run_ms=percentile(durations, 0.5),
        max_run_ms=max(durations) if durations else float("nan"),
        failed_runs=sum(errors.values()),
        caller_cpu_ms=per(spent["caller"], done),
        workers_cpu_ms=per(spent["workers"], done) if workers else None,
        redis_cpu_ms=per(spent["redis"], done),
        redis_commands=per(spent["commands"], done, scale=1.0),
        cpu_busy=None if any(p is None for p in parts) else sum(p for p in parts if p) / wall,
        others_busy=spent["others"],
        effects=effects,
        effects_ok=effects.get("done_once") == done and not errors,
        errors=errors,
    )


async def map_elements(world: World, budget: Budget) -> list[MapRow]:
    with anyio.fail_after(budget.cell_timeout):  # untimed: each path once, checked
        for workers in (0, 1, 2):
            key = f"{world.prefix}map:warm:{workers}"
            items = list(range(2 * MAP_BATCH))
            await world.map_sagas[workers].run(items=items, tally_key=key, tally=world.tally)
            await check_effects(world.client, key, len(items), True)
    rows = []
    for round_ in range(budget.map_rounds):
        for workers in (0, 1, 2) if round_ % 2 == 0 else (2, 1, 0):
            row = await map_round(world, workers, round_, budget)
            rows.append(row)
            print(
                f"  MapTicks x{budget.map_elements}, {workers or 'in-process, no'} worker(s), "
                f"round {round_}: {row.elements_per_s:7.0f} elements/s  "
                f"failed runs {row.failed_runs}",
                file=sys.stderr,
            )
    return rows


# -- the whole run ---------------------------------------------------------------------------


async def cleanup(client: Any, token: str) -> int:
    """Delete every key whose name holds ``token``; the number of keys left after."""
    for _ in range(3):
        keys = [key async for key in client.scan_iter(match=f"*{token}*", count=1000)]
        if not keys:
            return 0
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    return len([key async for key in client.scan_iter(match=f"*{token}*", count=1000)])


async def measure(
    budget: Budget, url: str, concurrency: int, log_dir: Path
) -> tuple[dict[str, Any], list[WorkerProcess]]:
    import redis.asyncio as aioredis
    from saq import Queue

    from asaga.runs import RedisRunStore
    from asaga.workers import SaqQueue

    token = secrets.token_hex(6)
    prefix = f"bench-dist:{token}:"
    names = {
        "echo": f"bench-dist-{token}-echo",
        "saq": f"bench-dist-{token}-saq",
        "inventory-1": f"bench-dist-{token}-inv1",
        "inventory-2": f"bench-dist-{token}-inv2",
        "map-1": map_queue(prefix, 1),
        "map-2": map_queue(prefix, 2),
    }
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2.0)
    started: list[WorkerProcess] = []
    report: dict[str, Any] = {"token": token, "queues": names}
    try:
        with anyio.fail_after(5):
            server = await client.info("server")
        report["redis_version"] = server.get("redis_version")
        sequential = 8  # SaqQueue's default concurrency; one request is in flight anyway
        workers = {
            "echo": [
                asaga_worker(
                    "asaga-echo", "served_echo", url, prefix, names["echo"], sequential, log_dir
                )
            ],
            "saq": [raw_saq_worker("saq-echo", url, names["saq"], sequential, log_dir)],
            "inventory-1": [
                asaga_worker(
                    "asaga-inv1",
                    "served_inventory",
                    url,
                    prefix,
                    names["inventory-1"],
                    concurrency,
                    log_dir,
                )
            ],
            "inventory-2": [
                asaga_worker(
                    f"asaga-inv2-{n}",
                    "served_inventory",
                    url,
                    prefix,
                    names["inventory-2"],
                    concurrency,
                    log_dir,
                )
                for n in range(2)
            ],
        }
        started.extend(w for group in workers.values() for w in group)
        for worker in started:
            await worker.wait_ready(60)
        report["worker_pids"] = {k: [w.pid for w in v] for k, v in workers.items()}
        async with AsyncExitStack() as stack:
            runs = await stack.enter_async_context(
                RedisRunStore.from_url(url, prefix=f"{prefix}runs:")
            )
            resources = await stack.enter_async_context(inventory_resources(url, prefix))
            world = World(url, prefix, token, client, runs, resources, workers=workers)
            world.echo_queue = await stack.enter_async_context(
                SaqQueue.from_url(url, name=names["echo"])
            )
            raw = Queue.from_url(url, name=names["saq"])
            await raw.connect()
            stack.push_async_callback(raw.disconnect)
            world.raw_queue = raw
            for n in (1, 2):
                world.inventory_queues[n] = await stack.enter_async_context(
                    SaqQueue.from_url(url, name=names[f"inventory-{n}"])
                )
            print("1. round trip, one request in flight", file=sys.stderr)
            report["latency"] = await latency(world, budget)
            stop_all(workers["echo"] + workers["saq"])  # idle from here: out of the way
            print("2. InventorySaga throughput, 1 vs 2 workers", file=sys.stderr)
            report["throughput"] = await throughput(world, budget)
            print("3. BulkInventorySaga: on a worker vs in-process", file=sys.stderr)
            report["bulk"] = await bulk(world, budget)
            # idle from here; section 4's workers start now, alone with the caller and Redis
            stop_all(workers["inventory-1"] + workers["inventory-2"])
            workers["map-1"] = [
                asaga_worker(
                    "asaga-map1", "served_map_1", url, prefix, names["map-1"], concurrency, log_dir
                )
            ]
            workers["map-2"] = [
                asaga_worker(
                    f"asaga-map2-{n}",
                    "served_map_2",
                    url,
                    prefix,
                    names["map-2"],
                    concurrency,
                    log_dir,
                )
                for n in range(2)
            ]
            started.extend(workers["map-1"] + workers["map-2"])
            for worker in workers["map-1"] + workers["map-2"]:
                await worker.wait_ready(60)
            report["worker_pids"] = {k: [w.pid for w in v] for k, v in workers.items()}
            world.tally = await stack.enter_async_context(tally_client(url))
            world.map_sagas[0] = map_saga(None)
            for n in (1, 2):
                await stack.enter_async_context(SaqQueue.from_url(url, name=names[f"map-{n}"]))
                world.map_sagas[n] = map_saga(names[f"map-{n}"])
            print("4. map elements on workers vs in-process", file=sys.stderr)
            report["map"] = await map_elements(world, budget)
    finally:
        report["worker_exit_codes"] = stop_all(started)
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            report["keys_left"] = await cleanup(client, token)
        await client.aclose()
    return report, started


# -- reporting -------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:,.{digits}f}"


def median_of(rows: list[Any], attr: str, **match: Any) -> float:
    values = [
        getattr(r, attr)
        for r in rows
        if all(getattr(r, k) == v for k, v in match.items()) and getattr(r, attr) is not None
    ]
    return statistics.median(values) if values else float("nan")


def summarize(report: dict[str, Any], budget: Budget, cores: int) -> tuple[str, dict[str, Any]]:
    lat: list[LatencyRow] = report["latency"]
    thr: list[ThroughputRow] = report["throughput"]
    blk: list[BulkRow] = report["bulk"]
    mapped: list[MapRow] = report.get("map", [])
    lines = [
        "### 1. Round trip of a 1-step saga vs. a raw SAQ job (one worker process each, "
        "one request in flight)",
        "",
        "| path | requests | p50 ms | p99 ms | mean ms | max ms | over 1 s | enqueue p50 ms "
        "| wait p50 ms | queued / on worker / back, mean ms | caller CPU ms/req "
        "| worker CPU ms/req | Redis CPU ms/req | Redis commands/req | other processes (cores) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in lat:
        lines.append(
            f"| {r.path} | {r.requests} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.mean_ms:.2f} "
            f"| {r.max_ms:.1f} | {r.over_1s} | {r.enqueue_p50_ms:.2f} | {r.wait_p50_ms:.2f} "
            f"| {fmt(r.queued_ms_mean)} / {fmt(r.on_worker_ms_mean)} / {fmt(r.back_ms_mean)} "
            f"| {fmt(r.caller_cpu_ms)} | {fmt(r.worker_cpu_ms)} | {fmt(r.redis_cpu_ms)} "
            f"| {fmt(r.redis_commands, 1)} | {fmt(r.others_busy)} |"
        )
    saq, asg = lat[0], lat[1]
    ratios: dict[str, Any] = {
        "latency_p50": asg.p50_ms / saq.p50_ms,
        "latency_p99": asg.p99_ms / saq.p99_ms,
        "latency_target": 1.5,
    }
    lines += [
        "",
        f"asaga / SAQ round trip: **p50 {ratios['latency_p50']:.2f}x** "
        f"({asg.p50_ms:.2f} / {saq.p50_ms:.2f} ms), p99 {ratios['latency_p99']:.2f}x "
        f"({asg.p99_ms:.2f} / {saq.p99_ms:.2f} ms); target <= 1.5x (p50): "
        f"{'met' if ratios['latency_p50'] <= 1.5 else 'MISSED'}.",
        "",
        f"### 2. InventorySaga: in-process, and on 1 and 2 worker processes "
        f"({budget.throughput_runs} runs per round, {budget.throughput_in_flight} in flight, "
        "1 ms per store / notifier call)",
        "",
        "| workers | round | runs | runs/s | p50 ms | p99 ms | max ms | failed "
        "| queued / on worker / back, p50 ms "
        "| caller CPU ms/run | workers CPU ms/run | Redis CPU ms/run | busy (cores) "
        "| other processes (cores) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for t in thr:
        where = str(t.workers) if t.workers else "none (Saga.run in the caller)"
        phases = (
            f"{fmt(t.queued_ms, 0)} / {fmt(t.on_worker_ms, 0)} / {fmt(t.back_ms, 0)}"
            if t.workers
            else "-"
        )
        lines.append(
            f"| {where} | {t.round} | {t.runs} | {t.runs_per_s:,.0f} | {t.p50_ms:.1f} "
            f"| {t.p99_ms:.1f} | {t.max_ms:.1f} | {t.failed} | {phases} "
            f"| {fmt(t.caller_cpu_ms)} | {fmt(t.workers_cpu_ms)} | {fmt(t.redis_cpu_ms)} "
            f"| {fmt(t.cpu_busy)} | {fmt(t.others_busy)} |"
        )
    rate = {n: median_of(thr, "runs_per_s", workers=n) for n in (0, 1, 2)}
    ratios["runs_per_s"] = rate
    ratios["throughput_2_over_1"] = rate[2] / rate[1]
    ratios["throughput_target"] = 1.6
    cpu_run = {
        n: {
            part: median_of(thr, f"{part}_cpu_ms", workers=n)
            for part in ("caller", "workers", "redis")
        }
        for n in (0, 1, 2)
    }
    ratios["cpu_ms_per_run"] = cpu_run
    lines += [
        "",
        f"2 workers / 1 worker: **{ratios['throughput_2_over_1']:.2f}x** "
        f"({rate[2]:,.0f} / {rate[1]:,.0f} runs/s, medians of rounds); target >= 1.6x: "
        f"{'met' if ratios['throughput_2_over_1'] >= 1.6 else 'MISSED'}. In-process "
        f"(the caller runs the sagas itself, same store): {rate[0]:,.0f} runs/s.",
        "",
    ]
    for n in (0, 1, 2):
        c = {k: (v if v == v else 0.0) for k, v in cpu_run[n].items()}  # NaN: none
        total = sum(c.values())
        label = f"{n} worker(s)" if n else "in-process"
        lines.append(
            f"- CPU per run, {label}: caller {c['caller']:.2f} ms + workers "
            f"{c['workers']:.2f} ms + Redis {c['redis']:.2f} ms = {total:.2f} ms: "
            f"{cores} cores / {total:.2f} ms = at most {cores / total * 1e3:,.0f} runs/s here."
        )
    one, two = cpu_run[1], cpu_run[2]
    if all(v == v for v in (*one.values(), *two.values())):
        # 1 worker: that process has one core at most; 2 workers: every process of the
        # run shares the machine's cores.
        bound_1 = min(1e3 / one["workers"], cores * 1e3 / sum(one.values()))
        bound_2 = min(2e3 / two["workers"], cores * 1e3 / sum(two.values()))
        ratios["throughput_bound"] = {
            "1_worker": bound_1,
            "2_workers": bound_2,
            "2_workers_over_measured_1": bound_2 / rate[1],
        }
        lines.append(
            f"- CPU bounds: 1 worker <= {bound_1:,.0f} runs/s (its process on one core); "
            f"2 workers <= {bound_2:,.0f} runs/s (caller, workers and Redis on {cores} "
            f"cores at this CPU per run), so 2 workers / the measured 1 worker <= "
            f"**{bound_2 / rate[1]:.2f}x** on this machine; 1.6x would need <= "
            f"{cores * 1e3 / (1.6 * rate[1]):.2f} ms of CPU per run in all."
        )
    lines += [
        "",
        f"### 3. BulkInventorySaga ({budget.bulk_elements} operations per run, "
        "map_each max_concurrency=8): on a worker vs. in-process",
        "",
        "| variant | round | bulk runs | elements | elements/s | p50 / max ms per bulk run "
        "| failed elements | caller CPU ms/element | workers CPU ms/element "
        "| Redis CPU ms/element | other processes (cores) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for b in blk:
        lines.append(
            f"| {b.variant} | {b.round} | {b.bulk_runs} | {b.elements} | "
            f"{b.elements_per_s:,.0f} | {b.p50_run_ms:.1f} / {b.max_run_ms:.1f} "
            f"| {b.failed_elements} "
            f"| {fmt(b.caller_cpu_ms)} | {fmt(b.workers_cpu_ms)} | {fmt(b.redis_cpu_ms)} "
            f"| {fmt(b.others_busy)} |"
        )
    per_variant = {v: median_of(blk, "elements_per_s", variant=v) for v in BULK_VARIANTS}
    ratios["bulk_elements_per_s"] = per_variant
    local = per_variant[BULK_VARIANTS[0]]
    ratios["bulk_worker_over_in_process"] = per_variant[BULK_VARIANTS[2]] / local
    ratios["bulk_2_workers_over_1"] = per_variant[BULK_VARIANTS[3]] / per_variant[BULK_VARIANTS[2]]
    ratios["bulk_2_runs_on_2_workers_over_1"] = (
        per_variant[BULK_VARIANTS[4]] / per_variant[BULK_VARIANTS[2]]
    )
    lines += [
        "",
        "Elements/s, medians of rounds: "
        + "; ".join(f"{v}: {x:,.0f}" for v, x in per_variant.items())
        + ".",
        "",
        f"One bulk run on a worker / in-process with the same store: "
        f"**{ratios['bulk_worker_over_in_process']:.2f}x**. On 2 workers / on 1, one run in "
        f"flight: **{ratios['bulk_2_workers_over_1']:.2f}x**: the elements of a mapped saga run "
        "in the process that runs the saga (only an async def's elements go to workers: "
        f"section 4); two runs in flight on 2 workers: "
        f"{ratios['bulk_2_runs_on_2_workers_over_1']:.2f}x.",
    ]
    if mapped:
        text, ratios["map"] = summarize_map(mapped, budget, cores)
        lines += ["", text]
    slow = [
        (label, row.jobs)
        for label, rows in (("1.", lat), ("2.", thr), ("3.", blk))
        for row in rows
        if row.jobs.get("retried_jobs") or row.jobs.get("slowest", {}).get("total_ms", 0) > 1e3
    ]
    ratios["slow_jobs"] = len(slow)
    if slow:
        lines += ["", "Jobs slower than 1 s, or given out twice (SAQ's timestamps):", ""]
        lines += [
            f"- section {label} row {n}: {jobs['retried_jobs']} of {jobs['jobs_found']} jobs "
            f"given out twice; the slowest {jobs['slowest']}"
            for n, (label, jobs) in enumerate(slow)
        ]
    return "\n".join(lines), ratios


def summarize_map(rows: list[MapRow], budget: Budget, cores: int) -> tuple[str, dict[str, Any]]:
    """Section 4's table, ratios and CPU bounds."""
    lines = [
        f"### 4. Map elements on workers: MapTicks (map_each over {budget.map_elements} "
        f"elements, 1 ms of I/O + one HINCRBY each), batch_size / max_concurrency {MAP_BATCH}, "
        f"one run at a time, {budget.map_runs} runs per cell",
        "",
        "| workers | round | runs | elements | elements/s | p50 / max ms per run | failed runs "
        "| caller CPU ms/element | workers CPU ms/element | Redis CPU ms/element "
        "| Redis commands/element | busy (cores) | other processes (cores) | exactly once |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in rows:
        where = str(m.workers) if m.workers else "none (the map in the caller)"
        once = f"{m.effects.get('done_once', 0)} / {m.effects.get('elements', 0)}"
        lines.append(
            f"| {where} | {m.round} | {m.runs} | {m.elements} | {m.elements_per_s:,.0f} "
            f"| {m.p50_run_ms:.1f} / {m.max_run_ms:.1f} | {m.failed_runs} "
            f"| {fmt(m.caller_cpu_ms)} | {fmt(m.workers_cpu_ms)} | {fmt(m.redis_cpu_ms)} "
            f"| {fmt(m.redis_commands, 1)} | {fmt(m.cpu_busy)} | {fmt(m.others_busy)} "
            f"| {once}{'' if m.effects_ok else ' NO'} |"
        )
    rate = {n: median_of(rows, "elements_per_s", workers=n) for n in (0, 1, 2)}
    cpu = {
        n: {
            part: median_of(rows, f"{part}_cpu_ms", workers=n)
            for part in ("caller", "workers", "redis")
        }
        for n in (0, 1, 2)
    }
    ratios: dict[str, Any] = {
        "elements_per_s": rate,
        "1_worker_over_in_process": rate[1] / rate[0],
        "2_workers_over_in_process": rate[2] / rate[0],
        "2_workers_over_1": rate[2] / rate[1],
        "cpu_ms_per_element": cpu,
        "exactly_once": all(m.effects_ok for m in rows),
    }
    lines += [
        "",
        f"Elements/s, medians of rounds: in-process {rate[0]:,.0f}; 1 worker {rate[1]:,.0f}; "
        f"2 workers {rate[2]:,.0f}. Workers / in-process: 1 worker "
        f"**{ratios['1_worker_over_in_process']:.2f}x**, 2 workers "
        f"**{ratios['2_workers_over_in_process']:.2f}x**; 2 workers / 1 worker "
        f"**{ratios['2_workers_over_1']:.2f}x**. Every element's effect exactly once: "
        f"{'yes' if ratios['exactly_once'] else 'NO'} (checked in Redis after each cell).",
        "",
    ]
    bounds: dict[str, float] = {}
    for n in (0, 1, 2):
        c = {k: (v if v == v else 0.0) for k, v in cpu[n].items()}  # NaN: none
        total = sum(c.values())
        # the busiest single process has one core at most; all of them share the machine's
        busiest = c["caller"] if n == 0 else max(c["caller"], c["workers"] / n)
        bound = min(1e3 / busiest, cores * 1e3 / total) if busiest and total else float("nan")
        bounds[str(n)] = bound
        label = f"{n} worker(s)" if n else "in-process"
        lines.append(
            f"- CPU per element, {label}: caller {c['caller']:.3f} ms + workers "
            f"{c['workers']:.3f} ms + Redis {c['redis']:.3f} ms = {total:.3f} ms: at most "
            f"{bound:,.0f} elements/s on {cores} cores (measured {rate[n]:,.0f})."
        )
    ratios["cpu_bound_elements_per_s"] = bounds
    return "\n".join(lines), ratios


def no_nan(value: Any) -> Any:
    """``value`` with every NaN float (a median of nothing) as None: strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def machine_info(redis_version: str | None) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    versions: dict[str, str | None] = {}
    for package in ("asaga", "saq", "anyio", "structlog", "msgspec", "redis", "hiredis"):
        try:
            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - optional packages
            versions[package] = None
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "redis_server": redis_version,
        "versions": versions,
        # A run from an exported snapshot (`git archive`) has no git: BENCH_COMMIT names it.
        "commit": git("rev-parse", "HEAD") or os.environ.get("BENCH_COMMIT"),
        "asaga_imported_from": str(Path(asaga.__file__).resolve().parent),
        "asaga_or_examples_edited": (
            None
            if git("rev-parse", "HEAD") is None
            else bool(git("status", "--porcelain", "--", "asaga", "examples"))
        ),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 20 s)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="default: the JSON path with .md"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=50,
        help="runs at a time per inventory worker process (default: %(default)s; near 100 "
        "SAQ's job slots exhaust redis-py's default pool of 100 connections)",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="keep the workers' logs here (default: dropped)"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: print the tables of the run saved at --json, rewrite its Markdown",
    )
    parser.add_argument("--saq-worker", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        return render(args.json, args.markdown)
    if args.saq_worker:  # the raw SAQ worker process of section 1
        anyio.run(saq_worker, args.redis_url, args.saq_worker, args.worker_concurrency)
        return 0
    budget = QUICK if args.quick else FULL
    configure_logging()
    started = time.perf_counter()

    async def bounded() -> tuple[dict[str, Any], list[WorkerProcess]]:
        with anyio.fail_after(budget.timeout):
            return await measure(budget, args.redis_url, args.worker_concurrency, log_dir)

    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            report, workers = anyio.run(bounded, backend="asyncio")
        except BaseException:
            for log in sorted(log_dir.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        warnings = [
            f"{w.label} (pid {w.pid}): {line.strip()}"
            for w in workers
            for line in w.tail().splitlines()
            if "Traceback" in line or "[error" in line or "ERROR" in line
        ]
    took = time.perf_counter() - started
    text, ratios = summarize(report, budget, os.cpu_count() or 1)
    print(text)
    bad = [r for r in report["throughput"] if r.failed or not r.reserved_ok]
    bad += [r for r in report["bulk"] if r.failed_elements or not r.reserved_ok]
    bad += [r for r in report["map"] if r.failed_runs or not r.effects_ok]
    for r in bad:
        print(f"warning: failures or a reserved count off: {r}")
    for line in warnings:
        print(f"warning: worker log: {line}")
    if report["keys_left"]:
        print(f"warning: {report['keys_left']} Redis keys left under {report['token']}")
    machine = machine_info(report.get("redis_version"))
    out: dict[str, Any] = {
        "benchmark": "distributed",
        "quick": args.quick,
        "seconds": round(took, 1),
        "delay_s": DELAY,
        "worker_concurrency": args.worker_concurrency,
        "job_options": JOB_OPTIONS,
        "saq_timers": SAQ_TIMERS,
        "budget": asdict(budget),
        "machine": machine,
        "ratios": ratios,
        "latency": [asdict(r) for r in report["latency"]],
        "throughput": [asdict(r) for r in report["throughput"]],
        "bulk": [asdict(r) for r in report["bulk"]],
        "map": [asdict(r) for r in report["map"]],
        "map_batch_size": MAP_BATCH,
        "worker_pids": report.get("worker_pids"),
        "worker_exit_codes": report["worker_exit_codes"],
        "quiet": {"max_other_cores": QUIET, "waited_s": QUIET_WAITS},
        "worker_log_warnings": warnings,
        "keys_left": report["keys_left"],
    }
    markdown = args.markdown or args.json.with_suffix(".md")
    write_results(out, text, args.json, markdown)
    print(f"\ntook {took:.0f} s; JSON written to {args.json}, Markdown to {markdown}")
    return 1 if bad or report["keys_left"] else 0


def write_results(out: dict[str, Any], text: str, json_path: Path, markdown: Path) -> None:
    """The JSON, and the Markdown: a line on the machine, then the tables."""
    machine = out["machine"]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(no_nan(out), indent=2, allow_nan=False) + "\n")
    header = (
        f"# benchmarks/distributed.py{' --quick' if out['quick'] else ''}: "
        f"{machine['timestamp'][:10]}\n\n"
        f"{machine['cpu_count']} CPUs ({machine['platform']}), CPython "
        f"{machine['python'].split()[0]}, Redis {machine['redis_server']} on loopback, "
        f"saq {machine['versions']['saq']}, redis-py {machine['versions']['redis']}; asaga at "
        f"`{(machine['commit'] or '?')[:7]}`; inventory workers at concurrency "
        f"{out['worker_concurrency']}. Caller, workers and Redis share the machine.\n\n"
    )
    markdown.write_text(header + text + "\n")


def render(json_path: Path, markdown: Path | None) -> int:
    """``--render JSON``: the tables and ratios again from a saved run (nothing measured);
    rewrites its ``ratios`` and its Markdown."""
    out = json.loads(json_path.read_text())

    def floats(row: dict[str, Any]) -> dict[str, Any]:  # None was NaN (no_nan)
        return {k: float("nan") if v is None and k.endswith("_ms") else v for k, v in row.items()}

    report = {
        "latency": [LatencyRow(**floats(r)) for r in out["latency"]],
        "throughput": [ThroughputRow(**floats(r)) for r in out["throughput"]],
        "bulk": [BulkRow(**floats(r)) for r in out["bulk"]],
        "map": [MapRow(**floats(r)) for r in out.get("map", [])],
    }
    cores = out["machine"]["cpu_count"] or 1
    text, out["ratios"] = summarize(report, Budget(**out["budget"]), cores)
    print(text)
    write_results(out, text, json_path, markdown or json_path.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
