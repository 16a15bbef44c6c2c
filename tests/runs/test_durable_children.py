"""Durable compose and map_each: each sub-saga is a child run with a record of its own.

The parent's record names its children; a resumed parent picks each child up where its
record stands; an unwinding parent, and ``Saga.undo``, undo each child once, from its
record. In one process here, on the memory store (both backends); crashes are in
tests/runs/test_durable_children_redis.py and tests/runs/test_durable_map_kill.py.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asaga import Resource, Saga, SagaFailed, compose, map_each, step
from asaga.runs import MemoryRunStore

pytestmark = pytest.mark.anyio


class Ledger:
    """The world the steps act on: units reserved per item, and every call made."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.calls: list[str] = []
        self.fail_on: set[str] = set()
        self.block_on: set[str] = set()
        self.blocked = anyio.Event()

    def copy(self) -> Ledger:
        twin = Ledger()
        twin.held = dict(self.held)
        twin.calls = list(self.calls)
        return twin


class Hold(Saga):
    """One element: hold ``qty`` units of ``item``; released by its compensation."""

    cancel_grace = 0  # the live run of a crash test ends at once

    item: str
    qty: int
    ledger: Resource[Ledger]

    @step
    async def hold(item: str, qty: int, ledger: Ledger) -> int:
        ledger.calls.append(f"hold {item}")
        if item in ledger.block_on:
            ledger.blocked.set()
            await anyio.sleep_forever()
        if item in ledger.fail_on:
            raise RuntimeError(f"no stock for {item}")
        ledger.held[item] = ledger.held.get(item, 0) + qty
        return qty

    @hold.compensate
    async def release(item: str, qty: int, ledger: Ledger) -> None:
        ledger.calls.append(f"release {item}")
        ledger.held[item] -= qty


class Bulk(Saga):
    """Hold every line, then confirm (which may fail, and unwind the holds)."""

    cancel_grace = 0  # the live run of a crash test ends at once

    lines: list[dict[str, Any]]
    ledger: Resource[Ledger]
    output = "confirm"

    holds = map_each(Hold, over="lines", max_concurrency=2)

    @step
    async def confirm(holds: list[int], ledger: Ledger) -> int:
        ledger.calls.append("confirm")
        if "confirm" in ledger.fail_on:
            raise RuntimeError("confirmation refused")
        return sum(holds)


class Single(Saga):
    """A composed step, then a step that may fail."""

    item: str
    qty: int
    ledger: Resource[Ledger]
    output = "done"

    one = compose(Hold)

    @step
    async def done(one: int, ledger: Ledger) -> int:
        if "done" in ledger.fail_on:
            raise RuntimeError("refused")
        return one


LINES = [{"item": "a", "qty": 1}, {"item": "b", "qty": 2}, {"item": "c", "qty": 3}]


# -- in one process, on the memory store ------------------------------------------------------


async def test_a_mapped_step_records_one_child_run_per_element() -> None:
    store, ledger = MemoryRunStore(), Ledger()
    result = await Bulk.run(lines=LINES, ledger=ledger, runs=store, run_id="bulk")
    assert result.output == 6
    parent = await store.load("bulk")
    children = parent.steps["holds"].children
    assert children == ("bulk/holds/1/0", "bulk/holds/1/1", "bulk/holds/1/2")
    for index, child_id in enumerate(children):
        child = await store.load(child_id)
        assert (child.saga, child.status, child.parent) == ("Hold", "succeeded", "bulk")
        assert child.steps["hold"].status == "succeeded"
        assert child_id.endswith(str(index))


async def test_a_parent_that_fails_after_its_map_undoes_every_child_from_its_record() -> None:
    store, ledger = MemoryRunStore(), Ledger()
    ledger.fail_on.add("confirm")
    with pytest.raises(SagaFailed) as caught:
        await Bulk.run(lines=LINES, ledger=ledger, runs=store, run_id="bulk")
    assert caught.value.compensated == ("holds",)
    assert ledger.held == {"a": 0, "b": 0, "c": 0}
    assert sorted(c for c in ledger.calls if c.startswith("release")) == [
        "release a",
        "release b",
        "release c",
    ]
    assert (await store.load("bulk")).status == "failed"
    for index in range(3):
        child = await store.load(f"bulk/holds/1/{index}")
        assert child.status == "undone"
        assert child.compensated == ("hold",)


async def test_undo_of_a_succeeded_parent_undoes_each_child_once() -> None:
    store, ledger = MemoryRunStore(), Ledger()
    await Bulk.run(lines=LINES, ledger=ledger, runs=store, run_id="bulk")
    undone = await Bulk.undo("bulk", runs=store, ledger=ledger)
    assert (undone.status, undone.already) == ("undone", False)
    assert ledger.held == {"a": 0, "b": 0, "c": 0}
    again = await Bulk.undo("bulk", runs=store, ledger=ledger)
    assert again.already
    assert ledger.calls.count("release a") == 1
    for index in range(3):
        assert (await store.load(f"bulk/holds/1/{index}")).status == "undone"


async def test_a_failed_element_unwinds_itself_and_the_others_are_undone() -> None:
    store, ledger = MemoryRunStore(), Ledger()
    ledger.fail_on.add("b")
    with pytest.raises(SagaFailed):
        await Bulk.run(lines=LINES, ledger=ledger, runs=store, run_id="bulk")
    assert all(units == 0 for units in ledger.held.values())
    assert (await store.load("bulk/holds/1/1")).status == "failed"
    statuses = {(await store.load(f"bulk/holds/1/{i}")).status for i in (0, 2)}
    assert statuses <= {"undone"}


async def test_each_attempt_of_a_composed_step_is_a_child_run_of_its_own() -> None:
    """A retried composed step does not replay its failed attempt: attempt 2 is another
    child run."""
    from asaga import Retry

    class Retried(Saga):
        item: str
        qty: int
        ledger: Resource[Ledger]

        one = compose(Hold, retry=Retry(max_attempts=2, base_delay=0.0))

    store, ledger = MemoryRunStore(), Ledger()
    ledger.fail_on.add("x")

    # Fail attempt 1 only: the hook heals the item once attempt 1's child has failed.
    def healing(event: Any) -> None:
        if event.kind == "step_retrying":
            ledger.fail_on.discard("x")

    result = await Retried.run(
        item="x", qty=1, ledger=ledger, runs=store, run_id="r", hooks=[healing]
    )
    assert result.output == 1
    assert (await store.load("r/one/1")).status == "failed"
    assert (await store.load("r/one/2")).status == "succeeded"
    # The parent names every child run of the step, the failed attempt's too.
    assert (await store.load("r")).steps["one"].children == ("r/one/1", "r/one/2")


async def test_a_composed_step_is_undone_through_its_child_record() -> None:
    store, ledger = MemoryRunStore(), Ledger()
    ledger.fail_on.add("done")
    with pytest.raises(SagaFailed):
        await Single.run(item="a", qty=2, ledger=ledger, runs=store, run_id="s")
    assert ledger.held == {"a": 0}
    assert (await store.load("s/one/1")).status == "undone"


async def test_an_idempotency_key_replays_a_parent_without_running_its_children() -> None:
    ledger = Ledger()
    store = MemoryRunStore()
    first = await Bulk.run(lines=LINES, ledger=ledger, runs=store, idempotency_key="k")
    again = await Bulk.run(lines=LINES, ledger=ledger, runs=store, idempotency_key="k")
    assert again.replayed
    assert again.output == first.output == 6
    assert ledger.calls.count("hold a") == 1


class Doubled(Saga):
    n: int

    @step
    async def double(n: int) -> int:
        if n < 0:
            raise ValueError(f"negative: {n}")
        return 2 * n


class Collect(Saga):
    items: list[dict[str, int]]

    doubled = map_each(Doubled, over="items", mode="collect")


async def test_a_map_in_collect_mode_records_its_result_with_failures_as_their_repr() -> None:
    from asaga import MapResult, RecordedError, SagaFailed

    store = MemoryRunStore()
    first = await Collect.run(items=[{"n": 1}, {"n": -1}], runs=store, idempotency_key="k")
    assert isinstance(first.output, MapResult)
    assert first.output.values == [2, None]
    again = await Collect.run(items=[{"n": 1}, {"n": -1}], runs=store, idempotency_key="k")
    assert again.replayed
    assert isinstance(again.output, MapResult)
    assert again.output.values == [2, None]
    failure = again.output.failures[0]
    assert failure.index == 1
    assert isinstance(failure.error, RecordedError)
    assert "SagaFailed" in failure.error.text
    assert isinstance(first.output.failures[0].error, SagaFailed)


async def test_undoing_a_composed_or_mapped_step_is_written_to_the_parent_record() -> None:
    store, ledger = MemoryRunStore(), Ledger()
    await Bulk.run(lines=LINES, ledger=ledger, runs=store, run_id="bulk")
    await Bulk.undo("bulk", runs=store, ledger=ledger)
    record = await store.load("bulk")
    assert record.steps["holds"].compensation == "succeeded"
    assert record.compensated == ("holds",)
