"""The runs list of the dashboard (issue 18): ``RedisRunStore.page`` over 100,000 runs.

A fresh key prefix is filled with ``--runs`` realistic records through the store's own
scripts (claim key, create, write: the calls of its ``create`` and ``write``, 500 runs
per pipeline; then ``park``, ``bind`` and ``quarantine``), in a mix of five sagas and of
statuses: about 90% succeeded, 5% failed, 2% waiting (each bound to an event key), 1%
running, 1% compensation_failed, 0.7% cancelled, 0.2% failed with a step in doubt, 0.1%
quarantined; 30% of the runs are keyed (an idempotency key).

Then each query is timed ``--repeat`` times, after one warm-up call (p50 and p99 of the
call as the caller sees it, on loopback: the dashboard's server time for a page): the
unfiltered first page and a page 1,000 runs deep (by cursor), each status, a saga, a saga
and status, ``find`` by run id, idempotency key and event key, ``counts``, and the old
``list(status=...)`` for comparison, in the same run. Each result is checked (a page of a
status holds only runs of that status and as many as the mix has, up to 50; ``find``
returns the run; counts match the mix); the script exits 1 if one is wrong. Then the
dashboard's own pages over the same store (``asaga.dashboard``, its ASGI app called in
this process through httpx: the whole request, rendering included, without a network):
the list (first page with counts, 1,000 runs deep, status and saga filters, a search),
the live poll's ``runs.json`` and a run's page, each checked to answer 200 (and to show
the run it should). The prefix is deleted at the end (a bounded SCAN + UNLINK).

Usage::

    python benchmarks/dashboard_list.py            # 100,000 runs, 30 repeats
    python benchmarks/dashboard_list.py --quick    # 5,000 runs, 10 repeats

It prints a Markdown table and writes ``benchmarks/results/dashboard_list.json``
(``--quick``: ``dashboard_list-quick.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from asaga.events import RunFailed, RunStarted, RunSucceeded, StepFailed
from asaga.runs import RedisRunStore, RunRecord, StepRecord
from asaga.runs._record import Claim, Write, encode_event, encode_record
from asaga.runs._redis import _LISTING, _SCRIPTS, _SHAS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_MS = 50.0

SAGAS = {"Checkout": 50, "Refund": 20, "Shipping": 15, "Signup": 10, "NightlyReport": 5}
STATUSES = {  # per 1000 runs
    "succeeded": 900,
    "failed": 50,
    "waiting": 20,
    "running": 10,
    "compensation_failed": 10,
    "cancelled": 7,
    "in_doubt": 2,
    "quarantined": 1,
}
STEPS = ("validate", "reserve", "charge", "ship")


def plan(n: int, rng: random.Random) -> list[tuple[str, str, str, str | None]]:
    """(run id, saga, status, idempotency key) of ``n`` runs, in the order recorded."""
    statuses = [s for s, per in STATUSES.items() for _ in range(per)]
    sagas = [s for s, per in SAGAS.items() for _ in range(per)]
    runs = []
    for i in range(n):
        run_id = f"{secrets.token_hex(8)}-{i}"
        key = f"order-{i}" if rng.random() < 0.3 else None
        runs.append((run_id, rng.choice(sagas), statuses[i % len(statuses)], key))
    rng.shuffle(runs)
    return runs


def record(run_id: str, saga: str, status: str, key: str | None) -> bytes:
    """A record like a 4-step saga's: inputs, steps with small results and timestamps."""
    now = time.time()
    steps = {
        name: StepRecord(
            status="succeeded",
            result=b"\x82\xa2id\xa8r-123456\xa5total\xcb@Y\x00\x00\x00\x00\x00\x00",
            started_at=now,
            ended_at=now + 0.01,
        )
        for name in STEPS
    }
    return encode_record(
        RunRecord(
            saga=saga,
            saga_version="1",
            run_id=run_id,
            status=status,  # type: ignore[arg-type]  # one of STATUSES' run statuses
            inputs=b"\x83\xa8order_id\xa6o-1234\xa3sku\xa6widget\xa8quantity\x02",
            fingerprint="5f2b1c0e9d8a7b6c",
            idempotency_key=key,
            steps=steps,
        )
    )


async def fill(store: RedisRunStore, runs: list[tuple[str, str, str, str | None]]) -> float:
    """Record ``runs``: the store's own scripts (claim key, create, write: the calls its
    ``create`` and ``write`` make), 500 runs per pipeline; then the waiting ones park and
    bind their event key and the quarantined ones are set aside, through the store's
    methods. Seconds."""
    start = time.perf_counter()
    for text in _SCRIPTS.values():
        await store.client.script_load(text)
    window = 3_600_000
    for i in range(0, len(runs), 500):
        chunk = runs[i : i + 500]
        async with store.client.pipeline(transaction=False) as pipe:
            for run_id, saga, status, key in chunk:
                first, final = writes(run_id, saga, status, key)
                if key is not None:
                    keys = [store._idempotency_key(Claim(saga=saga, key=key, window=3600.0))]
                    pipe.evalsha(_SHAS["claim_key"], 1, *keys, run_id, window, "")
                keys, args = store._create_call(first)
                pipe.evalsha(_SHAS["create"], len(keys), *keys, *args)
                if final is not None:
                    keys, args = store._write_call(final)
                    pipe.evalsha(_SHAS["write"], len(keys), *keys, *args)
            replies = await pipe.execute()
        if any(r not in (None, 1) for r in replies):
            raise RuntimeError(f"a script refused a write: {set(replies) - {None, 1}}")
    rest = [r for r in runs if r[2] in ("waiting", "quarantined")]
    gate = asyncio.Semaphore(40)  # the client's connections
    await asyncio.gather(*(settle(store, gate, *run) for run in rest))
    return time.perf_counter() - start


def writes(run_id: str, saga: str, status: str, key: str | None) -> tuple[Write, Write | None]:
    """The creation of a run, and the write that ends it (``None``: it does not end)."""
    started = encode_event(RunStarted(saga=saga, run_id=run_id))
    first = Write(
        run_id=run_id,
        record=record(run_id, saga, "running", key),
        status="running",
        seq=1,
        nonce=run_id,
        events=(started,),
    )
    if status in ("running", "waiting", "quarantined"):
        return first, None
    final = "failed" if status == "in_doubt" else status
    if final == "succeeded":
        end = encode_event(RunSucceeded(saga=saga, run_id=run_id, duration=0.05))
        events: tuple[bytes, ...] = (end,)
    else:
        fail = StepFailed(saga=saga, run_id=run_id, step="charge", attempt=1, error="Declined()")
        doubt = ("ship",) if status == "in_doubt" else ()
        failed = RunFailed(saga=saga, run_id=run_id, failed_step="charge", in_doubt=doubt)
        events = (encode_event(fail), encode_event(failed))
    return first, Write(
        run_id=run_id,
        record=record(run_id, saga, final, key),
        status=final,  # type: ignore[arg-type]  # a run status
        seq=2,
        final=True,
        events=events,
    )


async def settle(
    store: RedisRunStore,
    gate: asyncio.Semaphore,
    run_id: str,
    saga: str,
    status: str,
    key: str | None,
) -> None:
    """A recorded run parks (and waits for an event key) or is quarantined."""
    async with gate:
        if status == "quarantined":
            await store.quarantine(run_id, "does not decode: a newer schema")
            return
        parked = Write(
            run_id=run_id, record=record(run_id, saga, "waiting", key), status="waiting", seq=2
        )
        await store.park(parked, time.time() + 3600)
        await store.bind(saga, f"parcel-{run_id}", run_id, time.time() + 3600)


_NO_LISTING = """
local function listing_of(key) return {} end
local function relist() end
local function finish_listing() end
local function cap_quarantined() end
local function leaves_doubt() return false end
local function trim_keeping_unfinished(base, name, suffix, cutoff)
  redis.call('zremrangebyscore', base .. name, '-inf', cutoff)
end
"""


async def upkeep(client: aioredis.Redis, n: int, rounds: int) -> list[dict[str, Any]]:
    """What the listing indexes cost the write path: ``n`` runs created and ended by the
    store's scripts (500 per pipeline), and the same with the listing helpers made no-ops,
    interleaved ``rounds`` times: wall time per run, and Redis's own time per script call
    (INFO commandstats; other clients' scripts meanwhile count too)."""
    cells: dict[str, list[tuple[float, float]]] = {"with listings": [], "without listings": []}
    for _ in range(rounds):
        for label in cells:
            texts = dict(_SCRIPTS)
            if label == "without listings":
                texts = {k: v.replace(_LISTING, _NO_LISTING) for k, v in texts.items()}
            shas = {k: await client.script_load(t) for k, t in texts.items()}
            prefix = f"bench-dash-upkeep:{secrets.token_hex(4)}:"
            try:
                wall, per_call = await _upkeep_cell(client, prefix, shas, n)
            finally:  # even when interrupted: nothing of the cell is left behind
                await clean(client, prefix)
            cells[label].append((wall / n * 1e6, per_call))
    return [
        {
            "write path": label,
            "us_per_run_wall": statistics.median(w for w, _ in cells[label]),
            "us_per_script_call_redis": statistics.median(c for _, c in cells[label]),
        }
        for label in cells
    ]


async def _upkeep_cell(
    client: aioredis.Redis, prefix: str, shas: dict[str, str], n: int
) -> tuple[float, float]:
    """One cell of :func:`upkeep`: seconds of wall time, and Redis us per script call."""
    async with RedisRunStore(client, prefix=prefix) as store:
        calls = []
        for run_id, saga, status, key in plan(n, random.Random(7)):
            first, final = writes(run_id, saga, status, key)
            calls.append((shas["create"], *store._create_call(first)))
            if final is not None:
                calls.append((shas["write"], *store._write_call(final)))
        before = (await client.info("commandstats"))["cmdstat_evalsha"]
        start = time.perf_counter()
        for i in range(0, len(calls), 500):
            async with client.pipeline(transaction=False) as pipe:
                for sha, keys, args in calls[i : i + 500]:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                await pipe.execute()
        wall = time.perf_counter() - start
        after = (await client.info("commandstats"))["cmdstat_evalsha"]
    per_call = (after["usec"] - before["usec"]) / max(1, after["calls"] - before["calls"])
    return wall, per_call


async def scan_list(store: RedisRunStore, status: str, limit: int = 50) -> list[RunRecord]:
    """The baseline: how ``RedisRunStore.list`` found runs before the listings (it now
    follows ``page()``): a bounded scan of the time index, each record read and filtered
    on the client."""
    found: list[RunRecord] = []
    page = max(limit, 50)
    index = store._merged("index", newest_first=True, page=page)
    scanned = 0
    while len(found) < limit and scanned < 100 * page:  # as bounded as it was
        ids = [run_id for run_id, _ in await index.take(page)]
        if not ids:
            break
        async with store.client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(store._run_key(run_id), "record", "status", "owner", "quarantined")
            rows = await pipe.execute()
        scanned += len(ids)
        for run_id, (data, st, owner, aside) in zip(ids, rows, strict=True):
            if data is None or aside is not None or (st or b"").decode() != status:
                continue
            found.append(store._assemble(run_id, data, st, owner, ()))
            if len(found) >= limit:
                break
    return found


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> tuple[list[float], Any]:
    """Milliseconds of ``repeat`` calls (after one warm-up), and the last result."""
    result = await call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = await call()
        times.append((time.perf_counter() - start) * 1000)
    return times, result


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> int:
    n = args.runs or (5_000 if args.quick else 100_000)
    repeat = args.repeat or (10 if args.quick else 30)
    rng = random.Random(18)
    client = aioredis.Redis.from_url(args.redis_url, max_connections=60, socket_timeout=None)
    prefix = f"bench-dash:{secrets.token_hex(4)}:"
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    runs = plan(n, rng)
    truth = Counter(status for _, _, status, _ in runs)
    try:
        async with RedisRunStore(client, prefix=prefix) as store:
            seconds = await fill(store, runs)
            print(f"filled {n:,} runs in {seconds:.1f} s ({n / seconds:,.0f} runs/s)")
            by_status = {s: [r for r in runs if r[2] == s] for s in STATUSES}
            keyed = next(r for r in runs if r[3] is not None)
            waiting = by_status["waiting"][0]
            deep_cursor = None
            for _ in range(20):  # 1,000 runs deep
                deep_cursor = (await store.page(limit=50, cursor=deep_cursor)).cursor

            async def check_page(label: str, status: str | None, saga: str | None) -> None:
                def call() -> Awaitable[Any]:
                    return store.page(status=status, saga=saga)

                times, page = await timed(call, repeat)
                want = 50
                if status is not None:
                    matching = [r for r in runs if r[2] == status and saga in (None, r[1])]
                    if status in ("failed",):  # in doubt runs are failed runs too
                        matching += [r for r in by_status["in_doubt"] if saga in (None, r[1])]
                    want = min(50, len(matching))
                elif saga is not None:
                    want = min(50, sum(1 for r in runs if r[1] == saga))
                wrong = [
                    r.run_id
                    for r in page.runs
                    if (status not in (None, "in_doubt", "quarantined") and r.status != status)
                    or (saga is not None and r.saga != saga)
                ]
                if wrong or len(page.runs) != want:
                    problems.append(f"{label}: {len(page.runs)} runs (want {want}), wrong {wrong}")
                rows.append(row(label, times, len(page.runs)))

            await check_page("page(), first page", None, None)
            times, page = await timed(lambda: store.page(cursor=deep_cursor), repeat)
            rows.append(row("page(), 1,000 runs deep (cursor)", times, len(page.runs)))
            for status in STATUSES:
                label = f"page(status={status!r}) ({truth[status]:,} runs)"
                await check_page(label, status, None)
            await check_page("page(saga='Refund')", None, "Refund")
            await check_page("page(saga='Refund', status='failed')", "failed", "Refund")
            await check_page("page(saga='Refund', status='in_doubt')", "in_doubt", "Refund")
            for label, text, want_id in (
                ("find(run id)", runs[n // 2][0], runs[n // 2][0]),
                ("find(idempotency key)", keyed[3] or "", keyed[0]),
                ("find(event key)", f"parcel-{waiting[0]}", waiting[0]),
            ):
                times, found = await timed(partial(store.find, text), repeat)
                if [r.run_id for r in found] != [want_id]:
                    problems.append(f"{label}: found {[r.run_id for r in found]}")
                rows.append(row(label, times, len(found)))
            times, counts = await timed(store.counts, repeat)
            expected_counts = {s: truth[s] for s in STATUSES}
            expected_counts["failed"] += truth["in_doubt"]
            got = {s: counts[s] for s in STATUSES}
            if got != expected_counts:
                problems.append(f"counts: {got} != {expected_counts}")
            rows.append(row("counts()", times, sum(got.values())))
            for status in ("succeeded", "compensation_failed"):  # the old scan: no in_doubt
                old_repeat = max(3, repeat // 3)
                times, listed = await timed(partial(scan_list, store, status), old_repeat)
                rows.append(row(f"old list(status={status!r}), for comparison", times, len(listed)))
            pages = await dashboard_pages(store, runs, deep_cursor, repeat, problems)
        cost = await upkeep(client, 1000 if args.quick else 5000, 1 if args.quick else 3)
    finally:
        deleted = await clean(client, prefix)
        left = [k async for k in client.scan_iter(match=f"{prefix}*", count=5000)]
        await client.aclose()
    print(f"\n{n:,} runs; p50/p99 of {repeat} calls; target p50 <= {TARGET_MS:g} ms\n")
    print("| query | runs returned | p50 ms | p99 ms | p50 within target |")
    print("|---|--:|--:|--:|:-:|")
    for r in rows:
        ok = "yes" if r["p50_ms"] <= TARGET_MS else "**no**"
        print(f"| {r['query']} | {r['returned']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ok} |")
    print("\nThe dashboard's pages over the same runs: the whole request, in process (ASGI,")
    print(f"no network): p50/p99 of {repeat} requests; target p50 <= {TARGET_MS:g} ms\n")
    print("| request | p50 ms | p99 ms | p50 within target |")
    print("|---|--:|--:|:-:|")
    for r in pages:
        ok = "yes" if r["p50_ms"] <= TARGET_MS else "**no**"
        print(f"| {r['query']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ok} |")
    print(f"\nfill: {seconds:.1f} s; cleaned up {deleted:,} keys\n")
    print("| write path (create + end of a run) | us per run (wall) | us per script call (Redis) |")
    print("|---|--:|--:|")
    for c in cost:
        print(
            f"| {c['write path']} | {c['us_per_run_wall']:.0f} "
            f"| {c['us_per_script_call_redis']:.0f} |"
        )
    report = {
        "benchmark": "dashboard_list",
        "runs": n,
        "repeat": repeat,
        "fill_seconds": seconds,
        "target_p50_ms": TARGET_MS,
        "python": platform.python_version(),
        "rows": rows,
        "pages": pages,
        "write_path": cost,
        "keys_left": len(left),
        "problems": problems,
    }
    path = args.json or RESULTS / (
        "dashboard_list-quick.json" if args.quick else "dashboard_list.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    for problem in problems:
        print(f"WRONG: {problem}", file=sys.stderr)
    return 1 if problems else 0


async def dashboard_pages(
    store: RedisRunStore,
    runs: list[tuple[str, str, str, str | None]],
    deep_cursor: str | None,
    repeat: int,
    problems: list[str],
) -> list[dict[str, Any]]:
    """Time the dashboard's pages (asaga.dashboard, its ASGI app through httpx, in this
    process) over the filled store: what a browser asks for, whole, server side."""
    import httpx

    from asaga.dashboard import Dashboard

    first = (await store.page()).runs[0].run_id
    cases: list[tuple[str, str, dict[str, str], str | None]] = [
        ("GET / (first page, counts)", "/", {}, first),
        ("GET / 1,000 runs deep (cursor)", "/", {"cursor": deep_cursor or ""}, None),
        ("GET /?status=failed", "/", {"status": "failed"}, None),
        ("GET /?status=compensation_failed", "/", {"status": "compensation_failed"}, None),
        ("GET /?status=in_doubt", "/", {"status": "in_doubt"}, None),
        ("GET /?saga=Refund&status=failed", "/", {"saga": "Refund", "status": "failed"}, None),
        ("GET /?q=<run id> (search)", "/", {"q": runs[len(runs) // 2][0]}, runs[len(runs) // 2][0]),
        ("GET /runs.json (the live poll)", "/runs.json", {}, first),
        ("GET /run?id= (a run's page)", "/run", {"id": first}, first),
    ]
    found: list[dict[str, Any]] = []
    app = Dashboard(store).asgi()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for label, path, params, shows in cases:
            answer = await http.get(path, params=params)  # warm
            if answer.status_code != 200 or (shows is not None and shows not in answer.text):
                problems.append(f"{label}: status {answer.status_code}, shows {shows}: no")
            times: list[float] = []
            for _ in range(repeat):
                started = time.perf_counter()
                await http.get(path, params=params)
                times.append((time.perf_counter() - started) * 1000)
            found.append(row(label, times, 0))
    return found


def row(query: str, times: list[float], returned: int) -> dict[str, Any]:
    return {
        "query": query,
        "returned": returned,
        "p50_ms": statistics.median(times),
        "p99_ms": pct(times, 0.99),
    }


async def clean(client: aioredis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN + UNLINK, a bounded number of rounds)."""
    deleted = 0
    cursor = 0
    for _ in range(100_000):
        cursor, keys = await client.scan(cursor, match=f"{prefix}*", count=5000)
        if keys:
            deleted += await client.unlink(*keys)
        if cursor == 0:
            break
    return deleted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5,000 runs, 10 repeats")
    parser.add_argument("--runs", type=int, help="runs to record (default 100,000)")
    parser.add_argument("--repeat", type=int, help="calls timed per query (default 30)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
