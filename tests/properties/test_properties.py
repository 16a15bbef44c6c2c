"""Property tests: random DAGs, random failures, random compensations.

Invariants checked on every generated saga, on asyncio and trio:

- no step starts before all of its dependencies finished;
- on success, no compensation runs;
- on failure, each completed step with a compensation is compensated exactly once, and no
  other step is;
- a step's compensation starts only after the compensations of every completed
  compensable step that (transitively) depends on it have finished;
- once a step has failed, no other step starts;
- nothing runs after ``run()`` returns or raises.
"""

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asaga import SagaFailed
from tests.sagas.dynamic import make_saga


class Injected(Exception):
    """The failure a generated step raises."""


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=14))
    names = [f"s{i}" for i in range(n)]
    deps = {
        names[j]: sorted(draw(st.sets(st.sampled_from(names[:j]), max_size=3)) if j else [])
        for j in range(n)
    }
    return {
        "deps": deps,
        "fail": draw(st.sets(st.sampled_from(names), max_size=2)),
        "compensable": draw(st.sets(st.sampled_from(names))),
        "yields": {s: draw(st.integers(min_value=0, max_value=3)) for s in names},
        "on_failure": draw(st.sampled_from(["wait", "cancel"])),
        "max_concurrency": draw(st.sampled_from([None, 1, 2, 4])),
    }


def descendants(deps: dict[str, list[str]]) -> dict[str, set[str]]:
    children: dict[str, set[str]] = {s: set() for s in deps}
    for s, ds in deps.items():
        for d in ds:
            children[d].add(s)
    out: dict[str, set[str]] = {}

    def walk(s: str) -> set[str]:
        if s not in out:
            acc: set[str] = set()
            for c in children[s]:
                acc |= {c} | walk(c)
            out[s] = acc
        return out[s]

    for s in deps:
        walk(s)
    return out


def run_scenario(backend: str, sc: dict[str, Any]) -> None:
    log: list[tuple[str, str]] = []
    deps: dict[str, list[str]] = sc["deps"]

    def make_step(name: str) -> Any:
        async def body(**kwargs: Any) -> str:
            log.append(("start", name))
            for _ in range(sc["yields"][name]):
                await anyio.lowlevel.checkpoint()
            if name in sc["fail"]:
                log.append(("fail", name))
                raise Injected(name)
            log.append(("end", name))
            return name

        return body

    def make_undo(name: str) -> Any:
        async def body(**kwargs: Any) -> None:
            assert kwargs == {name: name}
            log.append(("cstart", name))
            for _ in range(sc["yields"][name]):
                await anyio.lowlevel.checkpoint()
            log.append(("cend", name))

        return body

    saga = make_saga(
        "Generated",
        deps,
        {s: make_step(s) for s in deps},
        {s: make_undo(s) for s in sc["compensable"]},
        on_failure=sc["on_failure"],
        max_concurrency=sc["max_concurrency"],
    )
    outcome: list[object] = []

    async def main() -> None:
        with anyio.fail_after(10):
            try:
                result = await saga.run()
                outcome.append(result)
            except SagaFailed as exc:
                outcome.append(exc)
            log.append(("returned", ""))
            # Give anything that leaked out of run() a chance to show itself.
            for _ in range(20):
                await anyio.lowlevel.checkpoint()

    anyio.run(main, backend=backend)

    # Nothing after run() returned.
    assert log[-1] == ("returned", ""), log

    position = {entry: i for i, entry in enumerate(log)}
    # Dependencies finish before a step starts.
    for s, ds in deps.items():
        if ("start", s) in position:
            for d in ds:
                assert position.get(("end", d), 10**9) < position[("start", s)], (s, d, log)

    completed = {name for kind, name in log if kind == "end"}
    compensated = [name for kind, name in log if kind == "cend"]
    (result,) = outcome
    if not isinstance(result, SagaFailed):
        assert not sc["fail"] & set(deps) or not any(k == "fail" for k, _ in log)
        assert compensated == []
        assert set(result.results) == set(deps)  # type: ignore[attr-defined]
        return

    first_failure = next(i for i, (k, _) in enumerate(log) if k == "fail")
    late = [name for kind, name in log[first_failure:] if kind == "start"]
    assert late == [], f"steps started after the run failed: {late}"
    expected = completed & sc["compensable"]
    assert sorted(compensated) == sorted(expected)  # exactly once each, nothing else
    assert set(result.compensated) == expected
    desc = descendants(deps)
    for a in expected:
        for d in desc[a] & expected:
            assert position[("cend", d)] < position[("cstart", a)], (a, d, log)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_random_sagas_keep_the_invariants(backend: str, sc: dict[str, Any]) -> None:
    """Random DAGs with random failures keep every scheduling and unwind invariant."""
    run_scenario(backend, sc)
