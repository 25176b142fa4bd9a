"""A TCP proxy in front of the test's redis-server that, once told to (`hold`), holds back each
reply to one Lua script (found by its SHA in a request) until the test has done something of its
own: a write of another client lands exactly between that script and the caller's next command,
every time. It can also hold back one request to a script (`hold_request`), so that a command
already on the wire reaches Redis after something the test waits for, and it keeps what each
connection sent (`requested`), so that a test can wait until the code under test has reached
Redis with something. It can stall a command (`stall`): every request that carries it is held
until the test lets it go, however often the client times out and sends it again, as if Redis
were out of that client's reach. It can stand for a Redis that stops answering: its replies held
back for good (`hold_replies`), or nothing passed on either way and new connections taken but never
answered (`go_silent`), or no listener at all (`stop`: connections refused). Only the network is
touched; the code under test runs as it does against Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlparse

SHA_LENGTH = 40


class Script(Protocol):
    """A registered Lua script (redis-py's AsyncScript): its SHA, and its body."""

    sha: str
    script: str | bytes


def _markers(script: str | Script) -> tuple[bytes, tuple[bytes, ...]]:
    """A script's SHA, and what marks a request that runs it: the SHA (EVALSHA), and its body too
    when known (EVAL, which the bot falls back to after NOSCRIPT twice, carries no SHA)."""
    if isinstance(script, str):
        return script.encode(), (script.encode(),)
    body = script.script.encode() if isinstance(script.script, str) else script.script
    return script.sha.encode(), (script.sha.encode(), body)


class HeldReplyProxy:
    def __init__(self, redis_url: str) -> None:
        upstream = urlparse(redis_url)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 6379)
        self.database = upstream.path
        self.sha = b""
        self.meanwhile: Callable[[], Awaitable[None]] | None = None
        self.held = 0  # replies held back so far, each for one run of `meanwhile`
        self._held_request: tuple[bytes, Callable[[], Awaitable[None]], bool] | None = None
        self.requests_held = 0  # requests held back and then passed on
        # The stalled scripts' markers, each with its script's SHA, and the event that lets them go.
        self._stall: tuple[tuple[tuple[bytes, bytes], ...], asyncio.Event] | None = None
        self.stalled = 0  # requests held by the stall so far (some given up by their client)
        self._stalled_on: dict[bytes, int] = {}  # the same, by the SHA of the script each ran
        self.stall_replies: list[bytes] = []  # the replies to stalled commands, once let go
        self._sent: list[bytearray] = []  # what each connection sent, in full
        self._replying = asyncio.Event()  # cleared: no reply reaches a client any more
        self._replying.set()
        self._silent = False  # nothing passes either way; new connections are taken, not answered
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.database}"

    def hold(self, sha: str, meanwhile: Callable[[], Awaitable[None]] | None) -> None:
        """From now on, hold back each reply to the script `sha` until `meanwhile` has run (None:
        hold nothing)."""
        self.sha, self.meanwhile = sha.encode(), meanwhile

    def hold_request(self, sha: str, meanwhile: Callable[[], Awaitable[None]], *, drop: bool = False) -> None:
        """Hold back the next request that runs the script `sha` (with whatever its write carries
        besides) until `meanwhile` has run, then pass it on; with `drop`, close its connection
        instead, the request lost (as when Redis restarts before it reads it)."""
        self._held_request = (sha.encode(), meanwhile, drop)

    def hold_replies(self) -> None:
        """From now on, Redis runs what it is sent, but no reply reaches a client (as a Redis
        whose replies are stuck on their way)."""
        self._replying.clear()

    def go_silent(self) -> None:
        """From now on, nothing reaches Redis and no reply comes back, and a new connection is
        taken and never answered (as a host that went dark behind a load balancer)."""
        self._silent = True
        self._replying.clear()

    def stall(self, *scripts: str | Script) -> asyncio.Event:
        """From now on, hold back every request that runs one of `scripts` (registered scripts, or
        bare SHAs: then EVALSHA only) until the event returned is set: that command cannot reach
        Redis, however often its client times out and sends it again. A held request whose client
        gives up on its connection meanwhile is lost with it. Once let go, each reply to such a
        request is kept in `stall_replies` after it is passed to the client. Whatever else shares
        the request's write (the bot's batch, bot/pipelining.py) is held with it."""
        released = asyncio.Event()
        marked = []
        for script in scripts:
            sha, markers = _markers(script)
            marked += [(marker, sha) for marker in markers]
        self._stall = (tuple(marked), released)
        return released

    def stalled_on(self, script: str | Script) -> int:
        """How many requests that run `script` (or a bare SHA) the stall has held so far."""
        return self._stalled_on.get(_markers(script)[0], 0)

    def requested(self, marker: str) -> bool:
        """Whether a client sent `marker` in a request (a key, an argument) through the proxy: a
        write Redis holds back (CLIENT PAUSE WRITE) is sent all the same."""
        wanted = marker.encode()
        return any(wanted in sent for sent in self._sent)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._silent:
            await self._swallow(client_reader, client_writer)
            return
        server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        # Per connection: a request that ran the script is answered by its next array reply (a
        # NOSCRIPT error, or SCRIPT LOAD's SHA, comes before it when the script was not loaded).
        armed = asyncio.Event()
        stall_answer_due = asyncio.Event()  # a request the stall held (or would have) passed on
        pumps = {
            asyncio.create_task(self._requests(client_reader, server_writer, armed, stall_answer_due)),
            asyncio.create_task(self._replies(server_reader, client_writer, armed, stall_answer_due)),
        }
        self._pumps |= pumps
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)  # a reset connection is no news
            self._pumps -= pumps
            for writer in (server_writer, client_writer):
                writer.close()

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Take what the client sends, and answer nothing, until it hangs up."""
        sent = bytearray()
        self._sent.append(sent)
        pump = asyncio.current_task()
        assert pump is not None
        self._pumps.add(pump)
        try:
            while data := await reader.read(65536):
                sent += data
        finally:
            self._pumps.discard(pump)
            writer.close()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        armed: asyncio.Event,
        stall_answer_due: asyncio.Event,
    ) -> None:
        tail = b""  # the end of the last read: a marker may be cut across two
        sent = bytearray()
        self._sent.append(sent)
        while data := await reader.read(65536):
            sent += data
            if self._silent:
                continue
            if self.meanwhile is not None and _carries(tail, data, self.sha):
                armed.set()
            if (request := self._held_request) is not None and _carries(tail, data, request[0]):
                self._held_request = None
                await request[1]()
                self.requests_held += 1
                if request[2]:
                    return  # the connection closes (see _serve)
            stall = self._stall
            ran = (
                {sha for marker, sha in stall[0] if _carries(tail, data, marker)}
                if stall is not None
                else set()
            )
            if stall is not None and ran:
                if not stall[1].is_set():
                    self.stalled += 1
                    for sha in ran:
                        self._stalled_on[sha] = self._stalled_on.get(sha, 0) + 1
                    held = await _until_released(stall[1], reader, data)
                    if held is None:
                        return  # its client gave up on the connection: the request is lost with it
                    sent += held[len(data) :]
                    data = held
                stall_answer_due.set()
            longest = max((len(marker) for marker, _ in stall[0]), default=0) if stall is not None else 0
            tail = data[-max(SHA_LENGTH, longest - 1) :]
            writer.write(data)
            await writer.drain()

    async def _replies(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        armed: asyncio.Event,
        stall_answer_due: asyncio.Event,
    ) -> None:
        while data := await reader.read(65536):
            await self._replying.wait()
            if armed.is_set() and data.startswith(b"*") and (meanwhile := self.meanwhile) is not None:
                armed.clear()
                self.held += 1
                await meanwhile()
            writer.write(data)
            await writer.drain()
            if stall_answer_due.is_set():
                stall_answer_due.clear()
                self.stall_replies.append(data)


def _carries(tail: bytes, data: bytes, marker: bytes) -> bool:
    """Whether `data`, after `tail` (the end of the read before), carries `marker`: wholly, or its
    end (its start cut off in the read before). A marker wholly in `tail` was that read's."""
    return (tail + data).find(marker, max(0, len(tail) - len(marker) + 1)) >= 0


async def _until_released(released: asyncio.Event, reader: asyncio.StreamReader, data: bytes) -> bytes | None:
    """`data`, with whatever else the client sends meanwhile, once `released` is set; None if the
    client closes the connection first."""
    letting_go = asyncio.ensure_future(released.wait())
    more: asyncio.Future[bytes] | None = None
    try:
        while not released.is_set():
            more = asyncio.ensure_future(reader.read(65536))
            await asyncio.wait({letting_go, more}, return_when=asyncio.FIRST_COMPLETED)
            if not more.done():
                more.cancel()
                await asyncio.gather(more, return_exceptions=True)
            if more.cancelled():
                continue
            if more.exception() is not None or not (chunk := more.result()):
                return None
            data += chunk
        return data
    finally:
        # Cancelled (the proxy stops, or Redis closed the connection): no read is left behind,
        # whose error nobody would retrieve.
        letting_go.cancel()
        if more is not None and not more.done():
            more.cancel()
