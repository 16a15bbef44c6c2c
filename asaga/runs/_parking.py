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

import msgspec
import structlog

from .._exceptions import (
    CompensationFailed,
    DuplicateEvent,
    EventRefused,
    InvalidEvent,
    NotParked,
    RunParked,
    SagaFailed,
    WaitInfo,
)
from .._run import Hooks, SagaResult, SagaSpec, run_values
from .._scheduler import Resume
from .._waits import MAILBOX, Wait
from ._codec import codec_of
from ._journal import ChildRunsFor, Journal
from ._record import RunRecord, RunStore, StepRecord
from ._recovery import Recovered, _unwind
from ._replay import failure, recorded_run_values

__all__ = ["Delivery", "after_parking", "cancel_parked", "deliver", "resume_halted", "wake_due"]

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
    saga: str
    step: str
    wait: Wait


def _targets(spec: SagaSpec) -> Iterator[_Target]:
    """The event waits of a saga (the steps that :func:`~asaga.wait_for`)."""
    for name, node in spec.plan.nodes.items():
        if isinstance(node.invoke, Wait) and node.invoke.kind == "event":
            yield _Target(spec.plan.saga, name, node.invoke)


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


def _match(spec: SagaSpec, key: str, nested: bool) -> list[_Target]:
    if not isinstance(key, str) or not key or len(key) > 1000:
        raise EventRefused(str(key)[:100], "an event key is a str of 1 to 1000 characters")
    targets = list(_nested_targets(spec) if nested else _targets(spec))
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
    found = _match(spec, key, nested=True)
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
        target, value = _convert(found, key, payload)
        status, run_id = MAILBOX.post(target.saga, key, value)
        return Delivery(key, "delivered" if status == "delivered" else "kept", run_id)

    found = [t for t in found if t.saga == spec.plan.saga]  # durable: the saga's own
    if not found:
        raise EventRefused(
            key,
            f"the key is waited for by a saga that {spec.plan.saga} composes; in a durable "
            "run a waiting step must be the saga's own (see docs/interrupts.md)",
        )
    try:
        target, value = _convert(found, key, payload)
    except InvalidEvent as exc:
        run_id, count = await runs.bad_payload(spec.plan.saga, key)
        wait = found[0].wait
        if run_id is None or count <= wait.bad_payloads:
            raise InvalidEvent(key, exc.errors, run_id) from None
        failure = InvalidEvent(key, exc.errors, run_id, run_failed=True)
        try:
            await _go_on(
                spec, runs, run_id, resources, extra_hooks, kin, failures={found[0].step: failure}
            )
        except NotParked as why:
            raise InvalidEvent(key, exc.errors, run_id) from why
        raise failure from None
    blob = codec_of(spec).encode_result(target.step, value, "")
    state, run_id = await runs.post(target.saga, key, blob)
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
        return await _go_on(
            spec,
            runs,
            run_id,
            resources,
            extra_hooks,
            kin,
            results={target.step: value},
            consumed=[(target.saga, key)],
            key=key,
        )
    except NotParked as exc:
        if exc.status in ("running", "compensating"):
            # Driven by another process now (it took the run for another reason): when it
            # parks again it finds the payload kept for the key.
            return Delivery(key, "delivered", run_id)
        await runs.unpost(target.saga, key, blob)
        raise EventRefused(key, f"run {run_id} no longer waits for it: {exc}", run_id) from None


async def after_parking(
    spec: SagaSpec,
    runs: RunStore,
    parked: RunParked,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
) -> SagaResult[Any]:
    """A run just parked: each event it waits for is bound to it in its key's mailbox; a
    payload kept there (delivered before it waited) makes it go on at once, here. Returns
    the run's result, or raises (``RunParked`` again, ``SagaFailed``)."""
    for _ in range(100):  # bounded: each round consumes one kept payload
        results: dict[str, Any] = {}
        failures: dict[str, BaseException] = {}
        consumed: list[tuple[str, str]] = []
        codec = codec_of(spec)
        for info in parked.waits:
            if info.kind != "event" or info.key is None:
                continue
            state, blob = await runs.bind(spec.plan.saga, info.key, parked.run_id, info.until)
            if state == "taken":
                failures[info.step] = EventRefused(
                    info.key, "another run waits for this key, or took its event"
                )
            elif state == "payload" and blob is not None:
                try:
                    results[info.step] = codec.decode_result(info.step, blob, parked.run_id)
                except Exception:  # noqa: BLE001 - a kept payload that no longer fits
                    await runs.unpost(spec.plan.saga, info.key, blob)
                    continue
                consumed.append((spec.plan.saga, info.key))
        if not results and not failures:
            raise parked
        try:
            done = await _go_on(
                spec,
                runs,
                parked.run_id,
                resources,
                extra_hooks,
                kin,
                results=results,
                failures=failures,
                consumed=consumed,
            )
        except NotParked:
            raise parked from None  # another process took it meanwhile (a delivery)
        if done.status == "waiting":
            parked = RunParked(spec.plan.saga, parked.run_id, done.waits)
            continue
        if done.result is not None:
            return done.result
        assert done.error is not None
        raise done.error
    raise parked  # pragma: no cover - a hundred payloads kept for one run


# -- going on -----------------------------------------------------------------------------


async def _go_on(
    spec: SagaSpec,
    runs: RunStore,
    run_id: str,
    resources: Mapping[str, Any],
    extra_hooks: Hooks,
    kin: ChildRunsFor,
    *,
    results: Mapping[str, Any] | None = None,
    failures: Mapping[str, BaseException] | None = None,
    rerun: Sequence[str] = (),
    consumed: Sequence[tuple[str, str]] = (),
    cancel: bool = False,
    terminate: bool = False,
    key: str | None = None,
) -> Delivery:
    """Take the parked run ``run_id`` and drive it on here: ``results`` complete waiting
    steps, ``failures`` fail them (the run unwinds), ``rerun`` (halted steps) run again;
    ``cancel`` unwinds it, ``terminate`` ends it as it is. :class:`NotParked` if it is not
    parked so (or another taker won)."""
    results = results or {}
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
    for name in (*results, *failures, *rerun):
        step = record.steps.get(name)
        if step is None or step.status != "waiting":
            raise NotParked(run_id, record.status, f"step {name!r} of run {run_id} does not wait")
    codec = codec_of(spec)
    journal = Journal(runs, codec, record, children=kin(spec, extra_hooks))
    now = time.time()
    for name, value in results.items():
        step = record.steps[name]
        journal.mark(
            name,
            StepRecord(
                status="succeeded",
                attempt=step.attempt,
                result=codec.encode_result(name, value, run_id),
                started_at=step.started_at,
                ended_at=now,
            ),
        )
    for name, error in failures.items():
        step = record.steps[name]
        journal.mark(
            name,
            msgspec.structs.replace(
                step, status="failed", error=repr(error), wait=None, ended_at=now
            ),
        )
    for name in rerun:
        step = record.steps[name]
        journal.mark(
            name,
            msgspec.structs.replace(step, status="running", wait=None, started_at=now),
        )
    unwinding = bool(failures) or cancel
    if cancel or terminate:
        for name, step in record.steps.items():
            if step.status == "waiting":
                journal.mark(
                    name,
                    msgspec.structs.replace(
                        step, status="cancelled", error="cancelled while waiting", ended_at=now
                    ),
                )
    if failures:
        first = next(iter(failures))
        journal.set_failure(first, repr(failures[first]))
    elif cancel:
        journal.set_failure(None, "cancelled")
    # What the run needs to go on (its resources, its inputs valid), checked before it is
    # taken: a run that cannot go on here stays parked, untouched.
    values = {} if terminate else recorded_run_values(spec, journal.record, _own(spec, resources))
    if not await journal.take("compensating" if unwinding else "running"):
        again = await runs.load(run_id)
        raise NotParked(run_id, again.status, f"run {run_id} was taken by another process")
    for mail_saga, mail_key in consumed:
        await runs.consume(mail_saga, mail_key, run_id)
    record = journal.record
    if terminate:
        await journal.finish("terminated")
        return Delivery(key, "terminated", run_id)
    if unwinding:
        done = await _unwind(spec, journal, record, values, extra_hooks, [], list(failures), None)
        return Delivery(key, _status(done), run_id, error=failure(spec, journal.record))
    return await _forward(spec, journal, record, values, extra_hooks, key)


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
    journal: Journal,
    record: RunRecord,
    values: dict[str, Any],
    extra_hooks: Hooks,
    key: str | None,
) -> Delivery:
    """Run the taken run forward from its record: the steps that ended stay ended, those
    still waiting keep waiting (the run parks again once nothing else runs)."""
    steps = record.steps
    succeeded = tuple(n for n, s in steps.items() if s.status == "succeeded")
    skipped = tuple(n for n, s in steps.items() if s.status == "skipped")
    waiting = tuple(s.wait for s in steps.values() if s.status == "waiting" and s.wait)
    first = {n: s.attempt + 1 for n, s in steps.items() if s.status == "running"}
    resume = Resume(succeeded=succeeded, skipped=skipped, first_attempts=first, waiting=waiting)
    try:
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
        return Delivery(key, "waiting", record.run_id, waits=parked.waits)
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
    halted = [
        n
        for n, s in record.steps.items()
        if s.status == "waiting" and s.wait and s.wait.kind == "halt"
    ]
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
        except Exception as exc:  # noqa: BLE001 - one bad record never stops the sweep
            report.append(Recovered(run_id=run_id, saga="", outcome="error", error=repr(exc)))
            continue
        spec = specs.get(record.saga)
        if spec is None or record.status != "waiting":
            continue
        now = time.time()
        results: dict[str, Any] = {}
        failures: dict[str, BaseException] = {}
        for name, step in record.steps.items():
            info = step.wait
            if step.status != "waiting" or info is None or info.until is None or info.until > now:
                continue
            if info.kind == "timer":
                results[name] = now
            elif info.kind == "event":
                failures[name] = TimeoutError(f"no event {info.key!r} came before its deadline")
        if not results and not failures:
            continue
        try:
            done = await _go_on(
                spec, runs, run_id, resources, extra_hooks, kin, results=results, failures=failures
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
                resumed=tuple(results),
                error=repr(done.error) if done.error is not None else None,
            )
        )
    return report
