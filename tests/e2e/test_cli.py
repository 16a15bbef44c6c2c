"""The ``asaga`` command line: ``graph`` output, target errors, ``python -m asaga``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asaga import Saga, step
from asaga._cli import main
from tests.test_render import ORDER_DOT, ORDER_MERMAID, ORDER_MERMAID_INPUTS

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = "tests.sagas.graph_fixture"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call ``main(argv)``; return its status, stdout and stderr."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_graph_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    """`asaga graph module:Saga` prints the Mermaid drawing (the default format)."""
    assert run(["graph", f"{FIXTURE}:Order"], capsys) == (0, ORDER_MERMAID, "")


def test_graph_dot(capsys: pytest.CaptureFixture[str]) -> None:
    """--format dot prints the DOT drawing."""
    assert run(["graph", f"{FIXTURE}:Order", "--format", "dot"], capsys) == (0, ORDER_DOT, "")


def test_graph_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    """--inputs draws the inputs too."""
    assert run(["graph", "--inputs", f"{FIXTURE}:Order"], capsys) == (
        0,
        ORDER_MERMAID_INPUTS,
        "",
    )


class Holder:
    """Holds a saga class as an attribute (for the dotted-path test)."""

    class Inner(Saga):
        @step
        async def only() -> int:
            return 1


def test_graph_nested_class(capsys: pytest.CaptureFixture[str]) -> None:
    """A class inside a class is reached with a dotted attribute path."""
    assert run(["graph", "tests.e2e.test_cli:Holder.Inner"], capsys) == (
        0,
        'flowchart TD\n    only["only<br/>output"]\n',
        "",
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "tests.sagas.graph_fixture",
            "target 'tests.sagas.graph_fixture' must be module.path:ClassName "
            "(for example examples.checkout:Checkout)",
        ),
        (":Order", "target ':Order' must be module.path:ClassName"),
        (f"{FIXTURE}:", f"target '{FIXTURE}:' must be module.path:ClassName"),
        ("no_such_module_x:Order", "no module named 'no_such_module_x' (looked in"),
        ("tests.sagas.nope:Order", "no module named 'tests.sagas.nope' (looked in"),
        (f"{FIXTURE}:Ordr", f"{FIXTURE} has no attribute 'Ordr' (did you mean 'Order'?)"),
        (f"{FIXTURE}:Xyz", f"{FIXTURE} has no attribute 'Xyz' (sagas there: Order, ReserveItem)"),
        (f"{FIXTURE}:Order.nope", f"{FIXTURE}:Order has no attribute 'nope'"),
        (
            f"{FIXTURE}:NotASaga",
            f"{FIXTURE}:NotASaga is a class, not a Saga subclass (sagas there: Order, ReserveItem)",
        ),
        (f"{FIXTURE}:is_gift", f"{FIXTURE}:is_gift is a function, not a Saga subclass"),
        (f"{FIXTURE}:Order.charge", f"{FIXTURE}:Order.charge is a Step, not a Saga subclass"),
        ("asaga:Saga", "asaga:Saga is the Saga base class; name a subclass of it"),
    ],
)
def test_bad_target(target: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A target that names no saga is a usage error (status 2) with one clear line."""
    status, out, err = run(["graph", target], capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"asaga graph: error: {message}")
    assert err.count("\n") == 1


@pytest.fixture
def scratch_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The working directory is an empty temporary one, not on sys.path; modules written
    there as ``asaga_cli_scratch_*.py`` are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("asaga_cli_scratch_")]:
        del sys.modules[name]


def test_target_in_current_directory(
    scratch_module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like `python -m`, the current directory is searched for the target's module."""
    (scratch_module / "asaga_cli_scratch_ok.py").write_text(
        "from asaga import Saga, step\n\n\n"
        "class Here(Saga):\n"
        "    @step\n"
        "    async def a() -> int:\n"
        "        return 1\n"
    )
    assert run(["graph", "asaga_cli_scratch_ok:Here"], capsys) == (
        0,
        'flowchart TD\n    a["a<br/>output"]\n',
        "",
    )


def test_target_as_a_file_path(scratch_module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``first.py:Checkout`` names the file, as a newcomer types it; a missing file says
    what a target looks like."""
    (scratch_module / "asaga_cli_scratch_file.py").write_text(
        "from asaga import Saga, step\n\n\n"
        "class Here(Saga):\n"
        "    @step\n"
        "    async def a() -> int:\n"
        "        return 1\n"
    )
    assert run(["graph", "asaga_cli_scratch_file.py:Here"], capsys)[:2] == (
        0,
        'flowchart TD\n    a["a<br/>output"]\n',
    )
    status, out, err = run(["graph", "asaga_cli_scratch_none.py:Here"], capsys)
    assert (status, out) == (2, "")
    assert "no file 'asaga_cli_scratch_none.py'" in err
    assert "path/to/file.py:Class" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import asaga

    assert run(["--version"], capsys) == (0, f"asaga {asaga.__version__}\n", "")


def test_recover_without_the_resources_a_saga_needs(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis_prefix: str
) -> None:
    """A usage error naming them, not a traceback, and nothing is taken."""
    status, out, err = run(
        [
            "recover",
            "--saga",
            "tests.sagas.durable:DurableCheckout",
            "--redis",
            redis_url,
            "--prefix",
            redis_prefix,
        ],
        capsys,
    )
    assert (status, out) == (2, "")
    assert "needs its resources" in err
    assert "--resources" in err


def test_saga_definition_error(scratch_module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A module whose saga does not define is a usage error that shows the problems."""
    (scratch_module / "asaga_cli_scratch_bad.py").write_text(
        "from asaga import Saga, step\n\n\n"
        "class Broken(Saga):\n"
        "    @step\n"
        "    def a() -> int:\n"
        "        return 1\n"
    )
    status, out, err = run(["graph", "asaga_cli_scratch_bad:Broken"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith("asaga graph: error: importing asaga_cli_scratch_bad failed: ")
    assert "must be `async def`" in err


def test_missing_import_inside_the_module_propagates(
    scratch_module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module the target imports that is missing is not the target's typo: its
    ModuleNotFoundError propagates with its traceback."""
    (scratch_module / "asaga_cli_scratch_dep.py").write_text("import asaga_no_such_dependency\n")
    with pytest.raises(ModuleNotFoundError, match="asaga_no_such_dependency"):
        main(["graph", "asaga_cli_scratch_dep:X"])


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """No command, an unknown command or a bad --format: argparse's usage error, status 2."""
    for argv in ([], ["draw"], ["graph", f"{FIXTURE}:Order", "--format", "svg"]):
        status, out, err = run(argv, capsys)
        assert (status, out) == (2, "")
        assert "usage: asaga" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists the commands and exits 0."""
    status, out, _ = run(["--help"], capsys)
    assert status == 0
    assert "graph" in out


def test_python_m_asaga() -> None:
    """`python -m asaga graph tests.<module>:<Saga>` works from the repository root."""
    proc = subprocess.run(
        [sys.executable, "-m", "asaga", "graph", f"{FIXTURE}:Order"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, ORDER_MERMAID, "")


def test_python_m_asaga_error() -> None:
    """Errors go to stderr with status 2 from the real entry point too."""
    proc = subprocess.run(
        [sys.executable, "-m", "asaga", "graph", "examples.checkout:Nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "asaga graph: error: examples.checkout has no attribute 'Nope' (sagas there: Checkout)\n"
    )


DOCS_PAGE = ROOT / "docs" / "cli.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def documented_commands() -> list[tuple[str, str]]:
    """(command line, what the page says it prints) for each ``$ asaga`` in docs/cli.md.

    A console block holding one command alone is followed by a block of what it prints;
    otherwise the lines after each command, up to the next one, are what it prints.
    """
    blocks = [m.group(1, 2) for m in FENCE.finditer(DOCS_PAGE.read_text())]
    found: list[tuple[str, str]] = []
    for i, (lang, body) in enumerate(blocks):
        if lang != "console":
            continue
        lines = body.splitlines()
        if len(lines) == 1:
            found.append((lines[0], blocks[i + 1][1]))
            continue
        for line in lines:
            if line.startswith("$ "):
                found.append((line, ""))
            else:
                found[-1] = (found[-1][0], found[-1][1] + line + "\n")
    return found


DOCUMENTED = documented_commands()


def test_docs_page_has_commands() -> None:
    """docs/cli.md was read and shows several commands (guards against an empty run)."""
    assert len(DOCUMENTED) >= 5


@pytest.mark.parametrize(("command", "expected"), DOCUMENTED, ids=[c for c, _ in DOCUMENTED])
def test_docs_page_output(
    command: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command on docs/cli.md prints exactly what the page shows, from the repo root."""
    assert command.startswith("$ asaga ")
    monkeypatch.chdir(ROOT)
    _, out, err = run(shlex.split(command)[2:], capsys)
    assert out + err == expected


# -- asaga runs / asaga recover (against Redis) -------------------------------------------


class Recorded(Saga):
    """Runs recorded by the CLI tests."""

    fail: bool = False

    @step
    async def first() -> str:
        return "one"

    @first.compensate
    async def unfirst(first: str) -> None:
        return None

    @step
    async def second(first: str, fail: bool) -> str:
        if fail:
            raise RuntimeError("second failed")
        return first + "+two"


def record_runs(redis_url: str, prefix: str) -> tuple[str, str]:
    """One succeeded and one failed run in a RedisRunStore under ``prefix``."""
    import anyio

    from asaga import SagaFailed
    from asaga.runs import RedisRunStore

    async def main() -> tuple[str, str]:
        async with RedisRunStore.from_url(redis_url, prefix=prefix) as runs:
            ok = await Recorded.run(runs=runs)
            try:
                await Recorded.run(fail=True, runs=runs)
            except SagaFailed as exc:
                return ok.run_id, exc.run_id
        raise AssertionError("the second run should have failed")

    return anyio.run(main)


@pytest.mark.usefixtures("quiet_logs")
def test_runs_list_and_show(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga runs list` shows recorded runs newest first; `runs show` one run's steps,
    compensations and timeline."""
    ok, failed = record_runs(redis_url, redis_prefix)
    status, out, err = run(["runs", "list", "--redis", redis_url, "--prefix", redis_prefix], capsys)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "SAGA", "STATUS", "CREATED", "(UTC)", "FAILED", "STEP"]
    assert lines[1].split()[:3] == [failed, "Recorded", "failed"]
    assert lines[1].split()[-1] == "second"
    assert lines[2].split()[:3] == [ok, "Recorded", "succeeded"]
    status, out, _ = run(
        ["runs", "list", "--redis", redis_url, "--prefix", redis_prefix, "--status", "failed"],
        capsys,
    )
    assert [line.split()[0] for line in out.splitlines()[1:]] == [failed]

    status, out, err = run(
        ["runs", "show", failed, "--redis", redis_url, "--prefix", redis_prefix], capsys
    )
    assert (status, err) == (0, "")
    assert f"run {failed}" in out
    assert "failed    at second: RuntimeError('second failed')" in out
    assert re.search(r"first\s+succeeded\s+1\s+succeeded\s+\"one\"", out)
    assert re.search(r"second\s+failed\s+1\s+-\s+RuntimeError\('second failed'\)", out)
    kinds = re.findall(r"ms  (\w+)", out)
    assert kinds == [
        "run_started",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_failed",
        "compensation_started",
        "compensation_succeeded",
        "run_failed",
    ]


@pytest.mark.usefixtures("quiet_logs")  # the test Redis has no AOF: the store warns
def test_runs_show_unknown_run(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown run id is a clear error and status 1."""
    status, out, err = run(
        ["runs", "show", "nope", "--redis", redis_url, "--prefix", redis_prefix], capsys
    )
    assert (status, out) == (1, "")
    assert "asaga runs show: no record of run 'nope'" in err


def test_runs_need_a_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --redis nor $REDIS_URL the command says what to give it."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    status, _, err = run(["runs", "list"], capsys)
    assert status == 2
    assert "give the run store's Redis with --redis URL" in err


@pytest.mark.usefixtures("quiet_logs")
def test_recover_command(
    redis_url: str, redis_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga recover` takes over the run of a process that died mid-step (the durable
    example's child process) and compensates it, with the example's resources."""
    import os

    import anyio
    import redis
    import redis.asyncio as aioredis

    from examples.inventory import Product, RedisInventoryStore

    async def stock() -> None:
        client = aioredis.Redis.from_url(redis_url)
        store = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
        await store.put(Product(sku="widget", inventory_count=10))
        await client.aclose()

    anyio.run(stock)
    env = {**os.environ, "DURABLE_DEMO_CRASH": "1"}
    example = str(ROOT / "examples" / "durable_checkout.py")
    seed = [sys.executable, example, "--redis", redis_url, "--prefix", redis_prefix, "--child"]
    assert subprocess.run(seed, env=env, timeout=60, check=False).returncode == 1
    client = redis.Redis.from_url(redis_url)
    try:
        owners = list(client.scan_iter(match=f"{redis_prefix}owner:*"))
        assert len(owners) == 1
        client.delete(*owners)  # the dead process's lease, expired now instead of in 1 s
    finally:
        client.close()
    argv = [
        "recover",
        "--redis",
        redis_url,
        "--prefix",
        redis_prefix,
        "--saga",
        "examples.durable_checkout:DurableCheckout",
        "--resources",
        "examples.durable_checkout:resources",
    ]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert re.search(r"\S+  DurableCheckout  compensation_failed  in doubt: charge", out)
    assert out.rstrip().endswith("1 run(s) recovered")
    status, out, _ = run(argv, capsys)
    assert out.rstrip().endswith("0 run(s) recovered")

    async def reserved() -> int:
        client = aioredis.Redis.from_url(redis_url)
        store = RedisInventoryStore(client, None, prefix=f"{redis_prefix}inv:")
        product = await store.get("widget")
        await client.aclose()
        return product.reserved_count

    assert anyio.run(reserved) == 0  # the dead run's reservation was released


@pytest.mark.usefixtures("quiet_logs")
def test_recover_quarantines_a_foreign_record_and_readmit_puts_it_back(
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`asaga recover` quarantines an abandoned run listed as Recorded whose record is of
    another saga (it crashed with a KeyError before), still recovers the genuine run next
    to it, and exits 1; `runs list` shows the quarantined run with its reason, `runs list
    --status quarantined` only those, `runs readmit` puts it back (once)."""
    import anyio

    from asaga.runs import RedisRunStore
    from tests.unfinished_runs import unfinished_run

    async def abandon() -> None:
        async with RedisRunStore.from_url(redis_url, prefix=redis_prefix) as dead:
            await dead.create(unfinished_run("Other", "foreign-1"), None)
            await dead.client.hset(f"{redis_prefix}run:foreign-1", "saga", "Recorded")
            await dead.create(unfinished_run("Recorded", "genuine-1"), None)

    anyio.run(abandon)
    monkeypatch.chdir(ROOT)
    store = ["--redis", redis_url, "--prefix", redis_prefix]
    status, out, err = run(["recover", *store, "--saga", "tests.e2e.test_cli:Recorded"], capsys)
    assert (status, err) == (1, "")
    assert "genuine-1  Recorded  succeeded" in out
    assert re.search(
        r"foreign-1  Recorded  quarantined  the record of run foreign-1 is foreign", out
    )
    assert out.rstrip().endswith("1 run(s) recovered, 1 quarantined (asaga runs list shows why)")

    status, out, _ = run(["runs", "list", *store], capsys)
    assert status == 0
    runs_table, quarantined_table = out.split("\n\n")
    assert [line.split()[0] for line in runs_table.splitlines()[1:]] == ["genuine-1"]
    header, row = quarantined_table.splitlines()
    assert header.split()[:2] == ["QUARANTINED", "RUN"]
    assert row.split()[:2] == ["foreign-1", "Recorded"]
    assert "saga Other" in row
    status, out, _ = run(["runs", "list", *store, "--status", "quarantined"], capsys)
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["foreign-1"]

    status, out, err = run(["runs", "readmit", "foreign-1", *store], capsys)
    assert (status, out, err) == (
        0,
        "run foreign-1 readmitted: the next recovery sweep takes it\n",
        "",
    )
    status, out, _ = run(["runs", "list", *store, "--status", "quarantined"], capsys)
    assert out == "no runs quarantined\n"
    status, out, err = run(["runs", "readmit", "foreign-1", *store], capsys)
    assert (status, out) == (1, "")
    assert "asaga runs readmit: run 'foreign-1' is not quarantined in this store" in err


def not_served() -> dict[str, int]:
    """A worker target that gives something else than a Served."""
    return {"not": 1}


def test_worker_usage_errors(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga worker` says what is wrong, with status 2, before it serves anything."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, _, err = run(["worker", f"{__name__}:not_served", "--queue", "q"], capsys)
    assert code == 2
    assert "--redis URL" in err
    code, _, err = run(
        ["worker", "nowhere.at_all:served", "--redis", redis_url, "--queue", "q"], capsys
    )
    assert (code, "no module named 'nowhere'" in err) == (2, True)
    code, _, err = run(
        ["worker", f"{__name__}:not_served", "--redis", redis_url, "--queue", "q"], capsys
    )
    assert code == 2
    assert "not an asaga.workers.Served" in err
    code, _, err = run(
        [
            "worker",
            f"{__name__}:not_served",
            "--redis",
            redis_url,
            "--queue",
            "q",
            "--concurrency",
            "0",
        ],
        capsys,
    )
    assert (code, "--concurrency >= 1" in err) == (2, True)


def test_recover_opens_the_queues_of_steps_on_workers(
    capsys: pytest.CaptureFixture[str], redis_url: str, redis_prefix: str
) -> None:
    """A saga whose steps run on workers: recover opens their queues (no QueueNotOpen)."""
    status, out, err = run(
        [
            "recover",
            "--saga",
            "tests.sagas.waiting:PaidOnWorkers",
            "--redis",
            redis_url,
            "--prefix",
            redis_prefix,
        ],
        capsys,
    )
    assert (status, err) == (0, "")
    assert out.endswith("0 run(s) recovered\n")


def test_dashboard_served_gives_its_sagas_and_resources(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`asaga dashboard --served module:fn` serves the Served's sagas with its resources
    (the server itself is replaced here: tests/dashboard starts a real one)."""
    import asaga.dashboard._serve
    from tests.e2e import cli_served

    given: dict[str, object] = {}

    async def serve(runs: object, **options: object) -> None:
        given.update(options)

    monkeypatch.setattr(asaga.dashboard._serve, "serve", serve)
    argv = ["dashboard", "--redis", redis_url, "--prefix", redis_prefix]
    assert main([*argv, "--served", "tests.e2e.cli_served:served"]) == 0
    assert given["sagas"] == [cli_served.Booked]
    assert given["resources"] == {"ledger": cli_served.LEDGER}


def test_runs_list_takes_in_doubt(redis_url: str, redis_prefix: str) -> None:
    """`--status in_doubt` is a status of the runs list, as in the dashboard."""
    argv = ["runs", "list", "--redis", redis_url, "--prefix", redis_prefix]
    assert main([*argv, "--status", "in_doubt"]) == 0


def test_a_cluster_queue_without_a_hash_tag_is_a_usage_error(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`asaga worker --cluster` with a queue name a cluster cannot use says what to name
    it (exit 2), before it connects anywhere."""
    argv = ["worker", "tests.e2e.cli_served:served", "--redis", redis_url, "--cluster"]
    assert main([*argv, "--queue", "plain"]) == 2
    assert "{" in capsys.readouterr().err
