"""A separate OS process that runs durable bulk inventory requests (mapped sagas) until it
is killed (used by tests/runs/test_durable_map_kill.py).

    python tests/runs/map_worker.py URL PREFIX SEED BULKS OWNER_TTL MODE

Keys: the run store under ``PREFIX runs:``, the inventory store under ``PREFIX inv:``, the
leases under ``PREFIX locks:`` (the test stocks the products first). Prints
``owner <id>`` once its run store is open, then:

- MODE ``random``: runs BULKS bulk requests, 3 at a time, with run ids ``bulk-<n>``: most
  are the example's ``BulkInventorySaga``, a third are ``ApprovedBulk`` (half of them
  refused after their map, so that they unwind); 3 to 6 lines each, of reserve, release and
  consume on ``SKUS`` (now and then of the unknown product ``ghost``, and one request all of
  ``ghost``: every line fails, and so does the request); ``notify`` takes a seeded
  random while. Prints ``done`` at the end.
- MODE ``gate``: runs one ``BulkHold`` of the lines in ``GATE_LINES`` (run id ``held``),
  whose children are held at the gate; prints ``blocked`` once every child that can reach
  it waits there, and then waits to be killed.
- MODE ``undo``: runs one ``ApprovedBulk`` of ``UNDO_LINES`` that is refused (run id
  ``refused``): every child succeeds, then the parent undoes them, on a ``HeldUndo``
  store; prints ``blocked`` once a child's ``undo_perform`` has made its write (and
  blocks), and then waits to be killed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from asaga import SagaFailed
from asaga.locks import RedisLockProvider
from asaga.runs import RedisRunStore
from examples.inventory import BulkInventorySaga, Notifier, OperationRequest, RedisInventoryStore
from tests.sagas.bulk import (
    ApprovedBulk,
    BulkHold,
    Gate,
    HeldUndo,
    Line,
    SlowNotifier,
)

SKUS = ("mk-a", "mk-b", "mk-c")
GATE_LINES = (
    Line(product_id="mk-a", quantity=2, held_in="reserve"),
    Line(product_id="mk-b", quantity=3, held_in="confirm"),
    Line(product_id="ghost", quantity=1, held_in="confirm"),  # UnknownProduct: fails
    Line(product_id="mk-a", quantity=1, held_in="confirm"),
    Line(product_id="mk-c", quantity=4, held_in="reserve"),
)
GATED = sum(line.product_id != "ghost" for line in GATE_LINES)
"""Children that reach the gate (the ``ghost`` line fails before it)."""
UNDO_LINES = (
    OperationRequest(product_id="mk-a", quantity=2, operation="reserve"),
    OperationRequest(product_id="mk-b", quantity=3, operation="consume"),
    OperationRequest(product_id="mk-c", quantity=1, operation="release"),
    OperationRequest(product_id="mk-a", quantity=4, operation="consume"),
)

# stdout carries what the test reads; asaga's warnings and errors go to stderr (the steps'
# own lines would be too many for a pipe).
structlog.configure(
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
)


def bulk_plan(seed: int, bulks: int) -> list[dict[str, Any]]:
    """What the worker runs for ``seed``: one dict per bulk request (saga, run id, inputs)."""
    rng = random.Random(seed)
    plan = []
    for n in range(bulks):
        if n == 1:  # every line of an unknown product: every line fails, and the request
            lines = [{"product_id": "ghost", "quantity": 1, "operation": "reserve"}] * 2
        else:
            lines = [
                {
                    "product_id": "ghost" if rng.random() < 0.08 else rng.choice(SKUS),
                    "quantity": rng.randint(1, 3),
                    "operation": rng.choice(
                        ("reserve", "reserve", "reserve", "release", "consume")
                    ),
                }
                for _ in range(rng.randint(3, 6))
            ]
        inputs: dict[str, Any] = {"operations": lines}
        saga = "BulkInventorySaga"
        if n % 3 == 2:
            saga = "ApprovedBulk"
            inputs["approve"] = rng.random() < 0.5
        plan.append({"saga": saga, "run_id": f"bulk-{n}", "inputs": inputs})
    return plan


SAGAS = {"BulkInventorySaga": BulkInventorySaga, "ApprovedBulk": ApprovedBulk}


async def main(url: str, prefix: str, seed: str, bulks: str, owner_ttl: str, mode: str) -> None:
    client = aioredis.Redis.from_url(url)
    async with (
        RedisLockProvider(client, prefix=f"{prefix}locks:") as locks,
        RedisRunStore(client, prefix=f"{prefix}runs:", owner_ttl=float(owner_ttl)) as runs,
    ):
        store = RedisInventoryStore(client, locks, prefix=f"{prefix}inv:")
        print(f"owner {runs.owner}", flush=True)
        if mode == "gate":
            gate = Gate(closed=True, expected=GATED)
            await BulkHold.run(
                lines=list(GATE_LINES), store=store, gate=gate, runs=runs, run_id="held"
            )
            return
        if mode == "undo":
            await ApprovedBulk.run(
                operations=list(UNDO_LINES),
                approve=False,
                store=HeldUndo(store),
                locks=locks,
                notifier=Notifier(),
                runs=runs,
                run_id="refused",
            )
            return
        limiter = anyio.CapacityLimiter(3)

        async def bulk(n: int, entry: dict[str, Any]) -> None:
            async with limiter:
                operations = [OperationRequest(**line) for line in entry["inputs"]["operations"]]
                inputs = {**entry["inputs"], "operations": operations}
                with contextlib.suppress(SagaFailed):
                    await SAGAS[entry["saga"]].run(
                        **inputs,
                        store=store,
                        locks=locks,
                        notifier=SlowNotifier(int(seed) * 1000 + n, most=0.06),
                        runs=runs,
                        run_id=entry["run_id"],
                    )

        async with anyio.create_task_group() as tg:
            for n, entry in enumerate(bulk_plan(int(seed), int(bulks))):
                tg.start_soon(bulk, n, entry)
    print("done", flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
