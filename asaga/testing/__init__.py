"""Helpers for testing code that runs sagas (docs/testing.md).

- :class:`EventRecorder`, a hook that keeps every event of a run, with assertions on
  them (``assert_compensated(["charge", "reserve"])``, ``attempts("charge")``);
- :func:`fail_step` and :func:`replace_step`, step doubles for the time of a ``with``
  block, without touching the saga class (and wherever the saga runs, composed or
  mapped in another);
- :func:`virtual_time` and :func:`run_virtual`, virtual time: backoffs, timeouts and
  timers pass at once, in order, on asyncio and trio. With pytest, the fixture
  ``virtual_clock`` (asaga's pytest plugin, :mod:`asaga.testing.pytest_plugin`) does it.

A resource (``Resource[T]``) is an input: a test passes a fake for it to ``run()``, as
it passes any other input. ::

    recorder = EventRecorder()
    with fail_step(Checkout, "charge", at=1, error=ConnectionError("down")):
        await Checkout.run(order_id="o-1", hooks=[recorder])
    assert recorder.attempts("charge") == 2
"""

from .._public import claim as _claim
from ._clock import VirtualClock, run_virtual, virtual_time
from ._doubles import fail_step, replace_step
from ._recorder import EventRecorder

__all__ = [
    "EventRecorder",
    "VirtualClock",
    "fail_step",
    "replace_step",
    "run_virtual",
    "virtual_time",
]

# Tracebacks and reprs say `asaga.testing.EventRecorder`, not its private module.
_claim(__name__, globals())
del _claim
