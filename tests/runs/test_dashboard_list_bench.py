"""benchmarks/dashboard_list.py --quick runs and its results are right; no speed is
asserted here (tests/e2e/test_benchmarks_smoke.py does the same for the other scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.timeout(180)
def test_dashboard_list_quick(redis_url: str, tmp_path: Path) -> None:
    """The quick run (5,000 runs) exits 0 (each page, find and count it times is checked
    against the mix it recorded), reports every query, the write path with and without
    the listing indexes, and leaves no key behind."""
    out = tmp_path / "dashboard.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "dashboard_list.py"), "--quick"),
            *("--redis-url", redis_url, "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["runs"] == 5_000
    assert report["problems"] == []
    queries = [row["query"] for row in report["rows"]]
    assert "page(), first page" in queries
    assert any(q.startswith("page(status='quarantined')") for q in queries)
    assert {"find(run id)", "find(idempotency key)", "find(event key)", "counts()"} <= set(queries)
    assert all(row["p50_ms"] > 0 for row in report["rows"])
    assert [c["write path"] for c in report["write_path"]] == [
        "with listings",
        "without listings",
    ]
    assert report["keys_left"] == 0
    pages = [row["query"] for row in report["pages"]]
    assert "GET / (first page, counts)" in pages
    assert "GET /run?id= (a run's page)" in pages
    assert all(row["p50_ms"] > 0 for row in report["pages"])
