"""What each node of the test cluster holds: the keys under a prefix, per node and per
slot (to check that the stores spread their keys), and their deletion."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.crc import key_slot

__all__ = ["delete_prefix", "keys_by_node", "slots_of"]


def keys_by_node(ports: Sequence[int], prefix: str) -> dict[int, list[str]]:
    """The keys under ``prefix`` on each node (by port); nodes holding none are left out."""
    found: dict[int, list[str]] = {}
    for port in ports:
        node = redis.Redis(port=port)
        try:
            keys = sorted(k.decode() for k in node.scan_iter(match=f"{prefix}*", count=1000))
        finally:
            node.close()
        if keys:
            found[port] = keys
    return found


def slots_of(keys: Sequence[str]) -> set[int]:
    """The cluster hash slots of ``keys``."""
    return {key_slot(key.encode()) for key in keys}


def delete_prefix(ports: Sequence[int], prefix: str) -> None:
    """Delete every key under ``prefix``, node by node (one key at a time: a node refuses
    a DEL of keys of several slots)."""
    for port, keys in keys_by_node(ports, prefix).items():
        node = redis.Redis(port=port)
        try:
            for key in keys:
                node.delete(key)
        finally:
            node.close()
