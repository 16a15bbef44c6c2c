"""Mapped steps: a sub-saga or an async function per element of a collection."""

import anyio
import msgspec
import pytest

from asaga import (
    MapFailed,
    MapResult,
    Saga,
    SagaDefinitionError,
    SagaFailed,
    compose,
    map_each,
    step,
)
from asaga.testing import EventRecorder

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """The failure the tests inject."""


class Line(msgspec.Struct):
    sku: str
    qty: int


def make_item_saga(log: list[str], bad: frozenset[str] = frozenset()) -> type[Saga]:
    class ReserveItem(Saga):
        @step
        async def reserve(sku: str, qty: int) -> str:
            if sku in bad:
                raise Boom(sku)
            log.append(f"reserve {sku}")
            return f"r-{sku}"

        @reserve.compensate
        async def release(reserve: str) -> None:
            log.append(f"release {reserve}")

    return ReserveItem


async def test_results_are_ordered_like_the_input() -> None:
    """Elements may finish in any order; the list follows the collection."""
    log: list[str] = []

    class Bulk(Saga):
        reserve_all = map_each(make_item_saga(log), over="lines", max_concurrency=3)

    lines = [{"sku": f"s{i}", "qty": 1} for i in range(7)]
    result = await Bulk.run(lines=lines)
    assert result.output == [f"r-s{i}" for i in range(7)]


async def test_elements_may_be_structs_and_dataclasses() -> None:
    """Struct elements give the child's inputs by field."""
    log: list[str] = []

    class Bulk(Saga):
        reserve_all = map_each(make_item_saga(log), over="lines")

    result = await Bulk.run(lines=[Line(sku="a", qty=1), Line(sku="b", qty=2)])
    assert result.output == ["r-a", "r-b"]


async def test_empty_collection() -> None:
    """An empty collection maps to an empty list, in both modes."""
    log: list[str] = []
    item = make_item_saga(log)

    class Bulk(Saga):
        fast = map_each(item, over="lines")
        collected = map_each(item, over="lines", mode="collect")

    result = await Bulk.run(lines=[])
    assert result.results["fast"] == []
    assert result.results["collected"] == MapResult(values=[], successes=[], failures=[])


async def test_fail_fast_undoes_completed_elements_in_reverse_index_order() -> None:
    """Element k fails while k+1.. are in flight: no new element starts, those in flight
    finish, then every completed element is undone in reverse index order."""
    log: list[str] = []
    in_flight = anyio.Event()
    release_in_flight = anyio.Event()

    class Item(Saga):
        @step
        async def reserve(sku: str) -> str:
            if sku == "s2":
                await in_flight.wait()  # s3 has started
                release_in_flight.set()
                raise Boom("s2")
            if sku == "s3":
                in_flight.set()
                await release_in_flight.wait()  # still running when s2 fails
            log.append(f"reserve {sku}")
            return sku

        @reserve.compensate
        async def release(reserve: str) -> None:
            log.append(f"release {reserve}")

    class Bulk(Saga):
        reserve_all = map_each(Item, over="skus", max_concurrency=2)

    skus = [{"sku": f"s{i}"} for i in range(6)]
    with anyio.fail_after(5), pytest.raises(SagaFailed) as info:
        await Bulk.run(skus=skus)
    cause = info.value.__cause__
    assert isinstance(cause, MapFailed)
    assert cause.index == 2
    assert cause.undone == (3, 1, 0)
    assert isinstance(cause.__cause__, SagaFailed)
    assert sorted(log[:3]) == ["reserve s0", "reserve s1", "reserve s3"]  # s4, s5 never
    assert log[3:] == ["release s3", "release s1", "release s0"]


async def test_collect_mode_keeps_successes_and_reports_failures() -> None:
    """collect: the step succeeds; failures carry index and exception; successes stay."""
    log: list[str] = []

    class Bulk(Saga):
        reserve_all = map_each(
            make_item_saga(log, bad=frozenset({"b", "d"})), over="lines", mode="collect"
        )

    lines = [{"sku": s, "qty": 1} for s in "abcde"]
    result = await Bulk.run(lines=lines)
    outcome = result.output
    assert isinstance(outcome, MapResult)
    assert outcome.values == ["r-a", None, "r-c", None, "r-e"]
    assert [s.index for s in outcome.successes] == [0, 2, 4]
    assert [f.index for f in outcome.failures] == [1, 3]
    assert all(isinstance(f.error, SagaFailed) for f in outcome.failures)
    assert not outcome.all_failed
    assert not any(entry.startswith("release") for entry in log)


async def test_parent_failure_undoes_every_completed_element_once() -> None:
    """The parent fails after the map: each completed element is undone exactly once,
    in reverse index order (collect mode: failed elements are not undone)."""
    log: list[str] = []

    class Bulk(Saga):
        reserve_all = map_each(
            make_item_saga(log, bad=frozenset({"b"})), over="lines", mode="collect"
        )

        @step
        async def charge(reserve_all: MapResult[str]) -> None:
            raise Boom("charge")

    with pytest.raises(SagaFailed) as info:
        await Bulk.run(lines=[{"sku": s, "qty": 1} for s in "abc"])
    assert info.value.compensated == ("reserve_all",)
    releases = [entry for entry in log if entry.startswith("release")]
    assert releases == ["release r-c", "release r-a"]


async def test_map_of_an_async_function_with_undo() -> None:
    """An async def maps over the elements (first parameter); undo gets the element and
    its result by name, and parent values by parameter name."""
    log: list[str] = []

    async def reserve_one(line: dict[str, object], warehouse: str) -> str:
        log.append(f"reserve {line['sku']} in {warehouse}")
        return f"r-{line['sku']}"

    async def release_one(line: dict[str, object], reserve_one: str, warehouse: str) -> None:
        log.append(f"release {reserve_one} from {warehouse}")

    class Bulk(Saga):
        reserved = map_each(reserve_one, over="lines", undo=release_one)

        @step
        async def fail(reserved: list[str]) -> None:
            raise Boom

    with pytest.raises(SagaFailed):
        await Bulk.run(lines=[{"sku": "a"}, {"sku": "b"}], warehouse="w1")
    assert sorted(log[:2]) == ["reserve a in w1", "reserve b in w1"]
    assert log[2:] == ["release r-b from w1", "release r-a from w1"]


async def test_only_max_concurrency_elements_run_at_once() -> None:
    """At most max_concurrency element tasks are alive, even for a large collection."""
    running = 0
    peak = 0

    async def work(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.lowlevel.checkpoint()
        running -= 1
        return n * 2

    class Big(Saga):
        doubled = map_each(work, over="numbers", max_concurrency=8)

    with anyio.fail_after(30):
        result = await Big.run(numbers=list(range(10_000)))
    assert result.output == [n * 2 for n in range(10_000)]
    assert peak == 8


async def test_cancellation_undoes_completed_elements() -> None:
    """A cancelled caller mid-map: elements that completed are undone before the
    cancellation propagates (the step never completes, so nobody else would)."""
    log: list[str] = []
    started_last = anyio.Event()

    async def reserve_one(sku: str) -> str:
        if sku == "last":
            started_last.set()
            await anyio.sleep_forever()
        log.append(f"reserve {sku}")
        return sku

    async def release_one(reserve_one: str) -> None:
        log.append(f"release {reserve_one}")

    class Bulk(Saga):
        reserved = map_each(reserve_one, over="skus", undo=release_one, max_concurrency=1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: Bulk.run(skus=["a", "b", "last"]))
        await started_last.wait()
        tg.cancel_scope.cancel()
    assert log == ["reserve a", "reserve b", "release b", "release a"]


async def test_nested_map_inside_compose() -> None:
    """A composed saga that maps: the parent's failure undoes the inner elements through
    the child, in reverse index order; events carry the nested paths."""
    log: list[str] = []
    recorder = EventRecorder()

    class Basket(Saga):
        lines = map_each(make_item_saga(log), over="items")

    class Checkout(Saga):
        basket = compose(Basket)

        @step
        async def pay(basket: list[str]) -> None:
            raise Boom

    items = [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 1}]
    with pytest.raises(SagaFailed):
        await Checkout.run(items=items, hooks=[recorder])
    assert sorted(log[:2]) == ["reserve x", "reserve y"]  # concurrent: either order
    assert log[2:] == ["release r-y", "release r-x"]  # undone in reverse index order
    paths = {e.path for e in recorder.events if e.kind == "step_succeeded"}
    assert {"basket/lines[0]/reserve", "basket/lines[1]/reserve", "basket/lines"} <= paths


async def test_not_a_collection_fails_the_step() -> None:
    """map_each over something that is not a collection fails with a clear message."""

    async def one(x: int) -> int:
        return x

    class Wrong(Saga):
        @step
        async def numbers() -> int:
            return 3

        each = map_each(one, over="numbers")

    with pytest.raises(SagaFailed) as info:
        await Wrong.run()
    assert "needs a collection, got int" in str(info.value.__cause__)


def test_map_definition_problems_are_listed() -> None:
    """Bad map_each() arguments surface at class creation, all together."""

    async def no_params() -> None:
        return None

    with pytest.raises(SagaDefinitionError) as info:

        class Broken(Saga):
            a = map_each(no_params, over="items", max_concurrency=0, mode="sometimes")

    text = "\n".join(info.value.problems)
    assert "max_concurrency=0" in text
    assert "mode='sometimes'" in text
    assert "needs a parameter for the element" in text


async def test_function_parameters_resolve_like_a_steps() -> None:
    """Extra parameters of a mapped function are parent inputs typed by their annotation,
    optional when they have a default."""

    async def scale(x: int, factor: int = 2) -> int:
        return x * factor

    class Scale(Saga):
        scaled = map_each(scale, over="xs")

    assert (await Scale.run(xs=[1, 2])).output == [2, 4]
    assert (await Scale.run(xs=[1, 2], factor=10)).output == [10, 20]
    from asaga import InputValidationError

    with pytest.raises(InputValidationError):
        await Scale.run(xs=[1], factor="ten")


async def test_no_new_elements_once_the_run_failed() -> None:
    """A sibling step fails the run: the map starts no further element and undoes those
    that completed."""
    started: list[int] = []
    undone: list[int] = []
    second_done = anyio.Event()

    async def work(x: int) -> int:
        started.append(x)
        if x == 1:
            second_done.set()
        await anyio.lowlevel.checkpoint()
        return x

    async def unwork(x: int, work: int) -> None:
        undone.append(x)

    class Run(Saga):
        mapped = map_each(work, over="xs", undo=unwork, max_concurrency=1)

        @step
        async def sibling() -> None:
            await second_done.wait()
            raise Boom("sibling")

    with anyio.fail_after(10), pytest.raises(SagaFailed) as info:
        await Run.run(xs=list(range(20)))
    assert info.value.step == "sibling"
    assert len(started) < 20
    assert sorted(undone, reverse=True) == undone
    assert set(undone) <= set(started)


async def test_failed_undo_of_an_element_needs_a_human() -> None:
    """fail_fast: an element's undo fails -> the run raises CompensationFailed naming the
    element, and the undo is reported as compensation events."""
    from asaga import CompensationFailed

    recorder = EventRecorder()

    async def charge(card: int) -> int:
        if card == 2:
            raise Boom("declined")
        return card

    async def refund(card: int, charge: int) -> None:
        if card == 1:
            raise RuntimeError("refund failed")

    class Split(Saga):
        charges = map_each(charge, over="cards", undo=refund, max_concurrency=1)

    with pytest.raises(CompensationFailed) as info:
        await Split.run(cards=[0, 1, 2, 3], hooks=[recorder])
    assert info.value.failed_compensations == ("charges[1]",)
    cause = info.value.__cause__
    assert isinstance(cause, MapFailed)
    assert [f.index for f in cause.undo_failures] == [1]
    assert cause.undone == (0,)
    assert (cause.saga, cause.run_id, cause.step, cause.index) == (
        "Split",
        info.value.run_id,
        "charges",
        2,
    )
    assert recorder.steps("compensation_failed") == ["charges[1]"]
    assert recorder.steps("compensation_succeeded") == ["charges[0]"]
