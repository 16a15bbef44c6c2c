"""The executor: runs one saga run's steps as eager dataflow in one task group.

Readiness is pushed, never polled: when a step completes it decrements a counter on each
dependent, and the dependent whose counter reaches zero is started right then, by the task
that completed its last dependency. In pseudocode::

    pending[s] = number of dependencies of s, for every step s
    start every step with no dependency
    run step s:                              # one task per step, in the run's task group
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
            return
    fail the run: record (step, exception); wake retry waits;
                  with on_failure == "cancel", cancel the task group

The task group exits when no step is running: either every step completed, or the run
failed and the steps in flight settled. Cancellation from outside propagates out of
:meth:`Execution.execute` after the running steps were cancelled; the caller unwinds.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Literal

import anyio
import anyio.abc
from structlog.contextvars import bind_contextvars

from ._events import (
    Emitter,
    StepCancelled,
    StepFailed,
    StepRetrying,
    StepStarted,
    StepSucceeded,
)
from ._graph import Node, Plan

__all__ = ["Execution", "OnFailure"]

OnFailure = Literal["wait", "cancel"]


class Execution:
    """The state of one run's forward phase."""

    __slots__ = (
        "_emitter",
        "_failed",
        "_limiter",
        "_on_failure",
        "_pending",
        "_plan",
        "_run_id",
        "_saga",
        "_tg",
        "completed",
        "failure",
        "results",
        "values",
    )

    def __init__(
        self,
        plan: Plan,
        values: dict[str, Any],
        emitter: Emitter,
        run_id: str,
        *,
        max_concurrency: int | None,
        on_failure: OnFailure,
    ) -> None:
        self._plan = plan
        self._saga = plan.saga
        self._emitter = emitter
        self._run_id = run_id
        self._on_failure = on_failure
        self._limiter = anyio.CapacityLimiter(max_concurrency) if max_concurrency else None
        self._pending = {name: len(node.deps) for name, node in plan.nodes.items()}
        self._failed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self.values = values
        """Inputs and, as they complete, step results: what parameters resolve against."""
        self.results: dict[str, Any] = {}
        """Results of the completed steps."""
        self.completed: list[str] = []
        """Names of the completed steps, in completion order."""
        self.failure: tuple[str, Exception] | None = None
        """The first step that failed for good, and its exception."""

    async def execute(self) -> None:
        """Run the steps until all completed or the run failed and in-flight steps settled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for name in self._plan.roots:
                tg.start_soon(self._run, self._plan.nodes[name], name=name)

    async def _run(self, node: Node) -> None:
        name = node.name
        bind_contextvars(step=name)  # this task's own context: user logs in the step see it
        values = self.values
        kwargs = {p: values[p] for p in node.params if p in values}
        retry = node.retry
        emit = self._emitter.emit
        saga, run_id = self._saga, self._run_id
        # The slot is held for one attempt at a time, never across a backoff wait.
        slot = self._limiter if self._limiter is not None else nullcontext()
        attempt = 0
        error: Exception | None
        while True:
            attempt += 1
            async with slot:
                if self.failure is not None:
                    return  # no new step, and no new attempt, once the run has failed
                emit(StepStarted(saga=saga, run_id=run_id, step=name, attempt=attempt))
                started = time.monotonic()
                try:
                    if node.timeout is None:
                        result = await node.fn(**kwargs)
                    else:
                        with anyio.fail_after(node.timeout):
                            result = await node.fn(**kwargs)
                except anyio.get_cancelled_exc_class():
                    self._cancelled(name, attempt, started)
                    raise
                except Exception as exc:  # noqa: BLE001 - a step may fail in any way; that is the point
                    duration = time.monotonic() - started
                    error = exc
                else:
                    error = None
            if error is None:
                break
            if not (retry.should_retry(attempt, error) and self.failure is None):
                self._fail(name, attempt, duration, error)
                return
            delay = retry.delay(attempt)
            emit(
                StepRetrying(
                    saga=saga,
                    run_id=run_id,
                    step=name,
                    attempt=attempt,
                    duration=duration,
                    error=repr(error),
                    delay=delay,
                )
            )
            waited = time.monotonic()
            try:
                with anyio.move_on_after(delay):
                    await self._failed.wait()  # woken early when the run fails
            except anyio.get_cancelled_exc_class():
                self._cancelled(name, attempt, waited)
                raise
            if self._failed.is_set():
                self._fail(name, attempt, duration, error)
                return

        emit(
            StepSucceeded(
                saga=saga,
                run_id=run_id,
                step=name,
                attempt=attempt,
                duration=time.monotonic() - started,
            )
        )
        self.results[name] = result
        values[name] = result
        self.completed.append(name)
        if self.failure is None:
            self._release(node)

    def _cancelled(self, name: str, attempt: int, since: float) -> None:
        self._emitter.emit(
            StepCancelled(
                saga=self._saga,
                run_id=self._run_id,
                step=name,
                attempt=attempt,
                duration=time.monotonic() - since,
            )
        )

    def _release(self, node: Node) -> None:
        pending = self._pending
        assert self._tg is not None
        for child in node.dependents:
            pending[child] -= 1
            if pending[child] == 0:
                self._tg.start_soon(self._run, self._plan.nodes[child], name=child)

    def _fail(self, name: str, attempt: int, duration: float, exc: Exception) -> None:
        self._emitter.emit(
            StepFailed(
                saga=self._saga,
                run_id=self._run_id,
                step=name,
                attempt=attempt,
                duration=duration,
                error=repr(exc),
            )
        )
        if self.failure is None:
            self.failure = (name, exc)
            self._failed.set()
            if self._on_failure == "cancel" and self._tg is not None:
                self._tg.cancel_scope.cancel()
