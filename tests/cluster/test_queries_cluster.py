"""RedisRunStore's runs-list queries (page, find, counts, note) on a real Redis Cluster of
three primaries: the listing indexes of each shard live in its slot (the scripts that keep
them would fail otherwise), and a page merges the shards in order."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import RedisCluster

from asaga.events import OperatorAction
from asaga.runs import RedisRunStore
from tests.cluster.nodes import keys_by_node, slots_of
from tests.redis_servers import RedisClusterServers
from tests.runs.test_queries import MIX, add, add_mix, all_pages, expected, ids

pytestmark = pytest.mark.anyio


async def test_pages_counts_and_find_across_the_shards(
    cluster: RedisCluster, cluster_prefix: str, redis_cluster: RedisClusterServers
) -> None:
    """The mix of statuses lists and counts as on one server; 40 more runs spread over the
    shards page through in order with no gap or duplicate; find reads a run id, an
    idempotency key and an event key; note appends to the run's events; each listing set
    shares its shard's slot."""
    prefix = f"{cluster_prefix}runs:"
    async with RedisRunStore(cluster, prefix=prefix) as runs:
        await add_mix(runs)
        for status in (None, "succeeded", "failed", "in_doubt", "quarantined", "waiting"):
            assert ids(await runs.page(status=status)) == expected(status), status
            assert ids(await runs.page(status=status, saga="Refund")) == expected(status, "Refund")
        counts = await runs.counts()
        assert counts["succeeded"] == 3
        assert counts["in_doubt"] == counts["quarantined"] == 1
        more = [f"p{i:02d}" for i in range(40)]
        for run_id in more:
            await add(runs, run_id, "succeeded", saga="Bulk", key=f"key-{run_id}")
        assert await all_pages(runs, 7, saga="Bulk") == more[::-1]
        assert await all_pages(runs, 9) == [*more[::-1], *expected()]
        assert ids(await runs.find("p07")) == ["p07"]
        assert ids(await runs.find("key-p08")) == ["p08"]
        await add(runs, "w9", "waiting", saga="Ship")
        assert await runs.bind("Ship", "parcel-1", "w9", None) == ("bound", None)
        assert ids(await runs.find("parcel-1")) == ["w9"]
        await runs.note(
            "p01", OperatorAction(saga="Bulk", run_id="p01", action="undo", outcome="ok")
        )
        assert (await runs.load("p01", events=True)).events[-1].kind == "operator_action"
    keys = keys_by_node(redis_cluster.ports, prefix)
    listing = [k for ks in keys.values() for k in ks if "}runs:by-" in k]
    assert len(slots_of(listing)) > 1  # spread over several shards
    for key in listing:  # the tag is the shard's, as for its run keys
        assert key.startswith(f"{prefix}{{{prefix}"), key
    assert len(MIX) == 10
