"""The framework-neutral web pieces: problem answers, request inputs, unavailable Redis.

``asaga.integrations.problems`` decides what every web integration answers;
``asaga.integrations.inputs`` decides what a request may give a saga. The FastAPI and
aiohttp tests check the same behaviour through each framework.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from asaga import (
    CompensationFailed,
    FieldError,
    InputValidationError,
    Resource,
    Saga,
    SagaFailed,
    StoreUnavailable,
    step,
)
from asaga.integrations.idempotency import Idempotency, Outcome, RedisOutcomeStore
from asaga.integrations.inputs import (
    RUN_OPTIONS,
    MalformedBody,
    accepted_inputs,
    decode_inputs,
    request_inputs,
)
from asaga.integrations.problems import (
    MAX_ERRORS,
    PROBLEM_UNAVAILABLE,
    fingerprint,
    is_unavailable,
    problem_for,
)
from asaga.locks import LeaseLost, LeaseTimeout, LeaseUnavailable, MemoryLockProvider

from .unreachable import closed_port, throwaway_redis

FIVE_MB = 5 * 1024 * 1024


class Store:
    """A stand-in resource."""


class Order(Saga):
    sku: str
    quantity: Annotated[int, msgspec.Meta(gt=0)]
    speed: Literal["slow", "fast"] = "slow"
    store: Resource[Store]

    @step
    async def place(sku: str, quantity: int, speed: str, store: Store) -> str:
        return f"{quantity} x {sku} ({speed})"


# -- what a request may give ----------------------------------------------------------------


def test_run_options_are_read_from_run() -> None:
    """Every keyword option of Saga.run() is a run option, the new ones included."""
    assert {"hooks", "run_id", "runs", "idempotency_key"} <= RUN_OPTIONS


def test_only_declared_non_resource_inputs_are_accepted() -> None:
    """A saga's accepted inputs are its declared inputs minus its resources."""
    assert accepted_inputs(Order) == ("sku", "quantity", "speed")
    body = {"sku": "a", "quantity": 2}
    assert request_inputs(Order, body) == body


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("idempotency_key", "an option of run()"),
        ("runs", "an option of run()"),
        ("hooks", "an option of run()"),
        ("run_id", "an option of run()"),
        ("store", "a resource of the saga"),
        ("colour", "unknown input"),
        ("skuu", "unknown input (did you mean 'sku'?)"),
    ],
)
def test_options_resources_and_unknown_keys_are_refused(key: str, reason: str) -> None:
    """A key naming a run option, a resource or nothing the saga declares is a 422 field
    error naming it, never an argument of run()."""
    with pytest.raises(InputValidationError) as caught:
        request_inputs(Order, {"sku": "a", "quantity": 2, key: "x"})
    assert caught.value.saga == "Order"
    assert [e.field for e in caught.value.errors] == [key]
    assert caught.value.errors[0].message.startswith(reason)


def test_refusal_reports_bad_values_too() -> None:
    """Refused keys and the other keys' bad values come in one answer, as from run()."""
    with pytest.raises(InputValidationError) as caught:
        request_inputs(Order, {"quantity": 0, "runs": 1})
    assert sorted(caught.value.fields) == ["quantity", "runs", "sku"]


def test_fields_narrow_what_a_request_may_give() -> None:
    """``fields`` keeps a declared input (here ``speed``) for the server to choose."""
    with pytest.raises(InputValidationError) as caught:
        request_inputs(
            Order, {"sku": "a", "quantity": 1, "speed": "fast"}, fields=["sku", "quantity"]
        )
    assert caught.value.fields == ("speed",)
    with pytest.raises(ValueError, match="store"):
        request_inputs(Order, {}, fields=["sku", "store"])


@pytest.mark.parametrize("body", [b"[1, 2]", b"{not json", b"", b'"text"', b"null"])
def test_a_body_that_is_not_a_json_object_is_malformed(body: bytes) -> None:
    """400, not a 422 on a made-up field."""
    with pytest.raises(MalformedBody):
        decode_inputs(Order, body)
    answer = problem_for(MalformedBody("the body must be a JSON object"))
    assert answer is not None
    assert answer.status == 400


def test_a_huge_refused_key_is_clipped() -> None:
    """A refused key's name is kept short in the error itself."""
    with pytest.raises(InputValidationError) as caught:
        decode_inputs(Order, json.dumps({"sku": "a", "quantity": 1, "k" * FIVE_MB: 1}).encode())
    assert len(str(caught.value)) < 1000


def test_only_the_listed_unknown_keys_get_a_hint() -> None:
    """difflib's "did you mean" is slow: a body of 150,000 unknown keys must not cost
    seconds, so only the MAX_ERRORS keys a problem lists get a hint."""
    body = {f"sk{i}u": 1 for i in range(MAX_ERRORS + 5)}
    with pytest.raises(InputValidationError) as caught:
        request_inputs(Order, {"sku": "a", "quantity": 1, **body})
    hinted = ["did you mean 'sku'" in e.message for e in caught.value.errors]
    assert hinted == [True] * MAX_ERRORS + [False] * 5


# -- bounded problem bodies ------------------------------------------------------------------


def test_a_5mb_bad_value_gives_a_small_problem() -> None:
    """Each echoed value is clipped and echoed once: ``detail`` does not repeat it."""
    exc = InputValidationError(
        "Order", [FieldError(field="speed", message=f"Invalid enum value '{'x' * FIVE_MB}'")]
    )
    answer = problem_for(exc)
    assert answer is not None
    encoded = json.dumps(answer.body)
    assert len(encoded) < 1000
    assert encoded.count("Invalid enum value") == 1
    assert answer.body["errors"][0]["field"] == "speed"


def test_the_list_of_errors_is_bounded() -> None:
    """At most MAX_ERRORS fields are listed; the rest are counted."""
    exc = InputValidationError(
        "Order", [FieldError(field=f"f{i}", message="unknown") for i in range(5000)]
    )
    answer = problem_for(exc)
    assert answer is not None
    assert len(answer.body["errors"]) == MAX_ERRORS
    assert answer.body["more_errors"] == 5000 - MAX_ERRORS
    assert len(json.dumps(answer.body)) < 2000


# -- infrastructure errors -------------------------------------------------------------------


def failed(cause: BaseException, cls: type[SagaFailed] = SagaFailed) -> SagaFailed:
    if cls is CompensationFailed:
        exc: SagaFailed = CompensationFailed(
            "Order", "run-1", "place", [], ["reserve"], ExceptionGroup("x", [RuntimeError()])
        )
    else:
        exc = SagaFailed("Order", "run-1", "place", ["reserve"])
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379"),
        redis.exceptions.TimeoutError(),
        ConnectionRefusedError(),
        TimeoutError(),
        OSError(101, "Network is unreachable"),
        StoreUnavailable("down"),
        LeaseUnavailable("down", ["k"]),
        LeaseTimeout("busy", ["k"]),
        LeaseLost("lost", ["k"]),
        failed(redis.exceptions.ConnectionError()),
        failed(LeaseUnavailable("down", ["k"])),
        failed(ExceptionGroup("both", [ConnectionResetError(), StoreUnavailable("x")])),
    ],
    ids=repr,
)
def test_infrastructure_errors_are_503_with_retry_after(exc: Exception) -> None:
    """Redis, network, store and lease failures (and a saga undone because of one) are a
    503 with Retry-After, whose body does not repeat the error's message."""
    assert is_unavailable(exc)
    answer = problem_for(exc, retry_after=7)
    assert answer is not None
    assert answer.status == 503
    assert answer.headers == {"Retry-After": "7"}
    assert answer.body["type"] == PROBLEM_UNAVAILABLE
    assert "10.0.0.7" not in json.dumps(answer.body)
    if isinstance(exc, SagaFailed):
        assert (answer.body["saga"], answer.body["step"]) == ("Order", "place")
        assert answer.body["compensated"] == ["reserve"]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (failed(RuntimeError("card declined")), 409),
        (failed(redis.exceptions.ConnectionError(), CompensationFailed), 500),
        (failed(ExceptionGroup("mixed", [ConnectionResetError(), ValueError()])), 409),
        (FileNotFoundError("config.toml"), None),
        (PermissionError(), None),
        (redis.exceptions.ResponseError("WRONGTYPE"), None),
        (ValueError(), None),
    ],
    ids=repr,
)
def test_other_errors_keep_their_answer(exc: Exception, status: int | None) -> None:
    """Business failures stay 409, a failed undo 500 whatever its cause, and bugs (the
    file system's OSErrors included) get no problem answer: the framework's 500."""
    assert not is_unavailable(exc)
    answer = problem_for(exc)
    assert (answer.status if answer is not None else None) == status


def test_a_saga_with_a_step_in_doubt_is_not_retryable() -> None:
    """Retrying is safe only when everything was undone: a step in doubt is not a 503."""
    exc = SagaFailed("Order", "run-1", "place", [], in_doubt=["charge"])
    exc.__cause__ = redis.exceptions.ConnectionError()
    assert not is_unavailable(exc)


# -- idempotency with Redis unreachable ------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """redis-py runs on asyncio."""
    return "asyncio"


@pytest.mark.anyio
async def test_unreachable_outcome_store_runs_nothing() -> None:
    """With the outcome store's Redis unreachable, the key cannot be checked: the work
    does not run, and the store's error (a 503 in the integrations) propagates."""
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0")
    idem = Idempotency(RedisOutcomeStore(client), MemoryLockProvider())
    calls: list[int] = []

    async def work() -> Outcome:
        calls.append(1)
        return Outcome(status=201, body=b"{}")

    try:
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            await idem.run("k1", "req-a", work)
        assert is_unavailable(caught.value)
        assert calls == []
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_outcome_lost_after_the_work_is_still_returned() -> None:
    """Redis dies while the work runs: the work's own outcome is returned (a 503 would
    invite a retry that runs it again), and nothing was stored."""
    with throwaway_redis() as server:
        client = aioredis.Redis.from_url(server.url)
        idem = Idempotency(RedisOutcomeStore(client), MemoryLockProvider(), put_timeout=5.0)

        async def work() -> Outcome:
            server.kill()
            return Outcome(status=201, body=b'{"done": true}')

        try:
            with anyio.fail_after(20):
                outcome, replayed = await idem.run("k1", "req-a", work)
        finally:
            await client.aclose()
    assert (outcome.status, outcome.body, replayed) == (201, b'{"done": true}', False)


def test_the_same_json_written_otherwise_is_the_same_request() -> None:
    """Whitespace and key order do not make another request; other values do."""
    base = fingerprint("POST", "/orders", b'{"sku": "a", "quantity": 2, "tags": [1, 2]}')
    assert base == fingerprint("post", "/orders", b'{ "tags":[1,2], "quantity":2,"sku":"a" }\n')
    assert base != fingerprint("POST", "/orders", b'{"sku": "a", "quantity": 3, "tags": [1, 2]}')
    assert base != fingerprint(
        "POST", "/orders?x=1", b'{"sku": "a", "quantity": 2, "tags": [1, 2]}'
    )
    assert fingerprint("POST", "/o", b"not json") == fingerprint("POST", "/o", b"not json")
    assert fingerprint("POST", "/o", b"not json") != fingerprint("POST", "/o", b"not  json")


def test_waiting_runs_and_refused_events_have_answers() -> None:
    """A parked run is 202 (not a problem: it waits); refused events are 422 / 409."""
    from asaga import DuplicateEvent, EventRefused, InvalidEvent, NotParked, RunParked, WaitInfo

    parked = problem_for(
        RunParked("Checkout", "r-1", [WaitInfo(step="paid", kind="event", key="pay:o-1")])
    )
    assert parked is not None
    assert parked.status == 202
    assert parked.body["waits"] == [{"step": "paid", "kind": "event", "key": "pay:o-1"}]
    invalid = problem_for(InvalidEvent("pay:o-1", "Expected `int`, got `str` - at `$.amount`"))
    assert invalid is not None
    assert invalid.status == 422
    assert invalid.body["errors"] == [{"field": "$.amount", "message": "Expected `int`, got `str`"}]
    for exc, status in (
        (DuplicateEvent("pay:o-1", "delivered already"), 409),
        (EventRefused("pay:o-1", "no longer waits"), 409),
        (NotParked("r-1", "succeeded"), 409),
    ):
        answer = problem_for(exc)
        assert answer is not None
        assert answer.status == status
