"""The examples a user copies must keep working."""

import runpy
from pathlib import Path

import anyio
import pytest
import structlog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
