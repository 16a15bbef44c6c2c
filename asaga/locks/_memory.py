"""In-memory leases: the embedded default, with the same semantics as Redis (TTL, fencing
tokens, FIFO order) inside one process."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager

import anyio

from ._lease import Lease, Leases

__all__ = ["MemoryLockProvider"]


class _MemoryBackend:
    """Holders and fencing counters in dicts; expiry by the event loop's clock."""

    block = 1  # handoffs are as cheap as local ones: no token blocks needed

    def __init__(self) -> None:
        self.holders: dict[str, tuple[int, float]] = {}  # key -> (token, expires at)
        self.fences: dict[str, int] = {}
        self.released: dict[str, anyio.Event] = {}

    def _holder(self, key: str) -> tuple[int, float] | None:
        held = self.holders.get(key)
        if held is not None and held[1] <= anyio.current_time():
            del self.holders[key]  # expired
            return None
        return held

    def _grant(self, key: str, ttl: float) -> int:
        token = self.fences.get(key, 0) + 1
        self.fences[key] = token
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
            del self.holders[key]
            event = self.released.pop(key, None)
            if event is not None:
                event.set()

    async def handoff(self, key: str, token: int, ttl: float, streak: int) -> int:
        held = self._holder(key)
        if held is None or held[0] != token:
            return 0
        return self._grant(key, ttl)

    async def wait_released(self, key: str) -> None:
        event = self.released.get(key)
        if event is None:
            event = self.released[key] = anyio.Event()
        await event.wait()

    def current_token(self, key: str) -> int:
        """The newest token granted for ``key`` (0 if never)."""
        return self.fences.get(key, 0)


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
        """Whether ``lease``'s token for ``key`` is still the newest granted (fencing)."""
        key = lease.key if key is None else key
        return self._backend.current_token(key) == lease.tokens[key]
