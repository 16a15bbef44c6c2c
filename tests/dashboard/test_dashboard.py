"""The dashboard over HTTP, mounted under /ops in Starlette (httpx's ASGITransport): the
runs list and its filters, search and pages, run pages, each action, CSRF, authorization,
redaction and bad input. Each test runs on the in-memory store and on a real Redis."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote_plus

import httpx
import markupsafe
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from structlog.testing import capture_logs

from asaga import Saga, SagaFailed, step
from asaga.dashboard import Dashboard, RequestInfo, Role, TokenAuth
from asaga.runs import MemoryRunStore, RedisRunStore, RunStore

from .client import ORIGIN, HttpxDashboard, act, csrf_of
from .sagas import (
    APPROVED,
    SAGAS,
    UNDONE,
    Approval,
    Bundle,
    Carded,
    Doomed,
    Flaky,
    Paid,
    Shop,
    abandon,
    parked,
    seed,
)

pytestmark = pytest.mark.anyio

Stores = Callable[[], AbstractAsyncContextManager[RunStore]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client and the test client are asyncio-only


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> Stores:
    """Stores of one test: on Redis, each call is another process's store on one prefix."""
    memory = MemoryRunStore()

    @asynccontextmanager
    async def open_store() -> AsyncIterator[RunStore]:
        if request.param == "memory":
            yield memory
            return
        async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
            yield runs

    return open_store


def operator(info: RequestInfo) -> Role | None:
    """The authorize of most tests: the header says who."""
    role = info.headers.get("x-role", "operate")
    if role == "operate" or role == "read":
        return role
    return None


@asynccontextmanager
async def mounted(dashboard: Dashboard, **headers: str) -> AsyncIterator[HttpxDashboard]:
    app = Starlette(routes=[Mount("/ops", app=dashboard.asgi())])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN, headers=headers) as client:
        yield HttpxDashboard(client)


def dashboard_of(runs: RunStore, **options: Any) -> Dashboard:
    options.setdefault("authorize", operator)
    return Dashboard(runs, sagas=SAGAS, **options)


def run_links(html: str) -> list[str]:
    return re.findall(r'class="run-link" href="/ops/run\?id=([^"]+)"', html)


async def test_the_list_shows_runs_counts_and_links_under_the_mount_path(stores: Stores) -> None:
    """The list names every run, newest first, links each run page under /ops, counts
    runs per status, and sends the security headers and the session cookie."""
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            page = await dash.get("/")
    assert page.status == 200
    assert run_links(page.text) == [ids["waiting"], ids["halted"], ids["succeeded"]]
    assert 'href="/ops/static/dashboard.css"' in page.text
    assert re.search(r'data-status="waiting">waiting <b>2</b>', page.text)
    assert re.search(r'data-status="succeeded">succeeded <b>1</b>', page.text)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ops/" in cookie
    assert "<script>" not in page.text  # no inline script


async def test_filters_search_and_the_json_endpoint(stores: Stores) -> None:
    """Status and saga filters narrow the list; search finds a run by id, by its
    idempotency key and by the event key it waits for; the polled JSON follows the
    filters."""
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            waiting = await dash.get("/", status="waiting")
            shop = await dash.get("/", saga="Shop")
            by_key = await dash.get("/", q="key-1")
            by_id = await dash.get("/", q=ids["halted"])
            by_event = await dash.get("/", q="pay:o-3")
            polled = await dash.get("/runs.json", status="succeeded")
    assert sorted(run_links(waiting.text)) == sorted([ids["halted"], ids["waiting"]])
    assert run_links(shop.text) == [ids["succeeded"]]
    assert run_links(by_key.text) == [ids["succeeded"]]
    assert run_links(by_id.text) == [ids["halted"]]
    assert run_links(by_event.text) == [ids["waiting"]]
    assert polled.status == 200
    assert polled.headers["content-type"] == "application/json"
    assert '"counts"' in polled.text
    assert ids["succeeded"] in polled.text
    assert ids["halted"] not in polled.text


async def test_the_time_range_bounds_the_creation_time(stores: Stores) -> None:
    """From/To (UTC, to the minute) keep the runs created in the range: a range around
    now lists them all, one that ends before or starts after lists none."""
    now = time.time()

    def minute(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(t))

    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            around = await dash.get("/", since=minute(now - 120), until=minute(now + 120))
            before = await dash.get("/", until=minute(now - 120))
            after = await dash.get("/", since=minute(now + 120))
    assert sorted(run_links(around.text)) == sorted(ids.values())
    assert run_links(before.text) == []
    assert run_links(after.text) == []
    assert "no runs match these filters" in after.text


async def test_cursor_pages_go_through_every_run_once(stores: Stores) -> None:
    """With pages of 2, following the 'older' links lists each of 5 runs exactly once."""
    async with stores() as runs:
        made = [
            (await Shop.run(order_id=f"p-{n}", email="x@example.com", runs=runs)).run_id
            for n in range(5)
        ]
        async with mounted(dashboard_of(runs, page_size=2)) as dash:
            seen: list[str] = []
            page = await dash.get("/")
            for _ in range(5):
                seen += run_links(page.text)
                older = re.search(r'class="older" href="/ops/\?([^"]+)"', page.text)
                if older is None:
                    break
                cursor = dict(httpx.QueryParams(older.group(1).replace("&amp;", "&")))
                page = await dash.get("/", **cursor)
    assert seen == made[::-1]


async def test_the_run_page_shows_graph_steps_timeline_inputs_and_waits(
    stores: Stores,
) -> None:
    """A run page draws the saga's graph with step states as Mermaid classes, lists the
    steps with results, the timeline of events, the decoded inputs; a halted run's page
    says what it waits for and offers resume and cancel."""
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            done = await dash.get("/run", id=ids["succeeded"])
            halted = await dash.get("/run", id=ids["halted"])
    assert done.status == 200
    assert 'class="mermaid"' in done.text
    assert "flowchart TD" in done.text
    assert "class reserve,charge succeeded" in done.text
    assert "step_succeeded" in done.text
    assert "run_succeeded" in done.text
    assert "ann@example.com" in done.text  # no redaction by default
    assert "&#34;r-o-1&#34;" in done.text  # reserve's result, JSON, escaped
    assert "/ops/confirm?action=undo" in done.text
    assert "/ops/static/mermaid.min.js" in done.text
    assert "halted: needs a manager&#39;s approval" in halted.text
    assert "action=resume" in halted.text
    assert "action=cancel" in halted.text
    assert "class check waiting" in halted.text


async def test_parent_and_child_runs_link_each_other(stores: Stores) -> None:
    """A composed step's child run is linked from the parent's page, and the child's
    page links back to its parent."""
    async with stores() as runs:
        parent = await Bundle.run(order_id="o-7", email="bo@example.com", runs=runs)
        [child] = (await runs.load(parent.run_id)).steps["shop"].children
        async with mounted(dashboard_of(runs)) as dash:
            parent_page = await dash.get("/run", id=parent.run_id)
            child_page = await dash.get("/run", id=child)
    assert child.startswith(f"{parent.run_id}/shop/")
    link = quote(child, safe="")  # its slashes escaped in the query
    assert f'class="child mono" href="/ops/run?id={link}"' in parent_page.text
    assert child_page.status == 200
    assert f'href="/ops/run?id={parent.run_id}"' in child_page.text
    assert "Parent run" in child_page.text


async def test_undo_a_succeeded_run(stores: Stores) -> None:
    """Undo (confirmed, POSTed with the page's CSRF token) compensates the run; the
    outcome is shown and written to the run's events as an operator action."""
    UNDONE.clear()
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            reply = await act(dash, "undo", ids["succeeded"])
            after = await dash.get("/run", id=ids["succeeded"])
        record = await runs.load(ids["succeeded"], events=True)
    assert reply.status == 200, reply.text
    assert "Done: undone" in reply.text
    assert record.status == "undone"
    assert UNDONE == ["r-o-1"]
    [noted] = [e for e in record.events if e.kind == "operator_action"]
    assert (noted.action, noted.outcome) == ("undo", "undone")  # type: ignore[attr-defined]
    assert "operator_action" in after.text
    assert "undo by dashboard" in after.text


async def test_resume_a_halted_run(stores: Stores) -> None:
    """Resume runs the halted step again; the run succeeds."""
    async with stores() as runs:
        ids = await seed(runs)
        APPROVED.add("o-2")
        try:
            async with mounted(dashboard_of(runs)) as dash:
                reply = await act(dash, "resume", ids["halted"])
        finally:
            APPROVED.discard("o-2")
        record = await runs.load(ids["halted"])
    assert reply.status == 200, reply.text
    assert "Done: succeeded" in reply.text
    assert record.status == "succeeded"


async def test_a_resume_whose_run_fails_or_halts_again_is_not_shown_as_done(
    stores: Stores,
) -> None:
    """Resume reports where the run stands: a run that failed after the resume, or that
    halted again, is "Not done" (409) with its status, not a success."""
    async with stores() as runs:
        doomed = await parked(Doomed, runs, order_id="o-9")
        halted = await parked(Approval, runs, order_id="o-8")
        APPROVED.add("o-9")
        try:
            async with mounted(dashboard_of(runs)) as dash:
                failed = await act(dash, "resume", doomed)
                again = await act(dash, "resume", halted)
        finally:
            APPROVED.discard("o-9")
        statuses = [(await runs.load(r)).status for r in (doomed, halted)]
    assert failed.status == 409, failed.text
    assert "Not done: failed" in failed.text
    assert "Done:" not in failed.text
    assert again.status == 409, again.text
    assert "Not done: waiting (waiting for check: halted: needs a manager" in again.text
    assert statuses == ["failed", "waiting"]


async def test_recovering_a_run_whose_owner_is_alive_is_refused(
    redis_url: str, redis_prefix: str
) -> None:
    """Recover on a run whose process is alive (its owner's lease held) is refused with
    the reason, and the run is left to its owner."""
    async with (
        RedisRunStore.from_url(redis_url, prefix=redis_prefix) as live,
        RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs,
    ):
        await abandon(live, "busy-1")
        async with mounted(dashboard_of(runs)) as dash:
            refused = await act(dash, "recover", "busy-1")
        record = await runs.load("busy-1")
    assert refused.status == 409
    assert "is not abandoned" in refused.text
    assert (record.status, record.owner) == ("running", live.owner)


async def test_cancel_a_waiting_run_and_cancel_it_again_is_refused(stores: Stores) -> None:
    """Cancel compensates a parked run (status cancelled); cancelling it again (from a
    stale page: cancel is no longer offered) is refused (409) saying why, and noted."""
    UNDONE.clear()
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            reply = await act(dash, "cancel", ids["waiting"])
            again = await act(dash, "cancel", ids["waiting"])
        record = await runs.load(ids["waiting"], events=True)
    assert reply.status == 200, reply.text
    assert record.status == "cancelled"
    assert UNDONE == ["h-o-3"]
    assert again.status == 409
    assert "Not done: refused: cancel is offered only when the run is parked" in again.text
    assert "is cancelled; nothing was done" in again.text
    outcomes = [e.outcome for e in record.events if e.kind == "operator_action"]  # type: ignore[attr-defined]
    assert outcomes[0].startswith("cancelled")
    assert outcomes[1].startswith("refused: cancel is offered only")


class ReadmitFails(MemoryRunStore):
    """A store that does not answer a re-admission."""

    async def readmit(self, run_id: str) -> Any:
        raise ConnectionError("the store does not answer")


async def test_an_action_that_fails_is_shown_on_its_page() -> None:
    """An action that raises (a store that does not answer) is shown on its result page
    (409, "Not done: failed: ..."), not as a server error, and noted."""
    runs = ReadmitFails()
    await abandon(runs, "aside-1")
    assert await runs.quarantine("aside-1", "does not fit") is not None
    async with mounted(dashboard_of(runs)) as dash:
        failed = await act(dash, "readmit", "aside-1")
    record = await runs.load("aside-1", events=True)
    assert failed.status == 409, failed.text
    assert "Not done: failed: ConnectionError: the store does not answer" in failed.text
    [noted] = [e for e in record.events if e.kind == "operator_action"]
    assert noted.outcome.startswith("failed: ConnectionError")  # type: ignore[attr-defined]


async def test_csrf_and_origin_refusals(stores: Stores) -> None:
    """An action without the CSRF token, with a wrong one, from another origin (Origin,
    else Referer; Origin null from another site), or with no Origin nor Referer nor
    Sec-Fetch-Site is refused (403) and does nothing."""
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            token = csrf_of((await dash.get("/confirm", action="undo", id=ids["succeeded"])).text)
            form = {"action": "undo", "id": ids["succeeded"]}
            missing = await dash.post("/act", form)
            wrong = await dash.post("/act", {**form, "csrf": "0" * 64})
            foreign = await dash.post("/act", {**form, "csrf": token}, origin="http://evil.test")
            anonymous = await dash.post("/act", {**form, "csrf": token}, origin="")
            via_referer = await dash.post(
                "/act", {**form, "csrf": token}, origin="", referer="http://evil.test/x"
            )
            null_cross_site = await dash.post(
                "/act", {**form, "csrf": token}, origin="null", **{"sec-fetch-site": "cross-site"}
            )
        record = await runs.load(ids["succeeded"])
    for reply in (missing, wrong, foreign, anonymous, via_referer, null_cross_site):
        assert reply.status == 403, reply.text
    assert "token is missing or stale" in missing.text
    assert "token is missing" in wrong.text
    assert "not sent from this dashboard" in foreign.text
    assert record.status == "succeeded"


async def test_authorization_none_read_and_operate(stores: Stores) -> None:
    """Without authorize, pages render and actions are refused; with role read, the same;
    authorize returning None refuses pages too; operate may act."""
    async with stores() as runs:
        ids = await seed(runs)
        run = ids["succeeded"]
        async with mounted(Dashboard(runs, sagas=SAGAS)) as dash:
            open_list = await dash.get("/")
            open_run = await dash.get("/run", id=run)
            open_confirm = await dash.get("/confirm", action="undo", id=run)
            token = csrf_of(open_run.text) if 'name="csrf"' in open_run.text else "0" * 64
            open_act = await dash.post("/act", {"csrf": token, "action": "undo", "id": run})
        async with mounted(dashboard_of(runs), **{"x-role": "read"}) as dash:
            read_run = await dash.get("/run", id=run)
            read_confirm = await dash.get("/confirm", action="undo", id=run)
        async with mounted(dashboard_of(runs), **{"x-role": "nobody"}) as dash:
            refused = await dash.get("/")
            refused_json = await dash.get("/runs.json")
        record = await runs.load(run)
    assert open_list.status == 200
    assert open_run.status == 200
    assert "action=undo" not in open_run.text  # no action offered
    assert open_confirm.status == 403
    assert open_act.status == 403
    assert read_run.status == 200
    assert "action=undo" not in read_run.text
    assert read_confirm.status == 403
    assert refused.status == 403
    assert refused_json.status == 403
    assert record.status == "succeeded"


async def test_an_authorize_that_is_async_is_awaited(stores: Stores) -> None:
    """authorize may be a coroutine function; its role counts."""

    async def role(info: RequestInfo) -> Role | None:
        return None if info.path == "/run" else "read"

    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(Dashboard(runs, authorize=role)) as dash:
            listed = await dash.get("/")
            refused = await dash.get("/run", id=ids["halted"])
    assert listed.status == 200
    assert refused.status == 403


async def test_redaction_hides_personal_data(stores: Stores) -> None:
    """A redact hook masks an input (email) on the run page; other values are shown."""

    def redact(saga: str, field: str, name: str, value: Any) -> Any:
        return "***" if field == "input" and name == "email" else value

    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs, redact=redact)) as dash:
            page = await dash.get("/run", id=ids["succeeded"])
    assert "ann@example.com" not in page.text
    assert "&#34;***&#34;" in page.text
    assert "&#34;o-1&#34;" in page.text


async def test_a_redact_that_hides_everything_hides_reasons_keys_and_outcomes(
    stores: Stores,
) -> None:
    """With a redact that masks every value, a halt's reason, an event's key, errors and
    the outcome of an action (shown, and noted in the run's events) appear on no page
    and in no JSON; the hook is told which field each value is."""
    secret = "TOPSECRET-4111"
    fields: set[tuple[str, str]] = set()

    def redact(saga: str, field: str, name: str, value: Any) -> Any:
        fields.add((field, name))
        return "***"

    async with stores() as runs:
        halted = await parked(Carded, runs, card=secret)
        waiting = await parked(Paid, runs, order_id=secret)
        with pytest.raises(SagaFailed) as info:
            await Flaky.run(runs=runs, order_id=secret)
        failed = info.value.run_id
        async with mounted(dashboard_of(runs, redact=redact)) as dash:
            seen = [await dash.get("/"), await dash.get("/runs.json")]
            seen += [await dash.get("/run", id=r) for r in (halted, waiting, failed)]
            seen.append(await act(dash, "resume", halted))  # halts again: the reason
            seen.append(await dash.get("/run", id=halted))  # its noted outcome
        events = (await runs.load(halted, events=True)).events
    for reply in seen:
        assert reply.status in (200, 409), reply.text
        assert secret not in reply.text
        assert "TOPSECRET" not in reply.text
    noted = [e for e in events if e.kind == "operator_action"]
    assert [e.outcome for e in noted] == ["***"]  # type: ignore[attr-defined]
    assert {("wait", "check"), ("wait", "paid"), ("outcome", "resume")} <= fields
    assert ("error", "pay") in fields


async def test_bad_input_is_a_400_that_says_why(stores: Stores) -> None:
    """A run id empty or too long, an unknown status or action, a malformed time or
    cursor: 400 pages naming the field; an unknown run: 404 (its id escaped)."""
    async with stores() as runs:
        ids = await seed(runs)
        async with mounted(dashboard_of(runs)) as dash:
            long_id = await dash.get("/run", id="x" * 5000)
            status = await dash.get("/", status="bogus")
            since = await dash.get("/", since="yesterday")
            cursor = await dash.get("/", cursor="not a cursor")
            action = await dash.get("/confirm", action="drop", id="abc")
            unknown = await dash.get("/run", id="no-such-run")
            script = await dash.get("/run", id="<script>")
            confirm = await dash.get("/confirm", action="undo", id=ids["succeeded"])
            token = csrf_of(confirm.text)
            posted = await dash.post("/act", {"csrf": token, "action": "undo", "id": ""})
    for reply, field in (
        (long_id, "id:"),
        (status, "status:"),
        (since, "since:"),
        (cursor, "cursor"),
        (action, "action:"),
        (posted, "id:"),
    ):
        assert reply.status == 400, (field, reply.status)
        assert field in reply.text
        assert "Traceback" not in reply.text
    assert unknown.status == 404
    assert "no run no-such-run" in unknown.text
    assert script.status == 404
    assert "no run &lt;script&gt;" in script.text
    assert "<script>" not in script.text


async def test_any_run_id_the_store_accepts_is_listed_opened_and_acted_on(
    stores: Stores,
) -> None:
    """Run ids with a space, quotes, angle brackets, a backslash and non-ASCII letters
    (all accepted by Saga.run) are listed, their pages open through URL-encoded links,
    they are acted on, and every page escapes them."""
    odd = ["order 42", "<script>alert('x') \\ `é` \"q\" ünï"]
    async with stores() as runs:
        for run_id in odd:
            await Shop.run(order_id=run_id, email="e@example.com", runs=runs, run_id=run_id)
        async with mounted(dashboard_of(runs)) as dash:
            listed = await dash.get("/")
            polled = await dash.get("/runs.json")
            found = await dash.get("/", q=odd[1])
            pages = [await dash.get("/run", id=run_id) for run_id in odd]
            undone = [await act(dash, "undo", run_id) for run_id in odd]
        statuses = [(await runs.load(run_id)).status for run_id in odd]
    links = [unquote_plus(link) for link in run_links(listed.text)]
    assert [html.unescape(link) for link in links] == odd[::-1]
    assert {r["id"] for r in json.loads(polled.text)["runs"]} == set(odd)
    assert [html.unescape(unquote_plus(x)) for x in run_links(found.text)] == [odd[1]]
    for reply in (listed, found, *pages, *undone):
        assert "<script>alert" not in reply.text
    assert [p.status for p in pages] == [200, 200]
    assert str(markupsafe.escape(odd[1])) in pages[1].text
    assert [u.status for u in undone] == [200, 200], undone[1].text
    assert statuses == ["undone", "undone"]


async def test_recover_one_abandoned_run_and_readmit_a_quarantined_one(
    redis_url: str, redis_prefix: str
) -> None:
    """Recover takes over the run of a dead process and finishes it; a run set aside by
    recovery is re-admitted (back among the unfinished runs). Both are noted."""
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
        await abandon(dead, "lost-1")
        await abandon(dead, "aside-1")
    async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as runs:
        taken = await runs.claim("aside-1", dead.owner)
        assert taken is not None
        assert await runs.quarantine("aside-1", "does not fit") is not None
        async with mounted(dashboard_of(runs)) as dash:
            aside_listed = await dash.get("/", status="quarantined")
            lost_page = await dash.get("/run", id="lost-1")
            aside_page = await dash.get("/run", id="aside-1")
            recovered = await act(dash, "recover", "lost-1")
            again = await act(dash, "recover", "lost-1")
            readmitted = await act(dash, "readmit", "aside-1")
        lost = await runs.load("lost-1", events=True)
        assert await runs.quarantined() == []
    assert run_links(aside_listed.text) == ["aside-1"]
    assert "action=recover" in lost_page.text
    assert "action=readmit" in aside_page.text
    assert "action=recover" in aside_page.text  # refused while quarantined, says why
    assert recovered.status == 200, recovered.text
    assert "Done: succeeded" in recovered.text
    assert lost.status == "succeeded"
    assert again.status == 409
    assert "refused: recover is offered only when the run is unfinished" in again.text
    assert "run lost-1 is succeeded; nothing was done" in again.text
    assert readmitted.status == 200
    assert "readmitted" in readmitted.text
    noted = [(e.action, e.outcome[:9]) for e in lost.events if e.kind == "operator_action"]  # type: ignore[attr-defined]
    assert noted == [("recover", "succeeded"), ("recover", "refused: ")]  # the refusal too


async def test_static_files_and_unknown_paths(stores: Stores) -> None:
    """The vendored Mermaid and the page scripts are served from the dashboard itself;
    a path outside the static folder or unknown is a 404; a GET on /act is a 405."""
    async with stores() as runs, mounted(dashboard_of(runs)) as dash:
        mermaid = await dash.get("/static/mermaid.min.js")
        license_ = await dash.get("/static/mermaid.LICENSE")
        escape = await dash.get("/static/../_core.py")
        unknown = await dash.get("/nowhere")
        get_act = await dash.get("/act")
    assert mermaid.status == 200
    assert "javascript" in mermaid.headers["content-type"]
    assert len(mermaid.text) > 1_000_000
    assert license_.status == 200
    assert "MIT" in license_.text
    assert escape.status == 404
    assert unknown.status == 404
    assert get_act.status == 405


async def test_token_auth_login_cookie_and_bearer(stores: Stores) -> None:
    """With TokenAuth(operate=T): pages are read-only without the token; the login form
    (CSRF-checked) refuses a wrong token and sets an HttpOnly cookie (not the token) for
    the right one, which allows actions; so does ``Authorization: Bearer T``. With a
    read token set, pages need a token."""
    token = "operate-secret-1"
    async with stores() as runs:
        ids = await seed(runs)
        run = ids["succeeded"]
        dashboard = Dashboard(runs, sagas=SAGAS, authorize=TokenAuth(operate=token))
        async with mounted(dashboard) as dash:
            anonymous = await dash.get("/run", id=run)
            refused = await dash.get("/confirm", action="undo", id=run)
            login = await dash.get("/login")
            csrf = csrf_of(login.text)
            wrong = await dash.post("/login", {"csrf": csrf, "token": "nope-nope"})
            right = await dash.post("/login", {"csrf": csrf, "token": token})
            allowed = await dash.get("/confirm", action="undo", id=run)
        async with mounted(dashboard, authorization=f"Bearer {token}") as dash:
            bearer = await dash.get("/confirm", action="undo", id=run)
        guarded = Dashboard(runs, authorize=TokenAuth(operate=token, read="reader-secret-1"))
        async with mounted(guarded) as dash:
            closed = await dash.get("/")
        async with mounted(guarded, authorization="Bearer reader-secret-1") as dash:
            reader = await dash.get("/")
    assert anonymous.status == 200
    assert "action=undo" not in anonymous.text
    assert refused.status == 403
    assert wrong.status == 403
    assert "wrong token" in wrong.text
    assert right.status == 303
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert token not in cookie
    assert allowed.status == 200
    assert bearer.status == 200
    assert closed.status == 403
    assert 'name="token"' in closed.text  # the login form
    assert reader.status == 200


async def test_only_the_listed_static_files_are_served(stores: Stores) -> None:
    """/static/ serves a fixed list of names read once: a name over 255 bytes, or one
    not on the list, is a 404 (never a 500), and nothing is kept per name asked."""
    from asaga.dashboard._pages import STATIC_NAMES, _static_files

    async with stores() as runs, mounted(dashboard_of(runs)) as dash:
        long = await dash.get("/static/" + "a" * 300 + ".js")
        unlisted = await dash.get("/static/__init__.py")
        listed = [await dash.get(f"/static/{name}") for name in STATIC_NAMES]
        for n in range(50):
            assert (await dash.get(f"/static/miss-{n}.js")).status == 404
    assert long.status == 404
    assert unlisted.status == 404
    assert [r.status for r in listed] == [200] * len(STATIC_NAMES)
    assert sorted(_static_files()) == sorted(STATIC_NAMES)


async def test_a_failure_is_logged_without_the_request_headers() -> None:
    """A 500 page says to see the log; the log has the error and its traceback, never
    the request's cookies or Authorization header."""

    class Broken(MemoryRunStore):
        async def load(self, run_id: str, *, events: bool = False) -> Any:
            raise RuntimeError("the disk is on fire")

    dashboard = Dashboard(Broken(), sagas=SAGAS, authorize=operator)
    secret_cookie = "asaga_dashboard_token=cookie-secret-123"
    with capture_logs() as logs:
        async with mounted(
            dashboard, cookie=secret_cookie, authorization="Bearer bearer-secret-456"
        ) as dash:
            failed = await dash.get("/run", id="r-1")
    assert failed.status == 500
    assert "see its log" in failed.text
    (entry,) = [e for e in logs if e["event"] == "dashboard_error"]
    assert "the disk is on fire" in entry["error"]
    assert "fire" not in failed.text
    text = repr(logs)
    assert "cookie-secret-123" not in text
    assert "bearer-secret-456" not in text
    assert "exc_info" not in entry


async def test_allowed_hosts_refuse_other_host_names(stores: Stores) -> None:
    """With allowed_hosts, a request whose Host is not one of them (DNS rebinding: an
    attacker's name resolving to this server) is a 421 page, its forms too, and nothing
    is done; a name without a port is allowed on any port; a form's Origin must be an
    allowed host."""
    async with stores() as runs:
        ids = await seed(runs)
        run = ids["succeeded"]
        dashboard = dashboard_of(runs, allowed_hosts=["ops.example:8000", "Intranet.example"])
        async with mounted(dashboard, host="attacker.example:8000") as dash:
            rebound = await dash.get("/")
            rebound_json = await dash.get("/runs.json")
            posted = await dash.post("/act", {"csrf": "0" * 64, "action": "undo", "id": run})
        async with mounted(dashboard, host="ops.example:8000") as dash:
            listed = await dash.get("/")
            confirm = await dash.get("/confirm", action="undo", id=run)
            form = {"csrf": csrf_of(confirm.text), "action": "undo", "id": run}
            foreign = await dash.post("/act", form, origin="http://attacker.example:8000")
            done = await dash.post("/act", form, origin="http://ops.example:8000")
        async with mounted(dashboard, host="intranet.example:1234") as dash:
            any_port = await dash.get("/")
        async with mounted(dashboard_of(runs), host="anything.example") as dash:
            open_ = await dash.get("/")
        status = (await runs.load(run)).status
    assert rebound.status == 421
    assert "allowed_hosts" in rebound.text
    assert rebound_json.status == 421
    assert posted.status == 421
    assert listed.status == 200
    assert foreign.status == 403
    assert done.status == 200, done.text
    assert any_port.status == 200
    assert open_.status == 200  # allowed_hosts=None: any host (a mount checks its own)
    assert status == "undone"


def test_the_standalone_server_allows_its_own_host_names() -> None:
    """asaga dashboard answers to the loopback names on its port, the --host it binds
    (not a wildcard address) and the extra hosts given."""
    from asaga.dashboard._serve import serve_hosts

    assert serve_hosts("127.0.0.1", 8123) == [
        "127.0.0.1:8123",
        "localhost:8123",
        "[::1]:8123",
        "127.0.0.1:8123",
    ]
    assert serve_hosts("0.0.0.0", 80, ["ops.example"]) == [
        "127.0.0.1:80",
        "localhost:80",
        "[::1]:80",
        "ops.example",
    ]
    assert serve_hosts("fe80::1", 9000)[-1] == "[fe80::1]:9000"


class NoListing(MemoryRunStore):
    """A store whose quarantine listing must not be read to show one run."""

    async def quarantined(self, *, limit: int = 50) -> Any:
        raise AssertionError("the run page listed the quarantined runs")


async def test_readmit_is_offered_from_the_run_record_for_given_sagas_only() -> None:
    """A quarantined run's page offers re-admit from its own record (no listing of the
    quarantined runs); not when its saga was not given to the dashboard, and re-admit
    is then refused (409), the run left quarantined."""
    runs = NoListing()
    await abandon(runs, "aside-1")
    await abandon(runs, "running-1")
    assert await runs.quarantine("aside-1", "does not fit") is not None
    async with mounted(dashboard_of(runs)) as dash:
        aside = await dash.get("/run", id="aside-1")
        running = await dash.get("/run", id="running-1")
    others = Dashboard(runs, sagas=[Shop], authorize=operator)
    async with mounted(others) as dash:
        foreign = await dash.get("/run", id="aside-1")
        refused = await act(dash, "readmit", "aside-1")
    assert "action=readmit" in aside.text
    assert "action=recover" in aside.text
    assert "action=recover" in running.text
    assert "action=readmit" not in running.text
    assert "action=readmit" not in foreign.text
    assert refused.status == 409
    assert "not one this dashboard was given" in refused.text
    assert (await runs.load("aside-1")).owner == "quarantine"


async def test_a_run_of_another_saga_version_is_not_acted_on(stores: Stores) -> None:
    """A run recorded by another saga_version than the dashboard's class: the page says
    so and offers no action; an action posted anyway is refused (409), nothing done."""

    class Shop(Saga):  # the same saga name, at version 2
        saga_version = "2"

        order_id: str
        email: str

        @step
        async def reserve(order_id: str) -> str:
            return f"r-{order_id}"

    async with stores() as runs:
        ids = await seed(runs)
        run = ids["succeeded"]
        async with mounted(Dashboard(runs, sagas=[Shop], authorize=operator)) as dash:
            page = await dash.get("/run", id=run)
            refused = await act(dash, "undo", run)
        status = (await runs.load(run)).status
    assert "it does not act on this run" in page.text
    assert "action=undo" not in page.text
    assert refused.status == 409
    assert "saga_version &#39;1&#39;" in refused.text
    assert status == "succeeded"


def test_a_dashboard_without_authorize_warns_once_when_created() -> None:
    """Without authorize, pages are open to anyone who reaches the mount: one warning
    when the dashboard is created (none per request, none with authorize)."""
    with capture_logs() as logs:
        Dashboard(MemoryRunStore())
        Dashboard(MemoryRunStore(), authorize=operator)
    warned = [e for e in logs if e["event"] == "dashboard_without_authorize"]
    assert len(warned) == 1
    assert warned[0]["log_level"] == "warning"
    assert "open to whoever reaches" in warned[0]["advice"]


async def test_wrong_login_tokens_back_off_and_logout_forgets_the_token() -> None:
    """After three wrong tokens a client waits before its next try (429, the wait
    doubling, bounded), the right token included; once the wait is over the right
    token logs in and clears the count. Log out (a CSRF-checked POST) expires the
    cookie."""
    token = "operate-secret-1"
    dashboard = Dashboard(MemoryRunStore(), sagas=SAGAS, authorize=TokenAuth(operate=token))
    now = [1000.0]
    dashboard._clock = lambda: now[0]
    async with mounted(dashboard) as dash:
        csrf = csrf_of((await dash.get("/login")).text)
        wrong = [(await dash.post("/login", {"csrf": csrf, "token": "nope-nope"})).status]
        wrong += [(await dash.post("/login", {"csrf": csrf, "token": "nope-nope"})).status]
        wrong += [(await dash.post("/login", {"csrf": csrf, "token": "nope-nope"})).status]
        waiting = await dash.post("/login", {"csrf": csrf, "token": token})
        now[0] += 1.5  # the first wait: 1 s
        right = await dash.post("/login", {"csrf": csrf, "token": token})
        page = await dash.get("/")
        csrf = csrf_of(page.text)
        get_out = await dash.get("/logout")
        forged = await dash.post("/logout", {"csrf": "0" * 64})
        out = await dash.post("/logout", {"csrf": csrf})
    assert wrong == [403, 403, 403]
    assert waiting.status == 429
    assert "wait 1 s" in waiting.text
    assert right.status == 303
    assert dashboard._failures == {}
    assert 'id="logout"' in page.text
    assert get_out.status == 405
    assert forged.status == 403
    assert out.status == 303
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert out.headers["set-cookie"].startswith("asaga_dashboard_token=;")


def test_the_login_failures_kept_are_bounded() -> None:
    """Wrong tokens are remembered for the latest 10,000 clients only."""
    dashboard = Dashboard(MemoryRunStore(), authorize=TokenAuth(operate="operate-secret-1"))
    for n in range(10_050):
        dashboard._login_failed(f"10.0.{n // 256}.{n % 256}")
    assert len(dashboard._failures) == 10_000
    assert "10.0.0.0" not in dashboard._failures
