"""Virtual time: the backoffs, timeouts and timers of a test pass at once, in order.

Time only moves when every task waits for it: then the clock jumps to the next deadline
(the next timer, backoff or timeout) and the task it wakes runs. A run that would wait
ten minutes of backoffs ends at once, having waited exactly ten virtual minutes; two
timers fire in the order of their deadlines, never by the luck of the scheduler.

- **trio** has it: ``trio.testing.MockClock`` with ``autojump_threshold=0``, given when
  the run starts (``run_virtual`` and the pytest fixture give it).
- **asyncio**: the running loop's ``time()`` is replaced by a virtual clock, and its
  selector's ``select(timeout)`` polls instead of sleeping; when nothing is ready, the
  clock moves by ``timeout``, to the next scheduled callback (what aiotools'
  ``VirtualClock`` does). asyncio's own loop only (the selector loop; uvloop has none).
- **the wall clock asaga reads**: durable timers and event deadlines are epoch seconds
  (``time.time()``): a parked run's record keeps them, and ``recover()`` compares them
  with the time. While virtual time is on, the modules of asaga see a ``time`` module
  whose ``time()`` and ``monotonic()`` move with the virtual clock (the real ones when it
  started, plus the virtual seconds elapsed); the rest of ``time`` is the real one.

What virtual time cannot make instant is real I/O: a task waiting for a socket or a
thread looks idle, so the clock jumps and timeouts around that wait fire at once. Use
fakes (in-memory stores and locks), or give ``autojump_threshold`` real seconds to wait
before each jump.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time as _time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, ClassVar, TypeVar, TypeVarTuple

import anyio

from .._public import NoPublicConstructor

__all__ = ["VirtualClock", "run_virtual", "virtual_time"]

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")

_active: list[VirtualClock] = []  # the clock that is on (at most one at a time)


class VirtualClock(metaclass=NoPublicConstructor):
    """The virtual time of the running event loop, while it is on."""

    _created_by: ClassVar[str] = (
        "`with virtual_time() as clock:`, run_virtual() or the `virtual_clock` fixture"
    )

    __slots__ = ("_monotonic", "_now", "_start", "_wall")

    def __init__(self, now: Callable[[], float], on: VirtualClock | None = None) -> None:
        self._now = now
        self._start = now()
        if on is None:  # virtual time starts: from the real clocks, on whole seconds
            self._wall = float(math.ceil(_time.time()))
            self._monotonic = float(math.ceil(_time.monotonic()))
        else:  # a clock starting now on the one that is on
            self._wall = on.time()
            self._monotonic = on.monotonic()

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the clock started. Jumps land exactly on deadlines, and
        the loop's clock starts on a whole second: whole-second waits add up exactly."""
        return self._now() - self._start

    def time(self) -> float:
        """The wall clock (epoch seconds) as asaga reads it: the real time when the clock
        started (rounded up to a whole second), plus :attr:`elapsed`."""
        return self._wall + self.elapsed

    def monotonic(self) -> float:
        """``time.monotonic()`` as asaga reads it (durations in events)."""
        return self._monotonic + self.elapsed


@contextmanager
def virtual_time(*, autojump_threshold: float = 0.0) -> Iterator[VirtualClock]:
    """Turn virtual time on, in the running event loop, for the ``with`` block::

        with virtual_time() as clock:
            await Checkout.run(order_id="o-1")  # backoffs of minutes, at once
        print(clock.elapsed)

    Use it in an async function (an async test). On trio, the run must have been started
    with a ``trio.testing.MockClock`` (``run_virtual(..., backend="trio")`` and the
    pytest fixture ``virtual_clock`` do): it is set to jump, and set back afterwards.
    ``autojump_threshold``: real seconds every task must have been waiting before the
    clock jumps (default 0: at once).

    Inside virtual time already (a test with the fixture, ``run_virtual``), it gives a
    clock of the same time, whose :attr:`~VirtualClock.elapsed` counts from the block.
    """
    if (
        isinstance(autojump_threshold, bool)
        or not isinstance(autojump_threshold, int | float)
        or not 0 <= autojump_threshold < math.inf
    ):
        raise ValueError(f"autojump_threshold={autojump_threshold!r}: give real seconds >= 0")
    if _active:  # in a test with the fixture, in run_virtual(): the same time goes on
        yield VirtualClock._create(_active[0]._now, _active[0])
        return
    if _in_trio():
        now, restore = _trio_time(float(autojump_threshold))
    else:
        now, restore = _asyncio_time(float(autojump_threshold))
    try:
        clock = VirtualClock._create(now)
        modules = _patch_asaga_time(_AsagaTime(clock))
    except BaseException:
        restore()
        raise
    _active.append(clock)
    try:
        yield clock
    finally:
        _active.clear()
        for module in modules:
            module.time = _time  # type: ignore[attr-defined]  # the module's own global
        restore()


def run_virtual(
    func: Callable[[*PosArgsT], Awaitable[T]],
    *args: *PosArgsT,
    backend: str = "asyncio",
    backend_options: dict[str, Any] | None = None,
    autojump_threshold: float = 0.0,
) -> T:
    """``anyio.run(func, *args, backend=...)`` in virtual time: what a script or a test
    without pytest calls. On trio, the run gets a ``MockClock`` (unless
    ``backend_options`` gives a clock)."""
    options = dict(backend_options or {})
    if backend == "trio" and "clock" not in options:
        options["clock"] = mock_clock()

    async def main() -> T:
        with virtual_time(autojump_threshold=autojump_threshold):
            return await func(*args)

    return anyio.run(main, backend=backend, backend_options=options)


def mock_clock(*, rate: float = 0.0) -> object:
    """A ``trio.testing.MockClock`` for a trio run to start with (``rate=1.0``: it keeps
    real time until :func:`virtual_time` makes it jump)."""
    from trio.testing import MockClock

    return MockClock(rate=rate)


# -- the backends ---------------------------------------------------------------------


def _in_trio() -> bool:
    if "trio" not in sys.modules:
        return False
    import trio

    return trio.lowlevel.in_trio_run()


def _trio_time(threshold: float) -> tuple[Callable[[], float], Callable[[], None]]:
    """The run's MockClock made to jump (``rate`` 0: only jumps move it)."""
    import trio
    from trio.testing import MockClock

    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, MockClock):
        raise RuntimeError(
            f"virtual time on trio needs the run to start with a trio.testing.MockClock "
            f"(this one has {type(clock).__name__}): use run_virtual(..., backend='trio'), "
            "the pytest fixture `virtual_clock` (with a function-scoped anyio_backend "
            "fixture), or anyio.run(..., backend_options={'clock': MockClock()})"
        )
    rate, jump = clock.rate, clock.autojump_threshold
    clock.rate = 0.0
    clock.jump(math.ceil(clock.current_time()) - clock.current_time())

    def restore() -> None:
        clock.autojump_threshold = jump
        clock.rate = rate

    clock.autojump_threshold = threshold
    return clock.current_time, restore


def _asyncio_time(threshold: float) -> tuple[Callable[[], float], Callable[[], None]]:
    """The running loop on a virtual clock."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "virtual_time() turns virtual time on in the running event loop: use it in an "
            "async function, or start one with run_virtual(...)"
        ) from None
    selector = getattr(loop, "_selector", None)
    if selector is None or not callable(getattr(selector, "select", None)):
        raise RuntimeError(
            f"virtual time on asyncio drives asyncio's own event loop through its "
            f"selector; {type(loop).__name__} has none (uvloop?)"
        )
    clock = _LoopClock(loop, selector, threshold)
    return clock.time, clock.restore


class _LoopClock:
    """An asyncio loop's virtual clock: ``loop.time()`` reads it, and the selector moves
    it to the next deadline when nothing is ready (the loop asks ``select`` to wait for
    just as long as there is until its next scheduled callback)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, selector: Any, threshold: float) -> None:
        self._loop = loop
        self._selector = selector
        self._select: Callable[[float | None], Any] = selector.select
        self._threshold = threshold
        self._now = float(math.ceil(loop.time()))
        loop.time = self.time  # type: ignore[method-assign]  # the instance's, removed after
        selector.select = self.select

    def time(self) -> float:
        return self._now

    def select(self, timeout: float | None = None) -> Any:
        if timeout is None or timeout <= 0:  # something is ready, or nothing is scheduled
            return self._select(timeout)
        events = self._select(min(timeout, self._threshold))
        if not events:  # every task waits: time jumps to the next scheduled callback
            self._now += timeout
        return events

    def restore(self) -> None:
        del self._loop.time  # the class's method again
        del self._selector.select


class _AsagaTime:
    """The ``time`` module as asaga's modules see it while virtual time is on."""

    def __init__(self, clock: VirtualClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def time_ns(self) -> int:
        return int(self._clock.time() * 1e9)

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def monotonic_ns(self) -> int:
        return int(self._clock.monotonic() * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def _patch_asaga_time(shim: _AsagaTime) -> list[ModuleType]:
    """Give every loaded module of asaga (but this package) ``shim`` as its ``time``."""
    patched = []
    for name, module in list(sys.modules.items()):
        if not (name == "asaga" or name.startswith("asaga.")) or name.startswith("asaga.testing"):
            continue
        if module is not None and vars(module).get("time") is _time:
            module.time = shim  # type: ignore[attr-defined]
            patched.append(module)
    return patched
