"""Lock contention on one hot key: asaga's Redis lease vs. redis-py's ``Lock``.

The scenario
------------
One product (one hot key), its stock in Redis, and C coroutines in ONE process that each
reserve one unit, again and again, for a fixed duration (C = 1, 10, 100, 1000). A
reservation is a read-check-write under a lock:

    ask for the lock -> GET stock -> if stock > 0: SET stock - 1 -> release the lock

Three ways to take the lock are compared:

- ``asaga-lease``: :class:`asaga.locks.RedisLockProvider`, ``async with
  locks.lease("sku", ttl=5.0, wait=duration + 5)``; the write goes through the fenced
  helper ``locks.fenced(lease, ("SET", stock_key, value))``, which rejects it if a newer
  lease exists (counted as ``stale``; never expected here).
- ``redis-py Lock (defaults)``: a new ``client.lock(name, timeout=5)`` per reservation
  (a new object each time: redis-py keeps its token in a ``thread_local`` shared by every
  task using one object). Otherwise defaults: it polls ``SET NX`` every 100 ms
  (``sleep=0.1``) with no bound on the wait (``blocking_timeout=None``). The 5 s TTL is
  only there so that an interrupted run cannot wedge the key.
- ``redis-py Lock + asyncio.Lock``: the same, behind one in-process ``asyncio.Lock`` per
  key, so at most one coroutine of the process polls Redis (in-process single flight).

Cells run C by C, the three variants one after the other at each C, so that a drift in
the machine's speed (shared or virtual machines) affects them alike.

Each variant uses ONE ``redis.asyncio.Redis`` client (hiredis parser when installed) for
all its cells, with a pool of up to ``MAX_CONNECTIONS`` (2000) connections: a redis-py
``Lock`` holds no connection while it sleeps, but each ``SET NX`` attempt, GET and SET
borrows one briefly, so at C=1000 up to ~1000 can be in use at once; redis-py's plain
``ConnectionPool`` raises ``Too many connections`` beyond its limit rather than queueing
(``BlockingConnectionPool`` would queue, adding a wait that is not the lock's), so the
limit is set well above C. The client keeps redis-py's default ``socket_timeout=None``:
with a socket timeout, redis-py 8 wraps every write in ``asyncio.wait_for``, one extra
task per command, which would tax every variant and is not what the default client (or
``RedisLockProvider.from_url``) does; time is bounded by the benchmark instead (below).
Before each cell, C concurrent PINGs open the connections, so that connection set-up is
not timed. Every cell uses its own keys (a random run prefix ``bench-lock:<hex>:``),
deleted at the end.

Each cell runs for ``--duration`` seconds; then every worker is cancelled and awaited. A
worker that holds the lock when cancelled finishes its reservation (the critical section
is shielded, with its own ``CRITICAL_BOUND`` deadline), so the stock accounting is exact.

How to read the results
-----------------------
- ``res/s``: completed reservations per second of the cell.
- ``p50/p99/max ms``: latency of one reservation, from asking for the lock to having
  released it (queueing included: with C coroutines on one key, a fair lock's p50 is
  about C x the time one reservation holds the lock).
- ``starved``: coroutines that never got the lock during the cell (a fair lock has 0).
- ``oversell``: reservations counted - (initial stock - final stock); anything but 0
  means two holders interleaved their read-check-write.

Latencies are those of completed reservations only: a starved coroutine's wait never
completes, so it is not in p50/p99/max. The JSON adds, per cell, the longest wait still
unfinished when the cell stopped (``unfinished_wait_max_ms``), the spread of acquisitions
per coroutine, and the client's CPU time per reservation (``cpu_us_per_reservation``,
``cpu_busy``): with one process, the client's CPU, not Redis, is usually the bottleneck,
and CPU time per reservation is less disturbed than res/s by other load on the machine.

The targets, at C=1000: asaga-lease reaches at least 5x the reservations/s of redis-py's
defaults and 1.2x those of redis-py + asyncio.Lock, with 0 starved coroutines and 0
oversell (checked in every asaga cell). A verdict line says whether each is met. Absolute
numbers depend on the machine; compare ratios.

Usage::

    python benchmarks/lock_contention.py                 # 3 s per cell, about a minute
    python benchmarks/lock_contention.py --quick         # 1 s per cell, C up to 100
    python benchmarks/lock_contention.py --duration 2 --redis-url redis://127.0.0.1:6379/3

It prints a Markdown table and writes ``benchmarks/results/lock_contention.json`` (rows,
parameters, targets, verdicts and machine information).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from asaga.locks import LeaseLost, LeaseTimeout, RedisLockProvider, StaleWrite

RESULTS = Path(__file__).resolve().parent / "results" / "lock_contention.json"
DEFAULT_URL = "redis://127.0.0.1:6379/0"

INITIAL_STOCK = 10**9
"""Large enough never to run out: every reservation succeeds."""
LOCK_TTL = 5.0
MAX_CONNECTIONS = 2000
SOCKET_TIMEOUT = 5.0
"""Only for the set-up and clean-up clients (see the docstring for the measured ones)."""
CRITICAL_BOUND = 10.0
"""Seconds a started reservation may take to finish once its cell is stopping."""
MAX_RESERVATIONS_PER_WORKER = 1_000_000
"""Count bound of a worker's loop (the cell's duration is the time bound)."""
CLEANUP_BATCH = 500
CLEANUP_MAX_ROUNDS = 10_000

FULL_CONCURRENCY = (1, 10, 100, 1000)
QUICK_CONCURRENCY = (1, 10, 100)

ASAGA = "asaga-lease"
REDIS_DEFAULTS = "redis-py Lock (defaults)"
REDIS_LOCAL = "redis-py Lock + asyncio.Lock"
VARIANTS = (ASAGA, REDIS_DEFAULTS, REDIS_LOCAL)

TARGET_VS_DEFAULTS = 5.0
TARGET_VS_LOCAL = 1.2


# --- one cell's shared state -------------------------------------------------------------


@dataclass
class Cell:
    """What the workers of one (variant, C) cell share and record."""

    prefix: str
    concurrency: int
    acquired: list[int]
    """Acquisitions per worker (0 = starved)."""
    asking_since: list[float | None]
    """When each worker asked for the lock, while it waits or holds it."""
    latencies: list[float] = field(default_factory=list)
    reservations: int = 0
    stale_writes: int = 0
    lease_errors: int = 0
    interrupted: int = 0
    """Reservations cut by CRITICAL_BOUND (stock accounting may then be off by one each)."""

    @property
    def stock_key(self) -> str:
        return f"{self.prefix}stock"

    @property
    def lock_name(self) -> str:
        return f"{self.prefix}lock:sku"


Reserve = Callable[[int], Awaitable[None]]
"""One reservation by worker ``index``: lock, read-check-write, unlock."""

Variant = Callable[[aioredis.Redis, Cell, float], AbstractAsyncContextManager[Reserve]]
"""Sets up a variant for one cell (client, cell, duration) and yields its ``Reserve``."""


@dataclass(frozen=True)
class Row:
    variant: str
    concurrency: int
    seconds: float
    reservations: int
    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    starved: int
    oversell: int
    stale_writes: int
    lease_errors: int
    interrupted: int
    acquisitions_min: int
    acquisitions_max: int
    unfinished_wait_max_ms: float | None
    cpu_us_per_reservation: float | None
    cpu_busy: float
    stop_ms: float


@dataclass
class Timing:
    """One cell's clocks: wall and CPU seconds measured, longest unfinished wait, stop."""

    seconds: float
    cpu: float
    unfinished: float | None
    stop: float = 0.0


# --- the variants --------------------------------------------------------------------------


@contextmanager
def critical_section(cell: Cell) -> Iterator[None]:
    """Shield a started reservation from the cell's stop, within CRITICAL_BOUND seconds."""
    with anyio.move_on_after(CRITICAL_BOUND, shield=True) as scope:
        yield
    if scope.cancelled_caught:
        cell.interrupted += 1


async def read_stock(client: aioredis.Redis, cell: Cell) -> int:
    value = await client.get(cell.stock_key)
    if value is None:
        raise RuntimeError(f"stock key {cell.stock_key!r} vanished")
    return int(value)


async def read_check_write(client: aioredis.Redis, cell: Cell) -> None:
    """GET stock; if > 0, SET stock - 1 and count the reservation (plain commands)."""
    stock = await read_stock(client, cell)
    if stock > 0:
        await client.set(cell.stock_key, stock - 1)
        cell.reservations += 1


@asynccontextmanager
async def asaga_lease(
    client: aioredis.Redis, cell: Cell, duration: float
) -> AsyncIterator[Reserve]:
    wait = duration + 5.0
    async with RedisLockProvider(client, prefix=cell.prefix) as locks:

        async def reserve(index: int) -> None:
            try:
                async with locks.lease("sku", ttl=LOCK_TTL, wait=wait) as lease:
                    with critical_section(cell):
                        cell.acquired[index] += 1
                        stock = await read_stock(client, cell)
                        if stock > 0:
                            await locks.fenced(lease, ("SET", cell.stock_key, stock - 1))
                            cell.reservations += 1
            except StaleWrite:
                cell.stale_writes += 1
            except (LeaseLost, LeaseTimeout):
                cell.lease_errors += 1

        yield reserve


async def redis_py_reservation(client: aioredis.Redis, cell: Cell, index: int) -> None:
    """A fresh redis-py Lock (defaults, 5 s TTL) around the plain read-check-write."""
    lock = client.lock(cell.lock_name, timeout=LOCK_TTL)
    await lock.acquire()
    with critical_section(cell):  # finish a started reservation, then release
        try:
            cell.acquired[index] += 1
            await read_check_write(client, cell)
        finally:
            await lock.release()


@asynccontextmanager
async def redis_py_defaults(
    client: aioredis.Redis, cell: Cell, duration: float
) -> AsyncIterator[Reserve]:
    async def reserve(index: int) -> None:
        await redis_py_reservation(client, cell, index)

    yield reserve


@asynccontextmanager
async def redis_py_with_local_lock(
    client: aioredis.Redis, cell: Cell, duration: float
) -> AsyncIterator[Reserve]:
    local = asyncio.Lock()  # one per key; the benchmark has one key

    async def reserve(index: int) -> None:
        async with local:
            await redis_py_reservation(client, cell, index)

    yield reserve


SETUPS: dict[str, Variant] = {
    ASAGA: asaga_lease,
    REDIS_DEFAULTS: redis_py_defaults,
    REDIS_LOCAL: redis_py_with_local_lock,
}


# --- running a cell ------------------------------------------------------------------------


async def worker(reserve: Reserve, cell: Cell, index: int, end: float) -> None:
    """Reserve until ``end`` (or the count bound); record each reservation's latency."""
    for _ in range(MAX_RESERVATIONS_PER_WORKER):
        started = time.perf_counter()
        if started >= end:
            return
        cell.asking_since[index] = started
        await reserve(index)
        cell.asking_since[index] = None
        cell.latencies.append(time.perf_counter() - started)


async def open_connections(client: aioredis.Redis, count: int) -> None:
    """Open up to ``count`` pooled connections (concurrent PINGs), so none is opened timed."""

    async def ping() -> None:
        await client.ping()

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(ping)


async def run_cell(
    variant: str, client: aioredis.Redis, run_prefix: str, concurrency: int, duration: float
) -> Row:
    slug = "".join(ch if ch.isalnum() else "-" for ch in variant.lower())
    cell = Cell(
        f"{run_prefix}{slug}:c{concurrency}:",
        concurrency,
        acquired=[0] * concurrency,
        asking_since=[None] * concurrency,
    )
    await client.set(cell.stock_key, INITIAL_STOCK)
    await open_connections(client, concurrency)
    async with SETUPS[variant](client, cell, duration) as reserve:
        cpu = time.process_time()
        started = time.perf_counter()
        end = started + duration
        async with anyio.create_task_group() as tg:
            for index in range(concurrency):
                tg.start_soon(worker, reserve, cell, index, end)
            await anyio.sleep(duration)
            stopped = time.perf_counter()
            timing = Timing(stopped - started, time.process_time() - cpu, unfinished(cell, stopped))
            tg.cancel_scope.cancel()  # waiters stop; holders finish (shielded), release
        timing.stop = time.perf_counter() - stopped
    final = await read_stock(client, cell)
    return summarize(variant, cell, timing, final)


def unfinished(cell: Cell, now: float) -> float | None:
    """The longest wait (or hold) still in progress at ``now``, in seconds."""
    waits = [now - since for since in cell.asking_since if since is not None]
    return max(waits, default=None)


def summarize(variant: str, cell: Cell, timing: Timing, final_stock: int) -> Row:
    ordered = sorted(cell.latencies)
    seconds = timing.seconds
    return Row(
        variant=variant,
        concurrency=cell.concurrency,
        seconds=round(seconds, 3),
        reservations=cell.reservations,
        per_second=cell.reservations / seconds,
        p50_ms=percentile_ms(ordered, 0.50),
        p99_ms=percentile_ms(ordered, 0.99),
        max_ms=ordered[-1] * 1000 if ordered else None,
        starved=sum(1 for count in cell.acquired if count == 0),
        oversell=cell.reservations - (INITIAL_STOCK - final_stock),
        stale_writes=cell.stale_writes,
        lease_errors=cell.lease_errors,
        interrupted=cell.interrupted,
        acquisitions_min=min(cell.acquired),
        acquisitions_max=max(cell.acquired),
        unfinished_wait_max_ms=None if timing.unfinished is None else timing.unfinished * 1000,
        cpu_us_per_reservation=timing.cpu / cell.reservations * 1e6 if cell.reservations else None,
        cpu_busy=round(timing.cpu / seconds, 3),
        stop_ms=round(timing.stop * 1000, 1),
    )


def percentile_ms(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] * 1000


def make_client(url: str) -> aioredis.Redis:
    """The measured client: a large pool, redis-py's default (no) socket timeout."""
    return aioredis.Redis.from_url(url, max_connections=MAX_CONNECTIONS, socket_connect_timeout=2.0)


async def run_all(url: str, run_prefix: str, levels: Sequence[int], duration: float) -> list[Row]:
    """Every cell, C by C, the variants interleaved (so that drift in the machine's speed
    hits them alike); one client per variant for the whole run."""
    rows: list[Row] = []
    async with AsyncExitStack() as stack:
        clients = {}
        for variant in VARIANTS:
            clients[variant] = make_client(url)
            stack.push_async_callback(close_client, clients[variant])
        for concurrency in levels:
            for variant in VARIANTS:
                row = await run_cell(variant, clients[variant], run_prefix, concurrency, duration)
                print(
                    f"  {variant:30} C={concurrency:<5} {row.per_second:9,.0f} res/s",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    rows.sort(key=lambda r: (VARIANTS.index(r.variant), r.concurrency))
    return rows


async def close_client(client: aioredis.Redis) -> None:
    with anyio.CancelScope(shield=True):
        await client.aclose()


async def delete_keys(url: str, run_prefix: str) -> int:
    """Delete every key of this run (SCAN by prefix, bounded rounds)."""
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    deleted = 0
    try:
        cursor = 0
        for _ in range(CLEANUP_MAX_ROUNDS):
            cursor, keys = await client.scan(cursor, match=f"{run_prefix}*", count=CLEANUP_BATCH)
            if keys:
                deleted += await client.delete(*keys)
            if cursor == 0:
                break
    finally:
        await client.aclose()
    return deleted


# --- reporting -----------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    lines = [
        "| variant | C | res/s | p50 ms | p99 ms | max ms | starved | oversell |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r.variant} | {r.concurrency} | {r.per_second:,.0f} | {ms(r.p50_ms)} "
        f"| {ms(r.p99_ms)} | {ms(r.max_ms)} | {r.starved} | {r.oversell} |"
        for r in rows
    ]
    return "\n".join(lines)


def verdicts(rows: Sequence[Row]) -> dict[str, Any]:
    """Ratios at the highest C measured, and the starvation/oversell checks of asaga."""
    top = max(r.concurrency for r in rows)
    at_top = {r.variant: r for r in rows if r.concurrency == top}
    asaga_rows = [r for r in rows if r.variant == ASAGA]
    vs_defaults = _ratio(at_top.get(ASAGA), at_top.get(REDIS_DEFAULTS))
    vs_local = _ratio(at_top.get(ASAGA), at_top.get(REDIS_LOCAL))
    return {
        "concurrency": top,
        "asaga_vs_defaults": vs_defaults,
        "asaga_vs_defaults_met": vs_defaults is not None and vs_defaults >= TARGET_VS_DEFAULTS,
        "asaga_vs_local_lock": vs_local,
        "asaga_vs_local_lock_met": vs_local is not None and vs_local >= TARGET_VS_LOCAL,
        "asaga_starved": sum(r.starved for r in asaga_rows),
        "asaga_oversell": sum(abs(r.oversell) for r in asaga_rows),
        "oversell_by_variant": {
            v: sum(abs(r.oversell) for r in rows if r.variant == v) for v in VARIANTS
        },
    }


def _ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    if numerator is None or denominator is None or denominator.per_second == 0:
        return None
    return numerator.per_second / denominator.per_second


def verdict_lines(result: dict[str, Any]) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def times(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    top = result["concurrency"]
    lines = [
        f"At C={top}:"
        + ("" if top == 1000 else " (the targets are set for C=1000; this run stops lower)"),
        f"- {ASAGA} / {REDIS_DEFAULTS} = {times(result['asaga_vs_defaults'])} "
        f"(target >= {TARGET_VS_DEFAULTS:g}x): {met(result['asaga_vs_defaults_met'])}",
        f"- {ASAGA} / {REDIS_LOCAL} = {times(result['asaga_vs_local_lock'])} "
        f"(target >= {TARGET_VS_LOCAL:g}x): {met(result['asaga_vs_local_lock_met'])}",
        f"- {ASAGA} starved coroutines, all cells = {result['asaga_starved']} "
        f"(target 0): {met(result['asaga_starved'] == 0)}",
        f"- {ASAGA} oversell, all cells = {result['asaga_oversell']} "
        f"(target 0): {met(result['asaga_oversell'] == 0)}",
    ]
    return "\n".join(lines)


async def redis_info(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {key: info.get(key) for key in ("redis_version", "redis_mode", "os", "arch_bits")}


def machine_info(server: dict[str, Any]) -> dict[str, Any]:
    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "redis_server": server,
        "versions": {name: package(name) for name in ("asaga", "redis", "hiredis", "anyio")},
        "hiredis_available": HIREDIS_AVAILABLE,
        "asaga_commit": git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# --- main ----------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> int:
    levels = QUICK_CONCURRENCY if args.quick else FULL_CONCURRENCY
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 3.0)
    run_prefix = f"bench-lock:{secrets.token_hex(4)}:"
    server = await redis_info(args.redis_url)
    started = time.perf_counter()
    try:
        rows = await run_all(args.redis_url, run_prefix, levels, duration)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await delete_keys(args.redis_url, run_prefix)
    took = time.perf_counter() - started
    result = verdicts(rows)
    print()
    print(table(rows))
    print()
    print(verdict_lines(result))
    write_json(
        args.json,
        {
            "benchmark": "lock_contention",
            "quick": args.quick,
            "seconds": round(took, 1),
            "parameters": {
                "duration": duration,
                "concurrency": list(levels),
                "initial_stock": INITIAL_STOCK,
                "lock_ttl": LOCK_TTL,
                "max_connections": MAX_CONNECTIONS,
                "socket_timeout": None,
                "critical_bound": CRITICAL_BOUND,
                "redis_url": args.redis_url,
            },
            "targets": {
                "asaga_vs_defaults": TARGET_VS_DEFAULTS,
                "asaga_vs_local_lock": TARGET_VS_LOCAL,
            },
            "verdicts": result,
            "machine": machine_info(server),
            "rows": [asdict(row) for row in rows],
        },
    )
    print(f"\n{len(rows)} cells in {took:.0f} s; JSON written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s per cell, C in 1, 10, 100")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 3; quick 1)")
    parser.add_argument("--redis-url", default=DEFAULT_URL, help=f"default: {DEFAULT_URL}")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    args = parser.parse_args(argv)
    if args.duration is not None and not 0 < args.duration <= 60:
        parser.error("--duration must be in (0, 60] seconds")
    return anyio.run(benchmark, args, backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
