"""Hostile and malformed input over Socket Mode: whatever comes down the socket is acknowledged
when it has an envelope id (so that Slack stops sending it) and otherwise dropped, never crashes a
handler, and the bot goes on answering on the same connection."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import StartBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.test_hostile_input import (
    ANSWERABLE,
    FUZZ_EXAMPLES,
    MALFORMED_ENVELOPES,
    assert_only_the_next_mention_is_answered,
    assert_the_fuzz_reached_the_turns_and_the_bot_survived,
    crashes,
    envelope,
    events,
    json_values,
    mention,
    top_level_overrides,
)

# Frames without an envelope id to acknowledge.
UNANSWERABLE_FRAMES = {
    "not-json": "hello?",
    "broken-json-object": '{"envelope_id": "E1", "type": "events_api", ',
    "a-json-list": json.dumps([{"envelope_id": "E1", "type": "events_api"}]),
    "a-json-string": json.dumps("events_api"),
    "a-json-number": "7",
    "envelope-id-a-number": json.dumps(
        {"envelope_id": 7, "type": "events_api", "payload": envelope(mention("1.1"))}
    ),
    "envelope-id-empty": json.dumps(
        {"envelope_id": "", "type": "events_api", "payload": envelope(mention("1.2"))}
    ),
}

# Envelopes with an id whose payload cannot be a request: acknowledged and dropped.
BAD_PAYLOADS: dict[str, Any] = {
    "payload-missing": ...,
    "payload-null": None,
    "payload-a-string": "<@UBOT> hi",
    "payload-a-list": [envelope(mention("1.3"))],
    **{f"payload-{name}": body for name, body in MALFORMED_ENVELOPES.items()},
}


@pytest.mark.parametrize("frame", UNANSWERABLE_FRAMES.values(), ids=UNANSWERABLE_FRAMES.keys())
async def test_frames_that_are_not_envelopes_are_dropped_and_the_bot_keeps_answering(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    frame: str,
) -> None:
    running = await start_bot("socket")
    await slack.send_socket_text(frame)
    await assert_only_the_next_mention_is_answered(slack, llm, running)
    assert slack.socket_connections == 1
    assert crashes(caplog) == []
    assert "socket mode" in caplog.text and "ignored" in caplog.text


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
@pytest.mark.parametrize("kind", ["events_api", "interactive"])
async def test_envelopes_with_a_payload_of_the_wrong_shape_are_acknowledged_and_dropped(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    caplog: pytest.LogCaptureFixture,
    payload: Any,
    kind: str,
) -> None:
    running = await start_bot("socket")
    frame = {"envelope_id": "E-hostile", "type": kind, "accepts_response_payload": False, "payload": payload}
    frame = {k: v for k, v in frame.items() if v is not ...}
    await slack.send_socket_text(json.dumps(frame))
    await slack.wait_for(lambda: any(ack["envelope_id"] == "E-hostile" for ack in slack.acks), what="the ack")
    await assert_only_the_next_mention_is_answered(slack, llm, running)
    assert slack.socket_connections == 1
    assert crashes(caplog) == []


# ----- fuzz: envelopes of any shape around event_callbacks of any shape -----

envelope_kinds = st.sampled_from(["events_api"] * 6 + ["interactive", "slash_commands", "hello", "telepathy"])
envelope_extras = st.dictionaries(
    st.sampled_from(["accepts_response_payload", "retry_attempt", "retry_reason", "debug_info"]),
    json_values,
    max_size=2,
)


def _answerable(test: Any) -> Any:
    """The mentions the bot must answer, as plain envelopes, among the examples."""
    for event in ANSWERABLE:
        test = example(event=event, overrides={}, kind="events_api", extras={})(test)
    return test


async def acknowledged(slack: SlackEmulator, frame: dict[str, Any], timeout: float = 5.0) -> bool:  # noqa: ASYNC109
    """Write `frame` on the socket; True once its envelope is acknowledged, False after `timeout`."""
    await slack.send_socket_text(json.dumps(frame))
    try:
        await slack.wait_for(
            lambda: any(a.get("envelope_id") == frame["envelope_id"] for a in slack.acks), timeout
        )
    except AssertionError:
        return False
    return True


async def test_fuzzed_envelopes_are_each_acknowledged_and_the_bot_keeps_answering(
    start_bot: StartBot, slack: SlackEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_bot("socket")
    loop = asyncio.get_running_loop()
    unacknowledged: list[dict[str, Any]] = []

    # As the HTTP fuzz test: Hypothesis runs in a worker thread, each frame is sent on the loop.
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=FUZZ_EXAMPLES == 150)
    @given(event=events, overrides=top_level_overrides, kind=envelope_kinds, extras=envelope_extras)
    @_answerable
    def one_envelope(event: Any, overrides: dict[str, Any], kind: str, extras: dict[str, Any]) -> None:
        frame = extras | {
            "envelope_id": str(uuid.uuid4()),
            "type": kind,
            "payload": envelope(event, **overrides),
        }
        if not asyncio.run_coroutine_threadsafe(acknowledged(slack, frame), loop).result(timeout=10):
            unacknowledged.append(frame)

    await asyncio.to_thread(one_envelope)
    await running.settle()
    assert unacknowledged == []
    await assert_the_fuzz_reached_the_turns_and_the_bot_survived(slack, running, caplog)
    assert slack.socket_connections == 1
