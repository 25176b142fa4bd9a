"""The test proxy's stall (tests/redis_proxy.py), against the test's redis-server: a request that
runs a stalled script does not reach Redis until let go, however the client's bytes are cut into
reads, whatever else shares its write, and by EVAL (the script's body) as by EVALSHA."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio import Redis

from tests.conftest import wait_until
from tests.redis_proxy import HeldReplyProxy

SCRIPT = "return redis.call('INCR', KEYS[1])"


async def _connect(proxy: HeldReplyProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.url.removeprefix("redis://").split("/")[0].split(":")
    return await asyncio.open_connection(host, int(port))


async def _replies(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """`count` one-line replies (integers, statuses, errors)."""
    return [await asyncio.wait_for(reader.readline(), 10) for _ in range(count)]


async def _counted(redis: Redis, key: str) -> int:
    return int(await redis.get(key) or 0)


async def test_a_stalled_script_whose_sha_is_cut_across_two_reads_waits_until_let_go(
    redis_proxy: HeldReplyProxy, redis: Redis
) -> None:
    script = redis.register_script(SCRIPT)
    await script(keys=["cut"])  # loaded, and counted once
    released = redis_proxy.stall(script)
    reader, writer = await _connect(redis_proxy)
    request = pack_command(("EVALSHA", script.sha, 1, "cut"))
    middle = request.index(script.sha.encode()) + 20
    writer.write(request[:middle])
    await writer.drain()
    await wait_until(lambda: redis_proxy.requested(script.sha[:20]), "the first part to reach the proxy")
    writer.write(request[middle:])
    await writer.drain()
    await wait_until(lambda: redis_proxy.stalled == 1, "the request to be stalled")
    assert await _counted(redis, "cut") == 1  # not run
    released.set()
    assert await _replies(reader, 1) == [b":2\r\n"]
    writer.close()


async def test_a_stalled_script_holds_what_shares_its_write_in_order(
    redis_proxy: HeldReplyProxy, redis: Redis
) -> None:
    script = redis.register_script(SCRIPT)
    await script(keys=["batch"])
    released = redis_proxy.stall(script)
    reader, writer = await _connect(redis_proxy)
    writer.write(
        pack_command(("INCR", "before"))
        + pack_command(("EVALSHA", script.sha, 1, "batch"))
        + pack_command(("INCR", "after"))
    )
    await writer.drain()
    await wait_until(lambda: redis_proxy.stalled == 1, "the write to be stalled")
    assert (await _counted(redis, "before"), await _counted(redis, "batch")) == (0, 1)
    released.set()
    assert await _replies(reader, 3) == [b":1\r\n", b":2\r\n", b":1\r\n"]
    writer.close()


async def test_a_stalled_script_sent_by_eval_with_its_body_is_stalled_too(
    redis_proxy: HeldReplyProxy, redis: Redis
) -> None:
    """The bot's fallback after NOSCRIPT twice (bot/pipelining.py) sends EVAL with the script's
    body, which carries no SHA."""
    script = redis.register_script(SCRIPT)
    released = redis_proxy.stall(script)
    reader, writer = await _connect(redis_proxy)
    request = pack_command(("EVAL", SCRIPT, 1, "body"))
    middle = request.index(b"INCR")
    for part in (request[:middle], request[middle:]):  # the body cut across two reads
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    await wait_until(lambda: redis_proxy.stalled == 1, "the EVAL to be stalled")
    assert redis_proxy.stalled_on(script) == 1
    assert await _counted(redis, "body") == 0
    released.set()
    assert await _replies(reader, 1) == [b":1\r\n"]
    # Stalled again: the next request on the connection, which runs no script, is not held for
    # the body at the end of the read before.
    redis_proxy.stall(script)
    writer.write(pack_command(("INCR", "other")))
    await writer.drain()
    assert await _replies(reader, 1) == [b":1\r\n"]
    assert redis_proxy.stalled == 1
    writer.close()


async def test_a_stalled_request_whose_client_gave_up_never_reaches_redis(
    redis_proxy: HeldReplyProxy, redis: Redis
) -> None:
    script = redis.register_script(SCRIPT)
    await script(keys=["gone"])
    released = redis_proxy.stall(script)
    _, writer = await _connect(redis_proxy)
    writer.write(pack_command(("EVALSHA", script.sha, 1, "gone")))
    await writer.drain()
    await wait_until(lambda: redis_proxy.stalled == 1, "the request to be stalled")
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: not redis_proxy._pumps, "the proxy to drop the connection")
    released.set()
    # A client's retry, on a new connection, runs it once.
    client = aioredis.Redis.from_url(redis_proxy.url)
    try:
        assert await client.evalsha(script.sha, 1, "gone") == 2
    finally:
        await client.aclose()
    assert await _counted(redis, "gone") == 2


async def test_a_proxy_stopped_while_it_stalls_a_request_closes_its_connection(
    redis_url: str, redis: Redis
) -> None:
    proxy = HeldReplyProxy(redis_url)
    await proxy.start()
    script = redis.register_script(SCRIPT)
    await script(keys=["stopped"])
    proxy.stall(script)
    reader, writer = await _connect(proxy)
    writer.write(pack_command(("EVALSHA", script.sha, 1, "stopped")))
    await writer.drain()
    await wait_until(lambda: proxy.stalled == 1, "the request to be stalled")
    await asyncio.wait_for(proxy.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    assert await _counted(redis, "stopped") == 1
    writer.close()
