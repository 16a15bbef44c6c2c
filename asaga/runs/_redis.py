"""Durable-run records in Redis, shared by every process of a service.

Keys (``<p>`` is the store's prefix)::

    <p>run:<run_id>          hash: record (the encoded RunRecord), status, owner, saga
    <p>events:<run_id>       list: the run's encoded events, in order
    <p>runs:running          sorted set: unfinished runs (score: creation time)
    <p>runs:index            sorted set: every recorded run (score: creation time)
    <p>runs:quarantine       sorted set: unfinished runs set aside by recovery (score: when)
    <p>key:<saga>:<key>      the run an idempotency key names (expires with the window)
    <p>owner:<owner>         the owner lease of one store object (one per process)
    <p>waiting:<run_id>      set (briefly) while a process waits for the run to finish
    channel <p>finished:<run_id>     published when a waited-for run finishes

Each write is one Lua script that checks the run is still owned by this store (a process
that lost its lease cannot overwrite the record of the process that recovered its runs)
and applies the record, status and events at once; a finished run is dropped from the
running set and expires after ``retention``. Scripts take keys and values as arguments,
never interpolated text. Concurrent writes (of one run or of many) are sent together: one
writer task per store drains what is queued into one pipeline, so a transition costs at
most one round trip, often a share of one.

A run whose record recovery cannot drive (it does not decode, is foreign, or does not fit
the saga) is quarantined: out of the running set, into ``runs:quarantine`` with the
reason in its hash, its keys expiring after ``retention``; the quarantine set is trimmed
to that retention and to ``_MAX_QUARANTINED`` entries. ``readmit`` puts it back.

One lease per store object says its owner is alive: ``<p>owner:<owner>``, set with a TTL
and renewed every ``owner_ttl / 3`` by a task of the store. Recovery takes over the
unfinished runs of owners whose lease has expired, one script per run, so exactly one
recoverer wins each.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import msgspec
import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .._exceptions import (
    CorruptRecord,
    RunNotFound,
    RunRecordLost,
    RunStoreError,
    RunTakenOver,
    StoreUnavailable,
)
from .._redis import follow_pattern, require_asyncio, warn_without_persistence
from ._record import (
    FINISHED,
    Claim,
    Quarantined,
    RunRecord,
    Write,
    check_identity,
    decode_event,
    decode_record,
)
from ._settings import StoreSettings

__all__ = ["RedisRunStore"]

_logger = structlog.get_logger("asaga")

# KEYS: run, events, running, index[, key] ; ARGV: run_id, record, status, owner, saga,
#   now, window_ms, version, nonce, run key prefix, seq, events...
# Returns nil when created (or when this very creation is sent again), else the id of the
# run that holds the idempotency key. A key whose run was cancelled, or whose record is
# gone, is taken over: a cancelled run did nothing that stays.
_CREATE = """
if #KEYS == 5 then
  local holder = redis.call('get', KEYS[5])
  if holder and holder ~= ARGV[1] then
    local held = redis.call('hget', ARGV[10] .. holder, 'status')
    if held and held ~= 'cancelled' then return holder end
  end
end
if redis.call('exists', KEYS[1]) == 1 then
  if redis.call('hget', KEYS[1], 'nonce') == ARGV[9] then return false end
  return redis.error_reply('ERR asaga: run ' .. ARGV[1] .. ' is already recorded')
end
if #KEYS == 5 then redis.call('set', KEYS[5], ARGV[1], 'px', ARGV[7]) end
redis.call('hset', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'owner', ARGV[4],
           'saga', ARGV[5], 'version', ARGV[8], 'nonce', ARGV[9], 'seq', ARGV[11])
redis.call('zadd', KEYS[3], ARGV[6], ARGV[1])
redis.call('zadd', KEYS[4], ARGV[6], ARGV[1])
if #ARGV >= 12 then redis.call('rpush', KEYS[2], unpack(ARGV, 12)) end
return false
"""

# KEYS: run, events, running, index, waiting ; ARGV: run_id, record, status, owner, final,
#   retention_ms, cutoff, channel, seq, events...
# Returns 0 if another owner has the run, 3 if its record is gone (Redis lost writes), 2 if
# a newer write of this run landed already (this one, sent late, is dropped), 1 when applied.
_WRITE = """
if redis.call('exists', KEYS[1]) == 0 then return 3 end
if redis.call('hget', KEYS[1], 'owner') ~= ARGV[4] then return 0 end
if tonumber(redis.call('hget', KEYS[1], 'seq') or '0') >= tonumber(ARGV[9]) then return 2 end
redis.call('hset', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'seq', ARGV[9])
if #ARGV >= 10 then redis.call('rpush', KEYS[2], unpack(ARGV, 10)) end
if ARGV[5] == '1' then
  redis.call('zrem', KEYS[3], ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[6])
  redis.call('pexpire', KEYS[2], ARGV[6])
  redis.call('zremrangebyscore', KEYS[4], '-inf', ARGV[7])
  if redis.call('exists', KEYS[5]) == 1 then redis.call('publish', ARGV[8], ARGV[3]) end
else
  -- unfinished: findable by recovery (a late final write may have taken it out)
  redis.call('persist', KEYS[1])
  redis.call('persist', KEYS[2])
  redis.call('zadd', KEYS[3], 'NX', tonumber(ARGV[7]) + tonumber(ARGV[6]) / 1000, ARGV[1])
end
return 1
"""

# KEYS: run, lease of the old owner ; ARGV: old owner, new owner
_CLAIM = """
if redis.call('hget', KEYS[1], 'owner') ~= ARGV[1] then return false end
local status = redis.call('hget', KEYS[1], 'status')
if status ~= 'running' and status ~= 'compensating' and status ~= 'undoing' then
  return false
end
if redis.call('exists', KEYS[2]) == 1 then return false end
redis.call('hset', KEYS[1], 'owner', ARGV[2])
return redis.call('hmget', KEYS[1], 'record', 'status', 'saga', 'version')
"""

# KEYS: run, events, running, quarantine ; ARGV: run_id, owner, reason, now, retention_ms,
#   cutoff, most kept
_QUARANTINE = """
local ttl, most = tonumber(ARGV[5]), tonumber(ARGV[7])
if not (tonumber(ARGV[4]) and tonumber(ARGV[6]) and ttl and most) or ttl < 1 or most < 0 then
  return redis.error_reply('ERR asaga quarantine: now, retention_ms, cutoff, most kept')
end
if redis.call('hget', KEYS[1], 'owner') ~= ARGV[2] then return false end
local score = redis.call('zscore', KEYS[3], ARGV[1]) or ARGV[4]
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('hset', KEYS[1], 'owner', 'quarantine', 'quarantined', ARGV[3],
           'quarantined_at', ARGV[4], 'quarantined_by', ARGV[2], 'running_score', score)
redis.call('pexpire', KEYS[1], ARGV[5])
redis.call('pexpire', KEYS[2], ARGV[5])
redis.call('zadd', KEYS[4], ARGV[4], ARGV[1])
redis.call('zremrangebyscore', KEYS[4], '-inf', ARGV[6])
local extra = redis.call('zcard', KEYS[4]) - most
if extra > 0 then redis.call('zremrangebyrank', KEYS[4], 0, extra - 1) end
return {redis.call('hget', KEYS[1], 'saga') or ''}
"""

# KEYS: run, events, running, quarantine ; ARGV: run_id
# The run keeps the owner 'quarantine', which never holds a lease: the next sweep takes it.
# Everything is read before the first write: a run whose record expired only loses its
# dangling entry; one without its running score goes back at the head of the running set.
_READMIT = """
if not redis.call('zscore', KEYS[4], ARGV[1]) then return 0 end
if redis.call('hexists', KEYS[1], 'quarantined') == 0 then
  redis.call('zrem', KEYS[4], ARGV[1])
  return 0
end
local score = tonumber(redis.call('hget', KEYS[1], 'running_score')) or 0
redis.call('zrem', KEYS[4], ARGV[1])
redis.call('hdel', KEYS[1], 'quarantined', 'quarantined_at', 'quarantined_by', 'running_score')
redis.call('persist', KEYS[1])
redis.call('persist', KEYS[2])
redis.call('zadd', KEYS[3], score, ARGV[1])
return 1
"""

# KEYS: run, events, running, lease of the current owner ; ARGV: status seen, owner seen,
#   new owner, now, run_id
_CLAIM_UNDO = """
local status = redis.call('hget', KEYS[1], 'status')
if status ~= ARGV[1] or redis.call('hget', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
if status == 'undoing' and redis.call('exists', KEYS[4]) == 1 then return 0 end
if status ~= 'succeeded' and status ~= 'undoing' then return 0 end
redis.call('hset', KEYS[1], 'status', 'undoing', 'owner', ARGV[3])
redis.call('persist', KEYS[1])
redis.call('persist', KEYS[2])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[5])
return 1
"""

# KEYS: key ; ARGV: run_id
_RELEASE_KEY = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 1
"""

_SCRIPTS = {"create": _CREATE, "write": _WRITE}
_SHAS = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _SCRIPTS.items()}

_MAX_BATCH = 256  # writes sent in one pipeline at most
_MAX_QUARANTINED = 10_000  # runs kept in the quarantine set at most (the oldest go first)


@dataclass(slots=True, eq=False)
class _Op:
    """One queued script call, and where its reply goes."""

    script: str
    keys: list[str]
    args: list[Any]
    run_id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Any = None
    error: BaseException | None = None


class RedisRunStore(StoreSettings):
    """Records of durable runs in Redis, shared by the processes of a service.

    Use it as an async context manager, which runs its owner lease, its writer and its
    notification listener, typically for the lifetime of an application::

        async with RedisRunStore.from_url("redis://localhost:6379/0") as runs:
            result = await Checkout.run(order_id="o-1", runs=runs, idempotency_key="k-1")

    - ``prefix`` namespaces every key and channel;
    - ``owner_ttl``: seconds after which the runs of a process that stopped renewing its
      lease (it crashed) may be recovered by another;
    - ``retention``: seconds a finished run's record is kept;
    - ``idempotency_window``: seconds an idempotency key keeps naming its run;
    - ``max_record_bytes``: the largest encoded record accepted (``RecordTooLarge``);
    - ``write_timeout``: seconds a write keeps retrying while Redis cannot be reached
      before the run fails with ``StoreUnavailable``;
    - ``recheck``: seconds between checks of a run that is waited for, when its finish
      was not notified (a missed message, a crashed owner).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "asaga:",
        owner_ttl: float = 10.0,
        retention: float = 7 * 24 * 3600.0,
        idempotency_window: float = 24 * 3600.0,
        max_record_bytes: int = 1 << 20,
        write_timeout: float = 5.0,
        recheck: float = 1.0,
        _owns_client: bool = False,
    ) -> None:
        super().__init__(
            f"{socket.gethostname()}-{os.getpid()}-{os.urandom(6).hex()}",
            retention=retention,
            idempotency_window=idempotency_window,
            max_record_bytes=max_record_bytes,
        )
        if not owner_ttl > 0 or not write_timeout > 0 or not recheck > 0:
            raise ValueError("owner_ttl, write_timeout and recheck must be > 0 seconds")
        self.client = client
        """The Redis client the store uses."""
        self.prefix = prefix
        self.owner_ttl = owner_ttl
        self.write_timeout = write_timeout
        self.recheck = recheck
        self._owns_client = _owns_client
        self._tg: anyio.abc.TaskGroup | None = None
        self._queue: deque[_Op] = deque()  # writes waiting for the writer task
        self._open = False
        self._busy = False  # a batch is being sent (by the writer or by a lone writer)
        self._wakeup = anyio.Event()
        self._drained = anyio.Event()
        self._waiting: dict[str, anyio.Event] = {}
        self._unsent: dict[str, Write] = {}  # a run's newest write that failed: sent again
        self.round_trips = 0
        """Pipelines the writer has sent (each one round trip, carrying one or more
        writes): for measuring what durability costs."""
        self._claim = client.register_script(_CLAIM)
        self._claim_undo = client.register_script(_CLAIM_UNDO)
        self._quarantine = client.register_script(_QUARANTINE)
        self._readmit = client.register_script(_READMIT)
        self._persistence_checked = False
        self._release_key = client.register_script(_RELEASE_KEY)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisRunStore:
        """A store with its own client for ``url`` (``redis://``, ``rediss://`` for TLS,
        with an ACL user and password: ``redis://user:secret@host:6379/0``); the client
        is closed when the store exits."""
        # No socket timeout: redis-py would wrap every command in a task of its own to
        # enforce it; the store bounds its writes itself (write_timeout).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=50, timeout=30, socket_connect_timeout=2.0, socket_timeout=None
        )
        return cls(aioredis.Redis(connection_pool=pool), _owns_client=True, **options)

    # -- keys ----------------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def _events_key(self, run_id: str) -> str:
        return f"{self.prefix}events:{run_id}"

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def _idempotency_key(self, claim: Claim) -> str:
        return f"{self.prefix}key:{claim.saga}:{claim.key}"

    @property
    def _running(self) -> str:
        return f"{self.prefix}runs:running"

    @property
    def _index(self) -> str:
        return f"{self.prefix}runs:index"

    @property
    def _quarantined(self) -> str:
        return f"{self.prefix}runs:quarantine"

    # -- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        require_asyncio("RedisRunStore", "MemoryRunStore")
        try:
            await self._beat()  # the lease exists before any run is recorded
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"the run store cannot reach Redis: {exc!r}") from exc
        if not self._persistence_checked:
            self._persistence_checked = True
            await warn_without_persistence(self.client, "RedisRunStore")
        self._queue.clear()
        self._open = True
        self._drained = anyio.Event()
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._writer, name="asaga run store writer")
        tg.start_soon(self._heartbeat, name="asaga run store lease")
        tg.start_soon(self._listen, name="asaga run store notifications")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._open = False  # the writer sends what is queued, then returns
        self._wakeup.set()
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.write_timeout + 1):
                await self._drained.wait()
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                # Runs still unfinished now were abandoned: recoverable at once (if Redis
                # cannot be reached, the lease expires by itself).
                with contextlib.suppress(RedisError):
                    await self.client.delete(self._owner_key(self._owner))
                if self._owns_client:
                    await self.client.aclose()
                    await self.client.connection_pool.disconnect()

    async def _beat(self) -> None:
        with anyio.fail_after(max(self.owner_ttl / 3, 0.1)):
            await self.client.set(
                self._owner_key(self._owner), "1", px=max(1, round(self.owner_ttl * 1000))
            )

    async def _heartbeat(self) -> None:
        """Renew the owner lease; send again the writes Redis could not take."""
        interval = self.owner_ttl / 3
        while True:
            await anyio.sleep(interval)
            try:
                await self._beat()
            except (RedisError, OSError, TimeoutError) as exc:
                _logger.warning("run_store_lease_not_renewed", error=repr(exc))
                continue
            for write in list(self._unsent.values()):
                try:
                    await self.write(write)
                except (RunTakenOver, RunRecordLost):
                    self._unsent.pop(write.run_id, None)
                except StoreUnavailable:
                    break  # next time
                except RunStoreError as exc:  # refused (READONLY after a failover, OOM...)
                    _logger.warning("run_not_recorded", run_id=write.run_id, error=repr(exc))

    # -- writing -------------------------------------------------------------------------

    async def create(self, write: Write, claim: Claim | None) -> str | None:
        """Record a new run; the id of the run holding ``claim``'s key instead, if any."""
        keys = [
            self._run_key(write.run_id),
            self._events_key(write.run_id),
            self._running,
            self._index,
        ]
        window = 0
        if claim is not None:
            keys.append(self._idempotency_key(claim))
            window = max(1, round(claim.window * 1000))
        record = decode_record(write.record, write.run_id)
        args: list[Any] = [
            write.run_id,
            write.record,
            write.status,
            self._owner,
            record.saga,
            time.time(),
            window,
            record.saga_version,
            write.nonce,
            f"{self.prefix}run:",
            write.seq,
            *write.events,
        ]
        reply = await self._submit("create", keys, args, write.run_id)
        if reply is None:
            return None
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def write(self, write: Write) -> None:
        """Record a transition of a run this store owns (``RunTakenOver`` otherwise)."""
        keys = [
            self._run_key(write.run_id),
            self._events_key(write.run_id),
            self._running,
            self._index,
            f"{self.prefix}waiting:{write.run_id}",
        ]
        args: list[Any] = [
            write.run_id,
            write.record,
            write.status,
            self._owner,
            "1" if write.final else "0",
            max(1, round(self.retention * 1000)),
            time.time() - self.retention,
            f"{self.prefix}finished:{write.run_id}",
            write.seq,
            *write.events,
        ]
        kept = self._unsent.get(write.run_id)
        if kept is not None and kept.seq < write.seq:
            del self._unsent[write.run_id]  # this write carries a newer state
        try:
            applied = await self._submit("write", keys, args, write.run_id)
        except StoreUnavailable:
            kept = self._unsent.get(write.run_id)
            if kept is None or kept.seq < write.seq:
                # The newest state of the run that Redis may not have: sent again while
                # the store is open, so that no run stays behind (a "running" record)
                # once Redis answers; an older write that lands late is refused by seq.
                self._unsent[write.run_id] = write
            raise
        kept = self._unsent.get(write.run_id)
        if kept is not None and kept.seq <= write.seq:
            del self._unsent[write.run_id]  # this write, or a newer one, landed
        if applied == 3:
            raise RunRecordLost(
                f"the record of run {write.run_id} is gone from Redis (it lost writes: a "
                "restart without persistence, a snapshot rollback, or a failover to a "
                "replica that lacked them); this process unwinds the run itself",
                write.run_id,
            )
        if not applied:
            raise RunTakenOver(
                f"run {write.run_id} was taken over by another process (this process's "
                "lease had expired); it finishes or compensates the run",
                write.run_id,
            )

    async def _submit(self, script: str, keys: list[str], args: list[Any], run_id: str) -> Any:
        if not self._open:
            raise RuntimeError(
                "the RedisRunStore is not open: use it as `async with RedisRunStore(...) "
                "as runs:` around the runs that use it"
            )
        op = _Op(script, keys, args, run_id)
        if self._busy or self._queue:
            # Wait for the writer, which sends this with whatever else is waiting.
            self._queue.append(op)
            self._wakeup.set()
            await op.done.wait()
        else:
            # Nothing in flight: send it at once from this task (no hand-off to the
            # writer); writes that arrive meanwhile queue behind it, in order.
            self._busy = True
            try:
                with anyio.CancelScope(shield=True):
                    await self._flush([op])
            finally:
                self._busy = False
                if self._queue:
                    self._wakeup.set()
        if op.error is not None:
            if isinstance(op.error, RunStoreError):
                raise op.error
            why = (
                f"Redis did not answer within {self.write_timeout:g} s (the store's write_timeout)"
                if isinstance(op.error, TimeoutError)
                else repr(op.error)
            )
            raise StoreUnavailable(
                f"run {run_id} could not be recorded: {why}", run_id
            ) from op.error
        return op.reply

    async def _writer(self) -> None:
        """Send queued writes, as many as are waiting, in one pipeline at a time; one batch
        in flight at a time (so a run's writes land in the order they were made)."""
        try:
            while True:
                while self._busy or not self._queue:
                    if not self._open and not self._queue:
                        return  # closed and drained
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _MAX_BATCH))]
                self._busy = True
                try:
                    with anyio.CancelScope(shield=True):
                        await self._flush(batch)
                finally:
                    self._busy = False
        finally:
            self._drained.set()

    async def _flush(self, batch: list[_Op]) -> None:
        """Run ``batch`` in order; retry what Redis could not take, within write_timeout."""
        deadline = time.monotonic() + self.write_timeout
        delay = 0.05
        todo = batch
        while todo:
            pipe = self.client.pipeline(transaction=False)
            for op in todo:
                pipe.evalsha(_SHAS[op.script], len(op.keys), *op.keys, *op.args)
            self.round_trips += 1
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0.05)):
                    replies = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError, TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    for op in todo:
                        op.error = exc
                        op.done.set()
                    return
                await anyio.sleep(delay * random.uniform(1.0, 1.5))
                delay = min(delay * 2, 1.0)
                continue
            retry = []
            for op, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    retry.append(op)
                    continue
                if isinstance(reply, ResponseError):
                    op.error = RunStoreError(f"the run store refused a write: {reply}", op.run_id)
                elif isinstance(reply, BaseException):
                    op.error = reply
                else:
                    op.reply = reply
                op.done.set()
            if retry:  # Redis lost its scripts (a restart): load them, then send again
                try:
                    with anyio.fail_after(max(deadline - time.monotonic(), 0.05)):
                        for text in _SCRIPTS.values():
                            await self.client.script_load(text)
                except (RedisError, OSError, TimeoutError) as exc:
                    for op in retry:
                        op.error = exc
                        op.done.set()
                    return
            todo = retry

    # -- reading -------------------------------------------------------------------------

    def _bounded(self, what: str, run_id: str | None = None) -> AbstractContextManager[None]:
        """Bound one exchange with Redis by ``write_timeout``; any failure becomes
        :class:`~asaga.StoreUnavailable` saying what could not be done."""
        return _bounded(self.write_timeout, what, run_id)

    async def load(self, run_id: str, *, events: bool = False) -> RunRecord:
        """The run's record (``RunNotFound`` if none), with its events when asked."""
        with self._bounded(f"cannot read run {run_id}", run_id):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._run_key(run_id), "record", "status", "owner")
                if events:
                    pipe.lrange(self._events_key(run_id), 0, -1)
                replies = await pipe.execute()
        data, status, owner = replies[0]
        if data is None:
            raise RunNotFound(f"no record of run {run_id!r} in this store", run_id)
        return self._assemble(run_id, data, status, owner, replies[1] if events else ())

    def _assemble(
        self, run_id: str, data: bytes, status: Any, owner: Any, events: Sequence[bytes]
    ) -> RunRecord:
        record = decode_record(data, run_id)
        return msgspec.structs.replace(
            record,
            status=_text(status) or record.status,
            owner=_text(owner),
            events=tuple(decode_event(e, run_id) for e in events),
        )

    async def list(
        self, *, status: str | None = None, saga: str | None = None, limit: int = 50
    ) -> Sequence[RunRecord]:
        """Recorded runs, newest first, filtered by status and saga name."""
        found: list[RunRecord] = []
        start, page = 0, max(limit, 50)
        while len(found) < limit and start < 100 * page:  # bounded scan of the index
            with self._bounded("cannot list runs"):
                ids = await self.client.zrevrange(self._index, start, start + page - 1)
                if not ids:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for raw in ids:
                        pipe.hmget(
                            self._run_key(_text(raw) or ""),
                            "record",
                            "status",
                            "owner",
                            "saga",
                            "quarantined",
                        )
                    rows = await pipe.execute()
            start += page
            for raw, (data, st, owner, name, aside) in zip(ids, rows, strict=True):
                if data is None or aside is not None:
                    continue  # expired, or quarantined (see quarantined())
                if status is not None and _text(st) != status:
                    continue
                if saga is not None and _text(name) != saga:
                    continue
                try:
                    found.append(self._assemble(_text(raw) or "", data, st, owner, ()))
                except CorruptRecord as exc:  # shown by `runs show`; recovery sets it aside
                    _logger.warning("run_not_listed", run_id=_text(raw), error=str(exc))
                    continue
                if len(found) >= limit:
                    break
        return found

    # -- recovery, undo, keys ------------------------------------------------------------

    async def abandoned(
        self, sagas: Mapping[str, str], *, limit: int = 100
    ) -> Sequence[tuple[str, str]]:
        """Unfinished runs of ``sagas`` (name -> saga_version) whose owner's lease has
        expired, oldest first, as (run id, owner); nothing is taken yet."""
        found: list[tuple[str, str]] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit and start < 100 * page:  # bounded scan of the running set
            with self._bounded("cannot look for abandoned runs"):
                ids = [
                    _text(r) or ""
                    for r in await self.client.zrange(self._running, start, start + page - 1)
                ]
                if not ids:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for run_id in ids:
                        pipe.hmget(self._run_key(run_id), "owner", "saga", "version")
                    rows = [[_text(v) for v in row] for row in await pipe.execute()]
                gone = [run_id for run_id, row in zip(ids, rows, strict=True) if row[0] is None]
                if gone:
                    await self.client.zrem(self._running, *gone)
                candidates = [
                    (run_id, owner)
                    for run_id, (owner, saga, version) in zip(ids, rows, strict=True)
                    if owner is not None
                    and owner != self._owner
                    and "/" not in run_id  # a child run: its parent's recovery drives it
                    and saga is not None
                    and saga in sagas
                    and sagas[saga] == version  # another version waits for its own workers
                ]
                if candidates:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for _, owner in candidates:
                            pipe.exists(self._owner_key(owner))
                        alive = await pipe.execute()
                    found += [c for c, live in zip(candidates, alive, strict=True) if not live]
            start += page - len(gone)
        return found[:limit]

    async def claim(self, run_id: str, owner: str) -> RunRecord | None:
        """Take over ``run_id`` from ``owner`` if that owner's lease has expired and the run
        is unfinished; the record, now owned by this store, or ``None`` (taken by
        another recoverer, finished, or its owner came back)."""
        with self._bounded(f"cannot take over run {run_id}", run_id):
            reply = await self._claim(
                keys=[self._run_key(run_id), self._owner_key(owner)], args=[owner, self._owner]
            )
        if not reply:
            return None
        data, status, saga, version = reply
        if data is None:
            raise CorruptRecord(f"run {run_id} has no record, only its index fields", run_id)
        record = self._assemble(run_id, data, status, self._owner, ())
        check_identity(record, run_id, _text(saga), _text(version))
        return record

    async def quarantine(self, run_id: str, reason: str) -> Quarantined | None:
        """Set aside ``run_id`` (taken by this store): out of the running set, kept with
        ``reason`` for ``retention``; ``None`` if this store no longer owns it."""
        now = time.time()
        with self._bounded(f"cannot quarantine run {run_id}", run_id):
            done = await self._quarantine(
                keys=[
                    self._run_key(run_id),
                    self._events_key(run_id),
                    self._running,
                    self._quarantined,
                ],
                args=[
                    run_id,
                    self._owner,
                    reason,
                    now,
                    max(1, round(self.retention * 1000)),
                    now - self.retention,
                    _MAX_QUARANTINED,
                ],
            )
        if not done:
            return None
        saga = _text(done[0]) or None
        _logger.warning("run_quarantined", run_id=run_id, saga=saga, reason=reason)
        return Quarantined(
            run_id=run_id, saga=saga, reason=reason, quarantined_at=now, by=self._owner
        )

    async def quarantined(self, *, limit: int = 50) -> Sequence[Quarantined]:
        """The runs set aside by recovery, newest first."""
        with self._bounded("cannot list quarantined runs"):
            ids = [
                _text(r) or "" for r in await self.client.zrevrange(self._quarantined, 0, limit - 1)
            ]
            async with self.client.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hmget(
                        self._run_key(run_id),
                        "saga",
                        "quarantined",
                        "quarantined_at",
                        "quarantined_by",
                    )
                rows = [[_text(v) for v in row] for row in await pipe.execute()]
        return [
            Quarantined(
                run_id=run_id, saga=saga, reason=reason, quarantined_at=float(at or 0), by=by
            )
            for run_id, (saga, reason, at, by) in zip(ids, rows, strict=True)
            if reason is not None  # expired, or readmitted meanwhile
        ]

    async def readmit(self, run_id: str) -> None:
        """Put a quarantined run back among the unfinished runs: the next recovery sweep
        takes it. ``RunNotFound`` if it is not quarantined."""
        with self._bounded(f"cannot readmit run {run_id}", run_id):
            done = await self._readmit(
                keys=[
                    self._run_key(run_id),
                    self._events_key(run_id),
                    self._running,
                    self._quarantined,
                ],
                args=[run_id],
            )
        if not done:
            raise RunNotFound(f"run {run_id!r} is not quarantined in this store", run_id)

    async def claim_undo(self, run_id: str) -> tuple[RunRecord, bool]:
        """Take a succeeded run (or the undo of a dead owner) to undo it; the record as it
        was, and whether it was taken."""
        for _ in range(10):  # bounded: only a concurrent change makes it go round again
            record = await self.load(run_id)
            if record.status not in ("succeeded", "undoing"):
                return record, False
            owner = record.owner or ""
            with self._bounded(f"cannot undo run {run_id}", run_id):
                taken = await self._claim_undo(
                    keys=[
                        self._run_key(run_id),
                        self._events_key(run_id),
                        self._running,
                        self._owner_key(owner),
                    ],
                    args=[record.status, owner, self._owner, time.time(), run_id],
                )
            if taken:
                return record, True
            again = await self.load(run_id)
            if again.status == record.status and again.owner == record.owner:
                return again, False  # undoing, by a live owner: the caller waits for it
        raise StoreUnavailable(f"run {run_id} keeps changing; try the undo again", run_id)

    async def release_key(self, claim: Claim, run_id: str) -> None:
        """Let ``claim``'s key go if it still names ``run_id`` (best effort: a key whose
        run was cancelled is taken over by the next run with it anyway)."""
        try:
            with self._bounded(f"cannot release key {claim.key!r}", run_id):
                await self._release_key(keys=[self._idempotency_key(claim)], args=[run_id])
        except StoreUnavailable as exc:
            _logger.warning("idempotency_key_not_released", key=claim.key, error=str(exc))

    async def wait_finished(self, run_id: str) -> RunRecord:
        """Wait for the run's finish notification; check again every ``recheck`` seconds
        (jittered) in case it was missed or its owner died and someone else recovers it."""
        waiting = f"{self.prefix}waiting:{run_id}"
        while True:
            with self._bounded(f"cannot wait for run {run_id}", run_id):
                await self.client.set(waiting, "1", px=max(1, round(self.recheck * 3000)))
            record = await self.load(run_id)
            if record.status in FINISHED:
                return record
            event = self._waiting.get(run_id)
            if event is None:
                event = self._waiting[run_id] = anyio.Event()
            with anyio.move_on_after(self.recheck * random.uniform(1.0, 1.5)):
                await event.wait()

    async def _listen(self) -> None:
        await follow_pattern(
            self.client,
            f"{self.prefix}finished:",
            self._finished,
            subscribed=lambda on: None,  # waiters check again every `recheck` anyway
            lost="run_notifications_lost",
        )

    def _finished(self, run_id: str) -> None:
        event = self._waiting.pop(run_id, None)
        if event is not None:
            event.set()


@contextlib.contextmanager
def _bounded(seconds: float, what: str, run_id: str | None) -> Iterator[None]:
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        raise StoreUnavailable(
            f"{what}: Redis did not answer within {seconds:g} s (the store's write_timeout)",
            run_id,
        ) from exc
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"{what}: {exc}", run_id) from exc


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
