"""Leases: what a holder gets, and how contenders in one process queue for it.

A lease is a lock with a mandatory time-to-live and a fencing token. The machinery here is
shared by every backend:

- **single flight**: per key, at most one contender of this process talks to the backend
  (the *head*); the others wait in a local FIFO queue on an event, holding no connection;
- **handoff**: when a holder releases and a local waiter is queued, the waiter gets the
  next token of the process's grant (no round trip), or the backend re-grants the key to
  it in one step (no release/acquire race, no wake-up latency); a backend may refuse, to
  let other processes have their turn, and the waiter then becomes the head instead;
- **blocks**: a grant reserves ``block`` tokens for local handoffs; before they run out,
  one call from a background task extends the block and renews the grant, unless another
  process wants the key (then the block runs out and the backend is asked);
- **idle grants**: when the last local holder leaves, the backend re-grants the key in
  one step instead of releasing it (the holder's grant ends: no check of its token
  passes any more), and the new grant is kept *idle* until the next turn of the event
  loop, when a background task releases it. A lease of this process that asks before
  then takes its first token: a task that leases a key again and again pays one round
  trip per lease, not an acquire and a release (only while the provider's background
  tasks run, see :meth:`Leases.run_renewer`);
- **renewal**: while held, the lease is renewed when two thirds of its TTL are left (every
  ``ttl / 3``); when a renewal finds the lease gone, the body of the ``async with`` is
  cancelled and :class:`LeaseLost` is raised in its place. A grant is handed on within
  the process only while two thirds of its TTL are left (else the backend re-grants it);
- **release** is token-checked and runs shielded, so a cancelled holder frees the key at
  once rather than after its TTL;
- **multi-key** leases take their keys in sorted order (no deadlock between two bulk
  operations), all or nothing.
"""

from __future__ import annotations

import heapq
import math
import random
import string
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import anyio
import anyio.abc
import structlog

from .._exceptions import LeaseError as LeaseError
from .._exceptions import LeaseLost as LeaseLost
from .._exceptions import LeaseTimeout as LeaseTimeout
from .._exceptions import LeaseUnavailable as LeaseUnavailable
from .._exceptions import StaleWrite as StaleWrite
from .._public import NoPublicConstructor

_logger = structlog.get_logger("asaga")

__all__ = [
    "Backend",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseTimeout",
    "LeaseUnavailable",
    "Leases",
    "Lock",
    "LockProvider",
    "StaleWrite",
]


@dataclass(frozen=True, slots=True, init=False)
class Lock:
    """Which lease a step holds while it runs: ``@step(lock=Lock("inventory:{sku}"))``.

    Each key is a template filled from the step's parameters (``str.format`` fields); a
    lock with several keys takes them all, in sorted order, all or nothing. ``ttl`` and
    ``wait`` are as for :meth:`LockProvider.lease`. ``@step(lock="inventory:{sku}")`` is
    short for ``Lock("inventory:{sku}")``.
    """

    keys: tuple[str, ...]
    ttl: float
    wait: float | None

    def __init__(self, *keys: str, ttl: float = 10.0, wait: float | None = 30.0) -> None:
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"Lock needs one or more non-empty key templates, got {keys!r}")
        fields: list[str] = []
        for template in keys:
            try:
                fields += [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
            except ValueError as exc:
                raise ValueError(f"bad key template {template!r}: {exc}") from None
        for field in fields:
            if not field.isidentifier():
                raise ValueError(
                    f"key template fields must be plain parameter names, got {{{field}}}"
                )
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "ttl", _check_ttl(ttl))
        object.__setattr__(self, "wait", None if wait is None else _check_wait(wait))

    @property
    def fields(self) -> tuple[str, ...]:
        """The parameter names the key templates use, in order of appearance."""
        names: list[str] = []
        for template in self.keys:
            for _, field, _, _ in string.Formatter().parse(template):
                if field is not None and field not in names:
                    names.append(field)
        return tuple(names)

    def render(self, values: Mapping[str, Any]) -> tuple[str, ...]:
        """The keys for one run of the step."""
        return tuple(template.format_map(values) for template in self.keys)


class Lease(metaclass=NoPublicConstructor):
    """One acquisition of one or more keys. Created by a provider, never by users."""

    __slots__ = ("_closed", "_expires", "_grants", "_leases", "_lost", "keys", "tokens", "ttl")
    _created_by: ClassVar[str] = "`async with provider.lease(key, ttl=...) as lease` gives one"

    def __init__(
        self,
        leases: Leases,
        keys: tuple[str, ...],
        holds: dict[str, _Hold],
        ttl: float,
    ) -> None:
        self._leases = leases
        self.keys = keys
        """The keys held, in acquisition (sorted) order."""
        self.tokens: Mapping[str, int] = {key: hold.token for key, hold in holds.items()}
        """Fencing token per key: strictly increasing per key across all grants."""
        self._grants = {key: hold.grant for key, hold in holds.items()}
        self.ttl = ttl
        """Seconds the lease lives without renewal."""
        # When the grants expire unless renewed: a grant handed on within this process may
        # have been made (or last renewed) a while ago.
        self._expires = min(hold.expires for hold in holds.values())
        self._lost: str | None = None
        self._closed = False  # the body has exited; a late renewal changes nothing

    @property
    def key(self) -> str:
        """The key of a single-key lease."""
        if len(self.keys) != 1:
            raise TypeError(f"this lease holds {len(self.keys)} keys; use .keys and .tokens")
        return self.keys[0]

    @property
    def token(self) -> int:
        """The fencing token of a single-key lease."""
        return self.tokens[self.key]

    @property
    def remaining(self) -> float:
        """Seconds until the lease expires unless renewed (0 when lost)."""
        if self._lost is not None:
            return 0.0
        return max(0.0, self._expires - anyio.current_time())

    @property
    def lost(self) -> bool:
        """Whether the lease was found lost."""
        return self._lost is not None

    @property
    def ended(self) -> bool:
        """Whether the lease's ``async with`` has exited: from then on the lease holds
        nothing, whatever its tokens still say. A resource that checks tokens itself must
        refuse an ended lease's writes: after a hand-on within the process, the next
        holder has the next token of the same grant, so a range check on the grant alone
        (``grant <= token < grant + block``) would accept them. (``fenced`` refuses
        them.)"""
        return self._closed

    async def extend(self, ttl: float | None = None) -> None:
        """Renew now, for ``ttl`` seconds (default: the lease's ttl).

        Raises :class:`LeaseLost` if the lease is gone.
        """
        ttl = self.ttl if ttl is None else _check_ttl(ttl)
        if self._lost is None:
            started = anyio.current_time()
            if await self._leases.backend.renew(self._grants, ttl):
                self._expires = started + ttl
                self._leases._renewed(self._grants, ttl, started + ttl)
                return
            if self._closed:  # released meanwhile: not a loss of the holder's
                return
            self._lost = "a renewal found the lease taken over or expired"
        raise LeaseLost(f"lease on {list(self.keys)} lost: {self._lost}", self.keys)

    def __repr__(self) -> str:
        state = "lost" if self.lost else f"{self.remaining:.3f}s left"
        return f"<Lease {dict(self.tokens)} {state}>"


class Backend(Protocol):
    """What a storage for leases provides; see MemoryLockProvider and RedisLockProvider.

    A *grant* is the backend's record that this process holds a key; it is identified by
    its first fencing token and covers the next ``block`` tokens, which the process may
    hand to its own waiters without asking the backend again. A fenced write is current
    iff its token is at least the first token of the key's newest grant.
    """

    block: int
    """Fencing tokens per grant (1: every handoff goes through the backend)."""

    async def try_acquire(self, key: str, ttl: float) -> tuple[int, float]:
        """Take ``key`` if free: ``(grant, 0)``; else ``(0, seconds it stays held)``."""
        ...

    async def renew(self, grants: Mapping[str, int], ttl: float) -> bool:
        """Extend every key still held under its grant; False if any is not."""
        ...

    async def release(self, key: str, grant: int) -> None:
        """Free ``key`` if ``grant`` still holds it."""
        ...

    async def handoff(self, key: str, grant: int, ttl: float, streak: int) -> int:
        """Replace the grant on ``key`` held under ``grant`` by a new one for ``ttl``.

        With ``streak`` at least the provider's fairness, a backend shared by processes
        releases the key instead if another process wants it. Returns the new grant,
        ``0`` if ``grant`` no longer holds the key, or ``-1`` if it released the key.
        """
        ...

    async def extend(self, key: str, grant: int, end: int, ttl: float) -> int:
        """Reserve ``block`` more tokens for the grant on ``key`` (its tokens below ``end``
        are reserved so far) and renew it for ``ttl``, unless another process wants the
        key. Returns the new end, or ``0`` if not extended: the grant no longer holds the
        key, another process wants it, or the tokens would leave the range fenced writes
        accept (the process then asks the backend when the block runs out)."""
        ...

    async def wait_released(self, key: str) -> None:
        """Return when ``key`` may have been released (the caller bounds the wait)."""
        ...


class LockProvider(Protocol):
    """Grants leases: ``async with provider.lease("inventory:sku-1", ttl=5) as lease``."""

    def lease(
        self, *keys: str, ttl: float, wait: float | None = None
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold ``keys`` for the body of the ``async with``; see :class:`Lease`."""
        ...


_COURTESY = 0.003
"""Seconds a process waits before contending again after releasing a key for another."""

_RELEASE_BOUND = 5.0
"""Seconds a shielded release may take; past that the TTL frees the key."""

_HANDED_ON = 2 / 3
"""A lease is renewed when this share of its TTL is left, and a grant is handed on within
the process only while it has this much of its TTL left."""


class _Hold:
    """What one holder of a key has: the grant (backend ownership), its token, and when
    the grant expires unless renewed (this event loop's clock, an underestimate)."""

    __slots__ = ("expires", "grant", "token")

    def __init__(self, grant: int, token: int, expires: float) -> None:
        self.grant = grant
        self.token = token
        self.expires = expires


class _Waiter:
    __slots__ = ("event", "hold", "ttl", "woken", "yielded")

    def __init__(self, ttl: float) -> None:
        self.event = anyio.Event()
        self.ttl = ttl
        self.hold: _Hold | None = None  # handed over; None: only the turn (become head)
        self.yielded = False  # the turn came after a release made for another process
        self.woken = False


class _KeyQueue:
    __slots__ = (
        "busy",
        "end",
        "expires",
        "extending",
        "grant",
        "idle",
        "next_token",
        "releasing",
        "ttl",
        "waiters",
    )

    def __init__(self) -> None:
        self.busy = False  # a contender of this process holds the key, is the head, or frees it
        self.waiters: deque[_Waiter] = deque()
        self.grant = 0  # the process's grant on the key (0: none)
        self.next_token = 0  # the next token of the grant's block
        self.end = 0  # the grant's tokens below this are reserved (next_token..end-1 free)
        self.ttl = 0.0  # the TTL the grant was made or last handed over with
        self.expires = 0.0  # when the grant expires unless renewed (an underestimate)
        self.extending = False  # an extension is under way, or was refused, for this grant
        self.idle = False  # granted, held by nobody: kept until the next turn of the loop
        self.releasing = False  # an idle grant is being released (by a background task)


class Leases:
    """The lease machinery of one provider over one backend."""

    def __init__(self, backend: Backend, *, fairness: int = 8) -> None:
        self.backend = backend
        self.fairness = fairness
        self._queues: dict[str, _KeyQueue] = {}
        self._renewer: _Renewer | None = None
        # While run_renewer runs: its task group (block extensions, releases of idle
        # grants), and the keys left idle since the releaser last ran, with its wake-up.
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle: list[str] = []
        self._idle_wakeup: anyio.Event | None = None
        # Keys released for another process at a holder's exit, with when this process's
        # next lease of the key may contend again (see _yield_to_others).
        self._yielded: dict[str, float] = {}

    async def run_renewer(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Renew every lease of this manager from one task, extend blocks and release
        idle grants (run it in a provider's task group). Until it runs, each lease renews
        itself from a task of its own, and a holder that leaves releases the key itself."""
        renewer = _Renewer()
        try:
            async with anyio.create_task_group() as tg:
                self._renewer, self._tg = renewer, tg
                self._idle_wakeup = anyio.Event()
                tg.start_soon(self._release_idle, tg, name="asaga idle lease releases")
                task_status.started()
                await renewer.run(tg)
        finally:
            self._renewer = self._tg = self._idle_wakeup = None
            self._idle = []
            # Grants left idle as the tasks stopped: released now, shielded and bounded.
            idle: list[tuple[str, _Hold, float]] = []
            for key, queue in list(self._queues.items()):
                if queue.idle:
                    queue.idle, queue.busy = False, True
                    idle.append((key, _Hold(queue.grant, 0, 0.0), queue.ttl))
            await self._release_bounded(idle, lost=False)

    @asynccontextmanager
    async def lease(
        self, keys: Iterable[str], *, ttl: float, wait: float | None
    ) -> AsyncIterator[Lease]:
        ordered = tuple(sorted(set(keys)))
        if not ordered:
            raise ValueError("lease() needs at least one key")
        for key in ordered:
            if not isinstance(key, str) or not key:
                raise ValueError(f"lease keys are non-empty strings, got {key!r}")
        ttl = _check_ttl(ttl)
        deadline = math.inf if wait is None else anyio.current_time() + _check_wait(wait)
        holds: dict[str, _Hold] = {}
        try:
            for key in ordered:
                holds[key] = await self._acquire(key, ttl, deadline)
        except BaseException:
            await self._release_bounded(
                [(key, hold, ttl) for key, hold in reversed(holds.items())], lost=False
            )
            raise
        lease = Lease._create(self, ordered, holds, ttl)
        failure: BaseException | None = None
        interrupted = False  # the body was cancelled because the lease was lost
        try:
            if self._renewer is not None:
                # The provider's renewer task renews this lease and cancels the body's
                # scope if it is lost (the scope absorbs that; LeaseLost is raised below);
                # no task per lease.
                body = anyio.CancelScope()
                watch = self._renewer.watch(lease, body)
                try:
                    with body:
                        yield lease
                finally:
                    watch.active = False
                    lease._closed = True
                interrupted = body.cancelled_caught
            else:
                # The body's own exception is kept out of the task group (which would wrap
                # it in an ExceptionGroup) and re-raised after it. A cancellation from
                # outside is re-raised by the task group itself; one from the renewal task
                # becomes LeaseLost.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._keep_alive, lease, tg.cancel_scope, name="lease renewal")
                    try:
                        yield lease
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        failure = exc
                    finally:
                        tg.cancel_scope.cancel()  # stop renewing
                        lease._closed = True
                cancelled = anyio.get_cancelled_exc_class()
                if lease.lost and isinstance(failure, cancelled):
                    interrupted, failure = True, None
        finally:
            # A key handed to the next local waiter needs no I/O here, so no shielded
            # scope.
            lost = lease.lost
            rest = [
                key for key in reversed(ordered) if not self._hand_over(key, holds[key], lost=lost)
            ]
            if rest:
                await self._release_bounded(
                    [(key, holds[key], ttl) for key in rest], lost=lost, idle=True
                )
        # A body that finished its work before the loss reached it returns normally: its
        # writes, if fenced, were accepted. One that was interrupted gets LeaseLost.
        if interrupted:
            raise LeaseLost(
                f"lease on {list(ordered)} lost while held ({lease._lost}); the work inside "
                "it was cancelled",
                ordered,
            )
        if failure is not None:
            if lease.lost:
                raise failure from LeaseLost(f"lease on {list(ordered)} was lost", ordered)
            raise failure

    async def _keep_alive(self, lease: Lease, body: anyio.CancelScope) -> None:
        """Renew when two thirds of the TTL are left, then every ttl/3 (sooner after a
        failure); on loss, cancel the body."""
        delay = max(0.0, lease._expires - lease.ttl * _HANDED_ON - anyio.current_time())
        while True:
            await anyio.sleep(delay)
            next_delay = await _renew_once(lease)
            if next_delay is None:
                body.cancel()
                return
            delay = next_delay

    async def _acquire(self, key: str, ttl: float, deadline: float) -> _Hold:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _KeyQueue()
        courtesy = 0.0  # seconds to let another process go first, before contending
        idle_grant = 0  # this process's idle grant on the key, renewed in one step
        if queue.busy:
            waiter = _Waiter(ttl)
            queue.waiters.append(waiter)
            # Nobody holds the key while this process releases an idle grant: that release
            # (bounded) is waited for whatever `wait` is, as a holder's release was.
            wake_by = deadline
            if queue.releasing:
                wake_by = max(deadline, anyio.current_time() + _RELEASE_BOUND)
            try:
                if wake_by == math.inf:
                    await waiter.event.wait()
                else:
                    with anyio.CancelScope(deadline=wake_by):
                        await waiter.event.wait()
            except BaseException:
                with anyio.move_on_after(_RELEASE_BOUND, shield=True):
                    await self._leave(key, queue, waiter)
                raise
            if not waiter.woken:
                queue.waiters.remove(waiter)
                raise LeaseTimeout(f"could not acquire {key!r} in time", (key,))
            if waiter.hold is not None:
                return waiter.hold
            # Handed the turn: this task is the head now (queue.busy stays True). After a
            # release made for another process's sake, give that process a moment first.
            if waiter.yielded:
                courtesy = _COURTESY * random.uniform(1.0, 2.0)
        else:
            queue.busy = True
            if self._yielded:
                # A holder of this process released the key for another process a moment
                # ago: what is left of the moment.
                courtesy = self._yielded.pop(key, 0.0) - anyio.current_time()
            if queue.idle:
                # The grant made when the last holder left, not yet released: its first
                # token, or else (another TTL, too little of it left) renewed in one step.
                queue.idle = False
                hold = self._take(key, queue, ttl)
                if hold is not None:
                    return hold
                idle_grant = queue.grant
        try:
            if courtesy > 0:
                await anyio.sleep(courtesy)
            grant, expires = await self._head(key, ttl, deadline, idle_grant)
        except BaseException:
            self._pass_turn(key, queue)
            raise
        self._granted(queue, grant, ttl, expires)
        return _Hold(grant, grant, expires)

    def _granted(self, queue: _KeyQueue, grant: int, ttl: float, expires: float) -> None:
        queue.grant = grant
        queue.next_token = grant + 1
        queue.end = grant + self.backend.block
        queue.ttl = ttl
        queue.expires = expires
        queue.extending = False

    async def _head(
        self, key: str, ttl: float, deadline: float, idle_grant: int
    ) -> tuple[int, float]:
        """Get the key from the backend: ``(grant, when it expires unless renewed)``."""
        backend = self.backend
        if idle_grant:
            # This process still holds the key: re-granted in one step, unless another
            # process wants it (then released to it). Shielded, so that a grant made is
            # known, and freed if this task is being cancelled.
            started = anyio.current_time()
            granted = 0
            with anyio.move_on_after(_RELEASE_BOUND, shield=True) as bound:
                granted = await backend.handoff(key, idle_grant, ttl, self.fairness)
            if bound.cancelled_caught:
                # Unknown: Redis may have re-granted the key (to a grant nobody here
                # knows) or not. Nothing is assumed held: this head acquires as any
                # other, and the key's TTL frees it at the latest.
                _logger.warning("lease_handoff_timed_out", key=key, grant=idle_grant)
            elif granted > 0:
                return granted, started + ttl
            elif granted < 0:
                await anyio.sleep(_COURTESY * random.uniform(1.0, 2.0))
        while True:
            started = anyio.current_time()
            grant, held_for = await backend.try_acquire(key, ttl)
            if grant:
                return grant, started + ttl
            left = deadline - anyio.current_time()
            if left <= 0:
                raise LeaseTimeout(f"could not acquire {key!r} in time", (key,))
            # Woken by a release notification; else retry when the holder's TTL runs out,
            # at most every half second, with jitter so that processes do not stampede.
            pause = min(min(held_for, 0.5) * random.uniform(1.0, 1.2) + 0.001, left)
            with anyio.move_on_after(pause):
                await backend.wait_released(key)

    async def _leave(self, key: str, queue: _KeyQueue, waiter: _Waiter) -> None:
        """A waiter gives up (cancelled): pass on what it was handed, if anything."""
        if not waiter.woken:
            queue.waiters.remove(waiter)
        elif waiter.hold is not None:
            await self._release(key, waiter.hold, waiter.ttl, lost=False)
        else:
            self._pass_turn(key, queue)

    def _yield_to_others(self, key: str) -> None:
        """The key was released for another process at a holder's exit: the next lease
        of it in this process waits a moment (``_COURTESY``) before contending."""
        now = anyio.current_time()
        if len(self._yielded) >= 1024:
            self._yielded = {k: t for k, t in self._yielded.items() if t > now}
        self._yielded[key] = now + _COURTESY * random.uniform(1.0, 2.0)

    def _pass_turn(self, key: str, queue: _KeyQueue) -> None:
        """The head leaves without the key, or the key was released: the next waiter
        becomes the head."""
        queue.grant = 0
        queue.idle = False
        if queue.waiters:
            waiter = queue.waiters.popleft()
            waiter.woken = True
            waiter.event.set()
        else:
            queue.busy = False
            self._queues.pop(key, None)

    def _take(self, key: str, queue: _KeyQueue, ttl: float) -> _Hold | None:
        """The next token of the process's grant on ``key`` for a holder asking for
        ``ttl``, if the grant may be handed on without the backend: a token of its block
        is left, the TTL is the grant's, and two thirds of it are left (as after a
        renewal). Starts the extension of the block before it runs out."""
        token = queue.next_token
        if (
            token >= queue.end
            or ttl != queue.ttl
            or queue.expires - anyio.current_time() < ttl * _HANDED_ON
        ):
            return None
        queue.next_token = token + 1
        tg = self._tg
        if (
            tg is not None
            and not queue.extending
            and queue.end - queue.next_token <= self.backend.block // 2
        ):
            queue.extending = True
            tg.start_soon(self._extend, key, queue)
        return _Hold(queue.grant, token, queue.expires)

    async def _extend(self, key: str, queue: _KeyQueue) -> None:
        """Extend the block of the grant on ``key`` (and renew it), from a background task
        while its holders work. If the backend refuses, the block runs out and the next
        handoff asks the backend (which releases the key if another process wants it)."""
        grant, end, ttl = queue.grant, queue.end, queue.ttl
        started = anyio.current_time()
        try:
            extended = await self.backend.extend(key, grant, end, ttl)
        except Exception:  # noqa: BLE001 - backend down: the next handoff asks it again
            return
        if extended > end and (queue.grant, queue.end, queue.ttl) == (grant, end, ttl):
            queue.end = extended
            queue.expires = max(queue.expires, started + ttl)
            queue.extending = False  # the next extension, before this block runs out

    def _renewed(self, grants: Mapping[str, int], ttl: float, expires: float) -> None:
        """A lease on these grants was renewed for ``ttl``, until ``expires``."""
        for key, grant in grants.items():
            queue = self._queues.get(key)
            if queue is None or queue.grant != grant:
                continue
            if ttl < queue.ttl:
                # Shortened: no local handoff nor extension of this grant any more (the
                # backend re-grants it to the next holder).
                queue.ttl = 0.0
            else:
                # The renewal set the TTL (it may have shortened one a longer renewal set):
                # the grant expires no sooner than this, whatever else was under way.
                queue.expires = expires

    def _hand_over(self, key: str, hold: _Hold, *, lost: bool) -> bool:
        """Hand the key to the next local waiter within this process's grant, if the
        rules allow: no round trip to the backend. Whether it was handed over."""
        queue = self._queues.get(key)
        if queue is None or not queue.waiters or lost or queue.grant != hold.grant:
            return False
        waiter = queue.waiters[0]
        handed = self._take(key, queue, waiter.ttl)
        if handed is None:
            return False
        queue.waiters.popleft()
        waiter.hold = handed
        waiter.woken = True
        waiter.event.set()
        return True

    async def _release_idle(self, tg: anyio.abc.TaskGroup) -> None:
        """Release the grants left idle, once per turn of the event loop (background)."""
        while True:
            wakeup = self._idle_wakeup
            assert wakeup is not None
            await wakeup.wait()
            self._idle_wakeup = anyio.Event()
            keys, self._idle = self._idle, []
            for key in keys:
                queue = self._queues.get(key)
                if queue is not None and queue.idle:
                    # Busy until released: a contender that comes meanwhile queues, and
                    # is handed the key or the turn.
                    queue.idle, queue.busy, queue.releasing = False, True, True
                    tg.start_soon(self._release_shielded, key, queue)

    async def _release_shielded(self, key: str, queue: _KeyQueue) -> None:
        try:
            hold = _Hold(queue.grant, 0, queue.expires)
            await self._release_bounded([(key, hold, queue.ttl)], lost=False)
        finally:
            queue.releasing = False

    async def _release_bounded(
        self, holds: list[tuple[str, _Hold, float]], *, lost: bool, idle: bool = False
    ) -> None:
        """Release each ``(key, hold, ttl)`` in turn, shielded, all within
        ``_RELEASE_BOUND``. A release cut short by the bound passes the key's turn on
        (see :meth:`_release`); the keys not reached by then are handed to a local waiter
        if the rules allow, else their turn is passed on too (the TTL frees them)."""
        reached = 0
        try:
            with anyio.move_on_after(_RELEASE_BOUND, shield=True):
                for key, hold, ttl in holds:
                    reached += 1
                    await self._release(key, hold, ttl, lost=lost, idle=idle)
        finally:
            for key, hold, _ in holds[reached:]:
                if not self._hand_over(key, hold, lost=lost):
                    queue = self._queues.get(key)
                    if queue is not None:
                        self._pass_turn(key, queue)

    async def _release(
        self, key: str, hold: _Hold, ttl: float, *, lost: bool, idle: bool = False
    ) -> None:
        """Free ``key`` held under ``hold``: hand it to the next local waiter, re-granted
        for it, or released. With ``idle`` (a holder leaving), while the provider's
        background tasks run, a key nobody here waits for is re-granted too and left idle
        for the next lease of this process, until the next turn of the event loop."""
        if self._hand_over(key, hold, lost=lost):
            return
        queue = self._queues.get(key)
        passed = False  # the key went to a waiter, was left idle, or its turn passed on
        try:
            keep = idle and self._idle_wakeup is not None
            if queue is not None and not lost and (queue.waiters or keep):
                wanted = queue.waiters[0].ttl if queue.waiters else ttl
                started = anyio.current_time()
                try:
                    # The backend re-grants the key (the holder's grant ends with it: no
                    # check of its token passes any more); it gives the key to another
                    # process that wants it instead.
                    granted = await self.backend.handoff(key, hold.grant, wanted, self.fairness)
                except Exception:  # noqa: BLE001 - backend down: the next waiter is the head
                    granted = 0
                if queue.waiters:
                    waiter = queue.waiters.popleft()
                    waiter.woken = True
                    if granted > 0:
                        self._granted(queue, granted, wanted, started + wanted)
                        waiter.hold = _Hold(granted, granted, started + wanted)
                    else:  # lost (0) or released for another process (-1): the waiter is head
                        queue.grant = 0
                        waiter.yielded = granted < 0
                    waiter.event.set()
                    passed = True
                    return
                if granted <= 0:
                    if granted < 0:
                        # Released for another process: this one's next lease of the key
                        # gives it a moment before contending again (it would win the
                        # race, without a queue); not this holder, whose exit is done.
                        self._yield_to_others(key)
                    self._pass_turn(key, queue)
                    passed = True
                    return
                wakeup = self._idle_wakeup
                if wakeup is not None:
                    # Idle: the next lease of this process takes its first token; else a
                    # background task releases it on the next turn of the event loop.
                    self._granted(queue, granted, wanted, started + wanted)
                    queue.next_token = granted
                    queue.busy = False
                    queue.idle = True
                    self._idle.append(key)
                    wakeup.set()
                    passed = True
                    return
                hold = _Hold(granted, granted, started + wanted)  # kept for nobody: free it
            try:
                await self.backend.release(key, hold.grant)
            except Exception as exc:  # noqa: BLE001 - unreachable backend: the TTL frees it
                _logger.warning("lease_release_failed", key=key, grant=hold.grant, error=repr(exc))
            if queue is not None:
                # Whoever queued while the release was on its way becomes the head.
                self._pass_turn(key, queue)
                passed = True
        finally:
            if not passed and queue is not None:
                # Cut short (the release bound ran out, or a cancellation): whether the
                # backend applied the call is unknown. Nothing is assumed held: the next
                # waiter becomes the head and acquires as any other (the key's TTL frees
                # it at the latest), and a later lease of this process does the same.
                _logger.warning("lease_release_cut_short", key=key, grant=hold.grant)
                self._pass_turn(key, queue)


class _Watch:
    """One lease as the renewer sees it."""

    __slots__ = ("active", "body", "lease")

    def __init__(self, lease: Lease, body: anyio.CancelScope) -> None:
        self.lease = lease
        self.body = body
        self.active = True  # False once the lease's body has exited


class _Renewer:
    """Renews many leases from one task: a heap of due times, woken by new leases."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = 0
        self._wakeup = anyio.Event()

    def watch(self, lease: Lease, body: anyio.CancelScope) -> _Watch:
        watch = _Watch(lease, body)
        # Due when two thirds of the TTL are left: ttl/3 after a grant; sooner for a grant
        # handed on within the process (made or renewed a while ago).
        self._schedule(watch, lease._expires - lease.ttl * _HANDED_ON)
        return watch

    def _schedule(self, watch: _Watch, due: float) -> None:
        first = not self._heap or due < self._heap[0][0]
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, watch))
        if first:
            self._wakeup.set()

    async def run(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            self._wakeup = anyio.Event()
            heap = self._heap
            while heap and not heap[0][2].active:
                heapq.heappop(heap)  # finished leases: drop them
            if not heap:
                await self._wakeup.wait()
                continue
            delay = heap[0][0] - anyio.current_time()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
                continue
            _, _, watch = heapq.heappop(heap)
            tg.start_soon(self._renew, watch)

    async def _renew(self, watch: _Watch) -> None:
        if not watch.active:
            return  # the body has exited: its release owns the key now
        lease = watch.lease
        delay = await _renew_once(lease)
        if delay is None:
            if watch.active:
                watch.body.cancel()
            return
        if watch.active:
            self._schedule(watch, anyio.current_time() + delay)


async def _renew_once(lease: Lease) -> float | None:
    """Renew ``lease``; the seconds until the next renewal, or None once it is lost.

    A renewal never outlives the lease: it is abandoned a margin before the expiry, and
    the lease then counts as lost, so its holder is stopped before anyone else can be
    granted the key. After a failed renewal the next comes sooner.
    """
    margin = min(lease.ttl / 10, 0.5)
    # Up to a margin before the expiry; once past it (the process stalled), one short try
    # still asks the backend, which knows whether anyone else was granted the key.
    bound = lease.remaining - margin
    if bound <= 0:
        bound = min(lease.ttl / 10, 0.2)
    try:
        with anyio.fail_after(bound):
            await lease.extend()
    except LeaseLost:
        return None
    except Exception as exc:  # noqa: BLE001 - a backend error or a stalled renewal
        if lease.remaining <= margin:
            if not lease._closed:
                lease._lost = f"renewal failed until expiry ({exc!r})"
            return None
        return min(lease.ttl / 6, max(lease.remaining - margin, 0.0) / 2)
    return lease.ttl / 3


MAX_TTL = 365 * 24 * 3600.0
"""The longest lease TTL, in seconds (a year): a held lease is renewed, so a longer one only
means a crashed holder blocks the key for longer. The backends count in milliseconds, so the
shortest is 0.001 s."""


def _check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    if not 0.001 <= ttl <= MAX_TTL:
        raise ValueError(
            f"ttl must be between 0.001 s and {MAX_TTL:.0f} s (a year), got {ttl!r}: a held "
            "lease is renewed, so a long TTL only keeps a crashed holder's key blocked longer"
        )
    return float(ttl)


def _check_wait(wait: float) -> float:
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
        raise ValueError(f"wait must be a number of seconds >= 0 or None, got {wait!r}")
    return float(wait)
