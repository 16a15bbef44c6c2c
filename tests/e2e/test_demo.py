"""The inventory demo (examples/inventory/demo.py) runs, in memory and on Redis, and shows
what it says: the success, the field errors, the unwinding, the exact burst, the transfer,
the replenishment run parked until its delivery is confirmed, the bulk request.

Only deterministic lines are asserted: never a timing.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asaga._cli import main as asaga_main
from examples.inventory.demo import quiet_logs, run_demo

ROOT = Path(__file__).resolve().parents[2]
TRACE_LINE = re.compile(r"^  \+ *\d+\.\d ms  ([a-z_]+)(?: +(\w+))?")


@pytest.fixture
def quiet() -> Iterator[None]:
    """asaga's structlog events filtered below ERROR, as the demo's main() does."""
    with quiet_logs():
        yield


def section(text: str, number: int) -> str:
    """The lines of part ``number`` of the report."""
    start = text.index(f"\n{number}. ")
    end = text.find(f"\n{number + 1}. ", start)
    return text[start : end if end != -1 else len(text)]


def check_report(text: str) -> None:
    assert text.isascii()
    assert "\x1b" not in text  # no colour

    # The starting stock.
    assert "  widget              100         0        100          10\n" in text
    assert "  gizmo               150         0        150           0\n" in text

    # 1. A reservation that succeeds, traced event by event.
    one = section(text, 1)
    trace = [m.groups() for m in map(TRACE_LINE.match, one.splitlines()) if m]
    assert trace[0] == ("run_started", None)
    assert ("step_succeeded", "perform") in trace
    assert ("step_succeeded", "notify") in trace
    assert trace[-1] == ("run_succeeded", None)
    assert len(trace) == 14  # the run's start and end, and each of 6 steps started and done
    assert "widget: inventory 100, reserved 5, available 95" in one
    assert "transaction log: 1 entry; notifications sent: 1" in one

    # 2. Invalid inputs: every field reported, nothing ran.
    two = section(text, 2)
    assert "InputValidationError, 2 fields:" in two
    assert "    - quantity: Expected `int` >= 1\n" in two
    assert "    - operation: Invalid enum value 'borrow'\n" in two
    assert "events emitted: 0 (no step ran); widget unchanged" in two

    # 3. notify fails for good after 3 attempts; the completed steps are undone.
    three = section(text, 3)
    assert "step_started            notify (attempt 3)" in three
    assert re.search(r"step_failed +notify \(attempt 3\)  ConnectionError\(", three)
    undone = re.findall(r"compensation_succeeded +(\w+)", three)
    assert sorted(undone) == ["perform", "replenishment", "transaction"]
    assert undone[-1] == "perform"  # after everything that depended on it
    assert "SagaFailed at 'notify': ConnectionError('notification service unavailable')" in three
    assert "gadget: inventory 20, reserved 0, available 20 (as before the run)" in three
    assert "transaction log: 0 new entries; replenishment requests: 0" in three

    # 4. The burst: exactly the stock is reserved, no more, nothing negative.
    four = section(text, 4)
    assert "succeeded: 150, failed: 50 (" in four
    assert "gizmo: inventory 150, reserved 150, available 0; reserved 150 == successes; " in four
    assert "no count negative" in four

    # 5. The transfer moves stock between locations, creating the destination.
    five = section(text, 5)
    assert "widget@north: inventory 25, reserved 0, available 25" in five
    assert "widget@south: inventory 15, reserved 0, available 15" in five
    assert "     150 x reserve gizmo\n" in five
    assert "       1 x transfer north->south widget\n" in five

    # 6. The replenishment saga parks until the supplier's confirmation is delivered.
    six = section(text, 6)
    assert re.search(
        r"^6\. Order gadget from a supplier \(ReplenishmentSaga\), recorded in a "
        r"(MemoryRunStore|RedisRunStore): the run parks until the goods arrive$",
        six,
        re.M,
    ), six
    assert "  purchase order: 25 x gadget (room 30, supplier's max_order 25), " in six
    parked = re.search(
        r"^  RunParked: run [0-9a-f]{32} waits in step 'delivery' for the event "
        r"delivery:(po-[0-9a-f]{32}) \(at most 14 days\)$",
        six,
        re.M,
    )
    assert parked is not None, six
    po = parked.group(1)
    assert "  gadget: inventory 20, reserved 0, available 20 (nothing received yet)\n" in six
    assert (
        "  the goods arrive; the supplier's confirmation: "
        f'{{"purchase_order_id":"{po}","quantity_received":25}}\n'
    ) in six
    assert (
        f"  ReplenishmentSaga.deliver('delivery:{po}', confirmation): succeeded; the run went "
        "on in this call and booked 25 x gadget\n"
    ) in six
    assert "  gadget: inventory 45, reserved 0, available 45\n" in six
    assert "  the same confirmation again: DuplicateEvent (nothing booked twice)\n" in six
    assert "SagaFailed at 'tracked_order': ConnectionError('supplier: track unavailable')" in six
    assert "compensated, in order: purchase_order, supplier_order" in six
    assert "supplier orders still live: 0; purchase orders in the store: 1" in six

    # 7. A bulk request: the sold-out line fails, the others stand.
    seven = section(text, 7)
    assert "7. A bulk request of 4 lines (BulkInventorySaga), " in seven
    assert "  summary: lines 0, 1, 3 succeeded\n" in seven
    assert (
        "  line 2 failed (the others stand): InsufficientStock('gizmo: inventory 150, "
        "reserved 150; cannot apply (+0, +1)')\n"
    ) in seven
    assert "  gadget: inventory 45, reserved 2, available 43\n" in seven  # 25 received in 6
    assert "  widget: inventory 98, reserved 6, available 92\n" in seven


RECORDED_CHILD = re.compile(r"^    ([0-9a-f]{32})/items/1/(\d)  InventorySaga  (\w+.*)$", re.M)


def check_durable_bulk(text: str) -> None:
    """Part 7 on Redis: the bulk run and each of its lines recorded, with their statuses;
    the undo from the records puts the stock back, once."""
    seven = section(text, 7)
    assert "), recorded in the RedisRunStore, then undone\n" in seven
    parent = re.search(
        r"  recorded: run ([0-9a-f]{32}) BulkInventorySaga succeeded; step items: 4 child runs\n",
        seven,
    )
    assert parent is not None, seven
    run_id = parent.group(1)
    children = RECORDED_CHILD.findall(seven)
    assert children == [
        (run_id, "0", "succeeded"),
        (run_id, "1", "succeeded"),
        (run_id, "2", "failed at availability"),
        (run_id, "3", "succeeded"),
    ]
    assert (
        "  BulkInventorySaga.undo: undone, compensated items (each line from its own record)\n"
        in seven
    )
    assert f"  recorded: run {run_id} undone; child runs undone, undone, failed, undone\n" in seven
    assert "  gadget: inventory 45, reserved 0, available 45 (as before the request)\n" in seven
    assert "  gizmo: inventory 150, reserved 150, available 0 (as before the request)\n" in seven
    assert "  widget: inventory 100, reserved 5, available 95 (as before the request)\n" in seven
    assert "  undo again: undone, already True (nothing undone twice)\n" in seven


@pytest.mark.anyio
@pytest.mark.usefixtures("quiet")
async def test_demo_in_memory() -> None:
    """The in-memory demo shows every part (on asyncio and trio)."""
    out = io.StringIO()
    await run_demo(out=out)
    text = out.getvalue()
    assert text.startswith("asaga inventory demo (in memory: ")
    check_report(text)
    assert "recorded in a MemoryRunStore: the run parks" in section(text, 6)
    seven = section(text, 7)
    assert "), in memory (with --redis it is recorded, then undone)\n" in seven
    assert "recorded:" not in seven


class TestRedis:
    """The same demo on Redis (asyncio only: redis-py's client is asyncio-only)."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.mark.anyio
    @pytest.mark.usefixtures("quiet")
    async def test_demo_on_redis(self, redis_url: str) -> None:
        """Same report, and the bulk request recorded (each line a child run) and undone
        from its records; the demo's keys, the run store's too, are gone afterwards."""
        import redis.asyncio as aioredis

        out = io.StringIO()
        await run_demo(redis_url, out=out)
        text = out.getvalue()
        assert text.startswith(f"asaga inventory demo (on Redis at {redis_url}: ")
        check_report(text)
        assert "recorded in a RedisRunStore: the run parks" in section(text, 6)
        check_durable_bulk(text)
        match = re.search(r"keys under (asaga-demo:[0-9a-f]+:)\*", text)
        assert match is not None
        client = aioredis.Redis.from_url(redis_url)
        try:
            left = [key async for key in client.scan_iter(match=f"{match.group(1)}*")]
        finally:
            await client.aclose()
        assert left == []


def test_python_m_examples_inventory() -> None:
    """`python -m examples.inventory` runs from the repository root: exit 0, the report on
    stdout, no structlog lines, nothing on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "examples.inventory"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "[info" not in proc.stdout
    assert "[debug" not in proc.stdout
    check_report(proc.stdout)


def test_asaga_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """`asaga demo` runs the same demo, and leaves structlog's configuration as it was."""
    import structlog

    before = structlog.get_config()
    assert asaga_main(["demo"]) == 0
    assert structlog.get_config() == before
    out, err = capsys.readouterr()
    assert err == ""
    check_report(out)


def test_asaga_demo_bad_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    """A --redis value that is not a URL is a usage error."""
    assert asaga_main(["demo", "--redis", "localhost:6379"]) == 2
    assert "expected a URL like redis://127.0.0.1:6379/0" in capsys.readouterr().err


def test_asaga_demo_outside_a_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where examples/ cannot be imported, `asaga demo` says where to run it (exit 2)."""
    monkeypatch.chdir(tmp_path)
    for name in ("examples.inventory.demo", "examples.inventory"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "examples", None)  # as if no examples package existed
    assert asaga_main(["demo"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("asaga demo: error: examples.inventory.demo not found in the current")
    assert "run it from the asaga repository root" in err


def test_inventory_page_graphs_match_the_sagas() -> None:
    """The Mermaid drawings in docs/inventory.md are what `asaga graph` prints today."""
    from asaga import Saga
    from asaga._render import to_mermaid
    from examples.inventory import (
        AtomicReservationSaga,
        BulkInventorySaga,
        InventorySaga,
        InventoryTransferSaga,
    )
    from examples.inventory.replenishment import ReplenishmentSaga

    page = (ROOT / "docs" / "inventory.md").read_text()
    drawn = re.findall(r"^```mermaid\n(.*?)^```", page, re.S | re.M)
    sagas: list[type[Saga[Any]]] = [
        InventorySaga,
        AtomicReservationSaga,
        BulkInventorySaga,
        InventoryTransferSaga,
        ReplenishmentSaga,
    ]
    assert drawn == [to_mermaid(saga) for saga in sagas]
