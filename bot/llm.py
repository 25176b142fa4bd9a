"""The chat API client: one streamed Chat Completions call, retried with backoff when transient.

The OpenAI SDK stops here. `ChatModel.stream` gives an `AnswerStream`: an async iterator of text
deltas as the model writes them, then (`.answer`) the whole text with its finish_reason and token
usage. A failure before any text was given out is retried; after that it raises `LLMError` with
`partial=True`, so the caller keeps what it showed. Errors carry a message that is safe to show.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import openai

log = logging.getLogger(__name__)

ChatMessage = dict[str, str]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library under the SDK can raise its own errors mid-stream, unwrapped."""
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        errors.append(module.HTTPError)
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


@dataclass(frozen=True)
class Answer:
    """What the model wrote, and whether it said it was done."""

    text: str
    model: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int

    @property
    def complete(self) -> bool:
        """Only "stop" is a finished answer; "length", a filter, or no reason at all is not."""
        return self.finish_reason == "stop"


class LLMError(Exception):
    """The model gave no (further) answer. `user_message` is safe to post; `kind` is for logs.

    `partial` is True when text had already been given out before the failure.
    """

    def __init__(
        self, kind: str, user_message: str, *, attempts: int, partial: bool = False, model_down: bool = False
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.user_message = user_message
        self.attempts = attempts
        self.partial = partial
        # True when the model looks down (transient failures outlasted the retries), as opposed
        # to refusing this one request: only the former counts towards the circuit breaker.
        self.model_down = model_down


UNAVAILABLE = (
    "Sorry, I couldn't reach the language model just now, so I have no answer for this yet. "
    "Please try again in a minute."
)
REJECTED = (
    "Sorry, the language model refused this request, so I can't answer it. "
    "Try rephrasing or shortening your question; if it keeps happening, tell the bot's admins."
)
EMPTY = "Sorry, the language model returned an empty answer. Please try asking again."
CUT_OFF = "The language model stopped responding in the middle of this answer."


class _Transient(Exception):
    """A failure worth another try, with the server's Retry-After when it gave one."""

    def __init__(self, kind: str, retry_after: float | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.retry_after = retry_after


class ChatModel:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        timeout_seconds: float,
        max_retries: int,
        retry_base_seconds: float,
        retry_max_seconds: float,
        first_token_timeout_seconds: float = 60.0,
        idle_timeout_seconds: float = 30.0,
        max_answer_tokens: int | None = None,
    ) -> None:
        # The SDK's own retries are off: ours honour Retry-After within our own cap and log.
        self.client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_seconds
        )
        self.model = model
        self.max_retries = max_retries
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.first_token_timeout = first_token_timeout_seconds
        self.idle_timeout = idle_timeout_seconds
        # OpenAI itself takes max_completion_tokens (reasoning models refuse max_tokens);
        # compatible servers (vLLM, Ollama) know max_tokens.
        self._limit_name = "max_completion_tokens" if base_url is None else "max_tokens"
        self._answer_limit = {self._limit_name: max_answer_tokens} if max_answer_tokens else {}

    async def close(self) -> None:
        await self.client.close()

    def stream(self, messages: list[ChatMessage]) -> AnswerStream:
        """The model's answer as it is written; use as `async with model.stream(m) as s`."""
        return AnswerStream(self, messages)

    async def answer(self, messages: list[ChatMessage]) -> Answer:
        """The whole answer at once (for callers that show nothing while it is written)."""
        async with self.stream(messages) as stream:
            async for _ in stream:
                pass
        return stream.answer

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; the server's Retry-After wins when it is longer."""
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_seconds))
        return delay

    async def complete(self, messages: list[ChatMessage], *, max_tokens: int) -> Answer:
        """One whole (not streamed) completion, retried like answers; raises LLMError."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._complete_once(messages, max_tokens, attempt)
            except _Transient as failure:
                if attempt > self.max_retries:
                    raise LLMError(failure.kind, UNAVAILABLE, attempts=attempt) from None
                await asyncio.sleep(self.retry_delay(attempt, failure.retry_after))

    async def _complete_once(self, messages: list[ChatMessage], max_tokens: int, attempt: int) -> Answer:
        try:
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                **{self._limit_name: max_tokens},  # type: ignore[arg-type]
            )
        except openai.APIStatusError as error:
            if _is_transient_status(error.status_code):
                raise _Transient(
                    f"http_{error.status_code}", parse_retry_after(error.response.headers)
                ) from None
            raise LLMError(f"http_{error.status_code}", REJECTED, attempts=attempt) from None
        except openai.APITimeoutError:
            raise _Transient("timeout") from None
        except openai.APIConnectionError:
            raise _Transient("connection_error") from None
        except TRANSPORT_ERRORS as error:
            raise _Transient(type(error).__name__) from None
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "").strip() if choice else ""
        if choice is None or not text:
            raise LLMError("empty_answer", EMPTY, attempts=attempt)
        return Answer(
            text=text,
            model=self.model,
            finish_reason=choice.finish_reason,
            prompt_tokens=getattr(response.usage, "prompt_tokens", None),
            completion_tokens=getattr(response.usage, "completion_tokens", None),
            attempts=attempt,
        )


class AnswerStream:
    """One answer, streamed: iterate for text deltas; `answer` holds the result afterwards.

    No cap on the total length: only the wait for the first token and the silence between two
    chunks are limited.
    """

    def __init__(self, model: ChatModel, messages: list[ChatMessage]) -> None:
        self._model = model
        self._messages = messages
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: Any = None
        self._attempts = 0
        self._sdk_stream: Any = None

    async def __aenter__(self) -> AnswerStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading (and so stop the generation); safe to call at any time."""
        if self._sdk_stream is not None:
            stream, self._sdk_stream = self._sdk_stream, None
            try:
                await stream.close()
            except TRANSPORT_ERRORS:
                pass

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def answer(self) -> Answer:
        return Answer(
            text=self.text.strip(),
            model=self._model.model,
            finish_reason=self._finish_reason,
            prompt_tokens=getattr(self._usage, "prompt_tokens", None),
            completion_tokens=getattr(self._usage, "completion_tokens", None),
            attempts=self._attempts,
        )

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        model = self._model
        while True:
            self._attempts += 1
            try:
                async for delta in self._attempt():
                    yield delta
                break
            except _Transient as failure:
                await self.close()
                if self._parts:
                    log.warning(
                        "llm stream broke off model=%s attempts=%d error=%s chars=%d",
                        model.model,
                        self._attempts,
                        failure.kind,
                        len(self.text),
                    )
                    raise LLMError(failure.kind, CUT_OFF, attempts=self._attempts, partial=True) from None
                if self._attempts > model.max_retries:
                    log.warning(
                        "llm gave up model=%s attempts=%d error=%s", model.model, self._attempts, failure.kind
                    )
                    raise LLMError(
                        failure.kind, UNAVAILABLE, attempts=self._attempts, model_down=True
                    ) from None
                delay = model.retry_delay(self._attempts, failure.retry_after)
                log.info(
                    "llm retry model=%s attempt=%d error=%s delay=%.2fs",
                    model.model,
                    self._attempts,
                    failure.kind,
                    delay,
                )
                await asyncio.sleep(delay)
        if not self.text.strip():
            raise LLMError("empty_answer", EMPTY, attempts=self._attempts)
        if self._finish_reason is None:
            # Ended without saying it was complete (a cut connection): shown as cut short.
            log.warning("llm stream ended without finish_reason model=%s", model.model)

    async def _attempt(self) -> AsyncIterator[str]:
        """One request: yields content as it arrives; raises _Transient for what deserves a retry."""
        model = self._model
        self._finish_reason, self._usage = None, None
        loop = asyncio.get_running_loop()
        first_token_deadline = loop.time() + model.first_token_timeout
        try:
            # Timeouts wrap only the awaits, never the yield: the caller's own awaits are its own.
            async with asyncio.timeout_at(first_token_deadline):
                self._sdk_stream = await model.client.chat.completions.create(
                    model=model.model,
                    messages=self._messages,  # type: ignore[arg-type]
                    stream=True,
                    stream_options={"include_usage": True},
                    **model._answer_limit,
                )
            chunks = aiter(self._sdk_stream)
            while True:
                # From the first text on, only the silence between two chunks is limited.
                deadline = loop.time() + model.idle_timeout if self._parts else first_token_deadline
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                if chunk.usage is not None:
                    self._usage = chunk.usage
                for choice in chunk.choices:
                    if choice.finish_reason:
                        self._finish_reason = choice.finish_reason
                    if choice.delta and choice.delta.content:
                        self._parts.append(choice.delta.content)
                        yield choice.delta.content
        except TimeoutError:
            raise _Transient("idle_timeout" if self._parts else "first_token_timeout") from None
        except openai.APIStatusError as error:
            if _is_transient_status(error.status_code):
                raise _Transient(
                    f"http_{error.status_code}", parse_retry_after(error.response.headers)
                ) from None
            log.warning(
                "llm rejected request model=%s status=%d type=%s",
                model.model,
                error.status_code,
                type(error).__name__,
            )
            raise LLMError(f"http_{error.status_code}", REJECTED, attempts=self._attempts) from None
        except openai.APITimeoutError:
            raise _Transient("timeout") from None
        except openai.APIConnectionError:
            raise _Transient("connection_error") from None
        except TRANSPORT_ERRORS as error:
            raise _Transient(type(error).__name__) from None
        finally:
            await self.close()
        if self._finish_reason is None and not self._parts:
            # Nothing shown and no end marker: a cut connection, worth another try.
            raise _Transient("stream_ended_early")

    # -- one non-streamed completion, for background work such as summaries ------------------


def _is_transient_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None
