"""aiohttp integration: saga errors as RFC 9457 problem responses, and idempotency keys.

::

    from aiohttp import web
    from asaga.integrations.aiohttp import idempotent, saga_errors

    app = web.Application(middlewares=[saga_errors])

    async def reserve(request: web.Request) -> web.Response:
        async def work() -> web.Response:
            inputs = await saga_inputs(request, InventorySaga)   # never **body
            result = await InventorySaga.run(**inputs, store=store, locks=locks)
            return web.json_response({"run_id": result.run_id}, status=201)

        return await idempotent(request, request.app[IDEMPOTENCY], work)

    web.run_app(app, handler_cancellation=True)   # a client disconnect cancels the handler

:func:`saga_inputs` takes a saga's inputs from the request's JSON object: only its
declared, non-resource inputs; a key naming a resource or an option of ``run()``
(``idempotency_key``, ``runs``, ``hooks``, ``run_id``) is a 422 (see
:mod:`asaga.integrations.inputs`).

:func:`saga_errors` maps what ``Saga.run()`` and the infrastructure raise to
``application/problem+json`` (:mod:`asaga.integrations.problems` has the full table):

==========================  ======  =====================================================
exception                   status  meaning
==========================  ======  =====================================================
``InputValidationError``    422     bad inputs; no step ran
``MalformedBody``           400     the body is not a JSON object
``SagaFailed``              409     a step failed for good; every completed step was undone
``CompensationFailed``      500     ... and undoing failed too: a human must repair it
infrastructure errors       503     Redis down, a lease not had, a saga that failed for
                                    that reason: retry after ``Retry-After`` seconds
==========================  ======  =====================================================

Bodies name ``saga``, ``run_id``, the failed ``step``, ``cause`` (the step exception's
type name only: its message may hold internals), ``compensated`` and, for a 500,
``failed_compensations``; a 422 names ``saga`` and ``errors`` (``[{field, message}]``,
each value cut to a few hundred characters). Problem types are
``urn:asaga:problem:<kind>``, as in :mod:`asaga.integrations.fastapi`.

aiohttp cancels a handler whose client disconnected only with ``handler_cancellation=True``
(an argument of ``web.run_app`` and ``web.AppRunner``; the default is ``False``, under
which the handler, and so the saga, runs to completion after the client has gone).
With it, the saga's running steps are cancelled and its completed steps compensated,
shielded, before the cancellation propagates. (``aiohttp.test_utils.TestServer`` turns
it on by itself: test with a real ``web.AppRunner`` to see the default.)

This module is the only one of asaga that imports aiohttp (extra ``asaga[aiohttp]``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .._saga import Saga
from .idempotency import Idempotency, Outcome, answer
from .inputs import decode_inputs
from .problems import (
    IDEMPOTENCY_KEY_HEADER,
    PROBLEM_COMPENSATION_FAILED,
    PROBLEM_IDEMPOTENCY_KEY_IN_USE,
    PROBLEM_IDEMPOTENCY_KEY_INVALID,
    PROBLEM_IDEMPOTENCY_KEY_REUSED,
    PROBLEM_INVALID_INPUTS,
    PROBLEM_JSON,
    PROBLEM_MALFORMED_BODY,
    PROBLEM_SAGA_FAILED,
    PROBLEM_UNAVAILABLE,
    REPLAYED_HEADER,
    RETRY_AFTER,
    Problem,
    fingerprint,
    http_problem,
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
    "PROBLEM_MALFORMED_BODY",
    "PROBLEM_SAGA_FAILED",
    "PROBLEM_UNAVAILABLE",
    "REPLAYED_HEADER",
    "error_middleware",
    "error_response",
    "fingerprint",
    "idempotent",
    "problem_response",
    "saga_errors",
    "saga_inputs",
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
    return _response(Problem(status, problem(status, type, title, detail, **extensions)))


def _response(answer: Problem) -> web.Response:
    return web.Response(
        status=answer.status,
        body=_ENCODER.encode(answer.body),
        headers={
            "Content-Type": PROBLEM_JSON if answer.status >= 400 else "application/json",
            **answer.headers,
        },
    )


def error_response(exc: Exception, *, retry_after: int = RETRY_AFTER) -> web.Response:
    """The problem response for ``exc``
    (:func:`asaga.integrations.problems.problem_for`): 422, 400, 409, 500, or 503 with
    ``Retry-After: retry_after`` for an unavailable infrastructure. An exception with no
    problem answer (a bug) is re-raised."""
    answer = problem_for(exc, retry_after=retry_after)
    if answer is None:
        raise exc
    return _response(answer)


def error_middleware(*, retry_after: int = RETRY_AFTER) -> Middleware:
    """A middleware like :func:`saga_errors`, whose 503s carry ``Retry-After:
    retry_after``."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # a redirect, a 204...: as aiohttp answers it
            # aiohttp's own errors (no route: 404, a method not allowed: 405, a body too
            # large: 413...) as problem+json too, their headers (Allow...) kept.
            kept = {k: v for k, v in exc.headers.items() if k.lower() != "content-type"}
            return _response(http_problem(exc.status, exc.reason, kept))
        except Exception as exc:
            answer = problem_for(exc, retry_after=retry_after)
            if answer is None:
                raise  # a bug: aiohttp answers 500
            return _response(answer)

    return errors


saga_errors: Middleware = error_middleware()
"""Middleware: turn the exceptions of ``Saga.run()`` and of the infrastructure into
problem responses.

``InputValidationError`` becomes 422, ``MalformedBody`` 400, ``SagaFailed`` 409 (the
failure was fully undone: the request conflicts with the state of the world),
``CompensationFailed`` 500 (something was left in place and needs a human), an
unavailable infrastructure (Redis unreachable, a run store or a lease that could not be
had, a ``SagaFailed`` caused by one of those) 503 with ``Retry-After`` (5 s; build
another with :func:`error_middleware`). aiohttp's own error responses (``HTTPException``
from 400 up: no route 404, a method not allowed 405 with ``Allow``, a body too large 413)
become problem+json too. Anything else, cancellation included, passes through.
"""


async def saga_inputs(
    request: web.Request, saga: type[Saga], *, fields: Iterable[str] | None = None
) -> dict[str, Any]:
    """The request's JSON object as keyword arguments for ``saga.run()``: only the saga's
    declared, non-resource inputs (narrowed to ``fields`` if given).

    A key naming a resource, an option of ``run()`` (``idempotency_key``, ``runs``,
    ``hooks``, ``run_id``) or anything else is an :class:`~asaga.InputValidationError`
    (422, naming each such key); a body that is not a JSON object a
    :class:`~asaga.integrations.inputs.MalformedBody` (400). See
    :func:`asaga.integrations.inputs.request_inputs`. Add the resources yourself::

        inputs = await saga_inputs(request, InventorySaga)
        await InventorySaga.run(**inputs, store=request.app[STORE])
    """
    return decode_inputs(saga, await request.read(), fields=fields)


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
    *,
    retry_after: int = RETRY_AFTER,
) -> web.Response:
    """Run ``work`` at most once per ``Idempotency-Key`` header; replay its response.

    Without the header, ``work`` simply runs. With it (a bare token, or a quoted
    structured-field string), the request is fingerprinted (:func:`fingerprint`: SHA-256
    of method, path with query string, and body) and answered by the framework-neutral
    :func:`asaga.integrations.idempotency.answer`:

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

    asaga's failures inside ``work`` (``InputValidationError``, ``MalformedBody``,
    ``SagaFailed``, ``CompensationFailed``) become their problem responses (as
    :func:`saga_errors` makes them) and are stored like any outcome: a retry of a failed
    request gets the same answer, not a second attempt. An unavailable infrastructure
    (Redis down, for the outcome store, the key's lease or the work's saga; see
    :func:`~asaga.integrations.problems.is_unavailable`) is answered 503 with
    ``Retry-After: retry_after`` and **not** stored: a retry with the key runs again. Any
    other exception, and a cancelled ``work`` (the client went away, with
    ``handler_cancellation=True``), store nothing either: a retry runs ``work`` again.
    ``work`` must return a ``web.Response`` whose body is in memory (``json_response``,
    ``text=``, ``body=bytes``), not a streamed payload.
    """
    header = request.headers.get(IDEMPOTENCY_KEY_HEADER)
    if header is None:
        return await work()
    print_ = fingerprint(request.method, request.path_qs, await request.read())
    result = await answer(idempotency, header, print_, work, _outcome, retry_after=retry_after)
    if isinstance(result, Problem):
        return _response(result)
    if isinstance(result, Outcome):
        return web.Response(
            status=result.status,
            body=result.body,
            headers={"Content-Type": result.media_type, REPLAYED_HEADER: "true"},
        )
    return result
