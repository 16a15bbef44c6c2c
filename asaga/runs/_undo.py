"""Undo a durable run that succeeded, from its record, once (``Saga.undo``); and the
compensation of a recorded run, which recovery shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import msgspec
import structlog

from .._compensation import Unwind
from .._events import Event, RunContext
from .._exceptions import (
    RunStoreError,
    UndoFailed,
)
from .._run import Hooks, SagaSpec, unwind_steps
from ._codec import codec_of
from ._journal import ChildRunsFor, Journal
from ._record import RunRecord, RunStatus, RunStore
from ._replay import prefix_of, recorded_run_values

_logger = structlog.get_logger("asaga")


class UndoResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Saga.undo <asaga.Saga.undo>` did."""

    run_id: str
    saga: str
    status: RunStatus
    """The run's status now: ``undone`` (or ``failed``/``cancelled``... when there was
    nothing to undo)."""
    compensated: tuple[str, ...]
    """Steps whose compensation has succeeded (by this call or an earlier one)."""
    already: bool
    """``True`` when this call did nothing: the run was undone before (or by another
    process meanwhile), or it had failed and its steps were compensated then."""


async def undo_run(
    spec: SagaSpec,
    run_id: str,
    *,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    parent: RunContext | None = None,
) -> UndoResult:
    """``Saga.undo``: take the succeeded run (exactly one caller wins), compensate it
    (reporting to ``parent``, for the child run of a composed or mapped step; ``kin``
    makes the child runs of its composed and mapped steps)."""
    saga = spec.plan.saga
    record = await runs.load(run_id)
    if record.saga != saga:
        raise RunStoreError(f"run {run_id} is a run of saga {record.saga}, not {saga}", run_id)
    if record.status in ("succeeded", "undoing"):
        # Everything that can be refused is refused before the run is taken: inputs that
        # no longer validate, a missing resource, a result that does not decode.
        values = recorded_run_values(spec, record, resources)
        before, taken = await runs.claim_undo(run_id)
        if taken:  # a succeeded run, or the undo of an owner that died: this call goes on
            record = msgspec.structs.replace(before, status="undoing", owner=runs.owner)
            return await undo_recorded(spec, runs, record, values, extra_hooks, kin, parent)
        record = before
    if record.status == "undoing":  # by a live process: wait for it
        record = await runs.wait_finished(run_id)
    if record.status in ("running", "compensating"):
        raise RunStoreError(
            f"run {run_id} of saga {saga} has not finished ({record.status}); undo it once "
            "it succeeded",
            run_id,
        )
    return UndoResult(
        run_id=run_id,
        saga=saga,
        status=record.status,
        compensated=record.compensated,
        already=True,
    )


async def undo_recorded(
    spec: SagaSpec,
    runs: RunStore,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    parent: RunContext | None = None,
) -> UndoResult:
    """Compensate the succeeded steps of ``record`` (owned by ``runs`` now), and record it."""
    journal = Journal(runs, codec_of(spec), record, children=kin(spec, extra_hooks))
    completed = [
        n
        for n, s in record.steps.items()
        if s.status == "succeeded" and s.compensation != "succeeded"
    ]
    unwind = await compensate_recorded(
        spec, values, record, journal, completed, extra_hooks, "undo", parent
    )
    compensated = (*record.compensated, *unwind.compensated)
    if unwind.errors:
        raise UndoFailed(
            spec.plan.saga,
            record.run_id,
            compensated,
            [name for name, _ in unwind.errors],
            ExceptionGroup(
                f"compensations of saga {spec.plan.saga} failed",
                [exc for _, exc in unwind.errors],
            ),
        )
    return UndoResult(
        run_id=record.run_id,
        saga=spec.plan.saga,
        status="undone",
        compensated=tuple(dict.fromkeys(compensated)),
        already=False,
    )


async def compensate_recorded(
    spec: SagaSpec,
    values: dict[str, Any],
    record: RunRecord,
    journal: Journal,
    completed: Sequence[str],
    extra_hooks: Hooks,
    ending: Callable[[Unwind], RunStatus] | str,
    parent: RunContext | None = None,
    final: Event | None = None,
) -> Unwind:
    """Compensate ``completed`` steps of a recorded run (events to the saga's hooks), then
    write how it ended, even if the caller is cancelled meanwhile: ``ending`` is
    ``"undo"`` (``undone`` / ``undo_failed``) or a function of the unwind; ``final``, the
    event recorded with that last write (a recovery's ``RunFailed``)."""

    async def finish(unwind: Unwind) -> None:
        await _finish(journal, record, unwind, ending, final)

    return await unwind_steps(
        spec,
        values,
        record.run_id,
        completed,
        observer=journal,
        extra_hooks=extra_hooks,
        parent=parent,
        prefix=prefix_of(record.run_id) if parent is not None else None,
        then=finish,
    )


async def _finish(
    journal: Journal,
    record: RunRecord,
    unwind: Unwind,
    ending: Callable[[Unwind], RunStatus] | str,
    final: Event | None = None,
) -> None:
    if journal.lost:
        return
    if isinstance(ending, str):
        status: RunStatus = "undo_failed" if unwind.errors else "undone"
    else:
        status = ending(unwind)
    with anyio.CancelScope(shield=True):
        try:
            await journal.finish(status, final)
        except RunStoreError as exc:
            _logger.warning("run_not_recorded", run_id=record.run_id, error=repr(exc))
