"""Durable-run records in this process's memory: the embedded default.

Everything a durable run gives but surviving its process: idempotency keys, undo after
success, inspection, the checks that results can be recorded. Records are stored encoded,
exactly as :class:`~asaga.runs.RedisRunStore` stores them, so a saga that runs with this
store runs the same with Redis. There is never anything to recover: the runs of a process
end with it, and so does this store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import anyio
import anyio.lowlevel
import msgspec

from .._events import OperatorAction
from .._exceptions import RunNotFound, RunRecordLost, RunTakenOver
from ._record import (
    FINISHED,
    PAGE_STATUSES,
    Claim,
    PageQuery,
    Quarantined,
    RunExists,
    RunPage,
    RunRecord,
    RunStatus,
    Write,
    check_find,
    check_note,
    check_saga,
    decode_event,
    decode_record,
    encode_event,
    leaves_doubt,
    list_pages,
    page_query,
)
from ._settings import StoreSettings

__all__ = ["MemoryRunStore", "default_store"]


@dataclass(slots=True)
class _Run:
    record: bytes
    status: RunStatus
    owner: str
    saga: str
    created: float
    nonce: str
    seq: int
    events: list[bytes] = field(default_factory=list)
    expires: float | None = None  # set when the run finishes (retention)
    finished: anyio.Event | None = None  # made when someone waits
    quarantined: Quarantined | None = None  # set aside (see MemoryRunStore.quarantine)
    until: float | None = None  # parked: when its first wait ends (wall clock)
    version: str = ""  # the saga_version the run was recorded with
    doubt: bool = False  # finished with steps left in doubt (see leaves_doubt)


@dataclass(slots=True)
class _Mail:
    expires: float
    payload: bytes | None = None
    run: str | None = None
    consumed: bool = False
    bad: int = 0
    closed: bool = False


class MemoryRunStore(StoreSettings):
    """Records of durable runs in this process's memory (the default run store).

    ``retention``: seconds a finished run's record is kept; ``idempotency_window``:
    seconds an idempotency key keeps naming its run; ``max_record_bytes``: the largest
    encoded record accepted. ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self,
        *,
        retention: float = 7 * 24 * 3600.0,
        idempotency_window: float = 24 * 3600.0,
        max_record_bytes: int = 1 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            f"memory-{os.urandom(8).hex()}",
            retention=retention,
            idempotency_window=idempotency_window,
            max_record_bytes=max_record_bytes,
        )
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._keys: dict[tuple[str, str], tuple[str, float]] = {}
        self._mail: dict[tuple[str, str], _Mail] = {}
        self._writes = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def create(self, write: Write, claim: Claim | None) -> str | None:
        """Record a new run; the id of the run holding ``claim``'s key instead, if any."""
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        self._expire(now)
        if claim is not None:
            held = self._keys.get((claim.saga, claim.key))
            if held is not None and held[1] > now and held[0] != write.run_id:
                holder = self._runs.get(held[0])
                gone = holder is None or (holder.expires is not None and holder.expires <= now)
                # A key whose run was cancelled, or whose record is gone, is taken over.
                if not gone and holder is not None and holder.status != "cancelled":
                    return held[0]
        existing = self._runs.get(write.run_id)
        if existing is not None:
            if existing.nonce == write.nonce:
                return None  # this creation, sent again
            raise RunExists(f"run {write.run_id} is already recorded", write.run_id)
        if claim is not None:
            self._keys[(claim.saga, claim.key)] = (write.run_id, now + claim.window)
        record = decode_record(write.record, write.run_id)
        self._runs[write.run_id] = _Run(
            record=write.record,
            status=write.status,
            owner=self._owner,
            saga=record.saga,
            version=record.saga_version,
            created=time.time(),
            nonce=write.nonce,
            seq=write.seq,
            events=list(write.events),
        )
        return None

    async def write(self, write: Write) -> None:
        """Record a transition of a run this store owns (``RunTakenOver`` otherwise)."""
        await anyio.lowlevel.checkpoint()
        run = self._runs.get(write.run_id)
        if run is None:
            raise RunRecordLost(
                f"the record of run {write.run_id} is gone from the store; this process "
                "unwinds the run itself",
                write.run_id,
            )
        if run.owner != self._owner:
            raise RunTakenOver(
                f"run {write.run_id} is no longer owned by this process", write.run_id
            )
        if write.seq <= run.seq:
            return  # a newer write of this run landed already
        run.seq = write.seq
        run.record = write.record
        run.status = write.status
        run.events.extend(write.events)
        if write.final:
            run.doubt = leaves_doubt(write.events)
            run.expires = self._clock() + self.retention
            if run.finished is not None:
                run.finished.set()
                run.finished = None

    async def load(self, run_id: str, *, events: bool = False) -> RunRecord:
        """The run's record (``RunNotFound`` if none), with its events when asked."""
        await anyio.lowlevel.checkpoint()
        run = self._live(run_id)
        return self._decode(run_id, run, events)

    async def list(
        self, *, status: str | None = None, saga: str | None = None, limit: int = 50
    ) -> Sequence[RunRecord]:
        """Recorded runs, newest first, filtered by status and saga name (as
        :meth:`page`, followed page by page up to ``limit`` runs)."""
        return await list_pages(self, status=status, saga=saga, limit=limit)

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
        """One page of recorded runs, newest first (see :meth:`RunStore.page`)."""
        query = page_query(
            status=status,
            saga=saga,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
            scope=self._owner,
        )
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        found = sorted(
            (
                (run.created, run_id)
                for run_id, run in self._runs.items()
                if (run.expires is None or run.expires > now)
                and self._matches(run, query)
                and query.admits(run.created, run_id)
            ),
            reverse=True,
        )
        runs = tuple(self._decode(run_id, self._runs[run_id], False) for _, run_id in found[:limit])
        more = len(found) > limit
        return RunPage(runs=runs, cursor=query.cursor(*found[limit - 1]) if more else None)

    @staticmethod
    def _matches(run: _Run, query: PageQuery) -> bool:
        if query.saga is not None and run.saga != query.saga:
            return False
        if query.status == "quarantined":
            return run.quarantined is not None
        if run.quarantined is not None:
            return False  # listed under "quarantined" only
        if query.status == "in_doubt":
            return run.doubt
        return query.status is None or run.status == query.status

    async def find(self, text: str, *, limit: int = 20) -> Sequence[RunRecord]:
        """Runs that ``text`` names: a run id, an idempotency key, an event's key."""
        check_find(text, limit)
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        ids = [text]
        ids += [run for (_, key), (run, until) in self._keys.items() if key == text and until > now]
        ids += [
            mail.run
            for (_, key), mail in self._mail.items()
            if key == text and mail.run is not None and mail.expires > now
        ]
        found: list[RunRecord] = []
        for run_id in dict.fromkeys(ids):
            run = self._runs.get(run_id)
            if run is not None and (run.expires is None or run.expires > now):
                found.append(self._decode(run_id, run, False))
        return found[:limit]

    async def counts(self, *, saga: str | None = None) -> Mapping[str, int]:
        """Runs per status (see :meth:`RunStore.counts`)."""
        check_saga(saga, "counts")
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        counts = dict.fromkeys(sorted(PAGE_STATUSES), 0)
        for run in self._runs.values():
            if (saga is not None and run.saga != saga) or (
                run.expires is not None and run.expires <= now
            ):
                continue
            if run.quarantined is not None:
                counts["quarantined"] += 1
                continue
            counts[run.status] += 1
            if run.doubt:
                counts["in_doubt"] += 1
        return counts

    async def note(self, run_id: str, event: OperatorAction) -> None:
        """Append an operator's action to the run's events (``RunNotFound`` if none)."""
        check_note(run_id, event)
        await anyio.lowlevel.checkpoint()
        run = self._live(run_id)
        run.events.append(encode_event(event))

    async def abandoned(
        self, sagas: Mapping[str, str], *, limit: int = 100
    ) -> Sequence[tuple[str, str]]:
        """Nothing is ever abandoned in memory: a process's runs end with it."""
        await anyio.lowlevel.checkpoint()
        return []

    async def claim(self, run_id: str, owner: str) -> RunRecord | None:
        """Nothing to take over in memory (see :meth:`abandoned`)."""
        await anyio.lowlevel.checkpoint()
        return None

    async def quarantine(
        self, run_id: str, reason: str, *, parked: bool = False
    ) -> Quarantined | None:
        """Set aside ``run_id`` (owned by this store; ``parked``: a parked run, owned by
        none), kept with ``reason`` for ``retention``; ``None`` if it is not so."""
        await anyio.lowlevel.checkpoint()
        run = self._runs.get(run_id)
        owner = "parked" if parked else self._owner
        if run is None or run.owner != owner or run.status in FINISHED:
            return None
        run.until = None
        aside = run.quarantined = Quarantined(
            run_id=run_id, saga=run.saga, reason=reason, quarantined_at=time.time(), by=run.owner
        )
        run.owner = "quarantine"
        run.expires = self._clock() + self.retention
        return aside

    async def quarantined(self, *, limit: int = 50) -> Sequence[Quarantined]:
        """The runs set aside, newest first."""
        await anyio.lowlevel.checkpoint()
        now = self._clock()
        self._expire(now)  # sweeps only now and then: what it keeps may be past retention
        aside = [
            r.quarantined
            for r in self._runs.values()
            if r.quarantined is not None and (r.expires is None or r.expires > now)
        ]
        return sorted(aside, key=lambda q: -q.quarantined_at)[:limit]

    async def readmit(self, run_id: str) -> None:
        """Put a quarantined run back among the unfinished runs; ``RunNotFound`` if it is
        not quarantined."""
        await anyio.lowlevel.checkpoint()
        run = self._runs.get(run_id)
        expired = run is not None and run.expires is not None and run.expires <= self._clock()
        if run is None or run.quarantined is None or expired:
            raise RunNotFound(f"run {run_id!r} is not quarantined in this store", run_id)
        run.quarantined = None
        run.expires = None

    async def claim_undo(self, run_id: str) -> tuple[RunRecord, bool]:
        """Take a succeeded run to undo it; the record as it was, and whether taken."""
        await anyio.lowlevel.checkpoint()
        run = self._live(run_id)
        before = self._decode(run_id, run, False)
        if run.status != "succeeded":
            return before, False
        run.status = "undoing"
        run.owner = self._owner
        run.expires = None
        return before, True

    async def release_key(self, claim: Claim, run_id: str) -> None:
        """Let ``claim``'s key go if it still names ``run_id``."""
        await anyio.lowlevel.checkpoint()
        held = self._keys.get((claim.saga, claim.key))
        if held is not None and held[0] == run_id:
            del self._keys[(claim.saga, claim.key)]

    # -- parked runs and their events ----------------------------------------------------

    async def park(self, write: Write, until: float | None) -> None:
        """Record that a run this store owns parks (status ``waiting``) until ``until``."""
        await self.write(write)
        run = self._runs[write.run_id]
        run.status = "waiting"
        run.owner = "parked"
        run.until = until if until is not None else time.time() + self.retention
        if run.finished is not None:  # whoever waits for it to settle (an idempotency key)
            run.finished.set()
            run.finished = None
        run.expires = self._clock() + max(run.until - time.time(), 0.0) + self.retention

    async def take_parked(self, write: Write, seen: int) -> bool:
        """Take a parked run as read at ``seen``; ``False`` if another took it."""
        await anyio.lowlevel.checkpoint()
        run = self._runs.get(write.run_id)
        if run is None or run.status != "waiting" or run.seq != seen:
            return False
        if run.quarantined is not None:  # set aside: readmit it first
            return False
        run.owner = self._owner
        run.seq = write.seq
        run.record = write.record
        run.status = write.status
        run.events.extend(write.events)
        run.until = None
        run.expires = None
        return True

    async def due(self, sagas: Mapping[str, str], *, limit: int = 100) -> Sequence[str]:
        """Parked runs of ``sagas`` whose first wait has ended, oldest first."""
        await anyio.lowlevel.checkpoint()
        now = time.time()
        found = sorted(
            (run.until, run_id)
            for run_id, run in self._runs.items()
            if run.status == "waiting"
            and "/" not in run_id
            and run.until is not None
            and run.until <= now
            and run.saga in sagas
            and run.version == sagas[run.saga]  # another version waits for its own
            and (run.expires is None or run.expires > self._clock())
        )
        return [run_id for _, run_id in found[:limit]]

    def _mailbox(self, saga: str, key: str) -> _Mail | None:
        mail = self._mail.get((saga, key))
        if mail is not None and mail.expires <= self._clock():
            del self._mail[(saga, key)]
            return None
        return mail

    async def post(self, saga: str, key: str, payload: bytes) -> tuple[str, str | None]:
        """Keep an event's payload (see :meth:`RedisRunStore.post`)."""
        await anyio.lowlevel.checkpoint()
        if len(self._mail) > 100_000:
            now = self._clock()
            self._mail = {k: m for k, m in self._mail.items() if m.expires > now}
        mail = self._mailbox(saga, key)
        if mail is not None and mail.consumed:
            return "consumed", mail.run
        if mail is not None and mail.closed:
            return "closed", mail.run
        if mail is not None and mail.payload is not None:
            return "duplicate", mail.run
        if mail is None:
            mail = self._mail[(saga, key)] = _Mail(self._clock() + self.idempotency_window)
        mail.payload = payload
        return "kept", mail.run

    async def bind(
        self, saga: str, key: str, run_id: str, until: float | None
    ) -> tuple[str, bytes | None]:
        """``run_id`` waits for ``key`` (see :meth:`RedisRunStore.bind`)."""
        await anyio.lowlevel.checkpoint()
        keep = self.mail_keep(until)
        mail = self._mailbox(saga, key)
        if mail is not None and (
            mail.consumed or (mail.run not in (None, run_id) and not mail.closed)
        ):
            return "taken", None
        if mail is None:
            mail = self._mail[(saga, key)] = _Mail(0.0)
        mail.run, mail.closed, mail.bad = run_id, False, 0
        mail.expires = self._clock() + keep
        if mail.payload is not None:
            return "payload", mail.payload
        return "bound", None

    async def consume(self, saga: str, key: str, run_id: str) -> None:
        """``run_id`` took the event of ``key``."""
        await anyio.lowlevel.checkpoint()
        mail = self._mail.setdefault((saga, key), _Mail(0.0))
        mail.payload, mail.consumed, mail.run = None, True, run_id
        mail.expires = self._clock() + self.idempotency_window

    async def bound(self, saga: str, key: str) -> str | None:
        """The run that waits for ``key`` (or took its event), if one does."""
        await anyio.lowlevel.checkpoint()
        mail = self._mailbox(saga, key)
        return mail.run if mail is not None else None

    async def unbind(self, saga: str, key: str, run_id: str) -> None:
        """``run_id`` no longer waits for ``key`` (it ended otherwise): a late event is
        refused, and another run may wait for the key."""
        await anyio.lowlevel.checkpoint()
        mail = self._mailbox(saga, key)
        if mail is not None and mail.run == run_id and not mail.consumed:
            mail.payload, mail.closed = None, True

    async def unpost(self, saga: str, key: str, payload: bytes) -> None:
        """Take back ``payload`` (no run will take it)."""
        await anyio.lowlevel.checkpoint()
        mail = self._mailbox(saga, key)
        if mail is not None and mail.payload == payload:
            mail.payload = None
            if mail.run is None and not mail.consumed:
                del self._mail[(saga, key)]

    async def bad_payload(self, saga: str, key: str) -> tuple[str | None, int]:
        """Count a bad payload for the run waiting for ``key``."""
        await anyio.lowlevel.checkpoint()
        mail = self._mailbox(saga, key)
        if mail is None or mail.run is None or mail.consumed or mail.closed:
            return None, 0
        mail.bad += 1
        return mail.run, mail.bad

    async def wait_finished(self, run_id: str, *, parked: bool = False) -> RunRecord:
        """Wait until the run has finished (or, ``parked``, parked); its record."""
        run = self._live(run_id)
        while not (run.status in FINISHED or (parked and run.status == "waiting")):
            if run.finished is None:
                run.finished = anyio.Event()
            await run.finished.wait()
        await anyio.lowlevel.checkpoint()
        return self._decode(run_id, run, False)

    def _live(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None or (run.expires is not None and run.expires <= self._clock()):
            raise RunNotFound(f"no record of run {run_id!r} in this store", run_id)
        return run

    def _decode(self, run_id: str, run: _Run, events: bool) -> RunRecord:
        record = decode_record(run.record, run_id)
        return msgspec.structs.replace(
            record,
            status=run.status,
            owner=run.owner,
            events=tuple(decode_event(e, run_id) for e in run.events) if events else (),
        )

    def _expire(self, now: float) -> None:
        self._writes += 1
        if self._writes % 1000:
            return
        self._runs = {k: r for k, r in self._runs.items() if r.expires is None or r.expires > now}
        self._keys = {k: v for k, v in self._keys.items() if v[1] > now}


_default: MemoryRunStore | None = None


def default_store() -> MemoryRunStore:
    """The process's default run store (made on first use): where ``run()`` records a run
    given an ``idempotency_key`` but no ``runs``, and where ``undo()`` looks by default."""
    global _default
    if _default is None:
        _default = MemoryRunStore()
    return _default
