"""Scenario 5: several bot processes in HTTP mode sharing one Redis. Each event goes to a random
process and some are delivered again to another one, as Slack retries do; threads hold several
questions sent while the first is still being answered.

A last load kills one process (SIGKILL) as the threads' second questions go out. An event it had
not acknowledged is sent again to a live process, as Slack sends it again; the turns it had begun
are taken over by the others once its thread locks expire (the bot's THREAD_LOCK_TTL_SECONDS,
15 s) and a recovery round comes (RECOVERY_INTERVAL_SECONDS, 5 s), so those answers come some
20 s late. Each message must still be answered exactly once, in order."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from typing import Any

from bench.bots import BOT_APP, BotProcess, free_port
from bench.context import Context
from bench.rig import Asked, Rig, Route, describe_thread, out_of_order, summarize
from bot.config import DEFAULT_RECOVERY_INTERVAL_SECONDS, DEFAULT_THREAD_LOCK_TTL_SECONDS

_loads = itertools.count(1)
# A killed process's threads are taken over once its liveness lapses (5 s); the step allows them
# as long as its locks' expiry and the next recovery round would take (the bot's defaults, the
# backstop), then their answers.
TAKEOVER_SECONDS = DEFAULT_THREAD_LOCK_TTL_SECONDS + DEFAULT_RECOVERY_INTERVAL_SECONDS


async def replicas(ctx: Context) -> dict[str, Any]:
    settings = ctx.settings
    rig = Rig(settings.model)
    await rig.start()
    await ctx.flush_redis()
    bots = []
    for index in range(settings.replicas):
        port = free_port()
        env = rig.bot_env(ctx.redis_url, port, "http")
        bots.append(BotProcess(f"replica-{index + 1}", BOT_APP, env, port, ctx.workdir))
    result: dict[str, Any] = {"processes": len(bots), "redelivery": settings.redelivery, "loads": []}
    try:
        await asyncio.gather(*(bot.start() for bot in bots))
        routes = [bot.events_url for bot in bots]

        def router() -> list[Route]:
            first = random.choice(routes)
            if random.random() < settings.redelivery:
                return [first, random.choice([r for r in routes if r != first])]
            return [first]

        for threads in settings.replica_threads:
            load = await ctx.measured(
                f"replicas-{threads}",
                bots,
                lambda: sum(a.done_at is not None for a in rig.tracker.asked.values()),
                _threads(ctx, rig, router, threads, routes),
            )
            result["loads"].append(load)
        if settings.crash_threads:
            threads = settings.crash_threads
            survivors = bots[:-1]  # the killed one's CPU is not counted
            load = await ctx.measured(
                f"replicas-{threads}-crash",
                survivors,
                lambda: sum(a.done_at is not None for a in rig.tracker.asked.values()),
                _crash(ctx, rig, router, threads, routes, bots[-1]),
            )
            result["loads"].append(load)
    finally:
        codes = await asyncio.gather(*(bot.stop() for bot in bots))
        result["exit_codes"] = list(codes)
        await rig.stop()
    return result


async def _crash(
    ctx: Context, rig: Rig, router: Any, threads: int, routes: list[Route], victim: BotProcess
) -> dict[str, Any]:
    """`_threads`, with `victim` killed as the threads' second questions go out."""
    kill_after = ctx.settings.replica_gap  # the second questions' events are on their way then

    async def kill() -> None:
        await asyncio.sleep(kill_after)
        victim.kill()

    rig.retry_routes = [route for route in routes if route != victim.events_url]
    rig.retried = 0
    killing = asyncio.create_task(kill())
    try:
        result = await _threads(ctx, rig, router, threads, routes, extra_seconds=TAKEOVER_SECONDS)
    finally:
        rig.retry_routes = None
        await killing
    result["killed"] = {"process": routes.index(victim.events_url) + 1, "after_s": kill_after}
    result["sent_again_after_failure"] = rig.retried
    return result


async def _threads(
    ctx: Context, rig: Rig, router: Any, threads: int, routes: list[Route], extra_seconds: float = 0.0
) -> dict[str, Any]:
    settings = ctx.settings
    tracker = rig.new_tracker()
    load = next(_loads)
    users = ("U1", "U2", "U3", "U4")

    async def conversation(index: int) -> list[Asked]:
        channel = f"CR{load:02d}{index:05d}"
        first = await rig.ask(channel, router=router, user=users[index % len(users)])
        asked = [first]
        for k in range(1, settings.replica_messages):
            await asyncio.sleep(settings.replica_gap)
            user = users[(index + k) % len(users)]
            asked.append(await rig.ask(channel, thread_ts=first.ts, router=router, user=user))
        return asked

    conversations = await asyncio.gather(*(conversation(i) for i in range(threads)))
    asked = [a for thread in conversations for a in thread]
    timeout = settings.replica_messages * rig.model.ideal + settings.step_timeout + extra_seconds
    complete = await rig.wait_answered(asked, timeout)
    # Late duplicates would show up after the last answer: give them a moment to appear.
    await asyncio.sleep(min(2.0, rig.model.ideal))
    await rig.wait_quiet()
    result = summarize(tracker, asked, None, rig.model.answer)
    per_message = Counter(len(a.answer_messages) for a in asked)
    disordered = out_of_order(conversations)
    result |= {
        "threads": threads,
        "messages_per_thread": settings.replica_messages,
        # Every question here is a channel message: two events, each delivered once or twice.
        "redelivered_events": sum(len(a.deliveries) - 2 for a in asked),
        "answers_per_message": dict(per_message),
        "messages_not_answered_once": sum(n for count, n in per_message.items() if count != 1),
        "out_of_order": len(disordered),
        # Times in seconds from the thread's first question; processes numbered from 1.
        "out_of_order_threads": [describe_thread(thread, routes) for thread in disordered[:5]],
        "timed_out": not complete,
    }
    return result
