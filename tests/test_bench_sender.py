"""The benchmark's HTTP sender (bench/sender.py): the bot gets the request the emulator prepared,
signature and all; answers are read whole; connections are reused, and replaced when they end."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.rig import ModelShape, Rig
from bench.sender import HttpSender, encode
from tests.emulators.slack import PreparedDelivery, SlackEmulator


class Receiver:
    """A stand-in for a bot's request URL that records what arrives and answers as told."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes, int]] = []  # headers, body, client port
        self.answer: web.StreamResponse | None = None
        self.delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/slack/events", self._events)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/slack/events"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        port = request.transport.get_extra_info("peername")[1] if request.transport else 0
        self.received.append((dict(request.headers), await request.read(), port))
        await asyncio.sleep(self.delay)
        if self.answer is not None:
            return self.answer
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def prepared(receiver: Receiver, text: str = "hello") -> tuple[SlackEmulator, PreparedDelivery]:
    slack = SlackEmulator()
    slack.use_http(receiver.url)
    event = {"type": "app_mention", "user": "U1", "text": text, "ts": "1.000001", "channel": "C1"}
    return slack, slack.prepare_event(event, event_id="Ev1", retry_num=1)


async def test_the_request_is_the_prepared_one_and_its_answer_is_read(receiver: Receiver) -> None:
    slack, delivery = prepared(receiver, "héllo")
    sender = HttpSender()
    before = time.monotonic()
    try:
        answer = await sender.send(encode(delivery))
    finally:
        sender.close()

    assert (answer.status, answer.body, answer.acked, answer.event_id) == (200, "ok", True, "Ev1")
    assert before <= answer.sent_at and answer.sent_at + answer.elapsed <= time.monotonic()
    headers, body, _ = receiver.received[0]
    assert body == delivery.data
    timestamp = int(headers["X-Slack-Request-Timestamp"])
    assert headers["X-Slack-Signature"] == slack.sign(body, timestamp)["X-Slack-Signature"]
    assert headers["X-Slack-Retry-Num"] == "1" and headers["Content-Type"] == "application/json"


async def test_a_connection_is_reused_unless_the_bot_closes_it(receiver: Receiver) -> None:
    _, delivery = prepared(receiver)
    sender = HttpSender()
    try:
        for _ in range(2):
            assert (await sender.send(encode(delivery))).acked
        receiver.answer = web.Response(text="bye", headers={"Connection": "close"})
        assert (await sender.send(encode(delivery))).body == "bye"
        receiver.answer = None
        assert (await sender.send(encode(delivery))).acked
    finally:
        sender.close()

    ports = [port for _, _, port in receiver.received]
    assert ports[0] == ports[1] == ports[2] != ports[3]


async def test_a_chunked_answer_is_read_whole(receiver: Receiver) -> None:
    _, delivery = prepared(receiver)
    response = web.Response(text="a chunked answer")
    response.enable_chunked_encoding()
    receiver.answer = response
    sender = HttpSender()
    try:
        answer = await sender.send(encode(delivery))
    finally:
        sender.close()
    assert (answer.status, answer.body) == (200, "a chunked answer")


async def test_an_answer_later_than_the_timeout_is_not_an_ack(receiver: Receiver) -> None:
    _, delivery = prepared(receiver)
    receiver.delay = 1.0
    sender = HttpSender(timeout=0.2)
    try:
        answer = await sender.send(encode(delivery))
    finally:
        sender.close()
    assert (answer.status, answer.acked) == (None, False)
    assert 0.2 <= answer.elapsed < 1.0


def nothing_listens() -> str:
    """A request URL whose port refuses connections, as a killed bot's does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/slack/events"


@pytest.mark.parametrize("retry", [True, False])
async def test_a_delivery_that_fails_is_sent_again_to_a_live_process_when_retries_are_on(
    receiver: Receiver, retry: bool
) -> None:
    """The replicas' crash load: what a killed process did not acknowledge, Slack sends again,
    marked as a retry, and a load balancer passes it to a live process."""
    rig = Rig(ModelShape(0.0, 0.0, answer_chars=10, chunk_chars=10))
    rig.retry_routes = [receiver.url] if retry else None
    dead = nothing_listens()
    try:
        question = rig.prepare("C1", router=lambda: [dead])
        asked = await rig.send(question)
    finally:
        rig.http.close()

    message, mention = asked.deliveries
    if not retry:
        assert not message.acked and not mention.acked and receiver.received == []
        return
    assert message.acked and mention.acked and rig.retried == 2
    # A delivery's time runs from the question's send to its ack, the failed attempt included.
    now = time.monotonic()
    assert all(asked.sent_at <= d.sent_at and d.sent_at + d.elapsed <= now for d in asked.deliveries)
    bodies = sorted(body for _, body, _ in receiver.received)
    assert bodies == sorted(outgoing.prepared.data for outgoing in question.deliveries)
    assert all(headers["X-Slack-Retry-Num"] == "1" for headers, _, _ in receiver.received)
