"""What the dashboard's pages show, as plain data: no HTML here (the templates escape
everything they are given), no framework.

- :func:`graph` is the saga's Mermaid flowchart (:func:`asaga.to_mermaid`) with one
  class per step saying where it stands in a run (``succeeded``, ``failed``, ``waiting``,
  ``compensated``...), drawn in the browser by the vendored Mermaid;
- :func:`run_view` decodes a record's inputs and results (MessagePack, without the
  saga's types) and passes each value through the ``redact`` hook before it is shown;
- :func:`timeline` lists the events with their offset, attempt, duration and error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from .._exceptions import WaitInfo
from .._render import _ids, to_mermaid
from .._run import SagaSpec
from .._saga import Saga
from ..runs import RunRecord, StepRecord
from ..runs._show import describe_wait, when

__all__ = [
    "STATE_STYLES",
    "Field",
    "Redact",
    "RunView",
    "Shown",
    "TimelineRow",
    "graph",
    "run_view",
    "shown_by",
    "step_state",
    "timeline",
    "waits_cell",
    "when",
]

Field = Literal["input", "result", "error", "wait", "outcome"]
"""What a value given to ``redact`` is: an input of the run, a step's result, an error
text (a step's, a compensation's, the run's, an event's), what a parked step waits for
(a halt's reason, an event's key), or the outcome of an operator's action."""

Redact = Callable[[str, Field, str, Any], Any]
"""``redact(saga, field, name, value) -> value shown``: called before a page (or
``/runs.json``) shows a value, with ``field`` and ``name``:

- ``"input"``: an input of the run, ``name`` the input;
- ``"result"``: a step's result, ``name`` the step;
- ``"error"``: an error text, ``name`` the step, or ``"run"``;
- ``"wait"``: a halted step's reason or the key of the event a step waits for, ``name``
  the step;
- ``"outcome"``: the outcome of an action (undo, resume...) as the result page shows it
  and the run's events record it, ``name`` the action; on a run page's timeline, each
  operator action's outcome and who did it (``OperatorAction.by``), ``name`` the action.

Return the value to show (the same, a masked one, ``"***"``...)."""

Shown = Callable[[Field, str, Any], Any]
"""``shown(field, name, value)``: ``redact`` bound to one run's saga."""


def shown_by(redact: Redact | None, saga: str) -> Shown:
    """The values of a run of ``saga`` as ``redact`` lets them be shown."""

    def shown(field: Field, name: str, value: Any) -> Any:
        return redact(saga, field, name, value) if redact is not None else value

    return shown


def _as_is(field: Field, name: str, value: Any) -> Any:
    return value


STATE_STYLES: Mapping[str, str] = {
    "pending": "fill:#f4f4f5,stroke:#a1a1aa,color:#52525b,stroke-dasharray:4 3",
    "running": "fill:#dbeafe,stroke:#2563eb,color:#1e3a8a",
    "in_doubt": "fill:#fef9c3,stroke:#ca8a04,color:#713f12,stroke-width:3px",
    "waiting": "fill:#ede9fe,stroke:#7c3aed,color:#4c1d95",
    "succeeded": "fill:#dcfce7,stroke:#16a34a,color:#14532d",
    "failed": "fill:#fee2e2,stroke:#dc2626,color:#7f1d1d",
    "skipped": "fill:#f4f4f5,stroke:#71717a,color:#3f3f46",
    "cancelled": "fill:#ffedd5,stroke:#ea580c,color:#7c2d12",
    "compensated": "fill:#e0f2fe,stroke:#0284c7,color:#0c4a6e",
    "compensation_failed": "fill:#fecaca,stroke:#991b1b,color:#450a0a,stroke-width:3px",
}
"""The Mermaid style of each step state (a ``classDef`` per state)."""


def step_state(step: StepRecord | None, run_finished: bool) -> str:
    """Where a step stands, as one of :data:`STATE_STYLES`: its compensation first (a
    compensated step is drawn as such), then its own status. A step still ``running`` in
    a run that has finished (or whose process died) is ``in_doubt``."""
    if step is None:
        return "pending"
    if step.compensation == "failed":
        return "compensation_failed"
    if step.compensation == "succeeded":
        return "compensated"
    if step.status == "running":
        return "in_doubt" if run_finished else "running"
    return step.status


def graph(saga: type[Saga], record: RunRecord) -> str:
    """The Mermaid flowchart of ``saga`` with each step classed by its state in
    ``record`` (and the ``classDef`` of every state used)."""
    spec: SagaSpec | None = saga.__asaga__
    text = to_mermaid(saga)
    if spec is None:  # pragma: no cover - to_mermaid refuses a saga without steps
        return text
    plan = spec.plan
    ids = _ids([*plan.order, *plan.inputs])  # the ids to_mermaid gave the boxes
    by_state: dict[str, list[str]] = {}
    for name in plan.order:
        state = step_state(record.steps.get(name), record.finished)
        by_state.setdefault(state, []).append(ids[name])
    lines = [text.rstrip("\n")]
    for state, members in by_state.items():
        lines.append(f"    classDef {state} {STATE_STYLES[state]}")
        lines.append(f"    class {','.join(members)} {state}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class StepView:
    """One step of a run page's step table."""

    name: str
    state: str
    attempt: int
    started: str
    duration: str
    result: str
    error: str
    compensation: str
    children: tuple[str, ...]
    wait: str


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One event of a run page's timeline."""

    offset: str
    at: str
    kind: str
    where: str
    attempt: int
    duration: str
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class RunView:
    """A run page's content, decoded and redacted."""

    record: RunRecord
    inputs: list[tuple[str, str]]
    steps: list[StepView]
    timeline: list[TimelineRow]
    waits: list[str]
    error: str


def run_view(record: RunRecord, spec: SagaSpec | None, redact: Redact | None) -> RunView:
    """Everything a run page shows of ``record``, each value passed through ``redact``.

    Steps are listed in the saga's plan order when the saga is known (those that never
    started too, as ``pending``), else in the record's order."""
    shown = shown_by(redact, record.saga)
    inputs_value = _decode(record.inputs)
    inputs: list[tuple[str, str]] = []
    if isinstance(inputs_value, dict):
        for name, value in inputs_value.items():
            inputs.append((str(name), _json(shown("input", str(name), value))))
    elif inputs_value is not None:
        inputs.append(("(inputs)", _json(shown("input", "", inputs_value))))
    order = list(spec.plan.order) if spec is not None else list(record.steps)
    order += [name for name in record.steps if name not in order]
    steps: list[StepView] = []
    for name in order:
        step = record.steps.get(name)
        if step is None:
            steps.append(StepView(name, "pending", 0, "", "", "", "", "", (), ""))
            continue
        result = "" if step.result is None else _json(shown("result", name, _decode(step.result)))
        error = "" if step.error is None else str(shown("error", name, step.error))
        compensation: str = step.compensation or ""
        if step.compensation_error:
            undo_error = str(shown("error", name, step.compensation_error))
            compensation += f": {undo_error}"
        steps.append(
            StepView(
                name=name,
                state=step_state(step, record.finished),
                attempt=step.attempt,
                started=when(step.started_at) if step.started_at else "",
                duration=_duration(step.started_at, step.ended_at),
                result=result,
                error=error,
                compensation=compensation,
                children=step.children,
                wait=describe_wait(step.wait, shown) if step.wait is not None else "",
            )
        )
    error = "" if record.error is None else str(shown("error", "run", record.error))
    return RunView(
        record=record,
        inputs=inputs,
        steps=steps,
        timeline=timeline(record, shown),
        waits=[f"{w.step}: {describe_wait(w, shown)}" for w in record.waits],
        error=error,
    )


def timeline(record: RunRecord, shown: Callable[[Field, str, Any], Any]) -> list[TimelineRow]:
    """The run's events in order: offset from the first, attempt, duration, error."""
    if not record.events:
        return []
    start = record.events[0].timestamp
    rows: list[TimelineRow] = []
    for event in record.events:
        where = event.path or event.step or ""
        error = ""
        if event.error:
            error = str(shown("error", event.step or "run", event.error))
        detail = ""
        if event.kind == "operator_action":
            # Redacted here too: an action noted by another process (the CLI, the
            # application) was not, and ``by`` may name a person.
            action = str(getattr(event, "action", ""))
            by = getattr(event, "by", None)
            by = str(shown("outcome", action, by)) if by else "an operator"
            outcome = shown("outcome", action, getattr(event, "outcome", ""))
            detail = f"{action} by {by}: {outcome}"
        rows.append(
            TimelineRow(
                offset=f"+{(event.timestamp - start) * 1000:.1f} ms",
                at=when(event.timestamp),
                kind=event.kind,
                where=where,
                attempt=event.attempt,
                duration="" if event.duration is None else f"{event.duration * 1000:.1f} ms",
                error=error,
                detail=detail,
            )
        )
    return rows


def _duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start) * 1000:.1f} ms"


def _decode(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return f"<{len(data)} bytes that do not decode>"


def _json(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def waits_cell(waits: Sequence[WaitInfo], shown: Shown = _as_is) -> str:
    """What a parked run waits for, in one table cell (keys and reasons as ``shown``)."""
    return "; ".join(f"{w.step}: {describe_wait(w, shown)}" for w in waits)
