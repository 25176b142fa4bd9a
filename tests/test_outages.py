"""Redis, Slack or the model failing, overload and abuse: every message still gets one visible
outcome, and the bot carries on by itself when the fault clears."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from bot.delivery import FEEDBACK_NOT_KEPT
from bot.store import ThreadKey
from bot.turn import STORE_UNAVAILABLE
from tests.conftest import RunningBot, StartBot, wait_until
from tests.emulators.openai_api import OpenAIEmulator, SlowFirstToken, Status
from tests.emulators.slack import POSTING_METHODS, SlackEmulator
from tests.redis_server import RedisServer

CHANNEL = "C800"
DM = "D800"
BOT = "UBOT"
NO_MODEL = "Sorry, I couldn't reach the language model"
BREAKER_OF_TWO = {"LLM_MAX_RETRIES": "0", "LLM_BREAKER_FAILURES": "2"}  # opens after two failed turns


async def health(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        return response.status, await response.json()


@pytest.fixture
def own_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")  # append-only, fsync always
    server.start()
    yield server
    server.stop()


# -- Redis ------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_message_during_a_redis_outage_gets_a_reply_and_the_bot_recovers_by_itself(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, own_redis: RedisServer
) -> None:
    running = await start_bot("socket", REDIS_URL=own_redis.url)
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the check api-prod is red")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()

    own_redis.kill()
    dm = await slack.post_user_message(DM, "hello?")
    [reply] = await slack.wait_for_bot_messages(DM, "top", count=1)
    assert reply["text"] == STORE_UNAVAILABLE
    # A follow-up in a thread the bot answered in gets the same reply, not silence.
    await slack.post_user_message(CHANNEL, "still red", thread_ts=root)
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    assert replies[-1]["text"] == STORE_UNAVAILABLE
    # A new mention arrives twice (app_mention and message): one notice, not two.
    mention = await slack.post_user_message(CHANNEL, f"<@{BOT}> anyone?")
    [notice] = await slack.wait_for_bot_messages(CHANNEL, mention, count=1)
    await asyncio.sleep(0.3)
    assert notice["text"] == STORE_UNAVAILABLE and len(slack.bot_messages(CHANNEL, mention)) == 1
    assert dm and len(llm.requests) == 1

    own_redis.start()  # same port, same append-only file
    await slack.post_user_message(CHANNEL, "what did I say was red?", thread_ts=root)
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=3, timeout=15)
    await running.settle()
    assert replies[-1]["text"].startswith("Answer:")
    # Nothing stored before the crash was lost (append-only, fsync always).
    assert "ann: the check api-prod is red" in [m["content"] for m in llm.requests[-1]["messages"]]


async def test_a_feedback_click_during_a_redis_outage_tells_the_person_it_was_not_kept(
    start_bot: StartBot, slack: SlackEmulator, own_redis: RedisServer
) -> None:
    """The click looks taken in Slack; with Redis down the vote cannot be kept, so the person is
    told (only they see it) rather than thanked or left to think it counted."""
    running = await start_bot("http", REDIS_URL=own_redis.url)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> was this useful?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    own_redis.kill()
    assert (await slack.click_feedback(CHANNEL, answer["ts"], user="U2")).acked
    await slack.wait_for(lambda: bool(slack.calls_to("chat.postEphemeral")), what="a word to the person")
    [call] = slack.calls_to("chat.postEphemeral")
    assert (call.args["text"], call.args["user"]) == (FEEDBACK_NOT_KEPT, "U2")


@pytest.mark.parametrize("mode", ["http", "socket"])
@pytest.mark.parametrize("change", ["deleted", "edited", "edited to name a colleague"])
async def test_an_edit_or_deletion_during_a_redis_outage_is_applied_from_slacks_next_delivery(
    change: str,
    mode: str,
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    own_redis: RedisServer,
) -> None:
    """A person deletes (or edits) a message of theirs while Redis is down: the change cannot be
    stored, so its event is not acknowledged (over HTTP, a 503), and Slack's next delivery of it,
    once Redis is back, applies it: the next prompt has the message as changed. (Before, the event
    was acknowledged and the change dropped: a deleted message stayed in the conversation.) An
    edit naming a colleague, taken only in a thread the bot follows, is not dropped for want of
    Redis to say so: it too is left for Slack's next delivery."""
    running = await start_bot(mode, REDIS_URL=own_redis.url)
    slack.ack_timeout = 3.0  # Slack's own wait for a Socket Mode ack
    slack.retry_failed_deliveries(waits=(0.5, 1.0, 2.0))
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the staging api refuses my token")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    secret = await slack.post_user_message(CHANNEL, "my token is hunter2", thread_ts=root)
    await slack.wait_for_bot_messages(CHANNEL, root, count=2)
    await running.settle()

    own_redis.kill()
    before = len(slack.deliveries)
    if change == "deleted":
        changing = asyncio.create_task(slack.delete_message(CHANNEL, secret))
    else:
        naming = " <@U2>" if change == "edited to name a colleague" else ""
        changing = asyncio.create_task(slack.edit_message(CHANNEL, secret, f"my token is [removed]{naming}"))
    await slack.wait_for(lambda: len(slack.deliveries) > before, timeout=10, what="the change refused")
    own_redis.start()  # same port, same append-only file
    await changing
    attempts = slack.deliveries[before:]  # the change's, and nothing else's
    assert len(attempts) >= 2 and not attempts[0].acked and attempts[-1].acked
    if mode == "http":
        assert attempts[0].status == 503

    await slack.post_user_message(CHANNEL, "what did I send you?", thread_ts=root)
    await slack.wait_for(lambda: len(llm.requests) == 3, timeout=15, what="the next question's model call")
    await running.settle()
    prompt = [m["content"] for m in llm.requests[-1]["messages"]]
    assert "ann: my token is hunter2" not in prompt
    if change == "deleted":
        assert not any("hunter2" in content for content in prompt)  # its answer went with it
    elif change == "edited":
        assert "ann: my token is [removed]" in prompt
    else:
        assert "ann: my token is [removed] @bob" in prompt


# -- Slack ------------------------------------------------------------------------------------


async def test_slack_429_is_retried_after_retry_after(start_bot: StartBot, slack: SlackEmulator) -> None:
    running = await start_bot("socket")
    slack.fail_next("chat.postMessage", status=429, retry_after=1)  # a top-level DM answer is posted
    started = time.monotonic()
    await slack.post_user_message(DM, "hi")
    [answer] = await slack.wait_for_bot_messages(DM, "top")
    await running.settle()
    assert answer["text"] == "Answer: ann: hi"
    assert time.monotonic() - started >= 1.0
    assert len(slack.bot_messages(DM)) == 1


async def test_slack_5xx_burst_is_retried(start_bot: StartBot, slack: SlackEmulator) -> None:
    running = await start_bot("http")
    slack.fail_next("chat.postMessage", status=500, times=2)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> hi")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert answer["text"] == "Answer: ann: hi"
    # The answer was posted (a short answer goes out whole), through both failures, at once.
    assert [call.status for call in slack.calls_to("chat.postMessage")] == [500, 500, 200]


@pytest.mark.slow
async def test_answer_slack_refuses_for_a_while_is_journaled_and_delivered_later(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    caplog.set_level(logging.INFO)
    # A top-level DM answer is posted; Slack fails every try for a while (retries included).
    slack.fail_next("chat.postMessage", error="internal_error", status=503, times=3)
    await slack.post_user_message(DM, "please answer eventually")
    [answer] = await slack.wait_for_bot_messages(DM, "top", timeout=20)
    await asyncio.sleep(0.5)
    await running.settle()
    assert answer["text"] == "Answer: ann: please answer eventually"
    assert len(slack.bot_messages(DM)) == 1
    assert len(llm.requests) == 1  # the saved answer was delivered, not asked for again
    assert "answer delivery deferred" in caplog.text


async def test_a_follow_up_accepted_while_the_answer_before_it_is_deferred_tries_that_answer_again_at_once(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A follow-up that comes as Slack's refusals defer the answer before it finds that turn's
    worker still at work, and is left to it. The worker stopped all the same, as for a deferral,
    and both waited for recovery, two rounds idle (10 s and more by default; here, with long
    rounds, for good), where a follow-up that comes a moment later has its worker try the
    deferred answer again at once, then answer it. Now the worker goes on as for that one."""
    caplog.set_level(logging.INFO)
    await start_bot("http", RECOVERY_INTERVAL_SECONDS="60")
    slack.fail_next("chat.postMessage", error="internal_error", status=503, times=3)
    looks = 0

    def third_look(args: dict) -> bool:
        nonlocal looks
        looks += 1
        return looks == 3  # the look for the third refused post, after which the answer is deferred

    last_look = slack.gate("conversations.history", when=third_look)
    await slack.post_user_message(DM, "why is api-prod red?")
    await slack.wait_for(lambda: last_look.waiting > 0, what="the last look for the refused post")
    await slack.post_user_message(DM, "and staging?")  # queued: acknowledged once in Redis
    last_look.opened.set()
    answers = await slack.wait_for_bot_messages(DM, "top", count=2, timeout=15)
    assert [answer["text"] for answer in answers] == [
        "Answer: ann: why is api-prod red?",
        "Answer: ann: and staging?",
    ]
    assert "answer delivery deferred" in caplog.text
    assert len(llm.requests) == 2  # the deferred answer was given from its journal, not asked again


async def test_a_malformed_entry_among_the_waiting_threads_does_not_stop_recovery(
    start_bot: StartBot, slack: SlackEmulator, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries that name no thread in the set of waiting threads (written by hand, say) are
    dropped with a warning; recovery goes on, and delivers an answer Slack refused at first.
    (Before, the first round that met one raised, and this process never recovered a turn again.)"""
    await redis.zadd("pending", {"not a thread": 0, "T1:C1": 0})
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    slack.fail_next("chat.postMessage", error="internal_error", status=503, times=3)
    await slack.post_user_message(DM, "please answer eventually")
    [answer] = await slack.wait_for_bot_messages(DM, "top", timeout=20)
    await running.settle()
    assert answer["text"] == "Answer: ann: please answer eventually"
    assert await redis.zscore("pending", "not a thread") is None
    assert await redis.zscore("pending", "T1:C1") is None
    assert "malformed entry dropped from the waiting threads" in caplog.text


async def test_a_waiting_thread_whose_messages_expired_leaves_the_waiting_threads(
    start_bot: StartBot, redis: Redis
) -> None:
    """A thread in the set of waiting threads whose inbox is gone (expired after a day of failed
    deliveries, or evicted): recovery finds nothing to do in it and drops it, rather than find it
    again every round (and, with enough of them, crowd out threads really waiting, since every round
    takes the oldest thousand)."""
    ghost = "T1:C1:1700000000.000100"
    await redis.zadd("pending", {ghost: 1})
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    for _ in range(50):
        if await redis.zscore("pending", ghost) is None:
            break
        await asyncio.sleep(0.1)
    await running.settle()
    assert await redis.zscore("pending", ghost) is None


@pytest.mark.parametrize("where", ["dm", "channel thread"])
async def test_answer_whose_connections_to_slack_drop_is_journaled_and_delivered_once(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """The network fails under the Web API calls (no answer at all, not an error code): the sign
    is given up, the answer waits in the journal and is delivered once the calls go through."""
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3")
    caplog.set_level(logging.INFO)
    for method in ("chat.postMessage", "chat.startStream", "assistant.threads.setStatus", "reactions.add"):
        slack.fail_next(method, drop=True, times=4)  # more than the client's two retries
    if where == "dm":
        await slack.post_user_message(DM, "please answer eventually")
        answers = await slack.wait_for_bot_messages(DM, "top", timeout=20)
    else:
        ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> please answer eventually")
        answers = await slack.wait_for_bot_messages(CHANNEL, ts, timeout=20)
    await asyncio.sleep(0.5)
    await running.settle()
    assert [answer["text"] for answer in answers] == ["Answer: ann: please answer eventually"]
    assert len(llm.requests) == 1  # the saved answer was delivered, not asked for again
    assert [call.status for call in slack.calls_to("chat.postMessage")] == [0, 0, 0, 0, 200]
    assert "answer delivery deferred" in caplog.text and "error=ServerDisconnectedError" in caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize("reply", ["answer", "refusal"])
async def test_a_thinking_reaction_slack_cannot_take_away_fails_nothing(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    reply: str,
) -> None:
    """The network fails under reactions.remove (no answer at all, more often than the client
    retries) once a DM's answer, or its refusal, is posted: the reply stands alone and once (no
    "something went wrong" under it, no second refusal from recovery), the answer is kept in the
    conversation, and the 👀 stays, logged."""
    running = await start_bot("http", RECOVERY_INTERVAL_SECONDS="0.3", MAX_MESSAGE_CHARS="100")
    caplog.set_level(logging.INFO)
    slack.fail_next("reactions.remove", drop=True, times=4)  # more than the client's two retries
    await slack.post_user_message(DM, "please answer" if reply == "answer" else "x" * 200)
    [first] = await slack.wait_for_bot_messages(DM, "top", timeout=20)
    await asyncio.sleep(1.5)  # recovery rounds: time for a second reply, if there were one
    assert len(slack.bot_messages(DM)) == 1
    if reply == "answer":
        assert first["text"] == "Answer: ann: please answer"
        await slack.post_user_message(DM, "and then?")
        await slack.wait_for(lambda: len(llm.requests) == 2, what="the next question's model call")
        assert "Answer: ann: please answer" in [m["content"] for m in llm.requests[-1]["messages"]]
    else:
        assert first["text"].startswith("Your message is 200 characters long")
        assert not llm.requests
    await running.settle()
    assert "thinking sign left in place error=ServerDisconnectedError" in caplog.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_slack_error_is_logged_with_method_and_code(
    start_bot: StartBot, slack: SlackEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_bot("socket")
    caplog.set_level(logging.INFO)
    slack.fail_next("assistant.threads.setStatus", error="missing_scope")
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> hi")
    await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert "method=assistant.threads.setStatus error=missing_scope" in caplog.text


@pytest.mark.parametrize("how", ["close", "disconnect", "network"])
async def test_socket_mode_reconnects_and_loses_no_event(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, how: str
) -> None:
    running = await start_bot("socket")
    before = slack.socket_connections
    if how == "close":
        await slack.drop_socket(graceful=True)
    elif how == "disconnect":
        await slack.send_disconnect()
    else:
        await slack.drop_socket(graceful=False)
    # Delivered around the reconnect: the emulator holds it until a socket takes it, as Slack does.
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> are you there?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, timeout=20)
    await asyncio.sleep(0.3)
    await running.settle()
    assert slack.socket_connections > before
    assert answer["text"] == "Answer: ann: are you there?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1 and len(llm.requests) == 1


@pytest.mark.parametrize("lost", ["the ack", "the event"])
async def test_a_half_open_socket_loses_no_question_and_answers_it_once(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, lost: str
) -> None:
    """The connection stops carrying the bot's frames (a half-open one): Slack hears no ack and
    sends the event again, after the bot's heartbeat has given up on the connection and it has
    connected anew. Whether the first envelope reached the bot (its ack lost) or not (the event
    lost), the question is answered, and once."""
    running = await start_bot("socket")
    # Slack sends an event again three times over five minutes; here, every 3 s while it fails.
    slack.ack_timeout = 1.0
    slack.retry_failed_deliveries(waits=(0.0,) + (2.0,) * 14)
    before = slack.socket_connections
    slack.stall_socket(lose_writes=lost == "the event")
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> still there?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts, timeout=45)
    await running.settle()
    assert slack.socket_connections > before
    last = {d.event_id: d for d in slack.deliveries}  # each event's last delivery
    assert len(last) == 2 and all(d.acked for d in last.values())
    assert any(not d.acked for d in slack.deliveries) and any(d.retry_attempt for d in last.values())
    assert answer["text"] == "Answer: ann: still there?"
    assert len(slack.bot_messages(CHANNEL, ts)) == 1 and len(llm.requests) == 1


# -- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_feedback_whose_thanks_cannot_reach_slack_is_kept_and_acknowledged(
    start_bot: StartBot, slack: SlackEmulator, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """The network to Slack's Web API fails while a person clicks: the click is acknowledged in
    time, the vote kept, and the thanks given up with a warning, not a crashed listener."""
    running = await start_bot(mode)
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> was this useful?")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    slack.fail_next("chat.postEphemeral", drop=True, times=10)
    started = time.monotonic()
    delivery = await slack.click_feedback(CHANNEL, answer["ts"], user="U2", positive=True)
    assert delivery.acked and time.monotonic() - started < 3.0
    await slack.wait_for(lambda: len(slack.calls_to("chat.postEphemeral")) == 3)  # tried, retried twice
    await slack.wait_for(lambda: "feedback thanks not sent" in caplog.text, what="the thanks given up")
    [vote] = await running.bot.store.feedback_votes(ThreadKey("T1", CHANNEL, ts))
    assert (vote.user, vote.vote) == ("U2", "good")
    assert "feedback thanks not sent" in caplog.text
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]


async def test_circuit_breaker_opens_answers_at_once_and_closes_after_a_probe(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http", **BREAKER_OF_TWO, LLM_BREAKER_COOLDOWN_SECONDS="1")
    llm.enqueue(Status(500), Status(500))
    for i in range(2):
        reply = await _reply_to(slack, f"try {i}")
        assert reply.startswith(NO_MODEL)
    await running.settle()
    status, body = await health(running.url)
    assert (status, body["llm_breaker"]) == (200, "open")

    reply = await _reply_to(slack, "and now?")
    assert reply.startswith(NO_MODEL)
    assert len(llm.requests) == 2  # answered at once, the model left alone

    await asyncio.sleep(1.1)
    reply = await _reply_to(slack, "probe")
    await running.settle()
    assert reply == "Answer: ann: probe"
    assert (await health(running.url))[1]["llm_breaker"] == "closed"


async def test_a_breaker_one_process_opens_opens_in_the_others_and_a_probe_that_succeeds_ends_it(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """Two processes share Redis: once the model has failed the first one's turns, the second
    answers at once without its own failed turns; the probe that finds the model back clears it."""
    settings = BREAKER_OF_TWO | {"LLM_BREAKER_COOLDOWN_SECONDS": "4"}
    first = await start_bot("http", **settings)
    second = await start_bot("http", **settings)
    slack.use_http(f"{first.url}/slack/events")
    llm.enqueue(Status(500), Status(500))
    for i in range(2):
        reply = await _reply_to(slack, f"try {i}")
        assert reply.startswith(NO_MODEL)
    await first.settle()
    assert (await health(first.url))[1]["llm_breaker"] == "open"
    redis = second.bot.store.redis
    breaker_key = second.bot.store.keys.llm_breaker
    assert 0 < await redis.pttl(breaker_key) <= 4000

    await _until_breaker(second.url, "open", within=2.5)  # its next beat (every second) learns it
    slack.use_http(f"{second.url}/slack/events")
    reply = await _reply_to(slack, "and here?")
    assert reply.startswith(NO_MODEL)
    assert len(llm.requests) == 2  # answered at once, the model left alone

    await _until_breaker(first.url, "half_open", within=5)  # the first's cooldown is over
    slack.use_http(f"{first.url}/slack/events")
    reply = await _reply_to(slack, "probe")
    assert reply == "Answer: ann: probe"
    await first.settle()
    assert await redis.exists(breaker_key) == 0  # no beat learns that the model is down any more
    # The second learns at its next beat that the model is back: closed, not half open, so that
    # its next questions, three at once, are all answered (before, it waited for a probe of its
    # own, and refused the other two meanwhile).
    await _until_breaker(second.url, "closed", within=2.5)
    slack.use_http(f"{second.url}/slack/events")
    replies = await asyncio.gather(*(_reply_to(slack, f"after {i}") for i in range(3)))
    assert replies == [f"Answer: ann: after {i}" for i in range(3)]


async def test_after_a_cooldown_only_one_process_probes_the_model_and_the_others_answer_at_once(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """As one process's breaker lets one probe through, so do two together: while the first's
    probe waits for the model, the second answers its own question at once, and the model sees
    one request; once the probe succeeds, the second's next question is answered."""
    settings = BREAKER_OF_TWO | {"LLM_BREAKER_COOLDOWN_SECONDS": "2"}
    first = await start_bot("http", **settings)
    second = await start_bot("http", **settings)
    slack.use_http(f"{first.url}/slack/events")
    llm.enqueue(Status(500), Status(500))
    for i in range(2):
        assert (await _reply_to(slack, f"try {i}")).startswith(NO_MODEL)
    for running in (first, second):
        await _until_breaker(running.url, "half_open", within=5)

    llm.enqueue(SlowFirstToken(1.5))
    probe_ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> probe")
    await llm.wait_for_requests(3)  # the probe has reached the model
    slack.use_http(f"{second.url}/slack/events")
    assert (await _reply_to(slack, "meanwhile")).startswith(NO_MODEL)
    assert len(llm.requests) == 3

    [probe_reply] = await slack.wait_for_bot_messages(CHANNEL, probe_ts)
    assert probe_reply["text"] == "Answer: ann: probe"
    assert await _reply_to(slack, "and now?") == "Answer: ann: and now?"
    for running in (first, second):
        assert (await health(running.url))[1]["llm_breaker"] == "closed"


async def test_failed_turns_in_different_processes_count_together_and_open_every_breaker(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """LLM_BREAKER_FAILURES turns in a row, wherever they ran: one failed turn in each of two
    processes opens both breakers (each alone has seen one)."""
    settings = BREAKER_OF_TWO | {"LLM_BREAKER_COOLDOWN_SECONDS": "30"}
    first = await start_bot("http", **settings)
    second = await start_bot("http", **settings)
    llm.enqueue(Status(500), Status(500))
    for running in (first, second):
        slack.use_http(f"{running.url}/slack/events")
        reply = await _reply_to(slack, "are you there?")
        assert reply.startswith(NO_MODEL)
        await running.settle()
    assert (await health(second.url))[1]["llm_breaker"] == "open"
    await _until_breaker(first.url, "open", within=2.5)
    reply = await _reply_to(slack, "and now?")
    assert reply.startswith(NO_MODEL)
    assert len(llm.requests) == 2


async def test_a_turn_that_reaches_the_model_ends_the_row_of_failures_in_every_process(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    settings = BREAKER_OF_TWO | {"LLM_BREAKER_COOLDOWN_SECONDS": "30"}
    first = await start_bot("http", **settings)
    second = await start_bot("http", **settings)
    failures_key = first.bot.store.keys.llm_failures
    redis = first.bot.store.redis
    llm.enqueue(Status(500))
    slack.use_http(f"{first.url}/slack/events")
    await _reply_to(slack, "one")
    await first.settle()
    assert await redis.get(failures_key) == "1"
    # The second learns that failures are counted: a beat reads it, and the next begins only once
    # the bot has taken that in.
    await _beats(second, 2)
    slack.use_http(f"{second.url}/slack/events")
    reply = await _reply_to(slack, "two")
    assert reply == "Answer: ann: two"
    await second.settle()
    assert await redis.exists(failures_key) == 0  # the row is broken
    llm.enqueue(Status(500))  # at once: the first's own count, one failure, is not its row
    slack.use_http(f"{first.url}/slack/events")
    await _reply_to(slack, "three")
    await first.settle()
    for running in (first, second):
        assert (await health(running.url))[1]["llm_breaker"] == "closed"


async def _reply_to(slack: SlackEmulator, text: str) -> str:
    """Mention the bot in CHANNEL with `text`: the text of its one reply."""
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> {text}")
    [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
    return reply["text"]


async def _beats(running: RunningBot, count: int) -> None:
    """Until the bot has said `count` times more that it is alive: each beat moves its liveness on
    in Redis, and reads what Redis holds of the model's breaker."""
    assert running.bot.turns is not None
    store, me = running.bot.store, running.bot.turns.process_id
    for _ in range(count):
        before = await store.redis.zscore(store.keys.processes, me)

        async def moved(before: float | None = before) -> bool:
            return await store.redis.zscore(store.keys.processes, me) != before

        await wait_until(moved, "a beat")


async def _until_breaker(url: str, state: str, within: float) -> None:
    deadline = time.monotonic() + within
    while (await health(url))[1]["llm_breaker"] != state:
        assert time.monotonic() < deadline, f"the breaker never became {state}"
        await asyncio.sleep(0.05)


# -- overload and abuse ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_burst_of_1000_events_is_acked_in_time_and_every_message_answered(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http", MAX_CONCURRENT_TURNS="20")
    llm.first_token_delay = 0.05
    channels = [f"C9{i:04d}" for i in range(1000)]
    events = []
    for i, channel in enumerate(channels):
        ts = slack.seed_message(channel, f"<@{BOT}> question {i}")
        events.append({"type": "app_mention", "user": "U1", "text": f"<@{BOT}> question {i}",
                       "ts": ts, "channel": channel, "event_ts": ts})  # fmt: skip
    # The burst: 1,000 events within two seconds, each on its own connection, none waiting for
    # an earlier one's acknowledgement (as Slack delivers them).
    sending: list[asyncio.Task] = []
    for event in events:
        sending.append(asyncio.create_task(slack.deliver_event(event)))
        await asyncio.sleep(0.002)
    deliveries = await asyncio.gather(*sending)
    assert [d.status for d in deliveries if d.status != 200] == []
    slowest_ack = max(d.elapsed for d in deliveries)
    assert slowest_ack < 3.0, f"slowest ack {slowest_ack:.2f}s"

    def answered_channels() -> set[str]:  # one pass over the call log: cheap enough to poll
        return {c.args["channel"] for c in slack.calls if c.method in POSTING_METHODS}

    await slack.wait_for(
        lambda: answered_channels() >= set(channels),
        timeout=100,
        what="an answer in each of the 1,000 channels",
    )
    await running.settle()
    assert all(len(slack.bot_messages(c)) == 1 for c in channels)
    assert len(llm.requests) == 1000
    assert llm.max_in_flight <= 20


async def test_per_user_and_per_channel_limits_reply_politely(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    # The limits count in fixed minutes (docs/reliability.md, known limits): six questions that
    # straddle the turn of a minute would be counted in two. Start early in a minute.
    if (left := 60 - time.time() % 60) < 20:
        await asyncio.sleep(left + 0.1)
    running = await start_bot("socket", RATE_LIMIT_USER_PER_MINUTE="2", RATE_LIMIT_CHANNEL_PER_MINUTE="4")
    texts, asked = [], []
    for user in ("U1", "U1", "U1", "U2", "U3", "U3"):
        ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> question from {user}", user=user)
        [reply] = await slack.wait_for_bot_messages(CHANNEL, ts)
        texts.append(reply["text"])
        asked.append(ts)
    await running.settle()
    # Every question showed the sign, refused ones too, and none is left behind.
    assert len({c.args["thread_ts"] for c in slack.calls_to("assistant.threads.setStatus")}) == 6
    assert not any(slack.statuses.get((CHANNEL, ts)) for ts in asked)
    assert texts[0].startswith("Answer:") and texts[1].startswith("Answer:")
    assert texts[2] == (
        "You've asked 2 questions in the last minute, my limit per person. "
        "Please wait a minute and ask again."
    )
    assert texts[3].startswith("Answer:") and texts[4].startswith("Answer:")  # others unaffected
    assert texts[5].startswith("This channel has asked 4 questions in the last minute")
    assert len(llm.requests) == 4
