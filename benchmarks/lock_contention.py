"""Lock contention on one hot product: asaga's Redis lease and atomic path vs. the alternatives.

The scenario
------------
One product (one hot key) whose stock lives in Redis, and C coroutines per process that each
reserve one unit, again and again, for a fixed duration (C = 1, 10, 100, 1000). The stock
starts at 10^9, so it never runs out and never needs topping up: every attempt that gets
through reserves exactly one unit, and ``oversell`` = reservations reported to callers -
units that left the stock is exact. Issue 17 ("the hot SKU") sets this scenario's targets
(below).

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
- ``read-check-write, no lock (1 coroutine)``: the ceiling of the lock variants: what
  ``asaga lease (raw)`` does under its lease (``GET stock``; if > 0, the write in one round
  trip: ``MULTI``/``SET``/``EXEC`` pipelined, where the lease's is its fenced script), with
  no lock, by **one coroutine per process whatever C** (so it is correct; its ``C`` column
  is the C of the cell it ran beside). Its C=1 cell is also "the same work with no lock"
  of the uncontended lease. Not run with two processes (two unlocked writers would
  oversell).

The inventory store's atomic path (``RedisInventoryStore.reserve``: one script checks the
stock, reserves, indexes the reservation and appends its ``reserve`` entry to the log,
idempotent per reservation id), with and without group commit (the store's
``group_commit``: concurrent calls on one product in one process go together in one
script call, each answered alone):

- ``atomic store calls, per call (no saga)``: what ``AtomicReservationSaga`` does,
  hand-written, on a store with ``group_commit=False``: ``store.reserve(id, sku, 1, ttl)``
  (one ``EVALSHA`` per call, as many in flight as callers), then notify (a stub) keyed by
  the entry's id. A diagnostic: the same Redis call as the saga, so the gap between the
  two is the framework's own cost.
- ``atomic via AtomicReservationSaga, per call``: ``AtomicReservationSaga.run(...)`` with a
  unique reservation id per run on that store: two steps, ``reserve`` (that one
  ``EVALSHA``) and ``notify``.
- ``group commit store calls (no saga)``: the same hand-written calls on a store with group
  commit (the store's default; ``max_group`` 256): one script call in flight per product
  per process, carrying the calls that arrived meanwhile.
- ``atomic via AtomicReservationSaga (group commit)``: the saga on that store.
- ``group commit store calls, 8 buckets (no saga)``: the hand-written calls on a store
  that splits the product over 8 stock buckets (keys of their own hash tags), one group
  per bucket, so up to 8 script calls of the product in flight per process. Buckets are
  for Redis Cluster (each bucket on its own slot, spread over the nodes); on the one node
  here they spread nothing, and the cell shows what they cost.

Every store-based variant builds its store from a :class:`StoreConfig` (with the log bound
at its maximum, so the log is never trimmed): a new store option to compare is one more
field there and one more variant.

Modes
-----
- one process (``--processes 1``): the table above, C coroutines in this process;
- two processes (``--processes 2``): a second OS process (``multiprocessing``, spawn) runs
  the same cell at the same time against the same keys, C coroutines in each (2C in all);
  reservations/s, latencies and starvation are aggregated over both, and the counts and
  log checked once for both. Every variant but the one-coroutine ceiling runs here; with
  group commit, each process groups its own calls (one script call in flight per process);
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
- ``oversell``: must be 0. ``conserved`` (store-based variants): reservations granted
  (reported to callers, drained ones included) == units taken from the product (its
  ``reserved_count``) == units the store's log says were reserved (``reserve`` entries
  minus ``release`` ones, read back in full after the cell); ``-`` for the others. The
  script exits 1 (after printing and writing its JSON) if any cell oversold or was not
  conserved, except the oversell of a lock without fencing in stall mode, which is that
  mode's point. ``lost leases``: holders whose lease expired or was taken over
  while held (asaga: found by renewal or by a refused write; redis-py and pottery: the
  release found the lock no longer theirs). ``stale rejected``: writes refused by fencing
  (only asaga fences; ``-`` where the variant cannot tell).

Targets (ratios from the same run, at C=1000, one process unless said), each with a verdict
line (met, MISSED, or not measured when a cell it needs was not run) and an entry in the
JSON's ``verdicts``:

- asaga lease >= 5x redis-py defaults, 0 starved, p99 <= 1 s (both lease variants);
  ``atomic via AtomicReservationSaga, per call`` >= 0.85x raw Lua;
- issue 17, the hot SKU (``verdicts.hot_sku``), where "the per-call Lua loop" is
  ``atomic Lua (raw)``: group-commit store calls >= 40,000/s and >= 4x it; the saga with
  group commit >= 20,000/s and >= 2x it; the saga vs the same store calls by hand >= 0.85x
  (group commit, and per call); 2 processes vs 1 (same C per process) >= 1.5x for both
  group-commit variants; their p99 <= 100 ms; ``asaga lease (raw)`` >= 0.9x the
  read-check-write ceiling at C=1000 and >= 0.8x the same work with no lock at C=1;
  oversell 0 and conservation in every cell. (The per-step engine cost vs inline code,
  <= 3x, is benchmarks/overhead.py's: its line here only points there.)

Absolute numbers depend on the machine; compare ratios.

Ceiling: when ``redis-benchmark`` is on PATH, ``redis-benchmark -n 100000 -c 50 -q`` runs
``EVALSHA`` of the decrement script (and of the store's reservation script with random
ids, its five keys and a JSON log entry, so each call also appends to the log), loaded
with ``SCRIPT LOAD``: what the server alone can do, printed beside the atomic path.

Usage::

    python benchmarks/lock_contention.py            # everything, about 7 minutes
    python benchmarks/lock_contention.py --quick    # 1 process, C = 1 and 100, 0.5 s cells
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
import msgspec  # noqa: E402
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
    Transaction,
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
QUICK_CONCURRENCY = (1, 100)
TWO_PROCESS_CONCURRENCY = (10, 100, 1000)
"""The 2-process section's default C values (C=1 adds little; it keeps the run short)."""
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
STORE_CALLS = "atomic store calls, per call (no saga)"
ATOMIC_SAGA = "atomic via AtomicReservationSaga, per call"
GROUP_STORE_CALLS = "group commit store calls (no saga)"
GROUP_SAGA = "atomic via AtomicReservationSaga (group commit)"
BUCKET_STORE_CALLS = "group commit store calls, 8 buckets (no saga)"
NO_LOCK = "read-check-write, no lock (1 coroutine)"

TARGET_VS_DEFAULTS = 5.0
TARGET_P99_MS = 1000.0
TARGET_SAGA_VS_LUA = 0.85
"""The per-call saga against the raw Lua loop (before group commit)."""
# Issue 17 ("the hot SKU"): at C=1000 unless said, ratios within one run.
TARGET_GROUP_RATE = 40_000.0
TARGET_GROUP_VS_LUA = 4.0
TARGET_GROUP_SAGA_RATE = 20_000.0
TARGET_GROUP_SAGA_VS_LUA = 2.0
TARGET_SAGA_VS_HAND = 0.85
TARGET_TWO_VS_ONE = 1.5
TARGET_GROUP_P99_MS = 100.0
TARGET_LEASE_VS_NO_LOCK = 0.9
TARGET_UNCONTENDED_VS_NO_LOCK = 0.8
TARGET_ENGINE_VS_INLINE = 3.0
"""Measured by benchmarks/overhead.py, not here (its verdict line only points there)."""
UNCONTENDED = 1
"""The C of the uncontended lease target."""

LOG_MAX_ENTRIES: int = inventory_store.MAX_LOG_ENTRIES
"""The stores' log bound in the benchmark (the largest allowed): never reached, so the log
is never trimmed and its entries can be counted (the conservation check)."""
LOG_BATCH = 10_000
"""Log entries read per XRANGE by the conservation check."""

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
    """C: coroutines per process (but see ``coroutines``)."""
    coroutines: int
    """Coroutines per process that ran: C, or 1 for the one-coroutine baseline."""
    seconds: float
    reservations: int
    """Completed within the duration (``res/s``'s numerator)."""
    per_second: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    starved: int
    oversell: int
    granted: int
    """Reservations reported to callers, drained ones included."""
    consumed: int
    """Units that left the stock (a product's ``reserved_count``)."""
    logged: int | None
    """Net units reserved per the store's log (``reserve`` entries minus ``release``
    ones); None for variants without a store."""
    conserved: bool | None
    """granted == consumed == logged; None for variants without a store."""
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
class StoreConfig:
    """How a store-based variant builds its ``RedisInventoryStore``: the one place for a
    store option a variant compares (group commit today; stock buckets, a product split
    over several keys, would be one more field here and one more variant)."""

    group_commit: bool = True
    buckets: int | None = None
    """Split the product's stock over this many buckets (keys of their own)."""

    def build(self, client: aioredis.Redis, locks: Any, spec: CellSpec) -> RedisInventoryStore:
        return RedisInventoryStore(
            client,
            locks,
            prefix=spec.store_prefix,
            log_max_entries=LOG_MAX_ENTRIES,
            group_commit=self.group_commit,
            buckets=None if self.buckets is None else {SKU: self.buckets},
        )


@dataclass(frozen=True)
class Variant:
    name: str
    setup: Setup
    store: StoreConfig | None
    """Where the stock lives: a plain key (GET/SET, DECR) if None, else a product of a
    ``RedisInventoryStore`` built so (then its log is checked too: conservation)."""
    leases: bool
    """Whether holders can lose their lease (a lock with a TTL)."""
    fenced: bool
    """Whether stale writes are refused and counted."""
    stallable: bool
    needs: str | None = None
    """A module the variant needs (skipped with a note when missing)."""
    single: bool = False
    """One coroutine per process, whatever C (the read-check-write ceiling)."""
    shared: bool = True
    """Correct with several processes on the same keys (run in the 2-process section)."""


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
        store = LEASE_STORE.build(client, locks, spec)
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


def atomic_store_calls(config: StoreConfig) -> Setup:
    """What ``AtomicReservationSaga`` does, hand-written: ``store.reserve``, then notify."""

    @asynccontextmanager
    async def setup(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
        store = config.build(client, None, cell.spec)
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

    return setup


def atomic_saga(config: StoreConfig) -> Setup:
    """``AtomicReservationSaga.run(...)``, a unique reservation id per run."""

    @asynccontextmanager
    async def setup(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
        store = config.build(client, None, cell.spec)
        notifier = NullNotifier()
        ids = [reservation_ids(cell.spec, i) for i in range(cell.spec.concurrency)]

        async def reserve(index: int) -> None:
            # Shielded from the cell's stop like the raw and hand-written variants' calls,
            # so that all of them pay for the same cancel scope.
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

    return setup


@asynccontextmanager
async def no_lock(client: aioredis.Redis, cell: Cell) -> AsyncIterator[Reserve]:
    """The read-check-write of ``asaga lease (raw)`` without the lease: ``GET``, then the
    write in one round trip (``MULTI``/``SET``/``EXEC``, pipelined). Correct only because
    one coroutine of one process runs it (the variant is ``single`` and not ``shared``)."""
    spec = cell.spec

    async def reserve(index: int) -> None:
        with critical_section(cell):
            cell.acquired[index] += 1
            stock = await read_stock(client, spec)
            if stock > 0:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.set(spec.stock_key, stock - 1)
                    await pipe.execute()
                cell.reservations += 1

    yield reserve


PER_CALL = StoreConfig(group_commit=False)
GROUP_COMMIT = StoreConfig(group_commit=True)
BUCKETS = StoreConfig(group_commit=True, buckets=8)
LEASE_STORE = StoreConfig()
"""The lock path's store (``apply`` under a lease: group commit does not apply)."""

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(LEASE, asaga_lease, None, leases=True, fenced=True, stallable=True),
        Variant(LEASE_SAGA, asaga_lease_saga, LEASE_STORE, True, True, stallable=False),
        Variant(REDIS_DEFAULTS, redis_py_defaults, None, True, False, stallable=True),
        Variant(REDIS_FAST_POLL, redis_py_fast_poll, None, True, False, stallable=True),
        Variant(REDIS_LOCAL, redis_py_with_local_lock, None, True, False, stallable=True),
        Variant(POTTERY, pottery_redlock, None, True, False, stallable=True, needs="pottery"),
        Variant(WATCH, watch_multi, None, leases=False, fenced=False, stallable=False),
        Variant(NO_LOCK, no_lock, None, False, False, stallable=False, single=True, shared=False),
        Variant(LUA, atomic_lua, None, leases=False, fenced=False, stallable=False),
        Variant(STORE_CALLS, atomic_store_calls(PER_CALL), PER_CALL, False, False, False),
        Variant(ATOMIC_SAGA, atomic_saga(PER_CALL), PER_CALL, False, False, stallable=False),
        Variant(
            GROUP_STORE_CALLS, atomic_store_calls(GROUP_COMMIT), GROUP_COMMIT, False, False, False
        ),
        Variant(GROUP_SAGA, atomic_saga(GROUP_COMMIT), GROUP_COMMIT, False, False, False),
        # Stock buckets: the product split over 8 keys, one group (one script call in
        # flight) per bucket. On one Redis node they spread nothing; what they cost here.
        Variant(BUCKET_STORE_CALLS, atomic_store_calls(BUCKETS), BUCKETS, False, False, False),
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
    coroutines = coroutines_of(spec)
    try:
        cell = Cell(
            spec,
            acquired=[0] * coroutines,
            asking_since=[None] * coroutines,
            rng=random.Random(f"{spec.prefix}{spec.process}"),
        )
        await open_connections(client, coroutines)
        async with VARIANTS[spec.variant].setup(client, cell) as reserve:
            late = time.monotonic() - spec.start_at
            if late < 0:
                await anyio.sleep(-late)
            return await drive(cell, reserve, max(late, 0.0))
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def coroutines_of(spec: CellSpec) -> int:
    """Coroutines per process: C, or 1 for a ``single`` variant."""
    return 1 if VARIANTS[spec.variant].single else spec.concurrency


async def drive(cell: Cell, reserve: Reserve, late: float) -> Part:
    duration = cell.spec.duration
    cell.live = len(cell.acquired)
    cpu = time.process_time()
    started = time.perf_counter()
    end = started + duration
    async with anyio.create_task_group() as tg:
        for index in range(cell.live):
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
        if variant.store is None:
            await client.set(spec.stock_key, INITIAL_STOCK)
        else:
            store = variant.store.build(client, None, spec)
            await store.put(Product(sku=SKU, inventory_count=INITIAL_STOCK))
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Ledger:
    """What Redis holds after a cell."""

    consumed: int
    """Units that left the stock."""
    logged: int | None
    """Net units reserved per the store's log (None: no store)."""


async def read_ledger(url: str, spec: CellSpec, variant: Variant) -> Ledger:
    """Units that left the stock during the cell and, for a store, what its log says."""
    client = aioredis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    try:
        if variant.store is None:
            return Ledger(INITIAL_STOCK - await read_stock(client, spec), None)
        store = variant.store.build(client, None, spec)
        consumed = (await store.get(SKU)).reserved_count
        return Ledger(consumed, await logged_units(client, store))
    finally:
        await client.aclose()


async def logged_units(client: aioredis.Redis, store: RedisInventoryStore) -> int:
    """Units reserved per the store's log of SKU: ``reserve`` entries' quantities minus
    ``release`` ones', read LOG_BATCH entries at a time. (The log is the store's stream;
    ``store.transactions()`` would read it in one reply.) Any other operation raises: the
    benchmark writes none."""
    key = store._log_of(SKU)
    units = 0
    start = "-"
    for _ in range(LOG_MAX_ENTRIES // LOG_BATCH + 1):
        rows: Any = await client.xrange(key, min=start, count=LOG_BATCH)  # [(id, fields)]
        for _, fields in rows:
            entry = msgspec.json.decode(fields[b"entry"], type=Transaction)
            if entry.sku != SKU or entry.operation not in ("reserve", "release"):
                raise RuntimeError(f"unexpected entry in the log: {entry!r}")
            units += entry.quantity if entry.operation == "reserve" else -entry.quantity
        if len(rows) < LOG_BATCH:
            return units
        start = "(" + rows[-1][0].decode()
    raise RuntimeError("the log is longer than LOG_MAX_ENTRIES")


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
        ledger = await read_ledger(url, spec, variant)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await delete_keys(url, spec.prefix)
    return summarize(variant, spec, parts, ledger)


async def run_parts(spec: CellSpec, helper: Helper | None) -> list[Part]:
    if helper is None:
        return [await run_part(spec)]
    start_at = time.monotonic() + START_LEAD
    own = CellSpec(**{**asdict(spec), "start_at": start_at})
    helper.send(CellSpec(**{**asdict(own), "process": 1}))
    part = await run_part(own)
    return [part, await helper.result()]


def summarize(variant: Variant, spec: CellSpec, parts: Sequence[Part], ledger: Ledger) -> Row:
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
        coroutines=len(parts[0].acquired),
        seconds=round(seconds, 3),
        reservations=in_window,
        per_second=in_window / seconds,
        p50_ms=percentile_ms(ordered, 0.50),
        p99_ms=percentile_ms(ordered, 0.99),
        max_ms=ordered[-1] * 1000 if ordered else None,
        starved=sum(1 for count in acquired if count == 0),
        oversell=reservations - ledger.consumed,
        granted=reservations,
        consumed=ledger.consumed,
        logged=ledger.logged,
        conserved=(
            None if ledger.logged is None else reservations == ledger.consumed == ledger.logged
        ),
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
        variants = [
            v
            for v in plan.variants
            if (v.stallable or mode != "stall") and (v.shared or mode == "1 process")
        ]
        for concurrency in levels:
            for variant in variants:
                two = helper if mode != "1 process" else None
                row = await run_cell(
                    variant, mode, concurrency, plan.duration, run_prefix, url, two
                )
                print(
                    f"  {mode:11} {variant.name:47} C={concurrency:<5} "
                    f"{row.per_second:9,.0f} res/s  oversell {row.oversell}"
                    + ("" if row.conserved is None else f"  conserved {yes(row.conserved)}"),
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


def yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def table(rows: Sequence[Row]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    def count(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = [
        "| variant | C | res/s | p50 ms | p99 ms | max ms | starved | oversell | conserved "
        "| lost leases | stale rejected |",
        "|---|--:|--:|--:|--:|--:|--:|--:|:-:|--:|--:|",
    ]
    lines += [
        f"| {r.variant} | {r.concurrency} | {r.per_second:,.0f} | {ms(r.p50_ms)} "
        f"| {ms(r.p99_ms)} | {ms(r.max_ms)} | {r.starved} | {r.oversell} | {yes(r.conserved)} "
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


@dataclass(frozen=True)
class Check:
    """One measured figure against its target (``value`` None: not measured in this run)."""

    what: str
    value: float | None
    unit: Literal["/s", "x", " ms", ""]
    op: Literal[">=", "<=", "=="]
    target: float

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.op == ">=":
            return self.value >= self.target
        if self.op == "<=":
            return self.value <= self.target
        return self.value == self.target

    def line(self) -> str:
        def figure(value: float | None) -> str:
            if value is None:
                return "n/a"
            if self.unit == "x":
                return f"{value:.2f}x"
            return f"{value:,.0f}{self.unit}"

        met = {None: "not measured", True: "met", False: "MISSED"}[self.met]
        return f"{self.what} {figure(self.value)} (target {self.op} {figure(self.target)}): {met}"

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def all_met(checks: Sequence[Check]) -> bool | None:
    """False if a check missed, None if one was not measured (and none missed), else True."""
    results = [check.met for check in checks]
    if False in results:
        return False
    return None if None in results else True


def hot_sku_targets(rows: Sequence[Row], top: int) -> list[tuple[str, list[Check]]]:
    """Issue 17's targets table (the hot SKU), each row with its checks: at C=``top`` (the
    highest C of the 1-process section; the targets are set for C=1000)."""

    def at(variant: str, mode: str = "1 process", concurrency: int = top) -> Row | None:
        return find(rows, variant, mode, concurrency)

    def rate(row: Row | None) -> float | None:
        return None if row is None else row.per_second

    def p99(row: Row | None) -> float | None:
        return None if row is None else row.p99_ms

    def two_vs_one(variant: str) -> float | None:
        return _ratio(at(variant, "2 processes"), at(variant))

    lua = at(LUA)
    unsafe = [r for r in rows if r.oversell and not expected_oversell(r)]
    return [
        (
            f"store-level group-commit reservations/s, 1 process, C={top}",
            [
                Check(
                    GROUP_STORE_CALLS,
                    rate(at(GROUP_STORE_CALLS)),
                    "/s",
                    ">=",
                    TARGET_GROUP_RATE,
                ),
                Check(
                    f"/ {LUA}", _ratio(at(GROUP_STORE_CALLS), lua), "x", ">=", TARGET_GROUP_VS_LUA
                ),
            ],
        ),
        (
            f"AtomicReservationSaga reservations/s, 1 process, C={top}",
            [
                Check(GROUP_SAGA, rate(at(GROUP_SAGA)), "/s", ">=", TARGET_GROUP_SAGA_RATE),
                Check(f"/ {LUA}", _ratio(at(GROUP_SAGA), lua), "x", ">=", TARGET_GROUP_SAGA_VS_LUA),
            ],
        ),
        (
            "saga vs the same store call by hand",
            [
                Check(
                    "group commit",
                    _ratio(at(GROUP_SAGA), at(GROUP_STORE_CALLS)),
                    "x",
                    ">=",
                    TARGET_SAGA_VS_HAND,
                ),
                Check(
                    "per call",
                    _ratio(at(ATOMIC_SAGA), at(STORE_CALLS)),
                    "x",
                    ">=",
                    TARGET_SAGA_VS_HAND,
                ),
            ],
        ),
        (
            f"2 processes vs 1 (group commit), C={top} per process",
            [
                Check(
                    GROUP_STORE_CALLS, two_vs_one(GROUP_STORE_CALLS), "x", ">=", TARGET_TWO_VS_ONE
                ),
                Check(GROUP_SAGA, two_vs_one(GROUP_SAGA), "x", ">=", TARGET_TWO_VS_ONE),
            ],
        ),
        (
            f"p99 latency at C={top} (group commit)",
            [
                Check(
                    GROUP_STORE_CALLS, p99(at(GROUP_STORE_CALLS)), " ms", "<=", TARGET_GROUP_P99_MS
                ),
                Check(GROUP_SAGA, p99(at(GROUP_SAGA)), " ms", "<=", TARGET_GROUP_P99_MS),
            ],
        ),
        (
            f"lease path at C={top} vs the read-check-write ceiling",
            [
                Check(
                    f"{LEASE} / {NO_LOCK}",
                    _ratio(at(LEASE), at(NO_LOCK)),
                    "x",
                    ">=",
                    TARGET_LEASE_VS_NO_LOCK,
                )
            ],
        ),
        (
            f"uncontended lease (C={UNCONTENDED}) vs the same work with no lock",
            [
                Check(
                    f"{LEASE} / {NO_LOCK}",
                    _ratio(
                        at(LEASE, concurrency=UNCONTENDED), at(NO_LOCK, concurrency=UNCONTENDED)
                    ),
                    "x",
                    ">=",
                    TARGET_UNCONTENDED_VS_NO_LOCK,
                )
            ],
        ),
        (
            "oversell, every variant, every run",
            [Check("cells that oversold", float(len(unsafe)) if rows else None, "", "==", 0)],
        ),
        (
            "conservation: granted == units taken == log, every store variant",
            [
                Check(
                    "cells not conserved",
                    float(sum(r.conserved is False for r in rows))
                    if any(r.conserved is not None for r in rows)
                    else None,
                    "",
                    "==",
                    0,
                )
            ],
        ),
    ]


def expected_oversell(row: Row) -> bool:
    """Stall mode's point: a lock without fencing writes stale values there."""
    return row.mode == "stall" and not VARIANTS[row.variant].fenced


def verdicts(rows: Sequence[Row]) -> dict[str, Any]:
    """The targets at the highest C of the 1-process section, and the correctness checks."""
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
    result["hot_sku"] = [
        {"measure": measure, "met": all_met(checks), "checks": [c.record() for c in checks]}
        for measure, checks in hot_sku_targets(rows, top)
    ]
    result["oversell"] = {
        mode: {
            v: sum(r.oversell for r in rows if (r.variant, r.mode) == (v, mode)) for v in VARIANTS
        }
        for mode in ("1 process", "2 processes", "stall")
    }
    result["conservation"] = {
        "cells_checked": sum(r.conserved is not None for r in rows),
        "not_conserved": [
            {
                k: getattr(r, k)
                for k in ("variant", "mode", "concurrency", "granted", "consumed", "logged")
            }
            for r in rows
            if r.conserved is False
        ],
    }
    result["asaga_starved_all_cells"] = sum(
        r.starved for r in rows if r.variant in (LEASE, LEASE_SAGA) and r.mode != "stall"
    )
    return result


def _ratio(numerator: Row | None, denominator: Row | None) -> float | None:
    if numerator is None or denominator is None or denominator.per_second == 0:
        return None
    return numerator.per_second / denominator.per_second


def correctness_failures(rows: Sequence[Row]) -> list[str]:
    """Cells that oversold (but for a lock without fencing in stall mode: the point of
    that mode) or whose store's counts and log disagree with what callers were told."""
    failures = [
        f"{r.variant} ({r.mode}, C={r.concurrency}): oversell {r.oversell}"
        for r in rows
        if r.oversell and not expected_oversell(r)
    ]
    failures += [
        f"{r.variant} ({r.mode}, C={r.concurrency}): not conserved: granted {r.granted}, "
        f"units taken {r.consumed}, logged {r.logged}"
        for r in rows
        if r.conserved is False
    ]
    return failures


def verdict_lines(result: dict[str, Any], rows: Sequence[Row]) -> str:
    def met(ok: bool, measured: bool = True) -> str:
        return "not measured" if not measured else "met" if ok else "MISSED"

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
        ran = r["starved"] is not None
        p99 = "n/a" if r["p99_ms"] is None else f"{r['p99_ms']:,.0f} ms"
        lines += [
            f"- {name} / {REDIS_DEFAULTS} = {times(r['vs_defaults'])} (target >= "
            f"{TARGET_VS_DEFAULTS:g}x): {met(r['vs_defaults_met'], r['vs_defaults'] is not None)}; "
            f"starved {r['starved']} (target 0): {met(r['starved'] == 0, ran)}; "
            f"p99 {p99} (target <= {TARGET_P99_MS:,.0f} ms): {met(r['p99_met'], ran)}",
        ]
    vs_lua = result["atomic_saga_vs_lua"]
    lines += [
        f"- {ATOMIC_SAGA} / {LUA} = {times(vs_lua)} "
        f"(target >= {TARGET_SAGA_VS_LUA:g}x): "
        f"{met(result['atomic_saga_vs_lua_met'], vs_lua is not None)}",
    ]
    oversold = [
        f"{r.variant} ({r.mode}, C={r.concurrency}): {r.oversell}"
        + (" (no fencing: expected in stall mode)" if expected_oversell(r) else "")
        for r in rows
        if r.oversell
    ]
    lines.append("- oversell: " + ("none in any cell" if not oversold else "; ".join(oversold)))
    lines += ["", f"Issue 17, the hot SKU (at C={top} unless said; ratios within this run):"]
    for measure, checks in hot_sku_targets(rows, top):
        lines.append(f"- {measure}: " + "; ".join(check.line() for check in checks))
    lines.append(
        "- per-step engine cost on a no-op chain vs the inline hand-written baseline "
        f"(target <= {TARGET_ENGINE_VS_INLINE:g}x): measured by benchmarks/overhead.py, "
        "see its verdicts"
    )
    return "\n".join(lines)


def ceiling_lines(found: dict[str, Any] | None, rows: Sequence[Row]) -> str:
    if found is None:
        return "Ceiling: skipped (--quick, --no-ceiling, or no redis-benchmark on PATH)."

    def best(variant: str) -> float | None:
        return max((r.per_second for r in rows if r.variant == variant), default=None)

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}/s"

    return "\n".join(
        [
            "Ceiling (redis-benchmark -n 100000 -c 50, C client, EVALSHA, one call per "
            "reservation):",
            f"- decrement script: {rate(found['decrement'])}; best {LUA}: {rate(best(LUA))}",
            f"- store reservation script: {rate(found['store_reserve'])}; "
            f"best {STORE_CALLS}: {rate(best(STORE_CALLS))}; best {ATOMIC_SAGA}: "
            f"{rate(best(ATOMIC_SAGA))} (group commit, many reservations per call, is not "
            f"bound by it: best {GROUP_STORE_CALLS}: {rate(best(GROUP_STORE_CALLS))})",
        ]
    )


GROUP_TWINS = {GROUP_STORE_CALLS: STORE_CALLS, GROUP_SAGA: ATOMIC_SAGA}
"""Each group-commit variant and its per-call twin (drawn in one colour)."""


def plot_colors(palette: Sequence[Any]) -> dict[str, Any]:
    """A colour per variant: the one-coroutine ceiling black, a group-commit variant its
    per-call twin's, the others the palette's in turn."""
    own = [v for v in VARIANTS if v not in GROUP_TWINS and v != NO_LOCK]
    color: dict[str, Any] = {v: palette[n % len(palette)] for n, v in enumerate(own)}
    color[NO_LOCK] = "black"
    for grouped, twin in GROUP_TWINS.items():
        color[grouped] = color[twin]
    return color


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
    color = plot_colors(plt.get_cmap("tab10").colors)
    fig, axes = plt.subplots(len(modes), 2, figsize=(14, 5.5 * len(modes)), squeeze=False)
    for line, mode in enumerate(modes):
        for variant in VARIANTS:
            cells = [r for r in rows if r.mode == mode and r.variant == variant]
            if not cells:
                continue
            # The lease variants and group commit solid (group commit with squares, in the
            # colour of its per-call twin), the others dashed, the ceiling dotted.
            grouped = variant in GROUP_TWINS
            style = "-" if grouped or variant in (LEASE, LEASE_SAGA) else "--"
            style = ":" if variant == NO_LOCK else style
            options = {"color": color[variant], "marker": "s" if grouped else "o", "label": variant}
            xs = [r.concurrency for r in cells]
            axes[line][0].plot(xs, [max(r.per_second, 0.1) for r in cells], style, **options)
            p99 = [(r.concurrency, r.p99_ms) for r in cells if r.p99_ms is not None]
            axes[line][1].plot([x for x, _ in p99], [y for _, y in p99], style, **options)
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
    failures = correctness_failures(rows)
    if failures:
        print("\nFAILED: reservations not accounted for:", file=sys.stderr)
        for failure in failures:
            print(f"- {failure}", file=sys.stderr)
        return 1
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
            "log_max_entries": LOG_MAX_ENTRIES,
            "redis_url": args.redis_url,
        },
        "targets": {
            "lease_vs_defaults": TARGET_VS_DEFAULTS,
            "lease_p99_ms": TARGET_P99_MS,
            "atomic_saga_vs_lua": TARGET_SAGA_VS_LUA,
            "hot_sku": {
                "group_commit_per_second": TARGET_GROUP_RATE,
                "group_commit_vs_lua": TARGET_GROUP_VS_LUA,
                "group_commit_saga_per_second": TARGET_GROUP_SAGA_RATE,
                "group_commit_saga_vs_lua": TARGET_GROUP_SAGA_VS_LUA,
                "saga_vs_store_calls": TARGET_SAGA_VS_HAND,
                "two_vs_one_processes": TARGET_TWO_VS_ONE,
                "group_commit_p99_ms": TARGET_GROUP_P99_MS,
                "lease_vs_no_lock": TARGET_LEASE_VS_NO_LOCK,
                "uncontended_lease_vs_no_lock": TARGET_UNCONTENDED_VS_NO_LOCK,
                "engine_vs_inline (benchmarks/overhead.py)": TARGET_ENGINE_VS_INLINE,
            },
        },
        "verdicts": result,
        "ceiling": found,
        "machine": machine_info(server),
        "rows": [asdict(row) for row in rows],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="1 process, C = 1 and 100, 0.5 s cells"
    )
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
