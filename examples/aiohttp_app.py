"""An inventory service on aiohttp: the inventory example's sagas behind HTTP.

::

    python examples/aiohttp_app.py                      # in memory, http://127.0.0.1:8080
    python examples/aiohttp_app.py --redis redis://127.0.0.1:6379/0 --port 8081

    curl -s -XPOST localhost:8080/reservations -H 'Idempotency-Key: r-1' \\
         -d '{"product_id": "widget", "quantity": 5, "operation": "reserve"}'
    curl -s localhost:8080/products/widget
    curl -s -XPOST localhost:8080/transfers \\
         -d '{"product_id": "widget", "quantity": 5, "source": "north", "destination": "south"}'
    curl -s -XPOST localhost:8080/replenishments -d '{"product_id": "gadget"}'
    curl -s -XPOST localhost:8080/webhooks/deliveries/po-... \\
         -d '{"purchase_order_id": "po-...", "quantity_received": 30}'

Routes:

- ``POST /reservations``: ``{product_id, quantity, operation}`` runs an
  :class:`InventorySaga` (``operation`` is ``reserve``, ``release`` or ``consume``);
- ``GET /products/{id}``: a product's counts (``widget@north`` is ``widget`` at ``north``);
- ``POST /transfers``: ``{product_id, quantity, source, destination}`` runs an
  :class:`InventoryTransferSaga`;
- ``POST /replenishments``: ``{product_id}`` starts a :class:`ReplenishmentSaga`, a
  durable run recorded in the application's run store (``RUNS``): it orders from the
  supplier, then parks until the delivery is confirmed. 202 with its ``run_id``, what it
  ``waits`` for, its ``purchase_order_id`` and the ``webhook`` to post the confirmation
  to (201 with the received order if a confirmation was already there);
- ``POST /webhooks/deliveries/{purchase_order_id}``: the supplier's webhook. Its body, a
  :class:`DeliveryConfirmation` as JSON, is delivered to the run that waits for it
  (``ReplenishmentSaga.deliver``), which goes on in this request: 200 with its
  ``status`` (``succeeded`` with the ``output``, or ``failed`` with the ``failed_step``
  and what was ``compensated``), 202 ``kept`` if the run does not wait yet. 404 no such
  purchase order (never ordered, or undone); 422 a payload that does not fit (the run
  keeps waiting, up to a few bad payloads); 409 a confirmation delivered already, or a
  run that no longer waits. A client that disconnects does not cancel a delivery that
  started (it is shielded).

The POSTs but the webhook honour an ``Idempotency-Key`` header. A body gives only the
saga's inputs (``run_arguments`` adds the resources): a key such as ``store``,
``idempotency_key`` or ``runs`` is refused. A failure is a problem response
(``asaga.integrations.aiohttp.saga_errors``): 400 a body that is not a JSON object, 422
bad inputs, 409 failed and undone, 500 failed and not fully undone, 503 (with
``Retry-After``) Redis or a lease was unavailable. The store, the locks, the notifier,
the idempotency outcomes, the run store and the supplier are created once per application,
in a ``cleanup_ctx``, and kept under ``web.AppKey``\\ s: in memory by default, on Redis
with ``redis_url`` (every key under ``prefix``). ``main()`` serves with
``handler_cancellation=True``, so a client that disconnects mid-request cancels its saga,
which compensates what it had done. A replenishment whose confirmation never comes fails
once its deadline (``DELIVERY_TIMEOUT``) has passed and :func:`asaga.runs.recover` looks:
a service calls it periodically, with the saga's resources.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec
from aiohttp import web

if __name__ == "__main__" and not __package__:  # `python examples/aiohttp_app.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asaga import EventRefused, Hook, RunParked
from asaga.integrations.aiohttp import PROBLEM_JSON, idempotent, problem_response, saga_errors
from asaga.integrations.idempotency import Idempotency
from asaga.locks import LockProvider
from asaga.runs import RunStore
from examples.inventory import (
    Change,
    InventorySaga,
    InventoryStore,
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

__all__ = [
    "HOOKS",
    "IDEMPOTENCY",
    "LOCKS",
    "NOTIFIER",
    "RUNS",
    "SEED",
    "SERVICES",
    "STORE",
    "create_app",
    "main",
]

STORE: web.AppKey[InventoryStore] = web.AppKey("store")
"""The application's inventory store."""
LOCKS: web.AppKey[LockProvider] = web.AppKey("locks")
"""The lock provider whose leases guard stock changes (and idempotency keys)."""
NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier")
"""The notification service the reservations tell."""
IDEMPOTENCY: web.AppKey[Idempotency] = web.AppKey("idempotency")
"""Outcomes of requests that carried an ``Idempotency-Key``."""
RUNS: web.AppKey[RunStore] = web.AppKey("runs")
"""The run store of the durable runs (the replenishments, which park until delivered)."""
HOOKS: web.AppKey[tuple[Hook, ...]] = web.AppKey("hooks")
"""Event hooks added to every saga run of the application."""
SERVICES: web.AppKey[Services] = web.AppKey("services")
"""All of the above, as the example's service layer keeps them."""

SEED = (
    Product(sku="widget", inventory_count=100, reorder_point=10, max_stock_level=200),
    Product(sku="gadget", inventory_count=20, reorder_point=15, max_stock_level=50),
    Product(sku="gizmo", inventory_count=150),
    Product(sku="widget@north", inventory_count=40, reorder_point=5, max_stock_level=100),
    Product(sku="widget@south", inventory_count=10, reorder_point=5, max_stock_level=100),
)
"""The products a new application starts with (``create_app(seed=...)`` to change)."""


def create_app(
    redis_url: str | None = None,
    *,
    notifier: Notifier | None = None,
    supplier: Supplier | None = None,
    seed: Sequence[Product] = SEED,
    prefix: str = "asaga-example:",
    hooks: Sequence[Hook] = (),
    idempotency_window: float = 24 * 3600.0,
) -> web.Application:
    """The inventory service.

    In memory by default; with ``redis_url``, products, leases and idempotency outcomes
    live in Redis under ``prefix`` (a ``RedisLockProvider`` runs for the application's
    lifetime). ``seed`` products are created at startup unless they exist. ``notifier``
    defaults to a fresh :class:`Notifier`, ``supplier`` to a stand-in :class:`Supplier`;
    ``hooks`` are added to every saga run.
    """
    app = web.Application(middlewares=[saga_errors])
    app[HOOKS] = tuple(hooks)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_services(
            redis_url,
            prefix=prefix,
            seed=seed,
            notifier=notifier,
            supplier=supplier,
            hooks=hooks,
            idempotency_window=idempotency_window,
        ) as services:
            app[SERVICES] = services
            app[STORE] = services.store
            app[LOCKS] = services.locks
            app[NOTIFIER] = services.notifier
            app[IDEMPOTENCY] = services.idempotency
            app[RUNS] = services.runs
            yield

    app.cleanup_ctx.append(resources)
    app.router.add_post("/reservations", create_reservation)
    app.router.add_get("/products/{id}", get_product)
    app.router.add_post("/transfers", create_transfer)
    app.router.add_post("/replenishments", create_replenishment)
    app.router.add_post("/webhooks/deliveries/{purchase_order_id}", delivery_webhook)
    return app


async def create_reservation(request: web.Request) -> web.Response:
    """``POST /reservations``: run an :class:`InventorySaga`; 201 with what it did."""
    app = request.app

    async def work() -> web.Response:
        arguments = run_arguments(app[SERVICES], InventorySaga, await request.read())
        result = await InventorySaga.run(**arguments)
        change: Change = result.output
        return web.json_response(
            {
                "run_id": result.run_id,
                "reference": change.reference,
                "product_id": change.sku,
                "operation": change.operation,
                "quantity": change.quantity,
            },
            status=201,
        )

    return await idempotent(request, app[IDEMPOTENCY], work)


async def create_transfer(request: web.Request) -> web.Response:
    """``POST /transfers``: run an :class:`InventoryTransferSaga`; 201 with the transfer."""
    app = request.app

    async def work() -> web.Response:
        arguments = run_arguments(app[SERVICES], InventoryTransferSaga, await request.read())
        result = await InventoryTransferSaga.run(**arguments)
        change: Change = result.output
        return web.json_response(
            {
                "run_id": result.run_id,
                "reference": change.reference,
                "product_id": arguments["product_id"],
                "source": arguments["source"],
                "destination": arguments["destination"],
                "quantity": change.quantity,
            },
            status=201,
        )

    return await idempotent(request, app[IDEMPOTENCY], work)


async def create_replenishment(request: web.Request) -> web.Response:
    """``POST /replenishments``: start a :class:`ReplenishmentSaga`, durable in the app's
    run store; 202 with what it waits for once it parks."""
    app = request.app

    async def work() -> web.Response:
        arguments = run_arguments(app[SERVICES], ReplenishmentSaga, await request.read())
        try:
            result = await ReplenishmentSaga.run(**arguments, runs=app[RUNS])
        except RunParked as parked:
            return web.json_response(parked_answer(parked), status=202)
        # A confirmation was kept for it already: the run went on at once.
        body = {"run_id": result.run_id, "status": "succeeded"}
        return web.json_response({**body, "output": msgspec.to_builtins(result.output)}, status=201)

    return await idempotent(request, app[IDEMPOTENCY], work)


async def delivery_webhook(request: web.Request) -> web.Response:
    """``POST /webhooks/deliveries/{purchase_order_id}``: the supplier's delivery
    confirmation, delivered to the run that waits for it, which goes on in this request
    (it books the stock received); 200 with where the run stands."""
    services = request.app[SERVICES]
    purchase_order_id = request.match_info["purchase_order_id"]
    if await services.store.purchase_order(purchase_order_id) is None:
        detail = f"no purchase order {purchase_order_id!r}"
        return problem_response(
            404, "Unknown purchase order", detail=detail, purchase_order_id=purchase_order_id
        )
    delivering = ReplenishmentSaga.deliver(
        delivery_key(purchase_order_id),
        await request.read(),  # JSON, validated as a DeliveryConfirmation
        runs=services.runs,
        hooks=services.hooks,
        **resources(services, ReplenishmentSaga),
    )
    try:
        # Shielded: a client that goes away (handler_cancellation) does not cut the run
        # off half-way; it goes on, and the supplier's retry gets a 409.
        delivery = await asyncio.shield(delivering)
    except EventRefused as exc:  # InvalidEvent 422; DuplicateEvent, the others 409
        problem = event_problem(exc)
        return web.Response(
            status=problem.status,
            body=msgspec.json.encode(problem.body),
            headers={"Content-Type": PROBLEM_JSON},
        )
    status, body = delivery_answer(delivery)
    return web.json_response(body, status=status)


async def get_product(request: web.Request) -> web.Response:
    """``GET /products/{id}``: the product's counts; 404 (a problem) if unknown."""
    sku = request.match_info["id"]
    try:
        product = await request.app[STORE].get(sku)
    except UnknownProduct:
        return problem_response(404, "Unknown product", detail=f"no product {sku!r}", sku=sku)
    return web.json_response({**msgspec.to_builtins(product), "available": product.available})


def main(argv: Sequence[str] | None = None) -> None:
    """``python examples/aiohttp_app.py [--redis URL] [--host H] [--port 8080]``."""
    parser = argparse.ArgumentParser(description="Serve the inventory example over HTTP.")
    parser.add_argument("--redis", metavar="URL", help="keep state in Redis at URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    args = parser.parse_args(argv)
    # handler_cancellation=True: aiohttp cancels the handler (and so the saga, which then
    # compensates) when the client disconnects; aiohttp's default is to let it run on.
    web.run_app(create_app(args.redis), host=args.host, port=args.port, handler_cancellation=True)


if __name__ == "__main__":
    main()
