"""A local OpenAI-compatible Chat Completions server for tests.

It speaks the wire format the official `openai` SDK expects (JSON and SSE streaming) and can be
told, one request at a time, to misbehave: error statuses, slow first tokens, dropped
connections, hangs, truncated answers, a whole completion where a stream was asked for, or any
raw body (`Raw`, for the stream's edge cases).

    emu = OpenAIEmulator()
    await emu.start()
    emu.enqueue(Status(429, retry_after=0.2), Reply("hello"))
    client = AsyncOpenAI(base_url=emu.base_url, api_key=emu.api_key)
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "Behaviour",
    "Disconnect",
    "Hang",
    "NotStreamed",
    "OpenAIEmulator",
    "Raw",
    "Reply",
    "SlowFirstToken",
    "Status",
    "StreamTiming",
    "Truncated",
    "sse_chunk",
]

MODEL_ID = "gpt-4o-mini"
# While a Gated answer is held, an SSE comment goes out this often: a client's read timeout (the
# bot's is LLM_TIMEOUT_SECONDS, 5 s in the tests) must not end the request and retry it.
KEEP_ALIVE_SECONDS = 1.0


@dataclass(frozen=True)
class Reply:
    """Stream this exact text."""

    text: str


@dataclass(frozen=True)
class Status:
    """Answer with an OpenAI-style error body and this HTTP status."""

    status: int
    message: str = "Emulated error"
    retry_after: float | None = None  # Retry-After header, seconds (fractions allowed)
    retry_after_ms: int | None = None  # retry-after-ms header (preferred by the SDK)


@dataclass(frozen=True)
class SlowFirstToken:
    """Wait `seconds` before the first content chunk (headers go out at once)."""

    seconds: float
    text: str | None = None


@dataclass(frozen=True)
class Gated:
    """Hold the first content chunk until `opened` is set (headers go out at once): an answer in
    flight for as long as the test needs, not for a guessed time a loaded machine outlasts.
    Streamed, it sends a keep-alive comment every KEEP_ALIVE_SECONDS meanwhile, as servers do
    while a model thinks: silent, it would last only until the client's read timeout, and the
    client's retry would get a plain reply at once (the test's step then not amid the answer).
    Not streamed, nothing can go out before the answer: it holds only that long."""

    opened: asyncio.Event
    text: str | None = None


@dataclass(frozen=True)
class Disconnect:
    """Send `after_chunks` content chunks, then drop the connection (no finish, no [DONE])."""

    after_chunks: int
    text: str | None = None


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer, until the client gives up or the server stops."""


@dataclass(frozen=True)
class Truncated:
    """Stream the text, then finish with finish_reason "length"."""

    text: str


@dataclass(frozen=True)
class NotStreamed:
    """Answer with one whole chat.completion object even when a stream was asked for, as some
    compatible servers do."""

    text: str


@dataclass(frozen=True)
class Raw:
    """Send these pieces of a 200 body verbatim, one write each, `pause` seconds apart; then keep
    the connection open `linger` seconds before ending the body (with `drop`, cutting the
    connection instead, without the body's end, as a proxy that drops it does). For the stream's
    edge cases: comments, event lines, line endings, errors and malformed chunks (see `sse_chunk`)."""

    parts: tuple[str, ...]
    content_type: str = "text/event-stream"
    pause: float = 0.0
    linger: float = 0.0
    drop: bool = False

    def __init__(
        self,
        *parts: str,
        content_type: str = "text/event-stream",
        pause: float = 0.0,
        linger: float = 0.0,
        drop: bool = False,
    ) -> None:
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "content_type", content_type)
        object.__setattr__(self, "pause", pause)
        object.__setattr__(self, "linger", linger)
        object.__setattr__(self, "drop", drop)


def sse_chunk(content: str | None = None, finish_reason: str | None = None, **fields: Any) -> str:
    """One `data:` event with a chat.completion.chunk, as the real API writes it, for `Raw`."""
    chunk = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "delta": {} if content is None else {"content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        **fields,
    }
    return f"data: {json.dumps(chunk)}\n\n"


Behaviour = Reply | Status | SlowFirstToken | Gated | Disconnect | Hang | Truncated | NotStreamed | Raw


@dataclass
class StreamTiming:
    """When one streamed answer's content went out (time.monotonic()), for first-token benchmarks."""

    messages: list[dict]
    arrived_at: float
    first_content_at: float | None = None  # None until the first content chunk is written
    finished_at: float | None = None  # the finish chunk; None when the stream was cut or dropped


# (type, code) per status, as the real API reports them.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


@dataclass(frozen=True)
class _Plan:
    """What a successful-looking answer should do."""

    text: str
    finish_reason: str = "stop"
    first_delay: float = 0.0
    drop_after: int | None = None  # content chunks to send before dropping the connection
    gate: asyncio.Event | None = None  # the first content waits until it is set


def default_reply(messages: list[dict]) -> str:
    """Echo the last user message as "Answer: ..."."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return f"Answer: {_content_text(message.get('content'))}"
    return "Answer: "


def _content_text(content: Any) -> str:
    """Content is a string or a list of parts; only text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


async def _held(gate: asyncio.Event, response: web.StreamResponse) -> None:
    """Wait until `gate` is set, writing an SSE keep-alive comment every KEEP_ALIVE_SECONDS (a
    client gone away ends the wait: the write raises ConnectionError)."""
    while not gate.is_set():
        try:
            async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                await gate.wait()
        except TimeoutError:
            await response.write(b": keep-alive\n\n")


def _tokens(chars: int) -> int:
    """Rough token count: about four characters per token."""
    return math.ceil(chars / 4)


def _format_seconds(seconds: float) -> str:
    """Render 2.0 as "2" and 0.2 as "0.2", as servers send them."""
    return f"{seconds:g}"


class OpenAIEmulator:
    """An aiohttp server on 127.0.0.1 that imitates /v1/chat/completions and /v1/models."""

    def __init__(
        self,
        *,
        api_key: str = "sk-test-key",
        reply: Callable[[list[dict]], str | Behaviour] | None = None,
        chunk_delay: float = 0.0,
        first_token_delay: float = 0.0,
        chunk_chars: int = 8,
    ) -> None:
        self.api_key = api_key
        # `reply` answers a request without a queued behaviour: the text, or a behaviour such as
        # SlowFirstToken for requests it picks out (Status and Hang must be queued instead).
        self.reply: Callable[[list[dict]], str | Behaviour] = reply or default_reply
        self.chunk_delay = chunk_delay
        self.first_token_delay = first_token_delay
        self.chunk_chars = chunk_chars
        self.requests: list[dict] = []
        # The client's port for each of `requests`: a new port is a new connection.
        self.client_ports: list[int] = []
        self.in_flight = 0  # chat requests being answered right now
        self.max_in_flight = 0  # the most seen at once
        self.streams: list[StreamTiming] = []
        self.base_url = ""
        self._queue: deque[Behaviour] = deque()
        self._arrived = asyncio.Condition()  # notified on every recorded request
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on a free port; `base_url` is valid afterwards."""
        # Bound to the loop on first use, so recreate it in the loop that runs the server.
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # A short shutdown timeout so stop() cancels hanging or slow handlers promptly.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        # A big listen backlog: the real API does not refuse a burst of new connections.
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        """Stop listening and cut any request still in progress."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def forget(self) -> None:
        """Forget the requests and stream timings recorded so far (a long soak, between windows)."""
        self.requests.clear()
        self.client_ports.clear()
        self.streams.clear()

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per chat request; an empty queue means a normal reply."""
        self._queue.extend(behaviours)

    # The timeout parameter is part of the public surface tests call with.
    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until at least `count` chat requests have arrived."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"expected {count} chat requests within {timeout}s, got {len(self.requests)}"
            ) from None

    # --- handlers ---

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthorized()
        model = {"id": MODEL_ID, "object": "model", "created": 1700000000, "owned_by": "openai"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(Status(400, "We could not parse the JSON body of your request."))
        if not isinstance(body, dict):
            return self._error(Status(400, "The request body must be a JSON object."))
        self.requests.append(body)
        self.client_ports.append(request.transport.get_extra_info("peername")[1] if request.transport else 0)
        async with self._arrived:
            self._arrived.notify_all()
        if not self._authorized(request):
            # Checked before the queue so a bad key does not consume a scripted behaviour.
            return self._unauthorized()

        behaviour = self._queue.popleft() if self._queue else None
        if isinstance(behaviour, Status):
            return self._error(behaviour)
        if isinstance(behaviour, Hang):
            # Parked until stop() cancels the handler; aiohttp does not cancel it on client exit.
            await asyncio.Event().wait()

        if isinstance(behaviour, Raw):
            return await self._raw(request, behaviour)

        plan = self._plan(behaviour, body.get("messages") or [])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if body.get("stream") and not isinstance(behaviour, NotStreamed):
                return await self._stream(request, body, plan)
            return await self._complete(request, body, plan)
        finally:
            self.in_flight -= 1

    def _plan(self, behaviour: Behaviour | None, messages: list[dict]) -> _Plan:
        delay = self.first_token_delay
        match behaviour:
            case Reply(text=text):
                return _Plan(text, first_delay=delay)
            case Truncated(text=text):
                return _Plan(text, finish_reason="length", first_delay=delay)
            case NotStreamed(text=text):
                return _Plan(text, first_delay=delay)
            case SlowFirstToken(seconds=seconds, text=text):
                return _Plan(self._text(text, messages), first_delay=seconds)
            case Gated(opened=opened, text=text):
                return _Plan(self._text(text, messages), first_delay=delay, gate=opened)
            case Disconnect(after_chunks=after, text=text):
                return _Plan(self._text(text, messages), first_delay=delay, drop_after=after)
            case None:
                reply = self.reply(messages)
                if isinstance(reply, str):
                    return _Plan(reply, first_delay=delay)
                return self._plan(reply, messages)
            case _:
                raise TypeError(f"a reply cannot be {behaviour!r}: queue it with enqueue()")

    def _text(self, text: str | None, messages: list[dict]) -> str:
        if text is not None:
            return text
        reply = self.reply(messages)
        return reply if isinstance(reply, str) else default_reply(messages)

    async def _complete(self, request: web.Request, body: dict, plan: _Plan) -> web.StreamResponse:
        """Answer a non-streaming request with one chat.completion object."""
        await asyncio.sleep(plan.first_delay)
        if plan.gate is not None:
            await plan.gate.wait()
        if plan.drop_after is not None:
            return self._drop(request)
        completion = {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", MODEL_ID),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": plan.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                }
            ],
            "usage": _usage(body, plan.text),
        }
        return web.json_response(completion)

    async def _stream(self, request: web.Request, body: dict, plan: _Plan) -> web.StreamResponse:
        """Answer with SSE chat.completion.chunk events, as the real API streams them."""
        timing = StreamTiming(body.get("messages") or [], arrived_at=time.monotonic())
        self.streams.append(timing)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", MODEL_ID),
            "system_fingerprint": None,
        }
        if include_usage:
            base["usage"] = None  # the real API sends an explicit null until the usage chunk

        async def send(payload: dict | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps({**base, **payload})
            await response.write(f"data: {data}\n\n".encode())

        def choice(delta: dict, finish_reason: str | None = None) -> dict:
            return {
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            }

        size = max(1, self.chunk_chars)
        pieces = [plan.text[i : i + size] for i in range(0, len(plan.text), size)]
        try:
            await send(choice({"role": "assistant", "content": "", "refusal": None}))
            if plan.gate is not None:
                await _held(plan.gate, response)
            for index, piece in enumerate(pieces):
                if index == plan.drop_after:
                    return self._drop(request, response)
                await asyncio.sleep(plan.first_delay if index == 0 else self.chunk_delay)
                await send(choice({"content": piece}))
                timing.first_content_at = timing.first_content_at or time.monotonic()
            if plan.drop_after is not None:
                return self._drop(request, response)
            await send(choice({}, plan.finish_reason))
            timing.finished_at = time.monotonic()
            if include_usage:
                await send({"choices": [], "usage": _usage(body, plan.text)})
            await send("[DONE]")
        except ConnectionError:
            pass  # the client went away mid-stream; nothing left to tell it
        return response

    async def _raw(self, request: web.Request, raw: Raw) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": raw.content_type, "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for index, part in enumerate(raw.parts):
                await asyncio.sleep(raw.pause if index else 0)
                await response.write(part.encode())
            await asyncio.sleep(raw.linger)
        except ConnectionError:
            pass  # the client went away
        if raw.drop:
            return self._drop(request, response)
        return response

    def _drop(self, request: web.Request, response: web.StreamResponse | None = None) -> web.StreamResponse:
        """Close the socket without finishing the response (no terminating chunk)."""
        if request.transport is not None:
            # close(), not abort(): flush the chunks already written, then FIN.
            request.transport.close()
        # aiohttp's write_eof on the closed transport raises ConnectionError, which it swallows.
        return response or web.Response()

    # --- errors ---

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _unauthorized(self) -> web.Response:
        return self._error(Status(401, "Incorrect API key provided."))

    def _error(self, status: Status) -> web.Response:
        kind, code = _ERROR_KINDS.get(status.status, ("server_error", None))
        error = {"message": status.message, "type": kind, "param": None, "code": code}
        headers = {}
        if status.retry_after is not None:
            headers["Retry-After"] = _format_seconds(status.retry_after)
        if status.retry_after_ms is not None:
            headers["retry-after-ms"] = str(status.retry_after_ms)
        return web.json_response({"error": error}, status=status.status, headers=headers)


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _usage(body: dict, text: str) -> dict[str, int]:
    prompt_chars = sum(len(_content_text(m.get("content"))) for m in body.get("messages") or [])
    prompt, completion = _tokens(prompt_chars), _tokens(len(text))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
