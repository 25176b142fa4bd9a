"""Benchmarks (issue 6): the real bot as a process, driven by the Slack and OpenAI emulators.

`python -m bench` (or `make bench`) runs every scenario and prints a table; `BENCH_QUICK=1` runs a
few-second smoke version. See docs/performance.md for what each number means and the latest figures.
"""
