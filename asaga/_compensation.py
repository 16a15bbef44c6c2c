"""Unwinding: compensate the completed steps of a failed run in reverse graph order.

Rules (see docs/failure.md):

1. only steps that completed are compensated, each exactly once; a step cut off while
   running (in doubt: its effect may or may not have landed) only by a compensation
   declared ``in_doubt=True``, which receives ``None`` as the step's result; the others
   are reported as left in doubt;
2. the compensation of step A starts only after the compensations of every completed step
   that depends on A, directly or through other steps, have finished (succeeded or failed);
   compensations of independent branches run concurrently;
3. the whole unwind runs shielded from cancellation; each attempt is bounded by its
   timeout, so a cancelled caller still gets a fully unwound saga, promptly;
4. a compensation that fails after its retries does not stop the others: every failure
   is collected and returned.

Readiness is pushed like the forward phase: each compensation, when it ends, decrements a
counter on the compensations waiting for it and starts those that reach zero.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from structlog.contextvars import bind_contextvars

from ._events import (
    CompensationFailedEvent,
    CompensationStarted,
    CompensationSucceeded,
    RunContext,
)
from ._graph import CompNode, Plan
from ._observer import Observer, Undoable

__all__ = ["Undoable", "Unwind", "undoable"]


def undoable(plan: Plan, undos: Mapping[str, Undoable], name: str) -> bool:
    """Whether step ``name`` has something that undoes it (a compensation, or the runs of
    a composed or mapped step)."""
    return plan.nodes[name].compensation is not None or name in undos


class Unwind:
    """The compensation phase of one failed run."""

    __slots__ = (
        "_context",
        "_observer",
        "_plan",
        "_timeout",
        "_undos",
        "_values",
        "compensated",
        "errors",
        "in_doubt",
    )

    def __init__(
        self,
        plan: Plan,
        values: dict[str, Any],
        context: RunContext,
        undos: Mapping[str, Undoable],
        *,
        default_timeout: float | None,
        observer: Observer | None = None,
    ) -> None:
        self._plan = plan
        self._values = values
        self._context = context
        self._undos = undos
        self._timeout = default_timeout
        self._observer = observer
        self.compensated: list[str] = []
        """Steps whose compensation completed, in completion order."""
        self.errors: list[tuple[str, Exception]] = []
        """(step, exception) of every compensation that failed for good."""
        self.in_doubt: tuple[str, ...] = ()
        """Steps cut off while running that no compensation covered (left in doubt)."""

    async def run(self, completed: Sequence[str], in_doubt: Sequence[str] = ()) -> None:
        """Compensate ``completed`` steps (those that have something to undo), and the
        ``in_doubt`` ones whose compensation is declared safe for them, shielded."""
        nodes, undos = self._plan.nodes, self._undos
        if self._observer is not None:
            undos = self._undos = self._recorded_undos(completed)
        todo = [n for n in completed if undoable(self._plan, undos, n)]
        if in_doubt:
            blind = []
            for name in in_doubt:
                comp = nodes[name].compensation
                if comp is not None and comp.in_doubt and name not in undos:
                    blind.append(name)
            self.in_doubt = tuple(n for n in in_doubt if n not in blind)
            if blind:
                # Nothing depends on a step that did not complete: they unwind first.
                values = self._values = dict(self._values)
                for name in blind:
                    values.setdefault(name, None)
                todo += blind
        if not todo:
            return
        todo_set = set(todo)
        descendants = self._plan.descendants
        # waiting[a]: compensations that must end before a's; blocks[d]: those d holds up
        waiting = {a: len(descendants[a] & todo_set) for a in todo}
        blocks: dict[str, list[str]] = {d: [] for d in todo}
        for a in todo:
            for d in descendants[a] & todo_set:
                blocks[d].append(a)

        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:

                async def compensate(name: str) -> None:
                    undo = undos.get(name)
                    if undo is not None:
                        await self._undo_nested(name, undo)
                    else:
                        comp = nodes[name].compensation
                        assert comp is not None
                        await self._attempts(name, comp)
                    for ancestor in blocks[name]:
                        waiting[ancestor] -= 1
                        if waiting[ancestor] == 0:
                            tg.start_soon(compensate, ancestor, name=f"undo {ancestor}")

                for name in todo:
                    if waiting[name] == 0:
                        tg.start_soon(compensate, name, name=f"undo {name}")

    def _recorded_undos(self, completed: Sequence[str]) -> Mapping[str, Undoable]:
        """The undo handles held in memory, and for composed or mapped steps without one
        (a resumed run, an undo after success), those the observer makes from the
        children's records."""
        observer, nodes, undos = self._observer, self._plan.nodes, self._undos
        assert observer is not None
        found: dict[str, Undoable] = {}
        for name in completed:
            invoke = nodes[name].invoke
            if invoke is not None and invoke.nested and name not in undos:
                handle = observer.undo_of(name, self._values)
                if handle is not None:
                    found[name] = handle
        return {**undos, **found} if found else undos

    async def _undo_nested(self, name: str, undo: Undoable) -> None:
        """Undo a composed or mapped step: its sub-runs compensate themselves, each
        compensation bounded by its own timeout."""
        bind_contextvars(step=name)
        if not await self._record(name, "running", 1):
            return  # another process took the run over: it compensates
        emit = self._context.emit
        emit(CompensationStarted, name, attempt=1)
        started = time.monotonic()
        try:
            await undo.undo(self._context)
        except Exception as exc:  # noqa: BLE001 - recorded; it stops no other compensation
            emit(
                CompensationFailedEvent,
                name,
                attempt=1,
                duration=time.monotonic() - started,
                error=repr(exc),
                final=True,
            )
            self.errors.append((name, exc))
            await self._record(name, "failed", 1, repr(exc))
            return
        emit(CompensationSucceeded, name, attempt=1, duration=time.monotonic() - started)
        self.compensated.append(name)
        await self._record(name, "succeeded", 1)

    async def _attempts(self, name: str, comp: CompNode) -> None:
        bind_contextvars(step=name)
        values = self._values
        # Required parameters are always there (checked when the class was created);
        # optional ones are passed only when their step completed or their input was given.
        kwargs = {p: values[p] for p in comp.params if p in values}
        timeout = comp.timeout if comp.timeout is not None else self._timeout
        emit = self._context.emit
        attempt = 0
        while True:
            attempt += 1
            if not await self._record(name, "running", attempt):
                return  # another process took the run over: it compensates
            emit(CompensationStarted, name, attempt=attempt)
            started = time.monotonic()
            try:
                with anyio.fail_after(timeout):
                    await comp.fn(**kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure is recorded, none stops the unwind
                final = not comp.retry.should_retry(attempt, exc)
                emit(
                    CompensationFailedEvent,
                    name,
                    attempt=attempt,
                    duration=time.monotonic() - started,
                    error=repr(exc),
                    final=final,
                )
                if final:
                    self.errors.append((name, exc))
                    await self._record(name, "failed", attempt, repr(exc))
                    return
                await anyio.sleep(comp.retry.delay(attempt))
                continue
            emit(CompensationSucceeded, name, attempt=attempt, duration=time.monotonic() - started)
            self.compensated.append(name)
            await self._record(name, "succeeded", attempt)
            return

    async def _record(self, name: str, status: str, attempt: int, error: str | None = None) -> bool:
        """Report where undoing ``name`` stands; ``False`` if the run was taken over by
        another process (it compensates)."""
        observer = self._observer
        if observer is None:
            return True
        return await observer.compensation(name, status, attempt, error)
