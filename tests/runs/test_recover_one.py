"""``asaga.runs.recover_run``: recover one run by its id, only if its owner died; every
other run is refused (outcome ``refused``, the reason in ``error``) and left as it was.
On the in-memory store (nothing is ever abandoned there) and on a real Redis."""

from __future__ import annotations

import pytest

from asaga import Resource, RunNotFound, Saga, step
from asaga.runs import MemoryRunStore, RedisRunStore, recover_run
from tests.unfinished_runs import unfinished_run

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


class Lost(Saga):
    """The saga of the runs a dead process left unfinished."""

    @step
    async def work(run_id: str) -> str:
        return f"done {run_id}"


def lost_v2() -> type[Saga]:
    """Saga Lost at another saga_version."""

    class Lost(Saga):
        saga_version = "2"

        @step
        async def work(run_id: str) -> str:
            return run_id

    return Lost


async def test_one_abandoned_run_is_recovered_and_the_others_are_left(
    redis_url: str, redis_prefix: str
) -> None:
    """Only the run asked for is taken over and finished; another abandoned run stays
    for a sweep; asking again is refused (it finished)."""
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
        await dead.create(unfinished_run("Lost", "lost-1"), None)
        await dead.create(unfinished_run("Lost", "lost-2"), None)
    # Closing the store dropped its lease: its unfinished runs are abandoned now.
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        done = await recover_run(runs, "lost-1", sagas=[Lost])
        again = await recover_run(runs, "lost-1", sagas=[Lost])
        first = await runs.load("lost-1")
        other = await runs.load("lost-2")
        still = await runs.abandoned({"Lost": "1"})
    assert (done.run_id, done.saga, done.outcome, done.resumed) == (
        "lost-1",
        "Lost",
        "succeeded",
        ("work",),
    )
    assert first.status == "succeeded"
    assert other.status == "running"
    assert [run_id for run_id, _ in still] == ["lost-2"]
    assert again.outcome == "refused"
    assert again.error is not None
    assert "finished (succeeded)" in again.error


async def test_a_run_whose_owner_is_alive_is_refused(redis_url: str, redis_prefix: str) -> None:
    """A run whose owner's lease is alive (its process runs it) is not taken: refused,
    and its owner still holds it."""
    async with (
        RedisRunStore.from_url(redis_url, prefix=redis_prefix) as live,
        RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs,
    ):
        await live.create(unfinished_run("Lost", "busy-1"), None)
        done = await recover_run(runs, "busy-1", sagas=[Lost])
        record = await runs.load("busy-1")
    assert done.outcome == "refused"
    assert done.error is not None
    assert "not abandoned" in done.error
    assert "lease has not expired" in done.error
    assert (record.status, record.owner) == ("running", live.owner)


async def test_runs_that_cannot_be_recovered_here_are_refused(
    redis_url: str, redis_prefix: str
) -> None:
    """A run of a saga not given, of another saga_version, a child run, a quarantined
    run: refused, each saying why, and left as it was; an unknown run: RunNotFound."""
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
        await dead.create(unfinished_run("Other", "other-1"), None)
        await dead.create(unfinished_run("Lost", "lost-1"), None)
        await dead.create(unfinished_run("Lost", "aside-1"), None)
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        assert await runs.claim("aside-1", dead.owner) is not None
        assert await runs.quarantine("aside-1", "does not fit") is not None
        other = await recover_run(runs, "other-1", sagas=[Lost])
        version = await recover_run(runs, "lost-1", sagas=[lost_v2()])
        aside = await recover_run(runs, "aside-1", sagas=[Lost])
        recovered = await recover_run(runs, "lost-1", sagas=[Lost])
        with pytest.raises(RunNotFound):
            await recover_run(runs, "nowhere", sagas=[Lost])
        statuses = [(await runs.load(r)).status for r in ("other-1", "aside-1")]
    assert [d.outcome for d in (other, version, aside)] == ["refused"] * 3
    assert "was not given" in (other.error or "")
    assert "saga_version '1'" in (version.error or "")
    assert "quarantined" in (aside.error or "")
    assert statuses == ["running", "running"]
    assert recovered.outcome == "succeeded"  # lost-1 was left as it was: still abandoned


async def test_a_readmitted_run_is_recovered(redis_url: str, redis_prefix: str) -> None:
    """A quarantined run is refused until it is readmitted; then recover_run takes it
    (its owner, 'quarantine', never holds a lease) and finishes it."""
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
        await dead.create(unfinished_run("Lost", "aside-1"), None)
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        assert await runs.claim("aside-1", dead.owner) is not None
        assert await runs.quarantine("aside-1", "does not fit") is not None
        refused = await recover_run(runs, "aside-1", sagas=[Lost])
        await runs.readmit("aside-1")
        done = await recover_run(runs, "aside-1", sagas=[Lost])
        status = (await runs.load("aside-1")).status
    assert refused.outcome == "refused"
    assert "readmit it" in (refused.error or "")
    assert done.outcome == "succeeded"
    assert status == "succeeded"


async def test_a_child_run_is_refused(redis_url: str, redis_prefix: str) -> None:
    """The child run of a composed or mapped step (its id holds a '/') is driven by its
    parent: recover_run refuses it and names the parent."""
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
        await dead.create(unfinished_run("Lost", "parent-1/shop/1"), None)
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        done = await recover_run(runs, "parent-1/shop/1", sagas=[Lost])
    assert done.outcome == "refused"
    assert "recover its parent run (parent-1)" in (done.error or "")


async def test_on_the_memory_store_nothing_is_abandoned() -> None:
    """In memory a run's owner is its own process: an unfinished run is refused (being
    run here), a finished one too; an unknown one is RunNotFound."""
    runs = MemoryRunStore()
    await runs.create(unfinished_run("Lost", "here-1"), None)
    finished = await Lost.run(runs=runs, run_id="done-1")
    here = await recover_run(runs, "here-1", sagas=[Lost])
    done = await recover_run(runs, finished.run_id, sagas=[Lost])
    with pytest.raises(RunNotFound):
        await recover_run(runs, "nowhere", sagas=[Lost])
    assert here.outcome == "refused"
    assert "this process" in (here.error or "")
    assert done.outcome == "refused"
    assert "finished (succeeded)" in (done.error or "")
    assert (await runs.load("here-1")).status == "running"


async def test_missing_resources_are_refused_before_anything_is_read() -> None:
    """A saga whose resources are not given: ValueError naming them, as recover()."""

    class Needs(Saga):
        payments: Resource[object]

        @step
        async def pay(payments: object) -> int:
            return 1

    with pytest.raises(ValueError, match="payments"):
        await recover_run(MemoryRunStore(), "r-1", sagas=[Needs])
