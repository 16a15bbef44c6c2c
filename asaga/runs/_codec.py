"""What a durable run records of one saga, encoded and decoded with the saga's own types.

:class:`SagaCodec` encodes the run's inputs (resources excluded) and each step's result as
MessagePack, and decodes them with the saga's annotations: one msgspec encoder, one decoder
per step. It is made once per saga, the first time a run of it is recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import msgspec.inspect

from .._annotations import EMPTY, type_name
from .._exceptions import CorruptRecord, NotRecordable, RecordedError
from .._graph import RUN_ID, Plan
from ._record import RunRecord

if TYPE_CHECKING:
    from .._inputs import InputValidator
    from .._run import SagaSpec

__all__ = ["SagaCodec", "codec_of", "recorded_values"]


def _enc_hook(value: Any) -> Any:
    """Exceptions inside a result (the failures of a map in ``collect`` mode) are recorded
    as their ``repr``; they come back as :class:`~asaga.RecordedError`."""
    if isinstance(value, BaseException):
        return repr(value)
    raise TypeError(f"Encoding objects of type {type(value).__qualname__} is unsupported")


def _dec_hook(kind: type, value: Any) -> Any:
    if isinstance(kind, type) and issubclass(kind, BaseException) and isinstance(value, str):
        return RecordedError(value)
    raise NotImplementedError(f"cannot decode {kind!r}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
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
                if node.invoke.durable_problem is not None:
                    self.problems.append(f"step '{name}' {node.invoke.durable_problem}")
                for child in node.invoke.sagas:
                    self.problems.extend(
                        f"step '{name}' runs saga {child.plan.saga}: {problem}"
                        for problem in codec_of(child).problems
                    )
                try:
                    self._decoders[name] = msgspec.msgpack.Decoder(
                        node.invoke.returns, dec_hook=_dec_hook
                    )
                except TypeError:  # an element type msgspec cannot decode: plain data
                    self._decoders[name] = _any_decoder
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


def codec_of(spec: SagaSpec) -> SagaCodec:
    """The codec of the saga ``spec`` describes, made on first use and kept with the spec
    (a saga that never runs durably never needs one)."""
    codec = spec.extensions.get("codec")
    if codec is None:
        codec = spec.extensions["codec"] = SagaCodec(spec.plan)
    assert isinstance(codec, SagaCodec)
    return codec


def recorded_values(
    codec: SagaCodec, inputs: InputValidator, record: RunRecord, resources: Mapping[str, Any]
) -> dict[str, Any]:
    """A recorded run's values: its inputs validated again with ``resources``, its id."""
    raw = codec.decode_inputs(record.inputs, record.run_id)
    values = inputs.validate({**raw, **resources})
    values[RUN_ID] = record.run_id
    return values
