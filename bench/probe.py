"""`python -m bench.probe`: one quick load step against one bot, for working on the bot's CPU cost.

Offers questions at a fixed rate (open loop, each in its own thread) for a few seconds and prints
the bot's CPU per turn, Redis commands per turn and the done percentiles. With `--profile` it
samples the bot with py-spy and prints where the CPU went. Not a benchmark of record: `make bench`
is; this is the short loop for trying a change.

python -m bench.probe --model stream --rate 40 --seconds 10
python -m bench.probe --model instant --rate 100 --profile
python -m bench.probe --model stream --burst 500
python -m bench.probe --model stream --burst 500 --app floor --mode socket
python -m bench.probe --model stream --burst 500 --warm 200 --env SLACK_RATE_LIMIT_SCALE=100
python -m bench.probe --model stream --burst 500 --tiers --dm --people 500
python -m bench.probe --model stream --burst 50 --tiers --channels 1  # 50 threads in one channel

`--tiers` enforces Slack's published tiers; with `--dm` the questions are DMs, as in the sweep's tiers
step, else mentions in channels (each in its own, or in `--channels N`);
`--people N` has N different people ask, each new to the bot (by default, as in the sweep: four
people in channels, a person of its own for each DM).
`--app floor` probes bench/floor/app.py (network calls only, nothing stored) instead of the bot: what
the harness and this machine allow any bot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

from bench import concurrency, throughput
from bench.bots import BOT_APP, FLOOR_APP, BotProcess, free_port
from bench.context import Context, Settings
from bench.rig import ModelShape, Rig, enable_slack_tiers
from tests.redis_server import RedisServer

APPS = {"bot": BOT_APP, "floor": FLOOR_APP}
MODELS = {
    "instant": ModelShape(0.0, 0.0, answer_chars=200, chunk_chars=50),
    # The concurrency sweep's model: 25 chunks over 2 s after 0.5 s.
    "stream": ModelShape(first_token_seconds=0.5, stream_seconds=2.0, answer_chars=400, chunk_chars=16),
}


async def probe(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    redis_server = RedisServer(workdir / "redis", appendonly=False)
    redis_server.start()
    profile_dir = workdir if args.profile else None
    ctx = Context(Settings.full(), redis_server.url, workdir, profile_dir, quiet_budget=10.0)
    rig = Rig(MODELS[args.model])
    await rig.start()
    try:
        port = free_port()
        env = rig.bot_env(ctx.redis_url, port, args.mode) | dict(
            setting.split("=", 1) for setting in args.env
        )
        bot = BotProcess(f"probe-{args.app}", APPS[args.app], env, port, workdir)
        await bot.start(ready="health")
        try:
            if args.mode == "socket":
                await rig.slack.wait_for_socket(timeout=30)
            await _every_process_started(bot, rig, args.mode, env.get("PROCESSES", "1"))
            route = bot.events_url if args.mode == "http" else None
            await asyncio.sleep(0.5)
            idle_rss = bot.sample().rss_bytes / 2**20
            timeout = rig.model.ideal + ctx.settings.step_timeout
            if args.tiers:
                enable_slack_tiers(rig.slack)
            if args.warm:
                # As in the sweep, where C = 500 follows smaller bursts: scripts loaded, connections open.
                warm = concurrency.Burst(rig, args.warm, route, args.dm, timeout)
                warm.prepare()
                await warm.run()
                await asyncio.sleep(1.0)
            commands_before = await _command_counts(ctx.redis_url)
            calls_before, limited_before = len(rig.slack.calls), len(rig.slack.rate_limited)
            people = rig.people(args.people) if args.people else None
            load = (
                concurrency.Burst(rig, args.burst, route, args.dm, timeout, people, args.channels or None)
                if args.burst
                else throughput.Offer(rig, route, args.rate, args.seconds)
            )
            result = await ctx.measured(
                "probe",
                [bot],
                lambda: sum(a.done_at is not None for a in rig.tracker.asked.values()),
                load.run(),
                prepare=load.prepare,
            )
            result["idle_rss_mb"] = idle_rss
            result["slack_calls"] = dict(Counter(c.method for c in rig.slack.calls[calls_before:]))
            result["slack_429s"] = len(rig.slack.rate_limited) - limited_before
            after = await _command_counts(ctx.redis_url)
            turns = max(1, result["answered"])
            result["redis_commands"] = {
                name: round((count - commands_before.get(name, 0)) / turns, 2)
                for name, count in sorted(after.items(), key=lambda kv: -kv[1])
                if count > commands_before.get(name, 0)
            }
        finally:
            await bot.stop()
    finally:
        await rig.stop()
        redis_server.stop()
    return result


async def _command_counts(url: str) -> dict[str, int]:
    """Redis's calls per command so far (commands inside scripts included)."""
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _ms(points: dict) -> str:
    return "/".join(f"{(points[p] or 0) * 1000:.0f}" for p in ("p50", "p99"))


async def _every_process_started(bot: BotProcess, rig: Rig, mode: str, processes: str) -> None:
    """With PROCESSES > 1, wait until each of the supervisor's processes is serving."""
    count = int(processes) if processes.isdigit() else 1
    if count > 1:
        await concurrency.every_process_started(bot, rig, mode, count)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=sorted(APPS), default="bot", help="the bot, or the floor")
    parser.add_argument("--mode", choices=("http", "socket"), default="http")
    parser.add_argument("--model", choices=sorted(MODELS), default="instant")
    parser.add_argument("--rate", type=float, default=50.0, help="questions offered per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=0, help="instead: this many questions at once")
    parser.add_argument("--warm", type=int, default=0, help="first, unmeasured: a burst of this many")
    parser.add_argument("--tiers", action="store_true", help="Slack's published tiers enforced")
    parser.add_argument("--dm", action="store_true", help="questions in DMs, not mentions in channels")
    parser.add_argument("--people", type=int, default=0, help="this many people ask")
    parser.add_argument("--channels", type=int, default=0, help="mentions in this many channels")
    parser.add_argument("--profile", action="store_true", help="sample the bot with py-spy")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="a setting of the bot's (repeatable)"
    )
    args = parser.parse_args()
    result = asyncio.run(probe(args))
    if args.json:
        json.dump(result, sys.stdout, indent=1, default=str)
        print()
        return 0
    done = result["done"]
    print(
        f"app={args.app} mode={args.mode} model={args.model} "
        + (f"burst={args.burst} " if args.burst else f"offered={args.rate:g}/s for {args.seconds:g}s ")
        + f"answered={result['answered']}/{result['questions']} "
        f"achieved={result.get('achieved_turns_per_second') or 0:.1f}/s"
    )
    share = result["cpu_share"]
    print(
        f"bot CPU {result['bot_cpu_ms_per_turn'] or 0:.2f} ms/turn, "
        f"redis cmds/turn {result['redis_commands_per_turn'] or 0:.1f}; share of a core: "
        f"bot {share['bot']:.0%}, load generator {share['loadgen']:.0%} "
        f"(loop lag p99 {(result['loadgen_loop_lag']['p99'] or 0) * 1000:.0f} ms), "
        f"redis {share['redis']:.0%}, other {share['other']:.0%}"
    )
    if args.burst:
        print(
            f"burst of {args.burst}: ack p50/p99 ms {_ms(result['ack'])}, signal {_ms(result['signal'])}, "
            f"first text {_ms(result['first_text'])}, "
            f"done/ideal p99 {(result.get('done_over_ideal') or {}).get('p99') or 0:.2f}, "
            f"streamed/whole {result['streamed']}/{result['whole']}"
        )
    print(
        f"done p50/p95/p99 ms {done['p50'] * 1000:.0f}/{done['p95'] * 1000:.0f}/{done['p99'] * 1000:.0f}; "
        f"RSS idle {result['idle_rss_mb']:.0f} MB, peak {result['bot_peak_rss_mb']:.0f} MB"
    )
    calls = ", ".join(f"{method} {n}" for method, n in sorted(result["slack_calls"].items()))
    print(f"Slack calls: {calls}; 429s: {result['slack_429s']}")
    print("redis commands per turn:", ", ".join(f"{k} {v:g}" for k, v in result["redis_commands"].items()))
    if profile := result.get("profile"):
        print(json.dumps(profile, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
