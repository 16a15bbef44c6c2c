"""``@step`` and ``@<step>.compensate``: frozen descriptions of a saga's functions.

Each decorator reads the function's signature and annotations once, here, into a frozen
description. Nothing raises at decoration time: problems (a plain ``def``, ``*args``, an
annotation that does not resolve yet) are recorded on the description and reported by the
saga class, together with every other problem of the saga.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from ._annotations import EMPTY, resolve_hints
from ._events import RunContext
from ._observer import Observer, Undoable
from ._public import NoPublicConstructor
from ._retry import Retry
from .locks._lease import Lock

__all__ = ["Compensation", "Condition", "Invoke", "Param", "Signature", "Step", "step"]

P = ParamSpec("P")
R = TypeVar("R")

_ASYNC_FN = Callable[..., Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a step or compensation, as read at decoration time."""

    name: str
    annotation: Any  # EMPTY when not annotated
    has_default: bool
    default: Any


@dataclass(frozen=True, slots=True)
class Signature:
    """What asaga needs of a function's signature, plus the problems found in it."""

    params: tuple[Param, ...]
    returns: Any  # EMPTY when not annotated
    problems: tuple[str, ...]
    unresolved: bool  # annotations named something that did not exist yet

    @classmethod
    def read(cls, fn: Callable[..., Any], what: str, *, require_async: bool = True) -> Signature:
        """Inspect ``fn`` once; ``what`` names it in problem messages."""
        problems: list[str] = []
        if not callable(cast(object, fn)):
            return cls((), EMPTY, (f"{what} is {fn!r}, not a function",), False)
        if require_async and not inspect.iscoroutinefunction(fn):
            kind = "an async generator" if inspect.isasyncgenfunction(fn) else "not `async def`"
            problems.append(f"{what} is {kind}; steps and compensations must be `async def`")
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            return cls((), EMPTY, (*problems, f"{what}: cannot read its signature ({exc})"), False)
        hints, unresolved = _hints(fn)
        params: list[Param] = []
        for p in sig.parameters.values():
            if p.kind is p.VAR_POSITIONAL or p.kind is p.VAR_KEYWORD:
                star = "*" if p.kind is p.VAR_POSITIONAL else "**"
                problems.append(
                    f"{what}, parameter '{star}{p.name}': parameters declare dependencies by "
                    f"name, so `{star}{p.name}` is not allowed; name each dependency"
                )
                continue
            if p.kind is p.POSITIONAL_ONLY:
                problems.append(
                    f"{what}, parameter '{p.name}': positional-only parameters cannot receive "
                    "values by name; remove the `/`"
                )
                continue
            has_default = p.default is not p.empty
            params.append(
                Param(
                    name=p.name,
                    annotation=hints.get(p.name, EMPTY),
                    has_default=has_default,
                    default=p.default if has_default else None,
                )
            )
        return cls(tuple(params), hints.get("return", EMPTY), tuple(problems), unresolved)

    def resolved(self, fn: Callable[..., Any], localns: dict[str, Any], what: str) -> Signature:
        """Retry annotations that did not resolve at decoration time (forward references).

        Called by the saga class with its namespace; returns ``self`` when there is nothing
        to retry, or a copy with the annotations filled in or the failure as a problem.
        """
        if not self.unresolved:
            return self
        try:
            hints = resolve_hints(fn, localns)
        except NameError as exc:
            return Signature(
                self.params,
                self.returns,
                (
                    *self.problems,
                    f"{what}: an annotation names something that does not exist ({exc}); "
                    "import it or fix the name",
                ),
                False,
            )
        params = tuple(
            Param(p.name, hints.get(p.name, EMPTY), p.has_default, p.default) for p in self.params
        )
        return Signature(params, hints.get("return", EMPTY), self.problems, False)


def _hints(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    try:
        return resolve_hints(fn), False
    except NameError:
        return {}, True  # resolved later against the saga class's namespace
    except Exception:  # noqa: BLE001 - odd annotations must not break decoration; ignore them
        return {}, False


@dataclass(frozen=True, slots=True)
class Condition:
    """A step's ``when=`` predicate, read once: sync or async, parameters by name."""

    fn: Callable[..., Any]
    signature: Signature
    is_async: bool

    @classmethod
    def read(cls, fn: Callable[..., Any], step: str) -> Condition:
        return cls(
            fn,
            Signature.read(fn, f"condition of step '{step}'", require_async=False),
            inspect.iscoroutinefunction(fn),
        )


class Invoke(Protocol):
    """How a composed or mapped step runs its sub-sagas (see :mod:`asaga._nested`), or a
    waiting step waits (:mod:`asaga._waits`)."""

    nested: bool
    """Whether the step runs sub-sagas (composed, mapped); ``False`` for a waiting step."""

    durable_problem: str | None
    """Why a durable run cannot record this step (``None``: it can)."""
    sagas: tuple[Any, ...]
    """The ``SagaSpec`` of each sub-saga the step runs (none for mapped functions)."""
    returns: Any
    """The type of the step's result, as a durable run decodes it from its record."""

    async def run(
        self,
        context: RunContext,
        name: str,
        kwargs: dict[str, Any],
        attempt: int,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        """Attempt ``attempt`` of step ``name`` with its parameters ``kwargs``: the step's
        result and what can undo it; child runs go through ``observer`` if there is one."""

    def children(self, name: str, attempt: int, values: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The child runs attempt ``attempt`` of ``name`` made, or would have made, given
        the run's ``values``: (key within the run, the child's ``SagaSpec``) pairs."""


class Step(Generic[P, R], metaclass=NoPublicConstructor):
    """A saga step: an ``async def`` whose parameter names declare its dependencies.

    Created by :func:`step` (or :func:`~asaga.compose` / :func:`~asaga.map_each`); never
    constructed directly. The step's name is the function's name. Calling a ``Step`` calls
    the underlying function, so steps can be unit-tested on their own:
    ``await Checkout.charge(reserve_a="a", ...)``.
    """

    __slots__ = (
        "__wrapped__",
        "_named_by_attribute",
        "fn",
        "idempotent",
        "invoke",
        "lock",
        "name",
        "queue",
        "retry",
        "signature",
        "timeout",
        "when",
    )
    _created_by: ClassVar[str] = "decorate an `async def` in a Saga body with `@step`"

    name: str
    fn: Callable[P, Awaitable[R]]
    retry: Retry | None
    timeout: float | None
    signature: Signature
    when: Condition | None
    invoke: Invoke | None
    idempotent: bool
    queue: str | None

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]],
        *,
        retry: Retry | None,
        timeout: float | None,
        when: Callable[..., Any] | None = None,
        invoke: Invoke | None = None,
        signature: Signature | None = None,
        lock: Any = None,
        idempotent: bool = False,
        queue: str | None = None,
    ) -> None:
        self.fn = fn
        self.idempotent = idempotent  # checked by the planner
        self.queue = queue  # the job queue whose workers run it; checked by the planner
        self.lock = lock  # a Lock, a key template, or None; checked by the planner
        self.name = getattr(fn, "__name__", repr(fn))
        self.retry = retry
        self.timeout = timeout
        self.invoke = invoke
        # Composed and mapped steps are named after the attribute they are assigned to.
        self._named_by_attribute = invoke is not None
        self.signature = signature or Signature.read(fn, f"step '{self.name}'")
        self.when = Condition.read(when, self.name) if when is not None else None
        self.__wrapped__ = fn

    def __set_name__(self, owner: type, name: str) -> None:
        if self._named_by_attribute:
            label, self.name = self.name, name
            self._named_by_attribute = False
            # Problems found before the step had its name say "step '<label>'".
            sig = self.signature
            renamed = tuple(p.replace(f"'{label}'", f"'{name}' ({label})") for p in sig.problems)
            self.signature = Signature(sig.params, sig.returns, renamed, sig.unresolved)
            if self.when is not None:
                self.when = Condition.read(self.when.fn, name)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<asaga step {self.name!r}>"

    @overload
    def compensate(self, fn: _ASYNC_FN, /) -> Compensation: ...

    @overload
    def compensate(
        self,
        /,
        *,
        retry: Retry | None = None,
        timeout: float | None = None,
        in_doubt: bool = False,
    ) -> Callable[[_ASYNC_FN], Compensation]: ...

    def compensate(
        self,
        fn: _ASYNC_FN | None = None,
        /,
        *,
        retry: Retry | None = None,
        timeout: float | None = None,
        in_doubt: bool = False,
    ) -> Compensation | Callable[[_ASYNC_FN], Compensation]:
        """Register the function that undoes this step: ``@reserve.compensate``.

        Its parameters resolve like a step's; the step's own name receives the step's
        result. It runs only if the step completed and the run later failed, at most once,
        shielded from cancellation. Use ``@reserve.compensate(retry=..., timeout=...)`` to
        bound and retry it (``timeout`` defaults to the saga's ``compensation_timeout``).

        ``in_doubt=True`` declares that the compensation is safe for a step that may not
        have happened: it also runs for a step that was cut off while running (its
        caller's cancellation outlasted the saga's ``cancel_grace``, or ``on_failure =
        "cancel"``), whose effect may or may not have landed. It then receives ``None``
        as the step's result, and must find the work from the inputs (a ``run_id`` is a
        good key) or do nothing harmlessly.
        """
        if fn is None:
            return lambda f: Compensation(self, f, retry=retry, timeout=timeout, in_doubt=in_doubt)
        return Compensation(self, fn, retry=retry, timeout=timeout, in_doubt=in_doubt)


class Compensation:
    """The undo action of one step, created by ``@<step>.compensate``."""

    __slots__ = (
        "__wrapped__",
        "fn",
        "in_doubt",
        "name",
        "retry",
        "signature",
        "target",
        "timeout",
    )

    def __init__(
        self,
        target: Step[Any, Any],
        fn: _ASYNC_FN,
        *,
        retry: Retry | None,
        timeout: float | None,
        in_doubt: bool = False,
    ) -> None:
        self.target = target
        self.fn = fn
        self.name = getattr(fn, "__name__", repr(fn))
        self.retry = retry
        self.timeout = timeout
        self.in_doubt = in_doubt
        """Whether it also runs for a step cut off mid-flight (see ``Step.compensate``)."""
        self.signature = Signature.read(fn, f"compensation '{self.name}' of step '{target.name}'")
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<asaga compensation {self.name!r} of step {self.target.name!r}>"


@overload
def step(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Step[P, R]: ...


@overload
def step(
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    when: Callable[..., Any] | None = None,
    lock: str | Lock | None = None,
    idempotent: bool = False,
    queue: str | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Step[P, R]]: ...


def step(
    fn: Callable[P, Coroutine[Any, Any, R]] | None = None,
    /,
    *,
    retry: Retry | None = None,
    timeout: float | None = None,
    when: Callable[..., Any] | None = None,
    lock: str | Lock | None = None,
    idempotent: bool = False,
    queue: str | None = None,
) -> Step[P, R] | Callable[[Callable[P, Coroutine[Any, Any, R]]], Step[P, R]]:
    """Declare an ``async def`` in a :class:`~asaga.Saga` body as a step.

    Use bare (``@step``) or with options (``@step(retry=Retry(...), timeout=2.0)``).

    - Parameters named like another step receive that step's result and make this step
      wait for it; any other parameter is a saga input.
    - ``retry``: the step's :class:`~asaga.Retry` policy (default: the saga's
      ``retry_defaults``, else a single attempt).
    - ``timeout``: seconds one attempt may take; an attempt that runs over is cancelled and
      counts as a failed attempt raising :class:`TimeoutError`.
    - ``when``: a predicate (sync or async) whose parameters resolve like a step's; when it
      returns false the step is skipped (see docs/composition.md for what that means for
      the steps that depend on it).
    - ``lock``: a :class:`~asaga.locks.Lock` (or a key template such as
      ``"inventory:{product_id}"``) held for each attempt, filled from the step's
      parameters; a parameter named ``lease`` receives the lease (for fenced writes). If
      the lease is lost, the attempt is cancelled and fails with ``LeaseLost``. Leases come
      from the saga's ``locks`` input when it has one, else from the in-memory default.
      See docs/locks.md.
    - ``idempotent``: running the step again has no further effect (it is keyed, say by
      the ``run_id`` parameter, which receives the run's id). After a crash, a durable
      run resumes such a step if it was in doubt (started, not known to have ended);
      any other step in doubt makes the run fail and compensate. See docs/durability.md.
    - ``queue``: the name of a job queue (``"payments"``) whose worker processes run the
      step (and its compensation) while the run goes on here: its arguments and result
      travel as MessagePack, resources are the workers' own, and its ``timeout`` and
      ``retry`` apply as to a local step. The queue must be open in the process that runs
      the saga (``async with SaqQueue.from_url(url, name="payments")``). See
      docs/distributed.md.

    ``step`` itself never raises: a malformed step is reported when the saga class is
    created, together with every other problem.
    """

    def make(f: Callable[P, Coroutine[Any, Any, R]]) -> Step[P, R]:
        made = Step._create(
            f,
            retry=retry,
            timeout=timeout,
            when=when,
            lock=lock,
            idempotent=idempotent,
            queue=queue,
        )
        return cast("Step[P, R]", made)  # _create cannot carry the class's type parameters

    return make if fn is None else make(fn)
