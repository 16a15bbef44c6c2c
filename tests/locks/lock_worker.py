"""A separate OS process that contends for a Redis lease (used by tests/locks/test_locks_redis.py).

    python tests/locks/lock_worker.py URL PREFIX MODE ...

Modes:
  count N            take the lease N times, incrementing a Redis counter read-modify-write
                     (GET then SET, unsafe without mutual exclusion); print the count done
  reserve N STALL    N reservations of 1 unit with a fenced write; with probability STALL
                     the holder blocks its whole process for 150 ms (TTL is 100 ms);
                     print "reserved R stale S"
  crash TTL          take the lease, print "held", then exit without releasing
"""

import os
import random
import sys
import time

import anyio
import redis.asyncio as aioredis
import structlog

from asaga.locks import LeaseLost, RedisLockProvider

# stdout carries what the test reads; asaga's log lines (a warning about the test Redis's
# persistence, say) go to stderr.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


async def main(url: str, prefix: str, mode: str, *args: str) -> None:
    client = aioredis.Redis.from_url(url)
    async with RedisLockProvider(client, prefix=prefix) as locks:
        if mode == "count":
            done = 0
            for _ in range(int(args[0])):
                async with locks.lease("counter", ttl=5.0, wait=30.0):
                    value = int(await client.get(f"{prefix}counter") or 0)
                    await client.set(f"{prefix}counter", value + 1)
                    done += 1
            print(done, flush=True)
        elif mode == "reserve":
            reserved = stale = 0
            stall = float(args[1])
            for _ in range(int(args[0])):
                try:
                    async with locks.lease("sku", ttl=0.1, wait=30.0) as lease:
                        stock = int(await client.get(f"{prefix}stock") or 0)
                        if stock <= 0:
                            break
                        if random.random() < stall:
                            time.sleep(0.15)  # noqa: ASYNC251 - the whole process stalls past the TTL
                        await locks.fenced(lease, ("SET", f"{prefix}stock", stock - 1))
                        reserved += 1
                except LeaseLost:  # includes StaleWrite: the write was refused
                    stale += 1
            print(f"reserved {reserved} stale {stale}", flush=True)
        elif mode == "crash":
            async with locks.lease("crash", ttl=float(args[0])):
                print("held", flush=True)
                os._exit(0)
    await client.aclose()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
