"""Steps on workers: ``@step(queue="payments")`` runs a step on the worker processes of a
job queue while its run goes on in its own process.

::

    caller (the run)                               worker of queue "payments"
    ----------------                               --------------------------
    attempt N of charge:                           job kind=step: finds the saga it serves,
      encode its arguments (MessagePack;             its step charge (the same class, the
      resources stay: the worker has its own)        same saga_version), decodes the
      enqueue a job, key run_id:charge:step:N       arguments with the step's annotations,
      wait for its end (pushed)                      adds its resources, runs the body
      ... timeout / cut off: abort the job         returns {"result": ...} or {"error":
      decode the result with the step's return      repr, "types": [its classes]}
      type, or raise RemoteStepFailed

A compensation of a step on workers is sent to the same queue the same way. The queues
are the process's open ones: a :class:`~asaga.workers.SaqQueue` is open for the steps of
every saga while its ``async with`` block runs (see :mod:`asaga._queues`).
"""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import anyio
import msgspec
import structlog

from .._annotations import EMPTY
from .._events import RunContext
from .._exceptions import NotRecordable, RemoteStepFailed, RunNotFound, SagaDefinitionError
from .._graph import RUN_ID, CompNode, Node, Plan
from .._nested import CallUndo, FunctionElement, Map
from .._observer import Observer, Undoable
from .._queues import open_queue
from .._run import SagaSpec
from .._step import Signature
from ..runs._durable import attempt_now
from ..runs._record import RunStore
from ._engine import JobEnd, JobQueue

__all__ = ["REMOTE_KINDS", "OnWorkers", "RemoteElement", "handle_remote", "on_workers"]

_logger = structlog.get_logger("asaga")

_ABORT_WAIT = 5.0
"""Seconds an attempt that was cancelled (its timeout, its run) spends telling the job
engine to abort its job."""


def _queue(name: str, step: str) -> JobQueue:
    queue: JobQueue = open_queue(name, step)
    return queue


def _enc_hook(value: Any) -> Any:
    if isinstance(value, BaseException):  # as a durable run records one: its repr
        return repr(value)
    raise TypeError(f"Encoding objects of type {type(value).__qualname__} is unsupported")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_any_decoder = msgspec.msgpack.Decoder()


def _pack(value: Any) -> str:
    return base64.b64encode(_encoder.encode(value)).decode()


def _unpack(data: Any) -> Any:
    if not isinstance(data, str):
        raise ValueError("not base64 text")
    return _any_decoder.decode(base64.b64decode(data, validate=True))


class OnWorkers:
    """The body of a step (or compensation, or map element, or its undo) on workers, as
    its run calls it: sends the call to a worker of its queue, waits for the outcome.
    ``local`` is the function the worker runs, ``types`` its parameters' annotations (what
    the worker decodes each argument as), ``resources`` its parameters the worker gives
    from its own resources (parameter name -> the saga's resource input)."""

    __slots__ = (
        "_decoder",
        "_idempotent",
        "_sends",
        "kind",
        "local",
        "queue",
        "resources",
        "saga",
        "saga_version",
        "step",
        "types",
    )

    def __init__(
        self,
        local: Callable[..., Awaitable[Any]],
        *,
        kind: str,
        saga: str,
        saga_version: str,
        step: str,
        queue: str,
        sends: tuple[str, ...],
        types: Mapping[str, Any],
        resources: Mapping[str, str],
        returns: Any,
        idempotent: bool,
    ) -> None:
        self.local = local
        self.kind = kind
        self.saga = saga
        self.saga_version = saga_version
        self.step = step
        self.queue = queue
        self.types = types
        self.resources = resources
        self._sends = sends
        self._idempotent = idempotent
        decoder: msgspec.msgpack.Decoder[Any] = _any_decoder
        if kind in _RETURNING and returns is not EMPTY:
            try:
                decoder = msgspec.msgpack.Decoder(returns)
            except TypeError:  # a type msgspec cannot decode: plain data
                decoder = _any_decoder
        self._decoder = decoder

    def __repr__(self) -> str:
        return f"<{self.kind} {self.step!r} of saga {self.saga} on queue {self.queue!r}>"

    async def __call__(self, **kwargs: Any) -> Any:
        sent = {name: kwargs[name] for name in self._sends if name in kwargs}
        run_id = str(kwargs.get(RUN_ID, "-"))
        attempt = attempt_now(run_id, self.step, self.kind)
        return await self.send(run_id, sent, None if attempt is None else str(attempt))

    def job_key(self, run_id: str, attempt: str) -> str:
        """The key of the job of ``attempt`` of this call in run ``run_id``: the same
        attempt, the same key (a duplicate is refused while the first is unfinished).
        It adds no hash tag: on Redis Cluster, the queue puts its own in front of it
        (``SaqQueue.job_key``), and the queue's name gives the slot."""
        return f"{run_id}:{self.step}:{self.kind}:{attempt}"

    async def withdraw(self, run_id: str, attempt: int) -> None:
        """Withdraw the job of ``attempt`` of this call in run ``run_id``, whatever its
        state: dropped if it waits for a worker, cancelled on its worker if it runs
        (waited for, a few seconds at most), left as it is if it ended. A recovery calls
        it for a step in doubt before deciding, so that the job never runs after."""
        queue = _queue(self.queue, self.step)
        key = self.job_key(run_id, str(attempt))
        await queue.abort(
            key,
            f"withdrawn: the {self.kind} of step {self.step!r} was in doubt when its run "
            "was recovered",
            settle=_ABORT_WAIT,
            refuse_later=True,  # a process only paused past its lease may send it yet
        )
        _logger.info("step_job_withdrawn", step=self.step, kind=self.kind, job=key)

    async def send(self, run_id: str, sent: Mapping[str, Any], attempt: str | None = None) -> Any:
        """Run the call with the arguments ``sent`` on a worker, for run ``run_id``;
        ``attempt`` names the attempt in the job's key (``None``: a run no one will
        recover, whose jobs get a random key)."""
        queue = _queue(self.queue, self.step)
        try:
            packed = _pack(dict(sent))
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotRecordable(
                f"{self.kind} of step {self.step!r} runs on workers, and its arguments "
                f"cannot be sent there ({exc}): pass plain data, Structs or dataclasses, "
                "and declare injected objects as Resource[...] (the workers give theirs)"
            ) from exc
        key = self.job_key(run_id, uuid.uuid4().hex[:16] if attempt is None else attempt)
        arguments = {
            "kind": self.kind,
            "saga": self.saga,
            "saga_version": self.saga_version,
            "step": self.step,
            "run_id": run_id,
            "attempt": attempt,  # checked against the run's record (Served(records=...))
            "arguments": packed,
        }
        try:
            # A job whose worker dies is given to another only if running it again is safe.
            await queue.enqueue(key, arguments, retries=None if self._idempotent else 1)
            end = await queue.wait(key)
        except BaseException:  # cancelled: the attempt's timeout, or its run's end
            # Shielded: the job is aborted, and its step on the worker known to have
            # stopped, before the run goes on (to another attempt, to compensations).
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * _ABORT_WAIT):
                try:
                    await queue.abort(
                        key,
                        f"the {self.kind} of step {self.step!r} was cancelled",
                        settle=_ABORT_WAIT,
                    )
                except Exception as exc:  # noqa: BLE001 - Redis away: what failed goes on up
                    _logger.warning(
                        "step_job_abort_failed", step=self.step, job=key, error=repr(exc)
                    )
            raise
        return self._outcome(end)

    def _outcome(self, end: JobEnd) -> Any:
        found = end.result if end.state == "complete" else None
        if isinstance(found, dict):
            if "result" in found:
                if self.kind not in _RETURNING:
                    return None
                try:
                    return self._decoder.decode(base64.b64decode(found["result"]))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    raise RemoteStepFailed(
                        self.step,
                        f"it ended, but its result does not decode as its return type: {exc}",
                        in_doubt=True,
                    ) from exc
            if "error" in found:
                types = found.get("types")
                names = (
                    tuple(t for t in types if isinstance(t, str)) if isinstance(types, list) else ()
                )
                doubt = found.get("in_doubt") is True
                raise RemoteStepFailed(self.step, str(found["error"]), names, in_doubt=doubt)
            if "refused" in found:
                raise RemoteStepFailed(self.step, f"refused: {found['refused']}")
        why = f"its job is {end.state}" + (f" ({end.error})" if end.error else "")
        lost = end.state in ("failed", "aborted") and not self._idempotent
        if lost:
            why += "; its worker may have been lost mid-step, so whether it took effect is unknown"
        raise RemoteStepFailed(self.step, why, in_doubt=lost)


REMOTE_KINDS = ("step", "compensate", "element", "undo_element")
"""The kinds of job :func:`handle_remote` runs (a job without a kind is a whole run)."""

_RETURNING = ("step", "element")
"""The kinds of call whose result is sent back (a compensation's, an undo's is not)."""


class RemoteElement:
    """The elements of a map on workers (``map_each(fn, ..., queue=...)``): each call of
    ``fn``, and of its ``undo``, is a job; everything else is the in-process map's."""

    def __init__(self, local: FunctionElement, call: OnWorkers, undo: OnWorkers | None) -> None:
        self.local = local
        self.call = call
        self.undo = undo

    async def run(
        self,
        context: RunContext,
        label: str,
        item: Any,
        kwargs: dict[str, Any],
        key: str,
        observer: Observer | None,
    ) -> tuple[Any, Undoable | None]:
        local = self.local
        # ``key`` (step/attempt/element) names the element's job: a mapped step run
        # again at the same attempt (recovered) finds the jobs its elements left.
        value = await self.call.send(
            context.run_id, local.arguments(item, kwargs, self.call.resources), key
        )
        undo = self.undo
        if undo is None:
            return value, None
        undo_args = local.undo_arguments(item, kwargs, value, undo.resources)
        run_id = context.run_id

        async def send_undo() -> None:
            await undo.send(run_id, undo_args, key)

        return value, CallUndo(send_undo, {}, label)


def on_workers(plan: Plan, saga_version: str) -> Plan:
    """``plan`` with the body of each step on workers (and its compensation's) replaced by
    an :class:`OnWorkers` call, the run's id passed to it (the job's key); a map on
    workers gets a :class:`RemoteElement`."""
    resources = {name for name, i in plan.inputs.items() if i.resource}
    nodes = dict(plan.nodes)
    problems: list[str] = []
    for name, node in plan.nodes.items():
        if node.queue is None:
            continue
        problems.extend(_travel_problems(node, resources))
        if isinstance(node.invoke, Map) and isinstance(node.invoke.element, FunctionElement):
            invoke = copy.copy(node.invoke)
            invoke.element = _remote_element(plan, saga_version, node, node.invoke.element)
            nodes[name] = replace(node, invoke=invoke)
            continue
        comp = node.compensation
        if comp is not None:
            comp = replace(
                comp,
                fn=_call(plan, saga_version, node, comp, "compensate", resources),
                params=_with_run_id(comp.params),
            )
        nodes[name] = replace(
            node,
            fn=_call(plan, saga_version, node, node, "step", resources),
            params=_with_run_id(node.params),
            compensation=comp,
        )
    if problems:
        raise SagaDefinitionError(plan.saga, problems)
    return replace(plan, nodes=MappingProxyType(nodes))


def _travel_problems(node: Node, resources: set[str]) -> list[str]:
    """What of a step on workers cannot travel: a parameter's or the result's type that
    MessagePack cannot carry (a resource stays: the worker has its own)."""
    element = node.invoke.element if isinstance(node.invoke, Map) else None
    if isinstance(element, FunctionElement):
        return _travel_problems_of_map(node.name, element, resources)
    typed = [(f"parameter {p!r}", t) for p, t in (node.types or {}).items() if p not in resources]
    comp = node.compensation
    if comp is not None:
        typed += [
            (f"parameter {p!r} of its compensation", t)
            for p, t in (comp.types or {}).items()
            if p not in resources and p != node.name
        ]
    if node.returns is not EMPTY:
        typed.append(("its result", node.returns))
    return _untravelled(node.name, typed)


def _travel_problems_of_map(name: str, element: FunctionElement, resources: set[str]) -> list[str]:
    """:func:`_travel_problems` of a map on workers: its function's and its undo's."""
    typed: list[tuple[str, Any]] = []
    for fn, sources in ((element.fn, element.fn_sources), (element.undo_fn, element.undo_sources)):
        if fn is None:
            continue
        stays = {child for child, parent in sources if parent in resources}
        label = getattr(fn, "__name__", "function")
        sig = Signature.read(fn, "mapped function")
        typed += [
            (f"parameter {p.name!r} of {label}", p.annotation)
            for p in sig.params
            if p.name not in stays
        ]
        if fn is element.fn and sig.returns is not EMPTY:
            typed.append((f"the result of {label}", sig.returns))
    return _untravelled(name, typed)


def _untravelled(name: str, typed: list[tuple[str, Any]]) -> list[str]:
    problems = []
    for what, annotation in typed:
        if annotation is EMPTY:
            continue
        try:  # msgspec builds a decoder for any class; its schema only for data types
            msgspec.json.schema(annotation)
        except TypeError:
            problems.append(
                f"step '{name}' runs on workers, but {what} is a "
                f"{getattr(annotation, '__qualname__', annotation)!s}, which cannot travel "
                "there: use plain data, a msgspec Struct or a dataclass (an object the worker "
                "has is a Resource[...] input of the saga)"
            )
    return problems


def _call(
    plan: Plan,
    saga_version: str,
    node: Node,
    body: Node | CompNode,
    kind: str,
    resources: set[str],
) -> OnWorkers:
    assert node.queue is not None
    return OnWorkers(
        body.fn,
        kind=kind,
        saga=plan.saga,
        saga_version=saga_version,
        step=node.name,
        queue=node.queue,
        sends=tuple(p for p in body.params if p not in resources),
        types=body.types or {},
        resources={p: p for p in body.params if p in resources},
        returns=node.returns if kind == "step" else EMPTY,
        idempotent=node.idempotent,
    )


def _remote_element(
    plan: Plan, saga_version: str, node: Node, local: FunctionElement
) -> RemoteElement:
    assert node.queue is not None
    resources = {name for name, i in plan.inputs.items() if i.resource}

    def call(
        fn: Callable[..., Awaitable[Any]], sources: list[tuple[str, str]], kind: str
    ) -> OnWorkers:
        sig = Signature.read(fn, "mapped function")
        assert node.queue is not None
        return OnWorkers(
            fn,
            kind=kind,
            saga=plan.saga,
            saga_version=saga_version,
            step=node.name,
            queue=node.queue,
            sends=(),
            types=MappingProxyType({p.name: p.annotation for p in sig.params}),
            resources={c: p for c, p in sources if p in resources},
            returns=sig.returns if kind == "element" else EMPTY,
            idempotent=False,
        )

    undo = local.undo_fn
    return RemoteElement(
        local,
        call(local.fn, local.fn_sources, "element"),
        call(undo, local.undo_sources, "undo_element") if undo is not None else None,
    )


def _with_run_id(params: tuple[str, ...]) -> tuple[str, ...]:
    return params if RUN_ID in params else (*params, RUN_ID)


# -- the workers' side --------------------------------------------------------------------------


async def handle_remote(
    specs: Mapping[str, SagaSpec],
    resources: Mapping[str, Any],
    arguments: Mapping[str, Any],
    records: RunStore | None = None,
) -> dict[str, Any]:
    """Run the step or compensation a job carries: ``{"result": ...}``, ``{"error":
    ..., "types": [...]}`` if it raised, or ``{"refused": ...}`` if this worker does not
    serve it (a saga it does not serve, another version) or, with ``records`` (the store
    the runs are recorded in), if the run's record does not say that this attempt of
    the step (or of its compensation) is running."""
    kind, saga, step = arguments.get("kind"), arguments.get("saga"), arguments.get("step")
    spec = specs.get(saga) if isinstance(saga, str) else None
    if spec is None or spec.saga_version != arguments.get("saga_version"):
        versions = ", ".join(f"{s.plan.saga} v{s.saga_version}" for s in specs.values())
        wanted = f"{saga} v{arguments.get('saga_version')}"
        _logger.warning("step_job_refused", saga=saga, step=step, serves=versions)
        return {"refused": f"asked for {wanted}; this worker serves {versions}"}
    node = spec.plan.nodes.get(step) if isinstance(step, str) else None
    call = _target(node, kind)
    if call is None:
        return {"refused": f"saga {saga} has no {kind} of step {step!r} on workers"}
    if records is not None:
        # (a target was found: step names a step, kind is one of REMOTE_KINDS)
        unrecorded = await _unrecorded(records, spec.plan.saga, str(step), str(kind), arguments)
        if unrecorded is not None:
            _logger.error(
                "step_job_refused",
                saga=saga,
                step=step,
                kind=kind,
                run_id=arguments.get("run_id"),
                attempt=arguments.get("attempt"),
                reason=unrecorded,
            )
            return {"refused": unrecorded}
    types = call.types
    try:
        raw = _unpack(arguments.get("arguments"))
        if not isinstance(raw, dict):
            raise ValueError("not a mapping")
        # A compensation in doubt gets None for the step's result, whatever its annotation
        # (as it does in the run's own process).
        passes_none = kind == "compensate"
        kwargs = {
            name: value
            if types.get(name, EMPTY) is EMPTY or (value is None and passes_none)
            else msgspec.convert(value, types[name])
            for name, value in raw.items()
            if name in types
        }
    except (TypeError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        return {"error": f"its arguments do not decode here: {exc}", "types": []}
    for name, resource in call.resources.items():
        if resource in resources:
            kwargs[name] = resources[resource]
    run_id = arguments.get("run_id")
    try:
        result = await call.local(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a failure is the caller's to handle, as data
        _logger.info("step_job_failed", saga=saga, step=step, kind=kind, run_id=run_id)
        return {"error": repr(exc), "types": _classes(type(exc))}
    _logger.info("step_job_done", saga=saga, step=step, kind=kind, run_id=run_id)
    if kind not in _RETURNING:
        return {"result": None}
    try:
        return {"result": _pack(result)}
    except (TypeError, ValueError, OverflowError) as exc:
        return {
            "error": f"step {step!r} returned a {type(result).__qualname__}, which cannot be "
            f"sent back from its worker ({exc}): return a Struct, a dataclass or plain data",
            "types": [],
            "in_doubt": True,  # it ended: whatever it did, it did
        }


async def _unrecorded(
    records: RunStore, saga: str, step: str, kind: str, arguments: Mapping[str, Any]
) -> str | None:
    """Why the run's record does not vouch for this job (``None``: it does): the job must
    name a recorded run of ``saga`` whose record says that this attempt of ``step`` (of
    its compensation, for ``compensate``; of the mapped step, for an element) is
    running. The caller writes that down before it sends the job."""
    run_id, attempt = arguments.get("run_id"), arguments.get("attempt")
    if not isinstance(run_id, str) or not isinstance(attempt, str):
        return (
            "the job names no recorded attempt (a run with no store, or a job not made by "
            "asaga): this worker runs steps of recorded runs only (Served(records=...))"
        )
    try:
        record = await records.load(run_id)
    except RunNotFound:
        return f"run {run_id} is not recorded in this worker's store (Served(records=...))"
    except Exception as exc:  # noqa: BLE001 - unread, the step is not run: refused, not in doubt
        return f"the record of run {run_id} could not be read here ({exc!r})"
    if record.saga != saga:
        return f"run {run_id} is a run of saga {record.saga}, not {saga}"
    found = record.steps.get(step)
    if kind == "compensate":
        ok = (
            found is not None
            and found.compensation == "running"
            and str(found.compensation_attempt) == attempt
        )
        what = f"the compensation of step {step!r} at attempt {attempt}"
    elif kind == "undo_element":  # the map failed (still running) or is compensated
        ok = found is not None and "running" in (found.status, found.compensation)
        what = f"the undo of an element of step {step!r}"
    else:  # a step's attempt; an element's key is <step>/<attempt>/<index>
        parts = attempt.split("/")
        number = attempt if kind == "step" else parts[-2] if len(parts) >= 3 else "?"
        ok = found is not None and found.status == "running" and str(found.attempt) == number
        what = f"step {step!r} at attempt {number}"
    if ok:
        return None
    return f"the record of run {run_id} does not say {what} is running"


def _target(node: Node | None, kind: object) -> OnWorkers | None:
    if node is None:
        return None
    if kind == "step" and isinstance(node.fn, OnWorkers):
        return node.fn
    comp = node.compensation
    if kind == "compensate" and comp is not None and isinstance(comp.fn, OnWorkers):
        return comp.fn
    element = node.invoke.element if isinstance(node.invoke, Map) else None
    if isinstance(element, RemoteElement):
        return (
            element.call if kind == "element" else element.undo if kind == "undo_element" else None
        )
    return None


def _classes(cls: type) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__ if c not in (object,)]
