"""Which actions the dashboard does: only those its run page offers (a posted one that is
not is refused); a recovery that compensated a dead run is done, naming the steps it
left in doubt; a saga whose resources were not given is not acted on (warned once, said
on its pages); operator actions in the timeline are redacted; the standalone server's
warning names its own options."""

from __future__ import annotations

import html
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from asaga import CompensationFailed, Saga, step
from asaga.dashboard import Dashboard, Field
from asaga.dashboard._serve import served_dashboard
from asaga.events import OperatorAction
from asaga.runs import MemoryRunStore, RedisRunStore, RunStore

from .client import act, csrf_of
from .sagas import SAGAS, UNDONE, Billed, Shop, Stuck, dead_in_step
from .test_dashboard import dashboard_of, mounted, operator

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client and the test client are asyncio-only


def with_stuck(runs: RunStore) -> Dashboard:
    """A dashboard of the tests' sagas and Stuck, for operators."""
    return Dashboard(runs, sagas=[*SAGAS, Stuck], authorize=operator)


async def test_a_recovery_that_compensates_a_dead_run_is_done_and_names_its_doubts(
    redis_url: str, redis_prefix: str
) -> None:
    """Recover on a dead run whose step was in doubt (not idempotent) compensates it:
    outcome failed, shown as done (200), with the in-doubt step named on the page as
    needing a human; a recovery whose compensation fails stays "Not done" (409)."""
    UNDONE.clear()
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
        await dead_in_step(dead, "Flaky", "dead-1", hold="h-dead-1")
        await dead_in_step(dead, "Stuck", "dead-2", hold="h-dead-2")
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        async with mounted(with_stuck(runs)) as dash:
            compensated = await act(dash, "recover", "dead-1")
            stuck = await act(dash, "recover", "dead-2")
        records = [await runs.load(r, events=True) for r in ("dead-1", "dead-2")]
    assert compensated.status == 200, compensated.text
    assert "Done: failed (compensated: hold; in doubt: pay)" in compensated.text
    assert 'id="in-doubt">Left in doubt, needs a human: pay' in compensated.text
    assert UNDONE == ["h-dead-1"]
    assert stuck.status == 409, stuck.text
    assert "Not done: compensation_failed" in stuck.text
    assert [r.status for r in records] == ["failed", "compensation_failed"]
    [noted] = [e for e in records[0].events if e.kind == "operator_action"]
    assert noted.outcome == "failed (compensated: hold; in doubt: pay)"  # type: ignore[attr-defined]


async def test_an_action_not_offered_is_refused_when_posted() -> None:
    """Undo posted for a compensation_failed run (the page offers nothing) is refused
    (409, saying when undo is offered), nothing is done, and the refusal is noted; undo
    posted for a parked run and resume for a succeeded one are refused too."""
    runs = MemoryRunStore()
    with pytest.raises(CompensationFailed):
        await Stuck.run(order_id="o-1", runs=runs, run_id="stuck-1")
    shop = await Shop.run(order_id="o-2", email="e@example.com", runs=runs)
    async with mounted(with_stuck(runs)) as dash:
        page = await dash.get("/run", id="stuck-1")
        undo = await act(dash, "undo", "stuck-1")
        resume = await act(dash, "resume", shop.run_id)
        token = csrf_of((await dash.get("/confirm", action="cancel", id=shop.run_id)).text)
        posted = await dash.post("/act", {"csrf": token, "action": "cancel", "id": shop.run_id})
    stuck = await runs.load("stuck-1", events=True)
    assert stuck.status == "compensation_failed"
    assert "action=" not in page.text
    assert undo.status == 409, undo.text
    assert "Not done: refused: undo is offered only when the run succeeded" in undo.text
    assert "is compensation_failed; nothing was done" in undo.text
    assert "Done:" not in undo.text
    assert (resume.status, posted.status) == (409, 409)
    assert "resume is offered only when a step of the run halted" in resume.text
    assert "cancel is offered only when the run is parked" in posted.text
    assert (await runs.load(shop.run_id)).status == "succeeded"
    [noted] = [e for e in stuck.events if e.kind == "operator_action"]
    assert noted.outcome.startswith("refused: undo is offered only")  # type: ignore[attr-defined]


async def test_operator_actions_in_the_timeline_are_redacted() -> None:
    """An operator action noted by another process (not redacted when written) shows
    its outcome and who did it as redact lets them (field "outcome", name the action)."""
    seen: list[tuple[str, str, Any]] = []

    def redact(saga: str, field: Field, name: str, value: Any) -> Any:
        if field == "outcome":
            seen.append((field, name, value))
            return "***"
        return value

    runs = MemoryRunStore()
    shop = await Shop.run(order_id="o-1", email="e@example.com", runs=runs)
    await runs.note(
        shop.run_id,
        OperatorAction(
            saga="Shop",
            run_id=shop.run_id,
            action="undo",
            by="alice@example.com",
            outcome="card 4111-1111 refused",
        ),
    )
    async with mounted(dashboard_of(runs, redact=redact)) as dash:
        page = await dash.get("/run", id=shop.run_id)
    assert page.status == 200
    assert "alice@example.com" not in page.text
    assert "4111" not in page.text
    assert "undo by ***: ***</td>" in page.text
    assert ("outcome", "undo", "alice@example.com") in seen
    assert ("outcome", "undo", "card 4111-1111 refused") in seen


async def test_a_saga_whose_resources_were_not_given_is_not_acted_on() -> None:
    """A dashboard given a saga without its resources warns once when created, naming
    the saga and the resources; its run pages say actions are unavailable and why,
    instead of offering them; an action posted anyway is refused. Given the resources,
    undo is offered and done."""
    runs = MemoryRunStore()
    payments: list[str] = []
    billed = await Billed.run(order_id="o-1", payments=payments, runs=runs)
    with capture_logs() as logs:
        lacking = Dashboard(runs, sagas=[Shop, Billed], authorize=operator)
    warned = [e for e in logs if e["event"] == "dashboard_missing_resources"]
    assert [(e["saga"], e["missing"], e["log_level"]) for e in warned] == [
        ("Billed", ["payments"], "warning")
    ]
    async with mounted(lacking) as dash:
        page = await dash.get("/run", id=billed.run_id)
        refused = await act(dash, "undo", billed.run_id)
    assert "action=undo" not in page.text
    said = html.unescape(page.text)
    assert "saga Billed needs its resources ['payments']" in said
    assert "actions on its runs are unavailable" in said
    assert refused.status == 409
    assert "needs its resources" in html.unescape(refused.text)
    assert payments == ["o-1"]
    given = Dashboard(runs, sagas=[Billed], resources={"payments": payments}, authorize=operator)
    async with mounted(given) as dash:
        offered = await dash.get("/run", id=billed.run_id)
        undone = await act(dash, "undo", billed.run_id)
    assert "action=undo" in offered.text
    assert 'id="unavailable"' not in offered.text
    assert undone.status == 200, undone.text
    assert payments == ["o-1", "refund b-o-1"]


async def test_the_standalone_server_without_a_token_advises_its_own_options() -> None:
    """``asaga dashboard`` without tokens is read-only, and its warning names --token and
    --read-token (not ``authorize=``, which the command has not); with a token, none."""
    with capture_logs() as logs:
        bare = served_dashboard(
            MemoryRunStore(),
            sagas=[Shop],
            resources=None,
            token=None,
            read_token=None,
            allowed_hosts=["testserver"],
        )
        served_dashboard(
            MemoryRunStore(),
            sagas=[Shop],
            resources=None,
            token="t" * 16,
            read_token=None,
            allowed_hosts=["testserver"],
        )
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["dashboard_without_token"]
    advice = logs[0]["advice"]
    assert "--token" in advice
    assert "--read-token" in advice
    assert "authorize=" not in advice
    shop = await Shop.run(order_id="o-1", email="e@example.com", runs=bare.runs)
    async with mounted(bare) as dash:
        page = await dash.get("/run", id=shop.run_id)
        confirm = await dash.get("/confirm", action="undo", id=shop.run_id)
    assert page.status == 200
    assert "action=undo" not in page.text
    assert confirm.status == 403
    assert "needs the operate role" in confirm.text


class Gate:
    """Where the compensation of :class:`Gated` waits, and what it did."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.open = anyio.Event()
        self.released: list[str] = []


GATE: dict[str, Gate] = {}


class Gated(Saga):
    order_id: str

    @step
    async def hold(order_id: str) -> str:
        return order_id

    @hold.compensate
    async def release(hold: str) -> None:
        gate = GATE["now"]
        gate.entered.set()
        await gate.open.wait()
        gate.released.append(hold)


async def test_an_action_goes_on_and_is_noted_when_its_request_is_cancelled() -> None:
    """The browser goes away (the request is cancelled) while an undo runs: the undo
    still ends, and is still written to the run's events."""
    gate = GATE["now"] = Gate()
    runs = MemoryRunStore()
    done = await Gated.run(order_id="o-1", runs=runs)
    async with mounted(Dashboard(runs, sagas=[Gated], authorize=operator)) as dash:
        token = csrf_of((await dash.get("/confirm", action="undo", id=done.run_id)).text)
        form = {"csrf": token, "action": "undo", "id": done.run_id}
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dash.post, "/act", form)
                await gate.entered.wait()
                tg.cancel_scope.cancel()  # the request is cancelled mid-undo
                gate.open.set()
    record = await runs.load(done.run_id, events=True)
    assert gate.released == ["o-1"]
    assert record.status == "undone"
    [noted] = [e for e in record.events if isinstance(e, OperatorAction)]
    assert (noted.action, noted.outcome) == ("undo", "undone")
