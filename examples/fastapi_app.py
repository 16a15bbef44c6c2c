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
    curl -s -X POST localhost:8000/replenishments -d '{"product_id": "gadget"}'
    curl -s -X POST localhost:8000/webhooks/deliveries/po-... \\
         -d '{"purchase_order_id": "po-...", "quantity_received": 100}'

Endpoints:

- ``POST /reservations`` runs :class:`InventorySaga` (``product_id``, ``quantity``,
  ``operation``: ``reserve``, ``release`` or ``consume``) and answers 201;
- ``POST /transfers`` runs :class:`InventoryTransferSaga` (``product_id``, ``quantity``,
  ``source``, ``destination``; stock per location is the product ``<id>@<location>``);
- ``GET /products/{id}`` answers the product's counts, or 404;
- ``POST /replenishments`` starts a :class:`ReplenishmentSaga` (``product_id``), a durable
  run recorded in the application's run store: it orders from the supplier, then parks
  until the supplier confirms the delivery. 202 with its ``run_id``, what it ``waits``
  for, its ``purchase_order_id`` and the ``webhook`` to post the confirmation to (201
  with the received order if a confirmation was already there);
- ``POST /webhooks/deliveries/{purchase_order_id}``: the supplier's webhook. Its body, a
  :class:`DeliveryConfirmation` as JSON, is delivered to the run that waits for it
  (``ReplenishmentSaga.deliver``), which goes on in this request: 200 with its
  ``status`` (``succeeded`` with the ``output``, or ``failed`` with the ``failed_step``
  and what was ``compensated``), 202 ``kept`` if the run does not wait yet. 404 no such
  purchase order (never ordered, or undone); 422 a payload that does not fit (the run
  keeps waiting, up to a few bad payloads); 409 a confirmation delivered already, or a
  run that no longer waits.

The POSTs but the webhook honour an ``Idempotency-Key`` header and are cancelled, and
their saga unwound, if the client disconnects (a delivery that started goes on). A body
gives only the saga's inputs (``run_arguments`` adds the resources): a key such as
``store``, ``idempotency_key`` or ``runs`` is refused. Failures are RFC 9457 problem
responses: 400 a body that is not a JSON object, 422 bad input (no step ran), 409 a step
failed and everything was undone, 500 an undo failed too, 503 (with ``Retry-After``)
Redis or a lease was unavailable.

Everything the handlers use (store, locks, notifier, idempotency, run store, supplier) is
created once per application by :func:`create_app`'s lifespan and kept in
``app.state.services``. A replenishment whose confirmation never comes fails once its
deadline (``DELIVERY_TIMEOUT``) has passed and :func:`asaga.runs.recover` looks: a
service calls it periodically, with the saga's resources
(``recover(svc.runs, sagas=[ReplenishmentSaga], resources=resources(svc,
ReplenishmentSaga))``).
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

from asaga import EventRefused, Hook, RunParked
from asaga.integrations.fastapi import (
    PROBLEM_JSON,
    idempotent,
    install_error_handlers,
    openapi_body,
)
from asaga.integrations.problems import Problem

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.inventory import (
    InventorySaga,
    InventoryTransferSaga,
    Notifier,
    Product,
    ReplenishmentSaga,
    Supplier,
    UnknownProduct,
    delivery_key,
)
from examples.inventory.service import (
    Services,
    delivery_answer,
    event_problem,
    open_services,
    parked_answer,
    resources,
    run_arguments,
)

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


def problem_json(answer: Problem) -> JSONResponse:
    """An ``application/problem+json`` response."""
    return JSONResponse(answer.body, status_code=answer.status, media_type=PROBLEM_JSON)


def not_found(detail: str, **members: object) -> JSONResponse:
    """A 404 problem response."""
    body = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": detail}
    return problem_json(Problem(404, {**body, **members}))


def create_app(
    redis_url: str | None = None,
    *,
    seed: Iterable[Product] = SEED,
    notifier: Notifier | None = None,
    supplier: Supplier | None = None,
    hooks: Sequence[Hook] = (),
    prefix: str = "asaga-example:",
) -> FastAPI:
    """The inventory service: in memory, or on the Redis server at ``redis_url``.

    ``seed`` products are created at startup unless they exist; ``notifier`` replaces the
    stand-in notification service (tests inject a slow or failing one), ``supplier`` the
    stand-in supplier; ``hooks`` receive every run's events; ``prefix`` namespaces every
    Redis key (run records included).
    """
    products = tuple(seed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            redis_url,
            prefix=prefix,
            seed=products,
            notifier=notifier,
            supplier=supplier,
            hooks=hooks,
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
            return not_found(f"no product {product_id!r}")
        return JSONResponse({**msgspec.to_builtins(product), "available": product.available})

    @app.post(
        "/reservations", status_code=201, openapi_extra=openapi_body(InventorySaga, status=201)
    )
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

    @app.post(
        "/transfers", status_code=201, openapi_extra=openapi_body(InventoryTransferSaga, status=201)
    )
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

    @app.post(
        "/replenishments",
        status_code=202,
        openapi_extra=openapi_body(ReplenishmentSaga, status=202),
    )
    async def replenishments(request: Request) -> Response:
        """Order stock of one product from the supplier (ReplenishmentSaga), as a durable
        run that parks until the delivery is confirmed: 202 with what it waits for."""
        svc = services(request)

        async def work() -> Response:
            arguments = run_arguments(svc, ReplenishmentSaga, await request.body())
            try:
                result = await ReplenishmentSaga.run(**arguments, runs=svc.runs)
            except RunParked as parked:
                return JSONResponse(parked_answer(parked), status_code=202)
            # A confirmation was kept for it already: the run went on at once.
            body = {"run_id": result.run_id, "status": "succeeded"}
            return JSONResponse({**body, "output": msgspec.to_builtins(result.output)}, 201)

        return await idempotent(request, svc.idempotency, work)

    @app.post("/webhooks/deliveries/{purchase_order_id}")
    async def delivery_webhook(purchase_order_id: str, request: Request) -> Response:
        """The supplier's delivery confirmation: delivered to the run that waits for it,
        which goes on in this request (it books the stock received) and says where it
        stands."""
        svc = services(request)
        if await svc.store.purchase_order(purchase_order_id) is None:
            detail = f"no purchase order {purchase_order_id!r}"
            return not_found(detail, purchase_order_id=purchase_order_id)
        try:
            delivery = await ReplenishmentSaga.deliver(
                delivery_key(purchase_order_id),
                await request.body(),  # JSON, validated as a DeliveryConfirmation
                runs=svc.runs,
                hooks=svc.hooks,
                **resources(svc, ReplenishmentSaga),
            )
        except EventRefused as exc:  # InvalidEvent 422; DuplicateEvent, the others 409
            return problem_json(event_problem(exc))
        status, body = delivery_answer(delivery)
        return JSONResponse(body, status_code=status)

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
