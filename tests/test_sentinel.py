"""REDIS_URL may name Redis Sentinels instead of one Redis: the bot asks them for the primary,
and after a failover it carries on with the promoted replica, conversations included."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import StartBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.redis_server import RedisServer, SentinelServer

CHANNEL = "C900"
BOT = "UBOT"
FAILOVER_TIMEOUT = 20.0
POLL_SECONDS = 0.1


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, SentinelServer]]:
    """A primary, its replica and one Sentinel watching them, all real redis-server processes."""
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    replica = RedisServer(tmp_path / "replica", replica_of=primary.port)
    replica.start()
    sentinel = SentinelServer(tmp_path / "sentinel", primary_port=primary.port)
    sentinel.start()
    try:
        yield primary, replica, sentinel
    finally:
        for server in (sentinel, replica, primary):
            server.stop()


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a quick check (a query to a local Redis process) until it holds."""
    for _ in range(int(FAILOVER_TIMEOUT / POLL_SECONDS)):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"{what} within {FAILOVER_TIMEOUT}s")


@pytest.mark.slow
async def test_the_bot_finds_the_primary_through_sentinel_and_follows_a_failover(
    start_bot: StartBot,
    slack: SlackEmulator,
    llm: OpenAIEmulator,
    sentinel_set: tuple[RedisServer, RedisServer, SentinelServer],
) -> None:
    primary, replica, sentinel = sentinel_set
    await wait_until(lambda: sentinel.replicas_known() == 1, "the Sentinel saw no replica")
    running = await start_bot("http", REDIS_URL=sentinel.url)

    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> the deploy of billing-api is stuck")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()
    assert replica.port != primary.port

    # The primary dies once its replica has everything; the Sentinel promotes the replica.
    primary.wait_for_replica()
    primary.kill()
    await wait_until(lambda: sentinel.primary_port_now() == replica.port, "the Sentinel did not fail over")

    await slack.post_user_message(CHANNEL, "it says 'waiting for lock'", thread_ts=root)
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=2, timeout=FAILOVER_TIMEOUT)
    assert len(replies) == 2
    # The conversation lived on in the promoted replica: the model saw the first question.
    prompt = " ".join(str(m.get("content")) for m in llm.requests[-1]["messages"])
    assert "billing-api is stuck" in prompt and "waiting for lock" in prompt
    async with aiohttp.ClientSession() as session, session.get(f"{running.url}/health") as response:
        assert response.status == 200
