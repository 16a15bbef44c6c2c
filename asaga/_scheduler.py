"""The executor: runs one saga run's steps as eager dataflow in one task group.

Readiness is pushed, never polled: when a step completes it decrements a counter on each
dependent, and the dependent whose counter reaches zero is started right then, by the task
that completed its last dependency. In pseudocode::

    pending[s] = number of dependencies of s, for every step s
    start every step with no dependency
    run step s:                              # one task per step, in the run's task group
        wait for a slot (only with max_concurrency)
        if the run has failed: return        # no new step once the run failed
        for attempt in 1..retry.max_attempts:
            emit step_started
            try:   result = await s(**values of its parameters), under its timeout
            on cancellation: emit step_cancelled; re-raise
            on exception:
                if retryable and the run has not failed:
                    emit step_retrying; wait the backoff, woken early if the run fails
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
        if self._limiter is None:
            await self._attempts(node)
        else:
            async with self._limiter:
                await self._attempts(node)

    async def _attempts(self, node: Node) -> None:
        if self.failure is not None:
            return
        name = node.name
        bind_contextvars(step=name)  # this task's own context: user logs in the step see it
        values = self.values
        kwargs = {p: values[p] for p in node.params if p in values}
        retry = node.retry
        emit = self._emitter.emit
        saga, run_id = self._saga, self._run_id
        attempt = 0
        while True:
            attempt += 1
            emit(StepStarted(saga=saga, run_id=run_id, step=name, attempt=attempt))
            started = time.monotonic()
            try:
                if node.timeout is None:
                    result = await node.fn(**kwargs)
                else:
                    with anyio.fail_after(node.timeout):
                        result = await node.fn(**kwargs)
            except anyio.get_cancelled_exc_class():
                emit(
                    StepCancelled(
                        saga=saga,
                        run_id=run_id,
                        step=name,
                        attempt=attempt,
                        duration=time.monotonic() - started,
                    )
                )
                raise
            except Exception as exc:  # noqa: BLE001 - a step may fail in any way; that is the point
                duration = time.monotonic() - started
                if retry.should_retry(attempt, exc) and self.failure is None:
                    delay = retry.delay(attempt)
                    emit(
                        StepRetrying(
                            saga=saga,
                            run_id=run_id,
                            step=name,
                            attempt=attempt,
                            duration=duration,
                            error=repr(exc),
                            delay=delay,
                        )
                    )
                    with anyio.move_on_after(delay):
                        await self._failed.wait()
                    if self.failure is None:
                        continue
                emit(
                    StepFailed(
                        saga=saga,
                        run_id=run_id,
                        step=name,
                        attempt=attempt,
                        duration=duration,
                        error=repr(exc),
                    )
                )
                self._fail(name, exc)
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
            return

    def _release(self, node: Node) -> None:
        pending = self._pending
        assert self._tg is not None
        for child in node.dependents:
            pending[child] -= 1
            if pending[child] == 0:
                self._tg.start_soon(self._run, self._plan.nodes[child], name=child)

    def _fail(self, name: str, exc: Exception) -> None:
        if self.failure is None:
            self.failure = (name, exc)
            self._failed.set()
            if self._on_failure == "cancel" and self._tg is not None:
                self._tg.cancel_scope.cancel()
