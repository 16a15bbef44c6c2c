"""What the example web services share, whatever the framework.

- :func:`open_services` creates the store, lock provider, notifier, idempotency, run
  store and supplier of one application (in memory, or on Redis), seeds products, and
  closes everything at exit;
- :func:`run_arguments` turns a request body into the keyword arguments of a saga's
  ``run()``: the inputs a client may give, taken by
  :func:`asaga.integrations.inputs.decode_inputs` (never a resource such as ``store``,
  nor an option of ``run()`` such as ``idempotency_key`` or ``runs``), plus the
  application's resources and hooks;
- :func:`parked_answer`, :func:`delivery_answer` and :func:`event_problem` are the JSON
  answers of the replenishment routes: a run that parked (202), what a delivered event
  did (200, or 202 when it is kept for a run that does not wait yet), and an event
  refused, as an RFC 9457 problem (422 invalid payload, 409 duplicate or the run no
  longer waits), in the shape of :mod:`asaga.integrations.problems`' answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from asaga import EventRefused, Hook, RunParked, Saga
from asaga.integrations.idempotency import (
    Idempotency,
    MemoryOutcomeStore,
    OutcomeStore,
    RedisOutcomeStore,
)
from asaga.integrations.inputs import decode_inputs
from asaga.integrations.problems import (
    Problem,
    problem_for,
)
from asaga.locks import LockProvider
from asaga.runs import Delivery, MemoryRunStore, RunStore

from .replenishment import Supplier
from .sagas import Notifier
from .store import (
    InventoryStore,
    MemoryInventoryStore,
    Product,
    RedisInventoryStore,
    UnknownProduct,
)

__all__ = [
    "Services",
    "delivery_answer",
    "event_problem",
    "open_services",
    "parked_answer",
    "resources",
    "run_arguments",
]


@dataclass(frozen=True)
class Services:
    """What the handlers use; one per application."""

    store: InventoryStore
    locks: LockProvider
    notifier: Notifier
    idempotency: Idempotency
    runs: RunStore
    """Where the durable runs (the replenishments, which wait) are recorded."""
    supplier: Supplier
    hooks: tuple[Hook, ...] = ()


@asynccontextmanager
async def open_services(
    redis_url: str | None = None,
    *,
    prefix: str = "asaga-example:",
    seed: Iterable[Product] = (),
    notifier: Notifier | None = None,
    supplier: Supplier | None = None,
    hooks: Sequence[Hook] = (),
    idempotency_window: float = 24 * 3600.0,
) -> AsyncIterator[Services]:
    """The services of one application, for as long as the ``async with`` lasts.

    In memory by default; with ``redis_url``, products, leases, idempotency outcomes and
    run records live in Redis under ``prefix`` (a ``RedisLockProvider`` and a
    ``RedisRunStore`` run meanwhile; the client uses a blocking pool, so a burst of
    requests waits for a connection instead of failing). ``seed`` products are created
    unless they exist. ``supplier`` defaults to a stand-in :class:`Supplier` with 1,000
    units of each seeded product (in this process's memory, even with Redis).
    """
    products = tuple(seed)
    async with AsyncExitStack() as stack:
        store: InventoryStore
        locks: LockProvider
        outcomes: OutcomeStore
        runs: RunStore
        if redis_url is None:
            memory = MemoryInventoryStore()
            store, locks, outcomes, runs = (
                cast(InventoryStore, memory),
                memory.locks,
                MemoryOutcomeStore(),
                MemoryRunStore(),
            )
        else:
            import redis.asyncio as aioredis

            from asaga.locks import RedisLockProvider
            from asaga.runs import RedisRunStore

            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=100, timeout=10.0, socket_connect_timeout=2.0
            )
            client = aioredis.Redis.from_pool(pool)
            stack.push_async_callback(client.aclose)
            await client.ping()  # fail at startup if the server cannot be reached
            locks = await stack.enter_async_context(RedisLockProvider(client, prefix=prefix))
            store = RedisInventoryStore(client, locks, prefix=f"{prefix}inv:")
            outcomes = RedisOutcomeStore(client, prefix=f"{prefix}idempotency:")
            runs = await stack.enter_async_context(RedisRunStore(client, prefix=f"{prefix}runs:"))
        for product in products:
            try:
                await store.get(product.sku)
            except UnknownProduct:
                await store.put(product)
        yield Services(
            store=store,
            locks=locks,
            notifier=notifier if notifier is not None else Notifier(),
            idempotency=Idempotency(outcomes, locks, window=idempotency_window),
            runs=runs,
            supplier=supplier or Supplier({p.sku: 1_000 for p in products}, max_order=100),
            hooks=tuple(hooks),
        )


def run_arguments(services: Services, saga: type[Saga], body: bytes) -> dict[str, Any]:
    """The keyword arguments of ``saga.run()`` for a request whose body is ``body``.

    The client's part comes from :func:`asaga.integrations.inputs.decode_inputs`: only
    the saga's declared, non-resource inputs; a key naming a resource (``store``), an
    option of ``run()`` (``idempotency_key``, ``runs``, ``hooks``, ``run_id``) or
    anything else is an ``InputValidationError`` (422) and a body that is not a JSON
    object a ``MalformedBody`` (400), both before any step runs. The saga's resources
    (``store``, ``locks``, ``notifier``, ``supplier``, whichever it declares) and the
    application's hooks are added here, from ``services``.
    """
    inputs = decode_inputs(saga, body)
    return {**inputs, **resources(services, saga), "hooks": services.hooks}


def resources(services: Services, saga: type[Saga]) -> dict[str, Any]:
    """The resources ``saga`` declares, from ``services``: what ``run()`` takes, and
    ``deliver()``, ``cancel()`` and ``recover()`` again (resources are never recorded)."""
    spec = saga.__asaga__
    assert spec is not None
    available = {
        "store": services.store,
        "locks": services.locks,
        "notifier": services.notifier,
        "supplier": services.supplier,
    }
    return {
        name: available[name]
        for name, input_ in spec.plan.inputs.items()
        if input_.resource and name in available
    }


def _waits(parked: RunParked | Delivery) -> list[dict[str, Any]]:
    return [
        {name: value for name, value in msgspec.structs.asdict(w).items() if value is not None}
        for w in parked.waits
    ]


def parked_answer(parked: RunParked) -> dict[str, Any]:
    """The 202 body of a replenishment that parked: its run id and what it waits for;
    ``purchase_order_id`` and the ``webhook`` that delivers its confirmation."""
    body: dict[str, Any] = {"run_id": parked.run_id, "status": "waiting", "waits": _waits(parked)}
    for wait in parked.waits:
        if wait.key is not None and wait.key.startswith("delivery:"):
            purchase_order_id = wait.key.removeprefix("delivery:")
            body["purchase_order_id"] = purchase_order_id
            body["webhook"] = f"/webhooks/deliveries/{purchase_order_id}"
    return body


def delivery_answer(delivery: Delivery) -> tuple[int, dict[str, Any]]:
    """The status and body of a delivered event: 202 if it is kept for a run that does
    not wait yet; else 200 with where the run stands (``succeeded`` with its output,
    ``waiting`` with its waits, ``failed`` with the failed step and what was undone)."""
    body: dict[str, Any] = {"status": delivery.status, "key": delivery.key}
    if delivery.run_id is not None:
        body["run_id"] = delivery.run_id
    if delivery.result is not None:
        body["output"] = msgspec.to_builtins(delivery.result.output)
    if delivery.waits:
        body["waits"] = _waits(delivery)
    if delivery.error is not None:
        body["failed_step"] = delivery.error.step or None
        body["compensated"] = list(delivery.error.compensated)
    return (202 if delivery.status == "kept" else 200), body


def event_problem(exc: EventRefused) -> Problem:
    """The problem answer of an event that ``deliver()`` refused, as
    :func:`asaga.integrations.problems.problem_for` gives it: 422 an invalid payload
    (``errors`` as ``[{field, message}]``; ``run_failed`` if it was one bad payload too
    many and the run unwound), 409 a duplicate, 409 a key whose run no longer waits (or
    that no step waits for)."""
    answer = problem_for(exc)
    assert answer is not None  # every EventRefused has its answer
    return answer
