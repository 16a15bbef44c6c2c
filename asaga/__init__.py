"""asaga: async coroutine sagas.

Steps are ``async def`` functions in a :class:`Saga` subclass whose parameter names declare
their dependencies; independent branches run concurrently, failed steps are retried, and a
run that fails for good is unwound by compensations in reverse graph order, shielded from
cancellation.
"""

from ._annotations import Resource as Resource
from ._events import log_events as log_events
from ._exceptions import AsagaError as AsagaError
from ._exceptions import CompensationFailed as CompensationFailed
from ._exceptions import CorruptRecord as CorruptRecord
from ._exceptions import DuplicateEvent as DuplicateEvent
from ._exceptions import EventRefused as EventRefused
from ._exceptions import FieldError as FieldError
from ._exceptions import Halt as Halt
from ._exceptions import IdempotencyKeyReused as IdempotencyKeyReused
from ._exceptions import InputValidationError as InputValidationError
from ._exceptions import InvalidEvent as InvalidEvent
from ._exceptions import NotParked as NotParked
from ._exceptions import NotRecordable as NotRecordable
from ._exceptions import RecordedError as RecordedError
from ._exceptions import RecordTooLarge as RecordTooLarge
from ._exceptions import RunNotFound as RunNotFound
from ._exceptions import RunParked as RunParked
from ._exceptions import RunRecordLost as RunRecordLost
from ._exceptions import RunStoreError as RunStoreError
from ._exceptions import RunTakenOver as RunTakenOver
from ._exceptions import SagaDefinitionError as SagaDefinitionError
from ._exceptions import SagaFailed as SagaFailed
from ._exceptions import StoreUnavailable as StoreUnavailable
from ._exceptions import UndoFailed as UndoFailed
from ._exceptions import WaitInfo as WaitInfo
from ._nested import ElementFailure as ElementFailure
from ._nested import ElementSuccess as ElementSuccess
from ._nested import MapFailed as MapFailed
from ._nested import MapResult as MapResult
from ._nested import compose as compose
from ._nested import map_each as map_each
from ._public import claim as _claim
from ._retry import Retry as Retry
from ._run import SagaResult as SagaResult
from ._saga import Saga as Saga
from ._saga import wire as _wire
from ._step import Compensation as Compensation
from ._step import Step as Step
from ._step import step as step
from ._waits import sleep_for as sleep_for
from ._waits import sleep_until as sleep_until
from ._waits import wait_for as wait_for
from .events import CompensationFailedEvent as CompensationFailedEvent
from .events import CompensationStarted as CompensationStarted
from .events import CompensationSucceeded as CompensationSucceeded
from .events import Event as Event
from .events import EventKind as EventKind
from .events import Hook as Hook
from .events import OperatorAction as OperatorAction
from .events import RunFailed as RunFailed
from .events import RunParkedEvent as RunParkedEvent
from .events import RunStarted as RunStarted
from .events import RunSucceeded as RunSucceeded
from .events import StepCancelled as StepCancelled
from .events import StepFailed as StepFailed
from .events import StepRetrying as StepRetrying
from .events import StepSkipped as StepSkipped
from .events import StepStarted as StepStarted
from .events import StepSucceeded as StepSucceeded
from .events import StepWaiting as StepWaiting
from .locks import Lock as Lock
from .locks._memory import default_provider as _default_provider
from .workers._durable import DURABILITY as _DURABILITY

# The composition root: the saga runs durably through asaga.runs, and locks without a
# `locks` input on the event loop's in-memory provider; the core imports neither (see
# docs/architecture.md).
_wire(durability=_DURABILITY, default_locks=_default_provider)
del _wire, _DURABILITY, _default_provider

__version__ = "0.1.0.dev0"

__all__ = [
    "AsagaError",
    "Compensation",
    "CompensationFailed",
    "CompensationFailedEvent",
    "CompensationStarted",
    "CompensationSucceeded",
    "CorruptRecord",
    "DuplicateEvent",
    "ElementFailure",
    "ElementSuccess",
    "Event",
    "EventKind",
    "EventRefused",
    "FieldError",
    "Halt",
    "Hook",
    "IdempotencyKeyReused",
    "InputValidationError",
    "InvalidEvent",
    "Lock",
    "MapFailed",
    "MapResult",
    "NotParked",
    "NotRecordable",
    "OperatorAction",
    "RecordTooLarge",
    "RecordedError",
    "Resource",
    "Retry",
    "RunFailed",
    "RunNotFound",
    "RunParked",
    "RunParkedEvent",
    "RunRecordLost",
    "RunStarted",
    "RunStoreError",
    "RunSucceeded",
    "RunTakenOver",
    "Saga",
    "SagaDefinitionError",
    "SagaFailed",
    "SagaResult",
    "Step",
    "StepCancelled",
    "StepFailed",
    "StepRetrying",
    "StepSkipped",
    "StepStarted",
    "StepSucceeded",
    "StepWaiting",
    "StoreUnavailable",
    "UndoFailed",
    "WaitInfo",
    "compose",
    "log_events",
    "map_each",
    "sleep_for",
    "sleep_until",
    "step",
    "wait_for",
]

# Tracebacks and reprs say `asaga.Saga`, not `asaga._saga.Saga`.
_claim(__name__, globals())
del _claim
