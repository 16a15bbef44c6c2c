"""Reading annotations: ``Resource[T]`` markers and producer/consumer compatibility.

The compatibility check is deliberately conservative: it reports a mismatch only when it is
sure (``int`` fed into ``str``, ``list[int]`` into ``dict[str, int]``) and accepts whatever it
cannot judge (type variables, protocols, callables, unfamiliar typing forms). A false alarm
would block a correct saga; a missed one is still caught by the user's own type checker.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, TypeAlias, TypeVar, Union, get_args, get_origin

__all__ = ["EMPTY", "Resource", "compatible", "is_resource", "strip_annotated", "type_name"]

T = TypeVar("T")


class _ResourceMarker:
    """Metadata that marks an ``Annotated`` input as an injected resource."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "asaga.Resource"


RESOURCE = _ResourceMarker()

Resource: TypeAlias = Annotated[T, RESOURCE]
"""Declare a saga input as an injected object: ``store: Resource[InventoryStore]``.

A resource is passed to ``run()`` like any input but is never validated, copied or
serialized: clients, stores, lock providers. Type checkers see plain ``T``.
"""

EMPTY: Any = object()
"""Sentinel for "no annotation"."""


def is_resource(annotation: Any) -> bool:
    """Whether ``annotation`` is ``Resource[T]`` (possibly nested in more ``Annotated``, or
    one arm of a union such as ``Resource[T] | None``)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return any(meta is RESOURCE for meta in annotation.__metadata__)
    if origin in _UNION_ORIGINS:
        return any(is_resource(arm) for arm in get_args(annotation))
    return False


def strip_annotated(annotation: Any) -> Any:
    """``Annotated[T, ...]`` → ``T``; anything else unchanged."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def type_name(annotation: Any) -> str:
    """A short readable name for an annotation, for error messages."""
    annotation = strip_annotated(annotation)
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


_UNION_ORIGINS: tuple[Any, ...] = (Union, types.UnionType)


def compatible(produced: Any, expected: Any) -> bool:
    """Whether a value annotated ``produced`` may be passed where ``expected`` is declared.

    Returns ``True`` when in doubt.
    """
    produced = strip_annotated(produced)
    expected = strip_annotated(expected)
    if produced is EMPTY or expected is EMPTY:
        return True
    if produced is Any or expected is Any or expected is object:
        return True
    if produced == expected:
        return True
    if isinstance(produced, TypeVar) or isinstance(expected, TypeVar):
        return True
    p_origin, e_origin = get_origin(produced), get_origin(expected)

    if p_origin in _UNION_ORIGINS:
        return all(compatible(arm, expected) for arm in get_args(produced))
    if e_origin in _UNION_ORIGINS:
        return any(compatible(produced, arm) for arm in get_args(expected))

    if produced is None or produced is type(None):
        return expected is None or expected is type(None)

    if p_origin is Literal:
        if e_origin is Literal:
            return set(get_args(produced)) <= set(get_args(expected))
        return all(compatible(type(value), expected) for value in get_args(produced))
    if e_origin is Literal:
        return not isinstance(produced, type)

    p_class = p_origin if isinstance(p_origin, type) else produced
    e_class = e_origin if isinstance(e_origin, type) else expected
    if not (isinstance(p_class, type) and isinstance(e_class, type)):
        return True  # a typing form we do not judge
    if getattr(e_class, "_is_protocol", False):
        return True  # structural: leave it to the type checker
    if not _is_subclass(p_class, e_class):
        # int is acceptable where float or complex is expected (PEP 484 numeric tower).
        numeric = {int: (float, complex), float: (complex,)}
        return e_class in numeric.get(p_class, ())
    p_args, e_args = get_args(produced), get_args(expected)
    if p_args and e_args and p_origin is e_origin and len(p_args) == len(e_args):
        if p_origin is tuple and Ellipsis in p_args + e_args:
            return True
        return all(compatible(p, e) for p, e in zip(p_args, e_args, strict=True))
    return True


def _is_subclass(cls: type, parent: type) -> bool:
    try:
        return issubclass(cls, parent)
    except TypeError:  # some typing constructs refuse issubclass(); do not judge them
        return True


def resolve_hints(obj: Any, localns: dict[str, Any] | None = None) -> dict[str, Any]:
    """``typing.get_type_hints`` keeping ``Annotated``; raises ``NameError`` on a bad ref."""
    return typing.get_type_hints(obj, localns=localns, include_extras=True)
