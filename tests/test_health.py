"""GET /health: 200 when Redis answers (and the socket is up), 503 naming the failing part."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.conftest import StartBot
from tests.emulators.slack import SlackEmulator
from tests.redis_server import RedisServer


async def get_health(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        return response.status, await response.json()


async def wait_for_health(url: str, status: int, within: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        got, body = await get_health(url)
        if got == status:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/health stayed {got} {body}, wanted {status}")
        await asyncio.sleep(0.1)


async def test_health_follows_redis_down_and_back(
    start_bot: StartBot, slack: SlackEmulator, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        running = await start_bot("http", REDIS_URL=redis_server.url)
        status, body = await get_health(running.url)
        assert status == 200
        assert body["status"] == "ok" and body["checks"]["redis"] == "ok"

        redis_server.kill()
        body = await wait_for_health(running.url, 503, within=5)
        assert body["failing"] == ["redis"]

        redis_server.start()
        body = await wait_for_health(running.url, 200)
        assert body["checks"]["redis"] == "ok"
    finally:
        redis_server.stop()


async def test_health_in_socket_mode_reports_the_socket(start_bot: StartBot, slack: SlackEmulator) -> None:
    running = await start_bot("socket")
    status, body = await get_health(running.url)
    assert status == 200
    assert body["mode"] == "socket" and body["checks"]["slack_socket"] == "ok"
    assert slack.bot_token not in str(body) and slack.app_token not in str(body)
