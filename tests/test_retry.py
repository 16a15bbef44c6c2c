"""Retry policy: the delay function and argument checks (pure, no event loop), then the
waits of a run between attempts (in virtual time: asaga.testing)."""

import pytest

from asaga import Retry, Saga, SagaFailed, step
from asaga.testing import EventRecorder, VirtualClock, fail_step


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("exponential", [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]),
        ("linear", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        ("fixed", [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ],
)
def test_delay_formulas(backoff: str, expected: list[float]) -> None:
    """exponential = base*2^(n-1), linear = base*n, fixed = base; all capped by max_delay."""
    policy = Retry(backoff=backoff, base_delay=0.1, max_delay=1.0)  # type: ignore[arg-type]
    assert [policy.delay(n) for n in range(1, 7)] == pytest.approx(expected)


def test_exponential_never_overflows() -> None:
    """A huge attempt number gives the cap, not an OverflowError."""
    assert Retry(base_delay=1.0, max_delay=5.0).delay(10_000) == 5.0


def test_full_jitter_stays_within_bounds() -> None:
    """With jitter the delay is drawn from [0, capped delay] and is not constant."""
    policy = Retry(backoff="fixed", base_delay=1.0, jitter=True)
    draws = [policy.delay(1) for _ in range(200)]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert len(set(draws)) > 1


def test_delay_is_one_based() -> None:
    """Attempt numbers start at 1."""
    with pytest.raises(ValueError, match="1-based"):
        Retry().delay(0)


def test_should_retry_honours_attempts_and_types() -> None:
    """Retry only exceptions in retry_on, and only while attempts remain."""
    policy = Retry(max_attempts=3, retry_on=(ConnectionError,))
    assert policy.should_retry(1, ConnectionError())
    assert policy.should_retry(2, ConnectionRefusedError())
    assert not policy.should_retry(3, ConnectionError())
    assert not policy.should_retry(1, ValueError())


def test_default_retry_on_is_exception() -> None:
    """The default retry_on is (Exception,)."""
    assert Retry().retry_on == (Exception,)


def test_single_exception_type_is_accepted() -> None:
    """retry_on=SomeError (a common slip) means (SomeError,)."""
    assert Retry(retry_on=KeyError).retry_on == (KeyError,)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_attempts": 1.5}, "max_attempts must be an int"),
        ({"backoff": "quadratic"}, "backoff must be one of"),
        ({"base_delay": -1}, "base_delay must be a finite number >= 0"),
        ({"max_delay": float("inf")}, "max_delay must be a finite number >= 0"),
        ({"retry_on": ("nope",)}, "retry_on must be a tuple of exception types"),
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, object], message: str) -> None:
    """A malformed policy fails where it is written, with a message naming the field."""
    with pytest.raises(ValueError, match=message):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_retry_is_frozen() -> None:
    """Policies are values: they cannot be mutated after creation."""
    policy = Retry()
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]


# -- what a run waits ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("backoff", "waits"),
    [("exponential", [1, 2, 4]), ("linear", [1, 2, 3]), ("fixed", [1, 1, 1])],
)
async def test_a_run_waits_the_delays(
    backoff: str, waits: list[int], virtual_clock: VirtualClock
) -> None:
    """Attempts 1 to 3 fail: the run waits the policy's delays between them, exactly,
    and attempt 4 succeeds."""

    class Flaky(Saga):
        @step(retry=Retry(max_attempts=4, backoff=backoff, base_delay=1))  # type: ignore[arg-type]
        async def call() -> str:
            return "ok"

    recorder = EventRecorder()
    with fail_step(Flaky, "call", at={1, 2, 3}, error=ConnectionError("down")):
        result = await Flaky.run(hooks=[recorder])
    assert result.output == "ok"
    assert [e.delay for e in recorder.of("step_retrying")] == waits  # type: ignore[union-attr]
    assert virtual_clock.elapsed == sum(waits)
    assert recorder.attempts("call") == 4


@pytest.mark.anyio
async def test_an_error_not_retried_fails_at_once(virtual_clock: VirtualClock) -> None:
    """An error outside ``retry_on`` fails the step at its first attempt, with no wait."""

    class Picky(Saga):
        @step(retry=Retry(max_attempts=5, base_delay=10, retry_on=(ConnectionError,)))
        async def call() -> str:
            return "ok"

    recorder = EventRecorder()
    with fail_step(Picky, "call", error=ValueError("bad request")), pytest.raises(SagaFailed):
        await Picky.run(hooks=[recorder])
    assert recorder.attempts("call") == 1
    assert virtual_clock.elapsed == 0
