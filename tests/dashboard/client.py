"""An HTTP client of a dashboard mounted under ``/ops``: through Starlette (httpx's
ASGITransport) or aiohttp's test client, with the same few calls."""

from __future__ import annotations

import re
from typing import Any, Protocol

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
ORIGIN = "http://testserver"


class Reply(Protocol):
    """What both clients answer: a status, a text, headers."""

    status: int
    text: str
    headers: Any


class _HttpxReply:
    def __init__(self, response: Any) -> None:
        self.status = response.status_code
        self.text = response.text
        self.headers = response.headers


def csrf_of(html: str) -> str:
    """The CSRF token of a page's form."""
    found = CSRF.search(html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


class HttpxDashboard:
    """httpx over ASGITransport, the dashboard mounted in Starlette at /ops."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def get(self, path: str, **params: str) -> Reply:
        return _HttpxReply(await self.client.get(f"/ops{path}", params=params))

    async def post(self, path: str, data: dict[str, str], **headers: str) -> Reply:
        headers = {"origin": ORIGIN, **headers}
        headers = {k: v for k, v in headers.items() if v}
        response = await self.client.post(f"/ops{path}", data=data, headers=headers)
        return _HttpxReply(response)


class _AiohttpReply:
    def __init__(self, status: int, text: str, headers: Any) -> None:
        self.status = status
        self.text = text
        self.headers = headers


class AiohttpDashboard:
    """aiohttp's test client, the dashboard added as a sub-application at /ops/."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def get(self, path: str, **params: str) -> Reply:
        async with self.client.get(f"/ops{path}", params=params) as r:
            return _AiohttpReply(r.status, await r.text(), r.headers)

    async def post(self, path: str, data: dict[str, str], **headers: str) -> Reply:
        origin = f"http://{self.client.server.host}:{self.client.server.port}"
        headers = {"origin": origin, **headers}
        headers = {k: v for k, v in headers.items() if v}
        async with self.client.post(
            f"/ops{path}", data=data, headers=headers, allow_redirects=False
        ) as r:
            return _AiohttpReply(r.status, await r.text(), r.headers)


async def act(dash: HttpxDashboard | AiohttpDashboard, action: str, run_id: str) -> Reply:
    """Go through an action's confirmation page, then confirm it (as a browser would)."""
    confirm = await dash.get("/confirm", action=action, id=run_id)
    assert confirm.status == 200, confirm.text
    token = csrf_of(confirm.text)
    return await dash.post("/act", {"csrf": token, "action": action, "id": run_id})
