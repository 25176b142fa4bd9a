"""The model fails: transient errors are retried (honouring Retry-After), others are not; the user
always gets an answer or a short, human message, and their message stays in the conversation."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.delivery import Ending
from bot.llm import EMPTY, FILTERED, ChatModel, parse_retry_after
from bot.store import ThreadKey
from bot.streaming import NOTES
from tests.conftest import RunningBot
from tests.emulators.openai_api import (
    Disconnect,
    OpenAIEmulator,
    Raw,
    Reply,
    SlowFirstToken,
    Status,
    Truncated,
    sse_chunk,
)
from tests.emulators.slack import SlackEmulator

CHANNEL = "C300"
BOT = "UBOT"


async def test_rate_limited_then_answered(bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator) -> None:
    llm.enqueue(Status(429, retry_after=0.3), Status(503))
    started = time.monotonic()
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert answer["text"] == "Answer: ann: hello?"
    assert len(llm.requests) == 3
    assert time.monotonic() - started >= 0.3  # Retry-After was honoured


async def test_bad_request_is_not_retried_and_the_user_gets_a_friendly_message(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.enqueue(Status(400, message="context_length_exceeded: secret internals"))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> a question")
    [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert len(llm.requests) == 1
    assert reply["text"].startswith("Sorry, the language model refused this request")
    assert "secret internals" not in reply["text"] and "Error" not in reply["text"]

    # The question stays in the conversation: the next turn carries it.
    await slack.post_user_message(CHANNEL, "any luck?", thread_ts=ts)
    await slack.wait_for_bot_messages(CHANNEL, ts, count=2)
    await bot.settle()
    assert [m["content"] for m in llm.requests[-1]["messages"][1:]] == [
        "ann: a question",
        "ann: any luck?",
    ]


async def test_an_answer_of_only_blanks_gets_a_friendly_message_and_nothing_else(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    # Its blanks come one by one over 1.3 s, well across the moment an answer waits before it
    # shows (0.1 s): in 8-character pieces, 0.15 s, a process that read them late found them whole.
    llm.chunk_delay, llm.chunk_chars = 0.05, 1
    llm.reply = lambda messages: " \n\n  \n " * 4
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> say nothing")
    [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await asyncio.sleep(0.5)  # time for anything more to show up, if there were anything
    await bot.settle()
    assert reply["text"] == EMPTY
    assert len(slack.bot_messages(CHANNEL, ts)) == 1 and not slack.calls_to("chat.startStream")
    assert not slack.statuses.get((CHANNEL, ts))


async def test_model_down_after_retries_gives_a_friendly_message_and_clears_the_status(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.enqueue(*[Status(500)] * 5)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> anyone home?")
    [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert len(llm.requests) == 5  # 1 + LLM_MAX_RETRIES (4)
    assert reply["text"].startswith("Sorry, I couldn't reach the language model")
    assert not slack.statuses.get((CHANNEL, ts))


async def test_disconnect_before_any_text_is_retried(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.enqueue(Disconnect(after_chunks=0))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> stream please")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert answer["text"] == "Answer: ann: stream please"
    assert len(llm.requests) == 2


async def test_mid_stream_disconnect_keeps_the_partial_answer_with_a_note(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.chunk_delay = 0.02
    llm.enqueue(Disconnect(after_chunks=3, text="The first part. And then the rest."))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> stream please")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    # Not retried: text was already on its way to Slack; what came stays, with the note.
    assert len(llm.requests) == 1
    assert answer["text"] == f"The first part. And then\n\n{NOTES[Ending.CUT_OFF]}"
    assert not answer.get("streaming")
    assert not slack.statuses.get((CHANNEL, ts))
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, ts), 10)
    assert [(t.role, t.text, t.finish_reason) for t in stored][-1] == (
        "assistant",
        "The first part. And then",
        None,
    )


async def test_answer_cut_by_the_length_limit_says_so(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.enqueue(Truncated("A long answer that the model had to"))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> explain everything")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    assert answer["text"] == f"A long answer that the model had to\n\n{NOTES[Ending.TRUNCATED]}"
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, ts), 10)
    assert stored[-1].finish_reason == "length"


@pytest.mark.parametrize("shown", ["some text first", "nothing first"])
async def test_an_answer_the_content_filter_stops_says_so(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, shown: str
) -> None:
    """Not "the model stopped responding, say continue" (nor "an empty answer, ask again"):
    asked again, the filter would stop it again."""
    text = "Here is how to" if shown == "some text first" else ""
    filtered = (sse_chunk(text),) if text else ()
    llm.enqueue(Raw(*filtered, sse_chunk(finish_reason="content_filter"), "data: [DONE]\n\n"))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> something filtered")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    if text:
        assert answer["text"] == f"{text}\n\n{NOTES[Ending.FILTERED]}"
    else:
        assert answer["text"] == FILTERED
    assert len(llm.requests) == 1


async def test_slow_first_token_times_out_and_is_retried(
    start_bot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("socket", LLM_FIRST_TOKEN_TIMEOUT_SECONDS="0.3")
    llm.enqueue(SlowFirstToken(2.0))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert answer["text"] == "Answer: ann: hello?"
    assert len(llm.requests) == 2


async def test_silence_mid_answer_hits_the_idle_timeout_but_a_long_answer_does_not(
    start_bot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("socket", LLM_IDLE_TIMEOUT_SECONDS="0.5", LLM_TIMEOUT_SECONDS="5")
    # Two seconds of steady tokens: far longer than the idle timeout, yet never idle that long.
    llm.chunk_delay, llm.chunk_chars = 0.05, 4
    long_text = "steady words " * 12
    llm.enqueue(Reply(long_text.strip()))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> long one")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert answer["text"] == long_text.strip()

    llm.chunk_delay = 1.0  # now each chunk takes longer than the idle timeout
    llm.enqueue(Reply("slow slow slow"))
    second = await slack.post_user_message(CHANNEL, "again", thread_ts=ts)
    await slack.wait_for_bot_messages(CHANNEL, ts, count=2)
    await running.settle()
    cut = slack.bot_messages(CHANNEL, ts)[-1]
    assert cut["text"] == f"slow\n\n{NOTES[Ending.CUT_OFF]}"
    assert second


async def test_connection_refused_gives_a_friendly_message(
    start_bot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("socket", OPENAI_BASE_URL="http://127.0.0.1:9/v1", LLM_MAX_RETRIES="1")
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> hi")
    [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert reply["text"].startswith("Sorry, I couldn't reach the language model")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_backoff_grows_with_jitter_and_honours_retry_after_within_the_cap() -> None:
    model = ChatModel(
        api_key="k", base_url="http://127.0.0.1:9/v1", model="m", timeout_seconds=1,
        max_retries=5, retry_base_seconds=1, retry_max_seconds=8,
    )  # fmt: skip
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8)]:
        delays = [model.retry_delay(attempt, None) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert len(set(delays)) > 1  # jittered
    assert model.retry_delay(1, 5.0) == 5.0
    assert model.retry_delay(1, 60.0) == 8.0
