"""Shared fixtures: a real redis-server, the Slack and OpenAI emulators, and the real bot wired to them."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.config import Settings
from bot.logs import RedactSecrets
from bot.server import SupportBot
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.redis_proxy import HeldReplyProxy
from tests.redis_server import RedisServer

RATE_SCALE = 20


def emulator_default(cls: type, parameter: str) -> str:
    """A default of an emulator's constructor, such as the token every test bot runs with."""
    return inspect.signature(cls).parameters[parameter].default


# The secrets every test bot runs with: the emulators' defaults.
EMULATOR_SECRETS = (
    emulator_default(SlackEmulator, "bot_token"),
    emulator_default(SlackEmulator, "app_token"),
    emulator_default(SlackEmulator, "signing_secret"),
    emulator_default(OpenAIEmulator, "api_key"),
)
# Token shapes the scan looks for; a little broader than bot.logs' own patterns, since the point is
# to catch what the filter misses.
TOKEN_SHAPES = re.compile(r"xox[a-z]-[A-Za-z0-9]|xapp-[A-Za-z0-9]|(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{6,}")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as bot.logs.configure_logging


class _RedactedLogFile(logging.FileHandler):
    """Writes records as production does (RedactSecrets on the handler), filtering a copy so that
    other handlers, such as caplog's, still see each record as it was logged."""

    def handle(self, record: logging.LogRecord) -> bool:
        return bool(super().handle(copy.copy(record)))


@pytest.fixture(scope="session", autouse=True)
def session_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record of the session, at DEBUG, through the bot's secret filter into one file;
    the session fails at the end if a secret or anything token-shaped got through."""
    path = tmp_path_factory.mktemp("logs") / "session.log"
    handler = _RedactedLogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactSecrets(EMULATOR_SECRETS))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield path
    root.setLevel(level)
    attached = handler in root.handlers
    root.removeHandler(handler)
    handler.close()
    if not attached:
        pytest.fail(f"a test removed the session's log handler, so {path} misses the rest of the logs")
    leaks = [
        f"{path}:{number}: {', '.join(found)}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if (found := [s for s in EMULATOR_SECRETS if s in line] + TOKEN_SHAPES.findall(line))
    ]
    if leaks:
        pytest.fail("secrets in the session's log output:\n" + "\n".join(leaks[:20]))


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = 10.0
) -> None:
    """Poll `condition` (a plain check, or one that awaits: a Redis read) until it holds; fail
    naming `what` after `within` seconds. What a test waits for to have happened, instead of a
    guessed time that a busy machine outlasts (`SlackEmulator.wait_for` adds the bot's calls)."""
    deadline = time.monotonic() + within
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; a test that cannot start it fails, never skips."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    return redis_server.url


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[HeldReplyProxy]:
    """A proxy in front of the test's Redis (see tests/redis_proxy.py); it passes everything on
    until the test says which script's replies to hold. Asked for before `start_bot`, it outlives
    the bots that use it."""
    proxy = HeldReplyProxy(redis_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def other_redis_proxy(redis_url: str) -> AsyncIterator[HeldReplyProxy]:
    """A second proxy like `redis_proxy`, for a second process to be faulted on its own: a
    stall holds every process that reaches Redis through the proxy."""
    proxy = HeldReplyProxy(redis_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def slack() -> AsyncIterator[SlackEmulator]:
    emulator = SlackEmulator()
    emulator.add_user("U1", "ann")
    emulator.add_user("U2", "bob")
    emulator.add_user("U3", "cem")
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def llm() -> AsyncIterator[OpenAIEmulator]:
    emulator = OpenAIEmulator()
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture(params=["socket", "http"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@dataclass
class RunningBot:
    bot: SupportBot
    port: int
    mode: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def settle(self, grace_seconds: float = 10.0) -> None:
        """Wait until every turn the bot has started is finished."""
        assert self.bot.turns is not None
        await self.bot.turns.drain(grace_seconds)


def bot_env(
    slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str, mode: str, port: int
) -> dict[str, str]:
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": llm.api_key,
        "OPENAI_MODEL": "test-model",
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LLM_RETRY_BASE_SECONDS": "0.05",
        "LLM_RETRY_MAX_SECONDS": "1",
        "LLM_TIMEOUT_SECONDS": "5",
        "SYSTEM_PROMPT": "You are the test support bot.",
        # Abuse limits are tested on their own; elsewhere they would only get in the way.
        "RATE_LIMIT_USER_PER_MINUTE": "100000",
        "RATE_LIMIT_USER_PER_DAY": "100000",
        "RATE_LIMIT_CHANNEL_PER_MINUTE": "100000",
        # Slack's rate budgets, twenty times over: a minute of Slack plays in three seconds.
        "SLACK_RATE_LIMIT_SCALE": str(RATE_SCALE),
    }
    if mode == "socket":
        env["SLACK_APP_TOKEN"] = slack.app_token
    else:
        env["SLACK_SIGNING_SECRET"] = slack.signing_secret
    return env


StartBot = Callable[..., Awaitable[RunningBot]]


@pytest.fixture
async def start_bot(slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str) -> AsyncIterator[StartBot]:
    """Start the real bot against the emulators; `await start_bot(mode, **env_overrides)`."""
    started: list[RunningBot] = []

    async def start(mode: str = "socket", **overrides: str) -> RunningBot:
        port = free_port()
        env = bot_env(slack, llm, redis_url, mode, port) | overrides
        bot = SupportBot(Settings.from_env(env), env["REDIS_URL"])
        await bot.start()
        running = RunningBot(bot, port, mode)
        started.append(running)
        if mode == "socket":
            await slack.wait_for_socket()
            slack.use_socket()
        else:
            slack.use_http(f"{running.url}/slack/events")
        return running

    yield start
    for running in started:
        await running.bot.stop(grace_seconds=5)


@pytest.fixture
async def bot(start_bot: StartBot, mode: str) -> RunningBot:
    """The bot in each mode (the test runs once with Socket Mode, once with HTTP mode)."""
    return await start_bot(mode)


@pytest.fixture
def tmp_redis_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis"
    path.mkdir()
    return path
