"""The planner: a saga's steps → nodes → edges → validation → a frozen :class:`Plan`.

Pure: no I/O, no event loop. Every problem is collected, so that one
:class:`~asaga.SagaDefinitionError` can list them all::

    nodes   = one per step, from the frozen descriptions made by @step
    inputs  = declared class annotations, else inferred from parameters naming no step
    edges   = parameter named like a step → dependency on that step
    checks  = unknown names, duplicates, annotation mismatches, compensations, cycles
    plan    = topological order (graphlib), roots, dependents, descendants, output step
"""

from __future__ import annotations

import difflib
import graphlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from ._annotations import EMPTY, compatible, is_resource, strip_annotated, type_name
from ._retry import NO_RETRY, Retry
from ._step import Compensation, Invoke, Param, Signature, Step
from .locks._lease import Lock

__all__ = [
    "RUN_ID",
    "CompNode",
    "Declared",
    "InputSpec",
    "Node",
    "Plan",
    "WhenNode",
    "build_plan",
]


@dataclass(frozen=True, slots=True)
class Declared:
    """An input declared as a class annotation on the saga."""

    annotation: Any
    has_default: bool
    default: Any


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input of a saga, declared or inferred."""

    name: str
    annotation: Any  # EMPTY when nothing says what it is
    resource: bool
    required: bool
    default: Any
    declared: bool


@dataclass(frozen=True, slots=True)
class CompNode:
    """A compensation as the unwinder needs it."""

    name: str
    fn: Callable[..., Any]
    params: tuple[str, ...]
    optional: frozenset[str]  # parameters with a default, passed only when available
    retry: Retry
    timeout: float | None  # None: the saga's compensation_timeout
    in_doubt: bool = False  # also runs for a step cut off mid-flight (result: None)


@dataclass(frozen=True, slots=True)
class Node:
    """A step as the scheduler needs it."""

    name: str
    fn: Callable[..., Any]
    params: tuple[str, ...]
    deps: tuple[str, ...]
    dependents: tuple[str, ...]
    retry: Retry
    timeout: float | None
    compensation: CompNode | None
    when: WhenNode | None
    required: tuple[str, ...]  # dependencies that, if skipped, skip this step too
    invoke: Invoke | None  # composed and mapped steps; None for plain ones
    lock: Lock | None  # the lease held for each attempt
    takes_lease: bool  # the step has a `lease` parameter to receive it
    defaults: Mapping[str, Any]  # parameter defaults (for lock key templates)
    returns: Any = EMPTY  # the return annotation (how a durable run decodes the result)
    idempotent: bool = False  # safe to run again after a crash left it in doubt


@dataclass(frozen=True, slots=True)
class WhenNode:
    """A step's condition as the scheduler needs it."""

    fn: Callable[..., Any]
    params: tuple[str, ...]
    is_async: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a run needs, fixed when the saga class is created."""

    saga: str
    nodes: Mapping[str, Node]
    order: tuple[str, ...]  # a topological order
    roots: tuple[str, ...]  # steps with no dependency
    inputs: Mapping[str, InputSpec]
    output: str | None
    descendants: Mapping[str, frozenset[str]]
    chain: bool = False
    """Whether the steps can only ever run one at a time: each step in ``order`` depends,
    directly or not, on the one before it. Such a run needs no task group."""


RUN_ID = "run_id"
"""A parameter of this name (in a step, a condition or a compensation) receives the run's
id: a stable key for making a step's effect idempotent."""

_RESERVED_INPUTS = frozenset({"hooks", RUN_ID, "runs", "idempotency_key"})


def build_plan(
    saga: str,
    steps: Sequence[Step[Any, Any]],
    compensations: Sequence[Compensation],
    declared: Mapping[str, Declared],
    *,
    output: str | None,
    retry_defaults: Retry | None,
    namespace: Mapping[str, Any],
    reserved: frozenset[str],
    settings: frozenset[str],
) -> tuple[Plan | None, Mapping[str, InputSpec], list[str]]:
    """Plan a saga: ``(plan, inputs, [])``, or ``(None, inputs, problems)``.

    ``reserved`` are names no step or input may take (Saga's own attributes), ``settings``
    those among them that are configuration assigned in the class body.
    """
    problems: list[str] = []
    ns = dict(namespace)

    # -- nodes -------------------------------------------------------------------------
    sigs: dict[str, Signature] = {}
    conds: dict[str, Signature] = {}  # the when= predicates' signatures
    locks: dict[str, Lock] = {}
    by_name: dict[str, Step[Any, Any]] = {}
    for s in steps:
        if s.name in by_name:
            problems.append(
                f"step '{s.name}' is defined twice; step names must be unique, rename one"
            )
            continue
        by_name[s.name] = s
        sig = s.signature.resolved(s.fn, ns, f"step '{s.name}'")
        if s.lock is not None:
            lock, lock_problems = _lock_of(s, sig)
            problems.extend(lock_problems)
            if lock is not None:
                locks[s.name] = lock
            # `lease` receives the step's lease: neither a dependency nor an input.
            sig = Signature(
                tuple(p for p in sig.params if p.name != "lease"),
                sig.returns,
                sig.problems,
                sig.unresolved,
            )
        sigs[s.name] = sig
        problems.extend(sig.problems)
        if s.when is not None:
            cond = s.when.signature.resolved(s.when.fn, ns, f"condition of step '{s.name}'")
            conds[s.name] = cond
            problems.extend(cond.problems)
        problems.extend(_option_problems(f"step '{s.name}'", s.retry, s.timeout))
        flag: object = s.idempotent
        if not isinstance(flag, bool):
            problems.append(
                f"step '{s.name}': idempotent= takes True or False, got {s.idempotent!r}"
            )
        if s.name == RUN_ID:
            problems.append(
                f"step '{s.name}': `{RUN_ID}` is the parameter that receives the run's id; "
                "rename the step"
            )
        elif s.name in reserved:
            problems.append(
                f"step '{s.name}' shadows the Saga attribute `{s.name}`; rename the step"
            )
        if s.name in declared:
            problems.append(
                f"step '{s.name}' has the same name as the input `{s.name}`; "
                "rename the step or the input"
            )

    for name in declared:
        if name in _RESERVED_INPUTS:
            problems.append(
                f"input `{name}` uses a name reserved for run() options; rename the input"
            )
        elif name in settings:
            problems.append(
                f"`{name}` is a Saga setting, not an input: assign it without an annotation "
                f"(`{name} = ...`)"
            )
        elif name in reserved:
            problems.append(f"input `{name}` would hide `Saga.{name}`; rename the input")

    # -- inputs ------------------------------------------------------------------------
    inputs: dict[str, InputSpec] = {}
    for name, decl in declared.items():
        inputs[name] = InputSpec(
            name=name,
            annotation=decl.annotation,
            resource=is_resource(decl.annotation),
            required=not decl.has_default,
            default=decl.default,
            declared=True,
        )
    strict = bool(declared)
    known = set(by_name) | set(declared)
    inferred: dict[str, list[tuple[str, Param]]] = {}
    users = [(name, f"step '{name}'", sig) for name, sig in sigs.items()] + [
        (name, f"condition of step '{name}'", sig) for name, sig in conds.items()
    ]
    for name, what, sig in users:
        for p in sig.params:
            if p.name in by_name or p.name in declared or p.name == RUN_ID:
                continue
            if strict:
                problems.append(
                    f"{what}, parameter '{p.name}': no step or input is named "
                    f"'{p.name}'{_suggest(p.name, known)}; declare it on the saga "
                    f"(`{p.name}: <type>`) or rename the parameter"
                )
            else:
                inferred.setdefault(p.name, []).append((name, p))
    for name, uses in inferred.items():
        if name in _RESERVED_INPUTS:
            problems.append(
                f"step '{uses[0][0]}', parameter '{name}': `{name}` is reserved for run() "
                "options; rename the parameter"
            )
        annotated = [(user, p) for user, p in uses if p.annotation is not EMPTY]
        annotation = annotated[0][1].annotation if annotated else EMPTY
        for user, p in annotated[1:]:
            if strip_annotated(p.annotation) != strip_annotated(annotation):
                problems.append(
                    f"input '{name}' is annotated `{type_name(annotation)}` in step "
                    f"'{annotated[0][0]}' but `{type_name(p.annotation)}` in step '{user}'; "
                    "use one type, or declare the input on the saga"
                )
        defaults = [p for _, p in uses if p.has_default]
        inputs[name] = InputSpec(
            name=name,
            annotation=annotation,
            resource=is_resource(annotation),
            required=len(defaults) < len(uses),
            default=defaults[0].default if defaults else None,
            declared=False,
        )

    # -- edges and annotation checks -----------------------------------------------------
    deps: dict[str, tuple[str, ...]] = {}
    required: dict[str, list[str]] = {name: [] for name in sigs}
    for name, what, sig in users:
        step_deps = list(deps.get(name, ()))
        for p in sig.params:
            if p.name in by_name:
                if p.name not in step_deps:
                    step_deps.append(p.name)
                if not p.has_default and p.name not in required[name]:
                    required[name].append(p.name)
                problems.extend(_mismatch(what, p, p.name, sigs.get(p.name)))
            elif p.name in declared:
                problems.extend(_input_mismatch(what, p, declared[p.name]))
        deps[name] = tuple(step_deps)

    # -- order and cycles ------------------------------------------------------------------
    sorter = graphlib.TopologicalSorter(deps)
    order: tuple[str, ...] = ()
    try:
        order = tuple(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        problems.append(
            "steps form a cycle: "
            + " -> ".join(f"'{n}'" for n in reversed(cycle))
            + "; each parameter names a step it waits for, so break the loop"
        )

    dependents: dict[str, list[str]] = {name: [] for name in by_name}
    for name in order:
        for d in deps.get(name, ()):
            dependents[d].append(name)
    descendants: dict[str, frozenset[str]] = {}
    for name in reversed(order):
        acc: set[str] = set()
        for child in dependents[name]:
            acc.add(child)
            acc |= descendants[child]
        descendants[name] = frozenset(acc)
    ancestors: dict[str, set[str]] = {name: set() for name in by_name}
    for name, desc in descendants.items():
        for d in desc:
            ancestors[d].add(name)
    if by_name and not order:  # a cycle: do not add dependency complaints on top of it
        ancestors = {name: set(by_name) for name in by_name}

    # Steps that may end up skipped: those with a condition, and those requiring one.
    skippable: set[str] = set()
    for name in order:
        if name in conds or any(r in skippable for r in required[name]):
            skippable.add(name)

    # -- compensations ---------------------------------------------------------------------
    comps: dict[str, CompNode] = {}
    step_ids = {id(s) for s in by_name.values()}
    for c in compensations:
        target = c.target.name
        what = f"compensation '{c.name}' of step '{target}'"
        if id(c.target) not in step_ids:
            problems.append(
                f"{what}: '{target}' is not a step of this saga (it belongs to another saga "
                "or to none); register compensations on this saga's own steps"
            )
            continue
        if target in comps:
            problems.append(
                f"step '{target}' has two compensations ('{comps[target].name}' and "
                f"'{c.name}'); keep one"
            )
            continue
        csig = c.signature.resolved(c.fn, ns, what)
        problems.extend(csig.problems)
        problems.extend(_option_problems(what, c.retry, c.timeout))
        in_doubt: object = c.in_doubt
        if not isinstance(in_doubt, bool):
            problems.append(f"{what}: in_doubt={in_doubt!r}: set it to True or False")
        optional: set[str] = set()
        if by_name[target].invoke is not None:
            problems.append(
                f"{what}: '{target}' is a composed or mapped step, undone by its sub-runs' "
                "own compensations (or map_each's undo=); it takes no compensation"
            )
        for p in csig.params:
            if p.name in skippable and p.name != target and not p.has_default:
                problems.append(
                    f"{what}, parameter '{p.name}': step '{p.name}' may be skipped by a "
                    "condition, so it may have no result; give the parameter a default"
                )
                optional.add(p.name)
            elif p.name == RUN_ID:
                continue
            elif p.name == target or (p.name in by_name and p.name in ancestors.get(target, ())):
                problems.extend(_mismatch(what, p, p.name, sigs.get(p.name)))
            elif p.name in by_name:
                if not p.has_default:
                    problems.append(
                        f"{what}, parameter '{p.name}': step '{p.name}' is not a dependency "
                        f"of '{target}', so it may not have completed when '{target}' is "
                        f"undone; make '{target}' depend on it or give the parameter a default"
                    )
                optional.add(p.name)
            elif p.name in inputs:
                if p.name in declared:
                    problems.extend(_input_mismatch(what, p, declared[p.name]))
                spec = inputs[p.name]
                if not spec.required and not spec.declared:
                    # An optional inferred input has no saga-wide default to pass.
                    if not p.has_default:
                        problems.append(
                            f"{what}, parameter '{p.name}': input '{p.name}' is optional "
                            "(the steps give it a default), so the compensation may run "
                            "without it; give the parameter a default too"
                        )
                    optional.add(p.name)
            else:
                problems.append(
                    f"{what}, parameter '{p.name}': names no step or input of this saga"
                    f"{_suggest(p.name, known | set(inputs))}; a compensation takes the "
                    f"step's result as '{target}', other steps' results and inputs"
                )
        comps[target] = CompNode(
            name=c.name,
            fn=c.fn,
            params=tuple(p.name for p in csig.params),
            optional=frozenset(optional),
            retry=c.retry or retry_defaults or NO_RETRY,
            timeout=c.timeout,
            in_doubt=c.in_doubt is True,
        )

    # -- output ----------------------------------------------------------------------------
    sinks = [name for name in order if not dependents[name]]
    if output is not None:
        if not isinstance(output, str) or output not in by_name:
            problems.append(
                f"output = {output!r} names no step{_suggest(str(output), set(by_name))}; "
                "set it to a step's name"
            )
            output = None
    elif len(sinks) == 1:
        output = sinks[0]

    if problems:
        return None, inputs, problems

    nodes = {
        name: Node(
            name=name,
            fn=by_name[name].fn,
            params=tuple(p.name for p in sigs[name].params),
            deps=deps[name],
            dependents=tuple(dependents[name]),
            retry=by_name[name].retry or retry_defaults or NO_RETRY,
            timeout=by_name[name].timeout,
            compensation=comps.get(name),
            when=_when(by_name[name], conds.get(name)),
            required=tuple(required[name]),
            invoke=by_name[name].invoke,
            lock=locks.get(name),
            takes_lease=name in locks and "lease" in _param_names(by_name[name].signature),
            defaults=MappingProxyType(
                {p.name: p.default for p in sigs[name].params if p.has_default}
                if name in locks
                else {}
            ),
            returns=sigs[name].returns,
            idempotent=by_name[name].idempotent is True,
        )
        for name in order
    }
    plan = Plan(
        saga=saga,
        nodes=MappingProxyType(nodes),
        order=order,
        roots=tuple(name for name in order if not deps[name]),
        inputs=MappingProxyType(inputs),
        output=output,
        descendants=MappingProxyType(descendants),
        chain=all(later in descendants[earlier] for earlier, later in pairwise(order)),
    )
    return plan, plan.inputs, []


def _param_names(sig: Signature) -> set[str]:
    return {p.name for p in sig.params}


def _lock_of(s: Step[Any, Any], sig: Signature) -> tuple[Lock | None, list[str]]:
    what = f"step '{s.name}'"
    lock = s.lock
    if isinstance(lock, str):
        try:
            lock = Lock(lock)
        except ValueError as exc:
            return None, [f"{what}: lock={s.lock!r}: {exc}"]
    if not isinstance(lock, Lock):
        return None, [f"{what}: lock= takes a key template or a Lock(...), got {lock!r}"]
    problems = []
    if s.invoke is not None:
        problems.append(f"{what}: composed and mapped steps take no lock=; lock inside them")
    names = _param_names(sig) - {"lease"}
    for field in lock.fields:
        if field not in names:
            problems.append(
                f"{what}: lock key field {{{field}}} is not a parameter of the step"
                f"{_suggest(field, names)}; add the parameter or fix the template"
            )
    return lock, problems


def _when(s: Step[Any, Any], sig: Signature | None) -> WhenNode | None:
    if s.when is None or sig is None:
        return None
    return WhenNode(s.when.fn, tuple(p.name for p in sig.params), s.when.is_async)


def _suggest(name: str, candidates: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def _mismatch(what: str, p: Param, producer: str, sig: Signature | None) -> list[str]:
    if sig is None or compatible(sig.returns, p.annotation):
        return []
    return [
        f"{what}, parameter '{p.name}': annotated `{type_name(p.annotation)}` but step "
        f"'{producer}' returns `{type_name(sig.returns)}`; make the annotations agree"
    ]


def _input_mismatch(what: str, p: Param, decl: Declared) -> list[str]:
    if compatible(decl.annotation, p.annotation):
        return []
    return [
        f"{what}, parameter '{p.name}': annotated `{type_name(p.annotation)}` but the saga "
        f"declares input '{p.name}' as `{type_name(decl.annotation)}`; make them agree"
    ]


def _option_problems(what: str, retry: object, timeout: object) -> list[str]:
    problems = []
    if retry is not None and not isinstance(retry, Retry):
        problems.append(f"{what}: retry= takes a Retry(...), got {retry!r}")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not timeout > 0
        or math.isnan(timeout)
    ):
        problems.append(f"{what}: timeout= takes a number of seconds > 0, got {timeout!r}")
    return problems
