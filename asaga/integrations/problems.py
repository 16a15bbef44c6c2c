"""Framework-neutral HTTP answers for asaga's errors, shared by the web integrations.

:func:`problem_for` maps an exception to a :class:`Problem`: an RFC 9457 body, its status
and its headers; each integration only turns that into its framework's response.
:func:`fingerprint` identifies a request for idempotency keys.

=================================  ======  ===============================================
exception                          status  members besides ``type``, ``title``,
                                           ``status``, ``detail``
=================================  ======  ===============================================
``InputValidationError``           422     ``saga``, ``errors`` (``[{field, message}]``)
``MalformedBody``                  400
``SagaFailed``                     409     ``saga``, ``run_id``, ``step``,
                                           ``compensated``, ``cause`` (the step
                                           exception's type name)
``CompensationFailed``             500     as ``SagaFailed``, plus
                                           ``failed_compensations``
``IdempotencyKeyReused``           422     ``key``
an infrastructure error (below)    503     ``cause``; for a ``SagaFailed``, as above.
                                           Header ``Retry-After``
=================================  ======  ===============================================

A failed saga was fully undone: the request conflicted with the state of the world (409).
A saga whose undo failed left something in place that needs a human (500). ``cause``
names the exception's type only, as its message may hold internal details.

**Infrastructure errors** (:func:`is_unavailable`) say that the service could not do its
work now, not that the request was wrong: Redis unreachable or too slow
(``redis.exceptions.ConnectionError`` and ``TimeoutError``), a network ``OSError``
(``ConnectionError``, ``TimeoutError``, an unreachable host; not the file system's
``FileNotFoundError``, ``PermissionError``...), a run store that cannot be reached
(:class:`~asaga.StoreUnavailable`), a lease that could not be had or was lost
(:class:`~asaga.locks.LeaseError`), and a :class:`~asaga.SagaFailed` (fully undone, no
step in doubt) whose ``__cause__`` is one of those. They are answered 503 with
``Retry-After``, and the idempotency integrations never store them as a key's outcome: a
retry with the same key runs again. A :class:`~asaga.CompensationFailed` stays a 500
whatever its cause, and so does a failure with a step in doubt: retrying is not safe.

Problem bodies never echo much of the request: each echoed value (a field name, a
validation message, which may quote the bad value) is cut to :data:`MAX_ECHO`
characters, at most :data:`MAX_ERRORS` fields are listed, and ``detail`` does not repeat
them, so a 5 MB bad field gives a response of a few hundred bytes.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgspec

from .._exceptions import (
    CompensationFailed,
    DuplicateEvent,
    EventRefused,
    IdempotencyKeyReused,
    InputValidationError,
    InvalidEvent,
    MalformedBody,
    NotParked,
    RunParked,
    SagaFailed,
    StoreUnavailable,
)
from ..locks import LeaseError

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "MAX_ECHO",
    "MAX_ERRORS",
    "PROBLEM_COMPENSATION_FAILED",
    "PROBLEM_DUPLICATE_EVENT",
    "PROBLEM_EVENT_REFUSED",
    "PROBLEM_IDEMPOTENCY_KEY_INVALID",
    "PROBLEM_IDEMPOTENCY_KEY_IN_USE",
    "PROBLEM_IDEMPOTENCY_KEY_REUSED",
    "PROBLEM_INVALID_EVENT",
    "PROBLEM_INVALID_INPUTS",
    "PROBLEM_JSON",
    "PROBLEM_MALFORMED_BODY",
    "PROBLEM_NOT_PARKED",
    "PROBLEM_SAGA_FAILED",
    "PROBLEM_UNAVAILABLE",
    "REPLAYED_HEADER",
    "RETRY_AFTER",
    "Problem",
    "clip",
    "fingerprint",
    "http_problem",
    "infrastructure_errors",
    "invalid_body",
    "is_unavailable",
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
PROBLEM_MALFORMED_BODY = "urn:asaga:problem:malformed-body"
PROBLEM_SAGA_FAILED = "urn:asaga:problem:saga-failed"
PROBLEM_COMPENSATION_FAILED = "urn:asaga:problem:compensation-failed"
PROBLEM_UNAVAILABLE = "urn:asaga:problem:unavailable"
PROBLEM_IDEMPOTENCY_KEY_REUSED = "urn:asaga:problem:idempotency-key-reused"
PROBLEM_IDEMPOTENCY_KEY_INVALID = "urn:asaga:problem:invalid-idempotency-key"
PROBLEM_IDEMPOTENCY_KEY_IN_USE = "urn:asaga:problem:idempotency-key-in-use"
PROBLEM_INVALID_EVENT = "urn:asaga:problem:invalid-event"
PROBLEM_DUPLICATE_EVENT = "urn:asaga:problem:duplicate-event"
PROBLEM_EVENT_REFUSED = "urn:asaga:problem:event-refused"
PROBLEM_NOT_PARKED = "urn:asaga:problem:not-parked"

RETRY_AFTER = 5
"""Seconds a 503 asks the client to wait (``Retry-After``) unless told otherwise."""
MAX_ECHO = 200
"""Characters kept of each value a problem body echoes (field names, messages)."""
MAX_ERRORS = 20
"""Fields listed at most in a 422's ``errors`` (the count of the others is given)."""
_MAX_DETAIL = 500

# The file system's OSErrors: a bug or a misconfiguration, not a service that is down.
_LOCAL_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@dataclass(frozen=True, slots=True)
class Problem:
    """An HTTP problem answer: status, RFC 9457 body and extra response headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def problem(
    status: int, type: str, title: str, detail: str | None = None, **members: Any
) -> dict[str, Any]:
    """An RFC 9457 problem body."""
    body: dict[str, Any] = {"type": type, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    body.update(members)
    return body


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters (saying how long it was) for echoing it."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


@functools.cache
def infrastructure_errors() -> tuple[type[Exception], ...]:
    """The exception types that can report an unavailable infrastructure, to register
    handlers for: :class:`~asaga.StoreUnavailable`, :class:`~asaga.locks.LeaseError`,
    ``OSError`` and, when redis-py is installed, its ``ConnectionError`` and
    ``TimeoutError``. (:func:`is_unavailable` has the last word: not every ``OSError``
    is one.)"""
    try:  # redis is an optional dependency
        from redis.exceptions import ConnectionError, TimeoutError
    except ImportError:  # pragma: no cover - redis is installed with the extras
        return (StoreUnavailable, LeaseError, OSError)
    return (StoreUnavailable, LeaseError, OSError, ConnectionError, TimeoutError)


def _infrastructure(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, BaseExceptionGroup):
        return all(_infrastructure(e) for e in exc.exceptions)
    return isinstance(exc, infrastructure_errors()) and not isinstance(exc, _LOCAL_OS_ERRORS)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says that a service the work needs is unavailable (see the module
    docstring): worth a retry later (503), never an outcome to store for an idempotency
    key. A ``SagaFailed`` counts when its ``__cause__`` does, it was fully undone and no
    step is in doubt."""
    if isinstance(exc, SagaFailed):
        if isinstance(exc, CompensationFailed) or exc.in_doubt:
            return False
        return _infrastructure(exc.__cause__)
    return _infrastructure(exc)


def problem_for(exc: BaseException, *, retry_after: int = RETRY_AFTER) -> Problem | None:
    """The problem answer for ``exc`` (see the table above), or None if it has none (an
    ordinary bug: let the framework answer 500). ``retry_after`` is the ``Retry-After``
    of a 503."""
    if is_unavailable(exc):
        return _unavailable(exc, retry_after)
    if isinstance(exc, InputValidationError):
        shown = exc.errors[:MAX_ERRORS]
        members: dict[str, Any] = {
            "saga": exc.saga,
            "errors": [{"field": clip(e.field), "message": clip(e.message)} for e in shown],
        }
        if len(exc.errors) > len(shown):
            members["more_errors"] = len(exc.errors) - len(shown)
        count = len(exc.errors)
        detail = f"{count} invalid input{'s' if count != 1 else ''} for saga {exc.saga}"
        return _problem(
            422, PROBLEM_INVALID_INPUTS, "Invalid input", f"{detail}; see errors", **members
        )
    if isinstance(exc, MalformedBody):
        return _problem(400, PROBLEM_MALFORMED_BODY, "Malformed request body", clip(exc.reason))
    if isinstance(exc, SagaFailed):
        members = _failure(exc)
        if isinstance(exc, CompensationFailed):
            return _problem(
                500,
                PROBLEM_COMPENSATION_FAILED,
                "The request failed and could not be fully undone",
                clip(str(exc), _MAX_DETAIL),
                failed_compensations=list(exc.failed_compensations),
                **members,
            )
        return _problem(
            409,
            PROBLEM_SAGA_FAILED,
            "The request failed and was undone",
            clip(str(exc), _MAX_DETAIL),
            **members,
        )
    if isinstance(exc, EventRefused):
        return _event_problem(exc)
    if isinstance(exc, NotParked):
        return _problem(
            409,
            PROBLEM_NOT_PARKED,
            "The run is not parked",
            clip(str(exc), _MAX_DETAIL),
            run_id=exc.run_id,
            run_status=exc.status,
        )
    if isinstance(exc, RunParked):
        # Not a failure: the run waits (an event, a timer, a resume). 202, with what for.
        waits = [
            {k: v for k, v in msgspec.structs.asdict(w).items() if v not in (None, ())}
            for w in exc.waits
        ]
        body = {"saga": exc.saga, "run_id": exc.run_id, "status": "waiting", "waits": waits}
        return Problem(202, body)
    if isinstance(exc, IdempotencyKeyReused):
        return _problem(
            422,
            PROBLEM_IDEMPOTENCY_KEY_REUSED,
            "Idempotency key reused",
            f"this {IDEMPOTENCY_KEY_HEADER} was already used for a different request; "
            "use a new key for a new request",
            key=clip(exc.key),
        )
    return None


def http_problem(
    status: int, detail: str | None = None, headers: Mapping[str, str] | None = None
) -> Problem:
    """The problem answer of a framework's own HTTP error (a route not found, a method
    not allowed, a body too large): ``about:blank`` with the status's phrase as title,
    its headers (``Allow``...) kept."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    shown = clip(detail) if detail and detail != title else None
    return Problem(status, problem(status, "about:blank", title, shown), dict(headers or {}))


def invalid_body(errors: Sequence[tuple[str, str]]) -> Problem:
    """422 for a request body a framework's own validation refused (``(field, message)``
    pairs), like a saga's invalid inputs."""
    shown = errors[:MAX_ERRORS]
    members: dict[str, Any] = {"errors": [{"field": clip(f), "message": clip(m)} for f, m in shown]}
    if len(errors) > len(shown):
        members["more_errors"] = len(errors) - len(shown)
    count = len(errors)
    detail = f"{count} invalid field{'s' if count != 1 else ''} in the request; see errors"
    return _problem(422, PROBLEM_INVALID_INPUTS, "Invalid input", detail, **members)


def _event_problem(exc: EventRefused) -> Problem:
    """422 an invalid payload (``errors`` as for bad inputs; ``run_failed`` if it was one
    bad payload too many), 409 a duplicate, 409 a key whose run no longer waits (or that
    no step waits for)."""
    members: dict[str, Any] = {"key": clip(exc.key)}
    if exc.run_id is not None:
        members["run_id"] = exc.run_id
    if isinstance(exc, InvalidEvent):
        # msgspec says "Expected `int` >= 1 - at `$.quantity`" (no "at": the whole payload)
        message, at, where = exc.errors.rpartition(" - at `")
        error = {
            "field": clip(where.removesuffix("`") if at else "$"),
            "message": clip(message if at else exc.errors),
        }
        detail = "the payload does not fit the event's type; see errors" + (
            "; that was one bad payload too many: the run failed and was undone"
            if exc.run_failed
            else ""
        )
        return _problem(
            422,
            PROBLEM_INVALID_EVENT,
            "Invalid event payload",
            detail,
            errors=[error],
            run_failed=exc.run_failed,
            **members,
        )
    if isinstance(exc, DuplicateEvent):
        return _problem(
            409,
            PROBLEM_DUPLICATE_EVENT,
            "Event already delivered",
            "an event for this key was delivered already; it is not taken twice",
            **members,
        )
    return _problem(
        409, PROBLEM_EVENT_REFUSED, "Event refused", clip(exc.reason, _MAX_DETAIL), **members
    )


def _problem(status: int, type: str, title: str, detail: str, **members: Any) -> Problem:
    return Problem(status, problem(status, type, title, detail, **members))


def _failure(exc: SagaFailed) -> dict[str, Any]:
    cause = exc.__cause__
    return {
        "saga": exc.saga,
        "run_id": exc.run_id,
        "step": exc.step,
        "cause": None if cause is None else type(cause).__name__,
        "compensated": list(exc.compensated),
    }


def _unavailable(exc: BaseException, retry_after: int) -> Problem:
    if isinstance(exc, SagaFailed):
        members = _failure(exc)
        detail = (
            f"saga {exc.saga} (run {exc.run_id}) stopped at step {exc.step!r}: a service it "
            f"needs is unavailable ({members['cause']}); its completed steps were undone "
            f"({members['compensated']}). Retry in {retry_after} s"
        )
    else:
        members = {"cause": type(exc).__name__}
        detail = f"a service this request needs is unavailable; retry in {retry_after} s"
    body = problem(
        503, PROBLEM_UNAVAILABLE, "Service unavailable", clip(detail, _MAX_DETAIL), **members
    )
    return Problem(503, body, {"Retry-After": str(retry_after)})


def fingerprint(method: str, target: str, body: bytes) -> str:
    """SHA-256 (hex) of a request's method, target (path and query string) and body.

    A JSON body counts by what it says, not how it is written: whitespace and the order of
    an object's keys make no difference (it is re-encoded canonically first)."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), target.encode(), _canonical(body)):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
        digest.update(part)
    return digest.hexdigest()


def _canonical(body: bytes) -> bytes:
    """A JSON body re-encoded with sorted keys and no whitespace; any other body as is."""
    if not body:
        return body
    try:
        return msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except (msgspec.DecodeError, UnicodeDecodeError):
        return body
