"""A durable run's record, its encoding, and the protocol of the stores that keep it.

A record is one ``msgspec.Struct`` (:class:`RunRecord`), encoded as MessagePack by one
module-level encoder and decoded by one decoder per type, never by pickle: a record that
is not exactly one of these types (tampered with, written by another program, or by a
newer asaga) fails to decode with :class:`~asaga.CorruptRecord`, it cannot run code.

Inputs and step results are encoded separately, as bytes inside the record, so that a
record decodes without knowing the saga; they are decoded with the saga's own annotations
(:mod:`asaga.runs._codec`) when a run is resumed, replayed or undone.

Schema evolution: :data:`SCHEMA_VERSION` is written into every record. New fields get
defaults, so older records still decode (``tests/runs/records/`` holds golden payloads of
every version); a record whose version is newer than this asaga knows is refused with a
clear error instead of being half-read.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, get_args

import msgspec

from .._events import Event, OperatorAction, RunFailed
from .._exceptions import CorruptRecord, RunExists, WaitInfo

__all__ = [
    "FINISHED",
    "MAX_FIND",
    "MAX_PAGE",
    "PAGE_STATUSES",
    "SCHEMA_VERSION",
    "Claim",
    "PageQuery",
    "Quarantined",
    "RunExists",
    "RunPage",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "StepRecord",
    "Write",
    "check_find",
    "check_identity",
    "check_note",
    "decode_event",
    "decode_record",
    "encode_event",
    "encode_record",
    "leaves_doubt",
    "page_query",
]

SCHEMA_VERSION = 1
"""The version of the record schema this asaga writes (and the newest it reads)."""

RunStatus = Literal[
    "running",  # forward phase: steps run
    "compensating",  # a step failed (or the caller was cancelled): undoing
    "succeeded",
    "failed",  # failed and fully compensated
    "compensation_failed",  # failed, and some compensation failed too: needs a human
    "cancelled",  # the caller was cancelled; completed steps were compensated
    "undoing",  # a succeeded run being undone by Saga.undo()
    "undone",
    "undo_failed",  # undoing left some compensation failed: needs a human
    "waiting",  # parked: steps wait for an event, a timer or a resume (see ``waits``)
    "terminated",  # a parked run cancelled without compensation (Saga.cancel(compensate=False))
]

FINISHED: frozenset[str] = frozenset(
    {
        "succeeded",
        "failed",
        "compensation_failed",
        "cancelled",
        "undone",
        "undo_failed",
        "terminated",
    }
)
"""Statuses after which nothing runs any more."""

StepStatus = Literal["running", "succeeded", "failed", "skipped", "cancelled", "waiting"]
CompensationStatus = Literal["running", "succeeded", "failed"]


class StepRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of a recorded run."""

    status: StepStatus
    """``running`` means started (or about to start) and not known to have ended: after a
    crash such a step is *in doubt*, it may or may not have had its effect."""
    attempt: int = 1
    """The attempt started last (1-based)."""
    result: bytes | None = None
    """The step's result, MessagePack-encoded (decoded with the step's annotation)."""
    error: str | None = None
    """``repr`` of the exception, for a failed step."""
    compensation: CompensationStatus | None = None
    """Where undoing this step stands: ``None`` (not started), running, succeeded, failed."""
    compensation_attempt: int = 0
    compensation_error: str | None = None
    started_at: float | None = None
    """Wall-clock time (epoch seconds) the last attempt started."""
    ended_at: float | None = None
    """Wall-clock time the step ended (succeeded, failed, skipped or cancelled)."""
    children: tuple[str, ...] = ()
    """The child runs of a composed or mapped step (their run ids), once it completed."""
    wait: WaitInfo | None = None
    """What a ``waiting`` step waits for (an event's key and deadline, a timer's time, a
    halt's reason). (Invalid payloads refused meanwhile are counted in the key's mailbox,
    not here: the record of a parked run is written only by whoever takes it.)"""


class RunRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Everything a store keeps about one durable run."""

    version: int = SCHEMA_VERSION
    """The schema version the record was written with."""
    saga: str
    """The saga class's name."""
    saga_version: str
    """The saga's ``saga_version`` when the run started: a run is resumed only by the same
    version of the saga."""
    run_id: str
    status: RunStatus
    inputs: bytes
    """The run's inputs (resources excluded), MessagePack-encoded."""
    fingerprint: str
    """A digest of the inputs: an idempotency key reused with other inputs is refused."""
    idempotency_key: str | None = None
    owner: str | None = None
    """The store identity (one per process) that runs the run; its lease says it is alive."""
    parent: str | None = None
    """For the child run of a composed or mapped step: the run id of its parent (the
    child's id is ``<parent>/<step>/<attempt>[/<element>]``)."""
    steps: dict[str, StepRecord] = {}
    """Steps that started, by name; a step missing here never started."""
    failed_step: str | None = None
    """The step whose failure made the run unwind (``None``: cancelled before any failed)."""
    error: str | None = None
    """``repr`` of the failing step's exception (or ``"cancelled"``)."""
    created_at: float = msgspec.field(default_factory=time.time)
    updated_at: float = msgspec.field(default_factory=time.time)
    seq: int = 0
    """How many writes made this record (a store refuses a write older than the last)."""
    events: tuple[Event, ...] = ()
    """The run's events, in order (filled in when a store reads a record back)."""
    waiting: tuple[WaitInfo, ...] = ()
    """What a parked run (status ``waiting``) waits for: one entry per wait, those of the
    sub-sagas it composes included."""

    @property
    def finished(self) -> bool:
        """Whether nothing runs any more (succeeded, failed, undone...)."""
        return self.status in FINISHED

    @property
    def waits(self) -> tuple[WaitInfo, ...]:
        """What a parked run waits for (see ``waiting``)."""
        return self.waiting

    @property
    def compensated(self) -> tuple[str, ...]:
        """Steps whose compensation succeeded."""
        return tuple(n for n, s in self.steps.items() if s.compensation == "succeeded")

    @property
    def failed_compensations(self) -> tuple[str, ...]:
        """Steps whose compensation failed for good (they need a human)."""
        return tuple(n for n, s in self.steps.items() if s.compensation == "failed")


class _Version(msgspec.Struct):
    """Just the schema version of a record, read first."""

    version: int = 0


_encoder = msgspec.msgpack.Encoder()
_version_decoder = msgspec.msgpack.Decoder(_Version)
_record_decoder = msgspec.msgpack.Decoder(RunRecord)
_event_decoder: msgspec.msgpack.Decoder[Event] = msgspec.msgpack.Decoder(Event)


def encode_record(record: RunRecord) -> bytes:
    """The record as stored (its events are stored apart, see :meth:`RunStore.write`)."""
    if record.events:
        record = msgspec.structs.replace(record, events=())
    return _encoder.encode(record)


def decode_record(data: bytes, run_id: str | None = None) -> RunRecord:
    """Decode a stored record, or raise :class:`~asaga.CorruptRecord` saying why."""
    what = f"run {run_id}" if run_id else "a run"
    try:
        version = _version_decoder.decode(data).version
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(f"the record of {what} is not an asaga record: {exc}", run_id) from exc
    if version > SCHEMA_VERSION:
        raise CorruptRecord(
            f"the record of {what} has schema version {version}, written by a newer asaga; "
            f"this one reads versions up to {SCHEMA_VERSION}: upgrade asaga to read it",
            run_id,
        )
    try:
        return _record_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(f"the record of {what} does not decode: {exc}", run_id) from exc


def check_identity(
    record: RunRecord, run_id: str, saga: str | None, saga_version: str | None
) -> None:
    """Refuse a record that is not the one its store's index says it is (written by
    another program, or copied under another run's key): :class:`~asaga.CorruptRecord`."""
    found = (record.run_id, record.saga, record.saga_version)
    if found != (run_id, saga, saga_version):
        raise CorruptRecord(
            f"the record of run {run_id} is foreign: the store lists it as run {run_id} of "
            f"saga {saga} (saga_version {saga_version}), the record says run "
            f"{record.run_id} of saga {record.saga} (saga_version {record.saga_version})",
            run_id,
        )


def encode_event(event: Event) -> bytes:
    """One event as stored in a run's event list."""
    return _encoder.encode(event)


def decode_event(data: bytes, run_id: str | None = None) -> Event:
    """Decode one stored event, or raise :class:`~asaga.CorruptRecord`."""
    try:
        return _event_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(f"an event of run {run_id} does not decode: {exc}", run_id) from exc


class Write(msgspec.Struct, frozen=True, kw_only=True):
    """One transition of a run, as handed to a store: write it before acting on it."""

    run_id: str
    record: bytes
    """The whole encoded record after the transition."""
    status: RunStatus
    events: tuple[bytes, ...] = ()
    """Encoded events to append to the run's event list."""
    final: bool = False
    """The run finished: drop it from the running runs, keep it for the retention period,
    wake whoever waits for it."""
    seq: int = 0
    """The write's place among the run's writes: an older one arriving late (sent again
    after a lost reply) is ignored."""
    nonce: str = ""
    """For a creation: what tells this creation, sent again, from another run that
    happens to use the same run id."""


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """An idempotency key to claim with a run's creation."""

    saga: str
    key: str
    window: float
    """Seconds the key keeps naming the run."""


class Quarantined(msgspec.Struct, frozen=True, kw_only=True):
    """An unfinished run set aside by recovery because its record cannot be driven here:
    it does not decode (corrupt, or of a newer schema), it is foreign (its content
    disagrees with what the store lists it as), or it does not fit the saga (unknown steps,
    inputs that no longer validate). Kept, out of every sweep, until readmitted
    (:meth:`RunStore.readmit`, ``asaga runs readmit``) or its retention runs out."""

    run_id: str
    saga: str | None
    """The saga the store lists the run under (the record itself may say otherwise)."""
    reason: str
    """Why it was set aside."""
    quarantined_at: float
    """Wall-clock time (epoch seconds) it was set aside."""
    by: str | None = None
    """The store (owner identity) that set it aside."""


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of recorded runs, as :meth:`RunStore.page` returns it."""

    runs: tuple[RunRecord, ...]
    """The runs, newest first (by the time the store recorded them), without their events
    (:meth:`RunStore.load` with ``events=True`` reads those)."""
    cursor: str | None
    """Opaque: pass it back as ``page(cursor=...)``, with the same filters, for the next
    page; ``None`` when there is no more. A cursor is a position (a creation time and a
    run id), so runs recorded meanwhile never shift the pages that follow."""


PAGE_STATUSES: frozenset[str] = frozenset(get_args(RunStatus)) | {"in_doubt", "quarantined"}
"""What :meth:`RunStore.page` filters on and :meth:`RunStore.counts` counts: every run
status, ``in_doubt`` (finished runs that left a step in doubt: their ``RunFailed`` event
lists it) and ``quarantined`` (runs recovery set aside)."""

MAX_PAGE = 500
"""The most runs one page may ask for."""

MAX_FIND = 1024
"""The longest text :meth:`RunStore.find` looks for."""

_CURSOR = "c1."


class PageQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The checked arguments of :meth:`RunStore.page`."""

    status: str | None = None
    saga: str | None = None
    since: float | None = None
    until: float | None = None
    after: tuple[float, str] | None = None
    """The position of the last run of the previous page (created, run id)."""
    limit: int = 50
    scope: str = ""
    """What the store's cursors are valid in (its prefix, say): a cursor of another store
    is refused."""

    def _filters(self) -> str:
        text = repr((self.scope, self.status, self.saga, self.since, self.until))
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def cursor(self, created: float, run_id: str) -> str:
        """The cursor of the page after the run at (``created``, ``run_id``)."""
        data = msgspec.json.encode([created, run_id, self._filters()])
        return _CURSOR + base64.urlsafe_b64encode(data).decode().rstrip("=")

    def admits(self, created: float, run_id: str) -> bool:
        """Whether a run recorded at ``created`` belongs to the page (time bounds and
        position after the cursor; the status and saga are the store's to check)."""
        if self.since is not None and created < self.since:
            return False
        if self.until is not None and created > self.until:
            return False
        return self.after is None or (created, run_id) < self.after


def _time(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"page(): {name} must be a time in epoch seconds, got {value!r}")
    return float(value)


def check_saga(saga: str | None, method: str) -> None:
    """``ValueError`` unless ``saga`` is ``None`` or a saga's name (``method`` says whose)."""
    if saga is not None and (not isinstance(saga, str) or not 0 < len(saga) <= MAX_FIND):
        raise ValueError(f"{method}(): saga must be a saga's name, got {saga!r}")


def page_query(
    *,
    status: str | None,
    saga: str | None,
    since: float | None,
    until: float | None,
    cursor: str | None,
    limit: int,
    scope: str = "",
) -> PageQuery:
    """Check the arguments of :meth:`RunStore.page` (``ValueError`` saying what is wrong)."""
    if status is not None and status not in PAGE_STATUSES:
        raise ValueError(
            f"page(): unknown status {status!r}; use one of {', '.join(sorted(PAGE_STATUSES))}"
        )
    check_saga(saga, "page")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"page(): limit must be an int from 1 to {MAX_PAGE}, got {limit!r}")
    query = PageQuery(
        status=status,
        saga=saga,
        since=_time(since, "since"),
        until=_time(until, "until"),
        limit=limit,
        scope=scope,
    )
    if cursor is None:
        return query
    after: tuple[float, str] | None = None
    if isinstance(cursor, str) and cursor.startswith(_CURSOR) and len(cursor) <= 4 * MAX_FIND:
        body = cursor.removeprefix(_CURSOR)
        try:
            data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            created, run_id, filters = msgspec.json.decode(data, type=tuple[float, str, str])
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            if filters != query._filters():
                raise ValueError(
                    "page(): this cursor belongs to a page with other filters (status, saga, "
                    "since, until) or of another store: pass the filters it was made with, or "
                    "no cursor to start over"
                )
            if math.isfinite(created):
                after = (created, run_id)
    if after is None:
        raise ValueError(
            f"page(): malformed cursor {cursor!r:.80}: pass the cursor of a page "
            "as it was returned, or None for the first page"
        )
    return msgspec.structs.replace(query, after=after)


async def list_pages(
    store: RunStore, *, status: str | None, saga: str | None, limit: int
) -> list[RunRecord]:
    """``RunStore.list``: ``store.page()``'s pages, followed until ``limit`` runs."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    found: list[RunRecord] = []
    cursor: str | None = None
    while len(found) < limit:
        page = await store.page(
            status=status, saga=saga, cursor=cursor, limit=min(limit - len(found), MAX_PAGE)
        )
        found += page.runs
        if page.cursor is None:
            break
        cursor = page.cursor
    return found


def check_find(text: str, limit: int) -> None:
    """Check the arguments of :meth:`RunStore.find` (``ValueError`` saying what is wrong)."""
    if not isinstance(text, str) or not text or len(text) > MAX_FIND:
        raise ValueError(
            f"find(): text must be a run id or key of 1 to {MAX_FIND} characters, got {text!r:.80}"
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"find(): limit must be an int from 1 to {MAX_PAGE}, got {limit!r}")


def check_note(run_id: str, event: OperatorAction) -> None:
    """Check the arguments of :meth:`RunStore.note`."""
    if not isinstance(event, OperatorAction):
        raise TypeError(f"note(): event must be an OperatorAction, got {type(event).__name__}")
    if event.run_id != run_id:
        raise ValueError(
            f"note(): the event is about run {event.run_id!r}, not {run_id!r}: "
            "make it with run_id=<the run you note it on>"
        )


def leaves_doubt(events: Sequence[bytes]) -> bool:
    """Whether these encoded events (of a final write) end the run with steps left in doubt
    (its ``RunFailed`` event lists them): the run then counts as ``in_doubt``."""
    for data in events:
        if b"run_failed" not in data:
            continue  # the cheap test first: only the run's end says it
        try:
            event = _event_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if isinstance(event, RunFailed) and event.in_doubt:
            return True
    return False


class RunStore(Protocol):
    """Where durable runs are recorded: :class:`~asaga.runs.MemoryRunStore` (default) or
    :class:`~asaga.runs.RedisRunStore`.

    Every write is fenced by ownership: it applies only if the run is still owned by this
    store's :attr:`owner`, else it raises :class:`~asaga.RunTakenOver`, or
    :class:`~asaga.RunRecordLost` when the record is not there at all.
    """

    @property
    def owner(self) -> str:
        """This store's identity as a run owner (one per store object, so per process)."""
        ...

    @property
    def max_record_bytes(self) -> int:
        """The largest encoded record the store accepts."""
        ...

    @property
    def idempotency_window(self) -> float:
        """Seconds an idempotency key keeps naming its run."""
        ...

    async def create(self, write: Write, claim: Claim | None) -> str | None:
        """Record a new run owned by :attr:`owner`, claiming ``claim``'s key with it.

        Returns ``None`` when created, or the id of the run that already holds the key
        (nothing is written then); :class:`RunExists` if the run id is recorded already.
        """
        ...

    async def write(self, write: Write) -> None:
        """Record a transition of a run this store owns (one round trip at most)."""
        ...

    async def load(self, run_id: str, *, events: bool = False) -> RunRecord:
        """The run's record (with its events when asked); :class:`~asaga.RunNotFound` if
        there is none."""
        ...

    async def list(
        self, *, status: str | None = None, saga: str | None = None, limit: int = 50
    ) -> Sequence[RunRecord]:
        """Recorded runs, newest first, filtered by status and saga name (as
        :meth:`page`, which it follows page by page up to ``limit`` runs)."""
        ...

    async def page(
        self,
        *,
        status: str | None = None,
        saga: str | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> RunPage:
        """One page of recorded runs, newest first, for a runs list (the dashboard's).

        ``status``: a run status, ``"in_doubt"`` (finished runs that left a step in doubt;
        they have their own status too) or ``"quarantined"`` (runs recovery set aside;
        listed only under this filter). ``saga``: a saga's name. ``since``/``until``:
        bounds (epoch seconds, both included) on when the run was recorded. ``cursor``:
        the previous page's, with the same filters. ``limit``: 1 to 500 runs.
        Bad arguments raise ``ValueError`` saying what to pass instead.
        """
        ...

    async def find(self, text: str, *, limit: int = 20) -> Sequence[RunRecord]:
        """Runs that ``text`` names exactly: a run id, an idempotency key (of any saga),
        or the correlation key of an event a run waits for or was delivered. Records
        without events; empty or over-long text raises ``ValueError``."""
        ...

    async def counts(self, *, saga: str | None = None) -> Mapping[str, int]:
        """How many recorded runs have each status (every name of
        :data:`PAGE_STATUSES`, zeros included), of one saga or all; quarantined runs
        count under ``quarantined`` only, runs in doubt under their status too."""
        ...

    async def note(self, run_id: str, event: OperatorAction) -> None:
        """Append an operator's action to the run's recorded events;
        :class:`~asaga.RunNotFound` if the store has no such run."""
        ...

    async def abandoned(
        self, sagas: Mapping[str, str], *, limit: int = 100
    ) -> Sequence[tuple[str, str]]:
        """Unfinished runs of the sagas named in ``sagas`` (name -> ``saga_version``)
        whose owner's lease has expired (a crashed process), as (run id, owner), oldest
        first. Nothing is taken: see :meth:`claim`."""
        ...

    async def claim(self, run_id: str, owner: str) -> RunRecord | None:
        """Take over an abandoned run from ``owner`` (exactly one caller wins); the record,
        now owned by this store, or ``None`` if someone else took it or it finished.

        Raises :class:`~asaga.CorruptRecord` when the run was taken but its record does
        not decode or is foreign (see :func:`check_identity`): the caller quarantines it.
        """
        ...

    async def quarantine(
        self, run_id: str, reason: str, *, parked: bool = False
    ) -> Quarantined | None:
        """Set aside a run this store has taken (:meth:`claim`), or a parked run
        (``parked``), whose record cannot be driven: out of the unfinished (or parked)
        runs (no sweep sees it again), kept with ``reason`` for the store's retention.
        ``None`` if it is not so any more."""
        ...

    async def quarantined(self, *, limit: int = 50) -> Sequence[Quarantined]:
        """The runs set aside, newest first."""
        ...

    async def readmit(self, run_id: str) -> None:
        """Put a quarantined run back among the unfinished runs, for the next recovery
        sweep to take (after an upgrade that reads it, say);
        :class:`~asaga.RunNotFound` if it is not quarantined."""
        ...

    async def claim_undo(self, run_id: str) -> tuple[RunRecord, bool]:
        """Take a succeeded run to undo it (status ``undoing``, owned by this store), or
        the undo of an owner that died; returns the record as it was and whether it was
        taken. If not (already undone, being undone by a live owner, failed...), nothing
        changes and the record shows why.
        """
        ...

    async def release_key(self, claim: Claim, run_id: str) -> None:
        """Let a key go (its run was cancelled: a retry should run again)."""
        ...

    async def wait_finished(self, run_id: str, *, parked: bool = False) -> RunRecord:
        """Wait until the run has finished (``parked``: or parked); return its record."""
        ...

    # -- parked runs and their events (see asaga.runs._parking) ---------------------------

    async def park(self, write: Write, until: float | None) -> None:
        """Record that a run this store owns parks: status ``waiting``, out of the running
        runs (recovery leaves it alone), among the parked ones until ``until`` (wall
        clock; ``None``: no deadline). Its record is kept ``retention`` past ``until``.
        Fenced like :meth:`write`."""
        ...

    async def take_parked(self, write: Write, seen: int) -> bool:
        """Take a parked run as it was read (``seen``: its record's ``seq``), applying
        ``write`` (status ``running`` or ``compensating``, owned by this store now).
        Exactly one of concurrent takers wins; ``False`` for the others."""
        ...

    async def due(self, sagas: Mapping[str, str], *, limit: int = 100) -> Sequence[str]:
        """Parked runs of ``sagas`` (name -> ``saga_version``) whose first wait has
        ended (a deadline passed, a timer is due), oldest first. Nothing is taken."""
        ...

    async def post(self, saga: str, key: str, payload: bytes) -> tuple[str, str | None]:
        """Keep the encoded ``payload`` of the event ``key`` (of ``saga``): ``(state,
        run)``, ``state`` being ``kept`` (``run``: the run that waits for it, if one
        does), ``duplicate`` (a payload is kept already) or ``consumed`` (a run took the
        key's event, within the idempotency window), or ``closed`` (the run that waited
        for it ended otherwise: timed out, cancelled, failed)."""
        ...

    async def bind(
        self, saga: str, key: str, run_id: str, until: float | None
    ) -> tuple[str, bytes | None]:
        """Parked ``run_id`` waits for ``key`` until ``until``: ``("bound", None)``, or
        ``("payload", the payload kept for it)``, or ``("taken", None)`` when another run
        waits for the key or took its event."""
        ...

    async def consume(self, saga: str, key: str, run_id: str) -> None:
        """``run_id`` took the event of ``key``: later ones are refused."""
        ...

    async def unpost(self, saga: str, key: str, payload: bytes) -> None:
        """Take back a kept ``payload`` that no run will take."""
        ...

    async def bound(self, saga: str, key: str) -> str | None:
        """The run that waits for ``key`` (or took its event), if one does."""
        ...

    async def unbind(self, saga: str, key: str, run_id: str) -> None:
        """``run_id`` no longer waits for ``key`` (it ended otherwise): the key is free
        for another run, and an event kept for it is dropped."""
        ...

    async def bad_payload(self, saga: str, key: str) -> tuple[str | None, int]:
        """Count one bad payload for the run bound to ``key``: (that run, the count so
        far), or ``(None, 0)``."""
        ...
