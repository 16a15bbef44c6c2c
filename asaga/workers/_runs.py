"""Runs on workers: start a durable run as a job, wait for it, cancel it; and what a worker
does with each job.

A run on workers is a durable run like any other; the job only carries it to a worker::

    caller                               worker (asaga worker ..., or serve())
    ------                               ------
    validate inputs (no resources)
    enqueue job key=run_id  --------->   job: create the record of run_id (atomic)
      (a duplicate key: refused,           created     -> run it, recorded write-ahead
       the same run)                       recorded before, unfinished -> its worker
                                             died: wait, the recovery sweep finishes it
    handle.result()                        recorded before, finished -> nothing to do
      waits for the job's end (pushed),  return the record's status
      then reads the outcome from the
      record: result, SagaFailed...     every worker sweeps recover() now and then: a run
    handle.cancel(): abort the job;     whose worker died is resumed or unwound from its
      a running run unwinds             record by another, never run twice

The outcome always comes from the run's record, never from the job: the job engine
forgets a job after a while, the record is what a run is.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import structlog

from .._exceptions import (
    AsagaError,
    IdempotencyKeyReused,
    JobFailed,
    NotRecordable,
    RunCancelled,
    RunNotFound,
    RunParked,
    SagaFailed,
)
from .._public import NoPublicConstructor
from .._queues import is_open
from .._run import SagaResult, SagaSpec, new_run_id
from ..runs._codec import codec_of
from ..runs._durable import recover, run_durable
from ..runs._memory import MemoryRunStore
from ..runs._record import RunExists, RunRecord, RunStatus, RunStore
from ..runs._replay import replayed
from ._engine import JobEnd, JobQueue
from ._remote import REMOTE_KINDS, handle_remote

__all__ = ["RunHandle", "Served", "handle_job", "serve", "start_run"]

_logger = structlog.get_logger("asaga")

_RECORD_RECHECK = 1.0
"""Seconds a caller waits for the job's end before it watches the run's record as well,
and then between looks for the record of a run no worker has taken yet."""


# -- the caller's side --------------------------------------------------------------------------


async def start_run(
    queue: JobQueue,
    spec: SagaSpec,
    inputs: Mapping[str, Any],
    *,
    runs: RunStore,
    idempotency_key: str | None,
    run_id: str | None,
) -> RunHandle:
    """``Saga.start``: validate ``inputs`` here, enqueue the run, return its handle."""
    saga = spec.plan.saga
    if not all(callable(getattr(queue, m, None)) for m in ("enqueue", "wait", "abort")):
        raise TypeError(
            f"Saga.start(queue=...) takes an open job queue (`async with SaqQueue.from_url("
            f"url, name=...) as queue`), got {type(queue).__name__}"
        )
    _shared(runs)
    resources = [name for name, i in spec.plan.inputs.items() if i.resource]
    given = sorted(set(resources) & set(inputs))
    if given:
        raise ValueError(
            f"saga {saga}: {given} are resources, which the workers give (Served(resources="
            "...)); a run on workers takes only inputs that can be recorded"
        )
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255
    ):
        raise ValueError("an idempotency key is a str of 1 to 255 characters")
    # Resources are the workers': stand-ins, never recorded, so that the rest is checked.
    values = spec.inputs.validate({**inputs, **dict.fromkeys(resources)})
    codec = codec_of(spec)
    if codec.problems:  # refused here, as run() with a store refuses it, before any step
        raise NotRecordable(
            f"saga {saga} cannot run durably, so not on workers either:\n"
            + "\n".join(f"  - {problem}" for problem in codec.problems)
        )
    encoded = codec.encode_inputs(values, saga)
    named = run_id is not None or idempotency_key is not None  # else a fresh random id
    if run_id is None:
        run_id = _keyed_run_id(saga, idempotency_key) if idempotency_key else new_run_id()
    if not isinstance(run_id, str) or not 1 <= len(run_id) <= 255 or "/" in run_id:
        raise ValueError("a run_id is a str of 1 to 255 characters without '/'")
    fingerprint = codec.fingerprint(encoded)
    arguments = {
        "saga": saga,
        "saga_version": spec.saga_version,
        "run_id": run_id,
        "inputs": base64.b64encode(encoded).decode(),
        "idempotency_key": idempotency_key,
    }
    handle = RunHandle._create(queue, spec, runs, run_id, fingerprint)
    if named and await handle._check():
        # Started before (the same inputs, or refused above): nothing to enqueue. SAQ
        # refuses a job key only while its job is unfinished, so the record decides. A
        # fresh random run id has no record: nothing to look for.
        return handle
    fresh = await queue.enqueue(run_id, arguments)
    if not fresh:  # the same run, started meanwhile: the same inputs, or refused
        await handle._check()
    return handle


def _keyed_run_id(saga: str, key: str) -> str:
    """The run id of ``key``'s run: the same key starts the same run, whose job key it is."""
    return "k" + hashlib.sha256(f"{saga}\x00{key}".encode()).hexdigest()[:31]


def _shared(runs: RunStore) -> None:
    if isinstance(runs, MemoryRunStore):
        raise ValueError(
            "a run on workers is recorded where the workers can read it: pass a store they "
            "share (RedisRunStore), not the in-process MemoryRunStore"
        )


class RunHandle(metaclass=NoPublicConstructor):
    """A run started on workers (``await Saga.start(...)``): wait for its outcome, or
    cancel it."""

    _created_by: ClassVar[str] = "`await MySaga.start(queue=..., runs=..., ...)` returns one"

    __slots__ = ("_fingerprint", "_queue", "_runs", "_spec", "run_id")

    def __init__(
        self, queue: JobQueue, spec: SagaSpec, runs: RunStore, run_id: str, fingerprint: str
    ) -> None:
        self._queue = queue
        self._spec = spec
        self._runs = runs
        self._fingerprint = fingerprint
        self.run_id = run_id
        """The run's id (the job's key)."""

    @property
    def saga(self) -> str:
        """The saga's name."""
        return self._spec.plan.saga

    def __repr__(self) -> str:
        return f"<RunHandle {self.saga} {self.run_id} on queue {self._queue.name!r}>"

    async def result(self) -> SagaResult[Any]:
        """Wait for the run to end (its end is pushed by the job engine) and return its
        result, as ``run()`` would: ``SagaFailed`` / ``CompensationFailed`` if it failed
        (and was compensated), :class:`~asaga.RunParked` if it parked (it waits for an
        event, a timer or a resume), :class:`~asaga.workers.RunCancelled` if it was cancelled,
        :class:`~asaga.workers.JobFailed` if no worker could run it. Bound the wait with
        ``anyio.fail_after(...)``: the run goes on regardless."""
        end, record = await self._ended()
        if record is None:
            record = await self._record()
            if record is not None and record.status == "waiting":
                # Parked (an event, a timer, a halt): it goes on where that comes.
                raise RunParked(self.saga, self.run_id, record.waits)
            if record is not None and not record.finished:
                # Its worker died and the job gave up; the recovery sweep finishes it.
                record = await self._runs.wait_finished(self.run_id)
        if record is None:
            assert end is not None
            if end.state == "aborted":
                raise RunCancelled(self.saga, self.run_id)
            refused = end.result.get("refused") if isinstance(end.result, dict) else None
            raise JobFailed(
                self.saga, self.run_id, refused or end.error or f"the job is {end.state}"
            )
        self._same(record)
        if record.status == "cancelled":
            raise RunCancelled(self.saga, self.run_id, record.compensated)
        return replayed(self._spec, record, again=False)

    async def _ended(self) -> tuple[JobEnd | None, RunRecord | None]:
        """The job's end or the run's finished record, whichever comes first. A run whose
        worker died is finished by another worker's recovery sweep (within ``owner_ttl``)
        long before the job engine gives its job to another worker (SAQ's sweep waits
        seconds for each stuck job, one after the other): the record is what a run is.

        The record is watched only once the job has not ended within
        ``_RECORD_RECHECK``: a run ends far sooner as a rule, and a dead worker's run is
        recovered only after the store's ``owner_ttl``."""
        with anyio.move_on_after(_RECORD_RECHECK):
            return await self._queue.wait(self.run_id), None
        found: list[JobEnd | RunRecord] = []

        async def job(scope: anyio.CancelScope) -> None:
            found.append(await self._queue.wait(self.run_id))
            scope.cancel()

        async def record(scope: anyio.CancelScope) -> None:
            while True:
                try:
                    found.append(await self._runs.wait_finished(self.run_id))
                except RunNotFound:  # no worker has taken the job yet
                    await anyio.sleep(_RECORD_RECHECK)
                else:
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(job, tg.cancel_scope)
            tg.start_soon(record, tg.cancel_scope)
        first = found[0]
        return (None, first) if isinstance(first, RunRecord) else (first, None)

    async def cancel(self) -> None:
        """Cancel the run: dropped if it waits for a worker; unwound if it runs (its steps
        in flight finish within ``cancel_grace``, what completed is compensated). A run
        that finished is left as it is. :meth:`result` then raises ``RunCancelled``."""
        await self._queue.abort(self.run_id, "cancelled through its handle")

    async def status(self) -> RunStatus | str:
        """The run's recorded status (``running``, ``succeeded``...), or, before a worker
        took it, the job's (``queued``)."""
        record = await self._record()
        if record is not None:
            return record.status
        return await self._queue.state(self.run_id)

    async def _record(self) -> RunRecord | None:
        try:
            return await self._runs.load(self.run_id)
        except RunNotFound:
            return None

    async def _check(self) -> bool:
        """Whether the run is recorded; ``IdempotencyKeyReused`` if with other inputs."""
        record = await self._record()
        if record is not None:
            self._same(record)
        return record is not None

    def _same(self, record: RunRecord) -> None:
        if record.saga != self.saga:
            raise AsagaError(f"run {self.run_id} is a run of saga {record.saga}, not {self.saga}")
        if record.fingerprint != self._fingerprint:
            raise IdempotencyKeyReused(
                record.idempotency_key or self.run_id, f"other inputs of saga {self.saga}"
            )


# -- the workers' side --------------------------------------------------------------------------


class Served:
    """What a worker serves: the sagas it runs, the store their runs are recorded in
    (shared with the callers: ``RedisRunStore``), and the resources their steps take::

        Served(sagas=[InventorySaga], runs=runs, resources={"store": store, "locks": locks})

    A worker that only runs steps on workers (``@step(queue=...)``) of these sagas, never
    whole runs, needs no ``runs``: ``Served(sagas=[Checkout], resources={...})``. Give it
    ``records``, the store the runs are recorded in, to run only the step jobs their run
    vouches for: a job runs only if its run's record says that attempt of that step (or
    of its compensation) is running; any other (a crafted job, a run with no store, a
    stale attempt) is refused, and the refusal logged as an error.
    """

    __slots__ = ("records", "resources", "runs", "sagas", "specs", "step_specs")

    def __init__(
        self,
        *,
        sagas: Sequence[Any],
        runs: RunStore | None = None,
        resources: Mapping[str, Any] | None = None,
        records: RunStore | None = None,
    ) -> None:
        if runs is not None:
            _shared(runs)
        if records is not None:
            _shared(records)
        self.sagas = tuple(sagas)
        self.runs = runs
        self.records = records
        self.resources = dict(resources or {})
        specs: dict[str, SagaSpec] = {}
        for cls in self.sagas:
            spec = getattr(cls, "__asaga__", None)
            if not isinstance(spec, SagaSpec):
                raise TypeError(f"Served(sagas=...) takes saga classes, got {cls!r}")
            missing = [
                name
                for name, i in spec.plan.inputs.items()
                if i.resource and i.required and name not in self.resources
            ]
            if missing:
                raise ValueError(f"saga {spec.plan.saga} needs the resources {missing}")
            specs[spec.plan.saga] = spec
        self.specs = specs
        # Steps on workers are also those of the sagas these compose or map.
        step_specs = dict(specs)
        todo = list(specs.values())
        while todo:
            for node in todo.pop().plan.nodes.values():
                for sub in node.invoke.sagas if node.invoke is not None else ():
                    if sub.plan.saga not in step_specs:
                        step_specs[sub.plan.saga] = sub
                        todo.append(sub)
        self.step_specs = step_specs


async def handle_job(
    served: Served,
    arguments: Mapping[str, Any],
    beat: Callable[[], Awaitable[None]],
    *,
    every: float,
) -> dict[str, Any]:
    """Run (or find) the run a job carries; its recorded status, or why this worker
    refused it (``{"refused": ...}``: a saga it does not serve; the job is not retried,
    another worker of the queue would serve the same). A job of a step on workers (or of
    its compensation) runs that step: see :mod:`asaga.workers._remote`."""
    if arguments.get("kind") in REMOTE_KINDS:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_beating, beat, every, name="heartbeat of a step on workers")
            outcome = await handle_remote(
                served.step_specs, served.resources, arguments, served.records
            )
            tg.cancel_scope.cancel()
        return outcome
    saga, run_id = str(arguments.get("saga")), str(arguments.get("run_id"))
    spec = served.specs.get(saga)
    if spec is None or spec.saga_version != arguments.get("saga_version"):
        versions = ", ".join(f"{s.plan.saga} v{s.saga_version}" for s in served.specs.values())
        wanted = f"{saga} v{arguments.get('saga_version')}"
        _logger.warning("run_job_refused", saga=saga, run_id=run_id, serves=versions)
        return {"refused": f"asked for {wanted}; this worker serves {versions}"}
    runs = served.runs
    if runs is None:
        _logger.warning("run_job_refused", saga=saga, run_id=run_id, serves="steps only")
        return {"refused": "this worker runs steps on workers only (Served has no runs=)"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_beating, beat, every, name=f"heartbeat of run {run_id}")
        raw = codec_of(spec).decode_inputs(base64.b64decode(arguments["inputs"]), run_id)
        key = arguments.get("idempotency_key")
        own = {  # the resources this saga declares: Served may serve others' too
            name: served.resources[name]
            for name, i in spec.plan.inputs.items()
            if i.resource and name in served.resources
        }
        status: str | None = "succeeded"
        try:
            # Its creation (atomic) tells a new run from one recorded before: no read first.
            result = await run_durable(
                spec,
                {**raw, **own},
                runs=runs,
                idempotency_key=key if isinstance(key, str) else None,
                run_id=run_id,
                extra_hooks=((), ()),
            )
        except RunExists:  # the job was given out before: the run is recorded, not run again
            record = await runs.load(run_id)
            if not record.finished and record.status != "waiting":
                record = await runs.wait_finished(run_id)  # its worker died: recovery ends it
            status = record.status
        except RunParked:
            status = "waiting"  # recorded: it goes on where its event (or time) comes
        except SagaFailed:
            status = None  # recorded: the caller reads it there
        else:
            if result.replayed or result.run_id != run_id:  # the key's run, elsewhere
                status = None
        tg.cancel_scope.cancel()
    if status is None:
        status = (await runs.load(run_id)).status
    _logger.info("run_job_done", saga=saga, run_id=run_id, status=status)
    return {"status": status}


async def _beating(beat: Callable[[], Awaitable[None]], every: float) -> None:
    while True:
        await anyio.sleep(every)
        try:
            await beat()
        except Exception as exc:  # noqa: BLE001 - a missed beat is logged; the next may land
            _logger.warning("job_heartbeat_failed", error=repr(exc))


async def serve(
    queue: Any,
    served: Served,
    *,
    concurrency: int = 8,
    shutdown_grace: float = 30.0,
    recover_every: float | None = None,
    stop: anyio.Event | None = None,
) -> None:
    """Work the jobs of ``queue`` (a :class:`~asaga.workers.SaqQueue`) with the sagas of
    ``served``, ``concurrency`` runs at a time, until ``stop`` is set or the process gets
    SIGTERM/SIGINT: then no new run starts, the running ones get ``shutdown_grace``
    seconds to finish, and the rest are cancelled (unwound, recorded as cancelled).

    Every ``recover_every`` seconds (default: the store's ``owner_ttl``) the worker
    sweeps :func:`~asaga.runs.recover` for the served sagas, so that a run whose worker
    died is resumed or unwound here.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError("concurrency must be an int >= 1")
    every = recover_every if recover_every is not None else getattr(served.runs, "owner_ttl", 10.0)
    if not isinstance(every, int | float) or not 0.1 <= every < math.inf:
        raise ValueError("recover_every must be seconds >= 0.1 (a sweep is a Redis scan)")
    beat_every = max(0.2, float(getattr(queue, "heartbeat", 30.0)) / 3)

    async def handler(arguments: Mapping[str, Any], beat: Callable[[], Awaitable[None]]) -> Any:
        return await handle_job(served, arguments, beat, every=beat_every)

    async def stopping() -> None:
        if stop is None:
            await anyio.sleep_forever()
        else:
            await stop.wait()

    _logger.info(
        "worker_started",
        queue=queue.name,
        concurrency=concurrency,
        sagas=sorted(served.specs),
    )
    if served.runs is not None:
        same = sorted(
            f"{spec.plan.saga}.{step}"
            for spec in served.specs.values()
            for step, q in spec.queues.items()
            if q == queue.name
        )
        if same:
            # Each run would hold a job slot while it waits for its step's job, which
            # needs a free one: with as many runs as slots, every run waits forever.
            raise ValueError(
                f"steps {same} run on the workers of queue {queue.name!r}, where this "
                "worker runs whole runs of their sagas: give the steps a queue of their own"
            )
    # The queues of the served sagas' steps on workers, open for the runs served here.
    others = sorted(
        q
        for q in {q for spec in served.specs.values() for q in spec.queues.values()}
        if q != queue.name and not is_open(q)
    )
    async with contextlib.AsyncExitStack() as queues, anyio.create_task_group() as tg:
        for name in others:
            await queues.enter_async_context(queue.sibling(name))
        if served.runs is not None:
            tg.start_soon(_recovering, served, every, name="asaga recovery sweep")
        try:
            await queue.serve(
                handler,
                concurrency=concurrency,
                shutdown_grace=shutdown_grace,
                stopping=stopping,
                quick_aborts=any(  # this queue runs steps on workers
                    q == queue.name
                    for spec in served.step_specs.values()
                    for q in spec.queues.values()
                ),
            )
        finally:
            tg.cancel_scope.cancel()
            _logger.info("worker_stopped", queue=queue.name)


async def _recovering(served: Served, every: float) -> None:
    """Sweep recovery now and then (see :func:`serve`)."""
    assert served.runs is not None
    while True:
        try:
            report = await recover(
                served.runs, sagas=served.sagas, resources=served.resources, limit=100
            )
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            _logger.warning("recovery_sweep_failed", error=repr(exc))
        else:
            if report:
                _logger.info("recovery_sweep", runs=len(report))
        await anyio.sleep(every)
