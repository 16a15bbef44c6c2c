"""A separate OS process that runs durable checkouts until it is killed (used by
tests/runs/test_durable_redis.py).

    python tests/runs/durable_worker.py URL PREFIX SEED RUNS OWNER_TTL

Prints ``owner <id>`` once its run store is open, then runs RUNS checkouts, 16 at a time,
each charging after a random delay (some declined), and prints ``done`` at the end.
"""

import random
import sys
from pathlib import Path

import anyio
import redis.asyncio as aioredis
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import contextlib

from asaga import SagaFailed
from asaga.runs import RedisRunStore
from examples.inventory import RedisInventoryStore
from tests.sagas.durable import DurableCheckout, Payments

# stdout carries what the test reads; asaga's log lines (a warning about the test Redis's
# persistence, say) go to stderr.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def main(url: str, prefix: str, seed: str, runs: str, owner_ttl: str) -> None:
    rng = random.Random(int(seed))
    client = aioredis.Redis.from_url(url)
    store = RedisInventoryStore(client, None, prefix=f"{prefix}inv:")
    payments = Payments(client, prefix)
    limiter = anyio.CapacityLimiter(16)
    async with RedisRunStore(
        client, prefix=f"{prefix}runs:", owner_ttl=float(owner_ttl)
    ) as run_store:
        print(f"owner {run_store.owner}", flush=True)

        async def checkout(delay: float, decline: bool, quantity: int) -> None:
            async with limiter:
                with contextlib.suppress(SagaFailed):
                    await DurableCheckout.run(
                        sku="widget",
                        quantity=quantity,
                        delay=delay,
                        decline=decline,
                        store=store,
                        payments=payments,
                        runs=run_store,
                    )

        async with anyio.create_task_group() as tg:
            for _ in range(int(runs)):
                tg.start_soon(
                    checkout, rng.uniform(0.0, 0.2), rng.random() < 0.25, rng.randint(1, 3)
                )
    print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
