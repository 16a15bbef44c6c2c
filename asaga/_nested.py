"""Composed and mapped steps: a step that runs a whole sub-saga, or one per element.

``compose(Child, a="x")`` is a step that runs ``Child`` once, feeding its input ``a`` from
the parent's step or input ``x`` (and every other required input of the child from the
parent name that matches it). ``map_each(Child, over="items")`` runs ``Child`` once per
element of the collection ``items``; ``map_each(fn, over="items")`` does the same with an
``async def``.

A completed composed or mapped step leaves an undo handle: if the parent run fails later,
the parent's unwind calls it, and the sub-runs compensate their own completed steps in
their own reverse-graph order (map elements in reverse index order), exactly once.

Mapping keeps at most ``max_concurrency`` element tasks alive, whatever the collection's
size: a fixed set of workers take the next index from a shared counter.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import (
    Awaitable,
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio
import msgspec

from ._annotations import EMPTY
from ._events import (
    CompensationFailedEvent,
    CompensationStarted,
    CompensationSucceeded,
    RunContext,
)
from ._exceptions import ElementFailure as ElementFailure
from ._exceptions import MapAbandoned
from ._exceptions import MapFailed as MapFailed
from ._observer import Observer, Undoable
from ._retry import Retry
from ._run import SagaSpec, execute
from ._step import Param, Signature, Step

__all__ = ["ElementFailure", "ElementSuccess", "MapFailed", "MapResult", "compose", "map_each"]

T = TypeVar("T")

MapMode = Literal["fail_fast", "collect"]


class ElementSuccess(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One element of a mapped step that completed (``collect`` mode)."""

    index: int
    """The element's position in the collection."""
    value: T
    """Its result (for a sub-saga, the sub-saga's output)."""


class MapResult(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """The result of a mapped step in ``collect`` mode.

    ``values`` is ordered like the collection, ``None`` where the element failed.
    """

    values: list[T | None]
    """One entry per element, in input order; ``None`` for failed elements."""
    successes: list[ElementSuccess[T]]
    """The completed elements, by ascending index."""
    failures: list[ElementFailure]
    """The failed elements, by ascending index."""

    @property
    def all_failed(self) -> bool:
        """Whether no element completed (and there was at least one)."""
        return not self.successes and bool(self.failures)


# -- compose ---------------------------------------------------------------------------------


def compose(
    saga: type[Any],
    /,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    when: Callable[..., Any] | None = None,
    **inputs: str,
) -> Step[..., Any]:
    """A step that runs the saga class ``saga`` as a sub-saga; its output is the result.

    ``inputs`` maps each child input to the parent name (a step or an input of the parent)
    it is taken from: ``compose(ReserveItem, sku="product_id")``. A required child input
    left out is taken from the parent name equal to it; an optional one keeps the child's
    default. The step is named after the attribute it is assigned to::

        class Order(Saga):
            reserve = compose(ReserveItem, sku="product_id", quantity="qty")

    If the child fails it unwinds itself and this step fails with its ``SagaFailed`` as the
    cause. If the parent fails later, the child's completed steps are compensated by the
    child's own compensations, in the child's reverse-graph order.
    """
    problems: list[str] = []
    spec = _spec_of(saga, "compose", problems)
    sources = _sources(spec, inputs, problems, mapped_only=False)
    label = getattr(saga, "__name__", repr(saga))

    return _nested_step(
        f"compose({label})",
        _params(sources, spec),
        problems,
        _Compose(spec, sources),
        retry,
        timeout,
        when,
    )


class _Compose:
    """How a composed step runs: one child run of the sub-saga per attempt."""

    durable_problem = None
    nested = True

    def __init__(self, spec: SagaSpec | None, sources: list[tuple[str, str]]) -> None:
        self.spec = spec
        self.sources = sources
        self.sagas = (spec,) if spec is not None else ()
        self.returns = _output_type(spec)

    async def run(
        self,
        context: RunContext,
        name: str,
        kwargs: dict[str, Any],
        attempt: int,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        assert self.spec is not None
        inputs = {child: kwargs[parent] for child, parent in self.sources if parent in kwargs}
        return await _run_child(self.spec, inputs, context, name, f"{name}/{attempt}", observer)

    def children(self, name: str, attempt: int, values: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return [(f"{name}/{attempt}", self.spec)]


def _waits(spec: SagaSpec, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``spec`` (or a saga it composes or maps) has a waiting step."""
    if spec.plan.saga in seen:
        return False
    for node in spec.plan.nodes.values():
        if node.invoke is not None and not node.invoke.nested:
            return True
        for sub in node.invoke.sagas if node.invoke is not None else ():
            if _waits(sub, seen | {spec.plan.saga}):
                return True
    return False


async def _run_child(
    spec: SagaSpec,
    inputs: dict[str, Any],
    context: RunContext,
    label: str,
    key: str,
    observer: Observer | None,
) -> tuple[Any, Undoable | None]:
    """Run one sub-saga below ``context``: in memory, or as a child run the observer
    records (``key`` names it within the parent run: step, attempt, element)."""
    prefix = context.path_of(label)
    if observer is None:
        result, completed = await execute(spec, inputs, parent=context, prefix=prefix)
        return result.output, completed
    return await observer.run_child(spec, inputs, key=key, parent=context, prefix=prefix)


# -- map -------------------------------------------------------------------------------------


def map_each(
    target: type[Any] | Callable[..., Awaitable[Any]],
    /,
    *,
    over: str,
    max_concurrency: int = 16,
    mode: MapMode = "fail_fast",
    item: str | None = None,
    undo: Callable[..., Awaitable[Any]] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    when: Callable[..., Any] | None = None,
    queue: str | None = None,
    batch_size: int | None = None,
    **inputs: str,
) -> Step[..., Any]:
    """A step that runs ``target`` once per element of the collection ``over`` names.

    ``target`` is a saga class or an ``async def``:

    - a saga: each element gives the child's inputs (a mapping, a msgspec Struct or a
      dataclass); ``inputs`` maps further child inputs from parent names, as in
      :func:`compose`, and child resources come from the parent name equal to them;
    - an ``async def``: the element is passed as its parameter ``item`` (default: its first
      parameter); its other parameters resolve from the parent like a step's. ``undo``, an
      optional ``async def``, undoes one element: it receives the element under the same
      name, the element's result under the function's name, and parent values by name.

    ``over`` names a step result or an input of the parent. At most ``max_concurrency``
    elements run at once. The result is a list ordered like the collection; in
    ``mode="collect"`` it is a :class:`MapResult` instead, and failed elements do not fail
    the step. In ``mode="fail_fast"`` (default) the first failure stops starting new
    elements, lets those in flight finish, undoes the completed ones in reverse index
    order and fails the step with :class:`MapFailed`.

    ``queue`` sends each element of an ``async def`` to the worker processes of that job
    queue (see docs/distributed.md), at most ``batch_size`` (default ``max_concurrency``)
    in flight; its ``undo`` runs there too, and the modes and rollback are the same. The
    elements of a sub-saga run here; put ``@step(queue=...)`` on its steps instead.
    """
    problems: list[str] = []
    if not isinstance(over, str) or not over.isidentifier():
        problems.append(f"over={over!r} must name a step or an input of the saga")
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or max_concurrency < 1
    ):
        problems.append(f"max_concurrency={max_concurrency!r} must be an int >= 1")
    if mode not in ("fail_fast", "collect"):
        problems.append(f"mode={mode!r} must be 'fail_fast' or 'collect'")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            problems.append(f"batch_size={batch_size!r} must be an int >= 1")
        elif queue is None:
            problems.append(
                "batch_size= bounds the jobs in flight of a map on workers (queue=); "
                "an in-process map takes max_concurrency="
            )
    if queue is not None and isinstance(target, type):
        problems.append(
            f"queue= sends the elements of an async def to workers; the elements of saga "
            f"{target.__name__} run here: put @step(queue=...) on its steps instead"
        )

    element: _SagaElement | FunctionElement
    if isinstance(target, type):
        spec = _spec_of(target, "map_each", problems)
        sources = _sources(spec, inputs, problems, mapped_only=True)
        label = target.__name__
        element = _SagaElement(spec, sources)
        params = _params(sources, spec)
        if undo is not None:
            problems.append("undo= is for async functions; a saga undoes itself")
        if item is not None:
            problems.append("item= is for async functions; saga elements are inputs")
    else:
        spec = None
        label = getattr(target, "__name__", repr(target))
        function = FunctionElement.read(target, item, undo, inputs, problems)
        params = list(function.params)
        element = function
    if isinstance(over, str) and over not in {p.name for p in params}:
        params.append(Param(over, EMPTY, False, None))
    limit = max_concurrency if isinstance(max_concurrency, int) else 1
    if queue is not None and isinstance(batch_size, int) and batch_size >= 1:
        limit = batch_size

    invoke = Map(element, over, limit, mode)
    return _nested_step(
        f"map_each({label})", params, problems, invoke, retry, timeout, when, queue=queue
    )


class Element(Protocol):
    """How one element of a map runs (a map on workers replaces the in-process one: see
    :mod:`asaga.workers._remote`)."""

    async def run(
        self,
        context: RunContext,
        label: str,
        item: Any,
        kwargs: dict[str, Any],
        key: str,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        """Element ``item`` (``label`` in events, ``key`` its child run's key): its value
        and what undoes it."""


class Map:
    """How a mapped step runs: its elements, each a child run of the sub-saga (or a call
    of the function) per attempt."""

    nested = True

    def __init__(
        self, element: _SagaElement | FunctionElement, over: str, limit: int, mode: MapMode
    ) -> None:
        self.element: _SagaElement | FunctionElement | Element = element
        self.over = over
        self.limit = limit
        self.mode = mode
        self.sagas = (element.spec,) if isinstance(element, _SagaElement) and element.spec else ()
        self.durable_problem: str | None = None
        if isinstance(element, FunctionElement) and element.undo_fn is not None:
            self.durable_problem = (
                "maps an async function with undo=, whose elements a durable run cannot "
                "undo from its record: map a saga instead (each element is then a child run)"
            )
        elif isinstance(element, _SagaElement) and element.spec and _waits(element.spec):
            self.durable_problem = (
                "maps a saga that waits (wait_for, sleep_for, sleep_until), which a durable "
                "run cannot park per element: compose it, or map it in a run without a store"
            )
        value: Any = (
            _output_type(element.spec) if isinstance(element, _SagaElement) else element.returns
        )
        if value is EMPTY:
            value = Any
        self.returns: Any = MapResult[value] if mode == "collect" else list[value]

    async def run(
        self,
        context: RunContext,
        name: str,
        kwargs: dict[str, Any],
        attempt: int,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        collection = _collection(kwargs[self.over], self.over)
        mapping = _Mapping(context, name, self.element, collection, kwargs, self.limit, self.mode)
        return await mapping.run(attempt, observer)

    def children(self, name: str, attempt: int, values: Mapping[str, Any]) -> list[tuple[str, Any]]:
        if not isinstance(self.element, _SagaElement) or self.over not in values:
            return []
        try:
            count = len(_collection(values[self.over], self.over))
        except TypeError:
            return []
        spec = self.element.spec
        return [(f"{name}/{attempt}/{index}", spec) for index in range(count)]


def _output_type(spec: SagaSpec | None) -> Any:
    """The type of a sub-saga's output (``Any`` if its output step has no annotation)."""
    if spec is None or spec.plan.output is None:
        return Any if spec is None else None
    returns = spec.plan.nodes[spec.plan.output].returns
    return Any if returns is EMPTY else returns


def _collection(collection: Any, over: str) -> list[Any]:
    if not isinstance(collection, Iterable) or isinstance(collection, str | bytes):
        raise TypeError(
            f"map_each over {over!r} needs a collection, got {type(collection).__name__}"
        )
    if isinstance(collection, Iterator):
        # A generator can be read once: a retried attempt would see no elements.
        raise TypeError(
            f"map_each over {over!r} got a one-shot iterator "
            f"({type(collection).__name__}); return a list or tuple instead"
        )
    return list(collection)


class _Mapping:
    """One execution of a mapped step."""

    def __init__(
        self,
        context: RunContext,
        name: str,
        element: _SagaElement | FunctionElement | Element,
        items: list[Any],
        kwargs: dict[str, Any],
        limit: int,
        mode: MapMode,
    ) -> None:
        self.context = context
        self.name = name
        self.element = element
        self.items = items
        self.kwargs = kwargs
        self.limit = limit
        self.mode = mode
        self.values: list[Any] = [None] * len(items)
        self.undos: dict[int, Undoable] = {}
        self.failures: list[ElementFailure] = []
        self.next_index = 0
        self.stopped = False
        self.attempt = 1
        self.observer: Observer | None = None

    async def run(self, attempt: int, observer: Observer | None) -> tuple[Any, Undoable]:
        self.attempt = attempt
        self.observer = observer
        undo = _UndoElements(self.undos)
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(self.limit, len(self.items))):
                    tg.start_soon(self._worker)
        except BaseException:
            # Cancelled (the caller, a timeout, the parent's on_failure="cancel"): the step
            # will not complete, so nobody else will undo its elements. Do it now.
            await undo.undo_shielded(self.context)
            raise
        self.failures.sort(key=lambda f: f.index)
        if self.mode == "fail_fast" and self.failures:
            first = self.failures[0]
            failures = await undo.undo_shielded(self.context)
            raise MapFailed(
                self.name,
                first.index,
                undo.undone,
                failures,
                saga=self.context.saga,
                run_id=self.context.run_id,
            ) from first.error
        if self.next_index < len(self.items):  # stopped because the run failed
            failures = await undo.undo_shielded(self.context)
            raise MapAbandoned(
                self.name,
                self.next_index,
                len(self.items),
                failures,
                saga=self.context.saga,
                run_id=self.context.run_id,
            )
        if self.mode == "collect":
            failed = {f.index for f in self.failures}
            result: Any = MapResult(
                values=self.values,
                successes=[
                    ElementSuccess(index=i, value=v)
                    for i, v in enumerate(self.values)
                    if i not in failed
                ],
                failures=self.failures,
            )
            return result, undo
        return self.values, undo

    async def _worker(self) -> None:
        items = self.items
        context = self.context
        while not self.stopped and self.next_index < len(items):
            if context.failed or context.stopping():
                return  # no new element once the run has failed, or its caller is cancelled
            index = self.next_index
            self.next_index += 1
            try:
                value, undo = await self.element.run(
                    self.context,
                    f"{self.name}[{index}]",
                    items[index],
                    self.kwargs,
                    f"{self.name}/{self.attempt}/{index}",
                    self.observer,
                )
            except Exception as exc:  # noqa: BLE001 - an element may fail in any way
                self.failures.append(ElementFailure(index=index, error=exc))
                if self.mode == "fail_fast":
                    self.stopped = True
                continue
            self.values[index] = value
            if undo is not None:
                self.undos[index] = undo


class _UndoElements:
    """Undo the completed elements of a mapped step, in reverse index order, once each."""

    def __init__(self, undos: dict[int, Undoable]) -> None:
        self._undos = undos
        self.undone: list[int] = []

    async def undo(self, parent: RunContext) -> None:
        failures = await self.undo_shielded(parent)
        if failures:
            raise ExceptionGroup(
                f"undoing mapped elements {[f.index for f in failures]} failed",
                [f.error for f in failures if isinstance(f.error, Exception)],
            )

    async def undo_shielded(self, parent: RunContext) -> list[ElementFailure]:
        failures: list[ElementFailure] = []
        with anyio.CancelScope(shield=True):
            for index in sorted(self._undos, reverse=True):
                undo = self._undos.pop(index)  # each element is undone at most once
                try:
                    await undo.undo(parent)
                except Exception as exc:  # noqa: BLE001 - collected; the others still run
                    failures.append(ElementFailure(index=index, error=exc))
                else:
                    self.undone.append(index)
        return failures


class _SagaElement:
    """Elements that are sub-saga runs."""

    def __init__(self, spec: SagaSpec | None, sources: list[tuple[str, str]]) -> None:
        self.spec = spec
        self.sources = sources

    async def run(
        self,
        context: RunContext,
        label: str,
        item: Any,
        kwargs: dict[str, Any],
        key: str,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        assert self.spec is not None
        child_inputs = {c: kwargs[p] for c, p in self.sources if p in kwargs}
        child_inputs.update(_as_inputs(item))
        return await _run_child(self.spec, child_inputs, context, label, key, observer)


class FunctionElement:
    """Elements that are calls of an ``async def``."""

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        item: str,
        fn_sources: list[tuple[str, str]],
        undo: Callable[..., Awaitable[Any]] | None,
        undo_sources: list[tuple[str, str]],
        undo_params: frozenset[str],
        params: list[Param],
    ) -> None:
        self.fn = fn
        self.item = item
        self.fn_sources = fn_sources
        self.undo_fn = undo
        self.undo_sources = undo_sources
        self.undo_params = undo_params
        self.result_name = getattr(fn, "__name__", "result")
        self.returns = Signature.read(fn, "mapped function").returns
        self.params = params
        """The parent names read, with the functions' annotations and defaults."""

    @classmethod
    def read(
        cls,
        fn: Callable[..., Awaitable[Any]],
        item: str | None,
        undo: Callable[..., Awaitable[Any]] | None,
        inputs: Mapping[str, str],
        problems: list[str],
    ) -> FunctionElement:
        label = getattr(fn, "__name__", repr(fn))
        sig = Signature.read(fn, f"mapped function '{label}'")
        problems.extend(sig.problems)
        names = [p.name for p in sig.params]
        if item is None:
            if not names:
                problems.append(f"mapped function '{label}' needs a parameter for the element")
            item = names[0] if names else "item"
        elif item not in names:
            problems.append(f"item={item!r}: mapped function '{label}' has no such parameter")
        for child in inputs:
            if child not in names:
                problems.append(f"mapped function '{label}' has no parameter {child!r}")
        params: dict[str, Param] = {}

        def read_from_parent(p: Param) -> tuple[str, str]:
            parent = inputs.get(p.name, p.name)
            if parent not in params:
                params[parent] = Param(parent, p.annotation, p.has_default, p.default)
            return p.name, parent

        fn_sources = [read_from_parent(p) for p in sig.params if p.name != item]
        undo_sources: list[tuple[str, str]] = []
        undo_params: frozenset[str] = frozenset()
        if undo is not None:
            usig = Signature.read(undo, f"undo of mapped function '{label}'")
            problems.extend(usig.problems)
            undo_params = frozenset(p.name for p in usig.params)
            undo_sources = [read_from_parent(p) for p in usig.params if p.name not in (item, label)]
        return cls(fn, item, fn_sources, undo, undo_sources, undo_params, list(params.values()))

    async def run(
        self,
        context: RunContext,
        label: str,
        item: Any,
        kwargs: dict[str, Any],
        key: str,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        value = await self.fn(**self.arguments(item, kwargs))
        if self.undo_fn is None:
            return value, None
        return value, CallUndo(self.undo_fn, self.undo_arguments(item, kwargs, value), label)

    def arguments(
        self, item: Any, kwargs: Mapping[str, Any], skip: Container[str] = ()
    ) -> dict[str, Any]:
        """The function's arguments for element ``item`` (but those named in ``skip``)."""
        args = {c: kwargs[p] for c, p in self.fn_sources if p in kwargs and c not in skip}
        args[self.item] = item
        return args

    def undo_arguments(
        self, item: Any, kwargs: Mapping[str, Any], value: Any, skip: Container[str] = ()
    ) -> dict[str, Any]:
        """The undo's arguments for element ``item`` whose result is ``value``."""
        args = {c: kwargs[p] for c, p in self.undo_sources if p in kwargs and c not in skip}
        if self.item in self.undo_params:
            args[self.item] = item
        if self.result_name in self.undo_params:
            args[self.result_name] = value
        return args


class CallUndo:
    """The undo of one function element, reported like a compensation."""

    def __init__(
        self, fn: Callable[..., Awaitable[Any]], kwargs: dict[str, Any], label: str
    ) -> None:
        self._fn = fn
        self._kwargs = kwargs
        self._label = label

    async def undo(self, parent: RunContext) -> None:
        parent.emit(CompensationStarted, self._label, attempt=1)
        started = time.monotonic()
        try:
            await self._fn(**self._kwargs)
        except Exception as exc:
            parent.emit(
                CompensationFailedEvent,
                self._label,
                attempt=1,
                duration=time.monotonic() - started,
                error=repr(exc),
            )
            raise
        parent.emit(
            CompensationSucceeded,
            self._label,
            attempt=1,
            duration=time.monotonic() - started,
        )


def _as_inputs(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, msgspec.Struct):
        return {f: getattr(item, f) for f in item.__struct_fields__}
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    raise TypeError(
        f"a mapped saga's elements must be mappings, Structs or dataclasses of its inputs; "
        f"got {type(item).__name__}"
    )


# -- shared ----------------------------------------------------------------------------------


def _spec_of(saga: Any, what: str, problems: list[str]) -> SagaSpec | None:
    spec = getattr(saga, "__asaga__", None) if isinstance(saga, type) else None
    if not isinstance(spec, SagaSpec):
        problems.append(f"{what}() takes a Saga subclass with steps, got {saga!r}")
        return None
    return spec


def _sources(
    spec: SagaSpec | None, inputs: Mapping[str, str], problems: list[str], *, mapped_only: bool
) -> list[tuple[str, str]]:
    """(child input, parent name) pairs: the mapped ones, then the implied ones."""
    if spec is None:
        return []
    child_inputs = spec.plan.inputs
    saga = spec.plan.saga
    pairs: list[tuple[str, str]] = []
    for child, parent in inputs.items():
        if child not in child_inputs:
            problems.append(f"{saga} has no input {child!r} (its inputs: {sorted(child_inputs)})")
        elif not isinstance(parent, str) or not parent.isidentifier():
            problems.append(f"input {child!r} of {saga} must map to a parent name, got {parent!r}")
        else:
            pairs.append((child, parent))
    for name, input_spec in child_inputs.items():
        if name in inputs:
            continue
        if input_spec.resource or (input_spec.required and not mapped_only):
            pairs.append((name, name))
    return pairs


def _params(sources: Sequence[tuple[str, str]], spec: SagaSpec | None) -> list[Param]:
    """The parent names a nested step reads, annotated like the child inputs they feed."""
    child_inputs = spec.plan.inputs if spec is not None else {}
    params: list[Param] = []
    seen: set[str] = set()
    for child, parent in sources:
        if parent in seen:
            continue
        seen.add(parent)
        annotation = child_inputs[child].annotation if child in child_inputs else EMPTY
        params.append(Param(parent, annotation, False, None))
    return params


def _nested_step(
    label: str,
    params: list[Param],
    problems: list[str],
    invoke: _Compose | Map,
    retry: Retry | None,
    timeout: float | None,
    when: Callable[..., Any] | None,
    *,
    queue: str | None = None,
) -> Step[..., Any]:
    """A Step whose parameters are the parent names the nested run reads (a map on
    workers: ``queue``, see :mod:`asaga.workers._remote`)."""

    async def nested(**kwargs: Any) -> Any:
        raise TypeError(f"{label} runs inside a saga run; it cannot be called directly")

    nested.__name__ = nested.__qualname__ = label
    nested.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY) for p in params]
    )
    signature = Signature(
        tuple(params), EMPTY, tuple(f"step '{label}': {p}" for p in problems), False
    )
    return Step._create(
        nested,
        retry=retry,
        timeout=timeout,
        when=when,
        invoke=invoke,
        signature=signature,
        queue=queue,
    )
