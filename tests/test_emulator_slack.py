"""The Slack emulator itself, checked with the real slack_sdk clients the bot uses."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.emulators.slack import SlackEmulator


@pytest.fixture
async def emu() -> AsyncIterator[SlackEmulator]:
    emulator = SlackEmulator()
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
def client(emu: SlackEmulator) -> AsyncWebClient:
    return AsyncWebClient(token=emu.bot_token, base_url=emu.api_url)


async def test_replies_paginate_a_long_thread(emu: SlackEmulator, client: AsyncWebClient) -> None:
    parent = (await client.chat_postMessage(channel="C1", text="parent"))["ts"]
    for i in range(249):
        await client.chat_postMessage(channel="C1", text=f"reply {i}", thread_ts=parent)

    pages = []
    cursor = None
    while True:
        page = await client.conversations_replies(channel="C1", ts=parent, limit=100, cursor=cursor)
        pages.append(page["messages"])
        cursor = page["response_metadata"]["next_cursor"]
        assert page["has_more"] == bool(cursor)
        if not cursor:
            break

    assert [len(p) for p in pages] == [100, 100, 50]
    seen = [m["ts"] for p in pages for m in p]
    assert seen == [m["ts"] for m in emu.thread("C1", parent)]
    assert seen == sorted(seen, key=float) and len(set(seen)) == 250
    head = pages[0][0]
    assert head["ts"] == parent and head["reply_count"] == 249
    assert pages[2][-1]["text"] == "reply 248" and pages[2][-1]["parent_user_id"] == "UBOT"
    assert len(emu.bot_messages("C1", parent)) == 249  # replies; the parent is not one
    # A reply's ts finds the same thread; an unknown ts does not.
    assert len((await client.conversations_replies(channel="C1", ts=seen[7]))["messages"]) == 250
    with pytest.raises(SlackApiError) as err:
        await client.conversations_replies(channel="C1", ts="1.000001")
    assert err.value.response["error"] == "thread_not_found"


async def test_replies_from_oldest_include_it_only_when_inclusive_and_never_a_deleted_one(
    emu: SlackEmulator, client: AsyncWebClient
) -> None:
    """As Slack: `oldest` is exclusive unless `inclusive`, the parent always comes first, and a
    deleted reply is gone (the bot looks a question up so after Redis lost its data)."""
    parent = (await client.chat_postMessage(channel="C1", text="parent"))["ts"]
    first, second, third = [
        (await client.chat_postMessage(channel="C1", text=text, thread_ts=parent))["ts"]
        for text in ("first", "second", "third")
    ]
    await client.chat_delete(channel="C1", ts=third)

    async def read(**args: str) -> list[str]:
        page = await client.conversations_replies(channel="C1", ts=parent, oldest=first, **args)
        return [m["ts"] for m in page["messages"]]

    assert await read() == [parent, second]
    assert await read(inclusive="true") == [parent, first, second]


async def test_users_info(emu: SlackEmulator, client: AsyncWebClient) -> None:
    emu.add_user("U2", "ana", real_name="Ana Lima", team="T2")

    user = (await client.users_info(user="U2"))["user"]

    assert (user["id"], user["team_id"], user["is_bot"]) == ("U2", "T2", False)
    assert user["profile"]["display_name"] == "ana" and user["profile"]["real_name"] == "Ana Lima"
    with pytest.raises(SlackApiError) as err:
        await client.users_info(user="U404")
    assert err.value.response["error"] == "user_not_found"


async def test_tokens_are_checked(emu: SlackEmulator) -> None:
    async def error_of(token: str | None, method: str) -> str:
        with pytest.raises(SlackApiError) as err:
            await AsyncWebClient(token=token, base_url=emu.api_url).api_call(method)
        return err.value.response["error"]

    assert await error_of("xoxb-wrong", "auth.test") == "invalid_auth"
    assert await error_of(None, "auth.test") == "not_authed"
    assert await error_of(emu.app_token, "auth.test") == "invalid_auth"
    assert await error_of(emu.bot_token, "apps.connections.open") == "invalid_auth"
    assert await error_of(emu.bot_token, "no.such.method") == "unknown_method"
    auth = await AsyncWebClient(token=emu.bot_token, base_url=emu.api_url).auth_test()
    assert (auth["user_id"], auth["bot_id"], auth["team_id"]) == ("UBOT", "BBOT", "T1")
    assert [c.token for c in emu.calls_to("auth.test")] == [
        "xoxb-wrong",
        None,
        emu.app_token,
        emu.bot_token,
    ]


async def test_fail_next_answers_429_with_retry_after(emu: SlackEmulator, client: AsyncWebClient) -> None:
    emu.fail_next("chat.postMessage", status=429, retry_after=1.2)

    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C1", text="hello")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "2"
    assert err.value.response["error"] == "ratelimited"

    await client.chat_postMessage(channel="C1", text="hello")  # only the next call fails
    assert [(c.status, c.response["ok"]) for c in emu.calls_to("chat.postMessage")] == [
        (429, False),
        (200, True),
    ]
    assert [m["text"] for m in emu.bot_messages("C1")] == ["hello"]


async def test_messages_edits_reactions_and_status(emu: SlackEmulator, client: AsyncWebClient) -> None:
    question = emu.seed_message("D1", "how do I reset my password?")
    await client.assistant_threads_setStatus(channel_id="D1", thread_ts=question, status="is thinking...")
    await client.reactions_add(channel="D1", timestamp=question, name="eyes")
    with pytest.raises(SlackApiError, match="already_reacted"):
        await client.reactions_add(channel="D1", timestamp=question, name="eyes")
    assert emu.statuses[("D1", question)] == "is thinking..."
    with pytest.raises(SlackApiError, match="invalid_arguments"):  # `status` is required ("" clears)
        await client.api_call("assistant.threads.setStatus", json={"channel_id": "D1", "thread_ts": question})

    answer = (await client.chat_postMessage(channel="D1", thread_ts=question, text="Step 1"))["ts"]
    await client.chat_update(channel="D1", ts=answer, text="Step 1, step 2")
    await client.reactions_remove(channel="D1", timestamp=question, name="eyes")

    [stored] = emu.bot_messages("D1", question)
    assert [e["text"] for e in stored["edits"]] + [stored["text"]] == ["Step 1", "Step 1, step 2"]
    assert "reactions" not in emu.messages("D1")[0]
    assert emu.statuses[("D1", question)] == ""  # the reply cleared it, as Slack does
    with pytest.raises(SlackApiError, match="no_text"), pytest.warns(UserWarning, match="text"):
        await client.chat_postMessage(channel="D1", text="")
    with pytest.raises(SlackApiError, match="msg_too_long"):
        await client.chat_postMessage(channel="D1", text="x" * 40_001)
    with pytest.raises(SlackApiError, match="cant_update_message"):
        await client.chat_update(channel="D1", ts=question, text="not mine")
    info = (await client.conversations_info(channel="D1"))["channel"]
    assert info["is_im"] and not info["is_channel"]


async def test_forget_keeps_only_the_threads_named(emu: SlackEmulator, client: AsyncWebClient) -> None:
    # What a long soak does between windows: the load generator's memory then stays flat.
    kept = emu.seed_message("C1", "kept question")
    await client.chat_postMessage(channel="C1", thread_ts=kept, text="kept answer")
    old = emu.seed_message("C1", "old question")
    await client.chat_postMessage(channel="C1", thread_ts=old, text="old answer")
    elsewhere = emu.seed_message("C2", "question elsewhere")
    await client.assistant_threads_setStatus(channel_id="C2", thread_ts=elsewhere, status="is thinking...")
    shown = emu.seed_message("C2", "still thinking")
    await client.assistant_threads_setStatus(channel_id="C2", thread_ts=shown, status="is thinking...")
    await client.chat_postMessage(channel="C2", thread_ts=elsewhere, text="answer elsewhere")

    emu.forget([("C1", kept)])

    assert [m["text"] for m in emu.messages("C1")] == ["kept question", "kept answer"]
    assert emu.messages("C2") == []
    assert (emu.calls, emu.status_history, emu.deliveries) == ([], [], [])
    assert emu.statuses == {("C2", shown): "is thinking..."}  # a status still shown stays
    # The kept thread grows and reads as before.
    await client.chat_postMessage(channel="C1", thread_ts=kept, text="second answer")
    replies = (await client.conversations_replies(channel="C1", ts=kept))["messages"]
    assert [m["text"] for m in replies] == ["kept question", "kept answer", "second answer"]
    assert replies[0]["reply_count"] == 2
    assert [call.method for call in emu.calls] == ["chat.postMessage", "conversations.replies"]
    with pytest.raises(SlackApiError, match="thread_not_found"):
        await client.conversations_replies(channel="C1", ts=old)


async def test_signed_http_delivery(emu: SlackEmulator) -> None:
    verifier = SignatureVerifier(emu.signing_secret)
    body = b'{"type":"event_callback"}'
    now = int(time.time())
    assert verifier.is_valid_request(body, emu.sign(body, now))
    assert not verifier.is_valid_request(body + b" ", emu.sign(body, now))

    received: list[web.Request] = []

    async def bot(request: web.Request) -> web.Response:
        received.append(request)
        valid = verifier.is_valid_request(await request.read(), request.headers)
        return web.Response(status=200 if valid else 401)

    async with request_url(bot) as url:
        emu.use_http(url)
        delivery = await emu.deliver_event({"type": "app_home_opened"}, retry_num=1)
        stale = await emu.send_http(body, timestamp=now - 600)

    assert delivery.acked and delivery.status == 200
    assert received[0].headers["X-Slack-Retry-Num"] == "1"
    assert stale[0] == 401


@contextlib.asynccontextmanager
async def request_url(handler: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """A bot's request URL on 127.0.0.1 whose POSTs `handler` answers."""
    app = web.Application()
    app.router.add_post("/slack/events", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    finally:
        await runner.cleanup()


def acknowledging_client(emu: SlackEmulator, received: list[SocketModeRequest]) -> SocketModeClient:
    """slack_sdk's Socket Mode client, acknowledging every request and keeping it in `received`.
    A short ping interval: after an abrupt drop the client notices only at its next ping."""

    async def ack(client: SocketModeClient, request: SocketModeRequest) -> None:
        received.append(request)
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    web_client = AsyncWebClient(base_url=emu.api_url)
    socket = SocketModeClient(app_token=emu.app_token, web_client=web_client, ping_interval=0.3)
    socket.socket_mode_request_listeners.append(ack)
    return socket


async def test_failed_http_deliveries_are_sent_again_as_slack_does(emu: SlackEmulator) -> None:
    verifier = SignatureVerifier(emu.signing_secret)
    received: list[tuple[str | None, str | None, bool]] = []

    async def bot(request: web.Request) -> web.Response:
        valid = verifier.is_valid_request(await request.read(), request.headers)
        received.append(
            (request.headers.get("X-Slack-Retry-Num"), request.headers.get("X-Slack-Retry-Reason"), valid)
        )
        return web.Response(status=503 if len(received) < 3 else 200)

    async with request_url(bot) as url:
        emu.use_http(url)
        emu.retry_failed_deliveries(waits=(0.0, 0.05, 0.1))
        delivery = await emu.deliver_event({"type": "app_home_opened"}, event_id="Ev1")
        click = await emu.deliver_interaction({"type": "block_actions", "actions": []})

    assert delivery.acked and delivery.retry_attempt == 2
    assert received == [
        (None, None, True),
        ("1", "http_error", True),
        ("2", "http_error", True),
        (None, None, True),
    ]
    assert [(d.event_id, d.retry_attempt, d.acked) for d in emu.deliveries[:3]] == [
        ("Ev1", 0, False),
        ("Ev1", 1, False),
        ("Ev1", 2, True),
    ]
    assert click.acked  # the fourth request; an interaction is never sent again
    assert len(emu.deliveries) == 4


async def test_unacknowledged_envelope_is_sent_again_on_the_socket(emu: SlackEmulator) -> None:
    received: list[SocketModeRequest] = []

    async def ack_all_but_the_first(client: SocketModeClient, request: SocketModeRequest) -> None:
        received.append(request)
        if len(received) > 1:
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    socket = SocketModeClient(app_token=emu.app_token, web_client=AsyncWebClient(base_url=emu.api_url))
    socket.socket_mode_request_listeners.append(ack_all_but_the_first)
    emu.ack_timeout = 0.3
    emu.retry_failed_deliveries(waits=(0.0, 0.0, 0.0))
    try:
        await socket.connect()
        await emu.wait_for_socket()
        delivery = await emu.deliver_event({"type": "app_home_opened", "user": "U1"}, event_id="Ev1")
    finally:
        await socket.close()

    assert delivery.acked and delivery.retry_attempt == 1
    assert [(r.retry_attempt, r.retry_reason, r.payload["event_id"]) for r in received] == [
        (0, "", "Ev1"),
        (1, "http_timeout", "Ev1"),
    ]
    assert received[0].envelope_id != received[1].envelope_id


async def test_a_stalled_socket_takes_no_acks_and_the_client_moves_on(emu: SlackEmulator) -> None:
    """A half-open connection: the client's pings go unanswered, so it connects again; what was
    sent over the stalled one and never acknowledged goes again over the new one."""
    received: list[SocketModeRequest] = []
    socket = acknowledging_client(emu, received)
    emu.ack_timeout = 1.0
    emu.retry_failed_deliveries(waits=(0.0, 0.5, 1.0))
    try:
        await socket.connect()
        await emu.wait_for_socket()
        emu.stall_socket()
        delivery = await emu.deliver_event({"type": "app_home_opened", "user": "U1"}, event_id="Ev1")
    finally:
        await socket.close()

    assert emu.socket_connections >= 2
    assert delivery.acked and delivery.retry_attempt >= 1
    assert received[0].retry_attempt == 0  # reached the client, but its ack did not reach Slack
    assert {r.payload["event_id"] for r in received} == {"Ev1"}


async def test_socket_mode_round_trip_and_reconnect(emu: SlackEmulator) -> None:
    received: list[SocketModeRequest] = []
    socket = acknowledging_client(emu, received)
    try:
        await socket.connect()
        await emu.wait_for_socket()
        ts = await emu.post_user_message("C1", "help <@UBOT>")

        assert [r.payload["event"]["type"] for r in received] == ["message", "app_mention"]
        assert {r.payload["event"]["ts"] for r in received} == {ts}
        assert received[0].payload["event"]["channel_type"] == "channel"
        assert [a["envelope_id"] for a in emu.acks] == [r.envelope_id for r in received]
        assert all(d.acked for d in emu.deliveries)

        await emu.drop_socket()
        await emu.wait_for(lambda: emu.socket_connections == 2, timeout=5)
        await emu.send_disconnect()
        await emu.wait_for(lambda: emu.socket_connections == 3, timeout=5)
        again = await emu.deliver_event({"type": "app_home_opened", "user": "U1"})
        assert again.acked and received[-1].payload["event"]["type"] == "app_home_opened"
    finally:
        await socket.close()
