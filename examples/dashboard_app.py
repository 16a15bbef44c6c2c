"""A FastAPI application with the runs dashboard mounted at ``/ops``.

Run it (from the repository root; needs the ``dashboard`` and ``fastapi`` extras)::

    python examples/dashboard_app.py --redis redis://127.0.0.1:6379/0

then open http://127.0.0.1:8000/ops/ . ``POST /orders`` starts a checkout (a durable run
recorded in the same store) so there is something to see::

    curl -s -X POST 'localhost:8000/orders?order_id=o-1'

Who may do what is the application's decision, made by :func:`role_of`: here a request
from the loopback interface with the header ``X-Operator: yes`` may act on runs (undo,
resume, cancel, recover, re-admit), any other loopback request may read, and the rest are
refused. A real application reads its own session or identity proxy instead. Values of
the ``email`` input are masked on the run pages (:func:`redact`).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from asaga import Saga, step
from asaga.dashboard import Dashboard, Field, RequestInfo, Role
from asaga.runs import RedisRunStore


class Checkout(Saga):
    """Reserve, then charge; a reservation is released when undone."""

    order_id: str
    email: str

    @step
    async def reserve(*, order_id: str) -> str:
        return f"reservation-{order_id}"

    @reserve.compensate
    async def release(*, reserve: str) -> None:
        print(f"released {reserve}")

    @step
    async def charge(*, reserve: str, email: str) -> int:
        return 4200


def role_of(request: RequestInfo) -> Role | None:
    """Loopback only; ``X-Operator: yes`` may act, the rest may read."""
    if request.client not in ("127.0.0.1", "::1"):
        return None
    return "operate" if request.headers.get("x-operator") == "yes" else "read"


def redact(saga: str, field: Field, name: str, value: Any) -> Any:
    """Personal data is not shown: an email input becomes ``***@domain``."""
    if field == "input" and name == "email" and isinstance(value, str):
        return "***@" + value.partition("@")[2]
    return value


def create_app(redis_url: str, prefix: str = "asaga:") -> FastAPI:
    """The application: its run store opened by the lifespan, the dashboard at /ops."""
    runs = RedisRunStore.from_url(redis_url, prefix=prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runs:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/orders")
    async def order(order_id: str, email: str = "ann@example.com") -> dict[str, str]:
        result = await Checkout.run(order_id=order_id, email=email, runs=runs)
        return {"run_id": result.run_id}

    dashboard = Dashboard(runs, sagas=[Checkout], authorize=role_of, redact=redact)
    app.mount("/ops", dashboard.asgi())
    return app


def main() -> None:
    """Serve the application with uvicorn on 127.0.0.1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(create_app(args.redis), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
