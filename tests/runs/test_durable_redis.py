"""Durable runs in Redis, against the real server: crashes, recovery, idempotency keys,
undo, outages (asyncio: redis-py's client is asyncio-only).

Each test uses its own key prefix (deleted afterwards). A crashed process is a real OS
process (tests/runs/durable_worker.py) killed with SIGKILL.
"""

from __future__ import annotations

import random
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from asaga import CorruptRecord, IdempotencyKeyReused, Saga, SagaFailed, StoreUnavailable, step
from asaga.runs import RedisRunStore, recover
from examples.inventory import Product, RedisInventoryStore
from tests.redis_servers import AOF_ALWAYS, RedisServer, redis_server
from tests.sagas.durable import DurableCheckout, DurableHold, Payments
from tests.unfinished_runs import unfinished_run

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("durable_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def read_line(stream: anyio.abc.ByteReceiveStream, buffer: bytearray) -> str:
    """One line of a child's stdout (bounded: the child prints within seconds)."""
    with anyio.fail_after(20):
        while b"\n" not in buffer:
            buffer.extend(await stream.receive())
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def kill_worker_at_random(
    redis_url: str, prefix: str, seed: int, runs: int, owner_ttl: float = 60.0
) -> str:
    """Start a worker running ``runs`` checkouts, kill -9 it at a random point of its
    work; return its owner id."""
    command = [
        sys.executable,
        str(WORKER),
        redis_url,
        prefix,
        str(seed),
        str(runs),
        str(owner_ttl),
    ]
    async with await anyio.open_process(command, cwd=ROOT) as process:
        assert process.stdout is not None
        buffer = bytearray()
        owner = (await read_line(process.stdout, buffer)).split()[1]
        # A random point of its work (the runs take about half a second in all).
        await anyio.sleep(random.Random(seed).uniform(0.02, 0.5))
        process.kill()
        await process.wait()
    return owner


async def reconcile(
    runs: RedisRunStore, inventory: RedisInventoryStore, payments: Payments
) -> Counter[str]:
    """Every recorded run has finished, stock agrees with the transaction log, and the
    non-idempotent charge never ran twice for one run. Returns the runs by status."""
    records = await runs.list(limit=10_000)
    statuses: Counter[str] = Counter(r.status for r in records)
    assert all(r.finished for r in records), statuses
    by_run: dict[str, list[str]] = {}
    for entry in await inventory.transactions():
        by_run.setdefault(entry.run_id, []).append(entry.operation)
    reserved = 0
    for entry in await inventory.transactions():
        reserved += entry.quantity if entry.operation == "reserve" else -entry.quantity
    product = await inventory.get("widget")
    assert product.reserved_count == reserved  # stock reconciles with the log
    known = {r.run_id for r in records}
    assert set(by_run) <= known  # no reservation without a record of its run
    for record in records:
        log = by_run.get(record.run_id, [])
        charges = await payments.charges(record.run_id)
        assert charges <= 1, f"charge ran {charges} times in run {record.run_id}"
        if record.status == "succeeded":
            assert log == ["reserve"]
            assert charges == 1
            assert not await payments.refunded(record.run_id)
        else:
            assert record.status in ("failed", "compensation_failed"), record.status
            assert log in ([], ["reserve", "release"]), log  # nothing left reserved
            if record.status == "compensation_failed":
                # Only a charge in doubt (its process died during it) needs a human.
                assert record.failed_compensations == ("charge",)
                assert record.steps["charge"].error is not None
                assert "in doubt" in record.steps["charge"].error
    # The runs recovery left with a step in doubt are the runs listed (and counted) as such.
    doubtful = {
        r.run_id
        for r in records
        if any((s.error or "").startswith("in doubt") for s in r.steps.values())
    }
    listed = {r.run_id for r in (await runs.page(status="in_doubt", limit=500)).runs}
    assert listed == doubtful
    assert (await runs.counts())["in_doubt"] == len(doubtful)
    return statuses


async def test_runs_of_a_killed_process_are_finished_or_compensated(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    """kill -9 at random points (several seeds): a recoverer finishes every run the dead
    process left (idempotent steps resumed, a step in doubt compensated around), stock
    reconciles exactly with the log, and no charge ran twice."""
    totals: Counter[str] = Counter()
    recovered = 0
    for seed in range(5):
        prefix = f"{redis_prefix}{seed}:"
        inventory = RedisInventoryStore(client, None, prefix=f"{prefix}inv:")
        payments = Payments(client, prefix)
        await inventory.put(Product(sku="widget", inventory_count=1_000_000))
        owner = await kill_worker_at_random(redis_url, prefix, seed, runs=48)
        # Its lease would expire after owner_ttl; expire it now instead of waiting.
        await client.delete(f"{prefix}runs:owner:{owner}")
        async with RedisRunStore(client, prefix=f"{prefix}runs:") as runs:
            report = await recover(
                runs,
                sagas=[DurableCheckout],
                resources={"store": inventory, "payments": payments},
                limit=1000,
            )
            assert all(r.outcome != "error" for r in report), report
            assert not await recover(  # nothing left: a second sweep finds nothing
                runs,
                sagas=[DurableCheckout],
                resources={"store": inventory, "payments": payments},
            )
            totals += await reconcile(runs, inventory, payments)
        recovered += len(report)
    assert recovered > 0  # the kills did interrupt runs
    assert totals["succeeded"] > 0


async def test_recovery_waits_for_the_owner_lease(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    """Runs whose owner's lease is alive are not taken. Once it has expired (the killed
    process renews it no more), two concurrent recoverers share the runs: each run is
    taken by exactly one."""
    inventory = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
    payments = Payments(client, redis_prefix)
    await inventory.put(Product(sku="widget", inventory_count=1_000_000))
    resources = {"store": inventory, "payments": payments}
    owner = await kill_worker_at_random(redis_url, redis_prefix, 7, runs=48, owner_ttl=2.0)
    lease = f"{redis_prefix}runs:owner:{owner}"
    remaining = await client.pttl(lease)
    assert remaining > 0  # killed well within its lease
    async with (
        RedisRunStore(client, prefix=f"{redis_prefix}runs:") as first,
        RedisRunStore(client, prefix=f"{redis_prefix}runs:") as second,
    ):
        assert await recover(first, sagas=[DurableCheckout], resources=resources) == []
        await anyio.sleep(remaining / 1000 + 0.05)  # until the lease's own expiry
        reports: list[list[object]] = []

        async def sweep(store: RedisRunStore) -> None:
            reports.append(
                list(await recover(store, sagas=[DurableCheckout], resources=resources, limit=1000))
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, first)
            tg.start_soon(sweep, second)
        ids = [r.run_id for report in reports for r in report]  # type: ignore[attr-defined]
        assert ids, "the kill left no run to recover"
        assert len(ids) == len(set(ids))  # no run taken twice
        await reconcile(first, inventory, payments)


async def test_fifty_concurrent_calls_with_one_key_make_one_run(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """50 concurrent calls with one idempotency key: one run; the others wait for it and
    return its result (replayed); a 51st later call replays it too."""
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
    async with RedisRunStore(client, prefix=f"{redis_prefix}runs:", recheck=0.5) as runs:

        async def call() -> None:
            results.append(await Charge.run(amount=5, runs=runs, idempotency_key="order-1"))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
            with anyio.fail_after(5):
                await running.wait()
            release.set()
        later = await Charge.run(amount=5, runs=runs, idempotency_key="order-1")
        with pytest.raises(IdempotencyKeyReused):
            await Charge.run(amount=6, runs=runs, idempotency_key="order-1")
    assert executions == 1
    assert len({r.run_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert later.replayed
    assert later.output == results[0].output


async def test_a_keyed_run_created_again_keeps_its_key(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """A second creation of a recorded keyed run (its job given to a second worker: the
    same run id and key) is refused with ``RunExists`` and leaves the key naming the run,
    so that a later call with the key replays it rather than running again."""
    from asaga.runs._record import RunExists

    executions = 0

    class Charge(Saga):
        amount: int

        @step
        async def charge(amount: int) -> int:
            nonlocal executions
            executions += 1
            return amount

    async with RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs:
        first = await Charge.run(amount=5, runs=runs, idempotency_key="k-1", run_id="r-1")
        for _ in range(2):
            with pytest.raises(RunExists, match="run r-1 is already recorded"):
                await Charge.run(amount=5, runs=runs, idempotency_key="k-1", run_id="r-1")
        later = await Charge.run(amount=5, runs=runs, idempotency_key="k-1")
    assert executions == 1
    assert later.replayed
    assert (later.run_id, later.output) == (first.run_id, 5)


async def test_undo_after_success_restores_stock_once(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """Undoing a succeeded run compensates it from its record, in reverse order, and
    restores the stock; a second undo does nothing and says so."""
    inventory = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
    payments = Payments(client, redis_prefix)
    await inventory.put(Product(sku="widget", inventory_count=10))
    async with RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs:
        result = await DurableHold.run(
            sku="widget", quantity=4, store=inventory, payments=payments, runs=runs
        )
        assert (await inventory.get("widget")).reserved_count == 4
        first = await DurableHold.undo(result.run_id, runs=runs, store=inventory, payments=payments)
        second = await DurableHold.undo(
            result.run_id, runs=runs, store=inventory, payments=payments
        )
        record = await runs.load(result.run_id, events=True)
    assert (await inventory.get("widget")).reserved_count == 0
    assert await payments.refunded(result.run_id)
    assert first.already is False
    assert first.status == "undone"
    assert first.compensated == ("charge", "reserve")  # reverse graph order
    assert second.already is True
    assert second.status == "undone"
    assert record.status == "undone"
    kinds = [e.kind for e in record.events]
    assert kinds[-4:] == [
        "compensation_started",
        "compensation_succeeded",
        "compensation_started",
        "compensation_succeeded",
    ]
    log = [e.operation for e in await inventory.transactions()]
    assert log == ["reserve", "release"]


async def test_connections_dropped_mid_run_are_retried(
    redis_url: str, redis_prefix: str, client: aioredis.Redis
) -> None:
    """Every connection of the store's client is killed by the server while a step runs:
    the next write is retried on a new connection and the run completes, recorded."""
    name = f"asaga-drop-{redis_prefix.split(':')[1]}"  # only this test's connections die
    own = aioredis.Redis.from_url(redis_url, client_name=name)
    gate = anyio.Event()
    proceed = anyio.Event()

    class Two(Saga):
        @step
        async def first() -> int:
            return 1

        @step
        async def second(first: int) -> int:
            gate.set()
            await proceed.wait()
            return first + 1

    async with RedisRunStore(own, prefix=f"{redis_prefix}runs:") as runs:
        async with anyio.create_task_group() as tg:
            outcome: list[int] = []

            async def run() -> None:
                outcome.append((await Two.run(runs=runs)).output)

            tg.start_soon(run)
            with anyio.fail_after(5):
                await gate.wait()
            killed = 0
            for entry in await client.client_list():
                if entry.get("name") == name:
                    await client.client_kill_filter(_id=entry["id"])
                    killed += 1
            assert killed >= 1
            proceed.set()
        record = (await runs.list())[0]
    await own.aclose()
    assert outcome == [2]
    assert record.status == "succeeded"


async def test_a_redis_restart_mid_run(tmp_path: Path) -> None:
    """Redis (with an AOF) restarts while a step runs: the run's next writes wait for it
    (within the store's write_timeout) and the run completes; a longer outage fails the run
    cleanly (compensated) and its final record is written once Redis is back."""
    server = RedisServer(tmp_path, AOF_ALWAYS)
    await server.start()
    client = aioredis.Redis(port=server.port, socket_connect_timeout=0.5)
    gate, proceed = anyio.Event(), anyio.Event()
    undone: list[int] = []

    class Two(Saga):
        @step
        async def first() -> int:
            return 1

        @first.compensate
        async def unfirst(first: int) -> None:
            undone.append(first)

        @step
        async def second(first: int) -> int:
            gate.set()
            await proceed.wait()
            return first + 1

    try:
        async with RedisRunStore(client, write_timeout=10.0, owner_ttl=3.0) as runs:
            async with anyio.create_task_group() as tg:
                outcome: list[int] = []

                async def run() -> None:
                    outcome.append((await Two.run(runs=runs)).output)

                tg.start_soon(run)
                with anyio.fail_after(5):
                    await gate.wait()
                await server.restart()
                proceed.set()
            assert outcome == [2]
            record = (await runs.list())[0]
            assert record.status == "succeeded"

            # Down for longer than write_timeout: the run fails cleanly, compensated.
            gate, proceed = anyio.Event(), anyio.Event()
            runs.write_timeout = 0.3
            async with anyio.create_task_group() as tg:
                failures: list[SagaFailed] = []

                async def failing_run() -> None:
                    try:
                        await Two.run(runs=runs)
                    except SagaFailed as exc:
                        failures.append(exc)

                tg.start_soon(failing_run)
                with anyio.fail_after(5):
                    await gate.wait()
                await server.kill()
                proceed.set()
            [failed] = failures
            assert undone == [1]
            await server.start()
            # The final write is sent again once Redis answers (at the next lease renewal);
            # its finish is notified.
            with anyio.fail_after(10):
                assert (await runs.wait_finished(failed.run_id)).status == "failed"
            records = await runs.list()
            assert sorted(r.status for r in records) == ["failed", "succeeded"]
    finally:
        await server.kill()
        await client.aclose()


async def test_a_tampered_record_is_refused(redis_prefix: str, client: aioredis.Redis) -> None:
    """A record changed behind asaga's back decodes to a clear CorruptRecord (nothing is
    unpickled or executed); recovery quarantines it (tests/runs/test_recovery_edges.py)."""

    class One(Saga):
        @step
        async def a() -> int:
            return 1

    async with RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs:
        result = await One.run(runs=runs)
        key = f"{redis_prefix}runs:run:{result.run_id}"
        await client.hset(key, "record", b"\x80\x03cos\nsystem\nq\x00.")  # a pickle
        with pytest.raises(CorruptRecord, match=f"run {result.run_id}"):
            await runs.load(result.run_id)
        with pytest.raises(CorruptRecord):
            await One.undo(result.run_id, runs=runs)


async def test_an_acl_user_with_only_its_prefix_can_run_durably(tmp_path: Path) -> None:
    """A Redis ACL user (username and password in the URL) allowed only the store's key
    prefix and channels is enough: every key and channel asaga uses is under the prefix."""
    server = RedisServer(tmp_path, AOF_ALWAYS)
    await server.start()
    port = server.port
    admin = aioredis.Redis(port=port)
    try:
        await admin.execute_command(
            "ACL", "SETUSER", "saga", "on", ">s3cret", "~app:*", "&app:*", "+@all", "-@dangerous"
        )
        runs = RedisRunStore.from_url(f"redis://saga:s3cret@127.0.0.1:{port}/0", prefix="app:")
        async with runs:

            class One(Saga):
                @step
                async def a() -> int:
                    return 1

            result = await One.run(runs=runs, idempotency_key="k")
            again = await One.run(runs=runs, idempotency_key="k")
            assert again.replayed
            assert (await runs.load(result.run_id)).status == "succeeded"
        with pytest.raises(StoreUnavailable):  # the wrong password gets a clear error
            async with RedisRunStore.from_url(f"redis://saga:wrong@127.0.0.1:{port}/0"):
                pass
    finally:
        await admin.aclose()
        await server.kill()


async def test_tls(tmp_path: Path) -> None:
    """rediss:// works: a TLS-only redis-server with a certificate of a test CA."""
    directory = tmp_path
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not on PATH; the TLS test makes its certificates with it")
    ca, cert, key = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    for command in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=asaga test CA", "-keyout", str(directory / "ca.key"), "-out", str(ca)],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(directory / "server.csr")],
        [openssl, "x509", "-req", "-in", str(directory / "server.csr"), "-CA", str(ca),
         "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "1",
         "-copy_extensions", "copy", "-out", str(cert)],
    ):  # fmt: skip
        done = await anyio.run_process(command, check=False)
        assert done.returncode == 0, done.stderr.decode()
    tls = (
        "--port", "0",
        "--save", "",
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    async with (
        redis_server(directory, tls, port_option="--tls-port") as server,
        aioredis.Redis.from_url(
            f"rediss://127.0.0.1:{server.port}/0", ssl_ca_certs=str(ca)
        ) as client,
        RedisRunStore(client, prefix="tls:") as runs,
    ):

        class One(Saga):
            @step
            async def a() -> int:
                return 1

        result = await One.run(runs=runs)
        assert (await runs.load(result.run_id)).status == "succeeded"


async def test_an_undo_left_by_a_dead_process_is_finished(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """A process took a run to undo it and died (its lease is gone): the next undo() of
    that run takes it over and finishes it, instead of waiting for the dead one."""
    inventory = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
    payments = Payments(client, redis_prefix)
    await inventory.put(Product(sku="widget", inventory_count=10))
    async with RedisRunStore(client, prefix=f"{redis_prefix}runs:") as runs:
        result = await DurableHold.run(
            sku="widget", quantity=2, store=inventory, payments=payments, runs=runs
        )
        # Another store object takes the undo and never does it: it was never opened, so
        # it never held a lease (as if its process had died right after the claim).
        dead = RedisRunStore(client, prefix=f"{redis_prefix}runs:")
        _, taken = await dead.claim_undo(result.run_id)
        assert taken
        with anyio.fail_after(10):
            done = await DurableHold.undo(
                result.run_id, runs=runs, store=inventory, payments=payments
            )
    assert (done.status, done.already) == ("undone", False)
    assert (await inventory.get("widget")).reserved_count == 0


async def test_runs_recovery_cannot_take_do_not_hide_the_others(
    redis_prefix: str, client: aioredis.Redis
) -> None:
    """Abandoned runs of another saga (or of another saga_version) at the head of the
    running set do not keep recover() from finding the ones it can take."""

    class Mine(Saga):
        @step
        async def work(run_id: str) -> str:
            return run_id

    prefix = f"{redis_prefix}runs:"
    async with RedisRunStore(client, prefix=prefix) as gone:
        for n in range(120):
            await gone.create(unfinished_run("Other", f"other-{n}"), None)
        await gone.create(unfinished_run("Mine", "mine-1"), None)
    # Closing the store dropped its lease: its unfinished runs are abandoned now.
    async with RedisRunStore(client, prefix=prefix) as runs:
        report = await recover(runs, sagas=[Mine], limit=10)
    assert [(r.run_id, r.outcome) for r in report] == [("mine-1", "succeeded")]
