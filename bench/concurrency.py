"""Scenario 1 (concurrency sweep), 4 (memory) and 6 (baseline): C questions at once, each in its own
thread, against one bot process; the same sweep runs against the tutorial-style baseline."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from bench.bots import BASELINE_APP, BOT_APP, BotProcess, free_port
from bench.context import Context
from bench.rig import USERS, Question, Rig, enable_slack_tiers, slack_tiers_available, summarize

_steps = itertools.count(1)
SATURATING_C = 20


async def sweep(
    ctx: Context,
    *,
    name: str,
    mode: str,
    app: Path = BOT_APP,
    sweep: tuple[int, ...] | None = None,
    tiers: bool = False,
    dm: bool = False,
    cap: float | None = None,
    rig: Rig | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Start a bot, then fire C questions at once for each C; returns per-C figures and idle memory.

    `tiers`: Slack's per-method rate limits on (skipped, saying so, when the emulator lacks them).
    `dm`: each question in its own DM channel instead of a channel thread.
    `cap`: a step that would take longer than this (projected from the last step) is skipped.
    `processes`: the bot's PROCESSES (a supervisor and that many processes on one port).
    """
    settings = ctx.settings
    own_rig = rig is None
    rig = rig or Rig(settings.model)
    if own_rig:
        await rig.start()
    result: dict[str, Any] = {"name": name, "mode": mode, "tiers": tiers, "dm": dm, "steps": []}
    try:
        if tiers:
            if not slack_tiers_available(rig.slack):
                result["skipped"] = (
                    "not available yet: tests/emulators/slack.py has no per-method rate limits "
                    "(the streaming issue adds them; then this run needs no change)"
                )
                return result
            enable_slack_tiers(rig.slack)
        await ctx.flush_redis()
        port = free_port()
        env = rig.bot_env(ctx.redis_url, port, mode)
        if processes > 1:
            env["PROCESSES"] = str(processes)
        bot = BotProcess(name, app, env, port, ctx.workdir)
        # The baseline has no /health: its HTTP port, or its socket, says it is up.
        baseline = app == BASELINE_APP
        await bot.start(ready=("port" if mode == "http" else "spawned") if baseline else "health")
        try:
            if mode == "socket":
                await rig.slack.wait_for_socket(timeout=30)
            if processes > 1:
                await every_process_started(bot, rig, mode, processes)
            route = bot.events_url if mode == "http" else None
            await asyncio.sleep(0.5)  # let start-up settle before reading the idle figures
            result["idle_rss_mb"] = bot.sample().rss_bytes / 2**20
            rate: float | None = None
            for c in sweep or settings.sweep:
                if cap is not None and rate and c / rate > cap:
                    why = f"projected {c / rate:.0f} s > cap {cap:.0f} s at {rate:.1f} answers/s"
                    result["steps"].append({"c": c, "skipped": why})
                    continue
                timeout = rig.model.ideal + (cap if cap is not None else settings.step_timeout)
                burst = Burst(rig, c, route, dm, timeout)
                step = await ctx.measured(
                    f"{name}-{mode}{'-tiers' if tiers else ''}-c{c}",
                    [bot],
                    lambda: sum(a.done_at is not None for a in rig.tracker.asked.values()),
                    burst.run(),
                    prepare=burst.prepare,
                )
                step["c"] = c
                result["steps"].append(step)
                # Only a step that kept the bot busy says how fast it can go.
                if step["answered"] >= SATURATING_C:
                    rate = step["answered"] / step["wall_seconds"]
        finally:
            result["exit_code"] = await bot.stop()
    finally:
        if own_rig:
            await rig.stop()
    return result


async def every_process_started(bot: BotProcess, rig: Rig, mode: str, count: int) -> None:
    """A bot run with PROCESSES = count: wait for each process (and, in Socket Mode, its
    connection); Slack spreads envelopes over an app's connections, and so does the emulator."""
    rig.slack.spread_envelopes = True
    if mode == "socket":
        await rig.slack.wait_for(lambda: rig.slack.open_sockets == count, 30, what=f"{count} connections")
    await bot.every_process_started(count)


class Burst:
    """C questions at once, each in its own thread (or DM), prepared before the step's clock starts;
    answers are waited for at most `timeout` seconds."""

    def __init__(
        self,
        rig: Rig,
        c: int,
        route: str | None,
        dm: bool,
        timeout: float,
        people: tuple[str, ...] | None = None,
        channels: int | None = None,
    ) -> None:
        self.rig = rig
        self.people = people
        self.channels = channels  # mentions in this many channels; by default each in its own
        self.c = c
        self.route = route
        self.dm = dm
        self.timeout = timeout
        self.questions: list[Question] = []

    def prepare(self) -> None:
        """Seed the users' messages and build, serialize and sign every event. Mentions come from
        four people; DMs each from its own (a DM channel is one person's), whose name the bot
        looks up within Slack's Tier 4 for users.info."""
        self.rig.new_tracker()
        step = next(_steps)
        people = self.people or (self.rig.people(self.c) if self.dm else USERS)
        self.questions = [
            self.rig.prepare(
                f"{'D' if self.dm else 'C'}{step:03d}{i % (self.channels or self.c):05d}",
                dm=self.dm,
                router=lambda: [self.route],
                user=people[i % len(people)],
            )
            for i in range(self.c)
        ]

    async def run(self) -> dict[str, Any]:
        """Send them all at once, then wait for every answer."""
        tracker = self.rig.tracker
        asked = await asyncio.gather(*(self.rig.send(q) for q in self.questions))
        complete = await self.rig.wait_answered(asked, self.timeout)
        await self.rig.wait_quiet()
        result = summarize(tracker, asked, self.rig.model.ideal, self.rig.model.answer)
        result["timed_out"] = not complete
        return result
