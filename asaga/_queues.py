"""The job queues open in this process, by name: where a step on workers
(``@step(queue=...)``) sends its calls. A queue registers itself while its ``async with``
block runs (:class:`asaga.workers.SaqQueue`); a run, or a recovery sweep, of a saga with
steps on workers checks first that their queues are open (:func:`require_queues`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ._exceptions import QueueNotOpen

__all__ = ["is_open", "open_queue", "opened", "require_queues"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_open: dict[str, list[Any]] = {}
"""The process's open queues, by name (the last opened of a name is used)."""


def opened(queue: _Named, is_open: bool) -> None:
    """Make ``queue`` the one its steps on workers use in this process (``is_open``), or
    forget it (called by a queue as its ``async with`` block starts and ends)."""
    same = _open.setdefault(queue.name, [])
    if is_open:
        same.append(queue)
    else:
        same[:] = [q for q in same if q is not queue]
        if not same:
            del _open[queue.name]


def is_open(name: str) -> bool:
    """Whether a queue named ``name`` is open in this process."""
    return name in _open


def open_queue(name: str, step: str) -> Any:
    """The open queue named ``name`` (for step ``step``), or ``QueueNotOpen``."""
    same = _open.get(name)
    if not same:
        raise QueueNotOpen(name, step)
    return same[-1]


def require_queues(queues: Mapping[str, str]) -> None:
    """``QueueNotOpen`` for the first step (of ``queues``: step name -> queue name) whose
    queue is not open in this process."""
    for step, name in queues.items():
        if name not in _open:
            raise QueueNotOpen(name, step)
