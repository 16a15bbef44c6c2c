"""The examples a user copies must keep working."""

import runpy
from pathlib import Path

import anyio
import pytest
import structlog

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_checkout_example(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/checkout.py succeeds once, then unwinds a declined charge."""
    module = runpy.run_path(str(EXAMPLES / "checkout.py"))
    try:
        anyio.run(module["main"])
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "o-1 succeeded: output='charge-o-1' stock={'A': 4, 'B': 4}" in out
    assert "o-2 failed at 'charge'" in out
    assert "stock after unwinding: {'A': 4, 'B': 4}" in out


def test_bulk_reservation_example(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/bulk_reservation.py reserves what it can and reports the rest."""
    module = runpy.run_path(str(EXAMPLES / "bulk_reservation.py"))
    try:
        anyio.run(module["main"])
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "'reserved': ['applex2', 'applex1']" in out
    assert "line 1: only 1 of pear left, 3 wanted" in out
    assert "stock after: {'apple': 2, 'pear': 1}" in out
    assert "all lines failed: no line could be reserved; stock still {'apple': 2, 'pear': 1}" in out


def test_durable_checkout_example(redis_url: str, redis_prefix: str) -> None:
    """examples/durable_checkout.py: a key replays, undo restores stock, and the run of a
    process that died mid-charge is recovered and compensated (against Redis)."""
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "durable_checkout.py"),
            "--redis",
            redis_url,
            "--prefix",
            redis_prefix,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "replayed=False; again: replayed=True" in out
    assert "widget reserved 2 (once, not twice)" in out
    assert "IdempotencyKeyReused" in out
    assert "undo: status undone, compensated ['charge', 'reserve']" in out
    assert "again: already=True; widget reserved 2" in out
    assert ": compensation_failed; compensated ['reserve']; in doubt ['charge']" in out
    assert "widget reserved 2 (the dead run's reservation released)" in out


def test_durable_checkout_example_in_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """Without Redis the example shows idempotency keys and undo in memory."""
    module = runpy.run_path(str(EXAMPLES / "durable_checkout.py"))
    try:
        assert module["run"]([]) == 0
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "replayed=False; again: replayed=True" in out
    assert "again: already=True; widget reserved 2" in out
