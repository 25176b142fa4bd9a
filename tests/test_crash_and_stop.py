"""A bot process killed mid-answer, or stopped with SIGTERM: every accepted message still gets
exactly one outcome, from the next process (or another replica), and no thread stays blocked."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.llm import REJECTED
from bot.server import STOP_PAST_GRACE_SECONDS
from bot.store import Accepted, IncomingMessage, LockRenewal, Store
from bot.turn import DELIVERY_FAILED, INTERRUPTED
from tests.bot_process import BotProcess
from tests.conftest import StartBot, bot_env, free_port, wait_until
from tests.emulators.openai_api import Gated, Hang, OpenAIEmulator, Status
from tests.emulators.slack import Delivery, Gate, SlackEmulator
from tests.redis_proxy import HeldReplyProxy
from tests.test_declared_keys import monitored
from tests.test_streaming import _long_answer

pytestmark = pytest.mark.slow

CHANNEL = "C700"
DM = "D700"
BOT = "UBOT"
FAST_RECOVERY = {"THREAD_LOCK_TTL_SECONDS": "1", "RECOVERY_INTERVAL_SECONDS": "0.3"}

SpawnBot = Callable[..., Awaitable[BotProcess]]


@pytest.fixture
async def spawn_bot(
    slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str, tmp_path: Path
) -> AsyncIterator[SpawnBot]:
    processes: list[BotProcess] = []

    async def spawn(mode: str = "http", **overrides: str) -> BotProcess:
        env = bot_env(slack, llm, redis_url, mode, free_port()) | FAST_RECOVERY | overrides
        process = BotProcess(env, tmp_path)
        processes.append(process)
        await process.start()
        if mode == "http":
            slack.use_http(f"{process.url}/slack/events")
        else:
            slack.use_socket()
        return process

    yield spawn
    for process in processes:
        await process.close()


@pytest.mark.parametrize("subtype", [None, "file_share"])
@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_killed_before_the_message_is_queued_slack_sends_it_again_and_it_is_answered_once(
    mode: str,
    subtype: str | None,
    redis_proxy: HeldReplyProxy,
    spawn_bot: SpawnBot,
    slack: SlackEmulator,
    redis: Redis,
) -> None:
    """The event is acknowledged only once its message is in Redis: a process killed before
    that leaves it unacknowledged, and Slack's retry reaches the next process. The same for a
    message with a file (subtype `file_share`), which is as much a person's new message."""
    first = await spawn_bot(mode, REDIS_URL=redis_proxy.url)
    event = slack.user_message_event(DM, "where is my refund?")
    if subtype is not None:
        event |= {"subtype": subtype, "files": [{"id": "F1", "name": "receipt.pdf"}]}
    [delivery] = await _killed_while_delivering(
        redis, redis_proxy, first, [slack.deliver_event(event)], markers=[event["ts"]]
    )
    assert not delivery.acked, "acknowledged before the message was queued"

    # As Slack does with a delivery that was not acknowledged: send it again.
    survivor = await spawn_bot(mode)
    retry = await slack.deliver_event(event, retry_num=1, retry_reason="http_timeout")
    assert retry.acked
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1, timeout=15)
    await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    assert answer["text"] == "Answer: ann: where is my refund?"
    assert len(slack.bot_messages(DM, "top")) == 1
    assert "message listener failed" not in survivor.log()


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_an_edit_is_acknowledged_only_once_stored_so_a_kill_before_that_loses_nothing(
    mode: str,
    redis_proxy: HeldReplyProxy,
    spawn_bot: SpawnBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
) -> None:
    """An edit is acknowledged once the stored conversation has it: a process killed before
    that leaves it to Slack's retry, and the next question is asked with the edited text."""
    first = await spawn_bot(mode, REDIS_URL=redis_proxy.url)
    ts = await slack.post_user_message(DM, "my check is slow")
    await slack.wait_for_bot_messages(DM, "top", count=1)
    await _wait_for_stored_turns(redis, 2)
    event = slack.edited_event(DM, ts, "my check is down")
    [delivery] = await _killed_while_delivering(
        redis, redis_proxy, first, [slack.deliver_event(event)], markers=["my check is down"]
    )
    assert not delivery.acked, "acknowledged before the edit was stored"

    await spawn_bot(mode)
    assert (await slack.deliver_event(event, retry_num=1, retry_reason="http_timeout")).acked
    await slack.post_user_message(DM, "since 9am")
    await slack.wait_for_bot_messages(DM, "top", count=2, timeout=15)
    asked = [m["content"] for m in llm.requests[-1]["messages"]]
    assert "ann: my check is down" in asked and "ann: my check is slow" not in asked


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_a_feedback_click_is_acknowledged_only_once_its_vote_is_kept(
    mode: str, redis_proxy: HeldReplyProxy, spawn_bot: SpawnBot, slack: SlackEmulator, redis: Redis
) -> None:
    """Slack never sends a click again: one whose process dies before the vote is kept is left
    unacknowledged, so that Slack shows the person it failed (they click again), instead of
    looking taken and being lost."""
    first = await spawn_bot(mode, REDIS_URL=redis_proxy.url)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> was this useful?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    click = slack.click_feedback(CHANNEL, answer["ts"], user="U2")
    vote = f"{answer['ts']}:U2"  # the field the vote is kept under
    [delivery] = await _killed_while_delivering(redis, redis_proxy, first, [click], markers=[vote])
    assert not delivery.acked, "acknowledged before the vote was kept"
    assert not [key async for key in redis.scan_iter("feedback:*")]

    await spawn_bot(mode)
    assert (await slack.click_feedback(CHANNEL, answer["ts"], user="U2")).acked
    [votes] = [key async for key in redis.scan_iter("feedback:*")]
    assert len(await redis.hgetall(votes)) == 1  # kept by the time of the acknowledgement


async def _killed_while_delivering(
    redis: Redis,
    proxy: HeldReplyProxy,
    process: BotProcess,
    deliveries: list[Coroutine[Any, Any, Delivery]],
    markers: list[str],
) -> list[Delivery]:
    """Make the deliveries with Redis's writes paused, so that nothing of them can be stored, and
    kill `process` (which reaches Redis through `proxy`) once it has sent Redis each of `markers`,
    something only its handling of the deliveries sends (a message's ts, an edit's text): it
    took them all and waits for Redis, well before the acknowledgements' 2 s. What each delivery
    got back. (A kill a fixed second after the deliveries began came, on a slow machine, before
    they reached the process, and the test passed all the same.)"""
    await redis.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    sending = [asyncio.create_task(delivery) for delivery in deliveries]
    try:
        await wait_until(lambda: all(map(proxy.requested, markers)), "the process to take the deliveries")
        process.kill()
        await process.wait()
        return list(await asyncio.gather(*sending))
    finally:
        for task in sending:
            task.cancel()
        await redis.execute_command("CLIENT", "UNPAUSE")


async def _killed_once_shown(
    process: BotProcess,
    gate: Gate,
    redis: Redis,
    slack: SlackEmulator,
    channel: str,
    thread: str,
    shown: int = 1,
) -> None:
    """Let the call held at `gate` through with Redis's writes paused, and kill `process` once
    Slack shows the bot's `shown`th message, while it waits for Redis to record what it showed."""
    await slack.wait_for(lambda: gate.waiting > 0, what="the answer to be on its way")
    await redis.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    try:
        gate.opened.set()
        await slack.wait_for(lambda: len(slack.bot_messages(channel, thread)) == shown, what="the message")
        await asyncio.sleep(0.3)  # the process now waits for Redis
        process.kill()
        await process.wait()
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")


async def _wait_until_queued(redis: Redis, channel: str, ts: str) -> None:
    """Until the message's journal says it waits in its thread's inbox."""
    journal = f"turn:T1:{channel}:{ts}"

    async def queued() -> bool:
        return await redis.hget(journal, "state") == "queued"

    await wait_until(queued, f"the message {ts} to be queued")


async def _wait_for_stored_turns(redis: Redis, count: int) -> None:
    """Until the one stored conversation holds `count` turns."""
    for _ in range(100):
        keys = [key async for key in redis.scan_iter("conv:*:turns")]
        if keys and await redis.llen(keys[0]) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the conversation never held {count} turns")


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_killed_amid_a_burst_of_mentions_each_is_answered_once_after_slacks_retries(
    mode: str, redis_proxy: HeldReplyProxy, spawn_bot: SpawnBot, slack: SlackEmulator, redis: Redis
) -> None:
    """Twenty channel mentions, each as Slack sends it (`message` and `app_mention` at once), reach
    a process that is killed before it could queue them. Each mention keeps an event Slack will
    send again (the twin taken second is acknowledged at once, the one taken first is not), and
    the next process answers each exactly once."""
    first = await spawn_bot(mode, REDIS_URL=redis_proxy.url)
    messages = [slack.user_message_event(CHANNEL, f"<@{BOT}> question {i}") for i in range(20)]
    events = [event for message in messages for event in (message, slack.mention_twin(message))]
    deliveries = await _killed_while_delivering(
        redis,
        redis_proxy,
        first,
        [slack.deliver_event(event) for event in events],
        markers=[message["ts"] for message in messages],  # each mention taken (once)
    )
    unacknowledged = [event for event, delivery in zip(events, deliveries, strict=True) if not delivery.acked]
    assert {event["ts"] for event in unacknowledged} == {message["ts"] for message in messages}

    await spawn_bot(mode)
    for event in unacknowledged:  # as Slack does
        assert (await slack.deliver_event(event, retry_num=1, retry_reason="http_timeout")).acked
    for message in messages:
        [answer] = await slack.wait_for_bot_messages(CHANNEL, message["ts"], count=1, timeout=15)
        assert answer["text"] == f"Answer: ann: {message['text'].removeprefix(f'<@{BOT}> ')}"
    await asyncio.sleep(1.0)  # time for a duplicate to show up, if there were one
    assert all(len(slack.bot_messages(CHANNEL, message["ts"])) == 1 for message in messages)


async def test_an_acknowledgement_waits_for_a_stalled_redis_at_most_two_seconds(
    spawn_bot: SpawnBot, slack: SlackEmulator, redis: Redis
) -> None:
    """Slack wants an acknowledgement within 3 s: a Redis that stalls longer does not hold it."""
    await spawn_bot("http")
    event = slack.user_message_event(DM, "anyone there?")
    await redis.execute_command("CLIENT", "PAUSE", "3500", "WRITE")
    try:
        delivery = await slack.deliver_event(event)
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    assert delivery.acked and 1.9 < delivery.elapsed < 3.0, delivery
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1, timeout=15)
    assert answer["text"] == "Answer: ann: anyone there?"


async def test_killed_mid_answer_is_answered_once_when_two_processes_recover_at_once(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    first = await spawn_bot()
    llm.enqueue(Hang())
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> is billing down?")
    await llm.wait_for_requests(1)
    assert slack.statuses.get((CHANNEL, ts)) == "is thinking…"
    first.kill()
    await first.wait()

    # Two replicas come up at the same moment; both find the unfinished turn.
    survivors = await asyncio.gather(*(start_bot("http", **FAST_RECOVERY) for _ in range(2)))
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, timeout=15)
    # Nothing left for either to take up (not 1.5 s for a duplicate to show up, if there were
    # one): the message answered, the lock let go, no thread waiting; then their turns are over.
    await _turn_over(redis, ts)
    for survivor in survivors:
        await survivor.settle()

    assert answer["text"] == "Answer: ann: is billing down?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert not slack.statuses.get((CHANNEL, ts))
    # The question is in the conversation once, not once per attempt.
    last = [m["content"] for m in llm.requests[-1]["messages"]]
    assert last.count("ann: is billing down?") == 1


@pytest.mark.parametrize("stop_fails_once", [False, True], ids=["", "a 503 on the stop"])
async def test_killed_while_the_answer_streams_ends_with_one_interrupted_note(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, stop_fails_once: bool
) -> None:
    """The interrupted stream is closed, also through a 503 on its bare stop (once slack_sdk's
    retry of stopStream was taken away, a 503 left it streaming for good)."""
    first = await spawn_bot()
    llm.chunk_delay = 0.2  # a long answer, written slowly
    llm.reply = lambda messages: "A long answer that takes a while to write. " * 20
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> explain everything")
    await slack.wait_for(
        lambda: bool(slack.calls_to("chat.startStream")), what="the answer to start streaming"
    )
    first.kill()
    await first.wait()
    if stop_fails_once:
        slack.fail_next("chat.stopStream", error="service_unavailable", status=503)

    llm.chunk_delay = 0.0
    survivor = await start_bot("http", **FAST_RECOVERY)
    await slack.wait_for(lambda: len(slack.bot_messages(CHANNEL, ts)) == 2, timeout=15, what="the note")
    await asyncio.sleep(1.0)
    await survivor.settle()
    partial, note = slack.bot_messages(CHANNEL, ts)
    assert partial["text"] and llm.reply([]).startswith(partial["text"])  # what was shown stays
    assert note["text"].startswith("Sorry, my answer above was interrupted")
    assert len(slack.bot_messages(CHANNEL, ts)) == 2
    assert len(llm.requests) == 1  # not answered a second time
    # The abandoned stream was closed.
    assert [c.status for c in slack.calls_to("chat.stopStream")] == ([503, 200] if stop_fails_once else [200])
    assert not slack.message(CHANNEL, partial["ts"]).get("streaming")


@pytest.mark.parametrize("where", ["thread", "dm", "streamed"])
async def test_killed_after_posting_the_answer_before_recording_it_is_not_answered_again(
    where: str,
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The process dies after Slack showed the answer whole (posted in a thread or a DM, or a
    stream finished) and before Redis recorded it (its writes paused meanwhile). Recovery finds
    the answer in Slack by its buttons' block id, records it as the turn's answer, and posts
    nothing more: no second answer, no "interrupted" note, the model not asked again."""
    first = await spawn_bot()
    if where == "streamed":
        # Written over half a second, it streams: in 8-character pieces, over 0.15 s, a process
        # that read them late (a loaded machine) could find the answer whole and post it.
        llm.chunk_delay, llm.chunk_chars = 0.05, 2
    else:
        llm.chunk_chars = 1000  # one piece: written whole before it is first shown, one post
    posting = slack.gate("chat.stopStream" if where == "streamed" else "chat.postMessage")
    channel, text = (DM, "is billing down?") if where == "dm" else (CHANNEL, f"<@{BOT}> is billing down?")
    ts = await slack.post_user_message(channel, text)
    thread = "top" if where == "dm" else ts
    await _killed_once_shown(first, posting, redis, slack, channel, thread)
    assert bool(slack.calls_to("chat.startStream")) == (where == "streamed")  # shown as meant

    survivor = await start_bot("http", **FAST_RECOVERY)
    await _wait_for_stored_turns(redis, 2)  # the question, and the answer found in Slack
    await asyncio.sleep(1.0)  # time for a second answer to show up, if there were one
    await survivor.settle()
    [answer] = slack.bot_messages(channel, thread)
    assert answer["text"] == "Answer: ann: is billing down?"
    assert len(llm.requests) == 1
    assert "answer found posted already" in caplog.text
    [turns] = [key async for key in redis.scan_iter("conv:*:turns")]
    stored = [json.loads(item) for item in await redis.lrange(turns, 0, -1)]
    assert [(turn["role"], turn["ts"]) for turn in stored] == [("user", ts), ("assistant", answer["ts"])]
    assert stored[1]["text"] == "Answer: ann: is billing down?"
    [question] = [m for m in slack.messages(channel) if m["ts"] == ts]
    await slack.wait_for(lambda: not question.get("reactions"), what="no thinking reaction left")


async def test_killed_after_posting_a_long_answer_before_recording_it_keeps_all_of_it(
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An answer too long for one message goes out as two; the process dies after the second
    (with the buttons) showed and before Redis recorded it. Recovery stores all of the answer,
    both messages, as the turn's answer (not only its last message), so the next turn's prompt
    holds what the person was shown."""
    first = await spawn_bot()
    paragraphs = [f"Step {i}: " + "check the settings " * 50 for i in range(12)]  # ~11,500 characters
    llm.reply = lambda messages: "\n\n".join(paragraphs)
    llm.chunk_chars = 20_000  # one piece: written whole before it is first shown, posted as two messages
    last_message = slack.gate("chat.postMessage", when=lambda args: bool(args.get("blocks")))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I set it up?")
    await _killed_once_shown(first, last_message, redis, slack, CHANNEL, ts, shown=2)

    survivor = await start_bot("http", **FAST_RECOVERY)
    await _wait_for_stored_turns(redis, 2)
    await asyncio.sleep(1.0)  # time for a second answer to show up, if there were one
    parts = slack.bot_messages(CHANNEL, ts)
    assert len(parts) == 2 and len(llm.requests) == 1
    assert "answer found posted already" in caplog.text
    [turns] = [key async for key in redis.scan_iter("conv:*:turns")]
    stored = [json.loads(item) for item in await redis.lrange(turns, 0, -1)]
    assert [(turn["role"], turn["ts"]) for turn in stored] == [("user", ts), ("assistant", parts[0]["ts"])]
    assert [p.strip() for p in stored[1]["text"].split("\n\n")] == [p.strip() for p in paragraphs]

    llm.reply = lambda messages: "Glad to help."
    await slack.post_user_message(CHANNEL, f"<@{BOT}> thanks", thread_ts=ts)
    await slack.wait_for(lambda: len(llm.requests) == 2, what="the follow-up's model call")
    prompt = "\n".join(m["content"] for m in llm.requests[-1]["messages"])
    assert paragraphs[0].strip() in prompt and paragraphs[-1].strip() in prompt
    await survivor.settle()


@pytest.mark.parametrize("where", ["streamed", "posted", "dm"])
async def test_killed_as_the_answer_first_showed_before_recording_it_ends_with_one_interrupted_note(
    where: str,
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The process dies just after the first part of a long answer showed (its stream started,
    or, where Slack refuses streams, its first message posted, to be grown by edits) and before
    Redis recorded that it is visible (its writes paused meanwhile). Recovery finds that message
    in Slack, the bot's last after the question, with no buttons and not a notice: it is closed and
    one note says the answer was interrupted, as when a process dies later in the stream, rather
    than a second answer under the first one's beginning."""
    first = await spawn_bot()
    if where != "streamed":
        slack.refuse_streaming("im" if where == "dm" else "channel")
    llm.chunk_delay = 0.1  # a long answer, written slowly
    llm.reply = lambda messages: "A long answer that takes a while to write. " * 20
    opening = slack.gate("chat.startStream" if where == "streamed" else "chat.postMessage")
    channel, text = (DM, "explain everything") if where == "dm" else (CHANNEL, f"<@{BOT}> explain everything")
    ts = await slack.post_user_message(channel, text)
    thread = "top" if where == "dm" else ts
    await _killed_once_shown(first, opening, redis, slack, channel, thread)

    llm.chunk_delay = 0.0
    survivor = await start_bot("http", **FAST_RECOVERY)
    await slack.wait_for(lambda: len(slack.bot_messages(channel, thread)) == 2, timeout=15, what="the note")
    await asyncio.sleep(1.0)  # time for a second answer to show up, if there were one
    await survivor.settle()
    partial, note = slack.bot_messages(channel, thread)
    assert partial["text"] and llm.reply([]).startswith(partial["text"].strip())  # what showed stays
    assert note["text"].startswith("Sorry, my answer above was interrupted")
    assert len(llm.requests) == 1  # not answered a second time
    assert "answer found cut short" in caplog.text
    if where == "streamed":
        assert [call.args["ts"] for call in slack.calls_to("chat.stopStream")] == [partial["ts"]]


async def test_a_notice_after_the_question_is_not_taken_for_an_answer_cut_short(
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
) -> None:
    """A second question in a thread waits for the first's turn; that turn ends in a notice (the
    model's error) posted after the second question. The process dies after claiming the second
    answer's post, before Slack got it: the bot's last message after the question is that
    notice, which is no part of an answer, so the second question is answered, once."""
    first = await spawn_bot()
    llm.enqueue(Status(400))
    slack.refuse_streaming("channel")
    notice_held = slack.gate("chat.postMessage", text=REJECTED)
    holding = True  # the dead process's call is never let through: Slack never got it
    answer_held = slack.gate("chat.postMessage", when=lambda args: holding and args.get("text") != REJECTED)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> first question")
    await slack.wait_for(lambda: notice_held.waiting > 0, what="the first question's notice")
    second = await slack.post_user_message(CHANNEL, f"<@{BOT}> second question", thread_ts=ts)
    await _wait_until_queued(redis, CHANNEL, second)  # behind the first turn
    notice_held.opened.set()
    await slack.wait_for(lambda: answer_held.waiting > 0, what="the second answer to be on its way")
    first.kill()
    await first.wait()
    holding = False
    [notice] = slack.bot_messages(CHANNEL, ts)
    assert Decimal(notice["ts"]) > Decimal(second)

    await start_bot("http", **FAST_RECOVERY)
    await slack.wait_for(lambda: len(slack.bot_messages(CHANNEL, ts)) == 2, timeout=15, what="the answer")
    await asyncio.sleep(1.0)
    notice, answer = slack.bot_messages(CHANNEL, ts)
    assert answer["text"] == "Answer: ann: second question"


async def test_an_earlier_answer_a_person_stopped_is_not_taken_for_an_answer_cut_short(
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
) -> None:
    """A second question in a thread waits for the first's answer, which starts streaming after
    it and which the person stops (a stopped answer has no buttons). The process dies after
    claiming the second answer's post, before Slack got it: the bot's last message after the
    second question is that stopped answer, an earlier turn's, so the second question is
    answered, once, and gets no "interrupted" note."""
    first = await spawn_bot()
    llm.chunk_delay = 0.1  # the first answer is written slowly, so that it can be stopped
    long = "A long answer that takes a while to write. " * 20
    llm.reply = lambda messages: long if "first question" in messages[-1]["content"] else "The second answer."
    opening = slack.gate("chat.startStream")
    holding = True  # the dead process's call is never let through: Slack never got it
    answer_held = slack.gate("chat.postMessage", when=lambda args: holding)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> first question")
    await slack.wait_for(lambda: opening.waiting > 0, what="the first answer to be on its way")
    second = await slack.post_user_message(CHANNEL, f"<@{BOT}> second question", thread_ts=ts)
    await _wait_until_queued(redis, CHANNEL, second)  # behind the first turn
    opening.opened.set()
    await slack.wait_for(lambda: len(slack.bot_messages(CHANNEL, ts)) == 1, what="the first answer")
    [stopped] = slack.bot_messages(CHANNEL, ts)
    slack.press_stop(CHANNEL, stopped["ts"])
    llm.chunk_delay, llm.chunk_chars = 0.0, 1000  # the second answer comes whole (one piece), as one post
    await slack.wait_for(lambda: answer_held.waiting > 0, what="the second answer to be on its way")
    first.kill()
    await first.wait()
    holding = False
    [stopped] = slack.bot_messages(CHANNEL, ts)
    assert Decimal(stopped["ts"]) > Decimal(second)
    assert not any(block.get("block_id") for block in stopped.get("blocks") or [])  # no buttons

    await start_bot("http", **FAST_RECOVERY)
    await slack.wait_for(lambda: len(slack.bot_messages(CHANNEL, ts)) == 2, timeout=15, what="the answer")
    await asyncio.sleep(1.0)  # time for a note or a second answer to show up, if there were one
    stopped, answer = slack.bot_messages(CHANNEL, ts)
    assert answer["text"] == "The second answer."
    assert len(llm.requests) == 3  # the first question, and the second twice (its first answer never showed)


async def test_killed_mid_dm_answer_clears_the_reaction(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    first = await spawn_bot()
    llm.enqueue(Hang())
    ts = await slack.post_user_message(DM, "my invoice is wrong")
    await llm.wait_for_requests(1)
    [question] = [m for m in slack.messages(DM) if m["ts"] == ts]
    assert question.get("reactions"), "the eyes reaction shows the bot is working"
    first.kill()
    await first.wait()

    survivor = await start_bot("http", **FAST_RECOVERY)
    await slack.wait_for_bot_messages(DM, "top", count=1, timeout=15)
    await survivor.settle()
    await slack.wait_for(lambda: not question.get("reactions"), what="the reaction to be removed")


async def test_a_process_killed_holding_150_threads_leaves_them_to_one_recovery_round(
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a burst, a dead process may hold the locks of hundreds of threads: the next process
    takes them all up in one recovery round, not a hundred a round."""
    first = await spawn_bot()
    llm.enqueue(*(Hang() for _ in range(150)))
    messages = [slack.user_message_event(CHANNEL, f"<@{BOT}> question {i}") for i in range(150)]
    await asyncio.gather(*(slack.deliver_event(message) for message in messages))
    await llm.wait_for_requests(150)
    first.kill()
    await first.wait()
    # Past the recovery's idle threshold (two rounds: 0.6 s), so that every thread counts as
    # waiting in the first round; a busy machine could otherwise start the survivor within it.
    idle = lambda: redis.zcount("pending", "-inf", time.time() - 0.6)  # noqa: E731
    await wait_until(lambda: _equals(idle(), 150), "every thread to count as waiting", within=20)

    survivor = await start_bot("http", **FAST_RECOVERY)
    for message in messages:
        [answer] = await slack.wait_for_bot_messages(CHANNEL, message["ts"], count=1, timeout=30)
        assert answer["text"] == f"Answer: ann: {message['text'].removeprefix(f'<@{BOT}> ')}"
    await survivor.settle()
    logged = [r.getMessage() for r in caplog.records]
    rounds = [m for m in logged if m.startswith("recovery found") and "waiting threads" in m]
    assert rounds[0] == "recovery found 150 waiting threads, started a worker for each", rounds


async def test_a_killed_process_threads_are_taken_over_once_it_stops_beating_not_when_its_locks_expire(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Its thread locks would last a minute here, but a process says every second that it is
    alive, and its locks name it: five seconds after the last word from the killed process, the
    next one takes its thread over and answers."""
    first = await spawn_bot(THREAD_LOCK_TTL_SECONDS="60")
    llm.enqueue(Hang())
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> is billing down?")
    await llm.wait_for_requests(1)
    first.kill()
    await first.wait()

    survivor = await start_bot("http", THREAD_LOCK_TTL_SECONDS="60", RECOVERY_INTERVAL_SECONDS="0.3")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=20)
    await survivor.settle()
    assert answer["text"] == "Answer: ann: is billing down?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1


async def test_a_process_frozen_past_its_liveness_loses_its_thread_and_posts_nothing_when_it_thaws(
    spawn_bot: SpawnBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """The holder is frozen (SIGSTOP) while the model writes its answer: it stops saying it is
    alive, so after its liveness the other process takes the thread over and answers. Thawed
    (SIGCONT), the holder finds its thread taken, or its message answered, and shows nothing."""
    other = await spawn_bot(THREAD_LOCK_TTL_SECONDS="60", RECOVERY_INTERVAL_SECONDS="0.3")
    holder = await spawn_bot(THREAD_LOCK_TTL_SECONDS="60", RECOVERY_INTERVAL_SECONDS="0.3")  # gets the events
    # The holder's answer is written only once the other has answered, while the holder is still
    # frozen: it finds it waiting when it thaws (not a 1 s first token, which a loaded machine
    # could outlast before the freeze, the holder's answer then shown and nothing taken over).
    written = asyncio.Event()
    llm.enqueue(Gated(written))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> who answers this?")
    await llm.wait_for_requests(1)
    assert holder.process is not None
    holder.process.send_signal(signal.SIGSTOP)
    try:
        [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=20)
        written.set()
        await wait_until(lambda: llm.streams[0].finished_at is not None, "the holder's answer to be written")
    finally:
        holder.process.send_signal(signal.SIGCONT)
    # The thawed holder's turn ends here, its answer not shown.
    await slack.wait_for(lambda: "standing down" in holder.log(), timeout=20, what="the holder to stand down")
    assert answer["text"] == "Answer: ann: who answers this?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    # The other's request, and sometimes one more from the thawed holder, whose model call timed
    # out across the freeze and was retried before its post found the thread taken.
    assert len(llm.requests) in (2, 3)
    assert "resuming interrupted turn" in other.log()  # taken over: by its recovery or its beat
    assert "standing down" in holder.log()
    assert "turn failed" not in holder.log() and "turn crashed" not in holder.log()


async def test_thread_lock_of_a_dead_process_expires(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A thread whose worker died is not blocked: a new message in it is answered, in order."""
    first = await spawn_bot()
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> first")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    llm.enqueue(Hang())
    await slack.post_user_message(CHANNEL, "second", thread_ts=root)
    await llm.wait_for_requests(2)
    first.kill()
    await first.wait()

    survivor = await start_bot("http", **FAST_RECOVERY)
    await slack.post_user_message(CHANNEL, "third", thread_ts=root)
    answers = await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    await survivor.settle()
    assert [a["text"] for a in answers] == ["Answer: ann: first", "Answer: ann: second", "Answer: ann: third"]


async def test_a_turn_longer_than_its_lock_lifetime_keeps_its_thread(
    spawn_bot: SpawnBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    """The holder renews its thread's lock while the turn runs: another process's recovery
    rounds (every 0.3 s here) never take over a live turn that outlasts the lock's lifetime (1 s
    here) four times over, so the question is answered once, with no "interrupted" note."""
    other, holder = [await spawn_bot(), await spawn_bot()]  # the events go to the last started
    processes = [other, holder]
    # The answer is held until the turn has outlasted its lock four times over and the other
    # process's recovery has found the thread waiting (and left it) at least four times: not a
    # 4 s first token, which a loaded machine could outlast with no recovery round meanwhile.
    outlasted = asyncio.Event()
    llm.enqueue(Gated(outlasted))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> a slow one")
    await llm.wait_for_requests(1)
    lock = await _thread_lock(redis)
    token = await redis.get(lock)
    held_since = time.monotonic()
    holding = lambda: redis.get(lock)  # noqa: E731
    rounds = lambda: other.log().count("recovery found 1 waiting threads")  # noqa: E731
    # The lock's lifetime (1 s) four times over, and four rounds of the other's recovery.
    while time.monotonic() - held_since < 4 * 1.0 or rounds() < 4:
        assert await holding() == token, "the lock was lost under its live turn"
        assert time.monotonic() - held_since < 30, "the other's recovery did not find the thread four times"
        await asyncio.sleep(0.05)
    assert await holding() == token, "the lock was lost under its live turn"
    outlasted.set()
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=15)
    journal = f"turn:T1:{CHANNEL}:{ts}"
    await wait_until(lambda: _state_is(redis, journal, "answered"), "the turn to finish")
    await wait_until(lambda: _state_is(redis, lock, None), "the lock to be let go")
    assert answer["text"] == "Answer: ann: a slow one"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert len(llm.requests) == 1
    for process in processes:
        for sign_of_a_takeover in ("standing down", "thread lock expired", "thread lock not renewed"):
            assert sign_of_a_takeover not in process.log()
        assert "resuming interrupted turn" not in process.log()


def _resp(data: bytes) -> list[Any]:
    """The replies in `data` (RESP2, whole): integers as int, arrays as lists, the rest as bytes."""

    def one(at: int) -> tuple[Any, int]:
        end = data.index(b"\r\n", at)
        kind, line, at = data[at : at + 1], data[at + 1 : end], end + 2
        if kind == b":":
            return int(line), at
        if kind == b"$":
            return (None, at) if int(line) < 0 else (data[at : at + int(line)], at + int(line) + 2)
        if kind == b"*":
            items = []
            for _ in range(max(int(line), 0)):
                item, at = one(at)
                items.append(item)
            return items, at
        return line, at  # a status, or an error

    replies, at = [], 0
    while at < len(data):
        reply, at = one(at)
        replies.append(reply)
    return replies


async def _equals(count: Awaitable[int], expected: int) -> bool:
    return await count == expected


async def _turn_over(redis: Redis, ts: str) -> None:
    """Wait until the message at `ts` (in CHANNEL) is answered, its thread's lock let go, and no
    thread waits: nothing is left for any process to take up."""
    await wait_until(lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{ts}", "answered"), "the turn to finish")
    await wait_until(lambda: _equals(redis.exists(f"lock:T1:{CHANNEL}:{ts}"), 0), "the lock to be let go")
    await wait_until(lambda: _equals(redis.zcard("pending"), 0), "no thread to wait")


async def _thread_lock(redis: Redis) -> str:
    [lock] = [key async for key in redis.scan_iter("lock:*")]
    return lock


async def test_a_holder_whose_lock_was_taken_over_stands_down_and_the_message_is_answered_once(
    spawn_bot: SpawnBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    """A holder stalled past its lock's lifetime finds another worker holding the lock: it stops
    its turn (that worker now answers the message, from the journal) rather than answer it too."""
    processes = [await spawn_bot(), await spawn_bot()]
    # The holder's answer is held until it has stood down, or the thread was answered by the
    # worker that took it over (not a 3 s first token, which a loaded machine could outlast
    # before either).
    settled = asyncio.Event()
    llm.enqueue(Gated(settled))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> who answers this?")
    await llm.wait_for_requests(1)
    # As if this process had stalled and another had taken the thread: a foreign token, which
    # expires in its turn (that worker "dies" too) and leaves the thread to recovery.
    lock = await _thread_lock(redis)
    await redis.set(lock, "another-worker", px=1500)
    standing_down = lambda: any("standing down" in process.log() for process in processes)  # noqa: E731
    taken = lambda: standing_down() or bool(slack.bot_messages(CHANNEL, ts))  # noqa: E731
    await wait_until(taken, "the holder to stand down, or the thread to be answered by another")
    settled.set()
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=15)
    await wait_until(standing_down, "the holder to stand down")  # at its renewal, or its answer's post
    journal = f"turn:T1:{CHANNEL}:{ts}"
    await wait_until(lambda: _state_is(redis, journal, "answered"), "the turn to finish")
    await wait_until(lambda: _state_is(redis, lock, None), "the lock to be let go")
    await wait_until(lambda: llm.in_flight == 0, "the holder's model call to end")
    assert answer["text"] == "Answer: ann: who answers this?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    logs = "".join(process.log() for process in processes)
    assert "Task was destroyed" not in logs and "turn crashed" not in logs


async def test_a_lock_that_expired_under_a_stalled_holder_is_taken_back_or_handed_over_once(
    spawn_bot: SpawnBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    """The lock vanishes mid-turn, as after a stall longer than its lifetime. Either the holder
    takes it back at its next renewal, or the other process's recovery takes the thread first
    and the holder stands down: one answer either way (two, when the holder went on regardless)."""
    processes = [await spawn_bot(), await spawn_bot()]
    # The holder's answer is held until it took its lock back, or the other process took the
    # thread (the holder standing down at its renewal, or answered by the other): not a 3 s first
    # token, which a loaded machine could outlast before either.
    settled = asyncio.Event()
    llm.enqueue(Gated(settled))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> a stalled one")
    await llm.wait_for_requests(1)
    # Past the recovery's idle threshold (two rounds, 0.6 s): the thread is fair game.
    fair_game = lambda: redis.zrangebyscore("pending", "-inf", time.time() - 0.6)  # noqa: E731
    await wait_until(fair_game, "the thread to count as waiting")
    lock = await _thread_lock(redis)
    await redis.delete(lock)
    logs = lambda: "".join(process.log() for process in processes)  # noqa: E731
    took_back_or_stood_down = lambda: "taken back" in logs() or "standing down" in logs()  # noqa: E731
    taken = lambda: took_back_or_stood_down() or bool(slack.bot_messages(CHANNEL, ts))  # noqa: E731
    await wait_until(taken, "the lock taken back, or the thread taken over")
    settled.set()
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=15)
    # Answered by the other, the holder stands down when its answer, now let go, would post.
    await wait_until(took_back_or_stood_down, "the holder to take its lock back or stand down")
    journal = f"turn:T1:{CHANNEL}:{ts}"
    await wait_until(lambda: _state_is(redis, journal, "answered"), "the turn to finish")
    await wait_until(lambda: _state_is(redis, lock, None), "the lock to be let go")
    await wait_until(lambda: llm.in_flight == 0, "every model call to end")
    assert answer["text"] == "Answer: ann: a stalled one"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1


@pytest.mark.parametrize(
    ("chunk_delay", "chunk_chars"), [(0.0, 1000), (0.2, 8)], ids=["posted whole", "streamed"]
)
async def test_a_holder_that_stalled_past_a_renewal_posts_nothing_once_its_thread_was_taken(
    chunk_delay: float,
    chunk_chars: int,
    spawn_bot: SpawnBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
) -> None:
    """The lock is lost between two renewal rounds (a 30-s lock here, renewed only once 6 s
    old, so no round runs during this turn) and the other process takes the thread and asks
    the model again. When the stalled holder's answer is ready, the post that would show it
    (whole, or the start of its stream) checks the lock in the step that claims its rate slot,
    finds another worker's token, and the holder stands down: one answer (two before the check)."""
    processes = [await spawn_bot(THREAD_LOCK_TTL_SECONDS="30") for _ in range(2)]
    # The holder's answer is ready only once the other process has taken the thread over, and
    # the other's only once the holder has stood down (not a 2 s first token, which a loaded
    # machine could outlast before the takeover).
    holders_answer, others_answer = asyncio.Event(), asyncio.Event()
    llm.enqueue(Gated(holders_answer), Gated(others_answer))
    llm.chunk_delay, llm.chunk_chars = chunk_delay, chunk_chars  # whole: one piece; streamed: 1 s
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> whose answer is this?")
    await llm.wait_for_requests(1)
    await redis.delete(await _thread_lock(redis))  # as if it had expired under a stalled holder
    await llm.wait_for_requests(2, timeout=10)  # the other process took the thread over
    holders_answer.set()
    await wait_until(
        lambda: any("standing down" in process.log() for process in processes), "the holder to stand down"
    )
    assert not slack.bot_messages(CHANNEL, ts)  # the holder showed nothing
    others_answer.set()
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=15)
    # The turn over, nothing left for either to take up (not 1 s for a second answer to show up).
    await _turn_over(redis, ts)
    await wait_until(lambda: llm.in_flight == 0, "every model call to end")
    assert answer["text"] == "Answer: ann: whose answer is this?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1
    assert len(slack.calls_to("chat.startStream")) == (1 if chunk_delay else 0)  # shown as meant
    logs = "".join(process.log() for process in processes)
    assert "standing down" in logs
    assert "turn failed" not in logs and "turn crashed" not in logs


async def test_sigterm_lets_answers_in_flight_finish_and_exits_0(
    spawn_bot: SpawnBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    bot = await spawn_bot(SHUTDOWN_GRACE_SECONDS="10")
    answered = asyncio.Event()
    llm.enqueue(Gated(answered))  # in flight until the stop has begun
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> slow question")
    await llm.wait_for_requests(1)
    bot.terminate()
    await slack.wait_for(lambda: "stopping: finishing answers" in bot.log(), what="the stop to begin")
    assert not slack.bot_messages(CHANNEL, ts)  # the answer still in flight
    answered.set()
    assert await bot.wait() == 0, bot.log()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, ts)] == ["Answer: ann: slow question"]
    assert "bot stopped" in bot.log()


async def test_sigterm_turns_health_503_and_an_event_that_still_arrives_is_answered(
    spawn_bot: SpawnBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Behind a load balancer, events keep coming for a moment after SIGTERM: /health says
    "stopping" so that the balancer takes the process out, and what still arrives is answered."""
    bot = await spawn_bot(SHUTDOWN_GRACE_SECONDS="10")
    answered = asyncio.Event()
    llm.enqueue(Gated(answered))  # in flight, the process still up, until the last event is in
    await slack.post_user_message(CHANNEL, f"<@{BOT}> slow question")
    await llm.wait_for_requests(1)
    bot.terminate()
    async with aiohttp.ClientSession() as session:

        async def health() -> tuple[int, dict]:
            async with session.get(f"{bot.url}/health") as response:
                return response.status, await response.json()

        await slack.wait_for(lambda: "stopping: finishing answers" in bot.log(), what="the stop to begin")
        assert await health() == (503, {"status": "stopping", "mode": "http"})
    event = slack.user_message_event(CHANNEL, f"<@{BOT}> one more")
    assert (await slack.deliver_event(event)).acked
    answered.set()
    assert await bot.wait() == 0, bot.log()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, event["ts"])] == ["Answer: ann: one more"]


async def test_sigterm_past_the_deadline_hands_the_turn_to_the_next_process(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    bot = await spawn_bot(SHUTDOWN_GRACE_SECONDS="0.5")
    llm.enqueue(Hang())
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> never-ending question")
    await llm.wait_for_requests(1)
    bot.terminate()
    assert await bot.wait(within=10) == 0, bot.log()
    assert slack.bot_messages(CHANNEL, ts) == []
    assert "turns left for recovery" in bot.log()

    successor = await start_bot("http", **FAST_RECOVERY)
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, timeout=15)
    await successor.settle()
    assert answer["text"] == "Answer: ann: never-ending question"


async def test_a_beat_that_reaches_redis_after_the_stop_s_leave_leaves_the_locks_free_at_once(
    start_bot: StartBot, redis_proxy: HeldReplyProxy, redis: Redis, redis_url: str
) -> None:
    """A stopping process cancels its beats and says it left, but a beat already on the wire runs
    in Redis all the same. Here one is held back on its way until the leave has run. Before, it
    made the stopped process alive again for its liveness: a lock it could not let go of waited
    5 s to be taken over."""
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    store, me = running.bot.store, running.bot.turns.process_id
    beat_on_its_way = asyncio.Event()

    async def left() -> bool:
        return not await _alive(redis, me)

    async def after_the_leave() -> None:
        beat_on_its_way.set()
        await wait_until(left, "the stop's leave")

    redis_proxy.hold_request(store._beat.sha, after_the_leave)
    async with monitored(redis_url) as lines:
        await wait_until(beat_on_its_way.is_set, "a beat on its way")
        await running.bot.stop(grace_seconds=0)  # waits for the beat's batch, which ran meanwhile
    assert redis_proxy.requests_held == 1
    ran = [line for line in lines if "EVALSHA" in line and f'"{me}"' in line]
    assert store._leave.sha in ran[-2] and store._beat.sha in ran[-1], ran

    assert await left()
    other = Store(redis_url, conversation_ttl_days=1)
    try:
        message = IncomingMessage("T1", CHANNEL, "9.1", "U1", "hi", "answer", "9.1", "9.1", BOT)
        assert (await other.accept(message, f"{me}:turn"))[0] is Accepted.TAKEN  # left locked
        assert await other.take_thread(message.key, "beef:turn")
    finally:
        await other.close()


async def test_a_beat_cut_off_by_a_redis_restart_after_the_stop_s_leave_is_not_sent_again(
    start_bot: StartBot, redis_proxy: HeldReplyProxy, redis: Redis, redis_url: str
) -> None:
    """A stopping process cancels its beats and says it left (noted in `processes-left`, which
    keeps a late beat from making it alive again). Here a beat on its way is cut off with its
    connection after the leave, as Redis restarts without its data, `processes-left` gone with
    it. The batch the beat was in went again on a new connection, beat included, though its
    caller had given up: the stopped process was alive again for its liveness, 5 s, its locks
    taken for a live process's and others counting it as a peer."""
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    store, me = running.bot.store, running.bot.turns.process_id
    beat_on_its_way = asyncio.Event()

    async def left() -> bool:
        return not await _alive(redis, me)

    async def lost_after_the_leave() -> None:
        beat_on_its_way.set()
        await wait_until(left, "the stop's leave")
        await redis.flushall()  # the data gone, and (`drop`) the beat's connection with it

    redis_proxy.hold_request(store._beat.sha, lost_after_the_leave, drop=True)
    async with monitored(redis_url) as lines:
        await wait_until(beat_on_its_way.is_set, "a beat on its way")
        await running.bot.stop(grace_seconds=0)
    assert redis_proxy.requests_held == 1
    after_the_loss = lines[next(i for i, line in enumerate(lines) if "FLUSHALL" in line) :]
    assert not [line for line in after_the_loss if f'"{me}"' in line], after_the_loss
    assert not await _alive(redis, me)


async def _alive(redis: Redis, process: str) -> bool:
    """Whether Redis counts `process` alive (its liveness lapses after now)."""
    seconds, micros = await redis.time()
    return ((await redis.zscore("processes", process)) or 0) > seconds * 1000 + micros // 1000


async def test_a_stop_takes_over_no_thread_of_a_gone_process_as_it_abandons_its_turns(
    start_bot: StartBot,
    redis_proxy: HeldReplyProxy,
    redis: Redis,
    redis_url: str,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
) -> None:
    """A stop abandons the turns still running past the grace, then leaves. Its beats went on
    while the abandoned turns let go of their threads: one that found a gone process's thread
    then started a worker that nothing abandoned, which took the thread with the stopped
    process's token and asked the model after the stop was over."""
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    me, beating = running.bot.turns.process_id, running.bot._beating
    llm.enqueue(Hang())
    await slack.post_user_message(CHANNEL, f"<@{BOT}> never-ending question")
    await llm.wait_for_requests(1)
    ts = slack.seed_message(CHANNEL, f"<@{BOT}> left behind")
    orphan = IncomingMessage("T1", CHANNEL, ts, "U1", f"<@{BOT}> left behind", "answer", ts, ts, BOT)
    other = Store(redis_url, conversation_ttl_days=1)

    async def taken_here() -> bool:
        return ((await redis.get(other.keys.lock(orphan.key))) or "").startswith(f"{me}:")

    async def a_process_dies_meanwhile() -> None:
        # The abandoned turn lets go of its thread here; another process dies, leaving a thread.
        assert (await other.accept(orphan, "dead0:turn"))[0] is Accepted.TAKEN
        await other.leave("dead0")
        await wait_until(
            lambda: beating.done() or taken_here(), "a beat to find the thread, or no more beats"
        )

    redis_proxy.hold_request(running.bot.store._release_lock.sha, a_process_dies_meanwhile)
    try:
        await running.bot.stop(grace_seconds=0)
        assert redis_proxy.requests_held == 1
        assert not await taken_here()
        assert len(llm.requests) == 1

        successor = await start_bot("http", **FAST_RECOVERY)
        [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, timeout=15)
        await successor.settle()
    finally:
        await other.close()
    assert answer["text"] == "Answer: ann: left behind"
    assert sum("left behind" in json.dumps(request) for request in llm.requests) == 1


async def test_a_stopping_process_leaves_a_gone_process_s_threads_to_the_next(
    start_bot: StartBot, redis_url: str, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A stop stops recovery at once; its beats, which go on while it finishes its answers, took
    over the threads of a process that went meanwhile all the same, and started answers it had
    no time to finish: the next process found one half shown and said it was interrupted, where
    it would have given the whole answer."""
    running = await start_bot("http")
    llm.enqueue(Hang())
    await slack.post_user_message(CHANNEL, f"<@{BOT}> never-ending question")
    await llm.wait_for_requests(1)
    llm.chunk_delay = 1.0  # an answer takes some seconds to stream: longer than the grace left
    ts = slack.seed_message(CHANNEL, f"<@{BOT}> left behind")
    orphan = IncomingMessage("T1", CHANNEL, ts, "U1", f"<@{BOT}> left behind", "answer", ts, ts, BOT)
    other = Store(redis_url, conversation_ttl_days=1)
    try:
        stopping = asyncio.create_task(running.bot.stop(grace_seconds=3))
        await wait_until(lambda: running.bot._stopping, "the stop to begin")
        assert (await other.accept(orphan, "dead0:turn"))[0] is Accepted.TAKEN
        await other.leave("dead0")
        await stopping

        successor = await start_bot("http", **FAST_RECOVERY)
        await slack.wait_for_bot_messages(CHANNEL, ts, timeout=15)
        await successor.settle()
    finally:
        await other.close()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, ts)] == ["Answer: ann: left behind"]


async def test_a_stop_whose_turn_is_slow_to_let_go_of_its_thread_still_says_it_left(
    start_bot: StartBot,
    redis_proxy: HeldReplyProxy,
    redis: Redis,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A turn runs past the grace and is abandoned; Redis takes its thread's release only after the
    stop's deadline (held back here until the stop says the deadline was reached). The leave
    waited for the turn to let go, found the deadline spent and was never sent: the stopped
    process counted alive for its liveness, its locks waiting that long. It goes out with the
    turns' letting go now, and lands when Redis gets to it."""
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    store, me = running.bot.store, running.bot.turns.process_id
    llm.enqueue(Hang())
    await slack.post_user_message(CHANNEL, f"<@{BOT}> never-ending question")
    await llm.wait_for_requests(1)

    async def after_the_deadline() -> None:
        await wait_until(lambda: "stop's deadline reached" in caplog.text, "the stop's deadline")

    # Known to Redis, as after any process's stop: the first leave a Redis sees is refused
    # (NOSCRIPT) and sent again, which a late answer leaves no time for.
    await redis.script_load(store._leave.script)
    redis_proxy.hold_request(store._release_lock.sha, after_the_deadline)
    await running.bot.stop(grace_seconds=0)
    await wait_until(lambda: redis_proxy.requests_held == 1, "the release passed on, after the deadline")

    async def left() -> bool:
        return await redis.zscore(store.keys.processes_left, me) is not None

    await wait_until(left, "the stop's leave in Redis")


async def test_a_stop_while_redis_does_not_answer_does_not_wait_out_the_leave_s_retries(
    start_bot: StartBot, redis: Redis
) -> None:
    """Redis takes no write: the stop's leave cannot land. The stop waited out its retries, four
    tries of 5 s, for what the process's liveness does on its own within 5 s; now it waits no
    longer than the stop's one deadline past the grace allows, close included."""
    running = await start_bot("http")
    loop = asyncio.get_running_loop()
    await redis.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        started = loop.time()
        await running.bot.stop(grace_seconds=1)
        took = loop.time() - started
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    # Not a speed figure: the retries alone took 20 s; the margin is for a loaded machine.
    assert took < STOP_PAST_GRACE_SECONDS + 1 + 7, took


@pytest.mark.parametrize("failure", ["replies held", "silent", "refused"])
async def test_a_stop_while_redis_does_not_answer_ends_soon_after_its_grace(
    failure: str, spawn_bot: SpawnBot, redis_proxy: HeldReplyProxy, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A turn runs past the grace, holding its thread's lock, as Redis stops answering: its
    replies held back for good, or nothing answered at all (new connections taken and left
    unanswered), or no Redis listening. The stop's steps past the grace (the turn let go of its
    thread, the leave, the store's close) waited 5 + 1 + 5 s, each its own bound, where Redis
    took their commands and did not answer: 11 s past the grace, past a platform's kill after a
    default grace of 20 s (Heroku's 30 s; measured here: 11.5 s past a 0.5-s grace). They share
    one deadline now, which the log says was reached before the stop ends (a refused connection
    fails at once: nothing waits for the deadline then)."""
    grace = 0.5
    bot = await spawn_bot(REDIS_URL=redis_proxy.url, SHUTDOWN_GRACE_SECONDS=str(grace))
    llm.enqueue(Hang())
    await slack.post_user_message(CHANNEL, f"<@{BOT}> never-ending question")
    await llm.wait_for_requests(1)
    if failure == "replies held":
        redis_proxy.hold_replies()
    elif failure == "silent":
        redis_proxy.go_silent()
    else:
        await redis_proxy.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    bot.terminate()
    assert await bot.wait() == 0, bot.log()
    took = loop.time() - started
    log = bot.log()
    # Not a speed figure: 11 s past the grace before; the margin is for a loaded machine.
    assert took < grace + STOP_PAST_GRACE_SECONDS + 5, (took, log)
    if failure == "refused":
        assert _in_order(log, "grace period over; 1 turns left for recovery", "bot stopped"), log
    else:
        steps = ["grace period over; 1 turns left for recovery", "stop's deadline reached", "bot stopped"]
        assert _in_order(log, *steps), log


def _in_order(log: str, *lines: str) -> bool:
    """Whether each of `lines` is in `log`, in this order."""
    at = [log.find(line) for line in lines]
    return -1 not in at and at == sorted(at)


async def test_a_holder_whose_message_was_noted_by_another_while_it_stalled_posts_no_second_note(
    redis_proxy: HeldReplyProxy,  # first: it outlasts the processes that reach Redis through it
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A resumes a turn killed mid-stream and, closing its answer (Slack slow to answer), stalls
    past its lock's lifetime: its renewal hangs (Redis out of its reach). B takes the thread,
    resumes the turn, notes it and lets the lock go. A's renewal then finds the lock free and
    the message finished (RELEASED), and A goes on to its note. Before, that renewal dropped the
    lock A's turn still held from its memory, so the note, which looks its fence up there, went
    unfenced: the note twice. The note's fence now finds the message finished: A stands down."""
    caplog.set_level(logging.INFO)
    first = await spawn_bot()
    llm.chunk_delay = 0.2  # a long answer, written slowly
    llm.reply = lambda messages: "A long answer that takes a while to write. " * 20
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> explain everything")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="the answer to stream")
    first.kill()
    await first.wait()

    llm.chunk_delay = 0.0
    only_the_first = iter([True])
    closing = slack.gate("chat.stopStream", lambda args: next(only_the_first, False))  # A's
    a = await start_bot("http", REDIS_URL=redis_proxy.url, **FAST_RECOVERY)  # A's Redis: through the proxy
    await slack.wait_for(lambda: closing.waiting == 1, timeout=15, what="A to close the answer")
    renewal_goes = redis_proxy.stall(a.bot.store._renew_thread_lock)  # out of A's reach from now
    lock = await _thread_lock(redis)
    free = lambda: _state_is(redis, lock, None)  # noqa: E731
    await wait_until(free, "A's lock to expire", within=15)

    b = await start_bot("http", **FAST_RECOVERY)
    noted = lambda: [m["text"] for m in slack.bot_messages(CHANNEL, ts)].count(INTERRUPTED)  # noqa: E731
    await slack.wait_for(lambda: noted() == 1, timeout=15, what="B's note")
    journal = f"turn:T1:{CHANNEL}:{ts}"
    finished = lambda: _state_is(redis, journal, "noted")  # noqa: E731
    await wait_until(finished, "B to finish the message", within=15)
    await wait_until(free, "B to let the lock go", within=15)
    assert redis_proxy.stalled >= 1  # A's renewal hung meanwhile
    renewal_goes.set()
    # Its reply, the first integer one (after a NOSCRIPT, when Redis had not run the script yet;
    # a beat's, which may share its batch, is an array): free, and finished.
    found = lambda: [r for chunk in redis_proxy.stall_replies for r in _resp(chunk) if isinstance(r, int)]  # noqa: E731
    await wait_until(found, "A's renewal", within=15)
    assert found()[0] == LockRenewal.RELEASED
    closing.opened.set()
    stood_down = lambda: "standing down" in caplog.text  # noqa: E731
    await slack.wait_for(lambda: noted() > 1 or stood_down(), timeout=15, what="A's note or A standing down")
    await a.settle()
    await b.settle()
    messages = slack.bot_messages(CHANNEL, ts)
    assert noted() == 1, [m["text"][:40] for m in messages]
    assert len(llm.requests) == 1
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"


async def _state_is(redis: Redis, key: str, state: str | None) -> bool:
    """Whether the journal at `key` is in `state`; with None, whether `key` is gone."""
    if state is None:
        return not await redis.exists(key)
    return await redis.hget(key, "state") == state


async def test_killed_after_posting_the_interrupted_note_before_recording_it_is_not_noted_again(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    """A process resumes a turn killed mid-stream, closes its answer and posts the note that it
    was interrupted, and is killed itself as Slack takes the note, before it recorded it. The
    next process resumes the turn again: the note is there, and is not posted a second time."""
    first = await spawn_bot()
    llm.chunk_delay = 0.2  # a long answer, written slowly
    llm.reply = lambda messages: "A long answer that takes a while to write. " * 20
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> explain everything")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="the answer to stream")
    first.kill()
    await first.wait()

    llm.chunk_delay = 0.0
    noting = slack.gate("chat.postMessage", lambda args: INTERRUPTED in str(args), answered=True)
    second = await spawn_bot()
    await slack.wait_for(lambda: noting.waiting == 1, timeout=15, what="the second process's note")
    second.kill()
    await second.wait()
    noting.opened.set()

    survivor = await start_bot("http", **FAST_RECOVERY)
    finished = lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{ts}", "noted")  # noqa: E731
    await wait_until(finished, "the survivor to finish the turn", within=15)
    await survivor.settle()
    texts = [m["text"] for m in slack.bot_messages(CHANNEL, ts)]
    assert texts.count(INTERRUPTED) == 1, [t[:40] for t in texts]
    assert len(llm.requests) == 1


@pytest.mark.parametrize(
    ("answer", "bare_stop"), [("short", "closes it"), ("short", "fails"), ("long", "fails")]
)
async def test_killed_after_posting_an_error_notice_under_a_stream_before_recording_it(
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    answer: str,
    bare_stop: str,
) -> None:
    """Slack refuses a streamed answer's final stop for good, so the turn ends with "something
    went wrong" under it; the process is killed as Slack takes that notice, before it recorded
    it. The next process resumes the turn, finds the notice, and posts no second one, and the
    stream is closed: by the first process before its notice, or, when Slack failed that bare
    stop too (a 503, three times), by the one that resumes the turn; for a long answer, its
    second message, which the journal does not name. Before, nothing closed it: the notice went
    under a stream left open, and the resumed turn took the notice for the outcome and stopped
    there, so Slack showed the answer as still being written, for good."""
    first = await spawn_bot()
    if answer == "long":
        llm.chunk_delay, llm.chunk_chars = 0.02, 200
        llm.reply = lambda messages: _long_answer()  # two messages
    else:
        llm.chunk_delay, llm.chunk_chars = 0.05, 12  # still written when it first shows: streamed
        llm.reply = lambda messages: (
            "First paragraph of the answer.\n\nSecond paragraph, which comes later on."
        )
    stopping = slack.gate("chat.stopStream", lambda args: bool(args.get("blocks")))  # the final stop
    noting = slack.gate("chat.postMessage", lambda args: DELIVERY_FAILED in str(args), answered=True)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: stopping.waiting == 1, timeout=15, what="the answer's final stop")
    slack.fail_next("chat.stopStream", error="msg_too_long")
    if bare_stop == "fails":
        slack.fail_next("chat.stopStream", error="service_unavailable", status=503, times=3)
    stopping.opened.set()
    await slack.wait_for(lambda: noting.waiting == 1, timeout=15, what="the notice, taken by Slack")
    first.kill()
    await first.wait()
    noting.opened.set()

    survivor = await start_bot("http", **FAST_RECOVERY)
    finished = lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{ts}", "noted")  # noqa: E731
    await wait_until(finished, "the survivor to finish the turn", within=15)
    await survivor.settle()
    messages = slack.bot_messages(CHANNEL, ts)
    assert len(messages) == (3 if answer == "long" else 2), [m["text"][:40] for m in messages]
    assert messages[-1]["text"] == DELIVERY_FAILED
    assert not [m["ts"] for m in messages if m.get("streaming")], "the answer was left streaming"
    assert len(llm.requests) == 1


async def test_killed_between_closing_a_stream_and_posting_the_error_notice_under_it(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    """The stream of an answer Slack would not finish is closed before "something went wrong"
    goes under it; a process killed between the two (the notice not yet posted) leaves the next
    one an answer cut short: it notes it interrupted, once, and nothing is left streaming."""
    first = await spawn_bot()
    llm.chunk_delay, llm.chunk_chars = 0.05, 12  # still written when it first shows: streamed
    llm.reply = lambda messages: "First paragraph of the answer.\n\nSecond paragraph, which comes later on."
    slack.fail_next("chat.stopStream", error="msg_too_long")
    noting = slack.gate("chat.postMessage", lambda args: DELIVERY_FAILED in str(args))  # held, not posted
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: noting.waiting == 1, timeout=15, what="the notice on its way")
    [streamed] = slack.bot_messages(CHANNEL, ts)
    assert not streamed.get("streaming"), "the notice went out before the stream was closed"
    first.kill()
    await first.wait()
    # The held notice is never let through: Slack never carried it out.

    survivor = await start_bot("http", **FAST_RECOVERY)
    finished = lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{ts}", "noted")  # noqa: E731
    await wait_until(finished, "the survivor to finish the turn", within=15)
    await survivor.settle()
    messages = slack.bot_messages(CHANNEL, ts)
    assert [m["text"] for m in messages][1:] == [INTERRUPTED], [m["text"][:40] for m in messages]
    assert not [m["ts"] for m in messages if m.get("streaming")]
    assert len(llm.requests) == 1


async def test_a_resumed_turn_that_finds_its_notice_with_redis_out_of_reach_posts_no_second_one(
    spawn_bot: SpawnBot,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis_proxy: HeldReplyProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A long answer Slack would not finish, "something went wrong" posted under it, the process
    killed before it recorded that. The next one resumes the turn and finds the notice; Redis goes
    out of reach as it reads the thread, so it cannot tell which of the bot's messages its stored
    conversation holds. It closes the answer's messages all the same (a bare stop of a finished
    one does nothing) and posts nothing more. Before, the failed read made the turn fail, and
    a second notice ("something went wrong on my side") went under the first."""
    first = await spawn_bot()
    llm.chunk_delay, llm.chunk_chars = 0.02, 200
    llm.reply = lambda messages: _long_answer()  # two messages
    stopping = slack.gate("chat.stopStream", lambda args: bool(args.get("blocks")))  # the final stop
    noting = slack.gate("chat.postMessage", lambda args: DELIVERY_FAILED in str(args), answered=True)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> tell me")
    await slack.wait_for(lambda: stopping.waiting == 1, timeout=15, what="the answer's final stop")
    slack.fail_next("chat.stopStream", error="msg_too_long")
    slack.fail_next("chat.stopStream", error="service_unavailable", status=503, times=3)  # bare stop too
    stopping.opened.set()
    await slack.wait_for(lambda: noting.waiting == 1, timeout=15, what="the notice, taken by Slack")
    first.kill()
    await first.wait()
    noting.opened.set()

    reading = slack.gate("conversations.replies")
    await start_bot("http", REDIS_URL=redis_proxy.url, **FAST_RECOVERY)
    await slack.wait_for(lambda: reading.waiting == 1, timeout=15, what="the resumed turn's look in Slack")
    await redis_proxy.stop()  # every connection to Redis cut, and none taken
    reading.opened.set()
    await wait_until(lambda: "turn crashed" in caplog.text, "the turn to end (its outcome not recorded)")
    messages = slack.bot_messages(CHANNEL, ts)
    assert [m["text"] for m in messages][2:] == [DELIVERY_FAILED], [m["text"][:40] for m in messages]
    assert not [m["ts"] for m in messages if m.get("streaming")], "the answer was left streaming"


async def test_a_resumed_turn_that_finds_its_notice_leaves_an_earlier_answer_after_its_question_alone(
    spawn_bot: SpawnBot, start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis
) -> None:
    """A second question, asked as the first's long answer (three messages) was being written,
    gets an answer Slack will not finish, "something went wrong" under it, and the process is
    killed before it recorded that. The resumed turn finds the notice and closes its own answer's
    stream, not the earlier answer's middle message, which came after its question (finished long
    since; the stored conversation knows an answer by its first message only). Before, that one
    was stopped bare again: a Tier 2 chat.stopStream spent on a message that was not streaming."""
    first = await spawn_bot()
    llm.chunk_delay, llm.chunk_chars = 0.02, 200
    second = "Second answer, which streams a while. " * 80  # still written when it first shows
    llm.reply = lambda messages: second if "second" in str(messages[-1]) else _long_answer(24_000)
    q1 = await slack.post_user_message(CHANNEL, f"<@{BOT}> first question")
    q2 = await slack.post_user_message(CHANNEL, f"<@{BOT}> second question", thread_ts=q1)
    stopping = slack.gate("chat.stopStream", lambda args: f"answer_to:{q2}" in str(args))  # the final stop
    noting = slack.gate("chat.postMessage", lambda args: DELIVERY_FAILED in str(args), answered=True)
    await slack.wait_for(lambda: stopping.waiting == 1, timeout=15, what="the second answer's final stop")
    slack.fail_next("chat.stopStream", error="msg_too_long")
    stopping.opened.set()
    await slack.wait_for(lambda: noting.waiting == 1, timeout=15, what="the notice, taken by Slack")
    first.kill()
    await first.wait()
    noting.opened.set()

    survivor = await start_bot("http", **FAST_RECOVERY)
    finished = lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{q2}", "noted")  # noqa: E731
    await wait_until(finished, "the survivor to finish the turn", within=15)
    await survivor.settle()
    messages = slack.bot_messages(CHANNEL, q1)
    assert [m["text"] for m in messages][4:] == [DELIVERY_FAILED], [m["text"][:40] for m in messages]
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer was left streaming"
    middle = messages[1]["ts"]  # the first answer's
    stops = [
        c.response.get("error")
        for c in slack.calls
        if c.method == "chat.stopStream" and c.args.get("ts") == middle
    ]
    assert stops == [None], stops  # its own, as the next message began
