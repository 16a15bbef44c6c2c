"""The exceptions asaga raises.

::

    AsagaError
    ├── SagaDefinitionError      a saga class is broken; raised when the class is created
    ├── InputValidationError     run() got bad, missing or unknown inputs; no step ran
    ├── UndoFailed               undoing a completed run left some compensations failed
    └── SagaFailed               a step failed for good; completed steps were compensated
        └── CompensationFailed   ... and at least one compensation failed too

Every exception carries structured fields (``saga``, ``run_id``, ``step``...) so that
handlers can map them to responses without parsing messages.
"""

from collections.abc import Sequence

import msgspec

__all__ = [
    "AsagaError",
    "CompensationFailed",
    "FieldError",
    "InputValidationError",
    "SagaDefinitionError",
    "SagaFailed",
    "UndoFailed",
    "needs_repair",
]


class AsagaError(Exception):
    """Base class of every error asaga raises on its own account."""


class SagaDefinitionError(AsagaError, TypeError):
    """A saga class is malformed.

    Raised when the class is created (never in the middle of a run), listing every
    problem found at once in :attr:`problems`, each naming the step, the parameter and the
    fix.
    """

    saga: str
    problems: tuple[str, ...]

    def __init__(self, saga: str, problems: Sequence[str]) -> None:
        self.saga = saga
        self.problems = tuple(problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"saga {saga} has {count} {noun}:\n{lines}")


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One bad, missing or unknown input of a run."""

    field: str
    """The input's name."""
    message: str
    """What is wrong with it."""


class InputValidationError(AsagaError, ValueError):
    """The inputs given to ``run()`` are invalid; no step has started.

    :attr:`errors` lists every bad, missing or unknown field.
    """

    saga: str
    errors: tuple[FieldError, ...]

    def __init__(self, saga: str, errors: Sequence[FieldError]) -> None:
        self.saga = saga
        self.errors = tuple(errors)
        lines = "\n".join(f"  - {e.field}: {e.message}" for e in self.errors)
        super().__init__(f"invalid inputs for saga {saga}:\n{lines}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the offending fields, in the order reported."""
        return tuple(e.field for e in self.errors)


class SagaFailed(AsagaError):
    """A step failed for good and the saga was unwound.

    ``__cause__`` is the failing step's exception. :attr:`compensated` names the steps whose
    compensations completed, in completion order.
    """

    saga: str
    run_id: str
    step: str
    compensated: tuple[str, ...]

    def __init__(
        self,
        saga: str,
        run_id: str,
        step: str,
        compensated: Sequence[str],
        message: str | None = None,
    ) -> None:
        self.saga = saga
        self.run_id = run_id
        self.step = step
        self.compensated = tuple(compensated)
        super().__init__(
            message
            or f"saga {saga} (run {run_id}) failed at step {step!r}; "
            f"compensated: {list(self.compensated)}"
        )


class CompensationFailed(SagaFailed):
    """A step failed and, while unwinding, at least one compensation failed as well.

    :attr:`errors` is an :class:`ExceptionGroup` of every compensation failure; the steps
    named in :attr:`failed_compensations` need a human. ``__cause__`` is still the step's
    exception.
    """

    errors: ExceptionGroup[Exception]
    failed_compensations: tuple[str, ...]

    def __init__(
        self,
        saga: str,
        run_id: str,
        step: str,
        compensated: Sequence[str],
        failed_compensations: Sequence[str],
        errors: ExceptionGroup[Exception],
    ) -> None:
        self.errors = errors
        self.failed_compensations = tuple(failed_compensations)
        super().__init__(
            saga,
            run_id,
            step,
            compensated,
            f"saga {saga} (run {run_id}) failed at step {step!r}, and compensating "
            f"{list(self.failed_compensations)} failed too (needs manual repair); "
            f"compensated: {list(compensated)}",
        )


class UndoFailed(AsagaError):
    """Undoing a run that had completed (a sub-saga whose parent failed later) left
    compensations that failed: :attr:`failed_compensations` need a human.

    :attr:`errors` is an :class:`ExceptionGroup` of every compensation failure.
    """

    saga: str
    run_id: str
    compensated: tuple[str, ...]
    failed_compensations: tuple[str, ...]
    errors: ExceptionGroup[Exception]

    def __init__(
        self,
        saga: str,
        run_id: str,
        compensated: Sequence[str],
        failed_compensations: Sequence[str],
        errors: ExceptionGroup[Exception],
    ) -> None:
        self.saga = saga
        self.run_id = run_id
        self.compensated = tuple(compensated)
        self.failed_compensations = tuple(failed_compensations)
        self.errors = errors
        super().__init__(
            f"undoing saga {saga} (run {run_id}) failed for {list(self.failed_compensations)}; "
            f"compensated: {list(self.compensated)}"
        )


def needs_repair(exc: BaseException) -> bool:
    """Whether ``exc`` reports work that could not be undone (a human must look)."""
    return isinstance(exc, CompensationFailed | UndoFailed) or bool(
        getattr(exc, "undo_failures", ())
    )
