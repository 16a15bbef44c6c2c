"""Leases: time-limited, fenced locks for contended resources such as inventory.

::

    async with MemoryLockProvider().lease("inventory:sku-1", ttl=5.0, wait=10.0) as lease:
        ...  # lease.token is this grant's fencing token

``MemoryLockProvider`` is the embedded default; ``RedisLockProvider`` shares leases
between processes. See docs/locks.md.
"""

from typing import TYPE_CHECKING, Any

from .._public import claim as _claim
from ._lease import Lease as Lease
from ._lease import LeaseError as LeaseError
from ._lease import LeaseLost as LeaseLost
from ._lease import LeaseTimeout as LeaseTimeout
from ._lease import LeaseUnavailable as LeaseUnavailable
from ._lease import Lock as Lock
from ._lease import LockProvider as LockProvider
from ._lease import StaleWrite as StaleWrite
from ._memory import MemoryLockProvider as MemoryLockProvider

if TYPE_CHECKING:
    from ._redis import RedisLockProvider as RedisLockProvider

__all__ = [
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseTimeout",
    "LeaseUnavailable",
    "Lock",
    "LockProvider",
    "MemoryLockProvider",
    "RedisLockProvider",
    "StaleWrite",
]

# Tracebacks and reprs say `asaga.locks.LeaseLost`, not `asaga._exceptions.LeaseLost`.
_claim(__name__, globals())
del _claim


def __getattr__(name: str) -> Any:
    # Imported on first use, so that asaga works without the redis extra installed.
    if name == "RedisLockProvider":
        from ._redis import RedisLockProvider

        RedisLockProvider.__module__ = __name__
        return RedisLockProvider
    raise AttributeError(f"module 'asaga.locks' has no attribute {name!r}")
