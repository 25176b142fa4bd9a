"""The chat API client: one streamed Chat Completions call, retried with backoff when transient.

The OpenAI SDK stops here: callers get an `Answer` or an `LLMError` carrying a message that is
safe to show a user.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
    text: str
    model: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    attempts: int


class LLMError(Exception):
    """The model gave no answer. `user_message` is safe to post; `kind` is for logs."""

    def __init__(self, kind: str, user_message: str, *, attempts: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.user_message = user_message
        self.attempts = attempts


UNAVAILABLE = (
    "Sorry, I couldn't reach the language model just now, so I have no answer for this yet. "
    "Please try again in a minute."
)
REJECTED = (
    "Sorry, the language model refused this request, so I can't answer it. "
    "Try rephrasing or shortening your question; if it keeps happening, tell the bot's admins."
)
EMPTY = "Sorry, the language model returned an empty answer. Please try asking again."


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
        # OpenAI itself takes max_completion_tokens (reasoning models refuse max_tokens);
        # compatible servers (vLLM, Ollama) know max_tokens.
        self._limit_name = "max_completion_tokens" if base_url is None else "max_tokens"
        self._answer_limit = {self._limit_name: max_answer_tokens} if max_answer_tokens else {}

    async def close(self) -> None:
        await self.client.close()

    async def answer(self, messages: list[ChatMessage]) -> Answer:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._stream_once(messages, attempt)
            except _Transient as failure:
                if attempt > self.max_retries:
                    log.warning(
                        "llm gave up model=%s attempts=%d error=%s", self.model, attempt, failure.kind
                    )
                    raise LLMError(failure.kind, UNAVAILABLE, attempts=attempt) from None
                delay = self.retry_delay(attempt, failure.retry_after)
                log.info(
                    "llm retry model=%s attempt=%d error=%s delay=%.2fs",
                    self.model,
                    attempt,
                    failure.kind,
                    delay,
                )
                await asyncio.sleep(delay)

    def retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; the server's Retry-After wins when it is longer."""
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_max_seconds))
        return delay

    async def _stream_once(self, messages: list[ChatMessage], attempt: int) -> Answer:
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Any = None
        try:
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
                **self._answer_limit,
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except openai.APIStatusError as error:
            if _is_transient_status(error.status_code):
                raise _Transient(
                    f"http_{error.status_code}", parse_retry_after(error.response.headers)
                ) from None
            log.warning(
                "llm rejected request model=%s status=%d type=%s",
                self.model,
                error.status_code,
                type(error).__name__,
            )
            raise LLMError(f"http_{error.status_code}", REJECTED, attempts=attempt) from None
        except openai.APITimeoutError:
            raise _Transient("timeout") from None
        except openai.APIConnectionError:
            raise _Transient("connection_error") from None
        except TRANSPORT_ERRORS as error:
            raise _Transient(type(error).__name__) from None
        text = "".join(parts).strip()
        if finish_reason is None:
            # The stream ended without saying it was complete: a cut connection, not an answer.
            raise _Transient("stream_ended_early")
        if not text:
            raise LLMError("empty_answer", EMPTY, attempts=attempt)
        return Answer(
            text=text,
            model=self.model,
            finish_reason=finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            attempts=attempt,
        )

    # -- one non-streamed completion, for background work such as summaries ------------------

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
