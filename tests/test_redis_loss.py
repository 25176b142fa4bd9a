"""Redis coming back empty: a restart without persistence, or a failover to a replica that had not
caught up. The conversations are gone (read again from Slack where the bot can); a turn in flight
must still be answered, once, and its sign taken away. Emulated with FLUSHALL at chosen moments,
and once with a real redis-server killed and started again without its data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from bot.context import EARLIER_UNREAD_NOTE
from bot.formatting import SlackMarkdown
from bot.rate_limit import SlackBudget
from bot.redis_loss import RedisLossRecovery
from bot.store import Accepted, IncomingMessage, Store, ThreadKey, Turn
from bot.turn import DELIVERY_FAILED, INTERRUPTED, STORE_UNAVAILABLE, TURN_FAILED
from tests.conftest import RATE_SCALE, RunningBot, StartBot
from tests.emulators.openai_api import Gated, OpenAIEmulator, Reply, Status
from tests.emulators.slack import SlackEmulator
from tests.redis_proxy import HeldReplyProxy
from tests.redis_server import RedisServer
from tests.test_forget import everything_in
from tests.test_streaming import _long_answer, shown

CHANNEL = "C900"
DM = "D900"
BOT = "UBOT"
NOT_ANSWERS = (DELIVERY_FAILED, STORE_UNAVAILABLE, TURN_FAILED)
FORGOT = "redis came back without the bot's data"
LOOKED = "answer found posted already"


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _asked(llm: OpenAIEmulator, text: str) -> int:
    """How many times the model was asked a question ending with `text`."""
    return sum(str(r["messages"][-1]["content"]).endswith(text) for r in llm.requests)


def _looks(slack: SlackEmulator) -> list[str]:
    """The questions looked up in Slack before their turn: reads from the question, inclusive."""
    reads = slack.calls_to("conversations.replies") + slack.calls_to("conversations.history")
    return [call.args["oldest"] for call in reads if call.args.get("inclusive")]


async def _until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,  # noqa: ASYNC109
    what: str = "a condition of Redis",
) -> None:
    """Poll an async `condition` of Redis until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


async def _state_is(redis: Redis, journal: str, state: str | None) -> bool:
    """Whether the journal is in `state`; with None, whether the key is gone."""
    if state is None:
        return not await redis.exists(journal)
    return await redis.hget(journal, "state") == state


async def _held_by(redis: Redis, lock: str, process: str) -> bool:
    return (await redis.get(lock) or "").startswith(f"{process}:")


def _a_beat(redis: Redis, process: str, before: float | None) -> Callable[[], Awaitable[bool]]:
    """Whether the process has beaten since its liveness (in Redis) was `before`."""

    async def beaten() -> bool:
        return (await redis.zscore("processes", process) or 0) > (before or 0)

    return beaten


@pytest.mark.parametrize("where", ["thread", "dm"])
async def test_a_turn_in_flight_when_redis_loses_its_data_is_answered_once(
    where: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lock, the journal and the inbox vanish while the model thinks. Before, the answer's
    post found no journal, took that for another worker having finished the message, and stood
    down: no answer, and "is thinking…" (or the reaction) left up for good."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    thought = asyncio.Event()
    llm.enqueue(Gated(thought))  # the model thinks until Redis has lost its data
    if where == "thread":
        ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
        channel, thread = CHANNEL, ts
    else:
        ts = await slack.post_user_message(DM, "why is api-prod red?")
        channel, thread = DM, "top"
    await llm.wait_for_requests(1)
    await redis.flushall()
    thought.set()
    [answer] = await slack.wait_for_bot_messages(channel, thread, count=1)
    await running.settle()
    assert answer["text"] == "Answer: ann: why is api-prod red?"
    assert not slack.statuses.get((channel, ts)), "is thinking… left up"
    assert not (slack.message(channel, ts) or {}).get("reactions"), "the thinking reaction left"
    assert "standing down" not in caplog.text and _errors(caplog) == []


async def test_a_long_answer_streaming_when_redis_loses_its_data_is_shown_whole(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Its second message is claimed after the loss: before, the answer stopped after its first
    message (9,498 of some 15,200 characters), with no buttons and no note."""
    raw = _long_answer()
    llm.chunk_chars, llm.chunk_delay = 200, 0.02
    llm.enqueue(Reply(raw))
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="the stream to start")
    await redis.flushall()
    await slack.wait_for(
        lambda: len(slack.bot_messages(CHANNEL, ts)) == 2, timeout=15, what="its second message"
    )
    await bot.settle()
    messages = slack.bot_messages(CHANNEL, ts)
    assert not any(m.get("streaming") for m in messages)
    assert "\n\n".join(shown(m) for m in messages) == SlackMarkdown.format(raw).strip()
    assert _errors(caplog) == []


async def test_an_answer_waiting_out_a_429_when_redis_loses_its_data_is_posted(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    await slack.post_user_message(DM, "first question")
    await slack.wait_for(lambda: bool(slack.rate_limited), what="the 429")
    await redis.flushall()
    await slack.post_user_message(DM, "second question")
    first, second = await slack.wait_for_bot_messages(DM, "top", count=2, timeout=15)
    await bot.settle()
    assert [first["text"], second["text"]] == ["Answer: ann: first question", "Answer: ann: second question"]
    assert len(slack.bot_messages(DM, "top")) == 2 and _errors(caplog) == []


async def test_a_follow_up_after_redis_lost_its_data_is_answered_with_the_thread_read_from_slack(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whether the bot follows a thread is kept in Redis: before, a follow-up without a mention
    was ignored once Redis had lost it, without a word in the log. The loss is noticed at the
    next beat, once, and the threads this process took part in are followed still."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the check api-prod is red")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(CHANNEL, "what did I say was red?", thread_ts=root)
    _, answer = await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await running.settle()
    assert answer["text"] == "Answer: ann: what did I say was red?"
    assert any("the check api-prod is red" in m["content"] for m in llm.requests[-1]["messages"])
    [noticed] = [r for r in caplog.records if FORGOT in r.getMessage()]
    assert noticed.levelno == logging.WARNING and _errors(caplog) == []


async def test_a_redis_restarted_without_its_data_mid_turn_leaves_no_question_unanswered(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real redis-server, killed while the model thinks and started again empty (no
    append-only file): the question is answered once."""
    caplog.set_level(logging.INFO)
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        running = await start_bot("http", REDIS_URL=server.url)
        thought = asyncio.Event()
        llm.enqueue(Gated(thought))  # the model thinks until Redis is back, empty (not for 3 s)
        ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> and what now?")
        await llm.wait_for_requests(1)
        server.kill()
        server.start()
        thought.set()
        [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, count=1, timeout=15)
        await running.settle()
        assert answer["text"] == "Answer: ann: and what now?"
        assert not slack.statuses.get((CHANNEL, ts))
        assert not any(m["text"] in NOT_ANSWERS for m in slack.bot_messages(CHANNEL, ts))
    finally:
        server.stop()


@pytest.mark.parametrize("noticed", ["while the turn runs", "after the turn ended", "after an edit"])
async def test_a_follow_up_waiting_behind_a_turn_when_redis_loses_its_data_is_answered(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    noticed: str,
) -> None:
    """A follow-up queued behind the answer in flight goes with the thread's inbox; it was
    acknowledged, so Slack will not send it again. The process that accepted it queues it again
    once it notices the loss, also when the turn ahead of it ended before that (its thread was
    held since the last beat), and as edited while it waited: before, it was never answered."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    queued = asyncio.Event()  # the first answer in flight until the follow-up waits behind it
    llm.enqueue(Gated(queued))
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    asked = "and prod?" if noticed == "after an edit" else "and staging?"
    follow_up = await slack.post_user_message(CHANNEL, f"<@{BOT}> {asked}", thread_ts=root)
    await _until(
        lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "queued"), what="the follow-up to wait"
    )
    queued.set()
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    if noticed == "after an edit":
        await slack.edit_message(CHANNEL, follow_up, f"<@{BOT}> and staging?")  # queued again as edited
    await redis.flushall()
    if noticed != "after the turn ended":
        await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    posting.opened.set()
    first, second = await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await running.settle()
    assert first["text"] == "Answer: ann: why is api-prod red?"
    assert second["text"] == "Answer: ann: and staging?"
    assert "message queued again" in caplog.text and _errors(caplog) == []
    assert "look_first=True" not in caplog.text and _looks(slack) == []  # alone: nobody else to ask about


# With several processes, a message one accepted may have been answered by another, or its
# deletion told to another: it is queued again marked to be looked up in Slack first, by whichever
# process's worker takes it (from reviews of the first version, which queued it again blindly,
# and of the second, which left it lost).


@pytest.mark.parametrize("where", ["thread", "dm"])
async def test_with_several_processes_a_follow_up_waiting_behind_a_turn_when_redis_loses_its_data_is_answered(
    where: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B answers the question; A accepts the follow-up, which waits behind B's turn. Before, with
    another process alive, A left it lost: acknowledged to Slack, never answered."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    if where == "thread":
        root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
        channel, thread, follow_up = CHANNEL, root, f"<@{BOT}> and staging?"
    else:
        await slack.post_user_message(DM, "why is api-prod red?")
        channel, thread, root, follow_up = DM, "top", None, "and staging?"
    await slack.wait_for(lambda: posting.waiting > 0, what="B's answer's post")
    slack.use_http(f"{a.url}/slack/events")
    asked = await slack.post_user_message(channel, follow_up, thread_ts=root)
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="A to queue it again")
    posting.opened.set()
    first, second = await slack.wait_for_bot_messages(channel, thread, count=2, timeout=15)
    await a.settle()
    await b.settle()
    assert [first["text"], second["text"]] == [
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert len(slack.bot_messages(channel, thread)) == 2 and _asked(llm, "and staging?") == 1
    assert _looks(slack) == [asked]  # looked up once, found unanswered
    assert _errors(caplog) == []


async def test_with_several_processes_a_follow_up_another_answered_is_not_answered_twice(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A accepts a follow-up while B holds the thread, and B answers it, but cannot tell from
    Slack that its post landed (deferred: recovery would find it there); then Redis loses its
    data. A queues the follow-up again, and the look in Slack finds B's answer. (Most answered
    follow-ups A has long forgotten: each beat drops those Redis says are done.) The first
    version answered such a follow-up twice."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    first, second = asyncio.Event(), asyncio.Event()
    llm.enqueue(Gated(first), Gated(second))  # each answer in flight until the test is ready
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    slack.use_http(f"{a.url}/slack/events")
    asked = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    first.set()  # A took the follow-up while B's answer was in flight
    await llm.wait_for_requests(2)  # B answered the question and took the follow-up
    slack.fail_next("chat.postMessage", after=True, drop=True)
    slack.fail_next("conversations.replies", times=3)
    second.set()
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, what="B's post to be in doubt")
    await redis.flushall()
    await slack.wait_for(lambda: LOOKED in caplog.text, what="the look to find B's answer")
    await a.settle()
    await b.settle()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, root)] == [
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert _asked(llm, "and staging?") == 1 and _looks(slack) == [asked]
    assert _errors(caplog) == []


async def test_with_several_processes_follow_ups_another_finished_before_the_loss_are_not_looked_up(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A forgets, at its next beat, the follow-ups it accepted that another process finished:
    after a loss only those still waiting cost a look (one read of Slack's Tier 3 budget each).
    Without that, every follow-up another process answered stayed in A's memory (up to a
    thousand), each one read again from Slack after a loss."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    answered = asyncio.Event()
    llm.enqueue(Gated(answered))  # B's answer in flight until A has taken the follow-up
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    slack.use_http(f"{a.url}/slack/events")
    asked = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await _until(lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{asked}", "answered"))
    # Two of A's beats after that: the first read the journal, and A acted on it before the next.
    assert a.bot.turns is not None
    for _ in range(2):
        await _until(
            _a_beat(redis, a.bot.turns.process_id, await redis.zscore("processes", a.bot.turns.process_id))
        )
    await redis.flushall()
    await slack.wait_for(
        lambda: caplog.text.count("waiting messages to queue again") == 2, what="both to decide"
    )
    await a.settle()
    await b.settle()
    assert "count=0" in caplog.text and "count=1" not in caplog.text
    assert _looks(slack) == [] and len(slack.bot_messages(CHANNEL, root)) == 2


async def test_with_several_processes_a_follow_up_another_is_answering_at_the_loss_is_answered_once(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B took A's follow-up and is about to show its answer when Redis loses its data, lock and
    all; A queues the follow-up again. B takes its lock back as it notices the loss, so A's worker
    waits for B's turn, which takes A's copy off the inbox: not asked of the model twice, and
    B's answer not stood down."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    answered = asyncio.Event()
    llm.enqueue(Gated(answered))  # B's first answer in flight until A has taken the follow-up
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    await slack.wait_for(lambda: bool(slack.calls_to("assistant.threads.setStatus")), what="the first sign")
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    signing = slack.gate("assistant.threads.setStatus", status="is thinking…")  # the answer waits for it
    # B's sign for the follow-up needs a free setStatus slot in the thread (a sign without one is
    # skipped, and the gate never waited for): B's first answer goes on once the first sign's slot
    # is free again (its calls' key expires with the window), not while a quick run is within it.
    budget = SlackBudget(b.bot.store, scale=RATE_SCALE)
    signs = budget.bucket("T1", "assistant.threads.setStatus", f"{CHANNEL}:{root}")
    sign_slot = b.bot.store.keys.rate_calls(signs.name)

    async def sign_slot_free() -> bool:
        return not await redis.exists(sign_slot)

    await _until(sign_slot_free)
    answered.set()
    await slack.wait_for(lambda: signing.waiting > 0, what="B's turn on the follow-up")
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="A to queue it again")
    signing.opened.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await a.settle()
    await b.settle()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, root)] == [
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert _asked(llm, "and staging?") == 1
    assert "standing down" not in caplog.text and _errors(caplog) == []


async def test_with_several_processes_a_follow_up_deleted_through_another_is_not_answered(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A accepts a follow-up behind its own turn; its deletion reaches B. A queues it again after
    the loss, and the look finds it gone: its text (a password) never reaches the model. The
    first version sent it."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")
    slack.use_http(f"{a.url}/slack/events")
    queued = asyncio.Event()  # the first answer in flight until the follow-up waits behind it
    llm.enqueue(Gated(queued))
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    secret = f"<@{BOT}> and staging? my password is hunter2"
    follow_up = await slack.post_user_message(CHANNEL, secret, thread_ts=root)
    await _until(
        lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "queued"), what="the follow-up to wait"
    )
    queued.set()
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    slack.use_http(f"{b.url}/slack/events")
    await slack.delete_message(CHANNEL, follow_up)
    assert await redis.hget(f"turn:T1:{CHANNEL}:{follow_up}", "deleted") == "1"
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="A to queue it again")
    posting.opened.set()
    await slack.wait_for(lambda: "was deleted meanwhile" in caplog.text, what="the look to find it gone")
    await a.settle()
    await b.settle()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, root)] == ["Answer: ann: why is api-prod red?"]
    assert not any("hunter2" in str(request) for request in llm.requests)
    assert _looks(slack) == [follow_up] and _errors(caplog) == []


async def test_with_several_processes_a_follow_up_slack_cannot_be_asked_about_is_answered_with_a_warning(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Slack fails every try of the look: the follow-up is answered all the same (a person's
    question lost is worse than a rare second answer), and the log says it may be twice."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for(lambda: posting.waiting > 0, what="B's answer's post")
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="A to queue it again")
    slack.fail_next("conversations.replies", times=3)
    posting.opened.set()
    _, second = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await a.settle()
    await b.settle()
    assert second["text"] == "Answer: ann: and staging?" and len(slack.bot_messages(CHANNEL, root)) == 2
    [warned] = [r for r in caplog.records if "could not look in slack before answering" in r.getMessage()]
    assert warned.levelno == logging.WARNING and _errors(caplog) == []


async def test_with_several_processes_a_turn_whose_lock_a_new_follow_up_took_after_the_loss_is_answered(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B is answering a question when Redis loses its data; a follow-up reaches A before B's next
    beat, and A's worker takes the thread's lock, which nobody held any more. B stands down for
    it, as for any worker that holds the lock now, but A's inbox never had B's question. Before,
    that question was lost: B now queues it again, to be looked up in Slack first."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    noticed = asyncio.Event()  # B's answer, and A's to the follow-up, until both noticed the loss
    llm.enqueue(Gated(noticed), Gated(noticed))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: caplog.text.count(FORGOT) >= 2, what="both processes to notice the loss")
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    noticed.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await a.settle()
    await b.settle()
    answers = sorted(m["text"] for m in slack.bot_messages(CHANNEL, root))
    assert answers == ["Answer: ann: and staging?", "Answer: ann: why is api-prod red?"]
    assert _errors(caplog) == []


# A DM is one rolling conversation: once a loss is noticed, its earlier messages are read back from
# Slack (conversations.history, Tier 3) once, as a thread's are. Before, the next DM was answered
# as if the conversation were new, and the model was not told.


async def _dm_then_loss(
    running: RunningBot, slack: SlackEmulator, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A question and its answer in the DM, then Redis loses its data and the bot notices."""
    await slack.post_user_message(DM, "the check api-prod is red")
    await slack.wait_for_bot_messages(DM, "top", count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")


def _prompt(llm: OpenAIEmulator) -> list[str]:
    """The last model request's messages after the system message."""
    return [m["content"] for m in llm.requests[-1]["messages"][1:]]


async def test_a_dm_after_redis_lost_its_data_is_answered_with_its_earlier_messages_read_from_slack(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    await _dm_then_loss(running, slack, redis, caplog)
    await slack.post_user_message(DM, "what did I say was red?")
    await slack.wait_for_bot_messages(DM, "top", count=2)
    await running.settle()
    assert _prompt(llm) == [
        "ann: the check api-prod is red",
        "Answer: ann: the check api-prod is red",
        "ann: what did I say was red?",
    ]
    [read] = slack.calls_to("conversations.history")
    assert read.args["channel"] == DM
    assert EARLIER_UNREAD_NOTE not in llm.requests[-1]["messages"][0]["content"]
    assert _errors(caplog) == []


async def test_a_dm_from_someone_new_reads_no_history_when_no_loss_was_noticed(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A burst of people new to the bot must not cost a Tier 3 call each."""
    running = await start_bot("http")
    await slack.post_user_message(DM, "hello, first time here")
    await slack.post_user_message("D901", "hi, me too", user="U2")
    await slack.wait_for_bot_messages(DM, "top", count=1)
    await slack.wait_for_bot_messages("D901", "top", count=1)
    await running.settle()
    assert len(llm.requests) == 2
    assert slack.calls_to("conversations.history") == []


async def test_a_dm_whose_history_slack_will_not_show_after_a_loss_is_answered_and_read_next_turn(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    await _dm_then_loss(running, slack, redis, caplog)
    slack.fail_next("conversations.history", "internal_error")
    await slack.post_user_message(DM, "what did I say was red?")
    await slack.wait_for_bot_messages(DM, "top", count=2)
    await running.settle()
    assert _prompt(llm) == ["ann: what did I say was red?"]
    assert EARLIER_UNREAD_NOTE in llm.requests[-1]["messages"][0]["content"]
    [warning] = [r for r in caplog.records if "could not read earlier" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "internal_error" in warning.getMessage()
    assert _errors(caplog) == [] and not any(r.exc_info for r in caplog.records)

    await slack.post_user_message(DM, "and is it still?")
    await slack.wait_for_bot_messages(DM, "top", count=3)
    await running.settle()
    assert _prompt(llm) == [
        "ann: the check api-prod is red",
        "Answer: ann: the check api-prod is red",
        "ann: what did I say was red?",
        "Answer: ann: what did I say was red?",
        "ann: and is it still?",
    ]
    assert len(slack.calls_to("conversations.history")) == 2


async def test_a_dm_after_a_loss_reads_its_history_from_slack_only_once(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    await _dm_then_loss(running, slack, redis, caplog)
    await slack.post_user_message(DM, "what did I say was red?")
    await slack.wait_for_bot_messages(DM, "top", count=2)
    await running.settle()
    await slack.post_user_message(DM, "and is it still?")
    await slack.wait_for_bot_messages(DM, "top", count=3)
    await running.settle()
    assert _prompt(llm) == [
        "ann: the check api-prod is red",
        "Answer: ann: the check api-prod is red",
        "ann: what did I say was red?",
        "Answer: ann: what did I say was red?",
        "ann: and is it still?",
    ]
    assert len(slack.calls_to("conversations.history")) == 1


async def test_forget_me_after_a_loss_takes_the_dm_answers_read_back_from_slack(
    start_bot: StartBot,
    slack: SlackEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A DM read back from Slack after a loss holds the bot's earlier answer, which quotes the
    person: linked to her question, it goes with her `forget me` (before, it stayed)."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    await _dm_then_loss(running, slack, redis, caplog)
    await slack.post_user_message(DM, "and is it still?")
    await slack.wait_for_bot_messages(DM, "top", count=2)
    await running.settle()
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, "top", count=3)
    await running.settle()
    for key, content in (await everything_in(redis)).items():
        assert "api-prod" not in content, (key, content)


async def test_a_dm_thread_after_a_loss_starts_with_the_question_its_answer_was_for(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply under one of the bot's DM answers: the thread is read from Slack, and the question
    before that answer is found in the DM itself, the DM's stored conversation being gone.
    Before, the model saw the answer without its question."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    await _dm_then_loss(running, slack, redis, caplog)
    [answer] = slack.bot_messages(DM, "top")
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    assert _prompt(llm) == [
        "ann: the check api-prod is red",
        "Answer: ann: the check api-prod is red",
        "ann: more on this",
    ]
    [read] = slack.calls_to("conversations.history")
    assert (read.args["latest"], read.args["limit"]) == (answer["ts"], "1")  # the one message before it
    assert _errors(caplog) == []


@pytest.mark.parametrize("where", ["dm", "thread"])
async def test_a_conversation_read_back_after_a_loss_holds_what_was_stored_and_no_notices(
    where: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Read back from Slack, a conversation starts after its last `reset`, and leaves out the
    bot's notices (here, that the model failed), which the stored one never held either. Before,
    both came back, the notice as one of the bot's answers."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    channel, mention = (DM, "") if where == "dm" else (CHANNEL, f"<@{BOT}> ")
    first = await slack.post_user_message(channel, mention + "first question")
    thread = None if where == "dm" else first
    await slack.wait_for_bot_messages(channel, thread or "top", count=1)
    await running.settle()
    for count, text in enumerate(["reset", "the check api-prod is red", "and staging?"], start=2):
        if text == "and staging?":
            llm.enqueue(Status(400))
        await slack.post_user_message(channel, mention + text, thread_ts=thread)
        await slack.wait_for_bot_messages(channel, thread or "top", count=count)
        await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(channel, "what did I say was red?", thread_ts=thread)
    await slack.wait_for_bot_messages(channel, thread or "top", count=5)
    await running.settle()
    assert _prompt(llm) == [
        "ann: the check api-prod is red",
        "Answer: ann: the check api-prod is red",
        "ann: and staging?",
        "ann: what did I say was red?",
    ]


async def test_a_thread_read_back_after_a_loss_keeps_what_others_said_before_a_forget_me(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`forget me` takes away what its sender said (and the answers to it), not everyone's part
    of the conversation: bob's question and its answer stay in the stored thread after ann's
    `forget me`, and so must they when the thread is read back from Slack after a loss. (Before,
    the read-back dropped the whole thread before it, as after a `reset`.)"""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the check api-prod is red", user="U2")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()
    await slack.post_user_message(CHANNEL, f"<@{BOT}> my password is hunter2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await running.settle()
    await slack.post_user_message(CHANNEL, f"<@{BOT}> forget me", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=3)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> what did I say was red?", user="U2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=4)
    await running.settle()
    assert _prompt(llm) == [
        "bob: the check api-prod is red",
        "Answer: bob: the check api-prod is red",
        "bob: what did I say was red?",
    ]


@pytest.mark.parametrize("where", ["thread", "dm"])
async def test_a_reset_sent_while_the_answer_before_it_was_written_holds_after_a_loss(
    where: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A person sends `reset` while the bot still writes the answer to their question: that
    answer comes after the reset in Slack, but the stored conversation was reset after it. Read
    back after a loss, neither the question nor that answer may come back."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    channel, mention = (DM, "") if where == "dm" else (CHANNEL, f"<@{BOT}> ")
    written = asyncio.Event()
    llm.enqueue(Gated(written))  # the answer is written until the reset is done
    first = await slack.post_user_message(channel, mention + "my password is hunter2")
    thread = None if where == "dm" else first
    await llm.wait_for_requests(1)  # the answer is being written
    # Taken once its delivery is answered; it waits behind the answer (its reply comes after it).
    reset = await slack.post_user_message(channel, mention + "reset", thread_ts=thread)
    assert not slack.bot_messages(channel, thread or "top")  # the answer still being written
    written.set()
    answer, _ = await slack.wait_for_bot_messages(channel, thread or "top", count=2)
    assert answer["text"].startswith("Answer: ") and Decimal(reset) < Decimal(answer["ts"])  # after the reset
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(channel, mention + "what did I say?", thread_ts=thread)
    await slack.wait_for_bot_messages(channel, thread or "top", count=3)
    await running.settle()
    assert _prompt(llm) == ["ann: what did I say?"]


async def test_a_bare_reset_in_a_dm_thread_holds_when_the_thread_is_read_back_after_a_loss(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a DM every message is said to the bot, in a thread too: a bare `reset` there, before the
    bot spoke in the thread, starts it afresh, and so must it when the thread is read back."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    root = await slack.post_user_message(DM, "my password is hunter2")
    await slack.wait_for_bot_messages(DM, count=1)
    await running.settle()
    for count, text in enumerate(["reset", "the check api-prod is red"], start=1):
        await slack.post_user_message(DM, text, thread_ts=root)
        await slack.wait_for_bot_messages(DM, root, count=count)
        await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(DM, "what did I say was red?", thread_ts=root)
    await slack.wait_for_bot_messages(DM, root, count=3)
    await running.settle()
    assert _prompt(llm)[-3:] == [
        "ann: the check api-prod is red",
        "Answer: ann: the check api-prod is red",
        "ann: what did I say was red?",
    ]
    assert not any("hunter2" in text or text == "ann: reset" for text in _prompt(llm)), _prompt(llm)


async def test_with_several_processes_an_answer_shown_as_its_turn_stands_down_after_a_loss_is_not_given_again(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B is streaming its answer when Redis loses its data; a follow-up reaches A at once, and A's
    worker takes the thread's lock, which nobody held any more. B stands down and queues its
    question again, to be looked up in Slack first; but the look sees the follow-up's answer (with
    its buttons) as the bot's last message, not B's answer begun above it. Before, the question
    was answered a second time in full, and B's begun answer left streaming, never closed."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    # Some 3,000 characters, 7 s of streaming; the follow-up's answer waits until B has stood down.
    stood_down = asyncio.Event()
    llm.enqueue(Reply("a long explanation, " * 150), Gated(stood_down))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="B's answer to show")
    # Just after B's beat: its next, which would take its lock back, is a second away, and the
    # follow-up reaches A well within it.
    b_id = b.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    stood_down.set()
    await slack.wait_for(
        lambda: len(slack.bot_messages(CHANNEL, root)) >= 3, timeout=20, what="the turns to end"
    )
    await a.settle()
    await b.settle()
    messages = slack.bot_messages(CHANNEL, root)
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"
    assert _asked(llm, "the whole guide please") == 1, [m["text"][:40] for m in messages]
    assert INTERRUPTED in [m["text"] for m in messages]
    assert _errors(caplog) == []


async def test_with_several_processes_a_question_handed_on_with_its_answer_showing_is_never_deferred(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What keeps a deferral from losing the answer a handed-on question showed: as above, B's
    question is queued again, with that answer, as its turn stands down; its next turn resumes
    from it (closes it, notes it interrupted) and writes no answer, and only a written answer can
    be deferred. So even with Slack refusing the note, the turn ends and the question leaves its
    inbox: no deferral keeps it there, nor in B's memory, without the answer that showed."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    # The follow-up's answer streams too: only the note is posted with chat.postMessage. It waits
    # until B has stood down.
    stood_down = asyncio.Event()
    llm.enqueue(Reply("a long explanation, " * 150), Gated(stood_down, "staging is fine, " * 20))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="B's answer to show")
    b_id = b.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    slack.fail_next("chat.postMessage", times=5)  # the note that it was interrupted
    stood_down.set()
    await _until(lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{root}", "noted"), timeout=20)
    await a.settle()
    await b.settle()
    assert "resuming interrupted turn" in caplog.text and "notice not posted" in caplog.text
    assert "delivery deferred" not in caplog.text
    assert INTERRUPTED not in [m["text"] for m in slack.bot_messages(CHANNEL, root)]  # Slack refused it
    assert _asked(llm, "the whole guide please") == 1
    assert not [m["ts"] for m in slack.bot_messages(CHANNEL, root) if m.get("streaming")]
    assert await redis.zcard(a.bot.turns.store.keys.inbox(ThreadKey("T1", CHANNEL, root))) == 0


async def test_with_several_processes_a_resumed_turn_that_stands_down_after_a_second_loss_is_not_given_again(
    redis_proxy: HeldReplyProxy,  # first (both): they outlast A and B, which reach Redis through them
    other_redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, B stands down after a loss and hands its question on with the answer that had
    begun to show, and A resumes it. As A notes it interrupted, Redis loses its data again, and B
    takes the thread's free lock for a newer follow-up: A stands down in turn. Before, A handed
    the question on without that answer (its resumed turn had shown nothing of its own): looked
    up, the bot's last message was a follow-up's answer, and the question was answered a second
    time. It is handed on with it now, and resumed again.

    Until B's next beat the processes' set, lost with the data, does not name B (up to a beat;
    here B's beats wait for the question's turn). Before, A took B's lock over meanwhile, its
    holder taken for gone (as A handed the question on, or in its scan for orphaned threads): a
    third stand-down, of the newer follow-up's turn, which was asked of the model twice (under
    load, once in a full-file run, when B's beat fell between A's and the loss)."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http", REDIS_URL=redis_proxy.url)
    b = await start_bot("http", REDIS_URL=other_redis_proxy.url)  # Slack's events go to B
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    # The follow-up's answer waits until B has stood down; the newer follow-up's until A has, its
    # lock renewal finding B's lock.
    b_stood_down, a_stood_down = asyncio.Event(), asyncio.Event()
    llm.enqueue(Reply("a long explanation, " * 150), Gated(b_stood_down), Gated(a_stood_down))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="B's answer to show")
    b_id, a_id = b.bot.turns.process_id, a.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    note = slack.gate("chat.postMessage", lambda args: INTERRUPTED in str(args))
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    b_stood_down.set()
    await slack.wait_for(lambda: note.waiting == 1, timeout=20, what="A to resume B's question")
    await _until(_a_beat(redis, a_id, await redis.zscore("processes", a_id)))
    # A's next beat or renewal, which would take its lock back, hangs (Redis out of A's reach for
    # them) until B has taken it; B's beats wait for the question's turn to come again.
    b_took_it = redis_proxy.stall(a.bot.store._beat, a.bot.store._renew_thread_lock)
    turn_again = other_redis_proxy.stall(b.bot.store._beat)
    await redis.flushall()
    # B's next beat hung before B takes any work, whose Redis commands then ride in no batch with it.
    await slack.wait_for(lambda: other_redis_proxy.stalled > 0, what="B's next beat to hang")
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="A's next beat to hang")  # every run
    slack.use_http(f"{b.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and prod?", thread_ts=root)
    await _until(lambda: _held_by(redis, f"lock:T1:{CHANNEL}:{root}", b_id))
    b_took_it.set()
    await slack.wait_for(lambda: caplog.text.count("standing down") == 2, timeout=20, what="A to stand down")
    a_stood_down.set()
    resumed_again = lambda: caplog.text.count("resuming interrupted turn") == 2  # noqa: E731
    asked_again = lambda: _asked(llm, "the whole guide please") > 1  # noqa: E731
    await slack.wait_for(lambda: resumed_again() or asked_again(), timeout=20, what="the question's turn")
    turn_again.set()
    note.opened.set()
    await a.settle()
    await b.settle()
    assert caplog.text.count("standing down") == 2  # B, then A
    messages = slack.bot_messages(CHANNEL, root)
    assert _asked(llm, "the whole guide please") == 1, [m["text"][:40] for m in messages]
    assert _asked(llm, "and prod?") == 1
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"
    assert _errors(caplog) == []


async def test_with_several_processes_a_resumed_turn_whose_thread_was_taken_before_its_note_posts_no_note(
    redis_proxy: HeldReplyProxy,  # first (both): they outlast A and B, which reach Redis through them
    other_redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, A resumes B's question handed on with its answer showing; but Redis loses its
    data again, and B takes the thread's free lock for a newer follow-up, while A closes that
    answer, before A posts the note. Before, the note was posted with no look at the lock: A's
    went out under B's lock, and B, resuming the question A handed on, could not see it (Slack
    slow to show it) and posted its own: the note twice. A stands down before the note now, as
    an answer's post does, and B posts it once."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http", REDIS_URL=redis_proxy.url)
    b = await start_bot("http", REDIS_URL=other_redis_proxy.url)  # Slack's events go to B
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    # The follow-up's answer waits until B has stood down; the newer follow-up's until A has.
    b_stood_down, a_stood_down = asyncio.Event(), asyncio.Event()
    llm.enqueue(Reply("a long explanation, " * 150), Gated(b_stood_down), Gated(a_stood_down))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="B's answer to show")
    b_id, a_id = b.bot.turns.process_id, a.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    closing = slack.gate("chat.stopStream")  # A closing B's answer, just before its note
    note = slack.gate("chat.postMessage", lambda args: INTERRUPTED in str(args))  # slow to show
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    b_stood_down.set()
    await slack.wait_for(lambda: closing.waiting == 1, timeout=20, what="A to resume B's question")
    await _until(_a_beat(redis, a_id, await redis.zscore("processes", a_id)))
    # A's beats and renewals, which would take its lock back, hang (Redis out of A's reach for
    # them) until B has taken it: both hung before A goes on to its note, whose fence then rides
    # in no batch with them. B's beats wait for the question's turn to come again.
    beat, renewal = a.bot.store._beat, a.bot.store._renew_thread_lock
    b_took_it = redis_proxy.stall(beat, renewal)
    turn_again = other_redis_proxy.stall(b.bot.store._beat)
    await redis.flushall()
    # B's next beat hung before B takes any work, whose Redis commands then ride in no batch with it.
    await slack.wait_for(lambda: other_redis_proxy.stalled > 0, what="B's next beat to hang")
    slack.use_http(f"{b.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and prod?", thread_ts=root)
    await _until(lambda: _held_by(redis, f"lock:T1:{CHANNEL}:{root}", b_id))
    hung = lambda: redis_proxy.stalled_on(beat) > 0 and redis_proxy.stalled_on(renewal) > 0  # noqa: E731
    await slack.wait_for(hung, timeout=20, what="A's next beat and renewal to hang")
    closing.opened.set()
    a_stands_down = lambda: caplog.text.count("standing down") == 2  # noqa: E731
    await slack.wait_for(lambda: note.waiting == 1 or a_stands_down(), timeout=20, what="A's note")
    a_stood_down.set()
    b_took_it.set()
    resumed_again = lambda: caplog.text.count("resuming interrupted turn") == 2  # noqa: E731
    await slack.wait_for(resumed_again, timeout=20, what="B to resume the question")
    await slack.wait_for(lambda: note.waiting >= 1, timeout=20, what="B's note")
    turn_again.set()
    note.opened.set()
    await a.settle()
    await b.settle()
    messages = slack.bot_messages(CHANNEL, root)
    assert [m["text"] for m in messages].count(INTERRUPTED) == 1, [m["text"][:40] for m in messages]
    assert _asked(llm, "the whole guide please") == 1
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"
    assert _errors(caplog) == []


async def test_with_several_processes_a_question_found_cut_short_whose_turn_stands_down_is_not_given_again(
    redis_proxy: HeldReplyProxy,  # first (both): they outlast A and B, which reach Redis through them
    other_redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A follow-up accepted by B is answered by A, which held the thread: its answer is showing
    when Redis loses its data and A stops. B queues the follow-up again, to be looked up first;
    the look finds A's answer cut short, and B closes it. Before B posts the note, Redis loses its
    data again and C takes the thread's free lock for a newer follow-up: B stands down. Before, it
    handed the follow-up on without the answer its look had found (`_shown_before` was only for a
    turn resumed from its journal): C's look, under C's own answer, found nothing, and the
    follow-up was asked of the model a second time. It is handed on with it now, and noted once."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http", REDIS_URL=redis_proxy.url)
    b = await start_bot("http", REDIS_URL=other_redis_proxy.url)
    c = await start_bot("http")
    slack.use_http(f"{a.url}/slack/events")
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    queued = asyncio.Event()  # A answers the question until B has queued the follow-up
    stood_down = asyncio.Event()  # C answers the newer follow-up until B has stood down
    llm.enqueue(Gated(queued), Reply("a long explanation, " * 150), Gated(stood_down))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello")
    await slack.wait_for(lambda: len(llm.requests) == 1, what="A's answer to the question")
    slack.use_http(f"{b.url}/slack/events")
    follow_up = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await _until(
        lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "queued"), what="the follow-up to wait"
    )
    queued.set()
    long_shows = lambda: any("long" in str(c.args) for c in slack.calls_to("chat.startStream"))  # noqa: E731
    await slack.wait_for(long_shows, timeout=20, what="A's answer to B's follow-up to show")
    b_id = b.bot.turns.process_id
    # A's beats and renewals, which would take its lock back, hang: Redis out of A's reach for them.
    beat, renewal = a.bot.store._beat, a.bot.store._renew_thread_lock
    redis_proxy.stall(beat, renewal)
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    closing = slack.gate("chat.stopStream")  # B closing A's answer, just before its note
    await redis.flushall()
    await a.bot.stop(grace_seconds=0)  # A's answer is left showing, cut short
    await slack.wait_for(lambda: closing.waiting == 1, timeout=20, what="B to close A's answer")
    c_took_it = other_redis_proxy.stall(beat, renewal)  # B's beats and renewals hang until C took the lock
    await redis.flushall()
    slack.use_http(f"{c.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and prod?", thread_ts=root)
    await _until(lambda: _held_by(redis, f"lock:T1:{CHANNEL}:{root}", c.bot.turns.process_id))
    # Both hung before B goes on to its note, whose fence then rides in no batch with them.
    hung = lambda: other_redis_proxy.stalled_on(beat) > 0 and other_redis_proxy.stalled_on(renewal) > 0  # noqa: E731
    await slack.wait_for(hung, timeout=20, what="B's next beat and renewal to hang")
    closing.opened.set()
    await slack.wait_for(lambda: "standing down" in caplog.text, timeout=20, what="B to stand down")
    c_took_it.set()
    stood_down.set()
    noted = lambda: INTERRUPTED in [m["text"] for m in slack.bot_messages(CHANNEL, root)]  # noqa: E731
    asked_again = lambda: _asked(llm, "and staging?") > 1  # noqa: E731
    await slack.wait_for(lambda: noted() or asked_again(), timeout=20, what="the follow-up's turn")
    await b.settle()
    await c.settle()
    messages = slack.bot_messages(CHANNEL, root)
    assert _asked(llm, "and staging?") == 1, [m["text"][:40] for m in messages]
    assert [m["text"] for m in messages].count(INTERRUPTED) == 1, [m["text"][:40] for m in messages]
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"
    assert _errors(caplog) == []


async def test_with_several_processes_an_answer_found_cut_short_is_noted_by_a_turn_whose_lock_expired(
    redis_proxy: HeldReplyProxy,  # first (both): they outlast A and B, which reach Redis through them
    other_redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, B's look finds A's answer to B's follow-up cut short, and B closes it; then B
    stalls past its lock's lifetime (its renewal hangs), nobody taking the thread meanwhile. Its
    note's fence takes the lock back, as its renewal would: the message is unfinished, though
    its journal (queued again) says `queued`, not `working`, as no answer of B's own began.
    Before, the fence took back only a `working` one's: B stood down as if another worker held
    the thread, and the follow-up waited for a recovery round, its answer closed and no note."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http", REDIS_URL=redis_proxy.url)
    b = await start_bot("http", THREAD_LOCK_TTL_SECONDS="1", REDIS_URL=other_redis_proxy.url)
    slack.use_http(f"{a.url}/slack/events")
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    queued = asyncio.Event()  # A answers the question until B has queued the follow-up
    llm.enqueue(Gated(queued), Reply("a long explanation, " * 150))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello")
    await slack.wait_for(lambda: len(llm.requests) == 1, what="A's answer to the question")
    slack.use_http(f"{b.url}/slack/events")
    follow_up = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await _until(
        lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "queued"), what="the follow-up to wait"
    )
    queued.set()
    long_shows = lambda: any("long" in str(c.args) for c in slack.calls_to("chat.startStream"))  # noqa: E731
    await slack.wait_for(long_shows, timeout=20, what="A's answer to B's follow-up to show")
    b_id = b.bot.turns.process_id
    # A's beats and renewals, which would take its lock back, hang: Redis out of A's reach for them.
    renewal = a.bot.store._renew_thread_lock
    redis_proxy.stall(a.bot.store._beat, renewal)
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    closing = slack.gate("chat.stopStream")  # B closing A's answer, just before its note
    await redis.flushall()
    await a.bot.stop(grace_seconds=0)  # A's answer is left showing, cut short
    await slack.wait_for(lambda: closing.waiting == 1, timeout=20, what="B to close A's answer")
    renewal_goes = other_redis_proxy.stall(renewal)  # B's renewals hang
    lock = f"lock:T1:{CHANNEL}:{root}"
    await _until(lambda: _state_is(redis, lock, None))  # expired under B: nobody holds it
    # Hung before B goes on to its note, whose fence then rides in no batch with it.
    await slack.wait_for(lambda: other_redis_proxy.stalled_on(renewal) > 0, what="B's renewal to hang")
    closing.opened.set()
    noted = lambda: [m["text"] for m in slack.bot_messages(CHANNEL, root)].count(INTERRUPTED)  # noqa: E731
    stood_down = lambda: "standing down" in caplog.text  # noqa: E731
    await slack.wait_for(lambda: noted() == 1 or stood_down(), timeout=20, what="B's note")
    renewal_goes.set()
    await b.settle()
    messages = slack.bot_messages(CHANNEL, root)
    assert not stood_down(), "B stood down, its note not posted"
    assert noted() == 1, [m["text"][:40] for m in messages]
    assert _asked(llm, "and staging?") == 1
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"
    assert _errors(caplog) == []


async def test_with_several_processes_a_question_handed_on_and_noted_before_a_second_loss_is_noted_once(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, B hands its question on with the answer that had begun to show, and A resumes it:
    closed, noted interrupted, finished. Redis loses its data again before B's next beat finds it
    finished, and B, which still keeps it, queues it again with that answer. Before, it was
    resumed again, and noted interrupted a second time; the look in Slack now finds that note."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    stood_down = asyncio.Event()  # the follow-up's answer waits until B has stood down
    llm.enqueue(Reply("a long explanation, " * 150), Gated(stood_down))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="B's answer to show")
    b_id = b.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    note = slack.gate("chat.postMessage", lambda args: INTERRUPTED in str(args))
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    stood_down.set()
    await slack.wait_for(lambda: note.waiting == 1, timeout=20, what="A to resume B's question")
    # Just after B's beat, A finishes the question, and Redis loses its data again.
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    note.opened.set()
    journal = f"turn:T1:{CHANNEL}:{root}"
    await _until(lambda: _state_is(redis, journal, "noted"))
    await redis.flushall()
    await _until(lambda: _state_is(redis, journal, "noted"), timeout=20)
    await a.settle()
    await b.settle()
    assert caplog.text.count("message queued again") == 2  # as B stood down, and after the second loss
    texts = [m["text"] for m in slack.bot_messages(CHANNEL, root)]
    assert texts[1:] == ["Answer: ann: and staging?", INTERRUPTED], texts
    assert _asked(llm, "the whole guide please") == 1
    assert _errors(caplog) == []


async def test_with_several_processes_a_question_queued_again_behind_a_newer_turn_is_stored_once(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As when a new follow-up took the lock after the loss (above): the follow-up's turn reads
    the thread back from Slack, B's question with it; B's question, queued again, is answered
    after it. Before, its turn stored the question once more: the model was shown it twice
    ([question, follow-up, its answer, question]), and the stored conversation kept both. The
    copy read back now gives way to the one its own turn stores, after the follow-up."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    noticed = asyncio.Event()  # B's answer, and A's to the follow-up, until both noticed the loss
    llm.enqueue(Gated(noticed), Gated(noticed))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for(lambda: caplog.text.count(FORGOT) >= 2, what="both processes to notice the loss")
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    noticed.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await a.settle()
    await b.settle()
    prompts = [[m["content"] for m in r["messages"][1:]] for r in llm.requests]
    assert all(p.count("ann: why is api-prod red?") <= 1 for p in prompts), prompts
    assert prompts[-1] == ["ann: and staging?", "Answer: ann: and staging?", "ann: why is api-prod red?"]
    stored = await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)
    asked = [t for t in map(json.loads, stored) if t["role"] == "user" and "api-prod" in t["text"]]
    assert len(asked) == 1, stored


async def test_a_message_queued_again_after_a_loss_whose_turn_a_worker_finished_since_is_not_queued(
    redis_url: str, redis: Redis
) -> None:
    """A's beat said the follow-up was still waiting (B was answering it, under the lock B took
    back); B finishes it before A's step that queues it again. Redis has its journal (written
    since the loss), not its dedup key. Before, the step queued it again and set its journal back
    to `queued`: its turn came again, and the look in Slack, finding B's answer, stored the
    question and that answer a second time in the conversation."""
    follow_up = IncomingMessage("T1", CHANNEL, "1.2", "U1", "more", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    try:
        journal = store.keys.journal("T1", CHANNEL, "1.2")
        await redis.hset(journal, mapping={"state": "answered", "answer_ts": "1.3", "user_turn_stored": "1"})
        accepted, _ = await store.accept(follow_up, look_first=True)
        assert accepted is Accepted.DUPLICATE
        assert await redis.hget(journal, "state") == "answered"
        assert await redis.zcard(store.keys.inbox(follow_up.key)) == 0
        # Still waiting (or being answered): queued again, to be looked up in Slack first.
        await redis.flushall()
        await redis.hset(journal, "state", "working")
        assert (await store.accept(follow_up, look_first=True))[0] is Accepted.FIRST
    finally:
        await store.close()


# Gaps a review of the recovery found, reproduced: each lost a question, answered it twice, or
# left a sign up.


async def _refusing_dedup(redis: Redis) -> None:
    """From now on Redis refuses the bot every command on a message's dedup key (`seen:…`, which
    only queueing a message touches), as a Redis that fails under that step would: every key but
    those is allowed (ACL globs have no negation, hence the five patterns)."""
    await redis.execute_command(
        "ACL", "SETUSER", "default", "resetkeys", "~[^s]*", "~s[^e]*", "~se[^e]*", "~see[^n]*", "~seen[^:]*"
    )


async def _allowing_all(redis: Redis) -> None:
    await redis.execute_command("ACL", "SETUSER", "default", "allkeys")


@pytest.mark.parametrize("fault", ["a second loss", "a redis failure"])
async def test_a_follow_up_queued_again_after_a_loss_survives_a_second_loss_or_a_failed_queueing(
    fault: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A follow-up waits behind the answer in flight when Redis loses its data; the process
    queues it again, and then Redis loses its data once more before its turn, or refuses that
    queueing. Before, the process had forgotten it as it queued it again: it was never answered."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    queued = asyncio.Event()  # the first answer in flight until the follow-up waits behind it
    llm.enqueue(Gated(queued))
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    follow_up = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await _until(
        lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "queued"), what="the follow-up to wait"
    )
    queued.set()
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    try:
        if fault == "a redis failure":
            await _refusing_dedup(redis)
        await redis.flushall()
        if fault == "a second loss":
            await slack.wait_for(lambda: "message queued again" in caplog.text, what="it to be queued again")
            await redis.flushall()
            await slack.wait_for(lambda: caplog.text.count(FORGOT) == 2, what="the second loss to be noticed")
        else:
            await slack.wait_for(lambda: "message not queued again" in caplog.text, what="the refusal")
            await _allowing_all(redis)
    finally:
        await _allowing_all(redis)
    posting.opened.set()
    first, second = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await running.settle()
    assert [first["text"], second["text"]] == [
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert len(slack.bot_messages(CHANNEL, root)) == 2 and _asked(llm, "and staging?") == 1

    # Taken and answered, it is forgotten: a later loss does not queue it again.
    def decisions() -> list[str]:
        return [r.getMessage() for r in caplog.records if "waiting messages to queue again" in r.getMessage()]

    decided = len(decisions())
    await redis.flushall()
    await slack.wait_for(lambda: len(decisions()) > decided, what="the next loss's decision")
    await running.settle()
    assert "count=0" in decisions()[-1], decisions()
    assert len(slack.bot_messages(CHANNEL, root)) == 2 and _asked(llm, "and staging?") == 1
    assert _errors(caplog) == []


async def test_with_several_processes_a_dm_question_whose_turn_stood_down_after_a_loss_loses_its_reaction(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As in a thread (above), but on a DM's top level, where the sign is the 👀 reaction. The
    question queued again as B stands down is resumed, its begun answer closed; before, its
    new journal did not say a reaction was up, and the resumed turn left it there for good."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars, llm.chunk_delay = 20, 0.05
    stood_down = asyncio.Event()  # the follow-up's answer waits until B has stood down
    llm.enqueue(Reply("a long explanation, " * 150), Gated(stood_down))
    asked = await slack.post_user_message(DM, "the whole guide please")
    await slack.wait_for(lambda: bool(slack.bot_messages(DM, "top")), what="B's answer to show")
    assert (slack.message(DM, asked) or {}).get("reactions"), "no reaction to take away"
    b_id = b.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(DM, "and staging?")
    await slack.wait_for(lambda: "standing down" in caplog.text, what="B to stand down")
    stood_down.set()
    await slack.wait_for(lambda: INTERRUPTED in [m["text"] for m in slack.bot_messages(DM, "top")],
                         timeout=20, what="the begun answer to be closed")  # fmt: skip
    await a.settle()
    await b.settle()
    assert _asked(llm, "the whole guide please") == 1
    assert not (slack.message(DM, asked) or {}).get("reactions"), "the thinking reaction left"
    assert _errors(caplog) == []


async def test_with_several_processes_a_mention_whose_first_event_met_redis_down_is_answered_after_a_loss(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mention comes as two events. Redis refused the first, which reached B, so B said it was
    temporarily unavailable; the second reached A and was queued, behind B's answer in flight.
    Then Redis loses its data, A queues the follow-up again, and the look in Slack finds that
    notice. Before, it took the notice for the question's outcome, and the question went
    unanswered."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage", when=lambda args: "blocks" not in args or "Answer" in str(args))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for(lambda: posting.waiting > 0, what="B's answer's post")
    event = slack.user_message_event(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    try:
        await _refusing_dedup(redis)
        await slack.deliver_event(event)
        await slack.wait_for(
            lambda: STORE_UNAVAILABLE in [m["text"] for m in slack.bot_messages(CHANNEL, root)],
            what="the notice",
        )
    finally:
        await _allowing_all(redis)
    slack.use_http(f"{a.url}/slack/events")
    await slack.deliver_event(slack.mention_twin(event))
    assert await redis.exists(f"seen:T1:{CHANNEL}:{event['ts']}")
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="A to queue it again")
    posting.opened.set()
    await slack.wait_for(
        lambda: "Answer: ann: and staging?" in [m["text"] for m in slack.bot_messages(CHANNEL, root)],
        timeout=15,
        what="the follow-up's answer",
    )
    await a.settle()
    await b.settle()
    assert [m["text"] for m in slack.bot_messages(CHANNEL, root)] == [
        STORE_UNAVAILABLE,
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert all("message not queued" in error for error in _errors(caplog))


async def test_a_question_queued_again_behind_a_newer_turn_when_alone_is_stored_once(
    redis_proxy: HeldReplyProxy,  # first: it outlasts the bot, which reaches Redis through it
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One process: a follow-up waits behind the answer in flight when Redis loses its data, and
    a newer follow-up, accepted after the loss, is taken before the older is queued again. Its
    turn reads the thread back from Slack, the waiting follow-up with it; then the older one's
    turn stored its question once more: before, the model was shown it twice, and the stored
    conversation kept both."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    # The first answer is in flight until the follow-up waits behind it; the newer follow-up's
    # until the waiting one is queued again, behind it.
    queued, queued_again = asyncio.Event(), asyncio.Event()
    llm.enqueue(Gated(queued), Gated(queued_again))
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    waiting = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    journal = f"turn:T1:{CHANNEL}:{waiting}"
    await _until(lambda: _state_is(redis, journal, "queued"), what="the follow-up to wait")
    queued.set()
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    process = running.bot.turns.process_id
    await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    # The loss is noticed (at the next beat) only once the newer follow-up waits: its turn goes
    # first and reads the waiting one back, not a loaded machine's slow event after the beat
    # (the waiting one then queued again first, and nothing read back).
    noticing = redis_proxy.stall(running.bot.store._beat)
    await redis.flushall()
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="the next beat to hang")
    newer = await slack.post_user_message(CHANNEL, f"<@{BOT}> and dev?", thread_ts=root)
    await _until(lambda: redis.exists(f"turn:T1:{CHANNEL}:{newer}"), what="the newer follow-up to wait")
    noticing.set()
    posting.opened.set()
    await llm.wait_for_requests(2)  # the newer one's turn
    await _until(
        lambda: _state_is(redis, journal, "queued"), what="it to be queued again behind the newer one"
    )
    queued_again.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    await running.settle()
    prompts = [[m["content"] for m in r["messages"][1:]] for r in llm.requests]
    assert len(prompts) == 3 and prompts[1][-1] == "ann: and dev?", prompts  # the newer one first
    assert "ann: and staging?" in prompts[1], prompts  # read back from Slack
    assert all(p.count("ann: and staging?") <= 1 for p in prompts), prompts
    stored = await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)
    asked = [t for t in map(json.loads, stored) if t["role"] == "user" and "staging" in t["text"]]
    assert len(asked) == 1, stored
    assert "look_first=True" not in caplog.text and _errors(caplog) == []


async def test_a_temporarily_unavailable_notice_whose_post_was_lost_is_found_and_not_posted_again(
    start_bot: StartBot, slack: SlackEmulator, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The notice for a message Redis refused carries a block id of its own (above), by which a
    post whose answer was lost is still found in Slack, not made again."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    slack.fail_next("chat.postMessage", after=True, drop=True)
    try:
        await _refusing_dedup(redis)
        asked = await slack.post_user_message(DM, "hello?")
        await slack.wait_for(lambda: bool(slack.bot_messages(DM, "top")), what="the notice")
        await running.settle()  # the message's intake: its notice looked for, found, not posted again
    finally:
        await _allowing_all(redis)
    [notice] = slack.bot_messages(DM, "top")
    assert notice["text"] == STORE_UNAVAILABLE and "notice post answer lost" in caplog.text
    assert [block["block_id"] for block in notice["blocks"]] == [f"notice:unqueued:{asked}"]


async def test_a_refused_queueing_again_is_not_tried_at_the_beat_that_notices_another_loss(
    redis_url: str, redis: Redis
) -> None:
    """A follow-up's queueing again after a loss was refused; Redis then loses its data once more.
    The beat that notices that second loss must not queue it yet: the other processes may not
    have noticed, nor taken back the thread lock of the turn it waits behind, and a worker here
    would take that lock and answer it alongside (that turn then standing down). Like queueing
    again, the retry waits for the beat after. Before, it was made at once."""
    follow_up = IncomingMessage("T1", CHANNEL, "1.2", "U1", "more", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, started, beat = _recovery_beside_another_process(store)
    inbox = store.keys.inbox(follow_up.key)
    try:
        await beat()
        recovery.waiting(("T1", CHANNEL, "1.2"), follow_up)
        await redis.flushall()
        await beat()  # the loss noticed
        await _refusing_dedup(redis)
        try:
            await beat()  # queued again: refused
        finally:
            await _allowing_all(redis)
        assert await redis.zcard(inbox) == 0 and started == []
        await redis.flushall()
        await beat()  # the second loss noticed: nothing queued yet
        assert await redis.zcard(inbox) == 0 and started == []
        await beat()
        assert await redis.zcard(inbox) == 1 and started == [follow_up.key]
        assert await redis.hget(store.keys.journal("T1", CHANNEL, "1.2"), "look") == "1"
    finally:
        await _allowing_all(redis)
        await store.close()


def _recovery_beside_another_process(
    store: Store,
) -> tuple[RedisLossRecovery, list[ThreadKey], Callable[[], Awaitable[None]]]:
    """A RedisLossRecovery on a real Store, with another process alive throughout, and a beat
    that runs what it spawns to its end: the recovery, what it started work on, and the beat."""
    spawned: list[Coroutine[Any, Any, None]] = []
    started: list[ThreadKey] = []
    recovery = RedisLossRecovery(
        store=store, delivery=cast(Any, None), workspace=cast(Any, None), start_work=started.append,
        spawn=spawned.append,
    )  # fmt: skip

    async def nothing() -> None:
        return None

    async def beat() -> None:
        await store.beat("other", 60_000)
        news = await store.beat("here", 60_000, recovery.to_ask_about())
        await recovery.heard(news, set(), take_locks_back=nothing)
        while spawned:
            await spawned.pop(0)

    return recovery, started, beat


async def test_a_follow_up_behind_one_whose_queueing_again_was_refused_waits_for_it(
    redis_url: str, redis: Redis
) -> None:
    """Two follow-ups of one thread are queued again after a loss, and Redis refuses the first.
    The second must wait for it (tried again with it, in order, at the next beat), not be queued
    and answered before it. Before, it was queued at once, and answered first."""
    first = IncomingMessage("T1", CHANNEL, "1.2", "U1", "more", "answer", "1.1", "1.1", BOT)
    second = IncomingMessage("T1", CHANNEL, "1.3", "U1", "and more", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, started, beat = _recovery_beside_another_process(store)
    inbox = store.keys.inbox(first.key)
    try:
        await beat()
        recovery.waiting(("T1", CHANNEL, "1.2"), first)
        recovery.waiting(("T1", CHANNEL, "1.3"), second)
        await redis.flushall()
        await beat()  # the loss noticed
        # Every key but the first follow-up's dedup key (`seen:T1:C…:1.2`, the only one ending in 2).
        await redis.execute_command(
            "ACL", "SETUSER", "default", "resetkeys",
            "~[^s]*", "~s[^e]*", "~se[^e]*", "~see[^n]*", "~seen[^:]*", "~seen:*[^2]",
        )  # fmt: skip
        try:
            await beat()  # queued again: the first refused, so the second held back
        finally:
            await _allowing_all(redis)
        assert await redis.zcard(inbox) == 0 and started == []
        await beat()  # both, in order
        assert started == [first.key, first.key]
        queued = [json.loads(raw)["ts"] for raw in await redis.zrange(inbox, 0, -1)]
        assert queued == ["1.2", "1.3"]
    finally:
        await _allowing_all(redis)
        await store.close()


async def test_a_loss_noticed_before_the_last_one_was_acted_on_is_acted_on_at_the_beat_after(
    redis_url: str, redis: Redis
) -> None:
    """Redis loses its data twice within a beat of each other. Queueing again for the first loss
    must wait, like queueing again always does, for the beat after the second is noticed (when
    every process has noticed it and taken its thread locks back), and happen once. Before, it
    was made at the very beat that noticed the second loss."""
    follow_up = IncomingMessage("T1", CHANNEL, "1.2", "U1", "more", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, started, beat = _recovery_beside_another_process(store)
    inbox = store.keys.inbox(follow_up.key)
    try:
        await beat()
        recovery.waiting(("T1", CHANNEL, "1.2"), follow_up)
        await redis.flushall()
        await beat()  # the first loss noticed
        await redis.flushall()
        await beat()  # the second loss noticed: nothing queued yet
        assert await redis.zcard(inbox) == 0 and started == []
        await beat()
        assert await redis.zcard(inbox) == 1 and started == [follow_up.key]
        assert await redis.hget(store.keys.journal("T1", CHANNEL, "1.2"), "look") == "1"
    finally:
        await store.close()


async def test_a_message_handed_on_as_its_turn_stood_down_survives_a_second_loss(
    redis_url: str, redis: Redis
) -> None:
    """A turn stood down after a loss and handed its message on, queued again with the answer
    that had begun to show and the sign up for it (`hand_on`). Redis then loses its data again
    before that message's turn: it is queued again once more, as it was handed on (looked up
    first, its shown answer and sign kept for the turn to resume). Before, nothing here kept it,
    and the question was lost."""
    question = IncomingMessage("T1", CHANNEL, "1.1", "U1", "help", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, started, beat = _recovery_beside_another_process(store)
    inbox = store.keys.inbox(question.key)
    journal = store.keys.journal("T1", CHANNEL, "1.1")
    try:
        await beat()
        await recovery.hand_on(question, "1.5", "reaction")
        assert started == [question.key] and await redis.zcard(inbox) == 1
        await redis.flushall()
        await beat()  # the second loss noticed
        await beat()  # queued again
        assert started == [question.key, question.key] and await redis.zcard(inbox) == 1
        assert await redis.hmget(journal, ["look", "answer_ts", "sign"]) == ["1", "1.5", "reaction"]
    finally:
        await store.close()


async def test_a_message_let_go_twice_is_queued_again_after_a_loss_with_what_either_knew(
    redis_url: str, redis: Redis
) -> None:
    """A message handed on with the answer that had begun to show and its sign, then let go of
    again by a call that knew neither (a deferral said only what its own turn saw). Before, the
    second call replaced what was kept: after a loss the message was queued again without them,
    its begun answer left as it was (a look in Slack misses it under a newer answer) and its 👀 up
    for good. Both are kept now; a later call's own shown and sign, when it knows them, win."""
    question = IncomingMessage("T1", CHANNEL, "1.1", "U1", "help", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, _, beat = _recovery_beside_another_process(store)
    journal = store.keys.journal("T1", CHANNEL, "1.1")
    try:
        await beat()
        await recovery.hand_on(question, "1.5", "reaction")
        await recovery.deferred(question)
        await redis.flushall()
        await beat()  # the loss noticed
        await beat()  # queued again
        assert await redis.hmget(journal, ["look", "answer_ts", "sign"]) == ["1", "1.5", "reaction"]
        await recovery.deferred(question, "1.7")
        await redis.flushall()
        await beat()
        await beat()
        assert await redis.hmget(journal, ["look", "answer_ts", "sign"]) == ["1", "1.7", "reaction"]
    finally:
        await store.close()


@pytest.mark.parametrize("then", ["refused again", "queued by the loss's queueing first"])
async def test_a_message_refused_while_others_were_alive_is_still_looked_up_when_queued_again_alone(
    then: str, redis_url: str, redis: Redis
) -> None:
    """A follow-up waiting here is queued again after a loss seen with another process alive, to
    be looked up in Slack first (the other may have answered it), and Redis refuses. The other
    process goes, and Redis loses its data again: alone, this process queues again, as they are,
    the messages of the threads it worked on lately, this one too. Before, that queueing knew
    nothing of the look first: refused again, it replaced the refusal kept (and the retry queued
    it unlooked); taken by Redis before the retry of the first refusal came to it (the two run
    side by side), it went unlooked at once. Either way it could be answered a second time."""
    follow_up = IncomingMessage("T1", CHANNEL, "1.2", "U1", "more", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    spawned: list[Coroutine[Any, Any, None]] = []
    recovery = RedisLossRecovery(
        store=store, delivery=cast(Any, None), workspace=cast(Any, None), start_work=lambda key: None,
        spawn=spawned.append,
    )  # fmt: skip

    async def nothing() -> None:
        return None

    async def beat(*, other: bool, last_first: bool = False) -> None:
        if other:
            await store.beat("other", 60_000)
        news = await store.beat("here", 60_000, recovery.to_ask_about())
        await recovery.heard(news, {follow_up.key}, take_locks_back=nothing)
        for work in reversed(spawned) if last_first else spawned:
            await work
        spawned.clear()

    try:
        await beat(other=True)
        recovery.waiting(("T1", CHANNEL, "1.2"), follow_up)
        await redis.flushall()
        await beat(other=True)  # the loss noticed, with another process alive
        await _refusing_dedup(redis)
        try:
            await beat(other=True)  # queued again, to be looked up first: refused
            await store.leave("other")
            await beat(other=False)  # tried again, refused again; alone now
            await redis.flushall()
            await beat(other=False)  # the second loss noticed
            if then == "refused again":
                await beat(other=False)  # the retry and the loss's queueing again: both refused
                await _allowing_all(redis)
                await beat(other=False)  # the retry, taken
            else:
                await _allowing_all(redis)
                await beat(other=False, last_first=True)  # the loss's queueing again, then the retry
        finally:
            await _allowing_all(redis)
        assert await redis.zcard(store.keys.inbox(follow_up.key)) == 1
        assert await redis.hget(store.keys.journal("T1", CHANNEL, "1.2"), "look") == "1"
    finally:
        await store.close()


async def test_a_queueing_again_refused_round_after_round_logs_one_warning_a_round(
    redis_url: str, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis goes on refusing to queue again messages after a loss while the beats still reach
    it: each message gets one WARNING, at its first refusal, and each retry round one line that
    counts those still waiting, not a WARNING a message a second."""
    messages = [
        IncomingMessage("T1", CHANNEL, ts, "U1", "more", "answer", thread, thread, BOT)
        for ts, thread in (("1.2", "1.1"), ("2.2", "2.1"), ("3.2", "3.1"))
    ]
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, started, beat = _recovery_beside_another_process(store)
    caplog.set_level(logging.DEBUG, logger="bot.redis_loss")
    try:
        await beat()
        for message in messages:
            recovery.waiting(("T1", CHANNEL, message.ts), message)
        await redis.flushall()
        await beat()  # the loss noticed
        await _refusing_dedup(redis)
        try:
            for _ in range(4):
                await beat()  # queued again, then three rounds of retries: all refused
        finally:
            await _allowing_all(redis)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("message not queued again" in w for w in warnings) == 3
        rounds = [w for w in warnings if "messages still not queued again" in w]
        assert len(rounds) == 3 and all("count=3 threads=3" in w for w in rounds)
        await beat()
        assert sorted(started, key=str) == sorted((m.key for m in messages), key=str)
    finally:
        await _allowing_all(redis)
        await store.close()


async def test_a_message_deleted_while_messages_are_queued_again_is_not_queued(
    redis_url: str, redis: Redis
) -> None:
    """Review of c51d7f6/17562e7: alone, two follow-ups of a thread worked on here are queued
    again after a loss; the second is deleted in Slack while the first's queueing is under way
    (`remove_message` calls `taken`). It must not be queued (alone, it is not looked up in Slack:
    its text would go to the model), whether queued at once or held back behind a refusal."""
    first = IncomingMessage("T1", CHANNEL, "1.2", "U1", "more", "answer", "1.1", "1.1", BOT)
    second = IncomingMessage(
        "T1", CHANNEL, "1.3", "U1", "my password is hunter2", "answer", "1.1", "1.1", BOT
    )
    store = Store(redis_url, conversation_ttl_days=1)
    spawned: list[Coroutine[Any, Any, None]] = []

    def start_work(key: ThreadKey) -> None:
        recovery.taken(("T1", CHANNEL, "1.3"))  # the deletion, as `remove_message` begins it

    recovery = RedisLossRecovery(
        store=store, delivery=cast(Any, None), workspace=cast(Any, None), start_work=start_work,
        spawn=spawned.append,
    )  # fmt: skip

    async def nothing() -> None:
        return None

    async def beat() -> None:
        news = await store.beat("here", 60_000, recovery.to_ask_about())
        await recovery.heard(news, {first.key}, take_locks_back=nothing)
        while spawned:
            await spawned.pop(0)

    inbox = store.keys.inbox(first.key)
    try:
        await beat()
        recovery.waiting(("T1", CHANNEL, "1.2"), first)
        recovery.waiting(("T1", CHANNEL, "1.3"), second)
        await redis.flushall()
        await beat()  # the loss noticed
        await beat()  # queued again: the second deleted as the first is queued
        await beat()  # and any retry
        queued = [json.loads(raw)["ts"] for raw in await redis.zrange(inbox, 0, -1)]
        assert queued == ["1.2"]
    finally:
        await store.close()


async def test_a_message_handed_on_in_the_normal_path_and_answered_elsewhere_is_not_queued_after_a_later_loss(
    redis_url: str, redis: Redis
) -> None:
    """Review of 17562e7, the path without a loss: a stalled worker's lock was taken over by
    another process, which answers the message from the journal; `hand_on` finds it a duplicate.
    Once that process finished it, a beat drops it here, and a later, unrelated loss does not
    queue it again."""
    question = IncomingMessage("T1", CHANNEL, "1.1", "U1", "help", "answer", "1.1", "1.1", BOT)
    store = Store(redis_url, conversation_ttl_days=1)
    recovery, started, beat = _recovery_beside_another_process(store)
    journal = store.keys.journal("T1", CHANNEL, "1.1")
    try:
        await beat()
        assert (await store.accept(question))[0] is not Accepted.DUPLICATE
        await recovery.hand_on(question, "1.5", "reaction")
        assert started == [] and recovery.to_ask_about() == [("T1", CHANNEL, "1.1")]
        await redis.hset(journal, "state", "answered")  # the other process finished it
        await beat()
        assert recovery.to_ask_about() == []
        await redis.flushall()
        await beat()  # an unrelated loss noticed
        await beat()
        assert started == [] and await redis.zcard(store.keys.inbox(question.key)) == 0
    finally:
        await store.close()


# What a turn reads back from Slack joins the stored conversation in Slack's order, not all of it
# before what was stored since the loss.


async def test_a_thread_read_back_after_a_loss_is_merged_with_what_was_stored_since_in_slack_order(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B answers a question across the loss: its answer is stored after it, the question not. A
    follow-up without a mention then reaches A, which never took part in the thread and ignores
    it; a mention after it reads the thread back (the question and that follow-up). Before, what
    was read back went before everything stored: the model saw the question, the follow-up, and
    only then the answer to the question."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")  # Slack's events go to B
    thought = asyncio.Event()
    llm.enqueue(Gated(thought))  # B's answer in flight until the loss (not a 1 s first token)
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    await redis.flushall()
    thought.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await b.settle()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, "the cache was restarted at noon", thread_ts=root)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> is that why?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await a.settle()
    assert _prompt(llm) == [
        "ann: why is api-prod red?",
        "Answer: ann: why is api-prod red?",
        "ann: the cache was restarted at noon",
        "ann: is that why?",
    ]
    stored = [json.loads(raw)["ts"] for raw in await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)]
    assert stored == sorted(stored, key=float) and len(stored) == 5, stored
    assert _errors(caplog) == []


async def test_a_read_back_merges_by_ts_as_numbers_keeps_what_is_stored_and_indexes_its_people(
    redis_url: str, redis: Redis
) -> None:
    """The merge itself: by ts as numbers (a ts with fewer digits is not older for it), a turn
    stored already (by another process meanwhile, say) not added twice, the stored turns' order
    kept (an answer before a question sent while it was written), the conversation's lifetime and
    the people read back in their index."""
    key = ThreadKey("T1", CHANNEL, "99.000001")
    store = Store(redis_url, conversation_ttl_days=1)
    try:
        answer = Turn("assistant", "an answer", "100.5", reply_to="99.000001")
        sent_meanwhile = Turn("user", "and dev?", "100.4", user="U1")
        await store.append_turns(key, answer, sent_meanwhile)
        read_back = [
            Turn("user", "why?", "99.000001", user="U2"),
            Turn("user", "ten", "99.9", user="U3"),
            answer,
            Turn("user", "later", "100.60", user="U2"),
        ]
        assert await store.merge_read_back(key, read_back) == 3
        stored = [Turn.from_json(raw).ts for raw in await redis.lrange(store.keys.turns(key), 0, -1)]
        assert stored == ["99.000001", "99.9", "100.5", "100.4", "100.60"]
        assert await redis.hget(store.keys.meta(key), "hydrated") == "1"
        assert 0 < await redis.ttl(store.keys.turns(key)) <= store.conversation_ttl
        assert await redis.sismember(store.keys.user_index("T1", "U3"), store.keys.turns(key))
        assert await store.merge_read_back(key, read_back) == 0  # read again: nothing new
        assert await redis.llen(store.keys.turns(key)) == 5
    finally:
        await store.close()


async def test_with_several_processes_a_question_taken_before_the_loss_and_read_back_is_stored_once(
    redis_proxy: HeldReplyProxy,  # first: it outlasts B, which reaches Redis through it
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B takes bob's follow-up before the loss, and its turn stores it only after (bob's name is
    slow to come). Meanwhile a newer follow-up reaches A, whose turn takes the thread's lock,
    which nobody held any more, reads the thread back from Slack, bob's follow-up with it, and is
    over before B takes the lock back (B's renewals wait for it here: else at its next beat, and a
    turn of A slower than a beat, on a loaded machine, had B stand down or A wait). Before, B's
    turn stored bob's follow-up a second time: the model was shown it twice, and the stored
    conversation kept both. The copy read back now gives way to the one its own turn stores,
    last, as the question being answered."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http", REDIS_URL=redis_proxy.url)  # Slack's events go to B
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await b.settle()
    looked_up: list[str] = []

    def first_lookup(args: dict[str, Any]) -> bool:  # B's; A's, later, goes through
        looked_up.append(args["user"])
        return len(looked_up) == 1

    naming = slack.gate("users.info", first_lookup, user="U2")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", user="U2", thread_ts=root)
    await slack.wait_for(lambda: naming.waiting > 0, what="B to look up bob's name")
    await _until(lambda: redis.exists(f"lock:T1:{CHANNEL}:{root}"))  # B's turn took it
    # B's renewals hang until A's turn is over, and A's answer waits until B has tried one (its
    # beat noticed the loss, and would take the lock back): A's turn slower than B's beat, always.
    a_over = redis_proxy.stall(b.bot.store._renew_thread_lock)
    b_tried = asyncio.Event()
    llm.enqueue(Gated(b_tried))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and dev?", thread_ts=root)
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="B to try to take its lock back")
    b_tried.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await a.settle()
    a_over.set()
    naming.opened.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    await b.settle()
    prompts = [[m["content"] for m in r["messages"][1:]] for r in llm.requests]
    assert "bob: and staging?" in prompts[1], prompts  # A's turn read it back
    assert prompts[-1][-1] == "bob: and staging?" and prompts[-1].count("bob: and staging?") == 1, prompts
    stored = await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)
    asked = [t for t in map(json.loads, stored) if t["role"] == "user" and "staging" in t["text"]]
    assert len(asked) == 1, stored
    assert "standing down" not in caplog.text and _errors(caplog) == []


async def test_with_several_processes_an_answer_read_back_before_its_turn_stored_it_is_stored_once(
    redis_proxy: HeldReplyProxy,  # first: it outlasts B, which reaches Redis through it
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B answers bob's follow-up, whole in Slack, but Slack's answer to its last call is slow, and
    Redis loses its data meanwhile. A newer follow-up reaches A, whose turn takes the thread's
    lock, which nobody held any more, reads the thread back from Slack, B's answer with it, and is
    over before B takes the lock back (B's renewals wait for it here: else at its next beat, and
    a turn of A slower than a beat, on a loaded machine, had B stand down or A wait). Before, B's
    turn then stored its answer a second time: the stored conversation kept both, and the model
    was shown it twice from then on. The copy read back now gives way to the one its own turn
    stores, in its place in Slack's order."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http", REDIS_URL=redis_proxy.url)  # Slack's events go to B
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await b.settle()
    held: list[dict[str, Any]] = []

    def bobs_answer_ends(args: dict[str, Any]) -> bool:  # the call with its buttons: the first after root's
        if held or "answer_to:" not in str(args) or f"answer_to:{root}" in str(args):
            return False
        held.append(args)
        return True

    gates = [
        slack.gate(method, bobs_answer_ends, answered=True)
        for method in ("chat.postMessage", "chat.stopStream", "chat.update")
    ]
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", user="U2", thread_ts=root)
    await slack.wait_for(lambda: any(gate.waiting for gate in gates), what="B's answer to show")
    # B's renewals hang until A's turn is over, and A's answer waits until B has tried one (its
    # beat noticed the loss, and would take the lock back): A's turn slower than B's beat, always.
    a_over = redis_proxy.stall(b.bot.store._renew_thread_lock)
    b_tried = asyncio.Event()
    llm.enqueue(Gated(b_tried))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and dev?", thread_ts=root)
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="B to try to take its lock back")
    b_tried.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)  # B's counts once its call is answered
    await a.settle()
    assert "Answer: bob: and staging?" in [m["content"] for m in llm.requests[-1]["messages"]]  # read back
    a_over.set()
    for gate in gates:
        gate.opened.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=3)
    await b.settle()
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and prod?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=4)
    await a.settle()
    prompt = [m["content"] for m in llm.requests[-1]["messages"][1:]]
    assert prompt.count("Answer: bob: and staging?") == 1, prompt
    stored = [json.loads(raw) for raw in await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)]
    assert [t["text"].split(": ")[-1] for t in stored] == [
        "why is api-prod red?", "why is api-prod red?", "and staging?", "and staging?",
        "and dev?", "and dev?", "and prod?", "and prod?",
    ], stored  # fmt: skip
    assert "prompt_tokens" in stored[3], "the answer as its own turn stored it, with its cost"
    assert "standing down" not in caplog.text and _errors(caplog) == []


async def test_with_several_processes_a_long_answer_read_back_mid_stream_around_a_remark_is_stored_once(
    redis_proxy: HeldReplyProxy,  # first: it outlasts B, which reaches Redis through it
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, but B's answer is long: a remark to a colleague is sent between its first message
    and its second, and A reads the thread back while that second message is still being written
    (no buttons yet: read back linked to the remark, the latest message before it). Before, only
    the first message's copy gave way when B's turn stored the answer: the second's stayed beside
    it, and the model was shown that part twice from then on. Every message of the answer is known
    to its turn, and each one's copy gives way."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http", REDIS_URL=redis_proxy.url)  # Slack's events go to B
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await b.settle()
    llm.chunk_chars, llm.chunk_delay = 200, 0.02
    llm.enqueue(Reply(_long_answer()))
    starts: list[dict[str, Any]] = []

    def second_message(args: dict[str, Any]) -> bool:
        starts.append(args)
        return len(starts) == 2

    begun = slack.gate("chat.startStream", second_message)
    asked: list[str] = []  # bob's question's ts, once posted: its answer's last call is held

    def bobs_answer_ends(args: dict[str, Any]) -> bool:
        return bool(asked) and f"answer_to:{asked[0]}" in str(args)

    ends = [
        slack.gate(method, bobs_answer_ends)
        for method in ("chat.postMessage", "chat.stopStream", "chat.update")
    ]
    asked.append(await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", user="U2", thread_ts=root))
    await slack.wait_for(lambda: begun.waiting > 0, what="B's answer to begin its second message")
    remark = await slack.post_user_message(CHANNEL, "<@U3> the cache was restarted at noon", thread_ts=root)
    await _until(lambda: redis.exists(f"turn:T1:{CHANNEL}:{remark}"))  # B took it, behind its turn
    begun.opened.set()
    await slack.wait_for(lambda: any(gate.waiting for gate in ends), what="B's answer to end")
    [first, second] = slack.bot_messages(CHANNEL, root)[1:]
    assert float(first["ts"]) < float(remark) < float(second["ts"]) and second.get("streaming")
    # B's renewals hang until A's turn is over, and A's answer waits until B has tried one (its
    # beat noticed the loss, and would take the lock back): A's turn slower than B's beat, always.
    a_over = redis_proxy.stall(b.bot.store._renew_thread_lock)
    b_tried = asyncio.Event()
    llm.enqueue(Gated(b_tried))
    await redis.flushall()
    slack.use_http(f"{a.url}/slack/events")
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and dev?", thread_ts=root)
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="B to try to take its lock back")
    b_tried.set()
    await slack.wait_for(lambda: _asked(llm, "ann: and dev?") == 1, what="A's turn to ask the model")
    await a.settle()
    later_part = next(line for line in second["text"].splitlines() if line.startswith("print('line"))
    [a_asked] = [r for r in llm.requests if str(r["messages"][-1]["content"]).endswith("ann: and dev?")]
    assert sum(later_part in m["content"] for m in a_asked["messages"]) == 1, "A read it back"
    a_over.set()
    for gate in ends:
        gate.opened.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=4, timeout=15)
    await b.settle()
    await _until(lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{remark}", "answered"))  # recorded
    await a.settle()
    stored = [json.loads(raw) for raw in await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)]
    assert [t["role"] for t in stored] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "user",
        "assistant",
    ], [(t["role"], t["text"][:40]) for t in stored]
    assert sum(later_part in t["text"] for t in stored) == 1
    assert "prompt_tokens" in stored[3], "the answer as its own turn stored it, with its cost"
    assert "standing down" not in caplog.text and _errors(caplog) == []


@pytest.mark.parametrize("posted", ["refused", "landed unseen"])
async def test_an_answer_whose_delivery_was_deferred_when_redis_loses_its_data_is_given_once(
    posted: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Slack would not take a DM's answer (refused it; or took it, its answer lost, and could
    not be asked whether it had), so its delivery was deferred: the message stays in the inbox,
    its answer in the journal, for recovery to retry. Redis then loses both. Before, nothing in
    the process kept the message (its worker had taken it), and it was never answered; it is
    now queued again after the loss, looked up in Slack first: answered, or found answered, once,
    and the 👀 taken away."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")  # recovery's retry of the deferral is ten seconds off
    if posted == "refused":
        slack.fail_next("chat.postMessage", error="internal_error", status=503, times=3)
    else:
        slack.fail_next("chat.postMessage", after=True, drop=True)
        slack.fail_next("conversations.history", times=3)
    asked = await slack.post_user_message(DM, "why is api-prod red?")
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, what="the deferral")
    slack.clear_faults()
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="it to be queued again")
    await slack.wait_for(lambda: bool(slack.bot_messages(DM, "top")), timeout=15, what="the answer")
    await running.settle()
    assert [m["text"] for m in slack.bot_messages(DM, "top")] == ["Answer: ann: why is api-prod red?"]
    assert _asked(llm, "why is api-prod red?") == (2 if posted == "refused" else 1)
    assert _looks(slack) == [asked]
    assert not (slack.message(DM, asked) or {}).get("reactions"), "the thinking reaction left"
    assert _errors(caplog) == []


async def test_a_follow_up_behind_a_deferred_answer_when_redis_loses_its_data_is_answered_after_it(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, with a follow-up waiting behind the deferred answer, and the loss beats after
    the thread was last worked on. Alone, the process queues again only the messages of threads
    it worked on since the beat before (nobody else can have touched them): the deferred
    message's thread counts too, or its follow-up would be lost."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    slack.fail_next("chat.postMessage", error="internal_error", status=503, times=6)
    await slack.post_user_message(DM, "why is api-prod red?")
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, what="the deferral")
    await slack.post_user_message(DM, "and staging?")  # its worker retries the first: deferred again
    await slack.wait_for(lambda: "attempts=2" in caplog.text, what="the second deferral")
    slack.clear_faults()
    process = running.bot.turns.process_id
    for _ in range(2):
        await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    await redis.flushall()
    await slack.wait_for_bot_messages(DM, "top", count=2, timeout=15)
    await running.settle()
    assert [m["text"] for m in slack.bot_messages(DM, "top")] == [
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert _errors(caplog) == []


async def _a_dm_question_queued_again_under_its_answer(
    running: RunningBot, slack: SlackEmulator, redis: Redis, caplog: pytest.LogCaptureFixture, text: str
) -> tuple[str, dict[str, Any], Any]:
    """A DM question answered in Slack, unseen (its delivery deferred), and then queued again after
    a loss, its look in Slack held: its journal stays `queued` until the gate opens. Returns the
    question's ts, its answer and the gate."""
    slack.fail_next("chat.postMessage", after=True, drop=True)
    slack.fail_next("conversations.history", times=3)
    asked = await slack.post_user_message(DM, text)
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, what="the deferral")
    slack.clear_faults()
    looking = slack.gate("conversations.history", when=lambda args: bool(args.get("inclusive")))
    await redis.flushall()
    await slack.wait_for(lambda: looking.waiting > 0, what="the look of the question queued again")
    [answer] = slack.bot_messages(DM, "top")
    return asked, answer, looking


async def test_a_dm_question_queued_again_after_a_loss_and_deleted_goes_from_the_dm_thread_under_its_answer(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While a DM question queued again after a loss waits for its turn, a reply in the DM thread
    under its answer copies it there from Slack (the DM's stored conversation, which would link
    them, went with the loss). Deleting the question then only marked its journal deleted: the
    copy stayed in that thread's conversation, and went to the model with every later reply
    there. Now the DM's conversation notes where the copy is, and the copy goes."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    secret = "my password is hunter2, why is api-prod red?"
    asked, answer, looking = await _a_dm_question_queued_again_under_its_answer(
        running, slack, redis, caplog, secret
    )
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    assert any("hunter2" in text for text in _prompt(llm)), _prompt(llm)  # copied there
    await slack.delete_message(DM, asked)
    looking.opened.set()
    await slack.wait_for(lambda: "was deleted meanwhile" in caplog.text, what="the look to find it gone")
    await running.settle()
    for key, content in (await everything_in(redis)).items():
        if key.startswith("conv:"):
            assert "hunter2" not in content, (key, content)
    assert "message_not_found" not in caplog.text  # no sign taken off the deleted message
    assert _errors(caplog) == []


async def test_a_dm_question_deleted_while_a_dm_thread_reads_it_back_after_a_loss_is_not_put_back(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply in the DM thread under an answer, after a loss: its turn reads the question before
    that answer from Slack, and the question is deleted while that read's answer is on its way.
    The deletion finds no copy to take out yet; before, the read-back then put the question (a
    password) into the thread's conversation, and sent it to the model. The deletion now leaves
    a tombstone, which the read-back heeds."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    asked = await slack.post_user_message(DM, "my password is hunter2, why is api-prod red?")
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    reading = slack.gate("conversations.history", answered=True, latest=answer["ts"])
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for(lambda: reading.waiting > 0, what="the read of the question before the answer")
    await slack.delete_message(DM, asked)
    reading.opened.set()
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    assert _prompt(llm) == ["ann: more on this"]
    # Nor is a note of a copy left out written: nothing would take it out.
    assert await redis.hget(f"conv:T1:{DM}:dm:meta", f"copy:{asked}") is None
    for key, content in (await everything_in(redis)).items():
        if key.startswith("conv:"):
            assert "hunter2" not in content, (key, content)
    assert _errors(caplog) == []


async def test_a_dm_question_edited_while_a_dm_thread_reads_it_back_after_a_loss_keeps_its_new_text(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above with an edit: the question (a password) is edited out while the read-back's answer
    is on its way. The edit found nothing stored to change; before, the read-back then stored the
    old text in the thread's conversation, which went to the model with every reply there. The
    edit now leaves a record of its newest text, which the read-back uses."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    asked = await slack.post_user_message(DM, "my password is hunter2, why is api-prod red?")
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    reading = slack.gate("conversations.history", answered=True, latest=answer["ts"])
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for(lambda: reading.waiting > 0, what="the read of the question before the answer")
    await slack.edit_message(DM, asked, "why is api-prod red?")
    reading.opened.set()
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    prompt = _prompt(llm)
    assert prompt[0] == "ann: why is api-prod red?" and prompt[-1] == "ann: more on this", prompt
    # Its answer, posted before the edit, quotes it still, as Slack shows it.
    stored = await redis.lrange(f"conv:T1:{DM}:{answer['ts']}:turns", 0, -1)
    asking = [turn.text for turn in map(Turn.from_json, stored) if turn.role == "user"]
    assert asking == ["why is api-prod red?", "more on this"]
    assert _errors(caplog) == []


async def test_a_dm_question_edited_twice_after_a_loss_is_read_back_with_the_newer_text_slack_shows(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a loss, a DM question is edited twice: the first edit leaves its record; the second
    names a colleague, and its event is still on its way (until 7 Dec it was dropped when it came:
    the DM's top level, whose meta the loss took, was followed no more). A DM thread's read-back
    then sees the second edit in Slack. Before, the merge took the record's older text over what
    Slack showed, stored it, and gave it to the model with every reply there; the page's newer
    edit now wins (by `edited.ts`)."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    asked = await slack.post_user_message(DM, "my password is hunter2, why is api-prod red?")
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.edit_message(DM, asked, "why is api-prod red?")
    await running.settle()
    late = slack.edited_event(DM, asked, "why is api-prod red? <@U2> saw it too")
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    prompt = _prompt(llm)
    assert prompt[0] == "ann: why is api-prod red? @bob saw it too", prompt
    stored = await redis.lrange(f"conv:T1:{DM}:{answer['ts']}:turns", 0, -1)
    asking = [turn.text for turn in map(Turn.from_json, stored) if turn.role == "user"]
    assert asking == ["why is api-prod red? @bob saw it too", "more on this"]
    assert (await slack.deliver_event(late)).acked  # come at last, it leaves the same text
    stored = await redis.lrange(f"conv:T1:{DM}:{answer['ts']}:turns", 0, -1)
    assert [turn.text for turn in map(Turn.from_json, stored) if turn.role == "user"] == asking
    assert _errors(caplog) == []


async def test_a_dm_question_whose_deletion_looked_for_copies_before_a_read_back_copied_it_is_left_out(
    redis_url: str, redis: Redis
) -> None:
    """The other order of the race above, between the deletion's two steps: it looks for the DM
    threads that hold a copy of the question (none yet), a read-back then copies it into one, and
    only then does the deletion take the question out of the DM's own conversation. The tombstone
    must be there from the first step, or the copy stays."""
    store = Store(redis_url, conversation_ttl_days=1)
    dm, thread = ThreadKey("T1", DM, "dm"), ThreadKey("T1", DM, "1.2")
    question = Turn(role="user", text="my password is hunter2", ts="1.1", user="U1", name="ann")
    answer = Turn(role="assistant", text="Answer", ts="1.2", reply_to="1.1")
    reply = Turn(role="user", text="more on this", ts="1.3", user="U1", name="ann")
    try:
        assert await store.answers_to(dm, "1.1", deleting=True) == []
        await store.merge_read_back(thread, [question, answer, reply], copy_of="1.1")
        await store.remove_user_message(dm, "1.1")
        assert [turn.ts for turn in await store.recent_turns(thread, 10)] == ["1.3"]
    finally:
        await store.close()


async def test_two_edits_whose_events_come_in_the_other_order_leave_the_newest_text_stored_and_read_back(
    redis_url: str,
) -> None:
    """Slack's events of two quick edits of a DM question may come in either order. Before, the
    later event's text won, stored and (with no record of edits) for a read-back that saw the
    message before them: the first edit's here. Each edit now keeps its ts with its text, and an
    older one changes nothing; a DM thread's read-back that saw the original takes the newest."""
    store = Store(redis_url, conversation_ttl_days=1)
    dm, thread = ThreadKey("T1", DM, "dm"), ThreadKey("T1", DM, "1.2")
    question = Turn(role="user", text="my password is hunter2", ts="1.1", user="U1", name="ann")
    answer = Turn(role="assistant", text="Answer", ts="1.2", reply_to="1.1")
    reply = Turn(role="user", text="more on this", ts="1.3", user="U1", name="ann")
    try:
        await store.append_turns(dm, question, answer)
        assert await store.edit_user_message(dm, "1.1", "second", "second", user="U1", edited_ts="1.5")
        assert not await store.edit_user_message(dm, "1.1", "first", "first", user="U1", edited_ts="1.4")
        assert [turn.text for turn in await store.recent_turns(dm, 10)] == ["second", "Answer"]
        assert await store.merge_read_back(thread, [question, answer, reply], copy_of="1.1") == 3
        assert [turn.text for turn in await store.recent_turns(thread, 10)] == [
            "second",
            "Answer",
            "more on this",
        ]
    finally:
        await store.close()


async def test_a_read_back_keeps_the_newer_of_the_edit_recorded_and_the_edit_slack_showed(
    redis_url: str, redis: Redis
) -> None:
    """A read-back's page may show an edit older than the one recorded since (read before it), or
    newer (its event still on its way, or one that changed nothing here): the newer by
    (seconds, microseconds) wins, and the turn is stored without the ts of the edit it showed."""
    store = Store(redis_url, conversation_ttl_days=1)
    dm = ThreadKey("T1", DM, "dm")
    older, newer = "1700000000.000400", "1700000000.000500"
    try:
        for ts in ("1.1", "1.2", "1.3"):
            await store.edit_user_message(dm, ts, f"recorded {ts}", "x", user="U1", edited_ts=newer)
        page = [
            Turn("user", "shown 1.1", "1.1", "U1", "ann", edited=older),
            Turn("user", "shown 1.2", "1.2", "U1", "ann", edited="1700000001.000000"),
            Turn("user", "shown 1.3", "1.3", "U1", "ann"),
        ]
        assert await store.merge_read_back(dm, page) == 3
        kept = [turn.text for turn in await store.recent_turns(dm, 10)]
        assert kept == ["recorded 1.1", "shown 1.2", "recorded 1.3"]
        assert not any('"edited"' in raw for raw in await redis.lrange(store.keys.turns(dm), 0, -1))
    finally:
        await store.close()


async def test_an_edit_then_a_deletion_leaves_the_message_out_of_a_read_back_and_no_text_behind(
    redis_url: str, redis: Redis
) -> None:
    """An edit leaves its text for a read-back (its record); the message's deletion then wins: the
    record goes with it, an edit whose event comes after the deletion's leaves none, and the
    read-back leaves the message out."""
    store = Store(redis_url, conversation_ttl_days=1)
    dm, thread = ThreadKey("T1", DM, "dm"), ThreadKey("T1", DM, "1.2")
    question = Turn(role="user", text="why is api-prod red?", ts="1.1", user="U1", name="ann")
    answer = Turn(role="assistant", text="Answer", ts="1.2", reply_to="1.1")
    reply = Turn(role="user", text="more on this", ts="1.3", user="U1", name="ann")
    record = store.keys.edited("T1", DM, "1.1")
    try:
        await store.edit_user_message(
            dm, "1.1", "my password is hunter2", "my password is hunter2", user="U1"
        )
        assert json.loads(await redis.get(record) or "{}")["text"] == "my password is hunter2"
        assert await store.answers_to(dm, "1.1", deleting=True) == []
        await store.remove_user_message(dm, "1.1")
        assert await redis.exists(record) == 0
        await store.edit_user_message(dm, "1.1", "late", "late", user="U1", edited_ts="1.9")
        assert await redis.exists(record) == 0
        await store.merge_read_back(thread, [question, answer, reply], copy_of="1.1")
        assert [turn.ts for turn in await store.recent_turns(thread, 10)] == ["1.3"]
    finally:
        await store.close()


@pytest.mark.parametrize(("days", "kept"), [(1, 3600), (0.01, 864)])
async def test_an_edits_record_expires_within_the_hour_and_the_conversations_lifetime_and_its_index(
    redis_url: str, redis: Redis, days: float, kept: int
) -> None:
    """An edit's record holds a person's words: it expires, written in the step that writes it,
    within an hour, and never after the stored conversations would (`CONVERSATION_TTL_DAYS`
    shorter than that: before, the words outlived both the stored conversations and the author's
    index, which `forget me` reads to find the record)."""
    store = Store(redis_url, conversation_ttl_days=days)
    record, index = store.keys.edited("T1", DM, "1.1"), store.keys.user_index("T1", "U1")
    try:
        await store.edit_user_message(ThreadKey("T1", DM, "dm"), "1.1", "my card ends 4242", "x", user="U1")
        assert 0 < await redis.ttl(record) <= kept
        assert await redis.ttl(index) >= await redis.ttl(record)
    finally:
        await store.close()


async def test_an_edit_leaves_its_record_only_where_a_read_back_may_be_under_way_and_forget_me_takes_it(
    redis_url: str, redis: Redis
) -> None:
    """An edit's record holds a person's words for an hour: only of a conversation the bot takes
    part in, or a DM's top level, not of every edit in every channel the bot is in; and `forget
    me` takes it (it is in the person's index)."""
    store = Store(redis_url, conversation_ttl_days=1)
    followed = IncomingMessage("T1", "C700", "2.1", "U1", "hi", "answer", "2.1", "2.1", BOT)
    try:
        await store.accept(followed)
        await store.edit_user_message(
            followed.key, "2.2", "my card ends 4242", "x", user="U1", edited_ts="2.3"
        )
        await store.edit_user_message(
            ThreadKey("T1", "C700", "3.1"), "3.1", "not said to the bot", "x", user="U2"
        )
        await store.edit_user_message(ThreadKey("T1", DM, "dm"), "4.1", "my invoice INV-7781", "x", user="U1")
        assert sorted(await redis.keys("edited:*")) == [
            store.keys.edited("T1", "C700", "2.2"),
            store.keys.edited("T1", DM, "4.1"),
        ]
        forgotten = await store.forget_user("T1", "U1")
        assert await redis.keys("edited:*") == []
        assert forgotten.records == 0  # no feedback record, which is what her reply counts
    finally:
        await store.close()


async def test_a_dm_question_answered_before_a_loss_and_deleted_after_goes_from_the_dm_thread_copied_since(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same copy without a question queued again: answered before the loss, it is copied from
    Slack into the DM thread under its answer by a reply there after it. The deletion looked for
    that thread only through the answer stored in the DM's conversation, which went with the loss:
    the copy stayed."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    asked = await slack.post_user_message(DM, "my password is hunter2, why is api-prod red?")
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    assert any("hunter2" in text for text in _prompt(llm)), _prompt(llm)  # copied there
    await slack.delete_message(DM, asked)
    await running.settle()
    for key, content in (await everything_in(redis)).items():
        if key.startswith("conv:"):
            assert "hunter2" not in content, (key, content)
    assert _errors(caplog) == []


@pytest.mark.parametrize("how", ["deleted", "forget me"])
async def test_a_dm_questions_copy_noted_after_a_loss_goes_with_its_deletion_or_forget_me(
    how: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A DM question answered before a loss is copied after it into the DM thread under its
    answer, which the DM's conversation notes (`copy:<ts>` in its meta, renewed with every DM
    turn). Once the question is deleted, or its author says `forget me`, the note is no use: it
    went too (before, it stayed for as long as the DM was in use, naming her message)."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    asked = await slack.post_user_message(DM, "why is api-prod red?")
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1)
    await running.settle()
    await redis.flushall()
    await slack.wait_for(lambda: FORGOT in caplog.text, what="the loss to be noticed")
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    meta = f"conv:T1:{DM}:dm:meta"
    assert await redis.hget(meta, f"copy:{asked}") == answer["ts"]  # noted
    if how == "deleted":
        await slack.delete_message(DM, asked)
    else:
        await slack.post_user_message(DM, "forget me")
        await slack.wait_for_bot_messages(DM, "top", count=2)
    await running.settle()
    assert [field for field in await redis.hkeys(meta) if field.startswith("copy:")] == []
    assert _errors(caplog) == []


async def test_an_answer_in_flight_at_a_loss_whose_delivery_is_deferred_after_it_is_given(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The model is still thinking when Redis loses its data, and the loss is acted on (the
    messages waiting here queued again) before the answer is ready; then Slack will not take it,
    and its delivery is deferred: left "in the inbox" for recovery's retry. That inbox went with
    the loss: nothing retries it unless it is queued again."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    thought = asyncio.Event()
    llm.enqueue(Gated(thought))  # the model thinks until the loss is acted on (not for 3 s)
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    slack.fail_next("chat.postMessage", error="internal_error", status=503, times=3)
    asked = await slack.post_user_message(DM, "why is api-prod red?")
    await llm.wait_for_requests(1)
    await redis.flushall()
    await slack.wait_for(lambda: "waiting messages to queue again" in caplog.text, what="the loss acted on")
    assert "answer delivery deferred" not in caplog.text  # the answer not ready yet
    thought.set()
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=10, what="the deferral")
    slack.clear_faults()
    await slack.wait_for(lambda: bool(slack.bot_messages(DM, "top")), timeout=30, what="the answer")
    await running.settle()
    assert [m["text"] for m in slack.bot_messages(DM, "top")] == ["Answer: ann: why is api-prod red?"]
    assert not (slack.message(DM, asked) or {}).get("reactions"), "the thinking reaction left"
    assert _errors(caplog) == []


async def test_a_long_answer_deferred_after_its_first_message_showed_is_closed_not_given_again_after_a_loss(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A long answer's first message showed; the call that began its second was lost, and Slack
    could not be asked whether it had landed: its delivery was deferred. Redis then loses its data,
    and a follow-up asked just after is answered below that first message before the question is
    queued again. Before, the process kept the deferred question without the message that had
    shown: queued again and looked up in Slack, the look saw the follow-up's answer as the bot's
    last message, and the question was answered a second time, below. It is now resumed as after a
    crash (as a question handed on with its answer showing is): closed, and noted as interrupted."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    llm.chunk_chars, llm.chunk_delay = 200, 0.02
    llm.enqueue(Reply(_long_answer()))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="its first message")
    slack.fail_next("chat.startStream", drop=True)  # its second message's
    slack.fail_next("conversations.replies", times=100)
    await slack.wait_for(lambda: "answer delivery deferred" in caplog.text, timeout=20, what="the deferral")
    slack.clear_faults()
    [first] = slack.bot_messages(CHANNEL, root)
    process = running.bot.turns.process_id
    await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    await redis.flushall()
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=20)
    await running.settle()
    texts = [m["text"] for m in slack.bot_messages(CHANNEL, root)]
    assert _asked(llm, "the whole guide please") == 1, texts
    assert texts[1:] == ["Answer: ann: and staging?", INTERRUPTED], texts
    assert slack.bot_messages(CHANNEL, root)[0]["ts"] == first["ts"]
    assert not any(m.get("streaming") for m in slack.bot_messages(CHANNEL, root))
    assert _errors(caplog) == []


async def test_a_question_queued_again_and_deleted_after_a_newer_turn_read_it_back_is_not_kept(
    redis_proxy: HeldReplyProxy,  # first: it outlasts the bot, which reaches Redis through it
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, alone: a newer follow-up's turn reads the waiting one back from Slack; the
    waiting one is queued again, then deleted before its turn comes. Its turn is not taken, but
    before, the copy read back stayed in the stored conversation, and the model was shown the
    deleted message in every later prompt."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    # The first answer is in flight until the follow-up waits behind it; the newer follow-up's
    # until the waiting one, queued again behind it, is deleted.
    queued, deleted = asyncio.Event(), asyncio.Event()
    llm.enqueue(Gated(queued), Gated(deleted))
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    waiting = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    journal = f"turn:T1:{CHANNEL}:{waiting}"
    await _until(lambda: _state_is(redis, journal, "queued"), what="the follow-up to wait")
    queued.set()
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    process = running.bot.turns.process_id
    await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    # The loss is noticed (at the next beat) only once the newer follow-up waits: its turn goes
    # first and reads the waiting one back, not a loaded machine's slow event after the beat
    # (the waiting one then queued again first, and nothing read back).
    noticing = redis_proxy.stall(running.bot.store._beat)
    await redis.flushall()
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="the next beat to hang")
    newer = await slack.post_user_message(CHANNEL, f"<@{BOT}> and dev?", thread_ts=root)
    await _until(lambda: redis.exists(f"turn:T1:{CHANNEL}:{newer}"), what="the newer follow-up to wait")
    noticing.set()
    posting.opened.set()
    await llm.wait_for_requests(2)  # the newer one's turn read the thread back
    assert "ann: and staging?" in _prompt(llm)
    await _until(
        lambda: _state_is(redis, journal, "queued"), what="it to be queued again behind the newer one"
    )
    await slack.delete_message(CHANNEL, waiting)
    await _until(lambda: redis.hexists(journal, "deleted"))
    deleted.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await running.settle()
    stored = await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)
    assert not [t for t in map(json.loads, stored) if "staging" in t["text"]], stored
    await slack.post_user_message(CHANNEL, f"<@{BOT}> and prod?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    assert not [text for text in _prompt(llm) if "staging" in text], _prompt(llm)
    assert _errors(caplog) == []


async def test_a_long_answer_stored_across_a_loss_is_not_read_back_again_in_parts(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A long answer streaming at the loss is stored whole (its first message's ts) once it is
    out; a follow-up then reads the thread back from Slack. Before, the answer's later messages,
    whose ts the stored answer does not carry, joined the conversation too: the model was shown
    most of the answer twice."""
    raw = _long_answer()
    llm.chunk_chars, llm.chunk_delay = 200, 0.02
    llm.enqueue(Reply(raw))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the whole guide please")
    await slack.wait_for(lambda: bool(slack.calls_to("chat.startStream")), what="the stream to start")
    await redis.flushall()
    await slack.wait_for(
        lambda: len(slack.bot_messages(CHANNEL, root)) == 2, timeout=15, what="its second message"
    )
    await bot.settle()
    await slack.post_user_message(CHANNEL, f"<@{BOT}> thanks, and step 2?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    await bot.settle()
    stored = [json.loads(raw) for raw in await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)]
    assert [t["role"] for t in stored] == ["user", "assistant", "user", "assistant"], stored
    assert sum("print('line 3.0')" in m["content"] for m in llm.requests[-1]["messages"]) <= 1
    assert _errors(caplog) == []


async def test_a_remark_queued_again_behind_a_newer_turn_that_read_it_back_keeps_its_place(
    redis_proxy: HeldReplyProxy,  # first: it outlasts the bot, which reaches Redis through it
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, alone, but what waits is a remark to someone else: its turn only records it.
    A newer follow-up's turn read it back in its place; before, its own turn took that copy out
    and stored it last, after the newer follow-up and its answer, and the model read it there."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http", REDIS_URL=redis_proxy.url)
    # The first answer is in flight until the remark waits behind it; the newer follow-up's until
    # the remark is queued again, behind it.
    queued, queued_again = asyncio.Event(), asyncio.Event()
    llm.enqueue(Gated(queued), Gated(queued_again))
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await llm.wait_for_requests(1)
    remark = await slack.post_user_message(CHANNEL, "<@U2> the cache was restarted at noon", thread_ts=root)
    journal = f"turn:T1:{CHANNEL}:{remark}"
    await _until(lambda: _state_is(redis, journal, "queued"), what="the remark to wait")
    queued.set()
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    process = running.bot.turns.process_id
    await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    # The loss is noticed (at the next beat) only once the newer follow-up waits: its turn goes
    # first and reads the waiting one back, not a loaded machine's slow event after the beat
    # (the waiting one then queued again first, and nothing read back).
    noticing = redis_proxy.stall(running.bot.store._beat)
    await redis.flushall()
    await slack.wait_for(lambda: redis_proxy.stalled > 0, what="the next beat to hang")
    newer = await slack.post_user_message(CHANNEL, f"<@{BOT}> is that why?", thread_ts=root)
    await _until(lambda: redis.exists(f"turn:T1:{CHANNEL}:{newer}"), what="the newer follow-up to wait")
    noticing.set()
    posting.opened.set()
    await llm.wait_for_requests(2)  # the newer one's turn
    await _until(
        lambda: _state_is(redis, journal, "queued"), what="it to be queued again behind the newer one"
    )
    queued_again.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    assert any("the cache was restarted" in text for text in _prompt(llm))  # read back from Slack
    await _until(lambda: _state_is(redis, journal, "answered"))  # recorded
    await running.settle()
    stored = [json.loads(raw) for raw in await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)]
    said = [t["text"] for t in stored if t["role"] == "user"]
    assert len(said) == 3 and "the cache was restarted" in said[1], said
    assert said[0] == "why is api-prod red?" and said[2] == "is that why?", said
    assert _errors(caplog) == []


@pytest.mark.parametrize("asked_of", ["this process", "another process"])
async def test_a_dm_question_edited_to_name_a_colleague_after_a_loss_reaches_the_dm_thread_that_copied_it(
    asked_of: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a loss, a reply in the DM thread under an answer copies its question there from
    Slack; the question is then edited to name a colleague. Before, that edit was dropped whole:
    one that mentions someone was taken only in a conversation the bot follows, which the DM's top
    level, its meta gone with the loss, no longer said; the copy kept the old text (a password),
    and the model read it with every reply there. In a DM everything is said to the bot: its
    edits are taken, also by a process that never took part in the DM (one that did remembers)."""
    caplog.set_level(logging.INFO)
    asking = await start_bot("http")
    running = await start_bot("http") if asked_of == "another process" else asking
    slack.use_http(f"{asking.url}/slack/events")
    asked = await slack.post_user_message(DM, "my password is hunter2, why is api-prod red?")
    [answer] = await slack.wait_for_bot_messages(DM, "top", count=1)
    await asking.settle()
    slack.use_http(f"{running.url}/slack/events")
    await redis.flushall()
    await slack.wait_for(lambda: running.bot.turns.redis_loss.noticed, what="the loss to be noticed")
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await running.settle()
    assert any("hunter2" in text for text in _prompt(llm)), _prompt(llm)  # copied there
    await slack.edit_message(DM, asked, "why is api-prod red? <@U2> saw it too")
    await running.settle()
    stored = await redis.lrange(f"conv:T1:{DM}:{answer['ts']}:turns", 0, -1)
    said = [turn.text for turn in map(Turn.from_json, stored) if turn.role == "user"]
    assert said == ["why is api-prod red? @bob saw it too", "more on this"], said
    await slack.post_user_message(DM, "and now?", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=2)
    await running.settle()
    # Its answer, posted before the edit, quotes it still, as Slack shows it.
    assert _prompt(llm)[0] == "ann: why is api-prod red? @bob saw it too", _prompt(llm)
    assert _errors(caplog) == []


async def test_an_edit_naming_a_colleague_of_a_remark_queued_again_after_a_loss_is_what_its_turn_stores(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A remark to a colleague waits behind the answer in flight when Redis loses its data; queued
    again, it is edited, naming the colleague still. The thread's meta, which said the bot follows
    it, went with the loss, and a remark queued again does not write it back: before, the edit was
    dropped as one in a thread the bot takes no part in, and the remark's turn stored its old
    text. A thread this process took part in is followed still after a loss, for an edit as for a
    new message."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for(lambda: posting.waiting > 0, what="the answer's post")
    remark = await slack.post_user_message(CHANNEL, "<@U2> the cache was restarted", thread_ts=root)
    process = running.bot.turns.process_id
    await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="the remark to be queued again")
    await slack.edit_message(CHANNEL, remark, "<@U2> the cache was restarted at noon")
    posting.opened.set()
    journal = f"turn:T1:{CHANNEL}:{remark}"
    await _until(lambda: _state_is(redis, journal, "answered"))  # recorded
    await running.settle()
    stored = await redis.lrange(f"conv:T1:{CHANNEL}:{root}:turns", 0, -1)
    said = [turn.text for turn in map(Turn.from_json, stored) if turn.role == "user"]
    # The question, stored as its turn began, went with the loss: the next turn reads it back.
    assert said == ["@bob the cache was restarted at noon"], stored
    assert _errors(caplog) == []


async def test_a_follow_up_edited_twice_whose_events_come_in_the_other_order_is_queued_again_as_the_newer(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A follow-up waiting behind the answer in flight is edited twice, and Slack's events come in
    the other order. Redis keeps the newer edit (by `edited.ts`), but the process's own memory of
    the waiting message, which it queues again after a loss, kept the later event's: the older
    edit, which the follow-up was then answered with. It keeps the newer now, as Redis does."""
    caplog.set_level(logging.INFO)
    running = await start_bot("http")
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted
    posting = slack.gate("chat.postMessage")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> why is api-prod red?")
    await slack.wait_for(lambda: posting.waiting > 0, what="the first answer's post")
    follow_up = await slack.post_user_message(CHANNEL, f"<@{BOT}> and prod?", thread_ts=root)
    older = slack.edited_event(CHANNEL, follow_up, f"<@{BOT}> and staging?")
    newer = slack.edited_event(CHANNEL, follow_up, f"<@{BOT}> and dev?")
    assert (await slack.deliver_event(newer)).acked
    assert (await slack.deliver_event(older)).acked
    journal = f"turn:T1:{CHANNEL}:{follow_up}"
    assert await redis.hget(journal, "edited_text") == f"<@{BOT}> and dev?"  # as Redis keeps it
    process = running.bot.turns.process_id
    await _until(_a_beat(redis, process, await redis.zscore("processes", process)))
    await redis.flushall()
    await slack.wait_for(lambda: "message queued again" in caplog.text, what="its queueing again")
    posting.opened.set()
    first, second = await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await running.settle()
    assert [first["text"], second["text"]] == ["Answer: ann: why is api-prod red?", "Answer: ann: and dev?"]
    assert _asked(llm, "and staging?") == 0
    assert _errors(caplog) == []


async def test_with_several_processes_a_notice_found_by_the_look_after_a_loss_leaves_no_answer_streaming(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A answers a follow-up B accepted; Slack will not finish its streamed answer, nor stop it
    bare, and takes "something went wrong" under it, when Redis loses its data and A stops. B
    queues the follow-up again, and the look in Slack finds the notice: the follow-up is not
    answered again, and the answer given up for the notice is closed. Before, the look took
    the notice for the outcome and stopped there: Slack showed that answer as still being
    written, for good."""
    caplog.set_level(logging.INFO)
    a = await start_bot("http")
    b = await start_bot("http")
    slack.use_http(f"{a.url}/slack/events")
    llm.chunk_chars, llm.chunk_delay = 12, 0.05  # still written when it first shows: streamed
    queued = asyncio.Event()  # A answers the question until B has queued the follow-up
    llm.enqueue(
        Gated(queued), Reply("First paragraph of the answer.\n\nSecond paragraph, which comes later on.")
    )
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello")
    await slack.wait_for(lambda: len(llm.requests) == 1, what="A's answer to the question")
    slack.use_http(f"{b.url}/slack/events")
    follow_up = await slack.post_user_message(CHANNEL, f"<@{BOT}> and staging?", thread_ts=root)
    await _until(lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "queued"))
    stopping = slack.gate("chat.stopStream", lambda args: f"answer_to:{follow_up}" in str(args))
    noting = slack.gate("chat.postMessage", lambda args: DELIVERY_FAILED in str(args), answered=True)
    queued.set()
    await slack.wait_for(lambda: stopping.waiting == 1, timeout=15, what="A's final stop of its answer")
    slack.fail_next("chat.stopStream", error="msg_too_long")
    slack.fail_next("chat.stopStream", error="service_unavailable", status=503, times=3)  # bare stop too
    stopping.opened.set()
    await slack.wait_for(lambda: noting.waiting == 1, timeout=15, what="the notice, taken by Slack")
    b_id = b.bot.turns.process_id
    await _until(_a_beat(redis, b_id, await redis.zscore("processes", b_id)))
    await redis.flushall()
    await a.bot.stop(grace_seconds=0)  # its notice's answer never came back
    noting.opened.set()
    await _until(lambda: _state_is(redis, f"turn:T1:{CHANNEL}:{follow_up}", "noted"), timeout=20)
    await b.settle()
    messages = slack.bot_messages(CHANNEL, root)
    assert [m["text"] for m in messages][2:] == [DELIVERY_FAILED], [m["text"][:40] for m in messages]
    assert "notice found posted already" in caplog.text and _asked(llm, "and staging?") == 1
    assert not [m["ts"] for m in messages if m.get("streaming")], "an answer left streaming"
