"""Slack calls whose answer is lost on the way back: Slack carried the call out, then the
connection broke before its answer arrived (the emulator's `fail_next(..., drop=True,
after=True)`). Slack takes no idempotency key, so a call made again blindly shows a message, or a
piece of a streamed one, twice. Each answer must still show exactly once, whole, with its buttons,
and be kept in the conversation.
"""

from __future__ import annotations

import itertools
import logging
from decimal import Decimal

import pytest

from bot.formatting import SlackMarkdown
from bot.streaming import NOTES, Ending
from bot.turn import DELIVERY_FAILED, INTERRUPTED
from tests.conftest import RunningBot, StartBot
from tests.emulators.openai_api import OpenAIEmulator, Reply, SlowFirstToken, Truncated
from tests.emulators.slack import SlackEmulator
from tests.test_streaming import _long_answer, has_feedback_buttons, shown

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
    llm.chunk_chars = len(ANSWER)  # one piece: written whole before it is first shown, one post
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert not slack.calls_to("chat.update"), "the answer was not posted whole"
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
    llm.chunk_chars = len(ANSWER)  # one piece: written whole before it is first shown, one post
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert not slack.calls_to("chat.update"), "the answer was not posted whole"
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


# From a review of the first version: cases the tests above did not cover.
COMMON = "Sure, here is how to do that in a few steps, one after the other. "
A1 = COMMON + "Restart the agent and check the logs of the sync job for errors. " * 3
A2 = COMMON + "Open the settings page and turn the export option off, then on. " * 3


async def test_a_lost_start_not_carried_out_is_not_taken_for_an_earlier_answer(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Q2 is sent while A1 is written (Q2 older than A1). A2's startStream breaks before Slack
    acts: A2's lookup must not adopt A1, which merely begins like A2."""
    caplog.set_level(logging.INFO)
    llm.chunk_delay, llm.chunk_chars = 0.05, 12
    llm.enqueue(SlowFirstToken(0.5, A1), Reply(A2))
    a1_start = slack.gate("chat.startStream")  # until Q2 is sent: Q2 older than A1, however slow
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I fix the sync?")
    await slack.wait_for(lambda: len(llm.requests) == 1)
    q2 = await slack.post_user_message(CHANNEL, "and the export?", thread_ts=root)
    a1_start.opened.set()
    await slack.wait_for(lambda: len(slack.calls_to("chat.startStream")) == 1)
    # That start is A1's (one answer shown: A1 was not posted whole, before A2 started), and Q2 is
    # older than A1.
    [a1] = slack.bot_messages(CHANNEL, root)
    assert Decimal(q2) < Decimal(a1["ts"])
    slack.fail_next("chat.startStream", drop=True)  # A2's start never reaches Slack
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()
    texts = [shown(m) for m in slack.bot_messages(CHANNEL, root)]
    assert texts[0] == SlackMarkdown.format(A1).strip()
    assert SlackMarkdown.format(A2).strip() in texts, "A2 is not shown whole"


async def test_a_stop_pressed_while_an_append_was_lost_shows_no_more(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.chunk_delay, llm.chunk_chars = 0.05, 4
    words = "word " * 200
    llm.enqueue(Reply(words.strip()))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> go on and on")
    await slack.wait_for(lambda: len(slack.calls_to("chat.appendStream")) >= 1)
    [answer] = slack.bot_messages(CHANNEL, ts)
    slack.fail_next("chat.appendStream", drop=True)  # the next append never reaches Slack
    slack.press_stop(CHANNEL, answer["ts"])
    at_stop = answer["text"]
    await bot.settle()
    after = slack.message(CHANNEL, answer["ts"])["text"]
    assert after == at_stop, "the message grew after the person pressed stop"


LONG = "".join(f"Paragraph {n}: " + "lorem ipsum dolor sit amet " * 20 + "\n\n" for n in range(25)).strip()


async def test_a_complete_answer_whose_lost_post_cannot_be_looked_up_at_once_gets_no_error_notice(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A DM answer of two messages; the last one's post is carried out and its answer lost,
    and the look-up right after meets the same network trouble (all its tries dropped)."""
    llm.chunk_chars = len(LONG)  # one piece: written whole before it is first shown, posted as two messages
    llm.enqueue(Reply(LONG))
    gate = slack.gate("chat.postMessage", when=lambda args: bool(args.get("blocks")))
    await slack.post_user_message(DM, "tell me everything")
    await slack.wait_for(lambda: gate.waiting == 1)
    slack.fail_next("chat.postMessage", drop=True, after=True)
    slack.fail_next("conversations.history", drop=True, times=6)  # each read repeated once by aiohttp
    gate.opened.set()
    await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()
    messages = slack.bot_messages(DM)
    assert has_feedback_buttons(messages[1])
    assert not any(DELIVERY_FAILED in m["text"] for m in messages), "error notice under a complete answer"


async def test_a_complete_answer_whose_stop_and_then_bare_stop_are_lost_gets_no_error_notice(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A long streamed answer; its last stopStream (rest + buttons) is carried out and its
    answer lost; the bare stop after it is dropped too (a second stop is safe to repeat)."""
    llm.chunk_delay, llm.chunk_chars = 0.02, 300
    llm.enqueue(Reply(LONG))
    gate = slack.gate("chat.stopStream", when=lambda args: bool(args.get("blocks")))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me everything")
    await slack.wait_for(lambda: gate.waiting == 1, timeout=15)
    slack.fail_next("chat.stopStream", drop=True, after=True)
    slack.fail_next("chat.stopStream", drop=True)
    gate.opened.set()
    await slack.wait_for(lambda: len(slack.calls_to("chat.stopStream")) >= 3, timeout=15)
    await bot.settle()
    messages = slack.bot_messages(CHANNEL, ts)
    assert has_feedback_buttons(messages[1])
    assert not any(DELIVERY_FAILED in m["text"] for m in messages), "error notice under a complete answer"


async def test_a_lost_post_slack_cannot_be_asked_about_is_settled_by_recovery(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The last post of a two-message answer lands and its answer is lost, and every read of the
    conversation fails for a while: the turn is left to recovery, which finds the answer in
    Slack and keeps it, with no error notice under it and nothing posted twice."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    llm.chunk_chars = len(LONG)  # one piece: written whole before it is first shown
    llm.enqueue(Reply(LONG))
    gate = slack.gate("chat.postMessage", when=lambda args: bool(args.get("blocks")))
    await slack.post_user_message(DM, "tell me everything")
    await slack.wait_for(lambda: gate.waiting == 1)
    slack.fail_next("chat.postMessage", drop=True, after=True)
    slack.fail_next("conversations.history", drop=True, times=18)  # three looks, each tried six times
    gate.opened.set()
    await slack.wait_for(lambda: "answer found posted already" in caplog.text, timeout=20)
    await running.settle()
    messages = slack.bot_messages(DM)
    assert len(messages) == 2 and has_feedback_buttons(messages[1])
    assert not any(DELIVERY_FAILED in m["text"] for m in messages)
    assert "answer delivery deferred" in caplog.text and "error=lost_call_unsettled" in caplog.text
    assert len(slack.calls_to("chat.postMessage")) == 2 and len(llm.requests) == 1
    await slack.post_user_message(DM, "and then?")
    await slack.wait_for(lambda: len(llm.requests) == 2, what="the follow-up's model call")
    assert any(m["content"].startswith("Paragraph 0") for m in llm.requests[-1]["messages"])


@pytest.mark.parametrize("stop_pressed", [False, True], ids=["", "stop pressed"])
async def test_a_lost_start_slack_cannot_be_asked_about_is_finished_whole_by_recovery(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    stop_pressed: bool,
) -> None:
    """A streamed answer's start lands and its answer is lost, and every read of the thread
    fails until the model has finished: the turn is left to recovery with the whole answer in
    its journal. Before, recovery found the start cut short, stopped it and posted "interrupted,
    please ask again" under it; now it gives that message the whole answer and its buttons
    (unless the person pressed stop on it meanwhile: then what shows stays)."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    llm.chunk_delay, llm.chunk_chars = 0.05, 12
    slack.fail_next("chat.startStream", drop=True, after=True)
    slack.fail_next("conversations.replies", drop=True, times=1000)
    llm.enqueue(Reply(ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=20)
    [started] = slack.bot_messages(CHANNEL, ts)
    if stop_pressed:
        slack.press_stop(CHANNEL, started["ts"])
    slack.clear_faults()
    await slack.wait_for(lambda: "resuming interrupted turn" in caplog.text, timeout=20)
    await running.settle()
    [answer] = slack.bot_messages(CHANNEL, ts)
    if stop_pressed:
        assert shown(answer) == shown(started) and not has_feedback_buttons(answer)
        assert not slack.calls_to("chat.update")
        return
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert len(slack.calls_to("chat.startStream")) == 1 and len(llm.requests) == 1
    assert "error=lost_call_unsettled" in caplog.text and _errors(caplog) == []
    await _next_prompt_holds(slack, llm, CHANNEL, ts)


# Slack failing partway: it may have carried the call out before answering 500 (or `ok: false`
# with `internal_error` / `fatal_error`, which Slack documents as "some aspect of the operation
# may have succeeded"). Such an answer is as unsure as a lost one.
GATEWAY_PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


async def test_a_post_slack_fails_partway_is_looked_for_not_made_again(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """slack_sdk's retry of a 500 made the post again, and each repeat showed the answer once
    more: three copies. Now Slack is asked, and the one copy found."""
    caplog.set_level(logging.INFO)
    slack.fail_next("chat.postMessage", status=500, after=True, times=3)
    llm.chunk_chars = len(ANSWER)  # one piece: written whole before it is first shown, one post
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert not slack.calls_to("chat.update"), "the answer was not posted whole"
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert len(slack.bot_messages(DM)) == 1
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [500]
    assert "lost post found in slack" in caplog.text and _errors(caplog) == []
    await _next_prompt_holds(slack, llm, DM, None)


async def test_a_post_answered_with_a_gateway_page_is_made_again_once_slack_shows_it_missing(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy in front of Slack answers 502 with an HTML page: slack_sdk raises a SlackApiError
    whose `response` is aiohttp's, not Slack's JSON. The post may or may not have reached Slack."""
    caplog.set_level(logging.INFO)
    slack.fail_next("chat.postMessage", status=502, body=GATEWAY_PAGE)
    llm.chunk_chars = len(ANSWER)  # one piece: written whole before it is first shown, one post
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert not slack.calls_to("chat.update"), "the answer was not posted whole"
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [502, 200]
    assert "lost post not in slack" in caplog.text and _errors(caplog) == []


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not landed"])
@pytest.mark.parametrize("body_type", ["text/plain", "text/html"])
async def test_a_post_answered_200_with_a_page_not_slacks_is_looked_for(
    bot: RunningBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    body_type: str,
    landed: bool,
) -> None:
    """Something between the bot and Slack answers 200 with a body of its own: the post may or
    may not have reached Slack. Before, a plain-text body made slack_sdk's own check raise
    AttributeError (the turn crashed under "is thinking…"), and an HTML one read as a failed
    post, made again even when it had landed."""
    caplog.set_level(logging.INFO)
    slack.fail_next("chat.postMessage", status=200, body="ok", body_type=body_type, after=landed)
    llm.chunk_chars = len(ANSWER)  # one piece: written whole before it is first shown, one post
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert not slack.calls_to("chat.update"), "the answer was not posted whole"
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert len(slack.bot_messages(DM)) == 1
    assert len(slack.calls_to("chat.postMessage")) == (1 if landed else 2)
    assert ("lost post found in slack" if landed else "lost post not in slack") in caplog.text
    assert not [r for r in caplog.records if r.exc_info] and _errors(caplog) == []


@pytest.mark.parametrize("method", ["chat.startStream", "chat.appendStream", "chat.stopStream"])
@pytest.mark.parametrize("error", ["internal_error", "fatal_error"])
async def test_a_stream_call_slack_fails_partway_shows_once_and_whole(
    bot: RunningBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    method: str,
    error: str,
) -> None:
    caplog.set_level(logging.INFO)
    llm.chunk_delay, llm.chunk_chars = 0.05, 12
    slack.fail_next(method, error=error, status=500, after=True, times=3)
    llm.enqueue(Reply(ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert slack.calls_to(method)[0].status == 500
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert len(slack.calls_to("chat.startStream")) == 1
    assert _errors(caplog) == []
    await _next_prompt_holds(slack, llm, CHANNEL, ts)


@pytest.mark.parametrize(
    ("status", "body_type"),
    [(502, "text/html"), (502, "application/json"), (200, "text/plain"), (200, "text/html")],
)
@pytest.mark.parametrize("method", ["assistant.threads.setStatus", "reactions.add", "chat.update"])
async def test_a_gateway_page_on_any_other_call_is_a_failed_call_not_a_crash(
    bot: RunningBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    method: str,
    status: int,
    body_type: str,
) -> None:
    """The sign (a channel's status, a DM's reaction) or an answer's update answered with a
    page that is not Slack's: that call failed, logged as `http_<status>`; the answer still
    comes, whole. (A page that claims to be JSON leaves aiohttp's raw response in slack_sdk's
    error, whose reading raised AttributeError; a 200 in plain text made slack_sdk's own check
    of the answer raise AttributeError.)"""
    in_dm = method == "reactions.add"
    channel, question = (DM, "tell me") if in_dm else (CHANNEL, f"<@{BOT}> tell me")
    if method == "chat.update":
        slack.refuse_streaming("channel")  # posted, then grown by chat.update
    llm.chunk_delay, llm.chunk_chars = 0.05, 12
    caplog.set_level(logging.INFO)
    slack.fail_next(method, status=status, body=GATEWAY_PAGE, body_type=body_type, times=3)
    llm.enqueue(Reply(ANSWER))
    ts = await slack.post_user_message(channel, question)
    thread = None if channel == DM else ts
    [answer] = await slack.wait_for_bot_messages(channel, thread)
    await bot.settle()
    assert slack.calls_to(method) and slack.calls_to(method)[0].status == status
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert not [r for r in caplog.records if r.exc_info] and _errors(caplog) == []
    assert f"error=http_{status}" in caplog.text


# Slack renders a message's Markdown into blocks of its own and keeps no block id of a markdown
# block: a lost start or post must be known by its text as Slack gives it back, not as sent.
FORMATTED = (
    "**Short answer:** use the [admin console](https://example.com/keys?a=1&b=2) & restart the agent.\n\n"
    "Then check the logs of the sync job for errors, one by one, until they are clean again."
)


@pytest.mark.parametrize("opening", ["chat.startStream", "chat.postMessage"])
async def test_a_lost_start_is_found_when_slack_gives_its_markdown_back_rendered(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture, opening: str
) -> None:
    """Before, the look compared the Markdown sent with the text read back (`*Short answer:*
    use the <https://…|admin console> &amp; …`), found nothing, and started the answer again:
    two messages."""
    caplog.set_level(logging.INFO)
    slack.render_markdown = True
    if opening == "chat.postMessage":
        slack.refuse_streaming("channel")  # the answer opens with a post, grown by chat.update
    llm.chunk_delay, llm.chunk_chars = 0.05, 40
    slack.fail_next(opening, drop=True, after=True)
    llm.enqueue(Reply(FORMATTED))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I fix the sync?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert slack.calls_to(opening)[0].status == 0
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert shown(answer) == SlackMarkdown.format(FORMATTED) and has_feedback_buttons(answer)
    assert "lost post found in slack" in caplog.text and _errors(caplog) == []


# From a review of the 5xx change: paths it reached that a cut connection reached more rarely.


async def test_a_stop_pressed_while_the_final_stop_failed_partway_is_kept(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The final stopStream (the rest and the buttons) answers `internal_error` without having
    been carried out, and the person presses stop meanwhile: the bare stop finds it pressed, and
    nothing more shows (before, chat.update then gave the message the whole answer)."""
    caplog.set_level(logging.INFO)
    llm.chunk_delay, llm.chunk_chars = 0.02, 300
    llm.enqueue(Reply(LONG))
    gate = slack.gate("chat.stopStream", when=lambda args: bool(args.get("blocks")))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me everything")
    await slack.wait_for(lambda: gate.waiting == 1, timeout=15, what="the final stop")
    [streamed] = [m for m in slack.bot_messages(CHANNEL, ts) if m.get("streaming")]
    at_stop = streamed["text"]
    slack.press_stop(CHANNEL, streamed["ts"])
    slack.fail_next("chat.stopStream", error="internal_error")  # HTTP 200, not carried out
    gate.opened.set()
    await bot.settle()
    after = slack.message(CHANNEL, streamed["ts"])
    assert after["text"] == at_stop and not has_feedback_buttons(after)
    assert [c.response.get("error") for c in slack.calls_to("chat.stopStream")][-2:] == [
        "internal_error",
        "stopped_by_user",
    ]
    assert _errors(caplog) == []


async def test_a_stop_pressed_as_a_long_answer_moves_on_to_its_next_message_shows_no_more(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Stop pressed just as the first message of a long answer is closed to go on in a new one:
    before, the rest of the answer still came, in a second message."""
    llm.chunk_delay, llm.chunk_chars = 0.02, 300
    llm.enqueue(Reply(LONG))
    gate = slack.gate("chat.stopStream", when=lambda args: not args.get("blocks"))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me everything")
    await slack.wait_for(lambda: gate.waiting == 1, timeout=15, what="the first message's stop")
    [first] = slack.bot_messages(CHANNEL, ts)
    slack.press_stop(CHANNEL, first["ts"])
    gate.opened.set()
    await bot.settle()
    assert len(slack.bot_messages(CHANNEL, ts)) == 1


async def test_a_notice_whose_post_failed_is_not_taken_for_an_earlier_notice_alike(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Two too-long DMs of the same length; the second arrives before the first's notice is
    posted, so that notice comes after it. The second's notice post answers 500 (not carried
    out): before, the look found the first's notice, alike, and took it for this one, and the
    second question got none. A notice is now known by its block id, which names its question."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", MAX_MESSAGE_CHARS="100")
    posts = lambda: len(slack.calls_to("chat.postMessage"))  # noqa: E731
    first_notice = slack.gate("chat.postMessage", when=lambda args: posts() == 0)
    second_notice = slack.gate("chat.postMessage", when=lambda args: posts() == 1)
    first = await slack.post_user_message(DM, "x" * 200)
    await slack.wait_for(lambda: first_notice.waiting == 1, what="the first notice")
    second = await slack.post_user_message(DM, "y" * 200)
    first_notice.opened.set()
    await slack.wait_for(lambda: second_notice.waiting == 1, what="the second notice")
    slack.fail_next("chat.postMessage", status=500)
    second_notice.opened.set()
    await running.settle()
    notices = slack.bot_messages(DM)
    assert float(first) < float(second) < float(notices[0]["ts"])
    assert len(notices) == 2 and all(n["text"].startswith("Your message is 200 characters") for n in notices)
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [200, 500, 200]


async def test_a_last_post_that_fails_three_times_and_landed_gets_no_error_notice(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A two-message DM answer whose last post answers 500 three times, the third after Slack
    carried it out: the answer is whole. Before, the third failure was not looked for, and
    "something went wrong" went under the whole answer."""
    caplog.set_level(logging.INFO)
    llm.chunk_chars = len(LONG)  # one piece: written whole before it is first shown, the last post is whole
    llm.enqueue(Reply(LONG))
    gate = slack.gate("chat.postMessage", when=lambda args: bool(args.get("blocks")))
    await slack.post_user_message(DM, "tell me everything")
    await slack.wait_for(lambda: gate.waiting == 1, what="the last post")
    slack.fail_next("chat.postMessage", status=500, times=2)
    slack.fail_next("chat.postMessage", status=500, after=True)
    gate.opened.set()
    await bot.settle()
    messages = slack.bot_messages(DM)
    assert len(messages) == 2 and has_feedback_buttons(messages[1])
    assert not any(DELIVERY_FAILED in m["text"] for m in messages)
    assert _errors(caplog) == []


@pytest.mark.parametrize("body_type", ["text/html", "application/json"])
async def test_a_429_page_on_a_post_is_waited_out(
    bot: RunningBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    body_type: str,
) -> None:
    slack.fail_next(
        "chat.postMessage", status=429, body="<html>Too Many Requests</html>", body_type=body_type
    )
    llm.chunk_chars = len(ANSWER)  # one piece: written whole before it is first shown, one post
    llm.enqueue(Reply(ANSWER))
    await slack.post_user_message(DM, "tell me")
    [answer] = await slack.wait_for_bot_messages(DM)
    await bot.settle()
    assert not slack.calls_to("chat.update"), "the answer was not posted whole"
    assert shown(answer) == SlackMarkdown.format(ANSWER) and has_feedback_buttons(answer)
    assert len(slack.bot_messages(DM)) == 1 and _errors(caplog) == []


# From a review of "recovery finishes a one-message answer it finds begun" (ff2f83b).


async def test_a_begun_answer_with_a_message_after_it_is_not_given_the_whole_answer_again(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack ends the stream of a short answer early: the rest goes in a second message, whose
    post lands and its answer is lost while every read of the thread fails. Recovery reads the
    thread and finds that second message (no buttons) the last: the first (journaled) must not
    be given the whole answer, which would show the second message's text twice."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    llm.chunk_delay, llm.chunk_chars = 0.15, 12
    llm.enqueue(Reply(ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: len(slack.bot_messages(CHANNEL, ts)) == 1, what="the stream's start")
    [started] = slack.bot_messages(CHANNEL, ts)
    slack.fail_next("chat.postMessage", drop=True, after=True)
    slack.fail_next("conversations.replies", drop=True, times=1000)
    slack.end_stream(CHANNEL, started["ts"])
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=20)
    assert len(slack.bot_messages(CHANNEL, ts)) == 2  # the rest landed, unknown to the bot
    slack.clear_faults()
    await slack.wait_for(lambda: "resuming interrupted turn" in caplog.text, timeout=20)
    await running.settle()
    texts = ["".join(shown(m).split()) for m in slack.bot_messages(CHANNEL, ts)]
    assert not [b for a, b in itertools.permutations(texts, 2) if b in a], "a message shown twice"
    assert _errors(caplog) == []


async def test_a_long_answers_later_message_begun_unseen_is_closed_by_recovery(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A long answer's first message showed (journaled); the start of its second landed and its
    answer was lost, with every read of the thread failing: the turn is left to recovery. Before,
    recovery closed the journaled first message (closed already) and noted the answer
    interrupted, and the second, found begun as the bot's last message, was left streaming for
    good. It is closed now too."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    llm.chunk_chars, llm.chunk_delay = 200, 0.02
    llm.enqueue(Reply(_long_answer()))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="its first message")
    slack.fail_next("chat.startStream", drop=True, after=True)  # its second message's: it lands
    slack.fail_next("conversations.replies", drop=True, times=1000)
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=20)
    assert len(slack.bot_messages(CHANNEL, ts)) == 2  # the second landed, unknown to the bot
    slack.clear_faults()
    noted = lambda: INTERRUPTED in [m["text"] for m in slack.bot_messages(CHANNEL, ts)]  # noqa: E731
    await slack.wait_for(noted, timeout=20, what="the note")
    await running.settle()
    messages = slack.bot_messages(CHANNEL, ts)
    assert [m["text"] for m in messages][2:] == [INTERRUPTED]
    assert not [m["ts"] for m in messages if m.get("streaming")], "a message left streaming"
    assert len(llm.requests) == 1 and _errors(caplog) == []


async def test_a_begun_answer_stopped_before_recovery_is_kept_as_shown_in_the_conversation(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """As in `test_a_lost_start_slack_cannot_be_asked_about_is_finished_whole_by_recovery`, the
    person presses stop on the begun message before recovery: what shows stays, and the
    conversation keeps that, not the whole answer from the journal, which the person never saw."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    llm.chunk_delay, llm.chunk_chars = 0.05, 12
    slack.fail_next("chat.startStream", drop=True, after=True)
    slack.fail_next("conversations.replies", drop=True, times=1000)
    llm.enqueue(Reply(ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=20)
    [started] = slack.bot_messages(CHANNEL, ts)
    slack.press_stop(CHANNEL, started["ts"])
    slack.clear_faults()
    await slack.wait_for(lambda: "resuming interrupted turn" in caplog.text, timeout=20)
    await running.settle()
    [answer] = slack.bot_messages(CHANNEL, ts)
    assert shown(answer) == shown(started) and len(shown(answer)) < len(ANSWER) / 2
    await slack.post_user_message(CHANNEL, "and then?", thread_ts=ts)
    await slack.wait_for(lambda: len(llm.requests) == 2, what="the follow-up's model call")
    said = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "assistant"]
    assert said == [shown(started)], said


@pytest.mark.parametrize("lost", ["chat.startStream", "chat.postMessage"])
async def test_an_answer_left_to_recovery_keeps_the_note_of_how_it_ended(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    lost: str,
) -> None:
    """The model's answer reached its length limit; the call that shows it is lost and Slack
    cannot be asked, so recovery finishes it from the journal. Before, the journal kept only the
    text: the answer was shown as if whole, without the note that it stops at the length limit."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    llm.chunk_delay, llm.chunk_chars = 0.05, 12
    slack.fail_next(lost, drop=True, after=True)
    slack.fail_next("conversations.replies" if lost == "chat.startStream" else "conversations.history",
                    drop=True, times=1000)  # fmt: skip
    llm.enqueue(Truncated(ANSWER))
    channel, text = (CHANNEL, f"<@{BOT}> tell me") if lost == "chat.startStream" else (DM, "tell me")
    ts = await slack.post_user_message(channel, text)
    thread = ts if channel == CHANNEL else None
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=20)
    slack.clear_faults()
    await slack.wait_for(lambda: "resuming interrupted turn" in caplog.text, timeout=20)
    await running.settle()
    [answer] = slack.bot_messages(channel, thread)
    assert shown(answer).endswith(NOTES[Ending.TRUNCATED]), shown(answer)
