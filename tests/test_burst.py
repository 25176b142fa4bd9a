"""A burst of questions wider than any connection pool: every one is answered, none told the bot is down."""

from __future__ import annotations

import asyncio

from bot.turn import STORE_UNAVAILABLE
from tests.conftest import StartBot
from tests.emulators.slack import SlackEmulator

BURST = 150  # above redis-py's default pool of 100 connections per client


async def test_a_burst_of_questions_in_distinct_threads_is_all_answered(
    start_bot: StartBot, slack: SlackEmulator
) -> None:
    running = await start_bot("http")
    channels = [f"CB{i:04d}" for i in range(BURST)]

    await asyncio.gather(
        *(slack.post_user_message(channel, f"<@UBOT> question {i}") for i, channel in enumerate(channels))
    )
    await running.settle(30)

    posted = [message["text"] for channel in channels for message in slack.bot_messages(channel)]
    assert STORE_UNAVAILABLE not in posted
    assert sorted(posted) == sorted(f"Answer: ann: question {i}" for i in range(BURST))
