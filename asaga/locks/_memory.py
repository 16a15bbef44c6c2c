"""In-memory leases: the embedded default, with the same semantics as Redis (TTL, fencing
tokens, FIFO order) inside one process."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager

import anyio
import anyio.lowlevel

from ._lease import Lease, Leases

__all__ = ["MemoryLockProvider", "default_provider"]


class _MemoryBackend:
    """Holders in a dict, expiry by the event loop's clock.

    Per-key state lives only while someone holds or waits for the key, so a provider used
    with many distinct keys does not grow. Tokens still rise per key: a new grant's token
    is above ``floor``, the largest token of any key since freed (and above the token it
    replaces, on a handoff).
    """

    block = 1  # handoffs are as cheap as local ones: no token blocks needed

    def __init__(self) -> None:
        self.holders: dict[str, tuple[int, float]] = {}  # key -> (token, expires at)
        self.released: dict[str, anyio.Event] = {}  # key -> its head's wake-up
        self.floor = 0

    def _holder(self, key: str) -> tuple[int, float] | None:
        held = self.holders.get(key)
        if held is not None and held[1] <= anyio.current_time():
            self._free(key)  # expired
            return None
        return held

    def _free(self, key: str) -> None:
        token, _ = self.holders.pop(key)
        self.floor = max(self.floor, token)
        event = self.released.pop(key, None)
        if event is not None:
            event.set()

    def _grant(self, key: str, ttl: float, after: int = 0) -> int:
        token = max(after, self.floor) + 1
        self.holders[key] = (token, anyio.current_time() + ttl)
        return token

    async def try_acquire(self, key: str, ttl: float) -> tuple[int, float]:
        held = self._holder(key)
        if held is None:
            return self._grant(key, ttl), 0.0
        return 0, held[1] - anyio.current_time()

    async def renew(self, grants: Mapping[str, int], ttl: float) -> bool:
        until = anyio.current_time() + ttl
        for key, grant in grants.items():
            held = self._holder(key)
            if held is None or held[0] != grant:
                return False
        for key, grant in grants.items():
            self.holders[key] = (grant, until)
        return True

    async def release(self, key: str, token: int) -> None:
        held = self._holder(key)
        if held is not None and held[0] == token:
            self._free(key)

    async def handoff(self, key: str, token: int, ttl: float, streak: int) -> int:
        held = self._holder(key)
        if held is None or held[0] != token:
            return 0
        return self._grant(key, ttl, after=token)

    async def extend(self, key: str, grant: int, end: int, ttl: float) -> int:
        return 0  # block 1: no local handoffs, so no blocks to extend

    async def wait_released(self, key: str) -> None:
        event = self.released.get(key)
        if event is None:
            event = self.released[key] = anyio.Event()
        try:
            await event.wait()
        finally:
            # One head per key waits (single flight): once it leaves, however it leaves,
            # nothing of the key stays behind.
            if self.released.get(key) is event:
                del self.released[key]

    def current_token(self, key: str) -> int:
        """The token of the lease holding ``key`` (0 if nobody holds it)."""
        held = self._holder(key)
        return 0 if held is None else held[0]


class MemoryLockProvider:
    """Leases held in this process's memory: the default when no backend is configured.

    Same interface and semantics as :class:`~asaga.locks.RedisLockProvider` (TTL,
    renewal, fencing tokens, FIFO waiting, multi-key in sorted order), but only tasks of
    this process see them. Use :meth:`is_current` to check a fencing token in an
    in-memory resource.
    """

    def __init__(self) -> None:
        self._backend = _MemoryBackend()
        self._leases = Leases(self._backend)

    def lease(
        self, *keys: str, ttl: float, wait: float | None = None
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold ``keys`` (sorted, all or nothing) for the body of the ``async with``.

        ``ttl`` (seconds, required) bounds how long the lease outlives a holder that stops
        renewing it; ``wait`` bounds the time to acquire (``LeaseTimeout``; default: wait
        as long as it takes). If the lease is lost while held, the body is cancelled and
        ``LeaseLost`` raised.
        """
        return self._leases.lease(keys, ttl=ttl, wait=wait)

    def is_current(self, lease: Lease, key: str | None = None) -> bool:
        """Whether ``lease`` still holds ``key``: its token is the newest granted, and has
        not expired or been released (fencing)."""
        key = lease.key if key is None else key
        return self._backend.current_token(key) == lease.tokens[key]


_default_provider: anyio.lowlevel.RunVar[MemoryLockProvider] = anyio.lowlevel.RunVar(
    "asaga_default_locks"
)


def default_provider() -> MemoryLockProvider:
    """The in-memory provider shared by every saga of this event loop that has no ``locks``
    input: the embedded default (a saga's spec carries it, see :mod:`asaga._saga`)."""
    try:
        return _default_provider.get()
    except LookupError:
        provider = MemoryLockProvider()
        _default_provider.set(provider)
        return provider
