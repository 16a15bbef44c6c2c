"""OpenTelemetry traces and metrics of saga runs, built on asaga's event hooks.

::

    telemetry = OpenTelemetry()                # the global tracer and meter providers

    class Checkout(Saga):
        hooks = [telemetry.hook]               # every run of the saga, or per run:
                                               # await Checkout.run(..., hooks=[telemetry.hook])

:attr:`OpenTelemetry.hook` is a sync hook: it starts and ends spans as the events come,
with the events' own timestamps as the spans' start and end times, so the spans are as
exact as the events. The spans of one run::

    saga Checkout                  run_started .. run_succeeded | run_failed | run_parked
    ├── step reserve               step_started .. step_succeeded | step_retrying |
    ├── step pay                                   step_failed | step_cancelled (one per attempt)
    │   └── saga Payment           a composed or mapped sub-saga's run (its events carry
    │       └── step authorize     parent_run_id and path)
    └── compensate reserve         compensation_started .. compensation_succeeded | _failed

A top-level run's span is a child of the span current where ``run()`` is called (a web
request's, say). Waiting steps, skipped steps and lease waits are span events. The spans
still open when their run ends (a parked run's waiting steps) end with it, and at most
``max_open_spans`` are open at once (the oldest is ended first), so nothing grows without
bound however events are lost.

Metrics (names, units and attributes in docs/telemetry.md): runs started, succeeded,
failed and parked; steps failed and retried; compensations succeeded, failed and
retried; step, compensation and run durations; lease waits, through
:meth:`OpenTelemetry.locks` (asaga has no event for them: the wrapped provider times
each acquisition).

asaga has no global hook registry: install the hook on each saga (a base class whose
``hooks`` holds it does that for every saga deriving from it) or pass it to ``run()``.
opentelemetry is imported by this module only (extra ``asaga[otel]``).
"""

from __future__ import annotations

import ast
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal, TypeAlias

import structlog
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ..events import (
    CompensationFailedEvent,
    CompensationStarted,
    CompensationSucceeded,
    Event,
    RunFailed,
    RunParkedEvent,
    RunStarted,
    RunSucceeded,
    StepCancelled,
    StepFailed,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepWaiting,
)
from ..locks import Lease, LockProvider

__all__ = ["OpenTelemetry"]

try:
    _VERSION = version("asaga")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    _VERSION = ""

SAGA = "asaga.saga"
RUN_ID = "asaga.run_id"
PARENT_RUN_ID = "asaga.parent_run_id"
STEP = "asaga.step"
ATTEMPT = "asaga.attempt"
PATH = "asaga.path"
OUTCOME = "asaga.outcome"
"""What ended a span or a measure: ``succeeded``, ``failed``, ``retrying``,
``cancelled``, ``parked``; on spans ended with their run, ``parked`` or ``unfinished``."""
FINAL = "asaga.final"
ERROR_TYPE = "error.type"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Histogram bucket boundaries (seconds) advised to the SDK: sagas span milliseconds to
minutes."""

_What: TypeAlias = Literal["run", "step", "compensation"]
_Key: TypeAlias = tuple[_What, str, str | None, int]
"""An open span: (what, run_id, step, attempt); a run's is (``"run"``, run_id, None, 0)."""

_UNDER_COMPOSED: tuple[_What, ...] = ("compensation", "step")
"""Where a sub-saga's attempts go once its run has ended: under its parent's compensation
of the composed step (the parent unwinds it), else under that step."""

_REPR = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)\Z", re.DOTALL)


class _Open:
    """An open span, and the open run whose end ends it (``None``: only its own end)."""

    __slots__ = ("monotonic", "owner", "span")

    def __init__(self, span: Span, owner: str | None, monotonic: float) -> None:
        self.span = span
        self.owner = owner
        self.monotonic = monotonic


class OpenTelemetry:
    """Spans and metrics of saga runs: install :attr:`hook` on sagas, or pass it to runs.

    ``tracer_provider`` and ``meter_provider`` default to OpenTelemetry's global ones (as
    set by ``opentelemetry.trace.set_tracer_provider`` or the ``opentelemetry-instrument``
    launcher). ``max_open_spans`` bounds the spans open at once: past it, the oldest is
    ended (``asaga.outcome = "unfinished"``).

    One object serves any number of sagas, runs and event loops (threads); an event that
    reaches the hook twice (a sub-saga's, when the hook is on both the child and the
    parent saga) is handled once.
    """

    __slots__ = (
        "_compensation_duration",
        "_compensations_failed",
        "_compensations_retried",
        "_compensations_succeeded",
        "_held",
        "_last",
        "_latest",
        "_lease_wait",
        "_lock",
        "_max_open",
        "_open",
        "_run_duration",
        "_runs_failed",
        "_runs_parked",
        "_runs_started",
        "_runs_succeeded",
        "_step_duration",
        "_steps_failed",
        "_steps_retried",
        "_tracer",
    )

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        max_open_spans: int = 10_000,
    ) -> None:
        if max_open_spans < 1:
            raise ValueError(f"max_open_spans must be at least 1, got {max_open_spans!r}")
        self._max_open = max_open_spans
        self._tracer = trace.get_tracer("asaga", _VERSION, tracer_provider)
        meter = metrics.get_meter("asaga", _VERSION, meter_provider)
        counter, histogram = meter.create_counter, meter.create_histogram
        self._runs_started = counter("asaga.runs.started", "{run}", "Runs that began")
        self._runs_succeeded = counter("asaga.runs.succeeded", "{run}", "Runs that succeeded")
        self._runs_failed = counter(
            "asaga.runs.failed", "{run}", "Runs that failed (or were cancelled), once unwound"
        )
        self._runs_parked = counter(
            "asaga.runs.parked", "{run}", "Durable runs that parked, to go on later"
        )
        self._steps_failed = counter("asaga.steps.failed", "{step}", "Steps that failed for good")
        self._steps_retried = counter(
            "asaga.steps.retried", "{attempt}", "Attempts of steps that failed and were retried"
        )
        self._compensations_succeeded = counter(
            "asaga.compensations.succeeded", "{compensation}", "Compensations that completed"
        )
        self._compensations_failed = counter(
            "asaga.compensations.failed",
            "{compensation}",
            "Compensations that failed for good: the step's effect is left for a human",
        )
        self._compensations_retried = counter(
            "asaga.compensations.retried",
            "{attempt}",
            "Attempts of compensations that failed and were retried",
        )
        self._run_duration = histogram(
            "asaga.run.duration",
            "s",
            "Duration of runs, from run_started to their end",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._step_duration = histogram(
            "asaga.step.duration",
            "s",
            "Duration of step attempts",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._compensation_duration = histogram(
            "asaga.compensation.duration",
            "s",
            "Duration of compensation attempts",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._lease_wait = histogram(
            "asaga.lease.wait",
            "s",
            "Time spent waiting for a lease (providers wrapped by OpenTelemetry.locks)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._open: dict[_Key, _Open] = {}
        """Every open span, oldest first."""
        self._latest: dict[tuple[_What, str, str], int] = {}
        """(what, run_id, step) -> the attempt whose span is open."""
        self._held: dict[str, set[_Key]] = {}
        """Open run -> the open spans its end ends (its steps, compensations, child runs)."""
        self._last = threading.local()
        self._lock = threading.Lock()

    @property
    def open_spans(self) -> int:
        """How many spans are open now (runs, step and compensation attempts)."""
        return len(self._open)

    def hook(self, event: Event) -> None:
        """The sync hook: give it to a saga's ``hooks`` or to ``run(hooks=[...])``."""
        last = self._last
        if getattr(last, "event", None) is event:
            return  # the same event, delivered to a sub-saga's hooks and to its parent's
        last.event = event
        with self._lock:
            match event:
                case StepStarted():
                    self._attempt_started("step", event)
                case StepSucceeded():
                    self._step_ended(event, "succeeded")
                case StepRetrying():
                    self._steps_retried.add(1, {SAGA: event.saga, STEP: event.step or ""})
                    self._step_ended(event, "retrying", {"asaga.retry.delay": event.delay})
                case StepFailed():
                    self._steps_failed.add(1, {SAGA: event.saga, STEP: event.step or ""})
                    self._step_ended(event, "failed")
                case StepCancelled():
                    self._step_ended(event, "cancelled", {"asaga.in_doubt": event.in_doubt})
                case StepWaiting():
                    self._waiting(event)
                case StepSkipped():
                    self._note(event)
                case CompensationStarted():
                    self._attempt_started("compensation", event)
                case CompensationSucceeded():
                    self._compensation_ended(event)
                case CompensationFailedEvent():
                    self._compensation_ended(event)
                case RunStarted():
                    self._run_started(event)
                case RunSucceeded() | RunFailed() | RunParkedEvent():
                    self._run_ended(event)

    def locks(self, provider: LockProvider) -> LockProvider:
        """``provider``, with the wait for each lease timed: the metric
        ``asaga.lease.wait`` and a ``lease_wait`` event on the step's span.

        Pass it as the saga's ``locks`` input (``run(..., locks=telemetry.locks(provider))``);
        its other attributes are the provider's. asaga reports no event for lease waits,
        so steps locked through the default provider (a saga with no ``locks`` input) are
        not timed.
        """
        return _TimedLocks(self, provider)

    # -- runs ------------------------------------------------------------------------------

    def _run_started(self, event: RunStarted) -> None:
        run_id = event.run_id
        if ("run", run_id, None, 0) in self._open:  # begun again in this process: resumed
            self._end_run(run_id, _ns(event.timestamp), "unfinished")
        parent, owner = self._parent_of_run(event)
        attributes: dict[str, AttributeValue] = {SAGA: event.saga, RUN_ID: run_id}
        if event.parent_run_id is not None:
            attributes[PARENT_RUN_ID] = event.parent_run_id
        if event.path is not None:
            attributes[PATH] = event.path
        span = self._tracer.start_span(
            f"saga {event.saga}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(event.timestamp),
        )
        self._add(("run", run_id, None, 0), span, owner, event.monotonic)
        self._held[run_id] = set()
        self._runs_started.add(1, {SAGA: event.saga})

    def _run_ended(self, event: RunSucceeded | RunFailed | RunParkedEvent) -> None:
        saga = event.saga
        parked = isinstance(event, RunParkedEvent)
        outcome = "parked" if parked else "succeeded" if type(event) is RunSucceeded else "failed"
        opened = self._open.get(("run", event.run_id, None, 0))
        duration = event.duration
        if duration is None and opened is not None:
            duration = event.monotonic - opened.monotonic
        if duration is not None:
            self._run_duration.record(duration, {SAGA: saga, OUTCOME: outcome})
        if isinstance(event, RunFailed):
            self._runs_failed.add(1, {SAGA: saga})
        elif parked:
            self._runs_parked.add(1, {SAGA: saga})
        else:
            self._runs_succeeded.add(1, {SAGA: saga})
        if opened is None:
            return
        span = opened.span
        span.set_attribute(OUTCOME, outcome)
        if isinstance(event, RunFailed):
            if event.failed_step is not None:
                span.set_attribute("asaga.failed_step", event.failed_step)
            if event.cancelled:
                span.set_attribute("asaga.cancelled", True)
            if event.in_doubt:
                span.set_attribute("asaga.in_doubt", list(event.in_doubt))
            error = event.error or "failed"
            span.set_attribute(ERROR_TYPE, "cancelled" if event.cancelled else _parse(error)[0])
            span.set_status(Status(StatusCode.ERROR, error))
        elif isinstance(event, RunParkedEvent):
            span.set_attribute("asaga.parked", True)
            span.set_attribute("asaga.waiting", list(event.waiting))
        leftover = "parked" if parked else "unfinished"
        self._end_run(event.run_id, _ns(event.timestamp), leftover, ended=True)

    def _end_run(self, run_id: str, end: int, leftover: str, *, ended: bool = False) -> None:
        """End the run's span, after the spans still open under it: their outcome is
        ``leftover`` (and the run's too, unless its own end event came: ``ended``)."""
        for key in list(self._held.pop(run_id, ())):
            if key[0] == "run":
                self._end_run(key[1], end, leftover)
                continue
            opened = self._pop(key)
            if opened is not None:
                opened.span.set_attribute(OUTCOME, leftover)
                opened.span.end(end_time=end)
        opened = self._pop(("run", run_id, None, 0))
        if opened is not None:
            if not ended:
                opened.span.set_attribute(OUTCOME, leftover)
            opened.span.end(end_time=end)

    # -- steps and compensations -----------------------------------------------------------

    def _attempt_started(self, what: _What, event: StepStarted | CompensationStarted) -> None:
        step = event.step or ""
        key: _Key = (what, event.run_id, step, event.attempt)
        stale = self._pop(key)
        if stale is not None:  # the same attempt again (a resumed run): the first ends here
            stale.span.set_attribute(OUTCOME, "unfinished")
            stale.span.end(end_time=_ns(event.timestamp))
        parent, owner = self._parent_of(event)
        attributes: dict[str, AttributeValue] = {
            SAGA: event.saga,
            RUN_ID: event.run_id,
            STEP: step,
            ATTEMPT: event.attempt,
        }
        if event.path is not None:
            attributes[PATH] = event.path
        if event.parent_run_id is not None:
            attributes[PARENT_RUN_ID] = event.parent_run_id
        name = f"step {step}" if what == "step" else f"compensate {step}"
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_ns(event.timestamp),
        )
        self._add(key, span, owner, event.monotonic)

    def _step_ended(
        self,
        event: StepSucceeded | StepRetrying | StepFailed | StepCancelled,
        outcome: str,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> None:
        opened = self._pop(("step", event.run_id, event.step or "", event.attempt))
        if opened is None:
            # No attempt open: a step failed by its condition, or once its retry wait was
            # cut short (that attempt's span ended at step_retrying).
            self._note(event)
            return
        if event.duration is not None:
            self._step_duration.record(
                event.duration, {SAGA: event.saga, STEP: event.step or "", OUTCOME: outcome}
            )
        span = opened.span
        span.set_attribute(OUTCOME, outcome)
        if attributes:
            span.set_attributes(attributes)
        if event.error is not None and outcome != "cancelled":
            _failed(span, event.error, event.timestamp)
        elif isinstance(event, StepCancelled) and event.in_doubt:
            span.set_attribute(ERROR_TYPE, "in_doubt")
            span.set_status(Status(StatusCode.ERROR, "cut off while running: in doubt"))
        span.end(end_time=_ns(event.timestamp))

    def _compensation_ended(self, event: CompensationSucceeded | CompensationFailedEvent) -> None:
        step = event.step or ""
        labels: dict[str, AttributeValue] = {SAGA: event.saga, STEP: step}
        if not isinstance(event, CompensationFailedEvent):
            outcome = "succeeded"
            self._compensations_succeeded.add(1, labels)
        elif event.final:
            outcome = "failed"
            self._compensations_failed.add(1, labels)
        else:
            outcome = "retrying"
            self._compensations_retried.add(1, labels)
        opened = self._pop(("compensation", event.run_id, step, event.attempt))
        if opened is None:
            self._note(event)
            return
        if event.duration is not None:
            self._compensation_duration.record(event.duration, {**labels, OUTCOME: outcome})
        span = opened.span
        span.set_attribute(OUTCOME, outcome)
        if isinstance(event, CompensationFailedEvent):
            span.set_attribute(FINAL, event.final)
            _failed(span, event.error or "failed", event.timestamp)
        span.end(end_time=_ns(event.timestamp))

    def _waiting(self, event: StepWaiting) -> None:
        opened = self._find("step", event.run_id, event.step or "")
        if opened is None:
            self._note(event)
            return
        opened.span.add_event("step_waiting", _waiting_attributes(event), _ns(event.timestamp))

    def _note(self, event: Event) -> None:
        """An event with no span of its own: a span event on its run's span."""
        opened = self._open.get(("run", event.run_id, None, 0))
        if opened is None:
            return
        attributes: dict[str, AttributeValue] = {STEP: event.step or ""}
        if event.attempt:
            attributes[ATTEMPT] = event.attempt
        if event.error is not None:
            attributes["asaga.error"] = event.error
        opened.span.add_event(event.kind, attributes, _ns(event.timestamp))

    # -- parents ---------------------------------------------------------------------------

    def _parent_of_run(self, event: RunStarted) -> tuple[Context | None, str | None]:
        """A sub-saga run's parent span: its composed (or mapped) step's attempt, else the
        parent run's; a top-level run's: the current span (``None``)."""
        parent_run_id = event.parent_run_id
        if parent_run_id is None:
            return None, None
        composed = _composed_step(event.path)
        if composed is not None:
            opened = self._find("step", parent_run_id, composed)
            if opened is not None:
                return trace.set_span_in_context(opened.span), parent_run_id
        opened = self._open.get(("run", parent_run_id, None, 0))
        if opened is not None:
            return trace.set_span_in_context(opened.span), parent_run_id
        return None, None

    def _parent_of(self, event: Event) -> tuple[Context | None, str | None]:
        """An attempt's parent span, and the run that owns it.

        Its run's span while the run is open; once a sub-saga run has ended (its steps
        compensated by its parent's unwinding), the parent's compensation of the
        composed step, else the parent's run.
        """
        opened = self._open.get(("run", event.run_id, None, 0))
        if opened is not None:
            return trace.set_span_in_context(opened.span), event.run_id
        parent_run_id = event.parent_run_id
        if parent_run_id is None or event.path is None:
            return None, None
        composed = _composed_step(event.path.rpartition("/")[0])
        if composed is not None:
            for what in _UNDER_COMPOSED:
                found = self._find(what, parent_run_id, composed)
                if found is not None:
                    return trace.set_span_in_context(found.span), found.owner
        opened = self._open.get(("run", parent_run_id, None, 0))
        if opened is not None:
            return trace.set_span_in_context(opened.span), parent_run_id
        return None, None

    # -- the open spans --------------------------------------------------------------------

    def _find(self, what: _What, run_id: str, step: str) -> _Open | None:
        attempt = self._latest.get((what, run_id, step))
        return None if attempt is None else self._open.get((what, run_id, step, attempt))

    def _add(self, key: _Key, span: Span, owner: str | None, monotonic: float) -> None:
        while len(self._open) >= self._max_open:
            self._evict(next(iter(self._open)))
        held = self._held.get(owner) if owner is not None else None
        if held is None:
            owner = None
        else:
            held.add(key)
        self._open[key] = _Open(span, owner, monotonic)
        what, run_id, step, attempt = key
        if step is not None:
            self._latest[(what, run_id, step)] = attempt

    def _pop(self, key: _Key) -> _Open | None:
        opened = self._open.pop(key, None)
        if opened is None:
            return None
        what, run_id, step, attempt = key
        if step is not None and self._latest.get((what, run_id, step)) == attempt:
            del self._latest[(what, run_id, step)]
        if opened.owner is not None:
            held = self._held.get(opened.owner)
            if held is not None:
                held.discard(key)
        return opened

    def _evict(self, key: _Key) -> None:
        """Too many open spans: end the oldest (a run with what it holds)."""
        end = time.time_ns()
        if key[0] == "run":
            self._end_run(key[1], end, "unfinished")
            return
        opened = self._pop(key)
        if opened is not None:
            opened.span.set_attribute(OUTCOME, "unfinished")
            opened.span.end(end_time=end)

    # -- lease waits -----------------------------------------------------------------------

    def _lease_waited(self, keys: Sequence[str], waited: float, outcome: str) -> None:
        """A wrapped provider waited ``waited`` seconds for ``keys`` (in a step, if the
        structlog context variables say which)."""
        bound = structlog.contextvars.get_contextvars()
        saga, run_id, step = bound.get("saga"), bound.get("run_id"), bound.get("step")
        labels: dict[str, AttributeValue] = {OUTCOME: outcome}
        if isinstance(saga, str):
            labels[SAGA] = saga
        if isinstance(step, str):
            labels[STEP] = step
        with self._lock:
            self._lease_wait.record(waited, labels)
            if not (isinstance(run_id, str) and isinstance(step, str)):
                return
            opened = self._find("step", run_id, step)
            if opened is None:
                return
            opened.span.set_attribute("asaga.lease.wait", waited)
            opened.span.add_event(
                "lease_wait",
                {"asaga.lease.keys": list(keys), "asaga.lease.wait": waited, OUTCOME: outcome},
            )


class _TimedLocks:
    """A lock provider whose lease waits are timed (see :meth:`OpenTelemetry.locks`)."""

    __slots__ = ("_provider", "_telemetry")

    def __init__(self, telemetry: OpenTelemetry, provider: LockProvider) -> None:
        self._telemetry = telemetry
        self._provider = provider

    def lease(
        self, *keys: str, ttl: float, wait: float | None = None
    ) -> AbstractAsyncContextManager[Lease]:
        return self._lease(keys, ttl, wait)

    @asynccontextmanager
    async def _lease(
        self, keys: tuple[str, ...], ttl: float, wait: float | None
    ) -> AsyncIterator[Lease]:
        started = time.monotonic()
        acquired = False
        try:
            async with self._provider.lease(*keys, ttl=ttl, wait=wait) as lease:
                acquired = True
                self._telemetry._lease_waited(keys, time.monotonic() - started, "acquired")
                yield lease
        except BaseException as exc:
            if not acquired:  # a timeout, a cancellation, the backend away
                self._telemetry._lease_waited(keys, time.monotonic() - started, _name(exc))
            raise

    def __getattr__(self, name: str) -> Any:  # the provider's other attributes
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._provider, name)

    def __repr__(self) -> str:
        return f"<timed {self._provider!r}>"


def _ns(timestamp: float) -> int:
    """Epoch seconds (an event's ``timestamp``) as OpenTelemetry's nanoseconds."""
    return round(timestamp * 1_000_000_000)


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _composed_step(prefix: str | None) -> str | None:
    """The parent's step that ran a sub-saga whose events have path prefix ``prefix``:
    ``"pay"`` for ``"pay"``, ``"lines"`` for ``"basket/lines[3]"``."""
    if not prefix:
        return None
    return prefix.rpartition("/")[2].partition("[")[0] or None


def _parse(error: str) -> tuple[str, str]:
    """The exception type and message in an event's ``error`` (the exception's ``repr``):
    ``("RuntimeError", "card declined")`` for ``"RuntimeError('card declined')"``."""
    match = _REPR.match(error)
    if match is None:
        return "_OTHER", error
    kind, args = match.groups()
    if len(args) <= 4096:
        try:
            value = ast.literal_eval(args)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            pass
        else:
            if isinstance(value, str):
                return kind, value
    return kind, args


def _failed(span: Span, error: str, timestamp: float) -> None:
    """Mark ``span`` failed by ``error`` as ``record_exception`` would (the exception itself
    is gone: events carry its ``repr``)."""
    kind, message = _parse(error)
    span.add_event(
        "exception",
        {"exception.type": kind, "exception.message": message, "asaga.error": error},
        _ns(timestamp),
    )
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, error))


def _waiting_attributes(event: StepWaiting) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"asaga.wait": event.wait}
    if event.key is not None:
        attributes["asaga.wait.key"] = event.key
    if event.until is not None:
        attributes["asaga.wait.until"] = event.until
    if event.reason is not None:
        attributes["asaga.wait.reason"] = event.reason
    return attributes
