"""The run store's scripts, called directly past the Python side, one bad argument at a time.

Redis does not roll a script back: a script that fails half-way keeps what it wrote. So
each script checks all its arguments (and that its keys are those of one run, or one key
of the kind it takes) before its first write, and replies ``BAD_ARGUMENT <name> ...``,
which the store raises as ValueError. Modelled on tests/locks/test_lock_scripts_arguments.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from asaga.runs import RedisRunStore
from asaga.runs._record import RunRecord, Write, encode_record
from asaga.runs._redis import _SCRIPTS
from tests.lua_scripts import broken, keys_and_ttls, registered_scripts
from tests.lua_scripts import script_cases as lua_script_cases

pytestmark = pytest.mark.anyio

INTEGERS = ["nan", "inf", "1.5", "1e3", "0x10", " 2", "2 ", "", "abc", "99999999999999999"]
TOO_BIG = "9007199254740992"  # 2^53: past the integers Lua's doubles hold exactly
NOW = repr(time.time())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisRunStore]:
    """An open store; run "r" owned by it (seq 1), "dead" owned by a gone owner, "done"
    succeeded, "p" parked (seq 3), "q" quarantined; an idempotency key naming "r"; mail
    "m" bound to "p", mail "m3" holding a payload."""
    client = aioredis.Redis.from_url(redis_url)
    async with RedisRunStore(client, prefix=redis_prefix) as s:
        me = s._owner
        runs = {
            "r": {"status": "running", "owner": me, "seq": 1},
            "dead": {"status": "running", "owner": "gone", "seq": 1},
            "done": {"status": "succeeded", "owner": "gone", "seq": 1},
            "p": {"status": "waiting", "owner": "parked", "seq": 3},
            "q": {"status": "running", "owner": "quarantine", "quarantined": "why"},
        }
        for run_id, fields in runs.items():
            await client.hset(s._run_key(run_id), mapping={"record": "x", "saga": "S", **fields})
            await client.rpush(s._events_key(run_id), "e0")
        await client.pexpire(s._run_key("done"), 500_000)
        await client.zadd(s._running(), {"r": 1, "dead": 1})
        await client.zadd(s._index(), {"r": 1, "dead": 1, "done": 1, "p": 1, "q": 1})
        await client.zadd(s._parked(), {"p": 1})
        await client.zadd(s._quarantined(), {"q": 1})
        await client.set(f"{s.prefix}key:S:k", "r", px=500_000)
        await client.hset(s._mail_key("S", "m"), "run", "p")
        await client.hset(s._mail_key("S", "m3"), "payload", "pay")
        await client.set(s._waiting_key("r"), "1")
        yield s
    await client.aclose()


async def dump(s: RedisRunStore) -> dict[bytes, tuple[Any, int]]:
    """Every key under the store's prefix but its owner lease (renewed meanwhile), with
    its TTL."""
    return await keys_and_ttls(s.client, s.prefix, leave_out=b":owner:")


def script_keys(s: RedisRunStore, script: str) -> list[str]:
    """The keys the store passes to ``script``."""
    return {
        "create": s._run_keys("new", "running", "index"),
        "claim_key": [f"{s.prefix}key:S:k2"],
        "probe": [s._run_key("ghost")],
        "write": [*s._run_keys("r", "running", "index"), s._waiting_key("r")],
        "claim": [s._run_key("dead"), s._owner_key("gone")],
        "quarantine": s._run_keys("r", "running", "quarantine"),
        "readmit": s._run_keys("q", "running", "quarantine"),
        "claim_undo": [*s._run_keys("done", "running"), s._owner_key("gone")],
        "release_key": [f"{s.prefix}key:S:k"],
        "park": [*s._run_keys("r", "running", "parked"), s._waiting_key("r")],
        "take": s._run_keys("p", "running", "parked"),
        "post": [s._mail_key("S", "m")],
        "bind": [s._mail_key("S", "m2")],
        "consume": [s._mail_key("S", "m")],
        "unpost": [s._mail_key("S", "m3")],
        "unbind": [s._mail_key("S", "m")],
        "bad": [s._mail_key("S", "m")],
        "note": s._run_keys("r"),
    }[script]


def good_args(s: RedisRunStore, script: str) -> list[Any]:
    """Arguments the script accepts, and with which it writes (as the store sends them)."""
    me, cutoff = s._owner, repr(time.time() - 3600)
    return {
        "create": ["new", "rec", "running", me, "S", NOW, "1", "nonce", "1", "e1"],
        "claim_key": ["new", "60000", ""],
        "probe": ["1", "60000"],
        "write": ["r", "rec", "running", me, "0", "3600000", cutoff, f"{s.prefix}finished:r", "2"],
        "claim": ["gone", me],
        "quarantine": ["r", me, "broken", NOW, "3600000", cutoff, "100"],
        "readmit": ["q"],
        "claim_undo": ["succeeded", "gone", me, NOW, "done"],
        "release_key": ["r"],
        "park": ["r", "rec", me, "2", NOW, f"{s.prefix}finished:r", "3600000", "e1"],
        "take": ["p", "3", me, "rec", "running", "4", NOW, "e1"],
        "post": ["payload", "60000"],
        "bind": ["p", "60000"],
        "consume": ["p", "60000"],
        "unpost": ["pay"],
        "unbind": ["p"],
        "bad": [],
        "note": ["r", "e1"],
    }[script]


NAMES = {
    "create": ["run_id", "record", "status", "owner", "saga", "now", "version", "nonce", "seq"],
    "claim_key": ["run_id", "window_ms", "taking"],
    "probe": ["void", "tombstone_ms"],
    "write": [
        "run_id",
        "record",
        "status",
        "owner",
        "final",
        "retention_ms",
        "cutoff",
        "channel",
        "seq",
    ],
    "claim": ["old_owner", "new_owner"],
    "quarantine": ["run_id", "owner", "reason", "now", "retention_ms", "cutoff", "most"],
    "readmit": ["run_id"],
    "claim_undo": ["status", "owner", "new_owner", "now", "run_id"],
    "release_key": ["run_id"],
    "park": ["run_id", "record", "owner", "seq", "score", "channel", "ttl_ms"],
    "take": ["run_id", "seen", "owner", "record", "status", "seq", "now"],
    "post": ["payload", "keep_ms"],
    "bind": ["run_id", "keep_ms"],
    "consume": ["run_id", "keep_ms"],
    "unpost": ["payload"],
    "unbind": ["run_id"],
    "bad": [],
    "note": ["run_id", "event"],
}
VARIADIC = {"create", "write", "park", "take"}  # events follow the named arguments

MS = [*INTEGERS, "0", "-1", TOO_BIG, None]
SEQ = [*INTEGERS, "-1", TOO_BIG, None]
TIME = ["nan", "inf", "-inf", "", "abc", "0x10", " 2", "2 ", "1e400", "1e16", "1,5", None]
ID = ["", "x" * 4097, None]
ID0 = ["x" * 4097, None]  # may be empty
BLOB = ["", None]
STATUS = ["", "void", "RUNNING", "running ", None]
FLAG = ["", "2", "true", " 1", None]
CHANNEL = ["", "finished:r", "CHANNEL_OF_OTHER", "CHANNEL_PADDED", None]

BAD: dict[str, dict[str, list[Any]]] = {
    "create": {
        "run_id": ID,
        "record": BLOB,
        "status": STATUS,
        "owner": ID,
        "saga": ID,
        "now": TIME,
        "version": ID0,
        "nonce": ID0,
        "seq": SEQ,
    },
    "claim_key": {"run_id": ID, "window_ms": MS, "taking": ID0},
    "probe": {"void": FLAG, "tombstone_ms": MS},
    "write": {
        "run_id": ID,
        "record": BLOB,
        "status": STATUS,
        "owner": ID,
        "final": FLAG,
        "retention_ms": MS,
        "cutoff": TIME,
        "channel": CHANNEL,
        "seq": SEQ,
    },
    "claim": {"old_owner": ID, "new_owner": ID},
    "quarantine": {
        "run_id": ID,
        "owner": ID,
        "reason": BLOB,
        "now": TIME,
        "retention_ms": MS,
        "cutoff": TIME,
        "most": SEQ,
    },
    "readmit": {"run_id": ID},
    "claim_undo": {
        "status": ["", "running", "failed", None],
        "owner": ID0,
        "new_owner": ID,
        "now": TIME,
        "run_id": ID,
    },
    "release_key": {"run_id": ID},
    "park": {
        "run_id": ID,
        "record": BLOB,
        "owner": ID,
        "seq": SEQ,
        "score": TIME,
        "channel": CHANNEL,
        "ttl_ms": MS,
    },
    "take": {
        "run_id": ID,
        "seen": SEQ,
        "owner": ID,
        "record": BLOB,
        "status": STATUS,
        "seq": SEQ,
        "now": TIME,
    },
    "post": {"payload": BLOB, "keep_ms": MS},
    "bind": {"run_id": ID, "keep_ms": MS},
    "consume": {"run_id": ID, "keep_ms": MS},
    "unpost": {"payload": BLOB},
    "unbind": {"run_id": ID},
    "bad": {},
    "note": {"run_id": ID, "event": BLOB},
}


def script_cases() -> list[tuple[str, str, int, list[Any]]]:
    """(script, argument name, index of the bad one, bad values)."""
    return lua_script_cases(NAMES, BAD)


def store_scripts(s: RedisRunStore) -> set[str]:
    """The scripts the store registers, and those its writer sends by EVALSHA."""
    return registered_scripts(s) | set(_SCRIPTS)


async def test_every_script_of_the_store_is_checked(store: RedisRunStore) -> None:
    """The cases below cover every script the store runs, and every argument."""
    assert store_scripts(store) == set(NAMES) == set(BAD)
    for script in NAMES:
        assert set(NAMES[script]) == set(BAD[script]), script


def _script(s: RedisRunStore, script: str) -> Any:
    if script in _SCRIPTS:
        return s.client.register_script(_SCRIPTS[script])
    return getattr(s, f"_{script}")


@pytest.mark.parametrize(
    ("script", "name", "index", "bad"),
    [
        pytest.param(*case[:3], bad, id=f"{case[0]}-{case[1]}={bad!r:.20}")
        for case in script_cases()
        for bad in case[3]
    ],
)
async def test_a_script_refuses_a_bad_argument_before_writing(
    store: RedisRunStore, script: str, name: str, index: int, bad: Any
) -> None:
    """Called directly with one bad argument (or without it), each script replies
    ``BAD_ARGUMENT <name> ...`` and every key is as it was."""
    s = store
    bad = {
        "CHANNEL_OF_OTHER": f"{s.prefix}finished:other",
        "CHANNEL_PADDED": f"{s.prefix}finished:r ",
    }.get(bad, bad)
    args = broken(good_args(s, script), index, bad)
    before = await dump(s)
    with pytest.raises(ResponseError, match=f"^BAD_ARGUMENT {name} "):
        await _script(s, script)(keys=script_keys(s, script), args=args)
    assert await dump(s) == before


@pytest.mark.parametrize("script", sorted(set(NAMES) - VARIADIC))
async def test_a_script_refuses_an_argument_too_many(store: RedisRunStore, script: str) -> None:
    s = store
    before = await dump(s)
    with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT arguments "):
        await _script(s, script)(keys=script_keys(s, script), args=[*good_args(s, script), "x"])
    assert await dump(s) == before


@pytest.mark.parametrize("script", sorted(VARIADIC))
async def test_a_script_refuses_an_empty_event(store: RedisRunStore, script: str) -> None:
    s = store
    args = [*good_args(s, script)[: len(NAMES[script])], "e1", ""]
    before = await dump(s)
    with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT event "):
        await _script(s, script)(keys=script_keys(s, script), args=args)
    assert await dump(s) == before


def bad_keys(s: RedisRunStore, script: str) -> list[list[str]]:
    """Key lists that are not the keys of one run (or one key of the kind) the script
    takes."""
    keys = script_keys(s, script)
    if len(keys) == 1:
        kind = "mail:" if "mail:" in keys[0] else "key:" if "key:" in keys[0] else "run:"
        return [[], [keys[0], keys[0]], [keys[0].replace(kind, "other:")]]
    cases = [
        keys[:-1],
        [*keys, keys[-1]],
        [keys[1], keys[0], *keys[2:]],
        [*keys[:-1], keys[-1].replace(s.prefix, "elsewhere:", 1)],
        [keys[0], *(k.replace(s.prefix, "elsewhere:", 1) for k in keys[1:])],
    ]
    if script == "claim":  # any run beside the lease named: another owner's lease
        return [*cases, [keys[0], s._owner_key("other")]]
    return [*cases, [s._run_key("other"), *keys[1:]]]  # another run than the one named


@pytest.mark.parametrize("script", sorted(NAMES))
async def test_a_script_refuses_keys_of_another_run(store: RedisRunStore, script: str) -> None:
    """The keys must be those of the run the arguments name, under one prefix: a script
    would otherwise write the keys of another run."""
    s = store
    before = await dump(s)
    for keys in bad_keys(s, script):
        with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT keys "):
            await _script(s, script)(keys=keys, args=good_args(s, script))
    assert await dump(s) == before


@pytest.mark.parametrize("script", sorted(NAMES))
async def test_the_good_arguments_are_accepted(store: RedisRunStore, script: str) -> None:
    """The cases above break one argument of a call that the script accepts and that
    writes."""
    s = store
    before = await dump(s)
    await _script(s, script)(keys=script_keys(s, script), args=good_args(s, script))
    assert await dump(s) != before


async def test_the_channel_of_a_cluster_layout_is_accepted(store: RedisRunStore) -> None:
    """On a cluster the keys are ``<p>{<p><shard>}...`` and the channel ``<p>finished:...``."""
    s = store
    base = f"{s.prefix}{{{s.prefix}7}}"
    keys = [f"{base}run:c", f"{base}events:c", f"{base}runs:running", f"{base}runs:index"]
    await s.client.hset(keys[0], mapping={"owner": s._owner, "seq": 1})
    args = [
        *["c", "rec", "succeeded", s._owner, "1", "3600000", NOW],
        *[f"{s.prefix}finished:c", "2"],
    ]
    assert await _script(s, "write")(keys=[*keys, f"{base}waiting:c"], args=args) == 1
    args[7] = f"{s.prefix}x{{finished:c"
    with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT channel "):
        await _script(s, "write")(keys=[*keys, f"{base}waiting:c"], args=args)


def _record(run_id: str) -> bytes:
    return encode_record(
        RunRecord(
            saga="S", saga_version="1", run_id=run_id, status="running", inputs=b"", fingerprint="f"
        )
    )


async def test_the_store_raises_a_refusal_as_value_error(redis_url: str, redis_prefix: str) -> None:
    """A retention past what Redis can count in milliseconds is refused by the write
    script (before it writes): the caller of that write gets ValueError, naming the
    argument, and the store's writer goes on with the other writes."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisRunStore(client, prefix=redis_prefix, retention=1e20) as s:
            ids = [f"v{i}" for i in range(5)]
            for run_id in ids:
                await s.create(
                    Write(run_id=run_id, record=_record(run_id), status="running", seq=1), None
                )
            before = await dump(s)
            errors: list[BaseException] = []

            async def write(run_id: str) -> None:
                try:
                    await s.write(
                        Write(run_id=run_id, record=_record(run_id), status="running", seq=2)
                    )
                except ValueError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:  # batched by the writer
                for run_id in ids:
                    tg.start_soon(write, run_id)
            assert len(errors) == len(ids)
            assert all(
                str(e).startswith("refused by the run store script: retention_ms ") for e in errors
            )
            assert await dump(s) == before
            assert not s._unsent
            # the writer is alive: a creation (no retention in it) still lands
            await s.create(
                Write(run_id="after", record=_record("after"), status="running", seq=1), None
            )
            assert (await s.load("after")).run_id == "after"
            with pytest.raises(ValueError, match=r"^refused by the run store script: keep_ms "):
                await s.bind("S", "m", "v0", 1e20)  # a direct (unbatched) script
    finally:
        await client.aclose()
