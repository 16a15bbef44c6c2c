"""The dashboard as an aiohttp sub-application at /ops/ (aiohttp's test client): the same
pages, links under the mount path, actions with CSRF, authorization."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from asaga.dashboard import Dashboard, RequestInfo, Role
from asaga.dashboard._aiohttp import read_body
from asaga.dashboard._http import MAX_BODY
from asaga.runs import MemoryRunStore, RedisRunStore, RunStore

from .client import AiohttpDashboard, act, csrf_of
from .sagas import APPROVED, SAGAS, UNDONE, seed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp is asyncio-only


@asynccontextmanager
async def mounted(dashboard: Dashboard) -> AsyncIterator[AiohttpDashboard]:
    app = web.Application()
    app.add_subapp("/ops/", dashboard.aiohttp())
    async with TestClient(TestServer(app)) as client:
        yield AiohttpDashboard(client)


def role_from_header(info: RequestInfo) -> Role | None:
    role = info.headers.get("x-role", "operate")
    return role if role in ("operate", "read") else None  # type: ignore[return-value]


@pytest.fixture(params=["memory", "redis"])
async def runs(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[RunStore]:
    if request.param == "memory":
        yield MemoryRunStore()
        return
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as store:
        yield store


async def test_pages_and_links_under_the_subapp_path(runs: RunStore) -> None:
    """The list and a run page render under /ops/ with links and assets under /ops."""
    ids = await seed(runs)
    async with mounted(Dashboard(runs, sagas=SAGAS)) as dash:
        listed = await dash.get("/")
        page = await dash.get("/run", id=ids["succeeded"])
        script = await dash.get("/static/run.js")
    assert listed.status == 200
    assert f'href="/ops/run?id={ids["succeeded"]}"' in listed.text
    assert 'href="/ops/static/dashboard.css"' in listed.text
    assert page.status == 200
    assert "class reserve,charge succeeded" in page.text
    assert script.status == 200
    assert listed.headers["X-Frame-Options"] == "DENY"
    assert "Path=/ops/" in listed.headers["Set-Cookie"]


async def test_undo_and_resume_through_aiohttp(runs: RunStore) -> None:
    """Undo a succeeded run and resume a halted one, confirmed and CSRF-checked."""
    UNDONE.clear()
    ids = await seed(runs)
    APPROVED.add("o-2")
    try:
        async with mounted(Dashboard(runs, sagas=SAGAS, authorize=role_from_header)) as dash:
            undone = await act(dash, "undo", ids["succeeded"])
            resumed = await act(dash, "resume", ids["halted"])
    finally:
        APPROVED.discard("o-2")
    assert undone.status == 200, undone.text
    assert resumed.status == 200, resumed.text
    assert (await runs.load(ids["succeeded"])).status == "undone"
    assert (await runs.load(ids["halted"])).status == "succeeded"
    assert UNDONE == ["r-o-1"]


async def test_csrf_and_authorization_through_aiohttp(runs: RunStore) -> None:
    """Without authorize, actions are refused (403) and pages render; a wrong CSRF token
    or a foreign origin is refused; nothing changes."""
    ids = await seed(runs)
    run = ids["succeeded"]
    async with mounted(Dashboard(runs, sagas=SAGAS)) as dash:
        page = await dash.get("/run", id=run)
        refused = await dash.post("/act", {"csrf": "0" * 64, "action": "undo", "id": run})
    async with mounted(Dashboard(runs, sagas=SAGAS, authorize=role_from_header)) as dash:
        token = csrf_of((await dash.get("/confirm", action="undo", id=run)).text)
        form: dict[str, Any] = {"csrf": token, "action": "undo", "id": run}
        foreign = await dash.post("/act", form, origin="http://evil.test")
        wrong = await dash.post("/act", {**form, "csrf": "1" * 64})
    assert page.status == 200
    assert not re.search(r"action=undo", page.text)
    assert refused.status == 403
    assert foreign.status == 403
    assert wrong.status == 403
    assert (await runs.load(run)).status == "succeeded"


class Pieces:
    """A request body that arrives in the pieces given (a fake ``StreamReader``)."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.asked: list[int] = []

    async def read(self, n: int = -1) -> bytes:
        self.asked.append(n)
        return self.pieces.pop(0)[:n] if self.pieces else b""


async def test_a_body_that_arrives_in_pieces_is_read_to_its_end() -> None:
    """The adapter reads a body until its end, however many pieces it comes in; past
    MAX_BODY it stops (the dashboard answers 413), and a Content-Length over it is not
    read at all."""
    whole = await read_body(Pieces(b"csrf=abc&act", b"ion=undo&id=r-1"), None)
    big = Pieces(*[b"x" * 1000] * 40)
    too_big = await read_body(big, None)
    declared = Pieces(b"never read")
    over = await read_body(declared, MAX_BODY + 1)
    assert whole == b"csrf=abc&action=undo&id=r-1"
    assert len(too_big) == MAX_BODY + 1
    assert len(big.pieces) == 40 - 17  # stopped reading after MAX_BODY + 1 bytes
    assert len(over) == MAX_BODY + 1
    assert declared.asked == []


async def test_a_chunked_form_is_acted_on_and_a_long_one_refused(runs: RunStore) -> None:
    """A form posted chunked, in two pieces, is read whole (the action is done); a 40 KB
    chunked body is a 413, answered (not left hanging)."""
    ids = await seed(runs)
    run = ids["succeeded"]
    async with mounted(Dashboard(runs, sagas=SAGAS, authorize=role_from_header)) as dash:
        token = csrf_of((await dash.get("/confirm", action="undo", id=run)).text)
        form = f"csrf={token}&action=undo&id={run}".encode()
        origin = f"http://{dash.client.server.host}:{dash.client.server.port}"
        headers = {"origin": origin, "content-type": "application/x-www-form-urlencoded"}

        async def two_pieces() -> AsyncIterator[bytes]:
            yield form[:20]
            yield form[20:]

        async def long_body() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"x" * 1024

        with anyio.fail_after(10):
            async with dash.client.post("/ops/act", data=two_pieces(), headers=headers) as r:
                done = (r.status, await r.text())
            async with dash.client.post("/ops/act", data=long_body(), headers=headers) as r:
                long = (r.status, await r.text())
    assert done[0] == 200, done[1]
    assert (await runs.load(run)).status == "undone"
    assert long[0] == 413
    assert "too large" in long[1]


async def test_the_mount_path_without_its_slash_redirects_to_the_list() -> None:
    """/ops (no trailing slash) is a permanent redirect to /ops/, the query kept."""
    async with mounted(Dashboard(MemoryRunStore(), sagas=SAGAS)) as dash:
        async with dash.client.get("/ops", allow_redirects=False) as r:
            bare = (r.status, r.headers.get("Location"))
        async with dash.client.get("/ops?status=failed", allow_redirects=False) as r:
            query = (r.status, r.headers.get("Location"))
        async with dash.client.get("/ops") as r:
            followed = (r.status, str(r.url.path))
    assert bare == (308, "/ops/")
    assert query == (308, "/ops/?status=failed")
    assert followed == (200, "/ops/")
