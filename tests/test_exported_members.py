"""The public API: what ``asaga`` exports, and that it says ``asaga.X``."""

import asaga


def test_all_is_pinned() -> None:
    """The exported names are exactly these; adding or removing one is a deliberate act."""
    assert asaga.__all__ == [
        "AsagaError",
        "Compensation",
        "CompensationFailed",
        "CompensationFailedEvent",
        "CompensationStarted",
        "CompensationSucceeded",
        "CorruptRecord",
        "ElementFailure",
        "ElementSuccess",
        "Event",
        "EventKind",
        "FieldError",
        "Hook",
        "IdempotencyKeyReused",
        "InputValidationError",
        "Lock",
        "MapFailed",
        "MapResult",
        "NotRecordable",
        "RecordTooLarge",
        "RecordedError",
        "Resource",
        "Retry",
        "RunFailed",
        "RunNotFound",
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
        "StoreUnavailable",
        "UndoFailed",
        "compose",
        "map_each",
        "step",
    ]


def test_all_is_sorted_and_resolves() -> None:
    """``__all__`` is sorted and every name in it exists."""
    assert asaga.__all__ == sorted(asaga.__all__)
    for name in asaga.__all__:
        assert hasattr(asaga, name), name


def test_public_classes_say_asaga() -> None:
    """Tracebacks name ``asaga.Saga``, not the private module it lives in."""
    for name in ("Saga", "Retry", "SagaFailed", "CompensationFailed", "SagaResult", "Step"):
        assert getattr(asaga, name).__module__ == "asaga", name
    for fn in (asaga.step, asaga.compose, asaga.map_each):
        assert fn.__module__ == "asaga"


def test_exception_tree() -> None:
    """The documented hierarchy holds."""
    assert issubclass(asaga.SagaDefinitionError, asaga.AsagaError)
    assert issubclass(asaga.InputValidationError, asaga.AsagaError)
    assert issubclass(asaga.SagaFailed, asaga.AsagaError)
    assert issubclass(asaga.CompensationFailed, asaga.SagaFailed)
    assert issubclass(asaga.IdempotencyKeyReused, asaga.AsagaError)
    for name in (
        "NotRecordable",
        "RecordTooLarge",
        "CorruptRecord",
        "RunNotFound",
        "RunTakenOver",
        "StoreUnavailable",
    ):
        assert issubclass(getattr(asaga, name), asaga.RunStoreError), name
    assert issubclass(asaga.RunStoreError, asaga.AsagaError)


def test_runs_exports() -> None:
    """``asaga.runs`` exports the run stores and recovery; Redis is imported on use."""
    import asaga.runs

    assert asaga.runs.__all__ == sorted(asaga.runs.__all__)
    for name in asaga.runs.__all__:
        assert hasattr(asaga.runs, name), name
