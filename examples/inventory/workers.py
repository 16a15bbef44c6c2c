"""What an inventory worker serves: the inventory sagas, on Redis.

This is what ::

    asaga worker examples.inventory.workers:served --redis URL --prefix inventory: \\
        --queue inventory

serves (from the repository root): the runs of ``InventorySaga`` and
``BulkInventorySaga`` started on the queue with ``Saga.start(queue=..., runs=...)``,
recorded in a ``RedisRunStore`` under ``<prefix>runs:`` (the callers' store must use the
same prefix), with the example's ``RedisInventoryStore`` (``<prefix>inv:``), a
``RedisLockProvider`` (``<prefix>locks:``) and a ``Notifier`` as their resources. Every
worker of the queue must serve the same. Products are not stocked here: put them in the
store first (``RedisInventoryStore.put``).

The run store's ``owner_ttl`` is 2 s: a worker that dies (``kill -9``) stops renewing its
lease, and within about that long another worker's recovery sweep (every ``owner_ttl``)
takes its runs over and finishes or unwinds them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asaga.locks import RedisLockProvider
from asaga.runs import RedisRunStore
from asaga.workers import Served

from .sagas import BulkInventorySaga, InventorySaga, Notifier
from .store import RedisInventoryStore

__all__ = ["OWNER_TTL", "SAGAS", "served"]

SAGAS = (InventorySaga, BulkInventorySaga)
"""The sagas an inventory worker runs. Both take exactly the resources below: a worker
gives every saga it serves all of ``Served.resources``, and a saga refuses an input it
does not declare, so ``AtomicReservationSaga`` (no ``locks``) and
``InventoryTransferSaga`` (no ``notifier``) would fail here, and their runs be
quarantined by the recovery sweep."""

OWNER_TTL = 2.0
"""Seconds after which a dead worker's runs are taken over by another's recovery sweep."""


@asynccontextmanager
async def served(url: str, prefix: str = "inventory:") -> AsyncIterator[Served]:
    """The inventory sagas and their resources on the Redis server at ``url``, every key
    under ``prefix``; open for as long as the worker runs."""
    async with (
        RedisRunStore.from_url(url, prefix=f"{prefix}runs:", owner_ttl=OWNER_TTL) as runs,
        RedisLockProvider.from_url(url, prefix=f"{prefix}locks:") as locks,
    ):
        store = RedisInventoryStore(locks.client, locks, prefix=f"{prefix}inv:")
        yield Served(
            sagas=SAGAS,
            runs=runs,
            resources={"store": store, "locks": locks, "notifier": Notifier()},
        )
