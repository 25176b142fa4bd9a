"""The benchmark's floor (bench/floor/app.py) behaves as the least a bot must do: each question
answered once in its thread, in both modes, and requests Slack did not sign refused."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.bots import FLOOR_APP, BotProcess, free_port
from bench.rig import ModelShape, Rig

MODEL = ModelShape(first_token_seconds=0.05, stream_seconds=0.1, answer_chars=120, chunk_chars=16)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = Rig(MODEL)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


async def start_floor(rig: Rig, mode: str, workdir: Path) -> BotProcess:
    port = free_port()
    floor = BotProcess(f"floor-{mode}", FLOOR_APP, rig.bot_env("redis://unused", port, mode), port, workdir)
    await floor.start(ready="health")
    return floor


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_each_mention_is_answered_once_in_its_thread(rig: Rig, mode: str, tmp_path: Path) -> None:
    floor = await start_floor(rig, mode, tmp_path)
    try:
        route = floor.events_url if mode == "http" else None
        asked = [await rig.ask(f"C{i}", router=lambda: [route]) for i in range(3)]
        assert await rig.wait_answered(asked, timeout=10), floor.log_tail()
    finally:
        assert await floor.stop() == 0  # SIGTERM is a clean stop

    for question in asked:
        assert [d.acked for d in question.deliveries] == [True, True]  # message and app_mention
        posts = [c for c in rig.slack.calls_to("chat.postMessage") if c.args["channel"] == question.channel]
        assert len(posts) == 1  # the twin event was dropped
        assert posts[0].args["thread_ts"] == question.ts
        assert posts[0].args["text"] == MODEL.answer(question.qid)
        assert question.signal_at is not None and question.signal_at < question.done_at  # type: ignore[operator]


async def test_requests_without_a_valid_signature_are_refused(rig: Rig, tmp_path: Path) -> None:
    floor = await start_floor(rig, "http", tmp_path)
    try:
        rig.slack.use_http(floor.events_url)
        event = {"type": "app_mention", "user": "U1", "text": "<@UBOT> hi", "ts": "1.000001", "channel": "C1"}
        body = json.dumps({"event": event, "authorizations": [{"user_id": "UBOT"}]}).encode()
        assert (await rig.slack.send_http(body, sign=False))[0] == 401
        assert (await rig.slack.send_http(body, timestamp=int(time.time()) - 600))[0] == 401
        assert (await rig.slack.send_http(body, headers={"X-Slack-Signature": "v0=00"}))[0] == 401
        assert (await rig.slack.send_http(body))[0] == 200
        await rig.slack.wait_for(lambda: bool(rig.slack.calls_to("chat.postMessage")), timeout=10)
    finally:
        await floor.stop()
    assert len(rig.slack.calls_to("chat.postMessage")) == 1
