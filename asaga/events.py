"""The event records of a run, and the types of the hooks that receive them.

::

    from asaga.events import Event, StepFailed

    def alert(event: Event) -> None:
        if isinstance(event, StepFailed):
            ...

    class Checkout(Saga):
        hooks = [alert]

Every record is a frozen ``msgspec.Struct`` tagged by its ``kind``; :data:`Event` is their
union, so a stream encodes and decodes as one type
(``msgspec.json.decode(data, type=list[Event])``). ``asaga`` re-exports every name here.
See docs/events.md.
"""

from ._events import CompensationFailedEvent as CompensationFailedEvent
from ._events import CompensationStarted as CompensationStarted
from ._events import CompensationSucceeded as CompensationSucceeded
from ._events import Event as Event
from ._events import EventKind as EventKind
from ._events import Hook as Hook
from ._events import OperatorAction as OperatorAction
from ._events import RunFailed as RunFailed
from ._events import RunParkedEvent as RunParkedEvent
from ._events import RunStarted as RunStarted
from ._events import RunSucceeded as RunSucceeded
from ._events import StepCancelled as StepCancelled
from ._events import StepFailed as StepFailed
from ._events import StepRetrying as StepRetrying
from ._events import StepSkipped as StepSkipped
from ._events import StepStarted as StepStarted
from ._events import StepSucceeded as StepSucceeded
from ._events import StepWaiting as StepWaiting
from ._public import claim as _claim

__all__ = [
    "CompensationFailedEvent",
    "CompensationStarted",
    "CompensationSucceeded",
    "Event",
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

# Tracebacks and reprs say `asaga.events.StepFailed`, not `asaga._events.StepFailed`.
_claim(__name__, globals())
del _claim
