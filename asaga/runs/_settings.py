"""What every run store is configured with, checked once: its owner identity, how long it
keeps finished runs and idempotency keys, and the largest record it accepts."""

from __future__ import annotations

import time

__all__ = ["StoreSettings"]


class StoreSettings:
    """The settings shared by :class:`~asaga.runs.MemoryRunStore` and
    :class:`~asaga.runs.RedisRunStore` (a base class; not used on its own)."""

    def __init__(
        self, owner: str, *, retention: float, idempotency_window: float, max_record_bytes: int
    ) -> None:
        if not retention > 0 or not idempotency_window > 0:
            raise ValueError("retention and idempotency_window must be > 0 seconds")
        if idempotency_window > retention:
            raise ValueError(
                f"idempotency_window ({idempotency_window:g} s) must not outlast retention "
                f"({retention:g} s): a key would name a run whose record is gone"
            )
        if max_record_bytes < 1024:
            raise ValueError("max_record_bytes must be at least 1024")
        self._owner = owner
        self._window = idempotency_window
        self._max = max_record_bytes
        self.retention = retention
        """Seconds a finished run's record is kept."""

    @property
    def owner(self) -> str:
        """This store's identity as the owner of its runs (one per store object)."""
        return self._owner

    @property
    def max_record_bytes(self) -> int:
        """The largest encoded record accepted (``RecordTooLarge`` beyond)."""
        return self._max

    @property
    def idempotency_window(self) -> float:
        """Seconds an idempotency key keeps naming its run."""
        return self._window

    def mail_keep(self, until: float | None) -> float:
        """Seconds an event key's binding to a parked run is kept: as long as the run's
        record (``retention`` past its deadline, twice that without one), and at least
        the idempotency window."""
        left = (until - time.time()) if until is not None else self.retention
        return max(self._window, max(left, 0.0) + self.retention)
