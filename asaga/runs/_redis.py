"""Durable-run records in Redis, shared by every process of a service.

Keys (``<p>`` is the store's prefix; ``<s>`` is ``<p>`` on one Redis server, and the
prefix followed by the hash tag of the run's shard on Redis Cluster, see below)::

    <s>run:<run_id>          hash: record (the encoded RunRecord), status, owner, saga
    <s>events:<run_id>       list: the run's encoded events, in order
    <s>runs:running          sorted set: unfinished runs (score: creation time)
    <s>runs:index            sorted set: every recorded run (score: creation time)
    <s>runs:quarantine       sorted set: unfinished runs set aside by recovery (score: when)
    <s>runs:parked           sorted set: parked runs (score: when their first wait ends)
    <s>owner:<owner>         the owner lease of one store object (one per process)
    <s>waiting:<run_id>      set (briefly) while a process waits for the run to finish
    <s>runs:sagas            sorted set: the sagas with runs (score: the last creation)
    <s>runs:by-status:<st>   sorted set: the runs listed under status <st> (score: creation
                             time), ``in_doubt`` and ``quarantined`` included
    <s>runs:by-saga:<saga>   sorted set: the runs of one saga (score: creation time)
    <s>runs:by-saga-status:<st>:<saga>   sorted set: both at once
    <p>key:<saga>:<key>      the run an idempotency key names (expires with the window)
    <p>mail:<saga>:<key>     hash: the event of a correlation key: the run that waits for
                             it, its payload until consumed, a consumed mark, bad payloads
                             (expires: the idempotency window, or after the wait's deadline)
    channel <p>finished:<run_id>     published when a waited-for run finishes

Each write is one Lua script that checks the run is still owned by this store (a process
that lost its lease cannot overwrite the record of the process that recovered its runs)
and applies the record, status and events at once; a finished run is dropped from the
running set and expires after ``retention``. Scripts take keys and values as arguments,
never interpolated text, and check their arguments before their first write. Concurrent
writes (of one run or of many) are sent together: one writer task per store drains what
is queued into one pipeline, so a transition costs at most one round trip, often a share
of one.

An idempotency key is claimed by a script of its own (exactly one caller gets a fresh
key), and the run it names is recorded by the next one: a caller that finds the key
naming a run without a record waits (bounded) for the record, or, once the claim is
older than two ``write_timeout`` (its creation cannot still be on its way), voids that
run id (a tombstone its late creation would find) and takes the key over, as it takes
over the key of a cancelled run.

**Redis Cluster** (the client is a ``redis.asyncio.RedisCluster``): each run belongs to
one of ``_CLUSTER_SHARDS`` shards (by a hash of its id), and ``<s>`` is
``<p>{<p><shard>}``: a run's keys, the running set, index and quarantine set of its shard
and a copy of every owner lease live in the shard's slot, so that each script touches one
slot, as atomic as on one server. The heartbeat renews the owner lease in every shard;
listing and recovery read the shards' sorted sets merged in score order. The idempotency
key's script touches that key alone.

A run whose record recovery cannot drive (it does not decode, is foreign, or does not fit
the saga) is quarantined: out of the running set, into ``runs:quarantine`` with the
reason in its hash, its keys expiring after ``retention``; the quarantine set is trimmed
to that retention and to ``_MAX_QUARANTINED`` entries (over all shards). ``readmit`` puts
it back.

**Listings** (:meth:`RedisRunStore.page`, ``counts``, ``find``, for a runs dashboard):
the ``runs:by-*`` sets are kept by the scripts that change a run's status (create, write,
park, take, claim undo, quarantine, readmit) in the same atomic step, their keys derived
from the run's ``<s>`` (so in its slot on a cluster). A run is listed under its status, or
``quarantined`` while set aside, and under ``in_doubt`` too when its end left a step in
doubt (its ``RunFailed`` event lists one: hash field ``doubt``). A page reads one set per
shard from the cursor's position (creation time, run id) down, merged; the unfiltered page
reads ``runs:index``, so records written before the listings existed are listed there
(they join the status and saga listings with their next write). Bounds: a final write
trims the listings the run ends in to the retention, like the index, and one final write
in 16 sweeps all the listings of its shard and saga; the quarantined listings are capped
like the quarantine set and expire with the retention; an entry whose record expired is
dropped when a page meets it. ``counts`` is the size of each listing (one round trip).
``find`` looks a text up as a run id, and as an idempotency key and an event key under
each saga of ``runs:sagas`` (one read each: no scan).

One lease per store object says its owner is alive: ``<s>owner:<owner>``, set with a TTL
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
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import msgspec
import structlog
from redis.exceptions import NoScriptError, ResponseError

from .._events import OperatorAction
from .._exceptions import (
    CorruptRecord,
    RunNotFound,
    RunRecordLost,
    RunStoreError,
    RunTakenOver,
    StoreUnavailable,
)
from .._redis import (
    LUA_CHECKS,
    REDIS_ERRORS,
    UNAVAILABLE,
    Client,
    check_cluster,
    client_from_url,
    close_client,
    follow_pattern,
    is_cluster,
    require_asyncio,
    warn_without_persistence,
)
from ._record import (
    FINISHED,
    PAGE_STATUSES,
    Claim,
    PageQuery,
    Quarantined,
    RunExists,
    RunPage,
    RunRecord,
    Write,
    check_find,
    check_identity,
    check_note,
    check_saga,
    decode_event,
    decode_record,
    encode_event,
    list_pages,
    page_query,
)
from ._settings import StoreSettings

__all__ = ["RedisRunStore"]

_logger = structlog.get_logger("asaga")


def _arguments(script: str) -> str:
    """Argument checks, run by every script before its first write (Redis does not roll a
    script back: one that fails half-way keeps what it wrote). A refusal is the error reply
    ``BAD_ARGUMENT <name> "<value>": <why> (asaga <script>: bad arguments)``, raised as
    ValueError (see _refusal). Integers are matched as text first (Lua's ``tonumber``
    reads ``nan``, ``inf``, ``0x10`` and padded strings), times as decimals; ``run_keys``
    checks that KEYS are the named keys of one run (one base, the run id of ARGV)."""
    return _ARGUMENTS.replace("<script>", script) + _LISTING


_ARGUMENTS = (
    """
local SCRIPT = '<script>'
local MAX_INT = 9007199254740991
local MAX_NAME = 4096
local MAX_BLOB = 536870912
"""
    + LUA_CHECKS
    + """
local function time_arg(i, name)
  local s = ARGV[i]
  if type(s) ~= 'string' or #s > 32 or not (string.match(s, '^%-?%d+%.?%d*$')
     or string.match(s, '^%-?%d+%.?%d*[eE][%+%-]?%d+$')) then
    refuse(name, s, 'not a decimal number')
  end
  local n = tonumber(s)
  if not n or n ~= n or n > 1e15 or n < -1e15 then
    refuse(name, s, 'not in [-1e15, 1e15] (seconds)')
  end
  return n
end
local function str_arg(i, name, low, high)
  local s = ARGV[i]
  if type(s) ~= 'string' or #s < low or #s > high then
    refuse(name, s, string.format('not %d to %d bytes', low, high))
  end
  return s
end
local function flag_arg(i, name)
  if ARGV[i] ~= '0' and ARGV[i] ~= '1' then refuse(name, ARGV[i], 'not 0 or 1') end
  return ARGV[i] == '1'
end
local STATUSES = {running = 1, compensating = 1, succeeded = 1, failed = 1,
  compensation_failed = 1, cancelled = 1, undoing = 1, undone = 1, undo_failed = 1,
  waiting = 1, terminated = 1}
local function status_arg(i, name)
  if type(ARGV[i]) ~= 'string' or not STATUSES[ARGV[i]] then
    refuse(name, ARGV[i], 'not a run status')
  end
  return ARGV[i]
end
local function no_more(n)
  if #ARGV > n then refuse('arguments', #ARGV, string.format('more than %d', n)) end
end
local function events_from(i)
  for j = i, #ARGV do
    if #ARGV[j] == 0 or #ARGV[j] > MAX_BLOB then refuse('event', ARGV[j], 'empty') end
  end
end
local function one_key(kind)
  if #KEYS ~= 1 or not string.find(KEYS[1], kind .. ':', 1, true) then
    refuse('keys', KEYS[1], 'not one ' .. kind .. ' key')
  end
end
-- KEYS[1] is <s>run:<run_id>; KEYS[2..] are <s><name> (<s><name>:<run_id> for events and
-- waiting, <s>owner:<owner> for owner): returns <s>.
local function run_keys(run_id, names, owner)
  local tail, first = 'run:' .. run_id, KEYS[1]
  if #KEYS ~= #names + 1 or type(first) ~= 'string' or #first < #tail
     or string.sub(first, -#tail) ~= tail then
    refuse('keys', first, 'not the keys of run ' .. run_id)
  end
  local base = string.sub(first, 1, #first - #tail)
  for i, name in ipairs(names) do
    local want = base .. name
    if name == 'events' or name == 'waiting' then want = want .. ':' .. run_id end
    if name == 'owner' then want = want .. ':' .. owner end
    if KEYS[i + 1] ~= want then
      refuse('keys', KEYS[i + 1], 'not the ' .. name .. ' key of run ' .. run_id)
    end
  end
  return base
end
-- the channel <p>finished:<run_id>: <p> is the base, or on a cluster the base is
-- <p>{<p><shard>}
local function channel_arg(i, base, run_id)
  local s, tail = ARGV[i], 'finished:' .. run_id
  if s == base .. tail then return s end
  if type(s) == 'string' and #s > #tail and string.sub(s, -#tail) == tail then
    local p = string.sub(s, 1, #s - #tail)
    if string.sub(base, 1, #p + 1) == p .. '{' and string.sub(base, #p + 2, 2 * #p + 1) == p
       and string.match(string.sub(base, 2 * #p + 2), '^%d+}$') then
      return s
    end
  end
  refuse('channel', s, 'not the finish channel of run ' .. run_id)
end
"""
)


# The listing indexes of a shard (for RunStore.page and counts), derived from the run's
# base <s> (so in the slot of its other keys): <s>runs:by-status:<status>,
# <s>runs:by-saga:<saga> and <s>runs:by-saga-status:<status>:<saga>, sorted sets scored by
# the run's creation time (its hash's ``created``). A run is listed under its status, or
# ``quarantined`` while set aside, and also under ``in_doubt`` when its end left a step in
# doubt (hash field ``doubt``). Called after a script's checks, with the status the run was
# listed under before its write (``listed``) and after.
_LISTING = """
-- what the listings need of a run, read before a script writes it: its saga, creation
-- time, status, and the status it is listed under ('quarantined' while set aside)
local function listing_of(key)
  local f = redis.call('hmget', key, 'status', 'quarantined', 'saga', 'created')
  return {status = f[1], was = f[2] and 'quarantined' or f[1], saga = f[3],
          created = tonumber(f[4])}
end
local function relist(base, run_id, run, new, now)
  local saga, old = run.saga, run.was
  if not saga or not new then return end
  if not run.created then  -- a run recorded before these indexes: listed from now on
    run.created = tonumber(redis.call('zscore', base .. 'runs:index', run_id)) or now
    redis.call('hset', KEYS[1], 'created', run.created)
    redis.call('zadd', base .. 'runs:by-saga:' .. saga, run.created, run_id)
    old = nil
  end
  if old == new then return end
  if old then
    redis.call('zrem', base .. 'runs:by-status:' .. old, run_id)
    redis.call('zrem', base .. 'runs:by-saga-status:' .. old .. ':' .. saga, run_id)
  end
  redis.call('zadd', base .. 'runs:by-status:' .. new, run.created, run_id)
  redis.call('zadd', base .. 'runs:by-saga-status:' .. new .. ':' .. saga, run.created, run_id)
end
-- the statuses of unfinished runs: their listings hold only unfinished runs (a run leaves
-- one when its status changes), so they are bounded like the running set and never trimmed
-- by creation time; a run may wait or run longer than the retention
local UNFINISHED = {running = 1, compensating = 1, undoing = 1, waiting = 1}
-- trim a listing of every status (the index, a saga's) to the retention by creation time,
-- then list again the unfinished runs recorded before the cutoff (from the listings of
-- their status, <base>runs:by-status:<status><suffix>; at most 1,000 per status and trim)
local function trim_keeping_unfinished(base, name, suffix, cutoff)
  if redis.call('zremrangebyscore', base .. name, '-inf', cutoff) == 0 then return end
  for status in pairs(UNFINISHED) do
    local prefix = suffix == '' and 'runs:by-status:' or 'runs:by-saga-status:'
    local old = redis.call('zrangebyscore', base .. prefix .. status .. suffix, '-inf', cutoff,
                           'WITHSCORES', 'LIMIT', 0, 1000)
    for j = 1, #old, 2 do redis.call('zadd', base .. name, old[j + 1], old[j]) end
  end
end
-- a final write: the listings the run ends in (its status's, its saga's, in_doubt's if its
-- end left a step in doubt) are trimmed to the retention, like the index (a run recorded
-- longer ago than that leaves them); one final write in 16 (by its creation time's
-- microseconds) sweeps every listing of the shard and of the saga, so that a listing no
-- run ends in any more (a status's of unfinished runs) is trimmed too
local function finish_listing(base, run_id, run, status, cutoff, doubt)
  local saga, created = run.saga, run.created
  if not saga or not created then return end
  local names = {status}
  if doubt then
    redis.call('hset', KEYS[1], 'doubt', '1')
    redis.call('zadd', base .. 'runs:by-status:in_doubt', created, run_id)
    redis.call('zadd', base .. 'runs:by-saga-status:in_doubt:' .. saga, created, run_id)
    table.insert(names, 'in_doubt')
  end
  if math.floor(created * 1e6) % 16 == 0 then
    names = {'in_doubt'}
    for name in pairs(STATUSES) do
      if not UNFINISHED[name] then table.insert(names, name) end
    end
  end
  trim_keeping_unfinished(base, 'runs:by-saga:' .. saga, ':' .. saga, cutoff)
  for _, name in ipairs(names) do
    redis.call('zremrangebyscore', base .. 'runs:by-status:' .. name, '-inf', cutoff)
    redis.call('zremrangebyscore', base .. 'runs:by-saga-status:' .. name .. ':' .. saga,
               '-inf', cutoff)
  end
end
-- a quarantine: the quarantined listings are capped like the quarantine set (the runs
-- recorded first go first) and expire with the retention when no run is set aside
local function cap_quarantined(base, saga, most, ttl)
  local sets = {'runs:by-status:quarantined'}
  if saga then table.insert(sets, 'runs:by-saga-status:quarantined:' .. saga) end
  for _, name in ipairs(sets) do
    local extra = redis.call('zcard', base .. name) - most
    if extra > 0 then redis.call('zremrangebyrank', base .. name, 0, extra - 1) end
    redis.call('pexpire', base .. name, ttl)
  end
end
-- whether the events of a final write end the run with steps left in doubt (its
-- run_failed event lists them): read only
local function leaves_doubt(first)
  for j = first, #ARGV do
    if string.find(ARGV[j], 'run_failed', 1, true) then
      local ok, event = pcall(cmsgpack.unpack, ARGV[j])
      if ok and type(event) == 'table' and event.kind == 'run_failed'
         and type(event.in_doubt) == 'table' and #event.in_doubt > 0 then
        return true
      end
    end
  end
  return false
end
"""


# KEYS: run, events, running, index ; ARGV: run_id, record, status, owner, saga, now,
#   version, nonce, seq, events...
# Returns nil when created (or when this very creation is sent again), 'void' if the run id
# was voided (a caller found the idempotency key naming it and no record, and took the key
# over), 'exists' if another creation recorded the run id: then nothing is written.
_CREATE = (
    _arguments("create")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
str_arg(2, 'record', 1, MAX_BLOB)
status_arg(3, 'status')
str_arg(4, 'owner', 1, MAX_NAME)
str_arg(5, 'saga', 1, MAX_NAME)
local now = time_arg(6, 'now')
str_arg(7, 'version', 0, MAX_NAME)
str_arg(8, 'nonce', 0, MAX_NAME)
int_arg(9, 'seq', 0, MAX_INT)
events_from(10)
local base = run_keys(run_id, {'events', 'runs:running', 'runs:index'})
if redis.call('exists', KEYS[1]) == 1 then
  if redis.call('hget', KEYS[1], 'nonce') == ARGV[8] then return false end
  if redis.call('hget', KEYS[1], 'status') == 'void' then return 'void' end
  return 'exists'
end
redis.call('hset', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'owner', ARGV[4],
           'saga', ARGV[5], 'version', ARGV[7], 'nonce', ARGV[8], 'seq', ARGV[9],
           'created', ARGV[6])
redis.call('zadd', KEYS[3], now, ARGV[1])
redis.call('zadd', KEYS[4], now, ARGV[1])
redis.call('zadd', base .. 'runs:sagas', now, ARGV[5])
redis.call('zadd', base .. 'runs:by-saga:' .. ARGV[5], now, ARGV[1])
relist(base, ARGV[1], {saga = ARGV[5], created = now}, ARGV[3], now)
if #ARGV >= 10 then redis.call('rpush', KEYS[2], unpack(ARGV, 10)) end
return false
"""
)

# KEYS: idempotency key ; ARGV: run_id, window_ms, run to take the key from ('' for none)
# Returns nil when the key names run_id now (claimed now), 1 if it named run_id already,
# else {the run it names, the key's remaining milliseconds}. The caller takes the key
# from a run it found cancelled or voided by naming that run: only if the key still names
# it (so exactly one caller takes it).
_CLAIM_KEY = (
    _arguments("claim key")
    + """
str_arg(1, 'run_id', 1, MAX_NAME)
local window = int_arg(2, 'window_ms', 1, MAX_INT)
str_arg(3, 'taking', 0, MAX_NAME)
no_more(3)
one_key('key')
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return 1 end
if holder and holder ~= ARGV[3] then return {holder, redis.call('pttl', KEYS[1])} end
redis.call('set', KEYS[1], ARGV[1], 'px', window)
return false
"""
)

# KEYS: run ; ARGV: '1' to void a run without a record, tombstone_ms
# Returns the run's status; 'void' for a run id voided (now or before); nil if the run has
# no record and is not voided. A voided run id holds only status 'void' until the
# tombstone expires: its creation, if it comes late, finds it and writes nothing.
_PROBE = (
    _arguments("probe")
    + """
local void = flag_arg(1, 'void')
local ttl = int_arg(2, 'tombstone_ms', 1, MAX_INT)
no_more(2)
one_key('run')
local status = redis.call('hget', KEYS[1], 'status')
if status then return status end
if not void then return false end
redis.call('hset', KEYS[1], 'status', 'void')
redis.call('pexpire', KEYS[1], ttl)
return 'void'
"""
)

# KEYS: run, events, running, index, waiting ; ARGV: run_id, record, status, owner, final,
#   retention_ms, cutoff, channel, seq, events...
# Returns 0 if another owner has the run, 3 if its record is gone (Redis lost writes), 2 if
# a newer write of this run landed already (this one, sent late, is dropped), 1 when applied.
_WRITE = (
    _arguments("write")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
str_arg(2, 'record', 1, MAX_BLOB)
status_arg(3, 'status')
str_arg(4, 'owner', 1, MAX_NAME)
local final = flag_arg(5, 'final')
local retention = int_arg(6, 'retention_ms', 1, MAX_INT)
local cutoff = time_arg(7, 'cutoff')
local base = run_keys(run_id, {'events', 'runs:running', 'runs:index', 'waiting'})
channel_arg(8, base, run_id)
local seq = int_arg(9, 'seq', 0, MAX_INT)
events_from(10)
local owner = redis.call('hget', KEYS[1], 'owner')
if not owner then return 3 end  -- no record (or a void run id: its record was lost too)
if owner ~= ARGV[4] then return 0 end
if tonumber(redis.call('hget', KEYS[1], 'seq') or '0') >= seq then return 2 end
local run = listing_of(KEYS[1])
local doubt = final and leaves_doubt(10)
redis.call('hset', KEYS[1], 'record', ARGV[2], 'status', ARGV[3], 'seq', ARGV[9])
relist(base, run_id, run, ARGV[3], cutoff + retention / 1000)
if #ARGV >= 10 then redis.call('rpush', KEYS[2], unpack(ARGV, 10)) end
if final then
  finish_listing(base, run_id, run, ARGV[3], ARGV[7], doubt)
  redis.call('zrem', KEYS[3], ARGV[1])
  redis.call('pexpire', KEYS[1], ARGV[6])
  redis.call('pexpire', KEYS[2], ARGV[6])
  trim_keeping_unfinished(base, 'runs:index', '', ARGV[7])
  redis.call('zremrangebyscore', base .. 'runs:sagas', '-inf', ARGV[7])
  if redis.call('exists', KEYS[5]) == 1 then redis.call('publish', ARGV[8], ARGV[3]) end
else
  -- unfinished: findable by recovery (a late final write may have taken it out)
  redis.call('persist', KEYS[1])
  redis.call('persist', KEYS[2])
  redis.call('zadd', KEYS[3], 'NX', cutoff + retention / 1000, ARGV[1])
end
return 1
"""
)

# KEYS: run, lease of the old owner ; ARGV: old owner, new owner
_CLAIM = (
    _arguments("claim")
    + """
local old = str_arg(1, 'old_owner', 1, MAX_NAME)
local new = str_arg(2, 'new_owner', 1, MAX_NAME)
no_more(2)
local lease = 'owner:' .. old
if #KEYS ~= 2 or type(KEYS[2]) ~= 'string' or #KEYS[2] < #lease
   or string.sub(KEYS[2], -#lease) ~= lease then
  refuse('keys', KEYS[2], 'not the lease of ' .. old)
end
local base = string.sub(KEYS[2], 1, #KEYS[2] - #lease)
if #KEYS[1] <= #base + 4 or string.sub(KEYS[1], 1, #base + 4) ~= base .. 'run:' then
  refuse('keys', KEYS[1], 'not a run key beside ' .. KEYS[2])
end
if redis.call('hget', KEYS[1], 'owner') ~= ARGV[1] then return false end
if redis.call('hexists', KEYS[1], 'quarantined') == 1 then return false end  -- set aside
local status = redis.call('hget', KEYS[1], 'status')
if status ~= 'running' and status ~= 'compensating' and status ~= 'undoing' then
  return false
end
if redis.call('exists', KEYS[2]) == 1 then return false end
redis.call('hset', KEYS[1], 'owner', new)
return redis.call('hmget', KEYS[1], 'record', 'status', 'saga', 'version')
"""
)

# KEYS: run, events, running, quarantine ; ARGV: run_id, owner, reason, now, retention_ms,
#   cutoff, most kept
_QUARANTINE = (
    _arguments("quarantine")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
str_arg(2, 'owner', 1, MAX_NAME)
str_arg(3, 'reason', 1, MAX_BLOB)
time_arg(4, 'now')
int_arg(5, 'retention_ms', 1, MAX_INT)
time_arg(6, 'cutoff')
local most = int_arg(7, 'most', 0, MAX_INT)
no_more(7)
local set = (KEYS[3] and string.sub(KEYS[3], -12) == 'runs:running') and 'runs:running'
  or 'runs:parked'
local base = run_keys(run_id, {'events', set, 'runs:quarantine'})
if redis.call('hget', KEYS[1], 'owner') ~= ARGV[2] then return false end
local run = listing_of(KEYS[1])
local score = redis.call('zscore', KEYS[3], ARGV[1]) or ARGV[4]
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('hset', KEYS[1], 'owner', 'quarantine', 'quarantined', ARGV[3],
           'quarantined_at', ARGV[4], 'quarantined_by', ARGV[2], 'running_score', score)
relist(base, run_id, run, 'quarantined', tonumber(ARGV[4]))
cap_quarantined(base, run.saga, most, ARGV[5])
redis.call('pexpire', KEYS[1], ARGV[5])
redis.call('pexpire', KEYS[2], ARGV[5])
redis.call('zadd', KEYS[4], ARGV[4], ARGV[1])
redis.call('zremrangebyscore', KEYS[4], '-inf', ARGV[6])
local extra = redis.call('zcard', KEYS[4]) - most
if extra > 0 then redis.call('zremrangebyrank', KEYS[4], 0, extra - 1) end
return {redis.call('hget', KEYS[1], 'saga') or ''}
"""
)

# KEYS: run, events, running, quarantine ; ARGV: run_id
# The run keeps the owner 'quarantine', which never holds a lease: the next sweep takes it.
# Everything is read before the first write: a run whose record expired only loses its
# dangling entry; one without its running score goes back at the head of the running set.
_READMIT = (
    _arguments("readmit")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
no_more(1)
local base = run_keys(run_id, {'events', 'runs:running', 'runs:quarantine'})
if not redis.call('zscore', KEYS[4], ARGV[1]) then return 0 end
if redis.call('hexists', KEYS[1], 'quarantined') == 0 then
  redis.call('zrem', KEYS[4], ARGV[1])
  return 0
end
local score = tonumber(redis.call('hget', KEYS[1], 'running_score')) or 0
local run = listing_of(KEYS[1])
redis.call('zrem', KEYS[4], ARGV[1])
redis.call('hdel', KEYS[1], 'quarantined', 'quarantined_at', 'quarantined_by', 'running_score')
relist(base, run_id, run, run.status, score)
redis.call('persist', KEYS[1])
redis.call('persist', KEYS[2])
redis.call('zadd', KEYS[3], score, ARGV[1])
return 1
"""
)

# KEYS: run, events, running, lease of the current owner ; ARGV: status seen, owner seen,
#   new owner, now, run_id
_CLAIM_UNDO = (
    _arguments("claim undo")
    + """
if ARGV[1] ~= 'succeeded' and ARGV[1] ~= 'undoing' then
  refuse('status', ARGV[1], 'not succeeded or undoing')
end
local seen_owner = str_arg(2, 'owner', 0, MAX_NAME)
str_arg(3, 'new_owner', 1, MAX_NAME)
time_arg(4, 'now')
local run_id = str_arg(5, 'run_id', 1, MAX_NAME)
no_more(5)
local base = run_keys(run_id, {'events', 'runs:running', 'owner'}, seen_owner)
local status = redis.call('hget', KEYS[1], 'status')
if status ~= ARGV[1] or redis.call('hget', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
if status == 'undoing' and redis.call('exists', KEYS[4]) == 1 then return 0 end
if status ~= 'succeeded' and status ~= 'undoing' then return 0 end
local run = listing_of(KEYS[1])
redis.call('hset', KEYS[1], 'status', 'undoing', 'owner', ARGV[3])
relist(base, run_id, run, 'undoing', tonumber(ARGV[4]))
redis.call('persist', KEYS[1])
redis.call('persist', KEYS[2])
redis.call('zadd', KEYS[3], ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: key ; ARGV: run_id
_RELEASE_KEY = (
    _arguments("release key")
    + """
str_arg(1, 'run_id', 1, MAX_NAME)
no_more(1)
one_key('key')
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 1
"""
)

# KEYS: run, events, running, parked, waiting ; ARGV: run_id, record, owner, seq, score,
#   channel, retention_ms, events...
# A run parks (owner-fenced like a write): status waiting, out of the running set, into the
# parked set; its keys expire ``retention`` after its first deadline. Returns as _WRITE.
_PARK = (
    _arguments("park")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
str_arg(2, 'record', 1, MAX_BLOB)
str_arg(3, 'owner', 1, MAX_NAME)
local seq = int_arg(4, 'seq', 0, MAX_INT)
local score = time_arg(5, 'score')
local base = run_keys(run_id, {'events', 'runs:running', 'runs:parked', 'waiting'})
channel_arg(6, base, run_id)
local ttl = int_arg(7, 'ttl_ms', 1, MAX_INT)
events_from(8)
local owner = redis.call('hget', KEYS[1], 'owner')
if not owner then return 3 end
if owner ~= ARGV[3] then return 0 end
if tonumber(redis.call('hget', KEYS[1], 'seq') or '0') >= seq then return 2 end
local run = listing_of(KEYS[1])
redis.call('hset', KEYS[1], 'record', ARGV[2], 'status', 'waiting', 'seq', ARGV[4],
           'owner', 'parked')
relist(base, run_id, run, 'waiting', score)
if #ARGV >= 8 then redis.call('rpush', KEYS[2], unpack(ARGV, 8)) end
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('zadd', KEYS[4], score, ARGV[1])
redis.call('pexpire', KEYS[1], ttl)
redis.call('pexpire', KEYS[2], ttl)
if redis.call('exists', KEYS[5]) == 1 then redis.call('publish', ARGV[6], 'waiting') end
return 1
"""
)

# KEYS: run, events, running, parked ; ARGV: run_id, seq seen, owner, record, status, seq,
#   now, events...
# Take a parked run as it was seen (exactly one taker wins): owned by ``owner`` now,
# running again. Returns 1 if taken, 0 if it is not parked as seen any more.
_TAKE = (
    _arguments("take")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
local seen = int_arg(2, 'seen', 0, MAX_INT)
str_arg(3, 'owner', 1, MAX_NAME)
str_arg(4, 'record', 1, MAX_BLOB)
status_arg(5, 'status')
int_arg(6, 'seq', 0, MAX_INT)
local now = time_arg(7, 'now')
events_from(8)
local base = run_keys(run_id, {'events', 'runs:running', 'runs:parked'})
if redis.call('hget', KEYS[1], 'status') ~= 'waiting' then return 0 end
if redis.call('hexists', KEYS[1], 'quarantined') == 1 then return 0 end  -- set aside
if tonumber(redis.call('hget', KEYS[1], 'seq') or '0') ~= seen then return 0 end
local run = listing_of(KEYS[1])
redis.call('hset', KEYS[1], 'record', ARGV[4], 'status', ARGV[5], 'owner', ARGV[3],
           'seq', ARGV[6])
relist(base, run_id, run, ARGV[5], now)
if #ARGV >= 8 then redis.call('rpush', KEYS[2], unpack(ARGV, 8)) end
redis.call('zrem', KEYS[4], ARGV[1])
redis.call('zadd', KEYS[3], now, ARGV[1])
redis.call('persist', KEYS[1])
redis.call('persist', KEYS[2])
return 1
"""
)

# KEYS: mail ; ARGV: payload, keep_ms
# Keep an event's payload: {'kept', run waiting or ''}; {'duplicate', run} if a payload is
# kept already; {'consumed', run} if a run took the key's event already; {'closed', run} if
# the run that waited for it ended otherwise (timed out, cancelled).
_POST = (
    _arguments("post")
    + """
str_arg(1, 'payload', 1, MAX_BLOB)
local keep = int_arg(2, 'keep_ms', 1, MAX_INT)
no_more(2)
one_key('mail')
local f = redis.call('hmget', KEYS[1], 'payload', 'consumed', 'run', 'closed')
if f[2] then return {'consumed', f[3] or ''} end
if f[4] then return {'closed', f[3] or ''} end
if f[1] then return {'duplicate', f[3] or ''} end
redis.call('hset', KEYS[1], 'payload', ARGV[1])
if not f[3] then redis.call('pexpire', KEYS[1], keep) end
return {'kept', f[3] or ''}
"""
)

# KEYS: mail ; ARGV: run_id, keep_ms
# A parked run waits for the key: {'bound', ''}, {'payload', the payload kept for it}, or
# {'taken', run} if another run waits for it or took its event.
_BIND = (
    _arguments("bind")
    + """
str_arg(1, 'run_id', 1, MAX_NAME)
local keep = int_arg(2, 'keep_ms', 1, MAX_INT)
no_more(2)
one_key('mail')
local f = redis.call('hmget', KEYS[1], 'payload', 'consumed', 'run', 'closed')
if f[2] or (f[3] and f[3] ~= ARGV[1] and not f[4]) then return {'taken', f[3] or ''} end
redis.call('hdel', KEYS[1], 'closed', 'bad')
redis.call('hset', KEYS[1], 'run', ARGV[1])
redis.call('pexpire', KEYS[1], keep)
if f[1] then return {'payload', f[1]} end
return {'bound', ''}
"""
)

# KEYS: mail ; ARGV: run_id, keep_ms — the run took the key's event
_CONSUME = (
    _arguments("consume")
    + """
str_arg(1, 'run_id', 1, MAX_NAME)
local keep = int_arg(2, 'keep_ms', 1, MAX_INT)
no_more(2)
one_key('mail')
redis.call('hdel', KEYS[1], 'payload')
redis.call('hset', KEYS[1], 'consumed', '1', 'run', ARGV[1])
redis.call('pexpire', KEYS[1], keep)
return 1
"""
)

# KEYS: mail ; ARGV: payload — take back a payload no run will take
_UNPOST = (
    _arguments("unpost")
    + """
str_arg(1, 'payload', 1, MAX_BLOB)
no_more(1)
one_key('mail')
if redis.call('hget', KEYS[1], 'payload') == ARGV[1] then
  redis.call('hdel', KEYS[1], 'payload')
  if redis.call('hlen', KEYS[1]) == 0 then redis.call('del', KEYS[1]) end
end
return 1
"""
)

# KEYS: mail ; ARGV: run_id — the run no longer waits for the key (it ended otherwise):
# a late event is refused, a new run may wait for the key (its binding takes it over).
_UNBIND = (
    _arguments("unbind")
    + """
str_arg(1, 'run_id', 1, MAX_NAME)
no_more(1)
one_key('mail')
if redis.call('hget', KEYS[1], 'run') == ARGV[1]
   and redis.call('hexists', KEYS[1], 'consumed') == 0 then
  redis.call('hdel', KEYS[1], 'payload')
  redis.call('hset', KEYS[1], 'closed', '1')
end
return 1
"""
)

# KEYS: mail — count a bad payload for the run waiting for the key: {run or '', count}
_BAD = (
    _arguments("bad payload")
    + """
no_more(0)
one_key('mail')
local run = redis.call('hget', KEYS[1], 'run')
if not run or redis.call('hexists', KEYS[1], 'consumed') == 1
   or redis.call('hexists', KEYS[1], 'closed') == 1 then return {'', 0} end
return {run, redis.call('hincrby', KEYS[1], 'bad', 1)}
"""
)

# KEYS: run, events ; ARGV: run_id, event — append an operator's note to the run's
# events (the list keeps the run's expiry). Returns 0 if the run has no record.
_NOTE = (
    _arguments("note")
    + """
local run_id = str_arg(1, 'run_id', 1, MAX_NAME)
str_arg(2, 'event', 1, MAX_BLOB)
no_more(2)
run_keys(run_id, {'events'})
if redis.call('hexists', KEYS[1], 'record') == 0 then return 0 end
redis.call('rpush', KEYS[2], ARGV[2])
local ttl = redis.call('pttl', KEYS[1])
if ttl > 0 then redis.call('pexpire', KEYS[2], ttl) else redis.call('persist', KEYS[2]) end
return 1
"""
)

_SCRIPTS = {"create": _CREATE, "claim_key": _CLAIM_KEY, "write": _WRITE}
_SHAS = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _SCRIPTS.items()}

_MAX_BATCH = 256  # writes sent in one pipeline at most
_MAX_QUARANTINED = 10_000  # runs kept in the quarantine set at most (the oldest go first)
_CLUSTER_SHARDS = 16  # shards of the runs on Redis Cluster (each its slot, spread over nodes)
_MAX_KEY_ROUNDS = 20  # claims of one idempotency key by one call at most
_MAX_PAGE_SCAN = 20_000  # index entries one page reads at most (then it returns short)
_MAX_TIES = 1000  # runs recorded at the very same time that a page tells apart
_MAX_SAGAS = 1000  # saga names find() looks keys up under
_PAGE_FIELDS = ("record", "status", "owner", "saga", "quarantined", "doubt")


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

    ``client`` is a ``redis.asyncio.Redis`` (one server, or Sentinel) or a
    ``redis.asyncio.RedisCluster``: on a cluster the keys carry hash tags (each run in one
    of 16 shards, see docs/durability.md, "Redis Cluster"), and the prefix may hold no
    brace. The layout follows the client: a store on a cluster does not read the records
    written through a client of one server, and the other way round.
    """

    def __init__(
        self,
        client: Client,
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
        self.cluster = is_cluster(client)
        """Whether the client is a Redis Cluster's (the keys then carry hash tags)."""
        if self.cluster:
            check_cluster(client, prefix, "RedisRunStore")
        self._shards = _CLUSTER_SHARDS if self.cluster else 1
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
        self._probe = client.register_script(_PROBE)
        self._persistence_checked = False
        self._release_key = client.register_script(_RELEASE_KEY)
        self._park = client.register_script(_PARK)
        self._take = client.register_script(_TAKE)
        self._post = client.register_script(_POST)
        self._bind = client.register_script(_BIND)
        self._consume = client.register_script(_CONSUME)
        self._unpost = client.register_script(_UNPOST)
        self._bad = client.register_script(_BAD)
        self._unbind = client.register_script(_UNBIND)
        self._note = client.register_script(_NOTE)

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **options: Any) -> RedisRunStore:
        """A store with its own client for ``url`` (``redis://``, ``rediss://`` for TLS,
        with an ACL user and password: ``redis://user:secret@host:6379/0``); the client
        is closed when the store exits. With ``cluster=True`` the URL names a node of a
        Redis Cluster (the others are discovered) and the client is a
        ``redis.asyncio.RedisCluster``."""
        # No socket timeout: redis-py would wrap every command in a task of its own to
        # enforce it; the store bounds its writes itself (write_timeout).
        client = client_from_url(url, cluster=cluster, max_connections=50, socket_timeout=None)
        return cls(client, _owns_client=True, **options)

    # -- keys ----------------------------------------------------------------------------

    def _shard(self, run_id: str) -> int:
        """The shard of a run: 0 on one server; on a cluster, a hash of its id."""
        return zlib.crc32(run_id.encode()) % self._shards if self.cluster else 0

    def _base(self, shard: int) -> str:
        """What the keys of a shard start with: on a cluster, the prefix and the shard's
        hash tag (so that a run's keys and its shard's sets share a slot)."""
        return f"{self.prefix}{{{self.prefix}{shard}}}" if self.cluster else self.prefix

    def _run_key(self, run_id: str) -> str:
        return f"{self._base(self._shard(run_id))}run:{run_id}"

    def _events_key(self, run_id: str) -> str:
        return f"{self._base(self._shard(run_id))}events:{run_id}"

    def _waiting_key(self, run_id: str) -> str:
        return f"{self._base(self._shard(run_id))}waiting:{run_id}"

    def _owner_key(self, owner: str, shard: int = 0) -> str:
        """The owner lease of ``owner``, as the scripts of ``shard`` read it."""
        return f"{self._base(shard)}owner:{owner}"

    def _idempotency_key(self, claim: Claim) -> str:
        return f"{self.prefix}key:{claim.saga}:{claim.key}"

    def _running(self, shard: int = 0) -> str:
        return f"{self._base(shard)}runs:running"

    def _index(self, shard: int = 0) -> str:
        return f"{self._base(shard)}runs:index"

    def _quarantined(self, shard: int = 0) -> str:
        return f"{self._base(shard)}runs:quarantine"

    def _parked(self, shard: int = 0) -> str:
        return f"{self._base(shard)}runs:parked"

    def _sagas(self, shard: int = 0) -> str:
        return f"{self._base(shard)}runs:sagas"

    def _mail_key(self, saga: str, key: str) -> str:
        return f"{self.prefix}mail:{saga}:{key}"

    def _run_keys(self, run_id: str, *sets: str) -> list[str]:
        """The run's hash and events, then the named sets of its shard (``running``,
        ``index``, ``quarantine``)."""
        shard = self._shard(run_id)
        named = {
            "running": self._running,
            "index": self._index,
            "quarantine": self._quarantined,
            "parked": self._parked,
        }
        return [
            self._run_key(run_id),
            self._events_key(run_id),
            *(named[name](shard) for name in sets),
        ]

    # -- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        require_asyncio("RedisRunStore", "MemoryRunStore")
        try:
            await self._beat()  # the lease exists before any run is recorded
        except UNAVAILABLE as exc:
            if self._owns_client:  # not entered: nothing else would close it
                with anyio.CancelScope(shield=True):
                    await close_client(self.client)
            if "MOVED" in str(exc) or type(exc).__name__ == "MovedError":
                raise StoreUnavailable(
                    "the run store's Redis is a node of a Redis Cluster (it answered MOVED): "
                    "open the store with a cluster client, RedisRunStore.from_url(url, "
                    "cluster=True) (the asaga command's --cluster)"
                ) from exc
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
                with contextlib.suppress(*REDIS_ERRORS):
                    if self._shards == 1:
                        await self.client.delete(self._owner_key(self._owner))
                    else:
                        async with self.client.pipeline(transaction=False) as pipe:
                            for shard in range(self._shards):
                                pipe.delete(self._owner_key(self._owner, shard))
                            await pipe.execute()
                if self._owns_client:
                    await close_client(self.client)

    async def _beat(self) -> None:
        """Set the owner lease (on a cluster, its copy in every shard: each shard's
        scripts read the copy in their slot)."""
        ttl = max(1, round(self.owner_ttl * 1000))
        with anyio.fail_after(max(self.owner_ttl / 3, 0.1)):
            if self._shards == 1:
                await self.client.set(self._owner_key(self._owner), "1", px=ttl)
                return
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in range(self._shards):
                    pipe.set(self._owner_key(self._owner, shard), "1", px=ttl)
                await pipe.execute()

    async def _heartbeat(self) -> None:
        """Renew the owner lease; send again the writes Redis could not take."""
        interval = self.owner_ttl / 3
        while True:
            await anyio.sleep(interval)
            try:
                await self._beat()
            except UNAVAILABLE as exc:
                _logger.warning("run_store_lease_not_renewed", error=repr(exc))
                continue
            for write in list(self._unsent.values()):
                try:
                    await self.write(write)
                except (RunTakenOver, RunRecordLost):
                    self._unsent.pop(write.run_id, None)
                except ValueError as exc:  # refused by the script: sending again cannot help
                    _logger.warning("run_not_recorded", run_id=write.run_id, error=repr(exc))
                    self._unsent.pop(write.run_id, None)
                except StoreUnavailable:
                    break  # next time
                except RunStoreError as exc:  # refused (READONLY after a failover, OOM...)
                    _logger.warning("run_not_recorded", run_id=write.run_id, error=repr(exc))

    # -- writing -------------------------------------------------------------------------

    async def create(self, write: Write, claim: Claim | None) -> str | None:
        """Record a new run; the id of the run holding ``claim``'s key instead, if any
        (its record exists: it is recorded, or being recorded, by its caller)."""
        if claim is None:
            if await self._record_new(write) == "void":
                raise RunStoreError(f"run {write.run_id} is already recorded", write.run_id)
            return None
        key = self._idempotency_key(claim)
        window = max(1, round(claim.window * 1000))
        taking = ""  # the run whose key this call takes over (cancelled, or voided)
        for _ in range(_MAX_KEY_ROUNDS):  # bounded: only takeovers make it go round
            held = await self._submit(
                "claim_key", [key], [write.run_id, window, taking], write.run_id
            )
            if held is None or held == 1:
                try:
                    created = await self._record_new(write)
                except RunStoreError as exc:
                    if isinstance(exc, StoreUnavailable):
                        raise  # the key stays: voided by the next caller if it names no run
                    if not await self._keyed_by(write.run_id, claim, exc, named=held == 1):
                        await self.release_key(claim, write.run_id)  # refused: not its key
                    raise
                if created != "void":
                    return None
                taking = ""  # another caller voided this run id and took the key: see whom
                continue
            holder, left_ms = _text(held[0]) or "", int(held[1])
            status = await self._holder_status(holder, claim.window * 1000 - left_ms, window)
            if status in ("cancelled", "void"):
                taking = holder  # a cancelled run did nothing that stays; a void one, nothing
                continue
            return holder
        raise RunStoreError(
            f"idempotency key {claim.key!r} of saga {claim.saga} keeps changing hands",
            write.run_id,
        )

    async def _keyed_by(
        self, run_id: str, claim: Claim, exc: RunStoreError, *, named: bool
    ) -> bool:
        """Whether the key of ``claim`` is the recorded run ``run_id``'s own (its creation
        was refused with ``exc``): it named the run before this call, or the record says
        the run was started with it (another creation of the same run, sent at the same
        time: a job given to two workers). Its key is then kept."""
        if not isinstance(exc, RunExists):
            return False
        if named:
            return True
        try:
            return (await self.load(run_id)).idempotency_key == claim.key
        except RunStoreError:
            return False

    async def _record_new(self, write: Write) -> str | None:
        """Run the creation script: ``None`` when recorded (now, or by this very creation
        sent before), ``"void"`` if the run id was voided; :class:`RunExists` if another
        creation recorded the id."""
        keys, args = self._create_call(write)
        created = _text(await self._submit("create", keys, args, write.run_id))
        if created == "exists":
            raise RunExists(f"run {write.run_id} is already recorded", write.run_id)
        return created

    def _create_call(self, write: Write) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the creation script for ``write``."""
        record = decode_record(write.record, write.run_id)
        args: list[Any] = [
            write.run_id,
            write.record,
            write.status,
            self._owner,
            record.saga,
            time.time(),
            record.saga_version,
            write.nonce,
            write.seq,
            *write.events,
        ]
        return self._run_keys(write.run_id, "running", "index"), args

    def _write_call(self, write: Write) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the write script for ``write``."""
        keys = [
            *self._run_keys(write.run_id, "running", "index"),
            self._waiting_key(write.run_id),
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
        return keys, args

    async def _holder_status(self, holder: str, age_ms: float, tombstone_ms: int) -> str:
        """The status of the run an idempotency key names, once it has a record.

        The key is claimed before the run is recorded, by the same caller a round trip
        later: a run without a record is waited for (readiness by a bounded, jittered
        re-read: it is a claim held by another process) until the claim is two
        ``write_timeout`` old. Then its creation cannot still be on its way (its caller
        gave up), or it went to a server that lost it: the run id is voided (``"void"``),
        and its creation, if it comes late, finds the tombstone and writes nothing."""
        settle = max(0.0, 2 * self.write_timeout - age_ms / 1000)
        deadline = time.monotonic() + settle
        delay = 0.002
        while True:
            void = "1" if time.monotonic() >= deadline else "0"
            with self._bounded(f"cannot read run {holder}", holder):
                status = await self._probe(keys=[self._run_key(holder)], args=[void, tombstone_ms])
            if status is not None:
                return _text(status) or ""
            await anyio.sleep(
                min(delay * random.uniform(1.0, 1.5), max(deadline - time.monotonic(), 0))
            )
            delay = min(delay * 2, 0.1)

    async def write(self, write: Write) -> None:
        """Record a transition of a run this store owns (``RunTakenOver`` otherwise)."""
        keys, args = self._write_call(write)
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
            if isinstance(op.error, RunStoreError | ValueError):  # ValueError: refused
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
            except UNAVAILABLE as exc:
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
                    op.error = _refusal(reply) or RunStoreError(
                        f"the run store refused a write: {reply}", op.run_id
                    )
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
                except UNAVAILABLE as exc:
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

    def _merged(self, sets: str, *, newest_first: bool, page: int) -> _Merged:
        """The sorted sets ``sets`` (``running``, ``index``, ``quarantine``) of every
        shard, read as one."""
        named = {"running": self._running, "index": self._index, "quarantine": self._quarantined}
        keys = [named[sets](shard) for shard in range(self._shards)]
        return _Merged(self.client, keys, newest_first=newest_first, page=page)

    async def list(
        self, *, status: str | None = None, saga: str | None = None, limit: int = 50
    ) -> Sequence[RunRecord]:
        """Recorded runs, newest first, filtered by status and saga name (as
        :meth:`page`, followed page by page up to ``limit`` runs)."""
        return await list_pages(self, status=status, saga=saga, limit=limit)

    async def page(
        self,
        *,
        status: str | None = None,
        saga: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> RunPage:
        """One page of recorded runs, newest first (see :meth:`RunStore.page`).

        The page reads one sorted set per shard, scored by creation time, from the
        cursor's position down: the index of every run without a filter, else the index
        of the status, the saga, or the saga and status asked for. Entries whose record
        expired are dropped from their set when met."""
        query = page_query(
            status=status,
            saga=saga,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
            scope=self.prefix,
        )
        keys = self._page_keys(query)
        found: list[tuple[float, str, RunRecord]] = []
        position = query.after
        more = True
        scanned = 0
        with self._bounded("cannot list runs"):
            while len(found) <= limit and scanned < _MAX_PAGE_SCAN:
                want = limit + 1 - len(found)
                batch = await self._below(keys, query, position, want)
                if not batch:
                    more = False
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for _, run_id, _ in batch:
                        pipe.hmget(self._run_key(run_id), *_PAGE_FIELDS)
                    rows = await pipe.execute()
                gone: dict[int, list[str]] = {}
                for (created, run_id, shard), row in zip(batch, rows, strict=True):
                    data, st, owner, name, aside, doubt = row
                    if data is None:
                        gone.setdefault(shard, []).append(run_id)
                        continue
                    if not _accepts(query, _text(st), _text(name), aside is not None, doubt):
                        continue
                    try:
                        record = self._assemble(run_id, data, st, owner, ())
                    except CorruptRecord as exc:  # shown by `runs show`
                        _logger.warning("run_not_listed", run_id=run_id, error=str(exc))
                        continue
                    found.append((created, run_id, record))
                if gone:  # their records expired: out of the set
                    async with self.client.pipeline(transaction=False) as pipe:
                        for shard, ids in gone.items():
                            pipe.zrem(keys[shard], *ids)
                        await pipe.execute()
                position = batch[-1][:2]
                scanned += len(batch)
                if len(batch) < want:
                    more = False  # every set is read to its end
                    break
        if len(found) > limit:
            return RunPage(
                runs=tuple(r for _, _, r in found[:limit]),
                cursor=query.cursor(*found[limit - 1][:2]),
            )
        # The bounded scan stopped short: the cursor goes on from where it stopped.
        next_cursor = query.cursor(*position) if more and position is not None else None
        return RunPage(runs=tuple(r for _, _, r in found), cursor=next_cursor)

    def _page_keys(self, query: PageQuery) -> Sequence[str]:
        """The sorted set, per shard, that a page reads: the index of every run (with the
        runs recorded before the listing indexes existed) when there is no filter, else
        the listing index of the status, the saga, or both."""
        return [self._listing(shard, query.status, query.saga) for shard in range(self._shards)]

    def _listing(self, shard: int, status: str | None, saga: str | None) -> str:
        """A listing index of ``shard`` (see _LISTING)."""
        base = self._base(shard)
        if status is None and saga is None:
            return self._index(shard)
        if status is None:
            return f"{base}runs:by-saga:{saga}"
        if saga is None:
            return f"{base}runs:by-status:{status}"
        return f"{base}runs:by-saga-status:{status}:{saga}"

    async def _below(
        self, keys: Sequence[str], query: PageQuery, position: tuple[float, str] | None, count: int
    ) -> Sequence[tuple[float, str, int]]:
        """The next ``count`` entries of the sets ``keys`` merged, newest first, after
        ``position`` and within the query's time bounds: (score, run id, shard)."""
        top = repr(query.until) if query.until is not None else "+inf"
        bottom = repr(query.since) if query.since is not None else "-inf"
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                if position is None:
                    pipe.zrange(
                        key,
                        top,
                        bottom,
                        desc=True,
                        byscore=True,
                        withscores=True,
                        offset=0,
                        num=count,
                    )
                    continue
                at = repr(position[0])
                # the entries of the position's own score (ties, by run id), then those below
                pipe.zrange(
                    key, at, at, desc=True, byscore=True, withscores=True, offset=0, num=_MAX_TIES
                )
                pipe.zrange(
                    key,
                    f"({at}",
                    bottom,
                    desc=True,
                    byscore=True,
                    withscores=True,
                    offset=0,
                    num=count,
                )
            replies = await pipe.execute()
        per = 1 if position is None else 2
        entries = [
            (float(score), _text(member) or "", shard)
            for shard in range(len(keys))
            for reply in replies[shard * per : (shard + 1) * per]
            for member, score in reply
        ]
        entries = [e for e in entries if query.admits(e[0], e[1])]
        entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        return entries[:count]

    async def find(self, text: str, *, limit: int = 20) -> Sequence[RunRecord]:
        """Runs that ``text`` names exactly: a run id, an idempotency key of any saga, or
        the correlation key of an event (see :meth:`RunStore.find`). The keys are looked
        up under each saga the store has recorded runs of (``runs:sagas``): one read per
        saga, no scan."""
        check_find(text, limit)
        with self._bounded("cannot search runs"):
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in range(self._shards):
                    pipe.zrange(self._sagas(shard), 0, _MAX_SAGAS - 1, desc=True)
                sagas = sorted({_text(n) or "" for names in await pipe.execute() for n in names})
            async with self.client.pipeline(transaction=False) as pipe:
                for saga in sagas:
                    pipe.get(f"{self.prefix}key:{saga}:{text}")
                    pipe.hget(self._mail_key(saga, text), "run")
                named = [_text(r) for r in await pipe.execute()]
            ids = list(dict.fromkeys([text, *(r for r in named if r)]))
            async with self.client.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hmget(self._run_key(run_id), "record", "status", "owner")
                rows = await pipe.execute()
        found: list[RunRecord] = []
        for run_id, (data, st, owner) in zip(ids, rows, strict=True):
            if data is None:
                continue
            try:
                found.append(self._assemble(run_id, data, st, owner, ()))
            except CorruptRecord as exc:
                _logger.warning("run_not_listed", run_id=run_id, error=str(exc))
        return found[:limit]

    async def counts(self, *, saga: str | None = None) -> Mapping[str, int]:
        """Runs per status (see :meth:`RunStore.counts`): the size of each listing index,
        one round trip (a command per status and shard). Counted are the runs listed in
        them: those written since the indexes exist (older records join on their next
        write), and, until a page meets them, entries of unfinished runs whose record
        expired (a parked run past its deadline and retention, a quarantined one past
        retention)."""
        check_saga(saga, "counts")
        names = sorted(PAGE_STATUSES)
        with self._bounded("cannot count runs"):
            async with self.client.pipeline(transaction=False) as pipe:
                for shard in range(self._shards):
                    for status in names:
                        pipe.zcard(self._listing(shard, status, saga))
                sizes = await pipe.execute()
        counts = dict.fromkeys(names, 0)
        for i, size in enumerate(sizes):
            counts[names[i % len(names)]] += int(size)
        return counts

    async def note(self, run_id: str, event: OperatorAction) -> None:
        """Append an operator's action to the run's events (``RunNotFound`` if none)."""
        check_note(run_id, event)
        with self._bounded(f"cannot note on run {run_id}", run_id):
            done = await self._note(keys=self._run_keys(run_id), args=[run_id, encode_event(event)])
        if not done:
            raise RunNotFound(f"no record of run {run_id!r} in this store", run_id)

    # -- recovery, undo, keys ------------------------------------------------------------

    async def abandoned(
        self, sagas: Mapping[str, str], *, limit: int = 100
    ) -> Sequence[tuple[str, str]]:
        """Unfinished runs of ``sagas`` (name -> saga_version) whose owner's lease has
        expired, oldest first, as (run id, owner); nothing is taken yet."""
        found: list[tuple[str, str]] = []
        page = max(limit, 100)
        running = self._merged("running", newest_first=False, page=page)
        scanned = 0
        while len(found) < limit and scanned < 100 * page:  # bounded scan of the running set
            with self._bounded("cannot look for abandoned runs"):
                taken = await running.take(page)
                if not taken:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for run_id, _ in taken:
                        pipe.hmget(self._run_key(run_id), "owner", "saga", "version")
                    rows = [[_text(v) for v in row] for row in await pipe.execute()]
                gone: dict[int, list[str]] = {}
                for (run_id, shard), row in zip(taken, rows, strict=True):
                    if row[0] is None:
                        gone.setdefault(shard, []).append(run_id)
                if gone:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for shard, ids in gone.items():
                            pipe.zrem(self._running(shard), *ids)
                        await pipe.execute()
                    for shard, ids in gone.items():
                        running.removed(shard, len(ids))
                candidates = [
                    (run_id, owner, shard)
                    for (run_id, shard), (owner, saga, version) in zip(taken, rows, strict=True)
                    if owner is not None
                    and owner != self._owner
                    and "/" not in run_id  # a child run: its parent's recovery drives it
                    and saga is not None
                    and saga in sagas
                    and sagas[saga] == version  # another version waits for its own workers
                ]
                if candidates:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for _, owner, shard in candidates:
                            pipe.exists(self._owner_key(owner, shard))
                        alive = await pipe.execute()
                    found += [
                        (run_id, owner)
                        for (run_id, owner, _), live in zip(candidates, alive, strict=True)
                        if not live
                    ]
            scanned += len(taken)
        return found[:limit]

    async def claim(self, run_id: str, owner: str) -> RunRecord | None:
        """Take over ``run_id`` from ``owner`` if that owner's lease has expired and the run
        is unfinished; the record, now owned by this store, or ``None`` (taken by
        another recoverer, finished, or its owner came back)."""
        lease = self._owner_key(owner, self._shard(run_id))
        with self._bounded(f"cannot take over run {run_id}", run_id):
            reply = await self._claim(
                keys=[self._run_key(run_id), lease], args=[owner, self._owner]
            )
        if not reply:
            return None
        data, status, saga, version = reply
        if data is None:
            raise CorruptRecord(f"run {run_id} has no record, only its index fields", run_id)
        record = self._assemble(run_id, data, status, self._owner, ())
        check_identity(record, run_id, _text(saga), _text(version))
        return record

    async def quarantine(
        self, run_id: str, reason: str, *, parked: bool = False
    ) -> Quarantined | None:
        """Set aside ``run_id`` (taken by this store; ``parked``: a parked run, owned by
        none): out of the running (or parked) set, kept with ``reason`` for
        ``retention``; ``None`` if it is not so any more."""
        now = time.time()
        most = -(-_MAX_QUARANTINED // self._shards)  # per shard: the cap over all of them
        with self._bounded(f"cannot quarantine run {run_id}", run_id):
            done = await self._quarantine(
                keys=self._run_keys(run_id, "parked" if parked else "running", "quarantine"),
                args=[
                    run_id,
                    "parked" if parked else self._owner,
                    reason,
                    now,
                    max(1, round(self.retention * 1000)),
                    now - self.retention,
                    most,
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
        aside = self._merged("quarantine", newest_first=True, page=max(limit, 1))
        with self._bounded("cannot list quarantined runs"):
            ids = [run_id for run_id, _ in await aside.take(limit)]
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
                keys=self._run_keys(run_id, "running", "quarantine"), args=[run_id]
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
                        *self._run_keys(run_id, "running"),
                        self._owner_key(owner, self._shard(run_id)),
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

    # -- parked runs and their events ----------------------------------------------------

    async def park(self, write: Write, until: float | None) -> None:
        """Record that a run this store owns parks (status ``waiting``): out of the
        running runs, among the parked ones until ``until`` (wall clock; ``None``: no
        deadline, kept for ``retention``)."""
        now = time.time()
        score = until if until is not None else now + self.retention
        ttl = max(1, round((max(score - now, 0.0) + self.retention) * 1000))
        with self._bounded(f"cannot park run {write.run_id}", write.run_id):
            applied = await self._park(
                keys=[
                    *self._run_keys(write.run_id, "running", "parked"),
                    self._waiting_key(write.run_id),
                ],
                args=[
                    write.run_id,
                    write.record,
                    self._owner,
                    write.seq,
                    score,
                    f"{self.prefix}finished:{write.run_id}",
                    ttl,
                    *write.events,
                ],
            )
        if applied == 3:
            raise RunRecordLost(f"the record of run {write.run_id} is gone", write.run_id)
        if not applied:
            raise RunTakenOver(f"run {write.run_id} was taken over", write.run_id)

    async def take_parked(self, write: Write, seen: int) -> bool:
        """Take a parked run, as read at ``seen`` (its record's ``seq``), applying
        ``write``; ``False`` if it is not parked so any more (another took it)."""
        with self._bounded(f"cannot take run {write.run_id}", write.run_id):
            taken = await self._take(
                keys=self._run_keys(write.run_id, "running", "parked"),
                args=[
                    write.run_id,
                    seen,
                    self._owner,
                    write.record,
                    write.status,
                    write.seq,
                    time.time(),
                    *write.events,
                ],
            )
        return bool(taken)

    async def due(self, sagas: Mapping[str, str], *, limit: int = 100) -> Sequence[str]:
        """Parked runs of ``sagas`` (name -> saga_version) whose first wait has ended (a
        deadline passed, a timer is due), oldest first; nothing is taken. Runs of other
        sagas (or versions) and child runs are passed over, never in the way."""
        now = time.time()
        found: list[str] = []
        page = max(limit, 100)
        with self._bounded("cannot look for parked runs"):
            for shard in range(self._shards):
                start = 0
                while len(found) < limit and start < 100 * page:  # a bounded scan
                    ids = [
                        _text(m) or ""
                        for m in await self.client.zrangebyscore(
                            self._parked(shard), "-inf", now, start=start, num=page
                        )
                    ]
                    if not ids:
                        break
                    async with self.client.pipeline(transaction=False) as pipe:
                        for run_id in ids:
                            pipe.hmget(self._run_key(run_id), "saga", "version", "status")
                        rows = [[_text(v) for v in row] for row in await pipe.execute()]
                    gone = [r for r, row in zip(ids, rows, strict=True) if row[2] is None]
                    if gone:  # expired records
                        await self.client.zrem(self._parked(shard), *gone)
                    found += [
                        run_id
                        for run_id, (saga, version, status) in zip(ids, rows, strict=True)
                        if status == "waiting"
                        and "/" not in run_id  # a child run: its parent's wake drives it
                        and saga is not None
                        and sagas.get(saga) == version
                    ]
                    start += len(ids) - len(gone)
        return found[:limit]

    async def post(self, saga: str, key: str, payload: bytes) -> tuple[str, str | None]:
        """Keep an event's ``payload`` for ``key``: ``(state, run)``, state ``kept``
        (``run``: the run that waits for it, if one does), ``duplicate`` (a payload is
        kept already) or ``consumed`` (a run took the key's event)."""
        with self._bounded(f"cannot deliver event {key!r}"):
            state, run = await self._post(
                keys=[self._mail_key(saga, key)],
                args=[payload, max(1, round(self.idempotency_window * 1000))],
            )
        return _text(state) or "", _text(run) or None

    async def bind(
        self, saga: str, key: str, run_id: str, until: float | None
    ) -> tuple[str, bytes | None]:
        """``run_id`` waits for ``key``: ``("bound", None)``, ``("payload", kept
        payload)``, or ``("taken", None)`` when another run waits for it or took it."""
        keep = self.mail_keep(until)
        with self._bounded(f"cannot wait for event {key!r}", run_id):
            state, data = await self._bind(
                keys=[self._mail_key(saga, key)], args=[run_id, max(1, round(keep * 1000))]
            )
        state = _text(state) or ""
        return state, (bytes(data) if state == "payload" else None)

    async def consume(self, saga: str, key: str, run_id: str) -> None:
        """``run_id`` took the event of ``key``: a later one is refused (for the
        idempotency window)."""
        with self._bounded(f"cannot mark event {key!r} consumed", run_id):
            await self._consume(
                keys=[self._mail_key(saga, key)],
                args=[run_id, max(1, round(self.idempotency_window * 1000))],
            )

    async def bound(self, saga: str, key: str) -> str | None:
        """The run that waits for ``key`` (or took its event), if one does."""
        with self._bounded(f"cannot read event {key!r}"):
            run = await self.client.hget(self._mail_key(saga, key), "run")
        return _text(run)

    async def unbind(self, saga: str, key: str, run_id: str) -> None:
        """``run_id`` no longer waits for ``key`` (it ended otherwise): a late event is
        refused (``closed``), and another run may wait for the key."""
        with self._bounded(f"cannot free event {key!r}", run_id):
            await self._unbind(keys=[self._mail_key(saga, key)], args=[run_id])

    async def unpost(self, saga: str, key: str, payload: bytes) -> None:
        """Take back ``payload`` (no run will take it)."""
        with self._bounded(f"cannot take back event {key!r}"):
            await self._unpost(keys=[self._mail_key(saga, key)], args=[payload])

    async def bad_payload(self, saga: str, key: str) -> tuple[str | None, int]:
        """Count a bad payload for the run waiting for ``key``: (that run, its count), or
        ``(None, 0)`` if no run waits for it."""
        with self._bounded(f"cannot count a bad payload of event {key!r}"):
            run, count = await self._bad(keys=[self._mail_key(saga, key)], args=[])
        return _text(run) or None, int(count)

    async def wait_finished(self, run_id: str, *, parked: bool = False) -> RunRecord:
        """Wait for the run's finish notification (``parked``: or that it parked); check
        again every ``recheck`` seconds (jittered) in case it was missed or its owner
        died and someone else recovers it."""
        waiting = self._waiting_key(run_id)
        while True:
            with self._bounded(f"cannot wait for run {run_id}", run_id):
                await self.client.set(waiting, "1", px=max(1, round(self.recheck * 3000)))
            record = await self.load(run_id)
            if record.status in FINISHED or (parked and record.status == "waiting"):
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


class _Merged:
    """Sorted sets (one per shard) read as one, in score order (ties by member), a page
    of each at a time: :meth:`take` the next entries, as (member, index of its set)."""

    def __init__(self, client: Client, keys: Sequence[str], *, newest_first: bool, page: int):
        self.client = client
        self.keys = list(keys)
        self.newest_first = newest_first
        self.page = page
        self.offsets = [0] * len(self.keys)  # entries read from each set
        self.heads: list[deque[tuple[float, str]]] = [deque() for _ in self.keys]
        self.done = [False] * len(self.keys)  # no more entries in the set

    async def take(self, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` next entries (fewer at the end of every set)."""
        taken: list[tuple[str, int]] = []
        while len(taken) < count:
            await self._fill()
            live = [i for i, head in enumerate(self.heads) if head]
            if not live:
                break
            pick = (max if self.newest_first else min)(live, key=lambda i: self.heads[i][0])
            taken.append((self.heads[pick].popleft()[1], pick))
        return taken

    def removed(self, index: int, count: int) -> None:
        """``count`` entries already taken from set ``index`` were removed from it."""
        self.offsets[index] -= count

    async def _fill(self) -> None:
        """Read the next page of each set whose entries read so far are all taken (one
        round trip, or one per node on a cluster)."""
        empty = [i for i, head in enumerate(self.heads) if not head and not self.done[i]]
        if not empty:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for i in empty:
                start, end = self.offsets[i], self.offsets[i] + self.page - 1
                if self.newest_first:
                    pipe.zrevrange(self.keys[i], start, end, withscores=True)
                else:
                    pipe.zrange(self.keys[i], start, end, withscores=True)
            pages = await pipe.execute()
        for i, rows in zip(empty, pages, strict=True):
            self.offsets[i] += len(rows)
            self.done[i] = len(rows) < self.page
            self.heads[i].extend((float(score), _text(member) or "") for member, score in rows)


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
    except ResponseError as exc:
        refused = _refusal(exc)
        if refused is not None:
            raise refused from None
        raise StoreUnavailable(f"{what}: {exc}", run_id) from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"{what}: {exc}", run_id) from exc


def _accepts(
    query: PageQuery, status: str | None, saga: str | None, aside: bool, doubt: Any
) -> bool:
    """Whether a run (its hash's fields) belongs to the page ``query`` asks for."""
    if query.saga is not None and saga != query.saga:
        return False
    if query.status == "quarantined":
        return aside
    if aside:
        return False  # listed under "quarantined" only
    if query.status == "in_doubt":
        return doubt is not None
    return query.status is None or status == query.status


def _refusal(exc: Exception) -> ValueError | None:
    """The ValueError for a script's refusal of an argument (``BAD_ARGUMENT <name>
    "<value>": <why>``, replied before the script's first write), else ``None``."""
    message = str(exc)
    if isinstance(exc, ResponseError) and message.startswith("BAD_ARGUMENT "):
        detail = message.removeprefix("BAD_ARGUMENT ").split(" (asaga ", 1)[0]
        return ValueError(f"refused by the run store script: {detail}")
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
