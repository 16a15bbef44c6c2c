"""Parked runs: a durable run that waits, and how it goes on.

A durable run whose steps wait (:func:`~asaga.wait_for`, :func:`~asaga.sleep_for`,
:func:`~asaga.sleep_until`, a step that raised :class:`~asaga.Halt`) runs every other
branch it can, then *parks*: its record says ``waiting`` and, for each waiting step, what
it waits for and until when; the store takes it out of the running runs (recovery leaves
it alone) and into the parked ones. ``run()`` raises :class:`~asaga.RunParked`; the
process may exit.

It goes on in whichever process first *takes* it (one atomic check of the record as it
was read: exactly one taker wins, the others are told it went on elsewhere)::

    Saga.deliver(key, payload)   the event's payload is validated (the step's type), kept
                                 in the key's mailbox, and if a parked run waits for the
                                 key, the run is taken with the payload as the step's
                                 result and driven on here
    run parks, payload kept      the parking process finds the payload kept for the key
                                 (delivered before the run waited) and goes on itself
    Saga.resume(run_id)          a halted step runs again, and the run on
    recover()                    a timer that is due completes; an event whose deadline
                                 passed fails its step (TimeoutError): the run unwinds
    Saga.cancel(run_id)          the run unwinds (status cancelled), or with
                                 compensate=False ends as it is (status terminated)

The mailbox of a key (per saga) remembers the run that waits for it, a payload until a
run takes it, and that it was consumed: a second payload is refused (for the store's
idempotency window). Mailbox and record are separate keys (one slot each on a Redis
Cluster); the record's atomic take is what decides, the mailbox only carries the payload
to whoever takes the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import msgspec
import structlog

from .._exceptions import (
    CompensationFailed,
    CorruptRecord,
    DuplicateEvent,
    EventRefused,
    InvalidEvent,
    NotParked,
    RunParked,
    RunStoreError,
    SagaFailed,
    WaitInfo,
)
from .._run import Hooks, SagaResult, SagaSpec, run_values
from .._shielded import shielded
from .._waits import MAILBOX, Wait
from ._codec import codec_of
from ._journal import ChildRunsFor, Journal
from ._memory import default_store
from ._record import RunRecord, RunStore, StepRecord, check_identity
from ._recovery import Recovered, _roots, _unwind, resume_point
from ._replay import failure, recorded_run_values

__all__ = [
    "Delivery",
    "after_parking",
    "cancel_parked",
    "deliver",
    "resume_halted",
    "settle",
    "settle_recovered",
    "wake_due",
]

_logger = structlog.get_logger("asaga")

DeliveryStatus = Literal[
    "kept",
    "delivered",
    "succeeded",
    "waiting",
    "failed",
    "compensation_failed",
    "cancelled",
    "terminated",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What :meth:`Saga.deliver <asaga.Saga.deliver>` (or ``resume``, ``cancel``) did."""

    key: str | None
    """The event's key (``None`` for a resume or a cancel)."""
    status: DeliveryStatus
    """``kept``: no run waits for the key yet, the payload is kept for the one that will;
    ``delivered``: a run waiting for it got it and goes on in its own process;
    otherwise the run went on here and this is where it stands now: ``succeeded``,
    ``waiting`` (parked again: see ``waits``), ``failed``, ``compensation_failed``,
    ``cancelled``, ``terminated``."""
    run_id: str | None = None
    result: SagaResult[Any] | None = None
    """The run's result, when it succeeded here."""
    error: SagaFailed | None = None
    """Why the run failed, when it failed here."""
    waits: tuple[WaitInfo, ...] = ()
    """What the run waits for now, when it parked again."""


@dataclass(frozen=True, slots=True)
class _Target:
    spec: SagaSpec
    step: str
    wait: Wait

    @property
    def saga(self) -> str:
        return self.spec.plan.saga


def _targets(spec: SagaSpec) -> Iterator[_Target]:
    """The event waits of a saga (the steps that :func:`~asaga.wait_for`)."""
    for name, node in spec.plan.nodes.items():
        if isinstance(node.invoke, Wait) and node.invoke.kind == "event":
            yield _Target(spec, name, node.invoke)


def _sagas(spec: SagaSpec, seen: dict[str, SagaSpec] | None = None) -> dict[str, SagaSpec]:
    """A saga and the sagas it composes or maps, by name."""
    seen = seen if seen is not None else {}
    if spec.plan.saga not in seen:
        seen[spec.plan.saga] = spec
        for node in spec.plan.nodes.values():
            for sub in node.invoke.sagas if node.invoke is not None else ():
                _sagas(sub, seen)
    return seen


def _nested_targets(spec: SagaSpec, seen: set[str] | None = None) -> Iterator[_Target]:
    """The event waits of a saga and of the sagas it composes or maps (waiting inside a
    child run, in the process)."""
    seen = seen if seen is not None else set()
    if spec.plan.saga in seen:
        return
    seen.add(spec.plan.saga)
    yield from _targets(spec)
    for node in spec.plan.nodes.values():
        for sub in node.invoke.sagas if node.invoke is not None else ():
            yield from _nested_targets(sub, seen)


def _match(spec: SagaSpec, key: str) -> list[_Target]:
    if not isinstance(key, str) or not key or len(key) > 1000:
        raise EventRefused(str(key)[:100], "an event key is a str of 1 to 1000 characters")
    targets = list(_nested_targets(spec))
    found = [t for t in targets if t.wait.matches(key)]
    if not found:
        keys = sorted({t.wait.template or "" for t in targets})
        raise EventRefused(
            key,
            f"no step of saga {spec.plan.saga} waits for a key like it"
            + (f" (its keys: {', '.join(keys)})" if keys else " (it has no wait_for step)"),
        )
    return found


def _convert(found: Sequence[_Target], key: str, payload: Any) -> tuple[_Target, Any]:
    """The first matching wait whose type the payload fits; InvalidEvent otherwise."""
    error: InvalidEvent | None = None
    for target in found:
        try:
            return target, target.wait.convert(payload, key)
        except InvalidEvent as exc:
            error = error or exc
    assert error is not None
    raise error


# -- delivering an event ----------------------------------------------------------------


async def deliver(
    spec: SagaSpec,
    key: str,
    payload: Any,
    *,
    runs: RunStore | None,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> Delivery:
    """``Saga.deliver``: see the module docstring."""
    found = _match(spec, key)
    # A run waiting in this process (no store) takes it from the in-process mailbox.
    for target in found:
        waiting = MAILBOX.waiting(target.saga, key)
        if waiting is not None:
            try:
                value = waiting.convert(payload, key)
            except InvalidEvent as exc:
                raise MAILBOX.refuse(target.saga, key, exc) from None
            status, run_id = MAILBOX.post(target.saga, key, value)
            return Delivery(key, "delivered" if status == "delivered" else "kept", run_id)
    if runs is None:
        # A durable run of the process's default store (run with an idempotency key and
        # no runs=) that waits for the key: delivered there.
        default = default_store()
        if await default.bound(spec.plan.saga, key) is not None:
            runs = default
    if runs is None:
        target, value = _convert(found, key, payload)
        status, run_id = MAILBOX.post(target.saga, key, value)
        return Delivery(key, "delivered" if status == "delivered" else "kept", run_id)
    return await _deliver_durable(spec, found, key, payload, runs, resources, extra_hooks, kin)


async def _deliver_durable(
    spec: SagaSpec,
    found: Sequence[_Target],
    key: str,
    payload: Any,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> Delivery:
    saga = spec.plan.saga  # a durable run's events are the top-level run's, by its saga
    own = _own(spec, resources)  # before anything is kept: a refused call keeps nothing
    try:
        target, value = _convert(found, key, payload)
    except InvalidEvent as exc:
        run_id, count = await runs.bad_payload(saga, key)
        if run_id is None or count <= found[0].wait.bad_payloads:
            raise InvalidEvent(key, exc.errors, run_id) from None
        failure_ = InvalidEvent(key, exc.errors, run_id, run_failed=True)
        try:
            await _go_on(spec, runs, run_id, own, extra_hooks, kin, failures={key: failure_})
        except NotParked as why:
            raise InvalidEvent(key, exc.errors, run_id) from why
        raise failure_ from None
    blob = codec_of(target.spec).encode_result(target.step, value, "")
    if len(blob) > runs.max_record_bytes // 2:
        raise InvalidEvent(
            key, f"the payload is {len(blob)} bytes encoded, over half the store's record limit"
        )
    state, run_id = await runs.post(saga, key, blob)
    if state == "closed":
        raise EventRefused(
            key,
            f"run {run_id} no longer waits for it (it timed out, was cancelled or failed)",
            run_id,
        )
    if state == "duplicate" and run_id is not None:
        # A payload kept for the key never reached its run (its taker failed: Redis went
        # away): whoever delivers again drives the run on with the kept payload; the same
        # payload delivered again is told how that went, another one is refused.
        retried = await _kept_for(spec, runs, run_id, key, own, extra_hooks, kin)
        if retried is not None and retried[0] == blob:
            return retried[1]
    if state in ("consumed", "duplicate"):
        raise DuplicateEvent(
            key,
            "an event for this key was delivered already"
            + (f" (run {run_id} took it)" if state == "consumed" and run_id else ""),
            run_id,
        )
    if run_id is None:
        return Delivery(key, "kept")
    try:
        return await _go_on(spec, runs, run_id, own, extra_hooks, kin, events={key: blob}, key=key)
    except NotParked as exc:
        # Not taken here. If the run took this payload meanwhile (it parked again, or
        # another delivery drove it), it was delivered; if it runs, it takes it when it
        # parks again; otherwise it no longer waits for it.
        again, _ = await runs.post(saga, key, blob)  # writes nothing: the key holds one
        if again == "consumed" or (again == "duplicate" and exc.status == "running"):
            return Delivery(key, "delivered", run_id)
        await runs.unpost(saga, key, blob)
        raise EventRefused(key, f"run {run_id} no longer waits for it: {exc}", run_id) from None
    except BaseException:
        # Refused before it was taken (it does not fit the step that waits, the record
        # would be too large...): nothing is kept. (Taken, it was consumed already.)
        with anyio.CancelScope(shield=True):
            await runs.unpost(saga, key, blob)
        raise


async def _kept_for(
    spec: SagaSpec,
    runs: RunStore,
    run_id: str,
    key: str,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> tuple[bytes, Delivery] | None:
    """If ``run_id`` is parked waiting for ``key`` while a payload is kept for it, go on
    with that payload: the payload and what became of the run; ``None`` otherwise."""
    try:
        record = await runs.load(run_id)
    except RunStoreError:
        return None
    info = next((i for i in record.waiting if i.key == key), None)
    if record.status != "waiting" or info is None:
        return None
    state, kept = await runs.bind(spec.plan.saga, key, run_id, info.until)
    if state != "payload" or kept is None:
        return None
    try:
        done = await _go_on(
            spec, runs, run_id, resources, extra_hooks, kin, events={key: kept}, key=key
        )
    except NotParked:
        return None
    return kept, done


async def after_parking(
    spec: SagaSpec,
    runs: RunStore,
    parked: RunParked,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> SagaResult[Any]:
    """A run just parked here: see :func:`settle`. Returns the run's result, or raises
    (``RunParked`` again, ``SagaFailed``)."""
    done = await settle(spec, runs, parked, resources, extra_hooks, kin)
    if done.status == "waiting":
        raise RunParked(spec.plan.saga, parked.run_id, done.waits)
    if done.result is not None:
        return done.result
    assert done.error is not None
    raise done.error


async def settle(
    spec: SagaSpec,
    runs: RunStore,
    parked: RunParked,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    key: str | None = None,
) -> Delivery:
    """A run just parked: each event it waits for is bound to it in its key's mailbox; a
    payload kept there (delivered before it waited) makes it go on at once, here."""
    saga = spec.plan.saga
    for _ in range(100):  # bounded: each round consumes at least one kept payload
        events: dict[str, bytes] = {}
        failures: dict[str | WaitInfo, BaseException] = {}
        for info in parked.waits:
            if info.kind != "event" or info.key is None:
                continue
            try:
                state, blob = await runs.bind(saga, info.key, parked.run_id, info.until)
            except RunStoreError as exc:  # bound before it parked: a delivery finds it
                _logger.warning("event_not_checked", key=info.key, error=repr(exc))
                continue
            if state == "taken":
                failures[info.key] = EventRefused(
                    info.key, "another run waits for this key, or took its event"
                )
            elif state == "payload" and blob is not None:
                events[info.key] = blob
        if not events and not failures:
            return Delivery(key, "waiting", parked.run_id, waits=parked.waits)
        try:
            done = await _go_on(
                spec,
                runs,
                parked.run_id,
                resources,
                extra_hooks,
                kin,
                events=events,
                failures=failures,
                key=key,
                settling=False,
            )
        except NotParked:  # another process took it meanwhile (a delivery)
            return Delivery(key, "delivered", parked.run_id)
        if done.status != "waiting":
            return done
        parked = RunParked(saga, parked.run_id, done.waits)
    return Delivery(key, "waiting", parked.run_id, waits=parked.waits)  # pragma: no cover


# -- going on -----------------------------------------------------------------------------


async def _go_on(
    spec: SagaSpec,
    runs: RunStore,
    run_id: str,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    *,
    events: Mapping[str, bytes] | None = None,
    timers: Sequence[WaitInfo] = (),
    failures: Mapping[str | WaitInfo, BaseException] | None = None,
    rerun: Sequence[WaitInfo] = (),
    cancel: bool = False,
    terminate: bool = False,
    key: str | None = None,
    settling: bool = True,
) -> Delivery:
    """Take the parked run ``run_id`` and drive it on here. ``events`` (by key: the
    encoded payload) and due ``timers`` complete the waits they end, ``failures`` (by key
    or wait) fail them and the run unwinds, ``rerun`` (halts) run again; ``cancel``
    unwinds the run, ``terminate`` ends it as it is. Waits inside a composed sub-saga are
    ended in its child run's record, and the composed step runs again (picking its child
    run up). :class:`NotParked` if the run is not parked so (or another taker won)."""
    failures = failures or {}
    record = await runs.load(run_id)
    saga = spec.plan.saga
    if record.saga != saga or record.saga_version != spec.saga_version:
        raise NotParked(
            run_id,
            record.status,
            f"run {run_id} is a run of saga {record.saga} (saga_version "
            f"{record.saga_version}), not of {saga} ({spec.saga_version})",
        )
    if record.status != "waiting":
        raise NotParked(run_id, record.status)

    def waiting_for(what: str | WaitInfo) -> WaitInfo:
        found = [i for i in record.waiting if i == what or (i.key is not None and i.key == what)]
        if not found:
            raise NotParked(run_id, record.status, f"run {run_id} does not wait for {what}")
        return found[0]

    ending: dict[WaitInfo, bytes | None] = {}  # waits that end well (result; None: rerun)
    failing: dict[WaitInfo, BaseException] = {}
    late: list[str] = []
    now = time.time()
    events = dict(events or {})
    for event_key, payload in list(events.items()):
        info = waiting_for(event_key)
        if info.until is not None and info.until <= now:  # too late: the wait timed out
            failing[info] = TimeoutError(f"no event {event_key!r} came before its deadline")
            late.append(event_key)
            del events[event_key]
            continue
        ending[info] = payload
    for info in timers:
        ending[waiting_for(info)] = _NOW
    for info in rerun:
        ending[waiting_for(info)] = None
    for what, error in failures.items():
        failing[waiting_for(what)] = error
    if cancel or terminate:
        failing.update({i: RuntimeError("cancelled while waiting") for i in record.waiting})

    codec = codec_of(spec)
    journal = Journal(runs, codec, record, children=kin(spec, extra_hooks))
    touched = {i.step for i in (*ending, *failing)}
    nested_failing: list[str] = []
    for info, blob in ending.items():
        step = record.steps[info.step]
        if info.runs or blob is None:  # runs again: a halted step, or a composed one
            # (whose child run goes on from its record)
            journal.mark(info.step, _rerun(step, now))
        else:
            if blob is not _NOW:
                _check_result(codec, info, blob, run_id)
            journal.mark(info.step, _ended_step(codec, info.step, step, blob, now))
    for info, error in failing.items():
        step = record.steps[info.step]
        if info.runs:  # unwound through its child run's record (as a step in doubt)
            if info.step not in nested_failing:
                nested_failing.append(info.step)
                journal.mark(info.step, msgspec.structs.replace(step, status="running", wait=None))
        else:
            ended = cancel or terminate
            journal.mark(
                info.step,
                msgspec.structs.replace(
                    step,
                    status="cancelled" if ended else "failed",
                    error="cancelled while waiting" if ended else repr(error),
                    wait=None,
                    ended_at=now,
                ),
            )
    if failing and not (cancel or terminate):
        first, error = next(iter(failing.items()))
        journal.set_failure(first.step, repr(error))
    elif cancel:
        journal.set_failure(None, "cancelled")
    unwinding = bool(failing) and not terminate
    remaining = tuple(i for i in record.waiting if i.step not in touched)
    # What the run needs to go on (its resources, its inputs valid), checked before it is
    # taken: a run that cannot go on here stays parked, untouched.
    values = {} if terminate else recorded_run_values(spec, journal.record, _own(spec, resources))

    async def drive() -> Delivery:
        if not await journal.take("compensating" if unwinding else "running", remaining):
            again = await runs.load(run_id)
            raise NotParked(run_id, again.status, f"run {run_id} was taken by another process")
        for event_key in events:
            await runs.consume(saga, event_key, run_id)
        if unwinding or terminate:  # its keys are free for another run
            for info in record.waiting:
                if info.kind == "event" and info.key is not None and info.key not in events:
                    await runs.unbind(saga, info.key, run_id)
        # Waits inside child runs: each child run on the way is taken too (the top-level
        # run, taken above, is what made this taker the only one).
        for info, blob in ending.items():
            if info.runs:
                await _end_nested(spec, runs, info, blob, now)
        for info in failing:
            if info.runs and terminate:
                await _terminate_nested(spec, runs, info)
        taken = journal.record
        if terminate:
            await journal.finish("terminated")
            return Delivery(key, "terminated", run_id)
        if unwinding:
            done = await _unwind(
                spec, journal, taken, values, extra_hooks, nested_failing, [], None
            )
            error = failure(spec, journal.record, done.compensated)
            return Delivery(key, _status(done), run_id, error=error)
        return await _forward(
            spec, runs, journal, taken, values, resources, extra_hooks, kin, key, settling
        )

    # Once taken, the run is this caller's to drive to its end (or its next park): a
    # caller that is cancelled meanwhile (a webhook's client went away) does not leave it
    # taken and stopped, nor undo what the event made happen.
    delivery = await shielded(drive())
    if key is not None and key in late:
        raise EventRefused(
            key, f"it came after its deadline: run {run_id}'s wait timed out", run_id
        )
    return delivery


def _rerun(step: StepRecord, now: float) -> StepRecord:
    """A waiting step (a halted one, a composed one) that runs again."""
    return msgspec.structs.replace(step, status="running", wait=None, started_at=now)


def _check_result(codec: Any, info: WaitInfo, blob: bytes, run_id: str) -> None:
    """An event's payload must decode as the step's type (InvalidEvent)."""
    try:
        codec.decode_result(info.step, blob, run_id)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says: it does not fit
        raise InvalidEvent(info.key or info.step, str(exc), run_id) from None


_NOW = b"\x00now"  # an ending that is a due timer's: the time it woke, encoded where it is


def _ended_step(codec: Any, name: str, step: StepRecord, blob: bytes, now: float) -> StepRecord:
    """A waiting step that completed with ``blob`` (or, a timer, with the time)."""
    if blob is _NOW:
        blob = codec.encode_result(name, now, "")
    return StepRecord(
        status="succeeded",
        attempt=step.attempt,
        result=blob,
        started_at=step.started_at,
        ended_at=now,
    )


async def _end_nested(
    spec: SagaSpec, runs: RunStore, info: WaitInfo, blob: bytes | None, now: float
) -> None:
    """End a wait inside composed child runs: every child run down to the one that waits
    is taken, its composed step to run again; the innermost has its step completed
    (``blob``) or run again (``None``: a halt)."""
    specs = _sagas(spec)
    for depth, child_id in enumerate(info.runs):
        record = await runs.load(child_id)
        child_spec = specs.get(record.saga)
        if child_spec is None or record.status != "waiting":
            return
        journal = Journal(runs, codec_of(child_spec), record)
        last = depth == len(info.runs) - 1
        if last:
            name = info.run_step or info.step
            step = record.steps.get(name)
            if step is None:
                return
            if blob is None:  # a halted step: runs again (as one that never started)
                journal.mark(
                    name,
                    msgspec.structs.replace(
                        step, status="cancelled", error="halted", wait=None, ended_at=now
                    ),
                )
            else:
                journal.mark(name, _ended_step(journal.codec, name, step, blob, now))
            touched = {name}
        else:
            inner = info.runs[depth + 1]
            touched = {i.step for i in record.waiting if i.runs and i.runs[0] == inner}
            for name in touched:
                journal.mark(name, _rerun(record.steps[name], now))
        remaining = tuple(i for i in record.waiting if i.step not in touched)
        if not await journal.take("running", remaining):
            _logger.warning("child_run_not_taken", run_id=child_id)
            return


async def _terminate_nested(spec: SagaSpec, runs: RunStore, info: WaitInfo) -> None:
    """A terminated run's child runs that wait end as they are too."""
    specs = _sagas(spec)
    for child_id in info.runs:
        try:
            record = await runs.load(child_id)
        except RunStoreError:
            continue
        child_spec = specs.get(record.saga)
        if child_spec is None or record.status != "waiting":
            continue
        journal = Journal(runs, codec_of(child_spec), record)
        if await journal.take("running", ()):
            await journal.finish("terminated")


def _own(spec: SagaSpec, resources: Mapping[str, Any]) -> dict[str, Any]:
    """The resources this saga declares, refused at once if one is missing."""
    inputs = spec.plan.inputs
    missing = [n for n, i in inputs.items() if i.resource and i.required and n not in resources]
    if missing:
        raise ValueError(
            f"saga {spec.plan.saga} needs its resources to go on, which are never recorded: "
            f"pass {missing}"
        )
    return {n: resources[n] for n, i in inputs.items() if i.resource and n in resources}


def _status(done: Recovered) -> DeliveryStatus:
    outcome = done.outcome
    if outcome in ("failed", "compensation_failed", "cancelled", "succeeded", "terminated"):
        return outcome  # type: ignore[return-value]  # one of DeliveryStatus
    return "failed"


async def _forward(
    spec: SagaSpec,
    runs: RunStore,
    journal: Journal,
    record: RunRecord,
    values: dict[str, Any],
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    key: str | None,
    settling: bool,
) -> Delivery:
    """Run the taken run forward from its record: the steps that ended stay ended, those
    still waiting keep waiting (the run parks again once nothing else runs)."""
    plan = spec.plan
    resume = resume_point(plan, record)
    succeeded, skipped, first = resume.succeeded, resume.skipped, resume.first_attempts
    try:
        # The steps it starts with are recorded as starting first, as every step is.
        waits = {info.step for info in record.waiting}
        roots = [n for n in _roots(plan, succeeded, skipped) if n not in waits]
        await journal.resume(roots, first)
        result, _ = await run_values(
            spec,
            values,
            record.run_id,
            extra_hooks=extra_hooks,
            observer=journal,
            resume=resume,
            undoable=False,
        )
    except RunParked as parked:
        if not settling:
            return Delivery(key, "waiting", record.run_id, waits=parked.waits)
        return await settle(spec, runs, parked, resources, extra_hooks, kin, key)
    except SagaFailed as exc:
        status: DeliveryStatus = (
            "compensation_failed" if isinstance(exc, CompensationFailed) else "failed"
        )
        return Delivery(key, status, record.run_id, error=exc)
    return Delivery(key, "succeeded", record.run_id, result=result)


# -- resume, cancel, and what recovery wakes ----------------------------------------------


async def resume_halted(
    spec: SagaSpec,
    run_id: str,
    *,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> Delivery:
    """``Saga.resume``: the halted steps of a parked run run again, and the run on."""
    record = await runs.load(run_id)
    halted = [i for i in record.waiting if i.kind == "halt"]
    if record.status != "waiting" or not halted:
        raise NotParked(
            run_id,
            record.status,
            f"run {run_id} has no halted step to resume (status {record.status})",
        )
    return await _go_on(spec, runs, run_id, resources, extra_hooks, kin, rerun=halted)


async def cancel_parked(
    spec: SagaSpec,
    run_id: str,
    *,
    compensate: bool,
    runs: RunStore,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> Delivery:
    """``Saga.cancel``: a parked run unwinds (``cancelled``), or ends as it is
    (``terminated``, ``compensate=False``)."""
    return await _go_on(
        spec,
        runs,
        run_id,
        resources,
        extra_hooks,
        kin,
        cancel=compensate,
        terminate=not compensate,
    )


async def wake_due(
    runs: RunStore,
    specs: Mapping[str, SagaSpec],
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    *,
    limit: int,
) -> list[Recovered]:
    """Parked runs whose time came: due timers complete, events past their deadline fail
    their step (``TimeoutError``) and the run unwinds. What became of each."""
    report: list[Recovered] = []
    versions = {name: spec.saga_version for name, spec in specs.items()}
    for run_id in await runs.due(versions, limit=limit):
        try:
            record = await runs.load(run_id)
            spec = specs.get(record.saga)
            if spec is not None:
                check_identity(record, run_id, spec.plan.saga, spec.saga_version)
                unknown = [n for n in record.steps if n not in spec.plan.nodes]
                if unknown:
                    raise CorruptRecord(
                        f"the record of run {run_id} names steps saga {record.saga} does "
                        f"not have: {unknown}",
                        run_id,
                    )
        except CorruptRecord as exc:  # set aside, out of every later sweep
            report.append(await _quarantine_parked(runs, run_id, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad record never stops the sweep
            report.append(Recovered(run_id=run_id, saga="", outcome="error", error=repr(exc)))
            continue
        if spec is None or record.status != "waiting":
            continue
        now = time.time()
        due = [i for i in record.waiting if i.until is not None and i.until <= now]
        timers = [i for i in due if i.kind == "timer"]
        failures: dict[str | WaitInfo, BaseException] = {
            i: TimeoutError(f"no event {i.key!r} came before its deadline")
            for i in due
            if i.kind == "event"
        }
        if not timers and not failures:
            continue
        try:
            # An event kept for a wait but never taken (its deliverer's take failed) still
            # counts: it came in time.
            events: dict[str, bytes] = {}
            for info in [i for i in failures if isinstance(i, WaitInfo) and i.key]:
                assert info.key is not None
                state, kept = await runs.bind(record.saga, info.key, run_id, info.until)
                if state == "payload" and kept is not None:
                    events[info.key] = kept
                    del failures[info]
            own = _own(spec, resources)
            done = await _go_on(
                spec,
                runs,
                run_id,
                own,
                extra_hooks,
                kin,
                events=events,
                timers=timers,
                failures=failures,
            )
        except NotParked:
            continue  # taken by a delivery meanwhile
        except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
            report.append(
                Recovered(run_id=run_id, saga=record.saga, outcome="error", error=repr(exc))
            )
            continue
        outcome = done.status
        _logger.info("parked_run_woken", saga=record.saga, run_id=run_id, outcome=outcome)
        report.append(
            Recovered(
                run_id=run_id,
                saga=record.saga,
                outcome=outcome,
                resumed=tuple(i.step for i in timers),
                compensated=done.error.compensated if done.error is not None else (),
                error=repr(done.error) if done.error is not None else None,
            )
        )
    return report


async def _quarantine_parked(runs: RunStore, run_id: str, reason: str) -> Recovered:
    try:
        aside = await runs.quarantine(run_id, reason, parked=True)
    except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
        return Recovered(run_id=run_id, saga="", outcome="error", error=repr(exc))
    if aside is None:
        return Recovered(run_id=run_id, saga="", outcome="error", error=reason)
    return Recovered(run_id=run_id, saga=aside.saga or "", outcome="quarantined", error=reason)


async def settle_recovered(
    runs: RunStore,
    specs: Mapping[str, SagaSpec],
    report: Sequence[Recovered],
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> list[Recovered]:
    """Runs a recovery sweep drove until they parked: each binds its events (and goes on
    at once with a payload kept for it)."""
    settled: list[Recovered] = []
    for done in report:
        spec = specs.get(done.saga)
        if done.outcome != "waiting" or spec is None:
            settled.append(done)
            continue
        try:
            record = await runs.load(done.run_id)
            parked = RunParked(done.saga, done.run_id, record.waiting)
            after = await settle(spec, runs, parked, _own(spec, resources), extra_hooks, kin)
        except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
            settled.append(msgspec.structs.replace(done, outcome="error", error=repr(exc)))
            continue
        settled.append(msgspec.structs.replace(done, outcome=after.status))
    return settled
