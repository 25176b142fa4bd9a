"""`python -m bench.compare`: is one tree of the bot faster than another on this machine?

Runs the concurrency sweep (`python -m bench --only concurrency`) in two checkouts, A and B, in the
order A B B A, A B B A, … and prints, for every mode at the sweep's largest C, each run's figures
and the two trees' averages. Machines of this kind drift: the same code's done/ideal at C = 500
moved by 0.1 × within minutes on 4 Dec 2026, and the later of two runs tends to be the slower.
In pairs that always start with A, that drift is charged to B; in the order A B B A it falls on
both alike, and a difference smaller than the spread of one tree's own runs is noise.

python -m bench.compare ../before . --runs 8

Each tree runs with its own code (its `bench/` as well as its `bot/`) and, unless `--python-a` or
`--python-b` names another, this interpreter, so both must work with this virtual environment. To
compare interpreters, give one tree twice with two (each needs the project installed):
python -m bench.compare . . --python-b /tmp/venv3.13/bin/python
A sweep takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

FIGURES = ("done/ideal p99", "signal p99 ms", "ack p99 ms", "bot CPU ms/turn")


@dataclass(frozen=True)
class Step:
    """A mode's figures at the sweep's largest C in one run."""

    tree: str
    run: int
    mode: str
    figures: dict[str, float]


def abba(runs: int) -> list[int]:
    """Which tree (0 for A, 1 for B) each run uses: A B B A, A B B A, …"""
    return [(0, 1, 1, 0)[i % 4] for i in range(runs)]


def steps_of(results: dict, tree: str, run: int) -> list[Step]:
    """Each mode's largest step in one `python -m bench` result."""
    found = []
    for sweep in results["scenarios"].get("concurrency", []):
        step = max(sweep["steps"], key=lambda s: s["c"])
        if "done_over_ideal" not in step:
            continue  # a step that did not run
        figures = {
            "done/ideal p99": step["done_over_ideal"]["p99"],
            "signal p99 ms": step["signal"]["p99"] * 1000,
            "ack p99 ms": step["ack"]["p99"] * 1000,
            "bot CPU ms/turn": step["bot_cpu_ms_per_turn"],
        }
        mode = sweep["mode"] + (", tiers" if sweep.get("tiers") else "")
        found.append(Step(tree, run, f"{sweep['name']} ({mode}) C={step['c']}", figures))
    return found


def sweep(tree: Path, python: str, bench_args: list[str], out: Path) -> dict:
    command = [python, "-m", "bench", "--only", "concurrency", "--out", str(out), *bench_args]
    finished = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"the sweep failed in {tree}:\n{finished.stderr[-2000:]}")
    return json.loads(out.read_text())


def report(steps: list[Step], names: tuple[str, str]) -> str:
    lines = []
    for mode in dict.fromkeys(step.mode for step in steps):
        of_mode = [step for step in steps if step.mode == mode]
        lines.append(f"{mode}")
        lines.append("  run  tree  " + "  ".join(f"{name:>16}" for name in FIGURES))
        for step in of_mode:
            row = "  ".join(f"{step.figures[name]:16.3f}" for name in FIGURES)
            lines.append(f"  {step.run:>3}  {step.tree:>4}  {row}")
        averages = {
            tree: {name: mean(s.figures[name] for s in of_mode if s.tree == tree) for name in FIGURES}
            for tree in names
        }
        for tree in names:
            row = "  ".join(f"{averages[tree][name]:16.3f}" for name in FIGURES)
            lines.append(f"  avg  {tree:>4}  {row}")
        row = "  ".join(f"{averages[names[1]][name] - averages[names[0]][name]:+16.3f}" for name in FIGURES)
        lines.append(f"  B-A        {row}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="checkout A (the reference)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    parser.add_argument("--runs", type=int, default=8, help="sweeps in all, A B B A …; a multiple of 4")
    parser.add_argument("--python-a", default=sys.executable, help="A's interpreter (default: this one)")
    parser.add_argument("--python-b", default=sys.executable, help="B's interpreter (default: this one)")
    args, bench_args = parser.parse_known_args(argv)
    trees = (args.a.resolve(), args.b.resolve())
    pythons = (args.python_a, args.python_b)
    names = ("A", "B")
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        for run, which in enumerate(abba(args.runs), start=1):
            print(
                f"run {run}/{args.runs}: {names[which]} ({trees[which]}, {pythons[which]})",
                file=sys.stderr,
                flush=True,
            )
            results = sweep(trees[which], pythons[which], bench_args, Path(scratch) / f"run{run}.json")
            steps += steps_of(results, names[which], run)
    print(f"A: {trees[0]} ({pythons[0]})\nB: {trees[1]} ({pythons[1]})")
    print(report(steps, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
