"""`python -m bench`: run the scenarios, print the table, write the JSON results.

python -m bench                      everything (about ten minutes on 2 cores)
BENCH_QUICK=1 python -m bench        the smoke run: a few seconds, small C
python -m bench --only replicas      some scenarios (comma-separated names)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench import concurrency, replicas, report, throughput
from bench.bots import BASELINE_APP, BOT_APP, FLOOR_APP, BotProcess, free_port
from bench.context import Context, Settings
from bench.measure import machine
from bench.profile import Profiler
from bench.rig import Rig
from tests.redis_server import RedisServer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = (
    "concurrency",
    "baseline",
    "throughput",
    "floor",
    "processes",
    "memory",
    "replicas",
    "history_growth",
)
PROCESSES = 2  # the "processes" scenario: one machine's two cores, PROCESSES=2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="the smoke run: a few seconds, small C (also BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS)
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the bot with py-spy during each step (pip install py-spy); adds CPU shares to the JSON",
    )
    parser.add_argument("--out", type=Path, help="JSON results file (default: bench/results/<time>.json)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := set(chosen) - set(SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    settings = Settings.smoke() if args.quick else Settings.full()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / f"bench-{stamp}{'-smoke' if args.quick else ''}.json"

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    redis_server = RedisServer(workdir / "redis", appendonly=False)
    started = time.monotonic()
    failed: list[str] = []
    results: dict[str, Any] = {
        "started_at": stamp,
        "quick": settings.quick,
        "machine": machine(),
        "settings": settings.as_dict(),
        "scenarios": {},
    }
    try:
        redis_server.start()
        profile_dir = None
        if args.profile:
            if not Profiler.available():
                parser.error("--profile needs py-spy: pip install py-spy")
            profile_dir = out.parent / (out.stem + "-profiles")
            profile_dir.mkdir(parents=True, exist_ok=True)
        ctx = Context(settings, redis_server.url, workdir, profile_dir)
        if settings.quick:
            ctx.quiet_budget = 0.0  # smoke figures are not for quoting: never wait for a quiet machine
        for name in chosen:
            print(f"== {name}", file=sys.stderr, flush=True)
            scenario_started = time.monotonic()
            try:
                results["scenarios"][name] = _run(name, ctx, results["scenarios"])
            except Exception as error:  # one broken scenario must not lose the others' figures
                traceback.print_exc()
                results["scenarios"][name] = {"error": f"{type(error).__name__}: {error}"}
                failed.append(name)
            print(f"   {time.monotonic() - scenario_started:.0f} s", file=sys.stderr, flush=True)
    finally:
        redis_server.stop()
        results["duration_seconds"] = time.monotonic() - started
        results["targets"] = report.targets(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        keep_logs = out.parent / (out.stem + "-logs")
        shutil.copytree(workdir, keep_logs, ignore=shutil.ignore_patterns("redis"), dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    print(report.render(results))
    print(f"\nresults: {out} (bot logs in {keep_logs}); {results['duration_seconds']:.0f} s in all")
    if failed:
        print(f"error: scenario(s) failed: {', '.join(failed)} (see above)", file=sys.stderr)
        return 1
    return 0


def _run(name: str, ctx: Context, done: dict[str, Any]) -> Any:
    settings = ctx.settings
    if name == "concurrency":
        return asyncio.run(_ours(ctx))
    if name == "baseline":
        return asyncio.run(_baseline(ctx))
    if name == "throughput":
        return asyncio.run(_throughput(ctx, BOT_APP))
    if name == "floor":
        return asyncio.run(_floor(ctx))
    if name == "processes":
        return asyncio.run(_processes(ctx))
    if name == "memory":
        return _memory(done.get("concurrency") or [], settings)
    if name == "replicas":
        return asyncio.run(replicas.replicas(ctx))
    return _history_growth()


async def _ours(ctx: Context) -> list[dict[str, Any]]:
    runs = [await concurrency.sweep(ctx, name="bot", mode=mode) for mode in ctx.settings.sweep_modes]
    if ctx.settings.tiers:
        # Slack's tiers, questions spread over as many DM channels: how delivery uses the budget.
        runs.append(await concurrency.sweep(ctx, name="bot", mode="http", tiers=True, dm=True))
    return runs


async def _processes(ctx: Context) -> list[dict[str, Any]]:
    """Not one of the issue's scenarios: the sweep against PROCESSES=2 (a supervisor and two
    bot processes on one port, or two Socket Mode connections), to set beside one process's."""
    name = f"bot, PROCESSES={PROCESSES}"
    modes = ctx.settings.sweep_modes
    return [await concurrency.sweep(ctx, name=name, mode=mode, processes=PROCESSES) for mode in modes]


async def _baseline(ctx: Context) -> list[dict[str, Any]]:
    settings = ctx.settings
    return [
        await concurrency.sweep(
            ctx,
            name="baseline",
            mode=mode,
            app=BASELINE_APP,
            sweep=settings.baseline_sweep,
            cap=settings.baseline_cap,
        )
        for mode in settings.sweep_modes
    ]


async def _floor(ctx: Context) -> dict[str, Any]:
    """The floor (bench/floor/app.py: network calls only, nothing stored) through the concurrency
    sweep, limits off, in each mode, and the throughput search: what the harness and the machine
    allow any bot."""
    modes = ctx.settings.sweep_modes
    runs = [await concurrency.sweep(ctx, name="floor", mode=mode, app=FLOOR_APP) for mode in modes]
    return {"concurrency": runs, "throughput": await _throughput(ctx, FLOOR_APP, name="floor-throughput")}


async def _throughput(ctx: Context, app: Path, name: str = "throughput") -> dict[str, Any]:
    rig = Rig(ctx.settings.throughput_model)
    await rig.start()
    await ctx.flush_redis()
    port = free_port()
    bot = BotProcess(name, app, rig.bot_env(ctx.redis_url, port, "http"), port, ctx.workdir)
    try:
        await bot.start()
        return await throughput.search(ctx, rig, bot)
    finally:
        await bot.stop()
        await rig.stop()


def _memory(runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Scenario 4 is read off the HTTP sweep: RSS when idle, and the peak at the largest C."""
    run = next((r for r in runs if r["mode"] == "http" and not r["tiers"] and r.get("steps")), None)
    if run is None:
        return {"skipped": "needs the concurrency scenario (HTTP mode)"}
    top = [s for s in run["steps"] if "bot_peak_rss_mb" in s][-1]
    return {"idle_rss_mb": run["idle_rss_mb"], "at_c": top["c"], "peak_rss_mb": top["bot_peak_rss_mb"]}


def _history_growth() -> dict[str, Any]:
    """Scenario 3: bench/history_growth.py's rows (it runs the bot in this process)."""
    from bench import history_growth

    rows = history_growth.run()
    return {"rows": [dataclasses.asdict(row) for row in rows]}
