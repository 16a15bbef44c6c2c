"""Retry policy: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Backoff", "Retry"]

Backoff = Literal["exponential", "linear", "fixed"]

_BACKOFFS: tuple[Backoff, ...] = ("exponential", "linear", "fixed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """A frozen retry policy for a step or a compensation.

    ``max_attempts`` counts the first attempt (``max_attempts=1`` means no retry). Between
    attempt *n* and *n + 1* the step waits :meth:`delay` (*n*) seconds without blocking any
    other branch. Only exceptions that are instances of ``retry_on`` are retried; anything
    else fails the step at once.

    >>> Retry(max_attempts=4, backoff="exponential", base_delay=0.1, max_delay=0.3).delay(3)
    0.3
    """

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    base_delay: float = 0.1
    max_delay: float = 30.0
    jitter: bool = False
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            problems.append(f"max_attempts must be an int, got {self.max_attempts!r}")
        elif self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff not in _BACKOFFS:
            problems.append(f"backoff must be one of {_BACKOFFS}, got {self.backoff!r}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{name} must be a number, got {value!r}")
            elif not math.isfinite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        retry_on: object = self.retry_on
        if isinstance(retry_on, type):  # a lone exception type is a common slip; accept it
            object.__setattr__(self, "retry_on", (retry_on,))
            retry_on = (retry_on,)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in retry_on
        ):
            problems.append(f"retry_on must be a tuple of exception types, got {retry_on!r}")
        if problems:
            raise ValueError("invalid Retry: " + "; ".join(problems))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        exponential: ``base_delay * 2 ** (attempt - 1)``; linear: ``base_delay * attempt``;
        fixed: ``base_delay``. Each is capped by ``max_delay``. With ``jitter=True`` the
        result is drawn uniformly from ``[0, capped delay]`` ("full jitter"), which spreads
        retries of many concurrent runs apart.
        """
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        if self.backoff == "exponential":
            # Cap the exponent so huge attempt numbers never overflow a float.
            raw = self.base_delay * 2.0 ** min(attempt - 1, 1000)
        elif self.backoff == "linear":
            raw = self.base_delay * attempt
        else:
            raw = self.base_delay
        capped = min(raw, self.max_delay)
        if self.jitter:
            return random.uniform(0.0, capped)  # jitter, not cryptography
        return capped

    def should_retry(self, attempt: int, exc: BaseException) -> bool:
        """Whether failed attempt ``attempt`` raising ``exc`` earns another attempt."""
        if attempt >= self.max_attempts:
            return False
        if isinstance(exc, self.retry_on):
            return True
        # A failure on a worker (RemoteStepFailed) names the classes of what it raised.
        raised: tuple[str, ...] = getattr(exc, "remote_types", ())
        return bool(raised) and any(_qualified(t) in raised for t in self.retry_on)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


NO_RETRY = Retry(max_attempts=1)
"""The policy of a step with no ``retry=`` in a saga with no ``retry_defaults``."""
