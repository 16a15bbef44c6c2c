"""A run: one execution of a saga, from validated inputs to a result or an unwound failure.

Shared by top-level runs (``Saga.run``) and the sub-saga runs of composed and mapped steps.
A run that succeeds hands back, with its result, a :class:`Completed` handle that can still
undo it: a parent run whose later step fails uses it to compensate the child's steps, in
the child's own reverse-graph order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import anyio
import anyio.lowlevel
import structlog

from ._compensation import Undoable, Unwind, undoable
from ._events import (
    Emitter,
    Event,
    RunContext,
    RunFailed,
    RunParkedEvent,
    RunStarted,
    RunSucceeded,
    bind_log_var,
)
from ._exceptions import (
    CompensationFailed,
    MapFailed,
    RunParked,
    RunStoreError,
    RunTakenOver,
    SagaFailed,
    UndoFailed,
)
from ._graph import RUN_ID, Plan
from ._inputs import InputValidator
from ._public import NoPublicConstructor
from ._scheduler import Execution, Resume
from ._shielded import shielded

if TYPE_CHECKING:
    from ._observer import Observer
    from .locks._lease import LockProvider

_logger = structlog.get_logger("asaga")

Hooks = tuple[tuple[Callable[[Event], object], ...], tuple[Callable[[Event], Awaitable[None]], ...]]
"""A run's extra hooks: (sync, async)."""

__all__ = [
    "Completed",
    "ReadOnly",
    "SagaResult",
    "SagaSpec",
    "execute",
    "unwind_steps",
    "with_dispatcher",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[T], metaclass=NoPublicConstructor):
    """The outcome of a successful run. Created by ``run()``, never by users."""

    _created_by: ClassVar[str] = "`await MySaga.run(...)` returns one"

    run_id: str
    """The run's id (unique per run)."""
    output: T
    """The result of the output step: the class's ``output``, else the single step that
    nothing depends on, else ``None``."""
    results: Mapping[str, Any]
    """Read-only mapping of every completed step's name to its result (skipped steps have
    no entry)."""
    replayed: bool = False
    """``True`` when this is the recorded outcome of an earlier run with the same
    idempotency key (nothing ran now)."""


@dataclass(frozen=True, slots=True)
class SagaSpec:
    """Everything a run needs of a saga class, fixed when the class is created."""

    plan: Plan
    inputs: InputValidator
    sync_hooks: tuple[Callable[[Event], object], ...]
    async_hooks: tuple[Callable[[Event], Awaitable[None]], ...]
    max_concurrency: int | None
    on_failure: str
    compensation_timeout: float | None
    cancel_grace: float | None
    """Seconds steps in flight get to finish once the caller is cancelled (None: their
    own timeouts bound them)."""
    watch: bool
    """Whether a run needs a task watching for the caller's cancellation (some step may
    outlast ``cancel_grace``)."""
    saga_version: str
    """The saga's ``saga_version``: a recorded run is resumed only by the same version."""
    default_locks: Callable[[], LockProvider]
    """The lock provider of locked steps when the saga has no ``locks`` input (the
    in-memory one of the event loop, injected by :mod:`asaga._saga`)."""
    queues: Mapping[str, str] = field(default_factory=dict)
    """The steps that run on workers, and the name of each one's job queue."""
    extensions: dict[str, Any] = field(default_factory=dict, compare=False)
    """What other layers keep per saga, made on first use (the codec of durable runs)."""


class Completed:
    """A run that succeeded, kept so that a parent can still undo it."""

    __slots__ = ("_completed", "_context", "_spec", "_undos", "_values", "parent_context")

    def __init__(
        self,
        spec: SagaSpec,
        context: RunContext,
        values: dict[str, Any],
        completed: list[str],
        undos: dict[str, Undoable],
    ) -> None:
        self._spec = spec
        self._context = context
        self.parent_context = context.parent
        """The context of the parent run, if any (undo events go there)."""
        self._values = values
        self._completed = completed
        self._undos = undos

    async def undo(self, parent: RunContext | None) -> None:
        """Compensate the run's completed steps; raise ``UndoFailed`` if any fail.

        ``parent`` is the context of the run that unwinds (its events reach that run's
        hooks); the run's own event dispatcher ended with it, so a fresh one is used.
        """
        spec, context = self._spec, self._context
        unwind = await unwind_steps(
            spec,
            self._values,
            context.run_id,
            self._completed,
            undos=self._undos,
            parent=parent,
            prefix=context.prefix,
        )
        if unwind.errors:
            raise UndoFailed(
                spec.plan.saga,
                context.run_id,
                unwind.compensated,
                [name for name, _ in unwind.errors],
                ExceptionGroup(
                    f"compensations of saga {spec.plan.saga} failed",
                    [exc for _, exc in unwind.errors],
                ),
            )


async def unwind_steps(
    spec: SagaSpec,
    values: dict[str, Any],
    run_id: str,
    completed: Sequence[str],
    *,
    undos: Mapping[str, Undoable] | None = None,
    observer: Observer | None = None,
    extra_hooks: Hooks = ((), ()),
    parent: RunContext | None = None,
    prefix: str | None = None,
    then: Callable[[Unwind], Coroutine[Any, Any, None]] | None = None,
) -> Unwind:
    """Compensate ``completed`` steps of a run that ended (undone by its parent, or by
    ``Saga.undo`` and recovery from its record), with its hooks fed: the one unwinding of
    a run from outside it. The compensations run shielded, to their end, and ``then``
    gets the unwinding (to write down how it ended) before a cancellation of the caller
    is raised."""
    sync_hooks = (*spec.sync_hooks, *extra_hooks[0])
    if observer is not None:
        sync_hooks = (*sync_hooks, observer.hook)
    emitter = Emitter(
        sync_hooks,
        (*spec.async_hooks, *extra_hooks[1]),
        parent=parent.emitter if parent is not None else None,
    )
    context = RunContext(spec.plan.saga, run_id, emitter, prefix=prefix, parent=parent)
    unwind = Unwind(
        spec.plan,
        values,
        context,
        undos or {},
        default_timeout=spec.compensation_timeout,
        observer=observer,
    )
    try:
        await with_dispatcher(emitter, unwind.run(completed))
    except anyio.get_cancelled_exc_class():
        if then is not None:
            await shielded(then(unwind))
        raise
    # (Anything else that escapes, a KeyboardInterrupt in a compensation, skips ``then``:
    # a durable run stays unfinished in its record, for a recovery to finish.)
    if then is not None:
        await then(unwind)
    return unwind


def execute(
    spec: SagaSpec,
    inputs: Mapping[str, Any],
    *,
    run_id: str | None = None,
    extra_hooks: Hooks = ((), ()),
    parent: RunContext | None = None,
    prefix: str | None = None,
    undoable: bool = True,
) -> Coroutine[Any, Any, tuple[SagaResult[Any], Completed | None]]:
    """Validate ``inputs`` (now: ``InputValidationError`` is raised by this call), and
    return the run of the saga to await.

    The run returns the result and a handle that can undo it later (``None`` with
    ``undoable=False``: a top-level run, which nothing undoes in memory); it raises ``SagaFailed`` /
    ``CompensationFailed`` (after unwinding), or the caller's cancellation (after
    unwinding).
    """
    values = spec.inputs.validate(inputs)
    run_id = run_id or new_run_id()
    values[RUN_ID] = run_id  # what a `run_id` parameter receives
    return run_values(
        spec,
        values,
        run_id,
        extra_hooks=extra_hooks,
        parent=parent,
        prefix=prefix,
        undoable=undoable,
    )


def new_run_id() -> str:
    """A fresh run id: 128 random bits in hex, like a UUID4, cheaper to make."""
    return os.urandom(16).hex()


async def run_values(
    spec: SagaSpec,
    values: dict[str, Any],
    run_id: str,
    *,
    extra_hooks: Hooks = ((), ()),
    parent: RunContext | None = None,
    prefix: str | None = None,
    observer: Observer | None = None,
    resume: Resume | None = None,
    undoable: bool = True,
) -> tuple[SagaResult[Any], Completed | None]:
    """Run the saga on validated ``values`` (see :func:`execute`); with an ``observer``,
    report each transition to it before acting on it, starting from ``resume`` if
    given."""
    sync_hooks, async_hooks = spec.sync_hooks, spec.async_hooks
    if extra_hooks[0] or extra_hooks[1]:
        sync_hooks, async_hooks = sync_hooks + extra_hooks[0], async_hooks + extra_hooks[1]
    if observer is not None:
        sync_hooks = (*sync_hooks, observer.hook)
    emitter = Emitter(sync_hooks, async_hooks, parent=parent.emitter if parent else None)
    context = RunContext(spec.plan.saga, run_id, emitter, prefix=prefix, parent=parent)
    # User logs inside steps carry saga and run_id (structlog.contextvars).
    saga_token = bind_log_var("saga", spec.plan.saga)
    run_token = bind_log_var("run_id", run_id)
    try:
        if not emitter.needs_dispatcher:
            return await _drive(spec, values, context, observer, resume, undoable)
        # Cancelled while the hooks drain after the run succeeded, the caller never sees the
        # result: the run is undone, so it needs its undo handle (unless the record says
        # it succeeded: a durable run is undone by Saga.undo, by its id).
        work = _drive(spec, values, context, observer, resume, undoable or observer is None)
        result, completed = await with_dispatcher(emitter, work, _undo_run)
        return result, completed if undoable else None
    finally:
        saga_token.var.reset(saga_token)
        run_token.var.reset(run_token)


async def with_dispatcher(
    emitter: Emitter,
    work: Awaitable[T],
    undo: Callable[[T], Coroutine[Any, Any, None]] | None = None,
) -> T:
    """Await ``work`` while the emitter's async hooks are fed, if it has any.

    If the caller is cancelled while the hooks drain after ``work`` succeeded, ``undo``
    gets the result (shielded) before the cancellation goes on.
    """
    if not emitter.needs_dispatcher:
        return await work
    failed: BaseException | None = None
    outcome: T | None = None
    done = False
    cancelled = anyio.get_cancelled_exc_class()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(emitter.dispatch, name="asaga event hooks")
            try:
                outcome = await work
                done = True
            except cancelled:
                raise
            except BaseException as exc:  # noqa: BLE001 - re-raised outside the task group,
                failed = exc  # unwrapped: the same exception as a run without async hooks
            finally:
                emitter.close()
    except anyio.get_cancelled_exc_class():
        # Cancelled while the hooks drained, after the run had completed: the caller
        # will never see the result, so the run is undone like any cancelled one.
        if done and undo is not None:
            await shielded(undo(outcome))  # type: ignore[arg-type]  # set when done
        raise
    if failed is not None:
        try:
            raise failed
        finally:
            del failed  # no reference cycle through the traceback
    return outcome  # type: ignore[return-value]  # set when no exception


async def _drive(
    spec: SagaSpec,
    values: dict[str, Any],
    context: RunContext,
    observer: Observer | None,
    resume: Resume | None,
    undoable: bool,
) -> tuple[SagaResult[Any], Completed | None]:
    plan = spec.plan
    emit = context.emit
    started = time.monotonic()
    emit(RunStarted)
    execution = Execution(
        plan,
        values,
        context,
        max_concurrency=spec.max_concurrency,
        on_failure=spec.on_failure,
        default_locks=spec.default_locks,
        cancel_grace=spec.cancel_grace,
        watch=spec.watch,
        observer=observer,
        resume=resume,
    )
    try:
        await execution.execute()
        # A caller cancelled while the last steps ran shielded: the run fails like any
        # cancelled one (the caller will not see a result), and is unwound below.
        await anyio.lowlevel.checkpoint_if_cancelled()
    except anyio.get_cancelled_exc_class() as cancelled:
        # The caller was cancelled. The steps in flight were shielded: each finished (and
        # is compensated now) or was cut off after the grace (in doubt). The unwinding
        # finishes whatever else cancels the caller.
        await _settle(
            _unwind_cancelled(spec, context, execution, observer, started, cancelled),
            spec,
            execution,
            observer,
        )
        raise
    except BaseException as exc:
        # Not an Exception (KeyboardInterrupt, SystemExit...): no SagaFailed for it, but the
        # completed steps are still undone before it goes on, unwrapped from the group.
        inner = exc
        if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            inner = exc.exceptions[0]
        await _settle(
            _unwind_aborted(spec, context, execution, observer, started, inner),
            spec,
            execution,
            observer,
        )
        if inner is not exc:
            raise inner from None
        raise

    if execution.taken_over is not None:
        emit(RunFailed, duration=time.monotonic() - started, error=repr(execution.taken_over))
        raise execution.taken_over

    if execution.parked:
        if execution.failure is None and observer is not None:
            # Steps wait (an event, a timer, a halt) and nothing else can run: the run
            # parks, recorded; it goes on where the event is delivered, or its time comes.
            emit(RunParkedEvent, waiting=tuple(info.step for info in execution.parked))
            try:
                await shielded(observer.parked(execution.parked))
            except RunTakenOver:
                raise
            except RunStoreError as exc:
                # It cannot park (the store is away): it fails, and is unwound, rather
                # than stay taken by this process with nobody to go on with it.
                execution.failure = (execution.parked[0].step, exc)
            else:
                raise RunParked(plan.saga, context.run_id, execution.parked)
        if observer is not None:  # the run failed meanwhile: they wait no more
            for info in execution.parked:
                if not info.runs:  # (a composed step's child run is unwound: see below)
                    observer.ended(info.step, "cancelled", "waited; the run failed meanwhile", 1)

    succeeded: Event | None = None
    if execution.failure is None and observer is not None:
        succeeded = await _report_success(plan, context, execution, observer, started)

    if execution.failure is None:
        if succeeded is not None:
            context.emitter.emit(succeeded)
        else:
            emit(RunSucceeded, duration=time.monotonic() - started)
        results = execution.results
        result = SagaResult._create(
            run_id=context.run_id,
            output=results.get(plan.output) if plan.output is not None else None,
            results=ReadOnly(results),
        )
        if not undoable:
            return result, None
        return result, Completed(spec, context, values, execution.completed, execution.undos)

    cause = execution.failure[1]
    error = await _settle(
        _unwind_failed(spec, context, execution, observer, started), spec, execution, observer
    )
    # A caller cancelled while we were unwinding: the cancellation is what propagates.
    await anyio.lowlevel.checkpoint_if_cancelled()
    raise error from cause


async def _report_success(
    plan: Plan, context: RunContext, execution: Execution, observer: Observer, started: float
) -> Event:
    """Tell the observer the run succeeded, whatever cancels the caller; the event that
    says so. A run that cannot be recorded as done fails instead (it is undone, so that
    the record and the world agree: a recovery would undo it too)."""
    succeeded = context.make(RunSucceeded, duration=time.monotonic() - started)
    try:
        await shielded(observer.run_succeeded(succeeded))
    except RunTakenOver as exc:
        context.emit(RunFailed, duration=time.monotonic() - started, error=repr(exc))
        raise
    except RunStoreError as exc:
        if not await observer.landed():
            last = execution.completed[-1] if execution.completed else plan.order[-1]
            execution.failure = (last, exc)
    return succeeded


async def _settle(
    work: Coroutine[Any, Any, T], spec: SagaSpec, execution: Execution, observer: Observer | None
) -> T:
    """Await the unwinding ``work`` to its end whatever cancels the caller, if it has
    anything to do that a cancellation could interrupt (a compensation, a write); one with
    nothing to undo and nothing to record runs through at once."""
    plan, undos = spec.plan, execution.undos
    if observer is None and not any(
        undoable(plan, undos, name) for name in (*execution.completed, *execution.in_doubt)
    ):
        return await work
    return await shielded(work)


async def _compensate(
    spec: SagaSpec,
    context: RunContext,
    execution: Execution,
    observer: Observer | None,
    started: float,
    *,
    step: str | None,
    reason: str,
    cancelled: bool = False,
) -> Unwind:
    """What every failed run does: say in the record that it unwinds, compensate, and
    emit ``run_failed``. Returns the unwinding (what it compensated, what failed, what is
    left in doubt)."""
    if observer is not None:
        await observer.unwinding(step, reason)  # unwinding: say so first
    unwind = _unwind(spec, context, execution, observer)
    completed: list[str] = execution.completed
    if execution.parked and observer is not None:
        # A composed step whose child run parked: that run is unwound from its record.
        nested = [i.step for i in execution.parked if i.runs]
        completed = [*completed, *dict.fromkeys(n for n in nested if n not in completed)]
    await unwind.run(completed, execution.in_doubt)
    context.emit(
        RunFailed,
        duration=time.monotonic() - started,
        failed_step=execution.failure[0] if execution.failure else None,
        error=reason,
        cancelled=cancelled,
        in_doubt=unwind.in_doubt,
    )
    return unwind


async def _unwind_cancelled(
    spec: SagaSpec,
    context: RunContext,
    execution: Execution,
    observer: Observer | None,
    started: float,
    cancelled: BaseException,
) -> None:
    """Unwind a run whose caller was cancelled; report what was left in doubt (in the
    events, and in a note on the cancellation). A run taken over is left to its owner."""
    saga = spec.plan.saga
    if execution.taken_over is not None:
        context.emit(
            RunFailed,
            duration=time.monotonic() - started,
            cancelled=True,
            error="cancelled",
            in_doubt=tuple(execution.in_doubt),
        )
        return
    unwind = await _compensate(
        spec, context, execution, observer, started, step=None, reason="cancelled", cancelled=True
    )
    if unwind.errors:
        _logger.error(
            "compensation_failed_on_cancel",
            saga=saga,
            run_id=context.run_id,
            steps=[name for name, _ in unwind.errors],
        )
    left = unwind.in_doubt
    if left:
        # The cancellation propagates as it is; it says which steps need a human.
        cancelled.add_note(
            f"asaga: run {context.run_id} of saga {saga} was cancelled; steps left in doubt "
            f"(cut off while running, their effect unknown): {', '.join(left)}"
        )
    if observer is not None:
        await observer.run_ended("cancelled", release_key=not left)


async def _unwind_aborted(
    spec: SagaSpec,
    context: RunContext,
    execution: Execution,
    observer: Observer | None,
    started: float,
    inner: BaseException,
) -> None:
    """Unwind a run that a KeyboardInterrupt, SystemExit... ends."""
    await _compensate(spec, context, execution, observer, started, step=None, reason=repr(inner))
    if observer is not None:
        await observer.run_ended("failed")


async def _unwind_failed(
    spec: SagaSpec,
    context: RunContext,
    execution: Execution,
    observer: Observer | None,
    started: float,
) -> SagaFailed:
    """Unwind a run whose step failed for good; the error to raise."""
    saga = spec.plan.saga
    assert execution.failure is not None
    step_name, cause = execution.failure
    unwind = await _compensate(
        spec, context, execution, observer, started, step=step_name, reason=repr(cause)
    )
    # The failed step may itself have left work it could not undo (a sub-saga whose
    # compensation failed, mapped elements whose undo failed): that needs a human too.
    errors = [*_left_undone(step_name, cause), *unwind.errors]
    if observer is not None and not observer.lost:
        await observer.run_ended("compensation_failed" if errors else "failed")
    if errors:
        return CompensationFailed(
            saga,
            context.run_id,
            step_name,
            unwind.compensated,
            [name for name, _ in errors],
            ExceptionGroup(f"compensations of saga {saga} failed", [e for _, e in errors]),
            in_doubt=unwind.in_doubt,
        )
    return SagaFailed(saga, context.run_id, step_name, unwind.compensated, in_doubt=unwind.in_doubt)


def _unwind(
    spec: SagaSpec, context: RunContext, execution: Execution, observer: Observer | None
) -> Unwind:
    """The unwinding of a run that failed (made then: most runs succeed)."""
    return Unwind(
        spec.plan,
        execution.values,
        context,
        execution.undos,
        default_timeout=spec.compensation_timeout,
        observer=observer,
    )


async def _undo_run(outcome: tuple[SagaResult[Any], Completed | None]) -> None:
    completed = outcome[1]
    if completed is not None:
        await completed.undo(completed.parent_context)


def _left_undone(step: str, cause: BaseException) -> list[tuple[str, Exception]]:
    """Compensation failures inside the failed step itself, as (name, exception)."""
    if isinstance(cause, CompensationFailed):
        return [
            (f"{step}/{name}", error)
            for name, error in zip(
                cause.failed_compensations, cause.errors.exceptions, strict=False
            )
            if isinstance(error, Exception)
        ]
    if isinstance(cause, MapFailed):
        return [
            (f"{step}[{f.index}]", f.error)
            for f in cause.undo_failures
            if isinstance(f.error, Exception)  # undos catch Exception only
        ]
    return []


class ReadOnly(Mapping[str, Any]):
    """A read-only view of a run's results (cheaper to make than a MappingProxyType copy)."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)
