"""The dashboard as an aiohttp application, to add under a path::

    app.add_subapp("/ops/", dashboard.aiohttp())

Links and forms start with the path the sub-application is mounted at (the request's
path less the part its route matched).

The only module of the dashboard that imports aiohttp (extra ``asaga[aiohttp]``).
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

from aiohttp import web

from ._http import MAX_BODY, Handler, Request

__all__ = ["AiohttpApp", "aiohttp_app", "read_body"]

AiohttpApp: TypeAlias = web.Application
"""What ``Dashboard.aiohttp()`` returns: an ``aiohttp.web.Application``."""


class Body(Protocol):
    """What :func:`read_body` reads: ``aiohttp.StreamReader`` (``request.content``)."""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, as soon as some have arrived; ``b""`` at the end."""
        ...


async def read_body(content: Body, length: int | None) -> bytes:
    """The request's body, read until its end (it may arrive in many pieces, or chunked)
    or until it is longer than ``MAX_BODY``: then ``MAX_BODY + 1`` bytes, which the
    dashboard refuses with a 413 (a ``Content-Length`` over it is not read at all)."""
    if length is not None and length > MAX_BODY:
        return b"\0" * (MAX_BODY + 1)
    body = bytearray()
    while len(body) <= MAX_BODY:
        piece = await content.read(MAX_BODY + 1 - len(body))
        if not piece:
            break
        body += piece
    return bytes(body)


def aiohttp_app(dashboard: Handler) -> web.Application:
    """An aiohttp application serving ``dashboard`` at any path within it."""

    async def serve(incoming: web.Request) -> web.StreamResponse:
        tail = incoming.match_info.get("tail", "")
        path = "/" + tail
        full = incoming.path
        root = full[: len(full) - len(path)] if full.endswith(path) else ""
        body = await read_body(incoming.content, incoming.content_length)
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

    async def slash(incoming: web.Request) -> web.StreamResponse:
        # The mount path without its slash (``/ops``): the list is at ``/ops/``.
        query = f"?{incoming.query_string}" if incoming.query_string else ""
        raise web.HTTPPermanentRedirect(location=incoming.path + "/" + query)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    app.router.add_route("GET", "", slash)
    return app
