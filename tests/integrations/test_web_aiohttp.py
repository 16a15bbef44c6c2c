"""The aiohttp integration and the example service, over real HTTP on 127.0.0.1.

Every test serves ``examples/aiohttp_app.py`` with ``web.AppRunner`` + ``web.TCPSite`` on
a port the OS picks, and talks to it with httpx (or a raw socket, to drop a connection).
asyncio only: aiohttp and redis-py run on asyncio.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from asaga import CompensationFailed, Event, Resource, Saga, step
from asaga.integrations.aiohttp import (
    PROBLEM_COMPENSATION_FAILED,
    PROBLEM_IDEMPOTENCY_KEY_REUSED,
    PROBLEM_INVALID_INPUTS,
    PROBLEM_SAGA_FAILED,
    PROBLEM_UNAVAILABLE,
    error_middleware,
    idempotent,
    saga_errors,
    saga_inputs,
)
from asaga.integrations.idempotency import Idempotency, MemoryOutcomeStore
from asaga.integrations.problems import PROBLEM_DUPLICATE_EVENT, PROBLEM_INVALID_EVENT
from asaga.locks import MemoryLockProvider
from examples.aiohttp_app import RUNS, SERVICES, STORE, create_app
from examples.inventory import Notifier, Product, Supplier

from .unreachable import closed_port, throwaway_redis

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quiet_logs")]

WIDGET = Product(sku="widget", inventory_count=100, reorder_point=10, max_stock_level=200)
SEED = (
    WIDGET,
    Product(sku="gizmo", inventory_count=150),
    Product(sku="widget@north", inventory_count=40),
    Product(sku="widget@south", inventory_count=10),
)
BURST = 200


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


@asynccontextmanager
async def serve(
    app: web.Application, *, handler_cancellation: bool = True
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``app`` on 127.0.0.1 (a free port the OS picks); yield (base URL, port).

    Setup and cleanup run in this task (the app's cleanup_ctx may hold a task group).
    """
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = int(runner.addresses[0][1])
        yield f"http://127.0.0.1:{port}", port
    finally:
        await runner.cleanup()


def client(base: str, connections: int = 10) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0)


def reservation(sku: str = "widget", quantity: int = 3, operation: str = "reserve") -> Any:
    return {"product_id": sku, "quantity": quantity, "operation": operation}


async def counts(http: httpx.AsyncClient, sku: str) -> tuple[int, int]:
    response = await http.get(f"/products/{sku}")
    assert response.status_code == 200
    body = response.json()
    return body["inventory_count"], body["reserved_count"]


class Recorder:
    """An event hook: keeps the events; ``ended`` is set when a run is over."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ended = anyio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.kind in ("run_succeeded", "run_failed"):
            self.ended.set()

    def kinds(self, *kinds: str) -> list[tuple[str, str | None]]:
        return [(e.kind, e.step) for e in self.events if e.kind in kinds]


class NotificationRefused(Exception):
    """The warehouse refused the notification: a business failure, not an outage."""


class RefusingNotifier(Notifier):
    """A notifier whose every ``send`` is refused (409, unlike an unreachable one)."""

    async def send(self, key: str, message: str) -> None:
        raise NotificationRefused(key)


class BlockingNotifier(Notifier):
    """Blocks every send until the test sets ``release``; ``entered`` when one started."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def send(self, key: str, message: str) -> None:
        self.entered.set()
        await self.release.wait()
        await super().send(key, message)


# -- success and errors --------------------------------------------------------------------


async def test_reservation_succeeds() -> None:
    """201 with what was done; the stock shows it."""
    async with serve(create_app(seed=SEED)) as (base, _), client(base) as http:
        response = await http.post("/reservations", json=reservation(quantity=5))
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["product_id"] == "widget"
        assert (body["operation"], body["quantity"]) == ("reserve", 5)
        assert body["run_id"]
        assert await counts(http, "widget") == (100, 5)
        missing = await http.get("/products/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


async def test_transfer_moves_stock() -> None:
    """POST /transfers runs InventoryTransferSaga."""
    async with serve(create_app(seed=SEED)) as (base, _), client(base) as http:
        body = {"product_id": "widget", "quantity": 5, "source": "north", "destination": "south"}
        response = await http.post("/transfers", json=body)
        assert response.status_code == 201, response.text
        assert await counts(http, "widget@north") == (35, 0)
        assert await counts(http, "widget@south") == (15, 0)


async def test_bad_input_is_422_and_no_step_runs() -> None:
    """Every bad field is named in the problem; no step started; stock unchanged."""
    recorder = Recorder()
    async with serve(create_app(seed=SEED, hooks=[recorder])) as (base, _), client(base) as http:
        response = await http.post(
            "/reservations",
            json={"product_id": "widget", "quantity": 0, "operation": "steal", "colour": 1},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == PROBLEM_INVALID_INPUTS
        assert problem["status"] == 422
        assert problem["saga"] == "InventorySaga"
        assert {e["field"] for e in problem["errors"]} == {"quantity", "operation", "colour"}
        assert all(e["message"] for e in problem["errors"])

        refused = await http.post("/reservations", json={**reservation(), "run_id": "mine"})
        assert refused.status_code == 422
        assert [e["field"] for e in refused.json()["errors"]] == ["run_id"]

        malformed = await http.post("/reservations", content=b"[1, 2")
        assert malformed.status_code == 400
        assert malformed.headers["content-type"].startswith("application/problem+json")
        assert malformed.json()["type"] == "urn:asaga:problem:malformed-body"

        assert recorder.kinds("step_started") == []
        assert await counts(http, "widget") == (100, 0)


async def test_step_failure_is_409_and_undone() -> None:
    """notify fails for good: 409 naming the step and the compensations; stock as before."""
    notifier = RefusingNotifier()  # notify's three attempts all fail
    async with (
        serve(create_app(seed=SEED, notifier=notifier)) as (base, _),
        client(base) as http,
    ):
        response = await http.post("/reservations", json=reservation(quantity=7))
        assert response.status_code == 409
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == PROBLEM_SAGA_FAILED
        assert (problem["status"], problem["saga"], problem["step"]) == (
            409,
            "InventorySaga",
            "notify",
        )
        assert problem["cause"] == "NotificationRefused"
        assert problem["run_id"]
        # Reverse graph order: perform is undone after its dependents.
        assert set(problem["compensated"]) == {"transaction", "replenishment", "perform"}
        assert problem["compensated"][-1] == "perform"
        assert await counts(http, "widget") == (100, 0)
        assert notifier.sent == {}


async def test_compensation_failed_is_500_and_stored_for_the_key() -> None:
    """CompensationFailed is a 500 naming what needs a human; with an idempotency key the
    500 is stored, so a retry does not run the work again."""
    idempotency = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        async def work() -> web.Response:
            calls.append(1)
            error = CompensationFailed(
                "Order",
                "run-1",
                "charge",
                ["invoice"],
                ["reserve"],
                ExceptionGroup("compensations failed", [TimeoutError()]),
            )
            raise error from RuntimeError("card declined")

        return await idempotent(request, idempotency, work)

    app = web.Application(middlewares=[saga_errors])
    app.router.add_post("/orders", handler)
    async with serve(app) as (base, _), client(base) as http:
        plain = await http.post("/orders", content=b"{}")
        keyed = await http.post("/orders", content=b"{}", headers={"Idempotency-Key": "o-1"})
        again = await http.post("/orders", content=b"{}", headers={"Idempotency-Key": "o-1"})
    for response in (plain, keyed, again):
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == PROBLEM_COMPENSATION_FAILED
        assert (problem["saga"], problem["run_id"], problem["step"]) == ("Order", "run-1", "charge")
        assert problem["compensated"] == ["invoice"]
        assert problem["failed_compensations"] == ["reserve"]
        assert problem["cause"] == "RuntimeError"
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == keyed.content
    assert calls == [1, 1]  # the plain request and the first keyed one


# -- a burst over a real server ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_burst_never_oversells(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 concurrent reservations of 1 gizmo (150 in stock): exactly 150 succeed."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        app = create_app(url, prefix=request.getfixturevalue("redis_prefix"), seed=SEED)
    else:
        app = create_app(seed=SEED)
    statuses: list[int] = []
    async with serve(app) as (base, _), client(base, connections=BURST) as http:

        async def reserve_one() -> None:
            response = await http.post("/reservations", json=reservation("gizmo", 1))
            statuses.append(response.status_code)
            if response.status_code == 409:
                assert response.json()["step"] in ("availability", "perform")

        started = time.perf_counter()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(BURST):
                    tg.start_soon(reserve_one)
        elapsed = time.perf_counter() - started
        assert sorted(statuses) == [201] * 150 + [409] * 50
        assert await counts(http, "gizmo") == (150, 150)
    with capsys.disabled():
        print(
            f"\n[{backend}] {BURST} concurrent POST /reservations in {elapsed:.3f} s: "
            f"{BURST / elapsed:.0f} requests/s"
        )


# -- a client that disconnects -------------------------------------------------------------


async def post_then_drop(
    port: int, payload: Any, notifier: BlockingNotifier, extra_headers: str = ""
) -> None:
    """Send POST /reservations on a raw connection, wait until notify is blocked, and
    close the connection without reading the response."""
    body = json.dumps(payload).encode()
    head = (
        f"POST /reservations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra_headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    stream = await anyio.connect_tcp("127.0.0.1", port)
    try:
        await stream.send(head + body)
        with anyio.fail_after(5):
            await notifier.entered.wait()  # perform has reserved; notify is blocked
    finally:
        await stream.aclose()


async def test_disconnect_cancels_the_saga_which_compensates() -> None:
    """With handler_cancellation=True, a dropped client cancels the handler: notify, in
    flight and blocked, runs out its attempt's timeout (shielded) and is not retried, the
    completed steps are compensated, stock is back exactly."""
    notifier = BlockingNotifier()
    recorder = Recorder()
    app = create_app(seed=SEED, notifier=notifier, hooks=[recorder])
    try:
        async with serve(app, handler_cancellation=True) as (_, port):
            await post_then_drop(port, reservation(quantity=4), notifier)
            with anyio.fail_after(5):
                await recorder.ended.wait()
            assert recorder.kinds("step_cancelled") == [("step_cancelled", "notify")]
            undone = [step for _, step in recorder.kinds("compensation_succeeded")]
            assert set(undone) == {"transaction", "replenishment", "perform"}
            assert undone[-1] == "perform"
            end = recorder.events[-1]
            assert end.kind == "run_failed"
            assert msgspec.structs.asdict(end)["cancelled"] is True
            product = await app[STORE].get("widget")
            assert (product.inventory_count, product.reserved_count) == (100, 0)
            assert await app[STORE].transactions() == []
            assert notifier.sent == {}
    finally:
        notifier.release.set()


async def test_disconnect_stores_nothing_for_the_key() -> None:
    """A request cancelled by its client's disconnect leaves its idempotency key free:
    the retry with the same key runs the saga (once)."""
    notifier = BlockingNotifier()
    recorder = Recorder()
    app = create_app(seed=SEED, notifier=notifier, hooks=[recorder])
    try:
        async with serve(app) as (base, port):
            payload = reservation(quantity=4)
            await post_then_drop(port, payload, notifier, "Idempotency-Key: res-drop\r\n")
            with anyio.fail_after(5):
                await recorder.ended.wait()
            notifier.release.set()
            async with client(base) as http:
                headers = {"Idempotency-Key": "res-drop"}
                retry = await http.post("/reservations", json=payload, headers=headers)
                assert retry.status_code == 201
                assert "idempotent-replayed" not in retry.headers
                assert await counts(http, "widget") == (100, 4)
    finally:
        notifier.release.set()


async def test_without_handler_cancellation_the_saga_runs_on() -> None:
    """aiohttp's default (handler_cancellation=False): a dropped client does not cancel
    the handler; the saga completes when notify is let through."""
    notifier = BlockingNotifier()
    recorder = Recorder()
    app = create_app(seed=SEED, notifier=notifier, hooks=[recorder])
    try:
        async with serve(app, handler_cancellation=False) as (base, port):
            await post_then_drop(port, reservation(quantity=4), notifier)
            # A round trip on a new connection: the server has seen the first one close.
            async with client(base) as http:
                assert await counts(http, "widget") == (100, 4)
            assert not recorder.ended.is_set()
            notifier.release.set()
            with anyio.fail_after(5):
                await recorder.ended.wait()
            assert recorder.events[-1].kind == "run_succeeded"
            product = await app[STORE].get("widget")
            assert (product.inventory_count, product.reserved_count) == (100, 4)
            assert len(notifier.sent) == 1
    finally:
        notifier.release.set()


# -- idempotency ---------------------------------------------------------------------------


async def test_same_key_twice_replays_the_first_response() -> None:
    """The second request runs nothing and gets the same body, marked as replayed."""
    async with serve(create_app(seed=SEED)) as (base, _), client(base) as http:
        headers = {"Idempotency-Key": "res-1"}
        first = await http.post("/reservations", json=reservation(), headers=headers)
        second = await http.post("/reservations", json=reservation(), headers=headers)
        assert (first.status_code, second.status_code) == (201, 201)
        assert "idempotent-replayed" not in first.headers
        assert second.headers["idempotent-replayed"] == "true"
        assert second.content == first.content
        assert second.headers["content-type"] == first.headers["content-type"]
        assert await counts(http, "widget") == (100, 3)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_same_key_concurrently_reserves_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Eight concurrent requests with one key: one reservation, one body for all."""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        app = create_app(url, prefix=request.getfixturevalue("redis_prefix"), seed=SEED)
    else:
        app = create_app(seed=SEED)
    responses: list[httpx.Response] = []
    async with serve(app) as (base, _), client(base) as http:

        async def post() -> None:
            headers = {"Idempotency-Key": "res-burst"}
            responses.append(await http.post("/reservations", json=reservation(), headers=headers))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(post)
        assert [r.status_code for r in responses] == [201] * 8
        assert len({r.content for r in responses}) == 1
        fresh = [r for r in responses if "idempotent-replayed" not in r.headers]
        assert len(fresh) == 1
        assert await counts(http, "widget") == (100, 3)


async def test_same_key_different_body_is_422() -> None:
    """A key reused for another request is refused; nothing more is reserved."""
    async with serve(create_app(seed=SEED)) as (base, _), client(base) as http:
        headers = {"Idempotency-Key": "res-2"}
        first = await http.post("/reservations", json=reservation(), headers=headers)
        other = await http.post("/reservations", json=reservation(quantity=9), headers=headers)
        assert first.status_code == 201
        assert other.status_code == 422
        assert other.headers["content-type"] == "application/problem+json"
        problem = other.json()
        assert problem["type"] == PROBLEM_IDEMPOTENCY_KEY_REUSED
        assert problem["key"] == "res-2"
        assert await counts(http, "widget") == (100, 3)


async def test_failed_saga_is_stored_for_the_key() -> None:
    """A 409 is an outcome like any other: the retry gets it again, runs nothing."""
    notifier = RefusingNotifier()
    async with (
        serve(create_app(seed=SEED, notifier=notifier)) as (base, _),
        client(base) as http,
    ):
        headers = {"Idempotency-Key": "res-3"}
        failed = await http.post("/reservations", json=reservation(), headers=headers)
        retried = await http.post("/reservations", json=reservation(), headers=headers)
        assert (failed.status_code, retried.status_code) == (409, 409)
        assert "idempotent-replayed" not in failed.headers
        assert retried.headers["idempotent-replayed"] == "true"
        assert retried.content == failed.content
        assert retried.headers["content-type"] == "application/problem+json"
        assert await counts(http, "widget") == (100, 0)
        invalid = reservation(quantity=0)
        bad = await http.post("/reservations", json=invalid, headers={"Idempotency-Key": "r4"})
        bad_again = await http.post(
            "/reservations", json=invalid, headers={"Idempotency-Key": "r4"}
        )
        assert (bad.status_code, bad_again.status_code) == (422, 422)
        assert bad_again.headers["idempotent-replayed"] == "true"
        too_long = await http.post(
            "/reservations", json=reservation(), headers={"Idempotency-Key": "k" * 256}
        )
        assert too_long.status_code == 400


# -- what a request may give (issue 12, item 8) --------------------------------------------


async def test_run_options_and_resources_in_the_body_are_refused() -> None:
    """A body naming an option of run() or a resource is a 422 naming it, before any
    step: a client can neither replay another client's run through its
    ``idempotency_key`` nor make the run durable (``runs`` was a 500)."""
    recorder = Recorder()
    async with (
        serve(create_app(seed=SEED, hooks=[recorder])) as (base, _),
        client(base) as http,
    ):
        for key in ("idempotency_key", "runs", "hooks", "run_id", "store", "locks", "notifier"):
            for _ in range(2):  # a second client with the same key replays nothing
                response = await http.post("/reservations", json={**reservation(), key: "x"})
                assert response.status_code == 422, (key, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert [e["field"] for e in response.json()["errors"]] == [key]
        assert recorder.kinds("step_started") == []
        assert await counts(http, "widget") == (100, 0)


class Bump(Saga):
    """One INCR on a Redis the application points at (the test takes it away)."""

    key: str
    client: Resource[Any]

    @step
    async def bump(key: str, client: Any) -> int:
        return int(await client.incr(key))


REDIS: web.AppKey[dict[str, Any]] = web.AppKey("redis", dict)
"""``{"client": ...}``: the Redis client Bump uses (mutable: the test switches it)."""


def bump_app(idempotency: Idempotency) -> web.Application:
    """POST /bumps runs Bump on ``app[REDIS]["client"]`` with the integration's helpers."""

    async def bumps(request: web.Request) -> web.Response:
        async def work() -> web.Response:
            inputs = await saga_inputs(request, Bump)
            result = await Bump.run(**inputs, client=request.app[REDIS]["client"])
            return web.json_response({"count": result.output}, status=201)

        return await idempotent(request, idempotency, work, retry_after=3)

    app = web.Application(middlewares=[error_middleware(retry_after=3)])
    app.router.add_post("/bumps", bumps)
    return app


def assert_unavailable(response: httpx.Response, retry_after: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == retry_after
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEM_UNAVAILABLE
    assert problem["status"] == 503
    return problem


async def test_saga_failed_on_unreachable_redis_is_503_and_not_stored(
    redis_url: str, redis_prefix: str
) -> None:
    """A saga whose step cannot reach Redis (a closed loopback port, for real) is a 503
    with Retry-After, with or without an Idempotency-Key, and the key's outcome is not
    stored: once Redis is back, a retry with the same key runs the saga."""
    idempotency = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    app = bump_app(idempotency)
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0")
    live = aioredis.Redis.from_url(redis_url)
    app[REDIS] = {"client": dead}
    body = {"key": f"{redis_prefix}bumps"}
    headers = {"Idempotency-Key": "bump-1"}
    try:
        async with serve(app) as (base, _), client(base) as http:
            for extra in ({}, headers):
                response = await http.post("/bumps", json=body, headers=extra)
                problem = assert_unavailable(response, "3")
                assert (problem["saga"], problem["step"]) == ("Bump", "bump")
                assert problem["cause"] == "ConnectionError"
            assert await idempotency.store.get("bump-1") is None
            app[REDIS]["client"] = live  # Redis is back
            retried = await http.post("/bumps", json=body, headers=headers)
            assert retried.status_code == 201, retried.text
            assert "idempotent-replayed" not in retried.headers
            assert retried.json() == {"count": 1}
            again = await http.post("/bumps", json=body, headers=headers)
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json() == {"count": 1}
    finally:
        await dead.aclose()
        await live.aclose()


async def test_unreachable_notification_service_is_503_and_not_stored() -> None:
    """notify cannot reach its service (ConnectionError, three times): 503, everything
    undone, nothing stored for the key; the retry with the key runs and succeeds."""
    notifier = Notifier(failures=3)
    async with (
        serve(create_app(seed=SEED, notifier=notifier)) as (base, _),
        client(base) as http,
    ):
        headers = {"Idempotency-Key": "res-503"}
        first = await http.post("/reservations", json=reservation(), headers=headers)
        problem = assert_unavailable(first, "5")
        assert (problem["step"], problem["cause"]) == ("notify", "ConnectionError")
        assert await counts(http, "widget") == (100, 0)
        retried = await http.post("/reservations", json=reservation(), headers=headers)
        assert retried.status_code == 201, retried.text
        assert "idempotent-replayed" not in retried.headers
        assert await counts(http, "widget") == (100, 3)


async def test_redis_down_is_503_not_409_nor_text_500(redis_prefix: str) -> None:
    """The example service on a Redis of the test's own, killed: a reservation is a 503
    problem with Retry-After (was a 409 "failed and was undone"), with an
    Idempotency-Key too (was a text/plain 500), and so is reading a product."""
    with throwaway_redis() as server:
        app = create_app(server.url, prefix=redis_prefix, seed=SEED)
        async with serve(app) as (base, _), client(base) as http:
            assert (await http.post("/reservations", json=reservation())).status_code == 201
            server.kill()
            with anyio.fail_after(30):
                plain = await http.post("/reservations", json=reservation())
                keyed = await http.post(
                    "/reservations", json=reservation(), headers={"Idempotency-Key": "down-1"}
                )
                product = await http.get("/products/widget")
            problem = assert_unavailable(plain, "5")
            assert (problem["step"], problem["cause"]) == ("product", "ConnectionError")
            assert_unavailable(keyed, "5")
            assert_unavailable(product, "5")


# -- bounded problem bodies (issue 12, item 12) --------------------------------------------


class Paint(Saga):
    colour: Literal["red", "blue"]

    @step
    async def paint(colour: str) -> str:
        return colour


async def test_a_5mb_bad_field_gives_a_small_422() -> None:
    """msgspec quotes a bad enum value in its message; the problem echoes it once, cut
    short: a 5 MB field no longer gives a 10 MB response. A 5 MB unknown key neither."""

    async def paint(request: web.Request) -> web.Response:
        body = await request.json()
        result = await Paint.run(colour=body["colour"])
        return web.json_response({"colour": result.output}, status=201)

    async def paint_checked(request: web.Request) -> web.Response:
        result = await Paint.run(**await saga_inputs(request, Paint))
        return web.json_response({"colour": result.output}, status=201)

    app = web.Application(middlewares=[saga_errors], client_max_size=16 * 1024 * 1024)
    app.router.add_post("/paint", paint)
    app.router.add_post("/paint-checked", paint_checked)
    huge = "x" * (5 * 1024 * 1024)
    async with serve(app) as (base, _), client(base) as http:
        for path, payload in (("/paint", {"colour": huge}), ("/paint-checked", {huge: 1})):
            response = await http.post(path, json=payload)
            assert response.status_code == 422, response.text[:200]
            assert response.headers["content-type"] == "application/problem+json"
            assert len(response.content) < 2000


# -- replenishments: a durable run that parks, and the webhook that delivers its event -----

GADGET = Product(sku="gadget", inventory_count=20, max_stock_level=50)  # room for 30


class GatedSupplier(Supplier):
    """A supplier whose ``track`` blocks until the test releases it (the run has recorded
    its purchase order, and does not wait for its delivery yet)."""

    def __init__(self) -> None:
        super().__init__({"gadget": 1_000}, max_order=100)
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def track(self, order_id: str) -> str:
        self.entered.set()
        await self.release.wait()
        return await super().track(order_id)


async def replenish(http: httpx.AsyncClient) -> dict[str, Any]:
    """POST /replenishments for gadget: the 202 body of the run that parked."""
    response = await http.post("/replenishments", json={"product_id": "gadget"})
    assert response.status_code == 202, response.text
    return dict(response.json())


def confirmation(purchase_order_id: str, quantity: int = 30) -> dict[str, Any]:
    return {"purchase_order_id": purchase_order_id, "quantity_received": quantity}


async def test_replenishment_parks_and_the_webhook_delivers_its_confirmation() -> None:
    """202 with the parked run and its webhook; the confirmation posted there takes the
    run on in that request (200, the received order, the stock booked); a second one is
    a 409 problem."""
    app = create_app(seed=(*SEED, GADGET))
    async with serve(app) as (base, _), client(base) as http:
        parked = await replenish(http)
        po = parked["purchase_order_id"]
        (wait,) = parked["waits"]
        assert (wait["step"], wait["kind"], wait["key"]) == ("delivery", "event", f"delivery:{po}")
        assert parked["webhook"] == f"/webhooks/deliveries/{po}"
        assert (await app[RUNS].load(parked["run_id"])).status == "waiting"
        assert await counts(http, "gadget") == (20, 0)

        response = await http.post(parked["webhook"], json=confirmation(po))

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["run_id"]) == ("succeeded", parked["run_id"])
        assert (body["output"]["quantity"], body["output"]["received_quantity"]) == (30, 30)
        assert await counts(http, "gadget") == (50, 0)
        assert (await app[RUNS].load(parked["run_id"])).status == "succeeded"

        again = await http.post(parked["webhook"], json=confirmation(po))
        assert again.status_code == 409, again.text
        assert again.headers["content-type"] == "application/problem+json"
        assert again.json()["type"] == PROBLEM_DUPLICATE_EVENT
        assert await counts(http, "gadget") == (50, 0)


async def test_an_invalid_confirmation_is_422_and_the_run_keeps_waiting() -> None:
    """A body that does not fit DeliveryConfirmation is a 422 problem naming the field;
    the run keeps waiting, and a valid confirmation then takes it on."""
    app = create_app(seed=(*SEED, GADGET))
    async with serve(app) as (base, _), client(base) as http:
        parked = await replenish(http)
        po = parked["purchase_order_id"]
        for bad, field in (
            (b"{", "$"),
            (json.dumps(confirmation(po, quantity=-3)).encode(), "$.quantity_received"),
        ):
            response = await http.post(parked["webhook"], content=bad)
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["type"] == PROBLEM_INVALID_EVENT
            assert problem["run_failed"] is False
            assert [e["field"] for e in problem["errors"]] == [field]
        assert (await app[RUNS].load(parked["run_id"])).status == "waiting"

        response = await http.post(parked["webhook"], json=confirmation(po, quantity=25))
        assert response.status_code == 200, response.text
        assert await counts(http, "gadget") == (45, 0)


async def test_a_confirmation_for_an_unknown_purchase_order_is_404() -> None:
    async with serve(create_app(seed=(*SEED, GADGET))) as (base, _), client(base) as http:
        response = await http.post("/webhooks/deliveries/po-nope", json=confirmation("po-nope"))
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["purchase_order_id"] == "po-nope"


async def test_a_confirmation_the_run_refuses_is_200_with_the_failure() -> None:
    """A confirmation naming another purchase order fails the run in the webhook's
    request: 200, saying the run failed and what was undone; the order is cancelled."""
    app = create_app(seed=(*SEED, GADGET))
    async with serve(app) as (base, _), client(base) as http:
        parked = await replenish(http)

        response = await http.post(parked["webhook"], json=confirmation("po-other"))

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["failed_step"]) == ("failed", "received_order")
        assert body["compensated"] == ["purchase_order", "supplier_order"]
        assert app[SERVICES].supplier.live_orders() == {}
        assert await counts(http, "gadget") == (20, 0)


async def test_an_early_confirmation_is_kept_for_the_run() -> None:
    """A confirmation that comes while the run still tracks the order is kept (202); the
    run takes it when it would park: POST /replenishments answers 201, received."""
    supplier = GatedSupplier()
    app = create_app(seed=(*SEED, GADGET), supplier=supplier)
    answers: list[httpx.Response] = []
    async with serve(app) as (base, _), client(base) as http, anyio.create_task_group() as tg:

        async def start() -> None:
            answers.append(await http.post("/replenishments", json={"product_id": "gadget"}))

        tg.start_soon(start)
        await supplier.entered.wait()
        (order,) = supplier.orders.values()
        assert order.key is not None
        response = await http.post(
            f"/webhooks/deliveries/{order.key}", json=confirmation(order.key)
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "kept", "key": f"delivery:{order.key}"}
        supplier.release.set()

    (started,) = answers
    assert started.status_code == 201, started.text
    assert started.json()["output"]["received_quantity"] == 30


async def test_replenishment_on_redis(redis_url: str, redis_prefix: str) -> None:
    """On Redis the run is recorded in a RedisRunStore: parked, then delivered."""
    app = create_app(redis_url, prefix=redis_prefix, seed=(*SEED, GADGET))
    async with serve(app) as (base, _), client(base) as http:
        parked = await replenish(http)
        assert (await app[RUNS].load(parked["run_id"])).status == "waiting"
        response = await http.post(
            parked["webhook"], json=confirmation(parked["purchase_order_id"], 10)
        )
        assert response.status_code == 200, response.text
        assert await counts(http, "gadget") == (30, 0)
        assert (await app[RUNS].load(parked["run_id"])).status == "succeeded"
