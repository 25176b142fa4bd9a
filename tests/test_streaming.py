"""What a user sees while an answer is written: it appears at once, grows, settles into its final
form with feedback buttons, and never trips Slack's rate limits, at one answer or a hundred.

The Slack emulator enforces per-method, per-workspace budgets here (a minute of Slack in three
seconds, matching the bot's SLACK_RATE_LIMIT_SCALE in conftest) and logs every 429.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time

from redis.asyncio import Redis

from bot.formatting import SlackMarkdown, to_mrkdwn
from bot.store import ThreadKey
from bot.turn import DELIVERY_FAILED, TURN_FAILED
from tests.conftest import RATE_SCALE, RunningBot, StartBot
from tests.emulators.openai_api import OpenAIEmulator, Reply
from tests.emulators.slack import SlackEmulator

CHANNEL = "C700"
BOT = "UBOT"

MARKDOWN_ANSWER = """# Rotating a key

You can rotate it **without downtime**:

1. Create a *new* key in [the console](https://example.com/keys?a=1&b=2).
2. Deploy it, then revoke the old one with `revoke --old`.

```bash
curl -H "Authorization: Bearer $KEY" https://api.example.com/v1/ping
```

| Step | Time |
|------|------|
| create | 1 min |
| deploy | 5 min |

Don't ping @channel for this; <!here> is not needed either."""


def shown(message: dict) -> str:
    """The Markdown a message shows: its markdown block(s), else its text."""
    markdown = [b["text"] for b in message.get("blocks") or [] if b.get("type") == "markdown"]
    return "".join(markdown) if markdown else message["text"]


def has_feedback_buttons(message: dict) -> bool:
    return any(
        e.get("type") == "feedback_buttons"
        for b in message.get("blocks") or []
        if b.get("type") == "context_actions"
        for e in b.get("elements", [])
    )


def assert_only_grows(states: list[str]) -> None:
    for before, after in itertools.pairwise(states):
        assert after.startswith(before), f"a streamed state shrank: {before[-40:]!r} -> {after[-40:]!r}"


async def test_streamed_answer_grows_and_ends_as_the_formatted_model_output(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    llm.chunk_delay = 0.02
    llm.enqueue(Reply(MARKDOWN_ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I rotate my key?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()

    expected = SlackMarkdown.format(MARKDOWN_ANSWER).strip()
    assert answer["text"] == expected
    states = slack.stream_states(CHANNEL, answer["ts"])
    assert len(states) >= 3, "the answer should appear and grow, not arrive at once"
    assert_only_grows(states)
    assert states[-1] == expected
    [start] = slack.calls_to("chat.startStream")
    assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == ("U1", "T1")
    assert start.args["thread_ts"] == ts
    [stop] = slack.calls_to("chat.stopStream")
    assert has_feedback_buttons(answer) and stop.args["blocks"][0]["type"] == "context_actions"
    assert slack.calls_to("chat.postMessage") == [] and slack.calls_to("chat.update") == []
    assert slack.rate_limited == []
    assert not slack.statuses.get((CHANNEL, ts))
    status = slack.calls_to("assistant.threads.setStatus")[0].args
    assert status["status"] == "is thinking…" and status["loading_messages"]
    [*_, turn] = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, ts), 10)
    assert (turn.role, turn.text, turn.ts) == ("assistant", MARKDOWN_ANSWER, answer["ts"])
    assert turn.prompt_tokens and turn.completion_tokens == -(-len(MARKDOWN_ANSWER) // 4)
    assert turn.finish_reason == "stop"


async def test_where_streaming_is_refused_the_posted_answer_ends_the_same(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    slack.refuse_streaming("channel")
    llm.chunk_delay = 0.03
    llm.enqueue(Reply(MARKDOWN_ANSWER))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I rotate my key?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()

    expected = SlackMarkdown.format(MARKDOWN_ANSWER).strip()
    assert shown(answer) == expected
    assert answer["text"] == to_mrkdwn(expected)
    assert "<https://example.com/keys?a=1&amp;b=2|the console>" in answer["text"]
    assert has_feedback_buttons(answer)
    # Posted once, then grown by chat.update; each version longer than the one before.
    [post] = slack.calls_to("chat.postMessage")
    versions = [e.get("text") for e in answer["edits"]]
    assert len(versions) >= 2 and post.args["markdown_text"] == versions[0]
    assert_only_grows(versions)
    assert expected.startswith(versions[-1])
    assert [c.response["error"] for c in slack.calls_to("chat.startStream")] == ["channel_type_not_supported"]
    assert slack.rate_limited == []


async def test_top_level_dm_answer_is_posted_with_a_reaction_meanwhile(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.enqueue(Reply("Hello **there** & welcome"))
    ts = await slack.post_user_message("D700", "hi")
    [answer] = await slack.wait_for_bot_messages("D700")
    await bot.settle()
    assert shown(answer) == "Hello **there** & welcome"
    assert answer["text"] == "Hello *there* &amp; welcome"
    assert slack.calls_to("chat.startStream") == []  # Slack streams only replies in threads
    assert [c.method for c in slack.calls if c.method.startswith("reactions.")] == [
        "reactions.add",
        "reactions.remove",
    ]
    assert "reactions" not in next(m for m in slack.messages("D700") if m["ts"] == ts)


async def test_stream_that_ends_early_continues_in_a_posted_message(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.chunk_delay = 0.06  # long enough for an append before the answer is whole
    text = "First paragraph of the answer.\n\nSecond paragraph, which comes later on."
    llm.enqueue(Reply(text))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: len(slack.calls_to("chat.appendStream")) == 1)
    slack.end_stream(CHANNEL, slack.bot_messages(CHANNEL, ts)[0]["ts"])
    messages = await slack.wait_for_bot_messages(CHANNEL, ts, count=2)
    await bot.settle()
    streamed, posted = messages
    assert shown(posted).startswith(text[len(streamed["text"]) :].lstrip())
    # The stream may end inside a word; the posted message carries on from exactly there.
    joined = "".join(streamed["text"].split()) + "".join(shown(posted).split())
    assert joined == "".join(text.split()), "nothing lost or repeated across the two messages"
    assert has_feedback_buttons(posted)


async def test_user_pressing_stop_ends_the_generation(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    llm.chunk_delay, llm.chunk_chars = 0.05, 4
    words = "word " * 200  # ten seconds of tokens
    llm.enqueue(Reply(words.strip()))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> go on and on")
    await slack.wait_for(lambda: len(slack.calls_to("chat.appendStream")) >= 1)
    [answer] = slack.bot_messages(CHANNEL, ts)
    slack.press_stop(CHANNEL, answer["ts"])
    await bot.settle()
    [stream] = llm.streams
    assert stream.finished_at is None, "the bot should stop reading the model (its stream is cut)"
    refused = [c for c in slack.calls_to("chat.appendStream") if not c.response["ok"]]
    assert [c.response["error"] for c in refused] == ["stopped_by_user"]
    assert len(answer["text"]) < len(words) / 2
    [*_, turn] = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, ts), 10)
    assert turn.role == "assistant" and len(turn.text) < len(words) / 2
    assert not any("cut off" in m["text"] for m in slack.bot_messages(CHANNEL, ts))


async def test_one_answer_grows_in_many_steps_within_the_tiers(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    bot = await start_bot("socket")
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    llm.chunk_delay, llm.chunk_chars = 0.05, 6
    llm.enqueue(Reply("steady words " * 40))  # about 4.5 s of tokens
    sent = time.monotonic()
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> talk to me")
    await slack.wait_for_bot_messages(CHANNEL, ts, timeout=20)
    await bot.settle()
    updates = [c.at for c in slack.calls if c.method.startswith("chat.") and c.method.endswith("Stream")]
    gaps = [b - a for a, b in itertools.pairwise(updates)]
    print(
        f"\nfirst text after {updates[0] - sent:.2f}s; {len(updates)} stream calls; "
        f"longest gap {max(gaps):.2f}s"
    )
    # How soon and how often is measured by `make bench` (first text), not asserted here.
    assert len(updates) >= 5, gaps
    assert slack.rate_limited == []


def _expected(question: str) -> str:
    return f"Answer: {question} " + "and some more words " * 12


async def _many_answers(
    running: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, count: int, prefix: str = "C8"
) -> tuple[list[tuple[str, str, str]], float]:
    llm.chunk_delay, llm.chunk_chars = 0.1, 8  # each answer streams for about 3.5 s
    llm.reply = lambda messages: _expected(messages[-1]["content"])
    started = time.monotonic()
    asked = await asyncio.gather(
        *(slack.post_user_message(f"{prefix}{i:02d}", f"<@{BOT}> question {i}") for i in range(count))
    )
    asked_in = [(f"{prefix}{i:02d}", ts, f"ann: question {i}") for i, ts in enumerate(asked)]
    for channel, ts, _ in asked_in:
        await slack.wait_for_bot_messages(channel, ts, timeout=60)
    await running.settle(60)
    return asked_in, time.monotonic() - started


async def test_a_hundred_concurrent_answers_all_complete_without_a_single_429(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    running = await start_bot("socket")
    await _many_answers(running, slack, llm, 1, prefix="C9")
    alone = len(slack.calls_to("chat.appendStream"))
    await asyncio.sleep(60 / RATE_SCALE * 1.1)  # a fresh window for the crowd
    slack.calls.clear()

    asked, elapsed = await _many_answers(running, slack, llm, 100)
    for channel, ts, question in asked:
        [answer] = slack.bot_messages(channel, ts)
        assert shown(answer) == SlackMarkdown.format(_expected(question)).strip(), channel
        assert has_feedback_buttons(answer)
    assert slack.rate_limited == []
    appends = len(slack.calls_to("chat.appendStream"))
    streamed = len(slack.calls_to("chat.startStream"))
    print(
        f"\none answer: {alone} appendStream; 100 answers in {elapsed:.1f}s: {streamed} streamed "
        f"with {appends} appendStream, {len(slack.calls_to('chat.update'))} chat.update, "
        f"{len(slack.calls_to('chat.postMessage'))} chat.postMessage"
    )
    # Each answer streamed in the crowd got fewer, larger updates than the lone answer did.
    assert streamed and appends / streamed < alone / 1.5


async def test_a_hundred_concurrent_answers_complete_through_slacks_429s(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    slack.inject_429s(every=9)
    asked, _ = await _many_answers(await start_bot("socket"), slack, llm, 100)
    assert slack.rate_limited, "the emulator should have answered some calls with 429"
    for channel, ts, question in asked:
        [answer] = slack.bot_messages(channel, ts)
        assert shown(answer) == SlackMarkdown.format(_expected(question)).strip(), channel


def _fences_balanced(text: str) -> bool:
    return sum(1 for line in text.split("\n") if line.strip().startswith("```")) % 2 == 0


def _long_answer(length: int = 15_000) -> str:
    parts: list[str] = []
    i = 0
    while sum(map(len, parts)) < length:
        parts.append(
            f"## Part {i}\n\nSome explanation of step {i}, with **bold** words & a [link](https://x.io/{i})."
        )
        parts.append(
            "```python\n" + "\n".join(f"print('line {i}.{j}')  # <tag>" for j in range(25)) + "\n```"
        )
        i += 1
    return "\n\n".join(parts)


async def test_a_15000_character_answer_arrives_whole_split_at_blocks_within_limits(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    slack.enforce_rate_limits(time_scale=1 / RATE_SCALE)
    raw = _long_answer()
    assert len(raw) >= 15_000
    llm.chunk_chars = 200
    llm.enqueue(Reply(raw))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    messages = await slack.wait_for_bot_messages(CHANNEL, ts, count=2, timeout=20)
    await bot.settle()
    assert len(messages) == 2
    texts = [shown(m) for m in messages]
    for text in texts:
        assert len(text) <= 12_000
        assert _fences_balanced(text)
    assert texts[0].endswith("```") and texts[1].startswith("## Part"), "cut after a code block"
    formatted = SlackMarkdown.format(raw).strip()
    assert "\n\n".join(texts) == formatted, "nothing lost, nothing added, cut at a blank line"
    assert has_feedback_buttons(messages[-1]) and not has_feedback_buttons(messages[0])
    assert slack.rate_limited == []

    # The same answer where streaming is refused: the same messages.
    slack.refuse_streaming("channel")
    llm.enqueue(Reply(raw))
    await slack.post_user_message(CHANNEL, "once more", thread_ts=ts)
    await slack.wait_for_bot_messages(CHANNEL, ts, count=4, timeout=20)
    await bot.settle()
    assert [shown(m) for m in slack.bot_messages(CHANNEL, ts)[2:]] == texts


async def test_feedback_click_is_stored_with_its_answer_and_acknowledged(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis
) -> None:
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> was this useful?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()
    delivery = await slack.click_feedback(CHANNEL, answer["ts"], user="U2", positive=False)
    assert delivery.acked
    await slack.wait_for(lambda: bool(slack.calls_to("chat.postEphemeral")))
    [thanks] = slack.calls_to("chat.postEphemeral")
    assert (thanks.args["user"], thanks.args["channel"], thanks.args["thread_ts"]) == ("U2", CHANNEL, ts)
    assert re.search("thank", thanks.args["text"], re.IGNORECASE)
    [vote] = await bot.bot.store.feedback_votes(ThreadKey("T1", CHANNEL, ts))
    assert (vote.team, vote.channel, vote.thread, vote.answer_ts, vote.user, vote.vote) == (
        "T1",
        CHANNEL,
        ts,
        answer["ts"],
        "U2",
        "bad",
    )
    assert 0 < await redis.ttl(f"feedback:T1:{CHANNEL}:{ts}") <= 30 * 86400


async def test_an_answer_slack_will_not_finish_is_closed_before_the_notice_under_it(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Slack refuses a streamed answer's final stop for good (`msg_too_long`): the stream is
    stopped bare, and only then does "something went wrong" go under it. Before, the notice went
    under a stream left open for good (Slack showed the answer as still being written)."""
    llm.chunk_delay, llm.chunk_chars = 0.05, 12  # still written when it first shows: streamed
    llm.enqueue(Reply("First paragraph of the answer.\n\nSecond paragraph, which comes later on."))
    slack.fail_next("chat.stopStream", error="msg_too_long")
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    noticed = lambda: DELIVERY_FAILED in [m["text"] for m in slack.bot_messages(CHANNEL, ts)]  # noqa: E731
    await slack.wait_for(noticed, what="the notice")
    await bot.settle()
    streamed, notice = slack.bot_messages(CHANNEL, ts)
    assert notice["text"] == DELIVERY_FAILED and streamed["text"]
    assert not streamed.get("streaming"), "the answer was left streaming"
    calls = [(c.method, c.status, c.response.get("ok")) for c in slack.calls]
    closed = calls.index(("chat.stopStream", 200, True))
    assert closed < [c.method for c in slack.calls].index("chat.postMessage"), "closed after the notice"


async def test_a_turn_that_fails_while_its_answer_streams_closes_it_before_the_notice_under_it(
    bot: RunningBot, redis: Redis, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Slack refuses a streamed answer's final stop (not for good: the answer would be kept for
    a retry), and Redis refuses every write as the turn counts that attempt (out of memory): the
    turn fails in a way it did not foresee and ends with "something went wrong on my side". The
    stream is stopped bare before that notice. Before, the notice went under a stream left open
    for good."""
    llm.chunk_delay, llm.chunk_chars = 0.05, 12  # still written when it first shows: streamed
    llm.enqueue(Reply("First paragraph of the answer.\n\nSecond paragraph, which comes later on."))
    stopping = slack.gate("chat.stopStream", lambda args: bool(args.get("blocks")))  # the final stop
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: stopping.waiting == 1, what="the answer's final stop")
    await redis.config_set("maxmemory", 1)  # every write refused at once (`noeviction`)
    try:
        slack.fail_next("chat.stopStream", error="invalid_blocks")
        stopping.opened.set()
        noticed = lambda: TURN_FAILED in [m["text"] for m in slack.bot_messages(CHANNEL, ts)]  # noqa: E731
        await slack.wait_for(noticed, what="the notice")
        await bot.settle()
    finally:
        await redis.config_set("maxmemory", 0)
    streamed, notice = slack.bot_messages(CHANNEL, ts)
    assert notice["text"] == TURN_FAILED and streamed["text"]
    assert not streamed.get("streaming"), "the answer was left streaming"
    calls = [(c.method, c.status, c.response.get("ok")) for c in slack.calls]
    closed = calls.index(("chat.stopStream", 200, True))
    assert closed < [c.method for c in slack.calls].index("chat.postMessage"), "closed after the notice"
