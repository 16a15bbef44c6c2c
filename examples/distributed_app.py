"""Reservations on workers behind FastAPI: the handler enqueues the saga and answers 202.

Start one or more workers, then the app (from the repository root, Redis on 6379)::

    asaga worker examples.inventory.workers:served --redis redis://127.0.0.1:6379/0 \\
        --prefix inventory: --queue inventory
    python examples/distributed_app.py --redis redis://127.0.0.1:6379/0 --port 8002

Then::

    curl -si -X POST localhost:8002/reservations -H 'Idempotency-Key: order-1' \\
         -d '{"product_id": "widget", "quantity": 2, "operation": "reserve"}'
    # HTTP/1.1 202 Accepted, Location: /runs/k3f...
    curl -s localhost:8002/runs/k3f...

- ``POST /reservations`` validates the body as :class:`InventorySaga`'s inputs (400 not a
  JSON object, 422 bad inputs: nothing is enqueued), starts the run on the ``inventory`` queue and
  answers ``202 Accepted`` with the run's URL. The same ``Idempotency-Key`` starts the
  same run once (the same URL).
- ``GET /runs/{run_id}`` answers where the run stands, from its record: ``running``,
  then ``succeeded`` with its output, or ``failed`` / ``cancelled`` with what was undone.
- ``DELETE /runs/{run_id}`` cancels it (a running run unwinds) and answers 202.

The resources (store, locks, notifier) are the workers' (examples/inventory/workers.py):
the web process holds only the queue and the run store.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from asaga import RunNotFound
from asaga.integrations.fastapi import install_error_handlers
from asaga.integrations.inputs import decode_inputs
from asaga.runs import RedisRunStore
from asaga.workers import SaqQueue

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.inventory import Change, InventorySaga

__all__ = ["create_app", "main"]

QUEUE = "inventory"


def create_app(redis_url: str, *, prefix: str = "inventory:", queue: str = QUEUE) -> FastAPI:
    """The app; the run store is ``<prefix>runs:`` on ``redis_url`` (as the workers')."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            RedisRunStore.from_url(redis_url, prefix=f"{prefix}runs:") as runs,
            SaqQueue.from_url(redis_url, name=queue) as jobs,
        ):
            app.state.runs, app.state.queue = runs, jobs
            yield

    app = FastAPI(title="asaga reservations on workers", lifespan=lifespan)
    install_error_handlers(app)

    @app.post("/reservations", status_code=202)
    async def reserve(request: Request) -> JSONResponse:
        inputs = decode_inputs(InventorySaga, await request.body())  # 400 / 422
        handle = await InventorySaga.start(
            queue=request.app.state.queue,
            runs=request.app.state.runs,
            idempotency_key=request.headers.get("Idempotency-Key"),
            **inputs,
        )
        url = f"/runs/{handle.run_id}"
        return JSONResponse(
            {"run_id": handle.run_id, "status_url": url}, status_code=202, headers={"Location": url}
        )

    @app.get("/runs/{run_id}")
    async def run(run_id: str, request: Request) -> JSONResponse:
        runs = cast(RedisRunStore, request.app.state.runs)
        try:
            record = await runs.load(run_id)
        except RunNotFound:
            state = await request.app.state.queue.state(run_id)
            if state == "missing":
                return JSONResponse({"error": f"no run {run_id}"}, status_code=404)
            return JSONResponse({"run_id": run_id, "status": state})
        answer: dict[str, Any] = {"run_id": run_id, "status": record.status}
        if record.status == "succeeded":
            step = record.steps.get("perform")
            if step is not None and step.result is not None:
                answer["change"] = msgspec.to_builtins(
                    msgspec.msgpack.decode(step.result, type=Change)
                )
        elif record.finished:
            answer["failed_step"] = record.failed_step
            answer["compensated"] = list(record.compensated)
        return JSONResponse(answer)

    @app.delete("/runs/{run_id}", status_code=202)
    async def cancel(run_id: str, request: Request) -> JSONResponse:
        await request.app.state.queue.abort(run_id, "cancelled over HTTP")
        return JSONResponse({"run_id": run_id, "status_url": f"/runs/{run_id}"}, status_code=202)

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``python examples/distributed_app.py --redis URL [--port N]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--redis", required=True, help="redis://host:6379/0")
    parser.add_argument("--prefix", default="inventory:", help="as the workers' (inventory:)")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_app(args.redis, prefix=args.prefix), host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
