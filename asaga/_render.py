"""Drawing: a saga's plan as a Mermaid flowchart or a Graphviz DOT digraph.

Reads the frozen :class:`~asaga._graph.Plan` only; nothing runs. One neutral drawing is
made first, then written out in either syntax, so both say the same thing::

    boxes = [inputs (optional)] + steps in plan order, each a list of text lines:
              name, composed/mapped label, "when: <predicate>", "lock: <keys>",
              "undo: <compensation>", "output"
    edges = dependency -> dependent (solid); input -> step reading it (dashed)
    write = Mermaid `flowchart TD` or DOT `digraph`, ASCII only, in a stable order

Node ids are the step and input names, renamed only where a name would be a keyword of
either syntax (``end``, ``node``...) or is not ASCII.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._graph import Node, Plan
from ._run import SagaSpec
from ._saga import Saga
from ._waits import Wait

__all__ = ["to_dot", "to_mermaid"]


def to_mermaid(saga_cls: type[Saga], *, inputs: bool = False) -> str:
    """The dependency graph of ``saga_cls`` as a Mermaid ``flowchart TD``.

    One box per step, in the plan's topological order, with an arrow from each dependency
    to its dependent. A box names the step, then what is special about it: the composed or
    mapped step's label (``compose(Child)``, ``map_each(fn)``), ``when: <predicate>``,
    ``lock: <key templates>``, ``undo: <compensation>`` and ``output``. With
    ``inputs=True`` the saga's inputs are drawn too, with dashed arrows to the steps that
    read them. The text ends with a newline and is ASCII.

    Raises :class:`TypeError` if ``saga_cls`` is not a Saga subclass.
    """
    boxes, edges = _drawing(_plan_of(saga_cls), inputs=inputs)
    lines = ["flowchart TD"]
    for box in boxes:
        text = "<br/>".join(_mermaid_text(line) for line in box.lines)
        if box.is_input:
            lines.append(f'    {box.id}[/"{text}"/]')
        else:
            lines.append(f'    {box.id}["{text}"]')
    for edge in edges:
        arrow = "-.->" if edge.dashed else "-->"
        lines.append(f"    {edge.source} {arrow} {edge.target}")
    return "\n".join(lines) + "\n"


def to_dot(saga_cls: type[Saga], *, inputs: bool = False) -> str:
    """The dependency graph of ``saga_cls`` as a Graphviz DOT ``digraph``.

    The same drawing as :func:`to_mermaid`: boxes for steps in topological order, edges
    from dependency to dependent, and with ``inputs=True`` parallelograms for inputs with
    dashed edges. Render it with ``dot -Tsvg``. The text ends with a newline and is ASCII.

    Raises :class:`TypeError` if ``saga_cls`` is not a Saga subclass.
    """
    plan = _plan_of(saga_cls)
    boxes, edges = _drawing(plan, inputs=inputs)
    lines = [
        f"digraph {_dot_string(plan.saga)} {{",
        "    rankdir=TB;",
        "    node [shape=box];",
    ]
    for box in boxes:
        label = "\\n".join(_dot_text(line) for line in box.lines)
        shape = ", shape=parallelogram" if box.is_input else ""
        lines.append(f'    {box.id} [label="{label}"{shape}];')
    for edge in edges:
        style = " [style=dashed]" if edge.dashed else ""
        lines.append(f"    {edge.source} -> {edge.target}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- the drawing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Box:
    id: str
    lines: tuple[str, ...]
    is_input: bool


@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    target: str
    dashed: bool


def _plan_of(saga_cls: type[Saga]) -> Plan:
    spec = getattr(saga_cls, "__asaga__", None)
    if not isinstance(spec, SagaSpec):
        raise TypeError(f"expected a Saga subclass with steps, got {saga_cls!r}")
    return spec.plan


def _drawing(plan: Plan, *, inputs: bool) -> tuple[list[_Box], list[_Edge]]:
    """The boxes and edges of ``plan``, in the order they are written."""
    drawn_inputs = list(plan.inputs.values()) if inputs else []
    ids = _ids([*plan.order, *plan.inputs])  # all inputs: ids do not depend on `inputs`
    boxes: list[_Box] = []
    for spec in drawn_inputs:
        kind = "resource" if spec.resource else "input"
        if not spec.required:
            kind += ", optional"
        boxes.append(_Box(ids[spec.name], (spec.name, kind), is_input=True))
    for name in plan.order:
        boxes.append(_Box(ids[name], _step_lines(plan.nodes[name], plan.output), is_input=False))

    edges = [
        _Edge(ids[name], ids[dependent], dashed=False)
        for name in plan.order
        for dependent in plan.nodes[name].dependents
    ]
    for spec in drawn_inputs:
        for name in plan.order:
            if spec.name in _reads(plan.nodes[name]):
                edges.append(_Edge(ids[spec.name], ids[name], dashed=True))
    return boxes, edges


def _step_lines(node: Node, output: str | None) -> tuple[str, ...]:
    lines = [node.name]
    if node.invoke is not None:
        # The plan keeps only the label compose()/map_each() gave the step's function.
        lines.append(getattr(node.fn, "__name__", "composed step"))
        if isinstance(node.invoke, Wait) and node.invoke.template is not None:
            timeout = node.invoke.timeout
            lines.append(f"key: {node.invoke.template}")
            if timeout is not None:
                lines.append(f"timeout: {_duration(timeout)}")
    if node.when is not None:
        lines.append(f"when: {getattr(node.when.fn, '__name__', 'condition')}")
    if node.lock is not None:
        lines.append(f"lock: {', '.join(node.lock.keys)}")
    if node.compensation is not None:
        lines.append(f"undo: {node.compensation.name}")
    if node.name == output:
        lines.append("output")
    return tuple(lines)


def _reads(node: Node) -> tuple[str, ...]:
    """The names a step reads before it runs: its parameters and its condition's."""
    when = node.when.params if node.when is not None else ()
    return tuple(dict.fromkeys((*node.params, *when)))


# -- ids and escaping --------------------------------------------------------------------------

# Words that cannot be a bare node id in Mermaid flowcharts or in DOT (compared lowercased).
_KEYWORDS = frozenset(
    {
        # Mermaid
        "call",
        "class",
        "classdef",
        "click",
        "default",
        "direction",
        "end",
        "flowchart",
        "graph",
        "href",
        "interpolate",
        "linkstyle",
        "style",
        "subgraph",
        # DOT
        "digraph",
        "edge",
        "node",
        "strict",
    }
)


def _ids(names: list[str]) -> dict[str, str]:
    """A safe, unique node id per name: the name itself when it is safe and free."""
    ids: dict[str, str] = {}
    taken = {name for name in names if _safe(name)}
    for name in names:
        if _safe(name):
            ids[name] = name
            continue
        candidate = "".join(c if c.isascii() else f"_u{ord(c):x}" for c in name) + "_"
        while candidate in taken:
            candidate += "_"
        taken.add(candidate)
        ids[name] = candidate
    return ids


def _safe(name: str) -> bool:
    return name.isascii() and name.isidentifier() and name.lower() not in _KEYWORDS


def _mermaid_text(text: str) -> str:
    """Text for a quoted Mermaid label: special and non-ASCII characters as ``#code;``."""
    return "".join(
        f"#{ord(c)};" if c in '"#<>&`' or not c.isascii() or not c.isprintable() else c
        for c in text
    )


def _dot_text(text: str) -> str:
    """Text for a quoted DOT label: quotes and backslashes escaped, the rest ASCII."""
    out: list[str] = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "&" or not c.isascii() or not c.isprintable():
            out.append(f"&#{ord(c)};")
        else:
            out.append(c)
    return "".join(out)


def _dot_string(text: str) -> str:
    return f'"{_dot_text(text)}"'


def _duration(seconds: float) -> str:
    """``14 d``, ``2 h``, ``90 s``: a duration as read at a glance."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and (seconds / size) == int(seconds / size):
            return f"{int(seconds / size)} {unit}"
    return f"{seconds:g} s"
