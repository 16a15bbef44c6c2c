"""The inventory example: a store, the seed's four sagas, and a demo.

Import from here: ``from examples.inventory import InventorySaga, MemoryInventoryStore``.
"""

from .sagas import (
    AtomicReservationSaga,
    BulkInventorySaga,
    Change,
    InventorySaga,
    InventoryTransferSaga,
    Notifier,
    OperationRequest,
)
from .store import (
    InsufficientStock,
    InventoryStore,
    MemoryInventoryStore,
    Product,
    RedisInventoryStore,
    Transaction,
    UnknownProduct,
)

__all__ = [
    "AtomicReservationSaga",
    "BulkInventorySaga",
    "Change",
    "InsufficientStock",
    "InventorySaga",
    "InventoryStore",
    "InventoryTransferSaga",
    "MemoryInventoryStore",
    "Notifier",
    "OperationRequest",
    "Product",
    "RedisInventoryStore",
    "Transaction",
    "UnknownProduct",
]
