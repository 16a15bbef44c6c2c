"""The ``asaga`` command line: ``graph`` output, target errors, ``python -m asaga``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asaga import Saga, step
from asaga._cli import main
from tests.test_render import ORDER_DOT, ORDER_MERMAID, ORDER_MERMAID_INPUTS

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = "tests.sagas.graph_fixture"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``main(argv)``; return its status, stdout and stderr."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_graph_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    """`asaga graph module:Saga` prints the Mermaid drawing (the default format)."""
    assert run(["graph", f"{FIXTURE}:Order"], capsys) == (0, ORDER_MERMAID, "")


def test_graph_dot(capsys: pytest.CaptureFixture[str]) -> None:
    """--format dot prints the DOT drawing."""
    assert run(["graph", f"{FIXTURE}:Order", "--format", "dot"], capsys) == (0, ORDER_DOT, "")


def test_graph_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    """--inputs draws the inputs too."""
    assert run(["graph", "--inputs", f"{FIXTURE}:Order"], capsys) == (
        0,
        ORDER_MERMAID_INPUTS,
        "",
    )


class Holder:
    """Holds a saga class as an attribute (for the dotted-path test)."""

    class Inner(Saga):
        @step
        async def only() -> int:
            return 1


def test_graph_nested_class(capsys: pytest.CaptureFixture[str]) -> None:
    """A class inside a class is reached with a dotted attribute path."""
    assert run(["graph", "tests.test_cli:Holder.Inner"], capsys) == (
        0,
        'flowchart TD\n    only["only<br/>output"]\n',
        "",
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "tests.sagas.graph_fixture",
            "target 'tests.sagas.graph_fixture' must be module.path:ClassName "
            "(for example examples.checkout:Checkout)",
        ),
        (":Order", "target ':Order' must be module.path:ClassName"),
        (f"{FIXTURE}:", f"target '{FIXTURE}:' must be module.path:ClassName"),
        ("no_such_module_x:Order", "no module named 'no_such_module_x' (looked in"),
        ("tests.sagas.nope:Order", "no module named 'tests.sagas.nope' (looked in"),
        (f"{FIXTURE}:Ordr", f"{FIXTURE} has no attribute 'Ordr' (did you mean 'Order'?)"),
        (f"{FIXTURE}:Xyz", f"{FIXTURE} has no attribute 'Xyz' (sagas there: Order, ReserveItem)"),
        (f"{FIXTURE}:Order.nope", f"{FIXTURE}:Order has no attribute 'nope'"),
        (
            f"{FIXTURE}:NotASaga",
            f"{FIXTURE}:NotASaga is a class, not a Saga subclass (sagas there: Order, ReserveItem)",
        ),
        (f"{FIXTURE}:is_gift", f"{FIXTURE}:is_gift is a function, not a Saga subclass"),
        (f"{FIXTURE}:Order.charge", f"{FIXTURE}:Order.charge is a Step, not a Saga subclass"),
        ("asaga:Saga", "asaga:Saga is the Saga base class; name a subclass of it"),
    ],
)
def test_bad_target(target: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A target that names no saga is a usage error (status 2) with one clear line."""
    status, out, err = run(["graph", target], capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"asaga graph: error: {message}")
    assert err.count("\n") == 1


@pytest.fixture
def scratch_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory is an empty temporary one, not on sys.path; modules written
    there as ``asaga_cli_scratch_*.py`` are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("asaga_cli_scratch_")]:
        del sys.modules[name]


def test_target_in_current_directory(
    scratch_module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like `python -m`, the current directory is searched for the target's module."""
    (scratch_module / "asaga_cli_scratch_ok.py").write_text(
        "from asaga import Saga, step\n\n\n"
        "class Here(Saga):\n"
        "    @step\n"
        "    async def a() -> int:\n"
        "        return 1\n"
    )
    assert run(["graph", "asaga_cli_scratch_ok:Here"], capsys) == (
        0,
        'flowchart TD\n    a["a<br/>output"]\n',
        "",
    )


def test_saga_definition_error(scratch_module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A module whose saga does not define is a usage error that shows the problems."""
    (scratch_module / "asaga_cli_scratch_bad.py").write_text(
        "from asaga import Saga, step\n\n\n"
        "class Broken(Saga):\n"
        "    @step\n"
        "    def a() -> int:\n"
        "        return 1\n"
    )
    status, out, err = run(["graph", "asaga_cli_scratch_bad:Broken"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith("asaga graph: error: importing asaga_cli_scratch_bad failed: ")
    assert "must be `async def`" in err


def test_missing_import_inside_the_module_propagates(
    scratch_module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module the target imports that is missing is not the target's typo: its
    ModuleNotFoundError propagates with its traceback."""
    (scratch_module / "asaga_cli_scratch_dep.py").write_text("import asaga_no_such_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="asaga_no_such_dependency"):
        main(["graph", "asaga_cli_scratch_dep:X"])


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """No command, an unknown command or a bad --format: argparse's usage error, status 2."""
    for argv in ([], ["draw"], ["graph", f"{FIXTURE}:Order", "--format", "svg"]):
        status, out, err = run(argv, capsys)
        assert (status, out) == (2, "")
        assert "usage: asaga" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists the commands and exits 0."""
    status, out, _ = run(["--help"], capsys)
    assert status == 0
    assert "graph" in out


def test_python_m_asaga() -> None:
    """`python -m asaga graph tests.<module>:<Saga>` works from the repository root."""
    proc = subprocess.run(
        [sys.executable, "-m", "asaga", "graph", f"{FIXTURE}:Order"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, ORDER_MERMAID, "")


def test_python_m_asaga_error() -> None:
    """Errors go to stderr with status 2 from the real entry point too."""
    proc = subprocess.run(
        [sys.executable, "-m", "asaga", "graph", "examples.checkout:Nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "asaga graph: error: examples.checkout has no attribute 'Nope' (sagas there: Checkout)\n"
    )


DOCS_PAGE = ROOT / "docs" / "cli.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def documented_commands() -> list[tuple[str, str]]:
    """(command line, what the page says it prints) for each ``$ asaga`` in docs/cli.md.

    A console block holding one command alone is followed by a block of what it prints;
    otherwise the lines after each command, up to the next one, are what it prints.
    """
    blocks = [m.group(1, 2) for m in FENCE.finditer(DOCS_PAGE.read_text())]
    found: list[tuple[str, str]] = []
    for i, (lang, body) in enumerate(blocks):
        if lang != "console":
            continue
        lines = body.splitlines()
        if len(lines) == 1:
            found.append((lines[0], blocks[i + 1][1]))
            continue
        for line in lines:
            if line.startswith("$ "):
                found.append((line, ""))
            else:
                found[-1] = (found[-1][0], found[-1][1] + line + "\n")
    return found


DOCUMENTED = documented_commands()


def test_docs_page_has_commands() -> None:
    """docs/cli.md was read and shows several commands (guards against an empty run)."""
    assert len(DOCUMENTED) >= 5


@pytest.mark.parametrize(("command", "expected"), DOCUMENTED, ids=[c for c, _ in DOCUMENTED])
def test_docs_page_output(
    command: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command on docs/cli.md prints exactly what the page shows, from the repo root."""
    assert command.startswith("$ asaga ")
    monkeypatch.chdir(ROOT)
    _, out, err = run(shlex.split(command)[2:], capsys)
    assert out + err == expected
