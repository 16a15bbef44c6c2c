"""Event records of a run, and their delivery to structlog and to hooks.

Every transition of a run is one immutable record: a ``msgspec.Struct`` tagged by its
``kind`` so that a stream of events encodes and decodes as one union type (:data:`Event`)::

    data = msgspec.json.encode(events)
    msgspec.json.decode(data, type=list[Event])

Delivery: structlog gets each event first (logger ``"asaga"``; asaga never configures
structlog), then every sync hook is called in place, and async hooks are fed in order by
one dispatcher task of the run, so each hook sees the events of a run in the order they
happened.
"""

import contextvars
import inspect
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, ClassVar, Literal, TypeAlias

import anyio
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from structlog.contextvars import bind_contextvars

__all__ = [
    "CompensationFailedEvent",
    "CompensationStarted",
    "CompensationSucceeded",
    "Event",
    "EventBase",
    "EventKind",
    "Hook",
    "OperatorAction",
    "RunFailed",
    "RunParkedEvent",
    "RunStarted",
    "RunSucceeded",
    "StepCancelled",
    "StepFailed",
    "StepRetrying",
    "StepSkipped",
    "StepStarted",
    "StepSucceeded",
    "StepWaiting",
]

EventKind = Literal[
    "run_started",
    "run_succeeded",
    "run_failed",
    "step_started",
    "step_succeeded",
    "step_failed",
    "step_retrying",
    "step_cancelled",
    "step_skipped",
    "step_waiting",
    "run_parked",
    "compensation_started",
    "compensation_succeeded",
    "compensation_failed",
    "operator_action",
]


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Fields shared by every event."""

    saga: str
    """The saga class's name."""
    run_id: str
    """The run this event belongs to."""
    step: str | None = None
    """The step (or the step being compensated); ``None`` for run events."""
    path: str | None = None
    """Where the event happened in nested runs: ``"reserve_all/reserve"`` for step
    ``reserve`` of the sub-saga run by step ``reserve_all`` (map elements add their index:
    ``"reserve_each[3]/reserve"``). For a top-level run: the step's name, or ``None`` on
    run events."""
    parent_run_id: str | None = None
    """The run id of the parent run, for events of a sub-saga run; else ``None``."""
    attempt: int = 0
    """1-based attempt number for step and compensation events; 0 for run events."""
    monotonic: float = msgspec.field(default_factory=time.monotonic)
    """``time.monotonic()`` when the event happened: for ordering and durations."""
    timestamp: float = msgspec.field(default_factory=time.time)
    """Wall-clock time (seconds since the epoch) when the event happened."""
    duration: float | None = None
    """Seconds since the matching start, on events that end something."""
    error: str | None = None
    """``repr`` of the exception, on failure and retry events (and ``"cancelled"`` on a
    run that ended because its caller was cancelled)."""

    level: ClassVar[int] = 10
    """The level (stdlib numbers) the event is logged at."""
    log_fields: ClassVar[tuple[str, ...]] = ()
    """Fields of the kind, beyond the common ones, that are logged too."""

    @property
    def kind(self) -> EventKind:
        """The event's tag, such as ``"step_started"``."""
        tag: EventKind = self.__struct_config__.tag  # type: ignore[assignment]
        return tag


_DEBUG, _INFO, _WARNING, _ERROR = 10, 20, 30, 40


class RunStarted(EventBase, frozen=True, kw_only=True, tag="run_started"):
    """A run began (inputs were valid)."""

    level: ClassVar[int] = _INFO


class RunSucceeded(EventBase, frozen=True, kw_only=True, tag="run_succeeded"):
    """Every step completed."""

    level: ClassVar[int] = _INFO


class RunFailed(EventBase, frozen=True, kw_only=True, tag="run_failed"):
    """The run failed (or was cancelled) and has been unwound."""

    level: ClassVar[int] = _WARNING
    log_fields: ClassVar[tuple[str, ...]] = ("failed_step", "cancelled", "in_doubt")
    failed_step: str | None = None
    """The step whose failure ended the run; ``None`` when the caller was cancelled before
    any step failed."""
    cancelled: bool = False
    """Whether the run ended because the caller was cancelled."""
    in_doubt: tuple[str, ...] = ()
    """Steps cut off while running that no compensation covered: whether their effect
    landed is unknown (a human must check)."""


class StepStarted(EventBase, frozen=True, kw_only=True, tag="step_started"):
    """An attempt of a step began."""


class StepSucceeded(EventBase, frozen=True, kw_only=True, tag="step_succeeded"):
    """A step completed; its result is available to its dependents."""


class StepFailed(EventBase, frozen=True, kw_only=True, tag="step_failed"):
    """A step failed for good (no attempt left, or an exception not retried)."""

    level: ClassVar[int] = _WARNING


class StepRetrying(EventBase, frozen=True, kw_only=True, tag="step_retrying"):
    """An attempt failed and another will start after ``delay`` seconds."""

    level: ClassVar[int] = _INFO
    log_fields: ClassVar[tuple[str, ...]] = ("delay",)
    delay: float = 0.0
    """Seconds until the next attempt."""


class StepCancelled(EventBase, frozen=True, kw_only=True, tag="step_cancelled"):
    """A step was stopped: cut off while running (the caller's cancellation outlasted
    ``cancel_grace``, or ``on_failure = "cancel"``), or cancelled between attempts."""

    level: ClassVar[int] = _INFO
    log_fields: ClassVar[tuple[str, ...]] = ("in_doubt",)
    in_doubt: bool = False
    """Whether the step was cut off after its body began: what it did may or may not have
    landed. Only a compensation declared ``in_doubt=True`` runs for it; otherwise it needs
    a human (the run's ``RunFailed.in_doubt`` and the exception list it too)."""


class StepSkipped(EventBase, frozen=True, kw_only=True, tag="step_skipped"):
    """A step did not run because its condition was false."""


class StepWaiting(EventBase, frozen=True, kw_only=True, tag="step_waiting"):
    """A step waits: for an event (:func:`~asaga.wait_for`), a timer, or a resume (it
    raised :class:`~asaga.Halt`). Its end is the step's ``step_succeeded`` (or failure)."""

    level: ClassVar[int] = _INFO
    log_fields: ClassVar[tuple[str, ...]] = ("wait", "key", "until", "reason")
    wait: str = "event"
    """``"event"``, ``"timer"`` or ``"halt"``."""
    key: str | None = None
    """The event's correlation key."""
    until: float | None = None
    """Wall-clock time (epoch seconds) the wait ends (an event's deadline, a timer)."""
    reason: str | None = None
    """A halt's reason."""


class RunParkedEvent(EventBase, frozen=True, kw_only=True, tag="run_parked"):
    """A durable run parked: its steps that could run have ended, and the rest wait
    (``waiting``: the waiting steps). It goes on where an event is delivered, a resume
    comes, or recovery finds its time come."""

    level: ClassVar[int] = _INFO
    log_fields: ClassVar[tuple[str, ...]] = ("waiting",)
    waiting: tuple[str, ...] = ()
    """The steps that wait."""


class CompensationStarted(EventBase, frozen=True, kw_only=True, tag="compensation_started"):
    """An attempt of a step's compensation began."""

    level: ClassVar[int] = _INFO


class CompensationSucceeded(EventBase, frozen=True, kw_only=True, tag="compensation_succeeded"):
    """A step's compensation completed: the step is undone."""

    level: ClassVar[int] = _INFO


class CompensationFailedEvent(EventBase, frozen=True, kw_only=True, tag="compensation_failed"):
    """A compensation attempt failed; ``final`` says whether it will be retried.

    A final failure leaves the step's effect in place: it needs a human.
    """

    level: ClassVar[int] = _ERROR  # a final failure; one that will be retried: WARNING
    log_fields: ClassVar[tuple[str, ...]] = ("final",)
    final: bool = True
    """``False`` when the compensation will be retried."""


class OperatorAction(EventBase, frozen=True, kw_only=True, tag="operator_action"):
    """An operator acted on the run (from the runs dashboard or a script), recorded
    among the run's events by :meth:`~asaga.runs.RunStore.note`."""

    level: ClassVar[int] = _INFO
    log_fields: ClassVar[tuple[str, ...]] = ("action", "by", "outcome")
    action: str
    """What was asked: ``"undo"``, ``"resume"``, ``"cancel"``, ``"recover"`` or
    ``"readmit"``."""
    by: str | None = None
    """Who asked (the operator's name as the dashboard's authorization gave it)."""
    outcome: str
    """What happened: the resulting status, or the error that refused the action."""


Event: TypeAlias = (
    RunStarted
    | RunSucceeded
    | RunFailed
    | StepStarted
    | StepSucceeded
    | StepFailed
    | StepRetrying
    | StepCancelled
    | StepSkipped
    | StepWaiting
    | RunParkedEvent
    | CompensationStarted
    | CompensationSucceeded
    | CompensationFailedEvent
    | OperatorAction
)
"""Any event record; decode a stream with ``msgspec.json.decode(data, type=list[Event])``."""

Hook: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A callable taking one event: plain functions are called in place, coroutine functions
are awaited in order by the run's dispatcher task."""

_ASYNC_HOOK_TIMEOUT = 5.0
"""Seconds one async hook call may take before asaga gives up on it (and logs that)."""

_logger = structlog.get_logger("asaga")


def _is_async(hook: Callable[..., Any]) -> bool:
    call = getattr(hook, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(call)


def split_hooks(
    hooks: Sequence[Hook],
) -> tuple[tuple[Callable[[Event], object], ...], tuple[Callable[[Event], Awaitable[None]], ...]]:
    """Sort hooks into (sync, async), once per saga class or per run."""
    sync: list[Callable[[Event], object]] = []
    async_: list[Callable[[Event], Awaitable[None]]] = []
    for hook in hooks:
        if _is_async(hook):
            async_.append(hook)  # type: ignore[arg-type]
        else:
            sync.append(hook)
    return tuple(sync), tuple(async_)


class Emitter:
    """Delivers the events of one run: log, sync hooks in place, async hooks in order."""

    __slots__ = (
        "_async_hooks",
        "_enabled",
        "_log_debug",
        "_logger",
        "_parent",
        "_receive",
        "_send",
        "_sync_hooks",
        "debug",
        "hooked",
    )

    def __init__(
        self,
        sync_hooks: tuple[Callable[[Event], object], ...],
        async_hooks: tuple[Callable[[Event], Awaitable[None]], ...],
        parent: "Emitter | None" = None,
    ) -> None:
        self._sync_hooks = sync_hooks
        self._async_hooks = async_hooks
        self._parent = parent  # a sub-saga's events reach its parent run's hooks too
        self.hooked: bool = bool(sync_hooks or async_hooks) or (
            parent is not None and parent.hooked
        )
        """Whether any hook (of this run or of a parent run) receives the events."""
        # structlog's configuration, resolved once per configuration (not per run), and
        # asked whether a level is logged at all, so that filtered events cost nothing.
        self._logger, self._enabled = _resolved_logger()
        # Asked once per run for the level of the step events (two per step): whether
        # they are logged, and whether anyone receives them at all (else none is built).
        self._log_debug = self._enabled is None or self._enabled(_DEBUG)
        self.debug: bool = self.hooked or self._log_debug
        """Whether DEBUG events (step started, succeeded, skipped) reach anyone."""
        if async_hooks:
            send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=float("inf"))
            self._send: MemoryObjectSendStream[Event] | None = send
            self._receive: MemoryObjectReceiveStream[Event] | None = receive
        else:
            self._send = self._receive = None

    def wants(self, level: int) -> bool:
        """Whether an event of ``level`` would reach anyone: a hook, or the log."""
        return self.hooked or self._enabled is None or self._enabled(level)

    @property
    def needs_dispatcher(self) -> bool:
        """Whether :meth:`dispatch` must run in a task for async hooks."""
        return self._send is not None

    def emit(self, event: Event) -> None:
        """Deliver one event; never raises because of a hook."""
        level = event.level
        if (type(event) is CompensationFailedEvent and not event.final) or (
            type(event) is StepCancelled and event.in_doubt
        ):
            level = _WARNING
        if self._enabled is None or self._enabled(level):
            # Like the stdlib's logging, a log sink that fails must not fail the saga (or
            # its unwinding); there is nowhere left to report that failure to.
            with suppress(Exception):
                self._log(event, level)
        self._deliver(event)

    def emit_debug(self, event: Event) -> None:
        """Deliver one DEBUG event (a step started, succeeded, was skipped): as
        :meth:`emit`, with the level asked once per run."""
        if self._log_debug:
            with suppress(Exception):
                self._log(event, _DEBUG)
        self._deliver(event)

    def _log(self, event: Event, level: int) -> None:
        fields: dict[str, Any] = {"saga": event.saga, "run_id": event.run_id}
        if event.step is not None:
            fields["step"] = event.step
            fields["attempt"] = event.attempt
        if event.duration is not None:
            fields["duration"] = event.duration
        if event.error is not None:
            fields["error"] = event.error
        for name in event.log_fields:
            fields[name] = getattr(event, name)
        if event.path is not None and event.path != event.step:
            fields["path"] = event.path
            fields["parent_run_id"] = event.parent_run_id
        self._logger.log(level, event.kind, **fields)

    def _deliver(self, event: Event) -> None:
        for hook in self._sync_hooks:
            try:
                returned = hook(event)
            except Exception as exc:  # noqa: BLE001 - a broken hook must not break the saga
                _hook_failed(hook, event, exc)
            else:
                # A coroutine: a lambda around an async call, say (most hooks return None).
                if returned is not None and inspect.iscoroutine(returned):
                    returned.close()
                    _hook_failed(
                        hook,
                        event,
                        TypeError("the hook returned a coroutine; make it an `async def`"),
                    )
        if self._send is not None:
            self._send.send_nowait(event)
        if self._parent is not None:
            self._parent._deliver(event)

    def close(self) -> None:
        """No more events: the dispatcher drains what is queued, then returns."""
        if self._send is not None:
            self._send.close()

    async def dispatch(self) -> None:
        """Feed queued events to the async hooks in order, until :meth:`close`.

        Runs shielded, so a cancelled run still reports its unwinding; each hook call is
        bounded so that a stuck hook cannot hold the run forever.
        """
        assert self._receive is not None
        with anyio.CancelScope(shield=True):
            async with self._receive:
                async for event in self._receive:
                    for hook in self._async_hooks:
                        try:
                            with anyio.fail_after(_ASYNC_HOOK_TIMEOUT):
                                await hook(event)
                        except Exception as exc:  # noqa: BLE001 - see _deliver()
                            _hook_failed(hook, event, exc)


_resolved: tuple[tuple[object, ...], Any, Callable[[int], bool] | None] | None = None

_LEVELS = {"debug": _DEBUG, "info": _INFO, "warning": _WARNING, "error": _ERROR, "critical": 50}

_shown: int | None = None  # set by log_events(): the level shown without a configuration


def log_events(level: str | int = "debug") -> None:
    """Show asaga's events from ``level`` up (``"debug"``: every transition, the whole
    timeline; ``"info"``; ``"warning"``: failures...) while structlog is not configured.

    Quiet by default: until the application configures structlog (then its filter is
    what counts, asaga never configures structlog), asaga logs only what needs a human
    (``error``: a compensation that failed for good, a hook that failed). The environment
    variable ``ASAGA_LOG`` (``debug``, ``info``...) does the same as this call.
    """
    global _shown, _resolved
    _shown = _level(level)
    _resolved = None


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    found = _LEVELS.get(str(level).strip().lower())
    if found is None:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(_LEVELS)}")
    return found


def _unconfigured_level() -> int:
    """The level shown while structlog is not configured."""
    if _shown is not None:
        return _shown
    try:
        return _level(os.environ.get("ASAGA_LOG", "error"))
    except ValueError:
        return _ERROR


_LOG_VARS: dict[str, contextvars.ContextVar[Any]] = {}


def bind_log_var(key: str, value: Any) -> contextvars.Token[Any]:
    """``structlog.contextvars.bind_contextvars(key=value)``, for one key: user logs carry
    it. Returns the token, whose ``var`` takes later values and resets it. structlog makes
    the variable of a key once per process; it is found through the first binding, then
    set directly (no mapping of tokens, no name built, per binding)."""
    var = _LOG_VARS.get(key)
    if var is None:
        token = bind_contextvars(**{key: value})[key]
        _LOG_VARS[key] = token.var
        return token
    return var.set(value)


def _resolved_logger() -> tuple[Any, Callable[[int], bool] | None]:
    """asaga's logger under structlog's current configuration, and its level check.

    Binding resolves the configuration (about 3 us), so the result is kept until the
    configuration changes; ``sys.stdout`` is part of the key because structlog's default
    ``PrintLogger`` writes to the stream that was ``sys.stdout`` when it was made. While
    structlog is not configured, only events from :func:`log_events`' level up are logged.
    """
    global _resolved
    configured = structlog.is_configured()
    shown = None if configured else _unconfigured_level()
    key = (*structlog.get_config().values(), sys.stdout, configured, shown)
    cached = _resolved
    if cached is not None and cached[0] == key:  # (a tuple compares items by `is`, then ==)
        return cached[1], cached[2]
    logger = _logger.bind()
    enabled = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    if shown is not None:
        threshold, inner = shown, enabled
        enabled = (
            (lambda level: level >= threshold)
            if inner is None
            else (lambda level: level >= threshold and inner(level))
        )
    _resolved = (key, logger, enabled)
    return logger, enabled


def _hook_failed(hook: object, event: Event, exc: Exception) -> None:
    with suppress(Exception):  # see Emitter.emit: a failing log sink breaks nothing
        _logger.error("hook_failed", hook=repr(hook), kind=event.kind, error=repr(exc))


class RunContext:
    """The identity of one run, and how its events are built and delivered."""

    __slots__ = (
        "_stop_at",
        "emitter",
        "failed",
        "parent",
        "parent_run_id",
        "prefix",
        "run_id",
        "saga",
    )

    def __init__(
        self,
        saga: str,
        run_id: str,
        emitter: Emitter,
        *,
        prefix: str | None = None,
        parent: "RunContext | None" = None,
    ) -> None:
        self.saga = saga
        self.run_id = run_id
        self.emitter = emitter
        self.prefix = prefix
        """The path of this run inside its parents (``None`` for a top-level run)."""
        self.parent = parent
        self.parent_run_id = parent.run_id if parent is not None else None
        self.failed = False
        """Whether a step of this run failed for good (the scheduler sets it)."""
        self._stop_at: float | None = None

    def stop(self, deadline: float) -> None:
        """The run's caller was cancelled: no step starts any more, in this run or in the
        runs below it, and the steps in flight may run until ``deadline``."""
        if self._stop_at is None:
            self._stop_at = deadline

    def stopping(self) -> bool:
        """Whether this run's caller, or a parent run's, was cancelled."""
        context: RunContext | None = self
        while context is not None:
            if context._stop_at is not None:
                return True
            context = context.parent
        return False

    def stop_deadline(self) -> float:
        """Until when the steps in flight may run: the earliest deadline of this run's and
        its parents' cancelled callers (``inf`` if none)."""
        deadline = math.inf
        context: RunContext | None = self
        while context is not None:
            if context._stop_at is not None and context._stop_at < deadline:
                deadline = context._stop_at
            context = context.parent
        return deadline

    def emit(self, kind: type[EventBase], step: str | None = None, **fields: Any) -> None:
        """Build one event of this run and deliver it, unless nobody would receive it."""
        if self.emitter.wants(kind.level):
            self.emitter.emit(self.make(kind, step, **fields))

    def emit_step(
        self, kind: type[EventBase], step: str, attempt: int, duration: float | None = None
    ) -> None:
        """Build and deliver one DEBUG event of a step (``StepStarted``, ``StepSucceeded``,
        ``StepSkipped``), unless nobody would receive it: :meth:`emit`'s fast path, run
        twice per step."""
        emitter = self.emitter
        if not emitter.debug:
            return
        prefix = self.prefix
        event = kind(
            saga=self.saga,
            run_id=self.run_id,
            step=step,
            path=step if prefix is None else f"{prefix}/{step}",
            parent_run_id=self.parent_run_id,
            attempt=attempt,
            duration=duration,
        )
        if emitter._log_debug:
            emitter.emit_debug(event)  # type: ignore[arg-type]  # each kind is in the union
        else:
            emitter._deliver(event)  # type: ignore[arg-type]

    def make(self, kind: type[EventBase], step: str | None = None, **fields: Any) -> Event:
        """Build one event of this run (deliver it with ``emitter.emit``)."""
        prefix = self.prefix
        if prefix is None:  # a top-level run: the path is the step's name
            path = step
        elif step is None:
            path = prefix
        else:
            path = f"{prefix}/{step}"
        event = kind(
            saga=self.saga,
            run_id=self.run_id,
            step=step,
            path=path,
            parent_run_id=self.parent_run_id,
            **fields,
        )
        return event  # type: ignore[return-value]  # each kind is a member of the union

    def path_of(self, step: str) -> str:
        """The path of ``step`` of this run, as nested runs name it."""
        return step if self.prefix is None else f"{self.prefix}/{step}"
