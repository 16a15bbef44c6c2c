"""At most once per idempotency key: a retried HTTP request gets the first outcome.

::

    idempotency = Idempotency(MemoryOutcomeStore(), locks, window=24 * 3600)
    outcome = await idempotency.run(key, fingerprint, handle)   # handle() -> Outcome

The first request with a key takes a lease on it, runs ``handle`` and stores its outcome
for ``window`` seconds; a concurrent duplicate queues for the same lease (FIFO, woken by
the release, no polling) and then finds the stored outcome; a later one finds it at once.
A request whose work is cancelled (the client went away) or crashes stores nothing, so a
retry runs the work again. A key reused with a different request (another fingerprint)
is refused with :class:`IdempotencyKeyReused`.

If the store or the locks cannot be reached (Redis down), :meth:`Idempotency.run` raises
their error before running anything (the web integrations answer 503). If the store
fails only when the finished work's outcome is being stored, the outcome is returned all
the same and the loss is logged (``idempotency_outcome_not_stored``): the work ran, and a
503 would invite a retry that runs it again.

:func:`answer` is the whole HTTP flow on top of :meth:`Idempotency.run`, the same for
every web framework (each only reads the request and renders what it returns): it reads
the header's key, turns the work's problem (a 422, a 409...) into a stored outcome, and
answers what is not an outcome (an invalid key, a key in use or reused, an unavailable
infrastructure) with a :class:`~asaga.integrations.problems.Problem`, never stored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio
import msgspec
import structlog

from .._exceptions import IdempotencyKeyReused
from ..locks import LeaseTimeout, LockProvider
from .problems import (
    IDEMPOTENCY_KEY_HEADER,
    PROBLEM_IDEMPOTENCY_KEY_IN_USE,
    PROBLEM_IDEMPOTENCY_KEY_INVALID,
    PROBLEM_JSON,
    RETRY_AFTER,
    Problem,
    clip,
    is_unavailable,
    problem,
    problem_for,
)

__all__ = [
    "Idempotency",
    "IdempotencyKeyReused",
    "MemoryOutcomeStore",
    "Outcome",
    "OutcomeStore",
    "RedisOutcomeStore",
    "answer",
    "key_of",
]

R = TypeVar("R")

MAX_KEY_LENGTH = 255

_logger = structlog.get_logger("asaga")


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """A response to replay: status, body and its media type."""

    status: int
    body: bytes
    media_type: str = "application/json"
    fingerprint: str = ""
    """Identifies the request that produced it (e.g. a hash of method, path and body)."""


class OutcomeStore(Protocol):
    """Where outcomes are kept for the idempotency window."""

    async def get(self, key: str) -> Outcome | None:
        """The stored outcome for ``key``, if any (and not expired)."""
        ...

    async def put(self, key: str, outcome: Outcome, window: float) -> None:
        """Keep ``outcome`` for ``window`` seconds."""
        ...


class MemoryOutcomeStore:
    """Outcomes in this process's memory (the default)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[float, Outcome]] = {}
        self._clock = clock  # seconds, monotonic; injectable for tests

    async def get(self, key: str) -> Outcome | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._data[key]
            return None
        return entry[1]

    async def put(self, key: str, outcome: Outcome, window: float) -> None:
        now = self._clock()
        if len(self._data) > 10_000:  # drop expired entries now and then
            self._data = {k: v for k, v in self._data.items() if v[0] > now}
        self._data[key] = (now + window, outcome)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Outcome)


class RedisOutcomeStore:
    """Outcomes in Redis (``SET ... PX window``), shared by every process of a service."""

    def __init__(self, client: Any, *, prefix: str = "asaga:idempotency:") -> None:
        self.client = client
        self.prefix = prefix

    async def get(self, key: str) -> Outcome | None:
        raw = await self.client.get(self.prefix + key)
        return None if raw is None else _DECODER.decode(raw)

    async def put(self, key: str, outcome: Outcome, window: float) -> None:
        await self.client.set(
            self.prefix + key, _ENCODER.encode(outcome), px=max(1, round(window * 1000))
        )


class Idempotency:
    """Runs work at most once per key within ``window`` seconds.

    ``locks`` serialises requests with the same key (use the service's
    ``RedisLockProvider`` when several processes serve it); ``lease_ttl`` bounds how long
    a crashed request keeps its key locked; ``wait`` how long a duplicate waits for the
    first one to finish; ``put_timeout`` how long storing an outcome may take.
    """

    def __init__(
        self,
        store: OutcomeStore,
        locks: LockProvider,
        *,
        window: float = 24 * 3600.0,
        lease_ttl: float = 30.0,
        wait: float = 60.0,
        put_timeout: float = 10.0,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.store = store
        self.locks = locks
        self.window = window
        self.lease_ttl = lease_ttl
        self.wait = wait
        self.put_timeout = put_timeout

    async def run(
        self, key: str, fingerprint: str, work: Callable[[], Awaitable[Outcome]]
    ) -> tuple[Outcome, bool]:
        """The outcome for ``key``, and whether it was replayed (not computed now)."""
        if not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise ValueError(f"an idempotency key is 1 to {MAX_KEY_LENGTH} characters")
        stored = await self.store.get(key)
        if stored is None:
            async with self.locks.lease(f"idempotency:{key}", ttl=self.lease_ttl, wait=self.wait):
                stored = await self.store.get(key)  # a duplicate finished while we queued
                if stored is None:
                    outcome = await work()
                    outcome = msgspec.structs.replace(outcome, fingerprint=fingerprint)
                    # Shielded (bounded): once the work is done, a client that goes away now
                    # must not leave it unrecorded, or a retry would run it again.
                    try:
                        with anyio.CancelScope(shield=True), anyio.fail_after(self.put_timeout):
                            await self.store.put(key, outcome, self.window)
                    except Exception as exc:
                        if not is_unavailable(exc):
                            raise
                        # The work is done: its own answer is worth more than a 503, which
                        # would invite a retry that runs it again. Said loudly instead.
                        _logger.warning(
                            "idempotency_outcome_not_stored",
                            key=key,
                            status=outcome.status,
                            error=type(exc).__name__,
                        )
                    return outcome, False
        if stored.fingerprint and fingerprint and stored.fingerprint != fingerprint:
            raise IdempotencyKeyReused(key)
        return stored, True


def key_of(header: str) -> str:
    """The key of an ``Idempotency-Key`` header: a bare token, or a structured-field
    string (``"abc"``), as the IETF draft writes it."""
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    return key


_PROBLEM_ENCODER = msgspec.json.Encoder()


async def answer(
    idempotency: Idempotency,
    header: str,
    fingerprint: str,
    work: Callable[[], Awaitable[R]],
    outcome: Callable[[R], Outcome],
    *,
    retry_after: int = RETRY_AFTER,
) -> R | Outcome | Problem:
    """Answer a request carrying an ``Idempotency-Key`` ``header``: each web integration's
    ``idempotent()`` is this, plus reading the request and rendering the result.

    Returns ``work()``'s own response when it ran now (``outcome`` turns it into what is
    stored), the stored :class:`Outcome` to replay for a retry, or a
    :class:`~asaga.integrations.problems.Problem` to render:

    - the problem of an asaga failure inside ``work`` (``problem_for``: 422, 400, 409,
      500), stored like any outcome, so a retry gets it again;
    - 400 for a key that is empty or over 255 characters, 409 for a key whose first
      request still runs after ``idempotency.wait``, 422 for a key reused with another
      ``fingerprint``, 503 (``Retry-After: retry_after``) for an unavailable
      infrastructure, wherever it failed: none of these is stored, so a retry runs again.

    Any other exception of ``work`` propagates, and stores nothing.
    """
    key = key_of(header)
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        return Problem(
            400,
            problem(
                400,
                PROBLEM_IDEMPOTENCY_KEY_INVALID,
                "Invalid idempotency key",
                f"the {IDEMPOTENCY_KEY_HEADER} header must be 1 to {MAX_KEY_LENGTH} characters",
            ),
        )
    started = False
    first: list[R | Problem] = []

    async def produce() -> Outcome:
        nonlocal started
        started = True
        try:
            response = await work()
        except Exception as exc:
            failure = None if is_unavailable(exc) else problem_for(exc, retry_after=retry_after)
            if failure is None:
                raise  # not an outcome: nothing is stored, a retry runs again
            first.append(failure)
            return Outcome(
                status=failure.status,
                body=_PROBLEM_ENCODER.encode(failure.body),
                media_type=PROBLEM_JSON,
            )
        first.append(response)
        return outcome(response)

    try:
        stored, replayed = await idempotency.run(key, fingerprint, produce)
    except Exception as exc:
        if isinstance(exc, LeaseTimeout) and not started:  # the wait for the key ran out
            return Problem(
                409,
                problem(
                    409,
                    PROBLEM_IDEMPOTENCY_KEY_IN_USE,
                    "Idempotency key in use",
                    f"a request with this {IDEMPOTENCY_KEY_HEADER} is still being "
                    "processed; retry later",
                    key=clip(key),
                ),
            )
        if not (isinstance(exc, IdempotencyKeyReused) or is_unavailable(exc)):
            raise
        failure = problem_for(exc, retry_after=retry_after)
        assert failure is not None  # both have one
        return failure
    return stored if replayed else first[0]
