"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright)
against ``asaga dashboard`` (uvicorn, in a subprocess) on a real Redis store seeded with
runs. It loads the list, filters it, opens a run and sees its graph drawn by Mermaid
with the steps' states, logs in with the token, resumes a halted run and undoes a
succeeded one through their confirmation pages, and sees the outcomes.

Chromium must be installed (``scripts/install-browser``): without it this test fails,
it is never skipped."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from .browser import CHROMIUM, TOKEN, dashboard_server


def chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless (Playwright's own browser download is not used)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run scripts/install-browser (apt-get install "
            "chromium), or set ASAGA_CHROMIUM to a Chromium executable"
        )
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
    )


def test_list_filter_graph_resume_and_undo_in_chromium(redis_url: str, redis_prefix: str) -> None:
    """The whole operator's path in a browser, with no script or style refused by the
    page's Content-Security-Policy and no request outside the dashboard."""
    from playwright.sync_api import expect, sync_playwright

    with dashboard_server(redis_url, redis_prefix) as server, sync_playwright() as playwright:
        browser = chromium(playwright)
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "request",
                lambda r: None if r.url.startswith(server.url) else problems.append(r.url),
            )
            runs = server.runs

            # The list: every run, then only the waiting ones.
            page.goto(server.url + "/")
            expect(page.locator("a.run-link")).to_have_count(8)
            expect(page.locator('#counts [data-status="waiting"] b')).to_have_text("2")
            page.select_option("select[name=status]", "waiting")
            page.click("form.filters button[type=submit]")
            expect(page.locator("a.run-link")).to_have_count(2)
            expect(page).to_have_url(re.compile(r"[?&]status=waiting(&|$)"))
            # The list polls for updates (bounded): the first poll says when it was; it
            # stops when the tab is hidden.
            expect(page.locator("#live")).to_contain_text("updated", timeout=15_000)
            page.evaluate(
                "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
                "document.dispatchEvent(new Event('visibilitychange'));"
            )
            expect(page.locator("#live")).to_contain_text("paused while the tab is hidden")

            # A halted run: its graph, drawn by Mermaid, shows the waiting step.
            page.click(f"a.run-link:text('{runs['halted']}')")
            graph = page.locator("#graph[data-rendered=yes] svg")
            expect(graph).to_be_visible()
            expect(page.locator("#graph svg g.node.waiting")).to_have_count(1)
            expect(page.locator("#graph svg g.node.pending")).to_have_count(1)
            expect(page.locator("a.action")).to_have_count(0)  # read-only until logged in

            # Log in with the operate token, then resume it (confirmed).
            page.click("header a.login")
            page.fill("input[name=token]", TOKEN)
            page.click("main button[type=submit]")
            page.goto(f"{server.url}/run?id={runs['halted']}")
            page.click("a.action-resume")
            expect(page.locator("h1")).to_contain_text("Resume run")
            page.click("#confirm")
            expect(page.locator("#outcome")).to_contain_text("Done: succeeded")
            page.click("#back")
            expect(page.locator("#run-status")).to_have_text("succeeded")
            expect(page.locator("#graph svg g.node.succeeded")).to_have_count(2)
            expect(page.locator("tr.event-operator_action")).to_have_count(1)

            # Undo a succeeded run (confirmed): its steps are compensated.
            page.goto(f"{server.url}/run?id={runs['succeeded']}")
            page.click("a.action-undo")
            page.click("#confirm")
            expect(page.locator("#outcome")).to_contain_text("Done: undone")
            page.click("#back")
            expect(page.locator("#run-status")).to_have_text("undone")
            expect(page.locator("#graph svg g.node.compensated")).to_have_count(1)

            # A poll that finds no runs any more empties the list (no stale rows).
            page.route(
                "**/runs.json*",
                lambda route: route.fulfill(
                    json={"at": "2026-01-01 00:00:00", "counts": {}, "runs": []}
                ),
            )
            page.goto(server.url + "/?saga=Shop")
            expect(page.locator("a.run-link")).not_to_have_count(0)
            expect(page.locator("#runs tbody tr.empty")).to_have_text(
                "no runs match these filters", timeout=15_000
            )
            expect(page.locator("a.run-link")).to_have_count(0)
            assert problems == []
        finally:
            browser.close()
