"""The ``asaga`` command line: ``asaga graph module:Saga``, ``asaga demo``, ``asaga runs
list|show|readmit``, ``asaga recover``, ``asaga deliver|resume|cancel`` (parked runs),
``asaga worker``, ``asaga dashboard`` (also ``python -m asaga``).

Wiring only: each subcommand is one ``_add_<name>`` function that declares its arguments
and one ``_<name>`` function that runs it; :data:`_COMMANDS` lists the former. A command
returns the exit status: 0 on success, 2 for a usage error (argparse's convention), such
as a target that does not name a saga.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, get_args

import anyio
import msgspec

from ._events import log_events
from ._exceptions import AsagaError, EventRefused
from ._render import to_dot, to_mermaid
from ._saga import Saga

if TYPE_CHECKING:  # the type of what deliver, resume and cancel return only
    from .runs import Delivery

__all__ = ["TargetError", "load_saga", "main"]

USAGE_ERROR = 2

_Subparsers = Any  # argparse's _SubParsersAction, which is private


class TargetError(Exception):
    """A command-line target that does not name a saga class."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asaga`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status instead of exiting, so that it can be called from tests:
    0 on success, 2 for a usage error (bad arguments, a target that names no saga).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on bad arguments
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except TargetError as exc:
        print(f"asaga {args.command_name}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR


def load_saga(target: str) -> type[Saga]:
    """Import the saga class that ``target`` (``module.path:ClassName``, or
    ``path/to/file.py:ClassName``) names.

    The current directory is put on ``sys.path`` first, as ``python -m`` does, so that
    ``examples.checkout:Checkout`` works from a project's root. The class may be nested
    (``module:Outer.Inner``). Raises :class:`TargetError` with a message for the user when
    the target is malformed, the module or attribute does not exist, or the object is not
    a saga; an import that fails inside the module propagates (an
    :class:`~asaga.AsagaError`, such as a saga's definition errors, becomes a
    :class:`TargetError`).
    """
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise TargetError(
            f"target {target!r} must be module.path:ClassName "
            "(for example examples.checkout:Checkout)"
        )
    module = _import(module_name)
    value: object = module
    parts = attribute.split(".")
    for i, part in enumerate(parts):
        if not hasattr(value, part):
            where = f"{module_name}:{'.'.join(parts[:i])}" if i else module_name
            raise TargetError(f"{where} has no attribute {part!r}{_sagas_hint(value, part)}")
        value = getattr(value, part)
    if value is Saga:
        raise TargetError(f"{target} is the Saga base class; name a subclass of it")
    if not (isinstance(value, type) and issubclass(value, Saga)):
        kind = "a class" if isinstance(value, type) else f"a {type(value).__name__}"
        raise TargetError(f"{target} is {kind}, not a Saga subclass{_sagas_hint(module, '')}")
    return value


# -- commands --------------------------------------------------------------------------------


def _add_graph(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "graph",
        help="draw a saga's dependency graph (Mermaid or Graphviz DOT)",
        description="Print the dependency graph of a saga class, from its plan: nothing runs.",
    )
    parser.add_argument("target", metavar="TARGET", help="the saga class, as module.path:Class")
    parser.add_argument(
        "--format",
        choices=("mermaid", "dot"),
        default="mermaid",
        help="output syntax (default: mermaid)",
    )
    parser.add_argument(
        "--inputs", action="store_true", help="draw the saga's inputs too, with dashed edges"
    )
    parser.set_defaults(command=_graph, command_name="graph")


def _graph(args: argparse.Namespace) -> int:
    saga = load_saga(args.target)
    render = to_dot if args.format == "dot" else to_mermaid
    sys.stdout.write(render(saga, inputs=args.inputs))
    return 0


_DEMO_MODULE = "examples.inventory.demo"


def _add_demo(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the inventory example's demo (from the asaga repository root)",
        description=(
            "Run the inventory example (examples/inventory/demo.py): its sagas in memory, "
            "or on Redis with --redis. The example is part of the asaga repository, not of "
            "the installed package: run this from the repository's root."
        ),
    )
    parser.add_argument(
        "--redis", metavar="URL", help="run on the Redis server at URL instead of in memory"
    )
    parser.set_defaults(command=_demo, command_name="demo")


def _demo(args: argparse.Namespace) -> int:
    try:
        module = _import(_DEMO_MODULE)
    except TargetError:
        raise TargetError(
            f"{_DEMO_MODULE} not found in the current directory {os.getcwd()}: the demo is "
            "part of the asaga repository, not of the installed package; "
            "run it from the asaga repository root"
        ) from None
    status: int = module.main([] if args.redis is None else ["--redis", args.redis])
    return status


def _add_redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("REDIS_URL"),
        help="the run store's Redis (redis://, rediss://, user:password@...; default: $REDIS_URL)",
    )
    parser.add_argument(
        "--prefix", default="asaga:", help="the run store's key prefix (default: asaga:)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the URL names a node of a Redis Cluster (the others are discovered); job "
        "queues must then be named with a hash tag, {name}",
    )


def _add_runs(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list recorded durable runs, show one, or readmit a quarantined one",
        description=(
            "Read durable runs from a Redis run store (list, show: nothing is changed), or "
            "put a quarantined run back for recovery (readmit)."
        ),
    )
    actions = parser.add_subparsers(metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", help="recorded runs, newest first, then the quarantined ones"
    )
    _add_redis_options(listing)
    listing.add_argument(
        "--status",
        help="only runs with this status (e.g. running, waiting: parked runs, with what "
        "they wait for; or quarantined)",
    )
    listing.add_argument("--saga", help="only runs of this saga (class name)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    listing.set_defaults(command=_runs_list, command_name="runs list")
    show = actions.add_parser("show", help="one run: its steps and the timeline of its events")
    _add_redis_options(show)
    show.add_argument("run_id", metavar="RUN_ID")
    show.set_defaults(command=_runs_show, command_name="runs show")
    readmit = actions.add_parser(
        "readmit",
        help="put a quarantined run back among the unfinished runs, for the next recovery",
    )
    _add_redis_options(readmit)
    readmit.add_argument("run_id", metavar="RUN_ID")
    readmit.set_defaults(command=_runs_readmit, command_name="runs readmit")


def _runs_list(args: argparse.Namespace) -> int:
    from .runs._show import format_quarantined, format_runs  # only this command needs them

    if not 1 <= args.limit <= 10_000:
        raise TargetError("--limit must be between 1 and 10000")
    if args.status is not None:
        _check_status(args.status)

    async def quarantined(runs: Any) -> list[Any]:
        aside = await runs.quarantined(limit=args.limit)
        return [q for q in aside if args.saga is None or q.saga == args.saga]

    async def read(runs: Any) -> str:
        if args.status == "quarantined":
            aside = await quarantined(runs)
            return format_quarantined(aside) if aside else "no runs quarantined\n"
        text = format_runs(await runs.list(status=args.status, saga=args.saga, limit=args.limit))
        if args.status is None and (aside := await quarantined(runs)):  # not for --status
            text += "\n" + format_quarantined(aside)
        return text

    return _with_store(args, read)


def _check_status(status: str) -> None:
    """A typo in ``--status`` would list nothing: say so instead."""
    from .runs import RunStatus  # only this command needs it

    known = [*get_args(RunStatus), "in_doubt", "quarantined"]
    if status not in known:
        close = difflib.get_close_matches(status, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TargetError(f"unknown --status {status!r} ({hint}statuses: {', '.join(known)})")


def _runs_show(args: argparse.Namespace) -> int:
    from .runs._show import format_run  # only this command needs it

    async def read(runs: Any) -> str:
        return format_run(await runs.load(args.run_id, events=True))

    return _with_store(args, read)


def _runs_readmit(args: argparse.Namespace) -> int:
    async def readmit(runs: Any) -> str:
        await runs.readmit(args.run_id)
        return f"run {args.run_id} readmitted: the next recovery sweep takes it\n"

    return _with_store(args, readmit)


def _add_recover(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "recover",
        help="finish or compensate the durable runs of processes that died",
        description=(
            "Take over the unfinished runs of the given sagas whose owner's lease expired "
            "(its process died) and finish or compensate each, as asaga.runs.recover() "
            "does; a run whose record cannot be driven is quarantined. Exits 1 if a run "
            "could not be recovered or was quarantined."
        ),
    )
    _add_redis_options(parser)
    parser.add_argument(
        "--saga",
        action="append",
        required=True,
        metavar="TARGET",
        help="a saga class to recover runs of, as module.path:Class (repeat for several)",
    )
    parser.add_argument(
        "--resources",
        metavar="TARGET",
        help="module.path:function returning the sagas' resources as a mapping, or an async "
        "context manager yielding one; it gets url= and prefix= (--redis, --prefix) if it "
        "takes such parameters",
    )
    parser.add_argument("--limit", type=int, default=100, help="runs taken at most (100)")
    parser.set_defaults(command=_recover, command_name="recover")


def _recover(args: argparse.Namespace) -> int:
    from .runs import recover  # only this command needs it

    sagas = [load_saga(target) for target in args.saga]
    factory = _load_callable(args.resources) if args.resources else None
    if factory is None:  # checked before the store is opened: a usage error
        for saga in sagas:
            _require_resources(saga, None, None)
    report: list[Any] = []

    # The queues of the sagas' steps on workers, opened here (on the same Redis): a run
    # that goes on sends its steps there, and undoing one sends their compensations.
    queues = sorted(
        {q for saga in sagas if saga.__asaga__ is not None for q in saga.__asaga__.queues.values()}
    )

    async def sweep(runs: Any) -> str:
        async with contextlib.AsyncExitStack() as stack:
            if queues:
                try:
                    from .workers import SaqQueue
                except ImportError as exc:  # the saq extra is not installed
                    raise TargetError(str(exc)) from exc
                for name in queues:
                    queue = _open_queue(SaqQueue, args, name=name)
                    await stack.enter_async_context(queue)
            resources = await stack.enter_async_context(
                _resources(factory, args.redis, args.prefix)
            )
            for saga in sagas:
                _require_resources(saga, resources, args.resources)
            report.extend(await recover(runs, sagas=sagas, resources=resources, limit=args.limit))
        lines = [
            f"{r.run_id}  {r.saga}  {r.outcome}"
            + (f"  in doubt: {', '.join(r.in_doubt)}" if r.in_doubt else "")
            + (f"  {r.error}" if r.error else "")
            for r in report
        ]
        aside = sum(r.outcome == "quarantined" for r in report)
        summary = f"{len(report) - aside} run(s) recovered"
        if aside:
            summary += f", {aside} quarantined (asaga runs list shows why)"
        return "\n".join([*lines, summary]) + "\n"

    status = _with_store(args, sweep)
    bad = any(r.outcome in ("error", "quarantined") for r in report)
    return 1 if status == 0 and bad else status


def _add_target(parser: argparse.ArgumentParser) -> None:
    """The saga that deliver, resume and cancel act on."""
    parser.add_argument("target", metavar="TARGET", help="the saga class, as module.path:Class")


def _add_store_and_resources(parser: argparse.ArgumentParser) -> None:
    _add_redis_options(parser)
    parser.add_argument(
        "--resources",
        metavar="TARGET",
        help="module.path:function returning the saga's resources as a mapping, or an async "
        "context manager yielding one; it gets url= and prefix= (--redis, --prefix) if it "
        "takes such parameters",
    )


_DRIVES = (
    "The run goes on in this process, with the saga's resources (--resources): the "
    "command prints where it stands then (succeeded and its output, waiting again and "
    "for what, failed and what was compensated)."
)


def _add_deliver(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "deliver",
        help="deliver an event to the parked run that waits for it (wait_for)",
        description=(
            "Deliver the event KEY with its payload to the durable run of TARGET that waits "
            "for it, as Saga.deliver() does: the payload is validated with the waiting "
            "step's type; with no run waiting for KEY yet, it is kept for the first that "
            f"will. {_DRIVES} Exits 1 if the event is refused (an invalid payload, one "
            "delivered already, a key no step of the saga waits for)."
        ),
    )
    _add_target(parser)
    parser.add_argument("key", metavar="KEY", help="the event's key, e.g. payment:order-17")
    parser.add_argument(
        "--payload",
        required=True,
        metavar="JSON",
        help="the event's payload as JSON, or @file.json to read it from a file (@- reads "
        "standard input)",
    )
    _add_store_and_resources(parser)
    parser.set_defaults(command=_deliver, command_name="deliver")


def _add_resume(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "resume",
        help="resume a parked run that a step halted (asaga.Halt)",
        description=(
            "Resume the durable run RUN_ID of TARGET, parked because a step halted it, as "
            f"Saga.resume() does: the halted step runs again, and the run on. {_DRIVES} "
            "Exits 1 if the run has no halted step (it runs, finished, or waits for "
            "something else)."
        ),
    )
    _add_target(parser)
    parser.add_argument("run_id", metavar="RUN_ID")
    _add_store_and_resources(parser)
    parser.set_defaults(command=_resume, command_name="resume")


def _add_cancel(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a parked run: compensate it, or end it as it is (--no-compensate)",
        description=(
            "Cancel the parked durable run RUN_ID of TARGET (waiting for an event or a "
            "timer, or halted), as Saga.cancel() does: its completed steps are compensated "
            "here, with the saga's resources (--resources), and its status is cancelled; "
            "with --no-compensate it ends as it is, nothing undone (status terminated). A "
            "later event for it is refused. Exits 1 if the run is not parked."
        ),
    )
    _add_target(parser)
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument(
        "--no-compensate",
        dest="compensate",
        action="store_false",
        help="undo nothing: the run ends as it is (status terminated)",
    )
    _add_store_and_resources(parser)
    parser.set_defaults(command=_cancel, command_name="cancel")


def _deliver(args: argparse.Namespace) -> int:
    payload = _payload(args.payload)

    async def deliver(saga: type[Saga], runs: Any, resources: dict[str, Any]) -> Delivery:
        return await saga.deliver(args.key, payload, runs=runs, **resources)

    return _drive(args, deliver, "delivered")


def _resume(args: argparse.Namespace) -> int:
    async def resume(saga: type[Saga], runs: Any, resources: dict[str, Any]) -> Delivery:
        return await saga.resume(args.run_id, runs=runs, **resources)

    return _drive(args, resume, "resumed")


def _cancel(args: argparse.Namespace) -> int:
    async def cancel(saga: type[Saga], runs: Any, resources: dict[str, Any]) -> Delivery:
        return await saga.cancel(args.run_id, runs=runs, compensate=args.compensate, **resources)

    return _drive(args, cancel, "cancelled")


def _drive(
    args: argparse.Namespace,
    act: Callable[[type[Saga], Any, dict[str, Any]], Awaitable[Delivery]],
    action: str,
) -> int:
    """Load the saga and its resources, open the store, ``act``, print what became of
    the run. The saga's resources are checked before anything is done: a parked run taken
    without them could not go on."""
    from .runs._show import format_delivery  # only these commands need it

    saga = load_saga(args.target)
    factory = _load_callable(args.resources) if args.resources else None
    declared = _declared_resources(saga)
    if factory is None:
        _require_resources(saga, None, None)

    async def work(runs: Any) -> str:
        async with _resources(factory, args.redis, args.prefix) as resources:
            _require_resources(saga, resources, args.resources)
            own = {n: resources[n] for n in declared if n in resources}
            return format_delivery(await act(saga, runs, own), action)

    return _with_store(args, work)


def _declared_resources(saga: type[Saga]) -> dict[str, bool]:
    """The ``Resource`` inputs of ``saga``: name -> whether it is required."""
    inputs = saga.__asaga__.plan.inputs if saga.__asaga__ is not None else {}
    return {name: i.required for name, i in inputs.items() if i.resource}


def _require_resources(
    saga: type[Saga], given: Mapping[str, Any] | None, factory: str | None
) -> None:
    """A usage error naming the resources ``saga`` needs that ``given`` (what
    ``--resources factory`` gave; ``None``: no --resources) lacks."""
    declared = _declared_resources(saga)
    missing = [n for n, needed in declared.items() if needed and (given is None or n not in given)]
    if missing:
        raise TargetError(_missing(saga, missing, factory))


def _missing(saga: type[Saga], missing: Sequence[str], factory: str | None = None) -> str:
    names = ", ".join(missing)
    give = f"{factory} gave none" if factory else "give --resources module.path:function"
    return f"saga {saga.__name__} needs its resources ({names}) to go on: {give}"


def _payload(text: str) -> str:
    """``--payload``: JSON text, or ``@file`` (``@-``: standard input), checked to be JSON
    (a typo is not delivered: it would count as a bad payload of the run)."""
    if text.startswith("@"):
        name = text[1:]
        try:
            if name == "-":
                text = sys.stdin.read()
            else:
                with open(name, encoding="utf-8") as file:
                    text = file.read()
        except OSError as exc:
            raise TargetError(f"--payload {text}: cannot read {name} ({exc.strerror})") from None
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise TargetError(f"--payload is not JSON ({exc})") from None
    return text


@asynccontextmanager
async def _resources(
    factory: Callable[..., Any] | None, url: str, prefix: str
) -> AsyncIterator[Mapping[str, Any]]:
    if factory is None:
        yield {}
        return
    takes = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in (("url", url), ("prefix", prefix)) if k in takes}
    made = factory(**kwargs)
    if inspect.isawaitable(made):
        made = await made
    if hasattr(made, "__aenter__"):
        async with made as resources:
            yield resources
    else:
        yield made


def _open_queue(queue_class: Any, args: argparse.Namespace, **options: Any) -> Any:
    """``SaqQueue.from_url`` on ``--redis`` (``--cluster``); a name it refuses (on a
    cluster, one without a hash tag) is a usage error that says what to name it."""
    try:
        return queue_class.from_url(args.redis, cluster=args.cluster, **options)
    except ValueError as exc:
        raise TargetError(str(exc)) from None


def _with_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[str]]) -> int:
    if not args.redis:
        raise TargetError("give the run store's Redis with --redis URL (or set REDIS_URL)")
    from .runs import RedisRunStore  # the redis extra, only when used

    async def main() -> str:
        async with RedisRunStore.from_url(
            args.redis, prefix=args.prefix, cluster=args.cluster
        ) as runs:
            return await work(runs)

    try:
        sys.stdout.write(anyio.run(main))
    except AsagaError as exc:
        message = str(exc)
        if isinstance(exc, EventRefused) and exc.run_id and exc.run_id not in message:
            message += f" (run {exc.run_id})"
        print(f"asaga {args.command_name}: {message}", file=sys.stderr)
        return 1
    return 0


def _load_callable(target: str) -> Callable[..., Any]:
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise TargetError(f"target {target!r} must be module.path:function")
    value: object = _import(module_name)
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise TargetError(f"{target}: no attribute {part!r}")
        value = getattr(value, part)
    if not callable(value):
        raise TargetError(f"{target} is not callable")
    return value


def _add_worker(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run sagas started on a queue (Saga.start), as a worker process",
        description=(
            "Serve the runs of a SAQ queue: TARGET (module.path:function) returns an "
            "asaga.workers.Served (the sagas, the run store they are recorded in, their "
            "resources), or an async context manager yielding one; it gets url= and "
            "prefix= (--redis, --prefix) if it takes such parameters. SIGTERM or SIGINT "
            "stops it: no new run starts, the running ones get --shutdown-grace seconds, "
            "the rest are unwound. Needs the saq extra."
        ),
    )
    parser.add_argument("target", metavar="TARGET", help="module.path:function (see above)")
    _add_redis_options(parser)
    parser.add_argument("--queue", required=True, help="the queue's name")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="runs at a time in this process (8)"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long running runs may finish once stopped (30)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a job that beats no more for this long goes to another worker (30)",
    )
    parser.set_defaults(command=_worker, command_name="worker")


def _worker(args: argparse.Namespace) -> int:
    if not args.redis:
        raise TargetError("give the queue's Redis with --redis URL (or set REDIS_URL)")
    if args.concurrency < 1 or not args.shutdown_grace >= 0 or not args.heartbeat >= 1:
        raise TargetError("--concurrency >= 1, --shutdown-grace >= 0, --heartbeat >= 1")
    try:
        from .workers import SaqQueue, Served, serve
    except ImportError as exc:
        raise TargetError(str(exc)) from exc
    factory = _load_callable(args.target)
    if "ASAGA_LOG" not in os.environ:
        # A worker is a service: its runs' events are its log (info and up; ASAGA_LOG=debug
        # for every step). A structlog configured by the served module decides instead.
        log_events("info")

    async def main() -> None:
        async with (
            _resources(factory, args.redis, args.prefix) as served,
            _open_queue(SaqQueue, args, name=args.queue, heartbeat=args.heartbeat) as queue,
        ):
            if not isinstance(served, Served):
                raise TargetError(
                    f"{args.target} gave {type(served).__name__}, not an asaga.workers.Served"
                )
            print(
                f"asaga worker {os.getpid()}: serving queue {args.queue!r} "
                f"(sagas: {', '.join(sorted(served.specs))}; concurrency {args.concurrency})",
                flush=True,
            )
            await serve(
                queue,
                served,
                concurrency=args.concurrency,
                shutdown_grace=args.shutdown_grace,
            )
        print(f"asaga worker {os.getpid()}: stopped", flush=True)

    try:
        anyio.run(main)
    except AsagaError as exc:
        print(f"asaga worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_dashboard(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the runs dashboard (a web UI of the run store) with uvicorn",
        description=(
            "Serve the runs dashboard of a Redis run store: the runs list, run pages with "
            "the saga's graph, and actions (undo, resume, cancel, recover, re-admit) on the "
            "runs of the sagas given (--saga, or --served). Without --token it is read-only; "
            "actions need the token (a login form, or Authorization: Bearer). Binds "
            "127.0.0.1 unless --host says otherwise. Needs the dashboard extra."
        ),
    )
    _add_redis_options(parser)
    parser.add_argument(
        "--saga",
        action="append",
        default=[],
        metavar="TARGET",
        help="a saga class to draw and act on, as module.path:Class (repeat for several)",
    )
    parser.add_argument(
        "--served",
        metavar="TARGET",
        help="module.path:function returning an asaga.workers.Served (its sagas and "
        "resources), or an async context manager yielding one, as for asaga worker",
    )
    parser.add_argument(
        "--resources",
        metavar="TARGET",
        help="module.path:function returning the sagas' resources (as for asaga recover)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--token",
        default=os.environ.get("ASAGA_DASHBOARD_TOKEN"),
        help="the token that allows actions (default: $ASAGA_DASHBOARD_TOKEN; none: read-only)",
    )
    parser.add_argument(
        "--read-token",
        default=os.environ.get("ASAGA_DASHBOARD_READ_TOKEN"),
        help="a token needed to read pages (default: $ASAGA_DASHBOARD_READ_TOKEN; none: "
        "pages are open to whoever reaches the server)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="another Host header the dashboard answers (a proxy's name, or this machine's "
        "name with --host 0.0.0.0); repeat for several. It answers 127.0.0.1, localhost "
        "and [::1] on its port, and --host, and refuses any other (DNS rebinding)",
    )
    parser.set_defaults(command=_dashboard, command_name="dashboard")


def _dashboard(args: argparse.Namespace) -> int:
    if not args.redis:
        raise TargetError("give the run store's Redis with --redis URL (or set REDIS_URL)")
    if not 0 < args.port < 65536:
        raise TargetError("--port must be between 1 and 65535")
    if args.served and (args.saga or args.resources):
        raise TargetError("give either --served, or --saga (and --resources), not both")
    try:
        from .dashboard._serve import serve
    except ImportError as exc:  # the dashboard extra is not installed
        raise TargetError(f"{exc}: install asaga[dashboard]") from exc
    sagas = [load_saga(target) for target in args.saga]
    factory = (
        _load_callable(args.served or args.resources) if (args.served or args.resources) else None
    )
    for name, token in (("--token", args.token), ("--read-token", args.read_token)):
        if token is not None and len(token) < 8:
            raise TargetError(f"{name} must have at least 8 characters")

    async def main() -> None:
        from .runs import RedisRunStore

        async with (
            RedisRunStore.from_url(args.redis, prefix=args.prefix, cluster=args.cluster) as runs,
            _resources(factory, args.redis, args.prefix) as given,
        ):
            if args.served:
                from .workers import Served

                if not isinstance(given, Served):
                    raise TargetError(
                        f"{args.served} gave {type(given).__name__}, not an asaga.workers.Served"
                    )
                chosen, resources = list(given.sagas), dict(given.resources)
            else:
                chosen, resources = list(sagas), dict(given)
            print(
                f"asaga dashboard: http://{args.host}:{args.port}/ "
                f"({'actions need the token' if args.token else 'read-only'}; sagas: "
                f"{', '.join(s.__name__ for s in chosen) or 'none'})",
                flush=True,
            )
            await serve(
                runs,
                sagas=chosen,
                resources=resources,
                host=args.host,
                port=args.port,
                token=args.token,
                read_token=args.read_token,
                allowed_hosts=args.allowed_host,
            )

    try:
        anyio.run(main)
    except AsagaError as exc:
        print(f"asaga dashboard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_graph,
    _add_demo,
    _add_runs,
    _add_recover,
    _add_deliver,
    _add_resume,
    _add_cancel,
    _add_worker,
    _add_dashboard,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asaga", description="Tools for asaga sagas.")
    parser.add_argument(
        "--version", action="version", version=f"asaga {_version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


# -- targets ---------------------------------------------------------------------------------


def _version() -> str:
    from . import __version__  # the package's, as installed

    return __version__


def _import(module_name: str) -> ModuleType:
    cwd = os.getcwd()
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        return _import_file(module_name)
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing target module is the user's typo; a module missing inside it is
        # that module's problem, and keeps its traceback.
        if exc.name is None or not _is_prefix(exc.name, module_name):
            raise
        raise TargetError(
            f"no module named {exc.name!r} (looked in the current directory {cwd} and on sys.path)"
        ) from None
    except AsagaError as exc:
        raise TargetError(f"importing {module_name} failed: {exc}") from exc


def _import_file(path: str) -> ModuleType:
    """The module of a Python file named by its path (``first.py:Checkout``), imported
    with its directory on ``sys.path`` (as ``python first.py`` would have it)."""
    file = os.path.abspath(path if path.endswith(".py") else f"{path}.py")
    if not os.path.isfile(file):
        dotted = path.removesuffix(".py").replace(os.sep, ".").replace("/", ".")
        raise TargetError(
            f"no file {path!r} (looked for {file}); a target is module.path:Class "
            f"(like {dotted}:Class) or path/to/file.py:Class"
        )
    folder = os.path.dirname(file)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(file))[0]
    existing = sys.modules.get(name)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == file:
        return existing
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise TargetError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except AsagaError as exc:
        del sys.modules[name]
        raise TargetError(f"importing {path} failed: {exc}") from exc
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _is_prefix(name: str, module_name: str) -> bool:
    return module_name == name or module_name.startswith(name + ".")


def _sagas_hint(where: object, wanted: str) -> str:
    """``" (did you mean 'X'?)"`` or ``" (sagas there: X, Y)"`` or nothing."""
    namespace: dict[str, object] = dict(getattr(where, "__dict__", {}))
    sagas = sorted(
        name
        for name, value in namespace.items()
        if isinstance(value, type) and issubclass(value, Saga) and value is not Saga
    )
    close = difflib.get_close_matches(wanted, sagas, n=1) if wanted else []
    if close:
        return f" (did you mean {close[0]!r}?)"
    if sagas:
        return f" (sagas there: {', '.join(sagas)})"
    return ""
