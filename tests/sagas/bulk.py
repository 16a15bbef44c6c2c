"""Bulk sagas for the kill -9 tests of durable maps (tests/runs/test_durable_map_kill.py).

- The inventory example's ``BulkInventorySaga`` (``map_each(InventorySaga, mode="collect")``
  then ``summary``) is run as it is; :class:`ApprovedBulk` has the same shape with an
  ``approval`` after the map that may refuse, so that a parent unwinds *after* its children
  succeeded and must undo each of them from its record.
- :class:`SlowNotifier` stretches each child run (a seeded delay in ``notify``), so that a
  kill lands anywhere in a child.
- :class:`BulkHold` maps :class:`HeldLine`, whose steps are idempotent (the reservation is
  keyed by the child's run id) and can be held at a :class:`Gate`: a process killed there
  leaves every child in doubt at a known step, and the recovered parent succeeds.
- :class:`HeldUndo` wraps the inventory store so that a compensation's keyed ``adjust``
  lands and then blocks: a process killed there leaves ``undo_perform`` cut off after its
  write, and recovery runs it again.
"""

from __future__ import annotations

import random
import sys
from typing import Any, Literal

import anyio
import msgspec

from asaga import MapResult, Resource, Saga, map_each, step
from asaga.locks import LockProvider
from examples.inventory import Change, InventorySaga, InventoryStore, Notifier, OperationRequest

__all__ = [
    "ApprovedBulk",
    "BulkHold",
    "Gate",
    "HeldLine",
    "HeldUndo",
    "Line",
    "Refused",
    "SlowNotifier",
]


class SlowNotifier(Notifier):
    """A notifier whose every send takes a seeded random while (0 to ``most`` seconds)."""

    def __init__(self, seed: int, most: float = 0.03) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._most = most

    async def send(self, key: str, message: str) -> None:
        await anyio.sleep(self._rng.uniform(0.0, self._most))
        await super().send(key, message)


class Refused(Exception):
    """The approval of a bulk request said no."""


class ApprovedBulk(Saga):
    """``BulkInventorySaga``'s shape, then an approval that refuses when ``approve`` is
    false: the parent then unwinds, and every child that succeeded is undone."""

    operations: list[OperationRequest]
    approve: bool = True
    store: Resource[InventoryStore]
    locks: Resource[LockProvider]
    notifier: Resource[Notifier]

    items = map_each(InventorySaga, over="operations", mode="collect", max_concurrency=4)

    @step
    async def approval(items: MapResult[Change], approve: bool) -> list[int]:
        if not approve:
            raise Refused(f"{len(items.successes)} lines refused")
        return [s.index for s in items.successes]


# -- a bulk whose children can be held at a known step ------------------------------------------


class Gate:
    """Where a :class:`HeldLine` waits. Closed: every caller blocks forever, and once
    ``expected`` callers are blocked it prints ``blocked`` (for the test that kills the
    process then). Open: callers go through at once."""

    def __init__(self, *, closed: bool = False, expected: int = 0) -> None:
        self.closed = closed
        self.expected = expected
        self.passed: list[str] = []
        self._blocked = 0

    async def wait(self, run_id: str) -> None:
        self.passed.append(run_id)
        if not self.closed:
            return
        self._blocked += 1
        if self._blocked == self.expected:
            print("blocked", flush=True)
            sys.stdout.flush()
        await anyio.sleep_forever()


class HeldUndo:
    """Delegates to an inventory store; a keyed ``adjust`` (``undo_perform``'s) is made,
    then blocks forever, and the first to block prints ``blocked`` (for the test that
    kills the process then): the compensation's write landed, its end is not recorded."""

    def __init__(self, inner: InventoryStore) -> None:
        self.inner = inner
        self.blocked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def adjust(
        self, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> bool:
        applied = await self.inner.adjust(sku, d_inventory, d_reserved, key=key)
        if key is None:
            return applied
        self.blocked += 1
        if self.blocked == 1:
            print("blocked", flush=True)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a :class:`BulkHold`: what to reserve, and where its run is held."""

    product_id: str
    quantity: int
    held_in: Literal["reserve", "confirm"] = "confirm"


class HeldLine(Saga):
    """Reserve ``quantity`` of ``product_id`` (keyed by the run's id: idempotent), then
    confirm; either step may wait at the gate."""

    product_id: str
    quantity: int
    held_in: str = "confirm"
    store: Resource[InventoryStore]
    gate: Resource[Gate]

    output = "reserve"

    @step(idempotent=True)
    async def reserve(
        product_id: str, quantity: int, held_in: str, run_id: str, store: InventoryStore, gate: Gate
    ) -> str:
        """The store's atomic reservation, keyed by the run: done again, it changes nothing.
        Held after its effect, when ``held_in`` says so (in doubt, with the effect made)."""
        entry = await store.reserve(run_id, product_id, quantity, 3600.0)
        if held_in == "reserve":
            await gate.wait(run_id)
        return entry

    @reserve.compensate
    async def release(run_id: str, store: InventoryStore) -> None:
        await store.release(run_id)  # idempotent: a released reservation is unknown

    @step(idempotent=True)
    async def confirm(reserve: str, held_in: str, run_id: str, gate: Gate) -> str:
        if held_in == "confirm":
            await gate.wait(run_id)
        return reserve


class BulkHold(Saga):
    """Hold each line (a :class:`HeldLine` child run), collecting the failures."""

    lines: list[Line]
    store: Resource[InventoryStore]
    gate: Resource[Gate]

    items = map_each(HeldLine, over="lines", mode="collect", max_concurrency=8)

    @step
    async def summary(items: MapResult[str]) -> list[int]:
        """The lines that succeeded; every line failing fails the saga."""
        if items.all_failed:
            raise RuntimeError(f"all {len(items.failures)} lines failed")
        return [s.index for s in items.successes]
