"""Records of unfinished runs, written by a test as a process that then died would have
left them: for the tests of recovery (``recover()``, ``asaga recover``)."""

from __future__ import annotations

from asaga.runs._record import RunRecord, Write, encode_record

__all__ = ["EMPTY_INPUTS", "unfinished_run"]

EMPTY_INPUTS = b"\x80"
"""An empty MessagePack map: the inputs of a saga without inputs."""


def unfinished_run(saga: str, run_id: str, *, version: int = 1) -> Write:
    """The creation of an unfinished run of ``saga`` (saga_version ``"1"``, no inputs)
    that has done nothing yet; ``version`` is the record's schema version."""
    data = encode_record(
        RunRecord(
            version=version,
            saga=saga,
            saga_version="1",
            run_id=run_id,
            status="running",
            inputs=EMPTY_INPUTS,
            fingerprint="f",
            seq=1,
        )
    )
    return Write(run_id=run_id, record=data, status="running", seq=1, nonce=run_id)
