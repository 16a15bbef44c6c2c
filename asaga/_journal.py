"""The journal: a durable run's write-ahead record, kept through a :class:`RunStore`.

The scheduler and the unwinder tell the journal about each transition *before* acting on
it, and the journal writes the run's whole record (one store write, at most one round
trip) before it returns::

    open        the run exists, its root steps are starting      (with the idempotency key)
    started     attempt k > 1 of a step is starting
    succeeded   a step's result, and the dependents it makes ready are starting
    skipped     a step's condition was false, and the dependents it makes ready...
    failing     a step failed for good: the run unwinds
    compensation started / ended
    finish      the run's final status (with the last step's result, when that step
                is the last thing that happened)

If the record vanishes under a running run (Redis lost writes: restarted without
persistence, rolled back, failed over), the write that finds it gone raises
:class:`~asaga.RunRecordLost` once, and every later write is skipped: nobody else owns the
run, so its process unwinds it with what it holds, writing nothing more.

So after a crash the record says, for every step, whether it never started, is in doubt
(started, not known to have ended), succeeded (with its result) or failed, and where the
unwinding stands. Events are recorded too: a hook of the run collects them and each write
carries those emitted since the last one.

:class:`SagaCodec` encodes what is recorded (inputs without resources, step results) and
decodes it with the saga's own annotations: one msgspec encoder, one decoder per step.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import msgspec.inspect
import structlog

from ._annotations import EMPTY, type_name
from ._events import Event
from ._exceptions import CorruptRecord, NotRecordable, RecordTooLarge, RunRecordLost
from ._graph import RUN_ID, Plan
from ._record import (
    Claim,
    RunRecord,
    RunStatus,
    RunStore,
    StepRecord,
    Write,
    encode_event,
    encode_record,
)

if TYPE_CHECKING:
    from ._inputs import InputValidator

__all__ = ["Journal", "SagaCodec"]

_logger = structlog.get_logger("asaga")

_encoder = msgspec.msgpack.Encoder()
_sorted_encoder = msgspec.msgpack.Encoder(order="sorted")  # inputs: same values, same bytes
_any_decoder = msgspec.msgpack.Decoder()


class SagaCodec:
    """Encodes and decodes what a durable run of one saga records; built with the saga.

    :attr:`problems` lists what keeps the saga from running durably (a result type msgspec
    cannot encode, a composed step...); they are raised when a durable run starts, before
    any step, since a saga that is never run durably need not care.
    """

    __slots__ = ("_decoders", "_inputs", "problems")

    def __init__(self, plan: Plan) -> None:
        self._inputs = tuple(name for name, spec in plan.inputs.items() if not spec.resource)
        self.problems: list[str] = []
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}
        for name, node in plan.nodes.items():
            if node.invoke is not None:
                self.problems.append(
                    f"step '{name}' runs sub-sagas (compose or map_each), which durable runs "
                    "do not record yet; run this saga without a run store"
                )
                continue
            annotation = node.returns
            if annotation is EMPTY:
                self._decoders[name] = _any_decoder
                continue
            try:
                self._decoders[name] = msgspec.msgpack.Decoder(annotation)
                unsupported = _custom_types(msgspec.inspect.type_info(annotation), set())
            except TypeError:
                unsupported = [annotation]
            if unsupported:
                self.problems.append(
                    f"step '{name}' returns `{type_name(annotation)}`, which msgspec cannot "
                    "encode: a durable run records every result, so return a Struct, a "
                    "dataclass, or plain data (str, int, list, dict...)"
                )

    def encode_inputs(self, values: Mapping[str, Any], saga: str) -> bytes:
        """The run's inputs (resources excluded) as recorded."""
        recorded = {name: values[name] for name in self._inputs if name in values}
        try:
            return _sorted_encoder.encode(recorded)
        except (TypeError, ValueError, OverflowError) as exc:
            bad = _first_unencodable(recorded)
            raise NotRecordable(
                f"saga {saga}: input {bad!r} cannot be recorded ({exc}); a durable run "
                "records its inputs: pass plain data, or declare injected objects as "
                "Resource[...]"
            ) from exc

    def decode_inputs(self, data: bytes, run_id: str) -> dict[str, Any]:
        """Recorded inputs, as plain data (``InputValidator.validate`` converts them)."""
        try:
            decoded = _any_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise CorruptRecord(f"the inputs of run {run_id} do not decode: {exc}", run_id) from exc
        if not isinstance(decoded, dict):
            raise CorruptRecord(f"the inputs of run {run_id} are not a mapping", run_id)
        return decoded

    def encode_result(self, step: str, value: Any, run_id: str) -> bytes:
        """A step's result as recorded; :class:`NotRecordable` names the step and type."""
        try:
            return _encoder.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotRecordable(
                f"step {step!r} returned a {type(value).__qualname__}, which cannot be "
                f"recorded ({exc}); a durable run records every result: return a Struct, "
                "a dataclass, or plain data",
                run_id,
            ) from exc

    def decode_result(self, step: str, data: bytes, run_id: str) -> Any:
        """A recorded result, decoded as the step's return annotation says."""
        try:
            return self._decoders[step].decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
            raise CorruptRecord(
                f"the result of step {step!r} of run {run_id} does not decode: {exc}", run_id
            ) from exc

    def fingerprint(self, inputs: bytes) -> str:
        """A digest of the recorded inputs (an idempotency key must come back with them)."""
        return hashlib.sha256(inputs).hexdigest()[:32]


def _custom_types(info: msgspec.inspect.Type, seen: set[int]) -> list[Any]:
    """The types inside ``info`` that msgspec would only handle with custom hooks."""
    if isinstance(info, msgspec.inspect.CustomType):
        return [] if info.cls is object else [info.cls]  # object decodes like Any
    found = []
    for attr in info.__struct_fields__:
        value = getattr(info, attr)
        for item in value if isinstance(value, tuple) else (value,):
            inner = item.type if isinstance(item, msgspec.inspect.Field) else item
            if isinstance(inner, msgspec.inspect.Type) and id(inner) not in seen:
                seen.add(id(inner))
                found += _custom_types(inner, seen)
    return found


def _first_unencodable(values: Mapping[str, Any]) -> str:
    for name, value in values.items():
        try:
            _encoder.encode(value)
        except (TypeError, ValueError, OverflowError):
            return name
    return next(iter(values), "?")


class Journal:
    """The write-ahead record of one durable run (see the module docstring)."""

    __slots__ = (
        "_events",
        "_final_event",
        "_nonce",
        "_record",
        "_seq",
        "_steps",
        "begun",
        "claim",
        "codec",
        "gone",
        "lost",
        "store",
    )

    def __init__(
        self,
        store: RunStore,
        codec: SagaCodec,
        record: RunRecord,
        claim: Claim | None = None,
    ) -> None:
        self.store = store
        self.codec = codec
        self.claim = claim
        self._record = record
        self._steps: dict[str, StepRecord] = dict(record.steps)
        self._events: list[bytes] = []
        self._final_event: Event | None = None
        self._seq = record.seq  # a recovered run's writes go on from the record's
        self._nonce = os.urandom(8).hex()
        self.begun: set[str] = set()
        """Steps that began an attempt in this process (a step marked as starting that is
        not among them never did)."""
        self.lost = False
        """Another process took the run over: nothing more is written or compensated."""
        self.gone = False
        """The run's record vanished from the store: nothing more is written (the run is
        still unwound here, since nobody else owns it)."""

    @classmethod
    def new(
        cls,
        store: RunStore,
        codec: SagaCodec,
        saga: str,
        saga_version: str,
        run_id: str,
        values: Mapping[str, Any],
        idempotency_key: str | None,
        window: float,
    ) -> Journal:
        """The journal of a run about to start (nothing written yet)."""
        if codec.problems:
            raise NotRecordable(
                f"saga {saga} cannot run durably:\n"
                + "\n".join(f"  - {problem}" for problem in codec.problems),
                run_id,
            )
        encoded = codec.encode_inputs(values, saga)
        record = RunRecord(
            saga=saga,
            saga_version=saga_version,
            run_id=run_id,
            status="running",
            inputs=encoded,
            fingerprint=codec.fingerprint(encoded),
            idempotency_key=idempotency_key,
            owner=store.owner,
        )
        claim = (
            Claim(saga=saga, key=idempotency_key, window=window)
            if idempotency_key is not None
            else None
        )
        return cls(store, codec, record, claim)

    @property
    def run_id(self) -> str:
        return self._record.run_id

    @property
    def record(self) -> RunRecord:
        """The record as this process knows it (what the last write wrote, and since)."""
        return msgspec.structs.replace(self._record, steps=dict(self._steps))

    # -- hook ----------------------------------------------------------------------------

    def hook(self, event: Event) -> None:
        """A sync hook of the run: events are written with the next transition."""
        if event is not self._final_event:  # already written, by finish()
            self._events.append(encode_event(event))

    # -- transitions ---------------------------------------------------------------------

    async def open(self, roots: Iterable[str]) -> str | None:
        """Create the record, root steps starting; return the id of the run that holds
        the idempotency key instead, if another does (then nothing was written)."""
        now = time.time()
        for name in roots:
            self._steps[name] = StepRecord(status="running", started_at=now)
        return await self.store.create(self._write(self._record.status), self.claim)

    async def started(self, name: str, attempt: int) -> None:
        """Attempt ``attempt`` (> 1) of ``name`` is about to start."""
        self._steps[name] = msgspec.structs.replace(
            self._steps[name], status="running", attempt=attempt, started_at=time.time()
        )
        await self._put()

    def encode(self, name: str, result: Any) -> bytes:
        return self.codec.encode_result(name, result, self.run_id)

    async def succeeded(
        self, name: str, attempt: int, result: bytes, released: Iterable[str], *, last: bool
    ) -> None:
        """``name`` completed with ``result``; ``released`` steps are about to start.

        ``last``: nothing else is running or left to run, so the finishing write (right
        after, with no effect in between) carries this one too.
        """
        now = time.time()
        previous = self._steps.get(name)
        self._steps[name] = StepRecord(
            status="succeeded",
            attempt=attempt,
            result=result,
            started_at=previous.started_at if previous is not None else None,
            ended_at=now,
        )
        starting = False
        for child in released:
            self._steps[child] = StepRecord(status="running", started_at=now)
            starting = True
        if last and not starting:
            self._encoded()  # not written yet, but RecordTooLarge now, not at the final write
            return
        await self._put()

    async def skipped(self, name: str, released: Iterable[str]) -> None:
        """``name``'s condition was false; ``released`` steps are about to start."""
        now = time.time()
        self._steps[name] = StepRecord(status="skipped", ended_at=now)
        starting = False
        for child in released:
            self._steps[child] = StepRecord(status="running", started_at=now)
            starting = True
        if starting:
            await self._put()

    def ended(self, name: str, status: str, error: str | None, attempt: int) -> None:
        """``name`` failed or was cancelled, or its result could not be recorded (written
        with the next transition; no result is kept)."""
        self._steps[name] = msgspec.structs.replace(
            self._steps.get(name) or StepRecord(status="running"),
            status=status,
            attempt=attempt,
            result=None,
            error=error,
            ended_at=time.time(),
        )

    def settle(self) -> None:
        """The run unwinds: a step still marked as starting that never began an attempt
        (released, then the run failed or was cancelled) is marked so; one that began and
        did not end (interrupted by a KeyboardInterrupt, say) stays in doubt."""
        now = time.time()
        for name, step in self._steps.items():
            if step.status == "running" and name not in self.begun:
                self._steps[name] = msgspec.structs.replace(
                    step, status="cancelled", error="never started", ended_at=now
                )

    def unrecorded(self, name: str, error: str) -> None:
        """``name`` completed but its result cannot be recorded (``NotRecordable``,
        ``RecordTooLarge``): kept as succeeded without a result, which a recovery cannot
        undo (its compensation would lack the result: it fails, and a human looks)."""
        self._steps[name] = msgspec.structs.replace(
            self._steps.get(name) or StepRecord(status="succeeded"),
            status="succeeded",
            result=None,
            error=f"result not recorded: {error}",
            ended_at=time.time(),
        )

    async def failing(self, step: str | None, error: str) -> None:
        """The run unwinds: ``step`` failed for good (``None``: the caller cancelled)."""
        self._record = msgspec.structs.replace(
            self._record, status="compensating", failed_step=step, error=error
        )
        await self._put()

    async def compensation(
        self, name: str, status: str, attempt: int, error: str | None = None
    ) -> None:
        """Undoing ``name``: attempt ``attempt`` is starting (``running``) or ended."""
        self._steps[name] = msgspec.structs.replace(
            self._steps[name],
            compensation=status,
            compensation_attempt=attempt,
            compensation_error=error,
        )
        await self._put()

    async def finish(self, status: RunStatus, event: Event | None = None) -> None:
        """The run's final status (succeeded, failed, cancelled, undone...), with the
        ``event`` that says so, written before anyone is told (then it is delivered)."""
        self._record = msgspec.structs.replace(self._record, status=status)
        if event is not None:
            self._final_event = event
            self._events.append(encode_event(event))
        await self._put(final=True)

    async def resume(self, roots: Iterable[str]) -> None:
        """A recovered run goes on: ``roots`` (never started, or idempotent and in doubt)
        are about to start."""
        now = time.time()
        for name in roots:
            previous = self._steps.get(name)
            attempt = previous.attempt + 1 if previous is not None else 1
            self._steps[name] = StepRecord(status="running", attempt=attempt, started_at=now)
        await self._put()

    def mark(self, name: str, step: StepRecord) -> None:
        """Replace what the record says of ``name`` (written with the next transition)."""
        self._steps[name] = step

    def set_failure(self, step: str | None, error: str) -> None:
        """Record the failure that makes the run unwind (written with the next transition)."""
        self._record = msgspec.structs.replace(self._record, failed_step=step, error=error)

    def set_status(self, status: RunStatus) -> None:
        """Change the status in the record without writing (the next write carries it)."""
        self._record = msgspec.structs.replace(self._record, status=status)

    # -- writing -------------------------------------------------------------------------

    async def _put(self, *, final: bool = False) -> None:
        if self.gone:
            return  # nothing to write to: the run unwinds on what this process holds
        try:
            await self.store.write(self._write(self._record.status, final=final))
        except RunRecordLost as exc:
            self.gone = True
            _logger.warning("run_record_lost", run_id=self.run_id, error=str(exc))
            raise

    def _encoded(self) -> bytes:
        """The record as it stands, encoded; ``RecordTooLarge`` past the store's limit."""
        record = msgspec.structs.replace(
            self._record, steps=dict(self._steps), updated_at=time.time(), seq=self._seq
        )
        data = encode_record(record)
        limit = self.store.max_record_bytes
        if len(data) > limit:
            raise RecordTooLarge(
                f"the record of run {self.run_id} ({record.saga}) would be {len(data)} bytes, "
                f"over the store's limit of {limit}: return less from the steps (keep large "
                "data elsewhere and return a reference to it), or raise max_record_bytes",
                self.run_id,
            )
        return data

    def _write(self, status: RunStatus, *, final: bool = False) -> Write:
        self._seq += 1
        data = self._encoded()
        events, self._events = tuple(self._events), []
        return Write(
            run_id=self.run_id,
            record=data,
            status=status,
            events=events,
            final=final,
            seq=self._seq,
            nonce=self._nonce,
        )


def recorded_values(
    codec: SagaCodec, inputs: InputValidator, record: RunRecord, resources: Mapping[str, Any]
) -> dict[str, Any]:
    """A recorded run's values: its inputs validated again with ``resources``, its id."""
    raw = codec.decode_inputs(record.inputs, record.run_id)
    values = inputs.validate({**raw, **resources})
    values[RUN_ID] = record.run_id
    return values
