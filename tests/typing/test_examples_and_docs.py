"""pyright (standard, as in VS Code) and mypy --strict report no error in examples/ nor
in the ```python blocks of docs/*.md: their sagas type-check as users will copy them
(steps take their dependencies as keyword-only parameters, see docs/steps.md, "Typed
calls").

The doc blocks are the ones tests/e2e/test_docs.py runs, each on its own (``python -c``):
here each is written to a module of its own in a temporary directory. A block whose
output is a ``Traceback`` shows a mistake on purpose, and is not checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mypy import api as mypy_api

from tests.e2e.test_docs import examples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SKIPPED_PAGES: set[str] = set()

pytestmark = pytest.mark.timeout(600)


def pyright_errors(target: Path) -> list[str]:
    """pyright's errors on ``target`` (a file or a directory), as ``file:line: message``."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--outputjson",
            "--pythonpath",
            sys.executable,
            str(target),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["summary"]["filesAnalyzed"] > 0, done.stdout
    return [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]


def test_pyright_accepts_the_examples() -> None:
    assert pyright_errors(EXAMPLES) == []


def test_pyright_accepts_the_docs_examples(tmp_path: Path) -> None:
    written = 0
    for where, code, expected in examples():
        page, line = where.split(":")
        if page in SKIPPED_PAGES or (expected is not None and expected.startswith("Traceback")):
            continue
        (tmp_path / f"{Path(page).stem}_{line}.py").write_text(code)
        written += 1
    assert written >= 10
    assert pyright_errors(tmp_path) == []


def mypy_errors(*targets: Path) -> list[str]:
    """mypy --strict's errors on ``targets``, as ``file:line: error: ...`` lines."""
    out, err, _ = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--explicit-package-bases",
            "--ignore-missing-imports",
            *(str(t) for t in targets),
        ]
    )
    assert "error:" not in err, err
    return [line for line in out.splitlines() if ": error:" in line]


def test_mypy_strict_accepts_the_examples() -> None:
    assert mypy_errors(EXAMPLES) == []


def test_mypy_strict_accepts_the_docs_examples(tmp_path: Path) -> None:
    for where, code, expected in examples():
        page, line = where.split(":")
        if page in SKIPPED_PAGES or (expected is not None and expected.startswith("Traceback")):
            continue
        (tmp_path / f"{Path(page).stem}_{line}.py").write_text(code)
    assert mypy_errors(*sorted(tmp_path.glob("*.py"))) == []
