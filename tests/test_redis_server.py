"""The real redis-server helper: persistence across restarts, and outages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redis_server import RedisServer, find_redis_server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    # No skip on purpose: a missing or broken redis-server must fail the suite.
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


async def ping(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return await client.ping()
    finally:
        await client.aclose()


def test_find_redis_server() -> None:
    assert Path(find_redis_server()).name == "redis-server"


def retrying_client(url: str) -> redis.Redis:
    # from_url() leaves connections with zero retries (see the test below), so a command on a
    # pooled connection to a restarted server would fail once; a Retry reconnects transparently.
    return redis.Redis.from_url(
        url, decode_responses=True, retry=Retry(ExponentialWithJitterBackoff(0.01, 0.5), 3)
    )


async def test_key_survives_restart(redis_server: RedisServer) -> None:
    client = retrying_client(redis_server.url)
    try:
        await client.set("greeting", "hello")
        port = redis_server.port

        redis_server.restart()

        assert redis_server.port == port
        assert await client.get("greeting") == "hello"
    finally:
        await client.aclose()


async def test_acknowledged_write_survives_kill(redis_server: RedisServer) -> None:
    client = retrying_client(redis_server.url)
    try:
        await client.set("durable", "yes")
        redis_server.kill()  # appendfsync always: acknowledged means on disk
        redis_server.start()
        assert await client.get("durable") == "yes"
    finally:
        await client.aclose()


async def test_from_url_without_retry_fails_once_after_restart(redis_server: RedisServer) -> None:
    # Documents redis-py behaviour the bot must allow for: a plain from_url() client does not
    # retry, so the first command on a stale pooled connection raises ConnectionError.
    client = redis.Redis.from_url(redis_server.url)
    try:
        await client.set("k", "v")
        redis_server.restart()
        with pytest.raises(RedisConnectionError):
            await client.get("k")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_kill_refuses_connections_until_started(redis_server: RedisServer) -> None:
    redis_server.kill()
    assert not redis_server.running

    with pytest.raises(RedisConnectionError):
        await ping(redis_server.url)

    redis_server.start()
    assert redis_server.running
    assert await ping(redis_server.url)


def test_start_failure_raises_with_log(tmp_path: Path) -> None:
    first = RedisServer(tmp_path / "first")
    second = RedisServer(tmp_path / "second")
    second.port = first.port
    first.start()
    try:
        # Port taken: redis-server exits, and `first` answering PING must not fool start().
        with pytest.raises(RuntimeError, match="Address already in use"):
            second.start()
        assert not second.running
    finally:
        second.kill()
        first.kill()


def test_without_appendonly_data_is_lost_on_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "volatile", appendonly=False)
    server.start()
    try:
        with sync_redis.Redis.from_url(server.url) as client:
            client.set("gone", "soon")
        server.restart()
        with sync_redis.Redis.from_url(server.url) as client:
            assert client.get("gone") is None
    finally:
        server.kill()
