"""Durable runs: start one (or replay an idempotency key's outcome), recover runs whose
process died, and undo a run that succeeded, all from the records in a :class:`RunStore`.

Recovery of one run taken over from a dead owner, by what its record says::

    status running, no step failed:
        steps in doubt (started, not known to have ended) that are idempotent, and steps
        that never started, run (forward), from the recorded results;
        a step in doubt that is not idempotent fails the run (it may have had its effect):
        the completed steps are compensated, and if that step has a compensation it
        needs a human (undoing it needs the result it never recorded)
    status compensating (or a step failed):
        the compensations not recorded as succeeded run again (at least once)
    status undoing:
        the undo goes on the same way

A recovered run is driven by the same scheduler and unwinder as a fresh one, with a
journal that goes on from the record, so it is recorded the same way.

A run whose record cannot be driven (it does not decode, is foreign, names steps the saga
lacks, or its inputs no longer validate) is quarantined by the store, with the reason:
out of every later sweep, kept until readmitted. It never counts against a sweep's
``limit``: the sweep looks again until it has taken ``limit`` runs it can drive, or there
are no more.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import anyio
import msgspec
import structlog

from .._compensation import Unwind
from .._events import RunContext, split_hooks
from .._exceptions import (
    AsagaError,
    CompensationFailed,
    CorruptRecord,
    IdempotencyKeyReused,
    InputValidationError,
    RecordedError,
    RunNotFound,
    RunStoreError,
    SagaFailed,
    UndoFailed,
)
from .._graph import RUN_ID
from .._observer import Undoable
from .._run import Hooks, SagaResult, SagaSpec, _ReadOnly, new_run_id, run_values, unwind_steps
from .._scheduler import Resume
from ._codec import codec_of, recorded_values
from ._journal import Journal
from ._memory import default_store
from ._record import RunRecord, RunStatus, RunStore, StepRecord

__all__ = [
    "DURABILITY",
    "Recovered",
    "SagaClass",
    "UndoResult",
    "recover",
    "run_durable",
    "undo_run",
]

_logger = structlog.get_logger("asaga")

_MAX_ROUNDS = 1000  # a sweep looks again after quarantining runs, this many times at most


# -- running ----------------------------------------------------------------------------------


async def run_durable(
    spec: SagaSpec,
    inputs: Mapping[str, Any],
    *,
    runs: RunStore,
    idempotency_key: str | None,
    run_id: str | None,
    extra_hooks: Hooks,
) -> SagaResult[Any]:
    """``Saga.run`` with a store: record the run write-ahead, or replay the outcome of the
    run that already holds ``idempotency_key``."""
    saga = spec.plan.saga
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255
    ):
        raise ValueError("an idempotency key is a str of 1 to 255 characters")
    if run_id is not None and (
        not isinstance(run_id, str) or not 1 <= len(run_id) <= 255 or "/" in run_id
    ):
        raise ValueError(
            "a durable run's run_id is a str of 1 to 255 characters without '/' (which "
            "names the child runs of composed and mapped steps)"
        )
    values = spec.inputs.validate(inputs)
    run_id = run_id or new_run_id()
    journal = Journal.new(
        runs,
        codec_of(spec),
        saga,
        spec.saga_version,
        run_id,
        values,
        idempotency_key,
        runs.idempotency_window,
        children=_Children(spec, extra_hooks),
    )
    values[RUN_ID] = run_id
    for _ in range(100):  # bounded: only a cancelled holder of the key makes it go round
        try:
            holder = await journal.open(spec.plan.roots)
        except anyio.get_cancelled_exc_class():
            # The record may exist: say it was cancelled (ignored if it does not).
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(RunStoreError):
                    await journal.finish("cancelled")
                if journal.claim is not None:
                    await runs.release_key(journal.claim, run_id)
            raise
        if holder is None:
            break
        record = await runs.load(holder)
        if record.fingerprint != journal.record.fingerprint:
            raise IdempotencyKeyReused(idempotency_key or "", f"other inputs of saga {saga}")
        if not record.finished:
            record = await runs.wait_finished(holder)
        if record.status == "cancelled":
            continue  # its caller went away and it was undone: this call runs it anew
        return _replayed(spec, record)
    else:  # pragma: no cover - a key whose runs keep being cancelled
        raise RunStoreError(f"idempotency key {idempotency_key!r} keeps being released")
    result, _ = await run_values(spec, values, run_id, extra_hooks=extra_hooks, observer=journal)
    return result


def _replayed(spec: SagaSpec, record: RunRecord) -> SagaResult[Any]:
    """The recorded outcome of a finished run: its result, or its failure raised."""
    if record.status in ("succeeded", "undoing", "undone", "undo_failed"):
        results = _results(spec, record)
        plan = spec.plan
        return SagaResult._create(
            run_id=record.run_id,
            output=results.get(plan.output) if plan.output is not None else None,
            results=_ReadOnly(results),
            replayed=True,
        )
    raise _failure(spec, record)


def _failure(spec: SagaSpec, record: RunRecord) -> SagaFailed:
    saga = spec.plan.saga
    step = record.failed_step or ""
    cause = RecordedError(record.error or record.status)
    failed = record.failed_compensations
    error: SagaFailed
    if failed:
        errors = [RecordedError(record.steps[n].compensation_error or "failed") for n in failed]
        error = CompensationFailed(
            saga,
            record.run_id,
            step,
            record.compensated,
            failed,
            ExceptionGroup(f"compensations of saga {saga} failed", errors),
        )
    else:
        error = SagaFailed(saga, record.run_id, step, record.compensated)
    error.__cause__ = cause
    return error


def _results(spec: SagaSpec, record: RunRecord) -> dict[str, Any]:
    codec = codec_of(spec)
    return {
        name: codec.decode_result(name, s.result, record.run_id)
        for name, s in record.steps.items()
        if s.status == "succeeded" and s.result is not None
    }


# -- undo after success -----------------------------------------------------------------------


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
    parent: RunContext | None = None,
) -> UndoResult:
    """``Saga.undo``: take the succeeded run (exactly one caller wins), compensate it
    (reporting to ``parent``, for the child run of a composed or mapped step)."""
    saga = spec.plan.saga
    record = await runs.load(run_id)
    if record.saga != saga:
        raise RunStoreError(f"run {run_id} is a run of saga {record.saga}, not {saga}", run_id)
    if record.status in ("succeeded", "undoing"):
        # Everything that can be refused is refused before the run is taken: inputs that
        # no longer validate, a missing resource, a result that does not decode.
        values = _values(spec, record, resources)
        before, taken = await runs.claim_undo(run_id)
        if taken:  # a succeeded run, or the undo of an owner that died: this call goes on
            record = msgspec.structs.replace(before, status="undoing", owner=runs.owner)
            return await _undo(spec, runs, record, values, extra_hooks, parent)
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


async def _undo(
    spec: SagaSpec,
    runs: RunStore,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    parent: RunContext | None = None,
) -> UndoResult:
    """Compensate the succeeded steps of ``record`` (owned by ``runs`` now), and record it."""
    journal = Journal(runs, codec_of(spec), record, children=_Children(spec, extra_hooks))
    completed = [
        n
        for n, s in record.steps.items()
        if s.status == "succeeded" and s.compensation != "succeeded"
    ]
    unwind = await _compensate(
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


async def _compensate(
    spec: SagaSpec,
    values: dict[str, Any],
    record: RunRecord,
    journal: Journal,
    completed: Sequence[str],
    extra_hooks: Hooks,
    ending: Callable[[Unwind], RunStatus] | str,
    parent: RunContext | None = None,
) -> Unwind:
    """Compensate ``completed`` steps of a recorded run (events to the saga's hooks), then
    write how it ended, even if the caller is cancelled meanwhile: ``ending`` is
    ``"undo"`` (``undone`` / ``undo_failed``) or a function of the unwind."""

    async def finish(unwind: Unwind) -> None:
        await _finish(journal, record, unwind, ending)

    return await unwind_steps(
        spec,
        values,
        record.run_id,
        completed,
        observer=journal,
        extra_hooks=extra_hooks,
        parent=parent,
        prefix=_prefix_of(record.run_id) if parent is not None else None,
        then=finish,
    )


async def _finish(
    journal: Journal,
    record: RunRecord,
    unwind: Unwind,
    ending: Callable[[Unwind], RunStatus] | str,
) -> None:
    if journal.lost:
        return
    if isinstance(ending, str):
        status: RunStatus = "undo_failed" if unwind.errors else "undone"
    else:
        status = ending(unwind)
    with anyio.CancelScope(shield=True):
        try:
            await journal.finish(status)
        except RunStoreError as exc:
            _logger.warning("run_not_recorded", run_id=record.run_id, error=repr(exc))


def _values(spec: SagaSpec, record: RunRecord, resources: Mapping[str, Any]) -> dict[str, Any]:
    values = recorded_values(codec_of(spec), spec.inputs, record, resources)
    values.update(_results(spec, record))
    return values


# -- recovery ---------------------------------------------------------------------------------


class Recovered(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`recover` did with one run."""

    run_id: str
    saga: str
    outcome: str
    """``succeeded`` (resumed and finished), ``failed`` (compensated), ``cancelled``,
    ``compensation_failed`` / ``undo_failed`` (some compensation failed: needs a human),
    ``undone`` (an interrupted undo finished), ``quarantined`` (its record cannot be
    driven: set aside, ``error`` says why), or ``error`` (see ``error``)."""
    resumed: tuple[str, ...] = ()
    """Steps that ran (again) forward."""
    compensated: tuple[str, ...] = ()
    """Steps compensated by the recovery."""
    in_doubt: tuple[str, ...] = ()
    """Steps that were in doubt and not idempotent: they may have had their effect."""
    error: str | None = None


class SagaClass(Protocol):
    """A saga class (``type[Saga]``) as :func:`recover` reads it: its spec.

    Named here rather than imported, because :mod:`asaga._saga` imports this module: the
    dependency points one way (checked by the import-linter contracts in pyproject.toml).
    """

    @property
    def __asaga__(self) -> SagaSpec | None: ...


async def recover(
    runs: RunStore,
    *,
    sagas: Sequence[SagaClass],
    resources: Mapping[str, Any] | None = None,
    limit: int = 100,
    concurrency: int = 8,
    hooks: Sequence[Any] = (),
) -> list[Recovered]:
    """Finish or compensate the runs of ``sagas`` whose process died.

    Finds up to ``limit`` unfinished runs whose owner's lease expired, takes each over
    (exactly one recoverer wins each) just before driving it to an end from its record:
    steps that never started, and idempotent ones in doubt, run forward; a run with a
    non-idempotent step in doubt, or that was already unwinding, is compensated. A run
    whose record cannot be driven (corrupt, of a newer schema, foreign, not fitting the
    saga) is quarantined (outcome ``quarantined``) and does not count against ``limit``.
    ``resources`` are the ``Resource`` inputs the sagas need (never recorded, so given
    again here); at most ``concurrency`` runs are recovered at once. Returns what
    happened to each run.

    Call it when a service starts, and then periodically (every ``owner_ttl`` or so): a
    run is recoverable once its owner's lease has expired.
    """
    resources = dict(resources or {})
    specs: dict[str, SagaSpec] = {}
    for cls in sagas:
        spec = getattr(cls, "__asaga__", None)
        if spec is None:
            raise TypeError(f"recover(sagas=...) takes saga classes, got {cls!r}")
        missing = [
            name
            for name, i in spec.plan.inputs.items()
            if i.resource and i.required and name not in resources
        ]
        if missing:
            raise ValueError(
                f"recover() needs the resources of saga {spec.plan.saga}, which are never "
                f"recorded: pass resources={{...}} with {missing}"
            )
        specs[spec.plan.saga] = spec
    if not 1 <= concurrency <= 1000 or not limit >= 1:
        raise ValueError("limit >= 1 and 1 <= concurrency <= 1000")
    extra = split_hooks(hooks) if hooks else ((), ())
    versions = {name: spec.saga_version for name, spec in specs.items()}
    report: list[Recovered] = []
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(run_id: str, owner: str) -> None:
        async with limiter:
            # Taken only now, when it is driven: if this sweep is cancelled, the runs it
            # has not reached stay for the next sweep (here or in another process).
            try:
                record = await runs.claim(run_id, owner)
            except CorruptRecord as exc:  # taken, but its record cannot be read
                report.append(await _set_aside(runs, run_id, "", str(exc)))
                return
            except AsagaError as exc:  # Redis went away: this one waits for the next sweep
                report.append(Recovered(run_id=run_id, saga="", outcome="error", error=repr(exc)))
                return
            if record is None:
                return  # another recoverer took it, or it finished meanwhile
            try:
                spec, values = _admit(specs, record, resources)
            except (CorruptRecord, InputValidationError) as exc:
                report.append(await _set_aside(runs, run_id, record.saga, str(exc)))
                return
            except AsagaError as exc:
                report.append(
                    Recovered(run_id=run_id, saga=record.saga, outcome="error", error=repr(exc))
                )
                return
            try:
                done = await _recover_one(spec, runs, record, values, extra)
            except AsagaError as exc:  # a store error...
                done = Recovered(
                    run_id=record.run_id, saga=record.saga, outcome="error", error=repr(exc)
                )
            report.append(done)
            _logger.info("run_recovered", saga=done.saga, run_id=done.run_id, outcome=done.outcome)

    # Quarantined runs leave the running set and do not count: look again until ``limit``
    # runs that can be driven were taken, or there are no more.
    seen: set[str] = set()
    taken = 0
    for _ in range(_MAX_ROUNDS):
        found = [
            (run_id, owner)
            for run_id, owner in await runs.abandoned(versions, limit=limit - taken)
            if run_id not in seen and "/" not in run_id  # a child run: its parent drives it
        ]
        if not found:
            break
        seen.update(run_id for run_id, _ in found)
        before = len(report)
        async with anyio.create_task_group() as tg:
            for run_id, owner in found:
                tg.start_soon(one, run_id, owner, name=f"recover {run_id}")
        aside = sum(r.outcome == "quarantined" for r in report[before:])
        taken += len(found) - aside
        if not aside or taken >= limit:
            break
    return report


def _admit(
    specs: Mapping[str, SagaSpec], record: RunRecord, resources: Mapping[str, Any]
) -> tuple[SagaSpec, dict[str, Any]]:
    """The saga and values to drive ``record`` with; :class:`CorruptRecord` (or
    :class:`InputValidationError`) if the record does not fit a saga of this sweep."""
    run_id = record.run_id
    spec = specs.get(record.saga)
    if spec is None or spec.saga_version != record.saga_version:
        raise CorruptRecord(
            f"the record of run {run_id} is of saga {record.saga} (saga_version "
            f"{record.saga_version}), which this recovery was not given",
            run_id,
        )
    unknown = [name for name in record.steps if name not in spec.plan.nodes]
    if unknown:
        raise CorruptRecord(
            f"the record of run {run_id} names steps saga {record.saga} does not have: "
            f"{unknown} (change saga_version when steps are renamed)",
            run_id,
        )
    return spec, _values(spec, record, resources)


async def _set_aside(runs: RunStore, run_id: str, saga: str, reason: str) -> Recovered:
    """Quarantine a run this sweep has taken and cannot drive."""
    try:
        done = await runs.quarantine(run_id, reason)
    except AsagaError as exc:
        return Recovered(run_id=run_id, saga=saga, outcome="error", error=repr(exc))
    if done is None:
        return Recovered(
            run_id=run_id, saga=saga, outcome="error", error=f"{reason} (taken over meanwhile)"
        )
    # The saga the store lists it under (its record, if it decodes, may say another).
    return Recovered(run_id=run_id, saga=done.saga or saga, outcome="quarantined", error=reason)


async def _recover_one(
    spec: SagaSpec,
    runs: RunStore,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    parent: RunContext | None = None,
    *,
    forward: bool = True,
) -> Recovered:
    """Drive one taken-over run to its end from its record (see the module docstring);
    ``forward=False`` unwinds it whatever it could do (a child run whose parent unwinds)."""
    plan = spec.plan
    run_id, saga = record.run_id, record.saga
    if record.status == "undoing":
        try:
            undone = await _undo(spec, runs, record, values, extra_hooks, parent)
        except UndoFailed as exc:
            return Recovered(
                run_id=run_id,
                saga=saga,
                outcome="undo_failed",
                compensated=exc.compensated,
                error=repr(exc),
            )
        return Recovered(run_id=run_id, saga=saga, outcome="undone", compensated=undone.compensated)

    journal = Journal(runs, codec_of(spec), record, children=_Children(spec, extra_hooks))
    steps = record.steps
    in_doubt = [n for n, s in steps.items() if s.status == "running"]
    failed = [n for n, s in steps.items() if s.status == "failed"]
    unwinding = (
        not forward
        or record.status != "running"
        or bool(failed)
        or any(s.compensation is not None for s in steps.values())
    )
    # A composed or mapped step in doubt runs again: its children have records of their
    # own, so running it again picks each child up where it stands, never twice.
    if not unwinding and all(_rerunnable(plan.nodes[n]) for n in in_doubt):
        succeeded = tuple(n for n, s in steps.items() if s.status == "succeeded")
        skipped = tuple(n for n, s in steps.items() if s.status == "skipped")
        resume = Resume(succeeded=succeeded, skipped=skipped)
        resumed = tuple(n for n in plan.order if n not in succeeded and n not in skipped)
        try:
            await journal.resume(_roots(plan, succeeded, skipped))
            await run_values(
                spec,
                values,
                record.run_id,
                extra_hooks=extra_hooks,
                parent=parent,
                prefix=_prefix_of(run_id) if parent is not None else None,
                observer=journal,
                resume=resume,
                undoable=False,
            )
        except SagaFailed as exc:
            outcome = "compensation_failed" if isinstance(exc, CompensationFailed) else "failed"
            return Recovered(
                run_id=run_id,
                saga=saga,
                outcome=outcome,
                resumed=resumed,
                compensated=exc.compensated,
            )
        return Recovered(run_id=run_id, saga=saga, outcome="succeeded", resumed=resumed)

    # Unwind: from a failure that was recorded, or because a step that is not idempotent
    # is in doubt. No step runs forward now, so every step in doubt stays as it may be:
    # it is undone only if it recorded a result, which a step in doubt did not (a
    # composed or mapped step in doubt is undone through its children's records).
    now = time.time()
    why = "its process died while it ran: it may or may not have had its effect"
    nested = tuple(n for n in in_doubt if plan.nodes[n].invoke is not None)
    risky = tuple(n for n in in_doubt if n not in nested)
    for name in nested:
        journal.mark(
            name,
            msgspec.structs.replace(
                steps[name],
                status="failed",
                error=f"in doubt: {why}; its child runs are unwound from their records",
                ended_at=now,
            ),
        )
    for name in risky:
        node = plan.nodes[name]
        journal.mark(
            name,
            StepRecord(
                status="failed",
                attempt=steps[name].attempt,
                error=f"in doubt: {why}",
                compensation="failed" if node.compensation is not None else None,
                compensation_error=(
                    f"in doubt: {why}; undoing it needs its result, which was never recorded"
                    if node.compensation is not None
                    else None
                ),
                started_at=steps[name].started_at,
                ended_at=now,
            ),
        )
    doubt = (*risky, *nested)
    failed_step = record.failed_step or (failed[0] if failed else doubt[0] if doubt else None)
    error = record.error or (f"step {failed_step!r} in doubt: {why}" if doubt else "recovered")
    journal.set_status("compensating")
    journal.set_failure(failed_step, error)
    completed = [
        n
        for n, s in steps.items()
        if (s.status == "succeeded" or n in nested) and s.compensation != "succeeded"
    ]
    human = any(plan.nodes[n].compensation is not None for n in risky)

    def ending(unwind: Unwind) -> RunStatus:
        if unwind.errors or human:
            return "compensation_failed"
        return "cancelled" if record.error == "cancelled" else "failed"

    unwind = await _compensate(
        spec, values, record, journal, completed, extra_hooks, ending, parent
    )
    return Recovered(
        run_id=run_id,
        saga=saga,
        outcome=ending(unwind),
        compensated=tuple(unwind.compensated),
        in_doubt=risky,
    )


def _rerunnable(node: Any) -> bool:
    """Whether a step in doubt may run again: idempotent, or composed/mapped (its child
    runs are recorded)."""
    return bool(node.idempotent or node.invoke is not None)


def _prefix_of(child_id: str) -> str:
    """The event path of a child run, from its id (``parent/step/attempt[/element]``)."""
    parts = child_id.split("/")[1:]
    if len(parts) >= 3:
        return f"{parts[0]}[{parts[2]}]"
    return parts[0] if parts else child_id


def _roots(plan: Any, succeeded: Sequence[str], skipped: Sequence[str]) -> list[str]:
    done = set(succeeded) | set(skipped)
    return [n for n in plan.order if n not in done and all(d in done for d in plan.nodes[n].deps)]


# -- child runs -------------------------------------------------------------------------------


class _Children:
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
        undo = _ChildUndo(((child_id, spec),), runs, resources)
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
            children=_Children(spec, ((), ())),
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
            raise _failure(spec, record)
        results = _results(spec, record)
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
        return _ChildUndo(tuple(found.items()), journal.store, _resources(any_spec, values))


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
    if record.owner != runs.owner:
        taken = await runs.claim(run_id, record.owner or "")
        if taken is None:  # a live owner, or another recoverer, has it
            return await runs.wait_finished(run_id)
        record = taken
    values = _values(spec, record, resources)
    await _recover_one(spec, runs, record, values, ((), ()), parent, forward=forward)
    return await runs.load(run_id)


def _resources(spec: SagaSpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The resources of a child saga, from the values that feed it (never recorded)."""
    return {
        name: values[name] for name, i in spec.plan.inputs.items() if i.resource and name in values
    }


class _ChildUndo:
    """Undo child runs from their records, the last first: a succeeded child is undone
    (once, whoever asks: ``Saga.undo`` semantics), an unfinished one is driven to its end
    by unwinding, one that failed was unwound already."""

    __slots__ = ("_children", "_resources", "_runs")

    def __init__(
        self,
        children: tuple[tuple[str, SagaSpec], ...],
        runs: RunStore,
        resources: Mapping[str, Any],
    ) -> None:
        self._children = children
        self._runs = runs
        self._resources = resources

    async def undo(self, parent: RunContext) -> None:
        errors: list[Exception] = []
        for child_id, spec in reversed(self._children):
            try:
                await self._undo_one(child_id, spec, parent)
            except Exception as exc:  # noqa: BLE001 - collected; the other children still go
                errors.append(exc)
        if errors:
            raise ExceptionGroup(f"undoing the child runs of run {parent.run_id} failed", errors)

    async def _undo_one(self, child_id: str, spec: SagaSpec, parent: RunContext) -> None:
        runs = self._runs
        try:
            record = await runs.load(child_id)
        except RunNotFound:
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
                parent=parent,
            )
        elif driven and record.status in ("compensation_failed", "undo_failed"):
            raise _failure(spec, record)  # unwound now, not all of it: a human looks


class _Durability:
    """Durable runs as :class:`asaga._saga.Durability` says: what ``Saga.run`` with a store
    and ``Saga.undo`` call (wired in ``asaga/__init__.py``)."""

    default_store = staticmethod(default_store)
    run = staticmethod(run_durable)
    undo = staticmethod(undo_run)


DURABILITY = _Durability()
"""The durable runs of this package, given to the saga class."""
