"""``Saga``: where a class body of steps becomes a validated plan, and ``run()``.

Wiring only: the plan comes from :mod:`asaga._graph`, inputs are checked by
:mod:`asaga._inputs`, steps run in :mod:`asaga._scheduler`, the unwind is
:mod:`asaga._compensation`, and events are delivered by :mod:`asaga._events`.
"""

import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import MappingProxyType, MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Protocol,
    TypeVar,
    cast,
    dataclass_transform,
    get_args,
    get_origin,
    overload,
)

from ._annotations import compatible, resolve_hints, type_name
from ._events import Hook, split_hooks
from ._exceptions import SagaDefinitionError
from ._graph import Declared, Plan, build_plan
from ._inputs import InputValidator
from ._queues import require_queues
from ._retry import Retry
from ._run import Hooks, SagaResult, SagaSpec, execute
from ._scheduler import OnFailure, needs_watch
from ._step import Compensation, Step
from .locks._lease import LockProvider

if TYPE_CHECKING:  # the types of run()'s, undo()'s and start()'s signatures only
    from .runs import Delivery, RunStore, UndoResult
    from .workers import JobQueue, RunHandle

__all__ = ["Durability", "OutputT", "Saga", "SagaResult", "wire"]

if TYPE_CHECKING:
    from typing_extensions import TypeVar as _DefaultedTypeVar

    OutputT = _DefaultedTypeVar("OutputT", default=Any)
else:
    OutputT = TypeVar("OutputT")
"""The type of a saga's output (``class Checkout(Saga[Receipt])``; ``Any`` if not given)."""

_Out = TypeVar("_Out")

_INPUTS = "__asaga_inputs__"  # a called saga's inputs, as given


class Durability(Protocol):
    """Durable runs, as the saga calls them: given by :mod:`asaga.runs` (wired in
    ``asaga/__init__.py``), so that the core never imports persistence."""

    def default_store(self) -> "RunStore":
        """The process's in-memory store (idempotency keys, undo without ``runs``)."""

    async def run(
        self,
        spec: SagaSpec,
        inputs: Mapping[str, Any],
        *,
        runs: "RunStore",
        idempotency_key: str | None,
        run_id: str | None,
        extra_hooks: Hooks,
    ) -> SagaResult[Any]:
        """Run the saga recorded write-ahead in ``runs``."""

    async def undo(
        self,
        spec: SagaSpec,
        run_id: str,
        *,
        runs: "RunStore",
        resources: Mapping[str, Any],
        extra_hooks: Hooks,
    ) -> "UndoResult":
        """Undo a recorded run that succeeded."""

    async def start(
        self,
        queue: "JobQueue",
        spec: SagaSpec,
        inputs: Mapping[str, Any],
        *,
        runs: "RunStore",
        idempotency_key: str | None,
        run_id: str | None,
    ) -> "RunHandle":
        """Enqueue a recorded run on workers."""

    async def deliver(
        self,
        spec: SagaSpec,
        key: str,
        payload: Any,
        *,
        runs: "RunStore | None",
        resources: Mapping[str, Any],
        extra_hooks: Hooks,
    ) -> "Delivery":
        """Deliver an event to the run that waits for it (or keep it for that run)."""

    async def resume(
        self,
        spec: SagaSpec,
        run_id: str,
        *,
        runs: "RunStore",
        resources: Mapping[str, Any],
        extra_hooks: Hooks,
    ) -> "Delivery":
        """Resume a halted run."""

    async def cancel(
        self,
        spec: SagaSpec,
        run_id: str,
        *,
        compensate: bool,
        runs: "RunStore",
        resources: Mapping[str, Any],
        extra_hooks: Hooks,
    ) -> "Delivery":
        """Cancel a parked run."""

    def on_workers(self, plan: Plan, saga_version: str) -> Plan:
        """``plan`` with its steps on workers (``@step(queue=...)``) calling their workers."""


_durability: Durability | None = None
_lock_provider: Callable[[], LockProvider] | None = None


def wire(*, durability: Durability, default_locks: Callable[[], LockProvider]) -> None:
    """Give sagas their durable runs and the lock provider of sagas without a ``locks``
    input (called once, by ``asaga/__init__.py``: the core reaches for no backend)."""
    global _durability, _lock_provider
    _durability = durability
    _lock_provider = default_locks


def _durable() -> Durability:
    if _durability is None:  # pragma: no cover - asaga/__init__.py wires it on import
        raise RuntimeError("asaga's durable runs are not wired: import asaga, not its parts")
    return _durability


def _default_locks() -> LockProvider:
    """The lock provider of a locked step whose saga has no ``locks`` input (the event
    loop's in-memory one, as wired)."""
    if _lock_provider is None:  # pragma: no cover - asaga/__init__.py wires it on import
        raise RuntimeError("asaga's default lock provider is not wired: import asaga")
    return _lock_provider()


_SETTINGS = (
    "output",
    "retry_defaults",
    "max_concurrency",
    "on_failure",
    "compensation_timeout",
    "cancel_grace",
    "hooks",
    "saga_version",
)


class _Namespace(dict[str, Any]):
    """A class body namespace that notices a step or compensation defined twice."""

    def __init__(self) -> None:
        super().__init__()
        self.redefined: list[str] = []

    def __setitem__(self, key: str, value: Any) -> None:
        old = self.get(key)
        if isinstance(old, Step | Compensation) and old is not value:
            self.redefined.append(key)
        super().__setitem__(key, value)


@dataclass_transform(kw_only_default=True)
class SagaMeta(type):
    """Builds and validates a saga's plan when its class is created.

    Declared as a dataclass transform, so that mypy and pyright read a saga's class
    annotations as its inputs: ``Checkout(order_id="o-1", amount=30)`` is checked like a
    dataclass's constructor (a misspelled or mistyped input is a type error), and
    ``.run()`` on it returns ``SagaResult[Output]`` for a ``Saga[Output]``."""

    @classmethod
    def __prepare__(mcs, name: str, bases: tuple[type, ...], /, **kwargs: Any) -> "_Namespace":
        return _Namespace()

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], /, **kwargs: Any
    ) -> "SagaMeta":
        redefined = getattr(namespace, "redefined", [])
        cls = super().__new__(mcs, name, bases, dict(namespace), **kwargs)
        if any(isinstance(base, SagaMeta) for base in bases):
            _define(cast("type[Saga]", cls), namespace, redefined)
        return cls

    if not TYPE_CHECKING:  # the checkers read the call as a dataclass's (see the class)

        def __call__(cls, *args: Any, **inputs: Any) -> Any:
            """``Checkout(order_id="o-1", ...)``: the saga with its inputs, validated now
            (:class:`~asaga.InputValidationError`), to ``await ... .run()``."""
            spec: SagaSpec | None = vars(cls).get("__asaga__")
            if spec is None:
                raise TypeError(f"{cls.__name__} is the base class; subclass it to define a saga")
            if args:
                raise TypeError(
                    f"{cls.__name__}() takes its inputs by name: {cls.__name__}(name=value, ...)"
                )
            spec.inputs.validate(inputs)  # bad inputs fail here, before anything runs
            called: Any = object.__new__(cast("type[Any]", cls))
            object.__setattr__(called, _INPUTS, MappingProxyType(dict(inputs)))
            for name, value in inputs.items():
                object.__setattr__(called, name, value)
            return called

    # Settings and steps are read once, when the class is created: a later change would be
    # silently ignored by every run, so it raises instead (like a frozen dataclass).
    def __setattr__(cls, name: str, value: Any) -> None:
        if not (name.startswith("__") and name.endswith("__")):  # typing's own: let be
            _refuse_change(cls, name, value, "assigned")
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        _refuse_change(cls, name, None, "deleted")
        super().__delattr__(name)


async def _run(
    cls: "type[Saga[Any]]",
    *,
    hooks: Sequence[Hook] = (),
    run_id: str | None = None,
    runs: "RunStore | None" = None,
    idempotency_key: str | None = None,
    **inputs: Any,
) -> SagaResult[Any]:
    """Run the saga once with ``inputs``; return its :class:`SagaResult`.

    Two spellings: ``await Checkout.run(order_id="o-1", amount=30)``, or, with the inputs
    checked by mypy and pyright and the output typed by ``Saga[Output]``, ``await
    Checkout(order_id="o-1", amount=30).run()``.

    Raises :class:`~asaga.InputValidationError` (before any step started) for bad,
    missing or unknown inputs; :class:`~asaga.SagaFailed` when a step failed for good
    and the completed steps were compensated; :class:`~asaga.CompensationFailed` when a
    compensation failed too. If the calling task is cancelled, running steps are
    cancelled, completed ones compensated (shielded), and the cancellation propagates.

    ``hooks`` adds event hooks for this run only; ``run_id`` sets the run's id
    (default: a random UUID).

    ``runs`` makes the run durable: every transition is written to that
    :class:`~asaga.runs.RunStore` before it is acted on, so that the run can be
    recovered if its process dies, and undone later with :meth:`Saga.undo`.
    ``idempotency_key`` runs it at most once per key: a call with a key already used
    returns (or raises) the recorded outcome of that run, waiting for it if it is
    still running; with no ``runs``, the process's default in-memory store keeps the
    keys. See docs/durability.md.
    """
    spec = cls.__asaga__
    if spec is None:
        raise TypeError(f"{cls.__name__} is the base class; subclass it to define a saga")
    extra = split_hooks(hooks) if hooks else ((), ())
    if spec.queues:  # before any step: each step on workers needs its queue open
        require_queues(spec.queues)
    if runs is None and idempotency_key is None:
        result, _ = await execute(spec, inputs, run_id=run_id, extra_hooks=extra, undoable=False)
        return result
    durability = _durable()
    return await durability.run(
        spec,
        inputs,
        runs=runs if runs is not None else durability.default_store(),
        idempotency_key=idempotency_key,
        run_id=run_id,
        extra_hooks=extra,
    )


async def _run_bound(
    saga: "Saga[Any]",
    *,
    hooks: Sequence[Hook] = (),
    run_id: str | None = None,
    runs: "RunStore | None" = None,
    idempotency_key: str | None = None,
) -> SagaResult[Any]:
    """Run the saga with the inputs it was called with (``Checkout(order_id=...).run()``):
    see :func:`_run` for the options and what it raises."""
    return await _run(
        type(saga),
        hooks=hooks,
        run_id=run_id,
        runs=runs,
        idempotency_key=idempotency_key,
        **saga.__dict__[_INPUTS],
    )


class _RunWithInputs(Protocol[_Out]):
    def __call__(
        self,
        *,
        hooks: Sequence[Hook] = (),
        run_id: str | None = None,
        runs: "RunStore | None" = None,
        idempotency_key: str | None = None,
        **inputs: Any,
    ) -> Coroutine[Any, Any, SagaResult[_Out]]: ...


class _RunCalled(Protocol[_Out]):
    def __call__(
        self,
        *,
        hooks: Sequence[Hook] = (),
        run_id: str | None = None,
        runs: "RunStore | None" = None,
        idempotency_key: str | None = None,
    ) -> Coroutine[Any, Any, SagaResult[_Out]]: ...


class _RunMethod:
    """``Saga.run``: on the class, it takes the inputs (``Checkout.run(order_id=...)``);
    on a called saga (``Checkout(order_id=...)``), it runs with those."""

    @overload
    def __get__(self, instance: None, owner: "type[Saga[OutputT]]") -> _RunWithInputs[OutputT]: ...

    @overload
    def __get__(
        self, instance: "Saga[OutputT]", owner: type | None = None
    ) -> _RunCalled[OutputT]: ...

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return MethodType(_run, owner)
        return MethodType(_run_bound, instance)


class Saga(Generic[OutputT], metaclass=SagaMeta):
    """Base class of sagas: subclass it and define steps with :func:`~asaga.step`.

    Class annotations declare inputs (validated by msgspec before any step runs);
    ``Resource[T]`` declares an injected object. Settings are plain class attributes, read
    once when the class is created (assigning one, or a step, afterwards raises
    ``AttributeError``; a subclass may set them anew in its body):

    - ``output``: the name of the step whose result is ``SagaResult.output``;
    - ``retry_defaults``: the :class:`~asaga.Retry` of steps and compensations without one;
    - ``max_concurrency``: at most this many steps run at once (default: no cap);
    - ``on_failure``: ``"wait"`` (default) lets steps in flight finish when one fails,
      ``"cancel"`` cancels them; either way completed steps are compensated;
    - ``compensation_timeout``: seconds one compensation attempt may take (default 30);
    - ``cancel_grace``: when the caller is cancelled, seconds the steps in flight get to
      finish before they are cut off and reported in doubt (default 10; ``None``: as long
      as their own ``timeout`` lets them);
    - ``hooks``: callables (sync or async) that receive every event of every run;
    - ``saga_version``: a label (default ``"1"``) recorded with every durable run: after a
      crash, a run is resumed only by a process whose saga has the same version, so change
      it when a change to the steps would not fit runs recorded before.
    """

    output: ClassVar[str | None] = None
    retry_defaults: ClassVar[Retry | None] = None
    max_concurrency: ClassVar[int | None] = None
    on_failure: ClassVar[OnFailure] = "wait"
    compensation_timeout: ClassVar[float | None] = 30.0
    cancel_grace: ClassVar[float | None] = 10.0
    hooks: ClassVar[Sequence[Hook]] = ()
    saga_version: ClassVar[str] = "1"

    __asaga__: ClassVar[SagaSpec | None] = None
    __asaga_steps__: ClassVar[tuple[Step[Any, Any], ...]] = ()
    __asaga_compensations__: ClassVar[tuple[Compensation, ...]] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"a called saga is frozen: make another, {type(self).__name__}(...), to run "
            "with other inputs"
        )

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.get(_INPUTS, {}).items())
        return f"{type(self).__name__}({given})"

    run: ClassVar[_RunMethod] = _RunMethod()
    """Run the saga: ``await Checkout.run(order_id="o-1", ...)``, or, the inputs and the
    output typed for mypy and pyright, ``await Checkout(order_id="o-1", ...).run()``."""

    @classmethod
    async def start(
        cls,
        *,
        queue: "JobQueue",
        runs: "RunStore",
        idempotency_key: str | None = None,
        run_id: str | None = None,
        **inputs: Any,
    ) -> "RunHandle":
        """Enqueue a durable run of the saga on ``queue`` (an
        :class:`asaga.workers.SaqQueue`) and return its :class:`~asaga.workers.RunHandle`
        at once; a worker process runs it (see docs/distributed.md).

        ``inputs`` are validated here (:class:`~asaga.InputValidationError` before
        anything is enqueued); the saga's ``Resource`` inputs are the workers' (given to
        :class:`~asaga.workers.Served`), never passed here. ``runs`` is the store the run
        is recorded in, shared with the workers (``RedisRunStore``). The same
        ``idempotency_key`` starts the same run, once: a second start returns a handle
        to it.
        """
        called: Any = cls  # a called saga, when looked up on one (see _OnClassOrCalled)
        if isinstance(called, Saga):
            if inputs:
                name = type(called).__name__
                raise TypeError(
                    f"{called!r} has its inputs already: call .start(queue=..., runs=...) "
                    f"on it with none, or {name}.start(queue=..., runs=..., **inputs) on "
                    "the class"
                )
            inputs = dict(called.__dict__[_INPUTS])
            cls = type(called)
        spec = cls.__asaga__
        if spec is None:
            raise TypeError(f"{cls.__name__} is the base class; subclass it to define a saga")
        return await _durable().start(
            queue, spec, inputs, runs=runs, idempotency_key=idempotency_key, run_id=run_id
        )

    @classmethod
    async def undo(
        cls,
        run_id: str,
        *,
        runs: "RunStore | None" = None,
        hooks: Sequence[Hook] = (),
        **resources: Any,
    ) -> "UndoResult":
        """Compensate a durable run that succeeded, from its record, once.

        Every step is undone by its compensation in reverse graph order, as if the run had
        failed after its last step; ``resources`` are the saga's ``Resource`` inputs (they
        are never recorded). Returns an :class:`~asaga.runs.UndoResult`; a second undo of
        the same run does nothing and says so (``already=True``). Raises
        :class:`~asaga.UndoFailed` if a compensation failed,
        :class:`~asaga.RunNotFound` if ``runs`` (default: the process's in-memory store)
        has no record of the run.
        """
        _refuse_called(cls, "undo", "run_id, runs=..., **resources")
        spec = cls.__asaga__
        if spec is None:
            raise TypeError(f"{cls.__name__} is the base class; subclass it to define a saga")
        if spec.queues:  # before any compensation: those on workers need their queues
            require_queues(spec.queues)
        durability = _durable()
        return await durability.undo(
            spec,
            run_id,
            runs=runs if runs is not None else durability.default_store(),
            resources=resources,
            extra_hooks=split_hooks(hooks) if hooks else ((), ()),
        )

    @classmethod
    async def deliver(
        cls,
        key: str,
        payload: Any,
        *,
        runs: "RunStore | None" = None,
        hooks: Sequence[Hook] = (),
        **resources: Any,
    ) -> "Delivery":
        """Deliver the event ``key`` (a key a :func:`~asaga.wait_for` step of this saga
        makes) with ``payload`` (an object, a ``dict``, or JSON ``bytes``/``str``) to the
        run that waits for it; returns a :class:`~asaga.runs.Delivery` saying what
        happened.

        The payload is validated with the step's type first: :class:`~asaga.InvalidEvent`
        if it does not fit (the run keeps waiting, until more bad payloads came than the
        step tolerates). A payload that comes before its run waits is kept, and taken when
        the run waits (``status="kept"``). A second payload for a key is refused with
        :class:`~asaga.DuplicateEvent`; a key no step of the saga makes, with
        :class:`~asaga.EventRefused`.

        Without ``runs``, the run waits in this process (``status="delivered"``: it goes
        on in its own task). With ``runs``, the parked durable run is taken and driven on
        here, in this call, with ``resources`` (the saga's ``Resource`` inputs): the
        delivery says where it stands then (``succeeded``, ``waiting`` again,
        ``failed``...). See docs/interrupts.md.
        """
        _refuse_called(cls, "deliver", "key, payload, runs=..., **resources")
        spec = _spec(cls)
        return await _durable().deliver(
            spec,
            key,
            payload,
            runs=runs,
            resources=resources,
            extra_hooks=split_hooks(hooks) if hooks else ((), ()),
        )

    @classmethod
    async def resume(
        cls,
        run_id: str,
        *,
        runs: "RunStore | None" = None,
        hooks: Sequence[Hook] = (),
        **resources: Any,
    ) -> "Delivery":
        """Resume a durable run that a step halted (it raised :class:`~asaga.Halt`): the
        halted step runs again, and the run goes on here, with ``resources``. Returns a
        :class:`~asaga.runs.Delivery` saying where the run stands; raises
        :class:`~asaga.NotParked` if the run has no halted step (it runs, finished, or was
        resumed by another process first)."""
        _refuse_called(cls, "resume", "run_id, runs=..., **resources")
        spec = _spec(cls)
        durability = _durable()
        return await durability.resume(
            spec,
            run_id,
            runs=runs if runs is not None else durability.default_store(),
            resources=resources,
            extra_hooks=split_hooks(hooks) if hooks else ((), ()),
        )

    @classmethod
    async def cancel(
        cls,
        run_id: str,
        *,
        compensate: bool = True,
        runs: "RunStore | None" = None,
        hooks: Sequence[Hook] = (),
        **resources: Any,
    ) -> "Delivery":
        """Cancel a parked durable run (waiting for an event or a timer, or halted):
        its completed steps are compensated, in reverse graph order (status
        ``cancelled``), or with ``compensate=False`` it ends as it is, nothing undone
        (status ``terminated``). A later event for it is refused. Raises
        :class:`~asaga.NotParked` if the run is not parked."""
        _refuse_called(cls, "cancel", "run_id, runs=..., **resources")
        spec = _spec(cls)
        if spec.queues and compensate:
            require_queues(spec.queues)
        durability = _durable()
        return await durability.cancel(
            spec,
            run_id,
            compensate=compensate,
            runs=runs if runs is not None else durability.default_store(),
            resources=resources,
            extra_hooks=split_hooks(hooks) if hooks else ((), ()),
        )


class _OnClassOrCalled:
    """A classmethod of :class:`Saga` that, looked up on a called saga
    (``Checkout(order_id=...)``), binds to that saga instead of its class: ``start`` then
    runs with the saga's inputs, and the methods that act on a recorded run refuse it
    with a clear error, where a plain classmethod would silently drop the inputs."""

    def __init__(self, method: Any) -> None:
        self.__func__ = method.__func__
        self.__doc__ = method.__func__.__doc__
        self.__wrapped__ = method.__func__

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        return MethodType(self.__func__, owner if instance is None else instance)


for _name in ("start", "undo", "deliver", "resume", "cancel"):
    type.__setattr__(Saga, _name, _OnClassOrCalled(vars(Saga)[_name]))


def _refuse_called(target: Any, method: str, signature: str) -> None:
    """Raise if ``target`` is a called saga: ``method`` acts on a recorded run, whose
    inputs are in its record, so the called saga's inputs would be ignored."""
    if isinstance(target, Saga):
        name = type(target).__name__
        raise TypeError(
            f"{name}.{method}() acts on a recorded run, with the inputs in its record: call "
            f"it on the class, {name}.{method}({signature}), not on {target!r}"
        )


def _spec(cls: type) -> SagaSpec:
    spec: SagaSpec | None = getattr(cls, "__asaga__", None)
    if spec is None:
        raise TypeError(f"{cls.__name__} is the base class; subclass it to define a saga")
    return spec


def _refuse_change(cls: SagaMeta, name: str, value: Any, done: str) -> None:
    """Raise if ``name`` of the created saga class ``cls`` is a setting or a step (or
    compensation), or ``value`` is one: runs would never see the change."""
    if "__asaga__" not in vars(cls):  # still being created (an __init_subclass__)
        return
    current = next((vars(k)[name] for k in cls.__mro__ if name in vars(k)), None)
    if name in _SETTINGS:
        if vars(cls)["__asaga__"] is None:  # Saga itself: it would reach later sagas only
            raise AttributeError(
                f"{cls.__name__}.{name} cannot be {done}: settings are not global. Set "
                f"`{name} = ...` in the body of your saga class (or of a base class of "
                "your sagas)."
            )
        raise AttributeError(
            f"{cls.__name__}.{name} cannot be {done} after the class is created: settings "
            f"are read once, when the class is created, so runs would ignore it. Set "
            f"`{name} = ...` in the class body (or in the body of a subclass)."
        )
    for obj, subject in ((current, "it is"), (value, "the value is")):
        if isinstance(obj, Step | Compensation):
            kind = "step" if isinstance(obj, Step) else "compensation"
            raise AttributeError(
                f"{cls.__name__}.{name} cannot be {done} after the class is created: "
                f"{subject} a {kind}, and steps are planned once, when the class is "
                "created, so runs would ignore it. Define it in the class body (or "
                "override it in the body of a subclass)."
            )


# -- definition ------------------------------------------------------------------------------


def _define(cls: "type[Saga]", namespace: Mapping[str, Any], redefined: Sequence[str]) -> None:
    """Collect the steps of ``cls``, plan and validate them, or raise with every problem."""
    saga = cls.__name__
    problems = [
        f"'{key}' is defined twice in the class body; the second definition would silently "
        "replace the first, so rename one"
        for key in dict.fromkeys(redefined)
    ]
    own_steps: list[Step[Any, Any]] = []
    own_comps: list[Compensation] = []
    for value in namespace.values():
        if isinstance(value, Step) and value not in own_steps:
            own_steps.append(value)
        elif isinstance(value, Compensation) and value not in own_comps:
            own_comps.append(value)
    if redefined:
        # A compensation of a step that a redefinition replaced would be reported as
        # foreign; the redefinition is the problem, already reported above.
        live = {id(s) for s in own_steps}
        own_comps = [c for c in own_comps if id(c.target) in live or c.target.name not in redefined]

    # Inherit from saga bases: their steps unless redefined here, and their compensations
    # whose step is still part of this saga.
    own_names = {s.name for s in own_steps}
    inherited_steps: dict[str, Step[Any, Any]] = {}
    inherited_comps: list[Compensation] = []
    for base in reversed(cls.__mro__[1:]):
        for s in getattr(base, "__asaga_steps__", ()):
            inherited_steps[s.name] = s
        inherited_comps.extend(getattr(base, "__asaga_compensations__", ()))
    steps = [s for n, s in inherited_steps.items() if n not in own_names] + own_steps
    kept = {id(s) for s in steps}
    own_targets = {id(c.target) for c in own_comps}
    comps = [
        c
        for c in dict.fromkeys(inherited_comps)
        if id(c.target) in kept and id(c.target) not in own_targets
    ] + own_comps

    declared: dict[str, Declared] = {}
    try:
        hints = resolve_hints(cls)
    except NameError as exc:
        problems.append(
            f"an input annotation names something that does not exist ({exc}); "
            "import it or fix the name"
        )
        hints = {}
    for name, annotation in hints.items():
        if get_origin(annotation) is ClassVar or annotation is ClassVar or name.startswith("__"):
            continue
        has_default = any(name in vars(k) for k in cls.__mro__[:-1] if k is not Saga)
        declared[name] = Declared(annotation, has_default, getattr(cls, name, None))

    problems.extend(_setting_problems(cls))
    reserved = frozenset(_SETTINGS) | {n for n in vars(Saga) if not n.startswith("__")}
    plan, inputs, plan_problems = build_plan(
        saga,
        steps,
        comps,
        declared,
        output=cls.output if isinstance(cls.output, str) or cls.output is None else None,
        retry_defaults=cls.retry_defaults if isinstance(cls.retry_defaults, Retry) else None,
        namespace=namespace,
        reserved=reserved,
        settings=frozenset(_SETTINGS),
    )
    problems.extend(plan_problems)
    if plan is not None:
        problems.extend(_output_type_problems(cls, plan))
    validator = InputValidator(saga, inputs)
    problems.extend(validator.problems)
    if problems or plan is None:
        raise SagaDefinitionError(saga, problems)
    sync_hooks, async_hooks = split_hooks(tuple(cls.hooks))
    queues = {n: node.queue for n, node in plan.nodes.items() if node.queue is not None}
    for node in plan.nodes.values():  # and those of the sagas it composes or maps
        for sub in node.invoke.sagas if node.invoke is not None else ():
            queues.update({f"{sub.plan.saga}.{n}": q for n, q in sub.queues.items()})
    if queues:
        plan = _durable().on_workers(plan, str(cls.saga_version))
    cls.__asaga__ = SagaSpec(
        plan=plan,
        inputs=validator,
        sync_hooks=sync_hooks,
        async_hooks=async_hooks,
        max_concurrency=cls.max_concurrency,
        on_failure=cls.on_failure,
        compensation_timeout=cls.compensation_timeout,
        cancel_grace=cls.cancel_grace,
        watch=needs_watch(plan, cls.cancel_grace),
        saga_version=str(cls.saga_version),
        default_locks=_default_locks,
        queues=MappingProxyType(queues),
    )
    cls.__asaga_steps__ = tuple(steps)
    cls.__asaga_compensations__ = tuple(comps)


def _output_type_problems(cls: type, plan: Plan) -> list[str]:
    """``class Checkout(Saga[Receipt])`` must agree with what the output step returns."""
    declared = [
        get_args(base)[0]
        for base in getattr(cls, "__orig_bases__", ())
        if get_origin(base) is not None
        and isinstance(get_origin(base), SagaMeta)
        and len(get_args(base)) == 1
    ]
    if not declared or isinstance(declared[0], TypeVar):
        return []
    expected = declared[0]
    if plan.output is None:
        return [
            f"Saga[{type_name(expected)}] declares an output, but the saga has none: set "
            '`output = "<step>"` (or leave one step that nothing depends on)'
        ]
    returns = plan.nodes[plan.output].returns
    if not compatible(returns, expected):
        return [
            f"Saga[{type_name(expected)}] declares the output's type, but the output step "
            f"'{plan.output}' returns {type_name(returns)}"
        ]
    return []


def _setting_problems(cls: "type[Saga]") -> list[str]:
    problems = []
    output: object = cls.output
    if output is not None and not isinstance(output, str):
        problems.append(f"output = {output!r}: set it to a step's name (a str)")
    retry: object = cls.retry_defaults
    if retry is not None and not isinstance(retry, Retry):
        problems.append(f"retry_defaults = {retry!r}: set it to a Retry(...) or None")
    limit: object = cls.max_concurrency
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"max_concurrency = {limit!r}: set it to an int >= 1 or None")
    if cls.on_failure not in ("wait", "cancel"):
        problems.append(f"on_failure = {cls.on_failure!r}: set it to 'wait' or 'cancel'")
    timeout: object = cls.compensation_timeout
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout <= 0
    ):
        problems.append(f"compensation_timeout = {timeout!r}: set it to seconds > 0 or None")
    grace: object = cls.cancel_grace
    if grace is not None and (
        isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace < math.inf
    ):
        problems.append(f"cancel_grace = {grace!r}: set it to seconds >= 0 (finite) or None")
    version: object = cls.saga_version
    if isinstance(version, bool) or not isinstance(version, str | int) or not str(version):
        problems.append(f"saga_version = {version!r}: set it to a non-empty str (or an int)")
    hooks: object = cls.hooks
    if isinstance(hooks, str | bytes) or not isinstance(hooks, Sequence):
        problems.append(f"hooks = {hooks!r}: set it to a list or tuple of callables")
    else:
        for hook in hooks:
            if not callable(hook):
                problems.append(f"hooks: {hook!r} is not callable")
    return problems
