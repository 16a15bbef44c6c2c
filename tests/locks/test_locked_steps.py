"""Steps that hold a lease: @step(lock=...)."""

import time

import anyio
import pytest

from asaga import Lock, Resource, Saga, SagaDefinitionError, SagaFailed, step
from asaga.locks import Lease, LeaseLost, LockProvider, MemoryLockProvider

pytestmark = pytest.mark.anyio


async def test_locked_steps_exclude_each_other_across_runs() -> None:
    """Runs of a saga locking the same key never interleave inside the step (in-memory
    default provider, shared by every saga of the event loop)."""
    stock = {"p1": 100}
    inside = 0
    peak = 0

    class Reserve(Saga):
        @step(lock="inventory:{product_id}")
        async def reserve(product_id: str, quantity: int) -> int:
            nonlocal inside, peak
            inside += 1
            peak = max(peak, inside)
            level = stock[product_id]
            await anyio.lowlevel.checkpoint()
            stock[product_id] = level - quantity
            inside -= 1
            return stock[product_id]

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(lambda: Reserve.run(product_id="p1", quantity=1))
    assert stock == {"p1": 50}
    assert peak == 1


async def test_the_step_receives_its_lease_and_an_explicit_provider() -> None:
    """A `lease` parameter receives the lease; a `locks` input supplies the provider."""
    seen: list[tuple[str, int]] = []
    locks = MemoryLockProvider()

    class Explicit(Saga):
        sku: str
        locks: Resource[LockProvider]

        @step(lock=Lock("inventory:{sku}", "audit", ttl=5.0, wait=1.0))
        async def write(sku: str, lease: Lease) -> str:
            seen.append((lease.keys[1], lease.tokens[f"inventory:{sku}"]))
            return sku

    await Explicit.run(sku="a", locks=locks)
    await Explicit.run(sku="a", locks=locks)
    assert seen == [("inventory:a", 1), ("inventory:a", 2)]


async def test_lost_lease_fails_the_step_and_the_saga_unwinds() -> None:
    """The lease is lost mid-step (loop blocked past its TTL): the step is cancelled with
    LeaseLost and the completed steps are compensated."""
    undone: list[str] = []

    class Stalls(Saga):
        @step
        async def prepare() -> str:
            return "prepared"

        @step(lock=Lock("k", ttl=0.05))
        async def locked(prepare: str) -> None:
            time.sleep(0.1)  # noqa: ASYNC251 - blocks renewal: the lease expires
            await anyio.sleep_forever()  # until LeaseLost cancels this

        @prepare.compensate
        async def unprepare(prepare: str) -> None:
            undone.append(prepare)

    with anyio.fail_after(10), pytest.raises(SagaFailed) as info:
        await Stalls.run()
    assert info.value.step == "locked"
    assert isinstance(info.value.__cause__, LeaseLost)
    assert undone == ["prepared"]


def test_lock_templates_are_checked_at_definition() -> None:
    """A key field that is no parameter, or a malformed lock, is a definition error."""
    with pytest.raises(SagaDefinitionError) as info:

        class Bad(Saga):
            @step(lock="inventory:{product}")
            async def a(product_id: str) -> None:
                return None

            @step(lock=42)  # type: ignore[arg-type]
            async def b(product_id: str) -> None:
                return None

    text = "\n".join(info.value.problems)
    assert "lock key field {product} is not a parameter" in text
    assert "did you mean 'product_id'" in text
    assert "lock= takes a key template or a Lock(...), got 42" in text


def test_lock_spec_validation() -> None:
    """Lock() checks its own arguments where it is written."""
    with pytest.raises(ValueError, match="ttl must be a positive number"):
        Lock("k", ttl=0)
    with pytest.raises(ValueError, match="plain parameter names"):
        Lock("k:{a.b}")
    assert Lock("a:{x}", "b:{y}:{x}").fields == ("x", "y")


async def test_lock_key_uses_parameter_defaults() -> None:
    """A key field whose parameter was not given uses the parameter's default."""
    seen: list[str] = []

    class Regional(Saga):
        @step(lock="k:{region}")
        async def s(lease: Lease, region: str = "eu") -> str:
            seen.append(lease.key)
            return region

    assert (await Regional.run()).output == "eu"
    assert seen == ["k:eu"]


async def test_optional_resource_provider() -> None:
    """`locks: Resource[LockProvider] | None = None` accepts a provider, or uses the default."""

    class Optional(Saga):
        locks: Resource[LockProvider] | None = None

        @step(lock="k")
        async def s(lease: Lease) -> int:
            return lease.token

    provider = MemoryLockProvider()
    assert (await Optional.run(locks=provider)).output == 1
    assert (await Optional.run(locks=provider)).output == 2
    assert (await Optional.run()).output >= 1
