"""The standalone dashboard: ``asaga dashboard --redis URL``, served by uvicorn.

The only module of asaga that imports uvicorn (extra ``asaga[dashboard]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import uvicorn

from .._saga import Saga
from ..runs import RunStore
from ._core import Dashboard, TokenAuth

__all__ = ["serve"]


async def serve(
    runs: RunStore,
    *,
    sagas: Sequence[type[Saga]] = (),
    resources: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    read_token: str | None = None,
) -> None:
    """Serve a :class:`Dashboard` of ``runs`` with uvicorn until interrupted.

    Without ``token``, pages are read-only and every action is refused; with it, actions
    need it (the login form, or ``Authorization: Bearer``). With ``read_token``, pages
    need it too (or ``token``)."""
    authorize = TokenAuth(operate=token, read=read_token) if token or read_token else None
    dashboard = Dashboard(runs, sagas=sagas, resources=resources, authorize=authorize)
    config = uvicorn.Config(
        dashboard.asgi(), host=host, port=port, log_level="info", lifespan="off"
    )
    await uvicorn.Server(config).serve()
