"""Durable runs: start one write-ahead (or replay the outcome of the run that holds its
idempotency key), and the durable runs a saga is given (``Saga.run`` with a store,
``Saga.undo``, ``recover``, ``recover_run``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import anyio

from .._events import CompensationStarted, Event, StepStarted, split_hooks
from .._exceptions import (
    IdempotencyKeyReused,
    RunParked,
    RunStoreError,
)
from .._graph import RUN_ID
from .._run import Hooks, SagaResult, SagaSpec, new_run_id, run_values
from ._children import Children
from ._codec import codec_of
from ._journal import Journal
from ._memory import default_store
from ._parking import (
    Delivery,
    after_parking,
    cancel_parked,
    resume_halted,
    settle_recovered,
    wake_due,
)
from ._parking import deliver as deliver_event
from ._record import RunStore
from ._recovery import Recovered, SagaClass
from ._recovery import recover as sweep
from ._recovery import recover_run as recover_one_run
from ._replay import replayed
from ._undo import UndoResult
from ._undo import undo_run as _undo_run

_ATTEMPT: ContextVar[tuple[str, str, str, int] | None] = ContextVar("asaga_attempt", default=None)
"""The run, step, kind (``step`` or ``compensate``) and attempt that starts in this task
(see :func:`note_attempt`)."""


def note_attempt(event: Event) -> None:
    """A sync hook of the durable runs of sagas with steps on workers: notes, in the task
    about to run it (sync hooks are called in place, just before the attempt's body),
    which attempt of which step (or of its compensation) of which run starts. The job of
    a step on workers is keyed by it (:mod:`asaga.workers._remote`), so that a recovery
    knows the job of the attempt its record says is in doubt."""
    kind = type(event)
    if kind is StepStarted:
        what = "step"
    elif kind is CompensationStarted:
        what = "compensate"
    else:
        return
    if event.step is not None:
        _ATTEMPT.set((event.run_id, event.step, what, event.attempt))


def attempt_now(run_id: str, step: str, kind: str) -> int | None:
    """The attempt of ``step`` (``kind``: ``step`` or ``compensate``) of run ``run_id``
    starting in this task, if a durable run noted it (:func:`note_attempt`); else
    ``None``."""
    found = _ATTEMPT.get()
    if found is None or found[0] != run_id or found[1] != step or found[2] != kind:
        return None
    return found[3]


def _noting(spec: SagaSpec, extra_hooks: Hooks) -> Hooks:
    """``extra_hooks`` with :func:`note_attempt`, for a saga with steps on workers."""
    if not spec.queues:
        return extra_hooks
    return ((*extra_hooks[0], note_attempt), extra_hooks[1])


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
    extra_hooks = _noting(spec, extra_hooks)
    journal = Journal.new(
        runs,
        codec_of(spec),
        saga,
        spec.saga_version,
        run_id,
        values,
        idempotency_key,
        runs.idempotency_window,
        children=Children(spec, extra_hooks),
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
        if not record.finished and record.status != "waiting":
            record = await runs.wait_finished(holder, parked=True)
        if record.status == "waiting":  # parked: its caller was told, and so is this one
            raise RunParked(saga, holder, record.waits)
        if record.status == "cancelled":
            continue  # its caller went away and it was undone: this call runs it anew
        return replayed(spec, record)
    else:  # pragma: no cover - a key whose runs keep being cancelled
        raise RunStoreError(f"idempotency key {idempotency_key!r} keeps being released")
    try:
        result, _ = await run_values(
            spec, values, run_id, extra_hooks=extra_hooks, observer=journal
        )
    except RunParked as parked:
        # A payload delivered before the run waited goes on at once, here.
        resources = {
            n: inputs[n] for n, i in spec.plan.inputs.items() if i.resource and n in inputs
        }
        return await after_parking(spec, runs, parked, resources, extra_hooks, Children)
    return result


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
    non-idempotent step in doubt, or that was already unwinding, is compensated. The
    child runs of composed and mapped steps are driven by their parent, never on their
    own. A run whose record cannot be driven (corrupt, of a newer schema, foreign, not
    fitting the saga) is quarantined (outcome ``quarantined``) and does not count against
    ``limit``. ``resources`` are the ``Resource`` inputs the sagas need (never recorded,
    so given again here); at most ``concurrency`` runs are recovered at once. Returns
    what happened to each run.

    Call it when a service starts, and then periodically (every ``owner_ttl`` or so): a
    run is recoverable once its owner's lease has expired.
    """
    specs = {s.__asaga__.plan.saga: s.__asaga__ for s in sagas if s.__asaga__ is not None}
    if any(spec.queues for spec in specs.values()):
        hooks = (*hooks, note_attempt)
    report = await sweep(
        runs,
        sagas=sagas,
        resources=resources,
        limit=limit,
        concurrency=concurrency,
        hooks=hooks,
        kin=Children,
    )
    extra = split_hooks(hooks) if hooks else ((), ())
    given = dict(resources or {})
    # Runs that went on until they parked: their events are bound to them.
    report = await settle_recovered(runs, specs, report, given, extra, Children)
    # Parked runs whose time came: due timers, events past their deadline.
    report += await wake_due(runs, specs, given, extra, Children, limit=limit)
    return report


async def recover_run(
    runs: RunStore,
    run_id: str,
    *,
    sagas: Sequence[SagaClass],
    resources: Mapping[str, Any] | None = None,
    hooks: Sequence[Any] = (),
) -> Recovered:
    """Recover the one run ``run_id`` if its process died, as :func:`recover` would, without
    looking for others: an operator's "recover this run".

    The run is read from the store (:class:`~asaga.RunNotFound` if it has no record) and
    taken over from its owner only if that owner's lease has expired (exactly one
    recoverer wins), then driven to its end from its record: resumed, or compensated.
    Its saga (and the ``saga_version`` it was recorded with) must be among ``sagas``, with
    the ``resources`` it needs. A run that is not abandoned is not touched: the outcome
    is ``refused`` and ``error`` says why (its owner is alive, it finished, it is parked,
    quarantined, a child run, of a saga or version not given). Otherwise the outcome is
    one of :func:`recover`'s.
    """
    specs = {s.__asaga__.plan.saga: s.__asaga__ for s in sagas if s.__asaga__ is not None}
    if any(spec.queues for spec in specs.values()):
        hooks = (*hooks, note_attempt)
    done = await recover_one_run(
        runs, run_id, sagas=sagas, resources=resources, hooks=hooks, kin=Children
    )
    if done.outcome == "refused":
        return done
    extra = split_hooks(hooks) if hooks else ((), ())
    # A run that went on until it parked: its events are bound to it.
    (done,) = await settle_recovered(runs, specs, [done], dict(resources or {}), extra, Children)
    return done


async def undo_run(
    spec: SagaSpec,
    run_id: str,
    *,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
) -> UndoResult:
    """``Saga.undo``: see :func:`asaga.runs._undo.undo_run`."""
    return await _undo_run(
        spec,
        run_id,
        runs=runs,
        resources=resources,
        extra_hooks=_noting(spec, extra_hooks),
        kin=Children,
    )


async def deliver(
    spec: SagaSpec,
    key: str,
    payload: Any,
    *,
    runs: RunStore | None,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
) -> Delivery:
    """``Saga.deliver``: see :mod:`asaga.runs._parking`."""
    return await deliver_event(
        spec,
        key,
        payload,
        runs=runs,
        resources=resources,
        extra_hooks=_noting(spec, extra_hooks),
        kin=Children,
    )


async def resume(
    spec: SagaSpec,
    run_id: str,
    *,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
) -> Delivery:
    """``Saga.resume``: see :mod:`asaga.runs._parking`."""
    return await resume_halted(
        spec,
        run_id,
        runs=runs,
        resources=resources,
        extra_hooks=_noting(spec, extra_hooks),
        kin=Children,
    )


async def cancel(
    spec: SagaSpec,
    run_id: str,
    *,
    compensate: bool,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
) -> Delivery:
    """``Saga.cancel``: see :mod:`asaga.runs._parking`."""
    return await cancel_parked(
        spec,
        run_id,
        compensate=compensate,
        runs=runs,
        resources=resources,
        extra_hooks=_noting(spec, extra_hooks),
        kin=Children,
    )


class _Durability:
    """Durable runs as :class:`asaga._saga.Durability` says: what ``Saga.run`` with a store
    and ``Saga.undo`` call (wired in ``asaga/__init__.py``)."""

    default_store = staticmethod(default_store)
    run = staticmethod(run_durable)
    undo = staticmethod(undo_run)
    deliver = staticmethod(deliver)
    resume = staticmethod(resume)
    cancel = staticmethod(cancel)


DURABILITY = _Durability()
"""The durable runs of this package, given to the saga class."""
