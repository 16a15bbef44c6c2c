"""Helpers for testing code that runs sagas.

:class:`EventRecorder` is a hook that keeps every event it receives, so a test can assert
on what happened and in which order::

    recorder = EventRecorder()
    await Checkout.run(order_id="o-1", hooks=[recorder])
    assert recorder.steps("step_succeeded") == ["reserve", "charge"]
"""

from __future__ import annotations

from ._events import Event, EventKind

__all__ = ["EventRecorder"]


class EventRecorder:
    """A sync event hook that records every event, in order of delivery."""

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
