"""History growth: does a turn cost more as a conversation's stored history grows?

Runs the real bot (Socket Mode) against the Slack and OpenAI emulators and a real redis-server,
all on 127.0.0.1. For each history length it seeds a thread with that many stored turns, lets the
rolling summary catch up (as it would have in the thread's life), then asks follow-up questions,
one thread after the other in turn (so that the machine's load changes touch every size alike),
and reports:

- turn p50/p95: the bot's own time per turn, as it logs it (status, prompt, model, post, store);
  the emulated model answers at once, and Slack's rate budget is scaled up (the turns come
  faster than Slack's one message a second per channel), so this is the bot's cost, not the
  model's or Slack's;
- prompt: the time to build the prompt (read the tail from Redis, count tokens), after each turn;
- redis cmds/turn: Redis commands per turn, summary upkeep included;
- bytes stored: Redis memory of the conversation (turns, summary and metadata) before the
  measured turns;
- prompt tokens: what the model was sent last.

The measured turns add to the history, so the shortest threads grow during their own run.

    .venv/bin/python bench/history_growth.py [--sizes 10,100,1000,10000] [--turns 20]

`run()` returns the rows, for a harness to collect; `main()` prints them as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bot.config import Settings  # noqa: E402
from bot.server import SupportBot  # noqa: E402
from bot.store import ThreadKey, Turn  # noqa: E402
from tests.emulators.openai_api import OpenAIEmulator  # noqa: E402
from tests.emulators.slack import SlackEmulator  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SIZES = (10, 100, 1_000, 10_000)
CHANNEL = "CBENCH"
BOT = "UBOT"
# A support message of typical length (about 50 tokens), and the bot's typical answer length.
QUESTION = (
    "The nightly sync for workspace acme-prod failed again with error E1234 (timeout talking to "
    "the billing API). I restarted the agent on host sync-02 and cleared the queue; still failing."
)
ANSWER = (
    "Thanks. E1234 after a restart usually means the billing API token expired. Open Settings → "
    "Integrations → Billing, click Reconnect, then rerun the sync from the Jobs page. If it still "
    "fails, send me the job id and the time it failed."
)
_LATENCY = re.compile(r"latency_ms=(\d+) outcome=answered")


@dataclass(frozen=True)
class Row:
    stored_turns: int
    turn_p50_ms: float
    turn_p95_ms: float
    prompt_ms: float
    redis_commands_per_turn: float
    bytes_stored: int
    prompt_tokens: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _TurnLatencies(logging.Handler):
    """Collects the latency the bot logs at the end of each answered turn."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.values: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if match := _LATENCY.search(record.getMessage()):
            self.values.append(float(match.group(1)))


async def _run(sizes: tuple[int, ...], turns: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-history-") as data:
        server = RedisServer(Path(data), appendonly=False)
        server.start()
        slack, llm = SlackEmulator(), OpenAIEmulator(reply=lambda messages: ANSWER)
        slack.add_user("U1", "ann")
        slack.add_user("U2", "bob")
        await slack.start()
        await llm.start()
        try:
            return await _with_bot(sizes, turns, server, slack, llm)
        finally:
            await llm.stop()
            await slack.stop()
            server.stop()


async def _with_bot(
    sizes: tuple[int, ...], turns: int, server: RedisServer, slack: SlackEmulator, llm: OpenAIEmulator
) -> list[Row]:
    latencies = _TurnLatencies()
    logging.getLogger("bot.turn").addHandler(latencies)
    logging.getLogger("bot.turn").setLevel(logging.INFO)
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_APP_TOKEN": slack.app_token,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": llm.api_key,
        "OPENAI_MODEL": "gpt-4o-mini",
        "REDIS_URL": server.url,
        "HOST": "127.0.0.1",
        "PORT": str(_free_port()),
        "SYSTEM_PROMPT": "You are a support assistant.",
        # The turns of one channel come back to back, faster than Slack lets a channel be posted
        # to (about one message a second): without this, each turn would wait for its slot, and
        # the rows would show Slack's limit, not what a turn costs as its history grows.
        "SLACK_RATE_LIMIT_SCALE": "100",
        # One person asks every question, far more than the abuse limits allow a person.
        "RATE_LIMIT_USER_PER_MINUTE": "1000000",
        "RATE_LIMIT_USER_PER_DAY": "1000000",
        "RATE_LIMIT_CHANNEL_PER_MINUTE": "1000000",
    }
    bot = SupportBot(Settings.from_env(env), server.url)
    await bot.start()
    await slack.wait_for_socket()
    slack.use_socket()
    probe = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        return await _measure_all(sizes, turns, bot, slack, probe, latencies)
    finally:
        await probe.aclose()
        await bot.stop(grace_seconds=5)


@dataclass
class _Thread:
    """One measured conversation, and what was measured of it."""

    size: int
    root: str
    key: ThreadKey
    answered: int
    bytes_stored: int = 0
    latencies: list[float] = field(default_factory=list)
    prompt_ms: list[float] = field(default_factory=list)
    commands: int = 0
    prompt_tokens: int = 0


async def _measure_all(
    sizes: tuple[int, ...],
    turns: int,
    bot: SupportBot,
    slack: SlackEmulator,
    probe: aioredis.Redis,
    latencies: _TurnLatencies,
) -> list[Row]:
    threads = [await _prepare(size, bot, slack, probe) for size in sizes]
    # Round robin over the threads, so that a load change on the machine touches every size alike.
    for _ in range(turns):
        for thread in threads:
            await _one_turn(thread, bot, slack, probe, latencies)
    return [
        Row(
            stored_turns=thread.size,
            turn_p50_ms=statistics.median(thread.latencies),
            turn_p95_ms=_percentile(thread.latencies, 0.95),
            prompt_ms=statistics.median(thread.prompt_ms),
            redis_commands_per_turn=thread.commands / turns,
            bytes_stored=thread.bytes_stored,
            prompt_tokens=thread.prompt_tokens,
        )
        for thread in threads
    ]


async def _prepare(size: int, bot: SupportBot, slack: SlackEmulator, probe: aioredis.Redis) -> _Thread:
    """A thread with `size` stored turns, its summary caught up as it would be in the thread's life."""
    assert bot.turns is not None
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {QUESTION}")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1, timeout=30)
    await bot.turns.drain(60)
    thread = _Thread(size, root, ThreadKey(slack.team_id, CHANNEL, root), answered=1)
    # Slack timestamps in order, one microsecond apart, after the answer just posted.
    first = time.time_ns() // 1000
    stamps = [f"{(first + i) // 1_000_000}.{(first + i) % 1_000_000:06d}" for i in range(size - 4)]
    history = [
        Turn(role="user", text=QUESTION, ts=ts, user="U2", name="bob")
        if i % 2 == 0
        else Turn(role="assistant", text=ANSWER, ts=ts)
        for i, ts in enumerate(stamps)
    ]
    for start in range(0, len(history), 1000):
        await bot.store.append_turns(thread.key, *history[start : start + 1000])
    del history, stamps  # the bench's own objects must not weigh on the bot's garbage collection
    thread.answered += 1
    await slack.post_user_message(CHANNEL, QUESTION, thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=thread.answered, timeout=60)
    await bot.turns.drain(300)
    for name in (bot.store.keys.turns(thread.key), bot.store.keys.meta(thread.key)):
        thread.bytes_stored += await probe.memory_usage(name, samples=0) or 0
    return thread


async def _one_turn(
    thread: _Thread, bot: SupportBot, slack: SlackEmulator, probe: aioredis.Redis, latencies: _TurnLatencies
) -> None:
    assert bot.turns is not None
    latencies.values.clear()
    before = (await probe.info("stats"))["total_commands_processed"]
    thread.answered += 1
    await slack.post_user_message(CHANNEL, QUESTION, thread_ts=thread.root)
    await slack.wait_for_bot_messages(CHANNEL, thread.root, count=thread.answered, timeout=30)
    await bot.turns.drain(30)
    # The INFO that reads `before` is counted in the second reading.
    thread.commands += (await probe.info("stats"))["total_commands_processed"] - before - 1
    thread.latencies.extend(latencies.values)
    started = time.perf_counter()
    prompt = await bot.turns.context.prompt_for(thread.key)
    thread.prompt_ms.append((time.perf_counter() - started) * 1000)
    thread.prompt_tokens = prompt.tokens


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run(sizes: tuple[int, ...] = SIZES, turns: int = 20) -> list[Row]:
    """Measure each history length; the rows in the order of `sizes`."""
    return asyncio.run(_run(sizes, turns))


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'stored turns':>12} {'turn p50 ms':>11} {'turn p95 ms':>11} {'prompt ms':>9} "
        f"{'redis cmds/turn':>15} {'bytes stored':>12} {'prompt tokens':>13}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.stored_turns:>12,} {row.turn_p50_ms:>11.1f} {row.turn_p95_ms:>11.1f} "
            f"{row.prompt_ms:>9.2f} {row.redis_commands_per_turn:>15.1f} {row.bytes_stored:>12,} "
            f"{row.prompt_tokens:>13,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="stored turns, comma-separated")
    parser.add_argument("--turns", type=int, default=20, help="measured turns per size")
    args = parser.parse_args(argv)
    try:
        sizes = tuple(int(size) for size in args.sizes.split(","))
    except ValueError:
        parser.error(f"--sizes must be whole numbers separated by commas, got {args.sizes!r}")
    if any(size < 4 for size in sizes) or args.turns < 1:
        parser.error("each size must be at least 4, and --turns at least 1")
    rows = run(sizes, args.turns)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
