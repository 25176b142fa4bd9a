"""REDIS_KEY_PREFIX keeps two bots that share one Redis apart: each writes only under its own
name, and one's record of a message never silences the other."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bot.config import ConfigError, Settings
from bot.redis_url import key_prefix
from bot.store import Accepted, IncomingMessage, Store
from tests.conftest import StartBot
from tests.emulators.slack import SlackEmulator

CHANNEL = "C920"
BOT = "UBOT"
BASE = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_APP_TOKEN": "xapp-1-abc", "OPENAI_API_KEY": "sk-abc"}


def test_the_prefix_is_the_name_and_a_colon_and_a_hash_tag_in_a_cluster() -> None:
    assert key_prefix("redis://cache:6379/0") == ""
    assert key_prefix("redis://cache:6379/0", "staging") == "staging:"
    assert key_prefix("redis+sentinel://s1/main", "staging") == "staging:"
    assert key_prefix("redis+cluster://n1:7000") == "{support-bot}:"
    assert key_prefix("redis+cluster://n1:7000", "staging") == "{staging}:"


@pytest.mark.parametrize("value", ["stag ing", "{staging}", "staging:", "-staging", "x" * 65, "bot*"])
def test_a_malformed_prefix_is_named(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(BASE | {"REDIS_KEY_PREFIX": value})
    assert str(error.value).startswith("REDIS_KEY_PREFIX is malformed: use 1 to 64 letters")
    assert (
        Settings.from_env(BASE | {"REDIS_KEY_PREFIX": "prod-2.eu_west"}).redis_key_prefix == "prod-2.eu_west"
    )


async def test_two_bots_on_one_redis_each_take_the_same_message(
    redis_url: str, redis: aioredis.Redis
) -> None:
    staging = Store(redis_url, conversation_ttl_days=1, key_prefix="staging")
    production = Store(redis_url, conversation_ttl_days=1, key_prefix="production")
    message = IncomingMessage("T1", CHANNEL, "1.1", "U1", "<@UB> hi", "answer", "1.1", "1.1", "UB")
    try:
        assert (await staging.accept(message, "token-a"))[0] is Accepted.TAKEN
        assert (await production.accept(message, "token-b"))[0] is Accepted.TAKEN
        assert (await staging.accept(message, "token-c"))[0] is Accepted.DUPLICATE  # still deduplicated
    finally:
        await staging.close()
        await production.close()
    names = [name async for name in redis.scan_iter("*")]
    assert names and all(name.startswith(("staging:", "production:")) for name in names), names


async def test_the_bot_writes_only_under_its_prefix(
    start_bot: StartBot, slack: SlackEmulator, redis: aioredis.Redis
) -> None:
    running = await start_bot("http", REDIS_KEY_PREFIX="support-eu")
    root = await slack.post_user_message(CHANNEL, f"<@{BOT}> where is my invoice?")
    await slack.wait_for_bot_messages(CHANNEL, root, count=1)
    await running.settle()
    names = [name async for name in redis.scan_iter("*")]
    assert f"support-eu:conv:T1:{CHANNEL}:{root}:turns" in names
    assert [name for name in names if not name.startswith("support-eu:")] == []
    assert await running.bot.store.conversation_keys() != []
