"""The benchmarks run (quick mode) and stay correct; no speed is asserted here."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_lock_contention_quick_runs_without_oversell(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/lock_contention.py --quick completes and no variant oversold."""
    out = tmp_path / "lock.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "lock_contention.py"),
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
    rows = json.loads(out.read_text())["rows"]
    assert rows
    assert all(row["oversell"] == 0 for row in rows), [r for r in rows if r["oversell"]]


def test_overhead_quick_runs(redis_url: str, tmp_path: Path) -> None:
    """benchmarks/overhead.py --quick completes, durable rows included (Redis-durable
    runs record 6 writes per run of the 5-step saga, one at a time)."""
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "overhead.py"),
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
    report = json.loads(out.read_text())
    assert report["rows"]
    durable = {row["variant"]: row for row in report["durable"]["rows"]}
    assert durable["asaga-redis"]["round_trips_per_run"] == 6
