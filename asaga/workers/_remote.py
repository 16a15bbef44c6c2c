"""Steps on workers: ``@step(queue="payments")`` runs a step on the worker processes of a
job queue while its run goes on in its own process.

::

    caller (the run)                               worker of queue "payments"
    ----------------                               --------------------------
    attempt N of charge:                           job kind=step: finds the saga it serves,
      encode its arguments (MessagePack;             its step charge (the same class, the
      resources stay: the worker has its own)        same saga_version), decodes the
      enqueue a job, key run_id:charge:<random>      arguments with the step's annotations,
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
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import anyio
import msgspec
import structlog

from .._annotations import EMPTY
from .._exceptions import NotRecordable, RemoteStepFailed
from .._graph import RUN_ID, Node, Plan
from .._queues import open_queue
from .._run import SagaSpec
from ._engine import JobEnd, JobQueue

__all__ = ["OnWorkers", "handle_remote", "on_workers"]

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
    """The body of a step (or compensation) on workers, as its run calls it: sends the
    call to a worker of its queue, waits for the outcome. ``local`` is the function the
    worker runs."""

    __slots__ = (
        "_decoder",
        "_idempotent",
        "_sends",
        "kind",
        "local",
        "queue",
        "saga",
        "saga_version",
        "step",
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
        returns: Any,
        idempotent: bool,
    ) -> None:
        self.local = local
        self.kind = kind
        self.saga = saga
        self.saga_version = saga_version
        self.step = step
        self.queue = queue
        self._sends = sends
        self._idempotent = idempotent
        decoder: msgspec.msgpack.Decoder[Any] = _any_decoder
        if kind == "step" and returns is not EMPTY:
            try:
                decoder = msgspec.msgpack.Decoder(returns)
            except TypeError:  # a type msgspec cannot decode: plain data
                decoder = _any_decoder
        self._decoder = decoder

    def __repr__(self) -> str:
        return f"<{self.kind} {self.step!r} of saga {self.saga} on queue {self.queue!r}>"

    async def __call__(self, **kwargs: Any) -> Any:
        queue = _queue(self.queue, self.step)
        sent = {name: kwargs[name] for name in self._sends if name in kwargs}
        try:
            packed = _pack(sent)
        except (TypeError, ValueError, OverflowError) as exc:
            raise NotRecordable(
                f"{self.kind} of step {self.step!r} runs on workers, and its arguments "
                f"cannot be sent there ({exc}): pass plain data, Structs or dataclasses, "
                "and declare injected objects as Resource[...] (the workers give theirs)"
            ) from exc
        run_id = kwargs.get(RUN_ID, "-")
        key = f"{run_id}:{self.step}:{self.kind}:{uuid.uuid4().hex[:16]}"
        arguments = {
            "kind": self.kind,
            "saga": self.saga,
            "saga_version": self.saga_version,
            "step": self.step,
            "run_id": run_id,
            "arguments": packed,
        }
        # A job whose worker dies is given to another only if running it again is safe.
        await queue.enqueue(key, arguments, retries=None if self._idempotent else 1)
        try:
            end = await queue.wait(key)
        except BaseException:  # cancelled: the attempt's timeout, or its run's end
            with anyio.CancelScope(shield=True), anyio.move_on_after(_ABORT_WAIT):
                await queue.abort(key, f"the {self.kind} of step {self.step!r} was cancelled")
            raise
        return self._outcome(end)

    def _outcome(self, end: JobEnd) -> Any:
        found = end.result if end.state == "complete" else None
        if isinstance(found, dict):
            if "result" in found:
                if self.kind != "step":
                    return None
                try:
                    return self._decoder.decode(base64.b64decode(found["result"]))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    raise RemoteStepFailed(
                        self.step, f"its result does not decode as its return type: {exc}"
                    ) from exc
            if "error" in found:
                types = found.get("types")
                names = (
                    tuple(t for t in types if isinstance(t, str)) if isinstance(types, list) else ()
                )
                raise RemoteStepFailed(self.step, str(found["error"]), names)
            if "refused" in found:
                raise RemoteStepFailed(self.step, f"refused: {found['refused']}")
        why = f"its job is {end.state}" + (f" ({end.error})" if end.error else "")
        if end.state in ("failed", "aborted") and not self._idempotent:
            why += "; its worker may have been lost mid-step, so whether it took effect is unknown"
        raise RemoteStepFailed(self.step, why)


def on_workers(plan: Plan, saga_version: str) -> Plan:
    """``plan`` with the body of each step on workers (and its compensation's) replaced by
    an :class:`OnWorkers` call; the run's id is passed to it (the job's key)."""
    resources = {name for name, i in plan.inputs.items() if i.resource}
    nodes = dict(plan.nodes)
    for name, node in plan.nodes.items():
        if node.queue is None:
            continue
        comp = node.compensation
        if comp is not None:
            comp = replace(
                comp,
                fn=_call(plan, saga_version, node, comp.fn, "compensate", comp.params, resources),
                params=_with_run_id(comp.params),
            )
        nodes[name] = replace(
            node,
            fn=_call(plan, saga_version, node, node.fn, "step", node.params, resources),
            params=_with_run_id(node.params),
            compensation=comp,
        )
    return replace(plan, nodes=MappingProxyType(nodes))


def _call(
    plan: Plan,
    saga_version: str,
    node: Node,
    local: Callable[..., Awaitable[Any]],
    kind: str,
    params: tuple[str, ...],
    resources: set[str],
) -> OnWorkers:
    assert node.queue is not None
    return OnWorkers(
        local,
        kind=kind,
        saga=plan.saga,
        saga_version=saga_version,
        step=node.name,
        queue=node.queue,
        sends=tuple(p for p in params if p not in resources),
        returns=node.returns if kind == "step" else EMPTY,
        idempotent=node.idempotent,
    )


def _with_run_id(params: tuple[str, ...]) -> tuple[str, ...]:
    return params if RUN_ID in params else (*params, RUN_ID)


# -- the workers' side --------------------------------------------------------------------------


async def handle_remote(
    specs: Mapping[str, SagaSpec],
    resources: Mapping[str, Any],
    arguments: Mapping[str, Any],
) -> dict[str, Any]:
    """Run the step or compensation a job carries: ``{"result": ...}``, ``{"error":
    ..., "types": [...]}`` if it raised, or ``{"refused": ...}`` if this worker does not
    serve it (a saga it does not serve, another version)."""
    kind, saga, step = arguments.get("kind"), arguments.get("saga"), arguments.get("step")
    spec = specs.get(saga) if isinstance(saga, str) else None
    if spec is None or spec.saga_version != arguments.get("saga_version"):
        versions = ", ".join(f"{s.plan.saga} v{s.saga_version}" for s in specs.values())
        wanted = f"{saga} v{arguments.get('saga_version')}"
        _logger.warning("step_job_refused", saga=saga, step=step, serves=versions)
        return {"refused": f"asked for {wanted}; this worker serves {versions}"}
    node = spec.plan.nodes.get(step) if isinstance(step, str) else None
    call, types = _target(node, kind)
    if call is None or types is None:
        return {"refused": f"saga {saga} has no {kind} of step {step!r} on workers"}
    try:
        raw = _unpack(arguments.get("arguments"))
        if not isinstance(raw, dict):
            raise ValueError("not a mapping")
        kwargs = {
            name: value if types.get(name, EMPTY) is EMPTY else msgspec.convert(value, types[name])
            for name, value in raw.items()
            if name in types
        }
    except (TypeError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        return {"error": f"its arguments do not decode here: {exc}", "types": []}
    for name in types:
        declared = spec.plan.inputs.get(name)
        if declared is not None and declared.resource and name in resources:
            kwargs[name] = resources[name]
    run_id = arguments.get("run_id")
    try:
        result = await call.local(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a failure is the caller's to handle, as data
        _logger.info("step_job_failed", saga=saga, step=step, kind=kind, run_id=run_id)
        return {"error": repr(exc), "types": _classes(type(exc))}
    _logger.info("step_job_done", saga=saga, step=step, kind=kind, run_id=run_id)
    if kind != "step":
        return {"result": None}
    try:
        return {"result": _pack(result)}
    except (TypeError, ValueError, OverflowError) as exc:
        return {
            "error": f"step {step!r} returned a {type(result).__qualname__}, which cannot be "
            f"sent back from its worker ({exc}): return a Struct, a dataclass or plain data",
            "types": [],
        }


def _target(node: Node | None, kind: object) -> tuple[OnWorkers | None, Mapping[str, Any] | None]:
    if node is None:
        return None, None
    if kind == "step" and isinstance(node.fn, OnWorkers):
        return node.fn, node.types
    comp = node.compensation
    if kind == "compensate" and comp is not None and isinstance(comp.fn, OnWorkers):
        return comp.fn, comp.types
    return None, None


def _classes(cls: type) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__ if c not in (object,)]
