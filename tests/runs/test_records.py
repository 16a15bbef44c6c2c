"""Run records: golden payloads of every schema version still decode; a record that is
not one (newer, foreign, tampered with) is refused with a clear error, never executed."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgspec
import pytest

from asaga import CorruptRecord
from asaga.runs._record import SCHEMA_VERSION, RunRecord, decode_event, decode_record

RECORDS = Path(__file__).with_name("records")


def test_golden_v1_record_decodes() -> None:
    """The schema-1 record decodes into the same fields it was written with."""
    record = decode_record((RECORDS / "v1-run.msgpack").read_bytes())
    assert record.version == 1
    assert (record.saga, record.saga_version, record.status) == (
        "Checkout",
        "1",
        "compensation_failed",
    )
    assert record.idempotency_key == "order-o-1"
    assert msgspec.msgpack.decode(record.inputs) == {"order_id": "o-1", "amount": 30}
    assert list(record.steps) == ["reserve", "charge", "ship"]
    assert msgspec.msgpack.decode(record.steps["charge"].result or b"") == "ch-1"
    assert record.steps["charge"].attempt == 2
    assert record.compensated == ("reserve",)
    assert record.failed_compensations == ("charge",)
    assert record.failed_step == "ship"
    assert record.finished


def test_golden_v1_events_decode() -> None:
    """Stored events of schema 1 decode into the event union."""
    raw = msgspec.msgpack.decode((RECORDS / "v1-events.msgpack").read_bytes(), type=list[bytes])
    events = [decode_event(item) for item in raw]
    assert [e.kind for e in events] == ["run_started", "step_succeeded"]
    assert events[1].step == "reserve"
    assert events[1].duration == 0.01


def test_a_record_from_a_newer_asaga_is_refused_clearly() -> None:
    """A schema version above this asaga's is not half-read: the error says to upgrade."""
    record = decode_record((RECORDS / "v1-run.msgpack").read_bytes())
    newer = msgspec.msgpack.encode(msgspec.structs.replace(record, version=SCHEMA_VERSION + 1))
    with pytest.raises(CorruptRecord, match=r"schema version 2, written by a newer asaga"):
        decode_record(newer, "r-1")


def test_new_fields_of_the_same_version_are_ignored() -> None:
    """Unknown fields (added with defaults by a later release) do not break decoding."""
    fields = msgspec.msgpack.decode((RECORDS / "v1-run.msgpack").read_bytes())
    fields["shard"] = 7
    record = decode_record(msgspec.msgpack.encode(fields))
    assert record.saga == "Checkout"


@pytest.mark.parametrize(
    "payload",
    [
        b"not msgpack at all \xc1",
        msgspec.msgpack.encode(["a", "list"]),
        msgspec.msgpack.encode({"version": 1, "saga": 3}),
        pickle.dumps({"version": 1}),
    ],
    ids=["garbage", "not-a-map", "wrong-types", "pickle"],
)
def test_foreign_or_tampered_records_are_refused(payload: bytes) -> None:
    """Anything that is not exactly a RunRecord raises CorruptRecord naming the run
    (decoding is msgspec into declared types: no pickle, nothing executed)."""
    with pytest.raises(CorruptRecord, match="run r-9"):
        decode_record(payload, "r-9")


def test_records_round_trip() -> None:
    """What is encoded decodes to an equal record."""
    record = RunRecord(
        saga="S", saga_version="2", run_id="r", status="running", inputs=b"\x80", fingerprint="f"
    )
    from asaga.runs._record import encode_record

    assert decode_record(encode_record(record)) == record
