"""Redis leases: one key per lease with a TTL, a fencing counter, and release notifications.

Keys (``{key}`` is a hash tag, so each lease's keys share a cluster slot); every one of
them expires, so a key leased once leaves nothing behind for long::

    <prefix>lock:{key}     the holding process's grant (its first token), with the lease's
                           TTL; what fenced writes check: current iff held and the token
                           is of the grant's block (grant <= token < grant + MAX_FAIRNESS)
    <prefix>fence:{key}    the last token reserved, kept a minute after the last grant
    <prefix>want:{key}     set (for 2 s) by a process that found the key held, deleted
                           when that process gets the key
    <prefix>stale:{key}    count of fenced writes rejected as stale, kept a day
    channel <prefix>released:<key>   published on release when someone wants the key

Tokens follow the server's clock: a grant's first token is the larger of the counter's
next value and the server's ``TIME`` in microseconds. So they keep rising when the counter
is gone, whether it expired or Redis lost its data (a restart without persistence): a
grant made after that is still larger than any token granted before, and a holder from
before cannot write (its lock key is gone, and its token is not of the newer grant's
block: smaller, or larger by more than a block if the clock went back).

A grant is the process's, not one task's: the process hands the key from one of its tasks
to the next with the next token of the grant's block, without a round trip; every
``fairness`` holders a background task asks Redis to extend the block (and renew the
grant), which Redis refuses when another process wants the key: the block then runs out
and the key is released to that process (as when the TTL differs, or two thirds of it
are not left, the next holder goes to Redis). A holder that leaves with nobody queued
has the key re-granted, kept idle for the process's next lease until the next turn of
the event loop (see ``_lease``). Every state change is one Lua script
(atomic, keys and values passed as arguments, never interpolated, all checked before
the first write: Redis does not roll a script back). Waiting contenders
never poll on a fixed interval: one head per key and process waits for a release
notification (one pattern subscription per provider), with a fallback retry when the
holder's TTL runs out, bounded and jittered.

Redis Cluster (the client is a ``redis.asyncio.RedisCluster``): the keys are the same.
Each script but the renewal touches the keys of one lease key, which share the slot of
its ``{key}`` tag; a renewal of a lease on several keys runs one script per slot (a key
found lost loses the whole lease, whatever the other scripts renewed). ``PUBLISH`` reaches
every node over the cluster bus, so the pattern subscription is held on one primary.
The data keys of a fenced write must carry the lease key's tag.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import structlog
from redis.exceptions import NoScriptError, ResponseError

from .._redis import (
    LUA_CHECKS,
    REDIS_ERRORS,
    Client,
    check_cluster,
    client_from_url,
    close_client,
    follow_pattern,
    is_cluster,
    require_asyncio,
    slot,
    warn_without_persistence,
)
from ._lease import Lease, Leases, LeaseUnavailable, StaleWrite

__all__ = ["RedisLockProvider"]

_logger = structlog.get_logger("asaga")

MAX_FAIRNESS = 1000
"""The largest ``fairness``: a grant reserves ``fairness`` tokens, so every token of a grant
is below its first token + MAX_FAIRNESS (what fenced writes check), and tokens run ahead of
the server's clock by at most that many microseconds per grant."""


def _arguments(script: str) -> str:
    """Argument checks, run by every script before its first write (Redis does not roll a
    script back: one that fails half-way keeps what it wrote). A refusal is the error reply
    ``BAD_ARGUMENT <name> "<value>": <why> (asaga <script>: bad arguments)``, raised as
    ValueError (see _raise_refusal). Integers are matched as text first: Lua's
    ``tonumber`` reads ``nan``, ``inf``, ``0x10`` and padded strings. ``lease_keys``
    checks that KEYS are the named keys of one lease key (one prefix, one ``{key}`` tag)
    and returns the prefix and the lease key."""
    return _ARGUMENTS.replace("<script>", script)


_ARGUMENTS = (
    f"""
local SCRIPT = '<script>'
local MAX_FAIRNESS = {MAX_FAIRNESS}
local MAX_INT = 9007199254740991
local MAX_ID_LENGTH = 256
"""
    + LUA_CHECKS
    + """
local function id_arg(i, name)
  local s = ARGV[i]
  if type(s) ~= 'string' or #s == 0 or #s > MAX_ID_LENGTH then
    refuse(name, s, string.format('not 1 to %d bytes', MAX_ID_LENGTH))
  end
  return s
end
local function no_more(n)
  if #ARGV > n then refuse('arguments', #ARGV, string.format('more than %d', n)) end
end
local function lease_keys(kinds, exact)
  if #KEYS < #kinds or (exact and #KEYS > #kinds) then
    refuse('keys', #KEYS, 'not the keys ' .. table.concat(kinds, ', ') .. ' of a lease key')
  end
  local first, start = KEYS[1], 1
  while true do
    local at = string.find(first, kinds[1] .. ':{', start, true)
    if not at then break end
    local prefix, tag = string.sub(first, 1, at - 1), string.sub(first, at + #kinds[1] + 1)
    if string.sub(tag, -1) == '}' then
      local same = true
      for i = 2, #kinds do
        if KEYS[i] ~= prefix .. kinds[i] .. ':' .. tag then same = false end
      end
      if same then return prefix, string.sub(tag, 2, -2) end
    end
    start = at + 1
  end
  refuse('keys', first, 'not the keys ' .. table.concat(kinds, ', ') .. ' of one lease key')
end
local function channel_arg(i, prefix, key)
  if ARGV[i] ~= prefix .. 'released:' .. key then
    refuse('channel', ARGV[i], 'not the release channel of ' .. KEYS[1])
  end
end
"""
)

# A grant reserves a block of fencing tokens: its first token is the larger of the
# counter's next value and the server's clock in microseconds, and the counter (fence key)
# moves to the block's last token. The counter is kept until the clock has passed that
# token, and _FENCE_KEEP_MS beyond; after that the clock alone keeps tokens rising. The
# lock key holds the grant: a fenced write is current iff the key is held and its token
# is of the grant's block (handed on within this process), see _FENCED.
# Numbers stay below 2^53 (microseconds until the year 2255): exact in Lua's doubles.
_GRANT = """
local function grant(fence, lock, ttl_ms, block, keep_ms)
  local clock = redis.call('time')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local first = tonumber(redis.call('get', fence) or '0') + 1
  if first < now then first = now end
  local last = first + block - 1
  local keep = keep_ms + math.ceil((last - now) / 1000)
  redis.call('set', fence, string.format('%.0f', last), 'px', keep)
  redis.call('set', lock, string.format('%.0f', first), 'px', ttl_ms)
  return first
end
"""

# KEYS: lock, fence, want ; ARGV: ttl_ms, want_ms, identity, block, keep_ms
_ACQUIRE = (
    _arguments("acquire")
    + _GRANT
    + """
lease_keys({'lock', 'fence', 'want'}, true)
int_arg(1, 'ttl_ms', 1, MAX_INT)
int_arg(2, 'want_ms', 1, MAX_INT)
id_arg(3, 'identity')
int_arg(4, 'block', 1, MAX_FAIRNESS)
int_arg(5, 'keep_ms', 0, MAX_INT)
no_more(5)
local held = redis.call('pttl', KEYS[1])
if held == -2 then
  -- Served: this process's own mark of wanting the key goes (else every exit of this
  -- process would release the key for a want nobody has any more, until it expires).
  if redis.call('get', KEYS[3]) == ARGV[3] then redis.call('del', KEYS[3]) end
  return {grant(KEYS[2], KEYS[1], ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])), 0}
end
redis.call('set', KEYS[3], ARGV[3], 'px', ARGV[2])
if held < 0 then held = tonumber(ARGV[1]) end
return {0, held}
"""
)

# KEYS: lock keys ; ARGV: ttl_ms, grants...
_RENEW = (
    _arguments("renew")
    + """
int_arg(1, 'ttl_ms', 1, MAX_INT)
for i, key in ipairs(KEYS) do
  if not string.find(key, 'lock:{', 1, true) or string.sub(key, -1) ~= '}' then
    refuse('keys', key, 'not a lock key')
  end
  int_arg(i + 1, 'grant', 1, MAX_INT)
end
no_more(#KEYS + 1)
for i, key in ipairs(KEYS) do
  if redis.call('get', key) ~= ARGV[i + 1] then return 0 end
end
for _, key in ipairs(KEYS) do redis.call('pexpire', key, ARGV[1]) end
return 1
"""
)

# KEYS: lock, want ; ARGV: grant, channel
_RELEASE = (
    _arguments("release")
    + """
local prefix, key = lease_keys({'lock', 'want'}, true)
int_arg(1, 'grant', 1, MAX_INT)
channel_arg(2, prefix, key)
no_more(2)
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  if redis.call('exists', KEYS[2]) == 1 then redis.call('publish', ARGV[2], '1') end
  return 1
end
return 0
"""
)

# KEYS: lock, fence, want
# ARGV: grant, ttl_ms, streak, cap, channel, identity, block, keep_ms
_HANDOFF = (
    _arguments("handoff")
    + _GRANT
    + """
local prefix, key = lease_keys({'lock', 'fence', 'want'}, true)
int_arg(1, 'grant', 1, MAX_INT)
int_arg(2, 'ttl_ms', 1, MAX_INT)
int_arg(3, 'streak', 0, MAX_INT)
int_arg(4, 'cap', 1, MAX_FAIRNESS)
channel_arg(5, prefix, key)
id_arg(6, 'identity')
int_arg(7, 'block', 1, MAX_FAIRNESS)
int_arg(8, 'keep_ms', 0, MAX_INT)
no_more(8)
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
local wanted_by = redis.call('get', KEYS[3])
if tonumber(ARGV[3]) >= tonumber(ARGV[4]) and wanted_by and wanted_by ~= ARGV[6] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[5], '1')
  return -1
end
return grant(KEYS[2], KEYS[1], ARGV[2], tonumber(ARGV[7]), tonumber(ARGV[8]))
"""
)

# KEYS: lock, fence, want ; ARGV: grant, end, block, ttl_ms, identity, max fairness, keep_ms
# The grant's tokens below `end` are reserved: reserve `block` more, up to grant + max
# fairness - 1 (the last token fenced writes accept), and renew the lock key to at least
# ttl_ms, unless another process wants the key. The counter moves to the block's last
# token (it never goes back) and is kept as a grant keeps it. Returns the new end, or 0.
_EXTEND = (
    _arguments("extend")
    + """
lease_keys({'lock', 'fence', 'want'}, true)
local grant = int_arg(1, 'grant', 1, MAX_INT)
local ends = int_arg(2, 'end', 1, MAX_INT)
if ends <= grant then refuse('end', ARGV[2], 'not above the grant ' .. ARGV[1]) end
local block = int_arg(3, 'block', 1, MAX_FAIRNESS)
local ttl_ms = int_arg(4, 'ttl_ms', 1, MAX_INT)
id_arg(5, 'identity')
local cap = int_arg(6, 'cap', 1, MAX_FAIRNESS)
local keep_ms = int_arg(7, 'keep_ms', 0, MAX_INT)
no_more(7)
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
local wanted_by = redis.call('get', KEYS[3])
if wanted_by and wanted_by ~= ARGV[5] then return 0 end
local last = ends + block - 1
if last >= grant + cap then return 0 end
local counter = tonumber(redis.call('get', KEYS[2]) or '0')
if counter > last then last = counter end
local clock = redis.call('time')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local keep = keep_ms + math.max(0, math.ceil((last - now) / 1000))
redis.call('set', KEYS[2], string.format('%.0f', last), 'px', keep)
if redis.call('pttl', KEYS[1]) < ttl_ms then redis.call('pexpire', KEYS[1], ttl_ms) end
return ends + block
"""
)

# KEYS: lock, stale, data keys...
# ARGV: token, stale_ms, max fairness, n commands, then per command:
#   name, index of its key in KEYS, number of arguments, arguments...
# Current iff the key is held and the token is one of its grant's block: grant <= token <
# grant + max fairness. The upper bound refuses a token from a grant made before a data
# loss by a server whose clock was ahead (a failover, a clock stepped back): `>=` alone
# would take it for a newer one.
# Refused: {0, the holder's grant, or '' if nobody holds the key}.
_FENCED = (
    _arguments("fenced")
    + """
lease_keys({'lock', 'stale'}, false)
local token = int_arg(1, 'token', 0, MAX_INT)
int_arg(2, 'stale_ms', 1, MAX_INT)
local cap = int_arg(3, 'cap', 1, MAX_FAIRNESS)
local count = int_arg(4, 'commands', 0, #ARGV)
local at = 5
for _ = 1, count do
  id_arg(at, 'command')
  int_arg(at + 1, 'key_index', 3, #KEYS)
  local n = int_arg(at + 2, 'argument_count', 0, #ARGV - at - 2)
  at = at + 3 + n
end
no_more(at - 1)
local held = redis.call('get', KEYS[1])
if not held or token < tonumber(held) or token >= tonumber(held) + cap then
  redis.call('incr', KEYS[2])
  redis.call('pexpire', KEYS[2], ARGV[2])
  return {0, held or ''}
end
local results = {}
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local n = tonumber(ARGV[i + 2])
  local call = {ARGV[i], KEYS[tonumber(ARGV[i + 1])]}
  for j = 1, n do call[#call + 1] = ARGV[i + 2 + j] end
  results[#results + 1] = redis.call(unpack(call))
  i = i + 3 + n
end
return {1, results}
"""
)

_FENCE_KEEP_MS = 60_000
"""How long the fencing counter outlives the clock's passing its last token: within that
window, tokens keep rising even if the server's clock steps back."""

_STALE_KEEP_MS = 86_400_000  # a stale-write counter lives a day after its last count

_FENCED_BOUND = 10.0  # seconds a fenced write waits for its reply, shielded

_WANT_MS = 2000  # how long a failed attempt marks the key as wanted by another process


class _RedisBackend:
    def __init__(self, client: Client, prefix: str, fairness: int) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.identity = uuid.uuid4().hex  # marks the keys this provider wants
        self.prefix = prefix
        self.fairness = fairness
        # Tokens per grant: the holders a grant serves before the process asks Redis again
        # (every `fairness` holders). No more: a grant's block runs ahead of the clock its
        # tokens follow, and small blocks keep the tokens within microseconds of it.
        self.block = fairness
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._handoff = client.register_script(_HANDOFF)
        self._extend = client.register_script(_EXTEND)
        self.fenced = client.register_script(_FENCED)
        self.waiting: dict[str, anyio.Event] = {}
        self.listening = False

    def lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{{{key}}}"

    def fence_key(self, key: str) -> str:
        return f"{self.prefix}fence:{{{key}}}"

    def want_key(self, key: str) -> str:
        return f"{self.prefix}want:{{{key}}}"

    def stale_key(self, key: str) -> str:
        return f"{self.prefix}stale:{{{key}}}"

    def channel(self, key: str) -> str:
        return f"{self.prefix}released:{key}"

    async def try_acquire(self, key: str, ttl: float) -> tuple[int, float]:
        if self.cluster and key.startswith("}"):
            # Its keys' tag `{}` would be empty: each key would hash whole, to its own slot.
            raise ValueError(f"on Redis Cluster a lease key may not start with '}}': {key!r}")
        try:
            token, held_ms = await self._acquire(
                keys=[self.lock_key(key), self.fence_key(key), self.want_key(key)],
                args=[_ms(ttl), _WANT_MS, self.identity, self.block, _FENCE_KEEP_MS],
            )
        except REDIS_ERRORS as exc:
            _raise_refusal(exc)
            raise LeaseUnavailable(
                f"cannot acquire {key!r}: Redis is unreachable ({exc})", (key,)
            ) from exc
        return int(token), int(held_ms) / 1000

    async def renew(self, grants: Mapping[str, int], ttl: float) -> bool:
        # One script for every key; on a cluster, one per slot (the lease is lost if any
        # key is: keys renewed by the other scripts are released with the lease).
        groups: dict[int, dict[str, int]] = {}
        for key, grant in grants.items():
            groups.setdefault(slot(self.lock_key(key)) if self.cluster else 0, {})[key] = grant
        for group in groups.values():
            keys = [self.lock_key(k) for k in group]
            try:
                ok = await self._renew(keys=keys, args=[_ms(ttl), *map(str, group.values())])
            except REDIS_ERRORS as exc:
                _raise_refusal(exc)
                raise LeaseUnavailable(
                    f"cannot renew {list(grants)}: Redis is unreachable ({exc})", tuple(grants)
                ) from exc
            if not ok:
                return False
        return True

    async def release(self, key: str, grant: int) -> None:
        try:
            await self._release(
                keys=[self.lock_key(key), self.want_key(key)],
                args=[str(grant), self.channel(key)],
            )
        except ResponseError as exc:
            _raise_refusal(exc)
            raise

    async def handoff(self, key: str, grant: int, ttl: float, streak: int) -> int:
        try:
            granted = await self._handoff(
                keys=[self.lock_key(key), self.fence_key(key), self.want_key(key)],
                args=[
                    str(grant),
                    _ms(ttl),
                    streak,
                    self.fairness,
                    self.channel(key),
                    self.identity,
                    self.block,
                    _FENCE_KEEP_MS,
                ],
            )
        except REDIS_ERRORS as exc:
            _raise_refusal(exc)
            raise LeaseUnavailable(
                f"cannot acquire {key!r}: Redis is unreachable ({exc})", (key,)
            ) from exc
        return int(granted)

    async def extend(self, key: str, grant: int, end: int, ttl: float) -> int:
        try:
            extended = await self._extend(
                keys=[self.lock_key(key), self.fence_key(key), self.want_key(key)],
                args=[
                    str(grant),
                    str(end),
                    self.block,
                    _ms(ttl),
                    self.identity,
                    MAX_FAIRNESS,
                    _FENCE_KEEP_MS,
                ],
            )
        except ResponseError as exc:
            _raise_refusal(exc)
            raise
        return int(extended)

    async def run_fenced(self, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA straight away (the hot path of every fenced write); the script object
        # loads the script when the server does not know it yet.
        try:
            return await self.client.evalsha(self.fenced.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.fenced(keys=keys, args=args)

    async def wait_released(self, key: str) -> None:
        if not self.listening:  # no notifications: the caller's bounded retry only
            await anyio.sleep_forever()
        event = self.waiting.get(key)
        if event is None:
            event = self.waiting[key] = anyio.Event()
        try:
            await event.wait()
        finally:
            # One head per key and process waits: once it leaves (woken, timed out or
            # cancelled), nothing of the key stays behind.
            if self.waiting.get(key) is event:
                del self.waiting[key]

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

    ``prefix`` namespaces every key and channel. ``fairness`` (1 to :data:`MAX_FAIRNESS`)
    is how many times in a row a process may hand a key to its own next waiter while
    another process wants it.

    ``client`` is a ``redis.asyncio.Redis`` (one server, or Sentinel) or a
    ``redis.asyncio.RedisCluster`` (see docs/locks.md, "Redis Cluster"; the prefix may
    then hold no brace).
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "asaga:",
        fairness: int = 8,
        _owns_client: bool = False,
    ) -> None:
        if (
            isinstance(fairness, bool)
            or not isinstance(fairness, int)
            or not 1 <= fairness <= MAX_FAIRNESS
        ):
            raise ValueError(f"fairness must be an int from 1 to {MAX_FAIRNESS}, got {fairness!r}")
        if is_cluster(client):
            check_cluster(client, prefix, "RedisLockProvider")
        self._backend = _RedisBackend(client, prefix, fairness)
        self._leases = Leases(self._backend, fairness=fairness)
        self._owns_client = _owns_client
        self._tg: anyio.abc.TaskGroup | None = None
        self._persistence_checked = False  # warned (once per provider) if Redis keeps no AOF
        self.stale_writes = 0
        """Fenced writes this provider had rejected as stale."""

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisLockProvider:
        """A provider with its own client for ``url`` (``redis://``, ``rediss://``, with
        ACL user and password); the client is closed when the provider exits. With
        ``cluster=True`` the URL names a node of a Redis Cluster (the others are
        discovered) and the client is a ``redis.asyncio.RedisCluster``."""
        # One server: a blocking pool of 100 (past it, callers wait for a free connection
        # instead of failing, as redis-py's default pool would).
        client = client_from_url(url, cluster=cluster, max_connections=100)
        return cls(client, _owns_client=True, **options)

    @property
    def client(self) -> Client:
        """The Redis client the provider uses."""
        return self._backend.client

    async def __aenter__(self) -> Self:
        require_asyncio("RedisLockProvider", "MemoryLockProvider")
        if not self._persistence_checked:
            self._persistence_checked = True
            await warn_without_persistence(self.client, "RedisLockProvider")
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
                    await close_client(self._backend.client)

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
        """Run Redis write commands atomically, only if ``lease`` still holds the key.

        Each command is ``(name, redis_key, *args)``, e.g.
        ``("HINCRBY", "inv:{sku-1}", "reserved", 2)``. The check and the writes are one
        Lua script: if a newer lease on ``key`` (default: the lease's only key) has been
        granted since, or the lease no longer holds it (expired, released, or lost with
        Redis's data), nothing is written, the rejection is counted (in Redis and in
        :attr:`stale_writes`) and :class:`~asaga.locks.StaleWrite` is raised. Returns each
        command's reply.

        A command Redis refuses (unknown, ``WRONGTYPE``, a bad argument) raises its
        ``ResponseError``; the commands before it in the call stay applied, as Redis
        does not roll a script back. ``ValueError`` for a key the lease does not hold or a
        command that is not ``(name, redis_key, *args)``, and on Redis Cluster for a data
        key outside the lease key's slot (give it the hash tag ``{key}``).
        """
        key = lease.key if key is None else key
        if key not in lease.tokens:
            raise ValueError(f"fenced(): the lease holds {list(lease.keys)}, not {key!r}")
        backend = self._backend
        data_keys: list[str] = []
        # A lease that has ended writes nothing, even while the process's grant still
        # holds the key for a later holder of this process (token 0 is refused, and
        # counted, by Redis).
        token = 0 if lease.ended else lease.tokens[key]
        args: list[Any] = [token, _STALE_KEEP_MS, MAX_FAIRNESS, len(commands)]
        for command in commands:
            if isinstance(command, str | bytes) or len(command) < 2:
                raise ValueError(
                    f"fenced(): each command is (name, redis_key, *args), got {command!r}"
                )
            name, redis_key, *rest = command
            if redis_key not in data_keys:
                data_keys.append(redis_key)
            args += [name, data_keys.index(redis_key) + 3, len(rest), *rest]
        if backend.cluster:
            lock_slot = slot(backend.lock_key(key))
            for redis_key in data_keys:
                if slot(redis_key) != lock_slot:
                    raise ValueError(
                        f"fenced(): on Redis Cluster, {redis_key!r} is not in the slot of "
                        f"the lease key {key!r}: give it the hash tag {{{key}}}"
                    )
        # Shielded: once the script is sent, its reply is awaited even if the holder is
        # being cancelled (say, its lease was just found lost), so that the caller always
        # knows whether the write was applied; bounded, as Redis may not answer.
        with anyio.move_on_after(_FENCED_BOUND, shield=True) as bound:
            try:
                ok, payload = await backend.run_fenced(
                    [backend.lock_key(key), backend.stale_key(key), *data_keys], args
                )
            except ResponseError as exc:
                _raise_refusal(exc)
                if type(exc) is not ResponseError:  # READONLY, OOM, NOPERM...: the server's
                    raise LeaseUnavailable(
                        f"fenced write on {key!r} failed: Redis refused it ({exc})", (key,)
                    ) from exc
                # A command of the call failed (unknown command, WRONGTYPE, bad argument):
                # the caller's mistake, not the server's; raised as Redis replied.
                exc.add_note(
                    f"fenced write on {key!r}: a command was refused; the commands before it "
                    "were applied (Redis does not roll a script back)"
                )
                raise
            except REDIS_ERRORS as exc:
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
            if not token:
                why = "the lease has ended"
            elif payload:
                why = f"another grant (tokens from {int(payload)}) holds the key"
            else:
                why = "the lease is no longer held"
            raise StaleWrite(
                f"write under lease token {lease.tokens[key]} on {key!r} rejected: {why}",
                (key,),
                token=lease.tokens[key],
            )
        return list(payload)

    def fence_key(self, key: str) -> str:
        """The Redis key holding the first fencing token of the grant that holds ``key``,
        for Lua scripts that check a lease's token themselves: a write is current iff the
        key exists and ``0 <= token - GET fence_key < MAX_FAIRNESS`` (the grant's block).
        A missing key means stale: nobody holds ``key`` (the lease expired, or Redis lost
        its data)."""
        return self._backend.lock_key(key)

    def stale_key(self, key: str) -> str:
        """The Redis key counting stale writes on ``key``: INCR it when refusing one, and
        give it a TTL (PEXPIRE; the provider keeps it a day), as every key under the
        prefix has."""
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


def _raise_refusal(exc: Exception) -> None:
    """Raise ValueError if ``exc`` is a script's refusal of an argument (``BAD_ARGUMENT
    <name> "<value>": <why>``, replied before the script's first write)."""
    message = str(exc)
    if isinstance(exc, ResponseError) and message.startswith("BAD_ARGUMENT "):
        detail = message.removeprefix("BAD_ARGUMENT ").split(" script: ", 1)[0]
        raise ValueError(f"refused by the lease script: {detail}") from None


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
