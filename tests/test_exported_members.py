"""The public API: what ``asaga`` exports, and that it says ``asaga.X``."""

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

import asaga
import asaga._exceptions
import asaga.locks


def _modules(*, private: bool) -> list[ModuleType]:
    """Every module of asaga (public ones only unless ``private``), imported."""
    names = ["asaga"] + [
        info.name
        for info in pkgutil.walk_packages(asaga.__path__, "asaga.")
        if info.name != "asaga.__main__"
    ]
    if not private:
        names = [n for n in names if not any(p.startswith("_") for p in n.split("."))]
    return [importlib.import_module(name) for name in names]


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


def test_public_modules_claim_their_names() -> None:
    """Every class and function a public module exports reports a public module that
    exports it as its ``__module__`` (``asaga.locks.LeaseLost``, never
    ``asaga._exceptions.LeaseLost``), so that tracebacks and reprs name a real import
    path."""
    modules = _modules(private=False)
    assert {m.__name__ for m in modules} >= {
        "asaga",
        "asaga.events",
        "asaga.integrations.fastapi",
        "asaga.integrations.inputs",
        "asaga.locks",
        "asaga.runs",
        "asaga.testing",
    }
    exporters: dict[int, set[str]] = {}
    checked: list[tuple[str, object]] = []
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)  # also imports the lazy names (RedisLockProvider)
            exporters.setdefault(id(obj), set()).add(module.__name__)
            if isinstance(obj, type) or inspect.isfunction(obj):
                checked.append((f"{module.__name__}.{name}", obj))
    assert checked
    for where, obj in checked:
        assert obj.__module__ in exporters[id(obj)], (where, obj.__module__)


def test_events_exports() -> None:
    """``asaga.events`` exports the event records, their union and the hook type, and
    ``asaga`` re-exports every one of them, the same objects."""
    import asaga.events

    assert asaga.events.__all__ == [
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
    for name in asaga.events.__all__:
        assert getattr(asaga, name) is getattr(asaga.events, name), name
        assert name in asaga.__all__, name


def test_names_in_two_modules_say_the_specific_one() -> None:
    """A name exported by ``asaga`` and by a subpackage reports the subpackage."""
    assert asaga.StepStarted.__module__ == "asaga.events"
    assert repr(asaga.RunFailed) == "<class 'asaga.events.RunFailed'>"
    assert asaga.Lock.__module__ == "asaga.locks"
    assert asaga.locks.LeaseLost.__module__ == "asaga.locks"
    assert repr(asaga.locks.StaleWrite) == "<class 'asaga.locks.StaleWrite'>"


def test_runtime_objects_have_no_public_constructor() -> None:
    """``SagaResult``, ``Step`` and ``Lease`` are made by asaga (``run()``, ``@step``, a
    provider's ``lease()``); calling the class raises ``TypeError`` saying how to get one,
    while isinstance checks, generics, copies and pickles of the real thing still work."""
    import copy
    import pickle

    import anyio

    cases = [
        (asaga.SagaResult, r"asaga\.SagaResult has no public constructor: `await MySaga\.run"),
        (asaga.Step, r"asaga\.Step has no public constructor: decorate .* with `@step`"),
        (asaga.locks.Lease, r"asaga\.locks\.Lease has no public constructor: `async with"),
    ]
    for cls, message in cases:
        with pytest.raises(TypeError, match=message):
            cls()
    with pytest.raises(TypeError, match="no public constructor"):
        asaga.SagaResult[int](run_id="r", output=1, results={})

    class Pair(asaga.Saga):
        @asaga.step
        async def a(x: int) -> int:
            return x + 1

        @asaga.step
        async def b(a: int) -> int:
            return a * 2

    async def main() -> tuple[asaga.SagaResult[int], int]:
        async with asaga.locks.MemoryLockProvider().lease("k", ttl=5.0) as lease:
            assert isinstance(lease, asaga.locks.Lease)
            token = lease.token
        return await Pair.run(x=1, run_id="run-1"), token

    result, token = anyio.run(main)
    assert token > 0
    assert isinstance(Pair.a, asaga.Step)
    assert isinstance(result, asaga.SagaResult)
    assert repr(result) == (
        "SagaResult(run_id='run-1', output=4, results={'a': 2, 'b': 4}, replayed=False)"
    )
    assert pickle.loads(pickle.dumps(result)) == result
    assert copy.copy(result) == result


def test_every_exception_is_defined_in_one_module() -> None:
    """asaga defines its exceptions in ``asaga._exceptions`` only (the other modules
    re-export them), and the tree in its docstring draws every one of them."""
    defined = {
        obj
        for module in _modules(private=True)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__.partition(".")[0] == "asaga"
    }
    # The command line's usage error never leaves its main(): it is an exit status.
    import asaga._cli

    defined.discard(asaga._cli.TargetError)
    for cls in defined:
        assert getattr(asaga._exceptions, cls.__name__, None) is cls, cls
        assert cls.__name__ in asaga._exceptions.__all__, cls
        assert re.search(rf"[ ─]{cls.__name__}\s", asaga._exceptions.__doc__ or ""), cls


def test_exception_tree() -> None:
    """The documented hierarchy holds."""
    from asaga.integrations.fastapi import ClientDisconnected
    from asaga.integrations.inputs import MalformedBody

    assert issubclass(asaga.MapFailed, asaga.AsagaError)
    assert issubclass(asaga.locks.LeaseError, asaga.AsagaError)
    assert issubclass(asaga.locks.LeaseTimeout, asaga.locks.LeaseError)
    assert issubclass(asaga.locks.LeaseTimeout, TimeoutError)
    assert issubclass(asaga.locks.LeaseLost, asaga.locks.LeaseError)
    assert issubclass(asaga.locks.StaleWrite, asaga.locks.LeaseLost)
    assert issubclass(asaga.locks.LeaseUnavailable, asaga.locks.LeaseError)
    assert issubclass(MalformedBody, asaga.AsagaError)
    assert issubclass(MalformedBody, ValueError)
    assert issubclass(ClientDisconnected, asaga.AsagaError)
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
