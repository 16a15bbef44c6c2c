"""The durable runs the saga class is given: those of :mod:`asaga.runs`, the start of a
run on workers, and its steps on workers (this package)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._run import SagaSpec
from ..runs._durable import DURABILITY as RUNS
from ..runs._record import RunStore
from ._engine import JobQueue
from ._remote import on_workers
from ._runs import RunHandle, start_run

__all__ = ["DURABILITY"]


class _Durability:
    """``Saga.run`` with a store, ``Saga.undo`` (:mod:`asaga.runs`) and ``Saga.start``."""

    default_store = staticmethod(RUNS.default_store)
    run = staticmethod(RUNS.run)
    undo = staticmethod(RUNS.undo)
    deliver = staticmethod(RUNS.deliver)
    resume = staticmethod(RUNS.resume)
    cancel = staticmethod(RUNS.cancel)
    on_workers = staticmethod(on_workers)

    @staticmethod
    async def start(
        queue: JobQueue,
        spec: SagaSpec,
        inputs: Mapping[str, Any],
        *,
        runs: RunStore,
        idempotency_key: str | None,
        run_id: str | None,
    ) -> RunHandle:
        return await start_run(
            queue, spec, inputs, runs=runs, idempotency_key=idempotency_key, run_id=run_id
        )


DURABILITY = _Durability()
"""What ``asaga/__init__.py`` wires into the saga class."""
