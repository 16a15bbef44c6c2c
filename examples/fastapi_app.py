"""An inventory service on FastAPI: the inventory example's sagas behind HTTP.

Run it (from the repository root)::

    python examples/fastapi_app.py                       # in memory, port 8000
    python examples/fastapi_app.py --redis redis://127.0.0.1:6379/0 --port 8001

Then::

    curl -s localhost:8000/products/widget
    curl -s -X POST localhost:8000/reservations -H 'Idempotency-Key: order-1' \\
         -d '{"product_id": "widget", "quantity": 2, "operation": "reserve"}'
    curl -s -X POST localhost:8000/transfers \\
         -d '{"product_id": "widget", "quantity": 5, "source": "east", "destination": "west"}'

Endpoints:

- ``POST /reservations`` runs :class:`InventorySaga` (``product_id``, ``quantity``,
  ``operation``: ``reserve``, ``release`` or ``consume``) and answers 201;
- ``POST /transfers`` runs :class:`InventoryTransferSaga` (``product_id``, ``quantity``,
  ``source``, ``destination``; stock per location is the product ``<id>@<location>``);
- ``GET /products/{id}`` answers the product's counts, or 404.

Both POSTs honour an ``Idempotency-Key`` header and are cancelled, and their saga unwound,
if the client disconnects. A body gives only the saga's inputs (``run_arguments`` adds
the resources): a key such as ``store``, ``idempotency_key`` or ``runs`` is refused.
Failures are RFC 9457 problem responses: 400 a body that is not a JSON object, 422 bad
input (no step ran), 409 a step failed and everything was undone, 500 an undo failed
too, 503 (with ``Retry-After``) Redis or a lease was unavailable.

Everything the handlers use (store, locks, notifier, idempotency) is created once per
application by :func:`create_app`'s lifespan and kept in ``app.state.services``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from asaga import Hook
from asaga.integrations.fastapi import PROBLEM_JSON, idempotent, install_error_handlers

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.inventory import (
    InventorySaga,
    InventoryTransferSaga,
    Notifier,
    Product,
    UnknownProduct,
)
from examples.inventory.service import Services, open_services, run_arguments

__all__ = ["SEED", "Services", "create_app", "main"]

SEED = (
    Product(sku="widget", inventory_count=100, reorder_point=10, max_stock_level=200),
    Product(sku="gadget", inventory_count=20),
    Product(sku="gizmo", inventory_count=150),
    Product(sku="widget@east", inventory_count=50),
)
"""The products created at startup unless they exist already."""


def services(request: Request) -> Services:
    """The application's :class:`Services`."""
    return cast(Services, request.app.state.services)


def create_app(
    redis_url: str | None = None,
    *,
    seed: Iterable[Product] = SEED,
    notifier: Notifier | None = None,
    hooks: Sequence[Hook] = (),
    prefix: str = "asaga-example:",
) -> FastAPI:
    """The inventory service: in memory, or on the Redis server at ``redis_url``.

    ``seed`` products are created at startup unless they exist; ``notifier`` replaces the
    stand-in notification service (tests inject a slow or failing one); ``hooks`` receive
    every run's events; ``prefix`` namespaces every Redis key.
    """
    products = tuple(seed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            redis_url, prefix=prefix, seed=products, notifier=notifier, hooks=hooks
        ) as services:
            app.state.services = services
            yield

    app = FastAPI(title="asaga inventory example", lifespan=lifespan)
    install_error_handlers(app)

    @app.get("/products/{product_id}")
    async def get_product(product_id: str, request: Request) -> Response:
        """A product's counts."""
        try:
            product = await services(request).store.get(product_id)
        except UnknownProduct:
            return JSONResponse(
                {
                    "type": "about:blank",
                    "title": "Not Found",
                    "status": 404,
                    "detail": f"no product {product_id!r}",
                },
                status_code=404,
                media_type=PROBLEM_JSON,
            )
        return JSONResponse({**msgspec.to_builtins(product), "available": product.available})

    @app.post("/reservations", status_code=201)
    async def reservations(request: Request) -> Response:
        """Reserve, release or consume stock of one product (InventorySaga)."""
        svc = services(request)

        async def work() -> Response:
            arguments = run_arguments(svc, InventorySaga, await request.body())
            result = await InventorySaga.run(**arguments)
            return JSONResponse(
                {"run_id": result.run_id, "change": msgspec.to_builtins(result.output)},
                status_code=201,
            )

        return await idempotent(request, svc.idempotency, work)

    @app.post("/transfers", status_code=201)
    async def transfers(request: Request) -> Response:
        """Move stock of one product between two locations (InventoryTransferSaga)."""
        svc = services(request)

        async def work() -> Response:
            arguments = run_arguments(svc, InventoryTransferSaga, await request.body())
            result = await InventoryTransferSaga.run(**arguments)
            return JSONResponse(
                {"run_id": result.run_id, "change": msgspec.to_builtins(result.output)},
                status_code=201,
            )

        return await idempotent(request, svc.idempotency, work)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """``python examples/fastapi_app.py [--redis URL] [--host H] [--port N]``."""
    parser = argparse.ArgumentParser(description="The inventory example as a FastAPI service.")
    parser.add_argument("--redis", metavar="URL", help="use Redis at URL (redis://host:6379/0)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args(argv)

    import uvicorn

    uvicorn.run(create_app(args.redis), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
