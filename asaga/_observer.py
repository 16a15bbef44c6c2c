"""The seam between running a saga and recording it: running reports, recording listens.

The scheduler, the unwinding and the run driver report each transition of a run to one
:class:`Observer`, *before* they act on it, and know nothing of what the observer does
with it. The journal of a durable run (:mod:`asaga.runs`) is the observer that writes
each transition down; a run with no observer (``None``, the default: nothing to record)
pays one comparison per transition. Events go the other way round: the run emits them
through its :class:`~asaga._events.RunContext`, to the log and the hooks, and an observer
that wants them takes them as one more hook (:meth:`Observer.hook`).

A run's transitions, in the order an observer hears them::

    begun(step)                          an attempt's body is about to run
    retrying(step, attempt)              attempt > 1 is about to start
    succeeded(step, ..., released)       a step's result; ``released`` steps start next
    skipped(step, released)              a step's condition was false
    ended(step, "failed" | "cancelled")  (noted; written with the next transition)
    unwinding(step, error)               the run failed: compensation starts
    compensation(step, status, attempt)  undoing one step: running, succeeded, failed
    parked(waits)                        steps wait, nothing else runs: the run parks
    run_succeeded(event) / run_ended(status)

Composed and mapped steps run their sub-sagas through :meth:`Observer.run_child`, so
that a durable parent records each child as a run of its own, and undo them from those
records (:meth:`Observer.undo_of`) when no process holds them in memory any more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ._events import Event, RunContext
from ._exceptions import WaitInfo

__all__ = ["Observer", "Undoable"]


class Undoable(Protocol):
    """What a completed composed or mapped step leaves behind: its sub-saga runs, which
    it undoes as a whole (in their own reverse-graph order) when the parent unwinds."""

    async def undo(self, parent: RunContext) -> None:
        """Compensate, reporting to ``parent`` (the run that unwinds); raise if any part
        could not be undone."""


class Observer(Protocol):
    """Listens to one run's transitions (see the module docstring).

    Methods that write may raise :class:`~asaga.RunStoreError`: the run stops where it
    is (:class:`~asaga.RunTakenOver`: another process owns it now, nothing is undone
    here). Those marked *best effort* never raise: the unwinding goes on regardless.
    """

    lost: bool
    """Another process took the run over: nothing more is written or compensated here."""

    def hook(self, event: Event) -> None:
        """One event of the run (a sync hook: the observer keeps what it needs)."""

    # -- forward --------------------------------------------------------------------------

    def begun(self, step: str) -> None:
        """An attempt of ``step`` is about to run its body (from now on, its effect may
        land: a crash leaves it in doubt)."""

    async def retrying(self, step: str, attempt: int) -> None:
        """Attempt ``attempt`` (> 1) of ``step`` is about to start."""

    async def succeeded(
        self, step: str, attempt: int, result: Any, released: Sequence[str], *, last: bool
    ) -> None:
        """``step`` completed with ``result``; ``released`` steps are about to start.

        ``last``: nothing else is running or left to run. Raises
        :class:`~asaga.NotRecordable` / :class:`~asaga.RecordTooLarge` when the result
        cannot be kept (the observer notes that it ran without it).
        """

    async def skipped(self, step: str, released: Sequence[str]) -> None:
        """``step``'s condition was false; ``released`` steps are about to start."""

    def ended(self, step: str, status: str, error: str | None, attempt: int) -> None:
        """``step`` failed or was cancelled (noted, carried by the next write)."""

    async def parked(self, waits: Sequence[WaitInfo]) -> None:
        """Nothing runs any more and steps wait (``waits``): the run parks, recorded as
        waiting for them. Raises :class:`~asaga.RunStoreError` if that cannot be written."""

    # -- unwinding and the end ------------------------------------------------------------

    async def unwinding(self, step: str | None, error: str) -> None:
        """The run unwinds: ``step`` failed for good (``None``: the caller cancelled).
        Best effort."""

    async def compensation(
        self, step: str, status: str, attempt: int, error: str | None = None
    ) -> bool:
        """Undoing ``step``: attempt ``attempt`` is starting (``running``) or ended
        (``succeeded`` / ``failed``). Best effort; ``False`` if the run was taken over
        (then nothing more is compensated here)."""

    async def run_succeeded(self, event: Event) -> None:
        """The run succeeded; ``event`` says so and is delivered after this returns.
        Raises :class:`~asaga.RunStoreError` if that could not be written."""

    async def run_ended(self, status: str, *, release_key: bool = False) -> None:
        """The run ended otherwise (``failed``, ``cancelled``, ``compensation_failed``);
        ``release_key``: nothing it did stays, so its idempotency key may run again.
        Best effort, shielded."""

    async def landed(self) -> bool:
        """Whether a ``run_succeeded`` that raised was written after all (its reply was
        lost): then the run did succeed, and its caller must be told so."""

    # -- sub-sagas ------------------------------------------------------------------------

    async def run_child(
        self,
        spec: Any,
        inputs: Mapping[str, Any],
        *,
        key: str,
        parent: RunContext,
        prefix: str,
    ) -> tuple[Any, Undoable]:
        """Run one sub-saga (``spec``: its ``SagaSpec``) of a composed or mapped step as a
        child run, ``key`` naming it within this run (the step, the attempt, the element);
        its output and what undoes it. A child recorded before (this run is resumed after
        a crash) is not run again: its recorded outcome stands, or it is driven to its
        end from its record."""

    def undo_of(self, step: str, values: Mapping[str, Any]) -> Undoable | None:
        """What undoes the composed or mapped ``step`` from its children's records, when
        no handle is held in memory (the run was resumed, or is undone later);
        ``values`` are the run's inputs and results."""
