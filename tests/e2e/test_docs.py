"""Every Python example in docs/ runs, and prints what the page says it prints.

A ```python block followed closely by a ```text block must print exactly that text; a
text block starting with ``Traceback`` must match the end of the error output (the part
after its ``...`` line). asaga's log lines are silenced unless the example configures
structlog itself.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
QUIET = (
    "import logging as _logging, structlog as _structlog\n"
    "_structlog.configure(\n"
    "    wrapper_class=_structlog.make_filtering_bound_logger(_logging.CRITICAL)\n"
    ")\n"
)


def examples() -> list[tuple[str, str, str | None]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
        for i, (lang, body, start, end) in enumerate(blocks):
            if lang != "python":
                continue
            expected = None
            follows = i + 1 < len(blocks) and blocks[i + 1][0] == "text"
            if follows and text[end : blocks[i + 1][2]].count("\n") <= 4:
                expected = blocks[i + 1][1]
            line = text[:start].count("\n") + 1
            found.append((f"{page.name}:{line}", body, expected))
    return found


EXAMPLES = examples()


def test_docs_have_examples() -> None:
    """The pages were found and hold examples (guards against a silently empty run)."""
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize(("where", "code", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_runs(where: str, code: str, expected: str | None, tmp_path: Path) -> None:
    """The example runs and its output matches the page."""
    configures = "structlog.configure" in code or "capture_logs" in code
    proc = subprocess.run(
        [sys.executable, "-c", code if configures else QUIET + code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    if expected is not None and expected.startswith("Traceback"):
        tail = expected.split("...\n", 1)[1].rstrip()
        assert proc.returncode != 0, f"{where}: expected an error"
        assert proc.stderr.rstrip().endswith(tail), proc.stderr
        return
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr}"
    if expected is not None:
        assert proc.stdout.rstrip() == expected.rstrip()
