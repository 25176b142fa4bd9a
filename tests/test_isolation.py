"""Isolation: a conversation is keyed by workspace, channel and thread, so no history crosses from
one thread to another, nor from one workspace to another, even when their ids collide.

The emulator is one Slack world; events for the second workspace are the same events delivered with
team "T2" (both `team_id` and `authorizations`), which is how Slack tells the bot where they come from.
"""

from __future__ import annotations

import time

from tests.conftest import RunningBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator

CHANNEL = "C900"
DM = "D900"
BOT = "UBOT"


def prompt_for(llm: OpenAIEmulator, question: str) -> list[str]:
    """The conversation (system prompt left out) the model saw when asked `question`."""
    [messages] = [r["messages"] for r in llm.requests if r["messages"][-1]["content"] == f"ann: {question}"]
    return [m["content"] for m in messages[1:]]


async def say(
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    running: RunningBot,
    team: str,
    ts: str,
    text: str,
    *,
    channel: str = CHANNEL,
    thread_ts: str | None = None,
) -> None:
    """Deliver one user message to `team` as Slack would, and wait until the bot has answered it."""
    asked = len(llm.requests)
    event = {"type": "message", "user": "U1", "text": text, "ts": ts, "channel": channel, "event_ts": ts}
    event["channel_type"] = "im" if channel.startswith("D") else "channel"
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    assert (await slack.deliver_event(event, team=team)).acked
    if f"<@{BOT}>" in text:
        mention = {k: v for k, v in event.items() if k != "channel_type"} | {"type": "app_mention"}
        assert (await slack.deliver_event(mention, team=team)).acked
    await llm.wait_for_requests(asked + 1)
    await running.settle()


def topics(request: dict, among: tuple[str, ...]) -> set[str]:
    prompt = str(request["messages"][1:])
    return {topic for topic in among if topic in prompt}


async def test_two_workspaces_with_the_same_channel_and_thread_ids_never_share_history(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    now = int(time.time())
    root, follow_up, dm_first, dm_second = (f"{now}.{n:06d}" for n in (100, 200, 300, 400))

    # The same ts in the same channel id, once in each workspace, twice over.
    await say(slack, llm, bot, "T1", root, f"<@{BOT}> alpha: the T1 build is red")
    await say(slack, llm, bot, "T2", root, f"<@{BOT}> bravo: the T2 invoice is wrong")
    await say(slack, llm, bot, "T1", follow_up, "alpha again: still red", thread_ts=root)
    await say(slack, llm, bot, "T2", follow_up, "bravo again: still wrong", thread_ts=root)
    # And a DM channel id both workspaces share, where the conversation is the rolling top level.
    await say(slack, llm, bot, "T1", dm_first, "alpha DM: my T1 password expired", channel=DM)
    await say(slack, llm, bot, "T2", dm_first, "bravo DM: my T2 laptop is slow", channel=DM)
    await say(slack, llm, bot, "T1", dm_second, "alpha DM again", channel=DM)
    await say(slack, llm, bot, "T2", dm_second, "bravo DM again", channel=DM)

    # Each workspace's message was answered although the other had one with the same ids.
    assert len(llm.requests) == 8
    assert prompt_for(llm, "bravo: the T2 invoice is wrong") == ["ann: bravo: the T2 invoice is wrong"]
    assert prompt_for(llm, "alpha again: still red") == [
        "ann: alpha: the T1 build is red",
        "Answer: ann: alpha: the T1 build is red",
        "ann: alpha again: still red",
    ]
    assert prompt_for(llm, "bravo again: still wrong") == [
        "ann: bravo: the T2 invoice is wrong",
        "Answer: ann: bravo: the T2 invoice is wrong",
        "ann: bravo again: still wrong",
    ]
    assert prompt_for(llm, "bravo DM: my T2 laptop is slow") == ["ann: bravo DM: my T2 laptop is slow"]
    assert prompt_for(llm, "alpha DM again") == [
        "ann: alpha DM: my T1 password expired",
        "Answer: ann: alpha DM: my T1 password expired",
        "ann: alpha DM again",
    ]
    assert prompt_for(llm, "bravo DM again") == [
        "ann: bravo DM: my T2 laptop is slow",
        "Answer: ann: bravo DM: my T2 laptop is slow",
        "ann: bravo DM again",
    ]
    # The same, said bluntly: no prompt mixes the two workspaces.
    assert [topics(request, ("alpha", "bravo")) for request in llm.requests] == [{"alpha"}, {"bravo"}] * 4


async def test_threads_in_one_channel_never_see_each_other(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    # Two threads the bot started in, taking turns.
    printer = await slack.post_user_message(CHANNEL, f"<@{BOT}> printer: floor 3 jams")
    await slack.wait_for_bot_messages(CHANNEL, printer)
    vpn = await slack.post_user_message(CHANNEL, f"<@{BOT}> vpn: drops at noon")
    await slack.wait_for_bot_messages(CHANNEL, vpn)
    await bot.settle()
    await slack.post_user_message(CHANNEL, "printer: tray 2 only", thread_ts=printer)
    await slack.wait_for_bot_messages(CHANNEL, printer, count=2)
    await slack.post_user_message(CHANNEL, "vpn: only on wifi", thread_ts=vpn)
    await slack.wait_for_bot_messages(CHANNEL, vpn, count=2)
    # A third thread where people talked before mentioning the bot: it reads that thread only.
    wiki = slack.seed_message(CHANNEL, "wiki: search is broken", user="U2")
    slack.seed_message(CHANNEL, "wiki: since Monday", user="U3", thread_ts=wiki)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> wiki: any idea?", thread_ts=wiki)
    await slack.wait_for_bot_messages(CHANNEL, wiki)
    await bot.settle()

    assert prompt_for(llm, "vpn: drops at noon") == ["ann: vpn: drops at noon"]
    assert prompt_for(llm, "printer: tray 2 only") == [
        "ann: printer: floor 3 jams",
        "Answer: ann: printer: floor 3 jams",
        "ann: printer: tray 2 only",
    ]
    assert prompt_for(llm, "vpn: only on wifi") == [
        "ann: vpn: drops at noon",
        "Answer: ann: vpn: drops at noon",
        "ann: vpn: only on wifi",
    ]
    assert prompt_for(llm, "wiki: any idea?") == [
        "bob: wiki: search is broken",
        "cem: wiki: since Monday",
        "ann: wiki: any idea?",
    ]
    assert [topics(request, ("printer", "vpn", "wiki")) for request in llm.requests] == [
        {"printer"},
        {"vpn"},
        {"printer"},
        {"vpn"},
        {"wiki"},
    ]
