"""A saga's inputs from a request: only what a client may choose, never run options.

::

    inputs = decode_inputs(InventorySaga, await request.body())     # a JSON object
    result = await InventorySaga.run(**inputs, store=store, locks=locks)

``Saga.run()`` takes the saga's inputs and its own options (``hooks``, ``run_id``,
``runs``, ``idempotency_key``: :data:`RUN_OPTIONS`) as keyword arguments, and resources
(``Resource[...]`` inputs: a store, a client) the same way. Passing a request's JSON
object to it as ``**body`` would let a client pick any of them: replay another client's
run with its ``idempotency_key``, make the run durable, swap the store. So a request
gives only the saga's **declared, non-resource inputs** (class annotations that are not
``Resource[...]``), optionally narrowed to ``fields``:

- a key naming a resource or a run option, or anything else that is not such an input,
  is refused with :class:`~asaga.InputValidationError` (422 in the web integrations,
  before any step runs), one :class:`~asaga.FieldError` per refused key, all at once,
  with the bad values of the other keys;
- a body that is not a JSON object is a :class:`MalformedBody` (400);
- the values are validated by ``run()`` itself, as usual (constraints included).

A saga whose inputs are inferred from its steps' parameters (no class annotations) has
no declared inputs: declare the inputs that a request may give.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

import msgspec

from .._exceptions import FieldError, InputValidationError
from .._exceptions import MalformedBody as MalformedBody
from .._public import claim as _claim
from .._saga import Saga
from .problems import MAX_ERRORS, clip

__all__ = [
    "RUN_OPTIONS",
    "MalformedBody",
    "accepted_inputs",
    "decode_inputs",
    "request_inputs",
]

RUN_OPTIONS: frozenset[str] = frozenset(
    name
    for method in (Saga.run, Saga.start)
    for name, parameter in inspect.signature(method).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)
"""The keyword options of ``Saga.run()`` and ``Saga.start()`` (read from their
signatures, so a new option is covered as soon as it exists): never taken from a
request."""

_NAME_LIMIT = 100  # characters of a refused key kept in its FieldError


def accepted_inputs(saga: type[Saga]) -> tuple[str, ...]:
    """The inputs of ``saga`` that a request may give: its declared, non-resource inputs
    (in declaration order), except any named like an option of ``run()``."""
    spec = saga.__asaga__
    if spec is None:
        raise TypeError(f"{saga.__name__} is not a saga (a subclass of Saga with steps)")
    return tuple(
        name
        for name, input_ in spec.plan.inputs.items()
        if input_.declared and not input_.resource and name not in RUN_OPTIONS
    )


def request_inputs(
    saga: type[Saga], data: object, *, fields: Iterable[str] | None = None
) -> dict[str, Any]:
    """``data`` (a decoded request body) as keyword arguments for ``saga.run()``.

    Only :func:`accepted_inputs` are taken, narrowed to ``fields`` if given (each must be
    one of them, else :class:`ValueError`: a programming error). Raises
    :class:`MalformedBody` if ``data`` is not a JSON object (a ``dict`` with string keys)
    and :class:`~asaga.InputValidationError` naming every other key (a resource, a run
    option, an unknown name). The values are not checked here: ``run()`` validates them.
    """
    accepted = accepted_inputs(saga)
    if fields is not None:
        chosen = tuple(fields)
        unknown = [name for name in chosen if name not in accepted]
        if unknown:
            raise ValueError(
                f"fields {unknown} are not inputs of {saga.__name__} a request may give "
                f"(those are {list(accepted)})"
            )
        accepted = chosen
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        raise MalformedBody("the body must be a JSON object")
    spec = saga.__asaga__
    assert spec is not None  # checked by accepted_inputs
    inputs = spec.plan.inputs
    refused: list[FieldError] = []
    for name in data:
        if name in accepted:
            continue
        if name in RUN_OPTIONS:
            reason = "an option of run(), never taken from a request"
        elif name in inputs and inputs[name].resource:
            reason = "a resource of the saga, never taken from a request"
        elif name in inputs:
            reason = "not accepted from a request"
        elif len(refused) < MAX_ERRORS:  # the ones a problem lists: difflib is slow
            hint = difflib.get_close_matches(name[:_NAME_LIMIT], accepted, n=1)
            reason = "unknown input" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        else:
            reason = "unknown input"
        refused.append(
            FieldError(
                field=clip(name, _NAME_LIMIT), message=f"{reason}; accepted: {list(accepted)}"
            )
        )
    taken = {name: value for name, value in data.items() if name in accepted}
    if refused:
        # Report the bad values of the accepted keys too, as run() would: every problem
        # of the request in one answer.
        try:
            spec.inputs.validate(taken)
        except InputValidationError as exc:
            refused[:0] = [e for e in exc.errors if e.field in accepted]
        raise InputValidationError(saga.__name__, refused)
    return taken


def decode_inputs(
    saga: type[Saga], body: bytes, *, fields: Iterable[str] | None = None
) -> dict[str, Any]:
    """A JSON request body as keyword arguments for ``saga.run()``: see
    :func:`request_inputs`. A body that is not valid JSON is a :class:`MalformedBody`."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON ({clip(str(exc), _NAME_LIMIT)})") from None
    return request_inputs(saga, data, fields=fields)


# Tracebacks and reprs say `asaga.integrations.inputs.MalformedBody`.
_claim(__name__, globals())
