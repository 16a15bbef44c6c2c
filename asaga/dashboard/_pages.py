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

__all__ = ["render", "static_file"]

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


@cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """A static file's content and media type; ``None`` if there is no such file (only
    plain names: no directories, nothing outside the folder)."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    suffix = name[name.rfind(".") :] if "." in name else ""
    media = _STATIC_TYPES.get(suffix)
    if media is None and name.endswith("LICENSE"):
        media = _STATIC_TYPES[".txt"]
    if media is None:
        return None
    path = resources.files("asaga.dashboard").joinpath("static", name)
    if not path.is_file():
        return None
    return path.read_bytes(), media
