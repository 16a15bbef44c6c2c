"""RedisRunStore on a real Redis Cluster of three primaries: durable runs spread over the
shards, one run per idempotency key (and a key whose run was never recorded taken over),
recovery of the runs of a dead owner by exactly one recoverer, undo, quarantine, and
every key bounded.

A script whose keys were in two slots would fail here: redis-py refuses it before
sending it (and the server would too), so each test also pins the one-slot layout.
"""

from __future__ import annotations

import anyio
import pytest
from redis.asyncio.cluster import RedisCluster

from asaga import IdempotencyKeyReused, Saga, step
from asaga.runs import RedisRunStore, recover
from asaga.runs._record import Claim
from examples.inventory import Product, RedisInventoryStore
from tests.cluster.nodes import keys_by_node, slots_of
from tests.redis_servers import RedisClusterServers
from tests.sagas.durable import DurableCheckout, DurableHold, Payments
from tests.unfinished_runs import unfinished_run

pytestmark = pytest.mark.anyio


class Mine(Saga):
    """The saga whose runs the sweeps recover (its records: tests/unfinished_runs.py)."""

    @step
    async def work(run_id: str) -> str:
        return run_id


async def every_key_is_bounded(cluster: RedisCluster, keys: dict[int, list[str]]) -> None:
    """Each key expires, or is a sorted set of a shard: running, index or quarantine, or
    a listing index (runs:by-status:..., runs:by-saga..., runs:sagas: trimmed to the
    retention)."""
    sets = ("runs:running", "runs:index", "runs:quarantine", "runs:sagas")
    for key in (k for ks in keys.values() for k in ks):
        listing = "}runs:by-status:" in key or "}runs:by-saga" in key
        assert key.endswith(sets) or listing or await cluster.pttl(key) > 0, key


async def test_durable_runs_are_spread_over_the_nodes(
    cluster: RedisCluster, cluster_prefix: str, redis_cluster: RedisClusterServers
) -> None:
    """24 durable checkouts succeed, each recorded with its events; `list` returns them
    newest first across the shards; a run's hash and events share a slot, and the runs
    sit in several slots on at least two nodes. Every key is bounded."""
    inventory = RedisInventoryStore(cluster, None, prefix=f"{cluster_prefix}inv:")
    payments = Payments(cluster, f"{cluster_prefix}pay:")
    await inventory.put(Product(sku="widget", inventory_count=100))
    prefix = f"{cluster_prefix}runs:"
    async with RedisRunStore(cluster, prefix=prefix) as runs:
        results = []
        for _ in range(24):
            results.append(
                await DurableCheckout.run(
                    sku="widget", quantity=1, store=inventory, payments=payments, runs=runs
                )
            )
        for result in results:
            record = await runs.load(result.run_id, events=True)
            assert record.status == "succeeded"
            assert [e.kind for e in record.events][-1] == "run_succeeded"
        listed = await runs.list(limit=100)
        assert [r.run_id for r in listed] == [r.run_id for r in reversed(results)]
        assert [r.run_id for r in await runs.list(limit=5)] == [r.run_id for r in listed[:5]]
    placed = keys_by_node(redis_cluster.ports, prefix)
    assert len(placed) >= 2, placed
    records = [k for keys in placed.values() for k in keys if "}run:" in k]
    assert len(records) == 24
    assert len(slots_of(records)) >= 4
    for key in records:
        assert slots_of([key, key.replace("}run:", "}events:")]) == slots_of([key])
    await every_key_is_bounded(cluster, placed)
    assert (await inventory.get("widget")).reserved_count == 24


async def test_one_idempotency_key_makes_one_run(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """20 concurrent calls with one key: one run (the key's script is the only claim),
    the others wait for its finish, notified across nodes, and replay it; a later call
    replays it; other inputs under the key are refused."""
    executions = 0
    running, release = anyio.Event(), anyio.Event()

    class Charge(Saga):
        amount: int

        @step
        async def charge(amount: int, run_id: str) -> str:
            nonlocal executions
            executions += 1
            running.set()
            await release.wait()
            return f"ch-{run_id}"

    results = []
    async with RedisRunStore(cluster, prefix=cluster_prefix, recheck=5.0) as runs:

        async def call() -> None:
            results.append(await Charge.run(amount=5, runs=runs, idempotency_key="order-1"))

        with anyio.fail_after(10):  # waiters are woken by the notification, not `recheck`
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(call)
                await running.wait()
                release.set()
        later = await Charge.run(amount=5, runs=runs, idempotency_key="order-1")
        with pytest.raises(IdempotencyKeyReused):
            await Charge.run(amount=6, runs=runs, idempotency_key="order-1")
    assert executions == 1
    assert len({r.run_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert later.replayed


async def test_a_key_whose_run_is_not_recorded_yet_is_waited_for_then_taken_over(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """The key is claimed before its run is recorded (two slots). A caller that finds the
    key naming a run without a record waits for it while the claim is young: recorded
    meanwhile, it is the key's run (here another saga's inputs: IdempotencyKeyReused).
    Never recorded (its caller died), the run id is voided once the claim is two
    write_timeout old, and the caller runs; the dead caller's creation, coming late,
    writes nothing and names the key's run instead. A claim already that old is voided
    at once."""
    executions = 0

    class Once(Saga):
        @step
        async def work(run_id: str) -> str:
            nonlocal executions
            executions += 1
            return run_id

    def watch(runs: RedisRunStore) -> tuple[list[tuple[str, object]], anyio.Event]:
        """The store's probes of unrecorded runs (void or not, reply), and an event set
        when one found no record."""
        probes: list[tuple[str, object]] = []
        unrecorded = anyio.Event()
        probe = runs._probe

        async def watched(*, keys: list[str], args: list[object]) -> object:
            reply = await probe(keys=keys, args=args)
            probes.append((str(args[0]), reply))
            if reply is None:
                unrecorded.set()
            return reply

        runs._probe = watched  # type: ignore[method-assign]  # to see the caller wait
        return probes, unrecorded

    async with (
        RedisRunStore(cluster, prefix=cluster_prefix) as patient,  # waits up to 10 s
        RedisRunStore(cluster, prefix=cluster_prefix, write_timeout=0.1) as runs,
    ):
        window = round(runs.idempotency_window * 1000)

        # Recorded while the caller waits: it is the key's run.
        _, unrecorded = watch(patient)
        await cluster.set(f"{cluster_prefix}key:Once:k-1", "late", px=window)
        claim = Claim(saga="Once", key="k-1", window=runs.idempotency_window)
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                with pytest.raises(IdempotencyKeyReused):
                    await Once.run(runs=patient, idempotency_key="k-1")

            tg.start_soon(call)
            with anyio.fail_after(5):
                await unrecorded.wait()
            assert await runs.create(unfinished_run("Once", "late"), claim) is None
        assert await cluster.hget(runs._run_key("late"), "status") == b"running"

        # Never recorded: voided after the wait; its late creation is refused.
        probes, _ = watch(runs)
        key = f"{cluster_prefix}key:Once:k-2"
        await cluster.set(key, "ghost", px=window)
        result = await Once.run(runs=runs, idempotency_key="k-2")
        assert not result.replayed
        assert probes[0] == ("0", None)  # waited first
        assert probes[-1] == ("1", b"void")  # then voided
        assert await cluster.get(key) == result.run_id.encode()
        ghost = runs._run_key("ghost")
        assert await cluster.hgetall(ghost) == {b"status": b"void"}
        assert await cluster.pttl(ghost) > 0
        claim = Claim(saga="Once", key="k-2", window=runs.idempotency_window)
        assert await runs.create(unfinished_run("Once", "ghost"), claim) == result.run_id
        assert await cluster.hgetall(ghost) == {b"status": b"void"}
        assert (await Once.run(runs=runs, idempotency_key="k-2")).replayed

        # An old claim (its run's record expired, or was lost): voided at once.
        probes.clear()
        await cluster.set(f"{cluster_prefix}key:Once:k-3", "gone", px=window - 60_000)
        assert not (await Once.run(runs=runs, idempotency_key="k-3")).replayed
        assert probes == [("1", b"void")]
    assert executions == 2


async def test_runs_of_a_dead_owner_are_recovered_by_exactly_one_recoverer(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """30 unfinished runs in every shard: not taken while their owner's lease lives (in
    every shard); once it is gone, two concurrent recoverers finish each run once."""
    ids = [f"m-{n}" for n in range(30)]
    async with RedisRunStore(cluster, prefix=cluster_prefix) as dead:
        for run_id in ids:
            await dead.create(unfinished_run("Mine", run_id), None)
        async with RedisRunStore(cluster, prefix=cluster_prefix) as early:
            assert await recover(early, sagas=[Mine]) == []  # the owner is alive
    # The dead store's exit dropped its lease (in each shard): its runs are abandoned.
    async with (
        RedisRunStore(cluster, prefix=cluster_prefix) as first,
        RedisRunStore(cluster, prefix=cluster_prefix) as second,
    ):
        reports: list[list[str]] = []

        async def sweep(store: RedisRunStore) -> None:
            report = await recover(store, sagas=[Mine], limit=1000)
            assert {r.outcome for r in report} <= {"succeeded"}, report
            reports.append([r.run_id for r in report])

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, first)
            tg.start_soon(sweep, second)
        taken = [run_id for report in reports for run_id in report]
        assert sorted(taken) == sorted(ids)  # each run taken by exactly one
        assert await recover(first, sagas=[Mine]) == []
        for run_id in ids:
            assert (await first.load(run_id)).status == "succeeded"


async def test_undo_after_success_compensates_once(
    cluster: RedisCluster, cluster_prefix: str
) -> None:
    """Undoing a succeeded run compensates it from its record (the undo claim and the
    owner lease in the run's slot); a second undo does nothing and says so."""
    inventory = RedisInventoryStore(cluster, None, prefix=f"{cluster_prefix}inv:")
    payments = Payments(cluster, f"{cluster_prefix}pay:")
    await inventory.put(Product(sku="widget", inventory_count=10))
    async with RedisRunStore(cluster, prefix=f"{cluster_prefix}runs:") as runs:
        result = await DurableHold.run(
            sku="widget", quantity=4, store=inventory, payments=payments, runs=runs
        )
        first = await DurableHold.undo(result.run_id, runs=runs, store=inventory, payments=payments)
        second = await DurableHold.undo(
            result.run_id, runs=runs, store=inventory, payments=payments
        )
        record = await runs.load(result.run_id)
    assert (first.already, first.status, first.compensated) == (
        False,
        "undone",
        ("charge", "reserve"),
    )
    assert (second.already, second.status) == (True, "undone")
    assert record.status == "undone"
    assert (await inventory.get("widget")).reserved_count == 0
    assert [e.operation for e in await inventory.transactions()] == ["reserve", "release"]


async def test_a_foreign_record_is_quarantined_and_readmitted(
    cluster: RedisCluster, cluster_prefix: str, redis_cluster: RedisClusterServers
) -> None:
    """Among abandoned runs, a record foreign to its index (saga Other listed as Mine) is
    quarantined by the sweep that takes it, the others recovered; it is listed with its
    reason, and once its record reads, readmitted and recovered. Every key is bounded."""
    async with RedisRunStore(cluster, prefix=cluster_prefix) as dead:
        await dead.create(unfinished_run("Other", "foreign-1"), None)
        await cluster.hset(dead._run_key("foreign-1"), "saga", "Mine")
        for n in range(6):
            await dead.create(unfinished_run("Mine", f"mine-{n}"), None)
    async with RedisRunStore(cluster, prefix=cluster_prefix) as runs:
        outcomes = {r.run_id: r.outcome for r in await recover(runs, sagas=[Mine])}
        assert outcomes == {"foreign-1": "quarantined"} | {
            f"mine-{n}": "succeeded" for n in range(6)
        }
        [aside] = await runs.quarantined()
        assert (aside.run_id, aside.saga, aside.by) == ("foreign-1", "Mine", runs.owner)
        assert "foreign" in aside.reason
        assert await recover(runs, sagas=[Mine]) == []
        assert [r.run_id for r in await runs.list(limit=100)].count("foreign-1") == 0
        await cluster.hset(
            runs._run_key("foreign-1"), "record", unfinished_run("Mine", "foreign-1").record
        )
        await runs.readmit("foreign-1")
        assert await runs.quarantined() == []
        report = await recover(runs, sagas=[Mine])
        assert [(r.run_id, r.outcome) for r in report] == [("foreign-1", "succeeded")]
    await every_key_is_bounded(cluster, keys_by_node(redis_cluster.ports, cluster_prefix))


async def test_from_url_with_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    """``from_url(url, cluster=True)`` makes (and closes) a cluster client; a prefix with
    a brace is refused on a cluster."""
    runs = RedisRunStore.from_url(redis_cluster.url, cluster=True, prefix=cluster_prefix)
    assert isinstance(runs.client, RedisCluster)
    async with runs:
        result = await Mine.run(runs=runs)
        assert (await runs.load(result.run_id)).status == "succeeded"
    with pytest.raises(ValueError, match="prefix may not contain"):
        RedisRunStore(runs.client, prefix="app{1}:")


async def test_the_cli_reads_a_cluster_store_with_cluster(
    cluster: RedisCluster,
    cluster_prefix: str,
    redis_cluster: RedisClusterServers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``asaga runs list --cluster`` (and show) read a store on the cluster, through the
    node the URL names."""
    from asaga._cli import main

    prefix = f"{cluster_prefix}cli:"
    async with RedisRunStore(cluster, prefix=prefix) as runs:
        done = [await Mine.run(runs=runs) for _ in range(3)]
    options = ["--redis", redis_cluster.url, "--cluster", "--prefix", prefix]
    # The command runs its own event loop: in a thread, as any blocking call here.
    assert await anyio.to_thread.run_sync(main, ["runs", "list", *options]) == 0
    listed = capsys.readouterr().out
    assert all(result.run_id in listed for result in done)
    shown = ["runs", "show", done[0].run_id, *options]
    assert await anyio.to_thread.run_sync(main, shown) == 0
    assert "succeeded" in capsys.readouterr().out


async def test_a_plain_client_on_a_cluster_node_is_told_to_use_cluster(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    """A store opened with a plain client on a cluster node (the CLI without --cluster)
    says that the server is a cluster node and what to pass, not a bare MovedError."""
    from asaga import StoreUnavailable

    runs = RedisRunStore.from_url(redis_cluster.url, prefix=f"{cluster_prefix}plain:")
    failure: StoreUnavailable | None = None
    for _ in range(8):  # its lease key lands on the URL's node for some prefixes: retry
        try:
            async with runs:
                pass
        except StoreUnavailable as exc:
            failure = exc
            break
        runs = RedisRunStore.from_url(redis_cluster.url, prefix=f"{cluster_prefix}p{_}:")
    assert failure is not None
    assert "Redis Cluster (it answered MOVED)" in str(failure)
    assert "cluster=True" in str(failure)
