"""Redis commands of concurrent turns sent together (bot/pipelining.py), against a real redis-server."""

from __future__ import annotations

import asyncio
import gc
import socket

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.pipelining import BATCHES_IN_FLIGHT, CommandBatcher
from tests.redis_proxy import HeldReplyProxy

COUNT_AND_ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"


@pytest.fixture
async def client(redis_url: str):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=1000)
    yield client
    await client.aclose()


async def test_each_caller_gets_its_own_reply_or_error(client: aioredis.Redis) -> None:
    batcher = CommandBatcher(client)
    sets = [batcher.submit("SET", f"k{i}", f"v{i}") for i in range(300)]
    assert await asyncio.gather(*sets) == [True] * 300
    gets = [batcher.submit("GET", f"k{i}") for i in range(300)]
    wrong = batcher.submit("INCR", "k7")  # not a number: this caller alone gets the error
    assert await asyncio.gather(*gets) == [f"v{i}" for i in range(300)]
    with pytest.raises(ResponseError):
        await wrong
    await batcher.close()


async def test_hundreds_of_callers_share_a_few_connections(client: aioredis.Redis, redis_url: str) -> None:
    batcher = CommandBatcher(client)
    watcher = aioredis.Redis.from_url(redis_url)
    try:
        before = len(await watcher.client_list())
        await asyncio.gather(*(batcher.execute("INCR", "counter") for _ in range(2000)))
        assert await client.get("counter") == "2000"
        assert len(await watcher.client_list()) - before <= BATCHES_IN_FLIGHT
    finally:
        await watcher.aclose()
        await batcher.close()


async def test_a_script_redis_forgot_is_loaded_once_for_all_who_need_it(client: aioredis.Redis) -> None:
    batcher = CommandBatcher(client)
    script = client.register_script(COUNT_AND_ECHO)
    await client.script_flush()  # as after a restart of Redis
    loads_before = await script_loads(client)
    replies = await asyncio.gather(*(batcher.run_script(script, ["runs"], [str(i)]) for i in range(200)))
    assert replies == [str(i) for i in range(200)]
    assert await client.get("runs") == "200"  # each ran once: none was lost or run twice
    assert await script_loads(client) - loads_before == 1
    await batcher.close()


async def script_loads(client: aioredis.Redis) -> int:
    """SCRIPT LOAD calls Redis has served so far."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


async def test_closing_waits_for_batches_on_their_way(client: aioredis.Redis) -> None:
    batcher = CommandBatcher(client)
    sent = [batcher.submit("INCR", "closing") for _ in range(50)]
    await batcher.close()
    assert [future.result() for future in sent] == list(range(1, 51))


async def test_a_batch_redis_does_not_answer_in_time_fails_and_the_next_gets_its_own_reply(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, retry=Retry(NoBackoff(), 0))
    batcher = CommandBatcher(client, timeout_seconds=0.2)
    try:
        await batcher.execute("SET", "before", "1")  # a kept connection, in step
        await client.execute_command("CLIENT", "PAUSE", "600", "ALL")
        with pytest.raises(RedisTimeoutError):
            await batcher.execute("GET", "before")
        await asyncio.sleep(0.6)  # the pause is over; the late reply must not reach a new caller
        assert await asyncio.gather(
            batcher.execute("SET", "after", "2"), batcher.execute("GET", "before")
        ) == [
            True,
            "1",
        ]
        assert await batcher.execute("GET", "after") == "2"
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_batch_to_a_host_that_takes_the_connection_and_never_answers_fails_in_its_time() -> None:
    """A listener that never accepts: Linux completes the TCP handshake for it all the same (its
    backlog), so the connection opens and nothing ever answers, as with a hung Redis or a proxy
    without its backend. A new connection's own handshake (redis-py's CLIENT SETINFO) had no bound
    (batch connections have no socket timeout): the batch waited for ever. Its replies are bounded
    now by the pool's socket timeout, or without one (here) by the batch's deadline."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host, port = listener.getsockname()
        client = aioredis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0))
        batcher = CommandBatcher(client, timeout_seconds=0.2)
        try:
            with pytest.raises(RedisTimeoutError):
                # Only so that the failure shows in a run: it waited for ever before.
                async with asyncio.timeout(10):
                    await batcher.execute("GET", "anything")
        finally:
            await batcher.close(wait_seconds=0)
            await client.aclose()


async def test_batches_that_fail_keep_no_connection_behind() -> None:
    """Redis out of reach: every batch fails after its tries. Each such batch kept the connection
    it had taken, for good, and the next opened another: a beat a second through a day's outage
    left tens of thousands behind."""
    with socket.socket() as nobody:  # a port with nothing listening: connections refused
        nobody.bind(("127.0.0.1", 0))
        _, port = nobody.getsockname()
    client = aioredis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    batcher = CommandBatcher(client)
    try:
        for _ in range(20):
            with pytest.raises(RedisConnectionError):
                await batcher.execute("GET", "anything")
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, Connection) and o.port == port]
        assert len(kept) <= 1, len(kept)  # the last failure's, which pytest.raises holds on to
    finally:
        await batcher.close(wait_seconds=0)
        await client.aclose()


async def test_a_command_whose_caller_gave_up_before_its_batch_left_is_not_sent(
    client: aioredis.Redis,
) -> None:
    """A caller cancelled before the batch leaves (a stop ending the beats, say) is gone: its
    command was sent all the same, and ran after what the caller went on to do."""
    batcher = CommandBatcher(client)
    given_up = batcher.submit("INCR", "given-up")
    given_up.cancel()
    assert await batcher.execute("GET", "given-up") is None
    await batcher.close()


class _CallerGivesUpBeforeTheRetry(AbstractBackoff):
    """redis-py's wait between tries, with no wait: the caller gives up in it instead (the store's
    backoff waits up to half a second there, a stop cancelling its beat meanwhile, say)."""

    def __init__(self) -> None:
        self.give_up: asyncio.Future[object] | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> _CallerGivesUpBeforeTheRetry:
        return self  # each connection copies its retry: this one is shared

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        if self.give_up is not None:
            self.give_up.cancel()
        return 0


async def test_a_command_whose_caller_gave_up_while_its_batch_waited_to_go_again_is_not_sent(
    redis_proxy: HeldReplyProxy, redis: aioredis.Redis
) -> None:
    """The batch's connection drops with its request (a Redis restart); its caller gives up during
    the wait before the batch goes again. The commands of callers that gave up were taken out as
    the try failed, before that wait: this one went again all the same, and ran."""
    backoff = _CallerGivesUpBeforeTheRetry()
    client = aioredis.Redis.from_url(redis_proxy.url, retry=Retry(backoff, 1))
    batcher = CommandBatcher(client)

    async def nothing() -> None:
        pass

    redis_proxy.hold_request("given-up", nothing, drop=True)
    try:
        backoff.give_up = batcher.submit("INCR", "given-up")
        kept = batcher.submit("INCR", "kept")
        assert await kept == 1
        assert redis_proxy.requests_held == 1
        assert await redis.get("given-up") is None
    finally:
        await batcher.close()
        await client.aclose()


async def test_a_command_with_an_argument_redis_cannot_take_fails_alone(client: aioredis.Redis) -> None:
    batcher = CommandBatcher(client)
    good = batcher.submit("SET", "fine", "1")
    bad = batcher.submit("SET", "broken", None)  # a caller's bug: None is no Redis value
    also_good = batcher.submit("GET", "fine")
    assert await good is True
    with pytest.raises(DataError):
        await bad
    assert await also_good == "1"
    await batcher.close()
