"""Steps that wait for the outside world: an event (:func:`wait_for`), a time
(:func:`sleep_for`, :func:`sleep_until`); and the in-process mailbox of runs that wait
without a store.

A waiting step is a step like any other: it is in the graph, its parameters (the fields of
its key template, ``after=``) declare what it depends on, and its result (the event's
payload, or the time it woke) is what later steps receive by its name. How it waits
depends on the run:

- **without a store**, it waits in the process, on :data:`MAILBOX`: an event delivered
  with ``Saga.deliver(key, payload)`` wakes it; one delivered before it waits is kept
  and taken when it does; a timer sleeps;
- **in a durable run**, it raises :class:`~asaga._exceptions.Parking`: the run lets the
  other branches finish, then parks (see :mod:`asaga.runs._parking`): its record says
  what it waits for, and it goes on wherever the event is delivered or recovery finds
  its time come.
"""

from __future__ import annotations

import inspect
import re
import string
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import anyio
import msgspec

from ._annotations import EMPTY
from ._events import RunContext, StepWaiting
from ._exceptions import DuplicateEvent, InvalidEvent, Parking, WaitInfo
from ._observer import Observer, Undoable
from ._retry import Retry
from ._step import Param, Signature, Step

__all__ = ["MAILBOX", "Mailbox", "Wait", "sleep_for", "sleep_until", "wait_for"]

T = TypeVar("T")

WaitKind = Literal["event", "timer"]

_ONCE = Retry(max_attempts=1)  # a wait is never retried: its timeout is its end


class Wait:
    """How a waiting step runs (the step's ``invoke``): see the module docstring."""

    nested = False
    durable_problem: str | None = None
    sagas: tuple[Any, ...] = ()

    def __init__(
        self,
        kind: WaitKind,
        *,
        payload: Any = None,
        template: str | None = None,
        timeout: float | None = None,
        bad_payloads: int = 0,
        delay: float | None = None,
        until: str | None = None,
    ) -> None:
        self.kind = kind
        self.payload = payload
        self.template = template
        self.timeout = timeout
        self.bad_payloads = bad_payloads
        self.delay = delay
        self.until = until
        self.returns = payload if kind == "event" else float
        self.pattern = _pattern(template) if template is not None else None

    # -- the key and the payload ------------------------------------------------------

    def key_of(self, values: Mapping[str, Any]) -> str:
        """The correlation key for a run's ``values``."""
        assert self.template is not None
        return self.template.format_map(_Values(values))

    def matches(self, key: str) -> bool:
        """Whether ``key`` could have been made by this step's template."""
        return self.pattern is not None and self.pattern.fullmatch(key) is not None

    def convert(self, payload: Any, key: str, run_id: str | None = None) -> Any:
        """``payload`` as the step's type (JSON bytes or str are decoded); raises
        :class:`~asaga.InvalidEvent` if it does not fit."""
        try:
            if isinstance(payload, bytes | bytearray | memoryview | str):
                return msgspec.json.decode(payload, type=self.payload)
            if not isinstance(payload, dict | list | tuple | int | float | bool | type(None)):
                # An object (a dataclass, a Struct, attrs...): as the data it holds, so
                # that it fits a TypedDict or another Struct with the same fields too.
                try:
                    return msgspec.convert(payload, self.payload, from_attributes=True)
                except msgspec.ValidationError:
                    payload = msgspec.to_builtins(payload)
            return msgspec.convert(payload, self.payload, from_attributes=True)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidEvent(key, str(exc), run_id) from None

    # -- running ----------------------------------------------------------------------

    async def run(
        self,
        context: RunContext,
        name: str,
        kwargs: dict[str, Any],
        attempt: int,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        """Wait: in the process without an observer, else park the durable run."""
        if self.kind == "timer":
            until = self._wake_time(kwargs)
            if until <= time.time():
                return time.time(), None
            if observer is None:
                context.emit(StepWaiting, name, attempt=attempt, wait="timer", until=until)
                await anyio.sleep(until - time.time())
                return time.time(), None
            raise Parking(WaitInfo(step=name, kind="timer", until=until))
        key = self.key_of(kwargs)
        if not 1 <= len(key) <= 1000:
            raise ValueError(
                f"step {name!r} made the event key {key[:80]!r}... ({len(key)} characters): "
                "an event key is 1 to 1000 characters"
            )
        deadline = time.time() + self.timeout if self.timeout is not None else None
        if observer is None:
            context.emit(StepWaiting, name, attempt=attempt, key=key, until=deadline)
            payload = await MAILBOX.wait(context.saga, key, self, deadline, context.run_id)
            return payload, None
        raise Parking(WaitInfo(step=name, kind="event", key=key, until=deadline))

    def _wake_time(self, kwargs: Mapping[str, Any]) -> float:
        if self.until is None:
            return time.time() + (self.delay or 0.0)
        return wake_time(kwargs[self.until], self.until)

    def children(self, name: str, attempt: int, values: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """A waiting step runs no child run."""
        return []


def wake_time(value: Any, name: str) -> float:
    """Epoch seconds from what ``sleep_until`` names: an aware ``datetime`` or a number."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError(
                f"sleep_until({name!r}): {value!r} is a naive datetime; give it a timezone "
                "(datetime.now(timezone.utc) + ...) so that every process reads it the same"
            )
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(
        f"sleep_until({name!r}) takes an aware datetime or epoch seconds, got {value!r}"
    )


class _Values(dict[str, Any]):
    """The values a key template is formatted with."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__(values)


def _template_fields(template: str) -> tuple[list[str], list[str]]:
    """The names a key template reads (``{order_id}``, ``{charge.id}`` reads ``charge``),
    and what is wrong with it."""
    names: list[str] = []
    problems: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [], [f"key {template!r} is not a valid template ({exc})"]
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not base.isidentifier():
            problems.append(
                f"key {template!r}: '{{{field}}}' must name an input or a step "
                "(positional fields are not allowed)"
            )
        elif base not in names:
            names.append(base)
    return names, problems


def _pattern(template: str) -> re.Pattern[str] | None:
    """A regular expression matching the keys ``template`` makes."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    parts = []
    for literal, field, _, _ in parsed:
        parts.append(re.escape(literal))
        if field is not None:
            parts.append(".+?")
    return re.compile("".join(parts), re.DOTALL)


def _seconds(value: object, what: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        problems.append(f"{what}={value!r}: give seconds > 0 (or a timedelta), or None")
        return None
    if value > 10 * 365 * 86400:
        problems.append(f"{what}={value!r}: more than ten years")
        return None
    return float(value)


def _waiting_step(
    label: str, wait: Wait, names: Sequence[str], problems: list[str]
) -> Step[..., Any]:
    """The step a wait is: its parameters are the names it reads."""

    async def waiting(**kwargs: Any) -> Any:
        raise TypeError(f"{label} waits inside a saga run; it cannot be called directly")

    waiting.__name__ = waiting.__qualname__ = label
    waiting.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in names]
    )
    signature = Signature(
        tuple(Param(n, EMPTY, False, None) for n in names),
        wait.returns,
        tuple(f"step '{label}': {p}" for p in problems),
        False,
    )
    return Step._create(
        waiting, retry=_ONCE, timeout=None, invoke=wait, signature=signature, idempotent=True
    )


def _after(after: object, problems: list[str]) -> list[str]:
    if isinstance(after, str):
        after = (after,)
    if not isinstance(after, Sequence) or not all(
        isinstance(a, str) and a.isidentifier() for a in after
    ):
        problems.append(f"after={after!r}: give the names of steps (or inputs) to wait for")
        return []
    return list(after)


def wait_for(
    payload: type[T],
    *,
    key: str,
    timeout: float | timedelta | None = None,
    bad_payloads: int = 3,
    after: Sequence[str] = (),
) -> Step[..., T]:
    """A step that waits for an event, and whose result is the event's payload.

    ``key`` is the event's correlation key, a template whose fields name inputs or steps
    of the saga (``"payment:{order_id}"``, ``"delivery:{place_order.po}"``): the step
    depends on them, and waits for the payload delivered under the key they make
    (``await Saga.deliver(key, payload)``). ``payload`` is the payload's type, validated
    by msgspec when it is delivered (a ``msgspec.Struct``, a dataclass, a ``TypedDict``...).
    ``timeout`` (seconds or a ``timedelta``): the step fails with a ``TimeoutError``
    when no payload came in time, and the run unwinds. ``bad_payloads``: how many invalid
    payloads are refused (the run keeps waiting) before one fails the step instead
    (default 3). ``after``: steps this one also
    waits for (no key field reads them).

    Assign it in the saga's body; the attribute names the step::

        class Checkout(Saga):
            order_id: str

            @step
            async def charge(order_id: str) -> str: ...

            paid = wait_for(Payment, key="payment:{order_id}", timeout=3600, after=["charge"])

    In a durable run (``runs=``) the run parks while it waits (see docs/interrupts.md).
    """
    label = f"wait_for({getattr(payload, '__name__', repr(payload))})"
    problems: list[str] = []
    names: list[str] = []
    if not isinstance(key, str) or not key:
        problems.append(f"key={key!r}: give a key template, like 'payment:{{order_id}}'")
        template = None
    else:
        template = key
        names, found = _template_fields(key)
        problems += found
    seconds = _seconds(timeout, "timeout", problems)
    if isinstance(bad_payloads, bool) or not isinstance(bad_payloads, int) or bad_payloads < 0:
        problems.append(f"bad_payloads={bad_payloads!r}: give an int >= 0")
        bad_payloads = 0
    try:
        msgspec.inspect.type_info(payload)
    except Exception as exc:  # noqa: BLE001 - any failure means msgspec cannot validate it
        problems.append(f"payload type {payload!r} is not one msgspec can validate ({exc})")
    names += [a for a in _after(after, problems) if a not in names]
    wait = Wait(
        "event", payload=payload, template=template, timeout=seconds, bad_payloads=bad_payloads
    )
    return _waiting_step(label, wait, names, problems)


def sleep_for(seconds: float | timedelta, *, after: Sequence[str] = ()) -> Step[..., float]:
    """A step that waits ``seconds`` (or a ``timedelta``) once the steps named in ``after``
    completed; its result is the time it woke (epoch seconds). In a durable run the run
    parks and its record keeps the wake-up time: it wakes even if its process did not
    live that long (:func:`asaga.runs.recover` finds it due)."""
    problems: list[str] = []
    delay = _seconds(seconds, "seconds", problems)
    wait = Wait("timer", delay=delay)
    label = f"sleep_for({seconds!r})"
    return _waiting_step(label, wait, _after(after, problems), problems)


def sleep_until(name: str, *, after: Sequence[str] = ()) -> Step[..., float]:
    """A step that waits until the time held by the input or step ``name`` (an aware
    ``datetime``, or epoch seconds); its result is the time it woke. Durable like
    :func:`sleep_for`."""
    problems: list[str] = []
    if not isinstance(name, str) or not name.isidentifier():
        problems.append(f"sleep_until({name!r}): give the name of an input or a step")
        name = "_"
    wait = Wait("timer", until=name)
    names = [name, *(a for a in _after(after, problems) if a != name)]
    return _waiting_step(f"sleep_until({name})", wait, names, problems)


# -- the in-process mailbox -----------------------------------------------------------


_NOTHING: Any = object()


@dataclass(slots=True, eq=False)
class _Entry:
    expires: float
    payload: Any = _NOTHING
    consumed: bool = False
    run_id: str | None = None
    wait: Wait | None = None
    woken: anyio.Event | None = None
    error: BaseException | None = None
    bad: int = 0


class Mailbox:
    """Events of the runs that wait in this process (runs without a store): kept when
    delivered before their run waits, for ``keep`` seconds; a key consumed stays known as
    such for as long, so that a second delivery is refused. At most ``most`` keys."""

    def __init__(self, *, keep: float = 24 * 3600.0, most: int = 100_000) -> None:
        self.keep = keep
        self.most = most
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def _expire(self, now: float) -> None:
        """Drop what expired, and the oldest keys past ``most`` (never a waiting run's)."""
        entries = self._entries
        if len(entries) <= self.most and (
            not entries or next(iter(entries.values())).expires > now
        ):
            return
        for key in [k for k, e in entries.items() if e.woken is None and e.expires <= now]:
            del entries[key]
        extra = len(entries) - self.most
        if extra > 0:
            for key in [k for k, e in entries.items() if e.woken is None][:extra]:
                del entries[key]

    def waiting(self, saga: str, key: str) -> Wait | None:
        """The wait of a run waiting here for ``key``, if one is."""
        entry = self._entries.get((saga, key))
        if entry is None or entry.woken is None:
            return None
        return entry.wait

    def post(self, saga: str, key: str, payload: Any) -> tuple[str, str | None]:
        """Deliver a validated ``payload``: ``("delivered", run id)`` to a run waiting
        here, or ``("kept", None)`` for the run that will. :class:`~asaga.DuplicateEvent`
        if one was delivered for the key already."""
        now = time.monotonic()
        self._expire(now)
        entry = self._entries.get((saga, key))
        if entry is not None and entry.expires <= now and entry.woken is None:
            del self._entries[(saga, key)]
            entry = None
        if entry is not None and (entry.consumed or entry.payload is not _NOTHING):
            raise DuplicateEvent(key, "an event for this key was delivered already", entry.run_id)
        if entry is None:
            self._entries[(saga, key)] = _Entry(expires=now + self.keep, payload=payload)
            return "kept", None
        entry.payload = payload
        entry.consumed = True
        entry.expires = now + self.keep
        if entry.woken is not None:
            entry.woken.set()
        return "delivered", entry.run_id

    def refuse(self, saga: str, key: str, error: InvalidEvent) -> InvalidEvent:
        """Count an invalid payload for a run waiting here for ``key``; past what its step
        tolerates, the step fails: the error then says the run failed."""
        entry = self._entries.get((saga, key))
        if entry is None or entry.woken is None or entry.wait is None:
            return error
        entry.bad += 1
        if entry.bad <= entry.wait.bad_payloads:
            return error
        failed = InvalidEvent(key, error.errors, entry.run_id, run_failed=True)
        entry.error = failed
        entry.consumed = True
        entry.woken.set()
        return failed

    async def wait(
        self, saga: str, key: str, wait: Wait, deadline: float | None, run_id: str
    ) -> Any:
        """The payload delivered for ``key``: taken at once if it was kept, else waited for
        until ``deadline`` (wall clock; ``TimeoutError`` then)."""
        now = time.monotonic()
        entry = self._entries.get((saga, key))
        if entry is not None and entry.woken is None and entry.expires <= now:
            del self._entries[(saga, key)]
            entry = None
        if entry is not None:
            if entry.consumed or entry.woken is not None:
                raise DuplicateEvent(
                    key, "another run took (or waits for) the event of this key", entry.run_id
                )
            entry.consumed, entry.run_id, entry.expires = True, run_id, now + self.keep
            return wait.convert(entry.payload, key, run_id)
        entry = _Entry(expires=now + self.keep, run_id=run_id, wait=wait, woken=anyio.Event())
        self._entries[(saga, key)] = entry
        woken = entry.woken
        assert woken is not None
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            with anyio.fail_after(timeout):
                await woken.wait()
        except TimeoutError:
            entry.consumed = True
            raise TimeoutError(f"no event {key!r} came within {wait.timeout} s") from None
        finally:
            entry.woken = None
            entry.expires = time.monotonic() + self.keep
            if not entry.consumed:  # cancelled: a later run may wait for the key again
                self._entries.pop((saga, key), None)
        if entry.error is not None:
            raise entry.error
        return entry.payload


MAILBOX = Mailbox()
"""The mailbox of the runs that wait in this process without a store."""
