"""The ``asaga`` command line: ``asaga graph module:Saga``, ``asaga demo``, ``asaga runs
list|show|readmit``, ``asaga recover``, ``asaga worker`` (also ``python -m asaga``).

Wiring only: each subcommand is one ``_add_<name>`` function that declares its arguments
and one ``_<name>`` function that runs it; :data:`_COMMANDS` lists the former. A command
returns the exit status: 0 on success, 2 for a usage error (argparse's convention), such
as a target that does not name a saga.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio

from ._exceptions import AsagaError
from ._render import to_dot, to_mermaid
from ._saga import Saga

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
    """Import the saga class that ``target`` (``module.path:ClassName``) names.

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
        "--status", help="only runs with this status (e.g. running, or quarantined)"
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
    report: list[Any] = []

    async def sweep(runs: Any) -> str:
        async with _resources(factory, args.redis, args.prefix) as resources:
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


def _with_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[str]]) -> int:
    if not args.redis:
        raise TargetError("give the run store's Redis with --redis URL (or set REDIS_URL)")
    from .runs import RedisRunStore  # the redis extra, only when used

    async def main() -> str:
        async with RedisRunStore.from_url(args.redis, prefix=args.prefix) as runs:
            return await work(runs)

    try:
        sys.stdout.write(anyio.run(main))
    except AsagaError as exc:
        print(f"asaga {args.command_name}: {exc}", file=sys.stderr)
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

    async def main() -> None:
        async with (
            _resources(factory, args.redis, args.prefix) as served,
            SaqQueue.from_url(args.redis, name=args.queue, heartbeat=args.heartbeat) as queue,
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


_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_graph,
    _add_demo,
    _add_runs,
    _add_recover,
    _add_worker,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asaga", description="Tools for asaga sagas.")
    subparsers = parser.add_subparsers(metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


# -- targets ---------------------------------------------------------------------------------


def _import(module_name: str) -> ModuleType:
    cwd = os.getcwd()
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
