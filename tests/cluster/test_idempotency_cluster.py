"""The web integrations' idempotency on a real Redis Cluster: outcomes in
RedisOutcomeStore (one key per outcome, any slot), duplicates serialised by a
RedisLockProvider lease on the cluster."""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from asaga.integrations.idempotency import Idempotency, Outcome, RedisOutcomeStore
from asaga.locks import RedisLockProvider

pytestmark = pytest.mark.anyio


async def test_concurrent_duplicates_run_the_work_once(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """Ten concurrent requests with each of five keys (their outcomes and leases in
    several slots): each key's work runs once, the other nine replay its outcome."""
    runs: dict[str, int] = {}
    async with RedisLockProvider(cluster, prefix=cluster_prefix) as locks:
        idempotency = Idempotency(RedisOutcomeStore(cluster, prefix=f"{cluster_prefix}out:"), locks)
        replays: list[bool] = []

        async def request(key: str) -> None:
            async def work() -> Outcome:
                runs[key] = runs.get(key, 0) + 1
                await anyio.lowlevel.checkpoint()
                return Outcome(status=201, body=key.encode())

            outcome, replayed = await idempotency.run(key, "f", work)
            assert outcome.body == key.encode()
            replays.append(replayed)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for n in range(50):
                    tg.start_soon(request, f"order-{n % 5}")
    assert runs == {f"order-{n}": 1 for n in range(5)}
    assert replays.count(False) == 5
