"""Overhead of asaga over hand-written anyio, per run of a saga of no-op steps.

What is measured
----------------
The wall time of one run of the same DAG of no-op ``async def`` steps, executed two ways
in the same event loop, interleaved batch by batch:

- **hand-written**: plain anyio, as one would write it without asaga: one task group,
  a counter of unfinished dependencies per step, a step started by the task that finished
  its last dependency (eager dataflow, same concurrency as asaga), results stored in a
  dict and returned wrapped read-only (``MappingProxyType``); a task per step;
- **hand-written, inline**: the same, written with asaga's own strategy: the task that
  finishes a step goes on with the first dependent it made ready, the first root runs in
  the calling task, and a chain (``deep``) is sequential awaits with no task group. This
  is the strongest baseline: with no-op steps and no task to start, what remains of
  asaga's cost is its per-step bookkeeping (events, contextvars, retries, results);
- **asaga**: a generated :class:`asaga.Saga` subclass whose steps are the *same*
  functions, decorated with ``@asaga.step``, started with ``await Saga.run()``.

A step ``sI`` is ``async def sI(<deps>): return I + <sum of deps>``: its parameter names
are its dependencies (asaga's API), and every result depends on the results it received,
so both implementations are checked against the expected results once per shape before
anything is timed. Shapes (step ``s0`` is always the single root, the last step the
single sink):

- ``wide-N``: ``s0`` -> ``s1`` .. ``s{N-2}`` in parallel -> ``s{N-1}``, which takes all the
  middle steps as parameters (wide-100: 1 + 98 + 1; wide-10: 1 + 8 + 1);
- ``deep-N``: a chain ``s0`` -> ``s1`` -> ... -> ``s{N-1}``;
- ``diamond-N``: ``s0``, then L layers of 8 parallel steps that each take the previous
  layer's join, and a join step that takes those 8; a join is the next layer's root
  (diamond-100: 1 + 11 x (8 + 1); diamond-10: 1 + 1 x (8 + 1)).

A third implementation runs on asyncio only, with logging filtered:

- **Hamilton**: Apache Hamilton's async driver (``hamilton.async_driver``, package
  ``sf-hamilton`` / ``apache-hamilton``, in the ``bench`` extra) on the same parameter-name
  DAG: the same step bodies, exec'd with ``int`` annotations (Hamilton requires type hints)
  into a module built with ``types.ModuleType``, driven by ``await driver.execute(<every
  step>)`` with the dict result builder, no lifecycle adapters. Hamilton is asyncio-only,
  has no compensation, and does not cancel sibling steps when one fails (its driver awaits
  each node's inputs with ``asyncio.gather``, which leaves the others running). Skipped,
  with a note, if Hamilton is not installed.

Each shape runs on the asyncio and trio backends (``anyio.run(..., backend=...)``), in two
logging modes, each in its own interpreter (see below):

- ``filtered``: structlog configured with a level-filtering bound logger at WARNING and
  ``cache_logger_on_first_use=True``, so asaga's debug/info events are dropped by level
  (a successful run logs nothing) -- but every event record is still created and
  delivered to a trivial sync hook (a counter, set as the saga class's ``hooks``);
- ``on``: structlog renders every event at DEBUG (contextvars, log level, ISO timestamp,
  JSON) into ``os.devnull``; same hook. The hand-written version logs nothing, so this
  ratio is the price of asaga's logging as well as its scheduling.

Why a subprocess per logging mode: asaga's module-level logger is a structlog lazy proxy;
with ``cache_logger_on_first_use=True`` it keeps the first configuration it was used with,
so ``structlog.reset_defaults()`` followed by ``configure()`` in the same process would
not reach it. Each worker configures structlog once, at start-up, like an application,
and checks with ``structlog.testing.capture_logs`` that asaga's events reach (``on``) or
do not reach (``filtered``) the processor chain.

Timing: per (backend, shape, logging mode) every implementation is warmed up, then timed
in alternating batches; a batch is at most ``batch_runs`` runs or ``batch_seconds``
seconds, and a cell at most ``batches`` batches or ``cell_seconds`` seconds. The figure
reported is the median over batches of the mean time per run.

How to read it
--------------
``ratio`` = asaga µs/run / hand-written (task per step) µs/run: 1.0 means asaga adds
nothing, 1.5 means a run through asaga takes 50 % longer than the bare task group.
``ratio to inline`` = asaga µs/run / hand-written inline µs/run: the same against the
strongest baseline, which starts no task for a chain. There, a no-op step costs the
baseline about an await and a dict write, while asaga still builds two event records per
step (a hook receives them), binds the step into structlog's contextvars and keeps its
retry and result bookkeeping: a deep chain of no-op steps is the one shape where that
shows (several times the baseline), and real steps that do I/O hide it. ``asaga /
Hamilton`` = asaga µs/run / Hamilton µs/run, same cell: below 1.0 means asaga is faster
(the target). Steps do no work, so this is the worst case: the whole run is overhead. The
target is ratio <= 1.5 with logging filtered; a line per shape says whether it is met.
Absolute µs depend on the machine; compare ratios, and compare runs on the same machine
only.

Durable rows
------------
What recording a run write-ahead costs, against a peer that does the same in PostgreSQL.
The saga is a chain of five steps modelled on examples/inventory (``InventoryReservation``):
product lookup -> reserve (keyed by the run's id, so a retried reservation reserves once)
-> transaction log -> replenishment check -> notify, against an in-memory inventory
service. Every step makes one call to that service, which is one simulated I/O of
``STEP_DELAY`` = 1 ms (``anyio.sleep``). Runs are sequential, one at a time, so what is
measured is latency. What durability adds does not depend on the delay (nothing overlaps
in a chain); 1 ms keeps the floor small and the runs many. Five variants run the *same*
step functions, in one process (asyncio, logging filtered), warmed up, then timed run by
run in batches that alternate their order:

- **floor**: the five step functions awaited by hand, in order;
- **asaga**: ``await InventoryReservation.run(...)``, not durable;
- **asaga + MemoryRunStore**: ``run(..., runs=MemoryRunStore())``;
- **asaga + RedisRunStore**: ``run(..., runs=store)``, the store open on Redis
  (``--redis-url``, default 127.0.0.1:6379) under a random key prefix whose keys are
  deleted afterwards. Its ``round_trips`` (pipelines sent by its writer, each one Redis
  round trip) is read before and after every run: a chain of N steps costs N + 1 writes
  (the open; one per step, the last step's carried by the final write);
- **DBOS** (``dbos``, in the ``bench`` extra): each step function wrapped in an async
  ``@DBOS.step()``, awaited in order by one async ``@DBOS.workflow()`` called directly on
  the same event loop. DBOS is launched once, in the loop (it adopts it as its main loop),
  on a database ``asaga_bench_dbos`` created on the PostgreSQL server (``--postgres-url``,
  default 127.0.0.1:5432, user postgres) and dropped afterwards. DBOS's SQL statements per
  run are counted on untimed runs. Skipped, with a note, if DBOS is not installed or
  PostgreSQL cannot be reached.

Before anything is timed, each variant's run is checked: it reserved once, logged and
notified, and a durable run's record (or DBOS's workflow status) says it succeeded with
five steps. Reported per variant: p50 and mean ms per run over every timed run, and the
p50 added over the floor's p50, per run and per step (/ 5). Targets: a Redis-durable run
takes <= 1 Redis round trip per step, and adds <= 1/3 of the latency DBOS adds.

Usage::

    python benchmarks/overhead.py            # full run, a few minutes
    python benchmarks/overhead.py --quick    # smoke test, < 20 s

It prints Markdown tables and writes ``benchmarks/results/overhead.json`` (rows, per-batch
samples, budget, machine information, and which asaga was measured: git commit and a digest
of the imported sources, checked in every worker; a warning says if they changed mid-run),
with the durable rows under ``"durable"`` (null without the redis extra).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TextIO, cast, get_args

import anyio
import msgspec
import structlog
from structlog.testing import capture_logs

import asaga
from asaga.runs import MemoryRunStore

try:
    from hamilton import async_driver as hamilton_async
except ImportError:  # the `bench` extra is not installed: the Hamilton column is skipped
    hamilton_async = None

try:
    # Imported by every process, so that each one's digest of asaga's sources covers the
    # same modules.
    from asaga.runs import RedisRunStore
except ImportError:  # the `redis` extra is not installed: the durable rows are skipped
    RedisRunStore = None

Backend = Literal["asyncio", "trio"]
LoggingMode = Literal["filtered", "on"]
StepFn = Callable[..., Coroutine[Any, Any, int]]
Runner = Callable[["Workload"], Awaitable[Mapping[str, Any]]]

BACKENDS: tuple[Backend, ...] = get_args(Backend)
LOGGING_MODES: tuple[LoggingMode, ...] = get_args(LoggingMode)
TARGET = 1.5
"""asaga / hand-written µs per run, with logging filtered, that asaga should stay under."""
HAMILTON_TARGET = 1.0
"""asaga / Hamilton µs per run (asyncio, logging filtered) that asaga should stay under."""
HAMILTON_NOTE = (
    "Hamilton has no compensation and does not cancel sibling steps when one fails "
    "(its async driver gathers node inputs with asyncio.gather); asaga does both. "
    "Hamilton runs on asyncio only."
)
RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"


# -- budget -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """How long to time each cell; every loop is bounded in count and in time."""

    warmup_runs: int
    warmup_seconds: float
    batches: int
    batch_runs: int
    batch_seconds: float
    cell_seconds: float
    worker_timeout: float  # seconds a worker process (one logging mode) may take in all


FULL = Budget(
    warmup_runs=200,
    warmup_seconds=0.5,
    batches=15,
    batch_runs=5_000,
    batch_seconds=0.25,
    cell_seconds=9.0,
    worker_timeout=300.0,
)
QUICK = Budget(
    warmup_runs=5,
    warmup_seconds=0.05,
    batches=3,
    batch_runs=50,
    batch_seconds=0.02,
    cell_seconds=0.5,
    worker_timeout=60.0,
)


# -- shapes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """A DAG of steps: each step's name -> the names of its dependencies, in topological
    order (a step is listed after its dependencies)."""

    kind: str
    deps: Mapping[str, tuple[str, ...]]

    @property
    def steps(self) -> int:
        return len(self.deps)

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.steps}"


def _name(index: int) -> str:
    return f"s{index}"


def wide(steps: int) -> Shape:
    """``s0`` -> ``steps - 2`` parallel steps -> one sink taking them all."""
    root, sink = _name(0), _name(steps - 1)
    middle = tuple(_name(i) for i in range(1, steps - 1))
    return Shape("wide", {root: (), **dict.fromkeys(middle, (root,)), sink: middle})


def deep(steps: int) -> Shape:
    """A chain: each step depends on the one before."""
    return Shape("deep", {_name(i): (_name(i - 1),) if i else () for i in range(steps)})


def diamond(layers: int, width: int) -> Shape:
    """``s0``, then ``layers`` x (``width`` parallel steps -> one join); ``1 + layers *
    (width + 1)`` steps. Each join is the root of the next layer."""
    join = _name(0)
    deps: dict[str, tuple[str, ...]] = {join: ()}
    for layer in range(layers):
        first = 1 + layer * (width + 1)
        fan = tuple(_name(first + k) for k in range(width))
        deps.update(dict.fromkeys(fan, (join,)))
        join = _name(first + width)
        deps[join] = fan
    return Shape("diamond", deps)


SHAPES: tuple[Shape, ...] = (
    wide(10),
    deep(10),
    diamond(1, 8),
    wide(100),
    deep(100),
    diamond(11, 8),
)


def expected_results(shape: Shape) -> dict[str, int]:
    """What every step returns: its index plus the sum of its dependencies' results."""
    results: dict[str, int] = {}
    for index, (name, deps) in enumerate(shape.deps.items()):
        results[name] = index + sum(results[d] for d in deps)
    return results


# -- the two implementations ------------------------------------------------------------------


class EventCounter:
    """The trivial sync hook: counts the asaga events delivered to it."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: asaga.Event) -> None:
        self.count += 1


@dataclass(frozen=True, slots=True)
class Workload:
    """One shape, ready to run both ways."""

    shape: Shape
    fns: Mapping[str, StepFn]  # the plain step functions, shared by both implementations
    dependents: Mapping[str, tuple[str, ...]]
    roots: tuple[str, ...]
    saga: type[asaga.Saga]
    hamilton: Any  # a hamilton.async_driver.AsyncDriver, or None without Hamilton


def step_function(name: str, index: int, deps: Sequence[str]) -> StepFn:
    """``async def <name>(<deps>): return <index> + <deps>``, with real parameter names."""
    body = " + ".join([str(index), *deps])
    source = f"async def {name}({', '.join(deps)}):\n    return {body}\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # the plain way to get a function with chosen parameter names
    return cast(StepFn, namespace[name])


def hamilton_driver(shape: Shape) -> Any:
    """Hamilton's async driver for ``shape``: the same step bodies, with the ``int`` type
    hints Hamilton requires, exec'd into a module registered in ``sys.modules`` (Hamilton
    collects a module's functions through ``inspect.getmodule``)."""
    if hamilton_async is None:
        return None
    module_name = f"_asaga_bench_hamilton_{shape.kind}_{shape.steps}"
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    sources = []
    for index, (name, deps) in enumerate(shape.deps.items()):
        params = ", ".join(f"{dep}: int" for dep in deps)
        body = " + ".join([str(index), *deps])
        sources.append(f"async def {name}({params}) -> int:\n    return {body}\n")
    exec("\n".join(sources), module.__dict__)
    return hamilton_async.Builder().with_modules(module).build_without_init()


def saga_class(shape: Shape, fns: Mapping[str, StepFn], hook: EventCounter) -> type[asaga.Saga]:
    """A ``Saga`` subclass with one ``@step`` per function, built through its metaclass."""

    def body(namespace: dict[str, Any]) -> None:
        namespace["__module__"] = __name__
        namespace["hooks"] = (hook,)
        for name, fn in fns.items():
            namespace[name] = asaga.step(fn)

    name = f"{shape.kind.title()}{shape.steps}"
    return cast(type[asaga.Saga], types.new_class(name, (asaga.Saga,), exec_body=body))


def workload(shape: Shape, hook: EventCounter) -> Workload:
    """Generate the step functions of ``shape`` and the saga class made of them."""
    fns = {
        name: step_function(name, index, deps)
        for index, (name, deps) in enumerate(shape.deps.items())
    }
    dependents: dict[str, list[str]] = {name: [] for name in shape.deps}
    for name, deps in shape.deps.items():
        for dep in deps:
            dependents[dep].append(name)
    return Workload(
        shape=shape,
        fns=fns,
        dependents={name: tuple(children) for name, children in dependents.items()},
        roots=tuple(name for name, deps in shape.deps.items() if not deps),
        saga=saga_class(shape, fns, hook),
        hamilton=hamilton_driver(shape),
    )


async def run_by_hand(work: Workload) -> Mapping[str, Any]:
    """The DAG as eager dataflow in one anyio task group, written without asaga: a task
    per step, started by the task that finished the step's last dependency."""
    fns, params, dependents = work.fns, work.shape.deps, work.dependents
    pending = {name: len(deps) for name, deps in params.items()}
    results: dict[str, Any] = {}

    async with anyio.create_task_group() as tg:

        async def run_step(name: str) -> None:
            results[name] = await fns[name](**{p: results[p] for p in params[name]})
            for child in dependents[name]:
                pending[child] -= 1
                if not pending[child]:
                    tg.start_soon(run_step, child)

        for root in work.roots:
            tg.start_soon(run_step, root)
    return types.MappingProxyType(results)


async def run_inline(work: Workload) -> Mapping[str, Any]:
    """The same eager dataflow, hand-written with asaga's own strategy: a task that
    finishes a step goes on with the first dependent it made ready (the others get tasks
    of their own), the first root runs in the calling task, and a chain (``deep``) is
    plain sequential awaits with no task group at all."""
    fns, params, dependents = work.fns, work.shape.deps, work.dependents
    pending = {name: len(deps) for name, deps in params.items()}
    results: dict[str, Any] = {}

    async def run_from(name: str | None, tg: anyio.abc.TaskGroup | None) -> None:
        while name is not None:
            results[name] = await fns[name](**{p: results[p] for p in params[name]})
            following = None
            for child in dependents[name]:
                pending[child] -= 1
                if not pending[child]:
                    if following is None:
                        following = child
                    else:
                        assert tg is not None  # a chain never makes two steps ready
                        tg.start_soon(run_from, child, tg)
            name = following

    if work.shape.kind == "deep":
        await run_from(work.roots[0], None)
    else:
        async with anyio.create_task_group() as tg:
            for root in work.roots[1:]:
                tg.start_soon(run_from, root, tg)
            await run_from(work.roots[0], tg)
    return types.MappingProxyType(results)


async def run_with_asaga(work: Workload) -> Mapping[str, Any]:
    """The DAG run by asaga: the same functions, as the steps of a saga class."""
    return (await work.saga.run()).results


async def run_with_hamilton(work: Workload) -> Mapping[str, Any]:
    """The DAG run by Hamilton's async driver, asked for every step's result."""
    return cast(Mapping[str, Any], await work.hamilton.execute(list(work.shape.deps)))


async def check_results(work: Workload, hook: EventCounter, hamilton: bool = False) -> None:
    """Both implementations return the expected results; asaga delivers every event."""
    expected = expected_results(work.shape)
    by_hand = dict(await run_by_hand(work))
    inline = dict(await run_inline(work))
    seen = hook.count
    with_asaga = dict(await run_with_asaga(work))
    events = hook.count - seen
    if by_hand != expected or inline != expected or with_asaga != expected:
        raise RuntimeError(f"{work.shape.label}: the implementations disagree")
    if hamilton:
        await work.hamilton.ainit()
        if dict(await run_with_hamilton(work)) != expected:
            raise RuntimeError(f"{work.shape.label}: Hamilton disagrees")
    if events != 2 * work.shape.steps + 2:  # run + each step: started and succeeded
        raise RuntimeError(f"{work.shape.label}: the hook got {events} events")


# -- logging ----------------------------------------------------------------------------------


def configure_logging(mode: LoggingMode, sink: TextIO) -> None:
    """Set structlog up for ``mode``: once per process, before asaga logs anything."""
    structlog.reset_defaults()
    if mode == "filtered":
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            cache_logger_on_first_use=True,
        )
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(file=sink),
        cache_logger_on_first_use=True,
    )


async def check_logging(work: Workload, mode: LoggingMode) -> None:
    """asaga's events reach structlog's processors only when logging is ``on``."""
    with capture_logs() as logged:
        await run_with_asaga(work)
    expected = 2 * work.shape.steps + 2 if mode == "on" else 0
    if len(logged) != expected:
        raise RuntimeError(f"logging {mode!r}: {len(logged)} events logged, not {expected}")


# -- timing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """The result of one cell: one shape, backend and logging mode."""

    backend: str
    shape: str
    steps: int
    logging: str
    baseline_us: float
    asaga_us: float
    ratio: float
    baseline_batches_us: tuple[float, ...]
    asaga_batches_us: tuple[float, ...]
    inline_us: float | None = None  # the hand-written inline baseline
    asaga_vs_inline: float | None = None  # asaga_us / inline_us
    inline_batches_us: tuple[float, ...] = ()
    hamilton_us: float | None = None  # asyncio, logging filtered, Hamilton installed
    asaga_vs_hamilton: float | None = None  # asaga_us / hamilton_us
    hamilton_batches_us: tuple[float, ...] = ()


async def timed_batch(run: Runner, work: Workload, runs: int, seconds: float) -> float:
    """Mean µs per run over at most ``runs`` runs or ``seconds`` seconds (at least one)."""
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    done = 0
    while done < runs:
        await run(work)
        done += 1
        if clock() >= deadline:
            break
    return (clock() - start) / done * 1e6


async def measure(
    work: Workload, budget: Budget, runners: Sequence[Runner]
) -> dict[Runner, list[float]]:
    """Per-batch µs/run of each runner, batches alternating the order they go in."""
    for run in runners:
        await timed_batch(run, work, budget.warmup_runs, budget.warmup_seconds)
    samples: dict[Runner, list[float]] = {run: [] for run in runners}
    deadline = time.perf_counter() + budget.cell_seconds
    for batch in range(budget.batches):
        order = list(samples) if batch % 2 == 0 else list(reversed(samples))
        for run in order:
            samples[run].append(
                await timed_batch(run, work, budget.batch_runs, budget.batch_seconds)
            )
        if time.perf_counter() >= deadline:
            break
    return samples


async def measure_backend(
    backend: Backend,
    works: Sequence[Workload],
    hook: EventCounter,
    mode: LoggingMode,
    budget: Budget,
) -> list[Row]:
    """Every shape on the running event loop (``backend``) in one logging mode."""
    await check_logging(works[0], mode)
    rows = []
    with_hamilton = backend == "asyncio" and mode == "filtered" and hamilton_async is not None
    for work in works:
        await check_results(work, hook, with_hamilton)
        gc.collect()
        runners: list[Runner] = [run_by_hand, run_inline, run_with_asaga]
        if with_hamilton:
            runners.append(run_with_hamilton)
        samples = await measure(work, budget, runners)
        by_hand, with_asaga = samples[run_by_hand], samples[run_with_asaga]
        inline = samples[run_inline]
        baseline_us, asaga_us = statistics.median(by_hand), statistics.median(with_asaga)
        inline_us = statistics.median(inline)
        hamilton = samples.get(run_with_hamilton, [])
        hamilton_us = statistics.median(hamilton) if hamilton else None
        rows.append(
            Row(
                backend=backend,
                shape=work.shape.kind,
                steps=work.shape.steps,
                logging=mode,
                baseline_us=baseline_us,
                asaga_us=asaga_us,
                ratio=asaga_us / baseline_us,
                baseline_batches_us=tuple(by_hand),
                asaga_batches_us=tuple(with_asaga),
                inline_us=inline_us,
                asaga_vs_inline=asaga_us / inline_us,
                inline_batches_us=tuple(inline),
                hamilton_us=hamilton_us,
                asaga_vs_hamilton=asaga_us / hamilton_us if hamilton_us else None,
                hamilton_batches_us=tuple(hamilton),
            )
        )
        extra = f"  Hamilton {hamilton_us:9.1f} µs" if hamilton_us else ""
        print(
            f"  {backend:7} {work.shape.label:12} {mode:8} "
            f"{baseline_us:9.1f} µs {inline_us:9.1f} µs {asaga_us:9.1f} µs  "
            f"x{asaga_us / baseline_us:.2f} x{asaga_us / inline_us:.2f}{extra}",
            file=sys.stderr,
        )
        hook.count = 0
    return rows


# -- durable runs -----------------------------------------------------------------------------

STEP_DELAY = 0.001
"""Seconds of simulated I/O in each step of the inventory saga: one ``anyio.sleep``."""
DURABLE_STEPS = 5
ROUND_TRIP_TARGET = 1.0
"""RedisRunStore round trips per step that a Redis-durable run should stay under."""
DBOS_TARGET = 1 / 3
"""asaga Redis-durable added latency / DBOS added latency that asaga should stay under."""
DBOS_DATABASE = "asaga_bench_dbos"
"""The PostgreSQL database made for DBOS's system tables: created, then dropped."""
REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
SKU = "sku-1"
DBOS_NOTE = (
    "DBOS checkpoints a workflow in PostgreSQL: its status and inputs as it starts; for each "
    "step, reads of the workflow's status, of an output already recorded and of the "
    "workflow's owner, then the step's output; its final status. Each is a SQL statement "
    "that a synchronous SQLAlchemy call sends from a worker thread (DBOS's async API runs "
    "them with asyncio.to_thread). asaga writes one Lua script per transition to Redis, "
    "pipelined by one writer task per store."
)


@dataclass(frozen=True, slots=True)
class DurableBudget:
    """How long to time the durable rows; every loop is bounded in count and in time."""

    warmup_runs: int  # per variant
    batches: int
    batch_runs: int  # per variant and batch
    batch_seconds: float  # per variant and batch
    seconds: float  # all batches together
    worker_timeout: float  # seconds the durable worker process may take in all


DURABLE_FULL = DurableBudget(
    warmup_runs=20,
    batches=40,
    batch_runs=25,
    batch_seconds=1.0,
    seconds=60.0,
    worker_timeout=240.0,
)
DURABLE_QUICK = DurableBudget(
    warmup_runs=2,
    batches=2,
    batch_runs=5,
    batch_seconds=0.2,
    seconds=1.0,
    worker_timeout=60.0,
)


class Product(msgspec.Struct, frozen=True, kw_only=True):
    """Stock of one product."""

    sku: str
    inventory: int
    reserved: int = 0
    reorder_point: int = 0
    max_stock: int = 0

    @property
    def available(self) -> int:
        return self.inventory - self.reserved


class Inventory:
    """The inventory service the saga's steps call, in this process's memory: products,
    reservations keyed by run id (a retried reservation reserves once), the transaction
    log, replenishment requests and notifications. Every call is one simulated I/O of
    :data:`STEP_DELAY` seconds."""

    def __init__(self) -> None:
        # Enough stock for every run of the benchmark: replenishment is checked, never due.
        self.products = {
            SKU: Product(sku=SKU, inventory=10**12, reorder_point=10, max_stock=10**12)
        }
        self.reservations: dict[str, int] = {}
        self.entries: dict[str, str] = {}  # log entry -> run id
        self.requests: dict[str, int] = {}
        self.sent: dict[str, str] = {}

    async def get(self, sku: str) -> Product:
        await anyio.sleep(STEP_DELAY)
        return self.products[sku]

    async def reserve(self, reservation_id: str, sku: str, quantity: int) -> Product:
        await anyio.sleep(STEP_DELAY)
        product = self.products[sku]
        if reservation_id in self.reservations:
            return product
        if product.available < quantity:
            raise ValueError(f"{sku}: {product.available} available, {quantity} wanted")
        product = msgspec.structs.replace(product, reserved=product.reserved + quantity)
        self.products[sku] = product
        self.reservations[reservation_id] = quantity
        return product

    async def log(self, run_id: str, sku: str, quantity: int) -> str:
        await anyio.sleep(STEP_DELAY)
        entry = f"log-{len(self.entries) + 1}"
        self.entries[entry] = run_id
        return entry

    async def replenish_if_low(self, product: Product, reference: str) -> str | None:
        await anyio.sleep(STEP_DELAY)
        if product.available >= product.reorder_point:
            return None
        request = f"replenish-{reference}"
        self.requests[request] = product.max_stock - product.inventory
        return request

    async def notify(self, key: str, message: str) -> str:
        await anyio.sleep(STEP_DELAY)
        self.sent.setdefault(key, message)
        return key


class InventoryReservation(asaga.Saga):
    """The durable rows' saga, a chain of five steps, modelled on examples/inventory.

    Every variant runs these same step functions (a ``Step`` calls its function)."""

    product_id: str
    quantity: int
    store: asaga.Resource[Inventory]

    @asaga.step
    async def product(product_id: str, store: Inventory) -> Product:
        """Look the product up."""
        return await store.get(product_id)

    @asaga.step
    async def reserve(product: Product, quantity: int, run_id: str, store: Inventory) -> Product:
        """Reserve the units, keyed by the run's id."""
        return await store.reserve(run_id, product.sku, quantity)

    @asaga.step
    async def log(reserve: Product, quantity: int, run_id: str, store: Inventory) -> str:
        """Append the reservation to the transaction log."""
        return await store.log(run_id, reserve.sku, quantity)

    @asaga.step
    async def replenishment(log: str, reserve: Product, store: Inventory) -> str | None:
        """Below the reorder point after the reservation: request replenishment."""
        return await store.replenish_if_low(reserve, reference=log)

    @asaga.step
    async def notify(replenishment: str | None, log: str, quantity: int, store: Inventory) -> str:
        """Tell the warehouse, keyed by the log entry; returns the key."""
        extra = f", replenishment {replenishment}" if replenishment else ""
        return await store.notify(log, f"reserved {quantity}{extra}")


_SAGA = InventoryReservation
DbosWorkflow = Callable[[str, int], Awaitable[tuple[str, str]]]


@dataclass(slots=True)
class DurableBench:
    """What the variants run against: one inventory, the run stores, DBOS's workflow."""

    store: Inventory
    memory: Any  # asaga.runs.MemoryRunStore
    redis: Any  # asaga.runs.RedisRunStore, open
    dbos: DbosWorkflow | None


DurableVariant = Callable[[DurableBench], Awaitable[tuple[str, str]]]
"""One run of the saga; returns (run id, the notification key)."""


async def floor_run(bench: DurableBench) -> tuple[str, str]:
    """The floor: the five step functions awaited by hand, in order."""
    store, run_id = bench.store, os.urandom(16).hex()  # asaga's run ids are made this way
    product = await _SAGA.product(product_id=SKU, store=store)
    reserve = await _SAGA.reserve(product=product, quantity=1, run_id=run_id, store=store)
    log = await _SAGA.log(reserve=reserve, quantity=1, run_id=run_id, store=store)
    request = await _SAGA.replenishment(log=log, reserve=reserve, store=store)
    return run_id, await _SAGA.notify(replenishment=request, log=log, quantity=1, store=store)


async def asaga_run(bench: DurableBench) -> tuple[str, str]:
    """asaga, not durable."""
    result = await _SAGA.run(product_id=SKU, quantity=1, store=bench.store)
    return result.run_id, result.output


async def asaga_memory_run(bench: DurableBench) -> tuple[str, str]:
    """asaga, durable in a MemoryRunStore."""
    result = await _SAGA.run(product_id=SKU, quantity=1, store=bench.store, runs=bench.memory)
    return result.run_id, result.output


async def asaga_redis_run(bench: DurableBench) -> tuple[str, str]:
    """asaga, durable in a RedisRunStore."""
    result = await _SAGA.run(product_id=SKU, quantity=1, store=bench.store, runs=bench.redis)
    return result.run_id, result.output


async def dbos_run(bench: DurableBench) -> tuple[str, str]:
    """The same five steps as DBOS steps of one DBOS workflow."""
    assert bench.dbos is not None
    return await bench.dbos(SKU, 1)


DURABLE_VARIANTS: dict[str, tuple[str, DurableVariant]] = {
    "floor": ("floor: the 5 step functions awaited by hand", floor_run),
    "asaga": ("asaga, not durable", asaga_run),
    "asaga-memory": ("asaga + MemoryRunStore", asaga_memory_run),
    "asaga-redis": ("asaga + RedisRunStore (Redis on loopback)", asaga_redis_run),
    "dbos": ("DBOS (PostgreSQL on loopback)", dbos_run),
}


def dbos_workflow(store: Inventory) -> DbosWorkflow:
    """DBOS's version: each of the saga's step functions wrapped as a ``@DBOS.step()``
    (the inventory is a closure: DBOS records a step's arguments and output, never the
    service), called in order by one ``@DBOS.workflow()``. Registered before launch."""
    from dbos import DBOS

    @DBOS.step(name="bench_product")
    async def product(product_id: str) -> Product:
        return await _SAGA.product(product_id=product_id, store=store)

    @DBOS.step(name="bench_reserve")
    async def reserve(product: Product, quantity: int, run_id: str) -> Product:
        return await _SAGA.reserve(product=product, quantity=quantity, run_id=run_id, store=store)

    @DBOS.step(name="bench_log")
    async def log(reserve: Product, quantity: int, run_id: str) -> str:
        return await _SAGA.log(reserve=reserve, quantity=quantity, run_id=run_id, store=store)

    @DBOS.step(name="bench_replenishment")
    async def replenishment(log: str, reserve: Product) -> str | None:
        return await _SAGA.replenishment(log=log, reserve=reserve, store=store)

    @DBOS.step(name="bench_notify")
    async def notify(replenishment: str | None, log: str, quantity: int) -> str:
        return await _SAGA.notify(
            replenishment=replenishment, log=log, quantity=quantity, store=store
        )

    @DBOS.workflow(name="bench_inventory_reservation")
    async def inventory_reservation(product_id: str, quantity: int) -> tuple[str, str]:
        run_id = DBOS.workflow_id
        assert run_id is not None
        found = await product(product_id)
        reserved = await reserve(found, quantity, run_id)
        entry = await log(reserved, quantity, run_id)
        request = await replenishment(entry, reserved)
        return run_id, await notify(request, entry, quantity)

    return inventory_reservation


def create_dbos_database(postgres_url: str) -> str:
    """Create DBOS's database anew (dropping one left by an interrupted run); return the
    server's version."""
    import psycopg
    from psycopg import sql

    name = sql.Identifier(DBOS_DATABASE)
    with psycopg.connect(f"{postgres_url}/postgres", autocommit=True, connect_timeout=5) as db:
        db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        db.execute(sql.SQL("CREATE DATABASE {}").format(name))
        row = db.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def drop_dbos_database(postgres_url: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{postgres_url}/postgres", autocommit=True, connect_timeout=5) as db:
        db.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DBOS_DATABASE))
        )


class StatementCounter:
    """Counts the SQL statements SQLAlchemy sends (DBOS's system database), while on."""

    def __init__(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.count = 0
        self._listen = lambda: event.listen(Engine, "before_cursor_execute", self._seen)
        self._remove = lambda: event.remove(Engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1

    def __enter__(self) -> StatementCounter:
        self._listen()
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()


@dataclass(frozen=True, slots=True)
class DurableRow:
    """One variant of the durable rows: latency per run, and what it added to the floor."""

    variant: str
    description: str
    runs: int
    p50_ms: float
    mean_ms: float
    added_ms: float  # p50_ms - the floor's p50_ms
    added_per_step_ms: float
    added_mean_ms: float  # mean_ms - the floor's mean_ms
    round_trips_per_run: float | None  # RedisRunStore pipelines (asaga variants)
    round_trips_per_step: float | None
    round_trips_min: int | None  # the fewest and most in one run
    round_trips_max: int | None
    batch_p50_ms: tuple[float, ...]


@dataclass(slots=True)
class DurableSamples:
    ms: list[float]  # per run
    round_trips: list[int]  # per run: the RedisRunStore's pipelines sent during it
    batch_p50_ms: list[float]


async def check_durable(bench: DurableBench, name: str, variant: DurableVariant) -> int:
    """One run of ``variant`` did what the saga does (reserved once, logged, notified) and,
    when durable, left a succeeded record of five succeeded steps; return the RedisRunStore
    round trips it took."""
    store = bench.store
    reserved = store.products[SKU].reserved
    before = bench.redis.round_trips
    run_id, key = await variant(bench)
    round_trips = bench.redis.round_trips - before
    problems = []
    if store.reservations.get(run_id) != 1 or store.products[SKU].reserved != reserved + 1:
        problems.append("did not reserve once")
    if store.entries.get(key) != run_id or key not in store.sent:
        problems.append("did not log and notify")
    runs = {"asaga-memory": bench.memory, "asaga-redis": bench.redis}.get(name)
    if runs is not None:
        record = await runs.load(run_id)
        done = [step for step, value in record.steps.items() if value.status == "succeeded"]
        if record.status != "succeeded" or len(done) != DURABLE_STEPS:
            problems.append(f"recorded {record.status} with {len(done)} steps succeeded")
    if name == "dbos":
        from dbos import DBOS

        status = await DBOS.get_workflow_status_async(run_id)
        steps = await DBOS.list_workflow_steps_async(run_id)
        if status is None or status.status != "SUCCESS" or len(steps) != DURABLE_STEPS:
            problems.append(f"DBOS says {status and status.status} with {len(steps)} steps")
    if name != "asaga-redis" and round_trips:
        problems.append(f"{round_trips} Redis round trips")
    if problems:
        raise RuntimeError(f"durable rows, {name}: " + "; ".join(problems))
    return round_trips


async def timed_durable_batch(
    bench: DurableBench, variant: DurableVariant, samples: DurableSamples, budget: DurableBudget
) -> None:
    """At most ``batch_runs`` runs or ``batch_seconds`` seconds (at least one), each timed
    on its own: the runs are sequential, so this is latency."""
    clock = time.perf_counter
    deadline = clock() + budget.batch_seconds
    batch: list[float] = []
    for _ in range(budget.batch_runs):
        round_trips = bench.redis.round_trips
        start = clock()
        await variant(bench)
        batch.append((clock() - start) * 1e3)
        samples.round_trips.append(bench.redis.round_trips - round_trips)
        if clock() >= deadline:
            break
    samples.ms.extend(batch)
    samples.batch_p50_ms.append(statistics.median(batch))


async def measure_durable_variants(
    bench: DurableBench, variants: Sequence[str], budget: DurableBudget
) -> dict[str, DurableSamples]:
    """Every variant warmed up, then timed in batches that alternate their order."""
    runners = {name: DURABLE_VARIANTS[name][1] for name in variants}
    for run in runners.values():
        for _ in range(budget.warmup_runs):
            await run(bench)
    gc.collect()
    samples = {name: DurableSamples([], [], []) for name in runners}
    deadline = time.perf_counter() + budget.seconds
    for batch in range(budget.batches):
        order = list(runners) if batch % 2 == 0 else list(reversed(runners))
        for name in order:
            await timed_durable_batch(bench, runners[name], samples[name], budget)
        if time.perf_counter() >= deadline:
            break
    return samples


def durable_rows(samples: Mapping[str, DurableSamples]) -> list[DurableRow]:
    floor = samples["floor"]
    floor_p50, floor_mean = statistics.median(floor.ms), statistics.mean(floor.ms)
    rows = []
    for name, measured in samples.items():
        p50, mean = statistics.median(measured.ms), statistics.mean(measured.ms)
        counted = name.startswith("asaga")
        round_trips = statistics.mean(measured.round_trips) if counted else None
        rows.append(
            DurableRow(
                variant=name,
                description=DURABLE_VARIANTS[name][0],
                runs=len(measured.ms),
                p50_ms=p50,
                mean_ms=mean,
                added_ms=p50 - floor_p50,
                added_per_step_ms=(p50 - floor_p50) / DURABLE_STEPS,
                added_mean_ms=mean - floor_mean,
                round_trips_per_run=round_trips,
                round_trips_per_step=(
                    round_trips / DURABLE_STEPS if round_trips is not None else None
                ),
                round_trips_min=min(measured.round_trips) if counted else None,
                round_trips_max=max(measured.round_trips) if counted else None,
                batch_p50_ms=tuple(measured.batch_p50_ms),
            )
        )
    return rows


async def measure_durable(
    budget: DurableBudget, redis_url: str, store: Inventory, dbos: DbosWorkflow | None
) -> dict[str, Any]:
    """The durable rows, on the running asyncio loop: launch DBOS (if set up), open the
    Redis run store under a random prefix, check and time every variant, delete the keys."""
    import redis.asyncio as aioredis

    assert RedisRunStore is not None
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2.0)
    prefix = f"asaga-bench:{os.urandom(6).hex()}:"
    report: dict[str, Any] = {"redis_prefix": prefix}
    statements: list[int] = []
    try:
        report["redis_server"] = (await client.info("server")).get("redis_version")
        if dbos is not None:
            from dbos import DBOS

            DBOS.launch()  # here, so that DBOS adopts this event loop as its main loop
        # Records expire after an hour even if the clean-up below does not run.
        async with RedisRunStore(
            client, prefix=prefix, retention=3600.0, idempotency_window=3600.0
        ) as redis_runs:
            bench = DurableBench(store, MemoryRunStore(), redis_runs, dbos)
            variants = [name for name in DURABLE_VARIANTS if name != "dbos" or dbos is not None]
            for _ in range(2):  # the first Redis write may load the store's scripts
                checked = {
                    name: await check_durable(bench, name, DURABLE_VARIANTS[name][1])
                    for name in variants
                }
            report["checked_round_trips"] = checked["asaga-redis"]
            if dbos is not None:
                for _ in range(3):  # the least of three: a background poll may fall in one
                    with StatementCounter() as counter:
                        await dbos_run(bench)
                    statements.append(counter.count)
            samples = await measure_durable_variants(bench, variants, budget)
            report["concurrent"] = await measure_concurrent(bench, budget)
    finally:
        with anyio.CancelScope(shield=True), anyio.fail_after(30):
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
            await client.aclose()
        if dbos is not None:
            from dbos import DBOS

            DBOS.destroy()
    rows = durable_rows(samples)
    report["rows"] = [asdict(row) for row in rows]
    report["dbos_sql_statements_per_run"] = min(statements) if statements else None
    return report


CONCURRENT = 100
"""Runs in flight at once in the concurrent measurement."""


async def measure_concurrent(bench: DurableBench, budget: DurableBudget) -> dict[str, Any]:
    """``CONCURRENT`` runs at once, not durable and Redis-durable, alternating: runs per
    second, and Redis round trips per step (the store's writer sends the writes that wait
    together in one pipeline, so concurrent runs share round trips)."""
    runs = CONCURRENT * max(2, budget.batch_runs // 5)
    report: dict[str, Any] = {"in_flight": CONCURRENT, "runs_per_batch": runs}
    rates: dict[str, list[float]] = {"asaga": [], "asaga-redis": []}
    trips: list[float] = []
    for _ in range(max(2, budget.batches // 10)):
        for name in rates:
            variant = DURABLE_VARIANTS[name][1]
            limiter = anyio.CapacityLimiter(CONCURRENT)
            before = bench.redis.round_trips

            async def one(
                variant: DurableVariant = variant, limiter: anyio.CapacityLimiter = limiter
            ) -> None:
                async with limiter:
                    await variant(bench)

            started = time.perf_counter()
            with anyio.fail_after(budget.worker_timeout):
                async with anyio.create_task_group() as tg:
                    for _ in range(runs):
                        tg.start_soon(one)
            rates[name].append(runs / (time.perf_counter() - started))
            if name == "asaga-redis":
                trips.append((bench.redis.round_trips - before) / (runs * DURABLE_STEPS))
    report["runs_per_s"] = {name: statistics.median(r) for name, r in rates.items()}
    report["round_trips_per_step"] = statistics.median(trips)
    return report


# -- processes --------------------------------------------------------------------------------


def worker(mode: LoggingMode, budget: Budget, output: Path) -> None:
    """Measure every shape on every backend in one logging mode; write rows to ``output``,
    with the digest of the asaga sources this process imported."""
    digest = _sources_digest()
    hook = EventCounter()
    works = [workload(shape, hook) for shape in SHAPES]
    rows: list[Row] = []
    with open(os.devnull, "w") as sink:
        configure_logging(mode, sink)
        for backend in BACKENDS:
            rows.extend(
                anyio.run(measure_backend, backend, works, hook, mode, budget, backend=backend)
            )
    output.write_text(json.dumps({"sha256": digest, "rows": [asdict(row) for row in rows]}))


def durable_worker(budget: DurableBudget, output: Path, redis_url: str, postgres_url: str) -> None:
    """Measure the durable rows (asyncio, logging filtered) in this process, DBOS launched
    once; write them to ``output`` with the digest of the asaga sources measured."""
    notes: list[str] = []
    store = Inventory()
    dbos: DbosWorkflow | None = None
    postgres = None
    with open(os.devnull, "w") as sink:
        configure_logging("filtered", sink)
        if importlib.util.find_spec("dbos") is None:
            notes.append("DBOS is not installed (pip install 'asaga[bench]'): its row is skipped.")
        else:
            import psycopg

            try:
                postgres = create_dbos_database(postgres_url)
            except psycopg.OperationalError as exc:
                reason = " ".join(str(exc).split())
                notes.append(f"PostgreSQL cannot be reached ({reason}): DBOS's row is skipped.")
        try:
            if postgres is not None:
                from dbos import DBOS

                dbos = dbos_workflow(store)
                DBOS(
                    config={
                        "name": "asaga-bench",
                        "system_database_url": f"{postgres_url}/{DBOS_DATABASE}",
                        "log_level": "WARNING",
                    }
                )
            report = anyio.run(measure_durable, budget, redis_url, store, dbos, backend="asyncio")
        finally:
            if postgres is not None:
                drop_dbos_database(postgres_url)
    report |= {
        "steps": DURABLE_STEPS,
        "step_delay_ms": STEP_DELAY * 1e3,
        "round_trip_target": ROUND_TRIP_TARGET,
        "dbos_target": DBOS_TARGET,
        "dbos_note": DBOS_NOTE if dbos is not None else None,
        "budget": asdict(budget),
        "postgres_server": postgres,
        "notes": notes,
        "versions": {
            package: _version_or_none(package)
            for package in ("redis", "hiredis", "dbos", "sqlalchemy", "psycopg")
        },
    }
    output.write_text(json.dumps({"sha256": _sources_digest(), "durable": report}))


def run_durable_worker(
    quick: bool, budget: DurableBudget, redis_url: str, postgres_url: str
) -> tuple[str, dict[str, Any]]:
    """Run :func:`durable_worker` in a fresh interpreter; return the digest of the asaga
    sources it measured, and its report."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "durable.json"
        command = [
            sys.executable,
            __file__,
            "--durable-worker",
            "--worker-output",
            str(output),
            "--redis-url",
            redis_url,
            "--postgres-url",
            postgres_url,
        ]
        if quick:
            command.append("--quick")
        subprocess.run(command, check=True, timeout=budget.worker_timeout)
        data = json.loads(output.read_text())
    return data["sha256"], data["durable"]


def run_worker(mode: LoggingMode, quick: bool, budget: Budget) -> tuple[str, list[Row]]:
    """Run :func:`worker` in a fresh interpreter, so structlog is configured only once;
    return the digest of the asaga sources it measured, and its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "rows.json"
        command = [sys.executable, __file__, "--worker", mode, "--worker-output", str(output)]
        if quick:
            command.append("--quick")
        subprocess.run(command, check=True, timeout=budget.worker_timeout)
        data = json.loads(output.read_text())
    return data["sha256"], [
        Row(
            **{
                **row,
                "baseline_batches_us": tuple(row["baseline_batches_us"]),
                "asaga_batches_us": tuple(row["asaga_batches_us"]),
                "inline_batches_us": tuple(row["inline_batches_us"]),
                "hamilton_batches_us": tuple(row["hamilton_batches_us"]),
            }
        )
        for row in data["rows"]
    ]


# -- report -----------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| backend | shape | steps | logging | task per step µs/run | inline µs/run "
        "| asaga µs/run | ratio | ratio to inline |",
        "|---|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r.backend} | {r.shape} | {r.steps} | {r.logging} | {r.baseline_us:.1f} "
        f"| {_us(r.inline_us)} | {r.asaga_us:.1f} | {r.ratio:.2f} | {_times(r.asaga_vs_inline)} |"
        for r in rows
    ]
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def hamilton_table(rows: Sequence[Row]) -> str:
    """asaga vs Hamilton's async driver vs hand-written, asyncio, logging filtered."""
    lines = [
        "| shape | steps | hand-written µs/run | asaga µs/run | Hamilton µs/run "
        "| asaga / hand-written | asaga / Hamilton |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r.shape} | {r.steps} | {r.baseline_us:.1f} | {r.asaga_us:.1f} "
        f"| {r.hamilton_us:.1f} | {r.ratio:.2f} | {r.asaga_vs_hamilton:.2f} |"
        for r in rows
        if r.hamilton_us is not None and r.asaga_vs_hamilton is not None
    ]
    return "\n".join(lines)


def verdicts(rows: Sequence[Row]) -> str:
    lines = []
    for r in rows:
        if r.logging != "filtered":
            continue
        verdict = "met" if r.ratio <= TARGET else "MISSED"
        label = f"{r.shape}-{r.steps}"
        lines.append(
            f"{r.backend:7} {label:12} asaga/hand-written = {r.ratio:.2f}x "
            f"(target <= {TARGET}x with logging filtered): {verdict}"
        )
    for r in rows:
        if r.logging != "filtered" or r.asaga_vs_inline is None:
            continue
        label = f"{r.shape}-{r.steps}"
        lines.append(
            f"{r.backend:7} {label:12} asaga/hand-written inline = {r.asaga_vs_inline:.2f}x "
            "(no target: see 'How to read it')"
        )
    for r in rows:
        if r.asaga_vs_hamilton is None:
            continue
        verdict = "met" if r.asaga_vs_hamilton < HAMILTON_TARGET else "MISSED"
        label = f"{r.shape}-{r.steps}"
        lines.append(
            f"{r.backend:7} {label:12} asaga/Hamilton = {r.asaga_vs_hamilton:.2f}x "
            f"(target < {HAMILTON_TARGET}x: asaga faster than Hamilton's async driver): {verdict}"
        )
    return "\n".join(lines)


def durable_table(durable: Mapping[str, Any]) -> str:
    """Latency per run of the 5-step saga, and what each variant adds to the floor."""
    lines = [
        "| variant | runs | p50 ms/run | mean ms/run | added ms/run | added ms/step "
        "| Redis round trips/run | Redis round trips/step |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in durable["rows"]:
        floor = r["variant"] == "floor"
        added = "-" if floor else f"{r['added_ms']:.2f}"
        per_step = "-" if floor else f"{r['added_per_step_ms']:.3f}"
        trips, trips_per_step = r["round_trips_per_run"], r["round_trips_per_step"]
        lines.append(
            f"| {r['description']} | {r['runs']} | {r['p50_ms']:.2f} | {r['mean_ms']:.2f} "
            f"| {added} | {per_step} | {'-' if trips is None else f'{trips:.2f}'} "
            f"| {'-' if trips_per_step is None else f'{trips_per_step:.2f}'} |"
        )
    return "\n".join(lines)


def durable_verdicts(durable: Mapping[str, Any]) -> str:
    rows = {r["variant"]: r for r in durable["rows"]}
    redis = rows["asaga-redis"]
    per_step, per_run = redis["round_trips_per_step"], redis["round_trips_per_run"]
    verdict = "met" if per_step <= ROUND_TRIP_TARGET else "MISSED"
    journal = DURABLE_STEPS + 1
    fewest, most = redis["round_trips_min"], redis["round_trips_max"]
    spread = f"every run {most}" if fewest == most else f"{fewest} to {most} in one run"
    lines = [
        f"asaga Redis-durable: {per_step:.2f} round trips per step "
        f"(target <= {ROUND_TRIP_TARGET:g}): {verdict}",
        f"  {per_run:.2f} per run of {DURABLE_STEPS} steps ({spread}); a chain's journal "
        f"writes {journal}: the open, then one per step, the last step's with the finish"
        + ("" if most <= journal else f" (MORE than {journal})"),
    ]
    dbos = rows.get("dbos")
    if dbos is None:
        lines.append("asaga Redis-durable added latency / DBOS added latency: not measured")
    elif dbos["added_ms"] <= 0:
        lines.append("asaga Redis-durable added latency / DBOS added latency: DBOS added nothing")
    else:
        ratio = redis["added_ms"] / dbos["added_ms"]
        verdict = "met" if ratio <= DBOS_TARGET else "MISSED"
        lines.append(
            f"asaga Redis-durable added latency / DBOS added latency = {ratio:.2f} "
            f"(target <= {DBOS_TARGET:.2f}): {verdict}"
        )
        lines.append(
            f"  {redis['added_ms']:.2f} ms / {dbos['added_ms']:.2f} ms per run (p50 over the "
            f"floor's p50); means: {redis['added_mean_ms']:.2f} ms / {dbos['added_mean_ms']:.2f} ms"
        )
    return "\n".join(lines)


def concurrent_lines(durable: Mapping[str, Any]) -> str:
    concurrent = durable.get("concurrent")
    if not concurrent:
        return ""
    rates = concurrent["runs_per_s"]
    return (
        f"With {concurrent['in_flight']} runs in flight: asaga {rates['asaga']:,.0f} runs/s, "
        f"Redis-durable {rates['asaga-redis']:,.0f} runs/s "
        f"({rates['asaga-redis'] / rates['asaga']:.2f}x); "
        f"{concurrent['round_trips_per_step']:.3f} Redis round trips per step "
        "(concurrent writes share a pipeline)"
    )


def print_durable(durable: Mapping[str, Any] | None) -> None:
    if durable is None:
        print(
            "The redis extra is not installed (pip install 'asaga[bench]'): durable rows skipped."
        )
        return
    print(
        f"Durable runs: the {DURABLE_STEPS}-step inventory saga "
        "(product -> reserve -> log -> replenishment -> notify), "
        f"{durable['step_delay_ms']:g} ms of simulated I/O per step, one run at a time "
        "(asyncio, logging filtered):\n"
    )
    print(durable_table(durable))
    print()
    for note in durable["notes"]:
        print(f"Note: {note}")
    if durable["dbos_sql_statements_per_run"] is not None:
        print(
            f"Note: {DBOS_NOTE} DBOS sent {durable['dbos_sql_statements_per_run']} SQL "
            "statements per run (SQLAlchemy cursor executions, transaction commits not "
            "counted; counted on untimed runs)."
        )
    print()
    print(durable_verdicts(durable))
    concurrent = concurrent_lines(durable)
    if concurrent:
        print(concurrent)


def source_info() -> dict[str, Any]:
    """Which asaga is measured: the git commit, whether ``asaga/`` had uncommitted changes,
    and a digest of the source files of the asaga modules this process imported."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--", "asaga")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "sha256": _sources_digest(),
    }


def _sources_digest() -> str:
    files = sorted(
        Path(file)
        for name, module in list(sys.modules.items())
        if (name == "asaga" or name.startswith("asaga."))
        and (file := getattr(module, "__file__", None))
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _version_or_none(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    return {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {
            package: version(package)
            for package in ("asaga", "anyio", "trio", "structlog", "msgspec")
        }
        | {"hamilton": _version_or_none("apache-hamilton")},
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(
    path: Path,
    rows: Sequence[Row],
    budget: Budget,
    quick: bool,
    took: float,
    source: dict[str, Any],
    durable: dict[str, Any] | None,
) -> None:
    report = {
        "benchmark": "overhead",
        "quick": quick,
        "target": TARGET,
        "hamilton_target": HAMILTON_TARGET,
        "hamilton_note": HAMILTON_NOTE if hamilton_async is not None else None,
        "seconds": round(took, 1),
        "budget": asdict(budget),
        "shapes": {shape.label: {k: list(v) for k, v in shape.deps.items()} for shape in SHAPES},
        "machine": machine_info(),
        "asaga_source": source,
        "rows": [asdict(row) for row in rows],
        "durable": durable,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 20 s)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument(
        "--redis-url", default=REDIS_URL, help=f"Redis for the durable rows (default: {REDIS_URL})"
    )
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_URL,
        help=f"PostgreSQL server for DBOS, without a database (default: {POSTGRES_URL})",
    )
    parser.add_argument("--worker", choices=LOGGING_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--durable-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    durable_budget = DURABLE_QUICK if args.quick else DURABLE_FULL
    if args.worker is not None:
        worker(args.worker, budget, args.worker_output)
        return 0
    if args.durable_worker:
        durable_worker(durable_budget, args.worker_output, args.redis_url, args.postgres_url)
        return 0

    source = source_info()  # before measuring: asaga/ may be edited while this runs
    started = time.perf_counter()
    rows: list[Row] = []
    measured = {source["sha256"]}
    for mode in LOGGING_MODES:
        digest, worker_rows = run_worker(mode, args.quick, budget)
        measured.add(digest)
        rows.extend(worker_rows)
    durable = None
    if RedisRunStore is not None:
        digest, durable = run_durable_worker(
            args.quick, durable_budget, args.redis_url, args.postgres_url
        )
        measured.add(digest)
    measured.add(_sources_digest())
    source["consistent"] = len(measured) == 1
    kinds = list(dict.fromkeys(shape.kind for shape in SHAPES))
    rows.sort(
        key=lambda r: (r.backend, r.steps, kinds.index(r.shape), LOGGING_MODES.index(r.logging))
    )
    took = time.perf_counter() - started
    print(table(rows))
    print()
    if hamilton_async is None:
        print("Hamilton is not installed (pip install 'asaga[bench]'): its column is skipped.")
    else:
        print("asaga vs Apache Hamilton's async driver (asyncio, logging filtered):\n")
        print(hamilton_table(rows))
        print(f"\nNote: {HAMILTON_NOTE}")
    print()
    print(verdicts(rows))
    print()
    print_durable(durable)
    write_json(args.json, rows, budget, args.quick, took, source, durable)
    if not source["consistent"]:
        print("\nwarning: asaga's sources changed while this ran; rows may mix two versions")
    print(f"\n{len(rows)} cells in {took:.0f} s; JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
