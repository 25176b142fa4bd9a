"""The rolling summary: turns that leave the window are summarised by the model in the background,
the summary reaches later requests, the answer never waits for it, one job runs per conversation,
and a deleted message does not live on in it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from bot.context import SUMMARY_INSTRUCTIONS, ContextBuilder
from bot.llm import ChatModel
from bot.store import Store, ThreadKey, Turn
from bot.tokens import TokenBudget, TokenCounter
from tests.conftest import RunningBot, StartBot
from tests.emulators.openai_api import OpenAIEmulator, SlowFirstToken, default_reply
from tests.emulators.slack import SlackEmulator

CHANNEL = "C300"
BOT = "UBOT"
WINDOW, ANSWER = 1200, 200
SUMMARY_DELAY = 2.0
INSTRUCTIONS_START = SUMMARY_INSTRUCTIONS[:40]


def is_summary_request(messages: list[dict]) -> bool:
    return messages[0]["content"].startswith(INSTRUCTIONS_START)


def summary_requests(llm: OpenAIEmulator) -> list[dict]:
    return [r for r in llm.requests if is_summary_request(r["messages"])]


def answer_requests(llm: OpenAIEmulator) -> list[dict]:
    return [r for r in llm.requests if not is_summary_request(r["messages"])]


def tags(text: str) -> list[str]:
    return sorted(set(re.findall(r"#k\d+", text)))


def tag_summary(delay: float) -> Callable[[list[dict]], str | SlowFirstToken]:
    """Summaries take `delay` seconds and list the #tags they were given; answers echo at once."""

    def reply(messages: list[dict]) -> str | SlowFirstToken:
        if is_summary_request(messages):
            text = "- error E1234 on check api-prod; tried: " + " ".join(tags(messages[-1]["content"]))
            return SlowFirstToken(delay, text)
        return default_reply(messages)

    return reply


async def ask(slack: SlackEmulator, root: str, text: str, count: int) -> float:
    """Post in the thread, wait for the bot's `count`th answer there; seconds it took."""
    started = time.monotonic()
    await slack.post_user_message(CHANNEL, text, thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=count, timeout=15)
    return time.monotonic() - started


async def start_small(start_bot: StartBot) -> RunningBot:
    return await start_bot("http", MAX_CONTEXT_TOKENS=str(WINDOW), MAX_ANSWER_TOKENS=str(ANSWER))


async def test_summary_is_made_in_the_background_and_reaches_later_requests(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis
) -> None:
    running = await start_small(start_bot)
    llm.reply = tag_summary(SUMMARY_DELAY)
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> check api-prod fails with E1234 #k0")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    answers = 1
    while not summary_requests(llm):
        answers += 1
        assert answers < 40, "no summary was ever asked for"
        await ask(slack, root, f"attempt #k{answers}: restarted the agent, still E1234 on api-prod", answers)

    # The summary takes SUMMARY_DELAY; a question asked meanwhile is answered without waiting.
    answers += 1
    await ask(slack, root, "anything else I can try? #k999", answers)
    # Answered while the summary was still being made: the answer did not wait for it.
    assert await redis.hget(f"conv:T1:{CHANNEL}:{root}:meta", "summary") is None

    await running.settle(15)
    summary = await redis.hget(f"conv:T1:{CHANNEL}:{root}:meta", "summary")
    assert summary and summary.startswith("- error E1234 on check api-prod")
    request = summary_requests(llm)[0]["messages"]
    assert "error codes" in request[0]["content"] and "already tried" in request[0]["content"]
    assert "ann: check api-prod fails with E1234 #k0" in request[1]["content"]  # attributed
    assert "#k0" in summary  # the oldest turns are the ones folded in

    answers += 1
    await ask(slack, root, "and now? #k1000", answers)
    system = answer_requests(llm)[-1]["messages"][0]["content"]
    assert summary in system
    assert system.index("Summary of the earlier conversation") < system.index('You are answering "ann"')
    asked = tags(
        " ".join(m["content"] for m in answer_requests(llm)[-1]["messages"][1:] if m["role"] == "user")
    )
    assert asked and not set(asked) & set(tags(summary))  # a turn is sent as itself or summarised
    assert len(summary_requests(llm)) == 1  # one job, not one per turn
    counter = TokenCounter("test-model")
    for request in llm.requests:
        assert counter.count_messages(request["messages"]) <= WINDOW - ANSWER + 5


async def test_a_2000_message_thread_is_answered_from_summary_and_recent_turns(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis
) -> None:
    window, answer = 4000, 500
    running = await start_bot("http", MAX_CONTEXT_TOKENS=str(window), MAX_ANSWER_TOKENS=str(answer))
    llm.reply = tag_summary(0.3)
    root = slack.seed_message(CHANNEL, "the sync job fails with E1234 #k0", user="U2")
    for i in range(1, 2000):
        slack.seed_message(
            CHANNEL, f"update #k{i}: still failing", user="U3" if i % 2 else "U2", thread_ts=root
        )
    await slack.post_user_message(CHANNEL, f"<@{BOT}> where are we with this?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1, timeout=30)
    # The answer is out while the summary of what did not fit has not even started to arrive.
    assert await redis.hget(f"conv:T1:{CHANNEL}:{root}:meta", "summary") is None
    assert len(slack.calls_to("conversations.replies")) == 11  # 2,001 messages, 200 a page
    first = answer_requests(llm)[0]["messages"]
    assert TokenCounter("test-model").count_messages(first) <= window - answer
    assert first[-2]["content"] == "cem: update #k1999: still failing"
    await running.settle(60)
    assert len(summary_requests(llm)) >= 2  # the fallen-out history, folded in chunks

    await slack.post_user_message(CHANNEL, "so what is left to try?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    messages = answer_requests(llm)[-1]["messages"]
    assert "#k0" in messages[0]["content"]  # the oldest message reaches the model via the summary
    assert messages[-1]["content"] == "ann: so what is left to try?"
    assert messages[-2]["role"] == "assistant"
    assert messages[-3]["content"] == "ann: where are we with this?"
    assert TokenCounter("test-model").count_messages(messages) <= window - answer


async def test_a_question_sent_while_the_answer_before_it_was_written_is_never_lost_to_the_summary(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis
) -> None:
    """Each question is sent while the answer to the one before is being written, as people do:
    its Slack ts is older than that answer's, though it is stored after it. Once the summary ends
    at such an answer, the question after it must still reach the model, as itself or in a later
    summary. (Before, a turn was taken for summarised when its ts was not after the summary's
    last, so that question fell out of the prompt and of every later summary.)"""
    running = await start_small(start_bot)
    padding = " the sync job logs E1234 again and again" * 3

    def reply(messages: list[dict]) -> str | SlowFirstToken:
        if is_summary_request(messages):
            return "- tried: " + " ".join(tags(messages[-1]["content"]))  # every tag it was given
        return SlowFirstToken(0.4, "Try restarting the agent, then check the sync job's logs again.")

    llm.reply = reply
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the sync job fails #k0{padding}")
    meta = f"conv:T1:{CHANNEL}:{root}:meta"
    asked = ["#k0"]
    for n in range(1, 80):
        # Question n goes out while the answer to question n - 1 is being written.
        await slack.wait_for(lambda n=n: len(answer_requests(llm)) == n, timeout=15, what=f"question {n - 1}")
        await slack.post_user_message(CHANNEL, f"still failing #k{n}{padding}", thread_ts=root)
        asked.append(f"#k{n}")
        await slack.wait_for_bot_messages(CHANNEL, root, count=n, timeout=15)
        upto = await redis.hget(meta, "summary_upto")
        if upto in {m["ts"] for m in slack.bot_messages(CHANNEL, root)}:
            break  # the summary ends at an answer: the next question is older than it
    else:
        raise AssertionError("no summary ever ended at an answer")
    await slack.wait_for_bot_messages(CHANNEL, root, count=len(asked), timeout=15)
    await running.settle(15)
    await slack.post_user_message(CHANNEL, f"so what now? #kend{padding}", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=len(asked) + 1, timeout=15)
    await running.settle(15)

    request = answer_requests(llm)[-1]["messages"]  # the summary and the turns after it, at once
    summary, turns = request[0]["content"], " ".join(m["content"] for m in request[1:])
    assert "Summary of the earlier conversation" in summary
    missing = set(asked) - set(tags(summary)) - set(tags(turns))
    assert not missing, f"questions the model never saw: {sorted(missing)}"


async def test_a_deleted_message_does_not_live_on_in_the_summary(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis
) -> None:
    running = await start_small(start_bot)
    llm.reply = lambda messages: (
        "- tried: " + " ".join(tags(messages[-1]["content"]))
        if is_summary_request(messages)
        else default_reply(messages)
    )
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my token is #k0 oops")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    answers = 1
    meta = f"conv:T1:{CHANNEL}:{root}:meta"
    while not await redis.hget(meta, "summary"):
        answers += 1
        assert answers < 40, "no summary was ever made"
        await ask(slack, root, f"attempt #k{answers}: restarted the agent, still E1234 on api-prod", answers)
        await running.settle()
    assert "#k0" in await redis.hget(meta, "summary")

    await slack.delete_message(CHANNEL, root)
    for _ in range(50):
        if await redis.hget(meta, "summary") is None:
            break
        await asyncio.sleep(0.05)
    assert await redis.hget(meta, "summary") is None  # dropped, not kept with the deleted text

    await ask(slack, root, "next step? #k500", answers + 1)
    await running.settle()
    await ask(slack, root, "and then? #k501", answers + 2)
    await running.settle()
    rebuilt = await redis.hget(meta, "summary")
    assert rebuilt and "#k2" in rebuilt and "#k0" not in rebuilt  # rebuilt without it
    for request in llm.requests[-3:]:
        assert "#k0" not in str(request["messages"])


async def test_one_summary_job_per_conversation_across_processes(redis_url: str, llm: OpenAIEmulator) -> None:
    llm.reply = tag_summary(0.5)
    key = ThreadKey("T1", CHANNEL, "1700000000.000000")
    stores = [Store(redis_url, conversation_ttl_days=1) for _ in range(3)]
    models = [
        ChatModel(
            api_key=llm.api_key,
            base_url=llm.base_url,
            model="test-model",
            timeout_seconds=10,
            max_retries=0,
            retry_base_seconds=0.05,
            retry_max_seconds=0.1,
        )
        for _ in stores
    ]
    try:
        turns = [
            Turn(
                role="user",
                text=f"attempt #k{i}: still E1234 on api-prod",
                ts=f"1700000001.{i:06d}",
                name="ann",
            )
            for i in range(200)
        ]
        await stores[0].append_turns(key, *turns)
        builders = [
            ContextBuilder(
                store,
                "Be brief.",
                counter=TokenCounter("test-model"),
                budget=TokenBudget(WINDOW, ANSWER),
                model=model,
            )
            for store, model in zip(stores, models, strict=True)
        ]
        assert (await builders[0].prompt_for(key)).needs_summary
        # Three processes each schedule a job for the same conversation at once.
        await asyncio.gather(*(b.summarise(key) for b in builders), builders[0].summarise(key))
        state = await stores[1].summary(key)
        assert state.text and "#k0" in state.text
        assert len(summary_requests(llm)) == len({r["messages"][1]["content"] for r in llm.requests})
        first_chunk = [r for r in summary_requests(llm) if "#k0:" in r["messages"][1]["content"]]
        assert len(first_chunk) == 1  # nobody else summarised the same turns
        prompt = await builders[2].prompt_for(key)
        assert not prompt.needs_summary and state.text[:60] in prompt.messages[0]["content"]
    finally:
        for store, model in zip(stores, models, strict=True):
            await store.close()
            await model.close()
