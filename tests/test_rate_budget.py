"""The shared Slack rate budget: Slack's real tier numbers, shared across processes through Redis,
held slots for final messages, and Slack's Retry-After honoured by everyone.

Also checks the emulator's own enforcement at Slack's real numbers (once, in a bounded way)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.rate_limit import SAFETY, RateLimited, SlackBudget
from bot.store import Accepted, Fence, IncomingMessage, LockLost, RateClaim, Store
from tests.emulators.slack import SlackEmulator


@pytest.fixture
async def store(redis_url: str):
    store = Store(redis_url, conversation_ttl_days=1)
    yield store
    await store.close()


def take(budget: SlackBudget, method: str, scope: str | None = None) -> RateClaim:
    return RateClaim(budget.bucket("T1", method, scope), "take", uuid.uuid4().hex)


async def test_tier_2_allows_twenty_calls_a_minute_then_says_when_to_come_back(store: Store) -> None:
    budget = SlackBudget(store, scale=1)
    for _ in range(20):
        await budget.claim([take(budget, "chat.startStream")], wait=0)
    with pytest.raises(RateLimited) as busy:
        await budget.claim([take(budget, "chat.startStream")], wait=0)
    assert 60 <= busy.value.retry_in <= 60 * SAFETY + 1
    # Other methods and workspaces have budgets of their own.
    await budget.claim([take(budget, "chat.stopStream")], wait=0)
    await budget.claim([RateClaim(budget.bucket("T2", "chat.startStream"), "take", "x")], wait=0)


async def test_post_message_is_limited_per_channel_and_set_status_per_thread(store: Store) -> None:
    budget = SlackBudget(store, scale=1)
    await budget.claim([take(budget, "chat.postMessage", "C1")], wait=0)
    with pytest.raises(RateLimited):
        await budget.claim([take(budget, "chat.postMessage", "C1")], wait=0)
    await budget.claim([take(budget, "chat.postMessage", "C2")], wait=0)
    await budget.claim([take(budget, "assistant.threads.setStatus", "C1:1.1")], wait=0)
    await budget.claim([take(budget, "assistant.threads.setStatus", "C1:2.2")], wait=0)
    with pytest.raises(RateLimited):
        await budget.claim([take(budget, "assistant.threads.setStatus", "C1:1.1")], wait=0)


async def test_a_new_threads_first_status_is_counted_as_its_message_is_queued(store: Store) -> None:
    """The first thinking status of a thread a mention opens needs no claim of its own: it is
    counted in the step that queues the message and locks the thread."""
    budget = SlackBudget(store, scale=1)
    status = budget.bucket("T1", "assistant.threads.setStatus", "C1:1.1")
    opening = IncomingMessage("T1", "C1", "1.1", "U1", "<@UB> hi", "answer", "1.1", "1.1", "UB")
    accepted, _ = await store.accept(opening, "token", status)
    assert accepted is Accepted.TAKEN
    with pytest.raises(RateLimited):  # the thread's one status a second is spent
        await budget.claim([take(budget, "assistant.threads.setStatus", "C1:1.1")], wait=0)
    # A message queued behind another takes no lock, so nothing is counted for it.
    reply = IncomingMessage("T1", "C1", "1.2", "U1", "more", "answer", "1.1", "1.1", "UB")
    other = budget.bucket("T1", "assistant.threads.setStatus", "C1:other")
    assert (await store.accept(reply, "token2", other))[0] is Accepted.QUEUED
    await budget.claim([RateClaim(other, "take", "x")], wait=0)


async def test_a_fenced_claim_is_granted_only_to_the_thread_locks_holder(store: Store) -> None:
    """The claim of a post that would show an answer checks its turn's thread lock in the same
    step: held by its token, granted (and the journal notes the post); held by another, refused
    with nothing taken; expired while the turn is unfinished (queued or working, as its lock's
    renewal takes it back), taken back and granted; expired after another worker finished the
    turn, refused."""
    budget = SlackBudget(store, scale=1)
    message = IncomingMessage("T1", "C1", "1.1", "U1", "<@UB> hi", "answer", "1.1", "1.1", "UB")
    assert (await store.accept(message, "mine"))[0] is Accepted.TAKEN
    lock = store.keys.lock(message.key)
    mine, theirs = Fence(message.key, "mine", "1.1"), Fence(message.key, "theirs", "1.1")

    journal = store.keys.journal("T1", "C1", "1.1")
    assert await store.redis.hget(journal, "posting") is None
    await budget.claim([take(budget, "chat.update")], wait=0, fence=mine)
    assert await store.redis.hget(journal, "posting") == "1"  # recovery looks in Slack first
    with pytest.raises(LockLost):
        await budget.claim([take(budget, "chat.update")], wait=0, fence=theirs)
    assert await store.redis.get(lock) == "mine"
    assert len(await store.redis.zrange(store.keys.rate_calls("T1:chat.update"), 0, -1)) == 1

    # `queued`: a turn that closes an answer shown before it (resumed, or found cut short by its
    # look after a loss) and notes it, no answer of its own begun; `working`: as the answer's
    # begin step leaves it.
    for state in ("queued", "working"):
        await store.redis.hset(journal, "state", state)
        await store.redis.delete(lock)
        await budget.claim([take(budget, "chat.update")], wait=0, fence=mine)
        assert await store.redis.get(lock) == "mine"
        assert 0 < await store.redis.pttl(lock) <= store.lock_ttl_ms

    await store.redis.delete(lock)
    await store.redis.hset(journal, "state", "answered")
    with pytest.raises(LockLost):
        await budget.claim([take(budget, "chat.update")], wait=0, fence=mine)
    assert await store.redis.get(lock) is None


async def test_processes_sharing_redis_share_one_budget(redis_url: str) -> None:
    stores = [Store(redis_url, conversation_ttl_days=1) for _ in range(4)]
    budgets = [SlackBudget(s, scale=1) for s in stores]

    async def try_once(budget: SlackBudget) -> bool:
        try:
            await budget.claim([take(budget, "chat.update")], wait=0)
            return True
        except RateLimited:
            return False

    try:
        results = await asyncio.gather(*(try_once(budgets[i % 4]) for i in range(200)))
    finally:
        for s in stores:
            await s.close()
    assert sum(results) == 50  # Tier 3, whichever process asked


async def test_held_slots_keep_room_for_final_messages(store: Store) -> None:
    budget = SlackBudget(store, scale=1)
    stops = [budget.hold_for("T1", "chat.stopStream") for _ in range(20)]
    for stop in stops:
        await budget.claim(
            [take(budget, "chat.startStream"), RateClaim(stop.bucket, "hold", stop.member, hold_ms=60_000)],
            wait=0,
        )
    # Every stop slot is spoken for: a 21st stream may not start, even with start slots free later.
    extra = budget.hold_for("T1", "chat.stopStream")
    with pytest.raises(RateLimited):
        await budget.claim(
            [take(budget, "chat.appendStream"), RateClaim(extra.bucket, "hold", extra.member, hold_ms=1)],
            wait=0,
        )
    # …and a plain stopStream (say another process without a hold) must wait too…
    with pytest.raises(RateLimited):
        await budget.claim([take(budget, "chat.stopStream")], wait=0)
    # …but each held stop goes through at once.
    for stop in stops:
        await budget.claim([RateClaim(stop.bucket, "use", stop.member)], wait=0)
    # A released hold frees its slot for others.
    spare = budget.hold_for("T1", "reactions.remove")
    await budget.claim([RateClaim(spare.bucket, "hold", spare.member, hold_ms=60_000)], wait=0)
    for _ in range(19):
        await budget.claim([take(budget, "reactions.remove")], wait=0)
    with pytest.raises(RateLimited):
        await budget.claim([take(budget, "reactions.remove")], wait=0)
    await budget.release(spare)
    await budget.claim([take(budget, "reactions.remove")], wait=0)


async def test_a_full_bucket_is_remembered_so_claims_in_other_channels_spend_no_round_trip(
    store: Store, redis_url: str
) -> None:
    """A posted answer claims its channel's chat.postMessage with a hold on the workspace's
    chat.update. Once Redis has said chat.update is full, the same claim in another channel is
    refused here, without asking Redis again; a claim that leaves less room is still asked."""
    budget = SlackBudget(store, scale=1)
    for _ in range(49):
        await budget.claim([take(budget, "chat.update")], wait=0)

    def post_in(channel: str) -> list[RateClaim]:
        hold = budget.hold_for("T1", "chat.update")
        return [
            take(budget, "chat.postMessage", channel),
            RateClaim(hold.bucket, "hold", hold.member, hold_ms=60_000),
        ]

    # An intermediate update keeps one slot back (headroom 1): refused by Redis at 49 of 50.
    with pytest.raises(RateLimited):
        await budget.claim([RateClaim(budget.bucket("T1", "chat.update"), "take", "u", headroom=1)], wait=0)
    scripts = await _script_calls(redis_url)
    await budget.claim(post_in("C1"), wait=0)  # headroom 0: asked, and granted the 50th slot
    assert await _script_calls(redis_url) == scripts + 1
    with pytest.raises(RateLimited):
        await budget.claim(post_in("C2"), wait=0)  # asked: refused, chat.update full
    assert await _script_calls(redis_url) == scripts + 2
    for channel in ("C3", "C4", "C5"):
        with pytest.raises(RateLimited) as busy:
            await budget.claim(post_in(channel), wait=0)
        assert 60 <= busy.value.retry_in <= 60 * SAFETY + 1
    assert await _script_calls(redis_url) == scripts + 2  # known full: no round trip
    await budget.claim([take(budget, "chat.postMessage", "C6")], wait=0)  # its own bucket had room


async def _script_calls(redis_url: str) -> int:
    """How many scripts Redis has run (EVALSHA), from its own statistics."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int((await client.info("commandstats"))["cmdstat_evalsha"]["calls"])
    finally:
        await client.aclose()


async def test_a_429_pauses_the_bucket_for_everyone_for_its_retry_after(redis_url: str) -> None:
    first, second = Store(redis_url, conversation_ttl_days=1), Store(redis_url, conversation_ttl_days=1)
    try:
        one, other = SlackBudget(first, scale=1), SlackBudget(second, scale=1)
        await one.pause(one.bucket("T1", "chat.appendStream"), 0.3)
        with pytest.raises(RateLimited) as busy:
            await other.claim([take(other, "chat.appendStream")], wait=0)
        assert 0.1 < busy.value.retry_in <= 0.3
        await other.claim([take(other, "chat.appendStream")], wait=1.0)  # waits the pause out
    finally:
        await first.close()
        await second.close()


async def test_the_emulator_enforces_slacks_real_tier_numbers() -> None:
    emu = SlackEmulator()
    await emu.start()
    try:
        emu.enforce_rate_limits()  # real time: Tier 2 is 20 a minute
        client = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
        parent = emu.seed_message("D1", "question")
        for _ in range(20):
            await client.chat_startStream(channel="D1", thread_ts=parent, markdown_text="hi")
        with pytest.raises(SlackApiError) as refused:
            await client.chat_startStream(channel="D1", thread_ts=parent, markdown_text="hi")
        assert refused.value.response.status_code == 429
        assert 58 <= int(refused.value.response.headers["Retry-After"]) <= 60
        await client.chat_postMessage(channel="C1", text="one")
        with pytest.raises(SlackApiError, match="ratelimited"):
            await client.chat_postMessage(channel="C1", text="two, within the second")
        await client.chat_postMessage(channel="C2", text="another channel")
        assert [c.method for c in emu.rate_limited] == ["chat.startStream", "chat.postMessage"]
    finally:
        await emu.stop()


async def test_the_emulator_streams_and_refuses_what_slack_refuses() -> None:
    emu = SlackEmulator()
    await emu.start()
    try:
        client = AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)
        parent = emu.seed_message("C1", "question")
        with pytest.raises(SlackApiError, match="missing_recipient_team_id"):
            await client.chat_startStream(channel="C1", thread_ts=parent, markdown_text="a")
        ts = (
            await client.chat_startStream(
                channel="C1",
                thread_ts=parent,
                markdown_text="a",
                recipient_team_id="T1",
                recipient_user_id="U1",
            )
        )["ts"]
        await client.chat_appendStream(channel="C1", ts=ts, markdown_text="b")
        with pytest.raises(SlackApiError, match="streaming_state_conflict"):
            await client.chat_update(channel="C1", ts=ts, text="no")
        await client.chat_stopStream(channel="C1", ts=ts, markdown_text="c")
        with pytest.raises(SlackApiError, match="message_not_in_streaming_state"):
            await client.chat_appendStream(channel="C1", ts=ts, markdown_text="d")
        assert emu.stream_states("C1", ts) == ["a", "ab", "abc"]
        emu.refuse_streaming("channel")
        with pytest.raises(SlackApiError, match="channel_type_not_supported"):
            await client.chat_startStream(
                channel="C1",
                thread_ts=parent,
                markdown_text="a",
                recipient_team_id="T1",
                recipient_user_id="U1",
            )
    finally:
        await emu.stop()
