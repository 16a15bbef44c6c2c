"""asaga's pytest plugin (registered as ``asaga`` in the ``pytest11`` entry points, so
that installing asaga is enough): the ``virtual_clock`` fixture.

An async test (anyio's plugin runs it) that takes ``virtual_clock`` runs in virtual time
(see :func:`asaga.testing.virtual_time`) from the fixture's setup to its teardown::

    @pytest.mark.anyio
    async def test_backoff(virtual_clock: VirtualClock) -> None:
        await Checkout.run(order_id="o-1")  # retries with minutes of backoff, at once
        assert virtual_clock.elapsed == 70

On trio, virtual time needs the run to start with a ``trio.testing.MockClock``: for a
test that takes the fixture, the plugin adds one to the backend options of the
``anyio_backend`` fixture (it runs as a real clock until the fixture makes it jump). An
``anyio_backend`` fixture of a wider scope than the test may have been set up without
it: the fixture then says so.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest

from ._clock import VirtualClock, mock_clock, virtual_time

_FIXTURE = "virtual_clock"


@pytest.fixture
async def virtual_clock(anyio_backend: object) -> AsyncIterator[VirtualClock]:
    """Virtual time for the test: backoffs, step and compensation timeouts, asaga's
    timers and event deadlines pass at once, in order, on asyncio and trio. The clock
    tells the virtual seconds elapsed (``virtual_clock.elapsed``)."""
    with virtual_time() as clock:
        yield clock


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    """For a test that takes ``virtual_clock``: its ``anyio_backend`` on trio gets a
    ``MockClock`` (the value of the fixture, wrapped as anyio's plugin wraps fixtures)."""
    func = fixturedef.func
    if (
        fixturedef.argname != "anyio_backend"
        or _FIXTURE not in request.fixturenames
        or inspect.isgeneratorfunction(func)
    ):
        return (yield)

    def with_mock_clock(**kwargs: Any) -> object:
        call: Any = func
        instance = getattr(request, "instance", None)
        if (
            instance is not None
            and inspect.ismethod(func)
            and type(func.__self__) is type(instance)
        ):
            call = func.__func__.__get__(instance)  # a fixture defined in a test class
        return _on_mock_clock(call(**kwargs))

    # The way anyio's plugin runs async fixtures: pytest calls whatever `func` is now.
    fixturedef.func = with_mock_clock  # type: ignore[misc]  # Final to pytest's users
    try:
        return (yield)
    finally:
        fixturedef.func = func  # type: ignore[misc]  # (as above)


def _on_mock_clock(backend: object) -> object:
    """``anyio_backend``'s value, with a real-time ``MockClock`` if it is trio's without
    a clock."""
    if backend == "trio":
        options: dict[str, Any] = {}
    elif (
        isinstance(backend, tuple)
        and len(backend) == 2
        and backend[0] == "trio"
        and isinstance(backend[1], dict)
    ):
        options = backend[1]
    else:
        return backend
    if "clock" in options:
        return backend
    return ("trio", {**options, "clock": mock_clock(rate=1.0)})
