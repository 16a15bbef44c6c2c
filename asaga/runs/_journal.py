"""The journal: a durable run's write-ahead record, kept through a :class:`RunStore`.

The journal is the :class:`~asaga._observer.Observer` of a durable run: the scheduler and
the unwinder report each transition to it *before* acting on it, and it writes the run's
whole record (one store write, at most one round trip) before it returns::

    open        the run exists, its root steps are starting      (with the idempotency key)
    retrying    attempt k > 1 of a step is starting
    succeeded   a step's result, and the dependents it makes ready are starting
    skipped     a step's condition was false, and the dependents it makes ready...
    failing     a step failed for good: the run unwinds
    compensation started / ended
    finish      the run's final status (with the last step's result, when that step
                is the last thing that happened)

If the record vanishes under a running run (Redis lost writes: restarted without
persistence, rolled back, failed over), the write that finds it gone raises
:class:`~asaga.RunRecordLost` once, and every later write is skipped: nobody else owns the
run, so its process unwinds it with what it holds, writing nothing more.

So after a crash the record says, for every step, whether it never started, is in doubt
(started, not known to have ended), succeeded (with its result) or failed, and where the
unwinding stands. Events are recorded too: a hook of the run collects them and each write
carries those emitted since the last one.

A composed or mapped step runs each sub-saga as a *child run*, with a record of its own
under ``<parent run id>/<step>/<attempt>[/<element>]`` that names its parent; the parent's
record names its children. What is recorded is encoded by :mod:`asaga.runs._codec`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import anyio
import msgspec
import structlog

from .._events import Event, RunContext
from .._exceptions import (
    NotRecordable,
    RecordTooLarge,
    RunRecordLost,
    RunStoreError,
    RunTakenOver,
    WaitInfo,
)
from .._observer import Undoable
from ._codec import SagaCodec
from ._record import (
    Claim,
    RunRecord,
    RunStatus,
    RunStore,
    StepRecord,
    Write,
    encode_event,
    encode_record,
)

__all__ = ["ChildRuns", "ChildRunsFor", "Journal"]

_logger = structlog.get_logger("asaga")


class ChildRuns(Protocol):
    """How a journal runs and undoes the child runs of composed and mapped steps (given
    by :mod:`asaga.runs._children`, which drives child runs from their records)."""

    async def run(
        self,
        journal: Journal,
        spec: Any,
        inputs: Mapping[str, Any],
        child_id: str,
        parent: RunContext,
        prefix: str,
    ) -> tuple[Any, Undoable]: ...

    def undo(self, journal: Journal, step: str, values: Mapping[str, Any]) -> Undoable | None: ...


ChildRunsFor = Callable[[Any, Any], ChildRuns]
"""What makes the :class:`ChildRuns` of a run: called with the run's ``SagaSpec`` and its
extra hooks. Given to undo and recovery by :mod:`asaga.runs._durable`, so that they need
not import the child runs, which use them."""


class Journal:
    """The write-ahead record of one durable run (see the module docstring); the
    :class:`~asaga._observer.Observer` of that run."""

    __slots__ = (
        "_begun",
        "_children",
        "_events",
        "_final_event",
        "_kids",
        "_nonce",
        "_record",
        "_seq",
        "_steps",
        "claim",
        "codec",
        "gone",
        "lost",
        "store",
    )

    def __init__(
        self,
        store: RunStore,
        codec: SagaCodec,
        record: RunRecord,
        claim: Claim | None = None,
        children: ChildRuns | None = None,
    ) -> None:
        self.store = store
        self._children = children
        self._kids: dict[str, list[str]] = {}  # step -> ids of its child runs, in order
        self.codec = codec
        self.claim = claim
        self._record = record
        self._steps: dict[str, StepRecord] = dict(record.steps)
        self._events: list[bytes] = []
        self._final_event: Event | None = None
        self._seq = record.seq  # a recovered run's writes go on from the record's
        self._nonce = os.urandom(8).hex()
        self._begun: set[str] = set()
        # Steps that began an attempt in this process (a step marked as starting that is
        # not among them never did).
        self.lost = False
        """Another process took the run over: nothing more is written or compensated."""
        self.gone = False
        """The run's record vanished from the store: nothing more is written (the run is
        still unwound here, since nobody else owns it)."""

    @classmethod
    def new(
        cls,
        store: RunStore,
        codec: SagaCodec,
        saga: str,
        saga_version: str,
        run_id: str,
        values: Mapping[str, Any],
        idempotency_key: str | None,
        window: float,
        children: ChildRuns | None = None,
        parent: str | None = None,
    ) -> Journal:
        """The journal of a run about to start (nothing written yet)."""
        if codec.problems:
            raise NotRecordable(
                f"saga {saga} cannot run durably:\n"
                + "\n".join(f"  - {problem}" for problem in codec.problems),
                run_id,
            )
        encoded = codec.encode_inputs(values, saga)
        record = RunRecord(
            saga=saga,
            saga_version=saga_version,
            run_id=run_id,
            status="running",
            inputs=encoded,
            fingerprint=codec.fingerprint(encoded),
            idempotency_key=idempotency_key,
            owner=store.owner,
            parent=parent,
        )
        claim = (
            Claim(saga=saga, key=idempotency_key, window=window)
            if idempotency_key is not None
            else None
        )
        return cls(store, codec, record, claim, children)

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def record(self) -> RunRecord:
        """The record as this process knows it (what the last write wrote, and since)."""
        return msgspec.structs.replace(self._record, steps=dict(self._steps), seq=self._seq)

    # -- hook ----------------------------------------------------------------------------

    def hook(self, event: Event) -> None:
        """A sync hook of the run: events are written with the next transition."""
        if event is not self._final_event:  # already written, by finish()
            self._events.append(encode_event(event))

    # -- transitions ---------------------------------------------------------------------

    async def open(self, roots: Iterable[str]) -> str | None:
        """Create the record, root steps starting; return the id of the run that holds
        the idempotency key instead, if another does (then nothing was written)."""
        now = time.time()
        for name in roots:
            self._steps[name] = StepRecord(status="running", started_at=now)
        return await self.store.create(self._write(self._record.status), self.claim)

    def begun(self, name: str) -> None:
        """An attempt of ``name`` is about to run its body, in this process."""
        self._begun.add(name)

    async def retrying(self, name: str, attempt: int) -> None:
        """Attempt ``attempt`` (> 1) of ``name`` is about to start."""
        self._steps[name] = msgspec.structs.replace(
            self._steps[name], status="running", attempt=attempt, started_at=time.time()
        )
        await self._put()

    async def succeeded(
        self, name: str, attempt: int, result: Any, released: Iterable[str], *, last: bool
    ) -> None:
        """``name`` completed with ``result``; ``released`` steps are about to start.

        ``last``: nothing else is running or left to run, so the finishing write (right
        after, with no effect in between) carries this one too. A result that cannot be
        kept (``NotRecordable``, ``RecordTooLarge``) is noted as such, then raised.
        """
        try:
            await self._succeeded(name, attempt, result, released, last=last)
        except (NotRecordable, RecordTooLarge) as exc:
            # The step ran, but its result cannot be kept: the record says so (undoing it
            # after a crash would need that result: a human), and the next writes go
            # through. A store that could not be reached keeps the result for them.
            self.unrecorded(name, repr(exc))
            raise

    async def _succeeded(
        self, name: str, attempt: int, result: Any, released: Iterable[str], *, last: bool
    ) -> None:
        blob = self.codec.encode_result(name, result, self.run_id)
        now = time.time()
        previous = self._steps.get(name)
        self._steps[name] = StepRecord(
            status="succeeded",
            attempt=attempt,
            result=blob,
            started_at=previous.started_at if previous is not None else None,
            ended_at=now,
            children=tuple(self._kids.pop(name, ())),
        )
        starting = False
        for child in released:
            self._steps[child] = StepRecord(status="running", started_at=now)
            starting = True
        if last and not starting:
            self._encoded()  # not written yet, but RecordTooLarge now, not at the final write
            return
        await self._put()

    async def skipped(self, name: str, released: Iterable[str]) -> None:
        """``name``'s condition was false; ``released`` steps are about to start."""
        now = time.time()
        self._steps[name] = StepRecord(status="skipped", ended_at=now)
        starting = False
        for child in released:
            self._steps[child] = StepRecord(status="running", started_at=now)
            starting = True
        if starting:
            await self._put()

    def ended(self, name: str, status: str, error: str | None, attempt: int) -> None:
        """``name`` failed or was cancelled, or its result could not be recorded (written
        with the next transition; no result is kept)."""
        self._steps[name] = msgspec.structs.replace(
            self._steps.get(name) or StepRecord(status="running"),
            status=status,
            attempt=attempt,
            result=None,
            error=error,
            ended_at=time.time(),
        )

    def settle(self) -> None:
        """The run unwinds: a step still marked as starting that never began an attempt
        (released, then the run failed or was cancelled) is marked so; one that began and
        did not end (interrupted by a KeyboardInterrupt, say) stays in doubt."""
        now = time.time()
        for name, step in self._steps.items():
            if step.status == "running" and name not in self._begun:
                self._steps[name] = msgspec.structs.replace(
                    step, status="cancelled", error="never started", ended_at=now
                )

    def unrecorded(self, name: str, error: str) -> None:
        """``name`` completed but its result cannot be recorded (``NotRecordable``,
        ``RecordTooLarge``): kept as succeeded without a result, which a recovery cannot
        undo (its compensation would lack the result: it fails, and a human looks)."""
        self._steps[name] = msgspec.structs.replace(
            self._steps.get(name) or StepRecord(status="succeeded"),
            status="succeeded",
            result=None,
            error=f"result not recorded: {error}",
            ended_at=time.time(),
        )

    async def failing(self, step: str | None, error: str) -> None:
        """The run unwinds: ``step`` failed for good (``None``: the caller cancelled)."""
        self._record = msgspec.structs.replace(
            self._record, status="compensating", failed_step=step, error=error
        )
        await self._put()

    async def _compensation(
        self, name: str, status: str, attempt: int, error: str | None = None
    ) -> None:
        """Undoing ``name``: attempt ``attempt`` is starting (``running``) or ended."""
        self._steps[name] = msgspec.structs.replace(
            self._steps[name],
            compensation=status,
            compensation_attempt=attempt,
            compensation_error=error,
        )
        await self._put()

    async def finish(self, status: RunStatus, event: Event | None = None) -> None:
        """The run's final status (succeeded, failed, cancelled, undone...), with the
        ``event`` that says so, written before anyone is told (then it is delivered)."""
        self._record = msgspec.structs.replace(self._record, status=status)
        if event is not None:
            self._final_event = event
            self._events.append(encode_event(event))
        await self._put(final=True)

    async def parked(self, waits: Iterable[WaitInfo]) -> None:
        """The run parks: ``waits`` are what its steps wait for (written; the store takes
        it out of the running runs)."""
        waits = tuple(waits)
        for info in waits:
            previous = self._steps.get(info.step) or StepRecord(status="running")
            if previous.status != "waiting":  # the first wait of a step stands for it
                self._steps[info.step] = msgspec.structs.replace(
                    previous, status="waiting", wait=info
                )
        self._record = msgspec.structs.replace(self._record, status="waiting", waiting=waits)
        if self.gone:
            return
        if self._record.parent is None:
            # The events it waits for name it before it parks: a delivery that comes
            # meanwhile finds the run (and takes it once parked, or leaves its payload
            # for the check that follows the park: asaga.runs._parking.settle).
            for info in waits:
                if info.kind == "event" and info.key is not None:
                    await self.store.bind(self._record.saga, info.key, self.run_id, info.until)
        until = min((w.until for w in waits if w.until is not None), default=None)
        await self.store.park(self._write("waiting"), until)

    async def take(self, status: RunStatus = "running", waiting: tuple[WaitInfo, ...] = ()) -> bool:
        """Take this parked run (as it was read) to drive it here, with what was marked
        since (:meth:`mark`) and the waits still ``waiting``; ``False`` if another process
        took it first."""
        seen = self._record.seq
        self._record = msgspec.structs.replace(
            self._record, status=status, owner=self.store.owner, waiting=waiting
        )
        return await self.store.take_parked(self._write(status), seen)

    async def resume(self, roots: Iterable[str], attempts: Mapping[str, int]) -> None:
        """A recovered run goes on: ``roots`` (never started, or in doubt and safe to run
        again) are about to start, at ``attempts`` (default 1)."""
        now = time.time()
        for name in roots:
            attempt = attempts.get(name, 1)
            self._steps[name] = StepRecord(status="running", attempt=attempt, started_at=now)
        await self._put()

    # -- the observer's best-effort end of a run ------------------------------------------

    async def unwinding(self, step: str | None, error: str) -> None:
        """The run unwinds (see :meth:`failing`); best effort: the unwind goes on."""
        self.settle()
        try:
            await self.failing(step, error)
        except RunTakenOver:
            self.lost = True
        except RunStoreError as exc:
            _logger.warning("run_not_recorded", run_id=self.run_id, error=repr(exc))

    async def compensation(
        self, name: str, status: str, attempt: int, error: str | None = None
    ) -> bool:
        """Write down where undoing ``name`` stands; ``False`` if the run was taken over
        by another process.

        Best effort otherwise: a store that cannot be reached does not stop an unwind
        (compensations are at-least-once: a recovery would run again those whose end was
        not recorded), the failure is logged and the final write carries the state.
        """
        if self.lost:
            return False
        try:
            await self._compensation(name, status, attempt, error)
        except RunTakenOver:
            self.lost = True
            return False
        except RunStoreError as exc:
            _logger.warning(
                "compensation_not_recorded",
                run_id=self.run_id,
                step=name,
                status=status,
                error=repr(exc),
            )
        return True

    async def run_succeeded(self, event: Event) -> None:
        """The run succeeded: written with ``event`` before anyone is told."""
        await self.finish("succeeded", event)

    async def run_ended(self, status: str, *, release_key: bool = False) -> None:
        """Write down how the run ended, shielded; best effort (the outcome stands)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.finish(status)  # type: ignore[arg-type]  # a RunStatus
            except RunStoreError as exc:
                _logger.warning("run_not_recorded", run_id=self.run_id, error=repr(exc))
            if release_key and self.claim is not None:
                # A cancelled run did nothing that stays: a retry with its key runs again.
                await self.store.release_key(self.claim, self.run_id)

    async def landed(self) -> bool:
        """Whether the final write that seemed to fail was applied after all (its reply
        was lost): the record then says the run succeeded, and so must the caller be
        told."""
        try:
            with anyio.CancelScope(shield=True):
                record = await self.store.load(self.run_id)
        except RunStoreError:
            return False
        return record.status == "succeeded" and record.owner == self.store.owner

    # -- child runs -----------------------------------------------------------------------

    async def run_child(
        self,
        spec: Any,
        inputs: Mapping[str, Any],
        *,
        key: str,
        parent: RunContext,
        prefix: str,
    ) -> tuple[Any, Undoable]:
        """Run a sub-saga as a child run, recorded under ``<run id>/<key>``."""
        if self._children is None:
            raise NotRecordable(
                f"run {self.run_id} cannot record child runs here", self.run_id
            )  # pragma: no cover - every journal that runs steps is given its children
        child_id = f"{self.run_id}/{key}"
        step = key.split("/", 1)[0]
        self._kids.setdefault(step, []).append(child_id)
        return await self._children.run(self, spec, inputs, child_id, parent, prefix)

    def undo_of(self, step: str, values: Mapping[str, Any]) -> Undoable | None:
        """What undoes the children of ``step`` from their records."""
        if self._children is None:
            return None
        return self._children.undo(self, step, values)

    def mark(self, name: str, step: StepRecord) -> None:
        """Replace what the record says of ``name`` (written with the next transition)."""
        self._steps[name] = step

    def set_failure(self, step: str | None, error: str) -> None:
        """Record the failure that makes the run unwind (written with the next transition)."""
        self._record = msgspec.structs.replace(self._record, failed_step=step, error=error)

    def set_status(self, status: RunStatus) -> None:
        """Change the status in the record without writing (the next write carries it)."""
        self._record = msgspec.structs.replace(self._record, status=status)

    # -- writing -------------------------------------------------------------------------

    async def _put(self, *, final: bool = False) -> None:
        if self.gone:
            return  # nothing to write to: the run unwinds on what this process holds
        try:
            await self.store.write(self._write(self._record.status, final=final))
        except RunRecordLost as exc:
            self.gone = True
            _logger.warning("run_record_lost", run_id=self.run_id, error=str(exc))
            raise

    def _encoded(self) -> bytes:
        """The record as it stands, encoded; ``RecordTooLarge`` past the store's limit."""
        record = msgspec.structs.replace(
            self._record, steps=dict(self._steps), updated_at=time.time(), seq=self._seq
        )
        data = encode_record(record)
        limit = self.store.max_record_bytes
        if len(data) > limit:
            raise RecordTooLarge(
                f"the record of run {self.run_id} ({record.saga}) would be {len(data)} bytes, "
                f"over the store's limit of {limit}: return less from the steps (keep large "
                "data elsewhere and return a reference to it), or raise max_record_bytes",
                self.run_id,
            )
        return data

    def _write(self, status: RunStatus, *, final: bool = False) -> Write:
        self._seq += 1
        data = self._encoded()
        events, self._events = tuple(self._events), []
        return Write(
            run_id=self.run_id,
            record=data,
            status=status,
            events=events,
            final=final,
            seq=self._seq,
            nonce=self._nonce,
        )
