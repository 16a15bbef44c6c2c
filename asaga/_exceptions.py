"""The exceptions asaga raises, all defined here; each public module re-exports its own.

::

    AsagaError
    ├── SagaDefinitionError      a saga class is broken; raised when the class is created
    ├── InputValidationError     run() got bad, missing or unknown inputs; no step ran
    ├── UndoFailed               undoing a completed run left some compensations failed
    ├── SagaFailed               a step failed for good; completed steps were compensated
    │   └── CompensationFailed   ... and at least one compensation failed too
    ├── MapFailed                an element of a fail_fast mapped step failed; the
    │                            completed elements were undone (undo_failures: not all)
    ├── MapAbandoned             (internal) a mapped step stopped starting elements because
    │                            another step failed the run
    ├── IdempotencyKeyReused     an idempotency key came back with different inputs
    ├── LeaseError               asaga.locks: a lease on ``keys`` went wrong
    │   ├── LeaseTimeout         not acquired within ``wait`` seconds (a TimeoutError too)
    │   ├── LeaseLost            expired or taken over while held; the work was cancelled
    │   │   └── StaleWrite       a fenced write was refused: a newer lease exists
    │   └── LeaseUnavailable     the lock backend (Redis) cannot be reached
    ├── RunStoreError            a durable run could not be recorded or read back
    │   ├── NotRecordable        a value (an input, a result) cannot be encoded
    │   ├── RecordTooLarge       a run's record outgrew the store's size limit
    │   ├── CorruptRecord        a stored record does not decode (tampered, foreign, newer)
    │   ├── RunNotFound          no record of that run in the store
    │   ├── RunExists            a run's creation found its id recorded already
    │   ├── RunTakenOver         another process recovered the run; this one must stop
    │   ├── RunRecordLost        the run's record vanished (Redis lost writes); unwound here
    │   └── StoreUnavailable     the store cannot be reached
    ├── RunCancelled             asaga.workers: a run on workers was cancelled through its
    │                            handle; what it had done was undone
    ├── JobFailed                asaga.workers: a worker could not run the job at all (the
    │                            saga is not served there, the job was lost...)
    ├── RemoteStepFailed         asaga.workers: a step on workers (@step(queue=...)) failed
    │                            there; names what it raised
    ├── QueueNotOpen             a step's queue is not open in the process running the saga
    ├── RunParked                a durable run stopped to wait (an event, a timer, a halt):
    │                            its record says what for; it goes on when that comes
    ├── NotParked                resume() or cancel() of a run that is not parked so
    ├── EventRefused             a delivered event was refused; the run (if any) still waits
    │   ├── DuplicateEvent       an event for that key was delivered already
    │   └── InvalidEvent         its payload does not fit the waiting step's type
    ├── MalformedBody            asaga.integrations.inputs: a request body that is not a
    │                            JSON object (a ValueError too)
    └── ClientDisconnected       asaga.integrations.fastapi: the client went away before
                                 the response; the work was cancelled

    RecordedError                not an AsagaError: a failure a durable run's record
                                 remembers (only its repr), the cause of a replayed failure
    Halt                         not an AsagaError: raised by a step to halt its run
                                 without unwinding (a durable run parks; resume() re-runs
                                 that step)
    Parking                      (internal) a waiting step parks its durable run

Every exception carries structured fields (``saga``, ``run_id``, ``step``, ``keys``...) so
that handlers can map them to responses without parsing messages. Two records travel with
them: :class:`FieldError` (one bad input of an :class:`InputValidationError`) and
:class:`ElementFailure` (one failed element, in a :class:`MapFailed`'s ``undo_failures``
and in a mapped step's result).

Errors without a module named above are exported by ``asaga``; each class reports the
public module that exports it as its ``__module__`` (``asaga.locks.LeaseLost``).
"""

from collections.abc import Sequence

import msgspec

__all__ = [
    "AsagaError",
    "ClientDisconnected",
    "CompensationFailed",
    "CorruptRecord",
    "DuplicateEvent",
    "ElementFailure",
    "EventRefused",
    "FieldError",
    "Halt",
    "IdempotencyKeyReused",
    "InputValidationError",
    "InvalidEvent",
    "JobFailed",
    "LeaseError",
    "LeaseLost",
    "LeaseTimeout",
    "LeaseUnavailable",
    "MalformedBody",
    "MapAbandoned",
    "MapFailed",
    "NotParked",
    "NotRecordable",
    "Parking",
    "QueueNotOpen",
    "RecordTooLarge",
    "RecordedError",
    "RemoteStepFailed",
    "RunCancelled",
    "RunExists",
    "RunNotFound",
    "RunParked",
    "RunRecordLost",
    "RunStoreError",
    "RunTakenOver",
    "SagaDefinitionError",
    "SagaFailed",
    "StaleWrite",
    "StoreUnavailable",
    "UndoFailed",
    "WaitInfo",
    "needs_repair",
]


class AsagaError(Exception):
    """Base class of every error asaga raises on its own account."""


class SagaDefinitionError(AsagaError, TypeError):
    """A saga class is malformed.

    Raised when the class is created (never in the middle of a run), listing every
    problem found at once in :attr:`problems`, each naming the step, the parameter and the
    fix.
    """

    saga: str
    problems: tuple[str, ...]

    def __init__(self, saga: str, problems: Sequence[str]) -> None:
        self.saga = saga
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"saga {saga} has {count} {noun}:\n{lines}")


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One bad, missing or unknown input of a run."""

    field: str
    """The input's name."""
    message: str
    """What is wrong with it."""


class ElementFailure(msgspec.Struct, frozen=True, kw_only=True):
    """One element of a mapped step that failed (``collect`` mode), or whose undo failed
    (in :attr:`MapFailed.undo_failures`)."""

    index: int
    """The element's position in the collection."""
    error: BaseException
    """What it raised: for a sub-saga, its ``SagaFailed`` (or ``InputValidationError`` if
    the element's inputs were bad); ``TypeError`` for an element of the wrong shape."""


_LISTED = 20
"""Fields an InputValidationError's message lists (all are in ``errors``)."""

_CLIP = 200
"""Characters of a field's name or message that the message repeats."""


def _clipped(text: str) -> str:
    return text if len(text) <= _CLIP else f"{text[:_CLIP]}... ({len(text)} characters)"


class InputValidationError(AsagaError, ValueError):
    """The inputs given to ``run()`` are invalid; no step has started.

    :attr:`errors` lists every bad, missing or unknown field.
    """

    saga: str
    errors: tuple[FieldError, ...]

    def __init__(self, saga: str, errors: Sequence[FieldError]) -> None:
        self.saga = saga
        self.errors = tuple(errors)
        # The message is bounded (it is logged): the first fields, each clipped; every
        # field stays in :attr:`errors`.
        shown = [f"  - {_clipped(e.field)}: {_clipped(e.message)}" for e in self.errors[:_LISTED]]
        if len(self.errors) > _LISTED:
            shown.append(f"  ... and {len(self.errors) - _LISTED} more")
        lines = "\n".join(shown)
        super().__init__(f"invalid inputs for saga {saga}:\n{lines}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the offending fields, in the order reported."""
        return tuple(e.field for e in self.errors)


class SagaFailed(AsagaError):
    """A step failed for good and the saga was unwound.

    ``__cause__`` is the failing step's exception. :attr:`compensated` names the steps whose
    compensations completed, in completion order. :attr:`in_doubt` names the steps cut off
    while running (``on_failure = "cancel"``) that no compensation covered: whether their
    effect landed is unknown, and a human must check.
    """

    saga: str
    run_id: str
    step: str
    compensated: tuple[str, ...]
    in_doubt: tuple[str, ...]

    def __init__(
        self,
        saga: str,
        run_id: str,
        step: str,
        compensated: Sequence[str],
        message: str | None = None,
        *,
        in_doubt: Sequence[str] = (),
    ) -> None:
        self.saga = saga
        self.run_id = run_id
        self.step = step
        self.compensated = tuple(compensated)
        self.in_doubt = tuple(in_doubt)
        doubt = f"; in doubt: {list(self.in_doubt)}" if self.in_doubt else ""
        super().__init__(
            (
                message
                or f"saga {saga} (run {run_id}) failed at step {step!r}; "
                f"compensated: {list(self.compensated)}"
            )
            + doubt
        )


class CompensationFailed(SagaFailed):
    """A step failed and, while unwinding, at least one compensation failed as well.

    :attr:`errors` is an :class:`ExceptionGroup` of every compensation failure; the steps
    named in :attr:`failed_compensations` need a human. ``__cause__`` is still the step's
    exception.
    """

    errors: ExceptionGroup[Exception]
    failed_compensations: tuple[str, ...]

    def __init__(
        self,
        saga: str,
        run_id: str,
        step: str,
        compensated: Sequence[str],
        failed_compensations: Sequence[str],
        errors: ExceptionGroup[Exception],
        *,
        in_doubt: Sequence[str] = (),
    ) -> None:
        self.errors = errors
        self.failed_compensations = tuple(failed_compensations)
        super().__init__(
            saga,
            run_id,
            step,
            compensated,
            f"saga {saga} (run {run_id}) failed at step {step!r}, and compensating "
            f"{list(self.failed_compensations)} failed too (needs manual repair); "
            f"compensated: {list(compensated)}",
            in_doubt=in_doubt,
        )


class UndoFailed(AsagaError):
    """Undoing a run that had completed (a sub-saga whose parent failed later) left
    compensations that failed: :attr:`failed_compensations` need a human.

    :attr:`errors` is an :class:`ExceptionGroup` of every compensation failure.
    """

    saga: str
    run_id: str
    compensated: tuple[str, ...]
    failed_compensations: tuple[str, ...]
    errors: ExceptionGroup[Exception]

    def __init__(
        self,
        saga: str,
        run_id: str,
        compensated: Sequence[str],
        failed_compensations: Sequence[str],
        errors: ExceptionGroup[Exception],
    ) -> None:
        self.saga = saga
        self.run_id = run_id
        self.compensated = tuple(compensated)
        self.failed_compensations = tuple(failed_compensations)
        self.errors = errors
        super().__init__(
            f"undoing saga {saga} (run {run_id}) failed for {list(self.failed_compensations)}; "
            f"compensated: {list(self.compensated)}"
        )


class MapFailed(AsagaError):
    """A ``fail_fast`` mapped step failed: element :attr:`index` (the lowest index that
    failed) raised the exception in ``__cause__``.

    The completed elements were undone, in reverse index order, before this was raised:
    :attr:`undone` lists their indexes; :attr:`undo_failures` the undos that failed (they
    need a human, and make the run raise ``CompensationFailed``). :attr:`saga` and
    :attr:`run_id` name the run the mapped step :attr:`step` belongs to.
    """

    step: str
    index: int
    undone: tuple[int, ...]
    undo_failures: tuple[ElementFailure, ...]
    saga: str | None
    run_id: str | None

    def __init__(
        self,
        step: str,
        index: int,
        undone: Sequence[int],
        undo_failures: Sequence[ElementFailure],
        *,
        saga: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.step = step
        self.index = index
        self.undone = tuple(undone)
        self.undo_failures = tuple(undo_failures)
        self.saga = saga
        self.run_id = run_id
        extra = ""
        if undo_failures:
            extra = f"; undoing elements {[f.index for f in undo_failures]} failed"
        super().__init__(
            f"element {index} of mapped step {step!r} failed; undid elements "
            f"{list(self.undone)}{extra}"
        )


class MapAbandoned(AsagaError):
    """A mapped step stopped starting elements because another step failed the run.

    Internal: the run fails for the other step's reason. Elements :attr:`started` of
    :attr:`size` had been started; the completed ones were undone, but for
    :attr:`undo_failures`.
    """

    step: str
    started: int
    size: int
    undo_failures: tuple[ElementFailure, ...]
    saga: str | None
    run_id: str | None

    def __init__(
        self,
        step: str,
        started: int,
        size: int,
        undo_failures: Sequence[ElementFailure] = (),
        *,
        saga: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.step = step
        self.started = started
        self.size = size
        self.undo_failures = tuple(undo_failures)
        self.saga = saga
        self.run_id = run_id
        failed = [f.index for f in self.undo_failures]
        super().__init__(
            f"mapped step {step!r} stopped at element {started} of {size}: another step "
            "failed the run" + (f"; undoing {failed} failed" if failed else "")
        )


class IdempotencyKeyReused(AsagaError):
    """An idempotency key was used again for a different request (other inputs).

    A key names one operation: a retry must send the same inputs. Use a new key for a new
    operation.
    """

    key: str

    def __init__(self, key: str, detail: str = "a different request") -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used for {detail}; "
            "use a new key for a new request"
        )


class LeaseError(AsagaError):
    """Base class of lease errors; ``keys`` names the keys concerned."""

    keys: tuple[str, ...]

    def __init__(self, message: str, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        super().__init__(message)


class LeaseTimeout(LeaseError, TimeoutError):
    """The lease could not be acquired within ``wait`` seconds."""


class LeaseLost(LeaseError):
    """The lease expired or was taken over while held; the holder's work was cancelled."""


class LeaseUnavailable(LeaseError):
    """The lock backend cannot be reached (for example, Redis is down)."""


class StaleWrite(LeaseLost):
    """A fenced write was rejected: a newer lease on the key exists.

    :attr:`token` is the fencing token the write was made under (``None`` if not known).
    """

    token: int | None

    def __init__(self, message: str, keys: Sequence[str], *, token: int | None = None) -> None:
        self.token = token
        super().__init__(message, keys)


class RecordedError(Exception):
    """An exception as a durable run's record remembers it: only its ``repr``.

    The ``__cause__`` of a :class:`SagaFailed` replayed from a record (a duplicate call
    with the same idempotency key, a recovered run): the original exception object lived
    in another call, maybe another process.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)


class RunStoreError(AsagaError):
    """A durable run could not be recorded in its store, or read back from it."""

    run_id: str | None

    def __init__(self, message: str, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message)


class NotRecordable(RunStoreError, TypeError):
    """A value a durable run must record (an input, a step's result) cannot be encoded.

    Raised before any step runs for inputs and for results whose annotation msgspec
    cannot encode; at the step's boundary for a result whose value it cannot encode.
    """


class RecordTooLarge(RunStoreError):
    """A run's record grew past the store's ``max_record_bytes``."""


class CorruptRecord(RunStoreError):
    """A stored record does not decode into asaga's record types: tampered with, written
    by something else, or by a newer asaga whose schema this one does not know."""


class RunNotFound(RunStoreError, LookupError):
    """The store has no record of the run (never recorded, or expired)."""


class RunExists(RunStoreError):
    """A run's creation found its run id recorded already, by another creation (nothing
    was written). A worker given a run's job again takes it as "the run exists", and
    reads the record then rather than before every creation."""


class RunTakenOver(RunStoreError):
    """Another process took the run over (its owner's lease had expired): this process
    stops it without compensating; the new owner finishes or compensates it."""


class RunRecordLost(RunStoreError):
    """The run's record is gone from the store while this process was running it: Redis
    lost writes (restarted without persistence, rolled back to a snapshot, or failed over
    to a replica that lacked them). Nobody else owns the run, so this process unwinds it
    itself (compensating its completed steps, writing nothing more); the run's
    ``SagaFailed`` has this error as its ``__cause__``."""


class StoreUnavailable(RunStoreError):
    """The run store cannot be reached (Redis down or too slow)."""


class RunCancelled(AsagaError):
    """A run started on workers was cancelled through its handle (``handle.cancel()``)
    before it finished; what it had done was compensated (``compensated``), or it never
    started."""

    saga: str
    run_id: str
    compensated: tuple[str, ...]

    def __init__(self, saga: str, run_id: str, compensated: Sequence[str] = ()) -> None:
        self.saga = saga
        self.run_id = run_id
        self.compensated = tuple(compensated)
        undone = f"; compensated: {list(self.compensated)}" if self.compensated else ""
        super().__init__(f"run {run_id} of saga {saga} was cancelled{undone}")


class JobFailed(AsagaError):
    """A worker could not run a job at all: the saga is not served by the workers of that
    queue, or the job failed outside the saga (``error`` is the worker's report). A saga
    that ran and failed raises :class:`SagaFailed` instead."""

    saga: str
    run_id: str
    error: str

    def __init__(self, saga: str, run_id: str, error: str) -> None:
        self.saga = saga
        self.run_id = run_id
        self.error = error
        super().__init__(f"the job of run {run_id} (saga {saga}) failed on its worker: {error}")


class RemoteStepFailed(AsagaError):
    """A step (or compensation) on workers (``@step(queue=...)``) failed on its worker.

    ``error`` is the ``repr`` of what the step raised there, or why no worker ran it (no
    worker serves the saga, the worker was lost). ``remote_types`` are the qualified names
    of the raised exception's classes, most derived first: a ``Retry(retry_on=...)`` of
    one of them retries the step as it would a local failure.

    ``in_doubt`` is true when the step may have taken effect (its worker was lost
    mid-step; it ended but its result could not come back): such an attempt is never
    retried, and the step is in doubt, as a local step cut off mid-flight (its
    compensation runs if it is declared ``in_doubt=True``).
    """

    step: str
    error: str
    remote_types: tuple[str, ...]
    in_doubt: bool

    def __init__(
        self,
        step: str,
        error: str,
        remote_types: tuple[str, ...] = (),
        *,
        in_doubt: bool = False,
    ) -> None:
        self.step = step
        self.error = error
        self.remote_types = remote_types
        self.in_doubt = in_doubt
        doubt = " (in doubt: it may have taken effect)" if in_doubt else ""
        super().__init__(f"step {step!r} failed on its worker: {error}{doubt}")


class QueueNotOpen(AsagaError, LookupError):
    """A saga with steps on workers runs where one of their queues is not open."""

    queue: str
    step: str

    def __init__(self, queue: str, step: str) -> None:
        self.queue = queue
        self.step = step
        super().__init__(
            f"step {step!r} runs on the workers of queue {queue!r}, which is not open in "
            f"this process: run the saga inside `async with SaqQueue.from_url(url, "
            f"name={queue!r})` (asaga.workers), or in a worker that serves it"
        )


class MalformedBody(AsagaError, ValueError):
    """A request body that is not a JSON object (answered 400 by the web integrations)."""

    reason: str

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ClientDisconnected(AsagaError):
    """The client closed the connection before the response; the work was cancelled.

    Raised by :func:`asaga.integrations.fastapi.run_until_disconnect` and
    :func:`~asaga.integrations.fastapi.idempotent` once the cancelled work has finished
    unwinding. :func:`~asaga.integrations.fastapi.install_error_handlers` answers it with a
    499 response, which the server drops (there is nobody to send it to).
    """

    def __init__(self) -> None:
        super().__init__("the client disconnected before the response; the work was cancelled")


class WaitInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What one step of a parked run waits for."""

    step: str
    """The waiting step (for a wait inside a composed sub-saga, the composed step: see
    ``runs`` and ``run_step``)."""
    kind: str
    """``"event"`` (:func:`~asaga.wait_for`), ``"timer"`` (:func:`~asaga.sleep_for`,
    :func:`~asaga.sleep_until`) or ``"halt"`` (the step raised :class:`Halt`)."""
    key: str | None = None
    """The event's correlation key (events only)."""
    until: float | None = None
    """Wall-clock time (epoch seconds) the wait ends: an event's deadline (then the step
    fails with a ``TimeoutError``), a timer's wake-up; ``None``: no deadline."""
    reason: str | None = None
    """Why a halted step halted (the :class:`Halt`'s message)."""
    runs: tuple[str, ...] = ()
    """For a wait inside a composed sub-saga (``step`` is then the composed step): the
    child runs down to the one whose step waits, outermost first."""
    run_step: str | None = None
    """For a wait inside a composed sub-saga: the waiting step of the innermost run."""


class Parking(Exception):
    """Raised by a waiting step of a durable run (internal): the run stops starting steps
    that depend on it, lets the others finish, and parks."""

    def __init__(self, info: WaitInfo) -> None:
        self.info = info
        super().__init__(f"step {info.step!r} waits ({info.kind})")


class Halt(Exception):
    """Raise it in a step to halt the run without unwinding: a durable run parks (its
    record says ``waiting``, the step ``halted``), and :meth:`Saga.resume` runs it on from
    that step, which runs again. Steps in other branches finish first. A run that is not
    durable cannot be resumed: there the step fails with this exception."""

    reason: str

    def __init__(self, reason: str = "halted") -> None:
        self.reason = reason
        super().__init__(reason)


class RunParked(AsagaError):
    """A durable run stopped to wait: for an event (:func:`~asaga.wait_for`), a timer, or
    because a step halted it. Nothing was undone; its record says ``waiting`` and what for
    (``waits``). It goes on in whatever process delivers the event
    (:meth:`Saga.deliver`), resumes it (:meth:`Saga.resume`), or finds its timer due or
    its deadline passed (:func:`asaga.runs.recover`)."""

    saga: str
    run_id: str
    waits: tuple[WaitInfo, ...]

    def __init__(self, saga: str, run_id: str, waits: Sequence[WaitInfo]) -> None:
        self.saga = saga
        self.run_id = run_id
        self.waits = tuple(waits)
        what = ", ".join(f"{w.step} ({w.kind}{': ' + w.key if w.key else ''})" for w in self.waits)
        super().__init__(f"run {run_id} of saga {saga} is parked, waiting: {what}")


class NotParked(AsagaError):
    """:meth:`Saga.resume` or :meth:`Saga.cancel` of a run that is not parked (it runs,
    finished, or waits for something else than asked)."""

    run_id: str
    status: str

    def __init__(self, run_id: str, status: str, message: str | None = None) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(message or f"run {run_id} is not parked (its status is {status})")


class EventRefused(AsagaError):
    """An event delivered with :meth:`Saga.deliver` was refused: nothing was kept, and a
    run that waits for it still waits. ``reason`` says why."""

    key: str
    reason: str
    run_id: str | None

    def __init__(self, key: str, reason: str, run_id: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.run_id = run_id
        super().__init__(f"event {key!r} refused: {reason}")


class DuplicateEvent(EventRefused):
    """An event for that key was delivered already (kept for a run, or consumed by one)."""


class InvalidEvent(EventRefused):
    """The payload does not fit the type the waiting step declares. The run keeps
    waiting, until more bad payloads came than the step tolerates: then the step fails
    and the run unwinds (``run_failed``)."""

    errors: str
    run_failed: bool

    def __init__(
        self, key: str, errors: str, run_id: str | None = None, *, run_failed: bool = False
    ) -> None:
        self.errors = errors
        self.run_failed = run_failed
        after = "; the run failed: too many bad payloads" if run_failed else ""
        super().__init__(key, f"invalid payload: {errors}{after}", run_id)


def needs_repair(exc: BaseException) -> bool:
    """Whether ``exc`` reports work that could not be undone (a human must look)."""
    return isinstance(exc, CompensationFailed | UndoFailed) or (
        isinstance(exc, MapFailed) and bool(exc.undo_failures)
    )
