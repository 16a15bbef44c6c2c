"""The inventory store: products, their transaction log, and reservations.

Two implementations with one interface (:class:`InventoryStore`):

- :class:`MemoryInventoryStore`: dicts in this process, the zero-infrastructure default;
- :class:`RedisInventoryStore`: products as hashes ``inv:{sku}:product`` (the ``{sku}``
  hash tag keeps a product's keys in one cluster slot), the log as a stream, and every
  multi-key change as one Lua script.

Two ways to change stock:

- **under a lease** (:meth:`InventoryStore.apply`): the caller holds the product's lease
  and writes deltas that the store refuses if the lease's fencing token is no longer the
  newest (a stale holder cannot write) or if a count would become invalid; the check and
  the write are one atomic step, which returns the product as the change left it;
- **atomically** (:meth:`InventoryStore.reserve` / ``release`` / ``commit``): one script
  checks and changes stock and appends the matching transaction log entry, keyed by a
  reservation id so that a retried call does nothing twice; a reservation expires unless
  committed, and :meth:`InventoryStore.reap` returns expired ones to stock (logging each
  release). No lease needed: the fast path.

Compensations use :meth:`InventoryStore.adjust`, an atomic delta that refuses to make any
count negative.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import anyio
import msgspec

from asaga.locks import Lease, LockProvider, MemoryLockProvider, StaleWrite

__all__ = [
    "InsufficientStock",
    "InventoryStore",
    "MemoryInventoryStore",
    "Product",
    "RedisInventoryStore",
    "Reservation",
    "Transaction",
    "UnknownProduct",
]

Operation = Literal["reserve", "release", "consume"]


class Product(msgspec.Struct, frozen=True, kw_only=True):
    """Stock of one product (at one location)."""

    sku: str
    inventory_count: int
    reserved_count: int = 0
    reorder_point: int = 0
    max_stock_level: int = 1_000_000

    @property
    def available(self) -> int:
        """Units that can still be reserved."""
        return self.inventory_count - self.reserved_count


class Transaction(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the append-only transaction log."""

    sku: str
    operation: str
    quantity: int
    run_id: str
    at: float = msgspec.field(default_factory=time.time)


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """An atomic-path reservation."""

    id: str
    sku: str
    quantity: int
    expires_at: float
    entry_id: str = ""
    """The id of its ``reserve`` entry in the transaction log."""


class UnknownProduct(LookupError):
    """No such product."""


class InsufficientStock(ValueError):
    """The operation would make a count negative (oversell)."""


def deltas(operation: Operation, quantity: int) -> tuple[int, int]:
    """(inventory delta, reserved delta) of an operation."""
    if operation == "reserve":
        return 0, quantity
    if operation == "release":
        return 0, -quantity
    return -quantity, -quantity  # consume: reserved units leave the warehouse


def check(product: Product, d_inventory: int, d_reserved: int) -> None:
    """Raise InsufficientStock unless the counts stay valid after the deltas."""
    inventory = product.inventory_count + d_inventory
    reserved = product.reserved_count + d_reserved
    if inventory < 0 or reserved < 0 or reserved > inventory:
        raise insufficient(
            product.sku, product.inventory_count, product.reserved_count, d_inventory, d_reserved
        )


def insufficient(
    sku: str, inventory: int, reserved: int, d_inventory: int, d_reserved: int
) -> InsufficientStock:
    """The error of a refused change, worded alike by every store."""
    return InsufficientStock(
        f"{sku}: inventory {inventory}, reserved {reserved}; "
        f"cannot apply ({d_inventory:+d}, {d_reserved:+d})"
    )


class InventoryStore(Protocol):
    """What the inventory sagas need of a store."""

    @property
    def locks(self) -> LockProvider:
        """The lock provider whose leases guard :meth:`apply`."""
        ...

    async def put(self, product: Product) -> None:
        """Create or replace a product (seeding)."""
        ...

    async def get(self, sku: str) -> Product:
        """The product; raises UnknownProduct."""
        ...

    async def apply(
        self, lease: Lease, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> Product:
        """Write deltas as the holder of ``lease`` (its ``key``, default its only key) and
        return the product as they left it. Refused, with nothing written: StaleWrite if a
        newer lease was granted; InsufficientStock if a count would become invalid (the
        check and the write are one atomic step); UnknownProduct."""
        ...

    async def adjust(self, sku: str, d_inventory: int, d_reserved: int) -> None:
        """Atomically add deltas; InsufficientStock if a count would go invalid."""
        ...

    async def log(self, entry: Transaction) -> str:
        """Append to the transaction log; returns the entry id."""
        ...

    async def unlog(self, entry_id: str) -> None:
        """Remove a log entry (compensation of a run that did not happen)."""
        ...

    async def transactions(self) -> list[Transaction]:
        """The whole log, oldest first."""
        ...

    async def request_replenishment(self, sku: str, quantity: int) -> str:
        """Queue a replenishment request; returns its id."""
        ...

    async def cancel_replenishment(self, request_id: str) -> None:
        """Withdraw a queued replenishment request."""
        ...

    async def replenishments(self) -> dict[str, tuple[str, int]]:
        """Queued requests: id -> (sku, quantity)."""
        ...

    async def save_purchase_order(self, order_id: str, data: dict[str, Any]) -> None:
        """Record a purchase order."""
        ...

    async def delete_purchase_order(self, order_id: str) -> None:
        """Remove a purchase order (compensation)."""
        ...

    async def purchase_orders(self) -> dict[str, dict[str, Any]]:
        """Recorded purchase orders by id."""
        ...

    async def reserve(self, reservation_id: str, sku: str, quantity: int, ttl: float) -> str:
        """Atomic path: reserve if available and log a ``reserve`` entry, in one step;
        returns the entry's id. Idempotent per id: a reservation that exists (pending or
        committed) changes nothing and returns its entry's id. UnknownProduct;
        InsufficientStock if fewer than ``quantity`` are available."""
        ...

    async def release(self, reservation_id: str) -> bool:
        """Atomic path: give a pending reservation back and log a ``release`` entry, in
        one step; False (and nothing logged) if it is unknown, released or committed."""
        ...

    async def commit(self, reservation_id: str) -> bool:
        """Atomic path: make a reservation permanent (no expiry); idempotent."""
        ...

    async def reap(self) -> int:
        """Return expired reservations to stock; how many were returned."""
        ...


class MemoryInventoryStore:
    """An :class:`InventoryStore` in this process's memory."""

    def __init__(self, locks: MemoryLockProvider | None = None) -> None:
        self.locks: MemoryLockProvider = locks or MemoryLockProvider()
        self._products: dict[str, Product] = {}
        self._log: dict[str, Transaction] = {}
        self._reservations: dict[str, Reservation] = {}
        self._committed: dict[str, Reservation] = {}
        self._requests: dict[str, tuple[str, int]] = {}
        self._orders: dict[str, dict[str, Any]] = {}
        self._ids = 0
        self.stale_writes = 0

    async def put(self, product: Product) -> None:
        self._products[product.sku] = product

    async def get(self, sku: str) -> Product:
        try:
            return self._products[sku]
        except KeyError:
            raise UnknownProduct(sku) from None

    async def apply(
        self, lease: Lease, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> Product:
        key = lease.key if key is None else key
        if not self.locks.is_current(lease, key):
            self.stale_writes += 1
            raise StaleWrite(f"stale lease on {key!r}", (key,))
        return self._add(sku, d_inventory, d_reserved)

    async def adjust(self, sku: str, d_inventory: int, d_reserved: int) -> None:
        self._add(sku, d_inventory, d_reserved)

    def _add(self, sku: str, d_inventory: int, d_reserved: int) -> Product:
        product = self._products.get(sku)
        if product is None:
            raise UnknownProduct(sku)
        check(product, d_inventory, d_reserved)
        product = msgspec.structs.replace(
            product,
            inventory_count=product.inventory_count + d_inventory,
            reserved_count=product.reserved_count + d_reserved,
        )
        self._products[sku] = product
        return product

    async def log(self, entry: Transaction) -> str:
        return self._append(entry)

    def _append(self, entry: Transaction) -> str:
        self._ids += 1
        entry_id = f"{self._ids}-0"
        self._log[entry_id] = entry
        return entry_id

    async def unlog(self, entry_id: str) -> None:
        self._log.pop(entry_id, None)

    async def transactions(self) -> list[Transaction]:
        return list(self._log.values())

    async def request_replenishment(self, sku: str, quantity: int) -> str:
        self._ids += 1
        request_id = f"rq-{self._ids}"
        self._requests[request_id] = (sku, quantity)
        return request_id

    async def cancel_replenishment(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    async def replenishments(self) -> dict[str, tuple[str, int]]:
        return dict(self._requests)

    async def save_purchase_order(self, order_id: str, data: dict[str, Any]) -> None:
        self._orders[order_id] = dict(data)

    async def delete_purchase_order(self, order_id: str) -> None:
        self._orders.pop(order_id, None)

    async def purchase_orders(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._orders.items()}

    # No await between a check and its writes below: each call is one atomic step, as the
    # Redis store's scripts are.

    async def reserve(self, reservation_id: str, sku: str, quantity: int, ttl: float) -> str:
        held = self._reservations.get(reservation_id) or self._committed.get(reservation_id)
        if held is not None:
            return held.entry_id
        self._add(sku, 0, quantity)
        entry_id = self._append(
            Transaction(sku=sku, operation="reserve", quantity=quantity, run_id=reservation_id)
        )
        self._reservations[reservation_id] = Reservation(
            id=reservation_id,
            sku=sku,
            quantity=quantity,
            expires_at=time.time() + ttl,
            entry_id=entry_id,
        )
        return entry_id

    async def release(self, reservation_id: str) -> bool:
        reservation = self._reservations.get(reservation_id)
        if reservation is None:
            return False
        self._add(reservation.sku, 0, -reservation.quantity)
        del self._reservations[reservation_id]
        self._append(
            Transaction(
                sku=reservation.sku,
                operation="release",
                quantity=reservation.quantity,
                run_id=reservation_id,
            )
        )
        return True

    async def commit(self, reservation_id: str) -> bool:
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:
            return reservation_id in self._committed
        self._committed[reservation_id] = reservation
        return True

    async def reap(self) -> int:
        now = time.time()
        expired = [r.id for r in self._reservations.values() if r.expires_at <= now]
        for reservation_id in expired:
            await self.release(reservation_id)
        return len(expired)


# -- Redis -------------------------------------------------------------------------------

_CHANGE = """
local function change(product, d_inv, d_res)
  local inv = tonumber(redis.call('hget', product, 'inventory_count'))
  if not inv then return redis.error_reply('UNKNOWN_PRODUCT') end
  local res = tonumber(redis.call('hget', product, 'reserved_count') or '0')
  local new_inv, new_res = inv + d_inv, res + d_res
  if new_inv < 0 or new_res < 0 or new_res > new_inv then
    return redis.error_reply(
      string.format('INSUFFICIENT_STOCK %d %d %d %d', inv, res, d_inv, d_res))
  end
  redis.call('hset', product, 'inventory_count', new_inv, 'reserved_count', new_res)
end
"""
"""Every script that changes counts: add deltas to a product, or return the error reply
that refuses them (nothing written). ``INSUFFICIENT_STOCK`` carries the counts it saw and
the deltas, for :func:`insufficient`'s message."""

# KEYS: product hash ; ARGV: d_inventory, d_reserved
_ADJUST = (
    _CHANGE
    + """
local refused = change(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if refused then return refused end
return 1
"""
)

# KEYS: product hash, fence key, stale counter ; ARGV: d_inventory, d_reserved, token
# Returns the product hash after the write (HGETALL's flat list).
_APPLY = (
    _CHANGE
    + """
local newest = tonumber(redis.call('get', KEYS[2]) or '0')
if tonumber(ARGV[3]) < newest then
  redis.call('incr', KEYS[3])
  return redis.error_reply('STALE_WRITE')
end
local refused = change(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if refused then return refused end
return redis.call('hgetall', KEYS[1])
"""
)

# KEYS: product hash, reservation hash, expiry zset, reservation index, log stream
# ARGV: id, sku, quantity, expires_at, the reserve log entry (JSON)
# A reservation is stored as "<quantity> <log entry id>". Returns the log entry id.
_RESERVE = (
    _CHANGE
    + """
local held = redis.call('hget', KEYS[2], ARGV[1])
if held then return string.match(held, '^%S+ (%S+)$') or '' end
local refused = change(KEYS[1], 0, tonumber(ARGV[3]))
if refused then return refused end
local entry = redis.call('xadd', KEYS[5], '*', 'entry', ARGV[5])
redis.call('hset', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. entry)
redis.call('zadd', KEYS[3], ARGV[4], ARGV[1])
redis.call('hset', KEYS[4], ARGV[1], ARGV[2])
return entry
"""
)

# KEYS: product hash, reservation hash, expiry zset, reservation index, log stream
# ARGV: id, sku, time of the release ; 1 if released, 0 if unknown or committed
_RELEASE = (
    _CHANGE
    + """
local held = redis.call('hget', KEYS[2], ARGV[1])
if not held or not redis.call('zscore', KEYS[3], ARGV[1]) then return 0 end
local qty = tonumber(string.match(held, '^%S+'))
local refused = change(KEYS[1], 0, -qty)
if refused then return refused end
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
redis.call('hdel', KEYS[4], ARGV[1])
local entry = {sku = ARGV[2], operation = 'release', quantity = qty, run_id = ARGV[1],
  at = tonumber(ARGV[3])}
redis.call('xadd', KEYS[5], '*', 'entry', cjson.encode(entry))
return 1
"""
)

# KEYS: reservation hash, expiry zset ; ARGV: id
_COMMIT = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('zrem', KEYS[2], ARGV[1])
return 1
"""


class RedisInventoryStore:
    """An :class:`InventoryStore` in Redis. ``locks`` must be the provider whose leases
    guard :meth:`apply` (its fenced writes check their tokens)."""

    def __init__(self, client: Any, locks: Any, *, prefix: str = "inv:") -> None:
        self.client = client
        self.locks = locks
        self.prefix = prefix
        self._adjust = client.register_script(_ADJUST)
        self._apply = client.register_script(_APPLY)
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self._commit = client.register_script(_COMMIT)

    def product_key(self, sku: str) -> str:
        return f"{self.prefix}{{{sku}}}:product"

    def _reservations_key(self, sku: str) -> str:
        return f"{self.prefix}{{{sku}}}:reservations"

    def _expiry_key(self, sku: str) -> str:
        return f"{self.prefix}{{{sku}}}:expiry"

    @property
    def _log_key(self) -> str:
        return f"{self.prefix}log"

    @property
    def _index_key(self) -> str:
        return f"{self.prefix}reservation-index"

    async def put(self, product: Product) -> None:
        await self.client.hset(
            self.product_key(product.sku),
            mapping={
                "inventory_count": product.inventory_count,
                "reserved_count": product.reserved_count,
                "reorder_point": product.reorder_point,
                "max_stock_level": product.max_stock_level,
            },
        )
        await self.client.sadd(f"{self.prefix}skus", product.sku)

    async def get(self, sku: str) -> Product:
        raw = await self.client.hgetall(self.product_key(sku))
        if not raw:
            raise UnknownProduct(sku)
        return _product(sku, raw.items())

    async def apply(
        self, lease: Lease, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> Product:
        # One script: the fence check, the count check and the write cannot be separated,
        # so neither a stale holder nor a concurrent compensation can oversell.
        key = lease.key if key is None else key
        keys = [self.product_key(sku), self.locks.fence_key(key), self.locks.stale_key(key)]
        # Shielded (and bounded): a holder cancelled mid-write still learns whether the
        # write was applied, so its saga step neither loses nor double-counts it.
        with anyio.CancelScope(shield=True), anyio.fail_after(10.0):
            flat = await self._scripted(
                self._apply, keys, [d_inventory, d_reserved, lease.tokens[key]], sku
            )
        return _product(sku, zip(flat[::2], flat[1::2], strict=True))

    async def request_replenishment(self, sku: str, quantity: int) -> str:
        request_id = _text(await self.client.incr(f"{self.prefix}ids"))
        await self.client.hset(
            f"{self.prefix}replenishments", f"rq-{request_id}", f"{sku}:{quantity}"
        )
        return f"rq-{request_id}"

    async def cancel_replenishment(self, request_id: str) -> None:
        await self.client.hdel(f"{self.prefix}replenishments", request_id)

    async def replenishments(self) -> dict[str, tuple[str, int]]:
        raw = await self.client.hgetall(f"{self.prefix}replenishments")
        out = {}
        for k, v in raw.items():
            sku, _, quantity = _text(v).rpartition(":")
            out[_text(k)] = (sku, int(quantity))
        return out

    async def save_purchase_order(self, order_id: str, data: dict[str, Any]) -> None:
        await self.client.hset(f"{self.prefix}purchase-orders", order_id, msgspec.json.encode(data))

    async def delete_purchase_order(self, order_id: str) -> None:
        await self.client.hdel(f"{self.prefix}purchase-orders", order_id)

    async def purchase_orders(self) -> dict[str, dict[str, Any]]:
        raw = await self.client.hgetall(f"{self.prefix}purchase-orders")
        return {_text(k): msgspec.json.decode(v) for k, v in raw.items()}

    async def adjust(self, sku: str, d_inventory: int, d_reserved: int) -> None:
        await self._scripted(self._adjust, [self.product_key(sku)], [d_inventory, d_reserved], sku)

    async def log(self, entry: Transaction) -> str:
        entry_id = await self.client.xadd(self._log_key, {"entry": msgspec.json.encode(entry)})
        return _text(entry_id)

    async def unlog(self, entry_id: str) -> None:
        await self.client.xdel(self._log_key, entry_id)

    async def transactions(self) -> list[Transaction]:
        rows = await self.client.xrange(self._log_key)
        return [msgspec.json.decode(fields[b"entry"], type=Transaction) for _, fields in rows]

    async def reserve(self, reservation_id: str, sku: str, quantity: int, ttl: float) -> str:
        entry = Transaction(sku=sku, operation="reserve", quantity=quantity, run_id=reservation_id)
        args = [reservation_id, sku, quantity, entry.at + ttl, msgspec.json.encode(entry)]
        return _text(await self._scripted(self._reserve, self._atomic_keys(sku), args, sku))

    async def release(self, reservation_id: str) -> bool:
        sku = await self._sku_of(reservation_id)
        if sku is None:
            return False
        return await self._release_in(sku, reservation_id)

    async def _release_in(self, sku: str, reservation_id: str) -> bool:
        args = [reservation_id, sku, time.time()]
        return bool(await self._scripted(self._release, self._atomic_keys(sku), args, sku))

    def _atomic_keys(self, sku: str) -> list[str]:
        """The keys of the reserve and release scripts."""
        return [
            self.product_key(sku),
            self._reservations_key(sku),
            self._expiry_key(sku),
            self._index_key,
            self._log_key,
        ]

    async def commit(self, reservation_id: str) -> bool:
        sku = await self._sku_of(reservation_id)
        if sku is None:
            return False
        keys = [self._reservations_key(sku), self._expiry_key(sku)]
        return bool(await self._commit(keys=keys, args=[reservation_id]))

    async def reap(self) -> int:
        returned = 0
        now = time.time()
        for sku in await self.client.smembers(f"{self.prefix}skus"):
            sku = _text(sku)
            expired = await self.client.zrangebyscore(self._expiry_key(sku), "-inf", now)
            for reservation_id in expired:
                returned += await self._release_in(sku, _text(reservation_id))
        return returned

    async def _sku_of(self, reservation_id: str) -> str | None:
        sku = await self.client.hget(self._index_key, reservation_id)
        return None if sku is None else _text(sku)

    async def _scripted(
        self, script: Any, keys: Sequence[str], args: Sequence[Any], sku: str
    ) -> Any:
        from redis.exceptions import ResponseError

        try:
            return await script(keys=list(keys), args=list(args))
        except ResponseError as exc:
            if "UNKNOWN_PRODUCT" in str(exc):
                raise UnknownProduct(sku) from None
            if "INSUFFICIENT_STOCK" in str(exc):
                counts = str(exc).split("INSUFFICIENT_STOCK ", 1)[1].split()[:4]
                inventory, reserved, d_inventory, d_reserved = map(int, counts)
                raise insufficient(sku, inventory, reserved, d_inventory, d_reserved) from None
            if "STALE_WRITE" in str(exc):
                raise StaleWrite(
                    f"stale lease on {sku!r}: a newer one was granted", (sku,)
                ) from None
            raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _product(sku: str, fields: Iterable[tuple[Any, Any]]) -> Product:
    """A product from its hash's fields and values (as Redis returns them)."""
    return Product(sku=sku, **{_text(k): int(v) for k, v in fields})
