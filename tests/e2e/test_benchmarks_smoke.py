"""The benchmarks run (quick mode) and stay correct; no speed is asserted here."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_quick(script: str, redis_url: str, out: Path) -> Any:
    """Run ``benchmarks/<script> --quick`` against ``redis_url``; return its JSON report."""
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / script),
            "--quick",
            "--redis-url",
            redis_url,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


STORE_VARIANTS = {
    "asaga lease via InventorySaga",
    "atomic store calls, per call (no saga)",
    "atomic via AtomicReservationSaga, per call",
    "group commit store calls (no saga)",
    "atomic via AtomicReservationSaga (group commit)",
    "group commit store calls, 8 buckets (no saga)",
}
"""lock_contention.py's variants whose stock is a product of the inventory store."""


def test_lock_contention_quick_runs_without_oversell(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/lock_contention.py --quick completes (exit 0: it checks itself too), no
    variant oversold, and every store-based cell, group commit included, is conserved:
    reservations granted == units taken from the product == units its log reserved."""
    report = run_quick("lock_contention.py", redis_url, tmp_path / "lock.json")
    rows = report["rows"]
    assert rows
    assert all(row["oversell"] == 0 for row in rows), [r for r in rows if r["oversell"]]
    store_rows = [row for row in rows if row["variant"] in STORE_VARIANTS]
    assert {row["variant"] for row in store_rows} == STORE_VARIANTS
    not_conserved = [
        row
        for row in store_rows
        if not (row["conserved"] is True and row["granted"] == row["consumed"] == row["logged"])
    ]
    assert not not_conserved, not_conserved
    assert all(row["granted"] > 0 for row in store_rows), store_rows
    assert all(row["conserved"] is None for row in rows if row["variant"] not in STORE_VARIANTS)
    assert report["verdicts"]["conservation"]["not_conserved"] == []


def test_overhead_quick_runs(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/overhead.py --quick completes, durable rows included (Redis-durable
    runs record 6 writes per run of the 5-step saga, one at a time)."""
    report = run_quick("overhead.py", redis_url, tmp_path / "overhead.json")
    assert report["rows"]
    durable = {row["variant"]: row for row in report["durable"]["rows"]}
    assert durable["asaga-redis"]["round_trips_per_run"] == 6


def test_distributed_quick_runs(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/distributed.py --quick completes: its worker processes (asaga worker and a
    plain SAQ worker) start and stop, no run fails, every reserved count is exact, every map
    element's effect on workers happened exactly once, and no Redis key of the run is left."""
    report = run_quick("distributed.py", redis_url, tmp_path / "distributed.json")
    assert [row["requests"] > 0 for row in report["latency"]] == [True, True]
    assert {row["workers"] for row in report["throughput"]} == {0, 1, 2}
    assert all(row["failed"] == 0 and row["reserved_ok"] for row in report["throughput"])
    assert all(row["failed_elements"] == 0 and row["reserved_ok"] for row in report["bulk"])
    assert {row["workers"] for row in report["map"]} == {0, 1, 2}
    assert all(row["failed_runs"] == 0 and row["effects_ok"] for row in report["map"])
    assert report["keys_left"] == 0
    assert all(code == 0 for code in report["worker_exit_codes"].values())


def test_group_commit_quick_conserves_stock(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/group_commit.py --quick: every cell granted reservations, and granted ==
    the product's reserved count == the log's entries."""
    rows = run_quick("group_commit.py", redis_url, tmp_path / "gc.json")["rows"]
    assert len(rows) == 3
    assert all(row["granted"] > 0 for row in rows), rows
    assert all(row["granted"] == row["reserved"] == row["logged"] for row in rows), rows
