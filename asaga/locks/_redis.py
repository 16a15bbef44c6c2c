"""Redis leases: one key per lease with a TTL, a fencing counter, and release notifications.

Keys (``{key}`` is a hash tag, so each lease's keys share a cluster slot)::

    <prefix>lock:{key}     the holding process's grant, with the lease's TTL (PX)
    <prefix>fence:{key}    the fencing counter: each grant reserves a block of tokens
    <prefix>grant:{key}    the first token of the newest grant (what fenced writes check)
    <prefix>want:{key}     set (briefly) by a process that found the key held
    <prefix>stale:{key}    count of fenced writes rejected as stale
    channel <prefix>released:<key>   published on release when someone wants the key

A grant is the process's, not one task's: the process hands the key from one of its tasks
to the next with the next token of the grant's block, without a round trip; every
``fairness`` holders (or when the block or the TTL differ) it asks Redis again, which is
when a key another process wants is released to it. Every state change is one Lua script
(atomic, keys and values passed as arguments, never interpolated). Waiting contenders
never poll on a fixed interval: one head per key and process waits for a release
notification (one pattern subscription per provider), with a fallback retry when the
holder's TTL runs out, bounded and jittered.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from .._redis import follow_pattern, require_asyncio
from ._lease import Lease, Leases, LeaseUnavailable, StaleWrite

__all__ = ["RedisLockProvider"]

_logger = structlog.get_logger("asaga")

# A grant reserves a block of fencing tokens (INCRBY); the lock key holds the grant (the
# block's first token) and <prefix>grant:{key} remembers the newest grant's first token:
# a fenced write is current iff its token >= that.

# KEYS: lock, fence, want, grant ; ARGV: ttl_ms, want_ms, identity, block
_ACQUIRE = """
local held = redis.call('pttl', KEYS[1])
if held == -2 then
  local block = tonumber(ARGV[4])
  local grant = redis.call('incrby', KEYS[2], block) - block + 1
  redis.call('set', KEYS[1], grant, 'px', ARGV[1])
  redis.call('set', KEYS[4], grant)
  return {grant, 0}
end
redis.call('set', KEYS[3], ARGV[3], 'px', ARGV[2])
if held < 0 then held = tonumber(ARGV[1]) end
return {0, held}
"""

# KEYS: lock keys ; ARGV: ttl_ms, grants...
_RENEW = """
for i, key in ipairs(KEYS) do
  if redis.call('get', key) ~= ARGV[i + 1] then return 0 end
end
for _, key in ipairs(KEYS) do redis.call('pexpire', key, ARGV[1]) end
return 1
"""

# KEYS: lock, want ; ARGV: grant, channel
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if redis.call('exists', KEYS[2]) == 1 then redis.call('publish', ARGV[2], '1') end
  return 1
end
return 0
"""

# KEYS: lock, fence, want, grant ; ARGV: grant, ttl_ms, streak, cap, channel, identity, block
_HANDOFF = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
local wanted_by = redis.call('get', KEYS[3])
if tonumber(ARGV[3]) >= tonumber(ARGV[4]) and wanted_by and wanted_by ~= ARGV[6] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[5], '1')
  return -1
end
local block = tonumber(ARGV[7])
local grant = redis.call('incrby', KEYS[2], block) - block + 1
redis.call('set', KEYS[1], grant, 'px', ARGV[2])
redis.call('set', KEYS[4], grant)
return grant
"""

# KEYS: grant, stale, data keys... ; ARGV: token, n commands, then per command:
#   name, index of its key in KEYS, number of arguments, arguments...
_FENCED = """
local newest = tonumber(redis.call('get', KEYS[1]) or '0')
if tonumber(ARGV[1]) < newest then
  redis.call('incr', KEYS[2])
  return {0, newest}
end
local results = {}
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[i + 2])
  local call = {ARGV[i], KEYS[tonumber(ARGV[i + 1])]}
  for j = 1, n do call[#call + 1] = ARGV[i + 2 + j] end
  results[#results + 1] = redis.call(unpack(call))
  i = i + 3 + n
end
return {1, results}
"""

_BLOCK = 1024  # fencing tokens per grant, handed to local waiters without a round trip

_FENCED_BOUND = 10.0  # seconds a fenced write waits for its reply, shielded

_WANT_MS = 2000  # how long a failed attempt marks the key as wanted by another process


class _RedisBackend:
    block = _BLOCK

    def __init__(self, client: aioredis.Redis, prefix: str, fairness: int) -> None:
        self.client = client
        self.identity = uuid.uuid4().hex  # marks the keys this provider wants
        self.prefix = prefix
        self.fairness = fairness
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._handoff = client.register_script(_HANDOFF)
        self.fenced = client.register_script(_FENCED)
        self.waiting: dict[str, anyio.Event] = {}
        self.listening = False

    def lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{{{key}}}"

    def fence_key(self, key: str) -> str:
        return f"{self.prefix}fence:{{{key}}}"

    def grant_key(self, key: str) -> str:
        return f"{self.prefix}grant:{{{key}}}"

    def want_key(self, key: str) -> str:
        return f"{self.prefix}want:{{{key}}}"

    def stale_key(self, key: str) -> str:
        return f"{self.prefix}stale:{{{key}}}"

    def channel(self, key: str) -> str:
        return f"{self.prefix}released:{key}"

    async def try_acquire(self, key: str, ttl: float) -> tuple[int, float]:
        try:
            token, held_ms = await self._acquire(
                keys=[
                    self.lock_key(key),
                    self.fence_key(key),
                    self.want_key(key),
                    self.grant_key(key),
                ],
                args=[_ms(ttl), _WANT_MS, self.identity, self.block],
            )
        except RedisError as exc:
            raise LeaseUnavailable(
                f"cannot acquire {key!r}: Redis is unreachable ({exc})", (key,)
            ) from exc
        return int(token), int(held_ms) / 1000

    async def renew(self, grants: Mapping[str, int], ttl: float) -> bool:
        keys = [self.lock_key(k) for k in grants]
        try:
            ok = await self._renew(keys=keys, args=[_ms(ttl), *map(str, grants.values())])
        except RedisError as exc:
            raise LeaseUnavailable(
                f"cannot renew {list(grants)}: Redis is unreachable ({exc})", tuple(grants)
            ) from exc
        return bool(ok)

    async def release(self, key: str, grant: int) -> None:
        await self._release(
            keys=[self.lock_key(key), self.want_key(key)], args=[str(grant), self.channel(key)]
        )

    async def handoff(self, key: str, grant: int, ttl: float, streak: int) -> int:
        granted = await self._handoff(
            keys=[
                self.lock_key(key),
                self.fence_key(key),
                self.want_key(key),
                self.grant_key(key),
            ],
            args=[
                str(grant),
                _ms(ttl),
                streak,
                self.fairness,
                self.channel(key),
                self.identity,
                self.block,
            ],
        )
        return int(granted)

    async def wait_released(self, key: str) -> None:
        if not self.listening:  # no notifications: the caller's bounded retry only
            await anyio.sleep_forever()
        event = self.waiting.get(key)
        if event is None:
            event = self.waiting[key] = anyio.Event()
        await event.wait()

    def notify(self, key: str) -> None:
        event = self.waiting.pop(key, None)
        if event is not None:
            event.set()


class RedisLockProvider:
    """Leases in Redis, shared by every process that uses the same server and prefix.

    Use it as an async context manager, which runs its release listener (one pub/sub
    connection), typically for the lifetime of an application::

        async with RedisLockProvider.from_url("redis://localhost:6379/0") as locks:
            async with locks.lease("inventory:sku-1", ttl=5.0, wait=10.0) as lease:
                ...

    ``prefix`` namespaces every key and channel. ``fairness`` is how many times in a row a
    process may hand a key to its own next waiter while another process wants it.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "asaga:",
        fairness: int = 8,
        _owns_client: bool = False,
    ) -> None:
        self._backend = _RedisBackend(client, prefix, fairness)
        self._leases = Leases(self._backend, fairness=fairness)
        self._owns_client = _owns_client
        self._tg: anyio.abc.TaskGroup | None = None
        self.stale_writes = 0
        """Fenced writes this provider had rejected as stale."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisLockProvider:
        """A provider with its own client for ``url`` (``redis://``, ``rediss://``, with
        ACL user and password); the client is closed when the provider exits."""
        # A blocking pool: past max_connections, callers wait for a free connection
        # instead of failing (redis-py's default pool raises MaxConnectionsError).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=100, timeout=30, socket_connect_timeout=2.0
        )
        client = aioredis.Redis(connection_pool=pool)
        return cls(client, _owns_client=True, **options)

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the provider uses."""
        return self._backend.client

    async def __aenter__(self) -> Self:
        require_asyncio("RedisLockProvider", "MemoryLockProvider")
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            started = anyio.Event()
            tg.start_soon(self._listen, started, name="asaga lease notifications")
            await tg.start(self._leases.run_renewer, name="asaga lease renewals")
            with anyio.move_on_after(2.0):
                await started.wait()  # subscribed (or gave up: waits fall back to retries)
        except BaseException:
            # Interrupted while starting: stop the tasks and leave the task group properly.
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await tg.__aexit__(None, None, None)
            self._tg = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            # The body's exception is not handed to the task group (which would wrap it in
            # an ExceptionGroup): it propagates as it is once the background tasks stop.
            await self._tg.__aexit__(None, None, None)
            return None
        finally:
            self._tg = None
            self._backend.listening = False
            if self._owns_client:
                with anyio.CancelScope(shield=True):
                    await self._backend.client.aclose()
                    await self._backend.client.connection_pool.disconnect()

    def lease(
        self, *keys: str, ttl: float, wait: float | None = None
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold ``keys`` (sorted, all or nothing) for the body of the ``async with``.

        ``ttl`` (seconds, required) is how long the lease outlives a holder that stops
        renewing it (a crashed process); while held it is renewed every ``ttl / 3``.
        ``wait`` bounds the time to acquire (``LeaseTimeout``; default: no bound). If the
        lease is lost while held, the body is cancelled and ``LeaseLost`` raised. If Redis
        cannot be reached, ``LeaseUnavailable`` is raised at once.
        """
        return self._leases.lease(keys, ttl=ttl, wait=wait)

    async def fenced(
        self, lease: Lease, *commands: Sequence[Any], key: str | None = None
    ) -> list[Any]:
        """Run Redis write commands atomically, only if ``lease`` is still the newest.

        Each command is ``(name, redis_key, *args)``, e.g.
        ``("HINCRBY", "inv:{sku-1}", "reserved", 2)``. The check and the writes are one
        Lua script: if a newer lease on ``key`` (default: the lease's only key) has been
        granted since, nothing is written, the rejection is counted (in Redis and in
        :attr:`stale_writes`) and :class:`~asaga.locks.StaleWrite` is raised. Returns each
        command's reply.
        """
        key = lease.key if key is None else key
        backend = self._backend
        data_keys: list[str] = []
        args: list[Any] = [lease.tokens[key], len(commands)]
        for command in commands:
            name, redis_key, *rest = command
            if redis_key not in data_keys:
                data_keys.append(redis_key)
            args += [name, data_keys.index(redis_key) + 3, len(rest), *rest]
        # Shielded: once the script is sent, its reply is awaited even if the holder is
        # being cancelled (say, its lease was just found lost), so that the caller always
        # knows whether the write was applied; bounded, as Redis may not answer.
        with anyio.move_on_after(_FENCED_BOUND, shield=True) as bound:
            try:
                ok, payload = await backend.fenced(
                    keys=[backend.grant_key(key), backend.stale_key(key), *data_keys],
                    args=args,
                )
            except RedisError as exc:
                raise LeaseUnavailable(
                    f"fenced write on {key!r} failed: Redis is unreachable ({exc})", (key,)
                ) from exc
        if bound.cancelled_caught:
            raise LeaseUnavailable(
                f"fenced write on {key!r}: no reply within {_FENCED_BOUND:g} s; whether it "
                "was applied is unknown",
                (key,),
            )
        if not ok:
            self.stale_writes += 1
            raise StaleWrite(
                f"write under lease token {lease.tokens[key]} on {key!r} rejected: a newer "
                f"lease (tokens from {payload}) was granted since",
                (key,),
            )
        return list(payload)

    def fence_key(self, key: str) -> str:
        """The Redis key holding the first fencing token of ``key``'s newest grant, for
        Lua scripts that check a lease's token themselves: a write is current iff
        ``token >= GET fence_key`` (a missing key counts as 0)."""
        return self._backend.grant_key(key)

    def stale_key(self, key: str) -> str:
        """The Redis key counting stale writes on ``key`` (INCR it when refusing one)."""
        return self._backend.stale_key(key)

    async def stale_count(self, key: str) -> int:
        """Fenced writes rejected as stale on ``key``, across all processes."""
        value = await self._backend.client.get(self._backend.stale_key(key))
        return int(value or 0)

    async def _listen(self, started: anyio.Event) -> None:
        backend = self._backend

        def subscribed(on: bool) -> None:
            backend.listening = on
            started.set()  # subscribed, or gave up for now: waits fall back to retries

        await follow_pattern(
            backend.client,
            f"{backend.prefix}released:",
            backend.notify,
            subscribed=subscribed,
            lost="lease_notifications_lost",
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
