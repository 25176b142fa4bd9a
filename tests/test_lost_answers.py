"""Slack calls whose answer is lost on the way back: Slack carried the call out, then the
connection broke before its answer arrived (the emulator's `fail_next(..., drop=True,
after=True)`). Slack takes no idempotency key, so a call made again blindly shows a message, or a
piece of a streamed one, twice. Each answer must still show exactly once, whole, with its buttons,
and be kept in the conversation.
"""

from __future__ import annotations

import logging

import pytest

from bot.formatting import SlackMarkdown
from tests.conftest import RunningBot, StartBot
from tests.emulators.openai_api import OpenAIEmulator, Reply
from tests.emulators.slack import SlackEmulator
from tests.test_streaming import has_feedback_buttons, shown

CHANNEL = "C700"
DM = "D700"
BOT = "UBOT"
ANSWER = (
    "First paragraph of the answer, long enough to be streamed in several pieces.\n\n"
    "Second paragraph, which comes later on, with a **bold** word and the end."
)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def _next_prompt_holds(
    slack: SlackEmulator, llm: OpenAIEmulator, channel: str, thread: str | None
) -> None:
    """The answer is in the conversation: the next question's prompt carries it."""
    if thread is None:
        await slack.post_user_message(channel, "and then?")
    else:
        await slack.post_user_message(channel, "and then?", thread_ts=thread)
    await slack.wait_for(lambda: len(llm.requests) == 2, what="the follow-up's model call")
    assert ANSWER in [m["content"] for m in llm.requests[-1]["messages"]]


async def test_a_whole_answer_whose_post_answer_is_lost_shows_once(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A DM's answer, posted whole; the post's answer is lost (and the next two would be too, if
    the client made the call again): Slack is asked, and the answer is found there."""
    caplog.set_level(logging.INFO)
    slack.fail_next("chat.postMessage", drop=True, after=True, times=3)
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert [c.args["channel"] for c in slack.calls_to("conversations.history")] == [DM]
    assert "lost post found in slack" in caplog.text
    await _next_prompt_holds(slack, llm, DM, None)
    await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()
    assert len(slack.bot_messages(DM)) == 2 and _errors(caplog) == []


async def test_a_post_that_never_landed_is_made_again_after_slack_shows_it_missing(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection breaks before Slack acts: to the bot, the same lost answer. Slack shows no
    such message, so the post is made again, once."""
    caplog.set_level(logging.INFO)
    slack.fail_next("chat.postMessage", drop=True)
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [0, 200]
    assert "lost post not in slack" in caplog.text and _errors(caplog) == []


@pytest.mark.parametrize("method", ["chat.startStream", "chat.appendStream", "chat.stopStream"])
async def test_a_streamed_answer_whose_call_answer_is_lost_shows_once_and_whole(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture, method: str
) -> None:
    """The stream's start, an append, or its stop is carried out and its answer lost: the
    answer is one message, its text exactly the model's, once, with the buttons."""
    caplog.set_level(logging.INFO)
    llm.chunk_delay, llm.chunk_chars = 0.05, 12  # several appends before the answer is whole
    slack.fail_next(method, drop=True, after=True)
    llm.enqueue(Reply(ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert len(slack.calls_to(method)) >= 1 and slack.calls_to(method)[0].status == 0
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert shown(answer) == SlackMarkdown.format(ANSWER)
    assert has_feedback_buttons(answer)
    assert len(slack.calls_to("chat.startStream")) == 1
    assert _errors(caplog) == []
    await _next_prompt_holds(slack, llm, CHANNEL, ts)


async def test_a_notice_whose_post_answer_is_lost_shows_once(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http", MAX_MESSAGE_CHARS="100")
    slack.fail_next("chat.postMessage", drop=True, after=True, times=3)
    await slack.post_user_message(DM, "x" * 200)
    [notice] = await slack.wait_for_bot_messages(DM)
    await running.settle()
    assert len(slack.calls_to("conversations.history")) == 1
    assert notice["text"].startswith("Your message is 200 characters long")
    assert len(slack.calls_to("chat.postMessage")) == 1 and not llm.requests
