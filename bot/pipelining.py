"""Redis commands from many turns at once, sent together.

Hundreds of turns in flight each send a command or two at the same moment. Sent one by one, each
takes a pooled connection, a write, a read and a wake-up of its own: about 0.1–0.15 ms of this
process's CPU a command, most of a turn's Redis cost. Here every command joins a batch that
leaves on the next pass of the event loop as one pipeline on one connection (about 0.03 ms a
command), and its caller gets its own reply or error, as if it had been sent alone. A batch is not
a transaction: steps that must be atomic are Lua scripts, which batch like any command.

A few batches may be on their way at once; commands that arrive meanwhile wait for the next one,
so under load a batch grows to whatever arrived while the last was on the wire.

Each batch in flight has a connection of its own, kept for the next batch rather than taken from
redis-py's pool and given back: the pool's bookkeeping (a condition, a timeout, metrics hooks, a
health check) cost more of this process's CPU than a small batch's own exchange. The kept
connections have no socket timeout of their own, because with one redis-py sends every write
through `asyncio.wait_for`, a task per write; a batch has one deadline for its whole exchange
instead. Commands are packed by hiredis (C); redis-py's asyncio client packs them in Python, about
50 µs for a script call with a message in it on a slow machine, against 9.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import redis.asyncio as redis
from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# Batches on the wire at once, each on its own connection. Enough to keep latency at one round
# trip under load; more would only split batches that are cheaper whole.
BATCHES_IN_FLIGHT = 8
CLOSE_WAIT_SECONDS = 5.0  # on shutdown, for batches on their way (a Redis that went away)
# One batch's write and replies, before its connection is dropped and the batch is tried again (as
# redis-py does on a socket timeout). Scripts here take milliseconds; a batch of hundreds, tens.
BATCH_TIMEOUT_SECONDS = 5.0
# Times a command refused with MOVED (a cluster failover) is sent on to the slot's new primary.
MOVED_RETRIES = 3

_Queued = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class CommandBatcher:
    def __init__(
        self,
        client: redis.Redis,
        *,
        in_flight: int = BATCHES_IN_FLIGHT,
        timeout_seconds: float = BATCH_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        self.in_flight = in_flight
        self.timeout_seconds = timeout_seconds
        pool = client.connection_pool
        # The pool's settings (address, TLS, credentials, retries, health checks), but not its
        # bookkeeping; the batch's deadline stands in for the socket timeout, but for a new
        # connection's opening (`_open`).
        self._connection_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._opening_timeout = pool.connection_kwargs.get("socket_timeout") or timeout_seconds
        self._connection_class = pool.connection_class
        self._idle: list[AbstractConnection] = []
        self._connections: set[AbstractConnection] = set()
        self._queue: list[_Queued] = []
        self._flying: set[asyncio.Task[None]] = set()
        self._next: asyncio.Task[None] | None = None  # the batch that takes the queue when it runs
        self._loading: dict[str, asyncio.Future[Any]] = {}  # scripts being loaded, by sha

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command (`"HGET", key, field`); the future holds its reply or its error.
        Commands submitted before the caller next awaits go out in the same batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, future))
        if self._next is None and len(self._flying) < self.in_flight:
            self._start_batch()
        return future

    async def execute(self, *args: Any) -> Any:
        return await self.submit(*args)

    async def run_script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """EVALSHA in a batch. A Redis that does not know the script yet (a fresh start, a restart)
        gets it loaded once, however many turns found it missing at the same moment."""
        try:
            return await self.submit("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._load(script)
        try:
            return await self.submit("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Loaded where this call did not go: in a cluster failover under way, on the old
            # primary (now a replica, whose scripts never reach the new one). EVAL takes the
            # script along, wherever the call is sent, and leaves it cached there.
            return await self.submit("EVAL", script.script, len(keys), *keys, *args)

    async def _load(self, script: AsyncScript) -> None:
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = asyncio.ensure_future(self.client.script_load(script.script))
            self._loading[script.sha] = loading
            loading.add_done_callback(lambda _: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    async def close(self, wait_seconds: float = CLOSE_WAIT_SECONDS) -> None:
        """Let the batches on their way finish (their callers are waiting for them), for at
        most `wait_seconds`; what is still waiting then fails with CancelledError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while (self._flying or self._queue) and (remaining := deadline - loop.time()) > 0:
            if self._flying:
                await asyncio.wait(list(self._flying), timeout=remaining)
            else:
                await asyncio.sleep(0)  # the next batch leaves on this pass of the loop
        for task in list(self._flying):
            task.cancel()
        for _, future in self._queue:
            future.cancel()
        self._queue = []
        for connection in list(self._connections):
            # Without waiting for the close to be acknowledged: a Redis that does not answer
            # must not hold a stop past its deadline.
            await connection.disconnect(nowait=True)
        self._connections.clear()
        self._idle.clear()

    def _start_batch(self) -> None:
        """A batch that leaves when its task first runs, on the next pass of the loop, with every
        command submitted until then. (Started from a callback, as until 2 Dec 2026, it left a
        pass later: in a burst, when a pass of the loop takes a hundred milliseconds or more,
        that was most of a round trip.)"""
        task = asyncio.get_running_loop().create_task(self._next_batch())
        self._next = task
        self._flying.add(task)
        task.add_done_callback(self._sent)

    async def _next_batch(self) -> None:
        self._next = None
        batch, self._queue = self._queue, []
        if batch:
            await self._send_batch(batch)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        if task is self._next:  # cancelled before it ran
            self._next = None
        if self._queue and self._next is None and len(self._flying) < self.in_flight:
            self._start_batch()

    async def _send_batch(self, queued: list[_Queued]) -> None:
        batch, packed = _packed(queued)
        if not batch:
            return
        connection: AbstractConnection | None = None
        try:
            connection = self._idle.pop() if self._idle else self._new_connection()
            for moves in range(MOVED_RETRIES + 1):
                replies = await connection.retry.call_with_retry(
                    partial(self._exchange, connection, batch, packed), lambda _: connection.disconnect()
                )
                moved = [i for i, reply in enumerate(replies) if isinstance(reply, MovedError)]
                if not moved or moves == MOVED_RETRIES:
                    break
                # A cluster's slot has a new primary (bot/redis_url.py): the commands it refused
                # were not run, so they go again, in their order, to where it is now; the others
                # ran and have their replies.
                refused = set(moved)
                ran = [i for i in range(len(batch)) if i not in refused]
                _deliver([batch[i] for i in ran], [replies[i] for i in ran])
                target = replies[moved[0]]
                log.info("redis slot moved to=%s:%s commands=%d", target.host, target.port, len(moved))
                batch, packed = [batch[i] for i in moved], [packed[i] for i in moved]
                await connection.disconnect()
            # After any failure the connection is closed (redis-py closes it on a failed read or
            # write, cancellation included) and opens again on its next use.
            self._idle.append(connection)
        except BaseException as error:  # the connection failed (after its retries), or cancelled
            if connection is not None:
                # Dropped, not kept: the next batch opens one of its own (kept, every batch that
                # failed through an outage left one behind for good).
                self._connections.discard(connection)
                await connection.disconnect(nowait=True)
            failure = error if isinstance(error, Exception) else asyncio.CancelledError()
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            if not isinstance(error, Exception):
                raise
            return
        _deliver(batch, replies)

    def _new_connection(self) -> AbstractConnection:
        connection = self._connection_class(**self._connection_kwargs)
        self._connections.add(connection)
        return connection

    async def _exchange(
        self, connection: AbstractConnection, batch: list[_Queued], packed: list[bytes]
    ) -> list[Any]:
        """Write the commands at once and read every reply, an error reply as the command's own
        result (so the connection stays in step), as redis-py's pipeline does."""
        if not _leave_out_given_up(batch, packed):
            return []  # every caller gave up
        if not connection.is_connected:
            await self._open(connection)
            if not _leave_out_given_up(batch, packed):  # while it opened
                return []
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await connection.send_packed_command(packed)
                replies: list[Any] = []
                for name in [args[0] for args, _ in batch]:
                    try:
                        replies.append(await self.client.parse_response(connection, name))
                    except ResponseError as error:
                        replies.append(error)
                return replies
        except TimeoutError:
            await connection.disconnect()  # replies may still be on their way: never reuse it
            raise RedisTimeoutError(f"no answer from Redis within {self.timeout_seconds:g} s") from None

    async def _open(self, connection: AbstractConnection) -> None:
        """Opened by its own connect(), as redis-py's pool does: a Sentinel's connection looks up
        the primary there, a cluster's the slot's (writing to an unopened one would go to
        localhost:6379). Not within the batch's deadline, which that asking can outlast: each
        Sentinel or node asked has bounds of its own, 5 s for a reply, and with a hung one named
        first (counted in the deadline) no batch could go out at all. Its handshake's replies are
        bounded by the pool's socket timeout instead, as on the pool's own connections (with none,
        a host that took the connection and never answered held the batch for ever)."""
        connection.socket_timeout = self._opening_timeout
        try:
            await connection.connect()
        finally:
            connection.socket_timeout = None  # the batch's deadline, from here on


def _leave_out_given_up(batch: list[_Queued], packed: list[bytes]) -> bool:
    """Before a batch goes (again, after a failure and redis-py's wait): the commands whose callers
    gave up (cancelled) taken out, in place. Sent again, such a command would land whenever the
    retry did, after what its caller went on to do: a stop's beat, cut off with its connection by
    a Redis restart, made the stopped process alive again after its leave, for 5 s. Here, not
    as the failure is handled: one whose caller gave up during that wait went all the same.
    False when none is left."""
    if any(future.done() for _, future in batch):
        kept = [i for i, (_, future) in enumerate(batch) if not future.done()]
        batch[:], packed[:] = [batch[i] for i in kept], [packed[i] for i in kept]
    return bool(batch)


def _deliver(batch: list[_Queued], replies: list[Any]) -> None:
    for (_, future), reply in zip(batch, replies, strict=True):
        if future.done():  # its caller was cancelled meanwhile
            continue
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)


def _packed(queued: list[_Queued]) -> tuple[list[_Queued], list[bytes]]:
    """The commands that could be packed, and their bytes, but for those whose callers gave up. A
    command with an argument Redis cannot take (None, say: a bug in its caller) fails on its own,
    not the batch it came with."""
    batch, packed = [], []
    for args, future in queued:
        if future.done():  # its caller gave up before the batch left (cancelled: a stop, say)
            continue
        try:
            packed.append(pack_command(args))
        except TypeError as error:
            if not future.done():
                future.set_exception(DataError(f"{args[0]}: {error}"))
            continue
        batch.append((args, future))
    return batch, packed
