"""Redis plumbing shared by the lease provider and the run store:
the asyncio check, the persistence check, and a pattern subscription that survives
dropped connections."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from redis.exceptions import RedisError

__all__ = ["follow_pattern", "require_asyncio", "warn_without_persistence"]

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
    except (RedisError, OSError, TimeoutError):
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
    """
    skip = len(prefix)
    delay = 0.1
    while True:
        pubsub = client.pubsub()
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
        except RedisError as exc:
            _logger.warning(lost, error=repr(exc), retry_in=delay)
        finally:
            subscribed(False)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await pubsub.aclose()
        await anyio.sleep(delay * random.uniform(1.0, 1.5))
        delay = min(delay * 2, 5.0)
