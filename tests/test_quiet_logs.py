"""Quiet by default: with structlog not configured, a run prints nothing unless asked
(asaga.log_events, ASAGA_LOG); a configured structlog decides for itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

import asaga
from asaga import Saga, step
from asaga import _events as events_module

pytestmark = pytest.mark.anyio


class Quiet(Saga):
    @step
    async def greet() -> str:
        return "hello"


@pytest.fixture(autouse=True)
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    structlog.reset_defaults()
    monkeypatch.delenv("ASAGA_LOG", raising=False)
    monkeypatch.setattr(events_module, "_shown", None)
    monkeypatch.setattr(events_module, "_resolved", None)
    yield
    structlog.reset_defaults()


async def test_a_first_script_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert not structlog.is_configured()
    assert (await Quiet.run()).output == "hello"
    assert capsys.readouterr().out == ""


async def test_log_events_shows_the_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    asaga.log_events()
    await Quiet.run()
    out = capsys.readouterr().out
    for kind in ("run_started", "step_started", "step_succeeded", "run_succeeded"):
        assert kind in out, kind
    asaga.log_events("info")
    await Quiet.run()
    out = capsys.readouterr().out
    assert "run_succeeded" in out
    assert "step_started" not in out


async def test_asaga_log_sets_the_level(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASAGA_LOG", "debug")
    await Quiet.run()
    assert "step_succeeded" in capsys.readouterr().out


async def test_a_configured_structlog_decides(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.configure(processors=[structlog.dev.ConsoleRenderer(colors=False)])
    await Quiet.run()
    assert "step_started" in capsys.readouterr().out


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        asaga.log_events("verbose")
