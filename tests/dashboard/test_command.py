"""``asaga dashboard``: its usage errors (the server itself is started by the browser
test, tests/dashboard/test_browser.py)."""

from __future__ import annotations

import pytest

from asaga._cli import main


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
