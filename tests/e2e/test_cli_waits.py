"""The command line and parked runs (against Redis): ``asaga runs list|show`` say what a
parked run waits for; ``asaga deliver``, ``resume`` and ``cancel`` make it go on.

Each test parks runs of the sagas of :mod:`tests.sagas.waiting` in a ``RedisRunStore``
(the test's own key prefix), runs the command line in-process, and checks its output and
the records afterwards.
"""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asaga import RunParked, Saga
from asaga._cli import main
from asaga.runs import RedisRunStore, RunRecord
from tests.sagas.waiting import FollowUp, Order, Reminder, Review, resources

pytestmark = pytest.mark.usefixtures("quiet_logs")  # the CLI's runs log; the test Redis warns

SAGAS = "tests.sagas.waiting"
RESOURCES = ["--resources", f"{SAGAS}:resources"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``main(argv)``; return its status, stdout and stderr."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def park(redis_url: str, prefix: str, saga: type[Saga], **inputs: Any) -> str:
    """Run ``saga`` with ``inputs`` (and its ledger, if it takes one) until it parks: its
    run id."""

    async def go() -> str:
        async with (
            RedisRunStore.from_url(redis_url, prefix=prefix) as runs,
            resources(redis_url, prefix) as res,
        ):
            own = res if "ledger" in saga.__annotations__ else {}
            try:
                await saga.run(runs=runs, **inputs, **own)
            except RunParked as parked:
                return parked.run_id
        raise AssertionError(f"{saga.__name__} should have parked")

    return anyio.run(go)


def load(redis_url: str, prefix: str, run_id: str) -> RunRecord:
    async def go() -> RunRecord:
        async with RedisRunStore.from_url(redis_url, prefix=prefix) as runs:
            return await runs.load(run_id)

    return anyio.run(go)


def ledger(redis_url: str, prefix: str) -> list[str]:
    """What the steps of the sagas noted, in order."""

    async def go() -> list[str]:
        async with resources(redis_url, prefix) as res:
            entries: list[str] = await res["ledger"].entries()
            return entries

    return anyio.run(go)


def approve(redis_url: str, prefix: str, order_id: str) -> None:
    async def go() -> None:
        async with resources(redis_url, prefix) as res:
            await res["ledger"].approve(order_id)

    anyio.run(go)


def utc(seconds: float | None) -> str:
    assert seconds is not None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> list[str]:
    """The --redis and --prefix arguments of the test's store."""
    return ["--redis", redis_url, "--prefix", redis_prefix]


# -- runs list, runs show ---------------------------------------------------------------------


def test_runs_list_shows_what_parked_runs_wait_for(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`runs list --status waiting` lists the parked runs only, each with what it waits for
    (step, kind, key, until as UTC); without --status the column is there for them and
    empty for the others; a list without parked runs has no such column."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    review = park(redis_url, redis_prefix, Review, order_id="o-2")
    follow = park(redis_url, redis_prefix, FollowUp, ticket="t-1")
    status, _, err = run(
        [
            "deliver",
            f"{SAGAS}:Order",
            "payment:o-0",
            "--payload",
            '{"amount": 1, "ref": "r-0"}',
            *store,
            *RESOURCES,
        ],
        capsys,
    )
    assert (status, err) == (0, "")
    done = park_or_finish(redis_url, redis_prefix, "o-0")

    status, out, err = run(["runs", "list", *store, "--status", "waiting"], capsys)
    assert (status, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == [
        "RUN",
        "SAGA",
        "STATUS",
        "CREATED",
        "(UTC)",
        "FAILED",
        "STEP",
        "WAITING",
        "FOR",
    ]
    assert [row.split()[:3] for row in rows] == [
        [follow, "FollowUp", "waiting"],
        [review, "Review", "waiting"],
        [order, "Order", "waiting"],
    ]
    hour = load(redis_url, redis_prefix, follow).steps["hour"].wait
    paid = load(redis_url, redis_prefix, order).steps["paid"].wait
    assert hour is not None
    assert paid is not None
    assert rows[0].endswith(f"answer: event answer:t-1; hour: timer until {utc(hour.until)} UTC")
    assert rows[1].endswith("review: halted: order o-2 needs approval")
    assert rows[2].endswith(f"paid: event payment:o-1 until {utc(paid.until)} UTC")
    column = header.index("WAITING FOR")
    assert all(row[column:] == row[column:].lstrip() for row in rows)  # one aligned column

    status, out, _ = run(["runs", "list", *store], capsys)
    header, *rows = out.splitlines()
    assert "WAITING FOR" in header
    assert rows[0].split()[:3] == [done, "Order", "succeeded"]  # the newest
    assert len(rows[0]) < header.index("WAITING FOR")  # nothing in the column
    assert [row.split()[0] for row in rows[1:]] == [follow, review, order]

    status, out, _ = run(["runs", "list", *store, "--status", "succeeded"], capsys)
    assert out.splitlines()[0].split()[-2:] == ["FAILED", "STEP"]


def park_or_finish(redis_url: str, prefix: str, order_id: str) -> str:
    """Run an Order whose payment was delivered before: it does not park, it succeeds."""

    async def go() -> str:
        async with (
            RedisRunStore.from_url(redis_url, prefix=prefix) as runs,
            resources(redis_url, prefix) as res,
        ):
            result = await Order.run(runs=runs, order_id=order_id, **res)
            return result.run_id

    return anyio.run(go)


def test_runs_show_a_parked_run(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`runs show` of a parked run: status waiting, then for each waiting step its key,
    deadline (and how far it is); a halt's reason; the steps
    table says what the step waits for."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    status, out, err = run(["runs", "show", order, *store], capsys)
    assert (status, err) == (0, "")
    paid = load(redis_url, redis_prefix, order).steps["paid"].wait
    assert paid is not None
    assert "  status    waiting\n" in out
    assert "  owner     parked\n" in out
    assert re.search(
        rf"^  waiting   paid: event payment:o-1, until {re.escape(utc(paid.until))} UTC "
        r"\(in (59m \d+s|1h 0m)\)$",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^paid\s+waiting\s+1\s+-\s+event payment:o-1 until {re.escape(utc(paid.until))} UTC$",
        out,
        re.M,
    )
    assert re.search(r'^reserve\s+succeeded\s+1\s+-\s+"res-o-1"$', out, re.M)

    follow = park(redis_url, redis_prefix, FollowUp, ticket="t-1")
    status, out, _ = run(["runs", "show", follow, *store], capsys)
    hour = load(redis_url, redis_prefix, follow).steps["hour"].wait
    assert hour is not None
    assert (
        "  waiting   answer: event answer:t-1, no deadline\n"
        f"            hour: timer, until {utc(hour.until)} UTC (in "
    ) in out

    review = park(redis_url, redis_prefix, Review, order_id="o-2")
    status, out, _ = run(["runs", "show", review, *store], capsys)
    assert (
        "  waiting   review: halted: order o-2 needs approval (asaga resume runs it again)\n"
    ) in out
    assert re.search(r"^review\s+waiting\s+1\s+-\s+halted: order o-2 needs approval$", out, re.M)


def test_runs_list_unknown_status(store: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A --status that is no status is a usage error that names the close one."""
    status, out, err = run(["runs", "list", *store, "--status", "wating"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith(
        "asaga runs list: error: unknown --status 'wating' (did you mean 'waiting'? statuses: "
    )
    assert "terminated, in_doubt, quarantined)" in err


# -- deliver ----------------------------------------------------------------------------------


def test_deliver(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga deliver`: an invalid payload is refused (status 1, the run still waits); a
    valid one is delivered and the run goes on here, with the resources, to its end
    (status 0, its output printed); a second one is a duplicate (status 1)."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    deliver = ["deliver", f"{SAGAS}:Order", "payment:o-1", *store, *RESOURCES]

    status, out, err = run([*deliver, "--payload", '{"amount": "x", "ref": "r-1"}'], capsys)
    assert (status, out) == (1, "")
    assert err == (
        "asaga deliver: event 'payment:o-1' refused: invalid payload: Expected `int`, got "
        f"`str` - at `$.amount` (run {order})\n"
    )
    assert load(redis_url, redis_prefix, order).status == "waiting"

    status, out, err = run([*deliver, "--payload", '{"amount": 5, "ref": "r-1"}'], capsys)
    assert (status, err) == (0, "")
    assert out == (
        f"delivered payment:o-1 to run {order}: succeeded\n"
        '  output       "shipped res-o-1 (5 paid by r-1)"\n'
    )
    record = load(redis_url, redis_prefix, order)
    assert record.status == "succeeded"
    assert record.steps["paid"].status == "succeeded"
    assert ledger(redis_url, redis_prefix) == ["reserve o-1", "ship res-o-1 paid by r-1"]

    status, out, err = run([*deliver, "--payload", '{"amount": 6, "ref": "r-2"}'], capsys)
    assert (status, out) == (1, "")
    assert err == (
        "asaga deliver: event 'payment:o-1' refused: an event for this key was delivered "
        f"already (run {order} took it)\n"
    )
    assert ledger(redis_url, redis_prefix) == ["reserve o-1", "ship res-o-1 paid by r-1"]


def test_deliver_refusals(
    redis_url: str,
    redis_prefix: str,
    store: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A key no step waits for is refused (status 1); a payload that is not JSON, or a
    file that cannot be read, is a usage error (status 2) and nothing is delivered."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    target = ["deliver", f"{SAGAS}:Order"]
    status, out, err = run([*target, "invoice:o-1", "--payload", "{}", *store, *RESOURCES], capsys)
    assert (status, out) == (1, "")
    assert err == (
        "asaga deliver: event 'invoice:o-1' refused: no step of saga Order waits for a key "
        "like it (its keys: payment:{order_id})\n"
    )
    status, out, err = run([*target, "payment:o-1", "--payload", '{"amount": 5', *store], capsys)
    assert (status, out) == (2, "")
    assert err == "asaga deliver: error: --payload is not JSON (Input data was truncated)\n"
    status, out, err = run(
        [*target, "payment:o-1", "--payload", "@/nonexistent/p.json", *store], capsys
    )
    assert (status, out) == (2, "")
    assert err.startswith("asaga deliver: error: --payload @/nonexistent/p.json: cannot read")
    monkeypatch.delenv("REDIS_URL", raising=False)
    status, out, err = run([*target, "payment:o-1", "--payload", "{}", *RESOURCES], capsys)
    assert (status, out) == (2, "")
    assert err == (
        "asaga deliver: error: give the run store's Redis with --redis URL (or set REDIS_URL)\n"
    )
    status, _, err = run([*target, "payment:o-1", *store], capsys)
    assert status == 2
    assert "the following arguments are required: --payload" in err
    assert load(redis_url, redis_prefix, order).status == "waiting"


def test_deliver_payload_from_a_file_and_stdin(
    redis_url: str,
    redis_prefix: str,
    store: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--payload @file reads the payload from a file, @- from standard input."""
    first = park(redis_url, redis_prefix, Order, order_id="o-1")
    second = park(redis_url, redis_prefix, Order, order_id="o-2")
    (tmp_path / "payment.json").write_text('{"amount": 7, "ref": "from-file"}\n')
    deliver = ["deliver", f"{SAGAS}:Order", *store, *RESOURCES, "--payload"]
    status, out, err = run([*deliver, f"@{tmp_path / 'payment.json'}", "payment:o-1"], capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"delivered payment:o-1 to run {first}: succeeded\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"amount": 8, "ref": "from-stdin"}'))
    status, out, err = run([*deliver, "@-", "payment:o-2"], capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"delivered payment:o-2 to run {second}: succeeded\n")
    assert ledger(redis_url, redis_prefix)[-2:] == [
        "ship res-o-1 paid by from-file",
        "ship res-o-2 paid by from-stdin",
    ]


def test_deliver_too_many_bad_payloads_fails_the_run(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the bad payloads a step tolerates (one for Order), the refusal says the run
    failed; it unwound (the reservation released)."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    deliver = ["deliver", f"{SAGAS}:Order", "payment:o-1", *store, *RESOURCES, "--payload"]
    assert run([*deliver, '{"amount": 1}'], capsys)[0] == 1
    assert load(redis_url, redis_prefix, order).status == "waiting"
    status, out, err = run([*deliver, '{"amount": 1}'], capsys)
    assert (status, out) == (1, "")
    assert err == (
        "asaga deliver: event 'payment:o-1' refused: invalid payload: Object missing "
        "required field `ref`; the run failed: too many bad payloads "
        f"(run {order})\n"
    )
    record = load(redis_url, redis_prefix, order)
    assert (record.status, record.failed_step) == ("failed", "paid")
    assert ledger(redis_url, redis_prefix) == ["reserve o-1", "release res-o-1"]


def test_deliver_before_the_run_waits_keeps_the_payload(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An event no run waits for yet is kept (status 0), for the run that will."""
    status, out, err = run(
        [
            "deliver",
            f"{SAGAS}:Order",
            "payment:o-9",
            "--payload",
            '{"amount": 9, "ref": "early"}',
            *store,
            *RESOURCES,
        ],
        capsys,
    )
    assert (status, err) == (0, "")
    assert out == (
        "kept payment:o-9: no run waits for it yet; the first run that waits for it takes it\n"
    )
    run_id = park_or_finish(redis_url, redis_prefix, "o-9")
    assert load(redis_url, redis_prefix, run_id).status == "succeeded"
    assert ledger(redis_url, redis_prefix)[-1] == "ship res-o-9 paid by early"


def test_deliver_and_the_run_waits_again(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that still waits for something else once the event came parks again: the
    command says for what. A saga without resources needs no --resources."""
    follow = park(redis_url, redis_prefix, FollowUp, ticket="t-1")
    argv = ["deliver", f"{SAGAS}:FollowUp", "answer:t-1", "--payload", '{"text": "yes"}', *store]
    status, out, err = run(argv, capsys)
    assert (status, err) == (0, "")
    record = load(redis_url, redis_prefix, follow)
    hour = record.steps["hour"].wait
    assert hour is not None
    assert re.fullmatch(
        rf"delivered answer:t-1 to run {follow}: waiting\n"
        rf"  waiting      hour: timer, until {re.escape(utc(hour.until))} UTC \(in .+\)\n",
        out,
    ), out
    assert record.status == "waiting"
    assert [w.step for w in record.waits] == ["hour"]


def test_commands_need_the_saga_resources(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the resources the saga needs to go on, the command is a usage error and
    the parked run is left alone (it would be taken, and could not go on)."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    payload = ["--payload", '{"amount": 5, "ref": "r-1"}']
    for argv in (
        ["deliver", f"{SAGAS}:Order", "payment:o-1", *payload, *store],
        ["cancel", f"{SAGAS}:Order", order, *store],
        ["cancel", f"{SAGAS}:Order", order, "--no-compensate", *store],
    ):
        status, out, err = run(argv, capsys)
        assert (status, out) == (2, "")
        assert err == (
            f"asaga {argv[0]}: error: saga Order needs its resources (ledger) to go on: give "
            "--resources module.path:function\n"
        )
    status, out, err = run(
        [
            "deliver",
            f"{SAGAS}:Order",
            "payment:o-1",
            *payload,
            *store,
            "--resources",
            f"{__name__}:no_resources",
        ],
        capsys,
    )
    assert (status, out) == (2, "")
    assert err == (
        "asaga deliver: error: saga Order needs its resources (ledger) to go on: "
        f"{__name__}:no_resources gave none\n"
    )
    record = load(redis_url, redis_prefix, order)
    assert record.status == "waiting"
    assert record.steps["paid"].status == "waiting"


def no_resources() -> dict[str, Any]:
    """A --resources target that gives nothing."""
    return {}


# -- resume, cancel ---------------------------------------------------------------------------


def test_resume_a_halted_run(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga resume` runs the halted step again: it halts again (not approved yet), then
    the run succeeds; resuming a run with no halted step is refused (status 1)."""
    review = park(redis_url, redis_prefix, Review, order_id="o-2")
    resume = ["resume", f"{SAGAS}:Review", review, *store, *RESOURCES]
    status, out, err = run(resume, capsys)
    assert (status, err) == (0, "")
    assert out == (
        f"resumed run {review}: waiting\n"
        "  waiting      review: halted: order o-2 needs approval (asaga resume runs it again)\n"
    )
    record = load(redis_url, redis_prefix, review)
    assert (record.status, record.steps["review"].attempt) == ("waiting", 2)

    approve(redis_url, redis_prefix, "o-2")
    status, out, err = run(resume, capsys)
    assert (status, err) == (0, "")
    assert out == f'resumed run {review}: succeeded\n  output       "shipped res-o-2"\n'
    assert load(redis_url, redis_prefix, review).status == "succeeded"
    assert ledger(redis_url, redis_prefix) == ["reserve o-2", "ship res-o-2"]

    status, out, err = run(resume, capsys)
    assert (status, out) == (1, "")
    assert err == (f"asaga resume: run {review} has no halted step to resume (status succeeded)\n")
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    status, out, err = run(["resume", f"{SAGAS}:Order", order, *store, *RESOURCES], capsys)
    assert (status, out) == (1, "")
    assert err == f"asaga resume: run {order} has no halted step to resume (status waiting)\n"
    status, out, err = run(["resume", f"{SAGAS}:Order", "nope", *store, *RESOURCES], capsys)
    assert (status, out, err) == (1, "", "asaga resume: no record of run 'nope' in this store\n")


def test_cancel_compensates(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga cancel` unwinds a parked run (status cancelled, its reservation released);
    a later event for it, and a second cancel, are refused (status 1)."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    status, out, err = run(["cancel", f"{SAGAS}:Order", order, *store, *RESOURCES], capsys)
    assert (status, err) == (0, "")
    assert out == f"cancelled run {order}: cancelled\n  compensated  reserve\n"
    record = load(redis_url, redis_prefix, order)
    assert record.status == "cancelled"
    assert record.steps["reserve"].compensation == "succeeded"
    assert (record.steps["paid"].status, record.steps["paid"].error) == (
        "cancelled",
        "cancelled while waiting",
    )
    assert ledger(redis_url, redis_prefix) == ["reserve o-1", "release res-o-1"]

    payload = ["--payload", '{"amount": 5, "ref": "r-1"}']
    status, out, err = run(
        ["deliver", f"{SAGAS}:Order", "payment:o-1", *payload, *store, *RESOURCES], capsys
    )
    assert (status, out) == (1, "")
    assert err == (
        f"asaga deliver: event 'payment:o-1' refused: run {order} no longer waits for it "
        "(it timed out, was cancelled or failed)\n"
    )
    status, out, err = run(["cancel", f"{SAGAS}:Order", order, *store, *RESOURCES], capsys)
    assert (status, out) == (1, "")
    assert err == f"asaga cancel: run {order} is not parked (its status is cancelled)\n"
    assert ledger(redis_url, redis_prefix) == ["reserve o-1", "release res-o-1"]


def test_cancel_without_compensation(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga cancel --no-compensate` ends a parked run as it is: status terminated,
    nothing undone; a halted run can be cancelled too."""
    order = park(redis_url, redis_prefix, Order, order_id="o-1")
    argv = ["cancel", f"{SAGAS}:Order", order, "--no-compensate", *store, *RESOURCES]
    status, out, err = run(argv, capsys)
    assert (status, out, err) == (0, f"cancelled run {order}: terminated\n", "")
    record = load(redis_url, redis_prefix, order)
    assert record.status == "terminated"
    assert record.steps["reserve"].compensation is None
    assert record.steps["paid"].status == "cancelled"
    assert ledger(redis_url, redis_prefix) == ["reserve o-1"]
    status, out, _ = run(["runs", "list", *store, "--status", "terminated"], capsys)
    assert [line.split()[:3] for line in out.splitlines()[1:]] == [[order, "Order", "terminated"]]

    review = park(redis_url, redis_prefix, Review, order_id="o-2")
    status, out, err = run(["cancel", f"{SAGAS}:Review", review, *store, *RESOURCES], capsys)
    assert (status, out, err) == (
        0,
        f"cancelled run {review}: cancelled\n  compensated  reserve\n",
        "",
    )
    assert ledger(redis_url, redis_prefix)[-1] == "release res-o-2"


def test_recover_wakes_a_due_timer(
    redis_url: str, redis_prefix: str, store: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga recover` finds a parked run whose timer is due and drives it on."""
    reminder = park(redis_url, redis_prefix, Reminder, ticket="t-1")
    nap = load(redis_url, redis_prefix, reminder).steps["nap"].wait
    assert nap is not None
    assert nap.until is not None
    time.sleep(max(0.0, nap.until - time.time()) + 0.05)
    status, out, err = run(["recover", *store, "--saga", f"{SAGAS}:Reminder"], capsys)
    assert (status, err) == (0, "")
    assert out == f"{reminder}  Reminder  succeeded\n1 run(s) recovered\n"
    assert load(redis_url, redis_prefix, reminder).status == "succeeded"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """The new commands are listed and have their --help."""
    status, out, _ = run(["--help"], capsys)
    assert status == 0
    for command in ("deliver", "resume", "cancel"):
        assert re.search(rf"^    {command}\s+\S", out, re.M), out
        status, out_command, _ = run([command, "--help"], capsys)
        assert status == 0
        assert f"usage: asaga {command} [-h]" in out_command
        assert "--resources TARGET" in out_command
    status, out, _ = run(["cancel", "--help"], capsys)
    assert "--no-compensate" in out
    status, out, _ = run(["deliver", "--help"], capsys)
    assert "--payload JSON" in out
