"""Conditional steps: ``when=`` skips a step; skipping spreads unless a dependency is
optional; skipped steps are never compensated."""

from typing import Literal

import anyio
import pytest

from asaga import Saga, SagaDefinitionError, SagaFailed, step
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The failure the tests inject."""


def make_switch(log: list[str], fail_notify: bool = False) -> type[Saga]:
    """A switch on ``operation``: exactly one of reserve/release runs."""

    async def is_release(operation: str) -> bool:
        return operation == "release"

    class Inventory(Saga):
        operation: Literal["reserve", "release"]
        quantity: int

        @step
        async def load(quantity: int) -> int:
            log.append("load")
            return quantity

        @step(when=lambda operation: operation == "reserve")
        async def reserve(load: int) -> str:
            log.append("reserve")
            return f"reserved {load}"

        @step(when=is_release)
        async def release(load: int) -> str:
            log.append("release")
            return f"released {load}"

        @step
        async def notify(reserve: str | None = None, release: str | None = None) -> str:
            if fail_notify:
                raise Boom("notify")
            log.append("notify")
            return reserve or release or "nothing"

        @reserve.compensate
        async def unreserve(reserve: str) -> None:
            log.append("unreserve")

        @release.compensate
        async def unrelease(release: str) -> None:
            log.append("unrelease")

    return Inventory


async def test_switch_runs_one_branch() -> None:
    """Only the branch whose condition holds runs; the join gets its default for the
    other; events record step_skipped; skipped steps have no result."""
    log: list[str] = []
    recorder = EventRecorder()
    result = await make_switch(log).run(operation="release", quantity=2, hooks=[recorder])
    assert result.output == "released 2"
    assert log == ["load", "release", "notify"]
    assert recorder.steps("step_skipped") == ["reserve"]
    assert "reserve" not in result.results


async def test_skipped_steps_are_never_compensated() -> None:
    """A later failure undoes the steps that ran, never the skipped one, and nothing runs
    twice."""
    log: list[str] = []
    with pytest.raises(SagaFailed) as info:
        await make_switch(log, fail_notify=True).run(operation="reserve", quantity=1)
    assert info.value.compensated == ("reserve",)
    assert log == ["load", "reserve", "unreserve"]


async def test_dependents_of_a_skipped_step_are_skipped() -> None:
    """A step that requires a skipped step (no default) is skipped too, transitively."""
    recorder = EventRecorder()

    class Chain(Saga):
        @step(when=lambda flag: flag)
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> int:
            return a + 1

        @step
        async def c(b: int) -> int:
            return b + 1

        @step
        async def d(c: int = 0) -> int:
            return c + 100

    result = await Chain.run(flag=False, hooks=[recorder])
    assert recorder.steps("step_skipped") == ["a", "b", "c"]
    assert result.output == 100
    assert dict(result.results) == {"d": 100}


async def test_condition_parameters_are_dependencies() -> None:
    """A condition that names a step waits for it and sees its result."""
    seen: list[int] = []

    class Gate(Saga):
        @step
        async def count() -> int:
            return 5

        @step(when=lambda count: count > 3)
        async def big() -> str:
            return "big"

        @step(when=lambda count: count <= 3)
        async def small() -> str:
            return "small"

        @step
        async def report(count: int, big: str = "", small: str = "") -> str:
            seen.append(count)
            return big or small

    assert (await Gate.run()).output == "big"
    assert seen == [5]


async def test_async_condition_and_failing_condition() -> None:
    """Conditions may be async; one that raises fails its step."""

    async def explode(x: int) -> bool:
        raise Boom("condition")

    class Broken(Saga):
        @step(when=explode)
        async def a() -> int:
            return 1

    with pytest.raises(SagaFailed) as info:
        await Broken.run(x=1)
    assert info.value.step == "a"
    assert isinstance(info.value.__cause__, Boom)


async def test_skip_inside_concurrent_branches() -> None:
    """Skipping one branch does not hold up a concurrent one."""
    ping = anyio.Event()

    class Branches(Saga):
        @step(when=lambda on: on)
        async def maybe() -> None:
            return None

        @step
        async def always() -> str:
            ping.set()
            return "ok"

    with anyio.fail_after(5):
        result = await Branches.run(on=False)
    assert ping.is_set()
    assert dict(result.results) == {"always": "ok"}


def test_condition_problems_at_definition() -> None:
    """A condition naming nothing known is a definition error naming the condition."""
    with pytest.raises(SagaDefinitionError) as info:

        class Bad(Saga):
            amount: int

            @step(when=lambda amout: amout > 0)
            async def a(amount: int) -> int:
                return amount

    (problem,) = info.value.problems
    assert "condition of step 'a', parameter 'amout'" in problem
    assert "did you mean 'amount'" in problem


def test_compensation_of_a_skippable_ancestor_needs_a_default() -> None:
    """A compensation taking the result of a step that may be skipped needs a default."""
    with pytest.raises(SagaDefinitionError) as info:

        class Maybe(Saga):
            @step(when=lambda flag: flag)
            async def a() -> int:
                return 1

            @step
            async def b(a: int = 0) -> int:
                return a + 10

            @b.compensate
            async def undo_b(b: int, a: int) -> None:
                return None

    (problem,) = info.value.problems
    assert "parameter 'a': step 'a' may be skipped" in problem


async def test_compensation_gets_the_default_for_a_skipped_ancestor() -> None:
    """With the default, the compensation runs and receives it."""
    seen: list[tuple[int, int]] = []

    class Maybe(Saga):
        @step(when=lambda flag: flag)
        async def a() -> int:
            return 1

        @step
        async def b(a: int = 0) -> int:
            return a + 10

        @b.compensate
        async def undo_b(b: int, a: int = -1) -> None:
            seen.append((b, a))

        @step
        async def c(b: int) -> None:
            raise Boom

    with pytest.raises(SagaFailed):
        await Maybe.run(flag=False)
    assert seen == [(10, -1)]
