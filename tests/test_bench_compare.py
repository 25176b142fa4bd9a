"""`python -m bench.compare`: the order that cancels a machine's drift, and what it reads from a run."""

from __future__ import annotations

import pytest

from bench.compare import Step, abba, report, steps_of


def step(c: int, done: float, signal: float, ack: float, cpu: float) -> dict:
    return {
        "c": c,
        "done_over_ideal": {"p50": done - 0.05, "p99": done},
        "signal": {"p50": signal / 2, "p99": signal},
        "ack": {"p50": ack / 2, "p99": ack},
        "bot_cpu_ms_per_turn": cpu,
    }


def test_runs_alternate_a_b_b_a_so_that_a_steady_drift_falls_on_both_trees_alike() -> None:
    order = abba(8)
    assert order == [0, 1, 1, 0, 0, 1, 1, 0]
    # A drift that slows each run by the same amount adds as much to A's runs as to B's.
    runs_of = {tree: [i for i, which in enumerate(order) if which == tree] for tree in (0, 1)}
    assert sum(runs_of[0]) == sum(runs_of[1])


def test_each_sweeps_largest_step_is_read_and_a_step_that_did_not_run_is_skipped() -> None:
    http_steps = [step(1, 1.0, 0.01, 0.002, 20.0), step(500, 1.3, 0.5, 0.2, 3.0)]
    sweeps = [
        {"name": "bot", "mode": "http", "tiers": False, "steps": http_steps},
        {"name": "bot", "mode": "socket", "tiers": False, "steps": [step(50, 1.04, 0.04, 0.008, 4.0)]},
        {"name": "bot", "mode": "http", "tiers": True, "steps": [{"c": 500, "skipped": "no tiers"}]},
    ]
    results = {"scenarios": {"concurrency": sweeps}}
    http, socket = steps_of(results, "A", 3)
    assert http == Step(
        "A",
        3,
        "bot (http) C=500",
        {"done/ideal p99": 1.3, "signal p99 ms": 500.0, "ack p99 ms": 200.0, "bot CPU ms/turn": 3.0},
    )
    assert socket.mode == "bot (socket) C=50" and socket.figures["done/ideal p99"] == 1.04


def test_the_report_gives_each_trees_average_and_b_less_a() -> None:
    def run(tree: str, number: int, done: float, signal: float) -> Step:
        figures = {"done/ideal p99": done, "signal p99 ms": signal, "ack p99 ms": 10.0}
        return Step(tree, number, "bot (http) C=500", figures | {"bot CPU ms/turn": 3.0})

    steps = [run("A", 1, 1.20, 400.0), run("B", 2, 1.30, 460.0), run("B", 3, 1.34, 480.0)]
    steps.append(run("A", 4, 1.26, 420.0))
    lines = report(steps, ("A", "B")).splitlines()
    rows = [line.split() for line in lines if line.strip().startswith("avg")]
    averages = {row[1]: [float(x) for x in row[2:]] for row in rows}
    assert averages["A"][:2] == pytest.approx([1.23, 410.0])
    assert averages["B"][:2] == pytest.approx([1.32, 470.0])
    [difference] = [line for line in lines if line.strip().startswith("B-A")]
    assert [float(x) for x in difference.split()[1:3]] == pytest.approx([0.09, 60.0])
