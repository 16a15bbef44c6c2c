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
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["on_asyncio", "shielded"]

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
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:  # native: the work goes on regardless
                cancelled = cancelled or exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what propagates
        raise cancelled
    return task.result()
