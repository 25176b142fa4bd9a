"""Hostile and malformed input over Socket Mode: whatever comes down the socket is acknowledged
when it has an envelope id (so that Slack stops sending it) and otherwise dropped, never crashes a
handler, and the bot goes on answering on the same connection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import StartBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.test_hostile_input import (
    MALFORMED_ENVELOPES,
    assert_only_the_next_mention_is_answered,
    crashes,
    envelope,
    mention,
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
