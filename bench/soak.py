"""`python -m bench.soak`: one process under a steady load for many minutes. Does it stay the same?

A production bot runs for weeks. This offers questions at a fixed rate (open loop) for
`--minutes`, measured in windows of `--window` seconds, and prints after each window the bot's
RSS, its CPU per turn, done p50/p99 and what Redis holds. A leak shows as RSS that keeps
growing after the first windows; a cost that grows with what the process has seen, as CPU a
turn or done that keeps rising.

Questions come from four people in `--channels` channels, taken in turn, so that no channel gets
a second question within Slack's second for `chat.postMessage`; a share (`--follow-ups`) are
follow-ups in the last thread of their channel, so threads grow as they do in a team. Between
windows the emulators forget what they measured but those threads, so the load generator stays the
same size however long the soak. Redis grows by the conversations, kept `CONVERSATION_TTL_DAYS`
(`--env` sets it, or any setting of the bot's), and by each message's dedup key and journal, kept
a day. Not part of `make bench` (it takes minutes by design): `make soak`, or

python -m bench.soak --rate 150 --minutes 10
python -m bench.soak --rate 100 --minutes 3 --mode socket --model stream
python -m bench.soak --then-burst 500   # then the sweep's burst, on a process whose memories are full
python -m bench.soak --minutes 40 --diagnose --profile-windows 2,39   # what grows, and where time goes
python -m bench.soak --minutes 1440 --window 300 --env CONVERSATION_TTL_DAYS=0.01   # a day
python -m bench.soak --rate 100 --minutes 4 --window 60 --restart-at 1.25 --down 10   # all down

A question not answered within its window (one whose events a killed process was reading is
left to Slack's retry a minute later) is looked for again after the last window, for up to 75 s,
and counted once more if its thread holds its answer twice.

`--restart-at MINUTES` stops the whole bot, every process at once, with turns in flight (SIGKILL:
a host lost; `--restart-signal term`: a deploy, the bot's own shutdown), keeps it down `--down`
seconds while questions keep coming, and starts it again: what was in flight, and what Slack
could not deliver meanwhile, must each be answered once. `--retry-waits` shortens Slack's
retries (0, 60 and 300 s) for a quick check (tests/test_bench_smoke.py); with them shorter than
the bot is down, Slack gives up on an event and its question is never answered, as it would be.

`--diagnose` runs the bot through `bench/memwatch.py` and adds to every window what its memory is
made of (live Python objects, the allocators' free bytes, objects by type; `--trace-memory` adds
tracemalloc's source lines, at a cost in CPU). `--profile-windows` samples the bot and the load
generator itself (its emulators included) with py-spy in the windows named.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import concurrency, throughput
from bench.bots import BOT_APP, ROOT, BotProcess, free_port
from bench.context import Context, Settings
from bench.measure import children, machine, proc_sample
from bench.profile import Profiler
from bench.rig import Asked, ModelShape, Question, Rig
from tests.emulators.slack import SLACK_RETRY_WAITS, SlackEmulator
from tests.redis_server import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
USERS = ("U1", "U2", "U3", "U4")
MODELS = {
    "instant": ModelShape(0.0, 0.0, answer_chars=200, chunk_chars=50),
    # Streams for half a second: some answers stream, most arrive whole (Slack's budget).
    "stream": ModelShape(first_token_seconds=0.2, stream_seconds=0.5, answer_chars=400, chunk_chars=40),
}


@dataclass
class Threads:
    """Where the next question goes: channels in turn; a follow-up in a channel's last thread."""

    channels: int
    follow_ups: float
    last_thread: dict[str, str] = field(default_factory=dict)
    asked: int = 0
    followed: int = 0
    random: random.Random = field(default_factory=lambda: random.Random(6))
    # Questions not answered within their window: their threads are kept, to be looked at again
    # at the end (one left to Slack's retry a minute later is answered after its window).
    late: list[Asked] = field(default_factory=list)
    # With --restart-at or --kill-one-at, every question: their threads are kept, to count each
    # one's answers at the end (a second answer could come a window later, from an event Slack
    # sent again).
    watched: list[Asked] = field(default_factory=list)

    def kept(self) -> list[tuple[str, str]]:
        """The threads the emulators must not forget: where follow-ups go, late questions' and
        watched ones'."""
        kept = [(asked.channel, asked.thread or asked.ts) for asked in (*self.late, *self.watched)]
        return [*self.last_thread.items(), *kept]

    def prepare(self, rig: Rig, route: str | None) -> Question:
        channel = f"CS{self.asked % self.channels:05d}"
        user = USERS[self.asked % len(USERS)]
        self.asked += 1
        thread = self.last_thread.get(channel)
        if thread is None or self.random.random() >= self.follow_ups:
            thread = None
        else:
            self.followed += 1
        question = rig.prepare(channel, thread_ts=thread, router=lambda: [route], user=user)
        self.last_thread[channel] = question.asked.thread or question.asked.ts
        return question


class Window(throughput.Offer):
    """One window of the open-loop offer (question i sent at start + i/rate), its questions placed
    by `Threads`."""

    def __init__(self, rig: Rig, threads: Threads, route: str | None, rate: float, seconds: float) -> None:
        super().__init__(rig, route, rate, seconds)
        self.threads = threads

    def prepare(self) -> None:
        # The emulators forget the windows measured, but the threads follow-ups may go to: the load
        # generator's memory then stays flat, however long the soak.
        self.rig.forget(self.threads.kept())
        count = max(1, int(self.rate * self.seconds))
        self.questions = [self.threads.prepare(self.rig, self.route) for _ in range(count)]


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    redis_server = RedisServer(workdir / "redis", appendonly=False)
    redis_server.start()
    ctx = Context(Settings.full(), redis_server.url, workdir, quiet_budget=10.0)
    rig = Rig(MODELS[args.model])
    await rig.start()
    redis = aioredis.Redis.from_url(redis_server.url)
    windows: list[dict[str, Any]] = []
    try:
        port = free_port()
        env = rig.bot_env(ctx.redis_url, port, args.mode) | args.env
        app = BOT_APP
        if args.diagnose:
            app = MEMWATCH_APP
            env |= {"PYTHONTRACEMALLOC": "1"} if args.trace_memory else {}
        bot = BotProcess("soak", app, env, port, workdir)
        # As Slack does: a delivery that was not acknowledged is sent again (at once, 1 min, 5 min).
        rig.slack.retry_failed_deliveries(args.retry_waits)
        await bot.start(ready="health")
        killing: asyncio.Task[dict[str, Any]] | None = None
        restarting: asyncio.Task[None] | None = None
        restart = Restart()
        try:
            if args.mode == "socket":
                await rig.slack.wait_for_socket(timeout=30)
            if args.processes > 1:
                await concurrency.every_process_started(bot, rig, args.mode, args.processes)
            if args.kill_one_at is not None:
                killing = asyncio.create_task(_kill_one_process(bot, args.kill_one_at * 60))
            if args.restart_at is not None:
                restarting = asyncio.create_task(_restart_everything(bot, rig, args, restart))
            route = bot.events_url if args.mode == "http" else None
            await asyncio.sleep(1.0)
            idle_rss = bot.sample().rss_bytes / 2**20
            print(_header(args, idle_rss), flush=True)
            threads = Threads(args.channels, args.follow_ups)
            turn_lines = TurnLines(bot.log_path, args.processes)
            turns = 0
            count = max(1, round(args.minutes * 60 / args.window))
            for index in range(count):
                window = Window(rig, threads, route, args.rate, args.window)
                commands_before = await _command_counts(redis)
                profilers: dict[str, Profiler] = {}
                if index + 1 in args.profile_windows:
                    for name, pid in (("bot", bot.pid), ("loadgen", os.getpid())):
                        profilers[name] = Profiler(pid, workdir / f"window-{index + 1}-{name}.txt", rate=100)
                        await profilers[name].start()
                window_started = time.monotonic()
                result = await ctx.measured(
                    f"soak-{index}",
                    [bot],
                    lambda: sum(a.done_at is not None for a in rig.tracker.asked.values()),
                    window.run(),
                    prepare=window.prepare,
                )
                profiles = {name: await profiler.stop() for name, profiler in profilers.items()}
                threads.late += [asked for asked in rig.tracker.asked.values() if asked.done_at is None]
                if args.restart_at is not None or args.kill_one_at is not None:
                    threads.watched += rig.tracker.asked.values()
                window_ended = time.monotonic()
                # The bot's CPU is read at a window's start and end: across a restart, of two processes.
                restarted_here = restart.overlaps(window_started, window_ended)
                if restarted_here:
                    result["bot_cpu_ms_per_turn"] = None
                turns += result["answered"]
                commands = _per_turn(commands_before, await _command_counts(redis), result["answered"])
                memory = await redis.info("memory")
                row = {
                    "window": index + 1,
                    "turns_so_far": turns,
                    "questions": result["questions"],
                    "answered": result["answered"],
                    "timed_out": result["timed_out"],
                    "done_p50_ms": _ms(result["done"]["p50"]),
                    "done_p99_ms": _ms(result["done"]["p99"]),
                    "done_max_ms": _ms(result["done_max"]),
                    "deliveries_failed": result["deliveries_failed"],
                    "turns_by_process": turn_lines.count_new() if args.processes > 1 else None,
                    "bot_cpu_ms_per_turn": result["bot_cpu_ms_per_turn"],
                    "redis_commands_per_turn": result["redis_commands_per_turn"],
                    "bot_rss_mb": bot.sample().rss_bytes / 2**20,
                    "bot_peak_rss_mb": result["bot_peak_rss_mb"],
                    "redis_used_mb": int(memory["used_memory"]) / 2**20,
                    "redis_keys": await redis.dbsize(),
                    "loadgen_busy": result["loadgen_busy"],
                    "cpu_share": result["cpu_share"],
                    "loadgen_loop_lag_p99_ms": _ms(result["loadgen_loop_lag"]["p99"]),
                    # Flat: the emulators forget each window once measured (Window.prepare).
                    "loadgen_rss_mb": proc_sample(os.getpid()).rss_bytes / 2**20,
                    "loadgen_collect_seconds": result["loadgen_collect_seconds"],
                    "machine_shared": result["machine_shared"],
                    "slack_429s": sum(rig.tracker.rate_limited.values()),
                    "answers_per_message": result["answers_per_message"],
                    "restarted": restarted_here,
                    "redis_commands": commands,
                    "rate_budget": await _rate_budget(redis, rig.slack.team_id),
                }
                if args.diagnose:
                    row["memory"] = await _memory_report(bot)
                if profiles:
                    row["profiles"] = profiles
                windows.append(row)
                print(_row(row), flush=True)
                if args.diagnose:
                    print(_memory_line(row["memory"]), flush=True)
                for name, profile in profiles.items():
                    print(_profile_line(name, profile), flush=True)
            late = await follow_late(rig.slack, threads.late)
            answer_counts = _answer_counts(rig.slack, threads.watched) if threads.watched else None
            await asyncio.sleep(5.0)
            end_idle_rss = bot.sample().rss_bytes / 2**20
            end_memory = await _memory_report(bot) if args.diagnose else None
            burst = await _burst(ctx, rig, bot, route, args.then_burst) if args.then_burst else None
            if args.diagnose:
                # Last, so that the burst meets the heap as the soak left it.
                await asyncio.sleep(5.0)
                trimmed = (await _memory_report(bot, trim=True)).get("trimmed") or {}
                if end_memory is not None:
                    end_memory["trimmed_after_all"] = trimmed
                if trimmed:
                    print(
                        f"idle at the end: RSS {trimmed['rss_before_mb']:.1f} MB, "
                        f"{trimmed['rss_after_mb']:.1f} MB after malloc_trim (the difference: free pages "
                        "inside glibc's heap)",
                        flush=True,
                    )
        finally:
            for task in (killing, restarting):
                if task is not None and not task.done():
                    task.cancel()
            await bot.stop()
        killed = killing.result() if killing is not None and not killing.cancelled() else None
        if restarting is not None and restarting.done() and not restarting.cancelled():
            restarting.result()  # raises what went wrong
    finally:
        await redis.aclose()
        await rig.stop()
        redis_server.stop()
    return {
        "machine": machine(),
        "settings": vars(args) | {"profile_windows": sorted(args.profile_windows)},
        "idle_rss_mb": idle_rss,
        "end_idle_rss_mb": end_idle_rss,
        "end_memory": end_memory,
        "follow_ups": threads.followed,
        "late": late,
        "answers_per_question": answer_counts,
        "windows": windows,
        "summary": summarize_soak(windows),
        "burst_after": burst,
        "killed": killed,
        "restarted": restart.report or None,
    }


class TurnLines:
    """Which process finished each turn, read off the bot's log: with `PROCESSES` > 1 every line
    names its process (`process=2/4`), and every finished turn logs `turn team=...`."""

    LINE = re.compile(rb" process=(\d+)/\d+ \S+: turn team=")

    def __init__(self, log_path: Path, processes: int) -> None:
        self.log_path = log_path
        self.processes = processes
        self.offset = log_path.stat().st_size if log_path.exists() else 0

    def count_new(self) -> list[int]:
        """Turns finished by each process (process 1 first) since the last call."""
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            text = log.read()
        complete = text.rfind(b"\n") + 1  # a line being written is counted next time
        self.offset += complete
        counts = [0] * self.processes
        for match in self.LINE.finditer(text[:complete]):
            counts[int(match.group(1)) - 1] += 1
        return counts


# Slack sends an unacknowledged event again at once, a minute later and five minutes later.
LATE_WAIT_SECONDS = 75.0


async def follow_late(
    slack: SlackEmulator, late: list[Asked], within: float = LATE_WAIT_SECONDS
) -> dict[str, Any]:
    """Whether the questions not answered within their window were answered later: their final
    answer's end marker in their thread, looked for until `within` seconds after the last window
    (enough for Slack's retry a minute later, not the one five minutes later)."""
    if not late:
        return {"unanswered_in_window": 0, "answered_later": 0, "never": 0, "qids": []}
    waiting = {asked.qid: asked for asked in late}
    deadline = asyncio.get_running_loop().time() + within
    print(f"{len(late)} questions unanswered within their window; waiting up to {within:g} s", flush=True)
    while waiting and asyncio.get_running_loop().time() < deadline:
        for qid, asked in list(waiting.items()):
            if _answers_in_thread(slack, asked):
                del waiting[qid]
        await asyncio.sleep(0.5)
    answered = len(late) - len(waiting)
    twice = sorted(asked.qid for asked in late if len(_answers_in_thread(slack, asked)) > 1)
    # Slack's ts is wall-clock time; the question's sending, monotonic.
    wall_offset = time.time() - time.monotonic()
    delays = sorted(
        float(answers[0]["ts"]) - (asked.sent_at + wall_offset)
        for asked in late
        if (answers := _answers_in_thread(slack, asked))
    )
    line = f"  {answered} answered later, {len(waiting)} not within {within:g} s"
    line += f", {len(twice)} answered more than once" if twice else ""
    if delays:
        line += f"; answered {delays[len(delays) // 2]:.1f} s (p50) to {delays[-1]:.1f} s after asked"
    print(line, flush=True)
    return {
        "unanswered_in_window": len(late),
        "answered_later": answered,
        "never": len(waiting),
        "qids": sorted(waiting),
        "answered_twice": len(twice),
        "twice_qids": twice,
        "answered_after_seconds_p50": delays[len(delays) // 2] if delays else None,
        "answered_after_seconds_max": delays[-1] if delays else None,
    }


def _answer_counts(slack: SlackEmulator, watched: list[Asked]) -> dict[int, int]:
    """How many questions have 0, 1, 2 … answers in their thread, at the end of the soak."""
    counts = dict(sorted(Counter(len(_answers_in_thread(slack, asked)) for asked in watched).items()))
    print(
        f"answers a question, all {len(watched):,} of the soak's: "
        + ", ".join(f"{answers}: {questions:,}" for answers, questions in counts.items()),
        flush=True,
    )
    return counts


def _answers_in_thread(slack: SlackEmulator, asked: Asked) -> list[dict[str, Any]]:
    """The bot's messages in the question's thread that end its answer (its end marker)."""
    thread = slack.thread(asked.channel, asked.thread or asked.ts)
    return [message for message in thread if f"END{asked.qid}" in json.dumps(message)]


async def _kill_one_process(bot: BotProcess, after_seconds: float) -> dict[str, Any]:
    """SIGKILL the busiest of the supervisor's bot processes (`PROCESSES` > 1) `after_seconds` in,
    so that it dies with turns in flight (the kernel spreads connections, not events: with kept
    connections one process can have none for a while); the supervisor starts it again, and the
    others take its threads over once its liveness lapses."""
    await asyncio.sleep(after_seconds - 1.0)
    before = {pid: proc_sample(pid).cpu_seconds for pid in children(bot.pid)}
    await asyncio.sleep(1.0)
    busy = {pid: proc_sample(pid).cpu_seconds - cpu for pid, cpu in before.items()}
    victim = max(busy, key=lambda pid: busy[pid])
    os.kill(victim, signal.SIGKILL)
    print(
        f"killed bot process pid {victim} (SIGKILL) {after_seconds / 60:g} min in, "
        f"the busiest ({busy[victim]:.2f} s of CPU in the last second)",
        flush=True,
    )
    return {"pid": victim, "at_seconds": after_seconds, "cpu_last_second": busy}


@dataclass
class Restart:
    """`--restart-at`: when the bot was stopped and when it served again (monotonic seconds)."""

    stopping_at: float | None = None
    up_at: float | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def overlaps(self, start: float, end: float) -> bool:
        """Whether the bot was stopped, or not yet serving again, within start..end."""
        if self.stopping_at is None or self.stopping_at >= end:
            return False
        return self.up_at is None or self.up_at > start


async def _restart_everything(bot: BotProcess, rig: Rig, args: argparse.Namespace, restart: Restart) -> None:
    """`--restart-at` minutes in: stop every process of the bot at once (SIGKILL to its process
    group, or SIGTERM to it for its own shutdown), keep it down `--down` seconds while the load
    generator goes on asking, then start it again and wait until every process serves."""
    await asyncio.sleep(args.restart_at * 60)
    started_lines = bot.log_path.read_text(errors="replace").count("bot started")
    restart.stopping_at = time.monotonic()
    if args.restart_signal == "kill":
        os.killpg(bot.pid, signal.SIGKILL)  # its own session: the supervisor and every child
    exit_code = await bot.stop()  # SIGTERM, unless it is dead already
    stopped = time.monotonic()
    await asyncio.sleep(args.down)
    await bot.start(ready="health")
    if args.mode == "socket":
        await rig.slack.wait_for(lambda: rig.slack.open_sockets == args.processes, 30, what="connections")
    await bot.every_process_started(started_lines + args.processes)
    restart.up_at = time.monotonic()
    print(
        f"bot stopped (SIG{args.restart_signal.upper()}, every process) {args.restart_at:g} min in, "
        f"in {stopped - restart.stopping_at:.1f} s (exit {exit_code}); down {args.down:g} s; serving "
        f"again {restart.up_at - stopped:.1f} s after it stopped",
        flush=True,
    )
    restart.report = {
        "signal": args.restart_signal,
        "at_seconds": args.restart_at * 60,
        "stop_seconds": stopped - restart.stopping_at,
        "exit_code": exit_code,
        "stopped_to_serving_seconds": restart.up_at - stopped,
    }


async def _burst(ctx: Context, rig: Rig, bot: BotProcess, route: str | None, c: int) -> dict[str, Any]:
    """A burst of `c` questions with the concurrency sweep's model, after the soak: the peak RSS
    of a process whose bounded memories are full, against the sweep's fresh one."""
    rig.set_model(ctx.settings.model)
    load = concurrency.Burst(rig, c, route, False, rig.model.ideal + ctx.settings.step_timeout)
    result = await ctx.measured(
        f"burst-{c}",
        [bot],
        lambda: sum(a.done_at is not None for a in rig.tracker.asked.values()),
        load.run(),
        prepare=load.prepare,
    )
    return {
        "c": c,
        "answered": result["answered"],
        "timed_out": result["timed_out"],
        "done_over_ideal_p99": (result.get("done_over_ideal") or {}).get("p99"),
        "bot_peak_rss_mb": result["bot_peak_rss_mb"],
        "bot_cpu_ms_per_turn": result["bot_cpu_ms_per_turn"],
    }


MEMWATCH_APP = ROOT / "bench" / "memwatch.py"


async def _memory_report(bot: BotProcess, within: float = 30.0, trim: bool = False) -> dict[str, Any]:
    """Ask the bot (run by bench/memwatch.py) what its memory is made of, and wait for the answer;
    `trim`: then also hand glibc's free heap pages back, and say how much RSS that was."""
    path = bot.workdir / "memwatch.json"
    before = path.stat().st_mtime_ns if path.exists() else 0
    if trim:
        (bot.workdir / "memwatch.trim").touch()
    os.kill(bot.pid, signal.SIGUSR2)
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        if path.exists() and path.stat().st_mtime_ns != before:
            return json.loads(path.read_text())
    return {"error": f"no report within {within:g} s"}


def _memory_line(memory: dict[str, Any]) -> str:
    if "error" in memory:
        return f"{'':>6} memory: {memory['error']}"
    py, libc = memory["pymalloc"], memory["glibc"]
    types = ", ".join(f"{name} {count:,}" for name, count in list(memory["gc_types"]["by_type"].items())[:4])
    traced = memory.get("tracemalloc") or {}
    trims = memory.get("bot_trims") or {}
    return (
        f"{'':>6} memory: pymalloc live {py.get('live_bytes', 0):.1f} free {py.get('free_bytes', 0):.1f} "
        f"arenas {py.get('arenas', 0)}; malloc in use {libc.get('in_use_mb', 0):.1f} "
        f"free {libc.get('free_mb', 0):.1f} "
        f"mmap {libc.get('mmap_mb', 0):.1f} MB; gc objects {memory['gc_types']['objects']:,} ({types})"
        + (f"; traced {traced['traced_mb']:.1f} MB" if traced else "")
        + (
            f"; the bot's {trims['trims']} trims {trims['seconds'] * 1000:.0f} ms "
            f"(longest {trims['longest_seconds'] * 1000:.1f})"
            if trims.get("trims")
            else ""
        )
        + f"; report {memory['report_seconds']:.2f} s"
    )


def _profile_line(name: str, profile: dict[str, Any]) -> str:
    top = "; ".join(f"{p['function']} {p['share']:.0%}" for p in profile.get("top_own", [])[:6])
    return f"{'':>6} py-spy {name} ({profile.get('samples', 0)} samples): {top}"


# The workspace's buckets of Slack methods whose slots are held for a later call (bot/rate_limit.py).
HELD_METHODS = ("chat.stopStream", "chat.update", "reactions.remove", "chat.startStream")
WINDOW_MS = 66_000  # their window: a minute, with the bot's safety margin of 10 %


async def _rate_budget(redis: aioredis.Redis, team: str) -> dict[str, dict[str, float]]:
    """Per method of the workspace's shared Slack budget: slots taken in the window, the seconds
    between the first and the last of them (how spread over the window the budget is spent), and
    slots held for later calls. Held slots that only grow are holds never used nor given back
    (each expires after 10 minutes), and they shrink what the window has left."""
    seconds, micros = await redis.time()
    window_start = seconds * 1000 + micros // 1000 - WINDOW_MS  # older ones are not trimmed yet
    pipe = redis.pipeline(transaction=False)
    for method in HELD_METHODS:
        pipe.zrangebyscore(f"rate:{{{team}:{method}}}:calls", window_start, "+inf", withscores=True)
        pipe.zcard(f"rate:{{{team}:{method}}}:held")
    replies = await pipe.execute()
    budget = {}
    for i, method in enumerate(HELD_METHODS):
        times = [score for _, score in replies[2 * i]]
        span = (max(times) - min(times)) / 1000 if times else 0.0
        budget[method] = {
            "taken": len(times),
            "taken_span_s": round(span, 2),
            "held": int(replies[2 * i + 1]),
        }
    return budget


async def _command_counts(redis: aioredis.Redis) -> dict[str, int]:
    """Redis's calls per command so far (commands inside scripts included)."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def _per_turn(before: dict[str, int], after: dict[str, int], turns: int) -> dict[str, float]:
    """Each command's calls a turn in a window, the most called first."""
    counts = {name: count - before.get(name, 0) for name, count in after.items()}
    return {
        name: round(count / max(1, turns), 2)
        for name, count in sorted(counts.items(), key=lambda kv: -kv[1])
        if count > 0
    }


def summarize_soak(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """First against last: RSS (and its growth per 10,000 turns over the second half of the
    windows, a least-squares slope: the first minutes fill the process's bounded memories of
    recent events and threads, 10,000 each), CPU a turn and done p99, each the mean of the
    first and of the last three."""
    if not windows:
        return {}
    later = windows[len(windows) // 2 :]
    xs = [w["turns_so_far"] for w in later]
    ys = [w["bot_rss_mb"] for w in later]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    head, tail = windows[:3], windows[-3:]

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) / len(values) if values else None

    return {
        "turns": windows[-1]["turns_so_far"],
        "unanswered": sum(w["questions"] - w["answered"] for w in windows),
        "rss_mb_first_window": windows[0]["bot_rss_mb"],
        "rss_mb_last_window": windows[-1]["bot_rss_mb"],
        "rss_mb_per_10k_turns_second_half": slope * 10_000,
        "cpu_ms_per_turn_first_3": mean(head, "bot_cpu_ms_per_turn"),
        "cpu_ms_per_turn_last_3": mean(tail, "bot_cpu_ms_per_turn"),
        "done_p99_ms_first_3": mean(head, "done_p99_ms"),
        "done_p99_ms_last_3": mean(tail, "done_p99_ms"),
        "redis_mb_per_1k_turns": (windows[-1]["redis_used_mb"] - windows[0]["redis_used_mb"])
        * 1000
        / max(1, windows[-1]["turns_so_far"] - windows[0]["turns_so_far"]),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _header(args: argparse.Namespace, idle_rss: float) -> str:
    return (
        f"soak: mode={args.mode} model={args.model} {args.rate:g} questions/s for {args.minutes:g} min "
        f"in {args.window:g}-s windows, {args.channels} channels, follow-ups {args.follow_ups:.0%}; "
        + "".join(f"{name}={value}; " for name, value in args.env.items())
        + f"RSS idle {idle_rss:.0f} MB\n"
        f"{'window':>6} {'turns':>8} {'answered':>9} {'done p50/p99 ms':>16} {'CPU ms/turn':>11} "
        f"{'redis cmds':>10} {'RSS MB':>7} {'peak':>6} {'redis MB':>8} {'keys':>8} {'held':>5} "
        f"{'loadgen CPU':>11} {'lag p99':>7} {'loadgen MB':>10}"
    )


def _row(row: dict[str, Any]) -> str:
    done = f"{row['done_p50_ms'] or 0:.0f}/{row['done_p99_ms'] or 0:.0f}"
    flags = "".join(
        (
            " timed out" if row["timed_out"] else "",
            " load generator busy" if row["loadgen_busy"] else "",
            f" load generator paused {row['loadgen_collect_seconds']:.1f} s"
            if row["loadgen_collect_seconds"] > 1
            else "",
            " machine shared" if row["machine_shared"] else "",
            f" 429s {row['slack_429s']}" if row["slack_429s"] else "",
            # The slowest, when it stands out: a window with a process killed in it, say.
            f" done max {row['done_max_ms']:.0f} ms" if _stands_out(row) else "",
            f" {row['deliveries_failed']} deliveries failed" if row["deliveries_failed"] else "",
            f" split {_split(row['turns_by_process'])}" if row.get("turns_by_process") is not None else "",
            " bot restarted" if row["restarted"] else "",
            f" {_twice(row)} answered more than once" if _twice(row) else "",
        )
    )
    return (
        f"{row['window']:>6} {row['turns_so_far']:>8,} {row['answered']:>4}/{row['questions']:<4} {done:>16} "
        f"{row['bot_cpu_ms_per_turn'] or 0:>11.2f} {row['redis_commands_per_turn'] or 0:>10.1f} "
        f"{row['bot_rss_mb']:>7.1f} {row['bot_peak_rss_mb']:>6.1f} {row['redis_used_mb']:>8.1f} "
        f"{row['redis_keys']:>8,} {sum(b['held'] for b in row['rate_budget'].values()):>5} "
        f"{row['cpu_share']['loadgen']:>11.0%} {row['loadgen_loop_lag_p99_ms'] or 0:>5.0f}ms "
        f"{row['loadgen_rss_mb']:>10,.0f}{flags}"
    )


def _twice(row: dict[str, Any]) -> int:
    return sum(count for messages, count in row["answers_per_message"].items() if int(messages) > 1)


def _split(by_process: list[int]) -> str:
    return "/".join(f"{count:,}" for count in by_process)


def _stands_out(row: dict[str, Any]) -> bool:
    return (row.get("done_max_ms") or 0) > 2 * (row["done_p99_ms"] or 0)


def _summary_line(result: dict[str, Any]) -> str:
    s = result["summary"]
    return (
        f"{s['turns']:,} turns, {s['unanswered']} unanswered; "
        f"RSS {s['rss_mb_first_window']:.1f} MB after the first window, "
        f"{s['rss_mb_last_window']:.1f} MB after the last "
        f"({s['rss_mb_per_10k_turns_second_half']:+.2f} MB per 10,000 turns over the second half), "
        f"{result['end_idle_rss_mb']:.1f} MB idle at the end ({result['idle_rss_mb']:.1f} at the start); "
        f"CPU {s['cpu_ms_per_turn_first_3']:.2f} → {s['cpu_ms_per_turn_last_3']:.2f} ms a turn, "
        f"done p99 {s['done_p99_ms_first_3']:.0f} → {s['done_p99_ms_last_3']:.0f} ms "
        f"(first three windows → last three); Redis {s['redis_mb_per_1k_turns']:.2f} MB per 1,000 turns"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("http", "socket"), default="http")
    parser.add_argument("--model", choices=sorted(MODELS), default="instant")
    parser.add_argument("--rate", type=float, default=150.0, help="questions offered per second")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0, help="seconds per measured window")
    parser.add_argument("--channels", type=int, default=1000, help="questions go to these in turn")
    parser.add_argument("--follow-ups", type=float, default=0.25, help="share asked in an earlier thread")
    parser.add_argument(
        "--then-burst", type=int, default=0, metavar="C", help="then C questions at once (the sweep's model)"
    )
    parser.add_argument("--diagnose", action="store_true", help="what the bot's memory holds, each window")
    parser.add_argument("--trace-memory", action="store_true", help="--diagnose, and tracemalloc in the bot")
    parser.add_argument(
        "--profile-windows",
        type=lambda text: {int(n) for n in text.split(",") if n},
        default=set(),
        metavar="N,N",
        help="py-spy the bot and the load generator in these windows (from 1)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting of the bot's (repeatable); CONVERSATION_TTL_DAYS=0.01: conversations kept 14 min",
    )
    parser.add_argument(
        "--kill-one-at",
        type=float,
        metavar="MINUTES",
        help="with --env PROCESSES=N (N > 1): SIGKILL one of the bot's processes this far in",
    )
    parser.add_argument(
        "--restart-at",
        type=float,
        metavar="MINUTES",
        help="stop every process of the bot this far in, keep it down --down s, start it again",
    )
    parser.add_argument("--down", type=float, default=10.0, metavar="SECONDS", help="with --restart-at")
    parser.add_argument(
        "--restart-signal",
        choices=("kill", "term"),
        default="kill",
        help="with --restart-at: SIGKILL (a lost host) or SIGTERM (a deploy: the bot's own shutdown)",
    )
    parser.add_argument(
        "--retry-waits",
        type=lambda text: tuple(float(n) for n in text.split(",") if n),
        default=SLACK_RETRY_WAITS,
        metavar="S,S,S",
        help="seconds before each retry of an unacknowledged event (Slack's: 0,60,300)",
    )
    parser.add_argument("--out", type=Path, help="the JSON result (default: bench/results/soak-<time>.json)")
    args = parser.parse_args(argv)
    if malformed := [setting for setting in args.env if "=" not in setting]:
        parser.error(f"--env takes NAME=VALUE, not {malformed[0]!r}")
    args.env = dict(setting.split("=", 1) for setting in args.env)
    args.diagnose = args.diagnose or args.trace_memory
    processes = args.env.get("PROCESSES", "1")
    args.processes = int(processes) if processes.isdigit() else 1
    if args.processes > 1 and args.diagnose:
        parser.error("--diagnose reads one bot process; it cannot with PROCESSES > 1")
    if args.kill_one_at is not None and args.processes < 2:
        parser.error("--kill-one-at needs --env PROCESSES=N with N > 1 (a supervisor to start it again)")
    if args.profile_windows and not Profiler.available():
        parser.error("--profile-windows needs py-spy (pip install py-spy)")
    if args.rate * 1.0 >= args.channels:
        parser.error("--channels must exceed --rate: a channel takes one answer a second")
    result = asyncio.run(soak(args))
    print(_summary_line(result))
    if burst := result["burst_after"]:
        print(
            f"then a burst of {burst['c']}: {burst['answered']}/{burst['c']} answered, "
            f"done/ideal p99 {burst['done_over_ideal_p99'] or 0:.2f}, "
            f"peak RSS {burst['bot_peak_rss_mb']:.1f} MB, "
            f"CPU {burst['bot_cpu_ms_per_turn'] or 0:.2f} ms a turn"
        )
    out = args.out or RESULTS / f"soak-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
