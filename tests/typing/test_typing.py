"""What the type checkers say of asaga's calls: mypy --strict and pyright (standard) accept
tests/typing/calls_ok.py, and report exactly the lines with a ``# wrong:`` comment of
tests/typing/calls_wrong.py (a misspelled or mistyped input, the output's type...)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
OK = HERE / "calls_ok.py"
WRONG = HERE / "calls_wrong.py"

pytestmark = pytest.mark.timeout(600)


def marked(path: Path) -> set[int]:
    """The lines with a ``# wrong:`` comment."""
    lines = path.read_text().splitlines()
    return {n for n, line in enumerate(lines, start=1) if re.search(r"\S.*# wrong:", line)}


def mypy_lines(path: Path) -> set[int]:
    out, err, _ = mypy_api.run(
        ["--strict", "--no-incremental", "--show-error-codes", str(path.relative_to(ROOT))]
    )
    found = set()
    for line in out.splitlines():
        match = re.match(rf"{re.escape(str(path.relative_to(ROOT)))}:(\d+): error:", line)
        if match:
            found.add(int(match.group(1)))
    assert "error:" not in err, err
    return found


def pyright_lines(path: Path) -> set[int]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--outputjson",
            "--pythonpath",
            sys.executable,
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report = json.loads(done.stdout)
    return {
        d["range"]["start"]["line"] + 1
        for d in report["generalDiagnostics"]
        if d["severity"] == "error" and Path(d["file"]) == path
    }


@pytest.fixture(autouse=True)
def from_the_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_mypy_accepts_the_right_calls() -> None:
    assert mypy_lines(OK) == set()


def test_mypy_refuses_each_wrong_call() -> None:
    assert mypy_lines(WRONG) == marked(WRONG)


def test_pyright_accepts_the_right_calls() -> None:
    assert pyright_lines(OK) == set()


def test_pyright_refuses_each_wrong_call() -> None:
    assert pyright_lines(WRONG) == marked(WRONG)
