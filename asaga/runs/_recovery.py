"""Recovery: finish or compensate the runs whose process died, from their records.

Recovery of one run taken over from a dead owner, by what its record says::

    every status but undoing, first:
        the job of each step on workers in doubt is withdrawn (it never runs after)
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
are no more."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
import msgspec
import structlog

from .._compensation import Unwind
from .._events import RunContext, RunFailed, split_hooks
from .._exceptions import (
    AsagaError,
    CompensationFailed,
    CorruptRecord,
    InputValidationError,
    RunParked,
    SagaFailed,
    UndoFailed,
)
from .._queues import require_queues
from .._run import Hooks, SagaSpec, run_values
from .._scheduler import Resume
from ._codec import codec_of
from ._journal import ChildRunsFor, Journal
from ._record import RunRecord, RunStatus, RunStore, StepRecord
from ._replay import prefix_of, recorded_run_values
from ._undo import compensate_recorded, undo_recorded

_MAX_ROUNDS = 1000  # a sweep looks again after quarantining runs, this many times at most


_logger = structlog.get_logger("asaga")


class Recovered(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`recover` did with one run."""

    run_id: str
    saga: str
    outcome: str
    """``succeeded`` (resumed and finished), ``waiting`` (resumed, then parked: it waits
    for an event, a timer or a resume), ``failed`` (compensated), ``cancelled``,
    ``compensation_failed`` / ``undo_failed`` (some compensation failed: needs a human),
    ``undone`` (an interrupted undo finished), ``quarantined`` (its record cannot be
    driven: set aside, ``error`` says why), ``error`` (see ``error``), or, from
    :func:`~asaga.runs.recover_run` only, ``refused`` (the run was not taken: its owner is
    alive, it finished, it is parked..., ``error`` says why; nothing changed)."""
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
    kin: ChildRunsFor,
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

    A saga with steps on workers (``@step(queue=...)``) needs their queues open here
    (:class:`~asaga.workers.QueueNotOpen` at once, before any run is taken).

    Call it when a service starts, and then periodically (every ``owner_ttl`` or so): a
    run is recoverable once its owner's lease has expired.
    """
    resources = dict(resources or {})
    specs = _specs_of(sagas, resources)
    if not 1 <= concurrency <= 1000 or not limit >= 1:
        raise ValueError("limit >= 1 and 1 <= concurrency <= 1000")
    extra = split_hooks(hooks) if hooks else ((), ())
    versions = {name: spec.saga_version for name, spec in specs.items()}
    report: list[Recovered] = []
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(run_id: str, owner: str) -> None:
        async with limiter:
            done = await _recover_taken(runs, run_id, owner, specs, resources, extra, kin)
        if done is not None:
            report.append(done)

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


async def recover_run(
    runs: RunStore,
    run_id: str,
    *,
    sagas: Sequence[SagaClass],
    resources: Mapping[str, Any] | None = None,
    hooks: Sequence[Any] = (),
    kin: ChildRunsFor,
) -> Recovered:
    """Recover the one run ``run_id`` if its owner died (see :func:`asaga.runs.recover_run`):
    its record is read, then it is taken over from its owner, which succeeds only if that
    owner's lease has expired (the store's ``claim`` checks it, as :meth:`RunStore.abandoned`
    would, in one step), and driven to its end as a sweep would. A run that cannot be
    taken is reported with outcome ``refused`` and ``error`` saying why; nothing changed."""
    given = dict(resources or {})
    specs = _specs_of(sagas, given)
    extra = split_hooks(hooks) if hooks else ((), ())
    record = await runs.load(run_id)  # RunNotFound: no such run

    def refused(why: str) -> Recovered:
        return Recovered(run_id=run_id, saga=record.saga, outcome="refused", error=why)

    spec = specs.get(record.saga)
    owner = record.owner
    if "/" in run_id:
        return refused(
            f"run {run_id} is the child run of a composed or mapped step: recover its "
            f"parent run ({record.parent or run_id.split('/', 1)[0]}), which drives it"
        )
    if record.finished:
        return refused(f"run {run_id} finished ({record.status}): there is nothing to recover")
    if record.status == "waiting":
        return refused(
            f"run {run_id} is parked (waiting): it goes on when its event, timer or resume "
            "comes (resume(), cancel(), deliver(), or recover() once it is due)"
        )
    if spec is None:
        return refused(
            f"run {run_id} is a run of saga {record.saga}, which was not given (sagas=...)"
        )
    if spec.saga_version != record.saga_version:
        return refused(
            f"run {run_id} was recorded by saga_version {record.saga_version!r} of "
            f"{record.saga}, not {spec.saga_version!r}: recover it where that version runs"
        )
    if owner is None or owner == runs.owner:
        return refused(f"run {run_id} is being run by this process: it is not abandoned")
    done = await _recover_taken(runs, run_id, owner, specs, given, extra, kin)
    if done is None and owner == "quarantine":  # a readmitted run is taken, not this one
        return refused(
            f"run {run_id} is quarantined (set aside by recovery, see runs.quarantined()): "
            "readmit it (runs.readmit), then recover it"
        )
    if done is None:
        return refused(
            f"run {run_id} is not abandoned: its owner's lease has not expired (its process "
            "is alive), or another process took it over or finished it meanwhile"
        )
    return done


def _specs_of(sagas: Sequence[SagaClass], resources: Mapping[str, Any]) -> dict[str, SagaSpec]:
    """The sagas of a sweep by name; refused at once if one lacks its resources."""
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
        if spec.queues:  # its steps on workers: their queues, open here (QueueNotOpen)
            require_queues(spec.queues)
        specs[spec.plan.saga] = spec
    return specs


async def _recover_taken(
    runs: RunStore,
    run_id: str,
    owner: str,
    specs: Mapping[str, SagaSpec],
    resources: Mapping[str, Any],
    extra: Hooks,
    kin: ChildRunsFor,
) -> Recovered | None:
    """Take ``run_id`` over from its dead ``owner`` and drive it to its end; what became
    of it (``None``: another recoverer took it, or it finished meanwhile). Taken only
    now, when it is driven: if the sweep is cancelled, the runs it has not reached stay
    for the next sweep (here or in another process)."""
    withdrawn = await _withdraw_before_claim(runs, run_id, specs)
    if isinstance(withdrawn, Recovered):
        return withdrawn  # not taken: the next sweep tries again
    try:
        record = await runs.claim(run_id, owner)
    except CorruptRecord as exc:  # taken, but its record cannot be read
        return await _set_aside(runs, run_id, "", str(exc))
    except AsagaError as exc:  # Redis went away: this one waits for the next sweep
        return Recovered(run_id=run_id, saga="", outcome="error", error=repr(exc))
    if record is None:
        return None
    try:
        spec, values = _admit(specs, record, resources)
    except (CorruptRecord, InputValidationError) as exc:
        return await _set_aside(runs, run_id, record.saga, str(exc))
    except AsagaError as exc:
        return Recovered(run_id=run_id, saga=record.saga, outcome="error", error=repr(exc))
    try:
        done = await recover_one(
            spec, runs, record, values, extra, kin, withdrawn=withdrawn == record.seq
        )
    except AsagaError as exc:  # a store error...
        done = Recovered(run_id=record.run_id, saga=record.saga, outcome="error", error=repr(exc))
    _logger.info("run_recovered", saga=done.saga, run_id=done.run_id, outcome=done.outcome)
    return done


async def _withdraw_before_claim(
    runs: RunStore, run_id: str, specs: Mapping[str, SagaSpec]
) -> Recovered | int | None:
    """Withdraw the jobs of the steps on workers that the record of ``run_id`` says are in
    doubt, before the run is taken: if that fails (the queue's Redis away), the run is
    left as it is, abandoned, for the next sweep to try again (taken first, it would be
    owned by this live process, and no sweep would take it while it lives), and this says
    so (a :class:`Recovered` with outcome ``error``). Otherwise the ``seq`` of the record
    whose steps it withdrew (their jobs need no withdrawal again if the run is taken as
    that record says), or ``None`` if it could not read the record (the run, once taken,
    withdraws them itself)."""
    if not any(spec.queues for spec in specs.values()):
        return None  # no step on workers: nothing to withdraw, no read
    try:
        record = await runs.load(run_id)
    except AsagaError:  # corrupt, gone, Redis away: the claim that follows says which
        return None
    spec = specs.get(record.saga)
    if spec is not None and spec.queues:
        nodes = spec.plan.nodes
        in_doubt = [n for n, s in record.steps.items() if s.status == "running" and n in nodes]
        try:
            await _withdraw(spec.plan, record, in_doubt)
        except Exception as exc:  # noqa: BLE001 - the queue's server away: decide nothing yet
            return Recovered(
                run_id=run_id,
                saga=record.saga,
                outcome="error",
                error=f"the jobs of its steps in doubt could not be withdrawn (it was left "
                f"for the next sweep): {exc!r}",
            )
    return record.seq


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
    # Only the resources this saga declares: a sweep serves sagas that take different
    # ones, and a saga refuses an input it does not declare.
    own = {
        name: resources[name]
        for name, i in spec.plan.inputs.items()
        if i.resource and name in resources
    }
    return spec, recorded_run_values(spec, record, own)


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


async def recover_one(
    spec: SagaSpec,
    runs: RunStore,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    parent: RunContext | None = None,
    *,
    forward: bool = True,
    withdrawn: bool = False,
) -> Recovered:
    """Drive one taken-over run to its end from its record (see the module docstring);
    ``forward=False`` unwinds it whatever it could do (a child run whose parent unwinds);
    ``withdrawn``: the jobs of its steps in doubt were withdrawn before it was taken
    (:func:`_withdraw_before_claim`), from the record ``record`` still is."""
    plan = spec.plan
    run_id, saga = record.run_id, record.saga
    if record.status == "undoing":
        try:
            undone = await undo_recorded(spec, runs, record, values, extra_hooks, kin, parent)
        except UndoFailed as exc:
            return Recovered(
                run_id=run_id,
                saga=saga,
                outcome="undo_failed",
                compensated=exc.compensated,
                error=repr(exc),
            )
        return Recovered(run_id=run_id, saga=saga, outcome="undone", compensated=undone.compensated)

    journal = Journal(runs, codec_of(spec), record, children=kin(spec, extra_hooks))
    steps = record.steps
    in_doubt = [n for n, s in steps.items() if s.status == "running"]
    try:
        if not withdrawn:
            await _withdraw(plan, record, in_doubt)
    except Exception as exc:  # noqa: BLE001 - the queue's server away: decide nothing yet
        return Recovered(
            run_id=run_id,
            saga=saga,
            outcome="error",
            error=f"the jobs of its steps in doubt could not be withdrawn: {exc!r}",
        )
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
        return await _resume(spec, journal, record, values, extra_hooks, parent)
    return await _unwind(spec, journal, record, values, extra_hooks, in_doubt, failed, parent)


async def _withdraw(plan: Any, record: RunRecord, in_doubt: Sequence[str]) -> None:
    """Withdraw the job of each step on workers in doubt (at the attempt its record
    says), before deciding anything: a job its dead process left queued would otherwise
    run later, whatever this recovery did (resumed the step at its next attempt, or
    unwound the run with the step in doubt). The step stays in doubt: its job may have
    run, or be cut off while it ran."""
    for name in in_doubt:
        withdraw = getattr(plan.nodes[name].fn, "withdraw", None)  # a step on workers
        if withdraw is not None:
            await withdraw(record.run_id, record.steps[name].attempt)


async def _resume(
    spec: SagaSpec,
    journal: Journal,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    parent: RunContext | None,
) -> Recovered:
    """Run forward the steps of ``record`` that did not end (none is in doubt but
    idempotent, composed or mapped ones), from its recorded results."""
    plan = spec.plan
    run_id, saga = record.run_id, record.saga
    resume = resume_point(plan, record)
    succeeded, skipped, first = resume.succeeded, resume.skipped, resume.first_attempts
    resumed = tuple(n for n in plan.order if n not in succeeded and n not in skipped)
    try:
        await journal.resume(_roots(plan, succeeded, skipped), first)
        await run_values(
            spec,
            values,
            record.run_id,
            extra_hooks=extra_hooks,
            parent=parent,
            prefix=prefix_of(run_id) if parent is not None else None,
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
    except RunParked:
        if parent is not None:
            raise  # a child run: its parent's composed step parks with it
        # Parked, recorded: the sweep binds its events (asaga.runs._parking).
        return Recovered(run_id=run_id, saga=saga, outcome="waiting", resumed=resumed)
    return Recovered(run_id=run_id, saga=saga, outcome="succeeded", resumed=resumed)


async def _unwind(
    spec: SagaSpec,
    journal: Journal,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    in_doubt: list[str],
    failed: list[str],
    parent: RunContext | None,
) -> Recovered:
    """Compensate the completed steps of ``record`` (and the children of composed or
    mapped steps in doubt); a step in doubt without a recorded result stays as it may
    be, and needs a human if it has a compensation."""
    plan, steps = spec.plan, record.steps
    run_id, saga = record.run_id, record.saga
    # Unwind: from a failure that was recorded, or because a step that is not idempotent
    # is in doubt. No step runs forward now, so every step in doubt stays as it may be:
    # it is undone only if it recorded a result, which a step in doubt did not (a
    # composed or mapped step in doubt is undone through its children's records).
    now = time.time()
    why = "its process died while it ran: it may or may not have had its effect"
    nested = tuple(n for n in in_doubt if _nested(plan.nodes[n]))
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

    # Recorded with the end, as a run's own end is: the timeline says how it ended, and
    # the store lists a run that left steps in doubt under in_doubt.
    final = RunFailed(
        saga=saga,
        run_id=run_id,
        parent_run_id=record.parent,
        error=error,
        failed_step=failed_step,
        cancelled=record.error == "cancelled",
        in_doubt=risky,
    )
    unwind = await compensate_recorded(
        spec, values, record, journal, completed, extra_hooks, ending, parent, final
    )
    return Recovered(
        run_id=run_id,
        saga=saga,
        outcome=ending(unwind),
        compensated=tuple(unwind.compensated),
        in_doubt=risky,
    )


def resume_point(plan: Any, record: RunRecord) -> Resume:
    """Where a recorded run goes on from: the steps that ended stay ended; a step that did
    not end (in doubt, or halted) runs at its next attempt (its retries are not given
    back), a composed or mapped one at the same attempt (whose child runs it picks up, by
    their ids); those that still wait keep waiting (``record.waiting``)."""
    steps = record.steps
    return Resume(
        succeeded=tuple(n for n, s in steps.items() if s.status == "succeeded"),
        skipped=tuple(n for n, s in steps.items() if s.status == "skipped"),
        first_attempts={
            n: s.attempt + (not _nested(plan.nodes[n]))
            for n, s in steps.items()
            if s.status == "running"
        },
        waiting=record.waiting,
    )


def _nested(node: Any) -> bool:
    """Whether ``node`` is a composed or mapped step (its children have records)."""
    return node.invoke is not None and bool(node.invoke.nested)


def _rerunnable(node: Any) -> bool:
    """Whether a step in doubt may run again: idempotent, or composed/mapped (its child
    runs are recorded)."""
    return bool(node.idempotent or node.invoke is not None)


def _roots(plan: Any, succeeded: Sequence[str], skipped: Sequence[str]) -> list[str]:
    done = set(succeeded) | set(skipped)
    return [n for n in plan.order if n not in done and all(d in done for d in plan.nodes[n].deps)]
