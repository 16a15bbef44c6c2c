"""Plain-text views of recorded runs, for ``asaga runs list`` and ``asaga runs show``; and
of what ``asaga deliver``, ``resume`` and ``cancel`` did (:func:`format_delivery`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .._events import OperatorAction
from .._exceptions import CompensationFailed, RecordedError, SagaFailed, WaitInfo
from ._record import Quarantined, RunRecord

if TYPE_CHECKING:  # the type of format_delivery's argument only
    from ._parking import Delivery

__all__ = [
    "describe_wait",
    "format_delivery",
    "format_quarantined",
    "format_run",
    "format_runs",
    "when",
]

_WIDTH = 60  # characters of a result or an error shown in a table cell


def format_runs(records: Sequence[RunRecord]) -> str:
    """One line per run, newest first: id, saga, status, when, where it failed; and, when
    a run is parked, a column of what it waits for."""
    if not records:
        return "no runs recorded\n"
    rows: list[tuple[str, ...]] = [("RUN", "SAGA", "STATUS", "CREATED (UTC)", "FAILED STEP")]
    rows += [(r.run_id, r.saga, r.status, when(r.created_at), r.failed_step or "") for r in records]
    if any(r.status == "waiting" for r in records):
        waits = [_waits_cell(r) if r.status == "waiting" else "" for r in records]
        rows = [(*row, cell) for row, cell in zip(rows, ["WAITING FOR", *waits], strict=True)]
    return _table(rows)


def format_quarantined(runs: Sequence[Quarantined]) -> str:
    """Runs set aside by recovery, newest first: id, saga, when, why (in full: the reason
    says what to do)."""
    rows = [("QUARANTINED RUN", "SAGA", "SINCE (UTC)", "REASON")]
    rows += [(q.run_id, q.saga or "-", when(q.quarantined_at), q.reason) for q in runs]
    return _table(rows)


def format_run(record: RunRecord) -> str:
    """One run: who and what, its steps, and the timeline of its events."""
    lines = [
        f"run {record.run_id}",
        f"  saga      {record.saga} (saga_version {record.saga_version})",
        f"  status    {record.status}",
        f"  created   {when(record.created_at)}   updated {when(record.updated_at)}",
        f"  owner     {record.owner or '-'}",
    ]
    if record.idempotency_key is not None:
        lines.append(f"  key       {record.idempotency_key}")
    lines.append(f"  inputs    {_short(_plain(record.inputs))}")
    if record.failed_step is not None or record.error is not None:
        lines.append(f"  failed    at {record.failed_step or '-'}: {record.error or ''}")
    waiting = [
        (name, s.wait)
        for name, s in record.steps.items()
        if s.status == "waiting" and s.wait is not None
    ]
    for i, (name, wait) in enumerate(waiting):
        lines.append(f"  {'waiting' if i == 0 else '':<9} {name}: {_wait_detail(wait)}")
    lines.append("")
    rows = [("STEP", "STATUS", "ATTEMPT", "COMPENSATION", "RESULT OR ERROR")]
    for name, step in record.steps.items():
        compensation: str = step.compensation or "-"
        if step.compensation_attempt > 1:
            compensation += f" ({step.compensation_attempt} attempts)"
        shown = step.error or (_short(_plain(step.result)) if step.result is not None else "")
        if step.status == "waiting" and step.wait is not None:
            shown = describe_wait(step.wait)
        if step.compensation_error:
            shown += f"  undo: {step.compensation_error}"
        rows.append((name, step.status, str(step.attempt), compensation, _short(shown)))
    if len(rows) == 1:
        rows.append(("(no step started)", "", "", "", ""))
    lines.append(_table(rows).rstrip("\n"))
    if record.events:
        lines += ["", "timeline"]
        # Wall-clock time: a recovered run's events come from more than one process.
        start = record.events[0].timestamp
        for event in record.events:
            where = event.path or event.step or ""
            attempt = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            error = f"  {event.error}" if event.error and event.kind != "run_failed" else ""
            if isinstance(event, OperatorAction):  # not a step's: who did what, and how
                where, error = event.action, f"  by {event.by or '?'}: {event.outcome}"
            lines.append(
                f"  +{(event.timestamp - start) * 1000:8.1f} ms  {event.kind:<23} "
                f"{where}{attempt}{error}".rstrip()
            )
    return "\n".join(lines) + "\n"


def format_delivery(delivery: Delivery, action: str) -> str:
    """What ``asaga deliver`` (``action`` ``"delivered"``), ``resume`` (``"resumed"``) or
    ``cancel`` (``"cancelled"``) did: one line saying where the run stands, then its
    output, what it waits for now, or how it failed."""
    key, run = delivery.key, delivery.run_id or "-"
    if delivery.status == "kept":
        return f"kept {key}: no run waits for it yet; the first run that waits for it takes it\n"
    if delivery.status == "delivered":
        return f"delivered {key} to run {run}: it goes on in the process that drives it\n"
    what = f"{action} {key} to run {run}" if key is not None else f"{action} run {run}"
    lines = [f"{what}: {delivery.status}"]
    if delivery.result is not None:
        lines.append(f"  output       {_json(delivery.result.output)}")
    for i, wait in enumerate(delivery.waits):
        lines.append(f"  {'waiting' if i == 0 else '':<12} {wait.step}: {_wait_detail(wait)}")
    if delivery.error is not None:
        lines += _failure_lines(delivery.error)
    return "\n".join(lines) + "\n"


def _failure_lines(error: SagaFailed) -> list[str]:
    lines = []
    if error.step:
        cause = error.__cause__
        why = str(cause) if isinstance(cause, RecordedError) else repr(cause) if cause else ""
        lines.append(f"  failed       at {error.step}: {why}".rstrip())
    lines.append(f"  compensated  {', '.join(error.compensated) or '-'}")
    if isinstance(error, CompensationFailed):
        lines.append(
            f"  undo failed  {', '.join(error.failed_compensations)} (needs manual repair)"
        )
    if error.in_doubt:
        lines.append(f"  in doubt     {', '.join(error.in_doubt)}")
    return lines


def _waits_cell(record: RunRecord) -> str:
    """What a parked run waits for, for one cell of ``asaga runs list``."""
    return "; ".join(f"{w.step}: {_short(describe_wait(w))}" for w in record.waits) or "-"


def _as_is(field: str, name: str, value: Any) -> Any:
    return value


def describe_wait(wait: WaitInfo, shown: Callable[..., Any] = _as_is) -> str:
    """``event KEY until TIME UTC``, ``timer until TIME UTC``, ``halted: REASON``; the key
    and the reason as ``shown("wait", step, text)`` lets them be shown (the dashboard's
    redaction; as they are by default)."""
    until = f" until {when(wait.until)} UTC" if wait.until is not None else ""
    if wait.kind == "event":
        return f"event {shown('wait', wait.step, wait.key)}{until}"
    if wait.kind == "halt":
        return "halted" + (f": {shown('wait', wait.step, wait.reason)}" if wait.reason else "")
    return f"{wait.kind}{until}"


def _wait_detail(wait: WaitInfo) -> str:
    """What a step waits for, in full: its key, deadline (and how far it is); a halt's
    reason and how to go on."""
    if wait.kind == "halt":
        return f"{describe_wait(wait)} (asaga resume runs it again)"
    text = f"{wait.kind} {wait.key}" if wait.kind == "event" else wait.kind
    if wait.until is None:
        text += ", no deadline"
    else:
        text += f", until {when(wait.until)} UTC ({_from_now(wait.until)})"
    return text


def _from_now(until: float) -> str:
    """``in 1h 5m``, or ``passed 3m 2s ago``: how far a deadline is."""
    left = round(until - time.time())
    span = abs(left)
    hours, minutes, seconds = span // 3600, span // 60 % 60, span % 60
    if hours:
        text = f"{hours}h {minutes}m"
    elif minutes:
        text = f"{minutes}m {seconds}s"
    else:
        text = f"{seconds}s"
    return f"in {text}" if left > 0 else f"passed {text} ago"


def _json(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _plain(data: bytes | None) -> str:
    if data is None:
        return "-"
    try:
        value: Any = msgspec.msgpack.decode(data)
        return msgspec.json.encode(value).decode()
    except (msgspec.DecodeError, TypeError):
        return f"<{len(data)} bytes>"


def _short(text: str) -> str:
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def when(seconds: float) -> str:
    """A wall-clock time as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
