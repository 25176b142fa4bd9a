"""HTTP mode's front door: Slack's signature is checked before anything else; bad requests get a 4xx
with a reason and the bot keeps serving."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import StartBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator

CHANNEL = "C400"
BOT = "UBOT"


def event_body(ts: str, text: str = f"<@{BOT}> hi") -> bytes:
    return json.dumps(
        {
            "token": "legacy",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": f"Ev{ts}",
            "event_time": int(time.time()),
            "event": {
                "type": "app_mention",
                "user": "U1",
                "text": text,
                "ts": ts,
                "channel": CHANNEL,
                "event_ts": ts,
            },
            "authorizations": [{"team_id": "T1", "user_id": BOT, "is_bot": True}],
        }
    ).encode()


async def test_bad_signature_and_stale_timestamp_are_refused_without_calling_the_model(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    await start_bot("http")
    body = event_body(slack.seed_message(CHANNEL, f"<@{BOT}> hi"))
    status, _ = await slack.send_http(body, headers={"X-Slack-Signature": "v0=" + "0" * 64}, sign=False)
    assert status == 401
    status, _ = await slack.send_http(body, sign=False)  # no signature headers at all
    assert status == 401
    status, _ = await slack.send_http(body, timestamp=int(time.time()) - 6 * 60)  # replayed
    assert status == 401
    assert llm.requests == []
    assert slack.calls_to("chat.postMessage") == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe\x00", b"", b"null"],
    ids=["broken-json", "json-list", "json-string", "not-utf8", "empty", "null"],
)
async def test_malformed_bodies_get_400_and_the_bot_keeps_serving(
    start_bot: StartBot, slack: SlackEmulator, body: bytes
) -> None:
    await start_bot("http")
    status, text = await slack.send_http(body, headers={"Content-Type": "application/json"})
    assert 400 <= status < 500, text
    ts = await slack.post_user_message(CHANNEL, f"<@{BOT}> still there?")
    await slack.wait_for_bot_messages(CHANNEL, ts)


async def test_oversized_body_gets_413(start_bot: StartBot, slack: SlackEmulator) -> None:
    await start_bot("http")
    status, _ = await slack.send_http(b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert status == 413


async def test_url_verification_and_unknown_events_are_acknowledged(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator
) -> None:
    await start_bot("http")
    challenge = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "t"}).encode()
    status, text = await slack.send_http(challenge, headers={"Content-Type": "application/json"})
    assert status == 200 and "abc123" in text

    delivery = await slack.deliver_event({"type": "reaction_added", "user": "U1", "reaction": "+1"})
    assert delivery.status == 200
    assert llm.requests == []
