"""Redis plumbing shared by the lease provider and the run store:
the asyncio check, and a pattern subscription that survives dropped connections."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from redis.exceptions import RedisError

__all__ = ["follow_pattern", "require_asyncio"]

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
