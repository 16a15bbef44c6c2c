"""Runs on workers: a saga's run enqueued on a job engine (SAQ), run by a pool of worker
processes, recorded in a shared run store.

::

    async with SaqQueue.from_url(url, name="inventory") as queue:
        handle = await InventorySaga.start(queue=queue, runs=runs, product_id="sku-1")
        result = await handle.result()          # pushed, not polled; or handle.cancel()

    # a worker process:  asaga worker myapp.workers:served --redis URL --queue inventory
    served = Served(sagas=[InventorySaga], runs=runs, resources={"store": store, ...})

Steps on workers: ``@step(queue="payments")`` runs one step (and its compensation) on
the workers of queue ``payments`` while the run goes on where it runs; the queue must be
open there (``async with SaqQueue.from_url(url, name="payments")``). See
docs/distributed.md. ``SaqQueue`` needs the ``saq`` extra (``pip install
'asaga[saq]'``).
"""

from typing import TYPE_CHECKING, Any

from .._exceptions import JobFailed as JobFailed
from .._exceptions import QueueNotOpen as QueueNotOpen
from .._exceptions import RemoteStepFailed as RemoteStepFailed
from .._exceptions import RunCancelled as RunCancelled
from .._public import claim as _claim
from ._engine import JobEnd as JobEnd
from ._engine import JobQueue as JobQueue
from ._runs import RunHandle as RunHandle
from ._runs import Served as Served
from ._runs import serve as serve

if TYPE_CHECKING:
    from ._saq import SaqQueue as SaqQueue

__all__ = [
    "JobEnd",
    "JobFailed",
    "JobQueue",
    "QueueNotOpen",
    "RemoteStepFailed",
    "RunCancelled",
    "RunHandle",
    "SaqQueue",
    "Served",
    "serve",
]

_claim(__name__, globals())
del _claim


def __getattr__(name: str) -> Any:
    # Imported on first use, so that asaga works without the saq extra installed.
    if name == "SaqQueue":
        from ._saq import SaqQueue

        SaqQueue.__module__ = __name__
        return SaqQueue
    raise AttributeError(f"module 'asaga.workers' has no attribute {name!r}")
