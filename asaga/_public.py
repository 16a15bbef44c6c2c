"""The shape of the public API: which module a name reports, and who may construct what.

Classes and functions are defined in private modules (``asaga._exceptions``,
``asaga._saga``...); the public module that exports one sets its ``__module__``, so that
reprs and tracebacks say ``asaga.Saga`` and ``asaga.locks.LeaseLost`` (as trio's and
httpx's ``__init__`` do). Each public module calls :func:`claim` once its names are bound.

Objects that asaga creates for its users (a run's :class:`~asaga.SagaResult`, a
:class:`~asaga.locks.Lease`, a :class:`~asaga.Step` made by ``@step``) have no public
constructor: their class's metaclass is :class:`NoPublicConstructor` (trio's pattern), so
calling the class raises ``TypeError`` and asaga builds them with ``cls._create(...)``.
"""

import inspect
import typing
from collections.abc import Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

__all__ = ["NoPublicConstructor", "claim", "is_private"]

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass of the classes whose instances only asaga creates.

    ``Cls(...)`` raises ``TypeError``, saying how users get one (the class's
    ``_created_by``); asaga calls ``Cls._create(...)``, which takes the arguments of
    ``__init__``. Unpickling and ``copy`` never call the class, so they keep working.
    """

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        how = getattr(cls, "_created_by", "asaga creates them")
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor: {how}")

    if TYPE_CHECKING:

        def _create(cls: type[T], *args: Any, **kwargs: Any) -> T: ...

    else:
        # `type.__call__` bound to the class: creating one costs what `Cls(...)` used to
        # (a Python-level `super().__call__` adds a third to a small dataclass's creation).
        _create = type.__call__


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
            if isinstance(obj, type):
                _resolve_annotations(obj)
            with suppress(AttributeError, TypeError):  # a type that refuses keeps its own
                obj.__module__ = module


def _resolve_annotations(cls: type) -> None:
    """Replace the string annotations of ``cls`` (``from __future__ import annotations``)
    by what they name, in the module that defines them, before ``__module__`` changes:
    msgspec and ``typing.get_type_hints`` look names up in ``__module__``, and a public
    module need not hold a private one's names (``MapResult``'s ``T``)."""
    own = vars(cls).get("__annotations__")
    if not own or not any(isinstance(a, str) for a in own.values()):
        return
    with suppress(Exception):  # an annotation that does not resolve stays as it was
        hints = typing.get_type_hints(cls)
        cls.__annotations__ = {name: hints.get(name, value) for name, value in own.items()}
