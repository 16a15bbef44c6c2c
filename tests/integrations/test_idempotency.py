"""Idempotency keys: the work runs at most once per key; duplicates replay its outcome."""

from collections.abc import AsyncIterator

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from asaga import SagaFailed
from asaga.integrations.idempotency import (
    Idempotency,
    IdempotencyKeyReused,
    MemoryOutcomeStore,
    Outcome,
    RedisOutcomeStore,
    answer,
)
from asaga.integrations.problems import (
    PROBLEM_IDEMPOTENCY_KEY_IN_USE,
    PROBLEM_IDEMPOTENCY_KEY_INVALID,
    PROBLEM_IDEMPOTENCY_KEY_REUSED,
    PROBLEM_JSON,
    PROBLEM_SAGA_FAILED,
    PROBLEM_UNAVAILABLE,
    Problem,
)
from asaga.locks import LeaseTimeout, MemoryLockProvider, RedisLockProvider

pytestmark = pytest.mark.anyio


def counting_work(calls: list[int], gate: anyio.Event | None = None):  # type: ignore[no-untyped-def]
    async def work() -> Outcome:
        calls.append(1)
        if gate is not None:
            await gate.wait()
        return Outcome(status=201, body=b'{"n": %d}' % len(calls))

    return work


async def test_sequential_duplicates_replay_the_first_outcome() -> None:
    """The second call with the key runs nothing and gets the first outcome, marked."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []
    first, replayed = await idem.run("k1", "req-a", counting_work(calls))
    again, replayed_again = await idem.run("k1", "req-a", counting_work(calls))
    assert (replayed, replayed_again) == (False, True)
    assert again == first
    assert again.body == b'{"n": 1}'
    assert calls == [1]


async def test_concurrent_duplicates_wait_for_the_first() -> None:
    """Duplicates arriving while the first runs wait for it and replay its outcome."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []
    gate = anyio.Event()
    results: list[tuple[Outcome, bool]] = []

    async def request() -> None:
        results.append(await idem.run("k1", "req-a", counting_work(calls, gate)))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(request)
            while not calls:
                await anyio.lowlevel.checkpoint()
            gate.set()
    assert calls == [1]
    assert sorted(replayed for _, replayed in results) == [False, True, True, True, True]
    assert len({outcome.body for outcome, _ in results}) == 1


async def test_a_cancelled_request_stores_nothing() -> None:
    """If the work is cancelled (the client left), a retry runs it again."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    calls: list[int] = []
    with anyio.move_on_after(0.01):
        await idem.run("k1", "req-a", counting_work(calls, anyio.Event()))
    outcome, replayed = await idem.run("k1", "req-a", counting_work(calls))
    assert not replayed
    assert calls == [1, 1]
    assert outcome.body == b'{"n": 2}'


async def test_reused_key_for_another_request_is_refused() -> None:
    """The same key with a different request fingerprint raises IdempotencyKeyReused."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    await idem.run("k1", "req-a", counting_work([]))
    with pytest.raises(IdempotencyKeyReused):
        await idem.run("k1", "req-b", counting_work([]))


async def test_window_expires() -> None:
    """After the window the key is free again."""
    now = [100.0]
    store = MemoryOutcomeStore(clock=lambda: now[0])
    idem = Idempotency(store, MemoryLockProvider(), window=60.0)
    calls: list[int] = []
    await idem.run("k1", "req-a", counting_work(calls))
    now[0] += 59.0
    _, replayed = await idem.run("k1", "req-a", counting_work(calls))
    assert replayed
    now[0] += 2.0  # past the window
    _, replayed = await idem.run("k1", "req-a", counting_work(calls))
    assert not replayed
    assert calls == [1, 1]


# -- answer(): the HTTP flow every web integration wraps --------------------------------------


def failed(cause: Exception) -> SagaFailed:
    exc = SagaFailed("Order", "run-1", "place", ["reserve"])
    exc.__cause__ = cause
    return exc


class Work:
    """A request's work: ``raises`` each call's exception in turn, then answers ``"made"``."""

    def __init__(self, *raises: Exception) -> None:
        self.raises = list(raises)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.raises:
            raise self.raises.pop(0)
        return "made"


def outcome(response: str) -> Outcome:
    return Outcome(status=201, body=response.encode(), media_type="text/plain")


async def test_answer_returns_the_work_then_replays_its_outcome() -> None:
    """The first request gets the work's own response, a retry the stored outcome; a
    quoted key (a structured-field string) is the same key as the bare one."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    work = Work()
    assert await answer(idem, "k1", "req-a", work, outcome) == "made"
    replayed = await answer(idem, ' "k1" ', "req-a", work, outcome)
    assert replayed == Outcome(
        status=201, body=b"made", media_type="text/plain", fingerprint="req-a"
    )
    assert work.calls == 1


async def test_answer_stores_the_problem_of_a_failed_saga() -> None:
    """A saga that failed for good is an outcome: a 409 now, replayed to the retry."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    work = Work(failed(RuntimeError("card declined")))
    first = await answer(idem, "k1", "req-a", work, outcome)
    assert isinstance(first, Problem)
    assert (first.status, first.body["type"]) == (409, PROBLEM_SAGA_FAILED)
    again = await answer(idem, "k1", "req-a", work, outcome)
    assert isinstance(again, Outcome)
    assert (again.status, again.media_type) == (409, PROBLEM_JSON)
    assert msgspec.json.decode(again.body) == first.body
    assert work.calls == 1


async def test_answer_never_stores_an_unavailable_infrastructure() -> None:
    """A saga undone because a service was unreachable, or the work's own lease that
    could not be had, is a 503 with Retry-After, not stored: the retry runs the work."""
    store = MemoryOutcomeStore()
    idem = Idempotency(store, MemoryLockProvider())
    work = Work(failed(ConnectionRefusedError()), LeaseTimeout("busy", ["stock:widget"]))
    for _ in range(2):
        unavailable = await answer(idem, "k1", "req-a", work, outcome, retry_after=7)
        assert isinstance(unavailable, Problem)
        assert (unavailable.status, unavailable.body["type"]) == (503, PROBLEM_UNAVAILABLE)
        assert unavailable.headers == {"Retry-After": "7"}
        assert await store.get("k1") is None
    assert await answer(idem, "k1", "req-a", work, outcome) == "made"
    assert work.calls == 3


async def test_answer_refuses_a_bad_key_a_reused_key_and_a_busy_key() -> None:
    """400 for an empty or overlong key, 422 for a key reused with another request, 409
    for a key whose first request outlasts ``wait``; the work does not run."""
    locks = MemoryLockProvider()
    idem = Idempotency(MemoryOutcomeStore(), locks, wait=0.05)
    work = Work()
    for header in ("", '""', "k" * 256):
        invalid = await answer(idem, header, "req-a", work, outcome)
        assert isinstance(invalid, Problem)
        assert (invalid.status, invalid.body["type"]) == (400, PROBLEM_IDEMPOTENCY_KEY_INVALID)
    await answer(idem, "k1", "req-a", work, outcome)
    reused = await answer(idem, "k1", "req-b", work, outcome)
    assert isinstance(reused, Problem)
    assert (reused.status, reused.body["type"]) == (422, PROBLEM_IDEMPOTENCY_KEY_REUSED)
    async with locks.lease("idempotency:k2", ttl=30):  # the first request still runs
        busy = await answer(idem, "k2", "req-a", work, outcome)
    assert isinstance(busy, Problem)
    assert (busy.status, busy.body["type"]) == (409, PROBLEM_IDEMPOTENCY_KEY_IN_USE)
    assert busy.body["key"] == "k2"
    assert work.calls == 1


async def test_answer_lets_a_bug_through_and_stores_nothing() -> None:
    """An error with no problem answer propagates (the framework's 500); the retry runs."""
    idem = Idempotency(MemoryOutcomeStore(), MemoryLockProvider())
    work = Work(ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        await answer(idem, "k1", "req-a", work, outcome)
    assert await answer(idem, "k1", "req-a", work, outcome) == "made"


class TestRedis:
    """The Redis outcome store with the Redis lease provider."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def idem(self, redis_url: str, redis_prefix: str) -> AsyncIterator[Idempotency]:
        client = aioredis.Redis.from_url(redis_url)
        async with RedisLockProvider(client, prefix=redis_prefix) as locks:
            yield Idempotency(RedisOutcomeStore(client, prefix=f"{redis_prefix}idem:"), locks)
        await client.aclose()

    async def test_replay_across_processes(self, idem: Idempotency) -> None:
        """Outcomes survive in Redis and replay byte for byte."""
        calls: list[int] = []
        first, _ = await idem.run("k1", "req-a", counting_work(calls))
        again, replayed = await idem.run("k1", "req-a", counting_work(calls))
        assert replayed
        assert again == first
        assert calls == [1]
