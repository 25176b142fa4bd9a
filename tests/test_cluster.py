"""REDIS_URL may name nodes of a Redis Cluster: every key of the bot lives in one hash slot, on
whichever primary serves it, and the bot follows that slot across failovers, conversations
included. A URL whose form does not match the Redis it names stops the bot with one line."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bot.pipelining import CommandBatcher
from bot.redis_url import CLUSTER_KEY_PREFIX, connection_pool
from bot.store import IncomingMessage, Store, ThreadKey, Turn
from tests.conftest import RunningBot, StartBot, bot_env, free_port
from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.slack import SlackEmulator
from tests.redis_server import ClusterNode, RedisCluster
from tests.test_admin import admin
from tests.test_app import run_app

CHANNEL = "C910"
BOT = "UBOT"
FAILOVER_TIMEOUT = 20.0
SLOT = key_slot(CLUSTER_KEY_PREFIX.encode())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """Three primaries and a replica of the one that serves the bot's slot, real processes."""
    cluster = RedisCluster(tmp_path / "cluster", slot=SLOT)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def keys_on(node: ClusterNode) -> list[str]:
    with node.client() as client:
        return sorted(client.scan_iter(count=1000))


def prompt_of_last_call(llm: OpenAIEmulator) -> str:
    return " ".join(str(m.get("content")) for m in llm.requests[-1]["messages"])


async def ask(
    slack: SlackEmulator, llm: OpenAIEmulator, running: RunningBot, text: str, root: str | None, count: int
) -> str:
    """Post a message (a new thread mentioning the bot when `root` is None) and wait for the
    bot's `count`th reply."""
    posted = await slack.post_user_message(CHANNEL, text if root else f"<@{BOT}> {text}", thread_ts=root)
    root = root or posted
    replies = await slack.wait_for_bot_messages(CHANNEL, root, count=count, timeout=FAILOVER_TIMEOUT)
    assert len(replies) == count
    await running.settle()
    # Answered by the model, not with "temporarily unavailable": Redis took the message.
    assert text in prompt_of_last_call(llm), replies[-1]
    return root


@pytest.mark.slow
async def test_the_bot_keeps_its_keys_in_one_slot_on_the_primary_that_serves_it(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, cluster: RedisCluster
) -> None:
    # Seeded with a node that does not serve the slot: the bot must ask where it is.
    stranger = next(node for node in cluster.primaries if node is not cluster.owner)
    running = await start_bot("http", REDIS_URL=cluster.seed_url(stranger))

    root = await ask(slack, llm, running, "the deploy of billing-api is stuck", None, 1)
    await ask(slack, llm, running, "it says 'waiting for lock'", root, 2)
    assert "billing-api is stuck" in prompt_of_last_call(llm)

    names = keys_on(cluster.owner)
    assert any(name.endswith(f"conv:T1:{CHANNEL}:{root}:turns") for name in names), names
    assert all(name.startswith(CLUSTER_KEY_PREFIX) for name in names), names
    for node in cluster.primaries:
        if node is not cluster.owner:
            assert keys_on(node) == []

    # The admin side (SCAN for conversations, a whole one read back) finds them through the prefix.
    store = Store(cluster.seed_url(stranger), conversation_ttl_days=1)
    try:
        thread = ThreadKey("T1", CHANNEL, root)
        assert await store.conversation_keys() == [thread]
        stored = await store.stored_conversation(thread)
        assert stored is not None and [turn.role for turn in stored.turns] == ["user", "assistant"] * 2
    finally:
        await store.close()


@pytest.mark.slow
async def test_the_bot_follows_its_slot_across_a_handover_and_a_crash(
    start_bot: StartBot, slack: SlackEmulator, llm: OpenAIEmulator, cluster: RedisCluster
) -> None:
    first_primary, replica = cluster.owner, cluster.replica
    running = await start_bot("http", REDIS_URL=cluster.seed_url(first_primary))
    root = await ask(slack, llm, running, "the deploy of billing-api is stuck", None, 1)

    # A handover (CLUSTER FAILOVER, as in maintenance): the old primary lives on as a replica and
    # answers MOVED, which must send the bot's connections, batched or not, to the new one.
    first_primary.wait_for_replica()
    with replica.client() as client:
        client.execute_command("CLUSTER", "FAILOVER")
    await wait_until(lambda: replica.is_primary() and not first_primary.is_primary(), "no handover")
    await ask(slack, llm, running, "it says 'waiting for lock'", root, 2)
    assert "billing-api is stuck" in prompt_of_last_call(llm)

    # A crash: the new primary dies once its replica has everything; the other primaries vote
    # the old one back in, and the bot finds it again.
    replica.wait_for_replica()
    replica.kill()
    await wait_until(first_primary.is_primary, "no failover after the crash")
    await ask(slack, llm, running, "and now the lock is gone", root, 3)
    prompt = prompt_of_last_call(llm)
    assert "billing-api is stuck" in prompt and "waiting for lock" in prompt and "lock is gone" in prompt


async def wait_until(condition: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FAILOVER_TIMEOUT
    while loop.time() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except Exception:  # a node that is going down mid-question: ask again
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} within {FAILOVER_TIMEOUT}s")


NODE_AS_ONE_REDIS = (
    "error: REDIS_URL names a node of a Redis Cluster: write it "
    "redis+cluster://host:port[,host:port…] (rediss+cluster:// for TLS)"
)


async def app_error(slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str, cwd: Path) -> str:
    """What `python app.py` prints as it stops with REDIS_URL=`redis_url` (it must stop, exit 2)."""
    process = await run_app(bot_env(slack, llm, redis_url, "http", free_port()), cwd)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    return stderr.decode().strip()


async def test_a_cluster_node_given_as_one_redis_stops_the_bot_with_one_line(
    tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, cluster: RedisCluster
) -> None:
    assert await app_error(slack, llm, cluster.owner.url, tmp_path) == NODE_AS_ONE_REDIS


async def test_a_cluster_url_for_one_redis_stops_the_bot_with_one_line(
    tmp_path: Path, slack: SlackEmulator, llm: OpenAIEmulator, redis_url: str
) -> None:
    as_cluster = redis_url.replace("redis://", "redis+cluster://").removesuffix("/0")
    assert await app_error(slack, llm, as_cluster, tmp_path) == (
        "error: REDIS_URL is a redis+cluster:// URL but that Redis is not a cluster node: "
        "write it redis://host:port (or rediss://)"
    )


def test_the_admin_commands_read_a_cluster_and_name_a_node_given_as_one_redis(
    tmp_path: Path, cluster: RedisCluster
) -> None:
    stats = admin(cluster.seed_url(cluster.owner), "stats", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert "conversations" in stats.stdout
    wrong = admin(cluster.owner.url, "stats", cwd=tmp_path)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == NODE_AS_ONE_REDIS


async def test_a_batch_sends_on_only_the_commands_a_node_refused(cluster: RedisCluster) -> None:
    """Commands for a slot the node does not serve come back MOVED in the middle of a batch: they
    go on to the node named, in their order, and the commands around them are not run again."""
    elsewhere = next(f"{{x{i}}}" for i in range(1000) if not _served_by(cluster.owner, cluster, f"{{x{i}}}"))
    pool, _ = connection_pool(cluster.seed_url(cluster.owner), decode_responses=True, protocol=2)
    client = aioredis.Redis.from_pool(pool)
    batcher = CommandBatcher(client)
    try:
        ours = [f"{CLUSTER_KEY_PREFIX}{n}" for n in range(3)]
        replies = await asyncio.gather(
            batcher.submit("INCR", ours[0]),
            batcher.submit("INCR", f"{elsewhere}:a"),
            batcher.submit("INCR", f"{elsewhere}:a"),
            batcher.submit("INCR", ours[1]),
            batcher.submit("INCR", f"{elsewhere}:b"),
            batcher.submit("INCR", ours[2]),
        )
        assert replies == [1, 1, 2, 1, 1, 1]
    finally:
        await batcher.close()
        await client.aclose()
    with cluster.owner.client() as owner:
        assert [owner.get(name) for name in ours] == ["1", "1", "1"]
    other = next(node for node in cluster.primaries if _served_by(node, cluster, elsewhere))
    with other.client() as node:
        assert [node.get(f"{elsewhere}:a"), node.get(f"{elsewhere}:b")] == ["2", "1"]


def _served_by(node: ClusterNode, cluster: RedisCluster, tag: str) -> bool:
    first, last = cluster.ranges[cluster.primaries.index(node)]
    return first <= key_slot(tag.encode()) <= last


async def test_the_scripts_that_declare_every_key_run_on_a_cluster(cluster: RedisCluster) -> None:
    """The answers index, `forget me` (its journals declared after a read of the person's turns,
    and those of their messages still waiting after a read of the inboxes) and the scan for
    orphaned threads (each lock declared after the waiting threads are read), against a real
    cluster, seeded with a node that does not serve the bot's slot."""
    stranger = next(node for node in cluster.primaries if node is not cluster.owner)
    store = Store(cluster.seed_url(stranger), conversation_ttl_days=1)
    dm = ThreadKey("T1", "D910", "dm")
    try:
        for i in range(3):
            asked = IncomingMessage("T1", "D910", f"1.{i}", "U1", "q", "answer", None, "dm", BOT, True)
            question = Turn("user", f"question {i}", asked.ts, "U1")
            await store.record_progress(asked, turns=(question,), state="working")
            answer = Turn("assistant", f"answer {i}", f"2.{i}", reply_to=asked.ts)
            await store.record_progress(asked, turns=(answer,), state="answered")
        assert await store.answers_to(dm, "1.1") == ["2.1"]
        assert await store.remove_user_message(dm, "1.1")
        assert await store.answers_to(dm, "1.1") == []

        waiting = IncomingMessage("T1", CHANNEL, "3.1", "U1", "hi", "answer", "3.1", "3.1", BOT)
        await store.accept(waiting, "dead0:token")
        await store.leave("dead0")
        assert await store.threads_orphaned(0) == [waiting.key]

        forgotten = await store.forget_user("T1", "U1")
        assert (forgotten.messages, forgotten.conversations) == (4, 1)
        assert await store.recent_turns(dm, 10) == []
        with cluster.owner.client() as owner:
            assert owner.hget(f"{CLUSTER_KEY_PREFIX}turn:T1:D910:1.0", "state") == "answered"
            assert owner.hget(f"{CLUSTER_KEY_PREFIX}turn:T1:{CHANNEL}:3.1", "forgotten") == "1"
    finally:
        await store.close()
    for node in cluster.primaries:
        if node is not cluster.owner:
            assert keys_on(node) == []
