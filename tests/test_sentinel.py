"""REDIS_URL may name Redis Sentinels instead of one Redis: the bot asks them for the primary,
and after a failover it carries on with the promoted replica, conversations included."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bot.pipelining import CommandBatcher
from bot.redis_url import connection_pool
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


async def test_a_batch_s_new_connection_finds_the_primary_past_a_sentinel_that_never_answers(
    sentinel_set: tuple[RedisServer, RedisServer, SentinelServer],
) -> None:
    """The first Sentinel named takes connections and never answers (a hung host): asking it costs
    its reply timeout before the next is asked. A batch's new connection asks them as it opens;
    counted in the batch's deadline, shorter than that timeout here (5 s each in the bot), the
    asking never got past the hung one, on any try, and no batch could go out at all."""
    primary, _, sentinel = sentinel_set
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        _, hung_port = hung.getsockname()
        url = f"redis+sentinel://127.0.0.1:{hung_port},127.0.0.1:{sentinel.port}/{sentinel.service}"
        pool, sentinels = connection_pool(
            url, socket_connect_timeout=2, socket_timeout=1.5, retry=Retry(NoBackoff(), 1), protocol=2
        )
        client = aioredis.Redis.from_pool(pool)
        batcher = CommandBatcher(client, timeout_seconds=1)
        try:
            assert await batcher.execute("SET", "found", "1")
        finally:
            await batcher.close(wait_seconds=0)
            await client.aclose()
            if sentinels is not None:
                await sentinels.aclose()
    direct = aioredis.Redis(host="127.0.0.1", port=primary.port, decode_responses=True)
    try:
        assert await direct.get("found") == "1"
    finally:
        await direct.aclose()
