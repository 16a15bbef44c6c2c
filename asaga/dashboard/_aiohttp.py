"""The dashboard as an aiohttp application, to add under a path::

    app.add_subapp("/ops/", dashboard.aiohttp())

Links and forms start with the path the sub-application is mounted at (the request's
path less the part its route matched).

The only module of the dashboard that imports aiohttp (extra ``asaga[aiohttp]``).
"""

from __future__ import annotations

from typing import TypeAlias

from aiohttp import web

from ._http import MAX_BODY, Handler, Request

__all__ = ["AiohttpApp", "aiohttp_app"]

AiohttpApp: TypeAlias = web.Application
"""What ``Dashboard.aiohttp()`` returns: an ``aiohttp.web.Application``."""


def aiohttp_app(dashboard: Handler) -> web.Application:
    """An aiohttp application serving ``dashboard`` at any path within it."""

    async def serve(incoming: web.Request) -> web.StreamResponse:
        tail = incoming.match_info.get("tail", "")
        path = "/" + tail
        full = incoming.path
        root = full[: len(full) - len(path)] if full.endswith(path) else ""
        if incoming.content_length is not None and incoming.content_length > MAX_BODY:
            body = b"x" * (MAX_BODY + 1)  # refused by the dashboard with a 413
        else:
            body = await incoming.content.read(MAX_BODY + 1)
        peer = incoming.remote
        request = Request(
            method=incoming.method,
            root=root.rstrip("/"),
            path=path,
            query=dict(incoming.query.items()),
            headers={k.lower(): v for k, v in incoming.headers.items()},
            body=body,
            client=peer,
            scheme=incoming.scheme,
        )
        answer = await dashboard.handle(request)
        response = web.Response(
            status=answer.status,
            body=answer.body if incoming.method != "HEAD" else None,
        )
        response.headers["Content-Type"] = answer.content_type
        for name, value in answer.headers:
            response.headers.add(name, value)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    return app
