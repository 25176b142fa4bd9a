"""Hostile and malformed input in HTTP mode: whatever arrives at /slack/events gets the right status
(401, 400, 413, or 200 and ignored), never a 5xx or a crash, and the bot keeps serving.

Every refused request carries a mention the bot would otherwise answer, so "no model call" means the
protection worked, not that the request was harmless anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.server import MAX_EVENT_BYTES
from bot.turn import GREETING, TOO_LONG
from tests.conftest import RunningBot, StartBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import POSTING_METHODS, SlackEmulator

# A fixed run of 150 in CI (derandomized: the same examples every time, so a failure is
# reproducible); FUZZ_EXAMPLES=5000 explores afresh each run. No example database: the checkout
# stays clean.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

CHANNEL = "C700"
BOT = "UBOT"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def envelope(event: Any, **top: Any) -> dict[str, Any]:
    """An event_callback as Slack sends it; `top` replaces or adds top-level fields (... removes one)."""
    body = {
        "token": "legacy",
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": f"Ev{time.time_ns()}",
        "event_time": int(time.time()),
        "event": event,
        "authorizations": [{"team_id": "T1", "user_id": BOT, "is_bot": True}],
    }
    return {k: v for k, v in (body | top).items() if v is not ...}


def mention(ts: str, text: str = f"<@{BOT}> why is my build red?", **fields: Any) -> dict[str, Any]:
    event = {"type": "app_mention", "user": "U1", "text": text, "ts": ts, "channel": CHANNEL, "event_ts": ts}
    return event | fields


def crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines saying a request handler, listener, middleware or turn blew up (Bolt and aiohttp
    catch such errors and log them, so the status alone would not show them)."""
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
        and (
            record.name == "aiohttp.server"
            or "Failed to run" in record.getMessage()
            or record.getMessage().startswith(
                ("turn crashed", "turn failed", "message listener failed", "feedback listener failed")
            )
        )
    ]


def answers_posted(slack: SlackEmulator) -> list:
    """Every call that put a new bot message in Slack (posted whole or streamed)."""
    return [call for call in slack.calls if call.method in POSTING_METHODS]


async def send(slack: SlackEmulator, body: dict[str, Any] | bytes, **kwargs: Any) -> tuple[int, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await slack.send_http(raw, **kwargs)


async def assert_only_the_next_mention_is_answered(
    slack: SlackEmulator, llm: OpenAIEmulator, running: RunningBot
) -> None:
    """A valid mention sent after the hostile request is answered, and it is all the bot answered.

    Whatever the hostile request started would have reached the model and Slack before this
    answer does, so this also shows that the hostile request was ignored.
    """
    ts = await slack.post_user_message("C799", f"<@{BOT}> are you still there?")
    [answer] = await slack.wait_for_bot_messages("C799", ts)
    await running.settle()
    assert answer["text"] == "Answer: ann: are you still there?"
    assert [request["messages"][-1]["content"] for request in llm.requests] == ["ann: are you still there?"]
    assert [call.args["channel"] for call in answers_posted(slack)] == ["C799"]


# ----- the signature: 401 before anything else runs -----


UNSIGNED = {
    "wrong-signature": lambda: {"headers": {"X-Slack-Signature": "v0=" + "0" * 64}},
    "no-signature-headers": lambda: {"sign": False},
    "signature-without-v0": lambda: {"headers": {"X-Slack-Signature": "0" * 64}},
    # compare_digest refuses non-ASCII text with a TypeError: it was a 500 and a traceback.
    "signature-not-ascii": lambda: {"headers": {"X-Slack-Signature": "v0=é"}},
    "timestamp-not-a-number": lambda: {"headers": {"X-Slack-Request-Timestamp": "yesterday"}},
    "timestamp-empty": lambda: {"headers": {"X-Slack-Request-Timestamp": ""}},
    "replayed-after-5-minutes": lambda: {"timestamp": int(time.time()) - 5 * 60 - 30},
    "timestamp-in-the-future": lambda: {"timestamp": int(time.time()) + 5 * 60 + 30},
}


@pytest.mark.parametrize("request_kwargs", UNSIGNED.values(), ids=UNSIGNED.keys())
async def test_requests_not_signed_by_slack_get_401_and_no_model_call(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    request_kwargs: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start_bot("http")
    body = envelope(mention(slack.seed_message(CHANNEL, f"<@{BOT}> why is my build red?")))

    status, text = await send(slack, body, **request_kwargs())
    assert status == 401, text
    # Said in the log (at most once a minute): a wrong SLACK_SIGNING_SECRET shows nowhere else.
    assert "refused 1 request(s) with an invalid or stale signature" in caplog.text
    await assert_only_the_next_mention_is_answered(slack, llm, running)

    # The very same body, signed now, is answered: only the signature kept it out.
    status, _ = await send(slack, body)
    assert status == 200
    [answer] = await slack.wait_for_bot_messages(CHANNEL, body["event"]["ts"])
    assert answer["text"] == "Answer: ann: why is my build red?"


async def test_body_signed_with_another_secret_or_changed_after_signing_gets_401(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http")
    body = json.dumps(envelope(mention(slack.seed_message(CHANNEL, "x")))).encode()
    now = int(time.time())

    impostor = SlackEmulator(signing_secret="not-the-signing-secret")
    status, _ = await slack.send_http(body, headers=impostor.sign(body, now), sign=False)
    assert status == 401

    tampered = body.replace(b"red?", b"green?")
    assert tampered != body
    status, _ = await slack.send_http(tampered, headers=slack.sign(body, now), sign=False)
    assert status == 401

    await assert_only_the_next_mention_is_answered(slack, llm, running)


# ----- size: 413 -----


async def test_body_over_the_size_limit_gets_413_and_no_model_call(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http")
    body = envelope(mention(slack.seed_message(CHANNEL, "x"), text=f"<@{BOT}> " + "x" * MAX_EVENT_BYTES))
    status, _ = await send(slack, body)
    assert status == 413
    await assert_only_the_next_mention_is_answered(slack, llm, running)


# ----- not a Slack request: 400 -----

NOT_SLACK_REQUESTS = {
    "broken-json": (b'{"type": "event_callback", "event": ', {}),
    "json-list": (b"[1, 2, 3]", {}),
    "json-string": (b'"event_callback"', {}),
    "json-number": (b"42", {}),
    "json-null": (b"null", {}),
    "json-empty-object": (b"{}", {}),
    "json-type-not-a-string": (b'{"type": 3, "event": {"type": "app_mention"}}', {}),
    "event-callback-without-event": (b'{"type": "event_callback", "team_id": "T1"}', {}),
    # Found by the fuzz test at 2,000 examples: Bolt's self-event middleware reads a present
    # "event" as an object, null included, whatever the body's type.
    "other-type-with-a-null-event": (b'{"type": "something_else", "team_id": "T1", "event": null}', {}),
    "form-garbage": (b"a=b&c&%%%=%zz", {"headers": FORM}),
    "form-payload-not-json": (b"payload=%7Bnot%20json", {"headers": FORM}),
    "form-payload-a-list": (b"payload=%5B1%2C2%5D", {"headers": FORM}),
}


@pytest.mark.parametrize("body, request_kwargs", NOT_SLACK_REQUESTS.values(), ids=NOT_SLACK_REQUESTS.keys())
async def test_signed_bodies_that_are_not_slack_requests_get_400(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    request_kwargs: dict[str, Any],
) -> None:
    running = await start_bot("http")
    status, text = await send(slack, body, **request_kwargs)
    assert status == 400, text
    await assert_only_the_next_mention_is_answered(slack, llm, running)
    assert crashes(caplog) == []


# ----- Slack requests the bot has no business with: 200 and ignored -----

UNKNOWN_EVENTS = {
    "reaction-added": envelope({"type": "reaction_added", "user": "U1", "reaction": "+1"}),
    "a-type-from-the-future": envelope({"type": "hologram_projected", "text": f"<@{BOT}> hi", "ts": "1.1"}),
    "member-joined": envelope({"type": "member_joined_channel", "user": "U2", "channel": CHANNEL}),
    # Slack posts this one to the request URL itself, and disables event subscriptions of an app
    # that answers more than 5% of deliveries with anything but 200.
    "app-rate-limited": {
        "token": "legacy",
        "type": "app_rate_limited",
        "team_id": "T1",
        "minute_rate_limited": 1518467820,
        "api_app_id": "A1",
    },
}


@pytest.mark.parametrize("body", UNKNOWN_EVENTS.values(), ids=UNKNOWN_EVENTS.keys())
async def test_unknown_event_types_are_acknowledged_and_ignored(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    body: dict[str, Any],
) -> None:
    running = await start_bot("http")
    status, text = await send(slack, body)
    assert status == 200, text
    await assert_only_the_next_mention_is_answered(slack, llm, running)
    assert crashes(caplog) == []


def broken(**changes: Any) -> dict[str, Any]:
    """A mention the bot would answer, with fields changed; a value of ... removes the field."""
    event = mention("1700000000.000100") | changes
    return {k: v for k, v in event.items() if v is not ...}


MALFORMED_EVENTS = {
    "no-channel": broken(channel=...),
    "channel-an-object": broken(channel={"id": CHANNEL}),
    "channel-empty": broken(channel=""),
    "no-ts": broken(ts=...),
    "ts-a-number": broken(ts=1700000000.0001),
    # Not Slack's seconds.microseconds: Redis scores a waiting message by its ts, and orders by it.
    "ts-not-a-number": broken(ts="abc"),
    "ts-hexadecimal": broken(ts="0x6553f100"),
    "ts-not-a-finite-number": broken(ts="inf"),
    "thread-ts-not-a-number": broken(type="message", thread_ts="abc"),
    "text-a-list": broken(text=[f"<@{BOT}> hi"]),
    "no-user": broken(user=...),
    "user-an-object": broken(user={"id": "U1"}),
    "thread-ts-an-object": broken(type="message", thread_ts={"ts": "1.2"}),
    "thread-ts-a-number": broken(thread_ts=1.2),
    "subtype-a-list": broken(type="message", subtype=["bot_message"]),
    "subtype-an-object": broken(type="message", subtype={"x": 1}),
    "edit-whose-message-is-a-string": broken(type="message", subtype="message_changed", message="hi"),
    "edit-whose-message-ts-is-a-number": broken(
        type="message", subtype="message_changed", message={"ts": 1.5, "text": "x", "user": "U1"}
    ),
    "delete-whose-previous-message-is-a-string": broken(
        type="message", subtype="message_deleted", previous_message="hi", deleted_ts=...
    ),
    "delete-whose-deleted-ts-is-a-list": broken(
        type="message", subtype="message_deleted", deleted_ts=["1.1"]
    ),
}


@pytest.mark.parametrize("event", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
async def test_events_with_missing_or_wrongly_typed_fields_are_acknowledged_and_ignored(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    event: dict[str, Any],
) -> None:
    running = await start_bot("http")
    status, text = await send(slack, envelope(event))
    assert status == 200, text
    await assert_only_the_next_mention_is_answered(slack, llm, running)
    assert crashes(caplog) == []


MALFORMED_ENVELOPES = {
    "event-a-string": envelope(f"<@{BOT}> hi"),
    "event-a-list": envelope([mention("1.1")]),
    "event-null": envelope(None),
    "event-a-number": envelope(7),
    "event-without-type": envelope(broken(type=...)),
    "event-type-a-number": envelope(broken(type=5)),
    "event-type-an-object": envelope(broken(type={"name": "app_mention"})),
    "team-id-a-number-and-no-authorizations": envelope(broken(), team_id=5, authorizations=...),
    "authorizations-a-string": envelope(broken(), authorizations="T1"),
    "authorizations-of-strings": envelope(broken(), authorizations=["T1"]),
    "authorizations-an-object": envelope(broken(), authorizations={"team_id": "T1"}),
    # Where the team is read from first (Bolt's extract_team_id, used before and without Bolt).
    "authorization-team-a-number": envelope(broken(), authorizations=[{"team": 5, "team_id": "T1"}]),
    "authorization-team-id-a-list": envelope(broken(), authorizations=[{"team_id": ["T1"]}]),
    "not-an-event-callback-with-an-event-list": envelope([mention("1.4")], type="block_suggestion"),
    "team-an-object-whose-id-is-a-list": envelope(broken(), team={"id": ["T1"]}),
    "event-team-id-a-number-and-no-authorizations": envelope(
        broken(team_id=5), team_id=..., authorizations=...
    ),
    "view-installed-team-a-list": envelope(broken(), view={"app_installed_team_id": ["T1"]}),
}


@pytest.mark.parametrize("body", MALFORMED_ENVELOPES.values(), ids=MALFORMED_ENVELOPES.keys())
async def test_event_callbacks_of_the_wrong_shape_get_400_or_are_ignored_never_a_5xx(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    body: dict[str, Any],
) -> None:
    running = await start_bot("http")
    status, text = await send(slack, body)
    # 200 (acknowledged and ignored) or 400 (not a Slack request) are both right; nothing else is.
    assert status in (200, 400), f"{status} {text}"
    await assert_only_the_next_mention_is_answered(slack, llm, running)
    assert crashes(caplog) == []


# ----- what users can type -----


async def test_enormous_message_gets_the_size_note_without_a_model_call_then_a_normal_one_is_answered(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http")
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> " + "log line\n" * 11_111 + "x")
    [note] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert note["text"] == TOO_LONG.format(length=100_000, limit=12_000)
    assert llm.requests == []

    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> sorry, here is the short version")
    [answer] = await slack.wait_for_bot_messages(CHANNEL, ts)
    assert answer["text"] == "Answer: ann: sorry, here is the short version"
    assert len(llm.requests) == 1


async def test_the_message_size_limit_is_the_setting_inclusive(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http", MAX_MESSAGE_CHARS="500")
    at_limit = await slack.post_user_message(CHANNEL, f"<@{BOT}> " + "a" * 500)
    over = await slack.post_user_message(CHANNEL, f"<@{BOT}> " + "b" * 501)
    await slack.wait_for_bot_messages(CHANNEL, at_limit)
    [note] = await slack.wait_for_bot_messages(CHANNEL, over)
    await running.settle()
    assert note["text"] == TOO_LONG.format(length=501, limit=500)
    assert [m["content"] for m in llm.requests[0]["messages"][1:]] == ["ann: " + "a" * 500]
    assert len(llm.requests) == 1


async def test_control_characters_never_reach_the_model(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    running = await start_bot("http")
    text = f"<@{BOT}> why\x00 does\x07 my\x1b[31m build\x7f fail\x85\x9f?\x0b\x0c\tsee\nbelow\r"
    ts = await slack.post_user_message(CHANNEL, text)
    await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()

    [request] = llm.requests
    seen = request["messages"][-1]["content"]
    # Tab and newline are text; every other C0 and C1 control character is gone.
    assert seen == "ann: why does my[31m build fail?\tsee\nbelow"
    for message in request["messages"]:
        assert not [c for c in message["content"] if (ord(c) < 32 and c not in "\t\n") or 127 <= ord(c) < 160]


@pytest.mark.parametrize(
    "text",
    [f"<@{BOT}>", f"   <@{BOT}>  \n ", f"<@{BOT}|supportbot>", f"<@{BOT}> \x00\x1b\x7f"],
    ids=["bare", "with-whitespace", "with-label", "with-control-characters"],
)
async def test_a_message_that_is_only_a_mention_gets_the_greeting_without_a_model_call(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, text: str
) -> None:
    running = await start_bot("http")
    ts = await slack.post_user_message(CHANNEL, text)
    [greeting] = await slack.wait_for_bot_messages(CHANNEL, ts)
    await running.settle()
    assert greeting["text"] == GREETING
    assert llm.requests == []
    # The "is thinking…" sign shown on arrival is gone.
    assert next(c.args["status"] for c in slack.calls_to("assistant.threads.setStatus")) == "is thinking…"
    assert not slack.statuses.get((CHANNEL, ts))


# ----- fuzz: signed event_callbacks of any shape -----

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def mostly(plausible: st.SearchStrategy[Any], odds: int = 3) -> st.SearchStrategy[Any]:
    """Values Slack could send, `odds` to one against anything at all (shrinking towards the former)."""
    return st.sampled_from(range(odds + 1)).flatmap(lambda pick: json_values if pick == odds else plausible)


slack_ts = st.builds(
    lambda s, us: f"{s}.{us:06d}", st.integers(1_500_000_000, 1_900_000_000), st.integers(0, 999_999)
)
texts = st.one_of(
    st.text(max_size=40),
    st.builds(lambda t: f"<@{BOT}> {t}", st.text(max_size=40)),
    st.sampled_from(
        [f"<@{BOT}>", f"<@{BOT}> reset", "<@U2> hi", "<!here>", f"<@{BOT}> <#C1|x> <https://a|b>"]
    ),
)
message_fields = {
    "type": mostly(st.sampled_from(["app_mention", "message", "reaction_added", "app_home_opened"]), odds=6),
    "channel": mostly(st.sampled_from([CHANNEL, "D700", "G700", "C", "X1", ""])),
    "user": mostly(st.sampled_from(["U1", "U2", BOT, "UNKNOWN", ""])),
    "text": mostly(texts),
    "ts": mostly(slack_ts),
}
more_fields = {
    "channel_type": mostly(st.sampled_from(["channel", "im", "group", "mpim"])),
    "thread_ts": mostly(slack_ts, odds=1),
    "event_ts": mostly(slack_ts),
    "subtype": mostly(
        st.sampled_from(
            ["message_changed", "message_deleted", "bot_message", "file_share", "thread_broadcast"]
        ),
        odds=2,
    ),
    "deleted_ts": mostly(slack_ts),
    "blocks": json_values,
}
inner_messages = st.fixed_dictionaries(
    {}, optional={"user": message_fields["user"], "text": message_fields["text"], "ts": message_fields["ts"]}
)
more_fields |= {"message": mostly(inner_messages), "previous_message": mostly(inner_messages)}
any_fields = more_fields | {"bot_id": json_values, "files": json_values}
# Some events are messages the bot acts on, with absurd extras; the rest are of any shape: events
# missing fields or with fields of the wrong type, and events that are not even an object.
mentions = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["app_mention", "message"]),
        "channel": st.sampled_from([CHANNEL, "D700", "G700"]),
        "user": st.sampled_from(["U1", "U2", "U3"]),
        "ts": slack_ts,
        "text": st.one_of(
            st.builds(lambda t: f"<@{BOT}> {t}", st.text(max_size=60)),
            st.sampled_from([f"<@{BOT}>", f"<@{BOT}> reset", f"<@{BOT}> <#C1|x> <https://a|b> <!here>"]),
        ),
    },
    optional=more_fields,
)
any_shape = st.one_of(
    st.fixed_dictionaries(message_fields, optional=any_fields),
    st.fixed_dictionaries({}, optional=message_fields | any_fields),
    json_values,
)
events = st.one_of(mentions, any_shape)
top_level_overrides = st.sampled_from(range(3)).flatmap(
    lambda pick: (
        st.just({})
        if pick < 2
        else st.dictionaries(
            st.sampled_from(
                ["type", "team_id", "api_app_id", "event_id", "authorizations", "enterprise_id", "token"]
            ),
            json_values,
            min_size=1,
            max_size=2,
        )
    )
)


# Mentions with absurd extras, each in a thread of its own, that the bot must answer.
ANSWERABLE = [
    {"type": "app_mention", "channel": CHANNEL, "user": "U1", "ts": f"1700000000.00000{i}",
     "text": f"<@{BOT}> question {i} <#C1|x> <https://a|b> <!here>", **extra}
    for i, extra in enumerate([
        {},
        {"blocks": [{"type": "rich_text", "elements": None}]},
        {"files": "not a list", "channel_type": "channel"},
        {"event_ts": "nonsense", "blocks": {"a": [1, 2.5, None]}},
        {"previous_message": [], "bot_profile": {"name": None}},
    ])
]  # fmt: skip


def _answerable_examples(test: Any) -> Any:
    for event in ANSWERABLE:
        test = example(event=event, overrides={})(test)
    return test


async def test_fuzzed_signed_event_callbacks_never_get_a_5xx_and_the_bot_keeps_answering(
    start_bot: StartBot, slack: SlackEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_bot("http")
    loop = asyncio.get_running_loop()
    statuses: list[int] = []

    # Hypothesis drives synchronous examples from a worker thread; each one is sent on the test's
    # loop, which keeps serving the bot in between. The bot is built once for all examples.
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=FUZZ_EXAMPLES == 150)
    @given(event=events, overrides=top_level_overrides)
    @_answerable_examples
    def one_request(event: Any, overrides: dict[str, Any]) -> None:
        sent = asyncio.run_coroutine_threadsafe(send(slack, envelope(event, **overrides)), loop)
        status, text = sent.result(timeout=10)
        statuses.append(status)
        assert status < 500, f"{status} {text!r}"

    await asyncio.to_thread(one_request)
    await running.settle()
    assert len(statuses) >= 150
    await assert_the_fuzz_reached_the_turns_and_the_bot_survived(slack, running, caplog)


async def assert_the_fuzz_reached_the_turns_and_the_bot_survived(
    slack: SlackEmulator, running: RunningBot, caplog: pytest.LogCaptureFixture
) -> None:
    """After a fuzz run: the mentions among it got replies (the mentions Hypothesis draws vary
    with every module it has seen imported, so a few are given), the next question is answered,
    nothing crashed, and /health says ok."""
    assert all(slack.bot_messages(CHANNEL, event["ts"]) for event in ANSWERABLE)
    ts = await slack.post_user_message("C799", f"<@{BOT}> are you still there?")
    [answer] = await slack.wait_for_bot_messages("C799", ts)
    assert answer["text"] == "Answer: ann: are you still there?"
    await running.settle()
    assert crashes(caplog) == []
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/health") as response:
        assert response.status == 200


async def test_a_refused_dm_has_its_thinking_reaction_taken_away(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    """A top-level DM shows the sign as a reaction the moment it comes in; a turn that ends
    without a model answer (here: the greeting for an empty message) removes it again."""
    running = await start_bot("http")
    ts = await slack.post_user_message("D700", "  \n ")
    [greeting] = await slack.wait_for_bot_messages("D700", count=1)
    await running.settle()
    assert greeting["text"] == GREETING
    assert [c.args["timestamp"] for c in slack.calls_to("reactions.add")] == [ts]
    [question] = [m for m in slack.messages("D700") if m["ts"] == ts]
    assert not question.get("reactions")
    assert llm.requests == []
