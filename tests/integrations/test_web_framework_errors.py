"""The frameworks' own error answers are problem+json too, alike in FastAPI and aiohttp:
a route not found (404), a method not allowed (405, with Allow), a body too large (413),
a body that is not JSON (400) or that a route's model refuses (422)."""

from __future__ import annotations

import json

import httpx
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fastapi import FastAPI

from asaga.integrations.aiohttp import saga_errors
from asaga.integrations.fastapi import install_error_handlers
from asaga.integrations.problems import PROBLEM_JSON

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Order(pydantic.BaseModel):
    sku: str
    quantity: int


def fastapi_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/orders")
    async def orders(order: Order) -> dict[str, int]:
        return {"quantity": order.quantity}

    return app


async def test_fastapi_errors_are_problems() -> None:
    transport = httpx.ASGITransport(app=fastapi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        missing = await client.get("/nowhere")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == PROBLEM_JSON
        assert missing.json()["title"] == "Not Found"
        wrong = await client.get("/orders")
        assert wrong.status_code == 405
        assert wrong.headers["content-type"] == PROBLEM_JSON
        assert "POST" in wrong.headers["allow"]
        malformed = await client.post(
            "/orders", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert malformed.json()["type"] == "urn:asaga:problem:malformed-body"
        invalid = await client.post("/orders", json={"sku": "a", "quantity": "many"})
        assert invalid.status_code == 422
        body = invalid.json()
        assert body["type"] == "urn:asaga:problem:invalid-input"
        assert [e["field"] for e in body["errors"]] == ["body.quantity"]
        assert (await client.post("/orders", json={"sku": "a", "quantity": 2})).json() == {
            "quantity": 2
        }


async def test_aiohttp_errors_are_problems() -> None:
    async def orders(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"size": len(body)})

    app = web.Application(middlewares=[saga_errors], client_max_size=100)
    app.router.add_post("/orders", orders)
    async with TestClient(TestServer(app)) as client:
        missing = await client.get("/nowhere")
        assert missing.status == 404
        assert missing.headers["content-type"] == PROBLEM_JSON
        assert json.loads(await missing.text())["title"] == "Not Found"
        wrong = await client.get("/orders")
        assert wrong.status == 405
        assert wrong.headers["content-type"] == PROBLEM_JSON
        assert "POST" in wrong.headers["allow"]
        large = await client.post("/orders", data=b"x" * 1000)
        assert large.status == 413
        assert large.headers["content-type"] == PROBLEM_JSON
        assert json.loads(await large.text())["status"] == 413
        fine = await client.post("/orders", data=b"x" * 10)
        assert await fine.json() == {"size": 10}


def test_openapi_documents_the_body_from_the_saga_inputs() -> None:
    """A route given openapi_body(saga) documents its request body (the saga's declared,
    non-resource inputs, as JSON Schema) and its problem answers."""
    from examples.fastapi_app import create_app

    doc = create_app().openapi()
    operation = doc["paths"]["/reservations"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"product_id", "quantity", "operation"}
    assert "store" not in schema["properties"]  # a resource is never from the request
    assert set(schema["required"]) >= {"product_id", "quantity"}
    assert {"400", "409", "422", "503"} <= set(operation["responses"])
    assert PROBLEM_JSON in operation["responses"]["422"]["content"]
    assert "$ref" not in str(schema)  # self-contained
