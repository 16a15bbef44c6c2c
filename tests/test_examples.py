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
