"""What a user sees: mentions, follow-ups, DMs, mid-thread mentions, several people, edits and deletes.

Each scenario drives the real bot through the Slack emulator (Socket Mode and HTTP mode) and the
OpenAI emulator, with a real redis-server behind it.
"""

from __future__ import annotations

import asyncio

from bot.context import EARLIER_UNREAD_NOTE
from bot.rate_limit import SlackBudget
from bot.store import RateClaim, ThreadKey
from tests.conftest import RunningBot, StartBot, wait_until
from tests.emulators.openai_api import Gated, OpenAIEmulator
from tests.emulators.slack import SlackEmulator

CHANNEL = "C100"
DM = "D100"
BOT = "UBOT"


def last_prompt(llm: OpenAIEmulator) -> list[dict]:
    return llm.requests[-1]["messages"]


def contents(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages]


async def test_a_group_dm_is_answered_like_a_channel(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A group DM (channel_type mpim): a mention is answered in its thread, and a message without
    one, outside a thread the bot is in, is not answered."""
    await slack.post_user_message("G900", "just chatting among ourselves", channel_type="mpim")
    ts = await slack.post_user_message("G900", f"<@{BOT}> can you help?", channel_type="mpim")
    [answer] = await slack.wait_for_bot_messages("G900", ts)
    await bot.settle()
    assert answer["thread_ts"] == ts and answer["text"] == "Answer: ann: can you help?"
    assert len(slack.bot_messages("G900")) == 1 and len(llm.requests) == 1


async def test_mention_gets_threaded_answer_without_the_mention_token(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> why does my check show a 503?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await bot.settle()

    assert answer["thread_ts"] == ts
    assert answer["text"] == "Answer: ann: why does my check show a 503?"
    prompt = last_prompt(llm)
    assert prompt[0] == {
        "role": "system",
        "content": 'You are the test support bot.\n\nYou are answering "ann", who wrote the last message.',
    }
    assert prompt[-1] == {"role": "user", "content": "ann: why does my check show a 503?"}
    assert "<@" not in str(prompt)
    # Exactly one LLM call although the mention arrived as both app_mention and message.
    assert len(llm.requests) == 1
    # The "is thinking…" status was shown in the thread, and is gone now.
    statuses = [c.args for c in slack.calls_to("assistant.threads.setStatus")]
    assert statuses and statuses[0]["status"] == "is thinking…"
    assert not slack.statuses.get((CHANNEL, ts))


async def test_mention_inside_a_thread_answers_in_that_thread(bot: RunningBot, slack: SlackEmulator) -> None:
    root = slack.seed_message(CHANNEL, "our deploy is stuck", user="U2")
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> any idea?", thread_ts=root)
    [answer] = await slack.wait_for_bot_messages(CHANNEL, root)
    await bot.settle()
    assert answer["thread_ts"] == root
    assert ts != root


async def test_follow_up_in_thread_uses_earlier_turns(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is red")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()

    await slack.post_user_message(CHANNEL, "it started an hour ago", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()

    assert contents(last_prompt(llm))[1:] == [
        "ann: my check is red",
        "Answer: ann: my check is red",
        "ann: it started an hour ago",
    ]


async def test_messages_in_threads_the_bot_is_not_part_of_are_ignored(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, "lunch anyone?")
    await slack.post_user_message(CHANNEL, "yes!", thread_ts=root, user="U2")
    await asyncio.sleep(0.3)
    await bot.settle()
    assert llm.requests == []
    assert slack.bot_messages(CHANNEL) == []


async def test_people_talking_to_each_other_get_no_answer_but_are_context(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I rotate my API key?")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()

    await slack.post_user_message(CHANNEL, "<@U2> did you rotate ours last week?", thread_ts=root)
    await asyncio.sleep(0.3)
    await bot.settle()
    assert len(slack.bot_messages(CHANNEL, root)) == 1
    assert len(llm.requests) == 1

    await slack.post_user_message(CHANNEL, "yes, on Monday", thread_ts=root, user="U2")
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[-2:] == [
        "ann: @bob did you rotate ours last week?",
        "bob: yes, on Monday",
    ]


async def test_mention_in_an_existing_thread_reads_it_first_then_follows_it(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = slack.seed_message(CHANNEL, "message 0", user="U2")
    for i in range(1, 450):  # more than two pages of conversations.replies
        slack.seed_message(CHANNEL, f"message {i}", user="U3" if i % 2 else "U2", thread_ts=root)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> can you summarise?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()

    replies_calls = slack.calls_to("conversations.replies")
    assert len(replies_calls) >= 3  # paginated
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 1000)
    assert [t.text for t in stored[:2]] == ["message 0", "message 1"]
    assert [t.name for t in stored[:2]] == ["bob", "cem"]
    assert len(stored) == 450 + 2  # the thread, the question and the answer
    prompt = contents(last_prompt(llm))
    assert prompt[-3:] == ["bob: message 448", "cem: message 449", "ann: can you summarise?"]

    # From now on the bot follows the thread without being mentioned, and reads Slack no more.
    await slack.post_user_message(CHANNEL, "and the last one?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert len(slack.calls_to("conversations.replies")) == len(replies_calls)


async def test_a_bare_reset_in_a_thread_the_bot_was_not_in_keeps_what_came_before(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Read back from Slack, a conversation starts after a person's last `reset` to the bot. In
    a thread the bot was not in, a bare "reset" was said to someone else (a review of the first
    version, which dropped the thread before it)."""
    root = slack.seed_message(CHANNEL, "the sync job failed again", user="U2")
    slack.seed_message(CHANNEL, "reset", user="U3", thread_ts=root)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> what failed?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == [
        "bob: the sync job failed again",
        "cem: reset",
        "ann: what failed?",
    ]

    other = slack.seed_message(CHANNEL, "the sync job failed again", user="U2")
    slack.seed_message(CHANNEL, f"<@{BOT}> reset", user="U3", thread_ts=other)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> what failed?", thread_ts=other)
    await slack.wait_for_bot_messages(CHANNEL, other, count=1)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == ["ann: what failed?"]


async def test_a_thread_slack_will_not_show_now_is_answered_without_it_and_read_next_turn(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Slack is unreachable for conversations.replies (every try of the connection cut): the
    mention is answered without the earlier messages rather than not at all, the model told that
    they could not be read, and the thread's next turn reads them."""
    root = slack.seed_message(CHANNEL, "the printer on floor 3 is offline", user="U2")
    # More than every try: aiohttp itself tries a GET again on a kept connection that was cut.
    slack.fail_next("conversations.replies", drop=True, times=10)
    await slack.post_user_message(CHANNEL, f"<@{BOT}> any idea?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == ["ann: any idea?"]
    assert EARLIER_UNREAD_NOTE in last_prompt(llm)[0]["content"]
    assert slack.calls_to("conversations.replies")
    slack.clear_faults()

    await slack.post_user_message(CHANNEL, "it says paper jam", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == [
        "bob: the printer on floor 3 is offline",
        "ann: any idea?",
        "Answer: ann: any idea?",
        "ann: it says paper jam",
    ]
    assert EARLIER_UNREAD_NOTE not in last_prompt(llm)[0]["content"]


async def test_a_long_thread_is_read_to_its_end_when_its_pages_must_wait_for_the_budget(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """conversations.replies is Tier 3 (50 a minute per workspace), shared with every other read.
    With the minute's budget all but spent, a mention in a thread of three pages reads the first
    page at once and waits for the window to reopen for the others (here 6.6 s: a minute of Slack
    played ten times faster), rather than answer without the thread and read it all again next
    turn."""
    running = await start_bot("http", SLACK_RATE_LIMIT_SCALE="10")
    budget = SlackBudget(running.bot.store, scale=10)
    replies = budget.bucket("T1", "conversations.replies")
    await budget.claim([RateClaim(replies, "take", f"other-{i}") for i in range(replies.limit - 1)], wait=0)
    root = slack.seed_message(CHANNEL, "message 0", user="U2")
    for i in range(1, 450):  # three pages of 200
        slack.seed_message(CHANNEL, f"message {i}", user="U3" if i % 2 else "U2", thread_ts=root)

    await slack.post_user_message(CHANNEL, f"<@{BOT}> can you summarise?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=1, timeout=30)
    await running.settle()

    pages = slack.calls_to("conversations.replies")
    assert len(pages) == 3
    assert pages[1].at - pages[0].at > 5, "the second page waited for the window"
    prompt = contents(last_prompt(llm))
    assert prompt[-3:] == ["bob: message 448", "cem: message 449", "ann: can you summarise?"]
    stored = await running.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 1000)
    assert len(stored) == 450 + 2


async def test_dm_is_one_rolling_conversation_and_reset_starts_afresh(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    await slack.post_user_message(DM, "hello, I need help with billing")
    [first] = await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()
    assert "thread_ts" not in first or first["thread_ts"] is None  # a top-level reply

    await slack.post_user_message(DM, "the invoice is wrong")
    await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == [
        "ann: hello, I need help with billing",
        "Answer: ann: hello, I need help with billing",
        "ann: the invoice is wrong",
    ]

    await slack.post_user_message(DM, "reset")
    messages = await slack.wait_for_bot_messages(DM, count=3)
    await bot.settle()
    assert messages[-1]["text"] == "Starting fresh: I've cleared this conversation."
    assert len(llm.requests) == 2  # reset is not sent to the model

    await slack.post_user_message(DM, "new question")
    await slack.wait_for_bot_messages(DM, count=4)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == ["ann: new question"]


async def test_dm_thread_is_its_own_conversation(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    await slack.post_user_message(DM, "first topic")
    [answer] = await slack.wait_for_bot_messages(DM, count=1)
    await bot.settle()

    await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
    await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await bot.settle()
    assert contents(last_prompt(llm))[1:] == [
        "ann: first topic",
        "Answer: ann: first topic",
        "ann: more on this",
    ]

    # The rolling DM conversation did not get the thread's turn.
    await slack.post_user_message(DM, "second topic")
    await slack.wait_for_bot_messages(DM, count=3)
    await bot.settle()
    assert "ann: more on this" not in contents(last_prompt(llm))


async def test_several_people_are_named(bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> login fails", user="U1")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    await slack.post_user_message(CHANNEL, "for me too", thread_ts=root, user="U3")
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[-1] == "cem: for me too"
    # Names are looked up once per person and cached.
    looked_up = [c.args["user"] for c in slack.calls_to("users.info")]
    assert sorted(looked_up) == ["U1", "U3"]


async def test_a_person_slack_will_not_name_is_asked_about_once_and_named_by_id(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> login fails", user="U404")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    await slack.post_user_message(CHANNEL, "still failing", thread_ts=root, user="U404")
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[-1] == "U404: still failing"
    assert [c.response.get("error") for c in slack.calls_to("users.info")] == ["user_not_found"]


async def test_two_quick_messages_are_answered_in_order(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> first")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()

    # "third" arrives while "second" is still being answered (until the test lets it be).
    second_answered = asyncio.Event()
    llm.enqueue(Gated(second_answered))
    await slack.post_user_message(CHANNEL, "second", thread_ts=root)
    await llm.wait_for_requests(2)
    await slack.post_user_message(CHANNEL, "third", thread_ts=root, user="U2")
    assert len(slack.bot_messages(CHANNEL, root)) == 1
    second_answered.set()
    answers = await slack.wait_for_bot_messages(CHANNEL, root, count=3)
    await bot.settle()
    assert [a["text"] for a in answers[1:]] == ["Answer: ann: second", "Answer: bob: third"]
    # The answer to "third" saw the turn before it, answer included.
    assert contents(last_prompt(llm))[-3:] == [
        "ann: second",
        "Answer: ann: second",
        "bob: third",
    ]


async def test_bot_messages_joins_and_edits_never_trigger_an_answer(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hi")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()

    thread_event = {"channel": CHANNEL, "thread_ts": root, "channel_type": "channel"}
    await slack.deliver_event(
        {"type": "message", "subtype": "bot_message", "bot_id": "BOTHER", "text": "beep",
         "ts": "1800000000.000001", **thread_event}
    )  # fmt: skip
    await slack.deliver_event(
        {"type": "message", "user": BOT, "bot_id": "BBOT", "text": "my own words",
         "ts": "1800000000.000002", **thread_event}
    )  # fmt: skip
    await slack.deliver_event(
        {"type": "message", "subtype": "channel_join", "user": "U3", "text": "<@U3> joined",
         "ts": "1800000000.000003", **thread_event}
    )  # fmt: skip
    await slack.edit_message(CHANNEL, root, f"<@{BOT}> hi again")
    await asyncio.sleep(0.3)
    await bot.settle()
    assert len(llm.requests) == 1
    assert len(slack.bot_messages(CHANNEL, root)) == 1


async def test_a_message_edited_to_mention_the_bot_is_answered_once_as_edited(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """People forget the mention and add it by editing: Slack then sends an `app_mention` (with
    `edited`) for the same message, which is answered, as edited; a later edit is not answered
    again. (Before, the mention was taken for a second event of the message and ignored.)"""
    root = await slack.post_user_message(CHANNEL, "my check is down, anyone?")
    await bot.settle()  # taken in, and left alone
    assert not llm.requests
    await slack.edit_message(CHANNEL, root, f"<@{BOT}> my check is down, anyone?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await slack.edit_message(CHANNEL, root, f"<@{BOT}> my check is down since 9am, anyone?")
    await asyncio.sleep(0.5)  # time for a second answer, if there were one
    await bot.settle()
    assert answer["text"] == "Answer: ann: my check is down, anyone?"
    assert len(slack.bot_messages(CHANNEL, root)) == 1 and len(llm.requests) == 1


async def test_an_edit_in_a_thread_the_bot_takes_no_part_in_looks_no_one_up(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Every edit in a channel the bot is in reaches it; one in a conversation it does not hold
    costs no users.info call for the people it mentions (Tier 4, shared with every turn)."""
    ts = await slack.post_user_message(CHANNEL, "lunch at noon?")
    await bot.settle()  # taken in, and left alone
    slack.add_user("U9", "bea")
    await slack.edit_message(CHANNEL, ts, "lunch at noon, <@U9>?")
    await asyncio.sleep(0.5)
    await bot.settle()
    assert [call.args.get("user") for call in slack.calls_to("users.info")] == []
    assert not llm.requests


async def test_deleted_message_leaves_the_stored_conversation(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> question one")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    oops = await slack.post_user_message(CHANNEL, "my password is hunter2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()

    await slack.delete_message(CHANNEL, oops)
    await bot.settle()
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)
    assert "hunter2" not in str([turn.text for turn in stored])  # gone before the next question
    await slack.post_user_message(CHANNEL, "question two", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=3)
    await bot.settle()
    assert "hunter2" not in str(contents(last_prompt(llm))[:-2])
    assert not any(m.get("content") == "ann: my password is hunter2" for m in last_prompt(llm))


async def test_edited_message_is_updated_in_the_conversation(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is slow")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    await slack.edit_message(CHANNEL, root, f"<@{BOT}> my check is down")
    await bot.settle()
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)
    assert "my check is down" in str([turn.text for turn in stored])  # edited before the next question
    await slack.post_user_message(CHANNEL, "since 9am", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[1] == "ann: my check is down"


async def test_two_edits_whose_events_come_in_the_other_order_leave_the_newer_text(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Slack may deliver the events of two quick edits in either order: the newer edit (by its
    `edited.ts`) is what the conversation keeps, not the later event's (before, that one's)."""
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is slow")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    older = slack.edited_event(CHANNEL, root, f"<@{BOT}> my check is failing")
    newer = slack.edited_event(CHANNEL, root, f"<@{BOT}> my check is down")
    assert (await slack.deliver_event(newer)).acked
    assert (await slack.deliver_event(older)).acked
    await slack.post_user_message(CHANNEL, "since 9am", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await bot.settle()
    assert contents(last_prompt(llm))[1] == "ann: my check is down"


async def test_a_follow_up_edited_while_it_waits_for_its_turn_is_answered_as_edited(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    first_answered = asyncio.Event()
    llm.enqueue(Gated(first_answered))  # the thread is busy with the first answer meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is failing")
    await llm.wait_for_requests(1)
    follow_up = await slack.post_user_message(CHANNEL, "since 8am", thread_ts=root)
    await slack.edit_message(CHANNEL, follow_up, "since 9am")
    first_answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=15)
    await bot.settle()
    assert contents(last_prompt(llm))[-1] == "ann: since 9am"
    stored = [turn.text for turn in await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)]
    assert "since 8am" not in str(stored) and "since 9am" in str(stored)


async def test_a_follow_up_deleted_while_it_waits_for_its_turn_is_not_answered(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    first_answered = asyncio.Event()
    llm.enqueue(Gated(first_answered))  # the thread is busy with the first answer meanwhile
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is failing")
    await llm.wait_for_requests(1)
    oops = await slack.post_user_message(CHANNEL, "my password is hunter2", thread_ts=root)
    await slack.delete_message(CHANNEL, oops)
    first_answered.set()
    await slack.wait_for_bot_messages(CHANNEL, root, count=1, timeout=15)
    await asyncio.sleep(1.0)  # time for an answer to the deleted message, if there were one
    await bot.settle()
    assert len(slack.bot_messages(CHANNEL, root)) == 1
    assert len(llm.requests) == 1
    stored = [turn.text for turn in await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)]
    assert "hunter2" not in str(stored)


async def test_a_question_edited_after_its_worker_took_it_is_answered_as_edited(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """The edit lands after the worker took the message (a mention that opens a thread is taken
    as it is queued) and before the question is stored (the turn waits here for the asker's
    name, held by the emulator): the step that stores the question applies it."""
    slack.add_user("U9", "bea")
    name_lookup = slack.gate("users.info", user="U9")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my check is slow", user="U9")
    await slack.wait_for(lambda: name_lookup.waiting > 0, what="the turn to look up the asker")
    await slack.edit_message(CHANNEL, root, f"<@{BOT}> my check is down")
    name_lookup.opened.set()
    [answer] = await slack.wait_for_bot_messages(CHANNEL, root, count=1, timeout=15)
    await bot.settle()
    assert contents(last_prompt(llm))[-1] == "bea: my check is down"
    assert answer["text"] == "Answer: bea: my check is down"
    stored = [turn.text for turn in await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)]
    assert "slow" not in str(stored) and "my check is down" in str(stored)


async def test_a_question_deleted_after_its_worker_took_it_is_not_answered(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """As above, with the question deleted in that moment: no answer, nothing stored, and the
    thinking status it showed is taken away."""
    slack.add_user("U9", "bea")
    name_lookup = slack.gate("users.info", user="U9")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> my password is hunter2", user="U9")
    await slack.wait_for(lambda: name_lookup.waiting > 0, what="the turn to look up the asker")
    await slack.delete_message(CHANNEL, root)
    name_lookup.opened.set()
    await slack.wait_for(lambda: not slack.statuses.get((CHANNEL, root)), what="the status to be cleared")
    await asyncio.sleep(1.0)  # time for an answer to the deleted message, if there were one
    await bot.settle()
    assert slack.bot_messages(CHANNEL, root) == []
    assert llm.requests == []
    stored = await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)
    assert "hunter2" not in str([turn.text for turn in stored])


async def test_a_remark_edited_after_its_worker_took_it_is_kept_as_edited(
    bot: RunningBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """The same for a message kept only as context (people talking to each other in the
    thread): the step that stores it applies the edit that came while its turn looked up the
    author's name."""
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> how do I rotate my API key?")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await bot.settle()
    slack.add_user("U9", "bea")
    name_lookup = slack.gate("users.info", user="U9")
    remark = await slack.post_user_message(
        CHANNEL, "<@U2> did you rotate ours last week?", thread_ts=root, user="U9"
    )
    await slack.wait_for(lambda: name_lookup.waiting > 0, what="the turn to look up the author")
    store = bot.bot.store
    lock = store.keys.lock(ThreadKey("T1", CHANNEL, root))
    await wait_until(lambda: store.redis.exists(lock), "the worker to take the remark (its thread's lock)")
    await slack.edit_message(CHANNEL, remark, "<@U2> did you rotate ours on Monday?")
    name_lookup.opened.set()
    await bot.settle()
    assert len(llm.requests) == 1  # a remark, not a question
    stored = [turn.text for turn in await bot.bot.store.recent_turns(ThreadKey("T1", CHANNEL, root), 50)]
    assert "last week" not in str(stored) and "@bob did you rotate ours on Monday?" in stored


async def test_history_survives_a_restart_of_the_bot(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    first = await start_bot("http")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> remember the check is named api-prod")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await first.settle()
    await first.bot.stop()

    await start_bot("http")
    await slack.post_user_message(CHANNEL, "what was its name?", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    assert "ann: remember the check is named api-prod" in contents(last_prompt(llm))


async def test_conversation_keys_expire_after_the_retention(
    start_bot: StartBot, slack: SlackEmulator, redis
) -> None:
    running = await start_bot("socket", CONVERSATION_TTL_DAYS="2")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> hello")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()
    conversation_keys = [k async for k in redis.scan_iter("conv:*")]
    assert sorted(conversation_keys) == [f"conv:T1:{CHANNEL}:{root}:meta", f"conv:T1:{CHANNEL}:{root}:turns"]
    for key in conversation_keys:
        assert 2 * 86400 - 60 <= await redis.ttl(key) <= 2 * 86400
    every_key = [k async for k in redis.scan_iter("*")]
    # Nothing is kept forever (-1: no expiry; -2 is a key that expired since the scan, as a rate
    # window of a second may have).
    assert [k for k in every_key if await redis.ttl(k) == -1] == []


async def test_a_dm_thread_with_no_loss_notes_no_copy_in_the_dm_conversation(
    bot: RunningBot, slack: SlackEmulator, redis
) -> None:
    """A reply in a DM thread under an answer that the DM's conversation stores: the question is
    found through that answer (`answers_to`), so nothing more is written. Before, each DM thread's
    first reply wrote a `copy:<ts>` field into the DM's meta (two more Redis commands on a normal
    turn), which nothing took out: a DM in daily use, its meta's TTL renewed by every turn, piled
    them up for good, naming messages long gone from its conversation."""
    for topic in ("first topic", "second topic"):
        await slack.post_user_message(DM, topic)
    answers = await slack.wait_for_bot_messages(DM, count=2)
    await bot.settle()
    for answer in answers:
        await slack.post_user_message(DM, "more on this", thread_ts=answer["ts"])
        await slack.wait_for_bot_messages(DM, answer["ts"], count=1)
    await bot.settle()
    meta = await redis.hgetall(f"conv:T1:{DM}:dm:meta")
    assert meta and [field for field in meta if field.startswith("copy:")] == []


async def _commands_run(redis) -> dict[str, int]:
    """Redis's calls so far of each command (those inside scripts included)."""
    return {name: int(stats["calls"]) for name, stats in (await redis.info("commandstats")).items()}


async def test_a_mention_in_an_existing_thread_costs_redis_commands_flat_in_the_thread_read(
    bot: RunningBot, slack: SlackEmulator, redis
) -> None:
    """Reading a thread back from Slack costs the same Redis commands however many messages it
    holds: storing them is one step. Before, heeding deletions meanwhile (their tombstones) cost
    one EXISTS a message read, on the first turn of every mention in an existing thread."""
    spent = {}
    for size in (2, 200):
        root = slack.seed_message(CHANNEL, "message 0", user="U2")
        for i in range(1, size):
            slack.seed_message(CHANNEL, f"message {i}", user="U3" if i % 2 else "U2", thread_ts=root)
        before = await _commands_run(redis)
        await slack.post_user_message(CHANNEL, f"<@{BOT}> can you summarise?", thread_ts=root)
        await slack.wait_for_bot_messages(CHANNEL, root, count=1)
        await bot.settle()
        after = await _commands_run(redis)
        spent[size] = {name: calls - before.get(name, 0) for name, calls in after.items()}
    # Background work (beats, lock renewals) varies a little from one turn to the next.
    grown = {name: calls for name, calls in spent[200].items() if calls > spent[2].get(name, 0) + 20}
    assert grown == {}, grown
