"""Validating the keyword arguments of ``run()`` against a saga's inputs, before any step.

Declared inputs (class annotations) and annotated inferred inputs are converted by msgspec
in strict mode, constraints included (``Annotated[int, msgspec.Meta(gt=0)]``); resources
are passed through untouched. The fast path converts all fields at once through one
generated ``msgspec.Struct``; only when that fails does a second pass convert field by field,
so that the error lists every bad, missing or unknown field rather than the first. When
every checked input is a plain ``str``, ``int``, ``float`` or ``bool`` and a run gives each
as exactly that type, there is nothing to convert, and msgspec is not called at all.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from ._annotations import EMPTY, strip_annotated, type_name
from ._exceptions import FieldError, InputValidationError
from ._graph import InputSpec

__all__ = ["InputValidator"]


class InputValidator:
    """Checks and converts the inputs of one saga; built once per saga class."""

    __slots__ = (
        "_checked",
        "_exact",
        "_fast",
        "_names",
        "_required",
        "_saga",
        "_specs",
        "_struct",
        "problems",
    )

    def __init__(self, saga: str, specs: Mapping[str, InputSpec]) -> None:
        self._saga = saga
        self._specs = dict(specs)
        self._names = frozenset(specs)
        self._required = frozenset(name for name, spec in specs.items() if spec.required)
        self.problems: list[str] = []
        checked: dict[str, Any] = {}
        for spec in specs.values():
            if spec.resource or spec.annotation is EMPTY:
                continue
            if not _validatable(spec.annotation):
                if spec.declared:
                    self.problems.append(
                        f"input '{spec.name}': `{type_name(spec.annotation)}` cannot be "
                        f"validated; declare it `{spec.name}: Resource[...]` if it is an "
                        "injected object"
                    )
                continue
            checked[spec.name] = spec.annotation
        self._checked = checked
        # Declared optional inputs take their default in the struct, so that a run that
        # leaves them out still converts in one call.
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for name, annotation in checked.items():
            spec = specs[name]
            optional = spec.declared and not spec.required
            fields.append((name, annotation, spec.default) if optional else (name, annotation))
        try:
            struct = msgspec.defstruct(f"{saga}Inputs", fields, kw_only=True) if fields else None
        except TypeError:  # a default msgspec refuses (a non-empty mutable one): no defaults
            fields = list(checked.items())
            struct = msgspec.defstruct(f"{saga}Inputs", fields, kw_only=True)
        self._struct: type[msgspec.Struct] | None = struct
        self._fast = self._required | {f[0] for f in fields if len(f) == 2}
        """The inputs a run must give for the one-call conversion."""
        exact = tuple((name, a) for name, a in checked.items() if a in _PLAIN)
        self._exact = exact if len(exact) == len(checked) else None
        """With every checked input a plain ``str``, ``int``, ``float`` or ``bool``: the
        inputs and their types. A run that gives each as exactly that type has nothing to
        convert (msgspec would return each value as it is)."""

    def schema(self, fields: Iterable[str] | None = None) -> dict[str, Any]:
        """The JSON Schema of the inputs a request may give (the declared, non-resource
        ones; narrowed to ``fields``), self-contained (no ``$ref``): for OpenAPI."""
        wanted = None if fields is None else set(fields)  # once: fields may be an iterator
        names = [n for n in self._checked if wanted is None or n in wanted]
        specs = self._specs
        parts: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            (n, self._checked[n], specs[n].default)
            if specs[n].declared and not specs[n].required
            else (n, self._checked[n])
            for n in names
        ]
        try:
            struct = msgspec.defstruct(f"{self._saga}Inputs", parts, kw_only=True)
        except TypeError:
            struct = msgspec.defstruct(f"{self._saga}Inputs", [p[:2] for p in parts])
        found = msgspec.json.schema(struct)
        inlined: dict[str, Any] = _inline(found, found.get("$defs", {}))
        return inlined

    def validate(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Return the run's input values (converted), or raise ``InputValidationError``."""
        values = dict(given)
        if self._names.issuperset(values) and self._fast.issubset(values):
            if self._struct is None:
                return self._fill_defaults(values)
            exact = self._exact
            if exact is not None:
                for name, annotation in exact:
                    if name in values and type(values[name]) is not annotation:
                        break
                else:  # (in the order the conversion below would set them)
                    specs = self._specs
                    for name, _ in exact:
                        if name not in values:
                            values[name] = specs[name].default
                    return self._fill_defaults(values)
            try:
                converted = msgspec.convert(
                    {k: values[k] for k in self._checked if k in values}, self._struct
                )
            except (msgspec.ValidationError, TypeError):
                pass  # the slow path below names every bad field
            else:
                for name in self._checked:
                    values[name] = getattr(converted, name)
                return self._fill_defaults(values)
        errors: list[FieldError] = []
        for name in values:
            if name not in self._names:
                hint = difflib.get_close_matches(name, sorted(self._names), n=1)
                errors.append(
                    FieldError(
                        field=name,
                        message="unknown input"
                        + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; {self._saga} takes {sorted(self._names)}",
                    )
                )
        for name, spec in self._specs.items():
            if name not in values:
                if spec.required:
                    errors.append(FieldError(field=name, message="missing required input"))
                continue
            if name in self._checked:
                try:
                    values[name] = msgspec.convert(values[name], self._checked[name])
                except msgspec.ValidationError as exc:
                    errors.append(FieldError(field=name, message=_describe(exc)))
                except TypeError as exc:
                    errors.append(FieldError(field=name, message=f"cannot be validated: {exc}"))
        if errors:
            raise InputValidationError(self._saga, errors)
        return self._fill_defaults(values)

    def _fill_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        for name, spec in self._specs.items():
            if name not in values and spec.declared and not spec.required:
                values[name] = spec.default
        return values


_PLAIN = (str, int, float, bool)
"""Types whose exact instances msgspec converts to themselves, unchanged (``bool`` is not
an ``int`` here: types are compared exactly)."""


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int` >= 1" (at the top level) or "... - at `$.x`" for nested.
    return str(exc).replace(" - at `$`", "")


def _validatable(annotation: Any) -> bool:
    bare = strip_annotated(annotation)
    if getattr(bare, "_is_protocol", False) and not getattr(bare, "_is_runtime_protocol", False):
        return False
    try:
        msgspec.inspect.type_info(annotation)
    except (TypeError, ValueError):
        return False
    return True


def _inline(node: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    """``node`` with its ``$ref``s to ``defs`` replaced by what they name (bounded: a
    recursive type stays a reference past a depth)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and depth < 20:
            return _inline(defs.get(ref.removeprefix("#/$defs/"), {}), defs, depth + 1)
        return {k: _inline(v, defs, depth) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs, depth) for v in node]
    return node
