"""examples/distributed_app.py: POST answers 202 with the run's URL at once, a worker runs
the saga, GET follows it to its end; bad bodies are refused before anything is enqueued."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis

from asaga.locks import RedisLockProvider
from asaga.runs import RedisRunStore
from asaga.workers import SaqQueue, Served, serve
from examples.distributed_app import create_app
from examples.inventory import InventorySaga, Notifier, Product, RedisInventoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SAQ and redis-py are asyncio-only


@pytest.fixture
async def service(redis_url: str, redis_prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app, and one worker serving its queue, in this process."""
    queue = f"t{uuid.uuid4().hex[:10]}"
    client = aioredis.Redis.from_url(redis_url)
    app = create_app(redis_url, prefix=redis_prefix, queue=queue)
    stop = anyio.Event()
    async with (
        RedisLockProvider(client, prefix=f"{redis_prefix}locks:") as locks,
        RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs,
        SaqQueue.from_url(redis_url, name=queue, heartbeat=5) as jobs,
        anyio.create_task_group() as tg,
    ):
        store = RedisInventoryStore(client, locks, prefix=f"{redis_prefix}inv:")
        await store.put(Product(sku="widget", inventory_count=10))
        resources: dict[str, Any] = {"store": store, "locks": locks, "notifier": Notifier()}
        served = Served(sagas=[InventorySaga], runs=runs, resources=resources)
        tg.start_soon(lambda: serve(jobs, served, concurrency=2, shutdown_grace=1, stop=stop))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                yield http
        stop.set()
    keys = [k async for k in client.scan_iter(match=f"saq:*{queue}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def follow(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """GET ``url`` until the run has finished (bounded)."""
    with anyio.fail_after(15):
        while True:
            answer = (await http.get(url)).json()
            if answer["status"] in ("succeeded", "failed", "cancelled", "compensation_failed"):
                return dict(answer)
            await anyio.sleep(0.05)


async def test_a_reservation_is_accepted_at_once_and_run_by_a_worker(
    service: httpx.AsyncClient,
) -> None:
    body = {"product_id": "widget", "quantity": 2, "operation": "reserve"}
    response = await service.post("/reservations", json=body, headers={"Idempotency-Key": "o-1"})
    assert response.status_code == 202
    url = response.headers["Location"]
    assert response.json() == {"run_id": url.rsplit("/", 1)[1], "status_url": url}
    again = await service.post("/reservations", json=body, headers={"Idempotency-Key": "o-1"})
    assert again.headers["Location"] == url  # the same key: the same run
    answer = await follow(service, url)
    assert answer["status"] == "succeeded"
    assert answer["change"]["after"]["reserved_count"] == 2  # once, not twice


async def test_a_run_that_fails_says_what_was_undone(service: httpx.AsyncClient) -> None:
    body = {"product_id": "widget", "quantity": 50, "operation": "reserve"}
    response = await service.post("/reservations", json=body)
    answer = await follow(service, response.headers["Location"])
    assert answer["status"] == "failed"
    assert answer["failed_step"] is not None


async def test_bad_bodies_are_refused_before_anything_is_enqueued(
    service: httpx.AsyncClient,
) -> None:
    bad = await service.post("/reservations", content=b"[1, 2]")
    assert bad.status_code == 400
    wrong = await service.post(
        "/reservations", json={"product_id": "widget", "quantity": -1, "operation": "reserve"}
    )
    assert wrong.status_code == 422
    sneaky = await service.post(
        "/reservations",
        json={"product_id": "widget", "quantity": 1, "operation": "reserve", "queue": "x"},
    )
    assert sneaky.status_code == 422
    assert "option" in sneaky.text
    missing = await service.get("/runs/nothing-here")
    assert missing.status_code == 404
