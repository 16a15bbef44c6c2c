"""The deadlines of step attempts on asyncio, kept by one timer per event loop.

An attempt with a timeout is cancelled when its deadline passes. An anyio cancel scope
with a deadline schedules an asyncio ``TimerHandle`` of its own (and cancels it when the
scope exits): at thousands of attempts a second with timeouts of seconds, the event loop's
timer heap holds tens of thousands of handles (cancelled ones stay until their time comes
or a cleanup), each pushed with Python-level comparisons. Here instead, the attempts with
the same timeout queue up in the order they started, which is the order of their
deadlines, and one timer for the earliest deadline of all cancels the scopes of those that
ran over. An attempt that ends leaves its queue at once when it is at the head (the
common case), else when the attempts before it have ended, or when ended attempts make up
most of a long queue (one attempt that runs long does not keep the others' flights
alive); the timer is dropped when no attempt is left, and an empty queue when the timer
goes off (at most one queue per distinct timeout is kept otherwise). If
the loop's clock goes back (the testing kit's virtual time ending), a new attempt is
placed by its deadline, not at the end.

Unlike an anyio scope's own deadline, this one is not seen by
``anyio.current_effective_deadline()`` inside the step on asyncio (on trio it is).

On trio, a cancel scope's deadline costs no such thing: scopes keep their own deadlines.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import weakref
from collections import deque
from typing import Protocol

import anyio

__all__ = ["Deadlines", "Timed", "deadlines"]


class Timed(Protocol):
    """What a timed attempt offers its timer."""

    deadline: float
    """When it runs over (the event loop's time); set by :meth:`Deadlines.add`."""
    ended: bool
    """Whether the attempt ended (set by the attempt before :meth:`Deadlines.ended`)."""

    def expire(self) -> None:
        """The deadline passed while the attempt ran: cancel it."""


class Deadlines:
    """The timed attempts of one event loop, queued by timeout; one timer for them all."""

    __slots__ = ("__weakref__", "_at", "_handle", "_queues", "_timed", "scope")

    _COMPACT = 64
    """A queue at least this long, more than half of it ended, drops its ended attempts."""

    def __init__(self) -> None:
        self.scope: type[anyio.CancelScope] = type(anyio.CancelScope())
        """anyio's cancel scope class of this event loop's backend: ``self.scope(shield=...)``
        is what ``anyio.CancelScope(shield=...)`` makes, without looking the backend up
        (sniffio, then anyio's registry) for every attempt."""
        self._queues: dict[float, deque[Timed]] = {}
        self._timed = 0  # attempts in the queues
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer goes off

    def add(self, attempt: Timed, timeout: float) -> deque[Timed]:
        """Start the clock of ``attempt``: its ``expire()`` is called once ``timeout``
        seconds passed, unless it ended by then. Returns its queue, for :meth:`ended`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt.deadline = deadline
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        if queue and deadline < queue[-1].deadline:  # the clock went back
            bisect.insort(queue, attempt, key=_deadline)
        else:
            queue.append(attempt)
        self._timed += 1
        if deadline < self._at:
            self._schedule(loop, deadline)
        return queue

    def ended(self, queue: deque[Timed]) -> None:
        """An attempt of ``queue`` ended (its ``ended`` set): drop the ended attempts at
        the head of the queue; with none left at all, the timer too (a timer would keep
        the event loop alive, through this object, after the loop closed)."""
        while queue and queue[0].ended:
            queue.popleft()
            self._timed -= 1
        if len(queue) >= self._COMPACT:
            kept = [attempt for attempt in queue if not attempt.ended]
            if len(kept) * 2 < len(queue):
                self._timed -= len(queue) - len(kept)
                queue.clear()
                queue.extend(kept)
        if not self._timed and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._at = math.inf

    def _schedule(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = loop.call_at(at, self._expire)

    def _expire(self) -> None:
        """The timer went off: cancel the attempts that ran over; set it for the next."""
        self._handle = None
        self._at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest = math.inf
        for timeout, queue in list(self._queues.items()):
            while queue:
                attempt = queue[0]
                if not attempt.ended:
                    if attempt.deadline > now:
                        earliest = min(earliest, attempt.deadline)
                        break
                    attempt.expire()
                queue.popleft()
                self._timed -= 1
            if not queue:
                del self._queues[timeout]  # a later attempt with this timeout makes a new one
        if earliest < math.inf:
            self._schedule(loop, earliest)


def _deadline(attempt: Timed) -> float:
    return attempt.deadline


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = (
    weakref.WeakKeyDictionary()
)


def deadlines() -> Deadlines:
    """The deadlines of the running event loop's attempts."""
    loop = asyncio.get_running_loop()
    found = _BY_LOOP.get(loop)
    if found is None:
        found = _BY_LOOP[loop] = Deadlines()
    return found
