"""A realistic saga: the inventory example's InventorySaga with 1 ms of simulated I/O per call.

What is measured
----------------
``InventorySaga`` (examples/inventory/sagas.py) reserving one unit of a product, as the
example runs it: ``product`` -> ``availability`` -> ``perform`` (under the product's lease,
the store's fenced ``apply``, which checks the counts and returns the product) ->
``transaction`` and ``replenishment`` in parallel -> ``notify``; six steps. Every call to
the store and to the notifier first awaits ``anyio.sleep(0.001)`` (:class:`Delayed` wraps
them; the lock provider is not wrapped). A run makes four such calls, **all in sequence**:
``get``; ``apply``; ``log``; ``send`` (``replenishment`` reads the product ``apply``
returned, and the products' reorder point is 0, so it makes no call): the floor of a
sequential run is 4 x 1 ms. ``anyio.sleep(0.001)`` itself takes a little more than 1 ms,
so the same run also times a hand-written chain of four ``anyio.sleep(0.001)``
(``measured floor``), alternating batches with the saga.

Two backends, asyncio only (redis-py's asyncio client), structlog filtered at WARNING:

- ``memory``: ``MemoryInventoryStore`` and its ``MemoryLockProvider``;
- ``redis``: ``RedisInventoryStore`` + ``RedisLockProvider`` on a real Redis (a lease is a
  few round trips; the store's calls are Lua scripts or plain commands), the same 1 ms
  sleep before each store and notifier call. Keys live under ``bench-realistic:<hex>:``
  and are deleted at the end.

Three loads per backend:

- ``sequential``: one run after another;
- ``100 distinct``: 100 concurrent coroutines, each reserving its own product (no lease
  contention: the throughput of the framework and backend with 100 runs in flight);
- ``100 hot``: 100 concurrent coroutines on one product: every ``perform`` waits for the
  product's lease, held for its ``apply`` (>= 1 ms), so at most ~1000 runs/s can pass,
  whatever the framework.

Reported: runs/s, p50/p99/max latency of a run (from ``InventorySaga.run`` to its
return, lease queueing included), failed runs (must be 0), and a check that the product's
reserved count equals the runs that succeeded. Sequential rows also give p50 / floor.

Usage::

    python benchmarks/realistic.py            # full run, about 1.5 minutes
    python benchmarks/realistic.py --quick    # smoke test, < 20 s
    python benchmarks/realistic.py --redis-url redis://127.0.0.1:6379/0   # the default

It prints a Markdown table and writes ``benchmarks/results/realistic.json``. Without a
reachable Redis the ``redis`` rows are skipped, with a note.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the example lives in examples/, beside benchmarks/

from examples.inventory.sagas import InventorySaga, Notifier  # noqa: E402
from examples.inventory.store import MemoryInventoryStore, Product  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "realistic.json"
DELAY = 0.001
"""Simulated I/O per store or notifier call, in seconds."""
SEQUENTIAL_IO = 4
"""Calls of a reserve run on its critical path: get; apply; log; send."""
CALLS_PER_RUN = 4
CONCURRENCY = 100
STOCK = 10**9


@dataclass(frozen=True, slots=True)
class Budget:
    """Every loop is bounded in count and in time."""

    warmup_runs: int
    warmup_seconds: float
    sequential_batches: int
    batch_runs: int  # per sequential batch, saga and floor alike
    batch_seconds: float
    concurrent_seconds: float
    concurrent_runs: int  # at most, over all 100 coroutines of a cell
    timeout: float  # the whole benchmark


FULL = Budget(
    warmup_runs=100,
    warmup_seconds=1.0,
    sequential_batches=10,
    batch_runs=200,
    batch_seconds=0.5,
    concurrent_seconds=8.0,
    concurrent_runs=200_000,
    timeout=300.0,
)
QUICK = Budget(
    warmup_runs=10,
    warmup_seconds=0.1,
    sequential_batches=4,
    batch_runs=30,
    batch_seconds=0.15,
    concurrent_seconds=1.0,
    concurrent_runs=20_000,
    timeout=60.0,
)


class Delayed:
    """``inner`` with ``anyio.sleep(delay)`` before each of its coroutine methods; counts
    the calls. Other attributes (the store's ``locks``) pass through unchanged."""

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


@dataclass(slots=True)
class Backend:
    name: str
    store: Delayed
    notifier: Delayed
    raw_store: Any
    description: str


@dataclass(slots=True)
class Row:
    backend: str
    load: str
    concurrency: int
    runs: int
    failed: int
    seconds: float
    runs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    floor_ms: float | None = None  # sequential: SEQUENTIAL_IO x DELAY
    measured_floor_ms: float | None = None  # sequential: median of the sleep chain
    p50_over_floor: float | None = None
    p50_over_measured_floor: float | None = None
    cpu_ms_per_run: float | None = None  # sequential: process CPU time per saga run
    floor_cpu_ms_per_run: float | None = None  # sequential: per sleep chain
    reserved_ok: bool = True
    errors: dict[str, int] = field(default_factory=dict)


def configure_logging() -> None:
    """structlog dropping asaga's debug/info events by level, as in overhead.py."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )


@asynccontextmanager
async def memory_backend() -> AsyncIterator[Backend]:
    store = MemoryInventoryStore()
    yield Backend(
        "memory",
        Delayed(store, DELAY),
        Delayed(Notifier(), DELAY),
        store,
        "MemoryInventoryStore + MemoryLockProvider",
    )


@asynccontextmanager
async def redis_backend(url: str) -> AsyncIterator[Backend]:
    import redis.asyncio as aioredis

    from asaga.locks import RedisLockProvider
    from examples.inventory.store import RedisInventoryStore

    prefix = f"bench-realistic:{secrets.token_hex(6)}:"
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=4 * CONCURRENCY, timeout=10.0, socket_connect_timeout=2.0
    )
    client = aioredis.Redis.from_pool(pool)
    try:
        with anyio.fail_after(5):
            await client.ping()
        async with RedisLockProvider(client, prefix=prefix) as locks:
            store = RedisInventoryStore(client, locks, prefix=f"{prefix}inv:")
            yield Backend(
                "redis",
                Delayed(store, DELAY),
                Delayed(Notifier(), DELAY),
                store,
                f"RedisInventoryStore + RedisLockProvider at {url}",
            )
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            try:
                keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


async def seed(backend: Backend, skus: list[str]) -> None:
    for sku in skus:
        await backend.raw_store.put(Product(sku=sku, inventory_count=STOCK, reorder_point=0))


async def run_once(backend: Backend, sku: str) -> None:
    await InventorySaga.run(
        product_id=sku,
        quantity=1,
        operation="reserve",
        store=backend.store,
        locks=backend.raw_store.locks,
        notifier=backend.notifier,
    )


async def sleep_chain() -> None:
    """The floor, by hand: SEQUENTIAL_IO sequential 1 ms sleeps."""
    for _ in range(SEQUENTIAL_IO):
        await anyio.sleep(DELAY)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def timed_runs(
    run: Callable[[], Awaitable[None]], runs: int, seconds: float, latencies: list[float]
) -> None:
    """At most ``runs`` runs or ``seconds`` seconds (at least one); appends each run's ms."""
    clock = time.perf_counter
    deadline = clock() + seconds
    for _ in range(runs):
        start = clock()
        await run()
        end = clock()
        latencies.append((end - start) * 1e3)
        if end >= deadline:
            break


async def reserved(backend: Backend, sku: str) -> int:
    return (await backend.raw_store.get(sku)).reserved_count


async def sequential(backend: Backend, budget: Budget) -> Row:
    sku = "seq"
    await seed(backend, [sku])
    calls = backend.store.calls + backend.notifier.calls
    await run_once(backend, sku)
    made = backend.store.calls + backend.notifier.calls - calls
    if made != CALLS_PER_RUN:
        raise RuntimeError(f"a run made {made} delayed calls, not {CALLS_PER_RUN}")
    warm: list[float] = []
    await timed_runs(
        lambda: run_once(backend, sku), budget.warmup_runs, budget.warmup_seconds, warm
    )
    before = await reserved(backend, sku)
    saga: list[float] = []
    floor: list[float] = []
    batch_medians: list[float] = []
    elapsed = cpu = floor_cpu = 0.0
    for batch in range(budget.sequential_batches):
        order = [True, False] if batch % 2 == 0 else [False, True]
        for is_saga in order:
            if is_saga:
                start, count, cpu_start = time.perf_counter(), len(saga), time.process_time()
                await timed_runs(
                    lambda: run_once(backend, sku), budget.batch_runs, budget.batch_seconds, saga
                )
                elapsed += time.perf_counter() - start
                cpu += time.process_time() - cpu_start
                batch_medians.append(statistics.median(saga[count:]))
            else:
                cpu_start = time.process_time()
                await timed_runs(sleep_chain, budget.batch_runs, budget.batch_seconds, floor)
                floor_cpu += time.process_time() - cpu_start
    ok = await reserved(backend, sku) - before == len(saga)
    latencies = sorted(saga)
    p50, measured = statistics.median(saga), statistics.median(floor)
    floor_ms = SEQUENTIAL_IO * DELAY * 1e3
    return Row(
        backend=backend.name,
        load="sequential",
        concurrency=1,
        runs=len(saga),
        failed=0,
        seconds=round(elapsed, 3),
        runs_per_s=len(saga) / elapsed,
        p50_ms=p50,
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1],
        floor_ms=floor_ms,
        measured_floor_ms=measured,
        p50_over_floor=p50 / floor_ms,
        p50_over_measured_floor=p50 / measured,
        cpu_ms_per_run=cpu / len(saga) * 1e3,
        floor_cpu_ms_per_run=floor_cpu / len(floor) * 1e3,
        reserved_ok=ok,
    )


async def concurrent(backend: Backend, budget: Budget, hot: bool) -> Row:
    skus = ["hot"] if hot else [f"p{i}" for i in range(CONCURRENCY)]
    await seed(backend, skus)
    warm: list[float] = []
    await timed_runs(lambda: run_once(backend, skus[0]), 10, budget.warmup_seconds, warm)
    before = {sku: await reserved(backend, sku) for sku in skus}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = 0
    clock = time.perf_counter
    start = clock()
    deadline = start + budget.concurrent_seconds

    async def worker(sku: str) -> None:
        nonlocal started
        while started < budget.concurrent_runs and clock() < deadline:
            started += 1
            t0 = clock()
            try:
                await run_once(backend, sku)
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                name = type(error).__name__
                errors[name] = errors.get(name, 0) + 1
                continue
            latencies.append((clock() - t0) * 1e3)

    with anyio.fail_after(budget.concurrent_seconds + 30):
        async with anyio.create_task_group() as tg:
            for i in range(CONCURRENCY):
                tg.start_soon(worker, skus[i % len(skus)])
    elapsed = clock() - start
    after = {sku: await reserved(backend, sku) for sku in skus}
    ok = sum(after[s] - before[s] for s in skus) == len(latencies)
    latencies.sort()
    return Row(
        backend=backend.name,
        load=f"{CONCURRENCY} hot" if hot else f"{CONCURRENCY} distinct",
        concurrency=CONCURRENCY,
        runs=len(latencies),
        failed=sum(errors.values()),
        seconds=round(elapsed, 3),
        runs_per_s=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else float("nan"),
        reserved_ok=ok,
        errors=errors,
    )


async def measure(budget: Budget, redis_url: str | None) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    info: dict[str, Any] = {"backends": {}}
    factories: list[tuple[str, Callable[[], Any]]] = [("memory", memory_backend)]
    if redis_url is not None:
        factories.append(("redis", lambda: redis_backend(redis_url)))
    for name, factory in factories:
        try:
            async with factory() as backend:
                info["backends"][name] = backend.description
                for load in ("sequential", "distinct", "hot"):
                    if load == "sequential":
                        row = await sequential(backend, budget)
                    else:
                        row = await concurrent(backend, budget, hot=load == "hot")
                    rows.append(row)
                    print(
                        f"  {row.backend:6} {row.load:12} {row.runs_per_s:8.0f} runs/s "
                        f"p50 {row.p50_ms:6.2f} ms p99 {row.p99_ms:6.2f} ms",
                        file=sys.stderr,
                    )
        except OSError as error:  # no Redis: say so, keep the memory rows
            info["backends"][name] = f"skipped: {error!r}"
            print(f"  {name}: skipped ({error!r})", file=sys.stderr)
    return rows, info


def table(rows: list[Row]) -> str:
    lines = [
        "| backend | load | runs/s | p50 ms | p99 ms | max ms | failed "
        "| floor ms (measured) | p50 / floor (/ measured) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        floor = f"{r.floor_ms:.1f} ({r.measured_floor_ms:.2f})" if r.measured_floor_ms else ""
        over = (
            f"{r.p50_over_floor:.2f} ({r.p50_over_measured_floor:.2f})"
            if r.p50_over_floor and r.p50_over_measured_floor
            else ""
        )
        lines.append(
            f"| {r.backend} | {r.load} | {r.runs_per_s:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.max_ms:.1f} | {r.failed} | {floor} | {over} |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    def git_commit() -> str | None:
        try:
            done = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    versions = {}
    for package in ("asaga", "anyio", "structlog", "msgspec", "redis", "hiredis"):
        try:
            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - optional packages
            versions[package] = None
    return {
        "python": sys.version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "commit": git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 20 s)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis for the redis rows (default: %(default)s); 'none' to skip them",
    )
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    redis_url = None if args.redis_url == "none" else args.redis_url
    configure_logging()
    started = time.perf_counter()

    async def bounded() -> tuple[list[Row], dict[str, Any]]:
        with anyio.fail_after(budget.timeout):
            return await measure(budget, redis_url)

    rows, info = anyio.run(bounded, backend="asyncio")
    took = time.perf_counter() - started
    print(table(rows))
    print()
    for r in rows:
        if r.load == "sequential" and r.p50_over_measured_floor is not None:
            print(
                f"{r.backend:6} sequential: p50 {r.p50_ms:.2f} ms = {r.p50_over_floor:.2f}x the "
                f"{SEQUENTIAL_IO} x 1 ms floor, {r.p50_over_measured_floor:.2f}x the measured "
                f"chain of {SEQUENTIAL_IO} anyio.sleep(0.001) ({r.measured_floor_ms:.2f} ms); "
                f"CPU {r.cpu_ms_per_run:.2f} ms/run (chain: {r.floor_cpu_ms_per_run:.2f} ms)"
            )
    bad = [r for r in rows if r.failed or not r.reserved_ok]
    for r in bad:
        print(f"warning: {r.backend} {r.load}: {r.failed} failed {r.errors}, ok={r.reserved_ok}")
    report = {
        "benchmark": "realistic",
        "quick": args.quick,
        "seconds": round(took, 1),
        "delay_s": DELAY,
        "sequential_io": SEQUENTIAL_IO,
        "calls_per_run": CALLS_PER_RUN,
        "concurrency": CONCURRENCY,
        "budget": asdict(budget),
        "backends": info["backends"],
        "machine": machine_info(),
        "rows": [asdict(r) for r in rows],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{len(rows)} cells in {took:.0f} s; JSON written to {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
