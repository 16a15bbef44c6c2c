"""FastAPI (and Starlette) integration: problem responses, idempotency, disconnects.

::

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)          # asaga's errors -> application/problem+json

    @app.post("/reservations")
    async def reserve(request: Request) -> Response:
        async def work() -> Response:
            inputs = await saga_inputs(request, InventorySaga)   # never **body
            result = await InventorySaga.run(**inputs, store=store, ...)
            return JSONResponse({"run_id": result.run_id}, status_code=201)

        return await idempotent(request, idempotency, work)

- :func:`saga_inputs` takes a saga's inputs from the request's JSON object: only its
  declared, non-resource inputs; a key naming a resource or an option of ``run()``
  (``idempotency_key``, ``runs``, ``hooks``, ``run_id``) is a 422 (see
  :mod:`asaga.integrations.inputs`).
- :func:`install_error_handlers` maps :class:`~asaga.InputValidationError` to 422,
  :class:`~asaga.SagaFailed` to 409, :class:`~asaga.CompensationFailed` to 500 and an
  unavailable infrastructure (Redis down, a lease that could not be had) to 503 with
  ``Retry-After``, each with an RFC 9457 ``application/problem+json`` body naming the
  saga, the run, the failed step and what was compensated (see :func:`problem_response`
  and :mod:`asaga.integrations.problems`).
- :func:`run_until_disconnect` cancels the work when the client goes away: uvicorn does
  not cancel a handler on disconnect, it only reports ``http.disconnect`` to ``receive``.
  A cancelled saga unwinds (shielded) before the cancellation ends the work.
- :func:`idempotent` runs the work at most once per ``Idempotency-Key`` header (through
  :class:`~asaga.integrations.idempotency.Idempotency`), replays the stored response to
  retries, and cancels on disconnect as :func:`run_until_disconnect` does.

FastAPI is imported by this module only (extra ``asaga[fastapi]``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .._exceptions import ClientDisconnected as ClientDisconnected
from .._exceptions import (
    EventRefused,
    IdempotencyKeyReused,
    InputValidationError,
    NotParked,
    RunParked,
    SagaFailed,
)
from .._public import claim as _claim
from .._saga import Saga
from .idempotency import Idempotency, Outcome, answer
from .inputs import MalformedBody, decode_inputs
from .problems import (
    IDEMPOTENCY_KEY_HEADER,
    PROBLEM_JSON,
    REPLAYED_HEADER,
    RETRY_AFTER,
    Problem,
    fingerprint,
    http_problem,
    infrastructure_errors,
    invalid_body,
    problem_for,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "PROBLEM_JSON",
    "REPLAYED_HEADER",
    "ClientDisconnected",
    "fingerprint",
    "idempotent",
    "install_error_handlers",
    "openapi_body",
    "problem_response",
    "run_until_disconnect",
    "saga_inputs",
]

T = TypeVar("T")

IDEMPOTENCY_HEADER = IDEMPOTENCY_KEY_HEADER
"""The request header carrying the idempotency key."""

CLIENT_CLOSED_REQUEST = 499
"""The status of the (never delivered) response to a client that went away (nginx's)."""

_MAX_MESSAGES = 1_000  # ASGI messages a watcher reads before giving up watching


def _response(answer: Problem) -> JSONResponse:
    return JSONResponse(
        answer.body,
        status_code=answer.status,
        media_type=PROBLEM_JSON if answer.status >= 400 else "application/json",
        headers=dict(answer.headers),
    )


def problem_response(exc: Exception, *, retry_after: int = RETRY_AFTER) -> Response:
    """The RFC 9457 ``application/problem+json`` response for ``exc``.

    The mapping is :func:`asaga.integrations.problems.problem_for`'s: 422 for bad input,
    400 for a body that is not a JSON object, 409 for a failed and undone saga, 500 when
    its undo failed, 422 for a reused idempotency key, 503 with ``Retry-After:
    retry_after`` for an unavailable infrastructure (Redis down, a lease that could not be
    had, a saga that failed for that reason); :class:`ClientDisconnected` gives 499. Any
    other error is re-raised.
    """
    answer = problem_for(exc, retry_after=retry_after)
    if answer is not None:
        return _response(answer)
    if isinstance(exc, ClientDisconnected):
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    raise exc


def install_error_handlers(app: FastAPI, *, retry_after: int = RETRY_AFTER) -> None:
    """Answer the errors raised by ``app``'s handlers with :func:`problem_response`.

    Registers exception handlers for :class:`~asaga.InputValidationError`,
    :class:`~asaga.integrations.inputs.MalformedBody`, :class:`~asaga.SagaFailed` (which
    covers :class:`~asaga.CompensationFailed`),
    :class:`~asaga.IdempotencyKeyReused`, :class:`ClientDisconnected`, and the
    infrastructure errors (:class:`~asaga.StoreUnavailable`,
    :class:`~asaga.locks.LeaseError`, ``redis.exceptions.ConnectionError`` and
    ``TimeoutError``, ``OSError``), answered 503 with ``Retry-After: retry_after``. An
    ``OSError`` of the file system (``FileNotFoundError``...) is not one: it is re-raised
    to Starlette, which answers 500.

    FastAPI's own answers become problem+json too: a route not found (404), a method not
    allowed (405, with its ``Allow`` header) and any ``HTTPException`` (its status and
    detail); a body that is not JSON for a route with a body model is the same 400 as for
    a saga's inputs, and one its model refuses a 422 listing each field.
    """

    async def handle(request: Request, exc: Exception) -> Response:
        return problem_response(exc, retry_after=retry_after)

    kinds: tuple[type[Exception], ...] = (
        InputValidationError,
        MalformedBody,
        SagaFailed,
        RunParked,
        EventRefused,
        NotParked,
        IdempotencyKeyReused,
        ClientDisconnected,
        *infrastructure_errors(),
    )
    for kind in kinds:
        app.add_exception_handler(kind, handle)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code < 400 or exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return _response(http_problem(exc.status_code, str(exc.detail), exc.headers))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            # The same 400 as a saga's inputs read from a body that is not JSON.
            malformed = problem_for(MalformedBody("the request body is not valid JSON"))
            assert malformed is not None
            return _response(malformed)
        pairs = [
            (".".join(str(part) for part in e.get("loc", ())), str(e.get("msg", "")))
            for e in errors
        ]
        return _response(invalid_body(pairs))

    # The framework's own answers too (a route not found, a method not allowed, a body a
    # route's own model refused): problem+json, as the sagas' errors are.
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


def openapi_body(
    saga: type[Saga], *, fields: Iterable[str] | None = None, status: int = 200
) -> dict[str, Any]:
    """What a route that runs ``saga`` from its JSON body gives FastAPI as
    ``openapi_extra``, so that its OpenAPI documents the body and the answers::

        @app.post("/orders", status_code=201, openapi_extra=openapi_body(Checkout, status=201))

    The request body is the saga's declared, non-resource inputs (narrowed to ``fields``)
    as msgspec's JSON Schema; the problem answers (400, 409, 422, 500, 503) are
    ``application/problem+json``. ``status`` is the route's own success status, left to
    the route to describe."""
    spec = saga.__asaga__
    if spec is None:
        raise TypeError("openapi_body() takes a saga class, not the Saga base class")
    problem = {
        PROBLEM_JSON: {
            "schema": {  # RFC 9457: asaga adds members (errors, saga, run_id...)
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
                "required": ["type", "title", "status"],
            }
        }
    }
    answers = {
        "400": "the body is not a JSON object",
        "409": "the saga failed and every completed step was undone",
        "422": "invalid inputs (each one listed in errors), or an idempotency key reused",
        "500": "the saga failed and some compensation failed too: a human must look",
        "503": "a service it needs is unavailable: retry after Retry-After seconds",
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": spec.inputs.schema(fields)}},
        },
        "responses": {
            code: {"description": text, "content": problem}
            for code, text in answers.items()
            if int(code) != status
        },
    }


async def saga_inputs(
    request: Request, saga: type[Saga], *, fields: Iterable[str] | None = None
) -> dict[str, Any]:
    """The request's JSON object as keyword arguments for ``saga.run()``: only the saga's
    declared, non-resource inputs (narrowed to ``fields`` if given).

    A key naming a resource, an option of ``run()`` (``idempotency_key``, ``runs``,
    ``hooks``, ``run_id``) or anything else is an :class:`~asaga.InputValidationError`
    (422, naming each such key); a body that is not a JSON object a
    :class:`~asaga.integrations.inputs.MalformedBody` (400). See
    :func:`asaga.integrations.inputs.request_inputs`. Add the resources yourself::

        inputs = await saga_inputs(request, InventorySaga)
        await InventorySaga.run(**inputs, store=store, locks=locks)
    """
    return decode_inputs(saga, await _read_body(request), fields=fields)


async def _read_body(request: Request) -> bytes:
    try:
        return await request.body()
    except ClientDisconnect:
        raise ClientDisconnected() from None


async def _watch_disconnect(request: Request, scope: anyio.CancelScope) -> None:
    # The body has been read, so the next ASGI message is http.disconnect: uvicorn sends it
    # when the connection is lost (and httpx's ASGITransport once the response is complete,
    # by which time this watcher has been cancelled).
    for _ in range(_MAX_MESSAGES):
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def run_until_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """``await work()``, cancelled if the client disconnects first.

    uvicorn does not cancel a handler whose client went away (see docs/web.md): it
    only answers ``receive()`` with ``http.disconnect`` and drops the response. This runs
    ``work`` beside a task that waits for that message and then cancels ``work``. A saga
    being run by ``work`` then unwinds, shielded, and only when its compensations are done
    does :class:`ClientDisconnected` get raised here.

    The request body is read first (Starlette keeps it, so ``request.body()`` and
    ``request.json()`` still work inside ``work``). Exceptions of ``work`` propagate as
    they are; a cancellation from outside (server shutdown) propagates too.
    """
    await _read_body(request)
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_disconnect, request, tg.cancel_scope)
        try:
            results.append(await work())
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            errors.append(exc)  # (raising it here would wrap it in an ExceptionGroup)
        tg.cancel_scope.cancel()
    if errors:
        raise errors[0]
    if not results:  # work was cancelled by the watcher
        raise ClientDisconnected()
    return results[0]


def _outcome(response: Response) -> Outcome:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):
        raise TypeError(
            f"idempotent() stores the response, so it needs one with its body in memory; "
            f"got {type(response).__name__}"
        )
    media_type = response.headers.get("content-type", "application/octet-stream")
    return Outcome(status=response.status_code, body=body, media_type=media_type)


async def idempotent(
    request: Request,
    idempotency: Idempotency,
    work: Callable[[], Awaitable[Response]],
    *,
    retry_after: int = RETRY_AFTER,
) -> Response:
    """Run ``work`` at most once per ``Idempotency-Key`` and replay its response.

    Without the header, ``work`` simply runs. With it (a bare token, or a quoted
    structured-field string), the request is fingerprinted (SHA-256 of method, path,
    query string and body) and answered by the framework-neutral
    :func:`asaga.integrations.idempotency.answer`:

    - the first request with a key runs ``work``; its status, body and content type are
      stored for the idempotency window and its own response is returned as it is;
    - a retry (sequential or concurrent: a concurrent one waits for the first) gets the
      stored status and body, with the header ``Idempotent-Replayed: true``;
    - the same key with a different request is answered 422 (``idempotency-key-reused``);
      an empty or overlong key (over 255 characters) 400; a duplicate that waited longer
      than ``Idempotency.wait`` for the first one 409 (``idempotency-key-in-use``).

    asaga's failures inside ``work`` (:class:`~asaga.InputValidationError`,
    :class:`~asaga.integrations.inputs.MalformedBody`, :class:`~asaga.SagaFailed`,
    :class:`~asaga.CompensationFailed`) are turned into :func:`problem_response` responses
    and stored like any outcome, so a retry of a failed request gets the same answer
    rather than a second attempt. An unavailable infrastructure (Redis down, for the
    outcome store, the key's lease or the work's saga; see
    :func:`~asaga.integrations.problems.is_unavailable`) is answered 503 with
    ``Retry-After: retry_after`` and **not** stored: a retry with the key runs again.
    Other exceptions, and a cancelled ``work``, store nothing either, and propagate.

    Everything runs under :func:`run_until_disconnect`: if the client goes away, ``work``
    is cancelled (its saga unwinds), nothing is stored and :class:`ClientDisconnected` is
    raised. ``work`` must return a response with its body in memory (not streamed).
    Headers other than the content type are not replayed.
    """
    header = request.headers.get(IDEMPOTENCY_HEADER)
    if header is None:
        return await run_until_disconnect(request, work)
    target = request.url.path
    if request.scope["query_string"]:
        target += "?" + request.scope["query_string"].decode("latin-1")
    print_ = fingerprint(request.method, target, await _read_body(request))

    async def run() -> Response | Outcome | Problem:
        return await answer(idempotency, header, print_, work, _outcome, retry_after=retry_after)

    result = await run_until_disconnect(request, run)
    if isinstance(result, Problem):
        return _response(result)
    if isinstance(result, Outcome):
        return Response(
            content=result.body,
            status_code=result.status,
            headers={"content-type": result.media_type, REPLAYED_HEADER: "true"},
        )
    return result


# Tracebacks and reprs say `asaga.integrations.fastapi.ClientDisconnected`.
_claim(__name__, globals())
