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


async def test_a_burst_right_after_start_asks_slack_who_the_bot_is_once_and_each_name_once(
    start_bot: StartBot, slack: SlackEmulator
) -> None:
    """Bolt alone calls auth.test for every event that arrives before its first call answers,
    and each question from a new person would look the person up: hundreds of calls."""
    running = await start_bot("http")
    users = ("U1", "U2", "U3")
    await asyncio.gather(
        *(
            slack.post_user_message(f"CN{i:03d}", f"<@UBOT> question {i}", user=users[i % len(users)])
            for i in range(60)
        )
    )
    await running.settle(30)

    assert sum(len(slack.bot_messages(f"CN{i:03d}")) for i in range(60)) == 60
    assert len(slack.calls_to("auth.test")) == 1  # the check at start
    assert sorted(c.args["user"] for c in slack.calls_to("users.info")) == sorted(users)
