"""What the tests of asaga's Lua scripts share: each script is called directly with one
bad argument at a time and must refuse it before its first write (Redis does not roll a
script back), which these helpers set up and check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def script_cases(
    names: Mapping[str, Sequence[str]], bad: Mapping[str, Mapping[str, list[Any]]]
) -> list[tuple[str, str, int, list[Any]]]:
    """(script, argument name, index of the argument, bad values) for every argument of
    every script: ``names[script]`` lists its arguments in order, ``bad[script][name]``
    the values to try (None: the argument and those after it missing)."""
    return [
        (script, name, index, bad[script][name])
        for script, arguments in names.items()
        for index, name in enumerate(arguments)
    ]


def broken(args: Sequence[Any], index: int, bad: Any) -> list[Any]:
    """``args`` with the one at ``index`` replaced by ``bad``, or cut there if None."""
    args = list(args)
    if bad is None:
        del args[index:]  # missing
    else:
        args[index] = bad
    return args


def registered_scripts(owner: object) -> set[str]:
    """The names of the Lua scripts ``owner`` registered (attributes holding a redis-py
    ``Script``), without the leading underscore."""
    return {
        name.lstrip("_")
        for name, value in vars(owner).items()
        if "redis.call" in getattr(value, "script", "")
    }


async def keys_and_ttls(
    client: Any, prefix: str, *, leave_out: bytes | None = None
) -> dict[bytes, tuple[Any, int]]:
    """Every key under ``prefix`` (but those holding ``leave_out``), serialized, with its
    TTL in tens of seconds (DUMP leaves the TTL out; a renewal changes only the TTL)."""
    keys = [
        k
        async for k in client.scan_iter(match=f"{prefix}*")
        if leave_out is None or leave_out not in k
    ]
    return {k: (await client.dump(k), round(await client.pttl(k) / 10_000)) for k in sorted(keys)}
