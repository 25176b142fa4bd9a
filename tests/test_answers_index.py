"""A DM's answers index: an edit or deletion of a DM question finds the bot's answers to it (and so
the DM threads under them) without scanning the DM's whole conversation in Redis, however long it
is; a DM stored before the index existed is scanned once, and indexed by that scan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bot.store import FORGET_ATTEMPTS, ForgetIncomplete, IncomingMessage, Store, ThreadKey, Turn
from tests.redis_proxy import HeldReplyProxy

DM = ThreadKey("T1", "D1", "dm")
PAIRS = 2000  # 4,000 turns, as the review measured


def question(i: int) -> Turn:
    return Turn(role="user", text=f"question {i}", ts=f"{1700000000 + i}.000100", user="U1", name="ann")


def answer(i: int, part: int = 0) -> Turn:
    return Turn(
        role="assistant", text=f"answer {i}", ts=f"{1700000000 + i}.00020{part}", reply_to=question(i).ts
    )


def message(i: int) -> IncomingMessage:
    return IncomingMessage("T1", "D1", question(i).ts, "U1", "q", "answer", None, "dm", "UBOT", True)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    store = Store(redis_url, conversation_ttl_days=1)
    yield store
    await store.close()


async def answered(store: Store, i: int, *answers: Turn) -> None:
    """A DM question and its answers, stored by the turn's own two steps."""
    await store.record_progress(message(i), turns=(question(i),), state="working")
    await store.record_progress(message(i), turns=answers or (answer(i),), state="answered")


async def commands_run(store: Store) -> dict[str, int]:
    stats = await store.redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


async def looked_up(store: Store, ts: str) -> tuple[list[str], set[str]]:
    """The answers to the question at `ts`, and the commands Redis ran to find them."""
    before = await commands_run(store)
    found = await store.answers_to(DM, ts)
    after = await commands_run(store)
    return found, {name for name, calls in after.items() if calls > before.get(name, 0)}


async def test_the_answers_to_a_question_in_a_long_dm_are_found_through_its_index(store: Store) -> None:
    for i in range(PAIRS):
        if i == 1000:  # a long answer, in two messages
            await answered(store, i, answer(i, 0), answer(i, 1))
        else:
            await answered(store, i)
    await store.answers_to(DM, "1.0")  # the script loaded

    found, ran = await looked_up(store, question(1000).ts)
    assert found == [answer(1000, 0).ts, answer(1000, 1).ts]
    assert "lrange" not in ran, ran  # no scan of the 4,000 turns
    assert await looked_up(store, question(1999).ts) == ([answer(1999).ts], ran)
    assert await store.answers_to(DM, question(7).ts[:-1]) == []  # a prefix of a question's ts

    # The index lives as long as the conversation.
    ttl = await store.redis.ttl(store.keys.answers(DM))
    assert 0 < ttl <= await store.redis.ttl(store.keys.turns(DM))


async def test_a_dm_stored_before_the_index_is_scanned_once_then_found_through_it(store: Store) -> None:
    # As a version without the index stored it: the turns only.
    legacy = [turn for i in range(50) for turn in (question(i), answer(i))]
    await store.redis.rpush(store.keys.turns(DM), *(turn.to_json() for turn in legacy))
    await answered(store, 50)  # answered after the upgrade: in an index that lacks the rest

    found, ran = await looked_up(store, question(20).ts)
    assert found == [answer(20).ts]
    assert "lrange" in ran  # the one scan
    for i in (20, 3, 50):
        found, ran = await looked_up(store, question(i).ts)
        assert (found, "lrange" in ran) == ([answer(i).ts], False)
    assert 0 < await store.redis.ttl(store.keys.answers(DM)) <= await store.redis.ttl(store.keys.turns(DM))


async def test_a_deletion_forget_me_and_reset_take_the_answers_out_of_the_index(store: Store) -> None:
    for i in range(3):
        await answered(store, i)

    assert await store.remove_user_message(DM, question(0).ts)
    assert await store.answers_to(DM, question(0).ts) == []
    assert await store.answers_to(DM, question(1).ts) == [answer(1).ts]

    await store.forget_user("T1", "U1")
    assert await store.answers_to(DM, question(1).ts) == []
    assert not await store.redis.exists(store.keys.answers(DM))  # their DM, all gone

    await answered(store, 3)
    await store.reset(DM)
    assert not await store.redis.exists(store.keys.answers(DM))
    await answered(store, 4)  # the conversation begins again: indexed from its first turn
    found, ran = await looked_up(store, question(4).ts)
    assert (found, "lrange" in ran) == ([answer(4).ts], False)


async def test_answers_read_back_from_slack_into_an_indexed_dm_are_found_through_its_index(
    store: Store,
) -> None:
    """After Redis lost a DM, its first new question begins the conversation (indexed from there)
    and the earlier messages read back from Slack are merged in before it: their answers join the
    index, which the first look after checks with one scan (turns appended by a pipeline,
    `append_turns`, change the list outside a step that keeps the index's stamp); later looks use
    the index."""
    await answered(store, 10)
    await store.merge_read_back(DM, [question(1), answer(1, 0), answer(1, 1), question(2)])
    await store.append_turns(DM, question(11), answer(11))
    await answered(store, 12)
    found, ran = await looked_up(store, question(10).ts)
    assert (found, "lrange" in ran) == ([answer(10).ts], True)
    for ts, answers in (
        (question(1).ts, [answer(1, 0).ts, answer(1, 1).ts]),
        (question(11).ts, [answer(11).ts]),
        (question(12).ts, [answer(12).ts]),
    ):
        found, ran = await looked_up(store, ts)
        assert (found, "lrange" in ran) == (answers, False)


async def test_forget_me_never_reports_success_while_the_person_s_turns_stay(
    store: Store, redis_proxy: HeldReplyProxy
) -> None:
    """The person stores a turn in their DM between each read of their turns there and the step
    that would remove them (a proxy holds back the read's reply until that turn is stored), five
    times running: `forget me` gives up with ForgetIncomplete rather than say it is done, leaves the
    turns it could not take, and keeps their index, so that asking again finds them."""
    for i in range(3):
        await answered(store, i)
    written = iter(range(100, 200))

    async def the_person_writes() -> None:
        await store.record_progress(message(i := next(written)), turns=(question(i),), state="working")

    redis_proxy.hold(store._their_turns.sha, the_person_writes)
    forgetting = Store(redis_proxy.url, conversation_ttl_days=1)
    try:
        with pytest.raises(ForgetIncomplete) as gave_up:
            await forgetting.forget_user("T1", "U1")
    finally:
        await forgetting.close()

    assert str(gave_up.value) == str(DM)
    assert redis_proxy.held == FORGET_ATTEMPTS  # each read was out of date by its step
    stored = {Turn.from_json(raw).ts for raw in await store.redis.lrange(store.keys.turns(DM), 0, -1)}
    said_before = {turn.ts for i in range(3) for turn in (question(i), answer(i))}
    assert stored == said_before | {question(i).ts for i in range(100, 100 + FORGET_ATTEMPTS)}
    assert await store.redis.exists(store.keys.user_index("T1", "U1"))  # so asking again finds it

    # Once they stop writing, asking again takes everything.
    forgotten = await store.forget_user("T1", "U1")
    assert (forgotten.messages, forgotten.conversations) == (11, 1)
    assert not await store.redis.exists(store.keys.turns(DM), store.keys.user_index("T1", "U1"))


async def test_answers_a_process_of_the_version_before_stores_in_an_indexed_dm_are_found(
    store: Store,
) -> None:
    """A rolling deploy: this version begins a DM (indexed from its first turn) while a process
    still on the version before the index stores later answers there, unindexed. A deletion of
    their question must still find them, or the answer (and the copy of the question in the DM
    thread under it) stays stored."""
    await answered(store, 1)
    # What the version before the index stores: the turns, and nothing in the index.
    await store.redis.rpush(store.keys.turns(DM), question(2).to_json(), answer(2).to_json())
    await answered(store, 3)  # this version again

    assert await store.answers_to(DM, question(2).ts) == [answer(2).ts]
    found, ran = await looked_up(store, question(3).ts)  # scanned once, indexed again
    assert (found, "lrange" in ran) == ([answer(3).ts], False)

    # The version before deletes question 3 and its answer (the index unchanged), then stores two
    # turns: the list is as long again as when the index last covered it.
    await store.remove_user_message(DM, question(1).ts)  # this version: the index follows
    assert await store.answers_to(DM, question(2).ts) == [answer(2).ts]
    for raw in (question(3).to_json(), answer(3).to_json()):
        await store.redis.lrem(store.keys.turns(DM), 1, raw)
    await store.redis.rpush(store.keys.turns(DM), question(4).to_json(), answer(4).to_json())
    assert await store.answers_to(DM, question(4).ts) == [answer(4).ts]


async def changed(store: Store, ts: str, how: str) -> set[str]:
    """The commands Redis ran to edit or delete the DM message at `ts`."""
    before = await commands_run(store)
    if how == "edit":
        assert await store.edit_user_message(DM, ts, "edited", "edited")
    else:
        assert await store.remove_user_message(DM, ts)
    after = await commands_run(store)
    return {name for name, calls in after.items() if calls > before.get(name, 0)}


async def test_a_read_back_into_a_dm_keeps_its_index_trusted_when_it_was(store: Store) -> None:
    """A read-back into a DM (after a loss) merges turns into the list the index's stamp describes.
    Before, the stamp went, and the next edit or deletion in the DM scanned the whole conversation
    once. The merge knows what it inserted: the stamp moves on with the list, whether the turns
    went in front of it or between its turns; a DM whose index was not trusted stays so (a scan)."""
    await answered(store, 10)  # the DM begins again after the loss: indexed from its first turn
    assert await store.merge_read_back(DM, [question(1), answer(1, 0), answer(1, 1), question(2)]) == 4
    assert await store.merge_read_back(DM, [question(5), answer(5)]) == 2  # between its turns
    await answered(store, 12)
    for ts, answers in (
        (question(10).ts, [answer(10).ts]),
        (question(1).ts, [answer(1, 0).ts, answer(1, 1).ts]),
        (question(5).ts, [answer(5).ts]),
        (question(12).ts, [answer(12).ts]),
    ):
        found, ran = await looked_up(store, ts)
        assert (found, "lrange" in ran) == (answers, False)

    legacy = ThreadKey("T1", "D2", "dm")  # stored by a version before the index: never stamped
    await store.redis.rpush(store.keys.turns(legacy), question(20).to_json(), answer(20).to_json())
    assert await store.merge_read_back(legacy, [question(3), answer(3)]) == 2
    before = await commands_run(store)
    assert await store.answers_to(legacy, question(20).ts) == [answer(20).ts]
    assert (await commands_run(store)).get("lrange", 0) > before.get("lrange", 0)  # the one scan


async def test_a_message_waiting_for_its_turn_is_edited_or_deleted_without_a_scan_unless_read_back(
    store: Store,
) -> None:
    """A message still waiting for its turn (behind an answer in flight, say) has no stored turn: its
    edit or deletion goes to its journal, without reading the DM's turns, as before the read-back
    merge. Only one at or before the newest ts read back from Slack may have a copy there (a newer
    turn read it back while it waited to be queued again after a loss): that one's conversation
    is scanned, and its copy changed."""
    for i in range(200):
        await answered(store, i)
    await store.edit_user_message(DM, question(0).ts, "loaded", "loaded")  # the script loaded
    journal = store.keys.journal("T1", "D1", question(200).ts)

    await store.accept(message(200))
    assert "lrange" not in await changed(store, question(200).ts, "edit")
    assert await store.redis.hget(journal, "edited_readable") == "edited"
    assert "lrange" not in await changed(store, question(200).ts, "delete")
    assert await store.redis.hget(journal, "deleted") == "1"

    # Queued again after a loss, and read back by a newer turn meanwhile: its copy changes too.
    await store.accept(message(201))
    assert await store.merge_read_back(DM, [question(201)]) == 1
    assert "lrange" in await changed(store, question(201).ts, "edit")
    assert [t.text for t in await store.recent_turns(DM, 1)] == ["edited"]
    await changed(store, question(201).ts, "delete")
    assert [t.ts for t in await store.recent_turns(DM, 1)] == [answer(199).ts]


async def test_a_copy_read_back_that_gives_way_to_its_own_turn_keeps_the_index_trusted(store: Store) -> None:
    """A question queued again after a loss, read back by a newer turn meanwhile: the copy gives way
    to the one its own turn stores (`give_way`), which takes a turn out of the list as a deletion
    does, and moves the index's stamp on as a deletion does (`restamp`), so that the next edit or
    deletion in the DM reads the index, not the whole conversation."""
    for i in range(3):
        await answered(store, i)
    assert await store.merge_read_back(DM, [question(3)]) == 1  # the stamp moves on with the list
    found, ran = await looked_up(store, question(0).ts)
    assert (found, "lrange" in ran) == ([answer(0).ts], False)

    await answered(store, 3)  # its own turn: the copy read back gives way
    assert [t.ts for t in await store.recent_turns(DM, 3)] == [answer(2).ts, question(3).ts, answer(3).ts]
    for i in (0, 3):
        found, ran = await looked_up(store, question(i).ts)
        assert (found, "lrange" in ran) == ([answer(i).ts], False)


async def stored_with_commands(store: Store, i: int, *turns: Turn) -> set[str]:
    """The commands Redis ran for the step of question `i`'s turn that stores its answer."""
    before = await commands_run(store)
    await store.record_progress(message(i), turns=turns, state="answered")
    after = await commands_run(store)
    return {name for name, calls in after.items() if calls > before.get(name, 0)}


async def test_an_answer_read_back_before_its_turn_stored_it_is_stored_once_and_keeps_the_index_trusted(
    store: Store,
) -> None:
    """A long answer (two messages) posted before a newer turn read the DM back from Slack, stored
    by its own turn after that: its copies read back give way to the answer as its turn stores it,
    in their place in Slack's order, and their entries in the index go with them, its stamp moving
    on with the list. Before, the answer was stored a second time, after the newer turn, and the
    model saw it twice. A normal answer, newer than anything read back, costs no scan."""
    for i in range(2):
        await answered(store, i)
    await store.record_progress(message(2), turns=(question(2),), state="working")
    assert await store.merge_read_back(DM, [answer(2, 0), answer(2, 1)]) == 2  # a newer turn's read
    await answered(store, 3)  # that newer turn
    found, ran = await looked_up(store, question(2).ts)  # the stamp moved on with the read: no scan
    assert (found, "lrange" in ran) == ([answer(2, 0).ts, answer(2, 1).ts], False)

    whole = replace(answer(2), text="answer 2, whole", prompt_tokens=40, completion_tokens=9)
    whole = replace(whole, messages=(answer(2, 0).ts, answer(2, 1).ts))  # as its turn posted them
    assert "lrange" in await stored_with_commands(store, 2, whole)
    turns = await store.recent_turns(DM, 10)
    expected = (question(0), answer(0), question(1), answer(1), question(2), whole, question(3), answer(3))
    assert [(t.ts, t.text) for t in turns] == [(turn.ts, turn.text) for turn in expected]
    assert turns[5] == whole  # with its cost, as its turn stored it
    for i, answers in ((2, [answer(2).ts]), (0, [answer(0).ts]), (3, [answer(3).ts])):
        found, ran = await looked_up(store, question(i).ts)
        assert (found, "lrange" in ran) == (answers, False)

    await store.record_progress(message(4), turns=(question(4),), state="working")
    assert "lrange" not in await stored_with_commands(store, 4, answer(4))
    assert [t.ts for t in await store.recent_turns(DM, 2)] == [question(4).ts, answer(4).ts]


async def test_an_answer_read_back_before_its_turn_stored_it_leaves_an_earlier_answer_linked_to_its_question(
    store: Store,
) -> None:
    """An answer to question 1 that its person stopped after question 2 came (so it has no
    buttons) is linked to question 2 when read back from Slack, as the latest message before it
    (bot/workspace.py). When question 2's answer, read back too, is then stored by its own turn,
    its copy gives way: before, the stopped answer did, the first linked to question 2, and the
    model never saw it again."""
    await answered(store, 0)
    stopped = Turn(
        role="assistant", text="answer 1, stopped", ts="1700000002.000150", reply_to=question(2).ts
    )
    read = [question(1), question(2), stopped, answer(2)]
    await store.record_progress(message(2), turns=(), state="working")
    assert await store.merge_read_back(DM, read) == 4  # a newer turn's read
    whole = replace(answer(2), text="answer 2, whole", prompt_tokens=40, completion_tokens=9)
    await store.record_progress(message(2), turns=(whole,), state="answered")
    turns = await store.recent_turns(DM, 10)
    assert [t.text for t in turns] == [
        "question 0", "answer 0", "question 1", "question 2", "answer 1, stopped", "answer 2, whole",
    ]  # fmt: skip
    found, _ = await looked_up(store, question(2).ts)
    assert found == [stopped.ts, whole.ts]


async def test_an_answer_stored_with_its_question_after_both_were_read_back_comes_after_it(
    store: Store,
) -> None:
    """A step that stores a question and its answer (a turn that found its answer posted already)
    after a newer turn read both back from Slack: the question's copy gives way, and the question
    goes last, as the one answered; its answer must not stay before it, in the copy's place."""
    await answered(store, 0)
    await store.record_progress(message(1), turns=(), state="working")
    assert await store.merge_read_back(DM, [question(1), answer(1)]) == 2
    assert (await looked_up(store, question(0).ts))[0] == [answer(0).ts]  # scans once after the read
    await store.record_progress(message(1), turns=(question(1), answer(1)), state="answered")
    turns = await store.recent_turns(DM, 10)
    assert [t.ts for t in turns] == [question(0).ts, answer(0).ts, question(1).ts, answer(1).ts]
    found, ran = await looked_up(store, question(1).ts)
    assert (found, "lrange" in ran) == ([answer(1).ts], False)


async def test_an_answer_read_back_before_its_turn_stored_it_leaves_a_later_answer_to_its_question(
    store: Store,
) -> None:
    """A question answered a second time (recovery answers one it could not look up in Slack),
    that second answer stored by its own turn after a newer turn read the first back: when the
    first's turn then stores it, only its copy read back gives way. Before, the second answer,
    linked to the same question, went as one of its copies."""
    await answered(store, 0)
    await store.record_progress(message(1), turns=(question(1),), state="working")
    assert await store.merge_read_back(DM, [answer(1)]) == 1  # a newer turn's read
    second = Turn(role="assistant", text="answer 1, again", ts="1700000001.000900", reply_to=question(1).ts)
    await store.record_progress(message(1), turns=(second,), state="answered")
    await store.record_progress(message(1), turns=(answer(1),), state="answered")
    turns = await store.recent_turns(DM, 10)
    assert [t.text for t in turns] == ["question 0", "answer 0", "question 1", "answer 1", "answer 1, again"]


async def test_a_long_answer_read_back_mid_stream_around_a_question_gives_way_in_every_message(
    store: Store,
) -> None:
    """A long answer read back while its second message was still being written, question 3 sent
    between its two messages: the second has no buttons yet, and is read back linked to question
    3, the latest message before it (bot/workspace.py). When the answer's turn stores it, every
    message it posted gives way, whatever it was linked to, and their entries in the index go.
    Before, only the first did: the second stayed after question 3, the model saw it twice, and
    it was taken for question 3's answer (a deletion of question 3 took it, and its DM thread)."""
    await answered(store, 0)
    await store.record_progress(message(2), turns=(question(2),), state="working")
    second = Turn(role="assistant", text="answer 2, part 2", ts="1700000003.000300", reply_to=question(3).ts)
    assert await store.merge_read_back(DM, [answer(2, 0), question(3), second]) == 3  # a newer turn's read
    assert (await looked_up(store, question(3).ts))[0] == [second.ts]
    whole = replace(answer(2), text="answer 2, whole", messages=(answer(2).ts, second.ts))
    await store.record_progress(message(2), turns=(whole,), state="answered")
    turns = await store.recent_turns(DM, 10)
    assert [t.text for t in turns] == [
        "question 0",
        "answer 0",
        "question 2",
        "answer 2, whole",
        "question 3",
    ]
    for i, answers in ((2, [whole.ts]), (3, []), (0, [answer(0).ts])):
        found, ran = await looked_up(store, question(i).ts)
        assert (found, "lrange" in ran) == (answers, False)


async def test_a_long_answer_read_back_with_no_question_before_it_gives_way_in_every_message(
    store: Store,
) -> None:
    """A long answer whose question is older than what the read saw (a DM's 60 newest messages
    begin with it): read back, its messages are linked to nothing. Before, only its first gave
    way when its turn stored it; now each message it posted does, and a bot message after it
    that is not one of them (another answer, unlinked too) stays."""
    await store.record_progress(message(1), turns=(), state="working")
    parts = [replace(answer(1, part), reply_to=None) for part in range(2)]
    other = Turn(role="assistant", text="answer 1, again", ts="1700000001.000900")
    assert await store.merge_read_back(DM, [*parts, other, question(2)]) == 4
    whole = replace(answer(1), text="answer 1, whole", messages=tuple(part.ts for part in parts))
    await store.record_progress(message(1), turns=(whole,), state="answered")
    turns = await store.recent_turns(DM, 10)
    assert [t.text for t in turns] == ["answer 1, whole", "answer 1, again", "question 2"]
    assert await store.answers_to(DM, question(1).ts) == [whole.ts]


async def test_an_answer_read_back_in_a_long_dm_of_long_turns_gives_way_once(store: Store) -> None:
    """The step that stores an answer read back before its turn stored it scans the DM's turns
    for its copies by plain search for each turn's ts (a Lua pattern tried at every character
    blocked Redis 4 to 5 times as long as reading the list: bench/read_back_scan.py measures it).
    In a DM of 4,000 turns of 1,000 characters each, whose texts hold a ts's look-alike, the
    answer replaces its one copy in place and nothing else moves."""
    decoy = ' "ts":"' + answer(1000).ts + '" ' + "x" * 1000  # escaped in the stored JSON: no ts

    def long(turn: Turn) -> Turn:
        return replace(turn, text=turn.text + decoy)

    turns = [long(turn) for i in range(PAIRS) for turn in (question(i), answer(i))]
    turns[2 * 1000 + 1] = answer(1000)  # the copy, read back before its turn stored it
    await store.redis.rpush(store.keys.turns(DM), *(turn.to_json() for turn in turns))
    await store.redis.hset(store.keys.meta(DM), mapping={"read_back_upto": turns[-1].ts, "hydrated": "1"})
    whole = replace(answer(1000), text="answer 1000, whole", messages=(answer(1000).ts,))
    await store.record_progress(message(1000), turns=(whole,), state="answered")
    stored = await store.recent_turns(DM, 2 * PAIRS)
    assert [turn.text for turn in stored] == [
        whole.text if i == 2 * 1000 + 1 else turn.text for i, turn in enumerate(turns)
    ]


async def test_an_answer_read_back_that_gives_way_leaves_the_index_expiring_with_the_conversation(
    store: Store,
) -> None:
    """A DM whose index held only the entry of an answer read back, which gives way to the answer
    its turn stores: before, taking the copy's entry out emptied the index, and the entry put
    back made it a new key without a TTL, kept after the conversation expired."""
    await store.record_progress(message(1), turns=(), state="working")
    assert await store.merge_read_back(DM, [question(1), answer(1)]) == 2
    whole = replace(answer(1), text="answer 1, whole")
    await store.record_progress(message(1), turns=(whole,), state="answered")
    assert [t.text for t in await store.recent_turns(DM, 10)] == ["question 1", "answer 1, whole"]
    ttl = await store.redis.ttl(store.keys.answers(DM))  # before a look, which may set it
    assert 0 < ttl <= await store.redis.ttl(store.keys.turns(DM))
    assert await store.answers_to(DM, question(1).ts) == [answer(1).ts]


async def test_a_deletion_that_takes_an_index_s_last_answer_leaves_it_expiring_with_the_conversation(
    store: Store,
) -> None:
    """A DM whose only answer goes with its deleted question (the one before it got no answer):
    the index is left with its stamp alone. Before, moving the stamp on made the index a new key
    without a TTL, kept after the conversation expired."""
    await store.record_progress(message(0), turns=(question(0),), state="noted")
    await answered(store, 1)
    assert await store.remove_user_message(DM, question(1).ts)
    ttl = await store.redis.ttl(store.keys.answers(DM))
    assert 0 < ttl <= await store.redis.ttl(store.keys.turns(DM))
    found, ran = await looked_up(store, question(0).ts)
    assert (found, "lrange" in ran) == ([], False)  # still trusted
