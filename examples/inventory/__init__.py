"""The inventory example: a store, the seed's four sagas, and a demo.

Import from here: ``from examples.inventory import InventorySaga, MemoryInventoryStore``.
"""

from .replenishment import (
    DeliveryConfirmation,
    DeliveryMismatch,
    NothingToOrder,
    PurchaseOrder,
    ReplenishmentSaga,
    Supplier,
    SupplierOrder,
    delivery_key,
)
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
    "DeliveryConfirmation",
    "DeliveryMismatch",
    "InsufficientStock",
    "InventorySaga",
    "InventoryStore",
    "InventoryTransferSaga",
    "MemoryInventoryStore",
    "NothingToOrder",
    "Notifier",
    "OperationRequest",
    "Product",
    "PurchaseOrder",
    "RedisInventoryStore",
    "ReplenishmentSaga",
    "Supplier",
    "SupplierOrder",
    "Transaction",
    "UnknownProduct",
    "delivery_key",
]
