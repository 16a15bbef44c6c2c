"""The executor: runs one saga run's steps as eager dataflow in one task group.

Readiness is pushed, never polled: when a step completes it decrements a counter on each
dependent, and the dependent whose counter reaches zero is started right then, by the task
that completed its last dependency. In pseudocode::

    pending[s] = number of dependencies of s, for every step s
    start every step with no dependency      # the first in the run's own task
    run step s:                              # in a task of the run's task group
        for attempt in 1..retry.max_attempts:
            take a slot for this attempt (only with max_concurrency)
            if the run has failed: return    # no new step, no new attempt, once it failed
            emit step_started
            try:   result = await s(**values of its parameters), under its timeout
            on cancellation: emit step_cancelled; re-raise
            on exception (the slot is given back):
                if retryable and the run has not failed:
                    emit step_retrying
                    wait the backoff, woken early if the run fails
                    if the run failed meanwhile: emit step_failed; return
                    continue
                emit step_failed; fail the run (first failure wins); return
            emit step_succeeded; record the result
            if the run has failed: return    # completed: it will be compensated
            for d in dependents(s): pending[d] -= 1; start d if pending[d] == 0
                                             # the first d started goes on in this task
            return
    fail the run: record (step, exception); wake retry waits;
                  with on_failure == "cancel", cancel the task group

A task that finishes a step carries on with the first dependent it made ready instead of
starting a task for it, so a chain of steps runs in one task. When the graph is a chain
(each step depends on the one before it in topological order), steps can only ever run one
at a time, and the run's own task runs them all without a task group.

The task group exits when no step is running: either every step completed, or the run
failed and the steps in flight settled. Cancellation from outside propagates out of
:meth:`Execution.execute` after the running steps were cancelled; the caller unwinds.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from ._deadlines import Deadlines, Timed, deadlines
from ._events import (
    RunContext,
    StepCancelled,
    StepFailed,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepWaiting,
    bind_log_var,
)
from ._exceptions import (
    Halt,
    Parking,
    RunParked,
    RunStoreError,
    RunTakenOver,
    WaitInfo,
    needs_repair,
)
from ._graph import Node, Plan
from ._shielded import join, on_asyncio
from .locks._lease import LockProvider

if TYPE_CHECKING:
    from ._observer import Observer, Undoable

__all__ = ["Execution", "OnFailure", "Resume", "needs_watch"]

OnFailure = Literal["wait", "cancel"]

_NONE_SKIPPED: set[str] = set()
"""``Execution.skipped`` until a step is skipped (never added to: replaced first)."""

_NO_UNDOS: dict[str, Undoable] = {}
"""``Execution.undos`` until a composed or mapped step completes (never written to)."""

_NO_NAMES: list[str] = []
"""``Execution.in_doubt`` until a step is in doubt (never appended to: replaced first)."""

_NO_WAITS: list[WaitInfo] = []
"""``Execution.parked`` until a step waits (never appended to: replaced first)."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a recorded run stands when it is resumed: these steps ended already (their
    results are among the run's values). Every other step runs."""

    succeeded: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    first_attempts: Mapping[str, int] = field(default_factory=dict)
    """The attempt a step resumes at (default 1): a step in doubt does not get its retries
    back (an idempotent one goes on at the attempt after the one in doubt; a composed or
    mapped one at the same attempt, whose child runs it picks up)."""
    waiting: tuple[WaitInfo, ...] = ()
    """Steps of a parked run that still wait: they do not run, and the run parks again
    (with the same waits) once nothing else runs."""


class Execution:
    """The state of one run's forward phase."""

    __slots__ = (
        "_context",
        "_debug",
        "_default_locks",
        "_fatal",
        "_first_attempts",
        "_flights",
        "_grace",
        "_idle",
        "_limiter",
        "_live",
        "_observer",
        "_on_failure",
        "_pending",
        "_plan",
        "_remaining",
        "_roots",
        "_shield",
        "_stopping",
        "_tg",
        "_timer",
        "_wake",
        "_watch",
        "completed",
        "failure",
        "in_doubt",
        "parked",
        "skipped",
        "taken_over",
        "undos",
        "values",
    )

    def __init__(
        self,
        plan: Plan,
        values: dict[str, Any],
        context: RunContext,
        *,
        max_concurrency: int | None,
        on_failure: str,
        default_locks: Callable[[], LockProvider],
        cancel_grace: float | None = None,
        watch: bool = False,
        observer: Observer | None = None,
        resume: Resume | None = None,
    ) -> None:
        self._plan = plan
        # The lock provider of a saga with no ``locks`` input: injected (the saga's spec
        # carries the in-memory one), so that the scheduler never imports a backend.
        self._default_locks = default_locks
        self._grace = cancel_grace
        self._first_attempts: Mapping[str, int] | None = None  # set when resumed
        self._watch = watch  # a task watches for the caller's cancellation (see execute)
        self._flights: dict[str, _Flight] = {}  # attempts in flight, by step
        self._live = 0  # chains running in tasks of the task group
        self._idle: anyio.Event | None = None  # set when the last of them ends (watching)
        self._fatal: BaseException | None = None  # not an Exception, out of a chain task
        self._context = context
        self._debug = context.emitter.debug  # whether step events reach anyone
        self._on_failure = on_failure
        self._observer = observer
        self._limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None
        self._pending = {name: len(node.deps) for name, node in plan.nodes.items()}
        self._roots = plan.roots
        self._remaining = len(plan.nodes)  # steps not yet ended (for the observer)
        self._wake: anyio.Event | None = None  # made when a retry waits out a backoff
        self._stopping = False  # the caller was cancelled: no step or attempt starts
        self._shield = True  # attempts run shielded (not in a guarded task: see execute)
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer: Deadlines | None = None  # the deadlines of the loop (asyncio, timeouts)
        self.values = values
        """Inputs and, as they complete, step results: what parameters resolve against."""
        self.completed: list[str] = []
        """Names of the completed steps, in completion order."""
        self.skipped: set[str] = _NONE_SKIPPED  # a set of its own once a step is skipped
        """Steps skipped by their condition, or because a step they require was skipped."""
        self.undos: dict[str, Undoable] = _NO_UNDOS  # a dict of its own once needed
        """Sub-saga runs of completed composed or mapped steps, to undo them later."""
        self.failure: tuple[str, Exception] | None = None
        """The first step that failed for good, and its exception."""
        self.taken_over: RunTakenOver | None = None
        """Set when another process took the (durable) run over: stop, undo nothing."""
        self.in_doubt: list[str] = _NO_NAMES  # a list of its own once a step is in doubt
        """Steps cut off while running (their effect may or may not have landed)."""
        self.parked: list[WaitInfo] = _NO_WAITS  # a list of its own once a step waits
        """Steps of a durable run that wait (an event, a timer, a halt): the run parks
        once nothing else runs."""
        if resume is not None:
            self._resume(resume)

    def _resume(self, resume: Resume) -> None:
        """Start from a recorded state: steps that ended are not run again."""
        done = set(resume.succeeded) | set(resume.skipped)
        waiting = {info.step for info in resume.waiting}
        if resume.waiting:
            self.parked = list(resume.waiting)
        self._first_attempts = resume.first_attempts or None
        self.completed.extend(resume.succeeded)
        self.skipped = set(resume.skipped)
        nodes = self._plan.nodes
        self._pending = {
            name: sum(1 for d in node.deps if d not in done)
            for name, node in nodes.items()
            if name not in done
        }
        self._roots = tuple(
            name
            for name in self._plan.order
            if name in self._pending and not self._pending[name] and name not in waiting
        )
        self._remaining = len(self._pending)

    @property
    def results(self) -> dict[str, Any]:
        """Results of the completed steps, in completion order."""
        values = self.values
        return {name: values[name] for name in self.completed}

    @property
    def roots(self) -> tuple[str, ...]:
        """The steps the run starts with (all steps without dependencies, or, resuming,
        those whose dependencies all ended)."""
        return self._roots

    def execute(self) -> Awaitable[None]:
        """Run the steps until all completed or the run failed and in-flight steps settled
        (returns what to await)."""
        if not self._roots:
            return _NOTHING
        if on_asyncio():
            return self._guarded()
        return self._steps()

    def _steps(self) -> Awaitable[None]:
        plan = self._plan
        roots = self._roots
        if plan.chain and not self._watch:
            # Only ever one step at a time: this task runs them all, no task group (in a
            # context of their own, as a task of their own would have: a guarded run's
            # task has one already).
            chain = self._chain(plan.nodes[roots[0]])
            return chain if not self._shield else _Isolated(chain)
        return self._grouped(roots)

    async def _guarded(self) -> None:
        """On asyncio: run the steps in a task of their own, which the caller's
        cancellation cannot reach; once the caller is cancelled, give the steps in flight
        the grace, then cut off what still runs.

        asyncio's native ``Task.cancel()`` (``asyncio.timeout``, ``wait_for``, a server
        cancelling its handler) reaches into any shielded scope of the task it cancels:
        only another task keeps a step from being cut off mid-write. One plain task is
        what that costs (an anyio task group costs several times more); the calling task
        is the one that watches for the cancellation, so no step needs a shield.
        """
        self._shield = False  # nothing cancels the steps' task but the run itself
        self._watch = False  # the calling task watches
        outcome: list[BaseException] = []
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        # In a copy of this context, as any task.
        task = loop.create_task(self._steps_task(ended, outcome))
        try:
            await ended  # a cancellation cancels `ended`, never the task
        except asyncio.CancelledError:
            # The caller is cancelled: no step or attempt starts any more, and the steps
            # in flight get the grace; then what still runs is cut off (in doubt).
            deadline = self.caller_cancelled()
            await join(task, deadline - anyio.current_time())
            if not task.done():
                self._cut_all()
                task.cancel()  # the chain this task runs without a task group
                await join(task)
            if outcome and not isinstance(outcome[0], asyncio.CancelledError):
                raise outcome[0] from None  # KeyboardInterrupt, SystemExit from a step
            raise
        if outcome:
            raise outcome[0]

    async def _steps_task(self, ended: asyncio.Future[None], outcome: list[BaseException]) -> None:
        """The task of :meth:`_guarded`: run the steps; then wake the calling task (from
        here rather than from a done callback: one turn of the event loop less), as the
        task ends."""
        try:
            await self._steps()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the calling task
            outcome.append(exc)  # (SystemExit would otherwise leave the event loop)
        finally:
            if not ended.done():  # (cancelled: the caller was, and joins the task)
                ended.set_result(None)

    def _cut_all(self) -> None:
        """Cut off every step still running (in doubt), however its cancellation
        surfaces, and every task of the run's task group (anyio delivers the cancellation
        again to a step that swallows it): the grace ran out, the run failed with
        on_failure="cancel", or a step raised KeyboardInterrupt."""
        for flight in self._flights.values():
            flight.cut_off()
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _grouped(self, roots: tuple[str, ...]) -> None:
        try:
            await self._group(roots)
        finally:
            fatal, self._fatal = self._fatal, None
            if fatal is not None:
                raise fatal  # KeyboardInterrupt, SystemExit from a step: never lost

    async def _group(self, roots: tuple[str, ...]) -> None:
        nodes = self._plan.nodes
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if not self._watch:
                # The steps' timeouts bound a cancelled caller's wait: this task runs the
                # first chain itself.
                for name in roots[1:]:
                    self._spawn(nodes[name])
                await _Isolated(self._chain(nodes[roots[0]]))
                return
            # Steps run shielded, in tasks of their own; this one runs none and sees the
            # caller's cancellation in time to bound them by the grace.
            self._idle = anyio.Event()
            for name in roots:
                self._spawn(nodes[name])
            try:
                await self._idle.wait()
            except anyio.get_cancelled_exc_class():
                self.caller_cancelled()
                raise

    def caller_cancelled(self) -> float:
        """The caller is cancelled: no step or attempt starts any more, here or in the
        runs of composed and mapped steps; a step still waiting for its lease stops now;
        the steps in flight get ``cancel_grace`` seconds to finish, and no more than a
        parent run's cancelled caller gives (bounded here with shields; by the guard, on
        asyncio). Returns when the grace ends."""
        context = self._context
        if not self._stopping:
            self._stopping = True
            grace = math.inf if self._grace is None else self._grace
            context.stop(anyio.current_time() + grace)
        if self._wake is not None:
            self._wake.set()  # retries waiting out a backoff stop
        deadline = context.stop_deadline()
        for flight in self._flights.values():
            if not flight.entered:
                flight.cut_off()
            elif self._shield and flight.scope.deadline > deadline:
                flight.cut = True  # if the deadline is reached now, the grace ran out
                flight.scope.deadline = deadline
        return deadline

    def _spawn(self, node: Node) -> None:
        assert self._tg is not None  # never in a chain plan run without a task group
        self._live += 1
        self._tg.start_soon(self._task, node, name=node.name)

    async def _task(self, node: Node) -> None:
        try:
            await self._chain(node)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised by the run's own task
            # SystemExit, KeyboardInterrupt...: out of run() as from a step run inline (on
            # asyncio it would otherwise leave the event loop), once the other steps are
            # cut off.
            if self._fatal is None:
                self._fatal = exc
            self._cut_all()
        finally:
            self._ended()

    def _ended(self) -> None:
        """A chain ended: the watching task stops with the last one."""
        self._live -= 1
        if not self._live and self._idle is not None:
            self._idle.set()

    async def _chain(self, node: Node) -> None:
        """Run ``node`` (all its attempts), then the first dependent it made ready, and so
        on, in this task (whose context is the chain's own: a task's, or an ``_Isolated``
        copy); the chain ends with a step that made none ready, or when the run stops."""
        # User logs inside a step see which step they are in: structlog's context variable,
        # bound for the first step; then set directly (found through the binding's token).
        var = bind_log_var("step", node.name).var
        values = self.values
        context = self._context
        observer = self._observer
        # The slot is held for one attempt at a time, never across a backoff wait.
        limiter = self._limiter
        while True:
            name = node.name
            if node.when is not None or (self.skipped and node.required):
                skipped, following = await self._skip(node)
                if skipped:
                    if following is None:
                        return
                    node = following
                    var.set(node.name)
                    continue
            kwargs = {p: values[p] for p in node.params if p in values}
            # No timeout, lease or sub-saga, in a task only the run cancels: no scope at all.
            plain = (
                node.timeout is None
                and node.lock is None
                and node.invoke is None
                and not self._shield
            )
            undo: Undoable | None = None
            first = self._first_attempts
            attempt = 0 if first is None else first.get(name, 1) - 1
            error: Exception | None = None
            while True:
                attempt += 1
                if limiter is not None:
                    await limiter.acquire()
                try:
                    if self.failure is not None:
                        # No new step, and no new attempt, once the run has failed.
                        if attempt > 1 and observer is not None:
                            observer.ended(name, "failed", repr(error), attempt - 1)
                        return
                    # ... nor once the caller (or a parent run's caller) was cancelled.
                    if self._stopping or context.stopping():
                        return
                    if self._shield:  # raised here, before its shield would hold it off
                        await anyio.lowlevel.checkpoint_if_cancelled()
                    if attempt > 1 and observer is not None:
                        try:
                            await observer.retrying(name, attempt)
                        except RunStoreError as exc:
                            self._store_failed(name, attempt, exc)
                            return
                    if self._debug:
                        context.emit_step(StepStarted, name, attempt)
                    if observer is not None:
                        observer.begun(name)
                    started = time.monotonic()
                    timer = self._timer
                    if plain:
                        flight: _Flight = _PlainFlight()
                    else:
                        if timer is None and node.timeout is not None and not self._shield:
                            timer = self._timer = deadlines()  # on asyncio (see _guarded)
                        flight = _Flight(node, self._shield, timer)
                    scope = flight.scope
                    self._flights[name] = flight
                    try:
                        # The caller's cancellation never lands in the middle of a step's write
                        # (the attempt runs shielded, or in a task the caller cannot cancel).
                        # The attempt ends on its own (its scope's deadline is its timeout);
                        # only the run cuts it off (flight.cut), reporting it in doubt.
                        if plain:
                            result = await node.fn(**kwargs)
                        else:
                            with scope:
                                if node.invoke is not None:
                                    result, undo = await node.invoke.run(
                                        context, name, kwargs, attempt, observer
                                    )
                                elif node.lock is not None:
                                    await self._locked(node, kwargs, flight)
                                    result = flight.result
                                else:
                                    result = await node.fn(**kwargs)
                            if flight.returned:
                                # A locked body that returned completed the attempt, even if
                                # the release of its lease then met the deadline.
                                result = flight.result
                            elif scope.cancelled_caught:
                                if flight.cut:  # whatever the step did may have landed
                                    self._cut_off(name, attempt, started, flight)
                                    return
                                raise _timed_out(node, attempt)
                    except anyio.get_cancelled_exc_class():
                        if flight.returned:  # cancelled as its lease was released: completed
                            context.emit(StepSucceeded, name, attempt=attempt)
                            values[name] = flight.result
                            self.completed.append(name)
                            raise
                        # Cut off by the run in a task only the run cancels (the guard, once
                        # the grace ran out; on_failure="cancel").
                        self._cut_off(name, attempt, started, flight)
                        raise
                    except Parking as parking:  # a waiting step of a durable run
                        self._waits(name, attempt, parking.info)
                        return
                    except Halt as halt:
                        if observer is None:  # nothing could resume it: it fails
                            self._fail(name, attempt, time.monotonic() - started, halt)
                            return
                        halted = WaitInfo(step=name, kind="halt", reason=halt.reason)
                        self._waits(name, attempt, halted)
                        return
                    except Exception as exc:  # noqa: BLE001 - a step may fail in any way; that is the point
                        duration = time.monotonic() - started
                        if isinstance(exc, RunParked) and self._nested_parks(node):
                            # The sub-saga's durable child run parked: so does this step.
                            self._park_nested(name, attempt, exc)
                            return
                        if flight.cut and flight.entered:
                            # The cut-off surfaced as an error of the step's own: still in doubt.
                            self._cut_off(name, attempt, started, flight)
                            return
                        if getattr(exc, "in_doubt", False) is True:
                            # It may have taken effect (a step on workers whose worker was
                            # lost): never retried, in doubt like a step cut off.
                            self._doubt(name)
                            self._fail(name, attempt, duration, exc)
                            return
                        error = exc
                    else:
                        error = None
                    finally:
                        del self._flights[name]
                        if flight.queue is not None:  # it leaves the loop's timer
                            assert timer is not None
                            flight.ended = True
                            timer.ended(flight.queue)
                finally:
                    if limiter is not None:
                        limiter.release()
                if error is None:
                    break
                if not await self._retries(node, attempt, duration, error):
                    return

            if self._debug:
                context.emit_step(StepSucceeded, name, attempt, time.monotonic() - started)
            values[name] = result
            if undo is not None:
                if self.undos is _NO_UNDOS:
                    self.undos = {}
                self.undos[name] = undo
            self.completed.append(name)
            if observer is not None:
                following = await self._recorded(node, attempt, result)
            else:  # (the run may have failed while the step ran)
                following = self._release(node) if self.failure is None else None
            if following is None:
                return
            node = following
            var.set(node.name)

    async def _skip(self, node: Node) -> tuple[bool, Node | None]:
        """Whether ``node`` is skipped (its condition is false, or a step it requires was
        skipped), and then the next step for this task; a failing condition fails it."""
        name = node.name
        if self.failure is not None:
            return True, None
        try:
            skip = await self._skips(node)
        except Exception as exc:  # noqa: BLE001 - a failing condition fails its step
            self._fail(name, 1, 0.0, exc)
            return True, None
        if not skip:
            return False, None
        if self._debug:
            self._context.emit_step(StepSkipped, name, 0)
        if self.skipped is _NONE_SKIPPED:
            self.skipped = set()
        self.skipped.add(name)
        if self._stopped():
            return True, None
        if self._observer is None:
            return True, self._release(node)
        return True, await self._recorded(node, 0, None)

    async def _retries(self, node: Node, attempt: int, duration: float, error: Exception) -> bool:
        """After attempt ``attempt`` of ``node`` failed with ``error``: wait out the backoff
        and return ``True`` if another attempt goes; else the step failed (or its caller
        was cancelled) and ``False``."""
        name, retry = node.name, node.retry
        # Work a failed attempt left undone needs a human: never retried over it.
        retryable = retry.should_retry(attempt, error) and not needs_repair(error)
        if not (retryable and self.failure is None):
            self._fail(name, attempt, duration, error)
            return False
        delay = retry.delay(attempt)
        self._context.emit(
            StepRetrying,
            name,
            attempt=attempt,
            duration=duration,
            error=repr(error),
            delay=delay,
        )
        waited = time.monotonic()
        if self._wake is None:
            self._wake = anyio.Event()
        try:
            with anyio.move_on_after(delay):
                await self._wake.wait()  # woken early: the run failed, or its caller
        except anyio.get_cancelled_exc_class():  # was cancelled
            self._cancelled(name, attempt, waited, in_doubt=False)
            raise
        if self._caller_gone():
            self._cancelled(name, attempt, waited, in_doubt=False)
            return False
        if self._stopped():
            self._fail(name, attempt, duration, error)
            return False
        return True

    async def _recorded(self, node: Node, attempt: int, result: Any) -> Node | None:
        """Report that ``node`` ended (``attempt`` 0: skipped) and which steps it makes
        ready, before they start; return the next step for this task, as _release does."""
        observer = self._observer
        assert observer is not None
        name = node.name
        self._remaining -= 1
        try:
            if self.failure is not None:  # in flight when the run failed: to be undone
                if attempt:
                    await observer.succeeded(name, attempt, result, (), last=False)
                return None
            ready = self._ready(node)
            released = [n.name for n in ready]
            if attempt:
                await observer.succeeded(name, attempt, result, released, last=not self._remaining)
            else:
                await observer.skipped(name, released)
        except RunStoreError as exc:
            self._store_failed(name, attempt, exc)
            return None
        return self._start(ready)

    def _stopped(self) -> bool:
        """Whether the run has failed (checked again after an await)."""
        return self.failure is not None

    def _caller_gone(self) -> bool:
        """Whether the caller was cancelled (checked again after an await)."""
        return self._stopping or self._context.stopping()

    def _store_failed(self, name: str, attempt: int, exc: RunStoreError) -> None:
        """The observer could not record a transition of ``name``: the run stops there
        (a result that cannot be kept, the observer has noted so already)."""
        if isinstance(exc, RunTakenOver):
            # Another process owns the run now: stop everything, undo nothing.
            self.taken_over = exc
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            return
        self._fail(name, max(attempt, 1), 0.0, exc)

    async def _locked(self, node: Node, kwargs: dict[str, Any], flight: _Flight) -> None:
        """Run one attempt of a step holding its lease (cancelled if the lease is lost)."""
        lock = node.lock
        assert lock is not None
        locks = self.values.get("locks") if "locks" in self._plan.inputs else None
        provider: LockProvider = locks if locks is not None else self._default_locks()
        if not callable(getattr(provider, "lease", None)):
            raise TypeError(
                f"step {node.name!r} holds a lock, and the saga's input `locks` should be a "
                f"lock provider (MemoryLockProvider, RedisLockProvider), got "
                f"{type(provider).__name__}"
            )
        keys = lock.render({**node.defaults, **kwargs})
        async with provider.lease(*keys, ttl=lock.ttl, wait=lock.wait) as lease:
            if flight.cut:
                # Cut off while it waited, and handed the lease before that was delivered:
                # the body never starts (the cancellation is raised here).
                await anyio.lowlevel.checkpoint()
            flight.entered = True  # from here on the step may have done something
            if node.takes_lease:
                flight.result = await node.fn(**kwargs, lease=lease)
            else:
                flight.result = await node.fn(**kwargs)
            flight.returned = True

    async def _skips(self, node: Node) -> bool:
        """Whether ``node`` is skipped: a step it requires was skipped, or its condition
        is false."""
        skipped = self.skipped
        if skipped and any(r in skipped for r in node.required):
            return True
        when = node.when
        if when is None:
            return False
        values = self.values
        verdict = when.fn(**{p: values[p] for p in when.params if p in values})
        if when.is_async:
            verdict = await verdict
        return not verdict

    def _cancelled(self, name: str, attempt: int, since: float, *, in_doubt: bool) -> None:
        context = self._context
        duration = time.monotonic() - since
        if in_doubt:  # a warning: always built, whatever the level of step_cancelled
            context.emitter.emit(
                context.make(StepCancelled, name, attempt=attempt, duration=duration, in_doubt=True)
            )
        else:
            context.emit(StepCancelled, name, attempt=attempt, duration=duration)
        if self._observer is not None:
            self._observer.ended(name, "cancelled", None, attempt)

    def _nested_parks(self, node: Node) -> bool:
        """Whether a ``RunParked`` out of ``node`` is its child run parking (a composed
        step of a durable run), not a failure."""
        return self._observer is not None and node.invoke is not None and node.invoke.nested

    def _park_nested(self, name: str, attempt: int, parked: RunParked) -> None:
        """The composed step ``name`` waits for what its child run waits for."""
        for info in parked.waits:
            wrapped = msgspec.structs.replace(
                info,
                step=name,
                runs=(parked.run_id, *info.runs),
                run_step=info.run_step or info.step,
            )
            self._waits(name, attempt, wrapped)

    def _waits(self, name: str, attempt: int, info: WaitInfo) -> None:
        """Step ``name`` waits for what ``info`` says: the run parks once nothing else
        runs."""
        self._context.emit(
            StepWaiting,
            name,
            attempt=attempt,
            wait=info.kind,
            key=info.key,
            until=info.until,
            reason=info.reason,
        )
        if self.parked is _NO_WAITS:
            self.parked = []
        self.parked.append(info)

    def _doubt(self, name: str) -> None:
        """Step ``name`` may or may not have taken effect."""
        if self.in_doubt is _NO_NAMES:
            self.in_doubt = []
        self.in_doubt.append(name)

    def _cut_off(self, name: str, attempt: int, since: float, flight: _Flight) -> None:
        """The run cut off an attempt of ``name`` in flight: in doubt if its body began."""
        if flight.entered:
            self._doubt(name)
        self._cancelled(name, attempt, since, in_doubt=flight.entered)

    def _release(self, node: Node) -> Node | None:
        """Count down the dependents of ``node``, which just ended; start those now ready,
        except the first, which is returned for the calling task to run next."""
        pending = self._pending
        nodes = self._plan.nodes
        following: Node | None = None
        for child in node.dependents:
            pending[child] -= 1
            if pending[child] == 0:
                if following is None:
                    following = nodes[child]
                else:  # never in a chain plan: there, at most one step is ever ready
                    self._spawn(nodes[child])
        return following

    def _ready(self, node: Node) -> list[Node]:
        """Count down the dependents of ``node``; those now ready (not started yet)."""
        pending = self._pending
        nodes = self._plan.nodes
        ready = []
        for child in node.dependents:
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(nodes[child])
        return ready

    def _start(self, ready: list[Node]) -> Node | None:
        """Start ``ready`` steps but the first, which is returned to run in this task."""
        for node in ready[1:]:
            self._spawn(node)
        return ready[0] if ready else None

    def _fail(self, name: str, attempt: int, duration: float, exc: Exception) -> None:
        self._context.emit(StepFailed, name, attempt=attempt, duration=duration, error=repr(exc))
        if self._observer is not None and name not in self.completed:
            self._observer.ended(name, "failed", repr(exc), attempt)
        if self.failure is None:
            self.failure = (name, exc)
            self._context.failed = True
            if self._wake is not None:
                self._wake.set()
            if self._on_failure == "cancel":
                self._cut_all()  # the steps in flight (in doubt), the waits between attempts


class _Nothing:
    """An awaitable that completes at once: the execution of a run with no step to run."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, Any, None]:
        return
        yield  # a generator that yields nothing


_NOTHING = _Nothing()


class _OpenScope:
    """The scope of an attempt that nothing but its task's own cancellation can stop (no
    timeout, no lease to wait for, in a task the caller cannot cancel): no scope at all."""

    __slots__ = ()
    cancelled_caught = False
    deadline = math.inf

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None

    def cancel(self) -> None:
        """Nothing to cancel: the run cancels the attempt's task instead."""


_OPEN = _OpenScope()


class _Flight:
    """One attempt of a step in flight, in a scope whose deadline is the step's timeout,
    shielded from the caller's cancellation (unless the task is one the caller cannot
    cancel), and that only the run cancels otherwise."""

    __slots__ = ("cut", "deadline", "ended", "entered", "queue", "result", "returned", "scope")

    scope: anyio.CancelScope | _OpenScope
    deadline: float  # (timed by the loop's timer: see Deadlines.add)
    ended: bool

    def __init__(self, node: Node, shield: bool, timer: Deadlines | None) -> None:
        timeout = node.timeout
        # A step that waits (wait_for, a timer) has no effect to leave in doubt: the run
        # cuts it off at once when its caller is cancelled.
        waits = node.invoke is not None and not node.invoke.nested
        self.queue: deque[Timed] | None = None
        """Where the event loop's timer keeps the attempt (asyncio, with a timeout)."""
        if timeout is not None:
            if timer is not None and timeout > 0:
                # The loop's one timer cancels the scope at the deadline (see _deadlines).
                self.scope = timer.scope(shield=shield)
                self.ended = False
                self.queue = timer.add(self, timeout)
            else:
                deadline = anyio.current_time() + timeout
                self.scope = anyio.CancelScope(shield=shield, deadline=deadline)
        elif shield or node.lock is not None or waits:
            self.scope = anyio.CancelScope(shield=shield)
        else:
            self.scope = _OPEN
        self.entered = node.lock is None and not waits
        """Whether the step's body began (a locked step's, once it holds its lease; never
        a waiting step's)."""
        self.cut = False
        """Whether the run cut the attempt off (or brought its deadline forward to do so):
        a cancellation of the scope is then not the step's timeout."""
        self.returned = False
        """Whether a locked step's body returned (its ``result``), whatever its lease's
        release then met."""
        self.result: Any = None

    def cut_off(self) -> None:
        """Stop the attempt now (the run failed with on_failure="cancel", or the caller
        was cancelled while it waited for its lease)."""
        self.cut = True
        self.scope.cancel()

    def expire(self) -> None:
        """The deadline passed (the event loop's timer says): cancel the attempt."""
        self.scope.cancel()


class _PlainFlight(_Flight):
    """An attempt of a plain step (no timeout, lease or sub-saga) in a task that only the
    run cancels: no scope; its body began; all it keeps is whether the run cut it off."""

    __slots__ = ()

    scope = _OPEN
    entered = True
    returned = False
    result = None
    queue = None

    def __init__(self) -> None:
        self.cut = False


def needs_watch(plan: Plan, cancel_grace: float | None) -> bool:
    """Whether a run of ``plan`` needs a task that watches for the caller's cancellation:
    some step may run longer than ``cancel_grace`` (it has no shorter timeout). Otherwise
    the steps' own timeouts bound how long a cancelled caller waits, with no extra task."""
    if cancel_grace is None:
        return False
    return any(n.timeout is None or n.timeout > cancel_grace for n in plan.nodes.values())


class _Isolated:
    """Await a coroutine in a copy of the current context, as a task of its own would run
    it, without starting one: context variables it sets (a step's
    ``structlog.contextvars.bind_contextvars``) do not leak into the awaiting task.

    Every resumption of the coroutine goes through ``Context.run``; cancellation and
    everything else the event loop sends or throws is passed through unchanged.
    """

    __slots__ = ("_context", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self._coro = coro
        self._context = contextvars.copy_context()

    def __await__(self) -> Generator[Any, Any, None]:
        coro, run = self._coro, self._context.run
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = run(coro.send, value) if error is None else run(coro.throw, error)
            except StopIteration:
                return
            error = None
            try:
                value = yield yielded
            except GeneratorExit:
                run(coro.close)
                raise
            except BaseException as exc:  # noqa: BLE001 - passed on to the coroutine
                error, value = exc, None


def _timed_out(node: Node, attempt: int) -> TimeoutError:
    """The error of an attempt that ran over the step's timeout."""
    waiting = " (including the wait for its lease)" if node.lock is not None else ""
    return TimeoutError(
        f"step {node.name!r}, attempt {attempt}: ran over its timeout of {node.timeout:g} s"
        f"{waiting}"
    )
