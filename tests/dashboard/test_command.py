"""``asaga dashboard``: its usage errors, and the hosts the server answers (the browser
test, tests/dashboard/test_browser.py, drives the server itself)."""

from __future__ import annotations

import httpx
import pytest

from asaga._cli import main
from tests.dashboard.browser import dashboard_server


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["dashboard", "--redis", ""], "give the run store's Redis with --redis"),
        (["dashboard", "--redis", "redis://x", "--token", "short"], "at least 8 characters"),
        (["dashboard", "--redis", "redis://x", "--port", "0"], "--port must be between"),
        (
            ["dashboard", "--redis", "redis://x", "--served", "a:b", "--saga", "c:D"],
            "either --served, or --saga",
        ),
        (["dashboard", "--redis", "redis://x", "--saga", "tests.dashboard.sagas:Nope"], "Nope"),
    ],
)
def test_usage_errors_say_what_to_do(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each usage error exits 2 with a message naming the option and the fix."""
    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_the_server_answers_its_own_hosts_and_those_allowed_only(
    redis_url: str, redis_prefix: str
) -> None:
    """``asaga dashboard`` answers 127.0.0.1 and localhost on its port and each
    ``--allowed-host``; any other ``Host`` header (a DNS-rebinding page's) gets 421."""
    with dashboard_server(redis_url, redis_prefix, "--allowed-host", "ops.example") as server:
        port = server.url.rsplit(":", 1)[1]
        for host, status in (
            (f"127.0.0.1:{port}", 200),
            (f"localhost:{port}", 200),
            (f"ops.example:{port}", 200),
            (f"attacker.example:{port}", 421),
        ):
            answer = httpx.get(server.url + "/", headers={"Host": host}, timeout=10)
            assert answer.status_code == status, host
