"""OpenTelemetry spans and metrics of saga runs, from asaga's events: the span tree
(run, step attempts, compensations, sub-saga runs), errors, parked runs, metrics, lease
waits, and the bound on what is kept open. Read with the SDK's in-memory exporter and
reader; no sleeps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asaga import (
    Event,
    Lock,
    Resource,
    Retry,
    RunParked,
    RunStarted,
    Saga,
    SagaFailed,
    StepStarted,
    compose,
    map_each,
    step,
    wait_for,
)
from asaga.integrations.opentelemetry import OpenTelemetry
from asaga.locks import LeaseTimeout, LockProvider, MemoryLockProvider
from asaga.runs import MemoryRunStore
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


@dataclass
class Telemetry:
    otel: OpenTelemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    provider: TracerProvider

    @property
    def hook(self) -> Any:
        return self.otel.hook

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return sorted((s for s in self.finished() if s.name == name), key=_start)

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """The data points of metric ``name`` by their attributes: a counter's value, a
        histogram's point."""
        data = self.metrics.get_metrics_data()
        found: dict[frozenset[tuple[str, Any]], Any] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        key = frozenset((point.attributes or {}).items())
                        found[key] = point.value if isinstance(point, NumberDataPoint) else point
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    yield Telemetry(
        OpenTelemetry(tracer_provider=provider, meter_provider=meters), spans, reader, provider
    )
    meters.shutdown()
    provider.shutdown()


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _ns(timestamp: float) -> int:
    return round(timestamp * 1_000_000_000)


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    for candidate in spans:
        if candidate.context is not None and candidate.context.span_id == span.parent.span_id:
            return candidate
    return None


def descends(span: ReadableSpan, ancestor: ReadableSpan, spans: Sequence[ReadableSpan]) -> bool:
    parent = parent_of(span, spans)
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent_of(parent, spans)
    return False


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# -- sagas -----------------------------------------------------------------------------------


class Order(Saga):
    @step
    async def reserve(sku: str) -> str:
        return f"res-{sku}"

    @reserve.compensate
    async def release(reserve: str) -> None: ...

    @step
    async def price(sku: str) -> int:
        return 5

    @step
    async def charge(reserve: str, price: int, card: str) -> str:
        if card == "expired":
            raise RuntimeError("card declined")
        return "ch-1"


FLAKY: list[int] = []


class Shipment(Saga):
    @step
    async def pack(order: str) -> str:
        return f"box-{order}"

    @pack.compensate
    async def unpack(pack: str) -> None: ...

    @step
    async def label(pack: str) -> str:
        return f"label-{pack}"

    @label.compensate
    async def void(label: str) -> None: ...

    @step(retry=Retry(max_attempts=3, backoff="fixed", base_delay=0, jitter=False))
    async def dispatch(label: str) -> str:
        raise ValueError("no truck")


class Charge(Saga):
    @step
    async def authorize(amount: int) -> str:
        return "auth-1"

    @authorize.compensate
    async def cancel_authorization(authorize: str) -> None: ...


class Checkout(Saga):
    pay = compose(Charge)

    @step
    async def confirm(pay: str, fail: bool) -> str:
        if fail:
            raise RuntimeError("stock gone")
        return "ok"


class Line(Saga):
    @step
    async def hold(sku: str) -> str:
        return f"hold-{sku}"

    @hold.compensate
    async def unhold(hold: str) -> None: ...


class Bulk(Saga):
    lines = map_each(Line, over="items")

    @step
    async def bill(lines: list[str]) -> None:
        raise RuntimeError("over budget")


class Payment(msgspec.Struct):
    amount: int


class Awaiting(Saga):
    order_id: str

    @step
    async def charge(order_id: str) -> str:
        return f"ch-{order_id}"

    paid = wait_for(Payment, key="pay:{order_id}", timeout=3600, after=["charge"])

    @step
    async def ship(paid: Payment) -> str:
        return f"shipped {paid.amount}"


class Locked(Saga):
    sku: str
    locks: Resource[LockProvider]

    @step(lock=Lock("stock:{sku}", ttl=5.0, wait=0))
    async def take(sku: str) -> str:
        return sku


# -- spans -----------------------------------------------------------------------------------


async def test_a_successful_run_is_a_run_span_over_its_step_spans(telemetry: Telemetry) -> None:
    """One span per run (``saga <Saga>``) and per step attempt (``step <name>``), children
    of the run's; attributes name the saga, the run, the step, the attempt and the path;
    start and end times are the events' timestamps."""
    recorder = EventRecorder()
    result = await Order.run(sku="p1", card="visa", hooks=[telemetry.hook, recorder])

    spans = telemetry.finished()
    assert sorted(s.name for s in spans) == [
        "saga Order",
        "step charge",
        "step price",
        "step reserve",
    ]
    run = telemetry.one("saga Order")
    assert parent_of(run, spans) is None
    assert attrs(run) == {
        "asaga.saga": "Order",
        "asaga.run_id": result.run_id,
        "asaga.outcome": "succeeded",
    }
    assert run.status.status_code is StatusCode.UNSET
    for name in ("reserve", "price", "charge"):
        span = telemetry.one(f"step {name}")
        assert parent_of(span, spans) is run
        assert attrs(span) == {
            "asaga.saga": "Order",
            "asaga.run_id": result.run_id,
            "asaga.step": name,
            "asaga.attempt": 1,
            "asaga.path": name,
            "asaga.outcome": "succeeded",
        }
    (started,) = recorder.of("run_started")
    (succeeded,) = recorder.of("run_succeeded")
    assert (run.start_time, run.end_time) == (_ns(started.timestamp), _ns(succeeded.timestamp))
    charge = telemetry.one("step charge")
    ends = {e.step: e for e in recorder.of("step_succeeded")}
    assert charge.end_time == _ns(ends["charge"].timestamp)
    assert telemetry.otel.open_spans == 0


async def test_a_run_span_is_a_child_of_the_callers_current_span(telemetry: Telemetry) -> None:
    """A top-level run's span joins the trace the caller is in (a web request's, say)."""
    tracer = telemetry.provider.get_tracer("app")
    with tracer.start_as_current_span("POST /orders"):
        await Order.run(sku="p1", card="visa", hooks=[telemetry.hook])
    spans = telemetry.finished()
    assert parent_of(telemetry.one("saga Order"), spans) is telemetry.one("POST /orders")


async def test_a_failing_run_records_errors_retries_and_compensations(
    telemetry: Telemetry,
) -> None:
    """Each attempt has its span: a retried one says so; a failed one has status ERROR, an
    ``exception`` event (type and message) and ``error.type``; the compensations are spans
    under the run, in reverse order; the run's span fails with the step's error."""
    with pytest.raises(SagaFailed):
        await Shipment.run(order="o-1", hooks=[telemetry.hook])

    spans = telemetry.finished()
    run = telemetry.one("saga Shipment")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "ValueError('no truck')"
    assert attrs(run)["asaga.outcome"] == "failed"
    assert attrs(run)["asaga.failed_step"] == "dispatch"
    assert attrs(run)["error.type"] == "ValueError"

    attempts = telemetry.named("step dispatch")
    assert [attrs(s)["asaga.attempt"] for s in attempts] == [1, 2, 3]
    assert [attrs(s)["asaga.outcome"] for s in attempts] == ["retrying", "retrying", "failed"]
    assert attrs(attempts[0])["asaga.retry.delay"] == 0
    for attempt in attempts:
        assert parent_of(attempt, spans) is run
        assert attempt.status.status_code is StatusCode.ERROR
        assert attrs(attempt)["error.type"] == "ValueError"
        (exception,) = attempt.events
        assert exception.name == "exception"
        assert dict(exception.attributes or {}) == {
            "exception.type": "ValueError",
            "exception.message": "no truck",
            "asaga.error": "ValueError('no truck')",
        }

    compensations = sorted((s for s in spans if s.name.startswith("compensate ")), key=_start)
    assert [s.name for s in compensations] == ["compensate label", "compensate pack"]
    assert compensations[0].end_time is not None
    assert compensations[0].end_time <= _start(compensations[1])
    for span in compensations:
        assert parent_of(span, spans) is run
        assert span.status.status_code is StatusCode.UNSET
        assert attrs(span)["asaga.outcome"] == "succeeded"
    assert telemetry.otel.open_spans == 0


async def test_a_failed_compensation_is_an_error_span(telemetry: Telemetry) -> None:
    """A compensation that fails for good: status ERROR, the exception event, and
    ``asaga.final`` (its effect is left for a human)."""

    class Fragile(Saga):
        @step
        async def book(room: str) -> str:
            return room

        @book.compensate
        async def unbook(book: str) -> None:
            raise OSError("hotel offline")

        @step
        async def pay(book: str) -> None:
            raise RuntimeError("declined")

    with pytest.raises(SagaFailed):
        await Fragile.run(room="12", hooks=[telemetry.hook])
    span = telemetry.one("compensate book")
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)["asaga.final"] is True
    assert attrs(span)["asaga.outcome"] == "failed"
    assert [e.name for e in span.events] == ["exception"]
    assert telemetry.points("asaga.compensations.failed") == {
        frozenset({("asaga.saga", "Fragile"), ("asaga.step", "book")}): 1
    }


async def test_a_composed_sub_saga_runs_under_its_step(telemetry: Telemetry) -> None:
    """A composed child's run span is a child of the composed step's span; its steps are
    its children; undone by the parent, its compensations are under the parent's
    compensation of the composed step. Everything descends from the parent's run."""
    with pytest.raises(SagaFailed):
        await Checkout.run(amount=5, fail=True, hooks=[telemetry.hook])

    spans = telemetry.finished()
    parent = telemetry.one("saga Checkout")
    child = telemetry.one("saga Charge")
    assert parent_of(child, spans) is telemetry.one("step pay")
    assert attrs(child)["asaga.parent_run_id"] == attrs(parent)["asaga.run_id"]
    assert attrs(child)["asaga.path"] == "pay"
    authorize = telemetry.one("step authorize")
    assert parent_of(authorize, spans) is child
    assert attrs(authorize)["asaga.path"] == "pay/authorize"
    undo = telemetry.one("compensate authorize")
    assert parent_of(undo, spans) is telemetry.one("compensate pay")
    for span in spans:
        if span is not parent:
            assert descends(span, parent, spans), span.name
    assert telemetry.otel.open_spans == 0


async def test_a_hook_on_the_child_saga_too_sees_each_event_once(telemetry: Telemetry) -> None:
    """A sub-saga's events reach the child's hooks and the parent's: with the hook on both,
    each span is made once."""

    class Child(Saga):
        hooks = (telemetry.hook,)

        @step
        async def inner() -> int:
            return 1

    class Parent(Saga):
        hooks = (telemetry.hook,)
        child = compose(Child)

    await Parent.run(hooks=[telemetry.hook])
    assert sorted(s.name for s in telemetry.finished()) == [
        "saga Child",
        "saga Parent",
        "step child",
        "step inner",
    ]


async def test_mapped_element_runs_are_children_of_the_mapped_step(
    telemetry: Telemetry,
) -> None:
    """Each element run of a mapped step is a child of its span; undone by the parent,
    the elements' compensations are under the parent's compensation of the mapped step,
    in reverse index order."""
    with pytest.raises(SagaFailed):
        await Bulk.run(items=[{"sku": "a"}, {"sku": "b"}], hooks=[telemetry.hook])

    spans = telemetry.finished()
    mapped = telemetry.one("step lines")
    elements = telemetry.named("saga Line")
    assert sorted(attrs(s)["asaga.path"] for s in elements) == ["lines[0]", "lines[1]"]
    assert all(parent_of(s, spans) is mapped for s in elements)
    undo = telemetry.one("compensate lines")
    unholds = telemetry.named("compensate hold")
    assert [attrs(s)["asaga.path"] for s in unholds] == ["lines[1]/hold", "lines[0]/hold"]
    assert all(parent_of(s, spans) is undo for s in unholds)
    assert telemetry.otel.open_spans == 0


async def test_a_parked_durable_run_ends_its_span_as_parked(telemetry: Telemetry) -> None:
    """A durable run that parks ends its span with ``asaga.parked`` and the steps that
    wait; the waiting step's span has a ``step_waiting`` event with the key and ends with
    the run. The delivery that drives it on is a new span of the same run id."""
    store = MemoryRunStore()
    with pytest.raises(RunParked) as parked:
        await Awaiting.run(order_id="o-1", runs=store, hooks=[telemetry.hook])

    run = telemetry.one("saga Awaiting")
    assert run.status.status_code is StatusCode.UNSET
    assert attrs(run)["asaga.outcome"] == "parked"
    assert attrs(run)["asaga.parked"] is True
    assert attrs(run)["asaga.waiting"] == ("paid",)
    waiting = telemetry.one("step paid")
    assert attrs(waiting)["asaga.outcome"] == "parked"
    assert waiting.end_time == run.end_time
    (event,) = waiting.events
    assert event.name == "step_waiting"
    assert dict(event.attributes or {})["asaga.wait"] == "event"
    assert dict(event.attributes or {})["asaga.wait.key"] == "pay:o-1"
    assert telemetry.otel.open_spans == 0
    assert telemetry.points("asaga.runs.parked") == {frozenset({("asaga.saga", "Awaiting")}): 1}

    telemetry.spans.clear()
    delivery = await Awaiting.deliver("pay:o-1", {"amount": 3}, runs=store, hooks=[telemetry.hook])
    assert delivery.status == "succeeded"
    resumed = telemetry.one("saga Awaiting")
    assert attrs(resumed)["asaga.run_id"] == parked.value.run_id
    assert attrs(resumed)["asaga.outcome"] == "succeeded"
    assert parent_of(telemetry.one("step ship"), telemetry.finished()) is resumed
    assert telemetry.otel.open_spans == 0


async def test_a_step_waiting_in_its_process_has_a_waiting_event(
    telemetry: Telemetry,
) -> None:
    """Without a store the waiting step's span lasts until the event is delivered, with a
    ``step_waiting`` event where the wait began."""
    waits = anyio.Event()
    order = f"o-{uuid.uuid4().hex}"  # the in-process mailbox outlives the test: a fresh key

    def waiting(event: Event) -> None:
        if event.kind == "step_waiting":
            waits.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Awaiting.run(order_id=order, hooks=[telemetry.hook, waiting]))
        await waits.wait()
        await Awaiting.deliver(f"pay:{order}", {"amount": 4})

    span = telemetry.one("step paid")
    assert attrs(span)["asaga.outcome"] == "succeeded"
    assert [e.name for e in span.events] == ["step_waiting"]
    assert span.events[0].timestamp < (span.end_time or 0)


# -- metrics ---------------------------------------------------------------------------------


async def test_metrics_count_runs_steps_and_compensations(telemetry: Telemetry) -> None:
    """Counters of runs (started, succeeded, failed), failed and retried steps and
    compensations; histograms of step and run durations, in seconds."""
    for _ in range(3):
        await Order.run(sku="p1", card="visa", hooks=[telemetry.hook])
    with pytest.raises(SagaFailed):
        await Order.run(sku="p1", card="expired", hooks=[telemetry.hook])
    with pytest.raises(SagaFailed):
        await Shipment.run(order="o-1", hooks=[telemetry.hook])

    order, shipment = ("asaga.saga", "Order"), ("asaga.saga", "Shipment")
    assert telemetry.points("asaga.runs.started") == {
        frozenset({order}): 4,
        frozenset({shipment}): 1,
    }
    assert telemetry.points("asaga.runs.succeeded") == {frozenset({order}): 3}
    assert telemetry.points("asaga.runs.failed") == {
        frozenset({order}): 1,
        frozenset({shipment}): 1,
    }
    assert telemetry.points("asaga.steps.failed") == {
        frozenset({order, ("asaga.step", "charge")}): 1,
        frozenset({shipment, ("asaga.step", "dispatch")}): 1,
    }
    assert telemetry.points("asaga.steps.retried") == {
        frozenset({shipment, ("asaga.step", "dispatch")}): 2,
    }
    assert telemetry.points("asaga.compensations.succeeded") == {
        frozenset({order, ("asaga.step", "reserve")}): 1,
        frozenset({shipment, ("asaga.step", "label")}): 1,
        frozenset({shipment, ("asaga.step", "pack")}): 1,
    }
    assert telemetry.points("asaga.compensations.failed") == {}

    runs = telemetry.points("asaga.run.duration")
    assert runs[frozenset({order, ("asaga.outcome", "succeeded")})].count == 3
    assert runs[frozenset({order, ("asaga.outcome", "failed")})].count == 1
    steps = telemetry.points("asaga.step.duration")
    reserve = steps[frozenset({order, ("asaga.step", "reserve"), ("asaga.outcome", "succeeded")})]
    assert reserve.count == 4
    assert reserve.sum >= 0
    assert reserve.explicit_bounds[0] == 0.005  # seconds, not the SDK's millisecond default
    dispatch = {
        outcome: steps[
            frozenset({shipment, ("asaga.step", "dispatch"), ("asaga.outcome", outcome)})
        ]
        for outcome in ("retrying", "failed")
    }
    assert (dispatch["retrying"].count, dispatch["failed"].count) == (2, 1)
    compensations = telemetry.points("asaga.compensation.duration")
    assert sum(point.count for point in compensations.values()) == 3


async def test_lease_waits_are_timed_through_the_wrapped_provider(
    telemetry: Telemetry,
) -> None:
    """A provider wrapped by ``locks()`` times each lease wait: the histogram
    ``asaga.lease.wait`` (outcome ``acquired``, or the error) and a ``lease_wait`` event on
    the step's span; the provider's own attributes show through."""
    provider = MemoryLockProvider()
    timed = telemetry.otel.locks(provider)
    assert timed.is_current  # type: ignore[attr-defined]  # the provider's own method
    await Locked.run(sku="a", locks=timed, hooks=[telemetry.hook])

    span = telemetry.one("step take")
    (event,) = span.events
    assert event.name == "lease_wait"
    assert dict(event.attributes or {})["asaga.lease.keys"] == ("stock:a",)
    assert dict(event.attributes or {})["asaga.outcome"] == "acquired"
    assert attrs(span)["asaga.lease.wait"] >= 0

    async with provider.lease("stock:b", ttl=5.0):  # held: the step cannot have it
        with pytest.raises(SagaFailed) as failed:
            await Locked.run(sku="b", locks=timed, hooks=[telemetry.hook])
    assert isinstance(failed.value.__cause__, LeaseTimeout)

    waits = telemetry.points("asaga.lease.wait")
    labels = {("asaga.saga", "Locked"), ("asaga.step", "take")}
    assert waits[frozenset({*labels, ("asaga.outcome", "acquired")})].count == 1
    assert waits[frozenset({*labels, ("asaga.outcome", "LeaseTimeout")})].count == 1


# -- bounds ----------------------------------------------------------------------------------


async def test_many_runs_leave_nothing_open(telemetry: Telemetry) -> None:
    """However many runs, concurrent, failing or composed, once they end no span is open
    and nothing is kept for them."""

    async def one(i: int) -> None:
        try:
            if i % 3 == 0:
                await Checkout.run(amount=i, fail=i % 2 == 0, hooks=[telemetry.hook])
            else:
                await Order.run(
                    sku=f"p{i}", card="expired" if i % 2 else "visa", hooks=[telemetry.hook]
                )
        except SagaFailed:
            pass

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(one, i)
    assert telemetry.otel.open_spans == 0
    assert len(telemetry.named("saga Order")) == 200


def test_open_spans_are_bounded(telemetry: Telemetry) -> None:
    """Events whose ends never come (a run on a process that died, a hook added
    mid-run) never keep more than ``max_open_spans`` spans open: the oldest are ended,
    ``unfinished``, with what they hold."""
    bounded = OpenTelemetry(tracer_provider=telemetry.provider, max_open_spans=10)
    for i in range(50):
        bounded.hook(RunStarted(saga="Lost", run_id=f"r{i}"))
        bounded.hook(StepStarted(saga="Lost", run_id=f"r{i}", step="s", path="s", attempt=1))
        assert bounded.open_spans <= 10
    ended = telemetry.finished()
    assert len(ended) == 100 - bounded.open_spans
    assert {attrs(s)["asaga.outcome"] for s in ended} == {"unfinished"}
    assert {attrs(s)["asaga.run_id"] for s in ended} == {f"r{i}" for i in range(45)}
    with pytest.raises(ValueError, match="max_open_spans"):
        OpenTelemetry(max_open_spans=0)
