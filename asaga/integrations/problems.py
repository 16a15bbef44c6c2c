"""Framework-neutral HTTP answers for asaga's errors, shared by the web integrations.

:func:`problem_for` maps an exception to an RFC 9457 problem (status and body members);
each integration only turns that into its framework's response. :func:`fingerprint`
identifies a request for idempotency keys.

============================  ======  ====================================================
exception                     status  members besides ``type``, ``title``, ``status``,
                                      ``detail``
============================  ======  ====================================================
``InputValidationError``      422     ``saga``, ``errors`` (``[{field, message}]``)
``SagaFailed``                409     ``saga``, ``run_id``, ``step``, ``compensated``,
                                      ``cause`` (the step exception's type name)
``CompensationFailed``        500     as ``SagaFailed``, plus ``failed_compensations``
``IdempotencyKeyReused``      422     ``key``
============================  ======  ====================================================

A failed saga was fully undone: the request conflicted with the state of the world (409)
and may be retried. A saga whose undo failed left something in place that needs a human
(500). ``cause`` names the step exception's type only, as its message may hold internal
details.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .._exceptions import CompensationFailed, InputValidationError, SagaFailed
from .idempotency import IdempotencyKeyReused

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "PROBLEM_COMPENSATION_FAILED",
    "PROBLEM_IDEMPOTENCY_KEY_INVALID",
    "PROBLEM_IDEMPOTENCY_KEY_IN_USE",
    "PROBLEM_IDEMPOTENCY_KEY_REUSED",
    "PROBLEM_INVALID_INPUTS",
    "PROBLEM_JSON",
    "PROBLEM_SAGA_FAILED",
    "REPLAYED_HEADER",
    "fingerprint",
    "problem",
    "problem_for",
]

PROBLEM_JSON = "application/problem+json"
"""The media type of RFC 9457 problem details."""
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
"""The request header carrying the idempotency key."""
REPLAYED_HEADER = "Idempotent-Replayed"
"""Set to ``true`` on a response replayed for a repeated idempotency key."""

PROBLEM_INVALID_INPUTS = "urn:asaga:problem:invalid-input"
PROBLEM_SAGA_FAILED = "urn:asaga:problem:saga-failed"
PROBLEM_COMPENSATION_FAILED = "urn:asaga:problem:compensation-failed"
PROBLEM_IDEMPOTENCY_KEY_REUSED = "urn:asaga:problem:idempotency-key-reused"
PROBLEM_IDEMPOTENCY_KEY_INVALID = "urn:asaga:problem:invalid-idempotency-key"
PROBLEM_IDEMPOTENCY_KEY_IN_USE = "urn:asaga:problem:idempotency-key-in-use"


def problem(
    status: int, type: str, title: str, detail: str | None = None, **members: Any
) -> dict[str, Any]:
    """An RFC 9457 problem body."""
    body: dict[str, Any] = {"type": type, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(members)
    return body


def problem_for(exc: BaseException) -> dict[str, Any] | None:
    """The problem body for one of asaga's errors (see the table above); else None."""
    if isinstance(exc, InputValidationError):
        return problem(
            422,
            PROBLEM_INVALID_INPUTS,
            "Invalid input",
            str(exc),
            saga=exc.saga,
            errors=[{"field": e.field, "message": e.message} for e in exc.errors],
        )
    if isinstance(exc, SagaFailed):
        cause = exc.__cause__
        members: dict[str, Any] = {
            "saga": exc.saga,
            "run_id": exc.run_id,
            "step": exc.step,
            "cause": None if cause is None else type(cause).__name__,
            "compensated": list(exc.compensated),
        }
        if isinstance(exc, CompensationFailed):
            return problem(
                500,
                PROBLEM_COMPENSATION_FAILED,
                "The request failed and could not be fully undone",
                str(exc),
                failed_compensations=list(exc.failed_compensations),
                **members,
            )
        return problem(
            409, PROBLEM_SAGA_FAILED, "The request failed and was undone", str(exc), **members
        )
    if isinstance(exc, IdempotencyKeyReused):
        return problem(
            422, PROBLEM_IDEMPOTENCY_KEY_REUSED, "Idempotency key reused", str(exc), key=exc.key
        )
    return None


def fingerprint(method: str, target: str, body: bytes) -> str:
    """SHA-256 (hex) of a request's method, target (path and query string) and body."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), target.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
        digest.update(part)
    return digest.hexdigest()
