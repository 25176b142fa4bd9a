"""The OpenAI emulator, driven by the real openai SDK.

What the SDK (openai 3.x on httpx2) raises for each fault, which the bot must handle:

- connection refused          -> openai.APIConnectionError (cause: httpx2.ConnectError)
- no response within timeout  -> openai.APITimeoutError, a subclass of APIConnectionError
                                 (cause: httpx2.ReadTimeout); raised by create() when headers
                                 never come, or while iterating when a stream stalls
- mid-stream connection drop  -> openai.APIConnectionError while iterating, after the chunks
                                 already received were yielded (cause: httpx2.RemoteProtocolError
                                 "incomplete chunked read"); NOT retried by the SDK, because
                                 create() has already returned
- 429                         -> openai.RateLimitError (e.response.headers has retry-after)
- 500 / 503                   -> openai.InternalServerError
- 400                         -> openai.BadRequestError
- 401                         -> openai.AuthenticationError
All of these derive from openai.APIError; the status ones from openai.APIStatusError.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from tests.emulators.openai_api import (
    Disconnect,
    Gated,
    Hang,
    OpenAIEmulator,
    Reply,
    SlowFirstToken,
    Status,
    Truncated,
)

MESSAGES = [
    {"role": "system", "content": "You are a support bot."},
    {"role": "user", "content": "How do I reset my password?"},
]
EXPECTED = "Answer: How do I reset my password?"


@pytest.fixture
async def emulator() -> AsyncIterator[OpenAIEmulator]:
    emu = OpenAIEmulator(chunk_chars=5)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def client(emulator: OpenAIEmulator) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0, timeout=5.0
    )
    yield client
    await client.close()


async def collect(client: openai.AsyncOpenAI, **kwargs: object) -> tuple[str, list]:
    """Stream a completion; return the assembled text and every chunk."""
    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, **kwargs)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def test_stream_assembles_reply_with_usage(
    emulator: OpenAIEmulator, client: openai.AsyncOpenAI
) -> None:
    text, chunks = await collect(client, stream_options={"include_usage": True})

    assert text == EXPECTED
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert {c.model for c in chunks} == {"gpt-test"}
    assert emulator.requests[0]["messages"] == MESSAGES


async def test_stream_chunking_and_no_usage_by_default(client: openai.AsyncOpenAI) -> None:
    _, chunks = await collect(client)

    contents = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert all(len(piece) <= 5 for piece in contents)
    assert "".join(contents) == EXPECTED
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_non_streaming_completion(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)

    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-test"
    assert completion.usage is not None


async def test_custom_reply_and_content_parts(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "from parts"}]}]
    completion = await client.chat.completions.create(model="m", messages=parts)
    assert completion.choices[0].message.content == "Answer: from parts"

    emulator.reply = lambda messages: f"{len(messages)} messages"
    text, _ = await collect(client)
    assert text == "2 messages"


async def test_enqueued_reply_then_default(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    emulator.enqueue(Reply("scripted"))

    assert (await collect(client))[0] == "scripted"
    assert (await collect(client))[0] == EXPECTED


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert len(models.data) == 1


async def test_wrong_api_key_is_authentication_error(
    emulator: OpenAIEmulator, client: openai.AsyncOpenAI
) -> None:
    emulator.enqueue(Reply("kept for the next good request"))
    bad = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="sk-wrong", max_retries=0)
    async with bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert len(emulator.requests) == 1
    assert (await collect(client))[0] == "kept for the next good request"


async def test_rate_limit_carries_retry_after(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    emulator.enqueue(Status(429, "Slow down", retry_after=0.2, retry_after_ms=200))

    with pytest.raises(openai.RateLimitError) as caught:
        await collect(client)

    error = caught.value
    assert error.status_code == 429
    assert error.message.endswith("Slow down")
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers["retry-after"] == "0.2"
    assert error.response.headers["retry-after-ms"] == "200"
    assert len(emulator.requests) == 1  # faults are recorded too


async def test_sdk_retry_honours_retry_after(emulator: OpenAIEmulator) -> None:
    emulator.enqueue(Status(429, retry_after=0.3))
    retrying = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test-key", max_retries=1)
    async with retrying:
        started = time.monotonic()
        completion = await retrying.chat.completions.create(model="m", messages=MESSAGES)

    assert completion.choices[0].message.content == EXPECTED
    assert time.monotonic() - started >= 0.3
    assert len(emulator.requests) == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, openai.BadRequestError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_status_errors(
    emulator: OpenAIEmulator,
    client: openai.AsyncOpenAI,
    status: int,
    error_type: type[openai.APIStatusError],
) -> None:
    emulator.enqueue(Status(status, "nope"))

    with pytest.raises(error_type) as caught:
        await collect(client)

    assert caught.value.status_code == status
    assert caught.value.body == {
        "message": "nope",
        "type": caught.value.type,
        "param": None,
        "code": caught.value.code,
    }


async def test_disconnect_mid_stream(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    emulator.enqueue(Disconnect(after_chunks=2))
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received: list[str] = []

    # The SDK yields what arrived, then raises APIConnectionError (not APITimeoutError) caused by
    # httpx2.RemoteProtocolError; the bot has to treat a partial answer as failed.
    with pytest.raises(openai.APIConnectionError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    assert not isinstance(caught.value, openai.APITimeoutError)
    assert "".join(received) == EXPECTED[:10]


async def test_disconnect_without_stream(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    emulator.enqueue(Disconnect(after_chunks=0))

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=MESSAGES)


async def test_hang_times_out(emulator: OpenAIEmulator) -> None:
    emulator.enqueue(Hang())
    impatient = openai.AsyncOpenAI(
        base_url=emulator.base_url, api_key="sk-test-key", max_retries=0, timeout=0.3
    )
    async with impatient:
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    await emulator.wait_for_requests(1)


async def test_stalled_stream_times_out_while_iterating(emulator: OpenAIEmulator) -> None:
    emulator.enqueue(SlowFirstToken(2.0))
    impatient = openai.AsyncOpenAI(
        base_url=emulator.base_url, api_key="sk-test-key", max_retries=0, timeout=0.3
    )
    async with impatient:
        # Headers arrive at once, so create() succeeds and the read timeout fires mid-stream.
        stream = await impatient.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            async for _ in stream:
                pass


async def test_gated_holds_the_first_content_until_opened_and_keeps_the_stream_alive(
    emulator: OpenAIEmulator,
) -> None:
    """Held, the stream sends keep-alive comments and no content: a client whose read timeout is
    shorter than the hold still gets the whole answer once the gate opens."""
    opened = asyncio.Event()
    emulator.enqueue(Gated(opened, text="held answer"))
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=1.5)) as session,
        session.post(
            f"{emulator.base_url}/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {emulator.api_key}"},
        ) as response,
    ):
        held: list[bytes] = []
        while held.count(b": keep-alive") < 2:  # held over 2 s, past the client's read timeout
            held.append((await response.content.readline()).strip())
        opened.set()
        rest = (await response.content.read()).splitlines()

    def contents(lines: list[bytes]) -> list[str]:
        events = [json.loads(line.removeprefix(b"data: ")) for line in lines if line.startswith(b"data: {")]
        return [event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"]]

    assert contents(held) == [""]  # the role chunk only: no content while held
    assert "".join(contents(rest)) == "held answer"
    assert b"data: [DONE]" in rest


async def test_a_gate_never_opened_does_not_hold_up_stop(emulator: OpenAIEmulator) -> None:
    emulator.enqueue(Gated(asyncio.Event()))
    impatient = openai.AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test-key", max_retries=0)
    async with impatient:
        reading = asyncio.create_task(collect(impatient))
        await emulator.wait_for_requests(1)
        await emulator.stop()  # cuts the held answer, as it does a Hang
        with pytest.raises(openai.APIConnectionError):
            await reading


async def test_connection_refused(emulator: OpenAIEmulator) -> None:
    base_url = emulator.base_url
    await emulator.stop()
    offline = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-key", max_retries=0)
    async with offline:
        with pytest.raises(openai.APIConnectionError) as caught:
            await offline.chat.completions.create(model="m", messages=MESSAGES)
    assert not isinstance(caught.value, openai.APITimeoutError)


async def test_slow_first_token(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    emulator.enqueue(SlowFirstToken(0.4, text="late"))
    started = time.monotonic()
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first_content_at = None
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_content_at = first_content_at or time.monotonic()
            text += chunk.choices[0].delta.content

    assert text == "late"
    assert first_content_at is not None and first_content_at - started >= 0.4


async def test_chunk_delay_paces_the_stream() -> None:
    emu = OpenAIEmulator(chunk_chars=1, chunk_delay=0.05, reply=lambda _: "abcde")
    await emu.start()
    try:
        async with openai.AsyncOpenAI(base_url=emu.base_url, api_key=emu.api_key) as client:
            started = time.monotonic()
            text, _ = await collect(client)
    finally:
        await emu.stop()

    assert text == "abcde"
    assert time.monotonic() - started >= 0.2  # four gaps between five chunks


async def test_truncated_finishes_with_length(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    emulator.enqueue(Truncated("cut sho"))
    text, chunks = await collect(client)

    assert text == "cut sho"
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_wait_for_requests(emulator: OpenAIEmulator, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(TimeoutError):
        await emulator.wait_for_requests(1, timeout=0.05)

    task = asyncio.create_task(collect(client))
    await emulator.wait_for_requests(1)
    await task


async def test_reply_may_shape_the_requests_it_picks(
    emulator: OpenAIEmulator, client: openai.AsyncOpenAI
) -> None:
    emulator.reply = lambda messages: (
        SlowFirstToken(0.3, "slow summary") if "summarise" in messages[-1]["content"] else "quick"
    )
    started = time.monotonic()
    quick = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert quick.choices[0].message.content == "quick"
    slow = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "summarise this"}]
    )
    assert slow.choices[0].message.content == "slow summary"
    assert time.monotonic() - started >= 0.3


async def test_stream_timings_record_first_content_and_finish() -> None:
    emu = OpenAIEmulator(chunk_chars=1, chunk_delay=0.05, first_token_delay=0.1, reply=lambda _: "abc")
    await emu.start()
    try:
        async with openai.AsyncOpenAI(base_url=emu.base_url, api_key=emu.api_key) as client:
            await collect(client)
    finally:
        await emu.stop()

    [timing] = emu.streams
    assert timing.messages == MESSAGES
    assert timing.first_content_at is not None and timing.finished_at is not None
    assert timing.first_content_at - timing.arrived_at >= 0.1
    assert timing.finished_at - timing.first_content_at >= 0.1  # two gaps between three chunks
