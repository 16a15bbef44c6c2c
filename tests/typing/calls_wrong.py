"""Calls that both mypy --strict and pyright must refuse: each line with a "wrong:" comment
must be reported, and no other (tests/typing/test_typing.py)."""

from __future__ import annotations

from tests.typing.calls_ok import Checkout, Payments, Receipt


async def wrong() -> None:
    await Checkout(order_id=1, payments=Payments()).run()  # wrong: an int for a str
    await Checkout(order_idd="o", payments=Payments()).run()  # wrong: a misspelled input
    await Checkout(order_id="o", amount="2", payments=Payments()).run()  # wrong: str for int
    await Checkout(order_id="o", payments="bank").run()  # wrong: a resource of another type
    result = await Checkout(order_id="o", payments=Payments()).run()
    wrong_type: str = result.output  # wrong: the output is a Receipt
    await Checkout(order_id="o", payments=Payments()).run(runs=3)  # wrong: not a store
    await Checkout(order_id="o", payments=Payments()).run(order_id="p")  # wrong: an input
    receipt: Receipt = result.output
    assert receipt
    assert wrong_type
