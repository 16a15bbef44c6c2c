"""What a finished run's record says, as a caller sees it: its result (a replay), its
failure raised again, its values for compensating it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .._exceptions import (
    CompensationFailed,
    RecordedError,
    SagaFailed,
)
from .._run import ReadOnly, SagaResult, SagaSpec
from ._codec import codec_of, recorded_values
from ._record import RunRecord


def replayed(spec: SagaSpec, record: RunRecord, *, again: bool = True) -> SagaResult[Any]:
    """The recorded outcome of a finished run: its result, or its failure raised.
    ``again``: the caller did not start that run (``SagaResult.replayed``)."""
    if record.status in ("succeeded", "undoing", "undone", "undo_failed"):
        results = recorded_results(spec, record)
        plan = spec.plan
        return SagaResult._create(
            run_id=record.run_id,
            output=results.get(plan.output) if plan.output is not None else None,
            results=ReadOnly(results),
            replayed=again,
        )
    raise failure(spec, record)


def failure(
    spec: SagaSpec, record: RunRecord, compensated: Sequence[str] | None = None
) -> SagaFailed:
    """The failure a finished run's record says; ``compensated``: the steps undone in
    the order their compensations completed, when known (else the record's order)."""
    saga = spec.plan.saga
    step = record.failed_step or ""
    if compensated is not None:
        done = set(record.compensated)
        order = [n for n in compensated if n in done]
        record = msgspec.structs.replace(
            record,
            steps={
                **{n: record.steps[n] for n in order},
                **{n: s for n, s in record.steps.items() if n not in order},
            },
        )
    cause = RecordedError(record.error or record.status)
    failed = record.failed_compensations
    error: SagaFailed
    if failed:
        errors = [RecordedError(record.steps[n].compensation_error or "failed") for n in failed]
        error = CompensationFailed(
            saga,
            record.run_id,
            step,
            record.compensated,
            failed,
            ExceptionGroup(f"compensations of saga {saga} failed", errors),
        )
    elif record.failed_step is None and record.status == "cancelled":
        error = SagaFailed(
            saga,
            record.run_id,
            step,
            record.compensated,
            f"saga {saga} (run {record.run_id}) was cancelled; compensated: "
            f"{list(record.compensated)}",
        )
    else:
        error = SagaFailed(saga, record.run_id, step, record.compensated)
    error.__cause__ = cause
    return error


def recorded_results(spec: SagaSpec, record: RunRecord) -> dict[str, Any]:
    codec = codec_of(spec)
    return {
        name: codec.decode_result(name, s.result, record.run_id)
        for name, s in record.steps.items()
        if s.status == "succeeded" and s.result is not None
    }


def recorded_run_values(
    spec: SagaSpec, record: RunRecord, resources: Mapping[str, Any]
) -> dict[str, Any]:
    values = recorded_values(codec_of(spec), spec.inputs, record, resources)
    values.update(recorded_results(spec, record))
    return values


def prefix_of(child_id: str) -> str:
    """The event path of a child run, from its id (``parent/step/attempt[/element]``)."""
    parts = child_id.split("/")[1:]
    if len(parts) >= 3:
        return f"{parts[0]}[{parts[2]}]"
    return parts[0] if parts else child_id
