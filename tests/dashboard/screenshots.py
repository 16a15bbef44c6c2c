"""Regenerate the dashboard's screenshots in docs/images (dashboard-list.png,
dashboard-run.png): ``REDIS_URL=redis://... python -m tests.dashboard.screenshots``.

Seeds a fresh key prefix as the browser test does, serves it with ``asaga dashboard``,
photographs the runs list and the page of the run that failed (a compensated step, a
failed one) with Debian's Chromium, then deletes the prefix."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import redis

from .browser import CHROMIUM, ROOT, dashboard_server

IMAGES = ROOT / "docs" / "images"


def take(redis_url: str, prefix: str, out: Path) -> list[Path]:
    """Photograph the list and a run page of a seeded dashboard into ``out``."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = [out / "dashboard-list.png", out / "dashboard-run.png"]
    with dashboard_server(redis_url, prefix) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(server.url + "/")
            page.wait_for_selector("a.run-link")
            page.screenshot(path=str(shots[0]), full_page=True)
            page.goto(f"{server.url}/run?id={server.runs['failed']}")
            page.wait_for_selector("#graph[data-rendered=yes] svg")
            page.screenshot(path=str(shots[1]), full_page=True)
        finally:
            browser.close()
    return shots


def main() -> int:
    """Take the screenshots; the prefix is deleted afterwards."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"asaga-screenshots:{uuid.uuid4().hex[:8]}:"
    try:
        for shot in take(url, prefix, IMAGES):
            print(shot.relative_to(ROOT))
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
