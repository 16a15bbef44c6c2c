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


def test_lock_contention_quick_runs_without_oversell(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/lock_contention.py --quick completes and no variant oversold."""
    rows = run_quick("lock_contention.py", redis_url, tmp_path / "lock.json")["rows"]
    assert rows
    assert all(row["oversell"] == 0 for row in rows), [r for r in rows if r["oversell"]]


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
