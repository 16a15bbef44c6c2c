"""The dashboard's own, framework-neutral view of HTTP: one request in, one response out.

The adapters (:mod:`asaga.dashboard._asgi` for Starlette/FastAPI and uvicorn,
:mod:`asaga.dashboard._aiohttp` for aiohttp) turn their framework's request into a
:class:`Request` and write the :class:`Response` back; routing, pages, authorization,
CSRF and actions live in :mod:`asaga.dashboard._core`, which never sees a framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Protocol
from urllib.parse import parse_qsl

__all__ = ["Handler", "Request", "RequestInfo", "Response", "parse_cookies"]

MAX_BODY = 16 * 1024
"""The largest request body read (a form of a few fields); a longer one is a 413."""


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What an ``authorize`` callable is given about a request to the dashboard.

    ``headers`` have lowercase names; ``cookies`` are the request's cookies; ``client``
    is the peer's address as the server saw it (``None`` if unknown). ``path`` is the
    path within the dashboard (``/``, ``/run``, ``/act``...), whatever its mount path.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    client: str | None


@dataclass(frozen=True, slots=True)
class Request:
    """One request, as the adapters hand it to the dashboard."""

    method: str
    root: str
    """The mount path the framework reports (``""`` at the root, ``"/ops"`` when mounted
    under ``/ops``): every link and form action starts with it."""
    path: str
    """The path within the dashboard, starting with ``/``."""
    query: Mapping[str, str]
    """The query string's parameters (the last value of a repeated one)."""
    headers: Mapping[str, str]
    """Lowercase names."""
    body: bytes = b""
    client: str | None = None
    scheme: str = "http"

    @property
    def cookies(self) -> Mapping[str, str]:
        """The request's cookies."""
        return parse_cookies(self.headers.get("cookie", ""))

    def form(self) -> dict[str, str]:
        """The body as an ``application/x-www-form-urlencoded`` form (the last value of a
        repeated field)."""
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def info(self) -> RequestInfo:
        """What the ``authorize`` callable sees of this request."""
        return RequestInfo(
            method=self.method,
            path=self.path,
            headers=self.headers,
            cookies=self.cookies,
            client=self.client,
        )


@dataclass(slots=True)
class Response:
    """One response: status, headers (in order, repeatable: ``Set-Cookie``), body."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class Handler(Protocol):
    """What an adapter serves: the dashboard's :meth:`handle`."""

    async def handle(self, request: Request) -> Response:
        """Answer one request (never raises for a bad request: it is a 4xx response)."""
        ...


def parse_cookies(header: str) -> dict[str, str]:
    """The cookies of a ``Cookie`` header (``{}`` when it does not parse)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}
