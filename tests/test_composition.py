"""Composition: a step that runs another saga, and undoes it when the parent fails."""

import anyio
import pytest

from asaga import InputValidationError, Saga, SagaDefinitionError, SagaFailed, compose, step
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The failure the tests inject."""


def make_child(log: list[str]) -> type[Saga]:
    """hold -> confirm; both compensable."""

    class ReserveItem(Saga):
        @step
        async def hold(sku: str, qty: int) -> str:
            if sku == "missing":
                raise Boom("no such sku")
            log.append(f"hold {sku}x{qty}")
            return f"h-{sku}"

        @step
        async def confirm(hold: str) -> str:
            log.append(f"confirm {hold}")
            return f"c-{hold}"

        @hold.compensate
        async def unhold(hold: str) -> None:
            log.append(f"unhold {hold}")

        @confirm.compensate
        async def unconfirm(confirm: str) -> None:
            log.append(f"unconfirm {confirm}")

    return ReserveItem


def make_parent(log: list[str], *, fail_after_child: bool) -> type[Saga]:
    child = make_child(log)

    class Order(Saga):
        @step
        async def product(product_id: str) -> str:
            return product_id

        reserve = compose(child, sku="product", qty="quantity")

        @step
        async def charge(reserve: str) -> str:
            if fail_after_child:
                raise Boom("card declined")
            log.append(f"charge for {reserve}")
            return "paid"

    return Order


async def test_child_output_is_the_step_result() -> None:
    """The child's output becomes the composed step's result; inputs map by name."""
    log: list[str] = []
    result = await make_parent(log, fail_after_child=False).run(product_id="p1", quantity=2)
    assert result.results["reserve"] == "c-h-p1"
    assert log == ["hold p1x2", "confirm h-p1", "charge for c-h-p1"]


async def test_parent_failure_undoes_the_child_in_its_reverse_order() -> None:
    """The parent fails after the child completed: the child's own compensations run,
    confirm before hold, exactly once."""
    log: list[str] = []
    with pytest.raises(SagaFailed) as info:
        await make_parent(log, fail_after_child=True).run(product_id="p1", quantity=2)
    assert info.value.step == "charge"
    assert info.value.compensated == ("reserve",)
    assert log == ["hold p1x2", "confirm h-p1", "unconfirm c-h-p1", "unhold h-p1"]


async def test_child_failure_unwinds_itself_and_fails_the_step() -> None:
    """The child fails: it unwinds itself; the parent step fails with the child's
    SagaFailed as cause, naming the child's step."""
    log: list[str] = []
    with pytest.raises(SagaFailed) as info:
        await make_parent(log, fail_after_child=False).run(product_id="missing", quantity=1)
    err = info.value
    assert err.step == "reserve"
    cause = err.__cause__
    assert isinstance(cause, SagaFailed)
    assert cause.step == "hold"
    assert cause.saga == "ReserveItem"
    assert isinstance(cause.__cause__, Boom)
    assert err.compensated == ()
    assert log == []


async def test_child_events_carry_path_and_parent_run_id() -> None:
    """The child's events reach the parent's hooks with a path and the parent run id."""
    log: list[str] = []
    recorder = EventRecorder()
    result = await make_parent(log, fail_after_child=False).run(
        product_id="p1", quantity=1, hooks=[recorder]
    )
    child_events = [e for e in recorder.events if e.parent_run_id is not None]
    assert {e.parent_run_id for e in child_events} == {result.run_id}
    assert [(e.kind, e.path) for e in child_events] == [
        ("run_started", "reserve"),
        ("step_started", "reserve/hold"),
        ("step_succeeded", "reserve/hold"),
        ("step_started", "reserve/confirm"),
        ("step_succeeded", "reserve/confirm"),
        ("run_succeeded", "reserve"),
    ]
    assert len({e.run_id for e in child_events}) == 1
    assert child_events[0].run_id != result.run_id


async def test_cancelled_parent_undoes_a_completed_child() -> None:
    """A cancelled caller: the completed child is undone like any completed step."""
    log: list[str] = []
    child = make_child(log)
    charging = anyio.Event()

    class Order(Saga):
        reserve = compose(child, sku="sku", qty="qty")

        @step
        async def charge(reserve: str) -> None:
            charging.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Order.run(sku="s", qty=1))
        await charging.wait()
        tg.cancel_scope.cancel()
    assert log == ["hold sx1", "confirm h-s", "unconfirm c-h-s", "unhold h-s"]


async def test_unmapped_required_inputs_come_from_the_same_name() -> None:
    """Child inputs not mapped are read from the parent name equal to them."""
    log: list[str] = []
    child = make_child(log)

    class Direct(Saga):
        reserve = compose(child)

    result = await Direct.run(sku="z", qty=3)
    assert result.output == "c-h-z"


async def test_parent_inputs_feeding_a_child_are_validated_up_front() -> None:
    """A parent input that feeds a child input takes the child's type: a bad value is
    refused before any step runs."""
    log: list[str] = []
    child = make_child(log)

    class Typed(Saga):
        reserve = compose(child, qty="count")

    with pytest.raises(InputValidationError) as info:
        await Typed.run(sku="z", count="three")
    assert info.value.fields == ("count",)
    assert log == []


async def test_child_input_errors_fail_the_step() -> None:
    """A step result the child refuses fails the composed step, before the child runs."""
    log: list[str] = []
    child = make_child(log)

    class Untyped(Saga):
        @step
        async def count():  # type: ignore[no-untyped-def]
            return "three"

        reserve = compose(child, qty="count")

    with pytest.raises(SagaFailed) as info:
        await Untyped.run(sku="z")
    assert info.value.step == "reserve"
    assert isinstance(info.value.__cause__, InputValidationError)
    assert log == []


def test_compose_definition_problems_are_listed() -> None:
    """Bad compose() arguments surface at the parent's class creation, with the rest."""
    log: list[str] = []
    child = make_child(log)

    with pytest.raises(SagaDefinitionError) as info:

        class Broken(Saga):
            amount: int

            reserve = compose(child, nope="sku")
            other = compose(int)

    text = "\n".join(info.value.problems)
    assert "ReserveItem has no input 'nope'" in text
    assert "compose() takes a Saga subclass" in text
    assert "parameter 'sku'" in text  # required child input the parent lacks


async def test_nested_undo_with_async_hooks_in_the_middle() -> None:
    """Top -> Mid (with an async hook) -> Leaf: when Top fails, Leaf is still undone
    (its events reach the live unwinding run, not Mid's finished dispatcher)."""
    log: list[str] = []
    seen: list[str] = []

    async def hook(event: object) -> None:
        seen.append(getattr(event, "kind", ""))

    class Leaf(Saga):
        @step
        async def r(sku: str) -> str:
            return sku

        @r.compensate
        async def unr(r: str) -> None:
            log.append(f"undo {r}")

    class Mid(Saga):
        hooks = (hook,)
        leaf = compose(Leaf)

    class Top(Saga):
        mid = compose(Mid)

        @step
        async def boom(mid: str) -> None:
            raise Boom

    with pytest.raises(SagaFailed) as info:
        await Top.run(sku="s")
    assert type(info.value) is SagaFailed
    assert log == ["undo s"]
    assert "compensation_succeeded" in seen


async def test_child_compensation_failure_makes_the_parent_report_it() -> None:
    """A child undone after the parent failed, whose compensation fails: the parent raises
    CompensationFailed (UndoFailed inside), not a plain SagaFailed."""
    from asaga import CompensationFailed, UndoFailed

    class Child(Saga):
        @step
        async def a() -> int:
            return 1

        @a.compensate
        async def undo_a(a: int) -> None:
            raise RuntimeError("cannot undo")

    class Parent(Saga):
        child = compose(Child)

        @step
        async def fail(child: int) -> None:
            raise Boom

    with pytest.raises(CompensationFailed) as info:
        await Parent.run()
    assert info.value.failed_compensations == ("child",)
    (inner,) = info.value.errors.exceptions
    assert isinstance(inner, UndoFailed)
    assert inner.failed_compensations == ("a",)


async def test_failed_child_whose_unwind_failed_needs_a_human() -> None:
    """The child fails and its own compensation fails: the parent reports
    CompensationFailed naming the child's step."""
    from asaga import CompensationFailed

    class Child(Saga):
        @step
        async def a() -> int:
            return 1

        @step
        async def b(a: int) -> None:
            raise Boom

        @a.compensate
        async def undo_a(a: int) -> None:
            raise RuntimeError("cannot undo")

    class Parent(Saga):
        child = compose(Child)

    with pytest.raises(CompensationFailed) as info:
        await Parent.run()
    assert info.value.step == "child"
    assert info.value.failed_compensations == ("child/a",)


def test_composed_steps_take_no_compensation_and_problems_name_the_step() -> None:
    """A compensation on a composed step is refused; compose() problems name the step by
    its attribute name."""
    log: list[str] = []
    child = make_child(log)

    with pytest.raises(SagaDefinitionError) as info:

        class Broken(Saga):
            reserve = compose(child, nope="sku", sku="sku", qty="qty")

            @reserve.compensate
            async def undo_reserve(reserve: str) -> None:
                return None

    text = "\n".join(info.value.problems)
    assert "it takes no compensation" in text
    assert "step 'reserve' (compose(ReserveItem)): ReserveItem has no input 'nope'" in text
