"""The Slack lane (bot/lane.py): calls made from a thread of their own, over real HTTP to the
Slack emulator, go out while the main loop is busy, and behave as the main client's calls do."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.delivery import Delivery, Target
from bot.lane import LaneClosed, SlackLane
from bot.rate_limit import BudgetedSlack, SlackBudget
from bot.store import Store
from tests.emulators.slack import SlackEmulator

STATUS = {"channel_id": "C1", "thread_ts": "1.1", "status": "is thinking…"}
BUSY_SECONDS = 1.0


def client_for(slack: SlackEmulator) -> AsyncWebClient:
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, session=aiohttp.ClientSession())


@pytest.fixture
def slack_elsewhere() -> Iterator[SlackEmulator]:
    """The Slack emulator on a loop and thread of its own, so that it answers while the test
    keeps the main loop busy."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = SlackEmulator()
    asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(10)
    yield emulator
    asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def started_lane(slack: SlackEmulator) -> SlackLane:
    lane = SlackLane(lambda: client_for(slack))
    await lane.start()
    return lane


@pytest.fixture
async def lane(slack: SlackEmulator) -> AsyncIterator[SlackLane]:
    lane = await started_lane(slack)
    yield lane
    await lane.close()


def lane_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "slack-lane"]


async def test_a_call_in_the_lane_reaches_slack_while_the_main_loop_is_busy(
    slack_elsewhere: SlackEmulator,
) -> None:
    lane = await started_lane(slack_elsewhere)
    main_client = client_for(slack_elsewhere)
    try:
        from_lane = asyncio.create_task(lane.api_call("assistant.threads.setStatus", json=STATUS))
        from_main = asyncio.create_task(
            main_client.api_call("assistant.threads.setStatus", json=STATUS | {"thread_ts": "2.2"})
        )
        await asyncio.sleep(0)  # both calls begun
        busy_from = time.monotonic()
        time.sleep(BUSY_SECONDS)  # noqa: ASYNC251 - the main loop kept busy, as by a burst's work
        busy_until = time.monotonic()
        assert (await from_lane)["ok"]
        await from_main
    finally:
        await lane.close()
        await main_client.session.close()
    at = {call.args["thread_ts"]: call.at for call in slack_elsewhere.calls_to("assistant.threads.setStatus")}
    assert busy_from < at["1.1"] < busy_until, "the lane's call waited for the main loop"
    # The control: the same call from the main loop went out only once the loop was free.
    assert at["2.2"] >= busy_until


async def test_the_thinking_status_goes_out_while_the_main_loop_is_busy(
    slack_elsewhere: SlackEmulator, redis_url: str
) -> None:
    """The bot's sign, counted as its message was queued, is sent from the lane."""
    store = Store(redis_url, conversation_ttl_days=1)
    lane = await started_lane(slack_elsewhere)
    main_client = client_for(slack_elsewhere)
    delivery = Delivery(BudgetedSlack(main_client, SlackBudget(store), lane))
    target = Target(channel="C1", thread_ts="1.1", message_ts="1.1", team="T1")
    try:
        shown = asyncio.create_task(delivery.show_thinking(target, counted=True))
        await asyncio.sleep(0)
        busy_from = time.monotonic()
        time.sleep(BUSY_SECONDS)  # noqa: ASYNC251 - as above
        busy_until = time.monotonic()
        assert (await shown).kind == "status"
    finally:
        await lane.close()
        await main_client.session.close()
        await store.close()
    [status] = slack_elsewhere.calls_to("assistant.threads.setStatus")
    assert busy_from < status.at < busy_until
    assert (status.args["channel_id"], status.args["thread_ts"]) == ("C1", "1.1")


async def test_slack_s_errors_come_back_from_the_lane(slack: SlackEmulator, lane: SlackLane) -> None:
    slack.fail_next("assistant.threads.setStatus", "channel_not_found")
    with pytest.raises(SlackApiError) as failed:
        await lane.api_call("assistant.threads.setStatus", json=STATUS)
    assert failed.value.response["error"] == "channel_not_found"
    assert (await lane.api_call("assistant.threads.setStatus", json=STATUS))["ok"]


async def test_a_cancelled_caller_cancels_its_call_and_the_lane_goes_on(
    slack: SlackEmulator, lane: SlackLane
) -> None:
    gate = slack.gate("assistant.threads.setStatus")
    call = asyncio.create_task(lane.api_call("assistant.threads.setStatus", json=STATUS))
    await slack.wait_for(lambda: gate.waiting == 1, what="the call held at Slack")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    gate.opened.set()
    assert (await lane.api_call("assistant.threads.setStatus", json=STATUS))["ok"]


async def test_closing_the_lane_cuts_short_its_calls_and_stops_its_thread(slack: SlackEmulator) -> None:
    lane = await started_lane(slack)
    assert len(lane_threads()) == 1
    gate = slack.gate("assistant.threads.setStatus")
    call = asyncio.create_task(lane.api_call("assistant.threads.setStatus", json=STATUS))
    await slack.wait_for(lambda: gate.waiting == 1, what="the call held at Slack")
    await asyncio.wait_for(lane.close(), 5)
    with pytest.raises(LaneClosed):
        await call
    assert lane_threads() == []
    with pytest.raises(LaneClosed):
        await lane.api_call("assistant.threads.setStatus", json=STATUS)
    await lane.close()  # twice is harmless
