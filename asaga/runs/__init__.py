"""Durable runs: a run's record, kept write-ahead in a store, so that a crash never
strands a half-done saga.

::

    async with RedisRunStore.from_url("redis://localhost:6379/0") as runs:
        result = await Checkout.run(order_id="o-1", runs=runs, idempotency_key="o-1")
        ...
        await recover(runs, sagas=[Checkout], resources={"payments": payments})
        await recover_run(runs, run_id, sagas=[Checkout], resources={"payments": payments})
        await Checkout.undo(result.run_id, runs=runs, payments=payments)
        await runs.readmit(run_id)  # a run recovery quarantined (see runs.quarantined())
        page = await runs.page(status="compensation_failed", saga="Checkout")  # a runs list
        more = await runs.page(status="compensation_failed", saga="Checkout", cursor=page.cursor)

``MemoryRunStore`` is the embedded default (idempotency keys, undo and inspection within
one process); ``RedisRunStore`` survives the process. See
docs/durability.md. ``page``, ``find``, ``counts`` and ``note`` serve a runs dashboard:
pages of runs by status (``in_doubt`` and ``quarantined`` too), saga and time, newest
first, read from indexes the store keeps as it writes (see :class:`RunPage`).
"""

from typing import TYPE_CHECKING, Any

from .._public import claim as _claim
from ._durable import recover as recover
from ._durable import recover_run as recover_run
from ._memory import MemoryRunStore as MemoryRunStore
from ._parking import Delivery as Delivery
from ._record import Quarantined as Quarantined
from ._record import RunPage as RunPage
from ._record import RunRecord as RunRecord
from ._record import RunStatus as RunStatus
from ._record import RunStore as RunStore
from ._record import StepRecord as StepRecord
from ._recovery import Recovered as Recovered
from ._undo import UndoResult as UndoResult

if TYPE_CHECKING:
    from ._redis import RedisRunStore as RedisRunStore

__all__ = [
    "Delivery",
    "MemoryRunStore",
    "Quarantined",
    "Recovered",
    "RedisRunStore",
    "RunPage",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "StepRecord",
    "UndoResult",
    "recover",
    "recover_run",
]

# Tracebacks and reprs say `asaga.runs.RunRecord`, not `asaga._record.RunRecord`.
_claim(__name__, globals())
del _claim


def __getattr__(name: str) -> Any:
    # Imported on first use, so that asaga works without the redis extra installed.
    if name == "RedisRunStore":
        from ._redis import RedisRunStore

        RedisRunStore.__module__ = __name__
        return RedisRunStore
    raise AttributeError(f"module 'asaga.runs' has no attribute {name!r}")
