"""Every third-party module asaga imports is a declared dependency of the distribution:
the core's in ``dependencies``, an integration's in its extra. An undeclared import breaks
a clean install (``sniffio`` did, once anyio stopped requiring it)."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "asaga"

# Import name -> the distribution that provides it, where the two differ.
DISTRIBUTIONS = {"redis": "redis", "starlette": "fastapi", "opentelemetry": "opentelemetry-api"}

# Integration modules import their framework: it must be in that extra.
EXTRAS = {
    "fastapi.py": "fastapi",
    "aiohttp.py": "aiohttp",
    "_saq.py": "saq",
    "opentelemetry.py": "otel",
    # The runs dashboard: Starlette, Jinja2 and uvicorn (extra dashboard); its aiohttp
    # sub-application needs the aiohttp extra.
    "_asgi.py": "dashboard",
    "_pages.py": "dashboard",
    "_serve.py": "dashboard",
    "_aiohttp.py": "aiohttp",
    # The testing kit: trio for virtual time on trio, pytest for its plugin; each imported
    # only where that library is in use already (a trio test, a pytest session).
    "_clock.py": "trio",
    "pytest_plugin.py": "pytest",
}


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = requirement
        for stop in "[<>=!~; ":
            name = name.split(stop)[0]
        names.add(name.lower())
    return names


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    # What is imported under `if TYPE_CHECKING:` is for the type checkers only: never at
    # run time, so no install needs it.
    checking = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_imported_module_is_declared() -> None:
    """No module of the package imports a third-party name its install does not bring."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    undeclared = []
    for path in sorted(PACKAGE.rglob("*.py")):
        allowed = core | extras.get(EXTRAS.get(path.name, ""), set()) | {EXTRAS.get(path.name)}
        for module in _imports(path):
            if module in sys.stdlib_module_names or module == "asaga":
                continue
            # Starlette comes with the fastapi extra, and on its own in the dashboard's.
            if module.lower() not in allowed and (
                DISTRIBUTIONS.get(module, module).lower() not in allowed
            ):
                undeclared.append(f"{path.relative_to(ROOT)}: {module}")
    assert undeclared == []
