"""The planner: a saga's steps, phase by phase, into a frozen :class:`Plan`.

Pure: no I/O, no event loop. :func:`build_plan` runs one function per phase; each returns
what it built and the problems it found there, so that one
:class:`~asaga.SagaDefinitionError` lists them all, phase by phase::

    nodes          = one per step name, signatures resolved; duplicates, options, names
    input names    = declared inputs named like run() options or Saga's attributes
    inputs         = declared class annotations, else inferred from parameters naming no step
    edges          = parameter named like a step → dependency on it; annotations must agree
    order          = a topological order (graphlib), or the cycle
    shape          = dependents, descendants, ancestors, steps a condition may skip
    compensations  = at most one per step; parameters take results, inputs or the run id
    output         = the ``output =`` step, else the only sink
    plan           = only if nothing is wrong: nodes in order, roots, chain
"""

from __future__ import annotations

import difflib
import graphlib
import math
import re
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
    types: Mapping[str, Any] | None = None  # parameter annotations (a step on workers)


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
    queue: str | None = None  # the job queue whose workers run it (None: run here)
    types: Mapping[str, Any] | None = None  # parameter annotations (a step on workers)


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


_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:{}\-]{1,100}")

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
    those among them that are configuration assigned in the class body. Each phase is a
    pure function returning what it built and the problems it found; problems are listed
    in phase order.
    """
    ns = dict(namespace)
    nodes, problems = _nodes(steps, ns, declared, reserved)
    problems += _input_name_problems(declared, reserved, settings)
    users = _users(nodes)
    inputs, found = _inputs(declared, users, nodes.by_name)
    problems += found
    edges, found = _edges(users, nodes.sigs, declared)
    problems += found
    order, found = _order(edges.deps)
    problems += found
    shape = _shape(order, nodes, edges)
    comps, found = _compensations(compensations, nodes, shape, declared, inputs, ns, retry_defaults)
    problems += found
    output, found = _output(output, shape, nodes.by_name)
    problems += found
    if problems:
        return None, inputs, problems
    plan = _plan(saga, nodes, edges, shape, comps, inputs, output, retry_defaults)
    return plan, plan.inputs, []


# -- nodes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Nodes:
    """The nodes: each step name once, with what was resolved for it."""

    by_name: dict[str, Step[Any, Any]]  # the first step of each name
    sigs: dict[str, Signature]  # without a locked step's `lease` parameter
    conds: dict[str, Signature]  # the when= predicates' signatures
    locks: dict[str, Lock]  # the valid lock= of each locked step


def _nodes(
    steps: Sequence[Step[Any, Any]],
    ns: dict[str, Any],
    declared: Mapping[str, Declared],
    reserved: frozenset[str],
) -> tuple[_Nodes, list[str]]:
    """One node per step name; each step's problems are listed together, in step order."""
    by_name: dict[str, Step[Any, Any]] = {}
    sigs: dict[str, Signature] = {}
    conds: dict[str, Signature] = {}
    locks: dict[str, Lock] = {}
    problems: list[str] = []
    for s in steps:
        if s.name in by_name:
            problems.append(
                f"step '{s.name}' is defined twice; step names must be unique, rename one"
            )
            continue
        by_name[s.name] = s
        sigs[s.name], cond, lock, found = _read_step(s, ns)
        if cond is not None:
            conds[s.name] = cond
        if lock is not None:
            locks[s.name] = lock
        problems += found
        problems += _step_problems(s, declared, reserved)
    problems += _key_problems(by_name)
    return _Nodes(by_name, sigs, conds, locks), problems


def _key_problems(by_name: Mapping[str, Step[Any, Any]]) -> list[str]:
    """Two waiting steps of one saga must not wait for the same event key."""
    seen: dict[str, str] = {}
    problems = []
    for name, s in by_name.items():
        template = getattr(s.invoke, "template", None)
        if not isinstance(template, str):
            continue
        if template in seen:
            problems.append(
                f"steps '{seen[template]}' and '{name}' both wait for the event key "
                f"{template!r}: one event would complete only one of them; give each its own key"
            )
        else:
            seen[template] = name
    return problems


def _read_step(
    s: Step[Any, Any], ns: dict[str, Any]
) -> tuple[Signature, Signature | None, Lock | None, list[str]]:
    """A step's resolved signature, its condition's, its lock; and the problems in them."""
    problems: list[str] = []
    sig = s.signature.resolved(s.fn, ns, f"step '{s.name}'")
    lock = None
    if s.lock is not None:
        lock, lock_problems = _lock_of(s, sig)
        problems += lock_problems
        # `lease` receives the step's lease: neither a dependency nor an input.
        sig = Signature(
            tuple(p for p in sig.params if p.name != "lease"),
            sig.returns,
            sig.problems,
            sig.unresolved,
        )
    problems += sig.problems
    cond = None
    if s.when is not None:
        cond = s.when.signature.resolved(s.when.fn, ns, f"condition of step '{s.name}'")
        problems += cond.problems
    return sig, cond, lock, problems


def _step_problems(
    s: Step[Any, Any], declared: Mapping[str, Declared], reserved: frozenset[str]
) -> list[str]:
    """A step's options, and a name that clashes with the run id, Saga or an input."""
    problems = _option_problems(f"step '{s.name}'", s.retry, s.timeout)
    flag: object = s.idempotent
    if not isinstance(flag, bool):
        problems.append(f"step '{s.name}': idempotent= takes True or False, got {s.idempotent!r}")
    queue: object = s.queue
    if queue is not None:
        if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
            problems.append(
                f"step '{s.name}': queue= takes a queue's name (letters, digits and "
                f"'_.:-{{}}', 1 to 100 characters), got {queue!r}"
            )
        if s.lock is not None:
            problems.append(
                f"step '{s.name}': a step on workers takes no lock= (a lease cannot travel "
                "to a worker); lock inside the step, or run it here"
            )
    if s.name == RUN_ID:
        problems.append(
            f"step '{s.name}': `{RUN_ID}` is the parameter that receives the run's id; "
            "rename the step"
        )
    elif s.name in reserved:
        problems.append(f"step '{s.name}' shadows the Saga attribute `{s.name}`; rename the step")
    if s.name in declared:
        problems.append(
            f"step '{s.name}' has the same name as the input `{s.name}`; "
            "rename the step or the input"
        )
    return problems


def _input_name_problems(
    declared: Mapping[str, Declared], reserved: frozenset[str], settings: frozenset[str]
) -> list[str]:
    """Declared inputs named like a run() option, a Saga setting or a Saga attribute."""
    problems = []
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
    return problems


# -- inputs ------------------------------------------------------------------------------

_User = tuple[str, str, Signature]
"""A function whose parameters name steps and inputs: (its step, its name in problems, its
signature). A step's condition belongs to that step: its parameters are the step's too."""


def _users(nodes: _Nodes) -> list[_User]:
    """The steps, then the steps' conditions: the functions that take steps and inputs."""
    return [(name, f"step '{name}'", sig) for name, sig in nodes.sigs.items()] + [
        (name, f"condition of step '{name}'", sig) for name, sig in nodes.conds.items()
    ]


def _inputs(
    declared: Mapping[str, Declared],
    users: Sequence[_User],
    steps: Mapping[str, Step[Any, Any]],
) -> tuple[dict[str, InputSpec], list[str]]:
    """The saga's inputs: the declared ones if any (every other name is then a problem),
    else those inferred from the parameters that name no step."""
    if declared:
        return _declared_inputs(declared), _undeclared_problems(users, steps, declared)
    return _inferred_inputs(users, steps)


def _declared_inputs(declared: Mapping[str, Declared]) -> dict[str, InputSpec]:
    """One input per class annotation on the saga."""
    return {
        name: InputSpec(
            name=name,
            annotation=decl.annotation,
            resource=is_resource(decl.annotation),
            required=not decl.has_default,
            default=decl.default,
            declared=True,
        )
        for name, decl in declared.items()
    }


def _undeclared_problems(
    users: Sequence[_User],
    steps: Mapping[str, Step[Any, Any]],
    declared: Mapping[str, Declared],
) -> list[str]:
    """Parameters naming neither a step nor a declared input, when inputs are declared."""
    known = set(steps) | set(declared)
    return [
        f"{what}, parameter '{p.name}': no step or input is named "
        f"'{p.name}'{_suggest(p.name, known)}; declare it on the saga "
        f"(`{p.name}: <type>`) or rename the parameter"
        for _, what, sig in users
        for p in sig.params
        if p.name not in steps and p.name not in declared and p.name != RUN_ID
    ]


def _inferred_inputs(
    users: Sequence[_User], steps: Mapping[str, Step[Any, Any]]
) -> tuple[dict[str, InputSpec], list[str]]:
    """One input per parameter name that names no step, when no input is declared."""
    uses: dict[str, list[tuple[str, Param]]] = {}
    for name, _, sig in users:
        for p in sig.params:
            if p.name not in steps and p.name != RUN_ID:
                uses.setdefault(p.name, []).append((name, p))
    inputs: dict[str, InputSpec] = {}
    problems: list[str] = []
    for name, its_uses in uses.items():
        inputs[name], found = _inferred_input(name, its_uses)
        problems += found
    return inputs, problems


def _inferred_input(name: str, uses: Sequence[tuple[str, Param]]) -> tuple[InputSpec, list[str]]:
    """An inferred input from the parameters that take it: typed by the first annotated
    one, which the others must agree with; required unless every one has a default."""
    problems = []
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
    spec = InputSpec(
        name=name,
        annotation=annotation,
        resource=is_resource(annotation),
        required=len(defaults) < len(uses),
        default=defaults[0].default if defaults else None,
        declared=False,
    )
    return spec, problems


# -- edges -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Edges:
    """Each step's dependencies, from its and its condition's parameters."""

    deps: dict[str, tuple[str, ...]]
    required: dict[str, list[str]]  # dependencies taken without a default


def _edges(
    users: Sequence[_User], sigs: Mapping[str, Signature], declared: Mapping[str, Declared]
) -> tuple[_Edges, list[str]]:
    """A parameter named like a step is an edge from that step; its annotation must agree
    with the step's return annotation (a declared input's, for an input)."""
    deps: dict[str, tuple[str, ...]] = {}
    required: dict[str, list[str]] = {name: [] for name in sigs}
    problems = []
    for name, what, sig in users:
        step_deps = list(deps.get(name, ()))
        for p in sig.params:
            if p.name in sigs:
                if p.name not in step_deps:
                    step_deps.append(p.name)
                if not p.has_default and p.name not in required[name]:
                    required[name].append(p.name)
                problems += _mismatch(what, p, p.name, sigs.get(p.name))
            elif p.name in declared:
                problems += _input_mismatch(what, p, declared[p.name])
        deps[name] = tuple(step_deps)
    return _Edges(deps, required), problems


# -- order and shape ---------------------------------------------------------------------


def _order(deps: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, ...], list[str]]:
    """A topological order (graphlib); ``()`` and the cycle as a problem if there is one."""
    try:
        return tuple(graphlib.TopologicalSorter(deps).static_order()), []
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        return (), [
            "steps form a cycle: "
            + " -> ".join(f"'{n}'" for n in reversed(cycle))
            + "; each parameter names a step it waits for, so break the loop"
        ]


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the order tells about the graph. After a cycle (no order) no step reaches
    another, and every step counts as every step's ancestor."""

    order: tuple[str, ...]
    dependents: dict[str, list[str]]  # in order
    descendants: dict[str, frozenset[str]]
    ancestors: dict[str, set[str]]  # after a cycle every step, so nothing is unreachable
    skippable: set[str]  # steps with a condition, and those requiring one


def _shape(order: tuple[str, ...], nodes: _Nodes, edges: _Edges) -> _Shape:
    """Dependents, descendants, ancestors and skippable steps, read along ``order``."""
    dependents: dict[str, list[str]] = {name: [] for name in nodes.by_name}
    for name in order:
        for d in edges.deps.get(name, ()):
            dependents[d].append(name)
    descendants: dict[str, frozenset[str]] = {}
    for name in reversed(order):
        acc: set[str] = set()
        for child in dependents[name]:
            acc.add(child)
            acc |= descendants[child]
        descendants[name] = frozenset(acc)
    ancestors: dict[str, set[str]] = {name: set() for name in nodes.by_name}
    for name, desc in descendants.items():
        for d in desc:
            ancestors[d].add(name)
    if nodes.by_name and not order:  # a cycle: do not add dependency complaints on top of it
        ancestors = {name: set(nodes.by_name) for name in nodes.by_name}
    skippable: set[str] = set()
    for name in order:
        if name in nodes.conds or any(r in skippable for r in edges.required[name]):
            skippable.add(name)
    return _Shape(order, dependents, descendants, ancestors, skippable)


# -- compensations -----------------------------------------------------------------------


def _compensations(
    compensations: Sequence[Compensation],
    nodes: _Nodes,
    shape: _Shape,
    declared: Mapping[str, Declared],
    inputs: Mapping[str, InputSpec],
    ns: dict[str, Any],
    retry_defaults: Retry | None,
) -> tuple[dict[str, CompNode], list[str]]:
    """At most one compensation per step of this saga, each with its parameters checked."""
    comps: dict[str, CompNode] = {}
    problems: list[str] = []
    step_ids = {id(s) for s in nodes.by_name.values()}
    for c in compensations:
        target = c.target.name
        if id(c.target) not in step_ids:
            problems.append(
                f"compensation '{c.name}' of step '{target}': '{target}' is not a step of "
                "this saga (it belongs to another saga or to none); register compensations "
                "on this saga's own steps"
            )
        elif target in comps:
            problems.append(
                f"step '{target}' has two compensations ('{comps[target].name}' and "
                f"'{c.name}'); keep one"
            )
        else:
            comps[target], found = _compensation(
                c, nodes, shape, declared, inputs, ns, retry_defaults
            )
            problems += found
    return comps, problems


def _compensation(
    c: Compensation,
    nodes: _Nodes,
    shape: _Shape,
    declared: Mapping[str, Declared],
    inputs: Mapping[str, InputSpec],
    ns: dict[str, Any],
    retry_defaults: Retry | None,
) -> tuple[CompNode, list[str]]:
    """A compensation's signature and options, then each of its parameters."""
    target = c.target.name
    what = f"compensation '{c.name}' of step '{target}'"
    csig = c.signature.resolved(c.fn, ns, what)
    problems = [*csig.problems, *_option_problems(what, c.retry, c.timeout)]
    in_doubt: object = c.in_doubt
    if not isinstance(in_doubt, bool):
        problems.append(f"{what}: in_doubt={in_doubt!r}: set it to True or False")
    target_invoke = nodes.by_name[target].invoke
    if target_invoke is not None and target_invoke.nested:
        problems.append(
            f"{what}: '{target}' is a composed or mapped step, undone by its sub-runs' "
            "own compensations (or map_each's undo=); it takes no compensation"
        )
    optional: set[str] = set()
    for p in csig.params:
        is_optional, found = _comp_param(what, target, p, nodes, shape, declared, inputs)
        problems += found
        if is_optional:
            optional.add(p.name)
    comp = CompNode(
        name=c.name,
        fn=c.fn,
        params=tuple(p.name for p in csig.params),
        optional=frozenset(optional),
        retry=c.retry or retry_defaults or NO_RETRY,
        timeout=c.timeout,
        in_doubt=c.in_doubt is True,
        types=_types_of(csig) if c.target.queue is not None else None,
    )
    return comp, problems


def _comp_param(
    what: str,
    target: str,
    p: Param,
    nodes: _Nodes,
    shape: _Shape,
    declared: Mapping[str, Declared],
    inputs: Mapping[str, InputSpec],
) -> tuple[bool, list[str]]:
    """One compensation parameter: whether it is passed only when available, and its
    problems. It may take the target's result, an ancestor's, another step's (with a
    default), an input or the run id."""
    if p.name in shape.skippable and p.name != target and not p.has_default:
        return True, [
            f"{what}, parameter '{p.name}': step '{p.name}' may be skipped by a "
            "condition, so it may have no result; give the parameter a default"
        ]
    if p.name == RUN_ID:
        return False, []
    by_name = nodes.by_name
    if p.name == target or (p.name in by_name and p.name in shape.ancestors.get(target, ())):
        return False, _mismatch(what, p, p.name, nodes.sigs.get(p.name))
    if p.name in by_name:
        if p.has_default:
            return True, []
        return True, [
            f"{what}, parameter '{p.name}': step '{p.name}' is not a dependency "
            f"of '{target}', so it may not have completed when '{target}' is "
            f"undone; make '{target}' depend on it or give the parameter a default"
        ]
    if p.name in inputs:
        return _comp_input(what, p, declared, inputs[p.name])
    return False, [
        f"{what}, parameter '{p.name}': names no step or input of this saga"
        f"{_suggest(p.name, set(by_name) | set(inputs))}; a compensation takes the "
        f"step's result as '{target}', other steps' results and inputs"
    ]


def _comp_input(
    what: str, p: Param, declared: Mapping[str, Declared], spec: InputSpec
) -> tuple[bool, list[str]]:
    """A compensation parameter taking an input. An optional inferred input has no
    saga-wide default to pass, so the parameter is optional and needs its own default."""
    problems = _input_mismatch(what, p, declared[p.name]) if p.name in declared else []
    if spec.required or spec.declared:
        return False, problems
    if not p.has_default:
        problems.append(
            f"{what}, parameter '{p.name}': input '{p.name}' is optional "
            "(the steps give it a default), so the compensation may run "
            "without it; give the parameter a default too"
        )
    return True, problems


# -- output and plan ---------------------------------------------------------------------


def _output(
    output: str | None, shape: _Shape, steps: Mapping[str, Step[Any, Any]]
) -> tuple[str | None, list[str]]:
    """The output step: the one named by ``output =``, else the only sink, else none."""
    if output is not None:
        if not isinstance(output, str) or output not in steps:
            return None, [
                f"output = {output!r} names no step{_suggest(str(output), set(steps))}; "
                "set it to a step's name"
            ]
        return output, []
    sinks = [name for name in shape.order if not shape.dependents[name]]
    return (sinks[0] if len(sinks) == 1 else None), []


def _plan(
    saga: str,
    nodes: _Nodes,
    edges: _Edges,
    shape: _Shape,
    comps: Mapping[str, CompNode],
    inputs: Mapping[str, InputSpec],
    output: str | None,
    retry_defaults: Retry | None,
) -> Plan:
    """The frozen plan of a saga with no problem; nodes in topological order."""
    order, descendants = shape.order, shape.descendants
    return Plan(
        saga=saga,
        nodes=MappingProxyType(
            {
                name: _node(name, nodes, edges, shape, comps.get(name), retry_defaults)
                for name in order
            }
        ),
        order=order,
        roots=tuple(name for name in order if not edges.deps[name]),
        inputs=MappingProxyType(inputs),
        output=output,
        descendants=MappingProxyType(descendants),
        chain=all(later in descendants[earlier] for earlier, later in pairwise(order)),
    )


def _node(
    name: str,
    nodes: _Nodes,
    edges: _Edges,
    shape: _Shape,
    comp: CompNode | None,
    retry_defaults: Retry | None,
) -> Node:
    """A step as the scheduler needs it; a locked step keeps its parameter defaults."""
    s, sig, lock = nodes.by_name[name], nodes.sigs[name], nodes.locks.get(name)
    return Node(
        name=name,
        fn=s.fn,
        params=tuple(p.name for p in sig.params),
        deps=edges.deps[name],
        dependents=tuple(shape.dependents[name]),
        retry=s.retry or retry_defaults or NO_RETRY,
        timeout=s.timeout,
        compensation=comp,
        when=_when(s, nodes.conds.get(name)),
        required=tuple(edges.required[name]),
        invoke=s.invoke,
        lock=lock,
        takes_lease=lock is not None and "lease" in _param_names(s.signature),
        defaults=MappingProxyType(
            {p.name: p.default for p in sig.params if p.has_default} if lock is not None else {}
        ),
        returns=sig.returns,
        idempotent=s.idempotent is True,
        queue=s.queue if isinstance(s.queue, str) else None,
        types=_types_of(sig) if s.queue is not None else None,
    )


def _types_of(sig: Signature) -> Mapping[str, Any]:
    """What a worker decodes each parameter as (a step on workers)."""
    return MappingProxyType({p.name: p.annotation for p in sig.params})


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
