"""Group commit in the inventory store, in a minimal loop: what the store alone does.

C coroutines in one process call ``RedisInventoryStore.reserve(id, "hot", 1, 900)`` on one
hot product again and again for ``--duration`` seconds, each with a unique reservation
id, and nothing else per call (``lock_contention.py`` wraps every reservation of every
variant in a shielded cancel scope, a notifier stub and its own bookkeeping, which at
this rate costs about as much as the store call). Three stores, interleaved in each
round: one script call per reservation (``group_commit=False``), group commit with the
default ``max_group=256``, and group commit with ``max_group=1000``.

Conservation is checked after every cell: reservations granted == the product's
``reserved_count`` == ``reserve`` entries in the store's log; the script exits 1 if not.

Usage::

    python benchmarks/group_commit.py                 # C=1000, 3 s cells, 2 rounds
    python benchmarks/group_commit.py --quick         # C=100, 0.5 s cells, 1 round

It prints a Markdown table and writes ``benchmarks/results/group_commit.json``
(``--quick``: ``group_commit-quick.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `examples` is not installed: import it from the checkout
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from examples.inventory.store import Product, RedisInventoryStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STORES = {
    "one script call per reservation": {"group_commit": False},
    "group commit, max_group=256 (default)": {"group_commit": True, "max_group": 256},
    "group commit, max_group=1000": {"group_commit": True, "max_group": 1000},
}


async def cell(url: str, name: str, concurrency: int, duration: float) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, max_connections=concurrency + 10, socket_timeout=None)
    prefix = f"bench-gc:{secrets.token_hex(4)}:"
    store = RedisInventoryStore(client, None, prefix=prefix, log_max_entries=10**9, **STORES[name])
    try:
        await store.put(Product(sku="hot", inventory_count=10**9))
        await asyncio.gather(*(client.ping() for _ in range(min(concurrency, 200))))
        latencies: list[float] = []
        end = time.perf_counter() + duration

        async def worker(index: int) -> None:
            n = 0
            while time.perf_counter() < end:
                started = time.perf_counter()
                await store.reserve(f"{index}-{n}", "hot", 1, 900.0)
                latencies.append(time.perf_counter() - started)
                n += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began
        granted = len(latencies)
        reserved = (await store.get("hot")).reserved_count
        logged = await client.xlen(store._log_of("hot"))
        latencies.sort()
        return {
            "store": name,
            "concurrency": concurrency,
            "per_second": granted / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
            "granted": granted,
            "reserved": reserved,
            "logged": logged,
            "conserved": granted == reserved == logged,
        }
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def main(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for name in STORES:
            rows.append(await cell(args.redis_url, name, args.concurrency, args.duration))
            print(
                f"  {name:<40} {rows[-1]['per_second']:>9,.0f}/s  p99 {rows[-1]['p99_ms']:.1f} ms",
                file=sys.stderr,
            )
    summary = []
    print(f"\nC={args.concurrency}, {args.duration:g} s cells, {args.rounds} round(s) (median):\n")
    print("| store | res/s | p50 ms | p99 ms | vs one call per reservation | conserved |")
    print("|---|--:|--:|--:|--:|:-:|")
    base = statistics.median(
        r["per_second"] for r in rows if r["store"] == "one script call per reservation"
    )
    for name in STORES:
        mine = [r for r in rows if r["store"] == name]
        rate = statistics.median(r["per_second"] for r in mine)
        p50 = statistics.median(r["p50_ms"] for r in mine)
        p99 = statistics.median(r["p99_ms"] for r in mine)
        conserved = all(r["conserved"] for r in mine)
        summary.append({"store": name, "per_second": rate, "p50_ms": p50, "p99_ms": p99})
        print(
            f"| {name} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {rate / base:.2f}x | "
            f"{'yes' if conserved else 'NO'} |"
        )
    report = {
        "benchmark": "group_commit",
        "quick": args.quick,
        "parameters": {
            "concurrency": args.concurrency,
            "duration": args.duration,
            "rounds": args.rounds,
        },
        "machine": {
            "python": sys.version,
            "platform": platform.platform(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "summary": summary,
        "rows": rows,
    }
    path = args.json or RESULTS / ("group_commit-quick.json" if args.quick else "group_commit.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON written to {path}")
    if not all(r["conserved"] for r in rows):
        print("NOT CONSERVED: granted, reserved_count and the log disagree", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="C=100, 0.5 s cells, 1 round")
    parser.add_argument("--concurrency", type=int, help="coroutines (default 1000)")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 3)")
    parser.add_argument("--rounds", type=int, help="rounds of the three stores (default 2)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    quick = args.quick
    args.concurrency = args.concurrency or (100 if quick else 1000)
    args.duration = args.duration or (0.5 if quick else 3.0)
    args.rounds = args.rounds or (1 if quick else 2)
    if not (1 <= args.concurrency <= 5000 and 0 < args.duration <= 60 and 1 <= args.rounds <= 10):
        parser.error("--concurrency in [1, 5000], --duration in (0, 60], --rounds in [1, 10]")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
