"""The inventory chaos test: the promise "finish everywhere or undo everywhere" holds for the
inventory example under injected failures and callers cancelled at random points.

Runs of both paths (the lease path, InventorySaga, and the atomic path,
AtomicReservationSaga) are mixed; 10 % fail at their last step (the run unwinds), 5 % of
the callers are cancelled after a random delay. Afterwards the stock, the reservations, the
replenishment requests **and the transaction log** must reconcile exactly with the runs
that reported success: nothing leaked by a run that failed or was cancelled, nothing lost
by one that succeeded, and no step left in doubt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from examples.inventory.store import MemoryInventoryStore, Product
from tests.e2e.chaos_worker import SKUS, chaos

ROOT = Path(__file__).resolve().parents[2]
STOCK = 20_000
REORDER_POINT = 19_000  # replenishment requests start after ~1,000 units of a product


def _products() -> list[Product]:
    return [Product(sku=sku, inventory_count=STOCK, reorder_point=REORDER_POINT) for sku in SKUS]


async def _reconcile(store: Any, reports: list[dict[str, Any]]) -> None:
    """The store's state is exactly what the succeeded runs did, and nothing else."""
    lease = [run for report in reports for run in report["lease"]]
    atomic = [run for report in reports for run in report["atomic"]]
    assert [d for report in reports for d in report["in_doubt"]] == []
    # Every outcome is accounted for: the runs did succeed, fail, or get cancelled.
    assert lease, "no lease run succeeded: the test exercised nothing"
    assert atomic, "no atomic run succeeded: the test exercised nothing"
    assert sum(report["failed"] for report in reports) > 0
    assert sum(report["cancelled"] for report in reports) > 0

    log = await store.transactions()
    by_id = {run["id"]: run for run in atomic}  # atomic reservation ids: "w<worker>-<n>"

    for sku in SKUS:
        product = await store.get(sku)
        expected = sum(r["quantity"] for r in lease if r["sku"] == sku) + sum(
            r["quantity"] for r in atomic if r["sku"] == sku
        )
        assert product.inventory_count == STOCK, sku
        assert product.reserved_count == expected, sku
        # The log alone gives the same count: every write that stayed is logged once.
        logged = sum(
            t.quantity if t.operation == "reserve" else -t.quantity
            for t in log
            if t.sku == sku and t.operation in ("reserve", "release")
        )
        assert logged == product.reserved_count, sku

    # The lease path's entries (its references are hex) are the succeeded runs', once each.
    lease_logged = Counter(
        t.run_id for t in log if t.operation == "reserve" and not t.run_id.startswith("w")
    )
    assert lease_logged == Counter(run["reference"] for run in lease)
    # The atomic path's reservations: held once by each succeeded run, by no other.
    net: Counter[str] = Counter()
    for t in log:
        if t.run_id.startswith("w"):
            net[t.run_id] += 1 if t.operation == "reserve" else -1
    assert {rid: count for rid, count in net.items() if count} == dict.fromkeys(by_id, 1)
    # Replenishment requests: one per succeeded run that made one, and no other.
    requests = await store.replenishments()
    made = {r["replenishment"] for r in lease if r["replenishment"] is not None}
    assert set(requests) == made
    assert made, "no replenishment was requested: raise the reorder point"


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_inventory_chaos_on_the_memory_store(quiet_logs: None) -> None:
    """One process, the embedded defaults (memory store, memory leases), 2,000 runs: the
    store reconciles exactly (before, the memory lease lost 2 to 8 units per 500 runs)."""
    store = MemoryInventoryStore()
    for product in _products():
        await store.put(product)
    report = await chaos(store, store.locks, 0, 2000, seed=7)
    await _reconcile(store, [report])


@pytest.mark.timeout(300)
def test_inventory_chaos_on_redis_from_four_processes(redis_url: str, redis_prefix: str) -> None:
    """Four OS processes, 1,000 runs each, against one Redis (leases and the store's
    scripts shared): the store reconciles exactly with what the processes report."""
    from asaga.locks import MemoryLockProvider
    from examples.inventory.store import RedisInventoryStore

    async def setup() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        try:
            store = RedisInventoryStore(client, MemoryLockProvider(), prefix=redis_prefix)
            for product in _products():
                await store.put(product)
        finally:
            await client.aclose()

    anyio.run(setup)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("chaos_worker.py")),
                *(redis_url, redis_prefix, str(i), "1000", str(100 + i)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for i in range(4)
    ]
    reports = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=240)
            assert worker.returncode == 0, err[-4000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    async def check() -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        try:
            store = RedisInventoryStore(client, MemoryLockProvider(), prefix=redis_prefix)
            await _reconcile(store, reports)
        finally:
            await client.aclose()

    anyio.run(check)
