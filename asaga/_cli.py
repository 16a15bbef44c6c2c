"""The ``asaga`` command line: ``asaga graph module:Saga``, ``asaga demo`` (also
``python -m asaga``).

Wiring only: each subcommand is one ``_add_<name>`` function that declares its arguments
and one ``_<name>`` function that runs it; :data:`_COMMANDS` lists the former. A command
returns the exit status: 0 on success, 2 for a usage error (argparse's convention), such
as a target that does not name a saga.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

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


_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (_add_graph, _add_demo)


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
