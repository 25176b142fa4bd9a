"""The right to be forgotten: after `forget me`, no key in Redis holds the person's words or id,
while everyone else's conversation stays as it was."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable

import pytest
import redis.asyncio as aioredis

from bot.store import FORGET_ATTEMPTS, IncomingMessage, Keys, Store, ThreadKey, Turn
from bot.streaming import _feedback_block
from tests.conftest import RunningBot, StartBot, wait_until
from tests.emulators.openai_api import Gated, OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.redis_proxy import HeldReplyProxy

KEYS = Keys()  # the names on one Redis (no prefix)

CHANNEL = "C400"
DM = "D400"
BOT = "UBOT"
ANN_ID = re.compile(r"(?<![A-Za-z0-9])U1(?![A-Za-z0-9])")  # U1, not U11
ANN_SAYS = ["my card ends 4242 zebra", "invoice INV-7781 walrus is wrong", "account acme-falcon"]


async def everything_in(redis: aioredis.Redis) -> dict[str, str]:
    """Every key in Redis with its whole content, as text."""
    found = {}
    async for key in redis.scan_iter("*"):
        kind = await redis.type(key)
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        else:
            value = f"<{kind}>"
        found[key] = str(value)
    return found


async def test_forget_me_in_a_dm_leaves_no_trace_of_the_person(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    store: Store = bot.bot.store
    # ann (U1) asks in a DM, and in a channel thread that bob (U2) and cem (U3) take part in.
    await slack.post_user_message(DM, ANN_SAYS[0])
    await slack.wait_for_bot_messages(DM, count=1)
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[1]}")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await slack.post_user_message(CHANNEL, "same for me on invoice INV-9000", thread_ts=root, user="U2")
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await slack.post_user_message(CHANNEL, ANN_SAYS[2], thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    # bob has a thread of his own, and the shared thread has a summary that quotes ann.
    other = await slack.post_user_message(CHANNEL, f"<@{BOT}> bob's own question", user="U2")
    await slack.wait_for_bot_messages(CHANNEL, other, count=1)
    await bot.settle()
    shared = ThreadKey("T1", CHANNEL, root)
    assert await store.save_summary(shared, f"- ann: {ANN_SAYS[1]}", root, await store.summary(shared))
    # Votes, as the feedback buttons keep them (a hash a conversation, a field a vote): ann's on
    # her DM answer and on the shared thread's first answer, bob's and U11's (not ann) on that one
    # too, which must stay; and ann's in another workspace, which "forget me" here leaves alone.
    [dm_answer] = slack.bot_messages(DM)
    first_answer = slack.bot_messages(CHANNEL, root)[0]
    for channel, answer, voter in [
        (DM, dm_answer, "U1"),
        *[(CHANNEL, first_answer, v) for v in ("U1", "U2", "U11")],
    ]:
        assert (await slack.click_feedback(channel, answer["ts"], user=voter)).acked
    elsewhere = f"feedback:T2:{CHANNEL}:{root}"
    await redis.hset(elsewhere, f"{first_answer['ts']}:U1", '{"user": "U1", "team": "T2"}')
    await redis.expire(elsewhere, 3600)
    shared_votes = KEYS.feedback(shared)
    # A click is acknowledged once its vote is kept.
    assert sorted(f.split(":")[-1] for f in await redis.hkeys(shared_votes)) == ["U1", "U11", "U2"]
    before = await everything_in(redis)
    assert any(ANN_ID.search(k) or ANN_ID.search(v) for k, v in before.items())
    assert any(ANN_SAYS[1] in v for v in before.values())

    await slack.post_user_message(DM, "Forget me!")
    replies = await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()

    assert replies[-1]["text"].startswith("Done: I've deleted what I stored about you")
    assert "6 stored message(s)" in replies[-1]["text"]  # her 3 messages and the 3 answers to them
    assert "from 2 conversation(s), 2 feedback record(s)" in replies[-1]["text"]  # her 2 votes
    after = await everything_in(redis)
    for key, content in after.items():
        if key == elsewhere:
            continue  # another workspace's
        assert not ANN_ID.search(key) and not ANN_ID.search(content), (key, content)
        for said in ANN_SAYS:
            assert said not in content, (key, content)
    # Everyone else's stays: bob's turns in the shared thread, his own thread, his feedback.
    shared_turns = [t.text for t in await store.recent_turns(shared, 100)]
    assert "same for me on invoice INV-9000" in shared_turns
    assert "Answer: bob: same for me on invoice INV-9000" in shared_turns
    assert [t.text for t in await store.recent_turns(ThreadKey("T1", CHANNEL, other), 10)] == [
        "bob's own question",
        "Answer: bob: bob's own question",
    ]
    # bob's and U11's votes stay beside the answer ann voted on too; her vote elsewhere stays.
    assert sorted(f.split(":")[-1] for f in await redis.hkeys(shared_votes)) == ["U11", "U2"]
    assert await redis.hkeys(elsewhere) == [f"{first_answer['ts']}:U1"]
    assert len(llm.requests) == 5  # five answers; `forget me` was not sent to the model


async def test_forget_me_as_a_mention_in_a_channel(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    await slack.post_user_message(CHANNEL, f"<@{BOT}> forget me", thread_ts=root)
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert "2 stored message(s)" in replies[-1]["text"]
    assert await redis.exists(KEYS.turns(ThreadKey("T1", CHANNEL, root))) == 0
    assert await redis.exists(KEYS.user_index("T1", "U1"), KEYS.display_name("T1", "U1")) == 0


async def test_forget_me_that_cannot_catch_up_with_the_person_says_so_plainly(
    redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ann stores a turn in a thread between each read of her turns there and the step that would
    remove them (a proxy in front of Redis holds back each read's reply until her turn is stored),
    so `forget me` gives up after five tries. Before, the bot logged an ERROR with a traceback and
    told her only that something went wrong; now she is told that not everything could be deleted
    because her messages were still arriving, and to say `forget me` again, and the log has one
    WARNING naming her, with no traceback and none of her words."""
    writer = Store(redis_url, conversation_ttl_days=1)
    root = "1700000000.000100"
    stamps = iter(range(100, 1000))

    async def ann_writes() -> None:
        ts = f"1700000000.{next(stamps):06d}"
        message = IncomingMessage("T1", CHANNEL, ts, "U1", ANN_SAYS[0], "record", root, root, BOT, False)
        said = Turn(role="user", text=ANN_SAYS[0], ts=ts, user="U1", name="ann")
        await writer.record_progress(message, turns=(said,), state="answered")

    try:
        await ann_writes()  # she said something there before
        redis_proxy.hold(writer._their_turns.sha, ann_writes)
        bot = await start_bot("socket", REDIS_URL=redis_proxy.url)
        caplog.clear()

        await slack.post_user_message(DM, "forget me")
        [reply] = await slack.wait_for_bot_messages(DM, count=1)
        await bot.settle()
    finally:
        redis_proxy.hold("", None)
        await writer.close()

    assert redis_proxy.held == FORGET_ATTEMPTS
    assert reply["text"].startswith("Sorry, I couldn't delete everything I stored about you"), reply
    assert "still arriving" in reply["text"] and "`forget me` again" in reply["text"]
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and warning.exc_info is None, caplog.text
    assert "team=T1" in warning.getMessage() and "user=U1" in warning.getMessage()
    assert ANN_SAYS[0] not in caplog.text


async def test_forget_me_takes_the_answers_read_back_from_a_thread_the_bot_joined_late(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """The bot's own messages read back from Slack are linked to the person's message before
    them, as the answers it stores itself are: one that quoted ann goes with her messages. The
    thread's first message, the bot's, answers nobody and stays, as do bob's and his answers."""
    store: Store = bot.bot.store
    root = slack.seed_message(CHANNEL, "Maintenance tonight at 22:00", bot=True)
    said = slack.seed_message(CHANNEL, ANN_SAYS[0], thread_ts=root)
    quoted = slack.seed_message(CHANNEL, f"Noted: {ANN_SAYS[0]}", thread_ts=root, bot=True)
    asked = slack.seed_message(CHANNEL, "is the API down?", user="U2", thread_ts=root)
    slack.seed_message(CHANNEL, "Not that I know of", thread_ts=root, bot=True)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> any news?", user="U2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    thread = ThreadKey("T1", CHANNEL, root)
    links = [(t.text, t.reply_to) for t in await store.recent_turns(thread, 100) if t.role == "assistant"]
    assert links[:3] == [
        ("Maintenance tonight at 22:00", None),
        (f"Noted: {ANN_SAYS[0]}", said),
        ("Not that I know of", asked),
    ]

    await slack.post_user_message(DM, "forget me")
    [confirmation] = await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()

    assert "2 stored message(s)" in confirmation["text"]  # her message and the answer quoting it
    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content and not ANN_ID.search(content), (key, content)
    assert [t.text for t in await store.recent_turns(thread, 100)] == [
        "Maintenance tonight at 22:00",
        "is the API down?",
        "Not that I know of",
        "any news?",
        "Answer: bob: any news?",
    ]
    assert quoted not in await store.stored_ts(thread)


async def test_forget_me_takes_the_answer_a_dm_thread_under_it_starts_with(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """A reply under one of the bot's DM answers starts a conversation of its own, read from
    Slack: that answer (which quotes ann) after the question it was for. Both go with `forget me`."""
    await slack.post_user_message(DM, ANN_SAYS[0])
    [answer] = await slack.wait_for_bot_messages(DM, count=1)
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await bot.settle()
    thread = ThreadKey("T1", DM, answer["ts"])
    stored = await bot.bot.store.recent_turns(thread, 10)
    assert [(t.role, t.reply_to) for t in stored[:2]] == [("user", None), ("assistant", stored[0].ts)]

    await slack.post_user_message(DM, "forget me")
    confirmation = (await slack.wait_for_bot_messages(DM, "top", count=2))[-1]
    await bot.settle()

    assert "6 stored message(s)" in confirmation["text"]  # 2 in the DM, 4 in its thread
    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content and not ANN_ID.search(content), (key, content)


async def test_a_deleted_message_takes_the_answer_read_back_after_it(
    bot: RunningBot, slack: SlackEmulator
) -> None:
    """A message deleted in Slack goes from the stored conversation with the bot's answer to it,
    also when that answer was read back from Slack."""
    store: Store = bot.bot.store
    root = slack.seed_message(CHANNEL, "is the API down?", user="U2")
    slack.seed_message(CHANNEL, "Not that I know of", thread_ts=root, bot=True)
    said = slack.seed_message(CHANNEL, ANN_SAYS[0], thread_ts=root)
    slack.seed_message(CHANNEL, f"Noted: {ANN_SAYS[0]}", thread_ts=root, bot=True)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> any news?", user="U2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    thread = ThreadKey("T1", CHANNEL, root)
    assert await store.save_summary(thread, f"- ann: {ANN_SAYS[0]}", said, await store.summary(thread))

    await slack.delete_message(CHANNEL, said)  # acknowledged once the conversation has it

    assert [t.text for t in await store.recent_turns(thread, 100)] == [
        "is the API down?",
        "Not that I know of",
        "any news?",
        "Answer: bob: any news?",
    ]
    assert (await store.summary(thread)).text is None  # it quoted her: rebuilt without it


async def test_forget_me_clears_the_text_of_finished_messages_journals_and_a_retry_stays_unanswered(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """A message edited while it waited for its turn keeps the edit in its journal (crash recovery
    reads it there) until its turn is over. A journal an older version left with the text after
    the answer loses it with `forget me`; the journal's state stays, and Slack sending the message
    again still gets no second answer."""
    first_answered = asyncio.Event()
    llm.enqueue(Gated(first_answered))  # the thread is busy with the first answer meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is failing")
    await llm.wait_for_requests(1)
    follow_up = slack.user_message_event(CHANNEL, "since 8am", thread_ts=root)
    await slack.deliver_event(follow_up)
    await slack.edit_message(CHANNEL, follow_up["ts"], ANN_SAYS[0])
    first_answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()
    journal = KEYS.journal("T1", CHANNEL, follow_up["ts"])
    answered = await redis.hgetall(journal)
    assert answered["state"] == "answered" and ANN_SAYS[0] not in str(answered), answered
    await redis.hset(journal, mapping={"edited_text": ANN_SAYS[0], "edited_readable": ANN_SAYS[0]})

    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()

    kept = await redis.hgetall(journal)
    assert kept["state"] == "answered" and ANN_SAYS[0] not in str(kept), kept
    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content, (key, content)
    asked = len(llm.requests)
    retry = await slack.deliver_event(follow_up, retry_num=1, retry_reason="http_timeout")
    assert retry.acked
    await asyncio.sleep(0.5)  # time for a second answer, if there were one
    await bot.settle()
    assert len(slack.bot_messages(CHANNEL, root)) == 2 and len(llm.requests) == asked


async def test_forget_me_takes_every_part_of_a_long_answer_read_back_not_only_its_last(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """An answer too long for one message shows as several; only its last carries the buttons
    that name the question. Its first part, posted after bob spoke in the thread meanwhile, is
    ann's answer all the same (the buttons name it as the answer's first message): it goes with
    her `forget me`, not with bob's message."""
    store: Store = bot.bot.store
    root = slack.seed_message(CHANNEL, "deploys are failing", user="U3")
    said = slack.seed_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}", thread_ts=root)
    meanwhile = slack.seed_message(CHANNEL, "same here", user="U2", thread_ts=root)
    first = slack.seed_message(CHANNEL, f"About {ANN_SAYS[0]}: part one", thread_ts=root, bot=True)
    last = slack._add_message(
        CHANNEL,
        BOT,
        text="part two",
        thread_ts=root,
        bot=True,
        blocks=[{"type": "markdown", "text": "part two"}, _feedback_block(first, said)],
    )["ts"]
    await slack.post_user_message(CHANNEL, f"<@{BOT}> any news?", user="U2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    thread = ThreadKey("T1", CHANNEL, root)
    links = {t.ts: t.reply_to for t in await store.recent_turns(thread, 100) if t.role == "assistant"}
    assert links[first] == said and links[last] == said, (meanwhile, links)

    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()

    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content, (key, content)
    assert meanwhile in await store.stored_ts(thread)


async def test_forget_me_while_a_question_is_being_answered_elsewhere_keeps_no_answer_quoting_it(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann's question in a channel is being answered (it is stored already) when her `forget me`
    in the DM takes it. The answer (which quotes her) must not be stored after it, with no
    question left to link it to, where no later `forget me` could find it."""
    answered = asyncio.Event()
    llm.enqueue(Gated(answered))  # being answered until the `forget me` is done
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}")
    await llm.wait_for_requests(1)
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    assert not slack.bot_messages(CHANNEL, root)  # the answer still in flight
    answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=1, timeout=15)
    await bot.settle()
    await slack.post_user_message(DM, "forget me")  # "send `forget me` again afterwards to be sure"
    await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()

    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content, (key, content)


async def test_a_message_waiting_for_its_turn_at_forget_me_is_answered_and_not_stored(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann's follow-up waits behind her question's answer in a channel thread when she says
    `forget me` in the DM. She asked it, so it is answered (the prompt ends with it); but she sent
    it before asking to be forgotten, so neither it nor its answer is stored after the `forget me`,
    nor is the thread put back in her index. Before, both were stored, for good."""
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted (and held)
    first_answer = slack.gate("chat.postMessage", channel=CHANNEL)  # the thread is busy meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}")
    await llm.wait_for_requests(1)
    follow_up = await slack.post_user_message(CHANNEL, ANN_SAYS[1], thread_ts=root)
    await slack.post_user_message(DM, "forget me")
    [confirmation] = await slack.wait_for_bot_messages(DM, count=1)
    assert await redis.hget(KEYS.journal("T1", CHANNEL, follow_up), "state") == "queued"  # waits still
    first_answer.opened.set()
    answers = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    assert confirmation["text"].startswith("Done: I've deleted what I stored about you")
    assert answers[-1]["text"] == f"Answer: ann: {ANN_SAYS[1]}"
    assert llm.requests[-1]["messages"][-1]["content"].endswith(ANN_SAYS[1])
    for key, content in (await everything_in(redis)).items():
        for said in ANN_SAYS[:2]:
            assert said not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))
    assert await redis.hget(KEYS.journal("T1", CHANNEL, follow_up), "state") == "answered"

    # A message she sends after `forget me` is hers to keep, as ever.
    await slack.post_user_message(CHANNEL, ANN_SAYS[2], thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=3)
    await bot.settle()
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)
    assert [turn.text for turn in stored] == [ANN_SAYS[2], f"Answer: ann: {ANN_SAYS[2]}"]


async def test_a_message_sent_after_forget_me_and_waiting_behind_it_is_stored(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """ann's `forget me` and then a new question wait in a thread behind her first question's
    answer. The new question, sent after she asked to be forgotten, is hers to keep: only what
    she sent before the `forget me` goes unstored."""
    first_answered = asyncio.Event()
    llm.enqueue(Gated(first_answered))  # both wait behind the first answer
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}")
    await llm.wait_for_requests(1)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> forget me", thread_ts=root)
    await slack.post_user_message(CHANNEL, "a new question", thread_ts=root)
    first_answered.set()
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    await bot.settle()

    assert "2 stored message(s)" in replies[1]["text"]  # her first question and its answer
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)
    assert [turn.text for turn in stored] == ["a new question", "Answer: ann: a new question"]


async def test_a_forgotten_waiting_message_edited_after_its_turn_took_it_is_answered_as_edited(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann's follow-up, marked forgotten while it waited, is edited after its turn took it and
    before the turn's first step (the turn looks up her name, which `forget me` dropped, held by
    the emulator). It is answered as edited, as a turn not forgotten is, and neither text is
    stored. Before, the model was asked her old text, which the edit had taken back."""
    first_answer = slack.gate("chat.postMessage", channel=CHANNEL)  # the thread is busy meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}")
    await llm.wait_for_requests(1)
    follow_up = await slack.post_user_message(CHANNEL, ANN_SAYS[1], thread_ts=root)
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    journal = KEYS.journal("T1", CHANNEL, follow_up)
    assert await redis.hget(journal, "forgotten") == "1"
    name_lookup = slack.gate("users.info", user="U1")
    first_answer.opened.set()
    await slack.wait_for(lambda: name_lookup.waiting > 0, what="her follow-up's turn to look up her name")
    assert await redis.hget(journal, "state") == "queued"  # taken, its first step not yet run
    await slack.edit_message(CHANNEL, follow_up, ANN_SAYS[2])
    await wait_until(lambda: redis.hget(journal, "edited_text"), "the edit in her follow-up's journal")
    name_lookup.opened.set()
    answers = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": f"ann: {ANN_SAYS[2]}"}
    assert answers[-1]["text"] == f"Answer: ann: {ANN_SAYS[2]}"
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)
    assert stored == [], stored
    for key, content in (await everything_in(redis)).items():
        for said in ANN_SAYS:
            assert said not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))  # nor her edit's record in it


async def test_a_message_being_answered_at_forget_me_and_edited_after_it_keeps_no_record_of_the_edit(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann's follow-up is being answered (its answer held back by Slack) as she says `forget me`,
    and she edits it then: the edit, in a conversation the bot takes part in, keeps no record of
    her new text, nor puts her index back, as for a forgotten message still waiting. Before, the
    record (her new text) and her index were kept an hour after `forget me` said it was done."""
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the printer is offline", user="U2")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    her_answer = slack.gate("chat.postMessage", channel=CHANNEL)
    follow_up = await slack.post_user_message(CHANNEL, ANN_SAYS[0], thread_ts=root)
    await llm.wait_for_requests(2)
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    journal = KEYS.journal("T1", CHANNEL, follow_up)
    assert await redis.hmget(journal, "state", "forgotten") == ["working", "1"]

    # Acknowledged once the edit step ran (not when it failed: Slack would send it again).
    assert (await slack.deliver_event(slack.edited_event(CHANNEL, follow_up, ANN_SAYS[1]))).acked
    assert not await redis.exists(KEYS.edited("T1", CHANNEL, follow_up))
    assert not await redis.exists(KEYS.user_index("T1", "U1"))
    her_answer.opened.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    for key, content in (await everything_in(redis)).items():
        for said in ANN_SAYS[:2]:
            assert said not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))


async def _ann_answered_in_bobs_thread(bot: RunningBot, slack: SlackEmulator) -> tuple[str, str]:
    """bob's thread, with a follow-up of ann's answered in it: its root and her follow-up's ts."""
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the printer is offline", user="U2")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    follow_up = await slack.post_user_message(CHANNEL, ANN_SAYS[0], thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    return root, follow_up


@pytest.mark.parametrize("edit_step", ["before", "after"])
async def test_an_edit_of_an_older_message_during_forget_me_leaves_no_text_of_it(
    redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    redis: aioredis.Redis,
    edit_step: str,
) -> None:
    """ann edits a follow-up of hers answered earlier while her `forget me` runs: its edit step
    runs while the forget's step for that conversation is held back (after the forget read her
    index), or the other way round, the edit's step held back until she was told she is
    forgotten. Either way no text of hers stays once she is told so. Before, the edit's record
    (her new text) stayed an hour, with no index entry (the first order: the forget deleted the
    index the edit had added it to), or with her index back (the second)."""
    bot = await start_bot("socket", REDIS_URL=redis_proxy.url)
    store: Store = bot.bot.store
    root, follow_up = await _ann_answered_in_bobs_thread(bot, slack)
    edit = slack.edited_event(CHANNEL, follow_up, ANN_SAYS[1])
    told: list[dict] = []

    async def ann_edits() -> None:
        assert (await slack.deliver_event(edit)).acked  # acknowledged once its step ran

    async def ann_is_forgotten() -> None:
        await slack.post_user_message(DM, "forget me")
        told.extend(await slack.wait_for_bot_messages(DM, count=1))

    if edit_step == "before":
        redis_proxy.hold_request(store._forget_in_conversation.sha, ann_edits)
        await ann_is_forgotten()
    else:
        redis_proxy.hold_request(store._rewrite_turn.sha, ann_is_forgotten)
        await ann_edits()
    await bot.settle()

    assert redis_proxy.requests_held == 1
    assert told[-1]["text"].startswith("Done: I've deleted what I stored about you"), told
    for key, content in (await everything_in(redis)).items():
        for said in ANN_SAYS[:2]:
            assert said not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))
    assert [t.user for t in await store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)] == ["U2", None]


@pytest.mark.parametrize("delivered", ["while forget me runs", "after it, a retry"])
async def test_a_message_sent_before_forget_me_and_accepted_after_its_look_is_not_stored(
    redis_proxy: HeldReplyProxy,
    start_bot: StartBot,
    slack: SlackEmulator,
    redis: aioredis.Redis,
    delivered: str,
) -> None:
    """ann's DM message, sent before her `forget me`, reaches the bot only after `forget me` read
    the waiting threads' inboxes: while its step for a conversation of hers is held back, or as
    a Slack retry after she was told she is forgotten (its first delivery lost). It is answered
    (she asked it) but stored nowhere, as one waiting at the `forget me` is. Before, its turn
    stored it, and its answer, with her index back, after she was told everything was deleted."""
    bot = await start_bot("socket", REDIS_URL=redis_proxy.url)
    store: Store = bot.bot.store
    await _ann_answered_in_bobs_thread(bot, slack)
    late = slack.user_message_event(DM, ANN_SAYS[1])  # sent now; its event comes later

    async def late_event_comes() -> None:
        retry = {"retry_num": 1, "retry_reason": "http_timeout"} if delivered.endswith("retry") else {}
        assert (await slack.deliver_event(late, **retry)).acked  # acknowledged once accepted

    if delivered == "while forget me runs":
        redis_proxy.hold_request(store._forget_in_conversation.sha, late_event_comes)
    await slack.post_user_message(DM, "forget me")
    told = await slack.wait_for_bot_messages(DM, count=1)
    assert told[0]["text"].startswith("Done: I've deleted what I stored about you"), told
    if delivered != "while forget me runs":
        await late_event_comes()
    answered = await slack.wait_for_bot_messages(DM, count=2, timeout=15)
    await bot.settle()

    assert answered[-1]["text"] == f"Answer: ann: {ANN_SAYS[1]}"
    for key, content in (await everything_in(redis)).items():
        for said in ANN_SAYS[:2]:
            assert said not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))


async def test_a_message_stored_in_a_forgotten_conversation_while_forget_me_runs_stays_indexed(
    redis_proxy: HeldReplyProxy, start_bot: StartBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """ann says `forget me`, and, as it runs, just after it took her turns out of bob's thread,
    asks there again: that message, sent after `forget me`, is stored and answered as any, and
    her next `forget me` takes it. Before, the first `forget me` took bob's thread out of her
    index at its end (it had gone through it), though her new turn had just put it back: the
    second found nothing to delete, and her message stayed."""
    bot = await start_bot("socket", REDIS_URL=redis_proxy.url)
    store: Store = bot.bot.store
    root, _ = await _ann_answered_in_bobs_thread(bot, slack)

    async def ann_asks_again() -> None:
        redis_proxy.hold("", None)
        await slack.post_user_message(CHANNEL, ANN_SAYS[2], thread_ts=root)
        await slack.wait_for_bot_messages(CHANNEL, root, count=3)
        await bot.settle()

    redis_proxy.hold(store._forget_in_conversation.sha, ann_asks_again)
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()
    assert redis_proxy.held == 1
    thread = ThreadKey("T1", CHANNEL, root)
    assert [t.text for t in await store.recent_turns(thread, 10) if t.user == "U1"] == [ANN_SAYS[2]]

    await slack.post_user_message(DM, "forget me")
    told = await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()
    assert told[-1]["text"].startswith("Done: I've deleted what I stored about you"), told
    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[2] not in content, (key, content)
    assert [t.user for t in await store.recent_turns(thread, 10)] == ["U2", None]


async def test_a_forget_me_done_after_a_later_one_leaves_the_later_mark(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann says `forget me` in bob's thread, busy with his answer, where it waits; then in her DM,
    where it is done at once; the thread's is done last. A DM message she sent between the two,
    whose event comes only after both (a Slack retry), is answered and stored nowhere: she sent it
    before the `forget me` she was first told was done. Before, the `forget me` done last left
    its own older ts as the mark, and the message was stored."""
    bob_answered = asyncio.Event()
    llm.enqueue(Gated(bob_answered))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the printer is offline", user="U2")
    await llm.wait_for_requests(1)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> forget me", thread_ts=root)
    late = slack.user_message_event(DM, ANN_SAYS[1])  # sent now; its event comes last
    await slack.post_user_message(DM, "forget me")
    told = await slack.wait_for_bot_messages(DM, count=1)
    assert told[0]["text"].startswith("Done: I've deleted what I stored about you"), told
    bob_answered.set()
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    assert replies[1]["text"].startswith("Done: I've deleted what I stored about you"), replies
    await bot.settle()

    assert (await slack.deliver_event(late, retry_num=1, retry_reason="http_timeout")).acked
    answered = await slack.wait_for_bot_messages(DM, count=2, timeout=15)
    await bot.settle()
    assert answered[-1]["text"] == f"Answer: ann: {ANN_SAYS[1]}"
    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[1] not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))


async def test_an_edit_after_forget_me_of_a_message_only_read_back_keeps_a_record_the_next_takes(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """ann wrote in bob's thread before the bot was in it; bob's mention makes the bot read her
    message back from Slack (it never had its event: no journal). After her `forget me` she
    edits it: as the limit in docs/reliability.md says, the edit keeps a record an hour, with
    her index, and her next `forget me` takes both."""
    root = slack.seed_message(CHANNEL, "the printer is offline", user="U2")
    said = slack.seed_message(CHANNEL, ANN_SAYS[0], thread_ts=root)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> any idea?", thread_ts=root, user="U2")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()
    await slack.edit_message(CHANNEL, said, ANN_SAYS[1])
    await bot.settle()
    assert ANN_SAYS[1] in (await redis.get(KEYS.edited("T1", CHANNEL, said)) or "")
    assert await redis.exists(KEYS.user_index("T1", "U1"))

    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()
    for key, content in (await everything_in(redis)).items():
        for text in ANN_SAYS[:2]:
            assert text not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))


async def test_an_older_message_edited_after_forget_me_to_ask_the_bot_is_stored(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """ann wrote in the channel, not to the bot, before her `forget me`; after it, she edits that
    message to ask the bot. The question, written after `forget me`, is answered and stored as
    any message sent after it is (her next `forget me` takes it). Before, the mark her `forget
    me` left took it for a message sent before it, by its ts: neither it nor its answer was
    stored, and her follow-up in the thread was answered without them."""
    store: Store = bot.bot.store
    said = await slack.post_user_message(CHANNEL, "the printer on floor 3 is offline")  # to nobody
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()
    await slack.edit_message(CHANNEL, said, f"<@{BOT}> {ANN_SAYS[0]}")
    await slack.wait_for_bot_messages(CHANNEL, said, count=1)
    await bot.settle()

    stored = await store.recent_turns(ThreadKey("T1", CHANNEL, said), 10)
    assert [turn.user for turn in stored] == ["U1", None], stored
    assert ANN_SAYS[0] in stored[0].text
    assert await redis.sismember(KEYS.user_index("T1", "U1"), KEYS.turns(ThreadKey("T1", CHANNEL, said)))


async def _commands_of(store: Store, step: Awaitable[object]) -> int:
    """How many commands Redis runs for `step` (those inside its scripts included)."""

    async def calls() -> dict[str, int]:
        stats = await store.redis.info("commandstats")
        return {name: int(stat["calls"]) for name, stat in stats.items() if name != "cmdstat_info"}

    before = await calls()
    await step
    return sum(calls - before.get(name, 0) for name, calls in (await calls()).items())


async def test_an_edit_costs_no_redis_command_more_for_the_forget_me_mark(redis_url: str) -> None:
    """Every edit in a channel the bot is in runs the edit step, which reads whether `forget me`
    marked the message only where it would keep a record of the edit, with the journal's state,
    in one read. Before, that was one more command for every edit, two for one with no author."""
    store = Store(redis_url, conversation_ttl_days=1)
    try:
        elsewhere = ThreadKey("T1", CHANNEL, "1.1")  # a conversation the bot takes no part in
        await store.edit_user_message(elsewhere, "1.0", "hi", "hi", user="U2", edited_ts="1.5")  # loaded
        # The step, its tombstone, newest edit record, the followed mark and the journal's state,
        # and its look for a stored copy (none here).
        edit = store.edit_user_message(elsewhere, "1.1", "hello", "hello", user="U2", edited_ts="2.1")
        assert await _commands_of(store, edit) == 6
        # With no author, no record: the followed mark is not read either.
        assert await _commands_of(store, store.edit_user_message(elsewhere, "1.1", "hey", "hey")) == 5
        # A message waiting in a conversation the bot takes part in: its record (three writes), its
        # journal read once, the edit kept there, and the conversation's read-back mark.
        waiting = IncomingMessage("T1", CHANNEL, "3.2", "U1", ANN_SAYS[0], "answer", "3.1", "3.1", BOT)
        await store.accept(waiting)
        edit = store.edit_user_message(
            waiting.key, "3.2", ANN_SAYS[1], ANN_SAYS[1], user="U1", edited_ts="4.2"
        )
        assert await _commands_of(store, edit) == 10
    finally:
        await store.close()


async def test_forget_me_while_an_edited_message_is_being_answered_leaves_no_text_in_its_journal(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """A message edited while it waited keeps the edit in its journal; `forget me` while it is
    being answered takes its question, and once its turn is over the journal keeps no text of it
    (no later `forget me` would find that journal: its question is gone)."""
    first_answered, second_answered = asyncio.Event(), asyncio.Event()
    llm.enqueue(Gated(first_answered), Gated(second_answered))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is failing")
    await llm.wait_for_requests(1)
    follow_up = slack.user_message_event(CHANNEL, "since 8am", thread_ts=root)
    await slack.deliver_event(follow_up)
    await slack.edit_message(CHANNEL, follow_up["ts"], ANN_SAYS[0])  # while it waits
    first_answered.set()
    await llm.wait_for_requests(2, timeout=15)  # the edited message is being answered
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    assert len(slack.bot_messages(CHANNEL, root)) == 1  # its answer still in flight
    second_answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content, (key, content)
    journal = await redis.hgetall(KEYS.journal("T1", CHANNEL, follow_up["ts"]))
    assert journal["state"] == "answered", journal


async def test_forget_me_leaves_no_text_in_the_journal_of_a_message_refused_after_an_edit(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """A message edited while it waited, then refused (too long) when its turn came, never joins
    a conversation, so `forget me` finds no turn of it: its journal must not keep the edit."""
    first_answered = asyncio.Event()
    llm.enqueue(Gated(first_answered))  # the thread is busy with the first answer meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is failing")
    await llm.wait_for_requests(1)
    follow_up = slack.user_message_event(CHANNEL, "since 8am", thread_ts=root)
    await slack.deliver_event(follow_up)
    await slack.edit_message(CHANNEL, follow_up["ts"], f"{ANN_SAYS[0]} {'x' * 12_001}")
    first_answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)  # the answer, the refusal
    await bot.settle()

    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()

    for key, content in (await everything_in(redis)).items():
        assert ANN_SAYS[0] not in content, (key, content[:200])


async def test_a_deleted_message_stored_without_text_takes_its_answer_and_the_summary_covering_it(
    bot: RunningBot, slack: SlackEmulator
) -> None:
    """A person's message with no text (a file, say) is no stored turn, but the bot's answer read
    back after it is linked to it: deleting it takes that answer, and the summary that covers the
    answer goes too (the conversation changed)."""
    store: Store = bot.bot.store
    root = slack.seed_message(CHANNEL, "is the API down?", user="U2")
    said = slack.seed_message(CHANNEL, "", thread_ts=root)
    answer = slack.seed_message(CHANNEL, f"Your screenshot shows {ANN_SAYS[0]}", thread_ts=root, bot=True)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> any news?", user="U2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    thread = ThreadKey("T1", CHANNEL, root)
    assert said not in await store.stored_ts(thread) and answer in await store.stored_ts(thread)
    assert await store.save_summary(thread, f"- bot: {ANN_SAYS[0]}", answer, await store.summary(thread))

    await slack.delete_message(CHANNEL, said)

    assert answer not in await store.stored_ts(thread)
    assert (await store.summary(thread)).text is None


async def test_a_deleted_dm_question_goes_from_the_dm_thread_under_its_answer_too(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """A reply under one of the bot's DM answers starts a conversation that begins with a copy of
    the question that answer was for, and the answer linked to it. Deleting that question in
    Slack should take both from there too, as from the DM's own conversation."""
    said = await slack.post_user_message(DM, ANN_SAYS[0])
    [answer] = await slack.wait_for_bot_messages(DM, count=1)
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await bot.settle()

    await slack.delete_message(DM, said)
    await bot.settle()

    for key, content in (await everything_in(redis)).items():
        if key.startswith("conv:"):
            assert ANN_SAYS[0] not in content, (key, content)


async def test_an_edited_dm_question_is_edited_in_the_dm_thread_under_its_answer_too(
    bot: RunningBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    """Review of ca07feb: the deletion now reaches the copy of a DM question in the DM thread under
    its answer, but an edit does not. Someone who edits a secret out of a DM question leaves it in
    that thread's conversation, which goes to the model with every later reply there."""
    said = await slack.post_user_message(DM, ANN_SAYS[0])
    [answer] = await slack.wait_for_bot_messages(DM, count=1)
    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await bot.settle()

    await slack.edit_message(DM, said, "my card ends ****")
    await bot.settle()

    [thread] = [key for key in await redis.keys("conv:*:turns") if key.endswith(f":{answer['ts']}:turns")]
    said_there = [json.loads(raw) for raw in await redis.lrange(thread, 0, -1)]
    said_there = [turn["text"] for turn in said_there if turn["role"] == "user"]
    assert "more on this" in said_there  # the thread's conversation, with the question's copy
    assert not any(ANN_SAYS[0] in text for text in said_there), said_there


async def test_a_forgotten_waiting_message_whose_turn_is_resumed_is_answered_not_an_older_turn(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann's follow-up was marked forgotten while it waited, and the process that then began its
    turn (storing nothing, as it must) died before any of the answer showed. The next process
    answers it again: its prompt ends with her follow-up, not with the turn stored before it (the
    answer to her first question)."""
    bot = await start_bot("socket", RECOVERY_INTERVAL_SECONDS="0.3")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    # Her follow-up, as the dead process left it: begun, nothing of it stored, its lock held.
    event = slack.user_message_event(CHANNEL, ANN_SAYS[1], thread_ts=root)
    follow_up = IncomingMessage("T1", CHANNEL, event["ts"], "U1", ANN_SAYS[1], "answer", root, root, BOT)
    await bot.bot.store.accept(follow_up, "dead0:token")
    await bot.bot.store.beat("dead0", 1)  # it said it was alive, then died: its liveness lapsed
    journal = KEYS.journal("T1", CHANNEL, follow_up.ts)
    await redis.hset(journal, mapping={"state": "working", "user_turn_stored": "1", "forgotten": "1"})

    answers = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": f"ann: {ANN_SAYS[1]}"}
    assert answers[-1]["text"] == f"Answer: ann: {ANN_SAYS[1]}"
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)
    assert ANN_SAYS[1] not in str(stored)


async def test_a_waiting_message_s_own_read_of_its_thread_after_forget_me_stores_nothing_of_theirs(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator, redis: aioredis.Redis
) -> None:
    """ann mentions the bot in bob's thread; Slack will not show the thread then, so her follow-up,
    waiting behind that answer when she says `forget me` in the DM, is the turn that reads it.
    What it reads of hers (her mention, sent before the `forget me`) is not stored again, nor the
    thread put back in her index; bob's message is."""
    root = slack.seed_message(CHANNEL, "the printer is offline", user="U2")
    slack.fail_next("conversations.replies", drop=True, times=10)
    llm.chunk_chars = 1000  # one piece: written whole before it is first shown, posted (and held)
    first_answer = slack.gate("chat.postMessage", channel=CHANNEL)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> {ANN_SAYS[0]}", thread_ts=root)
    await llm.wait_for_requests(1)
    slack.clear_faults()
    follow_up = await slack.post_user_message(CHANNEL, ANN_SAYS[1], thread_ts=root)
    await slack.post_user_message(DM, "forget me")
    await slack.wait_for_bot_messages(DM, count=1)
    assert await redis.hget(KEYS.journal("T1", CHANNEL, follow_up), "state") == "queued"  # waits still
    first_answer.opened.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()

    prompt = [m["content"] for m in llm.requests[-1]["messages"][1:]]
    assert prompt == ["bob: the printer is offline", f"ann: {ANN_SAYS[1]}"]
    for key, content in (await everything_in(redis)).items():
        for said in ANN_SAYS[:2]:
            assert said not in content, (key, content)
    assert not await redis.exists(KEYS.user_index("T1", "U1"))
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 10)
    assert [turn.text for turn in stored] == ["the printer is offline"]


async def test_an_inbox_entry_that_is_no_message_does_not_stop_forget_me(
    redis_url: str, redis: aioredis.Redis
) -> None:
    """Something else sharing the key prefix left an entry that is no message in a waiting
    thread's inbox: `forget me` still marks ann's waiting message, and goes on, for her and for
    everyone else in the workspace, rather than fail on it until the inbox expires."""
    store = Store(redis_url, conversation_ttl_days=1)
    try:
        waiting = IncomingMessage("T1", CHANNEL, "1.2", "U1", ANN_SAYS[0], "answer", "1.1", "1.1", BOT)
        await store.accept(waiting)
        for junk, thread in (("not json", "2.1"), ('["a", "list"]', "3.1")):
            await redis.zadd(KEYS.inbox(ThreadKey("T1", CHANNEL, thread)), {junk: 1})
            await redis.zadd(KEYS.pending, {f"T1:{CHANNEL}:{thread}": 1})

        await store.forget_user("T1", "U1", before="9.9")
    finally:
        await store.close()
    assert await redis.hget(KEYS.journal("T1", CHANNEL, "1.2"), "forgotten") == "1"
