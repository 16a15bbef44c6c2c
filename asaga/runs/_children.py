"""The child runs of composed and mapped steps in a durable run: each a run of its own,
recorded under ``<parent>/<step>/<attempt>[/<element>]``, driven and undone from its
record."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import anyio
import msgspec

from .._events import RunContext
from .._exceptions import (
    RunNotFound,
    RunParked,
    RunStoreError,
)
from .._graph import RUN_ID
from .._observer import Undoable
from .._run import Hooks, SagaSpec, run_values
from ._codec import codec_of
from ._journal import Journal
from ._record import RunRecord, RunStore
from ._recovery import recover_one
from ._replay import failure, recorded_results, recorded_run_values
from ._undo import undo_run


class Children:
    """The child runs of one durable run's composed and mapped steps (see
    :class:`~asaga.runs._journal.ChildRuns`): each a run of its own, recorded under
    ``<parent>/<step>/<attempt>[/<element>]``, so that a resumed parent finds every child
    where it stands, and an unwinding one undoes each from its record, once."""

    __slots__ = ("_extra", "_spec")

    def __init__(self, spec: SagaSpec, extra_hooks: Hooks) -> None:
        self._spec = spec  # the parent saga's
        self._extra = extra_hooks

    async def run(
        self,
        journal: Journal,
        spec: SagaSpec,
        inputs: Mapping[str, Any],
        child_id: str,
        parent: RunContext,
        prefix: str,
    ) -> tuple[Any, Undoable]:
        runs = journal.store
        values = spec.inputs.validate(inputs)
        resources = _resources(spec, values)
        undo = _ChildUndo(((child_id, spec),), runs, resources, frozenset((child_id,)))
        try:
            record: RunRecord | None = await runs.load(child_id)
        except RunNotFound:
            record = None
        if record is not None:  # the parent was resumed: pick the child up where it is
            return await self._reattach(runs, spec, record, resources, parent, prefix), undo
        child = Journal.new(
            runs,
            codec_of(spec),
            spec.plan.saga,
            spec.saga_version,
            child_id,
            values,
            None,
            runs.idempotency_window,
            children=Children(spec, ((), ())),
            parent=journal.run_id,
        )
        values[RUN_ID] = child_id
        try:
            await child.open(spec.plan.roots)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), contextlib.suppress(RunStoreError):
                await child.finish("cancelled")  # if it was written at all
            raise
        result, _ = await run_values(
            spec, values, child_id, parent=parent, prefix=prefix, observer=child, undoable=False
        )
        return result.output, undo

    async def _reattach(
        self,
        runs: RunStore,
        spec: SagaSpec,
        record: RunRecord,
        resources: Mapping[str, Any],
        parent: RunContext,
        prefix: str,
    ) -> Any:
        """The output of a child recorded before, driven to its end first if it was
        left unfinished; its recorded failure raised if it failed."""
        if not record.finished:
            record = await _take(runs, spec, record, resources, parent, forward=True)
        if record.status != "succeeded":
            raise failure(spec, record)
        results = recorded_results(spec, record)
        return results.get(spec.plan.output) if spec.plan.output is not None else None

    def undo(self, journal: Journal, step: str, values: Mapping[str, Any]) -> Undoable | None:
        node = self._spec.plan.nodes.get(step)
        if node is None or node.invoke is None:
            return None
        recorded = journal.record.steps.get(step)
        attempts = max(recorded.attempt if recorded is not None else 1, 1)
        found: dict[str, SagaSpec] = {}
        for attempt in range(1, attempts + 1):
            for key, spec in node.invoke.children(step, attempt, values):
                found[f"{journal.run_id}/{key}"] = spec
        if recorded is not None and recorded.children:
            spec = next(iter(found.values()), None)
            for child_id in recorded.children:
                if spec is not None:
                    found.setdefault(child_id, spec)
        if not found:
            return None
        any_spec = next(iter(found.values()))
        known = frozenset(recorded.children if recorded is not None else ())
        return _ChildUndo(tuple(found.items()), journal.store, _resources(any_spec, values), known)


async def _take(
    runs: RunStore,
    spec: SagaSpec,
    record: RunRecord,
    resources: Mapping[str, Any],
    parent: RunContext,
    *,
    forward: bool,
) -> RunRecord:
    """Drive the unfinished child run ``record`` to its end (taking it over from its dead
    owner first, or waiting for the live one that holds it); its record then."""
    run_id = record.run_id
    if record.status == "waiting":  # parked with its parent
        if forward:
            raise RunParked(spec.plan.saga, run_id, record.waiting)  # it still waits
        record = await _stop_waiting(runs, spec, record)
        if record.finished:
            return record
    elif record.owner != runs.owner:
        taken = await runs.claim(run_id, record.owner or "")
        if taken is None:  # a live owner, or another recoverer, has it
            return await runs.wait_finished(run_id)
        record = taken
    values = recorded_run_values(spec, record, resources)
    await recover_one(spec, runs, record, values, ((), ()), Children, parent, forward=forward)
    return await runs.load(run_id)


async def _stop_waiting(runs: RunStore, spec: SagaSpec, record: RunRecord) -> RunRecord:
    """A parked child run whose parent unwinds: taken, what it waits for waits no more (a
    composed step of its own is left in doubt, so that its child runs are unwound from
    their records), to be unwound."""
    journal = Journal(runs, codec_of(spec), record, children=Children(spec, ((), ())))
    now = time.time()
    for info in record.waiting:
        step = record.steps.get(info.step)
        if step is None:
            continue
        if info.runs:
            journal.mark(info.step, msgspec.structs.replace(step, status="running", wait=None))
        else:
            journal.mark(
                info.step,
                msgspec.structs.replace(
                    step, status="cancelled", error="its parent unwinds", wait=None, ended_at=now
                ),
            )
    journal.set_failure(None, "its parent run unwinds")
    if not await journal.take("compensating", ()):
        return await runs.load(record.run_id)  # another process has it
    return journal.record


def _resources(spec: SagaSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The resources of a child saga, from the values that feed it (never recorded)."""
    return {
        name: values[name] for name, i in spec.plan.inputs.items() if i.resource and name in values
    }


class _ChildUndo:
    """Undo child runs from their records, the last first: a succeeded child is undone
    (once, whoever asks: ``Saga.undo`` semantics), an unfinished one is driven to its end
    by unwinding, one that failed was unwound already."""

    __slots__ = ("_children", "_known", "_resources", "_runs")

    def __init__(
        self,
        children: tuple[tuple[str, SagaSpec], ...],
        runs: RunStore,
        resources: Mapping[str, Any],
        known: frozenset[str],
    ) -> None:
        self._children = children
        self._runs = runs
        self._resources = resources
        self._known = known  # ids known to have a record: one that is gone is an error

    async def undo(self, parent: RunContext) -> None:
        errors: list[Exception] = []
        for child_id, spec in reversed(self._children):
            try:
                await self._undo_one(child_id, spec, parent)
            except Exception as exc:  # noqa: BLE001 - collected; the other children still go
                errors.append(exc)
        if len(errors) == 1 and len(self._children) == 1:
            raise errors[0]  # one child (compose): its UndoFailed, as in memory
        if errors:
            raise ExceptionGroup(f"undoing the child runs of run {parent.run_id} failed", errors)

    async def _undo_one(self, child_id: str, spec: SagaSpec, parent: RunContext) -> None:
        runs = self._runs
        try:
            record = await runs.load(child_id)
        except RunNotFound as exc:
            if child_id in self._known:  # it ran: its record expired, or was deleted
                raise RunStoreError(
                    f"the record of child run {child_id} is gone (past the store's "
                    "retention?): it cannot be undone from its record; undo its effects by "
                    "hand",
                    child_id,
                ) from exc
            return  # never started
        driven = not record.finished
        if driven:
            record = await _take(runs, spec, record, self._resources, parent, forward=False)
        if record.status in ("succeeded", "undoing"):
            await undo_run(
                spec,
                child_id,
                runs=runs,
                resources=self._resources,
                extra_hooks=((), ()),
                kin=Children,
                parent=parent,
            )
        elif driven and record.status in ("compensation_failed", "undo_failed"):
            raise failure(spec, record)  # unwound now, not all of it: a human looks
