"""The standalone dashboard: ``asaga dashboard --redis URL``, served by uvicorn.

The only module of asaga that imports uvicorn (extra ``asaga[dashboard]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import structlog
import uvicorn

from .._saga import Saga
from ..runs import RunStore
from ._core import Authorize, Dashboard, Role, TokenAuth
from ._http import RequestInfo

__all__ = ["read_only", "serve", "serve_hosts", "served_dashboard"]

_logger = structlog.get_logger("asaga.dashboard")


def serve_hosts(host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` headers the standalone dashboard answers: this machine's loopback
    names on ``port``, ``host`` (the address bound) on ``port``, and ``extra``."""
    bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    if host not in ("0.0.0.0", "::", ""):  # a wildcard address is no host name
        hosts.append(f"{bound}:{port}")
    return [*hosts, *extra]


def read_only(request: RequestInfo) -> Role:
    """The ``authorize`` of the standalone server without tokens: every page, no action."""
    return "read"


def served_dashboard(
    runs: RunStore,
    *,
    sagas: Sequence[type[Saga]],
    resources: Mapping[str, Any] | None,
    token: str | None,
    read_token: str | None,
    allowed_hosts: Sequence[str],
) -> Dashboard:
    """The :class:`Dashboard` that ``asaga dashboard`` serves: guarded by
    :class:`TokenAuth` when given a token; without any, read-only, with a warning whose
    advice is the command's own options (not ``authorize=``, which the command has not)."""
    authorize: Authorize
    if token or read_token:
        authorize = TokenAuth(operate=token, read=read_token)
    else:
        authorize = read_only
        _logger.warning(
            "dashboard_without_token",
            advice="every page (run inputs and results included) is open to whoever "
            "reaches the server, and every action is refused: start asaga dashboard with "
            "--token TOKEN (or $ASAGA_DASHBOARD_TOKEN) to allow actions, and with "
            "--read-token TOKEN (or $ASAGA_DASHBOARD_READ_TOKEN) to guard the pages too",
        )
    return Dashboard(
        runs, sagas=sagas, resources=resources, authorize=authorize, allowed_hosts=allowed_hosts
    )


async def serve(
    runs: RunStore,
    *,
    sagas: Sequence[type[Saga]] = (),
    resources: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    read_token: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve a :class:`Dashboard` of ``runs`` with uvicorn until interrupted.

    Without ``token``, pages are read-only and every action is refused; with it, actions
    need it (the login form, or ``Authorization: Bearer``). With ``read_token``, pages
    need it too (or ``token``).

    The dashboard answers only to the hosts it is reached by on this machine
    (``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``), to ``host:PORT``, and to
    ``allowed_hosts`` (a name behind a proxy, say): any other ``Host`` header is refused
    (against DNS rebinding)."""
    dashboard = served_dashboard(
        runs,
        sagas=sagas,
        resources=resources,
        token=token,
        read_token=read_token,
        allowed_hosts=serve_hosts(host, port, allowed_hosts),
    )
    config = uvicorn.Config(
        dashboard.asgi(), host=host, port=port, log_level="info", lifespan="off"
    )
    await uvicorn.Server(config).serve()
