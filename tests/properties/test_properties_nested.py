"""Property tests over graphs that mix plain, composed, mapped and conditional steps.

Every leaf action (a plain step, a step of a composed child, an element of a mapped step)
logs ``done`` when it completes and ``undo`` when it is undone. Invariants, on asyncio and
trio:

- a run that succeeds undoes nothing;
- a run that fails undoes every completed leaf that can be undone, exactly once, and
  nothing else;
- a step whose condition is false, or that requires a skipped step, never starts;
- nothing runs after ``run()`` returns.
"""

import itertools
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asaga import SagaFailed, compose, map_each
from asaga._step import Step
from tests.sagas.dynamic import make_function, make_saga


class Injected(Exception):
    """The failure a generated step raises."""


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=8))
    names = [f"s{i}" for i in range(n)]
    return {
        "deps": {
            names[j]: sorted(draw(st.sets(st.sampled_from(names[:j]), max_size=2)) if j else [])
            for j in range(n)
        },
        "kinds": {s: draw(st.sampled_from(["plain", "plain", "compose", "map"])) for s in names},
        "skip": draw(st.sets(st.sampled_from(names), max_size=2)),
        "fail": draw(st.sets(st.sampled_from(names), max_size=1)),
        "child_fail": draw(st.booleans()),
        "elements": draw(st.integers(min_value=0, max_value=4)),
        "bad_element": draw(st.integers(min_value=-1, max_value=3)),
        "mode": draw(st.sampled_from(["fail_fast", "collect"])),
        "yields": draw(st.integers(min_value=0, max_value=2)),
    }


def run_scenario(backend: str, sc: dict[str, Any]) -> None:
    log: list[tuple[str, str]] = []
    ids = itertools.count()

    async def pause() -> None:
        for _ in range(sc["yields"]):
            await anyio.lowlevel.checkpoint()

    def leaf(label: str, fail: bool) -> tuple[Any, Any]:
        async def do(**kwargs: Any) -> str:
            log.append(("start", label))
            await pause()
            if fail:
                raise Injected(label)
            token = f"{label}#{next(ids)}"
            log.append(("done", token))
            return token

        async def undo(**kwargs: Any) -> None:
            (token,) = kwargs.values()
            await pause()
            log.append(("undo", token))

        return do, undo

    def child_saga(parent: str) -> Any:
        fail = sc["child_fail"] and parent in sc["fail"]
        c1_do, c1_undo = leaf(f"{parent}/c1", False)
        c2_do, c2_undo = leaf(f"{parent}/c2", fail)
        return make_saga(
            f"Child_{parent}",
            {"c1": ["seed"], "c2": ["c1"]},
            {"c1": c1_do, "c2": c2_do},
            {"c1": c1_undo, "c2": c2_undo},
        )

    steps: dict[str, Any] = {}
    undos: dict[str, Any] = {}
    nested: dict[str, Step[..., Any]] = {}
    for s, deps in sc["deps"].items():
        kind = sc["kinds"][s]
        if kind == "compose":
            when = (lambda: False) if s in sc["skip"] else None
            nested[s] = compose(child_saga(s), seed=deps[0] if deps else "seed", when=when)
        elif kind == "map":
            label = f"{s}[]"
            fail_at = sc["bad_element"] if s in sc["fail"] else -2

            async def element(
                item: int, _label: str = label, _fail: int = fail_at, **_: Any
            ) -> str:
                log.append(("start", f"{_label}{item}"))
                await pause()
                if item == _fail:
                    raise Injected(item)
                token = f"{_label}{item}#{next(ids)}"
                log.append(("done", token))
                return token

            async def undo_element(item: int, element: str) -> None:
                log.append(("undo", element))

            nested[s] = map_each(
                make_function("element", ["item", *deps], element),
                over="items",
                undo=make_function("undo_element", ["item", "element"], undo_element),
                mode=sc["mode"],
                when=(lambda: False) if s in sc["skip"] else None,
            )
        else:
            steps[s], undos[s] = leaf(s, s in sc["fail"])

    plain_deps = {s: d for s, d in sc["deps"].items() if s in steps}
    saga = make_saga(
        "Mixed",
        plain_deps,
        steps,
        undos,
        extra=nested,
        skip=sc["skip"],
    )
    outcome: list[object] = []
    assert saga.__asaga__ is not None
    available = {"seed": "seed", "items": list(range(sc["elements"]))}
    inputs = {k: v for k, v in available.items() if k in saga.__asaga__.plan.inputs}

    async def main() -> None:
        with anyio.fail_after(20):
            try:
                outcome.append(await saga.run(**inputs))
            except SagaFailed as exc:
                outcome.append(exc)
            log.append(("returned", ""))
            for _ in range(20):
                await anyio.lowlevel.checkpoint()

    anyio.run(main, backend=backend)

    assert log[-1] == ("returned", ""), log
    done = [token for kind, token in log if kind == "done"]
    undone = [token for kind, token in log if kind == "undo"]
    assert len(undone) == len(set(undone)), f"undone twice: {log}"
    (result,) = outcome
    if isinstance(result, SagaFailed):
        assert sorted(undone) == sorted(done), log
    else:
        assert undone == [], log

    started = {label.split("/")[0].split("[")[0] for kind, label in log if kind == "start"}
    skipped = set(sc["skip"])
    changed = True
    while changed:  # a step requiring a skipped step is skipped too
        changed = False
        for s, deps in sc["deps"].items():
            actual = deps[:1] if sc["kinds"][s] == "compose" else deps  # compose reads one
            if s not in skipped and any(d in skipped for d in actual):
                skipped.add(s)
                changed = True
    assert not (started & skipped), (started & skipped, log)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenarios())
def test_mixed_graphs_undo_exactly_what_completed(backend: str, sc: dict[str, Any]) -> None:
    """Composed, mapped and conditional steps keep the exactly-once undo invariant."""
    run_scenario(backend, sc)
