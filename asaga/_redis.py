"""Redis plumbing shared by the lease provider and the run store:
the asyncio check, the persistence check, a pattern subscription that survives dropped
connections, and what differs on Redis Cluster (the client's kind, hash slots, clients
made from a URL, closing them).

On Redis Cluster, every Lua script must touch keys of one hash slot: each store tags its
keys (``{...}``) so that the keys of one script share a slot; see docs/locks.md,
docs/durability.md and docs/inventory.md ("Redis Cluster").
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import anyio
import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

__all__ = [
    "REDIS_ERRORS",
    "UNAVAILABLE",
    "check_cluster",
    "client_from_url",
    "close_client",
    "follow_pattern",
    "is_cluster",
    "require_asyncio",
    "slot",
    "warn_without_persistence",
]

Client = aioredis.Redis | RedisCluster
"""What the stores take: a client of one Redis server (or Sentinel), or of a cluster."""

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
"""What a client raises when Redis cannot serve it: a cluster client also raises
``RedisClusterException`` (no reachable node, a slot no node serves), not a RedisError."""

UNAVAILABLE: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError, TimeoutError)
""":data:`REDIS_ERRORS`, and what a bounded exchange with Redis raises besides."""


LUA_CHECKS = """
local function refuse(name, value, why)
  error({err = 'BAD_ARGUMENT ' .. name .. ' '
    .. string.format('%q', string.sub(tostring(value), 1, 64)) .. ': ' .. why
    .. ' (asaga ' .. SCRIPT .. ': bad arguments)'})
end
local function int_arg(i, name, low, high)
  local s = ARGV[i]
  if type(s) ~= 'string' or #s > 17 or not string.match(s, '^%-?%d+$') then
    refuse(name, s, 'not an integer')
  end
  local n = tonumber(s)
  if n < low or n > high then
    refuse(name, s, string.format('not in [%.0f, %.0f]', low, high))
  end
  return n
end
"""
"""The argument checks every asaga Lua script starts with (after ``local SCRIPT =
'<name>'``): ``refuse`` replies ``BAD_ARGUMENT <name> "<value>": <why> (asaga <script>:
bad arguments)`` before anything is written (Redis does not roll a script back), and
``int_arg`` matches an integer as text before ``tonumber``, which reads ``nan``,
``inf``, ``0x10`` and padded strings, then checks its range."""


def is_cluster(client: object) -> bool:
    """Whether ``client`` talks to a Redis Cluster (``redis.asyncio.RedisCluster``)."""
    return isinstance(client, RedisCluster)


def slot(key: str | bytes) -> int:
    """The cluster hash slot of ``key`` (its ``{hash tag}`` if it has one)."""
    return int(key_slot(key if isinstance(key, bytes) else key.encode()))


def check_cluster(client: object, prefix: str, what: str) -> None:
    """What a store needs of a cluster: a redis-py whose asyncio cluster client has
    pub/sub (8.0 or newer), and a prefix without a brace (the stores put their own hash
    tags after it: a brace in the prefix would move, or split, the slot of a script's
    keys)."""
    if not hasattr(client, "pubsub"):
        raise RuntimeError(
            f"{what} on Redis Cluster needs redis-py 8.0 or newer (pub/sub of the asyncio "
            "cluster client)"
        )
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"{what}: on Redis Cluster the prefix may not contain '{{' or '}}' (the store "
            f"tags its keys itself), got {prefix!r}"
        )


def client_from_url(
    url: str, *, cluster: bool, max_connections: int, socket_timeout: float | None = None
) -> Client:
    """A client for ``url`` (``redis://``, ``rediss://``, with ACL user and password): of a
    cluster when ``cluster`` (the URL names any of its nodes; the others are discovered),
    else of one server through a blocking pool (past ``max_connections``, callers wait for
    a free connection instead of failing). A cluster client keeps up to ten times
    ``max_connections`` per node (redis-py's cluster pool raises past its maximum)."""
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=10 * max_connections,
            socket_connect_timeout=2.0,
            socket_timeout=socket_timeout,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
    )
    return aioredis.Redis(connection_pool=pool)


async def close_client(client: Client) -> None:
    """Close a client the store made (its connections included)."""
    await client.aclose()
    if isinstance(client, aioredis.Redis):
        await client.connection_pool.disconnect()


_logger = structlog.get_logger("asaga")


def require_asyncio(what: str, instead: str) -> None:
    """Refuse to start ``what`` off asyncio (redis-py's client is asyncio-only)."""
    try:
        asyncio.get_running_loop()  # raises off asyncio (trio has no asyncio loop running)
    except RuntimeError:
        raise RuntimeError(
            f"{what} needs asyncio (redis-py's client is asyncio-only); use {instead} on "
            "other backends"
        ) from None


async def warn_without_persistence(client: Any, what: str) -> None:
    """Log a warning (``redis_without_persistence``) if the server runs with
    ``appendonly no``: a restart or a failover then loses the latest writes (runs in flight
    are unwound by their process, finished runs and idempotency keys may be forgotten,
    leases may be granted twice). Says nothing when the server refuses ``CONFIG GET``
    (managed Redis often does) or does not answer within a second."""
    try:
        with anyio.fail_after(1.0):
            reply = await client.config_get("appendonly")
    except UNAVAILABLE:
        return
    value = reply.get("appendonly", reply.get(b"appendonly")) if isinstance(reply, dict) else None
    if isinstance(value, bytes):
        value = value.decode()
    if value == "no":
        _logger.warning(
            "redis_without_persistence",
            store=what,
            appendonly="no",
            advice="a restart or failover of this Redis loses its latest writes; enable "
            "appendonly (appendfsync everysec or always) for durable runs and leases; "
            "see docs/durability.md",
        )


async def follow_pattern(
    client: Any,
    prefix: str,
    deliver: Callable[[str], None],
    *,
    subscribed: Callable[[bool], None],
    lost: str,
) -> None:
    """Subscribe to the channels ``<prefix>*`` and call ``deliver`` with the rest of each
    message's channel name, forever.

    ``subscribed(True)`` once the subscription holds, ``subscribed(False)`` when it is lost
    (the event ``lost`` is logged); it subscribes again after a jittered delay that grows to
    5 s while Redis cannot be reached.

    On a cluster, ``PUBLISH`` (from a script too) reaches the subscribers of every node
    over the cluster bus: the subscription is held on one primary, drawn at random on
    each attempt, so that a node that went away is not asked again and again.
    """
    skip = len(prefix)
    delay = 0.1
    while True:
        pubsub = _pubsub(client)
        try:
            await pubsub.psubscribe(f"{prefix}*")
            subscribed(True)
            delay = 0.1
            async for message in pubsub.listen():
                if message.get("type") != "pmessage":
                    continue
                channel = message["channel"]
                if isinstance(channel, bytes):
                    channel = channel.decode()
                deliver(channel[skip:])
        except REDIS_ERRORS as exc:
            _logger.warning(lost, error=repr(exc), retry_in=delay)
        finally:
            subscribed(False)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await pubsub.aclose()
        await anyio.sleep(delay * random.uniform(1.0, 1.5))
        delay = min(delay * 2, 5.0)


def _pubsub(client: Any) -> Any:
    """A pub/sub object of ``client``: on a cluster, on one of its primaries (random)."""
    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()  # empty until the client's first command
        if primaries:
            return client.pubsub(node=random.choice(primaries))
    return client.pubsub()
