"""aiohttp integration: saga errors as RFC 9457 problem responses, and idempotency keys.

::

    from aiohttp import web
    from asaga.integrations.aiohttp import idempotent, saga_errors

    app = web.Application(middlewares=[saga_errors])

    async def reserve(request: web.Request) -> web.Response:
        async def work() -> web.Response:
            result = await InventorySaga.run(**inputs, **resources)
            return web.json_response({"run_id": result.run_id}, status=201)

        return await idempotent(request, request.app[IDEMPOTENCY], work)

    web.run_app(app, handler_cancellation=True)   # a client disconnect cancels the handler

:func:`saga_errors` maps what ``Saga.run()`` raises to ``application/problem+json``:

==========================  ======  =====================================================
exception                   status  meaning
==========================  ======  =====================================================
``InputValidationError``    422     bad inputs; no step ran
``SagaFailed``              409     a step failed for good; every completed step was undone
``CompensationFailed``      500     ... and undoing failed too: a human must repair it
==========================  ======  =====================================================

Bodies name ``saga``, ``run_id``, the failed ``step``, ``cause`` (the step exception's
type name only: its message may hold internals), ``compensated`` and, for a 500,
``failed_compensations``; a 422 names ``saga`` and ``errors`` (``[{field, message}]``).
Problem types are ``urn:asaga:problem:<kind>``, as in :mod:`asaga.integrations.fastapi`.

aiohttp cancels a handler whose client disconnected only with ``handler_cancellation=True``
(an argument of ``web.run_app`` and ``web.AppRunner``; the default is ``False``, under
which the handler, and so the saga, runs to completion after the client has gone).
With it, the saga's running steps are cancelled and its completed steps compensated,
shielded, before the cancellation propagates. (``aiohttp.test_utils.TestServer`` turns
it on by itself: test with a real ``web.AppRunner`` to see the default.)

This module is the only one of asaga that imports aiohttp (extra ``asaga[aiohttp]``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from .._exceptions import InputValidationError, SagaFailed
from ..locks import LeaseTimeout
from .idempotency import Idempotency, IdempotencyKeyReused, Outcome
from .problems import (
    IDEMPOTENCY_KEY_HEADER,
    PROBLEM_COMPENSATION_FAILED,
    PROBLEM_IDEMPOTENCY_KEY_IN_USE,
    PROBLEM_IDEMPOTENCY_KEY_INVALID,
    PROBLEM_IDEMPOTENCY_KEY_REUSED,
    PROBLEM_INVALID_INPUTS,
    PROBLEM_JSON,
    PROBLEM_SAGA_FAILED,
    REPLAYED_HEADER,
    fingerprint,
    problem,
    problem_for,
)

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
    "idempotent",
    "problem_response",
    "saga_errors",
]

_ENCODER = msgspec.json.Encoder()


def problem_response(
    status: int,
    title: str,
    *,
    type: str = "about:blank",
    detail: str | None = None,
    **extensions: Any,
) -> web.Response:
    """An ``application/problem+json`` response (RFC 9457) with ``status`` and ``title``,
    an optional ``detail``, and ``extensions`` as extra members (encoded with msgspec, so
    structs, tuples and the like are fine)."""
    return _response(problem(status, type, title, detail, **extensions))


def _saga_problem(exc: InputValidationError | SagaFailed) -> web.Response:
    body = problem_for(exc)
    assert body is not None
    return _response(body)


def _response(body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=body["status"], body=_ENCODER.encode(body), headers={"Content-Type": PROBLEM_JSON}
    )


@web.middleware
async def saga_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Middleware: turn the exceptions of ``Saga.run()`` into problem responses.

    ``InputValidationError`` becomes 422, ``SagaFailed`` 409 (the failure was fully
    undone: the request conflicts with the state of the world), ``CompensationFailed``
    500 (checked first: something was left in place and needs a human). Anything else,
    cancellation included, passes through untouched.
    """
    try:
        return await handler(request)
    except (InputValidationError, SagaFailed) as exc:
        return _saga_problem(exc)


def _key(request: web.Request) -> str | None:
    raw = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':  # a structured-field string: "abc"
        key = key[1:-1]
    return key


def _outcome(response: web.Response) -> Outcome:
    body = response.body
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    else:
        raise TypeError(
            "idempotent(): the work must return a web.Response with a bytes body "
            f"(text=, body=bytes or json_response), not a {type(body).__name__} payload"
        )
    return Outcome(
        status=response.status,
        body=data,
        media_type=response.headers.get("Content-Type", "application/octet-stream"),
    )


async def idempotent(
    request: web.Request,
    idempotency: Idempotency,
    work: Callable[[], Awaitable[web.Response]],
) -> web.Response:
    """Run ``work`` at most once per ``Idempotency-Key`` header; replay its response.

    Without the header, ``work`` simply runs. With it (a bare token, or a quoted
    structured-field string), the request is fingerprinted (:func:`fingerprint`: SHA-256
    of method, path with query string, and body) and run through
    :meth:`Idempotency.run <asaga.integrations.idempotency.Idempotency.run>`:

    - the first request with a key runs ``work``; its status, body and ``Content-Type``
      are stored for ``idempotency.window`` seconds and its own response is returned as
      it is;
    - a retry (sequential, or concurrent: it queues for the key's lease until the first
      one is done) gets the stored status and body, with ``Idempotent-Replayed: true``;
      other headers are not replayed;
    - the same key with a different request is answered 422
      (``idempotency-key-reused``); an empty key or one over 255 characters 400; a
      duplicate that waited longer than ``idempotency.wait`` for the first one 409
      (``idempotency-key-in-use``).

    asaga's failures inside ``work`` (``InputValidationError``, ``SagaFailed``,
    ``CompensationFailed``) become their problem responses (as :func:`saga_errors` makes
    them) and are stored like any outcome: a retry of a failed request gets the same
    answer, not a second attempt. Any other exception, and a cancelled ``work`` (the
    client went away, with ``handler_cancellation=True``), store nothing: a retry runs
    ``work`` again. ``work`` must return a ``web.Response`` whose body is in memory
    (``json_response``, ``text=``, ``body=bytes``), not a streamed payload.
    """
    key = _key(request)
    if key is None:
        return await work()
    if not key or len(key) > 255:
        return problem_response(
            400,
            "Invalid idempotency key",
            type=PROBLEM_IDEMPOTENCY_KEY_INVALID,
            detail=f"the {IDEMPOTENCY_KEY_HEADER} header must be 1 to 255 characters",
        )
    body = await request.read()
    request_print = fingerprint(request.method, request.path_qs, body)
    first: list[web.Response] = []

    async def produce() -> Outcome:
        try:
            response = await work()
        except (InputValidationError, SagaFailed) as exc:
            response = _saga_problem(exc)
        first.append(response)
        return _outcome(response)

    try:
        outcome, replayed = await idempotency.run(key, request_print, produce)
    except IdempotencyKeyReused as exc:
        return problem_response(
            422,
            "Idempotency key reused",
            type=PROBLEM_IDEMPOTENCY_KEY_REUSED,
            detail=str(exc),
            key=exc.key,
        )
    except LeaseTimeout as exc:
        if f"idempotency:{key}" not in exc.keys:
            raise  # the work's own lease, not the wait for a duplicate
        return problem_response(
            409,
            "Idempotency key in use",
            type=PROBLEM_IDEMPOTENCY_KEY_IN_USE,
            detail=f"a request with this {IDEMPOTENCY_KEY_HEADER} is still being processed; "
            "retry later",
            key=key,
        )
    if not replayed and first:
        return first[0]
    return web.Response(
        status=outcome.status,
        body=outcome.body,
        headers={"Content-Type": outcome.media_type, REPLAYED_HEADER: "true"},
    )
