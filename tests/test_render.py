"""Drawing a saga's plan: exact Mermaid and DOT text, markers, safe ids, determinism."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asaga import Saga, step
from asaga._render import to_dot, to_mermaid
from tests.sagas.graph_fixture import Order

ROOT = Path(__file__).resolve().parent.parent

ORDER_MERMAID = """\
flowchart TD
    open_order["open_order<br/>lock: orders:{order_id}, customers:{customer}"]
    reserve["reserve<br/>compose(ReserveItem)"]
    recipients["recipients"]
    charge["charge<br/>undo: refund<br/>output"]
    emails["emails<br/>map_each(notify)"]
    wrap["wrap<br/>when: is_gift"]
    open_order --> charge
    reserve --> charge
    recipients --> emails
    charge --> wrap
"""

ORDER_MERMAID_INPUTS = """\
flowchart TD
    order_id[/"order_id<br/>input"/]
    customer[/"customer<br/>input"/]
    sku[/"sku<br/>input"/]
    gift[/"gift<br/>input, optional"/]
    open_order["open_order<br/>lock: orders:{order_id}, customers:{customer}"]
    reserve["reserve<br/>compose(ReserveItem)"]
    recipients["recipients"]
    charge["charge<br/>undo: refund<br/>output"]
    emails["emails<br/>map_each(notify)"]
    wrap["wrap<br/>when: is_gift"]
    open_order --> charge
    reserve --> charge
    recipients --> emails
    charge --> wrap
    order_id -.-> open_order
    order_id -.-> emails
    customer -.-> open_order
    customer -.-> recipients
    sku -.-> reserve
    gift -.-> wrap
"""

ORDER_DOT = """\
digraph "Order" {
    rankdir=TB;
    node [shape=box];
    open_order [label="open_order\\nlock: orders:{order_id}, customers:{customer}"];
    reserve [label="reserve\\ncompose(ReserveItem)"];
    recipients [label="recipients"];
    charge [label="charge\\nundo: refund\\noutput"];
    emails [label="emails\\nmap_each(notify)"];
    wrap [label="wrap\\nwhen: is_gift"];
    open_order -> charge;
    reserve -> charge;
    recipients -> emails;
    charge -> wrap;
}
"""

ORDER_DOT_INPUTS = """\
digraph "Order" {
    rankdir=TB;
    node [shape=box];
    order_id [label="order_id\\ninput", shape=parallelogram];
    customer [label="customer\\ninput", shape=parallelogram];
    sku [label="sku\\ninput", shape=parallelogram];
    gift [label="gift\\ninput, optional", shape=parallelogram];
    open_order [label="open_order\\nlock: orders:{order_id}, customers:{customer}"];
    reserve [label="reserve\\ncompose(ReserveItem)"];
    recipients [label="recipients"];
    charge [label="charge\\nundo: refund\\noutput"];
    emails [label="emails\\nmap_each(notify)"];
    wrap [label="wrap\\nwhen: is_gift"];
    open_order -> charge;
    reserve -> charge;
    recipients -> emails;
    charge -> wrap;
    order_id -> open_order [style=dashed];
    order_id -> emails [style=dashed];
    customer -> open_order [style=dashed];
    customer -> recipients [style=dashed];
    sku -> reserve [style=dashed];
    gift -> wrap [style=dashed];
}
"""


def test_mermaid() -> None:
    """Steps in plan order with their markers (lock, composed, undo, output, mapped, when),
    then one arrow per dependency, from the dependency to its dependent."""
    assert to_mermaid(Order) == ORDER_MERMAID


def test_mermaid_with_inputs() -> None:
    """inputs=True draws the inputs first, as parallelograms, with dashed arrows to every
    step (or condition) that reads them; an input with a default is marked optional."""
    assert to_mermaid(Order, inputs=True) == ORDER_MERMAID_INPUTS


def test_dot() -> None:
    """DOT says the same as Mermaid: boxes with the same lines, the same edges."""
    assert to_dot(Order) == ORDER_DOT


def test_dot_with_inputs() -> None:
    """In DOT, inputs are parallelograms and their edges dashed."""
    assert to_dot(Order, inputs=True) == ORDER_DOT_INPUTS


def test_resources_are_marked() -> None:
    """A Resource input is drawn as a resource, not as a validated input."""
    from examples.checkout import Checkout

    text = to_mermaid(Checkout, inputs=True)
    assert '    payments[/"payments<br/>resource"/]\n' in text
    assert "    warehouse -.-> reserve_a\n" in text


class Odd(Saga):
    """Names that cannot be bare node ids, and label text that needs escaping."""

    @step(when=lambda: True)
    async def end() -> int:
        return 1

    @step(lock='k:"{end}"#<&>\\')
    async def node(end: int) -> int:
        return 1

    @step
    async def réserver(node: int, end_: int = 0) -> int:
        return 1

    @end.compensate
    async def undo_end(end: int) -> None:
        pass


def test_unsafe_names_and_text_are_escaped() -> None:
    """Keywords of either syntax and non-ASCII names get other ids (never one in use); label
    text keeps its meaning through each syntax's escapes; the output is ASCII."""
    assert to_mermaid(Odd, inputs=True) == (
        "flowchart TD\n"
        '    end_[/"end_<br/>input, optional"/]\n'
        '    end__["end<br/>when: #60;lambda#62;<br/>undo: undo_end"]\n'
        '    node_["node<br/>lock: k:#34;{end}#34;#35;#60;#38;#62;\\"]\n'
        '    r_ue9server_["r#233;server<br/>output"]\n'
        "    end__ --> node_\n"
        "    node_ --> r_ue9server_\n"
        "    end_ -.-> r_ue9server_\n"
    )
    assert to_dot(Odd) == (
        'digraph "Odd" {\n'
        "    rankdir=TB;\n"
        "    node [shape=box];\n"
        '    end__ [label="end\\nwhen: <lambda>\\nundo: undo_end"];\n'
        '    node_ [label="node\\nlock: k:\\"{end}\\"#<&#38;>\\\\"];\n'
        '    r_ue9server_ [label="r&#233;server\\noutput"];\n'
        "    end__ -> node_;\n"
        "    node_ -> r_ue9server_;\n"
        "}\n"
    )
    assert to_mermaid(Odd, inputs=True).isascii()
    assert to_dot(Odd, inputs=True).isascii()


def test_empty_saga() -> None:
    """A saga without steps draws an empty graph."""

    class Empty(Saga):
        pass

    assert to_mermaid(Empty) == "flowchart TD\n"
    assert to_dot(Empty) == 'digraph "Empty" {\n    rankdir=TB;\n    node [shape=box];\n}\n'


@pytest.mark.parametrize("render", [to_mermaid, to_dot])
def test_not_a_saga(render: Callable[[Any], str]) -> None:
    """Anything but a Saga subclass with a plan is a TypeError, the base class included."""
    for wrong in (Saga, int, Order.charge):
        with pytest.raises(TypeError, match="expected a Saga subclass"):
            render(wrong)


def test_deterministic_across_processes() -> None:
    """The text does not depend on hash seeds or on anything but the class: two fresh
    interpreters with different PYTHONHASHSEED print exactly the pinned text."""
    code = (
        "from asaga._render import to_dot, to_mermaid\n"
        "from tests.sagas.graph_fixture import Order\n"
        "print(to_mermaid(Order, inputs=True) + to_dot(Order, inputs=True), end='')\n"
    )
    for seed in ("1", "2"):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=True,
        )
        assert proc.stdout == ORDER_MERMAID_INPUTS + ORDER_DOT_INPUTS
