"""Lock contention on one hot product: asaga's Redis lease and atomic path vs. the alternatives.

The scenario
------------
One product (one hot key) whose stock lives in Redis, and C coroutines per process that each
reserve one unit, again and again, for a fixed duration (C = 1, 10, 100, 1000). The stock
starts at 10^9, so it never runs out and never needs topping up: every attempt that gets
through reserves exactly one unit, and ``oversell`` = reservations reported to callers -
units that left the stock is exact.

The variants
------------
Read-check-write under a lock (``GET stock``; if > 0, ``SET stock - 1``):

- ``asaga lease (raw)``: :class:`asaga.locks.RedisLockProvider`, ``locks.lease("sku",
  ttl=..., wait=duration + 5)``, the write through ``locks.fenced(lease, ("SET", ...))``,
  which Redis refuses if a newer lease was granted (``stale rejected``).
- ``asaga lease via InventorySaga``: the inventory example's ``InventorySaga`` (reserve 1)
  with a ``RedisInventoryStore`` and a ``RedisLockProvider``: the saga's lock path
  (product, availability, ``perform`` under ``Lock("inventory:{product_id}", ttl=5,
  wait=10)`` with the store's fenced ``apply`` script, which checks the counts and returns
  the product, log, replenishment check on what ``apply`` returned, notify to a stub).
  Three store round trips (``HGETALL``, the ``apply`` script, ``XADD``) plus the lease's
  own, and six steps per reservation, not two commands.
- ``redis-py Lock (defaults)``: a new ``client.lock(name, timeout=ttl)`` per reservation
  (redis-py keeps its token in a ``thread_local`` shared by every task using one object);
  otherwise defaults: it polls ``SET NX`` every 100 ms, with no bound on the wait.
- ``redis-py Lock (sleep=0.001)``: the same, polling every millisecond.
- ``redis-py Lock + asyncio.Lock``: the defaults behind one in-process ``asyncio.Lock`` per
  key (in-process single flight).
- ``pottery AIORedlock``: a new ``AIORedlock(key=..., masters={client},
  auto_release_time=ttl)`` per reservation (retries after a random 0-200 ms); only when
  the ``bench`` extra is installed, else skipped with a note.

Without a lock:

- ``WATCH/MULTI``: ``WATCH stock``, ``GET``, ``MULTI``/``SET``/``EXEC``; a ``WatchError``
  retries at once, up to ``MAX_WATCH_ATTEMPTS`` times (then the reservation gives up,
  counted in the JSON's ``errors``).
- ``atomic Lua (raw)``: one ``EVALSHA`` of "decrement if > 0" (:data:`DECREMENT`).
- ``atomic store calls (no saga)``: what ``AtomicReservationSaga`` does, hand-written:
  ``store.reserve(id, sku, 1, ttl)`` (one ``EVALSHA``: the atomic, idempotent script that
  checks the stock, reserves, indexes the reservation and appends its log entry, returning
  the entry's id), then notify (a stub) keyed by that id. A diagnostic: the same Redis
  call as the saga, so the gap between the two is the framework's own cost.
- ``atomic via AtomicReservationSaga``: ``AtomicReservationSaga.run(...)`` with a unique
  reservation id per run: two steps, ``reserve`` (that one ``EVALSHA``) and ``notify``.

Modes
-----
- one process (``--processes 1``): the table above, C coroutines in this process;
- two processes (``--processes 2``): a second OS process (``multiprocessing``, spawn) runs
  the same cell at the same time against the same keys, C coroutines in each (2C in all);
  reservations/s, latencies and starvation are aggregated over both;
- stall injection (``--stall``): two processes, C=100 each, every lease's TTL 100 ms, and
  1% of holders block their event loop 150 ms (``time.sleep``) between their read and their
  write, so their lease expires and the other process takes the key meanwhile. A plain lock
  then writes a stale value (``oversell`` > 0); asaga's fenced write is refused (``stale
  rejected``) and nothing is oversold. Variants without a lock are not run in this mode.

Every cell uses its own keys under a random run prefix ``bench-lock:<hex>:`` (pottery's under
``redlock:bench-lock:<hex>:``), deleted after the cell and again at the end. Each process
uses one ``redis.asyncio`` client per cell (hiredis parser when installed) with a pool of up
to ``MAX_CONNECTIONS`` and ``socket_timeout=None``, set explicitly (redis-py 8's default
is 5 s, and a socket timeout makes redis-py wrap every command in ``asyncio.wait_for``,
a task per send); C concurrent PINGs open the connections before timing. structlog is set
to ERROR, so asaga's events are built (hooks would see them) but not rendered.

Stopping a cell: at the end of the duration, workers start no new reservation; those in
flight get ``DRAIN_BOUND`` seconds to finish, then the rest are cancelled. A started
read-check-write is shielded (``CRITICAL_BOUND``), and a saga unwinds itself, so the stock
accounting is exact. ``res/s`` counts reservations completed within the duration.

How to read the results
-----------------------
- ``res/s``: reservations completed per second (both processes together in 2-process mode).
- ``p50/p99/max ms``: one reservation, from asking for the lock (or starting the saga) to
  done, queueing included; completed reservations only.
- ``starved``: coroutines that never completed a reservation in the cell.
- ``oversell``: must be 0. ``lost leases``: holders whose lease expired or was taken over
  while held (asaga: found by renewal or by a refused write; redis-py and pottery: the
  release found the lock no longer theirs). ``stale rejected``: writes refused by fencing
  (only asaga fences; ``-`` where the variant cannot tell).

Targets (ratios from the same run, at C=1000, one process): asaga lease >= 5x redis-py
defaults, 0 starved, p99 <= 1 s; atomic via saga >= 0.85x raw Lua. Verdict lines say
whether each is met. Absolute numbers depend on the machine; compare ratios.

Ceiling: when ``redis-benchmark`` is on PATH, ``redis-benchmark -n 100000 -c 50 -q`` runs
``EVALSHA`` of the decrement script (and of the store's reservation script with random
ids, its five keys and a JSON log entry, so each call also appends to the log), loaded
with ``SCRIPT LOAD``: what the server alone can do, printed beside the atomic path.

Usage::

    python benchmarks/lock_contention.py            # everything, about 6 minutes
    python benchmarks/lock_contention.py --quick    # 1 process, C <= 100, 0.5 s cells
    python benchmarks/lock_contention.py --processes 2 --concurrency 1000
    python benchmarks/lock_contention.py --stall --only "asaga lease (raw)" --only defaults

It prints Markdown tables and writes ``benchmarks/results/lock_contention.json`` and the
plot ``benchmarks/results/lock_contention.png`` (``--quick``: ``lock_contention-quick.json``
and no plot unless ``--plot``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `examples` is not installed: import it from the checkout
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import anyio.to_thread  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
import structlog  # noqa: E402
from redis.exceptions import LockError, WatchError  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from asaga import SagaFailed  # noqa: E402
from asaga.locks import (  # noqa: E402
    Lease,
    LeaseLost,
    LeaseTimeout,
    RedisLockProvider,
    StaleWrite,
)
from examples.inventory import (  # noqa: E402
    AtomicReservationSaga,
    InsufficientStock,
    InventorySaga,
    Notifier,
    Product,
    RedisInventoryStore,
)
from examples.inventory import store as inventory_store  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS = RESULTS_DIR / "lock_contention.json"
QUICK_RESULTS = RESULTS_DIR / "lock_contention-quick.json"
PLOT = RESULTS_DIR / "lock_contention.png"
DEFAULT_URL = "redis://127.0.0.1:6379/0"

INITIAL_STOCK = 10**9
"""Large enough never to run out: every reservation that gets through takes one unit."""
SKU = "hot-sku"
LOCK_TTL = 5.0
STALL_TTL = 0.1
STALL_SECONDS = 0.15
STALL_RATE = 0.01
STALL_CONCURRENCY = 100
HOLD_SECONDS = 900.0
"""Expiry of an atomic-path reservation (never reached in a cell)."""
MAX_CONNECTIONS = 2000
SOCKET_TIMEOUT = 5.0
"""Only for the set-up and clean-up clients (see the docstring for the measured ones)."""
CRITICAL_BOUND = 10.0
"""Seconds a started read-check-write may take to finish once its cell is stopping."""
DRAIN_BOUND = 1.0
"""Seconds in-flight reservations get to finish after a cell's duration, before cancel."""
START_LEAD = 0.6
"""Seconds between sending a cell to the second process and both starting it."""
CHILD_REPLY_BOUND = 120.0
CHILD_IDLE_BOUND = 900.0
MAX_CHILD_COMMANDS = 10_000
MAX_RESERVATIONS_PER_WORKER = 1_000_000
"""Count bound of a worker's loop (the cell's duration is the time bound)."""
MAX_WATCH_ATTEMPTS = 1_000
CLEANUP_BATCH = 500
CLEANUP_MAX_ROUNDS = 10_000
BENCHMARK_BOUND = 120.0
"""Seconds one redis-benchmark run may take."""

FULL_CONCURRENCY = (1, 10, 100, 1000)
QUICK_CONCURRENCY = (1, 10, 100)
TWO_PROCESS_CONCURRENCY = (10, 100, 1000)
"""The 2-process section's default C values (C=1 adds little; it keeps the run < 8 min)."""
FULL_DURATION = 3.0
QUICK_DURATION = 0.5

LEASE = "asaga lease (raw)"
LEASE_SAGA = "asaga lease via InventorySaga"
REDIS_DEFAULTS = "redis-py Lock (defaults)"
REDIS_FAST_POLL = "redis-py Lock (sleep=0.001)"
REDIS_LOCAL = "redis-py Lock + asyncio.Lock"
POTTERY = "pottery AIORedlock"
WATCH = "WATCH/MULTI"
LUA = "atomic Lua (raw)"
STORE_CALLS = "atomic store calls (no saga)"
ATOMIC_SAGA = "atomic via AtomicReservationSaga"

TARGET_VS_DEFAULTS = 5.0
TARGET_P99_MS = 1000.0
TARGET_SAGA_VS_LUA = 0.85

DECREMENT = """
local stock = tonumber(redis.call('get', KEYS[1]) or '0')
if stock > 0 then
  redis.call('decr', KEYS[1])
  return 1
end
return 0
"""
"""The raw atomic reservation: decrement the stock if it is positive."""

RESERVE_SCRIPT: str = inventory_store._RESERVE
"""The store's atomic reservation script (reserve if available and log it, idempotent
per id)."""

Mode = Literal["1 process", "2 processes", "stall"]


# --- one cell ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellSpec:
    """What a process needs to run its part of one cell (sent to the second process)."""

    variant: str
    mode: str
    concurrency: int
    duration: float
    prefix: str
    ttl: float
    stall_rate: float
    start_at: float
    """time.monotonic() at which to start (system-wide on Linux)."""
    process: int
    url: str

    @property
    def stock_key(self) -> str:
        return f"{self.prefix}stock"

    @property
    def lock_name(self) -> str:
        return f"{self.prefix}lock:sku"

    @property
    def store_prefix(self) -> str:
        return f"{self.prefix}inv:"


@dataclass
class Cell:
    """What the workers of one process's part of a cell share and record."""

    spec: CellSpec
    acquired: list[int]
    """Acquisitions (or completed reservations) per worker: 0 = starved."""
    asking_since: list[float | None]
    rng: random.Random
    live: int = 0
    idle: anyio.Event = field(default_factory=anyio.Event)
    latencies: list[float] = field(default_factory=list)
    reservations: int = 0
    lost_leases: int = 0
    stale_writes: int = 0
    errors: int = 0
    retries: int = 0
    stalls: int = 0
    interrupted: int = 0
    """Reservations cut by CRITICAL_BOUND (the stock accounting may then be off)."""


@dataclass
class Part:
    """One process's result for one cell."""

    reservations: int
    in_window: int
    latencies: list[float]
    acquired: list[int]
    lost_leases: int
    stale_writes: int
    errors: int
    retries: int
    stalls: int
    interrupted: int
    seconds: float
    cpu: float
    unfinished: float | None
    stop: float
    late_start: float


@dataclass(frozen=True)
class Row:
    variant: str
    mode: str
    processes: int
    concurrency: int
    """Coroutines per process."""
    seconds: float
    reservations: int
    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    starved: int
    oversell: int
    lost_leases: int | None
    stale_writes: int | None
    errors: int
    retries: int
    stalls: int
    interrupted: int
    drained: int
    acquisitions_min: int
    acquisitions_max: int
    unfinished_wait_max_ms: float | None
    cpu_us_per_reservation: float | None
    cpu_busy: float
    stop_ms: float
    late_start_ms: float


Reserve = Callable[[int], Awaitable[None]]
"""One reservation attempt by worker ``index``."""

Setup = Callable[[aioredis.Redis, Cell], AbstractAsyncContextManager[Reserve]]
"""Sets a variant up for one cell and yields its ``Reserve``."""


@dataclass(frozen=True)
class Variant:
    name: str
    setup: Setup
    stock: Literal["counter", "product"]
    """Where the stock lives: a plain key (GET/SET, DECR) or a product hash (the store)."""
    leases: bool
    """Whether holders can lose their lease (a lock with a TTL)."""
    fenced: bool
    """Whether stale writes are refused and counted."""
    stallable: bool
    needs: str | None = None
    """A module the variant needs (skipped with a note when missing)."""


# --- shared pieces of the variants -----------------------------------------------------------


@contextmanager
def critical_section(cell: Cell) -> Iterator[None]:
    """Shield a started write from the cell's stop, within CRITICAL_BOUND seconds."""
    with anyio.move_on_after(CRITICAL_BOUND, shield=True) as scope:
        yield
    if scope.cancelled_caught:
        cell.interrupted += 1


def maybe_stall(cell: Cell) -> None:
    """In stall mode, block the whole event loop now and then (a GC pause, a busy CPU)."""
    if cell.spec.stall_rate and cell.rng.random() < cell.spec.stall_rate:
        cell.stalls += 1
        time.sleep(STALL_SECONDS)


async def read_stock(client: aioredis.Redis, spec: CellSpec) -> int:
    value = await client.get(spec.stock_key)
    if value is None:
        raise RuntimeError(f"stock key {spec.stock_key!r} vanished")
    return int(value)


async def read_check_write(client: aioredis.Redis, cell: Cell, index: int) -> None:
    """GET stock; if > 0, SET stock - 1 and count the reservation (plain commands)."""
    cell.acquired[index] += 1
    stock = await read_stock(client, cell.spec)
    maybe_stall(cell)
    if stock > 0:
        await client.set(cell.spec.stock_key, stock - 1)
        cell.reservations += 1


class NullNotifier(Notifier):
    """The sagas' notification service, doing nothing (it is not what is measured)."""

    async def send(self, key: str, message: str) -> None:
        return None


def reservation_ids(spec: CellSpec, index: int) -> Iterator[str]:
    """Unique reservation ids for one worker."""
    for n in range(MAX_RESERVATIONS_PER_WORKER):
        yield f"p{spec.process}w{index}n{n}"


# --- lock variants ---------------------------------------------------------------------------


@asynccontextmanager
async def asaga_lease(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    spec = cell.spec
    wait = spec.duration + 5.0
    async with RedisLockProvider(client, prefix=spec.prefix) as locks:

        async def reserve(index: int) -> None:
            held: Lease | None = None
            try:
                async with locks.lease("sku", ttl=spec.ttl, wait=wait) as lease:
                    held = lease
                    with critical_section(cell):
                        cell.acquired[index] += 1
                        stock = await read_stock(client, spec)
                        maybe_stall(cell)
                        if stock > 0:
                            await locks.fenced(lease, ("SET", spec.stock_key, stock - 1))
                            cell.reservations += 1
            except StaleWrite:
                cell.stale_writes += 1
                cell.lost_leases += 1
            except LeaseLost:
                cell.lost_leases += 1
            except LeaseTimeout:
                cell.errors += 1
            else:
                if held is not None and held.lost:
                    cell.lost_leases += 1

        yield reserve


@asynccontextmanager
async def asaga_lease_saga(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    spec = cell.spec
    async with RedisLockProvider(client, prefix=spec.prefix) as locks:
        store = RedisInventoryStore(client, locks, prefix=spec.store_prefix)
        notifier = NullNotifier()

        async def reserve(index: int) -> None:
            try:
                await InventorySaga.run(
                    product_id=SKU,
                    quantity=1,
                    operation="reserve",
                    store=store,
                    locks=locks,
                    notifier=notifier,
                )
            except SagaFailed as exc:
                count_saga_failure(cell, exc)
            else:
                cell.acquired[index] += 1
                cell.reservations += 1

        yield reserve


def count_saga_failure(cell: Cell, exc: SagaFailed) -> None:
    cause = exc.__cause__
    if isinstance(cause, StaleWrite):
        cell.stale_writes += 1
    if isinstance(cause, LeaseLost):
        cell.lost_leases += 1
    else:
        cell.errors += 1


async def redis_py_reservation(
    client: aioredis.Redis, cell: Cell, index: int, sleep: float = 0.1
) -> None:
    """A fresh redis-py Lock (TTL ``spec.ttl``) around the plain read-check-write."""
    lock = client.lock(cell.spec.lock_name, timeout=cell.spec.ttl, sleep=sleep)
    await lock.acquire()
    with critical_section(cell):  # finish a started reservation, then release
        try:
            await read_check_write(client, cell, index)
        finally:
            try:
                await lock.release()
            except LockError:  # expired, maybe taken by another holder meanwhile
                cell.lost_leases += 1


@asynccontextmanager
async def redis_py_defaults(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    async def reserve(index: int) -> None:
        await redis_py_reservation(client, cell, index)

    yield reserve


@asynccontextmanager
async def redis_py_fast_poll(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    async def reserve(index: int) -> None:
        await redis_py_reservation(client, cell, index, sleep=0.001)

    yield reserve


@asynccontextmanager
async def redis_py_with_local_lock(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    local = asyncio.Lock()  # one per key; the benchmark has one key

    async def reserve(index: int) -> None:
        async with local:
            await redis_py_reservation(client, cell, index)

    yield reserve


@asynccontextmanager
async def pottery_redlock(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    from pottery import AIORedlock, ReleaseUnlockedLock

    logging.getLogger("pottery").setLevel(logging.WARNING)

    async def reserve(index: int) -> None:
        lock = AIORedlock(
            key=cell.spec.lock_name, masters={client}, auto_release_time=cell.spec.ttl
        )
        await lock.acquire()
        with critical_section(cell):
            try:
                await read_check_write(client, cell, index)
            finally:
                try:
                    await lock.release()
                except ReleaseUnlockedLock:
                    cell.lost_leases += 1

    yield reserve


# --- variants without a lock -----------------------------------------------------------------


@asynccontextmanager
async def watch_multi(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    key = cell.spec.stock_key

    async def reserve(index: int) -> None:
        async with client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_WATCH_ATTEMPTS):
                await pipe.watch(key)
                stock = int(await pipe.get(key))
                pipe.multi()
                pipe.set(key, stock - 1)
                try:
                    with critical_section(cell):
                        await pipe.execute()
                        cell.acquired[index] += 1
                        cell.reservations += 1
                    return
                except WatchError:
                    cell.retries += 1
        cell.errors += 1  # gave up

    yield reserve


@asynccontextmanager
async def atomic_lua(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    script = client.register_script(DECREMENT)
    keys = [cell.spec.stock_key]

    async def reserve(index: int) -> None:
        with critical_section(cell):
            if await script(keys=keys):
                cell.acquired[index] += 1
                cell.reservations += 1

    yield reserve


@asynccontextmanager
async def atomic_store_calls(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    store = RedisInventoryStore(client, None, prefix=cell.spec.store_prefix)
    notifier = NullNotifier()
    ids = [reservation_ids(cell.spec, i) for i in range(cell.spec.concurrency)]

    async def reserve(index: int) -> None:
        reservation_id = next(ids[index])
        with critical_section(cell):
            try:
                entry = await store.reserve(reservation_id, SKU, 1, HOLD_SECONDS)
            except InsufficientStock:
                cell.errors += 1
                return
            await notifier.send(entry, f"reserved {SKU}")
            cell.acquired[index] += 1
            cell.reservations += 1

    yield reserve


@asynccontextmanager
async def atomic_saga(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    store = RedisInventoryStore(client, None, prefix=cell.spec.store_prefix)
    notifier = NullNotifier()
    ids = [reservation_ids(cell.spec, i) for i in range(cell.spec.concurrency)]

    async def reserve(index: int) -> None:
        # Shielded from the cell's stop like the raw and hand-written variants' calls, so
        # that all three pay for the same cancel scope.
        with critical_section(cell):
            try:
                await AtomicReservationSaga.run(
                    product_id=SKU,
                    quantity=1,
                    reservation_id=next(ids[index]),
                    store=store,
                    notifier=notifier,
                )
            except SagaFailed as exc:
                count_saga_failure(cell, exc)
            else:
                cell.acquired[index] += 1
                cell.reservations += 1

    yield reserve


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(LEASE, asaga_lease, "counter", leases=True, fenced=True, stallable=True),
        Variant(LEASE_SAGA, asaga_lease_saga, "product", leases=True, fenced=True, stallable=False),
        Variant(REDIS_DEFAULTS, redis_py_defaults, "counter", True, False, stallable=True),
        Variant(REDIS_FAST_POLL, redis_py_fast_poll, "counter", True, False, stallable=True),
        Variant(REDIS_LOCAL, redis_py_with_local_lock, "counter", True, False, stallable=True),
        Variant(POTTERY, pottery_redlock, "counter", True, False, stallable=True, needs="pottery"),
        Variant(WATCH, watch_multi, "counter", leases=False, fenced=False, stallable=False),
        Variant(LUA, atomic_lua, "counter", leases=False, fenced=False, stallable=False),
        Variant(STORE_CALLS, atomic_store_calls, "product", False, False, stallable=False),
        Variant(ATOMIC_SAGA, atomic_saga, "product", False, False, stallable=False),
    )
}


# --- running one process's part of a cell ----------------------------------------------------


async def worker(reserve: Reserve, cell: Cell, index: int, end: float) -> None:
    """Reserve until ``end`` (or the count bound); record each completed one's latency."""
    try:
        for _ in range(MAX_RESERVATIONS_PER_WORKER):
            started = time.perf_counter()
            if started >= end:
                return
            cell.asking_since[index] = started
            before = cell.reservations
            await reserve(index)
            cell.asking_since[index] = None
            if cell.reservations > before:
                cell.latencies.append(time.perf_counter() - started)
    finally:
        cell.live -= 1
        if cell.live == 0:
            cell.idle.set()


async def open_connections(client: aioredis.Redis, count: int) -> None:
    """Open up to ``count`` pooled connections (concurrent PINGs), so none is opened timed."""

    async def ping() -> None:
        await client.ping()

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(ping)


def make_client(url: str) -> aioredis.Redis:
    """The measured client: a large pool, no socket timeout (see the module docstring)."""
    return aioredis.Redis.from_url(
        url, max_connections=MAX_CONNECTIONS, socket_connect_timeout=2.0, socket_timeout=None
    )


async def run_part(spec: CellSpec) -> Part:
    """This process's part of a cell: set up, wait for the start, run, drain, stop."""
    client = make_client(spec.url)
    try:
        cell = Cell(
            spec,
            acquired=[0] * spec.concurrency,
            asking_since=[None] * spec.concurrency,
            rng=random.Random(f"{spec.prefix}{spec.process}"),
        )
        await open_connections(client, spec.concurrency)
        async with VARIANTS[spec.variant].setup(client, cell) as reserve:
            late = time.monotonic() - spec.start_at
            if late < 0:
                await anyio.sleep(-late)
            return await drive(cell, reserve, max(late, 0.0))
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


async def drive(cell: Cell, reserve: Reserve, late: float) -> Part:
    duration = cell.spec.duration
    cell.live = cell.spec.concurrency
    cpu = time.process_time()
    started = time.perf_counter()
    end = started + duration
    async with anyio.create_task_group() as tg:
        for index in range(cell.spec.concurrency):
            tg.start_soon(worker, reserve, cell, index, end)
        await anyio.sleep(duration)
        stopped = time.perf_counter()
        seconds, spent = stopped - started, time.process_time() - cpu
        in_window = cell.reservations
        waiting = unfinished(cell, stopped)
        with anyio.move_on_after(DRAIN_BOUND):
            await cell.idle.wait()  # in-flight reservations finish; no new ones start
        tg.cancel_scope.cancel()  # still waiting: stop; holders finish (shielded), release
    return Part(
        reservations=cell.reservations,
        in_window=in_window,
        latencies=cell.latencies,
        acquired=cell.acquired,
        lost_leases=cell.lost_leases,
        stale_writes=cell.stale_writes,
        errors=cell.errors,
        retries=cell.retries,
        stalls=cell.stalls,
        interrupted=cell.interrupted,
        seconds=seconds,
        cpu=spent,
        unfinished=waiting,
        stop=time.perf_counter() - stopped,
        late_start=late,
    )


def unfinished(cell: Cell, now: float) -> float | None:
    """The longest wait (or hold) still in progress at ``now``, in seconds."""
    waits = [now - since for since in cell.asking_since if since is not None]
    return max(waits, default=None)


# --- the second process ------------------------------------------------------------------------


def configure_logging() -> None:
    """asaga's events are built, and filtered out below ERROR (cancelled runs log warnings)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def child_main(conn: Connection) -> None:
    """The second process: run each cell part it is sent; bounded in commands and idle time."""
    configure_logging()
    for _ in range(MAX_CHILD_COMMANDS):
        if not conn.poll(CHILD_IDLE_BOUND):
            return
        message = conn.recv()
        if message is None:
            return
        try:
            part = anyio.run(run_part, CellSpec(**message), backend="asyncio")
            conn.send({"part": asdict(part)})
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            conn.send({"error": repr(exc)})


class Helper:
    """The second OS process, started once and reused for every 2-process cell."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=child_main, args=(child_conn,), daemon=True)
        self.process.start()
        child_conn.close()

    def send(self, spec: CellSpec) -> None:
        self.conn.send(asdict(spec))

    async def result(self) -> Part:
        ready = await anyio.to_thread.run_sync(self.conn.poll, CHILD_REPLY_BOUND)
        if not ready:
            raise RuntimeError(f"the second process sent nothing in {CHILD_REPLY_BOUND:g} s")
        reply = self.conn.recv()
        if "error" in reply:
            raise RuntimeError(f"the second process failed: {reply['error']}")
        return Part(**reply["part"])

    def close(self) -> None:
        with suppress(OSError):
            self.conn.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()


# --- running a cell ----------------------------------------------------------------------------


async def prepare_stock(url: str, spec: CellSpec, variant: Variant) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    try:
        if variant.stock == "counter":
            await client.set(spec.stock_key, INITIAL_STOCK)
        else:
            store = RedisInventoryStore(client, None, prefix=spec.store_prefix)
            await store.put(Product(sku=SKU, inventory_count=INITIAL_STOCK))
    finally:
        await client.aclose()


async def consumed_stock(url: str, spec: CellSpec, variant: Variant) -> int:
    """Units that left the stock during the cell."""
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    try:
        if variant.stock == "counter":
            return INITIAL_STOCK - await read_stock(client, spec)
        store = RedisInventoryStore(client, None, prefix=spec.store_prefix)
        return (await store.get(SKU)).reserved_count
    finally:
        await client.aclose()


async def run_cell(
    variant: Variant,
    mode: Mode,
    concurrency: int,
    duration: float,
    run_prefix: str,
    url: str,
    helper: Helper | None,
) -> Row:
    slug = "".join(ch if ch.isalnum() else "-" for ch in variant.name.lower())
    stall = mode == "stall"
    spec = CellSpec(
        variant=variant.name,
        mode=mode,
        concurrency=concurrency,
        duration=duration,
        prefix=f"{run_prefix}{slug}:{mode.replace(' ', '')}:c{concurrency}:",
        ttl=STALL_TTL if stall else LOCK_TTL,
        stall_rate=STALL_RATE if stall else 0.0,
        start_at=0.0,
        process=0,
        url=url,
    )
    await prepare_stock(url, spec, variant)
    try:
        parts = await run_parts(spec, helper)
        consumed = await consumed_stock(url, spec, variant)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await delete_keys(url, spec.prefix)
    return summarize(variant, spec, parts, consumed)


async def run_parts(spec: CellSpec, helper: Helper | None) -> list[Part]:
    if helper is None:
        return [await run_part(spec)]
    start_at = time.monotonic() + START_LEAD
    own = CellSpec(**{**asdict(spec), "start_at": start_at})
    helper.send(CellSpec(**{**asdict(own), "process": 1}))
    part = await run_part(own)
    return [part, await helper.result()]


def summarize(variant: Variant, spec: CellSpec, parts: Sequence[Part], consumed: int) -> Row:
    ordered = sorted(latency for part in parts for latency in part.latencies)
    acquired = [count for part in parts for count in part.acquired]
    seconds = max(part.seconds for part in parts)
    cpu = sum(part.cpu for part in parts)
    in_window = sum(part.in_window for part in parts)
    reservations = sum(part.reservations for part in parts)
    waits = [part.unfinished for part in parts if part.unfinished is not None]
    return Row(
        variant=variant.name,
        mode=spec.mode,
        processes=len(parts),
        concurrency=spec.concurrency,
        seconds=round(seconds, 3),
        reservations=in_window,
        per_second=in_window / seconds,
        p50_ms=percentile_ms(ordered, 0.50),
        p99_ms=percentile_ms(ordered, 0.99),
        max_ms=ordered[-1] * 1000 if ordered else None,
        starved=sum(1 for count in acquired if count == 0),
        oversell=reservations - consumed,
        lost_leases=sum(p.lost_leases for p in parts) if variant.leases else None,
        stale_writes=sum(p.stale_writes for p in parts) if variant.fenced else None,
        errors=sum(p.errors for p in parts),
        retries=sum(p.retries for p in parts),
        stalls=sum(p.stalls for p in parts),
        interrupted=sum(p.interrupted for p in parts),
        drained=reservations - in_window,
        acquisitions_min=min(acquired),
        acquisitions_max=max(acquired),
        unfinished_wait_max_ms=max(waits) * 1000 if waits else None,
        cpu_us_per_reservation=cpu / in_window * 1e6 if in_window else None,
        cpu_busy=round(cpu / seconds, 3),
        stop_ms=round(max(p.stop for p in parts) * 1000, 1),
        late_start_ms=round(max(p.late_start for p in parts) * 1000, 1),
    )


def percentile_ms(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] * 1000


@dataclass(frozen=True)
class Plan:
    """Which cells to run."""

    sections: tuple[Mode, ...]
    levels: tuple[int, ...]
    duration: float
    variants: tuple[Variant, ...]
    explicit_levels: bool = False


async def run_all(url: str, run_prefix: str, plan: Plan, helper: Helper | None) -> list[Row]:
    """Every cell; within a section, C by C with the variants interleaved (so that a drift
    in the machine's speed hits them alike)."""
    rows: list[Row] = []
    for mode in plan.sections:
        levels = plan.levels
        if mode == "stall":
            levels = (STALL_CONCURRENCY,)
        elif mode == "2 processes" and not plan.explicit_levels:
            levels = tuple(c for c in plan.levels if c in TWO_PROCESS_CONCURRENCY)
        variants = [v for v in plan.variants if v.stallable or mode != "stall"]
        for concurrency in levels:
            for variant in variants:
                two = helper if mode != "1 process" else None
                row = await run_cell(
                    variant, mode, concurrency, plan.duration, run_prefix, url, two
                )
                print(
                    f"  {mode:11} {variant.name:34} C={concurrency:<5} "
                    f"{row.per_second:9,.0f} res/s  oversell {row.oversell}",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    order = list(VARIANTS)
    rows.sort(key=lambda r: (r.mode, order.index(r.variant), r.concurrency))
    return rows


async def delete_keys(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (and pottery's under ``redlock:<prefix>``)."""
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    deleted = 0
    try:
        for pattern in (f"{prefix}*", f"redlock:{prefix}*"):
            cursor = 0
            for _ in range(CLEANUP_MAX_ROUNDS):
                cursor, keys = await client.scan(cursor, match=pattern, count=CLEANUP_BATCH)
                if keys:
                    deleted += await client.delete(*keys)
                if cursor == 0:
                    break
    finally:
        await client.aclose()
    return deleted


# --- the server's ceiling ----------------------------------------------------------------------


async def ceiling(url: str, run_prefix: str) -> dict[str, Any] | None:
    """redis-benchmark EVALSHA of the reservation scripts, if the binary is on PATH."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    prefix = f"{run_prefix}ceiling:"
    store = RedisInventoryStore(client, None, prefix=f"{prefix}inv:")
    try:
        await client.set(f"{prefix}stock", INITIAL_STOCK)
        await store.put(Product(sku=SKU, inventory_count=INITIAL_STOCK))
        decrement = await client.script_load(DECREMENT)
        reserve = await client.script_load(RESERVE_SCRIPT)
    finally:
        await client.aclose()
    # The script's KEYS, as the store passes them: product hash, reservation hash, expiry
    # zset, reservation index, log stream (all under ``prefix``, deleted below).
    store_keys = store._atomic_keys(SKU)
    # ARGV: id (random), sku, quantity, hold (s), now (epoch s), the log's bound.
    store_args = ["id:__rand_int__", SKU, "1", "900", f"{time.time():.3f}", "1000000"]
    try:
        runs = {
            "decrement": await redis_benchmark(
                binary, url, ["EVALSHA", decrement, "1", f"{prefix}stock"]
            ),
            "store_reserve": await redis_benchmark(
                binary,
                url,
                ["EVALSHA", reserve, str(len(store_keys)), *store_keys, *store_args],
                random_keys=10**9,
            ),
        }
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await delete_keys(url, prefix)
    return {"command": "redis-benchmark -n 100000 -c 50 -q EVALSHA <sha> ...", **runs}


async def redis_benchmark(
    binary: str, url: str, command: Sequence[str], random_keys: int | None = None
) -> float | None:
    """Requests/s of ``command`` from redis-benchmark (None if it failed)."""
    parsed = urlparse(url)
    db = parsed.path.lstrip("/") or "0"
    args = [binary, "-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379)]
    args += ["--dbnum", db, "-n", "100000", "-c", "50", "-q"]
    if parsed.password:
        args += ["-a", parsed.password]
    if random_keys is not None:
        args += ["-r", str(random_keys)]
    try:
        with anyio.fail_after(BENCHMARK_BOUND):
            done = await anyio.run_process([*args, *command], check=False)
    except (OSError, TimeoutError):
        return None
    found = re.findall(r"([\d.]+) requests per second", done.stdout.decode(errors="replace"))
    return float(found[-1]) if found else None


# --- reporting ---------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = [
        "| variant | C | res/s | p50 ms | p99 ms | max ms | starved | oversell "
        "| lost leases | stale rejected |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r.variant} | {r.concurrency} | {r.per_second:,.0f} | {ms(r.p50_ms)} "
        f"| {ms(r.p99_ms)} | {ms(r.max_ms)} | {r.starved} | {r.oversell} "
        f"| {count(r.lost_leases)} | {count(r.stale_writes)} |"
        for r in rows
    ]
    return "\n".join(lines)


def tables(rows: Sequence[Row]) -> str:
    titles = {
        "1 process": "One process",
        "2 processes": "Two processes (C coroutines in each; res/s of both together)",
        "stall": (
            f"Stall injection (two processes, TTL {STALL_TTL * 1000:g} ms, "
            f"{STALL_RATE:.0%} of holders block their loop {STALL_SECONDS * 1000:g} ms)"
        ),
    }
    out = []
    for mode, title in titles.items():
        section = [r for r in rows if r.mode == mode]
        if section:
            out.append(f"### {title}\n\n{table(section)}")
    return "\n\n".join(out)


def find(rows: Sequence[Row], variant: str, mode: str, concurrency: int) -> Row | None:
    for row in rows:
        if (row.variant, row.mode, row.concurrency) == (variant, mode, concurrency):
            return row
    return None


def verdicts(rows: Sequence[Row]) -> dict[str, Any]:
    """The targets at the highest C of the 1-process section, and the oversell checks."""
    single = [r for r in rows if r.mode == "1 process"]
    top = max((r.concurrency for r in single), default=0)

    def at_top(variant: str) -> Row | None:
        return find(rows, variant, "1 process", top)

    result: dict[str, Any] = {"concurrency": top}
    for name, key in ((LEASE, "lease_raw"), (LEASE_SAGA, "lease_saga")):
        row = at_top(name)
        vs = _ratio(row, at_top(REDIS_DEFAULTS))
        result[key] = {
            "vs_defaults": vs,
            "vs_defaults_met": vs is not None and vs >= TARGET_VS_DEFAULTS,
            "vs_local_lock": _ratio(row, at_top(REDIS_LOCAL)),
            "starved": None if row is None else row.starved,
            "p99_ms": None if row is None else row.p99_ms,
            "p99_met": row is not None and row.p99_ms is not None and row.p99_ms <= TARGET_P99_MS,
        }
    vs_lua = _ratio(at_top(ATOMIC_SAGA), at_top(LUA))
    result["atomic_saga_vs_lua"] = vs_lua
    result["atomic_saga_vs_lua_met"] = vs_lua is not None and vs_lua >= TARGET_SAGA_VS_LUA
    result["atomic_saga_vs_store_calls"] = _ratio(at_top(ATOMIC_SAGA), at_top(STORE_CALLS))
    result["oversell"] = {
        mode: {
            v: sum(r.oversell for r in rows if (r.variant, r.mode) == (v, mode)) for v in VARIANTS
        }
        for mode in ("1 process", "2 processes", "stall")
    }
    result["asaga_starved_all_cells"] = sum(
        r.starved for r in rows if r.variant in (LEASE, LEASE_SAGA) and r.mode != "stall"
    )
    return result


def _ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    if numerator is None or denominator is None or denominator.per_second == 0:
        return None
    return numerator.per_second / denominator.per_second


def verdict_lines(result: dict[str, Any], rows: Sequence[Row]) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def times(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    top = result["concurrency"]
    if not top:
        return "No 1-process cells: the targets are not evaluated."
    lines = [
        f"At C={top}, one process:"
        + ("" if top == 1000 else " (the targets are set for C=1000; this run stops lower)")
    ]
    for name, key in ((LEASE, "lease_raw"), (LEASE_SAGA, "lease_saga")):
        r = result[key]
        p99 = "n/a" if r["p99_ms"] is None else f"{r['p99_ms']:,.0f} ms"
        lines += [
            f"- {name} / {REDIS_DEFAULTS} = {times(r['vs_defaults'])} "
            f"(target >= {TARGET_VS_DEFAULTS:g}x): {met(r['vs_defaults_met'])}; "
            f"starved {r['starved']} (target 0): {met(r['starved'] == 0)}; "
            f"p99 {p99} (target <= {TARGET_P99_MS:,.0f} ms): {met(r['p99_met'])}",
        ]
    lines += [
        f"- {ATOMIC_SAGA} / {LUA} = {times(result['atomic_saga_vs_lua'])} "
        f"(target >= {TARGET_SAGA_VS_LUA:g}x): {met(result['atomic_saga_vs_lua_met'])}",
        f"- {ATOMIC_SAGA} / {STORE_CALLS} = {times(result['atomic_saga_vs_store_calls'])} "
        "(the framework's own share: same Redis calls, hand-written)",
    ]
    oversold = [
        f"{r.variant} ({r.mode}, C={r.concurrency}): {r.oversell}" for r in rows if r.oversell
    ]
    lines.append("- oversell: " + ("none in any cell" if not oversold else "; ".join(oversold)))
    return "\n".join(lines)


def ceiling_lines(found: dict[str, Any] | None, rows: Sequence[Row]) -> str:
    if found is None:
        return "Ceiling: skipped (--quick, --no-ceiling, or no redis-benchmark on PATH)."
    best = max((r.per_second for r in rows if r.variant == LUA), default=None)
    saga = max((r.per_second for r in rows if r.variant == ATOMIC_SAGA), default=None)

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}/s"

    return "\n".join(
        [
            "Ceiling (redis-benchmark -n 100000 -c 50, C client, EVALSHA):",
            f"- decrement script: {rate(found['decrement'])}; best {LUA}: {rate(best)}",
            f"- store reservation script: {rate(found['store_reserve'])}; "
            f"best {ATOMIC_SAGA}: {rate(saga)}",
        ]
    )


def plot(rows: Sequence[Row], path: Path) -> str:
    """Throughput and p99 vs C (log scales), one panel row per mode with levels."""
    try:
        import matplotlib
    except ImportError:
        return "Plot: matplotlib is not installed (pip install -e '.[bench]'); skipped."
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("1 process", "2 processes") if any(r.mode == m for r in rows)]
    if not modes:
        return "Plot: no 1- or 2-process cells to plot; skipped."
    fig, axes = plt.subplots(len(modes), 2, figsize=(13, 5 * len(modes)), squeeze=False)
    for line, mode in enumerate(modes):
        for variant in VARIANTS:
            cells = [r for r in rows if r.mode == mode and r.variant == variant]
            if not cells:
                continue
            style = "-" if variant.startswith(("asaga", "atomic via")) else "--"
            xs = [r.concurrency for r in cells]
            axes[line][0].plot(
                xs, [max(r.per_second, 0.1) for r in cells], style, marker="o", label=variant
            )
            p99 = [(r.concurrency, r.p99_ms) for r in cells if r.p99_ms is not None]
            axes[line][1].plot(
                [x for x, _ in p99], [y for _, y in p99], style, marker="o", label=variant
            )
        for ax, ylabel in zip(axes[line], ("reservations/s", "p99 latency (ms)"), strict=True):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("C (coroutines per process)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{ylabel}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
        axes[line][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"Plot written to {path}"


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

    names = ("asaga", "redis", "hiredis", "anyio", "msgspec", "structlog", "pottery", "matplotlib")
    return {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "redis_server": server,
        "versions": {name: package(name) for name in names},
        "hiredis_available": HIREDIS_AVAILABLE,
        "asaga_commit": git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        return None
    return None


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


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# --- main --------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> tuple[Plan, list[str]]:
    """The cells to run, and notes about variants skipped."""
    sections: list[Mode]
    if args.processes is None and not args.stall:
        sections = ["1 process"] if args.quick else ["1 process", "2 processes", "stall"]
    else:
        wanted = args.processes or []
        sections = [m for n, m in ((1, "1 process"), (2, "2 processes")) if n in wanted]
        if args.stall:
            sections.append("stall")
    notes = []
    variants = []
    for variant in VARIANTS.values():
        if args.only and not any(s.lower() in variant.name.lower() for s in args.only):
            continue
        if variant.needs and importlib.util.find_spec(variant.needs) is None:
            notes.append(
                f"Note: {variant.name} skipped: {variant.needs} is not installed "
                "(pip install -e '.[bench]')."
            )
            continue
        variants.append(variant)
    levels = tuple(args.concurrency or (QUICK_CONCURRENCY if args.quick else FULL_CONCURRENCY))
    duration = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    plan = Plan(tuple(sections), levels, duration, tuple(variants), bool(args.concurrency))
    return plan, notes


async def benchmark(args: argparse.Namespace, helper: Helper | None, plan: Plan) -> int:
    run_prefix = f"bench-lock:{secrets.token_hex(4)}:"
    server = await redis_info(args.redis_url)
    started = time.perf_counter()
    try:
        rows = await run_all(args.redis_url, run_prefix, plan, helper)
        skip = args.no_ceiling or args.quick
        found = None if skip else await ceiling(args.redis_url, run_prefix)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            await delete_keys(args.redis_url, run_prefix)
    took = time.perf_counter() - started
    result = verdicts(rows)
    print()
    print(tables(rows))
    print()
    print(verdict_lines(result, rows))
    print()
    print(ceiling_lines(found, rows))
    json_path = args.json or (QUICK_RESULTS if args.quick else RESULTS)
    plot_path = args.plot or (None if args.quick else PLOT)
    if plot_path is not None:
        print(plot(rows, plot_path))
    write_json(json_path, report(args, plan, took, result, found, server, rows))
    print(f"\n{len(rows)} cells in {took:.0f} s; JSON written to {json_path}")
    return 0


def report(
    args: argparse.Namespace,
    plan: Plan,
    took: float,
    result: dict[str, Any],
    found: dict[str, Any] | None,
    server: dict[str, Any],
    rows: Sequence[Row],
) -> dict[str, Any]:
    return {
        "benchmark": "lock_contention",
        "quick": args.quick,
        "seconds": round(took, 1),
        "parameters": {
            "sections": list(plan.sections),
            "duration": plan.duration,
            "concurrency": list(plan.levels),
            "stall": {
                "concurrency": STALL_CONCURRENCY,
                "ttl": STALL_TTL,
                "stall_seconds": STALL_SECONDS,
                "rate": STALL_RATE,
            },
            "initial_stock": INITIAL_STOCK,
            "lock_ttl": LOCK_TTL,
            "max_connections": MAX_CONNECTIONS,
            "socket_timeout": None,
            "critical_bound": CRITICAL_BOUND,
            "drain_bound": DRAIN_BOUND,
            "redis_url": args.redis_url,
        },
        "targets": {
            "lease_vs_defaults": TARGET_VS_DEFAULTS,
            "lease_p99_ms": TARGET_P99_MS,
            "atomic_saga_vs_lua": TARGET_SAGA_VS_LUA,
        },
        "verdicts": result,
        "ceiling": found,
        "machine": machine_info(server),
        "rows": [asdict(row) for row in rows],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 process, C <= 100, 0.5 s cells")
    parser.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        nargs="+",
        help="run the 1- and/or 2-process sections only (default: both, and the stall cells)",
    )
    parser.add_argument("--stall", action="store_true", help="run the stall-injection cells")
    parser.add_argument("--concurrency", type=int, nargs="+", help="C values (per process)")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 3; quick 0.5)")
    parser.add_argument("--only", action="append", help="variants whose name contains this")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip redis-benchmark (quick: skipped)"
    )
    parser.add_argument("--redis-url", default=DEFAULT_URL, help=f"default: {DEFAULT_URL}")
    parser.add_argument("--json", type=Path, help=f"default: {RESULTS} (quick: {QUICK_RESULTS})")
    parser.add_argument("--plot", type=Path, help=f"default: {PLOT} (quick: none)")
    args = parser.parse_args(argv)
    if args.duration is not None and not 0 < args.duration <= 60:
        parser.error("--duration must be in (0, 60] seconds")
    if args.concurrency and not all(1 <= c <= 2000 for c in args.concurrency):
        parser.error("--concurrency values must be in [1, 2000]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    plan, notes = make_plan(args)
    for note in notes:
        print(note)
    helper = Helper() if any(m != "1 process" for m in plan.sections) else None
    try:
        return anyio.run(benchmark, args, helper, plan, backend="asyncio")
    finally:
        if helper is not None:
            helper.close()


if __name__ == "__main__":
    sys.exit(main())
