"""Build sagas from a dependency mapping at run time (for property tests)."""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from asaga import Saga, step


def make_function(
    name: str, params: list[str], body: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """An ``async def name(<params>)`` that forwards its keyword arguments to ``body``."""

    async def fn(**kwargs: Any) -> Any:
        return await body(**kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in params]
    )
    return fn


def make_saga(
    name: str,
    deps: Mapping[str, list[str]],
    steps: Mapping[str, Callable[..., Awaitable[Any]]],
    compensations: Mapping[str, Callable[..., Awaitable[Any]]],
    *,
    extra: Mapping[str, Any] | None = None,
    skip: Collection[str] = (),
    **settings: Any,
) -> type[Saga]:
    """A saga whose step ``s`` takes ``deps[s]`` and runs ``steps[s]``.

    ``compensations[s]``, when given, undoes ``s`` and takes the step's own result.
    ``extra`` adds ready-made steps (composed, mapped) under their names; steps named in
    ``skip`` get a condition that is always false.
    """
    namespace: dict[str, Any] = dict(settings)
    namespace.update(extra or {})
    made = {}
    for s, params in deps.items():
        when = (lambda: False) if s in skip else None
        made[s] = step(when=when)(make_function(s, params, steps[s]))
        namespace[s] = made[s]
    for s, undo in compensations.items():
        namespace[f"undo_{s}"] = made[s].compensate(make_function(f"undo_{s}", [s], undo))
    return types.new_class(name, (Saga,), {}, lambda ns: ns.update(namespace))
