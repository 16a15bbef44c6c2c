"""examples/dashboard_app.py: the dashboard mounted in FastAPI at /ops, with the
example's authorize (loopback; X-Operator may act) and redaction (emails masked)."""

from __future__ import annotations

import re

import httpx
import pytest

from examples.dashboard_app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


def client(app: object, host: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 50000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_the_example_mounts_the_dashboard_with_its_authorize_and_redact(
    redis_url: str, redis_prefix: str
) -> None:
    """A checkout posted to the app is listed under /ops/; its page masks the email; an
    operator (X-Operator: yes) gets the undo confirmation, a reader does not; a request
    from elsewhere is refused."""
    app = create_app(redis_url, prefix=redis_prefix)
    async with app.router.lifespan_context(app), client(app, "127.0.0.1") as local:
        run_id = (await local.post("/orders", params={"order_id": "o-1"})).json()["run_id"]
        listed = await local.get("/ops/")
        page = await local.get("/ops/run", params={"id": run_id})
        operator = await local.get(
            "/ops/confirm", params={"action": "undo", "id": run_id}, headers={"x-operator": "yes"}
        )
        reader = await local.get("/ops/confirm", params={"action": "undo", "id": run_id})
        async with client(app, "203.0.113.9") as outsider:
            refused = await outsider.get("/ops/")
    assert listed.status_code == 200
    assert f'href="/ops/run?id={run_id}"' in listed.text
    assert "ann@example.com" not in page.text
    assert re.search(r"&#34;\*\*\*@example\.com&#34;", page.text)
    assert operator.status_code == 200
    assert 'name="csrf"' in operator.text
    assert reader.status_code == 403
    assert refused.status_code == 403
