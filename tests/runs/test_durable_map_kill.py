"""kill -9 of a process running durable mapped sagas on Redis: the inventory example's
``BulkInventorySaga`` (``map_each(InventorySaga, mode="collect")``), each element a child
run with its own record, recovered by another process.

A worker process (tests/runs/map_worker.py) runs bulk requests with a ``RedisRunStore``,
``RedisLockProvider`` and ``RedisInventoryStore`` under a prefix of the test's own, and is
killed with SIGKILL at a seeded random moment. The test then reads every record as the
dead process left it, waits for its owner lease to expire (``owner_ttl`` of 1 s), and
sweeps with ``recover()`` until nothing is left. Then:

- every run, parent and child, has finished; a child that ends ``compensation_failed``
  does so for a step that was in doubt when the process died (the dead process's record
  says it was running), and so does a parent that ends so (through such a child);
- a parent that succeeded has its children as its summary says (succeeded ones
  succeeded, the others failed); a parent that failed has no child left succeeded: each
  one was undone or unwound;
- the stock reconciles with the records and the store's transaction log: every write of
  a child that stands was made exactly once and logged exactly once, and every undone
  one was undone exactly once; the only slack is that of the forward writes in doubt
  when the process died (a ``perform`` cut off mid-call may or may not have written),
  bounded by exactly those writes. A compensation cut off is run again by the recovery,
  and lands once: ``undo_perform``'s ``adjust`` is keyed by the change's reference;
- undoing every succeeded parent afterwards leaves only that slack.

``test_undo_of_a_recovered_bulk_undoes_each_child_once`` kills the worker at a known
point instead (every child held in an idempotent step, some after their reservation), so
that the recovered parent succeeds: ``BulkHold.undo`` then puts the stock back exactly,
releasing each child's reservation once, and a second undo says ``already``.

``test_an_undo_cut_off_after_its_write_lands_once`` kills the worker inside a child's
``undo_perform``, after its write landed and before its end was recorded: recovery runs
it again, and the stock is back exactly (the keyed ``adjust`` does nothing the second
time).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga.locks import RedisLockProvider
from asaga.runs import RedisRunStore, RunRecord, recover
from examples.inventory import (
    BulkInventorySaga,
    Change,
    Notifier,
    Product,
    RedisInventoryStore,
)
from examples.inventory.store import deltas
from tests.runs.map_worker import GATE_LINES, GATED, SKUS, UNDO_LINES, bulk_plan
from tests.sagas.bulk import ApprovedBulk, BulkHold, Gate

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("map_worker.py")
ROOT = Path(__file__).resolve().parents[2]
SEEDS = range(5)
BULKS = 16
OWNER_TTL = 1.0
KILL_WINDOW = 0.45
"""Seconds after the worker's store is open within which it is killed (its bulk requests
take about half a second in all)."""
STOCK = Product(sku="", inventory_count=100_000, reserved_count=1_000)
"""Every product's starting counts: room for any mix of reserve, release and consume."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# -- the worker --------------------------------------------------------------------------------


async def read_line(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> str:
    """One line of the worker's stdout (bounded: it prints within seconds)."""
    with anyio.fail_after(20):
        while b"\n" not in buffer:
            buffer.extend(await stream.receive())
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def run_and_kill(
    redis_url: str, prefix: str, seed: int, mode: str, log: Path
) -> tuple[str, bool]:
    """Start the worker; kill -9 it at a seeded random moment (mode ``random``), once its
    children are held at the gate (mode ``gate``) or once a compensation is held after its
    write (mode ``undo``). Returns its owner id, and whether the kill interrupted it (it
    may have finished first)."""
    command = [
        sys.executable,
        str(WORKER),
        redis_url,
        prefix,
        str(seed),
        str(BULKS),
        str(OWNER_TTL),
        mode,
    ]
    with log.open("wb") as stderr:
        async with await anyio.open_process(command, cwd=ROOT, stderr=stderr) as process:
            assert process.stdout is not None
            buffer = bytearray()
            try:
                owner = (await read_line(process.stdout, buffer)).split()[1]
                if mode in ("gate", "undo"):
                    assert await read_line(process.stdout, buffer) == "blocked"
            except anyio.EndOfStream:
                raise AssertionError(f"the worker ended early: see {log}") from None
            else:
                await anyio.sleep(random.Random(seed).uniform(0.0, KILL_WINDOW))
            with contextlib.suppress(ProcessLookupError):  # it may have finished
                process.kill()
            code = await process.wait()
    assert code in (0, -9), f"the worker exited with {code}: see {log}"
    return owner, code == -9


async def stock(client: aioredis.Redis, prefix: str) -> None:
    inventory = RedisInventoryStore(client, None, prefix=f"{prefix}inv:")
    for sku in SKUS:
        await inventory.put(msgspec.structs.replace(STOCK, sku=sku))


async def recover_all(
    runs: RedisRunStore,
    client: aioredis.Redis,
    owner: str,
    sagas: list[Any],
    resources: Mapping[str, Any],
) -> list[Any]:
    """Wait for the dead owner's lease to expire, then sweep until nothing is left."""
    lease = f"{runs.prefix}owner:{owner}"
    remaining = await client.pttl(lease)  # -2: gone already
    assert remaining <= OWNER_TTL * 1000
    await anyio.sleep(max(remaining, 0) / 1000 + 0.05)  # until the lease's own expiry
    assert not await client.exists(lease)
    report: list[Any] = []
    for _ in range(20):
        found = await recover(runs, sagas=sagas, resources=resources, limit=1000)
        if not found:
            break
        report += found
    else:
        raise AssertionError(f"recovery does not end: {report}")
    assert all(r.outcome not in ("error", "quarantined") for r in report), report
    return report


# -- what the records say ----------------------------------------------------------------------


def request(record: RunRecord) -> tuple[str, tuple[int, int]]:
    """A child run's product and the (inventory, reserved) deltas its operation writes."""
    inputs = msgspec.msgpack.decode(record.inputs)
    return inputs["product_id"], deltas(inputs["operation"], inputs["quantity"])


def change_of(record: RunRecord) -> Change | None:
    """What the child's ``perform`` wrote, if its result was recorded."""
    step = record.steps.get("perform")
    if step is None or step.status != "succeeded" or step.result is None:
        return None
    return msgspec.msgpack.decode(step.result, type=Change)


class Doubt(msgspec.Struct, frozen=True):
    """An effect the dead process may or may not have made: ``deltas`` on ``sku``."""

    sku: str
    deltas: tuple[int, int]


def doubts(before: Mapping[str, RunRecord]) -> tuple[list[Doubt], set[str]]:
    """The stock writes the dead process left in doubt, from its records as it left them:
    a ``perform`` cut off (its write may have landed). An ``undo_perform`` cut off is no
    slack: recovery runs it again, and its keyed ``adjust`` lands once. Also the
    references of the changes whose ``transaction`` (the log append) was cut off: logged
    once or not at all."""
    slack: list[Doubt] = []
    maybe_logged: set[str] = set()
    for record in before.values():
        if record.parent is None or record.finished:
            continue
        sku, (d_inventory, d_reserved) = request(record)
        perform = record.steps.get("perform")
        if perform is not None and perform.status == "running":
            slack.append(Doubt(sku, (d_inventory, d_reserved)))
        transaction = record.steps.get("transaction")
        change = change_of(record)
        if transaction is not None and transaction.status == "running" and change is not None:
            maybe_logged.add(change.reference)
    return slack, maybe_logged


def sums(vectors: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Every sum of a subset of ``vectors``."""
    found = {(0, 0)}
    for a, b in vectors:
        found |= {(x + a, y + b) for x, y in found}
    return found


def explained(record: RunRecord, before: Mapping[str, RunRecord]) -> bool:
    """Whether a ``compensation_failed`` child failed only for steps in doubt when its
    process died (a human decides whether their effect landed)."""
    was = before.get(record.run_id)
    failed = record.failed_compensations
    return bool(failed) and all(
        "in doubt" in (record.steps[name].compensation_error or "")
        and was is not None
        and was.steps.get(name) is not None
        and was.steps[name].status == "running"
        for name in failed
    )


def check_runs(
    records: Mapping[str, RunRecord], before: Mapping[str, RunRecord], seed: int
) -> Counter[str]:
    """Every run finished, as its parent's outcome requires. Returns the parents' and
    children's statuses (``parent:<status>``, ``child:<status>``)."""
    statuses: Counter[str] = Counter()
    children: dict[str, list[RunRecord]] = {}
    for record in records.values():
        assert record.finished, f"seed {seed}: {record.run_id} left {record.status}"
        if record.parent is not None:
            children.setdefault(record.parent, []).append(record)
    plan = {entry["run_id"]: entry for entry in bulk_plan(seed, BULKS)}
    for record in records.values():
        kind = "parent" if record.parent is None else "child"
        statuses[f"{kind}:{record.status}"] += 1
        if record.parent is not None:
            head, step, attempt, index = record.run_id.split("/")
            assert (head, step) == (record.parent, "items")
            assert attempt == "1"  # a recovered map picks its children up, never anew
            assert int(index) < len(plan[head]["inputs"]["operations"])
            assert record.parent in records
            if record.status == "compensation_failed":
                assert explained(record, before), record
            continue
        assert record.run_id in plan
        assert record.saga == plan[record.run_id]["saga"]
        kids = {k.run_id: k for k in children.get(record.run_id, [])}
        if record.status == "succeeded":
            items = record.steps["items"]
            assert set(items.children) == set(kids), record.run_id
            assert len(kids) == len(plan[record.run_id]["inputs"]["operations"])
            output = "summary" if record.saga == "BulkInventorySaga" else "approval"
            result = msgspec.msgpack.decode(record.steps[output].result or b"")
            succeeded = result["succeeded"] if output == "summary" else result
            for child_id, kid in kids.items():
                index = int(child_id.rsplit("/", 1)[1])
                wanted = ("succeeded",) if index in succeeded else ("failed", "compensation_failed")
                assert kid.status in wanted, (child_id, kid.status, succeeded)
        else:
            # Failed: nothing of it stands. Each child that had succeeded was undone.
            assert record.status in ("failed", "compensation_failed"), record
            for kid in kids.values():
                assert kid.status in ("undone", "failed", "compensation_failed"), kid
            if record.status == "compensation_failed":
                # Only through a child that had a step in doubt, unwound by this parent.
                assert any(k.status == "compensation_failed" for k in kids.values()), record
            # Why it failed: refused by its approval; every line failed (an unknown product,
            # or a line in doubt when the process died, unwound since); or one of its own
            # steps was in doubt (not idempotent: the run unwinds).
            error = record.error or ""
            lines = len(plan[record.run_id]["inputs"]["operations"])
            refused = plan[record.run_id]["inputs"].get("approve") is False
            assert (
                (refused and error.startswith("Refused("))
                or (
                    error == f"RuntimeError('all {lines} operations failed')"
                    and len(kids) == lines
                    and all(k.status in ("failed", "compensation_failed") for k in kids.values())
                )
                or "in doubt" in error
            ), record
    return statuses


async def reconcile(
    client: aioredis.Redis,
    prefix: str,
    records: Mapping[str, RunRecord],
    slack: list[Doubt],
    maybe_logged: set[str],
) -> None:
    """The stock is the starting stock plus the writes of the children that stand, up to
    the effects in doubt; the log holds each of those writes exactly once."""
    inventory = RedisInventoryStore(client, None, prefix=f"{prefix}inv:")
    standing: dict[str, Change] = {}  # reference -> change, of children whose write stands
    logged_once: set[str] = set()  # references whose log entry must be there
    known: set[str] = set()
    for record in records.values():
        change = change_of(record)
        if change is None:
            continue
        known.add(change.reference)
        if record.steps["perform"].compensation != "succeeded":
            standing[change.reference] = change
        transaction = record.steps.get("transaction")
        if (
            transaction is not None
            and transaction.status == "succeeded"
            and transaction.compensation != "succeeded"
        ):
            logged_once.add(change.reference)
    log = await inventory.transactions()
    entries = Counter(entry.run_id for entry in log)
    assert set(entries) <= known, "a log entry no child recorded"
    assert all(n == 1 for n in entries.values()), entries  # each change logged once at most
    assert logged_once <= set(entries), logged_once - set(entries)
    assert set(entries) - logged_once <= maybe_logged
    for entry in log:
        change = standing.get(entry.run_id)
        if change is None:
            # Its change was undone, but its ``transaction`` was in doubt: whether it
            # appended this entry is unknown to the record, so nothing removed it (the
            # child's record says so: ``compensation_failed``, for a human).
            assert entry.run_id in maybe_logged, f"log entry {entry} of a change undone"
            continue
        assert (entry.sku, entry.operation, entry.quantity) == (
            change.sku,
            change.operation,
            change.quantity,
        )
    for sku in SKUS:
        product = await inventory.get(sku)
        written = [c for c in standing.values() if c.sku == sku]
        expected = (
            STOCK.inventory_count + sum(c.d_inventory for c in written),
            STOCK.reserved_count + sum(c.d_reserved for c in written),
        )
        off = (
            product.inventory_count - expected[0],
            product.reserved_count - expected[1],
        )
        in_doubt = [d.deltas for d in slack if d.sku == sku]
        assert len(in_doubt) <= 16, in_doubt
        assert off in sums(in_doubt), (sku, off, in_doubt)
        if not in_doubt and not maybe_logged:
            # Nothing in doubt: the log alone gives the stock.
            from_log = [deltas(e.operation, e.quantity) for e in log if e.sku == sku]  # type: ignore[arg-type]
            assert product.inventory_count == STOCK.inventory_count + sum(d for d, _ in from_log)
            assert product.reserved_count == STOCK.reserved_count + sum(r for _, r in from_log)


# -- the tests ---------------------------------------------------------------------------------


async def test_bulk_runs_of_a_killed_process_are_finished_or_undone(
    redis_url: str, redis_prefix: str, client: aioredis.Redis, tmp_path: Path
) -> None:
    """kill -9 at random points (5 seeds): recovery finishes every parent and every child
    run, a parent's children agree with its outcome, stock and log reconcile with the
    records up to what was in doubt, and undoing the succeeded parents leaves only that."""
    totals: Counter[str] = Counter()
    recovered = interrupted = 0
    for seed in SEEDS:
        prefix = f"{redis_prefix}{seed}:"
        await stock(client, prefix)
        owner, killed = await run_and_kill(
            redis_url, prefix, seed, "random", tmp_path / f"worker-{seed}.log"
        )
        interrupted += killed
        async with (
            RedisLockProvider(client, prefix=f"{prefix}locks:") as locks,
            RedisRunStore(client, prefix=f"{prefix}runs:") as runs,
        ):
            resources = {
                "store": RedisInventoryStore(client, locks, prefix=f"{prefix}inv:"),
                "locks": locks,
                "notifier": Notifier(),
            }
            before = {r.run_id: r for r in await runs.list(limit=10_000)}
            slack, maybe_logged = doubts(before)
            report = await recover_all(
                runs, client, owner, [BulkInventorySaga, ApprovedBulk], resources
            )
            recovered += len(report)
            assert all("/" not in r.run_id for r in report)  # children are their parent's
            records = {r.run_id: r for r in await runs.list(limit=10_000)}
            assert set(before) <= set(records)
            totals += check_runs(records, before, seed)
            await reconcile(client, prefix, records, slack, maybe_logged)

            # Undo every parent that succeeded: each child that stands is undone once.
            for record in list(records.values()):
                if record.parent is None and record.status == "succeeded":
                    saga = BulkInventorySaga if record.saga == "BulkInventorySaga" else ApprovedBulk
                    undone = await saga.undo(record.run_id, runs=runs, **resources)
                    assert (undone.status, undone.already) == ("undone", False)
            after = {r.run_id: r for r in await runs.list(limit=10_000)}
            assert all(r.status != "succeeded" for r in after.values()), [
                r.run_id for r in after.values() if r.status == "succeeded"
            ]
            await reconcile(client, prefix, after, slack, maybe_logged)
    assert interrupted >= 3  # most kills landed while it worked
    assert recovered > 0
    # Every outcome the test is about happened, over the seeds.
    for status in ("parent:succeeded", "parent:failed", "child:succeeded", "child:undone"):
        assert totals[status] > 0, totals


async def test_undo_of_a_recovered_bulk_undoes_each_child_once(
    redis_url: str, redis_prefix: str, client: aioredis.Redis, tmp_path: Path
) -> None:
    """The worker is killed with every child of its bulk held in an idempotent step (two
    after their reservation was made): recovery resumes the parent, which picks each child
    up and succeeds, each reservation made once. ``BulkHold.undo`` then releases each
    child's reservation once and puts the stock back; a second undo says ``already``."""
    await stock(client, redis_prefix)
    owner, killed = await run_and_kill(redis_url, redis_prefix, 0, "gate", tmp_path / "worker.log")
    assert killed
    inventory = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
    gate = Gate()  # open: the steps run again go through
    resources = {"store": inventory, "gate": gate}
    async with RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs:
        before = {r.run_id: r for r in await runs.list(limit=100)}
        assert before["held"].status == "running"
        assert before["held"].steps["items"].status == "running"  # in doubt: runs again
        [report] = await recover_all(runs, client, owner, [BulkHold], resources)
        assert (report.run_id, report.outcome) == ("held", "succeeded")
        parent = await runs.load("held")
        children = [f"held/items/1/{i}" for i in range(len(GATE_LINES))]
        assert parent.steps["items"].children == tuple(children)
        assert msgspec.msgpack.decode(parent.steps["summary"].result or b"") == [0, 1, 3, 4]
        kids = {child: await runs.load(child) for child in children}
        assert {c: k.status for c, k in kids.items()} == {
            c: "failed" if line.product_id == "ghost" else "succeeded"
            for c, line in zip(children, GATE_LINES, strict=True)
        }
        held = [
            c for c, line in zip(children, GATE_LINES, strict=True) if line.product_id != "ghost"
        ]
        assert len(held) == GATED
        for child, line in zip(children, GATE_LINES, strict=True):
            if line.product_id != "ghost":
                # In doubt at the kill (idempotent), and run again by the recovery.
                assert before[child].steps[line.held_in].status == "running"
        assert sorted(gate.passed) == sorted(held)  # each held step ran again, once

        reserved = Counter[str]()
        for line in GATE_LINES:
            if line.product_id != "ghost":
                reserved[line.product_id] += line.quantity
        for sku in SKUS:
            product = await inventory.get(sku)
            assert product.reserved_count == STOCK.reserved_count + reserved[sku], sku
        log = [(t.run_id, t.operation) for t in await inventory.transactions()]
        assert sorted(log) == sorted((c, "reserve") for c in held)  # each reserved once

        first = await BulkHold.undo("held", runs=runs, **resources)
        second = await BulkHold.undo("held", runs=runs, **resources)
        assert (first.status, first.already) == ("undone", False)
        assert "items" in first.compensated
        assert (second.status, second.already) == ("undone", True)
        for sku in SKUS:
            product = await inventory.get(sku)
            assert (product.inventory_count, product.reserved_count) == (
                STOCK.inventory_count,
                STOCK.reserved_count,
            ), sku
        log = [(t.run_id, t.operation) for t in await inventory.transactions()]
        assert sorted(log) == sorted(
            itertools.chain.from_iterable(((c, "reserve"), (c, "release")) for c in held)
        )  # each child released once, by the first undo only
        for child in children:
            kid = await runs.load(child)
            assert kid.status == ("undone" if child in held else "failed"), kid
        assert (await runs.load("held")).status == "undone"


async def test_an_undo_cut_off_after_its_write_lands_once(
    redis_url: str, redis_prefix: str, client: aioredis.Redis, tmp_path: Path
) -> None:
    """The worker's refused ``ApprovedBulk`` undoes its children, and is killed inside an
    ``undo_perform`` whose write has landed (its end not recorded: the record says the
    compensation is running). Recovery unwinds the parent and runs that compensation
    again: every child ends undone, the stock is exactly the starting stock (the
    reversal landed once, not twice) and the log is empty."""
    await stock(client, redis_prefix)
    owner, killed = await run_and_kill(redis_url, redis_prefix, 0, "undo", tmp_path / "worker.log")
    assert killed
    async with (
        RedisLockProvider(client, prefix=f"{redis_prefix}locks:") as locks,
        RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs,
    ):
        inventory = RedisInventoryStore(client, locks, prefix=f"{redis_prefix}inv:")
        before = {r.run_id: r for r in await runs.list(limit=100)}
        children = [f"refused/items/1/{i}" for i in range(len(UNDO_LINES))]
        cut_off = [c for c in children if before[c].steps["perform"].compensation == "running"]
        assert cut_off, {c: before[c].steps["perform"] for c in children}
        assert not any(before[c].finished for c in cut_off)
        resources = {"store": inventory, "locks": locks, "notifier": Notifier()}
        report = await recover_all(runs, client, owner, [ApprovedBulk], resources)
        assert [r.run_id for r in report] == ["refused"]
        parent = await runs.load("refused")
        assert parent.status == "failed", parent
        assert (parent.error or "").startswith("Refused("), parent.error
        for child in children:
            kid = await runs.load(child)
            assert kid.status == "undone", kid
            assert kid.steps["perform"].compensation == "succeeded", kid
        for sku in SKUS:
            product = await inventory.get(sku)
            assert (product.inventory_count, product.reserved_count) == (
                STOCK.inventory_count,
                STOCK.reserved_count,
            ), sku
        assert await inventory.transactions() == []
