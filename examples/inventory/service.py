"""What the example web services share, whatever the framework.

- :func:`open_services` creates the store, lock provider, notifier and idempotency of one
  application (in memory, or on Redis), seeds products, and closes everything at exit;
- :func:`run_arguments` turns a request body into the keyword arguments of a saga's
  ``run()``: the inputs a client may give, taken by
  :func:`asaga.integrations.inputs.decode_inputs` (never a resource such as ``store``,
  nor an option of ``run()`` such as ``idempotency_key`` or ``runs``), plus the
  application's resources and hooks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from asaga import Hook, Saga
from asaga.integrations.idempotency import (
    Idempotency,
    MemoryOutcomeStore,
    OutcomeStore,
    RedisOutcomeStore,
)
from asaga.integrations.inputs import decode_inputs
from asaga.locks import LockProvider

from .sagas import Notifier
from .store import (
    InventoryStore,
    MemoryInventoryStore,
    Product,
    RedisInventoryStore,
    UnknownProduct,
)

__all__ = ["Services", "open_services", "run_arguments"]


@dataclass(frozen=True)
class Services:
    """What the handlers use; one per application."""

    store: InventoryStore
    locks: LockProvider
    notifier: Notifier
    idempotency: Idempotency
    hooks: tuple[Hook, ...] = ()


@asynccontextmanager
async def open_services(
    redis_url: str | None = None,
    *,
    prefix: str = "asaga-example:",
    seed: Iterable[Product] = (),
    notifier: Notifier | None = None,
    hooks: Sequence[Hook] = (),
    idempotency_window: float = 24 * 3600.0,
) -> AsyncIterator[Services]:
    """The services of one application, for as long as the ``async with`` lasts.

    In memory by default; with ``redis_url``, products, leases and idempotency outcomes
    live in Redis under ``prefix`` (a ``RedisLockProvider`` runs meanwhile; the client uses
    a blocking pool, so a burst of requests waits for a connection instead of failing).
    ``seed`` products are created unless they exist.
    """
    async with AsyncExitStack() as stack:
        store: InventoryStore
        locks: LockProvider
        outcomes: OutcomeStore
        if redis_url is None:
            memory = MemoryInventoryStore()
            store, locks, outcomes = (
                cast(InventoryStore, memory),
                memory.locks,
                MemoryOutcomeStore(),
            )
        else:
            import redis.asyncio as aioredis

            from asaga.locks import RedisLockProvider

            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=100, timeout=10.0, socket_connect_timeout=2.0
            )
            client = aioredis.Redis.from_pool(pool)
            stack.push_async_callback(client.aclose)
            await client.ping()  # fail at startup if the server cannot be reached
            locks = await stack.enter_async_context(RedisLockProvider(client, prefix=prefix))
            store = RedisInventoryStore(client, locks, prefix=f"{prefix}inv:")
            outcomes = RedisOutcomeStore(client, prefix=f"{prefix}idempotency:")
        for product in seed:
            try:
                await store.get(product.sku)
            except UnknownProduct:
                await store.put(product)
        yield Services(
            store=store,
            locks=locks,
            notifier=notifier if notifier is not None else Notifier(),
            idempotency=Idempotency(outcomes, locks, window=idempotency_window),
            hooks=tuple(hooks),
        )


def run_arguments(services: Services, saga: type[Saga], body: bytes) -> dict[str, Any]:
    """The keyword arguments of ``saga.run()`` for a request whose body is ``body``.

    The client's part comes from :func:`asaga.integrations.inputs.decode_inputs`: only
    the saga's declared, non-resource inputs; a key naming a resource (``store``), an
    option of ``run()`` (``idempotency_key``, ``runs``, ``hooks``, ``run_id``) or
    anything else is an ``InputValidationError`` (422) and a body that is not a JSON
    object a ``MalformedBody`` (400), both before any step runs. The saga's resources
    (``store``, ``locks``, ``notifier``, whichever it declares) and the application's
    hooks are added here, from ``services``.
    """
    inputs = decode_inputs(saga, body)
    spec = saga.__asaga__
    assert spec is not None
    available = {"store": services.store, "locks": services.locks, "notifier": services.notifier}
    resources = {
        name: available[name]
        for name, input_ in spec.plan.inputs.items()
        if input_.resource and name in available
    }
    return {**inputs, **resources, "hooks": services.hooks}
