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

Usage::

    python benchmarks/overhead.py            # full run, a few minutes
    python benchmarks/overhead.py --quick    # smoke test, < 20 s

It prints a Markdown table and writes ``benchmarks/results/overhead.json`` (rows, per-batch
samples, budget, machine information, and which asaga was measured: git commit and a digest
of the imported sources, checked in every worker; a warning says if they changed mid-run).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
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
import structlog
from structlog.testing import capture_logs

import asaga

try:
    from hamilton import async_driver as hamilton_async
except ImportError:  # the `bench` extra is not installed: the Hamilton column is skipped
    hamilton_async = None

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
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 20 s)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument("--worker", choices=LOGGING_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.worker is not None:
        worker(args.worker, budget, args.worker_output)
        return 0

    source = source_info()  # before measuring: asaga/ may be edited while this runs
    started = time.perf_counter()
    rows: list[Row] = []
    measured = {source["sha256"]}
    for mode in LOGGING_MODES:
        digest, worker_rows = run_worker(mode, args.quick, budget)
        measured.add(digest)
        rows.extend(worker_rows)
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
    write_json(args.json, rows, budget, args.quick, took, source)
    if not source["consistent"]:
        print("\nwarning: asaga's sources changed while this ran; rows may mix two versions")
    print(f"\n{len(rows)} cells in {took:.0f} s; JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
