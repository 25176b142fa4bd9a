"""Slack delivers some events more than once; each user message still gets exactly one answer."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from bot.events import DispatchedMessages
from tests.conftest import StartBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator

CHANNEL = "C200"
BOT = "UBOT"


def mention_event(ts: str, text: str = f"<@{BOT}> is the API down?") -> dict:
    return {"type": "app_mention", "user": "U1", "text": text, "ts": ts, "channel": CHANNEL,
            "event_ts": ts}  # fmt: skip


async def test_http_retries_with_retry_headers_get_one_answer(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http")
    ts = slack.seed_message(CHANNEL, f"<@{BOT}> is the API down?")
    event = mention_event(ts)
    first = await slack.deliver_event(event, event_id="Ev1")
    retry1 = await slack.deliver_event(event, event_id="Ev1", retry_num=1, retry_reason="http_timeout")
    retry2 = await slack.deliver_event(event, event_id="Ev1", retry_num=2, retry_reason="http_timeout")
    assert (first.status, retry1.status, retry2.status) == (200, 200, 200)
    await slack.wait_for_bot_messages(CHANNEL, ts, count=1)
    await asyncio.sleep(0.3)
    await running.settle()
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert len(llm.requests) == 1


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_mention_and_message_pair_in_a_followed_thread_get_one_answer(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, mode: str
) -> None:
    running = await start_bot(mode)
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()
    # In a followed thread, a mention arrives both as app_mention and as message.
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and now?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await asyncio.sleep(0.3)
    await running.settle()
    assert len(slack.bot_messages(CHANNEL, root)) == 2
    assert len(llm.requests) == 2
    assert all(delivery.acked for delivery in slack.deliveries)  # both events of each message


async def test_concurrent_duplicates_across_two_processes_get_one_answer(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Two bot instances share one Redis; the same event reaches both at the same moment."""
    first = await start_bot("http")
    second = await start_bot("http")
    llm.first_token_delay = 0.1
    timestamps = [slack.seed_message(CHANNEL, f"<@{BOT}> question {i}") for i in range(20)]
    deliveries = []
    for ts in timestamps:
        event = mention_event(ts, f"<@{BOT}> question {ts}")
        for target in (first, second, first):
            slack.use_http(f"{target.url}/slack/events")
            deliveries.append(slack.deliver_event(event, event_id=f"Ev{ts}"))
    results = await asyncio.gather(*deliveries)
    assert {r.status for r in results} == {200}
    for ts in timestamps:
        await slack.wait_for_bot_messages(CHANNEL, ts, count=1)
    await asyncio.sleep(0.3)
    await first.settle()
    await second.settle()
    for ts in timestamps:
        assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert len(llm.requests) == 20


def test_the_memory_of_dispatched_messages_keeps_only_the_most_recent() -> None:
    dispatched = DispatchedMessages(size=3)
    keys = [("T1", CHANNEL, f"1700000000.00000{i}") for i in range(4)]
    for key in keys:
        dispatched.add(key)
    assert keys[0] not in dispatched
    assert all(key in dispatched for key in keys[1:])


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_without_the_bots_identity_at_start_bolt_takes_messages_until_slack_answers_again(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    """New messages skip Bolt's dispatch only once auth.test has said who the bot is. When it
    failed at start, Bolt dispatches them (and asks auth.test itself), twins dropped as before;
    the bot asks again, and from then on takes them directly, acknowledged once queued."""
    slack.fail_next("auth.test", "internal_error")
    running = await start_bot(mode)
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await slack.wait_for(
        lambda: any("new messages are taken directly" in r.getMessage() for r in caplog.records),
        what="auth.test asked again",
    )

    await redis.execute_command("CLIENT", "PAUSE", "1500", "WRITE")  # queueing waits 1.5 s
    try:
        event = slack.user_message_event(CHANNEL, f"<@{BOT}> and now?", thread_ts=root)
        delivery = await slack.deliver_event(event)
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    assert delivery.acked and delivery.elapsed > 1.0, "acknowledged before the message was queued"
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await asyncio.sleep(0.3)
    await running.settle()
    assert len(slack.bot_messages(CHANNEL, root)) == 2
    assert len(llm.requests) == 2
    assert all(delivery.acked for delivery in slack.deliveries)
