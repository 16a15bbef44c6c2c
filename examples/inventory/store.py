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
count negative. Keyed (``adjust(..., key=...)``), it is applied at most once per product
and key: a compensation runs at least once (a durable run's recovery runs again one that
was cut off), and a second call with the same key changes nothing. The store remembers a
key for ``retention`` seconds, as it remembers a committed reservation.

Arguments are checked before anything is written: the stores' methods raise ValueError
for a quantity, delta, hold time or id out of bounds (:data:`MAX_QUANTITY`,
:data:`MAX_HOLD_SECONDS`, :data:`MAX_ID_LENGTH`), and every Lua script checks all its
arguments again before its first write (a script that fails half-way keeps what it wrote:
Redis does not roll scripts back). One reservation id names one reservation: reusing it
for another product or quantity raises :class:`ReservationConflict`.

Everything the Redis store writes is bounded: the log stream is trimmed to about
``log_max_entries``; a pending reservation holds at least one unit (so there are at most as
many as units in stock) and is returned by the reaper once expired; a committed one is
forgotten ``retention`` seconds after its commit; the mark of a keyed ``adjust`` expires
(a Redis TTL) ``retention`` seconds after it was applied.
"""

from __future__ import annotations

import asyncio
import copy
import math
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

import anyio
import msgspec

from asaga.locks import Lease, LockProvider, MemoryLockProvider, StaleWrite

__all__ = [
    "LEASE_PREFIX",
    "MAX_BUCKETS",
    "MAX_GROUP",
    "MAX_HOLD_SECONDS",
    "MAX_ID_LENGTH",
    "MAX_QUANTITY",
    "AdjustmentConflict",
    "InsufficientStock",
    "InventoryStore",
    "MemoryInventoryStore",
    "Product",
    "RedisInventoryStore",
    "Reservation",
    "ReservationConflict",
    "Transaction",
    "UnknownProduct",
]

Operation = Literal["reserve", "release", "consume"]

MAX_QUANTITY = 1_000_000_000
"""The largest quantity of a reservation and the largest delta (either sign) of a change:
counts stay exact in Lua's numbers (doubles)."""

MAX_HOLD_SECONDS = 86_400.0
"""The longest hold of an atomic-path reservation (a day); the shortest is above 0."""

MAX_ID_LENGTH = 1024
"""The longest reservation id and SKU, in bytes (UTF-8); the shortest is 1. (What the
sagas accept, at most 129 characters, fits.)"""

MAX_RETENTION = 366 * 86_400.0
"""The longest ``retention`` of committed reservations (a year)."""

MAX_LOG_ENTRIES = 1_000_000_000
"""The largest ``log_max_entries``."""

LEASE_PREFIX = "inventory:"
"""A product's lease key is this prefix and its SKU (the sagas' ``Lock("inventory:...")``).
On Redis Cluster it is the hash tag of the product's keys, so that the script of
:meth:`RedisInventoryStore.apply` (the product and the lease's fence key) touches one slot."""


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

    available: int | None = None
    """The units available when the change was refused, where the store knows them."""


class ReservationConflict(ValueError):
    """A reservation id already names another reservation (of another product, or of
    another quantity): refused, nothing written. The same id, product and quantity again
    is a retry, not a conflict.

    ``held_quantity`` is None when the id holds another product (on Redis, that
    reservation's quantity lives under the other product's keys)."""

    def __init__(
        self, reservation_id: str, held_sku: str, held_quantity: int | None, sku: str, quantity: int
    ) -> None:
        self.reservation_id = reservation_id
        self.held_sku = held_sku
        self.held_quantity = held_quantity
        self.sku = sku
        self.quantity = quantity
        held = held_sku if held_quantity is None else f"{held_quantity} x {held_sku}"
        super().__init__(
            f"reservation id {reservation_id!r} already reserves {held}; "
            f"refused {quantity} x {sku} under the same id"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.reservation_id, self.held_sku, self.held_quantity, self.sku, self.quantity)
        return (type(self), args)


class AdjustmentConflict(ValueError):
    """An adjustment key already applied other deltas to the product: refused, nothing
    written. The same key, product and deltas again is a retry (it changes nothing), not
    a conflict."""

    def __init__(
        self, key: str, sku: str, held: tuple[int, int], d_inventory: int, d_reserved: int
    ) -> None:
        self.key = key
        self.sku = sku
        self.held = held
        self.d_inventory = d_inventory
        self.d_reserved = d_reserved
        super().__init__(
            f"adjustment key {key!r} already applied ({held[0]:+d}, {held[1]:+d}) to {sku}; "
            f"refused ({d_inventory:+d}, {d_reserved:+d}) under the same key"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.key, self.sku, self.held, self.d_inventory, self.d_reserved)
        return (type(self), args)


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


def check_identifier(name: str, value: object) -> str:
    """``value`` if it is a str of 1 to MAX_ID_LENGTH bytes; ValueError otherwise."""
    if not isinstance(value, str) or not 0 < len(value.encode()) <= MAX_ID_LENGTH:
        raise ValueError(f"{name} must be a str of 1 to {MAX_ID_LENGTH} bytes, not {value!r:.80}")
    return value


def check_integer(name: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in [low, high]; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], not {value!r:.80}")
    return value


def check_seconds(name: str, value: object, high: float) -> float:
    """``value`` as a float if it is a finite number in (0, high]; ValueError otherwise
    (NaN, infinities, 0 and negatives included)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise ValueError(f"{name} must be a number of seconds in (0, {high:g}], not {value!r:.80}")
    return float(value)


def check_reservation(reservation_id: str, sku: str, quantity: int, ttl: float) -> None:
    """The arguments of :meth:`InventoryStore.reserve`, checked alike by every store."""
    check_identifier("reservation_id", reservation_id)
    check_identifier("sku", sku)
    check_integer("quantity", quantity, 1, MAX_QUANTITY)
    check_seconds("ttl", ttl, MAX_HOLD_SECONDS)


def check_deltas(d_inventory: int, d_reserved: int) -> None:
    """The deltas of :meth:`InventoryStore.apply` and ``adjust``."""
    check_integer("d_inventory", d_inventory, -MAX_QUANTITY, MAX_QUANTITY)
    check_integer("d_reserved", d_reserved, -MAX_QUANTITY, MAX_QUANTITY)


def insufficient(
    sku: str, inventory: int, reserved: int, d_inventory: int, d_reserved: int
) -> InsufficientStock:
    """The error of a refused change, worded alike by every store."""
    error = InsufficientStock(
        f"{sku}: inventory {inventory}, reserved {reserved}; "
        f"cannot apply ({d_inventory:+d}, {d_reserved:+d})"
    )
    error.available = inventory - reserved
    return error


def stale_write(key: str, token: int) -> StaleWrite:
    """The error of a write refused by fencing, worded alike by every store: ``keys``
    names the lease key, ``token`` the write's fencing token."""
    return StaleWrite(
        f"write under lease token {token} on {key!r} rejected: the lease no longer holds "
        "the key (it expired, or another lease was granted since)",
        (key,),
        token=token,
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

    async def adjust(
        self, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> bool:
        """Atomically add deltas; InsufficientStock (nothing written) if a count would go
        invalid, UnknownProduct. Without ``key``, every call adds them (True).

        With ``key`` (1 to MAX_ID_LENGTH bytes), at most once per product and key: the
        deltas and the mark of the key are one atomic step, and a call whose key is
        marked on the product changes nothing and returns False (True when it applied
        them). What compensations use: run twice, they undo once. The mark is kept for
        the store's ``retention`` (as a committed reservation is), then forgotten.
        AdjustmentConflict (nothing written) if the key applied other deltas to the
        product."""
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

    async def purchase_order(self, order_id: str) -> dict[str, Any] | None:
        """The recorded purchase order ``order_id``, or None."""
        ...

    async def reserve(self, reservation_id: str, sku: str, quantity: int, ttl: float) -> str:
        """Atomic path: reserve if available and log a ``reserve`` entry, in one step;
        returns the entry's id. Idempotent per id: a reservation that exists (pending or
        committed) for the same product and quantity changes nothing and returns its
        entry's id; ReservationConflict if the id holds another product or quantity.
        ValueError (nothing written) unless ``quantity`` is in [1, MAX_QUANTITY], ``ttl``
        in (0, MAX_HOLD_SECONDS] and the id and SKU are 1 to MAX_ID_LENGTH bytes.
        UnknownProduct; InsufficientStock if fewer than ``quantity`` are available."""
        ...

    async def release(self, reservation_id: str) -> bool:
        """Atomic path: give a pending reservation back and log a ``release`` entry, in
        one step; False (and nothing logged) if it is unknown, released or committed."""
        ...

    async def commit(self, reservation_id: str) -> bool:
        """Atomic path: make a reservation permanent (no expiry); idempotent. The store
        remembers a committed reservation (a retried ``reserve`` returns its entry) for its
        ``retention`` after the commit, then forgets it."""
        ...

    async def reap(self, *, now: float | None = None) -> int:
        """Return reservations expired at ``now`` (default: the current time) to stock,
        and forget committed ones past their retention; how many were returned."""
        ...


class MemoryInventoryStore:
    """An :class:`InventoryStore` in this process's memory. Bounded as the Redis store is:
    the log keeps its newest ``log_max_entries`` entries, a committed reservation is
    forgotten ``retention`` seconds after its commit, and the key of a keyed ``adjust``
    ``retention`` seconds after it was applied (by ``clock``: later keyed adjusts and the
    reaper forget it). ``clock`` as the Redis store's."""

    def __init__(
        self,
        locks: MemoryLockProvider | None = None,
        *,
        log_max_entries: int = 1_000_000,
        retention: float = 7 * 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.locks: MemoryLockProvider = locks or MemoryLockProvider()
        self.log_max_entries = check_integer("log_max_entries", log_max_entries, 1, MAX_LOG_ENTRIES)
        self.retention = check_seconds("retention", retention, MAX_RETENTION)
        self.clock = clock
        self._products: dict[str, Product] = {}
        self._log: dict[str, Transaction] = {}
        self._reservations: dict[str, Reservation] = {}
        self._committed: dict[str, Reservation] = {}
        self._forget_at: dict[str, float] = {}  # committed id -> when forgotten, in commit order
        # (sku, adjustment key) -> (deltas applied, when forgotten), in the order applied
        self._adjusted: dict[tuple[str, str], tuple[tuple[int, int], float]] = {}
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
        check_deltas(d_inventory, d_reserved)  # first, as the Redis store: no stale count
        if lease.ended or not self.locks.is_current(lease, key):
            self.stale_writes += 1
            raise stale_write(key, lease.tokens[key])
        return self._add(sku, d_inventory, d_reserved)

    async def adjust(
        self, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> bool:
        check_deltas(d_inventory, d_reserved)
        if key is None:
            self._add(sku, d_inventory, d_reserved)
            return True
        check_identifier("key", key)
        now = self.clock()
        self._forget_adjustments(now)  # as a Redis TTL: the marks stay bounded
        held = self._adjusted.get((sku, key))
        if held is not None:
            if held[0] != (d_inventory, d_reserved):
                raise AdjustmentConflict(key, sku, held[0], d_inventory, d_reserved)
            return False
        self._add(sku, d_inventory, d_reserved)
        self._adjusted[sku, key] = ((d_inventory, d_reserved), now + self.retention)
        return True

    def _forget_adjustments(self, now: float) -> None:
        """Forget the adjustment keys whose retention ended by ``now``, oldest first."""
        while self._adjusted:
            mark, (_, until) = next(iter(self._adjusted.items()))
            if until > now:
                return
            del self._adjusted[mark]

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
        if len(self._log) > self.log_max_entries:
            del self._log[next(iter(self._log))]  # the oldest
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

    async def purchase_order(self, order_id: str) -> dict[str, Any] | None:
        order = self._orders.get(order_id)
        return None if order is None else dict(order)

    # No await between a check and its writes below: each call is one atomic step, as the
    # Redis store's scripts are.

    async def reserve(self, reservation_id: str, sku: str, quantity: int, ttl: float) -> str:
        check_reservation(reservation_id, sku, quantity, ttl)
        held = self._reservations.get(reservation_id) or self._committed.get(reservation_id)
        if held is not None:
            if held.sku != sku:
                raise ReservationConflict(reservation_id, held.sku, None, sku, quantity)
            if held.quantity != quantity:
                raise ReservationConflict(reservation_id, sku, held.quantity, sku, quantity)
            return held.entry_id
        self._add(sku, 0, quantity)
        entry_id = self._append(
            Transaction(sku=sku, operation="reserve", quantity=quantity, run_id=reservation_id)
        )
        self._reservations[reservation_id] = Reservation(
            id=reservation_id,
            sku=sku,
            quantity=quantity,
            expires_at=self.clock() + ttl,
            entry_id=entry_id,
        )
        return entry_id

    async def release(self, reservation_id: str) -> bool:
        check_identifier("reservation_id", reservation_id)
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
        check_identifier("reservation_id", reservation_id)
        now = self.clock()
        self._forget(now, limit=2)  # as the Redis script: the committed stay bounded
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:
            return reservation_id in self._committed
        self._committed[reservation_id] = reservation
        self._forget_at[reservation_id] = now + self.retention
        return True

    async def reap(self, *, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        expired = [r.id for r in self._reservations.values() if r.expires_at <= now]
        for reservation_id in expired:
            await self.release(reservation_id)
        self._forget(now)
        self._forget_adjustments(now)
        return len(expired)

    def _forget(self, now: float, limit: int | None = None) -> None:
        """Forget committed reservations whose retention ended by ``now`` (at most
        ``limit``), oldest commit first."""
        while self._forget_at and (limit is None or limit > 0):
            reservation_id, at = next(iter(self._forget_at.items()))
            if at > now:
                return
            del self._forget_at[reservation_id], self._committed[reservation_id]
            limit = None if limit is None else limit - 1


# -- Redis -------------------------------------------------------------------------------

_ARGUMENTS = (
    f"""
local MAX_QUANTITY = {MAX_QUANTITY}
local MAX_HOLD_SECONDS = {MAX_HOLD_SECONDS:g}
local MAX_ID_LENGTH = {MAX_ID_LENGTH}
local MAX_RETENTION = {MAX_RETENTION:g}
local MAX_LOG_ENTRIES = {MAX_LOG_ENTRIES}
local MAX_TIME = 1e11
local MAX_TOKEN = 9007199254740991
local LEASE_PREFIX = '{LEASE_PREFIX}'
"""
    + """
local function refuse(name, value, why)
  error({err = 'BAD_ARGUMENT ' .. name .. ' '
    .. string.format('%q', string.sub(tostring(value), 1, 64)) .. ': ' .. why})
end
local function int_arg(i, name, low, high)
  local s = ARGV[i]
  if type(s) ~= 'string' or #s > 17 or not string.match(s, '^%-?%d+$') then
    refuse(name, s, 'not an integer')
  end
  local n = tonumber(s)
  if n < low or n > high then
    refuse(name, s, string.format('not in [%.0f, %.0f]', low, high))
  end
  return n
end
local function number_arg(i, name, high)
  local s = ARGV[i]
  local n = type(s) == 'string' and #s <= 32 and string.match(s, '^[-+.%deE]+$') and tonumber(s)
  if not n or n ~= n or n <= 0 or n > high then
    refuse(name, s, string.format('not a number in (0, %.17g]', high))
  end
  return n
end
local function id_arg(i, name)
  local s = ARGV[i]
  if type(s) ~= 'string' or #s == 0 or #s > MAX_ID_LENGTH then
    refuse(name, s, string.format('not 1 to %d bytes', MAX_ID_LENGTH))
  end
  return s
end
local function ends_with(s, suffix)
  return string.sub(s, -#suffix) == suffix
end
-- The SKU, and the holder of its keys: the SKU, or "<sku>#<n>" for its stock bucket n.
local function sku_arg(i, product_key)
  local sku = id_arg(i, 'sku')
  local tags = {'{' .. sku, '{' .. LEASE_PREFIX .. sku}  -- the second: Redis Cluster's layout
  for _, tag in ipairs(tags) do
    if ends_with(product_key, tag .. '}:product') then return sku, sku end
  end
  local head, n = string.match(product_key, '^(.*)#(%d%d?%d?)}:product$')
  if head and (ends_with(head, tags[1]) or ends_with(head, tags[2])) then
    return sku, sku .. '#' .. n
  end
  refuse('sku', sku, 'not the SKU of ' .. product_key)
end
"""
)
"""Argument checks, run by every script before its first write (Redis does not roll a
script back: one that fails half-way keeps what it wrote). A refusal is the error reply
``BAD_ARGUMENT <name> "<value>": <why>``, which the store raises as ValueError. Numbers
are matched as text first: Lua's ``tonumber`` reads ``nan``, ``inf``, ``0x10`` and
padded strings."""

_FORGET = """
local function forget(reservations, committed, index, now, limit)
  local due = redis.call('zrangebyscore', committed, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('hdel', reservations, id)
    redis.call('hdel', index, id)
    redis.call('zrem', committed, id)
  end
  return #due
end
"""
"""Forget at most ``limit`` committed reservations whose retention ended by ``now``."""

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
    _ARGUMENTS
    + _CHANGE
    + """
int_arg(1, 'd_inventory', -MAX_QUANTITY, MAX_QUANTITY)
int_arg(2, 'd_reserved', -MAX_QUANTITY, MAX_QUANTITY)
local refused = change(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if refused then return refused end
return 1
"""
)

# KEYS: product hash, adjustment mark ; ARGV: d_inventory, d_reserved, key, retention (seconds)
# 1 if applied, 0 if the mark was there (nothing written). The mark is the product's key
# with ":adjusted:<key>" for ":product", holds "<d_inventory> <d_reserved>" and expires
# after the retention; it is written with the counts, so the deltas land once per key.
_ADJUST_ONCE = (
    _ARGUMENTS
    + _CHANGE
    + """
local d_inv = int_arg(1, 'd_inventory', -MAX_QUANTITY, MAX_QUANTITY)
local d_res = int_arg(2, 'd_reserved', -MAX_QUANTITY, MAX_QUANTITY)
local key = id_arg(3, 'key')
local retention = number_arg(4, 'retention', MAX_RETENTION)
local suffix = ':product'
if string.sub(KEYS[1], -#suffix) ~= suffix
    or KEYS[2] ~= string.sub(KEYS[1], 1, -#suffix - 1) .. ':adjusted:' .. key then
  refuse('key', key, 'not the key of the mark ' .. tostring(KEYS[2]))
end
local applied = string.format('%d %d', d_inv, d_res)
local held = redis.call('get', KEYS[2])
if held then
  if held ~= applied then return redis.error_reply('ADJUSTMENT_CONFLICT ' .. held) end
  return 0
end
local refused = change(KEYS[1], d_inv, d_res)
if refused then return refused end
redis.call('set', KEYS[2], applied, 'PX', string.format('%d', math.ceil(retention * 1000)))
return 1
"""
)

# KEYS: product hash, fence key, stale counter ; ARGV: d_inventory, d_reserved, token
# Returns the product hash after the write (HGETALL's flat list).
_APPLY = (
    _ARGUMENTS
    + _CHANGE
    + """
int_arg(1, 'd_inventory', -MAX_QUANTITY, MAX_QUANTITY)
int_arg(2, 'd_reserved', -MAX_QUANTITY, MAX_QUANTITY)
int_arg(3, 'token', 1, MAX_TOKEN)
-- Current iff the key is held and the token is of its grant's block, which spans fewer
-- than 1000 tokens (RedisLockProvider's MAX_FAIRNESS; docs/locks.md, "Fencing").
local grant = redis.call('get', KEYS[2])
local token = tonumber(ARGV[3])
if not grant or token < tonumber(grant) or token >= tonumber(grant) + 1000 then
  redis.call('incr', KEYS[3])
  redis.call('pexpire', KEYS[3], 86400000)
  return redis.error_reply('STALE_WRITE')
end
local refused = change(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if refused then return refused end
return redis.call('hgetall', KEYS[1])
"""
)

# KEYS: product hash, reservation hash, expiry zset, reservation index, log stream
# ARGV: id, sku, quantity, hold (seconds), time of the reservation, log max entries
# A reservation is stored as "<quantity> <log entry id>". Returns the log entry id. The
# id's owner is checked in the index: one id never names two reservations.
_RESERVE = (
    _ARGUMENTS
    + _CHANGE
    + """
local id = id_arg(1, 'reservation_id')
local sku, holder = sku_arg(2, KEYS[1])
local qty = int_arg(3, 'quantity', 1, MAX_QUANTITY)
local hold = number_arg(4, 'ttl', MAX_HOLD_SECONDS)
local at = number_arg(5, 'at', MAX_TIME)
local log_max = int_arg(6, 'log_max_entries', 1, MAX_LOG_ENTRIES)
local owner = redis.call('hget', KEYS[4], id)
if owner and owner ~= holder then
  return redis.error_reply('RESERVATION_CONFLICT ' .. cjson.encode({sku = owner}))
end
local held = redis.call('hget', KEYS[2], id)
if held then
  local held_qty, held_entry = string.match(held, '^(%S+) (%S+)$')
  if tonumber(held_qty) ~= qty then
    return redis.error_reply(
      'RESERVATION_CONFLICT ' .. cjson.encode({sku = sku, quantity = tonumber(held_qty)}))
  end
  return held_entry
end
local refused = change(KEYS[1], 0, qty)
if refused then return refused end
local entry = redis.call('xadd', KEYS[5], 'MAXLEN', '~', log_max, '*', 'entry',
  cjson.encode({sku = sku, operation = 'reserve', quantity = qty, run_id = id, at = at}))
redis.call('hset', KEYS[2], id, qty .. ' ' .. entry)
redis.call('zadd', KEYS[3], at + hold, id)
redis.call('hset', KEYS[4], id, holder)
return entry
"""
)

# KEYS: product hash, reservation hash, expiry zset, reservation index, log stream
# ARGV: id, sku, time of the release, log max entries
# 1 if released, 0 if unknown or committed
_RELEASE = (
    _ARGUMENTS
    + _CHANGE
    + """
local id = id_arg(1, 'reservation_id')
local sku = sku_arg(2, KEYS[1])
local at = number_arg(3, 'at', MAX_TIME)
local log_max = int_arg(4, 'log_max_entries', 1, MAX_LOG_ENTRIES)
local held = redis.call('hget', KEYS[2], id)
if not held or not redis.call('zscore', KEYS[3], id) then return 0 end
local qty = tonumber(string.match(held, '^%S+'))
local refused = change(KEYS[1], 0, -qty)
if refused then return refused end
redis.call('hdel', KEYS[2], id)
redis.call('zrem', KEYS[3], id)
redis.call('hdel', KEYS[4], id)
local entry = {sku = sku, operation = 'release', quantity = qty, run_id = id, at = at}
redis.call('xadd', KEYS[5], 'MAXLEN', '~', log_max, '*', 'entry', cjson.encode(entry))
return 1
"""
)

# KEYS: reservation hash, expiry zset, committed zset, reservation index
# ARGV: id, time of the commit, retention (seconds) ; 1 if committed (now or before)
# Each commit first forgets up to 2 reservations past their retention: the committed
# stay bounded without a reaper.
_COMMIT = (
    _ARGUMENTS
    + _FORGET
    + """
local id = id_arg(1, 'reservation_id')
local now = number_arg(2, 'at', MAX_TIME)
local retention = number_arg(3, 'retention', MAX_RETENTION)
forget(KEYS[1], KEYS[3], KEYS[4], now, 2)
if redis.call('hexists', KEYS[1], id) == 0 then return 0 end
if redis.call('zrem', KEYS[2], id) == 1 then
  redis.call('zadd', KEYS[3], now + retention, id)
end
return 1
"""
)

# KEYS: reservation hash, committed zset, reservation index ; ARGV: now, limit
# Returns how many committed reservations were forgotten.
_FORGET_DUE = (
    _ARGUMENTS
    + _FORGET
    + """
local now = number_arg(1, 'now', MAX_TIME)
local limit = int_arg(2, 'limit', 1, 10000)
return forget(KEYS[1], KEYS[2], KEYS[3], now, limit)
"""
)


MAX_BUCKETS = 64
"""The most stock buckets one product may be split over (``RedisInventoryStore``'s
``buckets``)."""

MAX_REBALANCE_ROUNDS = 4
"""How many times a reservation of a bucketed product gathers units from the other
buckets into its own and tries again, while the buckets together hold enough (others
may take the gathered units meanwhile)."""

# KEYS: a stock bucket's product hash, its moves hash
# ARGV: sku, move id, quantity, destination bucket ("<sku>#<n>"), time of the move
# Takes quantity available units out of the bucket and records the move (id -> JSON
# [quantity, destination, time]), in one step; the mover then adds them to the
# destination (keyed by the move: at most once) and drops the record.
_TAKE = (
    _ARGUMENTS
    + """
local sku, holder = sku_arg(1, KEYS[1])
local id = id_arg(2, 'move_id')
local qty = int_arg(3, 'quantity', 1, MAX_QUANTITY)
local to = id_arg(4, 'to')
local at = number_arg(5, 'at', MAX_TIME)
if holder == sku then refuse('sku', sku, 'not the SKU of a bucket: ' .. KEYS[1]) end
local suffix = ':product'
if KEYS[2] ~= string.sub(KEYS[1], 1, -#suffix - 1) .. ':moves' then
  refuse('moves', KEYS[2], 'not the moves of ' .. KEYS[1])
end
if string.sub(to, 1, #sku + 1) ~= sku .. '#' or to == holder
    or not string.match(string.sub(to, #sku + 2), '^%d%d?%d?$') then
  refuse('to', to, 'not another bucket of ' .. sku)
end
local inv = tonumber(redis.call('hget', KEYS[1], 'inventory_count'))
if not inv then return redis.error_reply('UNKNOWN_PRODUCT') end
local res = tonumber(redis.call('hget', KEYS[1], 'reserved_count') or '0')
if inv - qty < res then
  return redis.error_reply(string.format('INSUFFICIENT_STOCK %d %d %d %d', inv, res, -qty, 0))
end
redis.call('hset', KEYS[1], 'inventory_count', inv - qty)
redis.call('hset', KEYS[2], id, cjson.encode({qty, to, at}))
return 1
"""
)

MAX_GROUP = 1000
"""The most operations one group-commit script call carries (``RedisInventoryStore``'s
``max_group``)."""

# KEYS: product hash, reservation hash, expiry zset, committed zset, reservation index,
#       log stream
# ARGV: sku, time of the call, log max entries, retention (seconds), operations: a JSON
#       array of ["reserve", id, quantity, hold seconds], ["release", id] and
#       ["commit", id]
# Returns one string per operation, in order: a reserve's log entry id; "1" or "0" for a
# release or a commit (as their own scripts); "!<error reply>" for an operation refused
# alone (INSUFFICIENT_STOCK, RESERVATION_CONFLICT, UNKNOWN_PRODUCT), which wrote nothing.
# Each operation sees the ones before it: the same id twice reserves once. The product's
# counts are read once and written once; the reservations made by a run of reserves are
# written together, one command per key, before the next release or commit and at the end.
_GROUP = (
    _ARGUMENTS
    + _FORGET
    + f"""
local MAX_GROUP = {MAX_GROUP}
"""
    + """
local sku, holder = sku_arg(1, KEYS[1])
local at = number_arg(2, 'at', MAX_TIME)
local log_max = int_arg(3, 'log_max_entries', 1, MAX_LOG_ENTRIES)
local retention = number_arg(4, 'retention', MAX_RETENTION)
if #ARGV ~= 5 then refuse('operations', #ARGV, 'not 5 arguments') end
local decoded, ops = pcall(cjson.decode, ARGV[5])
if not decoded or type(ops) ~= 'table' or #ops < 1 or #ops > MAX_GROUP then
  refuse('operations', ARGV[5], string.format('not a JSON array of 1 to %d operations', MAX_GROUP))
end
for _, op in ipairs(ops) do
  if type(op) ~= 'table' then refuse('operation', tostring(op), 'not an array') end
  local kind, id, qty, hold = op[1], op[2], op[3], op[4]
  if kind ~= 'reserve' and kind ~= 'release' and kind ~= 'commit' then
    refuse('operation', kind, 'not reserve, release or commit')
  end
  if type(id) ~= 'string' or #id == 0 or #id > MAX_ID_LENGTH then
    refuse('reservation_id', id, string.format('not 1 to %d bytes', MAX_ID_LENGTH))
  end
  if kind == 'reserve' then
    if #op ~= 4 then refuse('operation', kind, 'not [kind, id, quantity, hold]') end
    if type(qty) ~= 'number' or qty ~= math.floor(qty) or qty < 1 or qty > MAX_QUANTITY then
      refuse('quantity', qty, string.format('not an integer in [1, %.0f]', MAX_QUANTITY))
    end
    if type(hold) ~= 'number' or hold ~= hold or hold <= 0 or hold > MAX_HOLD_SECONDS then
      refuse('ttl', hold, string.format('not a number in (0, %.17g]', MAX_HOLD_SECONDS))
    end
  elseif #op ~= 2 then
    refuse('operation', kind, 'not [kind, id]')
  end
end
local inv = tonumber(redis.call('hget', KEYS[1], 'inventory_count'))
local res = inv and tonumber(redis.call('hget', KEYS[1], 'reserved_count') or '0')
local changed = false
local sku_json, at_json = cjson.encode(sku), cjson.encode(at)
local function log(operation, id, qty)
  return redis.call('xadd', KEYS[6], 'MAXLEN', '~', log_max, '*', 'entry',
    '{"sku":' .. sku_json .. ',"operation":"' .. operation .. '","quantity":'
    .. string.format('%d', qty) .. ',"run_id":' .. cjson.encode(id) .. ',"at":' .. at_json .. '}')
end
local function change(d_res)
  local new_res = res + d_res
  if new_res < 0 or new_res > inv then
    return string.format('!INSUFFICIENT_STOCK %d %d %d %d', inv, res, 0, d_res)
  end
  res = new_res
  changed = true
end
-- Reservations made since the last write: id -> value, and the arguments that write them.
local made, held_args, expiry_args, index_args, n = {}, {}, {}, {}, 0
local function write()
  if n > 0 then
    redis.call('hset', KEYS[2], unpack(held_args))
    redis.call('zadd', KEYS[3], unpack(expiry_args))
    redis.call('hset', KEYS[5], unpack(index_args))
    made, held_args, expiry_args, index_args, n = {}, {}, {}, {}, 0
  end
end
local function reserve(id, qty, hold)
  local held = made[id]
  if not held then
    local owner = redis.call('hget', KEYS[5], id)
    if owner and owner ~= holder then
      return '!RESERVATION_CONFLICT ' .. cjson.encode({sku = owner})
    end
    held = owner and redis.call('hget', KEYS[2], id)
  end
  if held then
    local held_qty, held_entry = string.match(held, '^(%S+) (%S+)$')
    if tonumber(held_qty) ~= qty then
      return '!RESERVATION_CONFLICT ' .. cjson.encode({sku = sku, quantity = tonumber(held_qty)})
    end
    return held_entry
  end
  if not inv then return '!UNKNOWN_PRODUCT' end
  local refused = change(qty)
  if refused then return refused end
  local entry = log('reserve', id, qty)
  local value = string.format('%d', qty) .. ' ' .. entry
  made[id] = value
  held_args[2 * n + 1], held_args[2 * n + 2] = id, value
  expiry_args[2 * n + 1], expiry_args[2 * n + 2] = at + hold, id
  index_args[2 * n + 1], index_args[2 * n + 2] = id, holder
  n = n + 1
  return entry
end
local function release(id)
  write()
  local held = redis.call('hget', KEYS[2], id)
  if not held or not redis.call('zscore', KEYS[3], id) then return '0' end
  if not inv then return '!UNKNOWN_PRODUCT' end
  local qty = tonumber(string.match(held, '^%S+'))
  local refused = change(-qty)
  if refused then return refused end
  redis.call('hdel', KEYS[2], id)
  redis.call('zrem', KEYS[3], id)
  redis.call('hdel', KEYS[5], id)
  log('release', id, qty)
  return '1'
end
local function commit(id)
  write()
  forget(KEYS[2], KEYS[4], KEYS[5], at, 2)
  if redis.call('hexists', KEYS[2], id) == 0 then return '0' end
  if redis.call('zrem', KEYS[3], id) == 1 then
    redis.call('zadd', KEYS[4], at + retention, id)
  end
  return '1'
end
local replies = {}
for k, op in ipairs(ops) do
  if op[1] == 'reserve' then
    replies[k] = reserve(op[2], op[3], op[4])
  elseif op[1] == 'release' then
    replies[k] = release(op[2])
  else
    replies[k] = commit(op[2])
  end
end
write()
if changed then redis.call('hset', KEYS[1], 'reserved_count', res) end
return replies
"""
)


class RedisInventoryStore:
    """An :class:`InventoryStore` in Redis. ``locks`` must be the provider whose leases
    guard :meth:`apply` (its fenced writes check their tokens).

    The log stream keeps about its newest ``log_max_entries`` entries (``XADD MAXLEN ~``:
    up to a stream node, 100 entries by default, more); a committed reservation is
    forgotten ``retention`` seconds after its commit (a ``reserve`` retried later would
    reserve again), and the key of a keyed ``adjust`` ``retention`` seconds after it was
    applied (the TTL of its mark: by the server's clock). ``clock`` dates reservations,
    releases and commits, and is the reaper's default ``now`` (``time.time`` by default;
    every client of one store must agree).

    On Redis Cluster (``client`` is a ``redis.asyncio.RedisCluster``), every key of a
    product carries the hash tag of its lease key, ``{inventory:<sku>}``, and each script
    touches one product's keys: the product has a log stream and a reservation index of
    its own (``log_max_entries`` bounds each log), and a reservation id's product is
    claimed under ``reservation:<id>`` before the reserve script runs (see
    docs/inventory.md, "Redis Cluster"). The prefix may hold no brace there.

    **Group commit** (``group_commit=True``, the default): the atomic path's calls
    (:meth:`reserve`, :meth:`release`, :meth:`commit`) on one product in this process go
    one script call at a time; the calls that arrive while one is in flight wait for it,
    and the oldest ``max_group`` of them go together in the next script call. Each is
    still its own operation: checked, idempotent by its reservation id, logged and
    answered alone (a sold-out reservation fails alone), in arrival order; a lone call
    goes at once. A call that is cancelled before its script call is sent is withdrawn
    (nothing written); once sent, the script call is finished for the whole group
    (shielded, at most :data:`GROUP_TIMEOUT` seconds). ``group_commit=False``: one script
    call per call, as many in flight as callers."""

    def __init__(
        self,
        client: Any,
        locks: Any,
        *,
        prefix: str = "inv:",
        log_max_entries: int = 1_000_000,
        retention: float = 7 * 86_400.0,
        clock: Callable[[], float] = time.time,
        group_commit: bool = True,
        max_group: int = 256,
        buckets: Mapping[str, int] | None = None,
    ) -> None:
        from redis.asyncio.cluster import RedisCluster

        self.client = client
        self.locks = locks
        self.prefix = prefix
        self.cluster = isinstance(client, RedisCluster)
        """Whether ``client`` is a Redis Cluster's: the keys then follow its layout."""
        if self.cluster and ("{" in prefix or "}" in prefix):
            raise ValueError(f"on Redis Cluster the prefix may hold no brace, got {prefix!r}")
        self.log_max_entries = check_integer("log_max_entries", log_max_entries, 1, MAX_LOG_ENTRIES)
        self.retention = check_seconds("retention", retention, MAX_RETENTION)
        self.clock = clock
        self.group_commit = bool(group_commit)
        self.max_group = check_integer("max_group", max_group, 1, MAX_GROUP)
        self._groups: dict[str, _Group] = {}  # products with a grouped call in flight
        self.buckets: dict[str, int] = {
            check_identifier("bucketed sku", sku): check_integer(
                f"buckets of {sku!r}", count, 2, MAX_BUCKETS
            )
            for sku, count in (buckets or {}).items()
        }
        """Products whose stock is split: SKU -> how many buckets."""
        self._bucket_of: dict[str, str] = {  # a bucket's holder name -> its product's SKU
            holder: sku for sku in self.buckets for holder in self._holders(sku)
        }
        self._adjust = client.register_script(_ADJUST)
        self._adjust_once = client.register_script(_ADJUST_ONCE)
        self._apply = client.register_script(_APPLY)
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self._commit = client.register_script(_COMMIT)
        self._forget = client.register_script(_FORGET_DUE)
        self._group = client.register_script(_GROUP)
        self._take = client.register_script(_TAKE)

    def _tag(self, sku: str) -> str:
        """The hash tag of a product's keys: its SKU; on a cluster, its lease key."""
        return f"{{{LEASE_PREFIX}{sku}}}" if self.cluster else f"{{{sku}}}"

    def product_key(self, sku: str) -> str:
        return f"{self.prefix}{self._tag(sku)}:product"

    def _reservations_key(self, sku: str) -> str:
        return f"{self.prefix}{self._tag(sku)}:reservations"

    def _expiry_key(self, sku: str) -> str:
        return f"{self.prefix}{self._tag(sku)}:expiry"

    def _committed_key(self, sku: str) -> str:
        return f"{self.prefix}{self._tag(sku)}:committed"

    def _adjusted_key(self, sku: str, key: str) -> str:
        """The mark of a keyed ``adjust`` of the product."""
        return f"{self.prefix}{self._tag(sku)}:adjusted:{key}"

    @property
    def _log_key(self) -> str:
        return f"{self.prefix}log"

    @property
    def _index_key(self) -> str:
        return f"{self.prefix}reservation-index"

    def _log_of(self, sku: str) -> str:
        """The log stream the product's entries go to: the store's, or on a cluster the
        product's own."""
        return f"{self.prefix}{self._tag(sku)}:log" if self.cluster else self._log_key

    def _index_of(self, sku: str) -> str:
        """The reservation index the product's scripts check and update: the store's, or
        on a cluster the product's own (the claims of ids say which product holds one)."""
        return f"{self.prefix}{self._tag(sku)}:index" if self.cluster else self._index_key

    def _moves_key(self, holder: str) -> str:
        """A bucket's units on their way to another bucket (move id -> JSON)."""
        return f"{self.prefix}{self._tag(holder)}:moves"

    def _holders(self, sku: str) -> list[str]:
        """Whose keys hold the product's stock: the product's own, or its buckets'
        (``<sku>#<n>``, each its own hash tag, so its own cluster slot)."""
        count = self.buckets.get(sku)
        return [sku] if count is None else [f"{sku}#{n}" for n in range(count)]

    def _sku_held_by(self, holder: str) -> str:
        """The SKU whose stock ``holder`` (a product or one of its buckets) holds."""
        return self._bucket_of.get(holder, holder)

    def _claim_key(self, reservation_id: str) -> str:
        """On a cluster: the product a reservation id reserves (a string with a TTL)."""
        return f"{self.prefix}reservation:{reservation_id}"

    async def put(self, product: Product) -> None:
        """Create or replace a product; a bucketed one's counts are split evenly over its
        buckets (its units on their way between buckets are forgotten)."""
        if product.sku in self._bucket_of:
            raise ValueError(f"{product.sku!r} names a stock bucket of a bucketed product")
        holders = self._holders(product.sku)
        count = len(holders)
        async with self.client.pipeline(transaction=False) as pipe:
            for n, holder in enumerate(holders):
                pipe.hset(
                    self.product_key(holder),
                    mapping={
                        "inventory_count": _share(product.inventory_count, count, n),
                        "reserved_count": _share(product.reserved_count, count, n),
                        "reorder_point": product.reorder_point,
                        "max_stock_level": product.max_stock_level,
                    },
                )
                if count > 1:
                    pipe.delete(self._moves_key(holder))
            pipe.sadd(f"{self.prefix}skus", product.sku)
            await pipe.execute()

    async def get(self, sku: str) -> Product:
        """The product; a bucketed one's counts summed over its buckets, its units on
        their way between buckets counted in ``inventory_count``."""
        holders = self._holders(sku)
        if len(holders) == 1:
            raw = await self.client.hgetall(self.product_key(sku))
            if not raw:
                raise UnknownProduct(sku)
            return _product(sku, raw.items())
        async with self.client.pipeline(transaction=False) as pipe:
            for holder in holders:
                pipe.hgetall(self.product_key(holder))
                pipe.hvals(self._moves_key(holder))
            replies = await pipe.execute()
        parts = [_product(sku, raw.items()) for raw in replies[::2] if raw]
        if len(parts) < len(holders):
            raise UnknownProduct(sku)
        moving = sum(msgspec.json.decode(move)[0] for moves in replies[1::2] for move in moves)
        return msgspec.structs.replace(
            parts[0],
            inventory_count=sum(p.inventory_count for p in parts) + moving,
            reserved_count=sum(p.reserved_count for p in parts),
        )

    async def buckets_of(self, sku: str) -> list[Product]:
        """A bucketed product's buckets as they are (each its own counts; ``sku`` names
        the bucket, ``<sku>#<n>``); ValueError for a product that is not bucketed."""
        if sku not in self.buckets:
            raise ValueError(f"{sku!r} is not a bucketed product of this store")
        async with self.client.pipeline(transaction=False) as pipe:
            for holder in self._holders(sku):
                pipe.hgetall(self.product_key(holder))
            replies = await pipe.execute()
        if not all(replies):
            raise UnknownProduct(sku)
        holders = self._holders(sku)
        return [_product(h, raw.items()) for h, raw in zip(holders, replies, strict=True)]

    async def apply(
        self, lease: Lease, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> Product:
        # One script: the fence check, the count check and the write cannot be separated,
        # so neither a stale holder nor a concurrent compensation can oversell.
        self._unbucketed(sku, "apply")
        key = lease.key if key is None else key
        check_deltas(d_inventory, d_reserved)
        keys = [self.product_key(sku), self.locks.fence_key(key), self.locks.stale_key(key)]
        if self.cluster:
            from redis.crc import key_slot

            if len({key_slot(k.encode()) for k in keys}) > 1:
                raise ValueError(
                    f"on Redis Cluster, apply() on {sku!r} needs the lease key "
                    f"{LEASE_PREFIX}{sku!s} (the hash tag of the product's keys), not {key!r}"
                )
        token = lease.tokens[key]
        if lease.ended:
            # Its `async with` has exited: the next holder of this process may have the
            # next token of the same grant, which the script's range check would accept.
            raise stale_write(key, token)
        # Shielded (and bounded): a holder cancelled mid-write still learns whether the
        # write was applied, so its saga step neither loses nor double-counts it.
        with anyio.fail_after(10.0, shield=True):
            flat = await self._scripted(
                self._apply, keys, [d_inventory, d_reserved, token], sku, fence=(key, token)
            )
        return _product(sku, zip(flat[::2], flat[1::2], strict=True))

    def _unbucketed(self, sku: str, verb: str) -> None:
        if sku in self.buckets:
            raise ValueError(
                f"{verb}() on {sku!r}: its stock is split over {self.buckets[sku]} buckets, "
                "which take the atomic path only (reserve, release, commit; put to restock)"
            )

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

    async def purchase_order(self, order_id: str) -> dict[str, Any] | None:
        raw = await self.client.hget(f"{self.prefix}purchase-orders", order_id)
        return None if raw is None else msgspec.json.decode(raw)

    async def adjust(
        self, sku: str, d_inventory: int, d_reserved: int, *, key: str | None = None
    ) -> bool:
        check_deltas(d_inventory, d_reserved)
        self._unbucketed(sku, "adjust")
        if key is None:
            delta_args = [d_inventory, d_reserved]
            await self._scripted(self._adjust, [self.product_key(sku)], delta_args, sku)
            return True
        check_identifier("key", key)
        keys = [self.product_key(sku), self._adjusted_key(sku, key)]
        args: list[Any] = [d_inventory, d_reserved, key, self.retention]
        adjustment = (key, d_inventory, d_reserved)
        return bool(await self._scripted(self._adjust_once, keys, args, sku, adjustment=adjustment))

    async def log(self, entry: Transaction) -> str:
        if self.cluster:
            await self.client.sadd(f"{self.prefix}skus", entry.sku)  # transactions() reads it
        entry_id = await self.client.xadd(
            self._log_of(entry.sku),
            {"entry": msgspec.json.encode(entry)},
            maxlen=self.log_max_entries,
            approximate=True,
        )
        return self._entry_id(entry.sku, entry_id)

    def _entry_id(self, sku: str, stream_id: Any) -> str:
        """A log entry's id: its stream id; on a cluster, ``<sku>/<stream id>`` (which log)."""
        return f"{sku}/{_text(stream_id)}" if self.cluster else _text(stream_id)

    async def unlog(self, entry_id: str) -> None:
        if not self.cluster:
            await self.client.xdel(self._log_key, entry_id)
            return
        sku, _, stream_id = entry_id.rpartition("/")
        if sku:
            await self.client.xdel(self._log_of(sku), stream_id)

    async def transactions(self) -> list[Transaction]:
        if not self.cluster:
            rows = await self.client.xrange(self._log_key)
            return [msgspec.json.decode(fields[b"entry"], type=Transaction) for _, fields in rows]
        # Each product's log, merged by stream id: exact within a product, as exact as the
        # nodes' clocks across products.
        skus = sorted(_text(sku) for sku in await self.client.smembers(f"{self.prefix}skus"))
        async with self.client.pipeline(transaction=False) as pipe:
            for sku in skus:
                for holder in self._holders(sku):
                    pipe.xrange(self._log_of(holder))
            logs = await pipe.execute()
        merged = sorted(
            (tuple(map(int, _text(stream_id).split("-"))), n, fields[b"entry"])
            for n, rows in enumerate(logs)
            for stream_id, fields in rows
        )
        return [msgspec.json.decode(raw, type=Transaction) for _, _, raw in merged]

    async def reserve(self, reservation_id: str, sku: str, quantity: int, ttl: float) -> str:
        check_reservation(reservation_id, sku, quantity, ttl)
        if sku in self._bucket_of:
            raise UnknownProduct(sku)  # a bucket is not a product
        try:
            if sku in self.buckets:
                return await self._reserve_bucketed(reservation_id, sku, quantity, ttl)
            return await self._reserve_in(sku, reservation_id, sku, quantity, ttl)
        except ReservationConflict as conflict:
            if conflict.held_sku in self._bucket_of:  # name the product, not its bucket
                held = self._bucket_of[conflict.held_sku]
                raise ReservationConflict(
                    reservation_id, held, conflict.held_quantity, sku, quantity
                ) from None
            raise

    async def _reserve_in(
        self, holder: str, reservation_id: str, sku: str, quantity: int, ttl: float
    ) -> str:
        """Reserve in ``holder``'s keys: the product's, or one of its buckets'."""
        claimed = (
            await self._claim_id(reservation_id, holder, quantity, ttl) if self.cluster else False
        )
        try:
            if self.group_commit:
                operation = _Operation("reserve", reservation_id, quantity, float(ttl))
                entry = await self._grouped(holder, operation)
            else:
                args = [reservation_id, sku, quantity, float(ttl), self.clock()]
                args.append(self.log_max_entries)
                keys = self._atomic_keys(holder)
                request = (reservation_id, quantity)
                entry = await self._scripted(self._reserve, keys, args, sku, request=request)
        except ReservationConflict:
            raise  # the product holds the id (another quantity): the claim stands
        except (ValueError, LookupError):
            if claimed:  # refused, nothing reserved: the id is free again
                await self.client.delete(self._claim_key(reservation_id))
            raise
        if self.cluster and not claimed:
            # A claim deleted by a concurrent call with this id that was refused: again.
            await self.client.set(
                self._claim_key(reservation_id), holder, nx=True, px=self._claim_ms(ttl)
            )
        return self._entry_id(holder, entry)

    async def _reserve_bucketed(
        self, reservation_id: str, sku: str, quantity: int, ttl: float
    ) -> str:
        """Reserve in one of the product's buckets: first the bucket the id hashes to
        (a retry goes where the first call went), then the others in turn. If no bucket
        alone has ``quantity`` but together they do, units are moved into the first
        bucket and it is tried again (up to :data:`MAX_REBALANCE_ROUNDS` times, against
        concurrent reservations taking the units meanwhile)."""
        holders = self._holders(sku)
        start = zlib.crc32(reservation_id.encode()) % len(holders)
        order = holders[start:] + holders[:start]
        refusal: InsufficientStock | None = None
        available: dict[str, int] = {}
        for _ in range(MAX_REBALANCE_ROUNDS):
            available = {}
            for holder in order:
                try:
                    return await self._reserve_in(holder, reservation_id, sku, quantity, ttl)
                except ReservationConflict as conflict:
                    if self._bucket_of.get(conflict.held_sku) != sku:
                        raise
                    # The id is held in another bucket of this product: a retry of a call
                    # that went there; answered there.
                    return await self._reserve_in(
                        conflict.held_sku, reservation_id, sku, quantity, ttl
                    )
                except InsufficientStock as exc:
                    refusal = exc
                    available[holder] = max(exc.available or 0, 0)
            total = sum(available.values())
            if total < quantity:
                break  # sold out: fewer units than asked in all the buckets together
            await self._gather(sku, order[0], quantity - available[order[0]], available)
        assert refusal is not None
        total = sum(available.values())
        error = InsufficientStock(
            f"{sku}: {total} available over {len(holders)} buckets; cannot reserve {quantity}"
        )
        error.available = total
        raise error from refusal

    async def _gather(self, sku: str, into: str, needed: int, available: Mapping[str, int]) -> None:
        """Move up to ``needed`` units into the bucket ``into`` from the others, the
        fullest first (as ``available`` last saw them)."""
        for holder in sorted(available, key=available.__getitem__, reverse=True):
            if needed <= 0:
                return
            if holder == into or available[holder] <= 0:
                continue
            needed -= await self._move(sku, holder, into, min(available[holder], needed))

    async def _move(self, sku: str, source: str, destination: str, quantity: int) -> int:
        """Move ``quantity`` available units from bucket ``source`` to ``destination``:
        taken from the source with a record of the move (one script), added to the
        destination keyed by the move (at most once), then the record dropped. A move cut
        off half-way is finished by :meth:`reap`. Returns the units moved (0 if the source
        no longer had them)."""
        move_id = secrets.token_hex(8)
        keys = [self.product_key(source), self._moves_key(source)]
        args = [sku, move_id, quantity, destination, self.clock()]
        try:
            await self._scripted(self._take, keys, args, sku)
        except InsufficientStock:
            return 0
        await self._finish_move(sku, source, move_id, quantity, destination)
        return quantity

    async def _finish_move(
        self, sku: str, source: str, move_id: str, quantity: int, destination: str
    ) -> None:
        keys = [self.product_key(destination), self._adjusted_key(destination, f"move:{move_id}")]
        args: list[Any] = [quantity, 0, f"move:{move_id}", self.retention]
        adjustment = (f"move:{move_id}", quantity, 0)
        await self._scripted(self._adjust_once, keys, args, sku, adjustment=adjustment)
        await self.client.hdel(self._moves_key(source), move_id)

    async def rebalance(self, sku: str) -> int:
        """Even out a bucketed product's available units over its buckets (each to
        within one unit of the mean, as they were read); how many units were moved. Also
        finishes moves cut off half-way. Concurrent reservations go on meanwhile."""
        await self._finish_moves(sku)
        parts = await self.buckets_of(sku)
        available = {p.sku: p.available for p in parts}
        total = sum(max(a, 0) for a in available.values())
        target = {h: _share(total, len(parts), n) for n, h in enumerate(available)}
        surplus = [(h, available[h] - target[h]) for h in available if available[h] > target[h]]
        moved = 0
        for holder in available:
            deficit = target[holder] - available[holder]
            while deficit > 0 and surplus:
                source, spare = surplus[0]
                step = min(deficit, spare)
                got = await self._move(sku, source, holder, step)
                moved += got
                deficit -= step
                if spare <= step or got == 0:
                    surplus.pop(0)
                else:
                    surplus[0] = (source, spare - step)
        return moved

    async def _finish_moves(self, sku: str) -> None:
        """Finish every recorded move of the product's buckets (adding its units to its
        destination at most once), whoever started it."""
        for holder in self._holders(sku) if sku in self.buckets else []:
            for move_id, raw in (await self.client.hgetall(self._moves_key(holder))).items():
                quantity, destination = msgspec.json.decode(raw)[:2]
                await self._finish_move(sku, holder, _text(move_id), quantity, destination)

    def _claim_ms(self, hold: float) -> int:
        """How long a claim is kept: the hold, the retention of a commit, and a day (the
        reaper may come late); a commit renews it for its retention."""
        return math.ceil((hold + self.retention + 86_400.0) * 1000)

    async def _claim_id(self, reservation_id: str, sku: str, quantity: int, hold: float) -> bool:
        """On a cluster, claim ``reservation_id`` for ``sku`` (``SET NX``): True if this
        call claimed it, False if it was claimed for ``sku`` already (a retry);
        ReservationConflict, nothing written, if it is another product's."""
        held = await self.client.set(
            self._claim_key(reservation_id), sku, nx=True, get=True, px=self._claim_ms(hold)
        )
        if held is None:
            return True
        if _text(held) != sku:
            raise ReservationConflict(reservation_id, _text(held), None, sku, quantity)
        return False

    async def release(self, reservation_id: str) -> bool:
        check_identifier("reservation_id", reservation_id)
        holder = await self._sku_of(reservation_id)
        if holder is None:
            return False
        return await self._release_in(holder, reservation_id)

    async def _release_in(self, holder: str, reservation_id: str) -> bool:
        if self.group_commit:
            released = await self._grouped(holder, _Operation("release", reservation_id)) == "1"
        else:
            sku = self._sku_held_by(holder)
            args = [reservation_id, sku, self.clock(), self.log_max_entries]
            keys = self._atomic_keys(holder)
            released = bool(await self._scripted(self._release, keys, args, sku))
        if released and self.cluster:
            await self.client.delete(self._claim_key(reservation_id))  # the id is free again
        return released

    def _atomic_keys(self, sku: str) -> list[str]:
        """The keys of the reserve and release scripts."""
        return [
            self.product_key(sku),
            self._reservations_key(sku),
            self._expiry_key(sku),
            self._index_of(sku),
            self._log_of(sku),
        ]

    async def commit(self, reservation_id: str) -> bool:
        check_identifier("reservation_id", reservation_id)
        holder = await self._sku_of(reservation_id)
        if holder is None:
            return False
        if self.group_commit:
            committed = await self._grouped(holder, _Operation("commit", reservation_id)) == "1"
        else:
            keys = [
                self._reservations_key(holder),
                self._expiry_key(holder),
                self._committed_key(holder),
                self._index_of(holder),
            ]
            args = [reservation_id, self.clock(), self.retention]
            sku = self._sku_held_by(holder)
            committed = bool(await self._scripted(self._commit, keys, args, sku))
        if committed and self.cluster:  # remembered for the retention, as the reservation
            await self.client.pexpire(self._claim_key(reservation_id), self._claim_ms(0.0))
        return committed

    async def reap(self, *, now: float | None = None) -> int:
        returned = 0
        now = self.clock() if now is None else now
        for sku in sorted(_text(sku) for sku in await self.client.smembers(f"{self.prefix}skus")):
            await self._finish_moves(sku)
            for holder in self._holders(sku):
                expired = await self.client.zrangebyscore(self._expiry_key(holder), "-inf", now)
                for reservation_id in expired:
                    returned += await self._release_in(holder, _text(reservation_id))
                keys = [
                    self._reservations_key(holder),
                    self._committed_key(holder),
                    self._index_of(holder),
                ]
                while await self._scripted(self._forget, keys, [now, 1000], sku) == 1000:
                    pass
        return returned

    async def _grouped(self, sku: str, operation: _Operation) -> str:
        """Group commit: ``operation``'s reply, from the script call that carries it with
        the product's other waiting calls (see the class's docstring); a refusal raised
        as the store's exception."""
        group = self._groups.get(sku)
        if group is None:
            group = self._groups[sku] = _Group(self._sku_held_by(sku))
        if group.busy:
            group.waiting.append(operation)
            try:
                await operation.turn
            except BaseException:  # cancelled: withdrawn, unless its call was sent
                if operation.lead:
                    self._pass_on(sku, group)
                elif not operation.taken:
                    group.waiting.remove(operation)
                raise
            if not operation.lead:
                return operation.outcome(group.sku)
        else:
            group.busy = True
        return await self._lead(sku, group, operation)

    async def _lead(self, sku: str, group: _Group, operation: _Operation) -> str:
        """Send ``operation`` and the oldest waiting calls of the product in one script
        call, answer each, and hand the turn to the next waiting call."""
        batch = [operation]
        waiting = group.waiting
        while waiting and len(batch) < self.max_group:
            batch.append(waiting.popleft())
        for each in batch:
            each.taken = True
        operations = msgspec.json.encode([each.args for each in batch])
        args = [group.sku, self.clock(), self.log_max_entries, self.retention, operations]
        try:
            # Shielded and bounded: the other calls of the group wait for this reply.
            replies: list[Any] | None = None
            with anyio.move_on_after(GROUP_TIMEOUT, shield=True):
                replies = await self._scripted(self._group, self._group_keys(sku), args, group.sku)
            if replies is None:
                raise TimeoutError(
                    f"the store's script call for {len(batch)} operation(s) on "
                    f"{group.sku!r} got no reply within {GROUP_TIMEOUT:g} s (is Redis "
                    "reachable?): whether it ran is unknown"
                )
            for each, reply in zip(batch, replies, strict=True):
                each.reply = _text(reply)
        except Exception as exc:
            for each in batch[1:]:
                each.error = copy.copy(exc)
            raise
        finally:
            # The next group is sent first, then this one answered: Redis runs the next
            # script while this process goes on with the answered calls.
            self._pass_on(sku, group)
            for each in batch[1:]:
                each.answer()
        return operation.outcome(group.sku)

    def _pass_on(self, sku: str, group: _Group) -> None:
        """The turn goes to the oldest waiting call of the product, if any."""
        if group.waiting:
            following = group.waiting.popleft()
            following.lead = True
            following.answer()
        else:
            group.busy = False
            if self._groups.get(sku) is group:
                del self._groups[sku]

    def _group_keys(self, sku: str) -> list[str]:
        """The keys of the group-commit script."""
        return [
            self.product_key(sku),
            self._reservations_key(sku),
            self._expiry_key(sku),
            self._committed_key(sku),
            self._index_of(sku),
            self._log_of(sku),
        ]

    async def _sku_of(self, reservation_id: str) -> str | None:
        if self.cluster:
            sku = await self.client.get(self._claim_key(reservation_id))
        else:
            sku = await self.client.hget(self._index_key, reservation_id)
        return None if sku is None else _text(sku)

    async def _scripted(
        self,
        script: Any,
        keys: Sequence[str],
        args: Sequence[Any],
        sku: str,
        *,
        request: tuple[str, int] | None = None,
        fence: tuple[str, int] | None = None,
        adjustment: tuple[str, int, int] | None = None,
    ) -> Any:
        """Run a script; its error replies raised as the store's exceptions. ``request``
        is a reservation's (id, quantity), for ReservationConflict; ``fence`` a fenced
        write's (lease key, token), for StaleWrite; ``adjustment`` a keyed adjustment's
        (key, d_inventory, d_reserved), for AdjustmentConflict."""
        from redis.exceptions import ResponseError

        try:
            return await script(keys=list(keys), args=list(args))
        except ResponseError as exc:
            refusal = _refusal(str(exc), sku, request, fence, adjustment)
            if refusal is not None:
                raise refusal from None
            raise


def _refusal(
    message: str,
    sku: str,
    request: tuple[str, int] | None = None,
    fence: tuple[str, int] | None = None,
    adjustment: tuple[str, int, int] | None = None,
) -> Exception | None:
    """The store's exception for a script's error reply ``message``, or None (not a
    refusal of the store's). ``request``, ``fence`` and ``adjustment`` as for
    ``RedisInventoryStore._scripted``."""
    if message.startswith("BAD_ARGUMENT "):
        detail = message.removeprefix("BAD_ARGUMENT ").split(" script: ", 1)[0]
        return ValueError(f"refused by the store's script: {detail}")
    if message.startswith("RESERVATION_CONFLICT ") and request is not None:
        held = msgspec.json.decode(message.removeprefix("RESERVATION_CONFLICT "))
        reservation_id, quantity = request
        return ReservationConflict(reservation_id, held["sku"], held.get("quantity"), sku, quantity)
    if message.startswith("ADJUSTMENT_CONFLICT ") and adjustment is not None:
        held_inventory, held_reserved = map(int, message.split()[1:3])
        return AdjustmentConflict(
            adjustment[0], sku, (held_inventory, held_reserved), *adjustment[1:]
        )
    if "UNKNOWN_PRODUCT" in message:
        return UnknownProduct(sku)
    if "INSUFFICIENT_STOCK" in message:
        counts = message.split("INSUFFICIENT_STOCK ", 1)[1].split()[:4]
        inventory, reserved, d_inventory, d_reserved = map(int, counts)
        return insufficient(sku, inventory, reserved, d_inventory, d_reserved)
    if "STALE_WRITE" in message and fence is not None:
        return stale_write(*fence)
    return None


def _share(total: int, parts: int, n: int) -> int:
    """Part ``n`` of ``total`` split over ``parts`` as evenly as integers allow."""
    return total // parts + (1 if n < total % parts else 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _product(sku: str, fields: Iterable[tuple[Any, Any]]) -> Product:
    """A product from its hash's fields and values (as Redis returns them)."""
    return Product(sku=sku, **{_text(k): int(v) for k, v in fields})


GROUP_TIMEOUT = 5.0
"""The longest a group-commit script call is waited for (seconds); past it, every call of
the group raises TimeoutError (whether the script ran is then unknown, as for any call
whose reply is lost)."""


class _Operation:
    """One call of the atomic path, as it waits in its product's group. (An asyncio
    future, not an anyio Event: the Redis client is asyncio's, and a future is the
    cheapest thing to wait on, once per reservation.)"""

    __slots__ = ("args", "error", "lead", "reply", "taken", "turn")

    def __init__(self, *args: str | int | float) -> None:
        self.args = args  # ("reserve", id, quantity, hold), ("release", id), ("commit", id)
        self.reply: str | None = None
        self.error: Exception | None = None
        self.lead = False  # its turn to send the group's next script call
        self.taken = False  # in a script call sent (or being sent)
        self.turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answer(self) -> None:
        """Wake the caller: answered, or its turn to send (unless it was cancelled)."""
        if not self.turn.done():
            self.turn.set_result(None)

    def outcome(self, sku: str) -> str:
        """The reply, or the call's exception raised."""
        if self.error is not None:
            raise self.error
        if self.reply is None:
            raise RuntimeError("the script call of this operation's group did not complete")
        if self.reply.startswith("!"):
            kind, reservation_id, *rest = self.args
            request = (str(reservation_id), int(rest[0])) if kind == "reserve" else None
            refusal = _refusal(self.reply[1:], sku, request)
            raise refusal or RuntimeError(f"unexpected reply of the store: {self.reply:.200}")
        return self.reply


class _Group:
    """The calls of one product (or stock bucket) waiting for its script call in flight."""

    __slots__ = ("busy", "sku", "waiting")

    def __init__(self, sku: str) -> None:
        self.sku = sku  # the product's SKU (a bucket's product's)
        self.busy = False  # a script call in flight, or the turn handed to a waiting call
        self.waiting: deque[_Operation] = deque()
