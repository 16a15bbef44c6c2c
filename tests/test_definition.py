"""Definition time: a saga class is planned and validated once, with every problem listed."""

import inspect
import typing
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
import pytest

from asaga import InputValidationError, Resource, Saga, SagaDefinitionError, step


def problems_of(build: typing.Callable[[], object]) -> tuple[str, ...]:
    with pytest.raises(SagaDefinitionError) as info:
        build()
    return info.value.problems


def test_valid_saga_builds_plan_once() -> None:
    """A well-formed saga builds; its plan records dependencies read from parameter names."""

    class Ok(Saga):
        @step
        async def a(x: int) -> int:
            return x

        @step
        async def b(a: int) -> int:
            return a

    assert Ok.__asaga__ is not None
    plan = Ok.__asaga__.plan
    assert plan.nodes["b"].deps == ("a",)
    assert plan.nodes["a"].dependents == ("b",)
    assert plan.roots == ("a",)
    assert plan.output == "b"
    assert set(plan.inputs) == {"x"}


def test_cycle_is_named() -> None:
    """A cycle is reported with the steps that form it."""

    def build() -> None:
        class Loop(Saga):
            @step
            async def a(c: int) -> int:
                return c

            @step
            async def b(a: int) -> int:
                return a

            @step
            async def c(b: int) -> int:
                return b

    (problem,) = problems_of(build)
    assert "cycle" in problem
    for name in ("'a'", "'b'", "'c'"):
        assert name in problem


def test_self_dependency_is_a_cycle() -> None:
    """A step that takes its own name as a parameter waits on itself: a cycle."""

    def build() -> None:
        class Self(Saga):
            @step
            async def a(a: int) -> int:
                return a

    (problem,) = problems_of(build)
    assert "cycle" in problem


def test_unknown_parameter_suggests_close_match() -> None:
    """With declared inputs, an undeclared non-step parameter is an error with a suggestion."""

    def build() -> None:
        class Typo(Saga):
            amount: int

            @step
            async def charge(amout: int) -> int:
                return amout

    (problem,) = problems_of(build)
    assert "step 'charge', parameter 'amout'" in problem
    assert "did you mean 'amount'" in problem


def test_non_async_step_and_async_generator() -> None:
    """Steps must be ``async def``; a plain function or an async generator is refused."""

    def build() -> None:
        class Sync(Saga):
            @step  # type: ignore[arg-type]
            def a(x: int) -> int:
                return x

            @step  # type: ignore[arg-type]
            async def b(x: int) -> typing.AsyncIterator[int]:
                yield x

    found = problems_of(build)
    assert any("step 'a' is not `async def`" in p for p in found)
    assert any("step 'b' is an async generator" in p for p in found)


def test_star_args_kwargs_and_positional_only() -> None:
    """*args, **kwargs and positional-only parameters cannot receive values by name."""

    def build() -> None:
        class Stars(Saga):
            @step
            async def a(*args: int) -> int:
                return 0

            @step
            async def b(**kwargs: int) -> int:
                return 0

            @step
            async def c(x: int, /) -> int:
                return x

    found = problems_of(build)
    assert any("'*args'" in p for p in found)
    assert any("'**kwargs'" in p for p in found)
    assert any("step 'c', parameter 'x': positional-only" in p for p in found)


def test_compensation_for_a_step_of_another_saga() -> None:
    """``@x.compensate`` where x belongs to another saga (or none) is refused."""

    @step
    async def loose(x: int) -> int:
        return x

    def build() -> None:
        class Other(Saga):
            @step
            async def a(x: int) -> int:
                return x

            @loose.compensate
            async def undo_loose(loose: int) -> None:
                return None

    (problem,) = problems_of(build)
    assert "compensation 'undo_loose' of step 'loose'" in problem
    assert "not a step of this saga" in problem


def test_duplicate_step_names() -> None:
    """The same name defined twice in a class body is an error, not a silent override."""

    def build() -> None:
        class Dup(Saga):
            @step
            async def a(x: int) -> int:
                return x

            @step  # type: ignore[no-redef]
            async def a(x: int) -> int:  # noqa: F811 - the redefinition under test
                return x + 1

    (problem,) = problems_of(build)
    assert "'a' is defined twice" in problem


def test_two_steps_with_one_function_name() -> None:
    """Two attributes holding steps whose functions share a name are a duplicate."""

    async def same(x: int) -> int:
        return x

    def build() -> None:
        class Dup(Saga):
            first = step(same)
            second = step(same)

    (problem,) = problems_of(build)
    assert "step 'same' is defined twice" in problem


def test_producer_consumer_annotation_mismatch() -> None:
    """Where both sides are annotated, the consumer must accept what the producer returns."""

    def build() -> None:
        class Mismatch(Saga):
            @step
            async def a(x: int) -> str:
                return str(x)

            @step
            async def b(a: int) -> int:
                return a

    (problem,) = problems_of(build)
    assert "step 'b', parameter 'a': annotated `int` but step 'a' returns `str`" in problem


@pytest.mark.parametrize(
    ("produced", "expected"),
    [
        (bool, int),
        (int, float),
        (list[int], Sequence[int]),
        (int, int | None),
        (Literal["a"], str),
        (Literal["a"], Literal["a", "b"]),
        (Annotated[int, "meta"], int),
        (typing.Any, str),
    ],
)
def test_compatible_annotations_are_accepted(produced: object, expected: object) -> None:
    """Subclasses, unions, Literals, Annotated and Any are accepted where they fit."""

    async def a(x: int) -> object:
        return x

    async def b(a: object) -> None:
        return None

    a.__annotations__["return"] = produced
    b.__annotations__["a"] = expected

    class Fits(Saga):
        sa = step(a)
        sb = step(b)

    assert Fits.__asaga__ is not None


def test_every_problem_in_one_error() -> None:
    """Several problems are reported together, each on its own line."""

    def build() -> None:
        class Broken(Saga):
            amount: int

            @step  # type: ignore[arg-type]
            def a(amount: int) -> int:
                return amount

            @step
            async def b(a: int, nope: int) -> int:
                return a

            @step
            async def c(*args: int) -> int:
                return 0

    with pytest.raises(SagaDefinitionError) as info:
        build()
    err = info.value
    assert err.saga == "Broken"
    assert len(err.problems) == 3
    assert "saga Broken has 3 problems" in str(err)
    for problem in err.problems:
        assert f"  - {problem}" in str(err)


def test_declared_inputs_make_every_input_declared() -> None:
    """Once any input is annotated, undeclared parameters are errors, not inferred inputs."""

    def build() -> None:
        class Half(Saga):
            a_in: int

            @step
            async def a(a_in: int, b_in: int) -> int:
                return a_in + b_in

    (problem,) = problems_of(build)
    assert "parameter 'b_in'" in problem


def test_compensation_parameters_must_name_something() -> None:
    """A compensation parameter naming no step or input is an error."""

    def build() -> None:
        class BadUndo(Saga):
            @step
            async def a(x: int) -> int:
                return x

            @a.compensate
            async def undo_a(a: int, y: int) -> None:
                return None

    (problem,) = problems_of(build)
    assert "compensation 'undo_a' of step 'a', parameter 'y'" in problem


def test_compensation_may_take_ancestors_and_inputs() -> None:
    """The step's result, its ancestors' results and inputs are valid compensation params."""

    class Fine(Saga):
        @step
        async def a(x: int) -> int:
            return x

        @step
        async def b(a: int) -> int:
            return a

        @b.compensate
        async def undo_b(b: int, a: int, x: int) -> None:
            return None

    assert Fine.__asaga__ is not None


def test_compensation_of_non_ancestor_needs_default() -> None:
    """A non-ancestor step may not have completed: its parameter needs a default."""

    def build() -> None:
        class Sibling(Saga):
            @step
            async def a(x: int) -> int:
                return x

            @step
            async def b(x: int) -> int:
                return x

            @a.compensate
            async def undo_a(a: int, b: int) -> None:
                return None

    (problem,) = problems_of(build)
    assert "step 'b' is not a dependency of 'a'" in problem


def test_two_compensations_for_one_step() -> None:
    """A step has at most one compensation."""

    def build() -> None:
        class Twice(Saga):
            @step
            async def a(x: int) -> int:
                return x

            @a.compensate
            async def undo1(a: int) -> None:
                return None

            @a.compensate
            async def undo2(a: int) -> None:
                return None

    (problem,) = problems_of(build)
    assert "two compensations" in problem


def test_step_never_raises_on_its_own() -> None:
    """``@step`` accepts anything; problems surface only at class creation."""

    def not_async(x: int) -> int:
        return x

    made = step(not_async)  # type: ignore[arg-type]
    assert made.name == "not_async"
    assert made.signature.problems


def test_bad_settings_and_options() -> None:
    """Saga settings and step options are checked at class creation too."""

    def build() -> None:
        class Settings(Saga):
            output = "nope"
            max_concurrency = 0
            on_failure = "explode"  # type: ignore[assignment]
            retry_defaults = 3  # type: ignore[assignment]
            compensation_timeout = -1

            @step(timeout=0, retry="twice")  # type: ignore[arg-type]
            async def a(x: int) -> int:
                return x

    found = "\n".join(problems_of(build))
    for needle in (
        "output = 'nope' names no step",
        "max_concurrency = 0",
        "on_failure = 'explode'",
        "retry_defaults = 3",
        "compensation_timeout = -1",
        "step 'a': timeout=",
        "step 'a': retry=",
    ):
        assert needle in found


def test_reserved_names() -> None:
    """Steps cannot shadow Saga attributes; inputs cannot use run()'s option names."""

    def build() -> None:
        class Reserved(Saga):
            hooks_: int

            @step
            async def run(x: int) -> int:
                return x

            @step
            async def other(idempotency_key: str) -> str:
                return idempotency_key

            @step
            async def run_id() -> str:
                return "id"

    found = "\n".join(problems_of(build))
    assert "step 'run' shadows the Saga attribute" in found
    assert "parameter 'idempotency_key'" in found
    assert "step 'run_id': `run_id` is the parameter that receives the run's id" in found


def test_input_type_that_cannot_be_validated() -> None:
    """A declared input msgspec cannot check is refused with a hint to use Resource."""

    class Proto(typing.Protocol):
        def go(self) -> None: ...

    def build() -> None:
        class Client(Saga):
            client: Proto

            @step
            async def a(client: Proto) -> None:
                return None

    (problem,) = problems_of(build)
    assert "Resource[...]" in problem

    class WithResource(Saga):
        client: Resource[Proto]

        @step
        async def a(client: Proto) -> None:
            return None

    assert WithResource.__asaga__ is not None


def test_unresolvable_annotation() -> None:
    """An annotation naming something that does not exist is a definition error."""

    def build() -> None:
        class Ghost(Saga):
            @step
            async def a(x: "DoesNotExist") -> int:  # type: ignore[name-defined]  # noqa: F821
                return 1

    (problem,) = problems_of(build)
    assert "DoesNotExist" in problem


def test_declared_input_type_mismatch() -> None:
    """A step parameter must accept the declared input's type."""

    def build() -> None:
        class Mixed(Saga):
            amount: Annotated[int, msgspec.Meta(gt=0)]

            @step
            async def a(amount: str) -> str:
                return amount

    (problem,) = problems_of(build)
    assert "declares input 'amount' as `int`" in problem


def test_inherited_saga_reuses_steps() -> None:
    """A subclass inherits its parent's steps and may replace one by name."""

    class Parent(Saga):
        @step
        async def a(x: int) -> int:
            return x

        @step
        async def b(a: int) -> int:
            return a

    class Child(Parent):
        @step
        async def b(a: int) -> int:
            return a * 10

    assert Child.__asaga__ is not None
    plan = Child.__asaga__.plan
    assert set(plan.nodes) == {"a", "b"}
    assert plan.nodes["b"].fn is Child.b.fn


def test_calling_a_saga_binds_its_inputs_validated_at_once() -> None:
    """``MySaga(x=1)`` is the saga with its inputs (for ``.run()``), validated now;
    positional inputs, bad ones and the base class are refused."""

    class One(Saga):
        @step
        async def a(x: int) -> int:
            return x

    called = One(x=1)
    assert called.x == 1  # type: ignore[attr-defined]
    assert repr(called) == "One(x=1)"
    with pytest.raises(AttributeError, match="frozen"):
        called.x = 2  # type: ignore[attr-defined]
    with pytest.raises(InputValidationError, match="x: missing required input"):
        One()
    with pytest.raises(TypeError, match="by name"):
        One(1)
    with pytest.raises(TypeError, match="base class"):
        Saga()


def test_run_never_inspects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signatures are read once at definition: run() works with inspect disabled."""
    import anyio

    class Plain(Saga):
        @step
        async def a(x: int) -> int:
            return x + 1

        @step
        async def b(a: int) -> int:
            return a * 2

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("inspected during run()")

    monkeypatch.setattr(inspect, "signature", boom)
    monkeypatch.setattr(inspect, "iscoroutinefunction", boom)
    monkeypatch.setattr(typing, "get_type_hints", boom)

    async def main() -> int:
        return (await Plain.run(x=1)).output  # type: ignore[no-any-return]

    assert anyio.run(main) == 4


def test_optional_inferred_input_in_compensation_needs_default() -> None:
    """A compensation taking an optional inferred input must give it a default too."""

    def build() -> None:
        class Opt(Saga):
            @step
            async def a(note: str = "") -> int:
                return 1

            @a.compensate
            async def undo_a(a: int, note: str) -> None:
                return None

    (problem,) = problems_of(build)
    assert "compensation 'undo_a' of step 'a', parameter 'note'" in problem
    assert "give the parameter a default" in problem


def test_input_problems_are_listed_with_graph_problems() -> None:
    """An unvalidatable input type is reported alongside the other problems."""

    class Proto(typing.Protocol):
        def go(self) -> None: ...

    def build() -> None:
        class Both(Saga):
            client: Proto

            @step
            async def a(client: Proto, missing: int) -> None:
                return None

    found = problems_of(build)
    assert len(found) == 2
    assert any("Resource[...]" in p for p in found)
    assert any("parameter 'missing'" in p for p in found)


def test_input_hiding_a_saga_method() -> None:
    """An input named like a Saga method is refused with a rename hint."""

    def build() -> None:
        class Hides(Saga):
            run: int  # type: ignore[assignment]

            @step
            async def a(run: int) -> int:
                return run

    found = problems_of(build)
    assert "input `run` would hide `Saga.run`; rename the input" in found


def test_redefined_step_with_compensation_reports_once() -> None:
    """Redefining a compensated step gives one problem, not a confusing second one."""

    def build() -> None:
        class Dup(Saga):
            @step
            async def a(x: int) -> int:
                return x

            @a.compensate
            async def undo_a(a: int) -> None:
                return None

            @step  # type: ignore[no-redef]
            async def a(x: int) -> int:
                return x

    (problem,) = problems_of(build)
    assert "'a' is defined twice" in problem


def test_settings_cannot_change_after_creation() -> None:
    """Settings are read once, at class creation: assigning or deleting one later raises,
    naming the setting and saying where to set it, and the saga keeps its settings."""

    class Capped(Saga):
        max_concurrency = 2

        @step
        async def a(x: int) -> int:
            return x

    with pytest.raises(AttributeError, match=r"Capped\.max_concurrency cannot be assigned") as info:
        Capped.max_concurrency = 3
    assert "in the class body (or in the body of a subclass)" in str(info.value)
    with pytest.raises(AttributeError, match=r"Capped\.max_concurrency cannot be deleted"):
        del Capped.max_concurrency
    with pytest.raises(AttributeError, match=r"Capped\.hooks cannot be assigned"):
        Capped.hooks = [print]
    assert Capped.max_concurrency == 2
    assert Capped.__asaga__ is not None
    assert Capped.__asaga__.max_concurrency == 2
    with pytest.raises(AttributeError, match=r"Saga\.on_failure cannot be assigned: settings"):
        Saga.on_failure = "cancel"
    assert Saga.on_failure == "wait"


def test_steps_cannot_change_after_creation() -> None:
    """Steps and compensations are planned once: assigning, replacing or deleting one on
    the class later raises; other class attributes stay assignable."""

    class Planned(Saga):
        @step
        async def a(x: int) -> int:
            return x

        @a.compensate
        async def undo_a(a: int) -> None:
            return None

    class Child(Planned):
        pass

    async def other(x: int) -> int:
        return x

    with pytest.raises(AttributeError, match=r"Planned\.a cannot be assigned .* it is a step"):
        Planned.a = step(other)
    with pytest.raises(AttributeError, match=r"Planned\.a cannot be deleted .* it is a step"):
        del Planned.a
    with pytest.raises(AttributeError, match=r"it is a compensation"):
        Planned.undo_a = None
    with pytest.raises(AttributeError, match=r"Child\.a cannot be assigned"):  # inherited
        Child.a = None
    with pytest.raises(AttributeError, match=r"Planned\.b cannot be assigned .* value is a step"):
        Planned.b = step(other)
    Planned.note = "not a setting"  # a plain attribute is the user's own business
    del Planned.note
    assert Planned.__asaga__ is not None
    assert set(Planned.__asaga__.plan.nodes) == {"a"}


def test_subclass_sets_settings_in_its_body() -> None:
    """A subclass (or a base's ``__init_subclass__``, while the class is being created)
    sets settings anew; its parent keeps its own."""

    class Base(Saga):
        max_concurrency = 2

        def __init_subclass__(cls, **kwargs: typing.Any) -> None:
            cls.cancel_grace = 1.0
            super().__init_subclass__(**kwargs)

        @step
        async def a(x: int) -> int:
            return x

    class Sub(Base):
        max_concurrency = 5
        on_failure = "cancel"

    assert Base.__asaga__ is not None
    assert Sub.__asaga__ is not None
    assert (Base.__asaga__.max_concurrency, Base.__asaga__.cancel_grace) == (2, 10.0)
    assert Sub.__asaga__.max_concurrency == 5
    assert Sub.__asaga__.on_failure == "cancel"
    assert Sub.__asaga__.cancel_grace == 1.0
