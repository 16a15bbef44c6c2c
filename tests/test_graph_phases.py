"""The planner's phases, called directly: every problem with its exact words, in phase order
(nodes, input names, inputs, edges, order, compensations, output), and the plan's fields."""

from typing import Any

from asaga import Retry, step
from asaga._graph import Declared, Plan, build_plan
from asaga._step import Compensation, Step

RESERVED = frozenset({"output", "run", "max_concurrency"})
SETTINGS = frozenset({"max_concurrency"})


def plan(
    steps: list[Step[Any, Any]],
    comps: list[Compensation],
    declared: dict[str, Declared] | None = None,
    *,
    output: str | None = None,
    retry_defaults: Retry | None = None,
) -> tuple[Plan | None, list[str], list[str]]:
    """``build_plan`` as a saga class calls it: the plan, the input names, the problems."""
    result, inputs, problems = build_plan(
        "S",
        steps,
        comps,
        declared or {},
        output=output,
        retry_defaults=retry_defaults,
        namespace={},
        reserved=RESERVED,
        settings=SETTINGS,
    )
    return result, list(inputs), problems


def test_inferred_inputs_problems_are_listed_by_phase() -> None:
    """With inferred inputs, each phase's problems follow the previous phase's: a step's own
    problems together, then inputs, edges, compensations (in order), output."""

    @step
    async def a(x: int, hooks: int) -> int:
        return x

    bad_retry: Any = "r"
    bad_flag: Any = "yes"

    @step(retry=bad_retry, timeout=-1, idempotent=bad_flag, lock="inv:{nope}")
    async def b(a: str, x: str, lease: object) -> int:
        return 1

    async def b_again(a: int) -> int:
        return a

    b_again.__name__ = "b"

    async def ready(a: int, z: int) -> bool:
        return True

    @step(when=ready)
    async def c(a: int, y: int = 1) -> int:
        return a

    @step
    async def run_id(a: int) -> int:
        return a

    @step
    async def output(c: int) -> int:
        return c

    @step
    async def elsewhere() -> None:
        return None

    bad_doubt: Any = "x"
    worse_retry: Any = "bad"

    @a.compensate(in_doubt=bad_doubt, retry=worse_retry)
    async def undo_a(a: int, c: int, y: int, zz: int, output: int, run_id: str) -> None:
        return None

    @a.compensate
    async def undo_a_again(a: int) -> None:
        return None

    @elsewhere.compensate
    async def undo_elsewhere() -> None:
        return None

    @b.compensate
    async def undo_b(b: str, x: int = 0, output: int = 0) -> None:
        return None

    @c.compensate
    async def undo_c(c: int, b: int) -> None:
        return None

    result, inputs, problems = plan(
        [a, b, step(b_again), c, run_id, output],
        [undo_a, undo_a_again, undo_elsewhere, undo_b, undo_c],
        output="nope",
    )
    assert result is None
    assert inputs == ["x", "hooks", "y", "z"]
    assert problems == [
        "step 'b': lock key field {nope} is not a parameter of the step; add the parameter "
        "or fix the template",
        "step 'b': retry= takes a Retry(...), got 'r'",
        "step 'b': timeout= takes a number of seconds > 0, got -1",
        "step 'b': idempotent= takes True or False, got 'yes'",
        "step 'b' is defined twice; step names must be unique, rename one",
        "step 'run_id': `run_id` is the parameter that receives the run's id; rename the step",
        "step 'output' shadows the Saga attribute `output`; rename the step",
        "input 'x' is annotated `int` in step 'a' but `str` in step 'b'; use one type, or "
        "declare the input on the saga",
        "step 'a', parameter 'hooks': `hooks` is reserved for run() options; rename the parameter",
        "step 'b', parameter 'a': annotated `str` but step 'a' returns `int`; make the "
        "annotations agree",
        "compensation 'undo_a' of step 'a': retry= takes a Retry(...), got 'bad'",
        "compensation 'undo_a' of step 'a': in_doubt='x': set it to True or False",
        "compensation 'undo_a' of step 'a', parameter 'c': step 'c' may be skipped by a "
        "condition, so it may have no result; give the parameter a default",
        "compensation 'undo_a' of step 'a', parameter 'y': input 'y' is optional (the steps "
        "give it a default), so the compensation may run without it; give the parameter a "
        "default too",
        "compensation 'undo_a' of step 'a', parameter 'zz': names no step or input of this "
        "saga (did you mean 'z'?); a compensation takes the step's result as 'a', other "
        "steps' results and inputs",
        "compensation 'undo_a' of step 'a', parameter 'output': step 'output' may be skipped "
        "by a condition, so it may have no result; give the parameter a default",
        "step 'a' has two compensations ('undo_a' and 'undo_a_again'); keep one",
        "compensation 'undo_elsewhere' of step 'elsewhere': 'elsewhere' is not a step of "
        "this saga (it belongs to another saga or to none); register compensations on this "
        "saga's own steps",
        "compensation 'undo_b' of step 'b', parameter 'b': annotated `str` but step 'b' "
        "returns `int`; make the annotations agree",
        "compensation 'undo_c' of step 'c', parameter 'b': step 'b' is not a dependency of "
        "'c', so it may not have completed when 'c' is undone; make 'c' depend on it or give "
        "the parameter a default",
        "output = 'nope' names no step; set it to a step's name",
    ]


def test_declared_inputs_problems_are_listed_by_phase() -> None:
    """With declared inputs, input-name problems follow the steps', every undeclared
    parameter is named, and annotations are checked against the declarations."""

    @step
    async def x(q: int, xx: int) -> int:
        return q

    @step
    async def fetch(x: str, amount: str) -> int:
        return 1

    @fetch.compensate
    async def undo_fetch(fetch: str, amount: int, bogus: int) -> None:
        return None

    declared = {
        "amount": Declared(int, False, None),
        "x": Declared(int, True, 3),
        "hooks": Declared(int, False, None),
        "max_concurrency": Declared(int, False, None),
        "run": Declared(int, False, None),
    }
    result, inputs, problems = plan([x, fetch], [undo_fetch], declared)
    assert result is None
    assert inputs == ["amount", "x", "hooks", "max_concurrency", "run"]
    assert problems == [
        "step 'x' has the same name as the input `x`; rename the step or the input",
        "input `hooks` uses a name reserved for run() options; rename the input",
        "`max_concurrency` is a Saga setting, not an input: assign it without an annotation "
        "(`max_concurrency = ...`)",
        "input `run` would hide `Saga.run`; rename the input",
        "step 'x', parameter 'q': no step or input is named 'q'; declare it on the saga "
        "(`q: <type>`) or rename the parameter",
        "step 'x', parameter 'xx': no step or input is named 'xx' (did you mean 'x'?); "
        "declare it on the saga (`xx: <type>`) or rename the parameter",
        "step 'fetch', parameter 'x': annotated `str` but step 'x' returns `int`; make the "
        "annotations agree",
        "step 'fetch', parameter 'amount': annotated `str` but the saga declares input "
        "'amount' as `int`; make them agree",
        "compensation 'undo_fetch' of step 'fetch', parameter 'fetch': annotated `str` but "
        "step 'fetch' returns `int`; make the annotations agree",
        "compensation 'undo_fetch' of step 'fetch', parameter 'bogus': names no step or "
        "input of this saga; a compensation takes the step's result as 'fetch', other "
        "steps' results and inputs",
    ]


def test_a_cycle_silences_dependency_complaints() -> None:
    """After a cycle, a compensation may take any step (no "not a dependency" on top of
    the cycle), but its annotations are still checked."""

    @step
    async def p(r: int) -> int:
        return r

    @step
    async def q(p: int) -> int:
        return p

    @step
    async def r(q: int) -> int:
        return q

    @step
    async def s() -> str:
        return ""

    @p.compensate
    async def undo_p(p: int, s: int) -> None:
        return None

    result, inputs, problems = plan([p, q, r, s], [undo_p])
    assert result is None
    assert inputs == []
    assert problems == [
        "steps form a cycle: 'p' -> 'r' -> 'q' -> 'p'; each parameter names a step it waits "
        "for, so break the loop",
        "compensation 'undo_p' of step 'p', parameter 's': annotated `int` but step 's' "
        "returns `str`; make the annotations agree",
    ]


def test_plan_fields() -> None:
    """A sound saga's plan: nodes in topological order with their edges, lock, lease,
    condition and compensation; roots, inputs, output, descendants and chain."""
    defaults = Retry(max_attempts=2)
    own = Retry(max_attempts=5)

    @step(lock="inv:{sku}", idempotent=True)
    async def reserve(qty: int, lease: object, sku: str = "a") -> int:
        return qty

    def positive(reserve: int) -> bool:
        return reserve > 0

    @step(when=positive, retry=own, timeout=2.0)
    async def charge(reserve: int, run_id: str) -> int:
        return reserve

    @step
    async def ship(reserve: int, charge: int = 0) -> str:
        return "shipped"

    @reserve.compensate
    async def release(reserve: int, qty: int, charge: int = 0) -> None:
        return None

    result, inputs, problems = plan([ship, charge, reserve], [release], retry_defaults=defaults)
    assert problems == []
    assert result is not None
    assert inputs == ["qty", "sku"]
    assert result.saga == "S"
    assert result.order == ("reserve", "charge", "ship")
    assert list(result.nodes) == ["reserve", "charge", "ship"]
    assert result.roots == ("reserve",)
    assert result.output == "ship"
    assert result.chain
    assert dict(result.descendants) == {
        "ship": frozenset(),
        "charge": frozenset({"ship"}),
        "reserve": frozenset({"charge", "ship"}),
    }
    assert [(i.name, i.required, i.default, i.declared) for i in result.inputs.values()] == [
        ("qty", True, None, False),
        ("sku", False, "a", False),
    ]

    first, second, last = (result.nodes[n] for n in result.order)
    assert (first.params, first.deps, first.dependents) == (("qty", "sku"), (), ("charge", "ship"))
    assert first.lock is not None
    assert first.lock.keys == ("inv:{sku}",)
    assert first.takes_lease
    assert dict(first.defaults) == {"sku": "a"}
    assert first.idempotent
    assert first.returns is int
    assert first.retry == defaults
    assert first.compensation is not None
    assert first.compensation.name == "release"
    assert first.compensation.params == ("reserve", "qty", "charge")
    assert first.compensation.optional == frozenset({"charge"})
    assert first.compensation.retry == defaults

    assert (second.params, second.deps, second.required) == (
        ("reserve", "run_id"),
        ("reserve",),
        ("reserve",),
    )
    assert second.when is not None
    assert second.when.params == ("reserve",)
    assert not second.when.is_async
    assert (second.retry, second.timeout) == (own, 2.0)
    assert (second.lock, second.compensation) == (None, None)
    assert not second.takes_lease
    assert dict(second.defaults) == {}

    assert (last.deps, last.required, last.dependents) == (("reserve", "charge"), ("reserve",), ())


def test_no_single_sink_no_output_no_chain() -> None:
    """Two sinks and no ``output =``: no output step, and the steps may run side by side."""

    @step
    async def root() -> int:
        return 1

    @step
    async def left(root: int) -> int:
        return root

    @step
    async def right(root: int) -> int:
        return root

    result, _, problems = plan([root, left, right], [])
    assert problems == []
    assert result is not None
    assert result.output is None
    assert not result.chain
    assert result.roots == ("root",)
