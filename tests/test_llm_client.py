"""The chat client on the wire, against the OpenAI emulator over HTTP: what it sends, how it reads
the server-sent events (comments, event lines, line endings, error events, malformed chunks, a
whole completion where a stream was asked for), and that leaving a stream early stops the answer."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator

import pytest

from bot.llm import (
    CUT_OFF,
    REJECTED,
    SETUP_PROBLEM,
    UNAVAILABLE,
    AnswerStream,
    ChatModel,
    LLMError,
    is_openai,
    parse_retry_after,
)
from tests.conftest import wait_until
from tests.emulators.openai_api import NotStreamed, OpenAIEmulator, Raw, Reply, Status, sse_chunk

QUESTION = [{"role": "user", "content": "how do I rotate my deploy key?"}]
ANSWER = "Answer: how do I rotate my deploy key?"  # the emulator's default reply
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
ERROR_EVENT = 'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
# Ways a stream can go wrong after it started; each is a transient failure, never a crash.
BROKEN_EVENTS = {
    "error object": ERROR_EVENT,
    "error event": 'event: error\ndata: {"message": "overloaded"}\n\n',
    "malformed json": 'data: {"choices": [{"delta": {"content": "x\n\n',
    "not a chunk": "data: [1, 2, 3]\n\n",
    "content not text": 'data: {"choices": [{"delta": {"content": 42}}]}\n\n',
}


def chat_model(llm: OpenAIEmulator, **overrides: object) -> ChatModel:
    settings: dict = dict(
        api_key=llm.api_key,
        base_url=llm.base_url,
        model="test-model",
        timeout_seconds=5,
        max_retries=2,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        idle_timeout_seconds=3,
    )
    return ChatModel(**(settings | overrides))


@pytest.fixture
async def model(llm: OpenAIEmulator) -> AsyncIterator[ChatModel]:
    model = chat_model(llm)
    yield model
    await model.close()


async def read(model: ChatModel) -> tuple[list[str], LLMError | None, AnswerStream]:
    """Stream one answer: the deltas given out, the error it ended with, and the stream."""
    deltas: list[str] = []
    async with model.stream(QUESTION) as stream:
        try:
            async for delta in stream:
                deltas.append(delta)
        except LLMError as error:
            return deltas, error, stream
    return deltas, None, stream


async def test_the_request_carries_the_model_the_stream_options_and_the_answer_limit(
    llm: OpenAIEmulator,
) -> None:
    model = chat_model(llm, max_answer_tokens=300)
    try:
        answer = await model.answer(QUESTION)
    finally:
        await model.close()
    # The emulator answers only `Authorization: Bearer <its key>`; anything else is a 401.
    assert answer.text == ANSWER and answer.complete and answer.attempts == 1
    assert llm.requests == [
        {
            "model": "test-model",
            "messages": QUESTION,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 300,  # a compatible server's name; OpenAI's own is max_completion_tokens
        }
    ]
    # The usage chunk (after the finish chunk, with no choices) is read.
    assert (answer.prompt_tokens, answer.completion_tokens) == (
        math.ceil(len(QUESTION[0]["content"]) / 4),
        math.ceil(len(ANSWER) / 4),
    )


async def test_a_wrong_key_is_rejected_and_neither_key_nor_request_is_logged(
    llm: OpenAIEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    model = chat_model(llm, api_key="sk-wrong-0123456789abcdef")
    try:
        with caplog.at_level(logging.DEBUG):
            deltas, error, _ = await read(model)
    finally:
        await model.close()
    assert deltas == [] and error is not None
    assert (error.kind, error.user_message, error.partial, error.model_down) == (
        "http_401",
        SETUP_PROBLEM,  # not "try rephrasing": no question gets through a key the service refuses
        False,
        False,
    )
    assert len(llm.requests) == 1  # not retried
    assert (
        "llm refused the bot's setup model=test-model status=401 code=invalid_api_key: check OPENAI_API_KEY"
        in caplog.text
    )
    assert "sk-wrong" not in caplog.text and "deploy key" not in caplog.text
    assert "sk-wrong" not in repr(error) and "deploy key" not in repr(error)


async def test_comments_event_lines_line_endings_and_lines_split_across_reads(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    second = sse_chunk("in Settings")
    llm.enqueue(
        Raw(
            ": keep-alive\n\n",
            "event: message\r\n" + sse_chunk("Rotate it ").replace("\n", "\r\n"),
            "id: 7\nretry: 1000\n" + second[:25],  # the rest of the line comes in the next read
            second[25:],
            "event: ping\ndata: {}\n\n",  # an event type the client has no use for
            'data: {"choices": [{"index": 0,\ndata: "delta": {"content": " > Keys."}}]}\n\n',  # two lines
            "\r" + sse_chunk(finish_reason="stop").replace("\n", "\r"),  # old Mac line endings
            sse_chunk(usage=USAGE, choices=[]),
            "data: [DONE]\n\n",
            pause=0.02,
        )
    )
    deltas, error, stream = await read(model)
    assert error is None
    assert deltas == ["Rotate it ", "in Settings", " > Keys."]
    answer = stream.answer
    assert answer.text == "Rotate it in Settings > Keys." and answer.complete
    assert (answer.prompt_tokens, answer.completion_tokens) == (11, 3)


async def test_the_answer_ends_at_done_even_if_the_server_keeps_the_connection_open(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    llm.enqueue(
        Raw(
            sse_chunk("Done"),
            sse_chunk(finish_reason="stop"),
            "data: [DONE]\n\n",
            sse_chunk(" and more"),
            linger=5,
        )
    )
    started = time.monotonic()
    deltas, error, stream = await read(model)
    assert error is None and deltas == ["Done"] and stream.answer.complete  # nothing after [DONE]
    assert time.monotonic() - started < 2  # not the 5 s the server kept the connection


@pytest.mark.parametrize("broken", BROKEN_EVENTS.values(), ids=BROKEN_EVENTS.keys())
async def test_a_broken_stream_before_any_text_is_retried(
    llm: OpenAIEmulator, model: ChatModel, broken: str
) -> None:
    llm.enqueue(Raw(sse_chunk(""), broken, sse_chunk("never shown")), Reply("second try"))
    deltas, error, stream = await read(model)
    assert error is None and "".join(deltas) == "second try"
    assert stream.answer.attempts == 2 and len(llm.requests) == 2


@pytest.mark.parametrize("broken", BROKEN_EVENTS.values(), ids=BROKEN_EVENTS.keys())
async def test_a_broken_stream_after_some_text_keeps_it_as_cut_off(
    llm: OpenAIEmulator, model: ChatModel, broken: str
) -> None:
    llm.enqueue(Raw(sse_chunk("The first part"), broken, sse_chunk(" never shown")))
    deltas, error, stream = await read(model)
    assert deltas == ["The first part"] and stream.text == "The first part"
    assert error is not None and error.partial and error.user_message == CUT_OFF
    assert len(llm.requests) == 1  # not retried: the text was already given out


async def test_a_stream_that_keeps_breaking_gives_up_as_unavailable(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    llm.enqueue(*[Raw(ERROR_EVENT)] * 3)
    deltas, error, _ = await read(model)
    assert deltas == [] and error is not None
    assert (error.kind, error.user_message, error.model_down) == ("stream_error", UNAVAILABLE, True)
    assert len(llm.requests) == 3  # 1 + max_retries


async def test_a_whole_completion_where_a_stream_was_asked_for_is_one_delta(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    llm.enqueue(NotStreamed("All at once."))
    deltas, error, stream = await read(model)
    assert error is None and deltas == ["All at once."]
    assert stream.answer.complete and stream.answer.completion_tokens == 3


async def test_a_json_body_that_is_not_a_completion_is_retried(llm: OpenAIEmulator, model: ChatModel) -> None:
    llm.enqueue(Raw('{"unexpected": ', content_type="application/json"), Status(503), Reply("fine"))
    deltas, error, stream = await read(model)
    assert error is None and "".join(deltas) == "fine" and stream.answer.attempts == 3


async def test_complete_reads_one_whole_completion_and_retries_what_is_transient(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    llm.enqueue(
        Status(429, retry_after_ms=20), Raw("<html>bad gateway</html>", content_type="application/json")
    )
    answer = await model.complete(QUESTION, max_tokens=50)
    assert answer.text == ANSWER and answer.complete and answer.attempts == 3
    assert "stream" not in llm.requests[-1] and llm.requests[-1]["max_tokens"] == 50


async def test_leaving_a_stream_early_stops_the_generation(llm: OpenAIEmulator, model: ChatModel) -> None:
    llm.chunk_delay, llm.chunk_chars = 0.05, 4
    llm.enqueue(Reply("word " * 100))
    async with model.stream(QUESTION) as stream:
        async for delta in stream:
            assert delta == "word"
            break
    # The server saw the client go and stopped writing, well before the 5 s the answer takes.
    await wait_until(lambda: llm.in_flight == 0, "the server to stop writing", within=3.0)
    [timing] = llm.streams
    assert timing.finished_at is None
    assert stream.text == "word"


async def test_one_connection_serves_answer_after_answer(llm: OpenAIEmulator, model: ChatModel) -> None:
    # The last answer's body ends a moment after its [DONE], as it may over a real network.
    done_then_end = Raw(sse_chunk("Yes."), sse_chunk(finish_reason="stop"), "data: [DONE]\n\n", linger=0.1)
    llm.enqueue(Reply("Yes."), done_then_end, done_then_end)
    for _ in range(4):
        assert (await model.answer(QUESTION)).complete
    assert len(set(llm.client_ports)) == 1  # kept alive: read to the end, then back to the pool


async def test_a_proxy_from_the_environment_is_used(
    llm: OpenAIEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulator stands in for the proxy: it answers the absolute-form request a client sends
    # to a proxy. Without the proxy, the host below does not resolve.
    monkeypatch.setenv("HTTP_PROXY", llm.base_url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    model = chat_model(llm, base_url="http://llm.invalid/v1", max_retries=0)
    try:
        answer = await model.answer(QUESTION)
    finally:
        await model.close()
    assert answer.text == ANSWER


@pytest.mark.parametrize(
    ("base_url", "openai"),
    [
        (None, True),
        ("https://api.openai.com/v1", True),  # set to OpenAI's own URL: still OpenAI (key, limit's name)
        ("http://127.0.0.1:8000/v1", False),
        ("https://api.openai.com.example/v1", False),
    ],
)
def test_openai_itself_is_known_by_its_host(base_url: str | None, openai: bool) -> None:
    assert is_openai(base_url) is openai


@pytest.mark.parametrize("ending", ["after [DONE]", "after finish_reason"])
async def test_a_whole_answer_whose_connection_ends_untidily_is_not_cut_off(
    llm: OpenAIEmulator, model: ChatModel, ending: str
) -> None:
    """A proxy that drops the connection without the body's last chunk, once the answer is whole:
    the answer is complete (it was called cut off, with a note inviting the person to ask for
    the rest)."""
    done = ("data: [DONE]\n\n",) if ending == "after [DONE]" else ()
    llm.enqueue(
        Raw(sse_chunk("Hello"), sse_chunk(" world"), sse_chunk(finish_reason="stop"), *done, drop=True)
    )
    deltas, error, stream = await read(model)
    assert error is None and deltas == ["Hello", " world"]
    assert stream.answer.complete and len(llm.requests) == 1


async def test_a_stream_that_breaks_after_only_blanks_is_tried_again(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    """A model that opens with a line break, then the connection drops: nothing was shown, so it is
    asked again (it was kept as a cut-off answer of nothing: no answer and no notice at all)."""
    llm.enqueue(Raw(sse_chunk("\n\n"), drop=True), Reply("The answer."))
    _deltas, error, stream = await read(model)
    assert error is None and stream.answer.text == "The answer." and len(llm.requests) == 2


@pytest.mark.parametrize(
    "body",
    [
        'data: {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}\n\n',
        'data: {"error": {"message": "too long", "code": "context_length_exceeded"}}\n\n',
    ],
    ids=["vLLM's in-stream 400", "OpenAI's code"],
)
async def test_an_error_in_a_stream_that_blames_the_request_is_a_refusal_not_an_outage(
    llm: OpenAIEmulator, model: ChatModel, body: str
) -> None:
    """Tried again it gets the same answer; counted as the model being down, five such turns
    would open the breaker for everyone."""
    llm.enqueue(Raw(body))
    deltas, error, _ = await read(model)
    assert deltas == [] and error is not None
    assert (error.user_message, error.model_down, len(llm.requests)) == (REJECTED, False, 1)


async def test_a_json_error_body_that_blames_the_request_is_a_refusal(
    llm: OpenAIEmulator, model: ChatModel
) -> None:
    llm.enqueue(Raw('{"error": {"code": "context_length_exceeded"}}', content_type="application/json"))
    _deltas, error, _ = await read(model)
    assert error is not None and (error.user_message, error.model_down, len(llm.requests)) == (
        REJECTED,
        False,
        1,
    )


async def test_keep_alive_comments_do_not_keep_a_silent_model_alive(llm: OpenAIEmulator) -> None:
    """After its first words the model goes silent and the server sends only keep-alive
    comments: the silence is still limited (the comments reset it, and the turn hung for good)."""
    model = chat_model(llm, idle_timeout_seconds=1)
    try:
        llm.enqueue(Raw(sse_chunk("Hi"), *[": ping\n\n"] * 20, pause=0.2))
        started = time.monotonic()
        deltas, error, _ = await read(model)
    finally:
        await model.close()
    assert deltas == ["Hi"] and error is not None and error.partial and error.kind == "idle_timeout"
    assert time.monotonic() - started < 3


async def test_a_reasoning_model_thinking_past_the_first_token_timeout_is_not_cut_off(
    llm: OpenAIEmulator,
) -> None:
    """Its reasoning streams first (`reasoning_content`, as vLLM and DeepSeek send it): the model
    is at work, and its answer comes after the first-token timeout (it was asked again, from the
    start, each time, and given up as down)."""
    model = chat_model(llm, first_token_timeout_seconds=0.5)
    thinking = [sse_chunk(choices=[{"index": 0, "delta": {"reasoning_content": "hmm "}}])] * 8
    try:
        llm.enqueue(
            Raw(
                *thinking, sse_chunk("Answer"), sse_chunk(finish_reason="stop"), "data: [DONE]\n\n", pause=0.2
            )
        )
        deltas, error, _stream = await read(model)
    finally:
        await model.close()
    assert error is None and deltas == ["Answer"] and len(llm.requests) == 1


def test_a_retry_after_date_no_calendar_holds_is_ignored() -> None:
    assert parse_retry_after({"retry-after": "Sat, 01 Jan 10000 00:00:00 GMT"}) is None
