"""Step doubles: make attempts of a step fail, or run a fake instead of it, for the time
of a ``with`` block, without touching the saga class.

How: a saga's plan is held by its spec (``cls.__asaga__``), and every saga that composes
or maps it holds that same spec object (``compose(Child)`` keeps ``Child``'s spec, taken
when the parent class was created). So the double is put in the spec itself: its plan is
swapped for a copy where the step's frozen node is replaced (``dataclasses.replace``),
and swapped back when the block ends, whatever ends it. Every run that starts inside the
block sees the double: ``Child.run()``, and ``Child`` run by any parent, composed or
mapped. A run keeps the plan it started with.

Settings are frozen (``SagaMeta`` refuses assignments) because a run would silently
ignore a change made after the class was created; here the change is made where runs
read it, and undone, which is the point of a test double.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from .._graph import RUN_ID, Node
from .._run import SagaSpec

__all__ = ["fail_step", "replace_step"]


@contextmanager
def fail_step(
    saga: type[Any],
    step: str,
    *,
    at: int | Collection[int] | None = None,
    error: BaseException | type[BaseException] = RuntimeError,
) -> Iterator[list[int]]:
    """Make attempts of ``step`` of ``saga`` fail, for the time of the ``with`` block::

        with fail_step(Checkout, "charge", at=2, error=ConnectionError("down")):
            result = await Checkout.run(order_id="o-1")  # attempt 2 of charge fails

    ``at`` is the attempt (1-based) or the attempts that fail; by default every one. A
    failing attempt raises ``error`` instead of running the step: an exception (raised as
    it is, each time), or an exception class, called with a message naming the attempt
    (default ``RuntimeError``). The other attempts run the step. The step's retry policy
    applies as to any failure: ``at=1`` with a retry makes the second attempt succeed
    (give an ``error`` its ``retry_on`` retries).

    Attempts are counted per run: a sub-saga's step counts in each sub-saga run. The
    block gives the attempts it failed, in order (``with fail_step(...) as failed:``), so
    that a test can check its failure happened.

    The saga may be one that others compose or map: the failure applies wherever it
    runs. The saga is restored when the block ends, whatever ends it.
    """
    spec, node = _node_of(saga, step, "fail_step")
    attempts = _attempts(at)
    failed: list[int] = []
    name = spec.plan.saga

    def failure(attempt: int) -> BaseException:
        failed.append(attempt)
        if isinstance(error, type):
            return error(
                f"fail_step: attempt {attempt} of step {step!r} of saga {name} fails on purpose"
            )
        return error.with_traceback(None)

    if node.invoke is not None:
        # Composed, mapped and waiting steps run through their invoke, which is given the
        # attempt number: fail there, before any child run starts (or any wait).
        invoke: Any = copy.copy(node.invoke)
        run = node.invoke.run

        async def failing_invoke(
            context: Any, label: str, kwargs: dict[str, Any], attempt: int, observer: Any
        ) -> Any:
            if attempts is None or attempt in attempts:
                raise failure(attempt)
            return await run(context, label, kwargs, attempt, observer)

        invoke.run = failing_invoke
        double = dataclasses.replace(node, invoke=invoke)
    else:
        # A plain step's function is called once per attempt: count the calls of each
        # run, keyed by the run's id (asked for as any step may ask for it).
        fn = node.fn
        wants_run_id = RUN_ID in node.params
        calls: dict[str, int] = {}

        async def failing(**kwargs: Any) -> Any:
            run_id = kwargs[RUN_ID] if wants_run_id else kwargs.pop(RUN_ID, "")
            attempt = calls[run_id] = calls.get(run_id, 0) + 1
            if attempts is None or attempt in attempts:
                raise failure(attempt)
            return await fn(**kwargs)

        params = node.params if wants_run_id else (*node.params, RUN_ID)
        double = dataclasses.replace(node, fn=failing, params=params)
    with _swapped(spec, step, double):
        yield failed


@contextmanager
def replace_step(saga: type[Any], step: str, fake: Callable[..., Awaitable[Any]]) -> Iterator[None]:
    """Run ``fake`` instead of ``step`` of ``saga``, for the time of the ``with`` block::

        async def charge(*, order_id: str) -> str:
            return "ch-test"

        with replace_step(Checkout, "charge", charge):
            result = await Checkout.run(order_id="o-1")

    ``fake`` is an async callable taking the step's parameters by name (the values the
    step receives: results of the steps it depends on, inputs, ``lease`` for a step that
    takes its lease; and ``run_id``); it may take only some of them, or ``**kwargs``. A
    parameter the step does not receive is refused now, with ``TypeError``. Its result
    is the step's result, which the following steps receive; raising fails the attempt.
    Everything else of the step stays: its retry policy, its timeout, its lock, its
    compensation (which undoes the fake's result).

    A composed or mapped step replaced runs no sub-saga: ``fake`` receives the names the
    step reads from the saga, and its result has nothing to undo. A waiting step
    (``wait_for``, ``sleep_for``) replaced does not wait: ``fake`` gives its result.

    The saga may be one that others compose or map: the fake runs wherever it runs. The
    saga is restored when the block ends, whatever ends it.
    """
    spec, node = _node_of(saga, step, "replace_step")
    params = node.params if RUN_ID in node.params else (*node.params, RUN_ID)
    given = {*params, *(("lease",) if node.takes_lease else ())}
    accepted = _accepted(fake, given, f"the fake of step {step!r} of saga {spec.plan.saga}")
    what = f"replace_step({spec.plan.saga}, {step!r})"

    async def replaced(**kwargs: Any) -> Any:
        if accepted is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        result = fake(**kwargs)
        if not inspect.isawaitable(result):
            raise TypeError(
                f"{what}: the fake returned {type(result).__name__}, not an awaitable; "
                "make it `async def`"
            )
        return await result

    with _swapped(spec, step, dataclasses.replace(node, fn=replaced, params=params, invoke=None)):
        yield


def _node_of(saga: object, step: str, what: str) -> tuple[SagaSpec, Node]:
    """The spec of the saga class ``saga`` and the node of its step ``step``."""
    spec = getattr(saga, "__asaga__", None) if isinstance(saga, type) else None
    if not isinstance(spec, SagaSpec):
        raise TypeError(f"{what}() takes a Saga subclass with steps, got {saga!r}")
    node = spec.plan.nodes.get(step)
    if node is None:
        names = list(spec.plan.nodes)
        close = difflib.get_close_matches(str(step), names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if isinstance(step, str) and "/" in step:
            hint = f" (name the step in the saga that defines it: {what}(Child, 'step'))"
        raise ValueError(f"saga {spec.plan.saga} has no step {step!r}{hint}; its steps: {names}")
    return spec, node


def _attempts(at: int | Collection[int] | None) -> frozenset[int] | None:
    if at is None:
        return None
    numbers = [at] if isinstance(at, int) else list(at)
    for n in numbers:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"at={at!r}: give attempt numbers (ints >= 1; the first is 1)")
    return frozenset(numbers)


def _accepted(fake: object, given: set[str], what: str) -> frozenset[str] | None:
    """The parameters ``fake`` takes among ``given`` (``None``: all, it has ``**``);
    ``TypeError`` if it needs one that is not given."""
    if not callable(fake):
        raise TypeError(f"{what} must be an async callable, got {fake!r}")
    try:
        sig = inspect.signature(fake)
    except (TypeError, ValueError):  # a callable without a signature: give it all
        return None
    problems: list[str] = []
    takes_all = False
    for p in sig.parameters.values():
        required = p.default is p.empty
        if p.kind is p.VAR_KEYWORD:
            takes_all = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.kind is p.POSITIONAL_ONLY:
            if required:
                problems.append(f"parameter {p.name!r} is positional-only; values come by name")
        elif p.name not in given and required:
            problems.append(f"parameter {p.name!r} is no value the step receives")
    if problems:
        raise TypeError(f"{what}: " + "; ".join(problems) + f" (it receives {sorted(given)})")
    return None if takes_all else frozenset(p for p in sig.parameters if p in given)


@contextmanager
def _swapped(spec: SagaSpec, name: str, node: Node) -> Iterator[None]:
    """``spec``'s plan with ``node`` as step ``name`` inside the block."""
    before = spec.plan
    _set_plan(spec, dataclasses.replace(before, nodes=_with(before.nodes, name, node)))
    installed = spec.plan
    try:
        yield
    finally:
        if spec.plan is installed:  # the usual, nested blocks ending in order
            _set_plan(spec, before)
        else:  # another double changed the plan since: put this step's node back
            _set_plan(
                spec,
                dataclasses.replace(
                    spec.plan, nodes=_with(spec.plan.nodes, name, before.nodes[name])
                ),
            )


def _with(nodes: Any, name: str, node: Node) -> MappingProxyType[str, Node]:
    swapped = dict(nodes)
    swapped[name] = node
    return MappingProxyType(swapped)


def _set_plan(spec: SagaSpec, plan: Any) -> None:
    object.__setattr__(spec, "plan", plan)  # the spec is frozen: see the module docstring
