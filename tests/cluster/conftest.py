"""Fixtures of the Redis Cluster tests: one real cluster of three primaries for the whole
session (tests/redis_servers.py), a cluster client per test, and a key prefix per test
whose keys are deleted from every node afterwards.

If redis-server cannot start a cluster, every test here fails (never skips) with what the
servers and redis-cli said.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from tests.cluster.nodes import delete_prefix
from tests.redis_servers import RedisClusterServers


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """Three cluster-enabled redis-servers joined into one cluster (no replicas, no
    persistence), killed by PID and their directory removed at the end of the session."""
    directory = Path(tempfile.mkdtemp(prefix="asaga-cluster-"))
    servers = RedisClusterServers(directory)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: redis-py's client is asyncio-only."""
    return "asyncio"


@pytest.fixture
async def cluster(redis_cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    """A cluster client (it discovers the three nodes from the first)."""
    client = RedisCluster.from_url(redis_cluster.url)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def cluster_prefix(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """A key prefix unique to one test (no brace: the stores tag their keys themselves);
    every key under it is deleted from every node afterwards."""
    prefix = f"asaga-cluster-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_cluster.ports, prefix)
