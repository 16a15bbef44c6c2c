"""SAQ as asaga's job engine: a :class:`~asaga.workers._engine.JobQueue` on a SAQ queue.

SAQ (asyncio, Redis) gives what a run on workers needs: a job key refuses a duplicate,
a running job can be aborted (its task is cancelled), a job's end is published on
Redis pub/sub, and a job whose worker stops beating is swept and given to another
worker. asaga runs one job function, ``asaga.run``, whose arguments name the saga and
the run (see :mod:`asaga.workers._runs`).

On Redis Cluster (``SaqQueue.from_url(url, name="{inventory}", cluster=True)``), the
queue's name must carry a hash tag: SAQ's keys of the queue (``saq:{inventory}:queued``,
``saq:job:{inventory}:<key>``) then share its slot. SAQ's abort key of a job is
``saq:abort:<job key>``, not named after the queue, and its enqueue script touches it with
the queue's keys: a :class:`SaqQueue` on a cluster hands SAQ each job key with the queue's
hash tag in front (``{inventory}<key>``), so that it falls in the same slot too. Callers
use the plain key; SAQ's own API (``queue.saq``) sees the tagged one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self

import anyio
import redis.asyncio as aioredis
import structlog

from .._queues import opened
from .._redis import client_from_url, close_client, is_cluster, require_asyncio
from ._engine import JobEnd, JobHandler, JobState

try:
    from saq import Queue, Worker
    from saq.job import ABORT_ID_PREFIX, TERMINAL_STATUSES, Job, Status
    from saq.multiplexer import Multiplexer
    from saq.queue.redis import RedisQueue
    from saq.types import Context, PartialTimersDict, QueueInfo, WorkerInfo
    from saq.utils import now
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "asaga.workers needs SAQ: install the extra with `pip install 'asaga[saq]'`"
    ) from exc

__all__ = ["SaqQueue"]

_logger = structlog.get_logger("asaga")

JOB_FUNCTION = "asaga.run"
"""The one function asaga's workers run."""

_RECHECK = 0.5
"""Seconds between looks at a job while waiting for its end (a pushed end that was
missed, between a look and the subscription, is noticed by the next look)."""

_NO_CHANNEL = "asaga: keep subscribed"
"""A channel no job publishes on (job channels start with ``saq:job:``): a subscription
to it keeps SAQ's multiplexer subscribed in Redis (see ``SaqQueue._keep_subscribed``)."""


class SaqQueue:
    """A SAQ queue that runs asaga sagas::

        async with SaqQueue.from_url("redis://127.0.0.1:6379/0", name="inventory") as queue:
            handle = await InventorySaga.start(queue=queue, runs=runs, product_id="sku-1")

    On Redis Cluster: ``SaqQueue.from_url(url, name="{inventory}", cluster=True)`` (the
    name must carry a hash tag; see the module's docstring).

    ``heartbeat``: seconds a running job may go without a sign of life before SAQ's sweep
    (run by every worker of the queue, every ``heartbeat`` seconds) gives it to another
    worker; ``retries``: how many times a job is given out in all; ``keep``: seconds a
    finished job (and so its key, refusing a duplicate) is kept.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        heartbeat: float = 30.0,
        retries: int = 5,
        keep: float = 3600.0,
        _owns_queue: bool = False,
    ) -> None:
        if not heartbeat >= 1 or retries < 1 or not keep >= 1:
            raise ValueError("heartbeat >= 1 s, retries >= 1 and keep >= 1 s")
        self.saq = queue
        """The SAQ queue underneath."""
        self.name: str = queue.name
        self._tag = ""
        """On Redis Cluster, the queue's hash tag (``{inventory}``), put in front of every
        job key handed to SAQ (see the module's docstring); else empty."""
        if isinstance(queue, RedisQueue) and is_cluster(queue.redis):
            if not isinstance(queue, _RedisQueue):
                raise TypeError(
                    "SaqQueue on Redis Cluster: SAQ's own RedisQueue sends PUBLISH in "
                    "pipelines, which redis-py's cluster client refuses; make the queue with "
                    'SaqQueue.from_url(url, name="{name}", cluster=True)'
                )
            self._tag = _cluster_tag(queue.name)
        self.heartbeat = heartbeat
        self.retries = retries
        self.keep = keep
        self._owns_queue = _owns_queue
        self._held: asyncio.Queue[Any] | None = None  # see _keep_subscribed

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str = "default",
        cluster: bool = False,
        max_connections: int = 500,
        **options: Any,
    ) -> SaqQueue:
        """A queue named ``name`` on the Redis server at ``url``; closed on exit.

        Its client waits for a free connection rather than failing (each job slot of a
        worker holds one while it waits for a job), and has no socket timeout (a job slot's
        wait for a job is a blocking read, which a timeout would end every few seconds).

        With ``cluster=True`` the URL names a node of a Redis Cluster (the others are
        discovered), the client is a ``redis.asyncio.RedisCluster``, and ``name`` must
        carry a hash tag (``"{inventory}"``): the queue's keys then share one slot.
        """
        if cluster:
            _cluster_tag(name)  # refused before a client is made
            client: Any = client_from_url(
                url, cluster=True, max_connections=max_connections, socket_timeout=None
            )
        else:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=30, socket_timeout=None
            )
            client = aioredis.Redis(connection_pool=pool)
        return cls(_RedisQueue(client, name=name), _owns_queue=True, **options)

    async def __aenter__(self) -> Self:
        require_asyncio("SaqQueue", "asyncio (SAQ is asyncio-only)")
        await self.saq.connect()
        opened(self, True)  # steps on workers (@step(queue=...)) of this name use it
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        opened(self, False)
        if self._owns_queue:
            await self.saq.disconnect()

    # -- the caller's side ----------------------------------------------------------------

    def sibling(self, name: str) -> SaqQueue:
        """The queue ``name`` on the same Redis client, with the same settings."""
        if not isinstance(self.saq, RedisQueue):  # pragma: no cover - from_url makes one
            raise TypeError("SaqQueue.sibling needs a SAQ RedisQueue")
        return SaqQueue(
            _RedisQueue(self.saq.redis, name=name),
            heartbeat=self.heartbeat,
            retries=self.retries,
            keep=self.keep,
        )

    def job_key(self, key: str) -> str:
        """The key SAQ knows the job of ``key`` by: ``key`` itself, or on Redis Cluster
        ``key`` after the queue's hash tag (``{inventory}<key>``), so that SAQ's abort key
        of the job (``saq:abort:<job key>``) falls in the queue's slot."""
        return f"{self._tag}{key}"

    async def enqueue(
        self, key: str, arguments: Mapping[str, Any], *, retries: int | None = None
    ) -> bool:
        job = await self.saq.enqueue(
            JOB_FUNCTION,
            key=self.job_key(key),
            timeout=0,  # a saga is bounded by its steps' timeouts, not by the engine
            heartbeat=max(1, round(self.heartbeat)),
            retries=self.retries if retries is None else retries,
            ttl=max(1, round(self.keep)),
            **dict(arguments),
        )
        return job is not None

    async def wait(self, key: str) -> JobEnd:
        key = self.job_key(key)
        mux = getattr(self.saq, "_pubsub", None)
        if not isinstance(mux, Multiplexer):  # pragma: no cover - from_url makes a RedisQueue
            return await self._wait_refreshing(key)
        # Subscribed (in this process) before the job is read, so that an end published
        # after the read is not missed; the multiplexer's one Redis subscription is kept
        # (see _keep_subscribed), not made again for each wait.
        await self._keep_subscribed(mux)
        inbox = await mux.subscribe(self.saq.job_id(key))
        try:
            while True:
                job = await self.saq.job(key)
                if job is None:
                    return JobEnd(state="missing")
                if job.status in TERMINAL_STATUSES:
                    return _end(job)
                with anyio.move_on_after(_RECHECK):
                    while _status(await inbox.get()) not in TERMINAL_STATUSES:
                        pass
        finally:
            await mux.unsubscribe(inbox)

    async def _keep_subscribed(self, mux: Multiplexer) -> None:
        """Keep SAQ's pub/sub multiplexer subscribed while the queue is connected: it
        unsubscribes from Redis when its last waiter leaves and subscribes again, in a
        task, for the next one (two more commands per wait, and an end published before
        that subscription lands is seen only by the next look, ``_RECHECK`` later)."""
        if self._held is not None and self._held in mux._queues:
            return
        self._held = await mux.subscribe(_NO_CHANNEL)  # dropped by disconnect() with the rest
        # The multiplexer subscribes in a task, on a connection of its own: wait for the
        # subscription to be sent, or a job that ends at once (its worker is quick) is seen
        # only by the next look, _RECHECK later.
        pubsub = getattr(mux, "pubsub", None)
        for _ in range(round(_RECHECK / 0.001)):  # a poll: redis-py has no event for it
            if pubsub is None or pubsub.patterns:
                break
            await anyio.sleep(0.001)

    async def _wait_refreshing(self, key: str) -> JobEnd:
        while True:
            job = await self.saq.job(key)
            if job is None:
                return JobEnd(state="missing")
            if job.status in TERMINAL_STATUSES:
                return _end(job)
            try:
                await job.refresh(until_complete=_RECHECK)
            except TimeoutError:
                continue
            if job.status in TERMINAL_STATUSES:
                return _end(job)

    async def abort(
        self, key: str, reason: str, *, settle: float = 0.0, refuse_later: bool = False
    ) -> None:
        if refuse_later and isinstance(self.saq, RedisQueue):
            # Before the job is looked up, so that an enqueue after the look is refused
            # too: SAQ enqueues no job whose abort key exists. A job found is aborted as
            # usual (SAQ's abort sets the key again, and drops it once the job ended).
            await self.saq.redis.set(
                f"{ABORT_ID_PREFIX}{self.job_key(key)}", reason, ex=max(1, round(self.keep))
            )
        job = await self.saq.job(self.job_key(key))
        if job is None or job.status in TERMINAL_STATUSES:
            return
        await self.saq.abort(job, reason)
        if settle <= 0:
            return
        with anyio.move_on_after(settle):
            await self.wait(key)
            return
        # SAQ's abort takes a running job off the active list: only its worker would end
        # it, and no sweep sees it again. Its worker is dead or wedged: end it here (its
        # data then expires like any finished job's).
        job = await self.saq.job(self.job_key(key))
        if job is not None and job.status not in TERMINAL_STATUSES:
            await self.saq.finish(job, Status.ABORTED, error=reason)

    async def state(self, key: str) -> JobState:
        job = await self.saq.job(self.job_key(key))
        if job is None:
            return "missing"
        status = job.status.value
        return status if status != "new" else "queued"  # type: ignore[return-value]

    # -- the workers' side ----------------------------------------------------------------

    async def serve(
        self,
        handler: JobHandler,
        *,
        concurrency: int,
        shutdown_grace: float,
        stopping: Callable[[], Awaitable[None]],
        quick_aborts: bool = False,
    ) -> None:
        heartbeat = max(1, round(self.heartbeat))

        async def run(ctx: Context, **arguments: Any) -> Any:
            job = ctx["job"]
            if job.heartbeat != heartbeat:
                # SAQ's sweep judges a job by the heartbeat it carries, set by the caller's
                # queue; this worker beats by its own: a shorter one would have its runs
                # swept (aborted: cancelled) while alive, a longer one its dead jobs wait.
                job.heartbeat = heartbeat
                await job.update()

            async def beat() -> None:
                await job.update()  # touched: SAQ's sweep sees the job alive

            return await handler(arguments, beat)

        worker = Worker(
            self.saq,
            functions=[(JOB_FUNCTION, run)],
            concurrency=concurrency,
            timers=_timers(self.heartbeat),
            shutdown_grace_period_s=0,  # see _graceful_stop: the grace is for running jobs
        )
        _careful_sweeps(self.saq)
        _watch_dequeues(self.saq)
        _graceful_stop(worker, shutdown_grace)
        mux = getattr(self.saq, "_pubsub", None)
        # Subscribed to every job's notices of the queue: about 0.1 ms of CPU per job.
        if quick_aborts and isinstance(mux, Multiplexer):
            await self._keep_subscribed(mux)
            _abort_when_told(mux, worker)
        started = asyncio.ensure_future(worker.start())
        try:
            stop = asyncio.ensure_future(stopping())
            done, _ = await asyncio.wait({started, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop not in done:
                stop.cancel()
            await worker.stop()
        finally:
            if not started.done():
                started.cancel()
            await asyncio.gather(started, return_exceptions=True)


_TAKING: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
"""The tasks (SAQ's job slots) waiting for a job in a queue's ``dequeue`` right now: an
idle slot, which a stopping worker cancels at once (see :func:`_graceful_stop`)."""


def _watch_dequeues(queue: Queue) -> None:
    """Make ``queue``'s ``dequeue`` note the task waiting in it in :data:`_TAKING` (once per
    queue object: SAQ's ``Worker`` has no other way to tell an idle job slot from a busy
    one)."""
    if getattr(queue, "_asaga_watched", False):
        return
    dequeue = queue.dequeue

    async def noted(*args: Any, **kwargs: Any) -> Job | None:
        task = asyncio.current_task()
        if task is not None:
            _TAKING.add(task)
        try:
            return await dequeue(*args, **kwargs)
        finally:
            if task is not None:
                _TAKING.discard(task)

    queue.dequeue = noted  # type: ignore[method-assign]  # SAQ has no hook for it
    queue._asaga_watched = True  # type: ignore[attr-defined]  # ours, on SAQ's object


def _graceful_stop(worker: Worker[Any], grace: float) -> None:
    """Give ``worker`` a stop that waits up to ``grace`` seconds for its running jobs only.

    SAQ's own ``Worker.stop`` waits its grace for every task of the worker, job slots
    waiting for a job (which never end) and timers included: an idle worker would wait
    the whole grace. This stop takes no new job (idle slots and timers are cancelled at
    once), waits for the slots running a job (their job's end is recorded) up to
    ``grace``, then lets SAQ's stop cancel what still runs (and the job goes back to the
    queue, or ends aborted if it may not run again). It is the worker's ``stop``, so
    SAQ's own signal handling (SIGTERM, SIGINT) stops through it too."""
    lock = asyncio.Lock()
    stop = worker.stop

    async def stop_gracefully() -> None:
        worker.event.set()  # no slot is started again
        async with lock:
            if worker._stopped:
                return
            idle = [t for t in worker.tasks if t.get_name() != "process" or t in _TAKING]
            busy = [t for t in worker.tasks if not t.done() and t not in idle]
            for task in idle:
                task.cancel()
            if idle:  # cancelled: they end at once (a Redis read, a timer's sleep)
                await asyncio.wait(idle, timeout=worker._cancellation_hard_deadline_s)
            if busy and grace > 0:
                _logger.info("worker_stopping", running_jobs=len(busy), grace=grace)
                await asyncio.wait(busy, timeout=grace)
            await stop()  # SAQ's, with no grace: cancels what still runs

    worker.stop = stop_gracefully  # type: ignore[method-assign]  # SAQ has no option for it


_SWEEP_ABORT = 0.5
"""Seconds SAQ's sweep waits for the worker of a stuck job to see its abort before giving
the job to another worker. SAQ's default, 5 s, is spent on each stuck job in turn: the
last of a dead worker's 8 jobs would wait 40 s, and its caller with it."""


def _abort_when_told(mux: Multiplexer, worker: Worker[Any]) -> None:
    """Make ``worker`` abort its jobs as soon as an abort of one of them is published on
    the queue's pub/sub (``mux``). SAQ's own check runs every second and skips jobs that
    started less than a second ago: a short step whose attempt timed out would go on to
    its end."""
    publish = mux.publish
    aborting: set[asyncio.Future[None]] = set()
    again = False

    def abort() -> None:
        task = asyncio.ensure_future(worker.abort(0))  # SAQ's abort of the jobs marked so
        aborting.add(task)
        task.add_done_callback(done)

    def done(task: asyncio.Future[None]) -> None:
        nonlocal again
        aborting.discard(task)
        if again:  # another abort was told while this one ran
            again = False
            abort()

    def publish_and_watch(channel: str, message: Any) -> None:
        nonlocal again
        publish(channel, message)
        if _status(message) is not Status.ABORTING:
            return
        if not any(job.id == channel for job in worker.job_task_contexts):
            return  # another worker's job
        if aborting:
            again = True
        else:
            abort()

    mux.publish = publish_and_watch  # type: ignore[method-assign]  # SAQ has no hook for it


def _careful_sweeps(queue: Queue) -> None:
    """Give ``queue`` asaga's sweep (see :func:`_sweep`) if it is a SAQ Redis queue not made
    by :meth:`SaqQueue.from_url`, which has it already."""
    if isinstance(queue, _RedisQueue) or not isinstance(queue, RedisQueue):
        return
    seen: set[bytes] = set()

    async def careful(lock: int = 60, abort: float = _SWEEP_ABORT) -> list[str]:
        return await _sweep(queue, seen, lock=lock, abort=abort)

    queue.sweep = careful  # type: ignore[method-assign]  # SAQ's Worker has no option for it
    retry = queue.retry

    async def retry_if_retryable(job: Job, error: str | None) -> None:
        await _retry_if_retryable(queue, job, error, retry)

    queue.retry = retry_if_retryable  # type: ignore[method-assign]


async def _retry_if_retryable(
    queue: Queue,
    job: Job,
    error: str | None,
    retry: Callable[[Job, str | None], Awaitable[None]],
) -> None:
    """SAQ's retry, except for a job given out as many times as it may be: ended as
    aborted. SAQ's worker gives a job it cancels as it shuts down out again without
    asking, and the job of a step on workers that is not idempotent may run once only."""
    if job.retryable:
        await retry(job, error)
    else:
        await queue.finish(job, Status.ABORTED, error=error or "cancelled")


_SWEEP_SCRIPT = """
local found = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SETEX', KEYS[1], ARGV[1], 1)
    for i, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
        found[i] = {id, redis.call('GET', id)}
    end
end
return found
"""
"""Under the queue's sweep lock (one sweeper at a time), the active list's jobs: SAQ's own
script, unchanged."""


async def _sweep(queue: RedisQueue, seen: set[bytes], *, lock: int, abort: float) -> list[str]:
    """SAQ 0.26's sweep of the jobs of ``queue``'s active list, but careful with a job that
    is still queued: a worker moves a job to the active list, then marks it active, a round
    trip later, and SAQ's sweep (run by every worker as it starts) aborts a job it finds
    between the two. Here a queued job in the active list is swept only if the previous
    sweep (``seen``) found it queued there too (its worker died between the two). And a
    stuck job's worker gets :data:`_SWEEP_ABORT` to see its abort, not SAQ's 5 s for each
    in turn."""
    abort = min(abort, _SWEEP_ABORT)
    found = await queue.redis.eval(_SWEEP_SCRIPT, 2, queue._sweep, queue._active, lock)
    queued: set[bytes] = set()
    swept: list[str] = []
    for job_id, data in found:
        job = queue.deserialize(data)
        if job is None:  # its data expired or was deleted: drop it from the lists
            swept.append(job_id.decode())
            async with queue.redis.pipeline(transaction=True) as pipe:
                pipe.lrem(queue._active, 0, job_id)
                pipe.zrem(queue._incomplete, job_id)
                await pipe.execute()
            continue
        if job.status in (Status.NEW, Status.QUEUED) and job_id not in seen:
            queued.add(job_id)  # being taken by a worker, most likely: next time
            continue
        if job.status == Status.ACTIVE and not job.stuck:
            continue
        if job.status == Status.ABORTING and not job.stuck:
            continue  # its worker is seeing its abort
        swept.append(job_id.decode())
        _logger.info("job_swept", job=job.key, status=job.status.value)
        await queue.abort(job, error=queue.swept_error_message)
        with contextlib.suppress(TimeoutError):  # its worker is dead or wedged
            await job.refresh(abort)
        if job.retryable:
            await queue.retry(job, error=queue.swept_error_message)
        else:
            await queue.finish(job, Status.ABORTED, error=queue.swept_error_message)
    seen.clear()
    seen.update(queued)
    return swept


def _timers(heartbeat: float) -> PartialTimersDict:
    """SAQ's sweep of stuck jobs runs every ``heartbeat`` seconds; aborts are seen within
    one second."""
    timers: PartialTimersDict = {
        "schedule": 1,
        "worker_info": 10,
        "sweep": max(1, round(heartbeat)),
        "abort": 1,
    }
    return timers


class _RedisQueue(RedisQueue):
    """SAQ's Redis queue, with a job's new state and its notice sent in one round trip
    (SAQ 0.26 sends the notice after the state, a round trip later: two more round trips
    per job, on the worker's path from taking a job to its caller's hearing of its end).
    The same commands in the same order; the overridden methods are SAQ 0.26's. Its sweep
    is :func:`_sweep`.

    On Redis Cluster (a ``RedisCluster`` client), where redis-py refuses PUBLISH in a
    pipeline, a job's notice follows its state a round trip later (SAQ's own order, and
    its abort with the notice out of the transaction); it closes the cluster client (SAQ's
    ``disconnect`` closes a connection pool a cluster client has not), reads the Redis
    version from the node of the queue's slot, and its ``info`` passes MGET lists of keys
    (a cluster client finds no key in SAQ's generators)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued_at_last_sweep: set[bytes] = set()
        self._cluster = is_cluster(self.redis)
        """On Redis Cluster, redis-py refuses PUBLISH in a pipeline: a job's notice is
        sent after its state, a round trip later, as SAQ's own methods send it."""

    async def sweep(self, lock: int = 60, abort: float = _SWEEP_ABORT) -> list[str]:
        return await _sweep(self, self._queued_at_last_sweep, lock=lock, abort=abort)

    async def disconnect(self) -> None:
        # SAQ's closes ``redis.connection_pool``, which a cluster client has not.
        await self._pubsub.close()
        await close_client(self.redis)

    async def version(self) -> tuple[int, ...]:
        if self._version is None and self._cluster:
            # A cluster client asks every node: the version of the node of the queue's slot.
            cluster: Any = self.redis
            node = cluster.get_node_from_key(self._queued)
            info = await cluster.info(target_nodes=node)
            self._version = tuple(int(i) for i in str(info["redis_version"]).split("."))
        return await super().version()

    async def retry(self, job: Job, error: str | None) -> None:
        await _retry_if_retryable(self, job, error, super().retry)

    async def abort(self, job: Job, error: str, ttl: float = 5) -> None:
        if not self._cluster:
            await super().abort(job, error, ttl)
            return
        # SAQ 0.26's, with the notice sent after the transaction (not inside it).
        async with self._op_sem:
            job.status = Status.ABORTING
            job.error = error
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrem(self._queued, 0, job.id)
                pipe.zrem(self._incomplete, job.id)
                pipe.set(job.id, self.serialize(job))
                pipe.setex(job.abort_id, max(1, round(ttl)), error)
                dequeued, *_ = await pipe.execute()
            await self.notify(job)
            if dequeued:
                await self.finish(job, Status.ABORTED, error=error)
                await self.redis.delete(job.abort_id)
            else:
                await self.redis.lrem(self._active, 0, job.id)

    async def info(self, jobs: bool = False, offset: int = 0, limit: int = 10) -> QueueInfo:
        if not self._cluster:
            return await super().info(jobs, offset, limit)
        # SAQ 0.26's, with lists of keys for MGET (a cluster client finds no key in the
        # generators SAQ passes) and no MGET of no key.
        redis: Any = self.redis
        workers: dict[str, WorkerInfo] = {}
        found: list[bytes] = await redis.zrangebyscore(self._stats, now(), "inf")
        ids = [key.decode().split(":")[-1] for key in found]
        keys = [self.namespace(f"worker_info:{worker}") for worker in ids]
        for worker, data in zip(ids, await redis.mget(keys) if keys else [], strict=True):
            if data:
                workers[worker] = json.loads(data)
        job_info: list[Any] = []
        if jobs:
            listed: list[bytes] = await redis.lrange(self._active, offset, limit - 1)
            listed += await redis.zrange(self._incomplete, offset, limit - 1)
            stored = [self.deserialize(data) for data in await redis.mget(listed)] if listed else []
            job_info = list({j.key: j.to_dict() for j in stored if j is not None}.values())
        queued = await self.count("queued")
        active = await self.count("active")
        incomplete = await self.count("incomplete")
        return {
            "workers": workers,
            "name": self.name,
            "queued": queued,
            "active": active,
            "scheduled": incomplete - queued - active,
            "jobs": job_info,
        }

    async def _update(self, job: Job, status: Status | None = None, **kwargs: Any) -> None:
        if not status or self._cluster:
            # A heartbeat (SAQ keeps the stored status, read first), or on a cluster (no
            # PUBLISH in a pipeline): SAQ's, the notice a round trip after the state.
            await super()._update(job, status, **kwargs)
            return
        job.status = status
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(job.id, self.serialize(job))
            pipe.publish(job.id, job.status)
            await pipe.execute()

    async def _finish(
        self, job: Job, status: Status, *, result: Any = None, error: str | None = None
    ) -> None:
        if self._cluster:
            await super()._finish(job, status, result=result, error=error)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._active, 1, job.id)
            pipe.zrem(self._incomplete, job.id)
            if job.ttl > 0:
                pipe.setex(job.id, job.ttl, self.serialize(job))
            elif job.ttl == 0:
                pipe.set(job.id, self.serialize(job))
            else:
                pipe.delete(job.id)
            pipe.publish(job.id, job.status)  # after the job's end is stored, as SAQ's notify
            await pipe.execute()


def _cluster_tag(name: str) -> str:
    """The hash tag of queue ``name`` as Redis Cluster reads it (the text between its first
    ``{`` and the next ``}``, if not empty), braces included; a name without one is
    refused: the queue's keys would be spread over slots, and SAQ's scripts and
    transactions refused (CROSSSLOT)."""
    start = name.find("{")
    end = name.find("}", start + 1) if start >= 0 else -1
    if end <= start + 1:
        raise ValueError(
            f"SaqQueue on Redis Cluster: the queue's name must carry a hash tag, so that its "
            f'keys share one slot: name it "{{{name}}}" rather than {name!r}'
            " (and @step(queue=...) and map_each(queue=...) with that name)"
        )
    return name[start : end + 1]


def _status(message: Mapping[str, Any]) -> Status | None:
    """The status a job's pub/sub message announces (SAQ publishes ``job.status``)."""
    data = message.get("data")
    text = data.decode() if isinstance(data, bytes) else str(data)
    return Status.__members__.get(text.upper())


def _end(job: Job) -> JobEnd:
    if job.status == Status.COMPLETE:
        return JobEnd(state="complete", result=job.result)
    if job.status == Status.FAILED:
        return JobEnd(state="failed", error=job.error)
    return JobEnd(state="aborted", error=job.error)
