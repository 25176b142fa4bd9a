"""Hostile and malformed feedback clicks, in both modes: whatever a block_actions payload holds,
it is acknowledged or refused (never a 5xx, never a crashed listener), a vote is stored only with
the fields it needs as ids, and the bot goes on answering."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.store import ThreadKey
from tests.conftest import RunningBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.test_hostile_input import (
    FUZZ_EXAMPLES,
    assert_only_the_next_mention_is_answered,
    crashes,
    json_values,
)

CHANNEL = "C710"
BOT = "UBOT"

Change = Callable[[dict[str, Any]], None]


def setting(*path: str | int, to: Any) -> Change:
    """Set the field at `path` (... removes it)."""

    def change(payload: dict[str, Any]) -> None:
        *parents, last = path
        where: Any = payload
        for step in parents:
            where = where[step]
        if to is ...:
            del where[last]
        else:
            where[last] = to

    return change


CHANGES: dict[str, Change] = {
    "team-a-string": setting("team", to="T1"),
    "team-a-list": setting("team", to=["T1"]),
    "team-id-a-number": setting("team", "id", to=5),
    "user-a-string": setting("user", to="U2"),
    "user-id-a-list": setting("user", "id", to=["U2"]),
    "user-id-a-number": setting("user", "id", to=2),
    "container-a-string": setting("container", to="message"),
    "container-a-list": setting("container", to=[CHANNEL]),
    "container-channel-a-number": setting("container", "channel_id", to=710),
    "container-ts-a-number": setting("container", "message_ts", to=1700000000.5),
    "container-thread-ts-an-object": setting("container", "thread_ts", to={"ts": "1.1"}),
    "channel-a-string-and-no-container": lambda p: (p.pop("container"), p.update(channel=CHANNEL)),
    "channel-id-a-list-and-no-container": lambda p: (p.pop("container"), p.update(channel={"id": [CHANNEL]})),
    "message-a-list": setting("message", to=[]),
    "message-thread-ts-a-number": setting("message", "thread_ts", to=5),
    "value-a-number": setting("actions", 0, "value", to=5),
    "value-an-object": setting("actions", 0, "value", to={"vote": "good"}),
    "value-another-vote": setting("actions", 0, "value", to="meh:1.2"),
    "actions-empty": setting("actions", to=[]),
    "action-a-string": setting("actions", 0, to="answer_feedback"),
    "action-id-a-number": setting("actions", 0, "action_id", to=7),
    "actions-an-object": lambda p: p.update(actions=p["actions"][0]),
}


async def assert_votes_hold_ids_and_the_bot_keeps_answering(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture, ts: str
) -> None:
    """Whatever was stored was stored with ids (a click it could not read left nothing), the next
    question is answered, and neither our listeners nor Bolt logged a failure."""
    for vote in await bot.bot.store.feedback_votes(ThreadKey("T1", CHANNEL, ts)):
        fields = (vote.team, vote.channel, vote.thread, vote.answer_ts, vote.message_ts, vote.user)
        assert all(isinstance(field, str) and field for field in fields), vote
    slack.calls.clear()
    llm.requests.clear()
    await assert_only_the_next_mention_is_answered(slack, llm, bot)
    assert crashes(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("slack_bolt")]


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_a_malformed_feedback_click_is_answered_safely_and_the_bot_keeps_answering(
    bot: RunningBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    change: Change,
) -> None:
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> was this useful?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    payload = copy.deepcopy(slack.feedback_click(CHANNEL, answer["ts"], user="U2", positive=False))
    change(payload)
    delivery = await slack.deliver_interaction(payload)
    if bot.mode == "socket":
        assert delivery.acked
    else:
        assert delivery.status in (200, 400), (delivery.status, delivery.body)
    await bot.settle()
    await assert_votes_hold_ids_and_the_bot_keeps_answering(bot, slack, llm, caplog, ts)


# ----- fuzz: clicks with any of their fields replaced by anything -----

CLICK_FIELDS: list[tuple[str | int, ...]] = [
    ("type",),
    ("team",),
    ("team", "id"),
    ("user",),
    ("user", "id"),
    ("container",),
    ("container", "channel_id"),
    ("container", "message_ts"),
    ("container", "thread_ts"),
    ("channel",),
    ("channel", "id"),
    ("message",),
    ("message", "ts"),
    ("message", "thread_ts"),
    ("actions",),
    ("actions", 0),
    ("actions", 0, "action_id"),
    ("actions", 0, "value"),
    ("actions", 0, "type"),
    ("enterprise",),
    ("is_enterprise_install",),
]
click_changes = st.lists(
    st.tuples(st.sampled_from(CLICK_FIELDS), st.one_of(st.just(...), json_values)), min_size=1, max_size=3
)


def changed(payload: dict[str, Any], changes: list[tuple[tuple[str | int, ...], Any]]) -> dict[str, Any]:
    """A copy of `payload` with each change made where its path still leads somewhere."""
    result = copy.deepcopy(payload)
    for path, value in changes:
        try:
            setting(*path, to=value)(result)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change took the path away
    return result


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_fuzzed_feedback_clicks_are_each_answered_and_never_crash_a_listener(
    bot: RunningBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> was this useful?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    click = slack.feedback_click(CHANNEL, answer["ts"], user="U2", positive=False)
    loop = asyncio.get_running_loop()
    unanswered: list[dict[str, Any]] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=FUZZ_EXAMPLES == 150)
    @given(changes=click_changes)
    def one_click(changes: list[tuple[tuple[str | int, ...], Any]]) -> None:
        payload = changed(click, changes)
        sent = asyncio.run_coroutine_threadsafe(slack.deliver_interaction(payload), loop)
        delivery = sent.result(timeout=10)
        # Socket Mode: acknowledged. HTTP: 200 or 400 within Slack's 3 s, never a 5xx.
        if not (delivery.acked if bot.mode == "socket" else delivery.status in (200, 400)):
            unanswered.append(payload)

    await asyncio.to_thread(one_click)
    await bot.settle()
    assert unanswered == []
    await assert_votes_hold_ids_and_the_bot_keeps_answering(bot, slack, llm, caplog, ts)
