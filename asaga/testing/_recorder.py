""":class:`EventRecorder`: a hook that keeps a run's events, and assertions on them.

Steps are named by where their events happened (the events' ``path``): ``"charge"`` for
a step of the saga that was run, ``"pay/authorize"`` for step ``authorize`` of the
sub-saga that step ``pay`` composes. An expected order is a list of names; a set in it
is a group whose members may come in any order among themselves (steps that run, or are
compensated, concurrently)::

    recorder.assert_compensated(["charge", {"reserve_a", "reserve_b"}, "open"])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TypeAlias

from .._events import Event, EventKind

__all__ = ["EventRecorder", "Expected"]

Expected: TypeAlias = Sequence[str | AbstractSet[str]] | AbstractSet[str]
"""Step names in order (``["c", "b", "a"]``); a set is a group in any order, alone or in
the list (``[{"b", "c"}, "a"]``)."""


class EventRecorder:
    """A sync event hook that records every event, in order of delivery.

    Pass it to one run (``await Checkout.run(..., hooks=[recorder])``) and assert on what
    happened; the events of the sub-saga runs of composed and mapped steps are recorded
    too. Use a recorder per run, or :meth:`clear` it between runs: the assertions expect
    each step once.
    """

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Event] = []
        """Every event received, oldest first."""

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[EventKind]:
        """The kind of every event, in order."""
        return [e.kind for e in self.events]

    def of(self, kind: EventKind) -> list[Event]:
        """The events of one kind, in order."""
        return [e for e in self.events if e.kind == kind]

    def steps(self, kind: EventKind) -> list[str | None]:
        """The step names of the events of one kind, in order."""
        return [e.step for e in self.events if e.kind == kind]

    def trace(self) -> list[tuple[EventKind, str | None]]:
        """``(kind, step)`` for every event, in order: compact to compare in a test."""
        return [(e.kind, e.step) for e in self.events]

    def clear(self) -> None:
        """Forget what was recorded."""
        self.events.clear()

    # -- assertions -------------------------------------------------------------------

    def attempts(self, step: str) -> int:
        """How many attempts of ``step`` started (its ``step_started`` events); ``0`` if
        it never started (skipped, or never reached)."""
        return sum(1 for e in self.events if e.kind == "step_started" and _where(e) == step)

    def assert_succeeded(self, expected: Expected) -> None:
        """Assert that exactly these steps succeeded, each once, in this order (a set:
        in any order). Raises ``AssertionError`` showing the timeline otherwise."""
        self._assert_order("step_succeeded", "steps that succeeded", expected)

    def assert_compensated(self, expected: Expected) -> None:
        """Assert that exactly these steps were compensated (their compensation
        succeeded), each once, in this order (a set: in any order). ``[]``: nothing was.
        Raises ``AssertionError`` showing the timeline otherwise."""
        self._assert_order("compensation_succeeded", "steps compensated", expected)

    def assert_not_compensated(self, *steps: str) -> None:
        """Assert that no compensation of these steps even started. Raises
        ``AssertionError`` showing the timeline otherwise."""
        if not steps:
            raise TypeError("assert_not_compensated() takes the names of one or more steps")
        for s in steps:
            if not isinstance(s, str):
                raise TypeError(
                    f"assert_not_compensated() takes step names: "
                    f"assert_not_compensated('a', 'b'), got {s!r}"
                )
        started = [_where(e) for e in self.events if e.kind == "compensation_started"]
        touched = [s for s in steps if s in started]
        if touched:
            raise AssertionError(
                f"expected no compensation of {_names(steps)}, but {_names(touched)} "
                f"{'was' if len(touched) == 1 else 'were'} compensated (or tried)\n"
                f"{self.timeline()}"
            )

    def timeline(self) -> str:
        """The recorded events, one a line: what the assertions show when they fail."""
        if not self.events:
            return "timeline: no event recorded (was the recorder passed in hooks=[...]?)"
        lines = [f"timeline ({len(self.events)} events):"]
        for e in self.events:
            where = _where(e)
            line = f"  {e.kind:<23} {where if where is not None else e.saga}"
            if e.attempt:
                line = f"{line:<50} attempt {e.attempt}"
            if e.error is not None:
                line += f"  {e.error}"
            lines.append(line.rstrip())
        return "\n".join(lines)

    def _assert_order(self, kind: EventKind, what: str, expected: Expected) -> None:
        groups = _groups(expected)
        actual = [w for e in self.events if e.kind == kind and (w := _where(e)) is not None]
        if _matches(actual, groups):
            return
        counts = Counter(actual)
        twice = sorted(name for name, n in counts.items() if n > 1)
        note = f"\n  more than once: {twice}" if twice else ""
        raise AssertionError(
            f"{what} differ from what was expected (each once, in this order; a set in "
            f"any order)\n"
            f"  expected: {_show(groups)}\n"
            f"  actual:   {actual}{note}\n"
            f"{self.timeline()}"
        )


def _where(event: Event) -> str | None:
    """Where an event happened: its path (``"pay/authorize"`` in a sub-saga), else its
    step (``None`` for run events of a top-level run)."""
    return event.path if event.path is not None else event.step


def _groups(expected: Expected) -> list[frozenset[str]]:
    """``expected`` as consecutive groups; each name in one group only."""
    if isinstance(expected, str):
        raise TypeError(f"give a list of step names, like [{expected!r}], not a str")
    items: Iterable[str | AbstractSet[str]] = (
        [expected] if isinstance(expected, AbstractSet) else expected
    )
    groups: list[frozenset[str]] = []
    seen: set[str] = set()
    for item in items:
        group = frozenset([item]) if isinstance(item, str) else frozenset(item)
        if not all(isinstance(name, str) for name in group):
            raise TypeError(f"expected step names (str), got {item!r}")
        if group & seen:
            raise ValueError(f"{sorted(group & seen)} expected twice: each step is named once")
        seen |= group
        if group:
            groups.append(group)
    return groups


def _matches(actual: list[str], groups: list[frozenset[str]]) -> bool:
    """Whether ``actual`` is the groups one after the other, each exactly once."""
    i = 0
    for group in groups:
        chunk = actual[i : i + len(group)]
        if len(chunk) != len(group) or set(chunk) != group:
            return False
        i += len(group)
    return i == len(actual)


def _show(groups: list[frozenset[str]]) -> str:
    parts = [repr(next(iter(g))) if len(g) == 1 else "{" + _names(sorted(g)) + "}" for g in groups]
    return "[" + ", ".join(parts) + "]"


def _names(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)
