"""A burst of questions wider than any connection pool: every one is answered, none told the bot is down."""

from __future__ import annotations

import asyncio

from bot.turn import STORE_UNAVAILABLE
from tests.conftest import RATE_SCALE, StartBot
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


async def test_a_burst_from_more_people_than_slack_lets_the_bot_look_up_is_answered_without_a_429(
    start_bot: StartBot, slack: SlackEmulator
) -> None:
    """users.info is Tier 4, 100 calls a minute per workspace. A burst of questions from 150 people
    new to the bot looks up as many as the shared budget allows and answers the others under their
    ids at once, rather than draw Slack's 429s and wait out its Retry-After. Their names are looked
    up on a later turn, once the budget has room."""
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    people = [f"UP{i:03d}" for i in range(150)]
    for i, person in enumerate(people):
        slack.add_user(person, f"person{i}")
    running = await start_bot("http")

    await asyncio.gather(
        *(
            slack.post_user_message(f"CP{i:03d}", f"<@UBOT> question {i}", user=person)
            for i, person in enumerate(people)
        )
    )
    await running.settle(30)

    assert slack.rate_limited == []
    answers = {i: [m["text"] for m in slack.bot_messages(f"CP{i:03d}")] for i in range(len(people))}
    named = {i for i, texts in answers.items() if texts == [f"Answer: person{i}: question {i}"]}
    by_id = {i for i, texts in answers.items() if texts == [f"Answer: {people[i]}: question {i}"]}
    assert named | by_id == set(answers), "every question answered once"
    print(f"\n{len(named)} answered under their names, {len(by_id)} under their ids")
    assert 0 < len(named) <= 100 < len(people)
    looked_up = [c for c in slack.calls_to("users.info") if c.args.get("user") in people]
    assert len(looked_up) == len(named)

    await asyncio.sleep(60 / RATE_SCALE * 1.1)  # a fresh window
    unnamed = min(by_id)
    ts = await slack.post_user_message("CPLATER", "<@UBOT> again", user=people[unnamed])
    [answer] = await slack.wait_for_bot_messages("CPLATER", ts)
    assert answer["text"] == f"Answer: person{unnamed}: again"
