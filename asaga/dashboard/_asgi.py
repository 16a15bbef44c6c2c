"""The dashboard as an ASGI application, on Starlette: served by uvicorn (``asaga
dashboard``), or mounted in a FastAPI or Starlette application under any path::

    app.mount("/ops", dashboard.asgi())

Links and forms start with the mount path Starlette reports (``root_path``).

The only module of asaga that imports Starlette for the dashboard (extra
``asaga[dashboard]``).
"""

from __future__ import annotations

try:
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response as StarletteResponse
    from starlette.types import Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise ImportError("Dashboard.asgi() needs Starlette: pip install 'asaga[dashboard]'") from exc

from ._http import MAX_BODY, Handler, Request

__all__ = ["AsgiApp"]


class AsgiApp:
    """An ASGI application serving a dashboard (made by ``Dashboard.asgi()``)."""

    def __init__(self, dashboard: Handler) -> None:
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (HTTP; lifespan events are acknowledged)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":  # websockets: nothing here
            return
        incoming = StarletteRequest(scope, receive)
        body = b""
        async for chunk in incoming.stream():
            body += chunk
            if len(body) > MAX_BODY:
                break
        root, path = _split(scope)
        request = Request(
            method=incoming.method,
            root=root,
            path=path or "/",
            query=dict(incoming.query_params),
            headers={k.lower(): v for k, v in incoming.headers.items()},
            body=body,
            client=incoming.client.host if incoming.client else None,
            scheme=incoming.url.scheme,
        )
        answer = await self.dashboard.handle(request)
        response = StarletteResponse(
            answer.body if request.method != "HEAD" else b"",
            status_code=answer.status,
            media_type=answer.content_type,
        )
        for name, value in answer.headers:
            response.headers.append(name, value)
        await response(scope, receive, send)


def _split(scope: Scope) -> tuple[str, str]:
    """The mount path and the path within it (as Starlette's routing reads them: the
    path includes the root path, which a mount appends to)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "") or ""
    root = root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return root, path[len(root) :]
    return root, path
