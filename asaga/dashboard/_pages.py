"""The dashboard's HTML: Jinja2 templates (``asaga/dashboard/templates``), autoescaped,
and its static files (``asaga/dashboard/static``: the stylesheet, the page scripts and
the vendored Mermaid), read from the installed package.

The only module of asaga that imports Jinja2 (extra ``asaga[dashboard]``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

try:
    import jinja2
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise ImportError(
        "asaga.dashboard needs Jinja2 and Starlette: pip install 'asaga[dashboard]'"
    ) from exc

__all__ = ["STATIC_NAMES", "render", "static_file"]

_STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("asaga.dashboard", "templates"),
        autoescape=True,  # every value is escaped, the .html templates included
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> bytes:
    """The template ``template`` rendered with ``context``, as UTF-8."""
    return _environment().get_template(template).render(**context).encode()


STATIC_NAMES = (
    "dashboard.css",
    "favicon.svg",
    "list.js",
    "mermaid.LICENSE",
    "mermaid.min.js",
    "run.js",
)
"""The static files served (at ``/static/NAME``): no other name touches the filesystem."""


@cache
def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of :data:`STATIC_NAMES`, read once, with its media type."""
    files: dict[str, tuple[bytes, str]] = {}
    folder = resources.files("asaga.dashboard").joinpath("static")
    for name in STATIC_NAMES:
        suffix = name[name.rfind(".") :]
        media = _STATIC_TYPES.get(suffix, _STATIC_TYPES[".txt"])
        files[name] = (folder.joinpath(name).read_bytes(), media)
    return files


def static_file(name: str) -> tuple[bytes, str] | None:
    """A static file's content and media type; ``None`` unless ``name`` is one of
    :data:`STATIC_NAMES` (a dictionary look-up: nothing is cached per name asked)."""
    return _static_files().get(name)
