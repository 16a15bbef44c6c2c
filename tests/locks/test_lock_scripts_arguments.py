"""The lease scripts, called directly past the Python side, with one bad argument at a time.

Redis does not roll a script back: a script that fails half-way keeps what it wrote. So
each script checks all its arguments (and that its keys are those of one lease key)
before its first write, and replies ``BAD_ARGUMENT <name> "<value>": <why>``, which the
provider raises as ValueError. Modelled on tests/e2e/test_inventory_scripts.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from asaga.locks import RedisLockProvider
from asaga.locks._redis import MAX_FAIRNESS, _RedisBackend
from tests.lua_scripts import broken, keys_and_ttls, registered_scripts
from tests.lua_scripts import script_cases as lua_script_cases

pytestmark = pytest.mark.anyio

GRANT = 100  # the grant holding the lease key "k"
INTEGERS = ["nan", "inf", "1.5", "1e3", "0x10", " 2", "2 ", "", "abc", "99999999999999999"]
TOO_BIG = "9007199254740992"  # 2^53: past the integers Lua's doubles hold exactly


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[_RedisBackend]:
    """A provider's backend; the lease key "k" held by GRANT (tokens reserved up to 107)
    and wanted by another process, a stale count, a data key; "free" is held by nobody."""
    client = aioredis.Redis.from_url(redis_url)
    async with RedisLockProvider(client, prefix=redis_prefix) as locks:
        b = locks._backend
        await client.set(b.lock_key("k"), GRANT, px=50_000)
        await client.set(b.fence_key("k"), GRANT + 7, px=60_000)
        await client.set(b.want_key("k"), "other", px=50_000)
        await client.set(b.stale_key("k"), 3, px=60_000)
        await client.set(f"{redis_prefix}data:{{k}}", "before")
        yield b
    await client.aclose()


async def dump(b: _RedisBackend) -> dict[bytes, tuple[Any, int]]:
    """Every key under the provider's prefix, with its TTL."""
    return await keys_and_ttls(b.client, b.prefix)


def script_keys(b: _RedisBackend, script: str) -> list[str]:
    """The keys the provider passes to ``script``."""
    k = "k"
    return {
        "acquire": [b.lock_key("free"), b.fence_key("free"), b.want_key("free")],
        "renew": [b.lock_key(k)],
        "release": [b.lock_key(k), b.want_key(k)],
        "handoff": [b.lock_key(k), b.fence_key(k), b.want_key(k)],
        "extend": [b.lock_key(k), b.fence_key(k), b.want_key(k)],
        "fenced": [b.lock_key(k), b.stale_key(k), f"{b.prefix}data:{{k}}"],
    }[script]


def good_args(b: _RedisBackend, script: str) -> list[Any]:
    """Arguments the script accepts, and with which it writes."""
    g = str(GRANT)
    return {
        "acquire": ["5000", "2000", "me", "8", "60000"],
        "renew": ["5000", g],
        "release": [g, b.channel("k")],
        # streak 8 >= cap 8 and wanted by another process: released to it
        "handoff": [g, "5000", "8", "8", b.channel("k"), "me", "8", "60000"],
        # identity "other": the process that wants the key may extend
        "extend": [g, str(GRANT + 8), "8", "5000", "other", str(MAX_FAIRNESS), "60000"],
        "fenced": [g, "86400000", str(MAX_FAIRNESS), "1", "SET", "3", "1", "after"],
    }[script]


NAMES = {
    "acquire": ["ttl_ms", "want_ms", "identity", "block", "keep_ms"],
    "renew": ["ttl_ms", "grant"],
    "release": ["grant", "channel"],
    "handoff": [
        "grant",
        "ttl_ms",
        "streak",
        "cap",
        "channel",
        "identity",
        "block",
        "keep_ms",
    ],
    "extend": ["grant", "end", "block", "ttl_ms", "identity", "cap", "keep_ms"],
    "fenced": [
        "token",
        "stale_ms",
        "cap",
        "commands",
        "command",
        "key_index",
        "argument_count",
    ],
}

MS = [*INTEGERS, "0", "-1", TOO_BIG, None]
TOKEN = [*INTEGERS, "0", "-7", TOO_BIG, None]
FAIRNESS = [*INTEGERS, "0", str(MAX_FAIRNESS + 1), None]
IDENTITY = ["", "x" * 257, None]
CHANNEL = [
    "",
    "released:k",
    "CHANNEL_PADDED",
    "CHANNEL_OF_OTHER",
    None,
]  # the last two: a channel with a space, another key's

BAD: dict[str, dict[str, list[Any]]] = {
    "acquire": {
        "ttl_ms": MS,
        "want_ms": MS,
        "identity": IDENTITY,
        "block": FAIRNESS,
        "keep_ms": [*INTEGERS, "-1", TOO_BIG, None],
    },
    "renew": {"ttl_ms": MS, "grant": TOKEN},
    "release": {"grant": TOKEN, "channel": CHANNEL},
    "handoff": {
        "grant": TOKEN,
        "ttl_ms": MS,
        "streak": [*INTEGERS, "-1", TOO_BIG, None],
        "cap": FAIRNESS,
        "channel": CHANNEL,
        "identity": IDENTITY,
        "block": FAIRNESS,
        "keep_ms": [*INTEGERS, "-1", TOO_BIG, None],
    },
    "extend": {
        "grant": TOKEN,
        "end": [*INTEGERS, "0", str(GRANT), str(GRANT - 1), TOO_BIG, None],
        "block": FAIRNESS,
        "ttl_ms": MS,
        "identity": IDENTITY,
        "cap": FAIRNESS,
        "keep_ms": [*INTEGERS, "-1", TOO_BIG, None],
    },
    "fenced": {
        "token": [*INTEGERS, "-1", TOO_BIG, None],
        "stale_ms": MS,
        "cap": FAIRNESS,
        "commands": [*INTEGERS, "-1", "9", None],
        "command": ["", "x" * 257, None],
        "key_index": [*INTEGERS, "0", "1", "2", "4", None],
        "argument_count": [*INTEGERS, "-1", "2", "100", None],
    },
}


def script_cases() -> list[tuple[str, str, int, list[Any]]]:
    """(script, argument name, index of the bad one, bad values)."""
    return lua_script_cases(NAMES, BAD)


async def test_every_script_of_the_provider_is_checked(backend: _RedisBackend) -> None:
    """The cases below cover every script the provider registers, and every argument."""
    assert registered_scripts(backend) == {case[0] for case in script_cases()} == set(BAD)
    for script in NAMES:
        assert set(NAMES[script]) == set(BAD[script]), script


@pytest.mark.parametrize(
    ("script", "name", "index", "bad"),
    [
        pytest.param(*case[:3], bad, id=f"{case[0]}-{case[1]}={bad!r}")
        for case in script_cases()
        for bad in case[3]
    ],
)
async def test_a_script_refuses_a_bad_argument_before_writing(
    backend: _RedisBackend, script: str, name: str, index: int, bad: Any
) -> None:
    """Called directly with one bad argument (or without it), each script replies
    ``BAD_ARGUMENT <name> ...`` and every key is as it was."""
    b = backend
    bad = {"CHANNEL_OF_OTHER": b.channel("other"), "CHANNEL_PADDED": b.channel("k") + " "}.get(
        bad, bad
    )
    args = broken(good_args(b, script), index, bad)
    before = await dump(b)
    with pytest.raises(ResponseError, match=f"^BAD_ARGUMENT {name} "):
        await _script(b, script)(keys=script_keys(b, script), args=args)
    assert await dump(b) == before


def _script(b: _RedisBackend, script: str) -> Any:
    return getattr(b, "fenced" if script == "fenced" else f"_{script}")


@pytest.mark.parametrize("script", sorted(NAMES))
async def test_a_script_refuses_an_argument_too_many(backend: _RedisBackend, script: str) -> None:
    b = backend
    before = await dump(b)
    with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT arguments "):
        await _script(b, script)(keys=script_keys(b, script), args=[*good_args(b, script), "extra"])
    assert await dump(b) == before


def bad_keys(b: _RedisBackend, script: str) -> list[list[str]]:
    """Key lists that are not the keys of one lease key the script takes."""
    keys = script_keys(b, script)
    if script == "renew":
        return [[f"{b.prefix}fence:{{k}}"], [f"{b.prefix}lock:k"], [f"{b.prefix}lock:{{k"]]
    other = [key.replace("{k}", "{other}").replace("{free}", "{other}") for key in keys]
    shuffled = [keys[1], keys[0], *keys[2:]]
    cases = [keys[:1], [other[0], *keys[1:]], [keys[0], other[1], *keys[2:]], shuffled]
    cases.append(
        [key.replace(b.prefix, "elsewhere:", 1) if i else key for i, key in enumerate(keys)]
    )
    if script != "fenced":
        cases.append([*keys, keys[-1]])  # a key too many
    return cases


@pytest.mark.parametrize("script", sorted(NAMES))
async def test_a_script_refuses_keys_of_different_lease_keys(
    backend: _RedisBackend, script: str
) -> None:
    """The keys must be the lock (and fence, want or stale) keys of one lease key under one
    prefix: a script would otherwise write a key of another lease."""
    b = backend
    before = await dump(b)
    for keys in bad_keys(b, script):
        with pytest.raises(ResponseError, match=r"^BAD_ARGUMENT keys "):
            await _script(b, script)(keys=keys, args=good_args(b, script))
    assert await dump(b) == before


@pytest.mark.parametrize("script", sorted(NAMES))
async def test_the_good_arguments_are_accepted(backend: _RedisBackend, script: str) -> None:
    """The cases above break one argument of a call that the script accepts and that
    writes."""
    b = backend
    before = await dump(b)
    reply = await _script(b, script)(keys=script_keys(b, script), args=good_args(b, script))
    assert reply
    assert await dump(b) != before


async def test_the_scripts_accept_a_prefix_holding_the_key_names(
    redis_url: str, redis_prefix: str
) -> None:
    """A prefix (or a lease key) may itself hold ``lock:{``: the keys still match."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        locks = RedisLockProvider(client, prefix=f"{redis_prefix}lock:{{x}}:")
        async with locks, locks.lease("lock:{y}", ttl=5.0) as lease:
            data = f"{redis_prefix}data:{{lock:{{y}}}}"
            assert await locks.fenced(lease, ("SET", data, 1)) == [b"OK"]
    finally:
        await client.aclose()


async def test_the_provider_raises_a_refusal_as_value_error(backend: _RedisBackend) -> None:
    """A refused argument is the caller's mistake, not Redis being unreachable."""
    b = backend
    before = await dump(b)
    with pytest.raises(ValueError, match=r"^refused by the lease script: ttl_ms "):
        await b.try_acquire("free", 1e20)
    with pytest.raises(ValueError, match=r"^refused by the lease script: end "):
        await b.extend("k", GRANT, GRANT, 5.0)
    with pytest.raises(ValueError, match=r"^refused by the lease script: ttl_ms "):
        await b.renew({"k": GRANT}, 1e20)
    assert await dump(b) == before
