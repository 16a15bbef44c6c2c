"""MkDocs hooks of the documentation site (mkdocs.yml): every relative link of a page must
name a file that exists, in docs/ or elsewhere in the repository (the examples, the
sources, CONTRIBUTING.md). Links out of docs/ are read on the repository, not on the
site, so MkDocs itself is told to let them be; this hook keeps them honest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fail the build on a relative link to a file that does not exist."""
    docs = Path(config["docs_dir"])
    here = (docs / page.file.src_path).parent
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced:
            continue
        for target in _LINK.findall(line):
            if "://" in target or target.startswith(("mailto:", "/")):
                continue
            if not (here / target).resolve().exists():
                raise PluginError(f"{page.file.src_path}: the link {target!r} names no file")
    return markdown
