"""Inputs: validated by msgspec before any step runs; resources pass through untouched."""

from typing import Annotated, Literal

import msgspec
import pytest

from asaga import InputValidationError, Resource, Saga, step

pytestmark = pytest.mark.anyio

started: list[str] = []


class Client:
    """An injected object msgspec knows nothing about."""


class Order(msgspec.Struct):
    sku: str
    qty: int


class Checkout(Saga):
    order_id: str
    amount: Annotated[int, msgspec.Meta(gt=0)]
    operation: Literal["reserve", "release"]
    currency: str = "EUR"
    client: Resource[Client]

    @step
    async def charge(
        order_id: str, amount: int, operation: str, currency: str, client: Client
    ) -> tuple[str, int, str, str, Client]:
        started.append("charge")
        return order_id, amount, operation, currency, client


async def test_valid_inputs_reach_the_steps() -> None:
    """Declared inputs arrive converted; defaults fill in; resources are the same object."""
    client = Client()
    result = await Checkout.run(order_id="o-1", amount=3, operation="reserve", client=client)
    assert result.output == ("o-1", 3, "reserve", "EUR", client)
    assert result.output[4] is client


async def test_every_bad_field_is_listed_and_no_step_runs() -> None:
    """Bad, missing and unknown fields are all reported; no step has started."""
    started.clear()
    with pytest.raises(InputValidationError) as info:
        await Checkout.run(amount=0, operation="steal", amuont=1, client=Client())
    err = info.value
    assert set(err.fields) == {"order_id", "amount", "operation", "amuont"}
    text = str(err)
    assert "order_id: missing required input" in text
    assert "amount: Expected `int` >= 1" in text
    assert "operation: Invalid enum value 'steal'" in text
    assert "amuont: unknown input (did you mean 'amount'?)" in text
    assert started == []


async def test_missing_resource_is_reported() -> None:
    """A resource is required like any input without a default."""
    with pytest.raises(InputValidationError) as info:
        await Checkout.run(order_id="o", amount=1, operation="reserve")
    assert info.value.fields == ("client",)


async def test_no_coercion_of_wrong_types() -> None:
    """Strict validation: "3" is not an int, True is not an int."""
    for bad in ("3", True):
        with pytest.raises(InputValidationError) as info:
            await Checkout.run(order_id="o", amount=bad, operation="reserve", client=Client())
        assert info.value.fields == ("amount",)


async def test_struct_inputs_accept_dicts() -> None:
    """A msgspec Struct input can be given as a mapping; the step receives the Struct."""

    class Place(Saga):
        order: Order

        @step
        async def place(order: Order) -> Order:
            return order

    result = await Place.run(order={"sku": "p1", "qty": 2})
    assert result.output == Order(sku="p1", qty=2)
    with pytest.raises(
        InputValidationError, match=r"order: Expected `int`, got `str` - at `\$.qty`"
    ):
        await Place.run(order={"sku": "p1", "qty": "2"})


async def test_inferred_inputs_take_the_parameter_annotation() -> None:
    """Without declarations, inputs are inferred and typed by the step's annotation."""

    class Inferred(Saga):
        @step
        async def a(n: int, label: str = "x") -> str:
            return f"{label}{n}"

    assert (await Inferred.run(n=2)).output == "x2"
    assert (await Inferred.run(n=2, label="y")).output == "y2"
    with pytest.raises(InputValidationError) as info:
        await Inferred.run(n="2")
    assert info.value.fields == ("n",)


async def test_unannotated_inferred_inputs_pass_through() -> None:
    """An inferred input with no annotation is passed as given."""
    marker = object()

    class Loose(Saga):
        @step
        async def a(thing):  # type: ignore[no-untyped-def]
            return thing

    assert (await Loose.run(thing=marker)).output is marker


async def test_inferred_custom_class_is_isinstance_checked() -> None:
    """An inferred input annotated with a plain class must be an instance of it."""

    class Typed(Saga):
        @step
        async def a(client: Client) -> Client:
            return client

    client = Client()
    assert (await Typed.run(client=client)).output is client
    with pytest.raises(InputValidationError, match="Expected `Client`"):
        await Typed.run(client=object())


async def test_the_message_is_bounded_whatever_the_inputs() -> None:
    """150,000 unknown inputs with long names: the error keeps every one in ``errors``,
    and its message (what a log shows) stays small."""
    inputs = {f"{'k' * 300}{i}": i for i in range(150_000)}
    with pytest.raises(InputValidationError) as info:
        await Checkout.run(**inputs)
    assert len(info.value.errors) > 150_000  # the unknown ones, and the missing ones
    assert len(str(info.value)) < 20_000
    assert f"and {len(info.value.errors) - 20} more" in str(info.value)


class Plain(Saga):
    """Only plain ``str``/``int``/``float``/``bool`` inputs: given exactly so, nothing is
    converted; anything else goes through msgspec as before."""

    name: str
    count: int
    ratio: float
    flag: bool
    hold: float = 900.0
    client: Resource[Client]

    @step
    async def echo(
        name: str, count: int, ratio: float, flag: bool, hold: float, client: Client
    ) -> tuple[object, ...]:
        return name, count, ratio, flag, hold, client


async def test_plain_inputs_of_the_exact_type_pass_as_they_are() -> None:
    client = Client()
    out = (await Plain.run(name="n", count=2**70, ratio=0.5, flag=False, client=client)).output
    assert out == ("n", 2**70, 0.5, False, 900.0, client)
    assert out[5] is client


async def test_plain_inputs_of_another_type_are_still_converted_or_refused() -> None:
    out = (await Plain.run(name="n", count=1, ratio=1, flag=True, hold=5, client=Client())).output
    assert out[2] == 1.0  # an int where a float is declared
    assert type(out[2]) is float
    assert type(out[4]) is float
    with pytest.raises(InputValidationError) as caught:
        await Plain.run(name="n", count=True, ratio=0.5, flag=1, client=Client())
    assert {e.field for e in caught.value.errors} == {"count", "flag"}


def test_the_schema_of_inputs_named_by_an_iterator_lists_them_all() -> None:
    """``schema(fields)`` takes any iterable of names, a one-shot iterator too."""

    class Order(Saga):
        a: int
        b: str

        @step
        async def use(*, a: int, b: str) -> None:
            pass

    assert Order.__asaga__ is not None
    validator = Order.__asaga__.inputs
    listed = validator.schema(name for name in ["a", "b"])
    assert sorted(listed["properties"]) == ["a", "b"]
