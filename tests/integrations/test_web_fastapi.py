"""The FastAPI integration and the example service, in process and behind a real uvicorn.

asyncio only: uvicorn and redis-py run on asyncio.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from asaga import (
    CompensationFailed,
    DuplicateEvent,
    Event,
    EventRefused,
    InputValidationError,
    InvalidEvent,
    Resource,
    RunFailed,
    Saga,
    SagaFailed,
    step,
)
from asaga.integrations.fastapi import (
    PROBLEM_JSON,
    REPLAYED_HEADER,
    ClientDisconnected,
    idempotent,
    install_error_handlers,
    problem_response,
    saga_inputs,
)
from asaga.integrations.idempotency import Idempotency, IdempotencyKeyReused, MemoryOutcomeStore
from asaga.integrations.problems import PROBLEM_DUPLICATE_EVENT, PROBLEM_INVALID_EVENT
from asaga.locks import MemoryLockProvider
from examples.fastapi_app import create_app
from examples.inventory import Notifier, Product, Supplier
from examples.inventory.replenishment import BAD_CONFIRMATIONS, DELIVERY_TIMEOUT
from examples.inventory.service import (
    event_problem,
)

from .unreachable import closed_port, throwaway_redis

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("quiet_logs")]

RESERVE_1 = {"product_id": "gizmo", "quantity": 1, "operation": "reserve"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A hook that keeps every event and signals the end of a cancelled run."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cancelled_run_over = anyio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, RunFailed) and event.cancelled:
            self.cancelled_run_over.set()

    def kinds(self, kind: str) -> list[str | None]:
        return [e.step for e in self.events if e.kind == kind]


class NotificationRefused(Exception):
    """The warehouse refused the notification: a business failure, not an outage."""


class RefusingNotifier(Notifier):
    """A notifier whose every ``send`` is refused (409, unlike an unreachable one)."""

    async def send(self, key: str, message: str) -> None:
        raise NotificationRefused(key)


class GatedNotifier(Notifier):
    """A notifier whose ``send`` blocks until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def send(self, key: str, message: str) -> None:
        self.entered.set()
        await self.release.wait()
        await super().send(key, message)


@asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in process, with the app's lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


class _Server(uvicorn.Server):
    """uvicorn with an event set once it serves (instead of polling ``started``)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[tuple[str, int]]:
    """A real uvicorn server for ``app`` on a free loopback port: yields (host, port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
        backlog=1024,
        timeout_graceful_shutdown=5,
        # Longer than any test's burst: uvicorn closes a connection idle for this long
        # (5 s by default), and a client that picks it from its pool at that moment gets
        # "Server disconnected without sending a response" (seen once under load).
        timeout_keep_alive=60,
    )
    server = _Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                await server.ready.wait()
            try:
                yield "127.0.0.1", port
            finally:
                server.should_exit = True
    finally:
        sock.close()


async def stock(client: httpx.AsyncClient, sku: str) -> tuple[int, int]:
    response = await client.get(f"/products/{sku}")
    assert response.status_code == 200, response.text
    body = response.json()
    return body["inventory_count"], body["reserved_count"]


# -- in process ------------------------------------------------------------------------------


async def test_reservation_succeeds() -> None:
    async with in_process(create_app()) as client:
        response = await client.post(
            "/reservations", json={"product_id": "widget", "quantity": 5, "operation": "reserve"}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["change"]["sku"] == "widget"
        assert body["change"]["d_reserved"] == 5
        assert REPLAYED_HEADER.lower() not in response.headers
        assert await stock(client, "widget") == (100, 5)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({"product_id": "widget", "quantity": 0, "operation": "reserv"}, ["quantity", "operation"]),
        ({"product_id": "widget", "operation": "reserve"}, ["quantity"]),
        ({"product_id": "widget", "quantity": 1, "operation": "reserve", "store": 1}, ["store"]),
        (
            {"product_id": "widget", "quantity": 1, "operation": "reserve", "run_id": "x"},
            ["run_id"],
        ),
    ],
)
async def test_bad_input_is_422_and_no_step_runs(payload: Any, fields: list[str]) -> None:
    recorder = Recorder()
    async with in_process(create_app(hooks=[recorder])) as client:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = await client.post("/reservations", content=content)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        problem = response.json()
        assert problem["type"] == "urn:asaga:problem:invalid-input"
        assert problem["status"] == 422
        assert problem["saga"] == "InventorySaga"
        assert [e["field"] for e in problem["errors"]] == fields
        assert recorder.kinds("step_started") == []
        assert await stock(client, "widget") == (100, 0)


async def test_step_failure_is_409_and_everything_is_undone() -> None:
    recorder = Recorder()
    app = create_app(notifier=RefusingNotifier(), hooks=[recorder])  # notify gives up
    async with in_process(app) as client:
        response = await client.post(
            "/reservations", json={"product_id": "widget", "quantity": 95, "operation": "reserve"}
        )
        assert response.status_code == 409, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        problem = response.json()
        assert problem["type"] == "urn:asaga:problem:saga-failed"
        assert problem["saga"] == "InventorySaga"
        assert problem["step"] == "notify"
        assert problem["cause"] == "NotificationRefused"
        assert set(problem["compensated"]) == {"transaction", "replenishment", "perform"}
        assert problem["compensated"][-1] == "perform"  # undone after its dependents
        assert problem["run_id"] == recorder.events[0].run_id
        assert await stock(client, "widget") == (100, 0)
        services = app.state.services
        assert await services.store.transactions() == []
        assert await services.store.replenishments() == {}


async def test_insufficient_stock_is_409() -> None:
    async with in_process(create_app()) as client:
        response = await client.post(
            "/reservations", json={"product_id": "gadget", "quantity": 21, "operation": "reserve"}
        )
        assert response.status_code == 409
        assert response.json()["cause"] == "InsufficientStock"
        assert await stock(client, "gadget") == (20, 0)


async def test_transfer_and_unknown_product() -> None:
    async with in_process(create_app()) as client:
        transfer = {"product_id": "widget", "quantity": 5, "source": "east", "destination": "west"}
        response = await client.post("/transfers", json=transfer)
        assert response.status_code == 201, response.text
        assert await stock(client, "widget@east") == (45, 0)
        assert await stock(client, "widget@west") == (5, 0)
        response = await client.post("/transfers", json={**transfer, "quantity": 46})
        assert response.status_code == 409
        assert response.json()["step"] == "validate"
        assert await stock(client, "widget@east") == (45, 0)
        response = await client.get("/products/nope")
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM_JSON


def test_problem_response_mapping() -> None:
    """CompensationFailed needs a human: 500, naming what was left in place."""
    errors = ExceptionGroup("compensations failed", [TimeoutError()])
    exc = CompensationFailed("Order", "run-7", "charge", ["invoice"], ["reserve"], errors)
    exc.__cause__ = RuntimeError("card declined")
    response = problem_response(exc)
    assert response.status_code == 500
    body = json.loads(bytes(response.body))
    assert body["type"] == "urn:asaga:problem:compensation-failed"
    assert body["run_id"] == "run-7"
    assert body["step"] == "charge"
    assert body["compensated"] == ["invoice"]
    assert body["failed_compensations"] == ["reserve"]
    assert body["cause"] == "RuntimeError"
    assert problem_response(SagaFailed("S", "r", "s", [])).status_code == 409
    assert problem_response(InputValidationError("S", [])).status_code == 422
    assert problem_response(IdempotencyKeyReused("k")).status_code == 422
    assert problem_response(ClientDisconnected()).status_code == 499


# -- idempotency -----------------------------------------------------------------------------


async def test_same_key_twice_replays_the_first_response() -> None:
    async with in_process(create_app()) as client:
        headers = {"Idempotency-Key": "order-1"}
        first = await client.post("/reservations", json=RESERVE_1, headers=headers)
        second = await client.post("/reservations", json=RESERVE_1, headers=headers)
        assert first.status_code == second.status_code == 201
        assert second.content == first.content
        assert REPLAYED_HEADER.lower() not in first.headers
        assert second.headers[REPLAYED_HEADER] == "true"
        assert second.headers["content-type"] == "application/json"
        assert await stock(client, "gizmo") == (150, 1)


async def test_same_key_concurrently_reserves_once() -> None:
    async with in_process(create_app()) as client:
        responses: list[httpx.Response] = []

        async def post() -> None:
            headers = {"Idempotency-Key": "order-2"}
            responses.append(await client.post("/reservations", json=RESERVE_1, headers=headers))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(post)
        assert [r.status_code for r in responses] == [201] * 10
        assert len({r.content for r in responses}) == 1
        assert sum(r.headers.get(REPLAYED_HEADER) == "true" for r in responses) == 9
        assert await stock(client, "gizmo") == (150, 1)


async def test_same_key_different_body_is_422() -> None:
    async with in_process(create_app()) as client:
        headers = {"Idempotency-Key": "order-3"}
        assert (await client.post("/reservations", json=RESERVE_1, headers=headers)).is_success
        other = {**RESERVE_1, "quantity": 2}
        response = await client.post("/reservations", json=other, headers=headers)
        assert response.status_code == 422
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["type"] == "urn:asaga:problem:idempotency-key-reused"
        assert await stock(client, "gizmo") == (150, 1)
        response = await client.post(
            "/reservations", json=RESERVE_1, headers={"Idempotency-Key": ""}
        )
        assert response.status_code == 400


async def test_failed_request_is_replayed_too() -> None:
    """A 409 is an outcome: a retry with the same key gets it, and runs nothing again."""
    notifier = RefusingNotifier()
    async with in_process(create_app(notifier=notifier)) as client:
        headers = {"Idempotency-Key": "order-4"}
        first = await client.post("/reservations", json=RESERVE_1, headers=headers)
        second = await client.post("/reservations", json=RESERVE_1, headers=headers)
        assert first.status_code == second.status_code == 409
        assert second.content == first.content
        assert second.headers[REPLAYED_HEADER] == "true"
        assert notifier.sent == {}
        assert await stock(client, "gizmo") == (150, 0)


# -- a real server: bursts -------------------------------------------------------------------


BURST_SEED = [
    Product(sku="gizmo", inventory_count=150),
    Product(sku="gizmo-raw", inventory_count=150),
]


async def raw_request(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request on a new connection; read until the server closes it."""
    chunks: list[bytes] = []
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(request)
        for _ in range(10_000):
            try:
                chunks.append(await stream.receive())
            except anyio.EndOfStream:
                break
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def burst(host: str, port: int, label: str) -> None:
    """200 concurrent reservations of 1 x gizmo (150 in stock): 150 succeed, 50 get 409.

    Twice: from an httpx client (one product), and from 200 raw connections (another),
    which measures the server without httpx's own overhead.
    """
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    base_url = f"http://{host}:{port}"
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        statuses: list[int] = []
        steps: list[str] = []

        async def post() -> None:
            response = await client.post("/reservations", json=RESERVE_1)
            statuses.append(response.status_code)
            if response.status_code == 409:
                steps.append(response.json()["step"])

        raw = raw_post(
            "/reservations", {**RESERVE_1, "product_id": "gizmo-raw"}, {"Connection": "close"}
        )

        async def post_raw() -> None:
            status, body = await raw_request(host, port, raw)
            statuses.append(status)
            if status == 409:
                steps.append(json.loads(body)["step"])

        for client_name, one in (("httpx", post), ("raw sockets", post_raw)):
            with anyio.fail_after(45):
                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(200):
                        tg.start_soon(one)
                elapsed = time.perf_counter() - started
            print(
                f"\n{label}, {client_name}: 200 concurrent POST /reservations in "
                f"{elapsed:.3f} s = {200 / elapsed:.0f} requests/s"
            )
            assert statuses.count(201) == 150, statuses
            assert statuses.count(409) == 50, statuses
            assert set(steps) <= {"availability", "perform"}
            statuses.clear()
        assert await stock(client, "gizmo") == (150, 150)
        assert await stock(client, "gizmo-raw") == (150, 150)


async def test_burst_in_memory() -> None:
    async with serving(create_app(seed=BURST_SEED)) as (host, port):
        await burst(host, port, "in memory")


async def test_burst_on_redis(redis_url: str, redis_prefix: str) -> None:
    async with serving(create_app(redis_url, prefix=redis_prefix, seed=BURST_SEED)) as (host, port):
        await burst(host, port, "on Redis")


# -- a real server: disconnects --------------------------------------------------------------


def raw_post(path: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_uvicorn_does_not_cancel_a_handler_on_disconnect() -> None:
    """What the integration works around: uvicorn only reports ``http.disconnect``."""
    app = FastAPI()
    entered, disconnected, release, finished = (anyio.Event() for _ in range(4))
    outcome: list[str] = []

    @app.post("/slow")
    async def slow(request: Request) -> dict[str, str]:
        async def watch() -> None:
            if (await request.receive())["type"] == "http.disconnect":
                disconnected.set()

        await request.body()  # so that the next message is the disconnect
        entered.set()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await release.wait()
            outcome.append("completed")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        finally:
            finished.set()
        return {}

    async with serving(app) as (host, port):
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp(host, port)
            await stream.send(raw_post("/slow", {}))
            await entered.wait()
            await stream.aclose()
            await disconnected.wait()  # the disconnect was delivered, as a message
            release.set()
            await finished.wait()
    assert outcome == ["completed"]  # ... and the handler was not cancelled


@pytest.mark.parametrize("key", [None, "order-9"])
async def test_disconnect_cancels_the_saga_and_undoes_it(key: str | None) -> None:
    notifier = GatedNotifier()
    recorder = Recorder()
    app = create_app(notifier=notifier, hooks=[recorder])
    headers = {"Idempotency-Key": key} if key else {}
    payload = {"product_id": "widget", "quantity": 7, "operation": "reserve"}
    async with serving(app) as (host, port):
        store = app.state.services.store
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp(host, port)
            await stream.send(raw_post("/reservations", payload, headers))
            await notifier.entered.wait()  # perform, transaction done; notify blocked
            assert (await store.get("widget")).reserved_count == 7
            await stream.aclose()
            await recorder.cancelled_run_over.wait()
        assert recorder.kinds("step_cancelled") == ["notify"]
        assert set(recorder.kinds("compensation_succeeded")) == {
            "transaction",
            "replenishment",
            "perform",
        }
        product = await store.get("widget")
        assert (product.inventory_count, product.reserved_count) == (100, 0)
        assert await store.transactions() == []
        assert notifier.sent == {}

        # A cancelled request stored no outcome: a retry with the same key runs again.
        notifier.release.set()
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            response = await client.post("/reservations", json=payload, headers=headers)
            assert response.status_code == 201, response.text
            assert REPLAYED_HEADER.lower() not in response.headers
            assert await stock(client, "widget") == (100, 7)


# -- what a request may give (issue 12, item 8) ----------------------------------------------


@pytest.mark.parametrize(
    "key", ["idempotency_key", "runs", "hooks", "run_id", "store", "locks", "notifier"]
)
async def test_run_options_and_resources_in_the_body_are_refused(key: str) -> None:
    """A body naming an option of run() or a resource is a 422 naming it, before any
    step: a client can neither replay another client's run through its
    ``idempotency_key`` nor make the run durable (``runs`` was a 500)."""
    recorder = Recorder()
    async with in_process(create_app(hooks=[recorder])) as client:
        for _ in range(2):  # a second client with the same idempotency_key replays nothing
            response = await client.post("/reservations", json={**RESERVE_1, key: "x"})
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == PROBLEM_JSON
            assert [e["field"] for e in response.json()["errors"]] == [key]
        assert recorder.kinds("step_started") == []
        assert await stock(client, "gizmo") == (150, 0)


@pytest.mark.parametrize("content", [b"[1, 2]", b"{not json", b""])
async def test_a_body_that_is_not_a_json_object_is_400(content: bytes) -> None:
    async with in_process(create_app()) as client:
        response = await client.post("/reservations", content=content)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["type"] == "urn:asaga:problem:malformed-body"


class Bump(Saga):
    """One INCR on a Redis the application points at (the test takes it away)."""

    key: str
    client: Resource[Any]

    @step
    async def bump(key: str, client: Any) -> int:
        return int(await client.incr(key))


def bump_app(idempotency: Idempotency) -> FastAPI:
    """POST /bumps runs Bump on ``app.state.redis`` with the integration's helpers."""
    app = FastAPI()
    install_error_handlers(app, retry_after=3)

    @app.post("/bumps")
    async def bumps(request: Request) -> Response:
        async def work() -> Response:
            inputs = await saga_inputs(request, Bump)
            result = await Bump.run(**inputs, client=request.app.state.redis)
            return JSONResponse({"count": result.output}, status_code=201)

        return await idempotent(request, idempotency, work, retry_after=3)

    return app


def assert_unavailable(response: httpx.Response, retry_after: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["retry-after"] == retry_after
    problem: dict[str, Any] = response.json()
    assert problem["type"] == "urn:asaga:problem:unavailable"
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
    body = {"key": f"{redis_prefix}bumps"}
    headers = {"Idempotency-Key": "bump-1"}
    try:
        async with in_process(app) as client:
            app.state.redis = dead
            for extra in ({}, headers):
                response = await client.post("/bumps", json=body, headers=extra)
                problem = assert_unavailable(response, "3")
                assert (problem["saga"], problem["step"]) == ("Bump", "bump")
                assert problem["cause"] == "ConnectionError"
            assert await idempotency.store.get("bump-1") is None

            app.state.redis = live
            retried = await client.post("/bumps", json=body, headers=headers)
            assert retried.status_code == 201, retried.text
            assert REPLAYED_HEADER.lower() not in retried.headers
            assert retried.json() == {"count": 1}
            again = await client.post("/bumps", json=body, headers=headers)
            assert again.headers[REPLAYED_HEADER] == "true"
            assert again.json() == {"count": 1}
    finally:
        await dead.aclose()
        await live.aclose()


async def test_unreachable_notification_service_is_503_and_not_stored() -> None:
    """notify cannot reach its service (ConnectionError, three times): 503, everything
    undone, nothing stored for the key; the retry with the key runs and succeeds."""
    notifier = Notifier(failures=3)
    async with in_process(create_app(notifier=notifier)) as client:
        headers = {"Idempotency-Key": "order-503"}
        first = await client.post("/reservations", json=RESERVE_1, headers=headers)
        problem = assert_unavailable(first, "5")
        assert (problem["step"], problem["cause"]) == ("notify", "ConnectionError")
        assert await stock(client, "gizmo") == (150, 0)
        retried = await client.post("/reservations", json=RESERVE_1, headers=headers)
        assert retried.status_code == 201, retried.text
        assert REPLAYED_HEADER.lower() not in retried.headers
        assert await stock(client, "gizmo") == (150, 1)


async def test_redis_down_is_503_not_409_nor_text_500(redis_prefix: str) -> None:
    """The example service on a Redis of the test's own, killed: a reservation is a 503
    problem with Retry-After (was a 409 "failed and was undone"), with an
    Idempotency-Key too (was a text/plain 500), and so is reading a product."""
    with throwaway_redis() as server:
        app = create_app(server.url, prefix=redis_prefix)
        async with in_process(app) as client:
            assert (await client.post("/reservations", json=RESERVE_1)).status_code == 201
            server.kill()
            with anyio.fail_after(30):
                plain = await client.post("/reservations", json=RESERVE_1)
                keyed = await client.post(
                    "/reservations", json=RESERVE_1, headers={"Idempotency-Key": "down-1"}
                )
                product = await client.get("/products/gizmo")
            problem = assert_unavailable(plain, "5")
            assert (problem["step"], problem["cause"]) == ("product", "ConnectionError")
            assert_unavailable(keyed, "5")
            assert_unavailable(product, "5")


# -- bounded problem bodies (issue 12, item 12) ----------------------------------------------


async def test_a_5mb_bad_field_gives_a_small_422() -> None:
    """msgspec quotes a bad enum value in its message; the problem echoes it once, cut
    short: a 5 MB field no longer gives a 10 MB response."""
    huge = "x" * (5 * 1024 * 1024)
    async with in_process(create_app()) as client:
        for payload in ({**RESERVE_1, "operation": huge}, {**RESERVE_1, huge: 1}):
            response = await client.post("/reservations", json=payload)
            assert response.status_code == 422
            assert len(response.content) < 2000
            field = response.json()["errors"][0]["field"]
            assert field in ("operation", f"{huge[:100]}... ({len(huge)} characters)")


# -- replenishments: a durable run that parks, and the webhook that delivers its event -------


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


async def replenish(client: httpx.AsyncClient, sku: str = "gadget") -> dict[str, Any]:
    """POST /replenishments: the 202 body of the run that parked."""
    response = await client.post("/replenishments", json={"product_id": sku})
    assert response.status_code == 202, response.text
    return dict(response.json())


def confirmation(purchase_order_id: str, quantity: int = 100) -> dict[str, Any]:
    return {"purchase_order_id": purchase_order_id, "quantity_received": quantity}


async def test_replenishment_parks_and_the_webhook_delivers_its_confirmation() -> None:
    """POST /replenishments answers 202 with the parked run and what it waits for; the
    webhook delivers the supplier's confirmation: the run goes on in that request, books
    the stock received, and answers 200 with the received order. A second confirmation
    is a 409."""
    app = create_app()
    async with in_process(app) as client:
        parked = await replenish(client)
        po = parked["purchase_order_id"]
        assert po.startswith("po-")
        assert parked["status"] == "waiting"
        assert parked["webhook"] == f"/webhooks/deliveries/{po}"
        (wait,) = parked["waits"]
        assert (wait["step"], wait["kind"], wait["key"]) == ("delivery", "event", f"delivery:{po}")
        assert wait["until"] > time.time() + DELIVERY_TIMEOUT.total_seconds() - 60
        runs = app.state.services.runs
        assert (await runs.load(parked["run_id"])).status == "waiting"
        assert await stock(client, "gadget") == (20, 0)  # ordered, not received

        response = await client.post(parked["webhook"], json=confirmation(po))

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["run_id"], body["key"]) == (
            "succeeded",
            parked["run_id"],
            f"delivery:{po}",
        )
        assert body["output"]["id"] == po
        assert (body["output"]["quantity"], body["output"]["received_quantity"]) == (100, 100)
        assert await stock(client, "gadget") == (120, 0)
        assert (await runs.load(parked["run_id"])).status == "succeeded"

        again = await client.post(parked["webhook"], json=confirmation(po))
        assert again.status_code == 409, again.text
        assert again.headers["content-type"] == PROBLEM_JSON
        problem = again.json()
        assert problem["type"] == PROBLEM_DUPLICATE_EVENT
        assert (problem["key"], problem["run_id"]) == (f"delivery:{po}", parked["run_id"])
        assert await stock(client, "gadget") == (120, 0)


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        (b'{"quantity_received": 5}', "$", "Object missing required field `purchase_order_id`"),
        (b"not json", "$", "JSON is malformed"),
        (None, "$.quantity_received", "Expected `int` >= 1"),
    ],
)
async def test_an_invalid_confirmation_is_422_and_the_run_keeps_waiting(
    content: bytes | None, field: str, message: str
) -> None:
    """A body that is not a DeliveryConfirmation is a 422 problem naming the field; the
    run keeps waiting, and a valid confirmation then takes it on."""
    app = create_app()
    async with in_process(app) as client:
        parked = await replenish(client)
        po = parked["purchase_order_id"]
        bad = content or json.dumps(confirmation(po, quantity=0)).encode()

        response = await client.post(parked["webhook"], content=bad)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        problem = response.json()
        assert problem["type"] == PROBLEM_INVALID_EVENT
        assert (problem["status"], problem["run_failed"]) == (422, False)
        (error,) = problem["errors"]
        assert error["field"] == field
        assert error["message"].startswith(message)
        assert (await app.state.services.runs.load(parked["run_id"])).status == "waiting"
        assert await stock(client, "gadget") == (20, 0)

        response = await client.post(parked["webhook"], json=confirmation(po))
        assert response.status_code == 200, response.text
        assert await stock(client, "gadget") == (120, 0)


async def test_one_bad_confirmation_too_many_fails_the_run() -> None:
    """Past BAD_CONFIRMATIONS, an invalid confirmation fails the run (422, run_failed):
    it is undone, and its purchase order is gone (404 from then on)."""
    app = create_app()
    async with in_process(app) as client:
        parked = await replenish(client)
        bad = {"purchase_order_id": parked["purchase_order_id"], "quantity_received": "lots"}
        for attempt in range(BAD_CONFIRMATIONS + 1):
            response = await client.post(parked["webhook"], json=bad)
            assert response.status_code == 422, response.text
            assert response.json()["run_failed"] is (attempt == BAD_CONFIRMATIONS)

        services = app.state.services
        assert (await services.runs.load(parked["run_id"])).status == "failed"
        assert services.supplier.live_orders() == {}
        assert await services.store.purchase_orders() == {}
        late = await client.post(parked["webhook"], json=confirmation(parked["purchase_order_id"]))
        assert late.status_code == 404, late.text
        assert await stock(client, "gadget") == (20, 0)


async def test_a_confirmation_for_an_unknown_purchase_order_is_404() -> None:
    async with in_process(create_app()) as client:
        response = await client.post("/webhooks/deliveries/po-nope", json=confirmation("po-nope"))
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["purchase_order_id"] == "po-nope"


async def test_a_confirmation_the_run_refuses_is_200_with_the_failure() -> None:
    """A confirmation naming another purchase order fails the run in the webhook's
    request (DeliveryMismatch): the event was taken, so 200, saying the run failed and
    what was undone."""
    app = create_app()
    async with in_process(app) as client:
        parked = await replenish(client)

        response = await client.post(parked["webhook"], json=confirmation("po-other"))

        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["failed_step"]) == ("failed", "received_order")
        assert body["compensated"] == ["purchase_order", "supplier_order"]
        assert app.state.services.supplier.live_orders() == {}
        assert await stock(client, "gadget") == (20, 0)


async def test_an_early_confirmation_is_kept_for_the_run() -> None:
    """A confirmation that comes while the run still tracks the order is kept (202); the
    run takes it when it would park, so POST /replenishments answers 201 with the
    received order."""
    supplier = GatedSupplier()
    app = create_app(supplier=supplier)
    answers: list[httpx.Response] = []
    async with in_process(app) as client, anyio.create_task_group() as tg:

        async def start() -> None:
            answers.append(await client.post("/replenishments", json={"product_id": "gadget"}))

        tg.start_soon(start)
        await supplier.entered.wait()
        (order,) = supplier.orders.values()
        assert order.key is not None
        response = await client.post(
            f"/webhooks/deliveries/{order.key}", json=confirmation(order.key)
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"status": "kept", "key": f"delivery:{order.key}"}
        supplier.release.set()

    (started,) = answers
    assert started.status_code == 201, started.text
    assert started.json()["output"]["received_quantity"] == 100


async def test_replenishment_honours_the_idempotency_key_and_refuses_run_options() -> None:
    """The same Idempotency-Key replays the 202 (one run, one order); a body naming a run
    option is a 422, an unknown product a 409, before anything is ordered."""
    app = create_app()
    async with in_process(app) as client:
        headers = {"Idempotency-Key": "replenish-1"}
        first = await client.post("/replenishments", json={"product_id": "gadget"}, headers=headers)
        again = await client.post("/replenishments", json={"product_id": "gadget"}, headers=headers)
        assert (first.status_code, again.status_code) == (202, 202)
        assert again.json() == first.json()
        assert again.headers[REPLAYED_HEADER] == "true"
        assert len(app.state.services.supplier.orders) == 1

        options = await client.post("/replenishments", json={"product_id": "gadget", "runs": 1})
        assert options.status_code == 422
        assert [e["field"] for e in options.json()["errors"]] == ["runs"]
        unknown = await client.post("/replenishments", json={"product_id": "nope"})
        assert unknown.status_code == 409
        assert (unknown.json()["step"], unknown.json()["cause"]) == ("product", "UnknownProduct")
        assert len(app.state.services.supplier.orders) == 1


async def test_replenishment_on_redis(redis_url: str, redis_prefix: str) -> None:
    """On Redis the run is recorded in a RedisRunStore: parked, then delivered over a
    real uvicorn server."""
    app = create_app(redis_url, prefix=redis_prefix)
    async with (
        serving(app) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
    ):
        parked = await replenish(client)
        record = await app.state.services.runs.load(parked["run_id"])
        assert record.status == "waiting"
        response = await client.post(
            parked["webhook"], json=confirmation(parked["purchase_order_id"], 60)
        )
        assert response.status_code == 200, response.text
        assert response.json()["output"]["received_quantity"] == 60
        assert await stock(client, "gadget") == (80, 0)
        record = await app.state.services.runs.load(parked["run_id"])
        assert record.status == "succeeded"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (
            InvalidEvent("delivery:po-1", "Expected `int` - at `$.quantity_received`"),
            422,
            "invalid-event",
        ),
        (DuplicateEvent("delivery:po-1", "delivered already", "run-1"), 409, "duplicate-event"),
        (
            EventRefused("delivery:po-1", "run run-1 no longer waits for it", "run-1"),
            409,
            "event-refused",
        ),
    ],
)
def test_event_problem_mapping(error: EventRefused, status: int, kind: str) -> None:
    """What the webhooks answer for each refusal of ``deliver()``."""
    answer = event_problem(error)
    assert answer.status == answer.body["status"] == status
    assert answer.body["type"] == f"urn:asaga:problem:{kind}"
    assert answer.body["key"] == "delivery:po-1"
    if status == 422:
        assert answer.body["errors"] == [
            {"field": "$.quantity_received", "message": "Expected `int`"}
        ]
    else:
        assert answer.body["run_id"] == "run-1"
