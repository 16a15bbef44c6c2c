"""Public modules claim the names they export.

Classes and functions are defined in private modules (``asaga._exceptions``,
``asaga._saga``...); the public module that exports one sets its ``__module__``, so that
reprs and tracebacks say ``asaga.Saga`` and ``asaga.locks.LeaseLost`` (as trio's and
httpx's ``__init__`` do). Each public module calls :func:`claim` once its names are bound.
"""

import inspect
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

__all__ = ["claim", "is_private"]


def is_private(module: str) -> bool:
    """Whether the dotted ``module`` name has a private part (``asaga.locks._lease``)."""
    return any(part.startswith("_") for part in module.split("."))


def claim(module: str, namespace: Mapping[str, Any]) -> None:
    """Make ``module`` the ``__module__`` of the classes and functions named in
    ``namespace["__all__"]`` that still report a private asaga module.

    A name exported by two public modules keeps the first claim, which is the most specific
    one: a package imports its subpackages before its own ``__init__`` ends (so ``Lock``,
    exported by ``asaga`` and ``asaga.locks``, is ``asaga.locks.Lock``). A name imported
    lazily (a module ``__getattr__``) is claimed there, on import.
    """
    for name in namespace["__all__"]:
        obj = namespace.get(name)
        if not (isinstance(obj, type) or inspect.isfunction(obj)):
            continue
        current: str = obj.__module__
        if current.partition(".")[0] == "asaga" and is_private(current):
            with suppress(AttributeError, TypeError):  # a type that refuses keeps its own
                obj.__module__ = module
