"""Work that must finish whatever cancels its caller: unwinding, and the writes that say
how a run ended.

On trio, and for anyio cancel scopes, a shielded scope is enough. asyncio's native
``Task.cancel()`` (``asyncio.timeout``, ``wait_for``, a server cancelling its handler)
reaches into any shielded scope of the task it cancels, though: there the work runs in a
task of its own, which the caller awaits whatever cancels it; a cancellation that arrived
meanwhile is raised once the work is done.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["join", "on_asyncio", "shielded"]

T = TypeVar("T")


def on_asyncio() -> bool:
    """Whether this runs on asyncio (trio has no asyncio event loop running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def shielded(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` to its end, whatever cancels the calling task (see the module)."""
    if not on_asyncio():
        with anyio.CancelScope(shield=True):
            return await work
    task = asyncio.get_running_loop().create_task(work)
    cancelled = await join(task)
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what propagates
        raise cancelled
    return task.result()


async def join(
    task: asyncio.Task[Any], seconds: float | None = None
) -> asyncio.CancelledError | None:
    """Wait for ``task`` to end, at most ``seconds`` (None: no bound), whatever cancels
    the calling task (asyncio only); the first native cancellation that arrived meanwhile,
    for the caller to raise once it is done."""
    end = math.inf if seconds is None else anyio.current_time() + seconds
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while not task.done():
            left = end - anyio.current_time()
            if left <= 0:
                break
            try:
                with anyio.move_on_after(left):
                    await asyncio.wait((task,))
            except asyncio.CancelledError as exc:  # native: the work goes on regardless
                cancelled = cancelled or exc
    return cancelled
