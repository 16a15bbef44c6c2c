"""What the example web services share, whatever the framework.

- :func:`open_services` creates the store, lock provider, notifier and idempotency of one
  application (in memory, or on Redis), seeds products, and closes everything at exit;
- :func:`request_inputs` turns a request body into a saga's inputs, accepting only the
  inputs a client may give (never a resource such as ``store`` or a run option).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from asaga import FieldError, Hook, InputValidationError, Saga
from asaga.integrations.idempotency import (
    Idempotency,
    MemoryOutcomeStore,
    OutcomeStore,
    RedisOutcomeStore,
)
from asaga.locks import LockProvider

from .sagas import InventorySaga, InventoryTransferSaga, Notifier
from .store import (
    InventoryStore,
    MemoryInventoryStore,
    Product,
    RedisInventoryStore,
    UnknownProduct,
)

__all__ = ["CLIENT_INPUTS", "MalformedBody", "Services", "open_services", "request_inputs"]


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


CLIENT_INPUTS: dict[type[Saga], tuple[str, ...]] = {
    InventorySaga: ("product_id", "quantity", "operation"),
    InventoryTransferSaga: ("product_id", "quantity", "source", "destination"),
}
"""The inputs a client may give each saga (the others are resources, injected)."""


class MalformedBody(ValueError):
    """The request body is not a JSON object."""


def request_inputs(body: bytes, saga: type[Saga]) -> dict[str, Any]:
    """A request body (a JSON object) as ``saga``'s client inputs.

    Raises :class:`MalformedBody` if it is not a JSON object, and InputValidationError (a
    422, before any step) for a key naming one of the saga's injected inputs (``store``)
    or a run option (``hooks``, ``run_id``): a client cannot swap those. Every other key
    goes to the saga, which validates the values and reports unknown keys together with
    the other bad fields.
    """
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedBody("the body must be a JSON object")
    allowed = CLIENT_INPUTS[saga]
    spec = saga.__asaga__
    injected = set(spec.plan.inputs) - set(allowed) if spec is not None else set()
    refused = [name for name in data if name in injected or name in _RUN_OPTIONS]
    if refused:
        raise InputValidationError(
            saga.__name__,
            [
                FieldError(field=name, message=f"not accepted from a request; give {list(allowed)}")
                for name in refused
            ],
        )
    return data


_RUN_OPTIONS = frozenset({"hooks", "run_id"})
