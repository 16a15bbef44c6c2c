"""The seam between asaga and a job engine: what a run on workers needs of a queue.

asaga asks little of an engine: put a job under a key (refused if a job with that key
exists), be told when a job ends (pushed, not polled), abort a job, and run a handler for
each job on a pool of workers. :class:`JobQueue` says exactly that; the SAQ adapter
(:mod:`asaga.workers._saq`) is the one built and tested. Everything else (what a job
does, how a run is recorded, recovered and replayed) is asaga's, in
:mod:`asaga.workers._runs`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

import msgspec

__all__ = ["JobEnd", "JobHandler", "JobQueue"]

JobState = Literal["queued", "active", "complete", "failed", "aborted", "aborting", "missing"]


class JobEnd(msgspec.Struct, frozen=True, kw_only=True):
    """How a job ended, as the engine saw it."""

    state: JobState
    """``complete`` (the handler returned), ``failed`` (it raised, for good), ``aborted``
    (aborted before or while it ran), ``missing`` (the engine forgot the job)."""
    error: str | None = None
    """The engine's report of a failed or aborted job."""
    result: Any = None
    """What the handler returned (JSON data), for a complete job."""


JobHandler = Callable[[Mapping[str, Any], Callable[[], Awaitable[None]]], Awaitable[Any]]
"""What a worker runs for each job: called with the job's arguments and a heartbeat (an
async callable the handler calls now and then: a job that stops beating is given to
another worker)."""


class JobQueue(Protocol):
    """A named queue of a job engine (see the module docstring)."""

    name: str
    """The queue's name (workers serve queues by name)."""

    async def enqueue(
        self, key: str, arguments: Mapping[str, Any], *, retries: int | None = None
    ) -> bool:
        """Put a job under ``key``; ``False`` (nothing enqueued) if a job with that key
        exists already. ``arguments`` are JSON data; ``retries``: how many workers the
        job may be given to in all, if one dies running it (``None``: the queue's
        setting)."""

    async def wait(self, key: str) -> JobEnd:
        """Wait for the job under ``key`` to end (bound the wait with ``anyio.fail_after``);
        its end."""

    async def abort(
        self, key: str, reason: str, *, settle: float = 0.0, refuse_later: bool = False
    ) -> None:
        """Abort the job under ``key``: dropped if it waits, its handler cancelled if it
        runs. With ``settle`` > 0, wait up to that many seconds for its handler to end;
        a job whose handler has not ended by then (its worker is dead) is ended as
        aborted. With ``refuse_later``, a job of ``key`` not enqueued yet is refused if
        it comes later (for the time the queue keeps ended jobs)."""

    async def state(self, key: str) -> JobState:
        """Where the job under ``key`` stands now."""

    async def serve(
        self,
        handler: JobHandler,
        *,
        concurrency: int,
        shutdown_grace: float,
        stopping: Callable[[], Awaitable[None]],
        quick_aborts: bool = False,
    ) -> None:
        """Run ``handler`` for the jobs of this queue, ``concurrency`` at a time, until
        ``stopping()`` returns; then take no new job, give the running ones
        ``shutdown_grace`` seconds, cancel the rest, and return. ``quick_aborts``: cancel
        a job's handler as soon as its abort is told (steps on workers, whose timeouts
        are short), rather than within a second or two."""

    def sibling(self, name: str) -> JobQueue:
        """The queue named ``name`` of the same engine and connection (open it with
        ``async with``): a worker sends steps on workers of the sagas it runs there."""
