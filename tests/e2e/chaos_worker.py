"""The inventory chaos run: many reservations through both paths of the inventory example,
with injected failures and callers cancelled at random points; it reports what succeeded,
for a test to reconcile the store against (used by tests/e2e/test_chaos.py).

    python tests/e2e/chaos_worker.py URL PREFIX WORKER RUNS SEED

runs it as one OS process against Redis (RedisLockProvider + RedisInventoryStore) and
prints one JSON report on stdout.

Each run is, at random: the lease path (InventorySaga, operation "reserve") or the atomic
path (AtomicReservationSaga), 1 to 3 units of one of ``SKUS``; 10 % of the runs get a
notifier that fails every attempt (the run unwinds), 5 % of the callers are cancelled after
a random delay of up to 10 ms.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import structlog

from asaga import Event, SagaFailed
from examples.inventory.sagas import AtomicReservationSaga, InventorySaga, Notifier

SKUS = ("chaos-a", "chaos-b", "chaos-c")
FAILURE_RATE = 0.10
CANCEL_RATE = 0.05
CONCURRENCY = 16


class DoubtWatch:
    """A hook that collects the steps any run left in doubt."""

    def __init__(self) -> None:
        self.in_doubt: list[str] = []

    def __call__(self, event: Event) -> None:
        in_doubt = getattr(event, "in_doubt", ())
        if event.kind == "run_failed" and in_doubt:
            self.in_doubt.extend(f"{event.run_id}:{s}" for s in in_doubt)


async def chaos(store: Any, locks: Any, worker: int, runs: int, seed: int) -> dict[str, Any]:
    """Do ``runs`` runs, ``CONCURRENCY`` at a time; the report of what happened."""
    rng = random.Random(seed)
    watch = DoubtWatch()
    report: dict[str, Any] = {
        "lease": [],  # succeeded lease runs: sku, quantity, reference, entry, replenishment
        "atomic": [],  # succeeded atomic runs: sku, quantity, reservation id, entry
        "failed": 0,
        "cancelled": 0,
        "in_doubt": watch.in_doubt,
    }
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(n: int) -> None:
        sku = rng.choice(SKUS)
        quantity = rng.randint(1, 3)
        atomic = rng.random() < 0.5
        notifier = Notifier(failures=3 if rng.random() < FAILURE_RATE else 0)
        cancel_after = rng.uniform(0, 0.01) if rng.random() < CANCEL_RATE else None
        reservation_id = f"w{worker}-{n}"
        async with limiter:
            with _cancelled_after(cancel_after) as scope:
                try:
                    if atomic:
                        result = await AtomicReservationSaga.run(
                            product_id=sku,
                            quantity=quantity,
                            reservation_id=reservation_id,
                            store=store,
                            notifier=notifier,
                            hooks=[watch],
                        )
                        report["atomic"].append(
                            {
                                "sku": sku,
                                "quantity": quantity,
                                "id": reservation_id,
                                "entry": result.output,
                            }
                        )
                    else:
                        result = await InventorySaga.run(
                            product_id=sku,
                            quantity=quantity,
                            operation="reserve",
                            store=store,
                            locks=locks,
                            notifier=notifier,
                            hooks=[watch],
                        )
                        report["lease"].append(
                            {
                                "sku": sku,
                                "quantity": quantity,
                                "reference": result.output.reference,
                                "entry": result.results["transaction"],
                                "replenishment": result.results["replenishment"],
                            }
                        )
                except SagaFailed:
                    report["failed"] += 1
            if scope is not None and scope.cancelled_caught:
                report["cancelled"] += 1

    async with anyio.create_task_group() as tg:
        for n in range(runs):
            tg.start_soon(one, n)
    return report


@contextmanager
def _cancelled_after(delay: float | None) -> Iterator[anyio.CancelScope | None]:
    if delay is None:
        yield None
        return
    with anyio.move_on_after(delay) as scope:
        yield scope


async def _main(url: str, prefix: str, worker: int, runs: int, seed: int) -> None:
    import redis.asyncio as aioredis

    from asaga.locks import RedisLockProvider
    from examples.inventory.store import RedisInventoryStore

    client = aioredis.Redis.from_url(url, socket_timeout=None)
    try:
        async with RedisLockProvider(client, prefix=f"{prefix}locks:") as locks:
            store = RedisInventoryStore(client, locks, prefix=prefix)
            report = await chaos(store, locks, worker, runs, seed)
    finally:
        await client.aclose()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    import logging

    # stdout carries the report; asaga's warnings go to stderr, the rest is dropped.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    url, prefix, worker, runs, seed = sys.argv[1:6]
    anyio.run(_main, url, prefix, int(worker), int(runs), int(seed))
