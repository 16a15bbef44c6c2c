"""Plain-text views of recorded runs, for ``asaga runs list`` and ``asaga runs show``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ._record import Quarantined, RunRecord

__all__ = ["format_quarantined", "format_run", "format_runs"]

_WIDTH = 60  # characters of a result or an error shown in a table cell


def format_runs(records: Sequence[RunRecord]) -> str:
    """One line per run, newest first: id, saga, status, when, where it failed."""
    if not records:
        return "no runs recorded\n"
    rows = [("RUN", "SAGA", "STATUS", "CREATED (UTC)", "FAILED STEP")]
    rows += [
        (r.run_id, r.saga, r.status, _when(r.created_at), r.failed_step or "") for r in records
    ]
    return _table(rows)


def format_quarantined(runs: Sequence[Quarantined]) -> str:
    """Runs set aside by recovery, newest first: id, saga, when, why (in full: the reason
    says what to do)."""
    rows = [("QUARANTINED RUN", "SAGA", "SINCE (UTC)", "REASON")]
    rows += [(q.run_id, q.saga or "-", _when(q.quarantined_at), q.reason) for q in runs]
    return _table(rows)


def format_run(record: RunRecord) -> str:
    """One run: who and what, its steps, and the timeline of its events."""
    lines = [
        f"run {record.run_id}",
        f"  saga      {record.saga} (saga_version {record.saga_version})",
        f"  status    {record.status}",
        f"  created   {_when(record.created_at)}   updated {_when(record.updated_at)}",
        f"  owner     {record.owner or '-'}",
    ]
    if record.idempotency_key is not None:
        lines.append(f"  key       {record.idempotency_key}")
    lines.append(f"  inputs    {_short(_plain(record.inputs))}")
    if record.failed_step is not None or record.error is not None:
        lines.append(f"  failed    at {record.failed_step or '-'}: {record.error or ''}")
    lines.append("")
    rows = [("STEP", "STATUS", "ATTEMPT", "COMPENSATION", "RESULT OR ERROR")]
    for name, step in record.steps.items():
        compensation: str = step.compensation or "-"
        if step.compensation_attempt > 1:
            compensation += f" ({step.compensation_attempt} attempts)"
        shown = step.error or (_short(_plain(step.result)) if step.result is not None else "")
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
            lines.append(
                f"  +{(event.timestamp - start) * 1000:8.1f} ms  {event.kind:<23} "
                f"{where}{attempt}{error}".rstrip()
            )
    return "\n".join(lines) + "\n"


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


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
