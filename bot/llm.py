"""The chat API client: one streamed Chat Completions call, retried with backoff when transient.

It speaks the Chat Completions HTTP API itself over one aiohttp session, reading the answer's
server-sent events into plain dicts (the OpenAI SDK's per-chunk models cost the bot nine times
the CPU). `ChatModel.stream` gives an `AnswerStream`: an async iterator of text deltas as the
model writes them, then (`.answer`) the whole text with its finish_reason and token usage. A
failure before any text was given out is retried; after that it raises `LLMError` with
`partial=True`, so the caller keeps what it showed. Errors carry a message that is safe to show.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import aiohttp.helpers
from yarl import URL

log = logging.getLogger(__name__)

ChatMessage = dict[str, str]

OPENAI_BASE_URL = "https://api.openai.com/v1"


def is_openai(base_url: str | None) -> bool:
    """Whether the model is OpenAI's own API (no base URL, or one on OpenAI's host): it needs a
    key, and names the answer's limit max_completion_tokens (reasoning models refuse max_tokens)."""
    return base_url is None or URL(base_url).host == URL(OPENAI_BASE_URL).host


# What the HTTP client can raise while sending a request or reading its answer.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, TimeoutError)


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
SETUP_PROBLEM = (
    "Sorry, I can't answer: the language model service turned down my own key or settings, "
    "which only the bot's admins can fix. Please let them know."
)
# Statuses that blame the bot's setup, not the question, and the settings to look at: a key the
# service does not take, one without access to the model, a model (or address) it does not know.
SETUP_STATUSES = {401: "OPENAI_API_KEY", 403: "OPENAI_API_KEY", 404: "OPENAI_MODEL and OPENAI_BASE_URL"}
KEY_CHECK_SECONDS = 10.0
FILTERED = (
    "Sorry, the language model's content filter stopped this answer before it began. "
    "Try rephrasing your question."
)
CUT_OFF = "The language model stopped responding in the middle of this answer."

# After [DONE], how long to wait for the end of the body (so that the connection can be reused).
_END_GRACE_SECONDS = 1.0
# Jitter from a generator of our own: the process-wide one belongs to whoever seeds it.
_jitter = random.Random()


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
        self.model = model
        self.max_retries = max_retries
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.first_token_timeout = first_token_timeout_seconds
        self.idle_timeout = idle_timeout_seconds
        self._url = f"{(base_url or OPENAI_BASE_URL).rstrip('/')}/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        # As the SDK's timeout was: for connecting and for each read, not for a whole answer (the
        # first-token and idle timeouts bound a stream; a completion sends nothing until it is done).
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_seconds, sock_read=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        # Compatible servers (vLLM, Ollama) know max_tokens.
        self._limit_name = "max_completion_tokens" if is_openai(base_url) else "max_tokens"
        self._answer_limit = {self._limit_name: max_answer_tokens} if max_answer_tokens else {}

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Made here, in the running loop: the constructor may run before there is one. No
            # connection limit: the bot's own slots bound how many answers run at once.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), headers=self._headers, timeout=self._timeout
            )
            # HTTPS_PROXY and NO_PROXY, as the SDK honoured them: read once, not on every request
            # as aiohttp's trust_env would (two thread-pool hops each).
            self._proxy, self._proxy_auth = _proxy_from_env(self._url)
        return self._session

    async def key_problem(self) -> str | None:
        """At start: one line naming OPENAI_API_KEY when the model service refuses the key
        outright (401 to GET /models); else None, also when the service cannot be asked now or
        has no such endpoint (the bot starts; an outage is the breaker's to handle). A 403 only
        warns: a key restricted to chat may be refused the list of models."""
        session = self._open_session()
        url = self._url.removesuffix("/chat/completions") + "/models"
        try:
            async with asyncio.timeout(KEY_CHECK_SECONDS):
                async with session.get(
                    url, allow_redirects=False, proxy=self._proxy, proxy_auth=self._proxy_auth
                ) as response:
                    status = response.status
                    code = await _error_code(response) if status in (401, 403) else ""
        except (*TRANSPORT_ERRORS, TimeoutError) as error:
            log.warning("llm not reachable at start error=%s; carrying on", _transport_kind(error))
            return None
        if status == 401:
            return (
                f"OPENAI_API_KEY was refused by the language model service (HTTP 401, {code}): "
                "set it to a valid key for the service at OPENAI_BASE_URL (OpenAI's by default)."
            )
        if status == 403:
            log.warning("llm refused to list models status=403 code=%s; check OPENAI_API_KEY's access", code)
        return None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

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
        delay = ceiling / 2 + _jitter.uniform(0, ceiling / 2)
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
        request = {"model": self.model, "messages": messages, self._limit_name: max_tokens}
        try:
            response = await self._post(request, attempt)
            try:
                body = await response.read()
            finally:
                response.release()
        except TRANSPORT_ERRORS as error:
            raise _Transient(_transport_kind(error)) from None
        text, finish_reason, usage = _read_completion(body, attempt)
        text = text.strip()
        if not text:
            raise LLMError("empty_answer", EMPTY, attempts=attempt)
        return Answer(
            text=text,
            model=self.model,
            finish_reason=finish_reason,
            prompt_tokens=_count(usage, "prompt_tokens"),
            completion_tokens=_count(usage, "completion_tokens"),
            attempts=attempt,
        )

    async def _post(self, request: dict[str, Any], attempt: int) -> aiohttp.ClientResponse:
        """Send one request; a failed status raises _Transient or LLMError (REJECTED), and neither
        the request nor the error body (which may quote it, or the key) is ever logged."""
        session = self._open_session()
        body = json.dumps(request).encode()
        response = await session.post(
            self._url, data=body, allow_redirects=False, proxy=self._proxy, proxy_auth=self._proxy_auth
        )
        if 200 <= response.status < 300:
            return response
        status = response.status
        try:
            if _is_transient_status(status):
                raise _Transient(f"http_{status}", parse_retry_after(response.headers))
            code = await _error_code(response)
            if (settings := SETUP_STATUSES.get(status)) is not None:
                log.error(
                    "llm refused the bot's setup model=%s status=%d code=%s: check %s",
                    self.model, status, code, settings,
                )  # fmt: skip
                raise LLMError(f"http_{status}", SETUP_PROBLEM, attempts=attempt)
            log.warning("llm rejected request model=%s status=%d code=%s", self.model, status, code)
            raise LLMError(f"http_{status}", REJECTED, attempts=attempt)
        finally:
            response.close()


class AnswerStream:
    """One answer, streamed: iterate for text deltas; `answer` holds the result afterwards.

    No cap on the total length: only the wait for the first token and the silence between two
    chunks are limited.
    """

    def __init__(self, model: ChatModel, messages: list[ChatMessage]) -> None:
        self._model = model
        self._request = {
            "model": model.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            **model._answer_limit,
        }
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: Any = None
        self._attempts = 0
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> AnswerStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading (and so stop the generation); safe to call at any time."""
        if self._response is not None:
            response, self._response = self._response, None
            response.close()  # drops the connection: the server sees the client go and stops

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def answer(self) -> Answer:
        return Answer(
            text=self.text.strip(),
            model=self._model.model,
            finish_reason=self._finish_reason,
            prompt_tokens=_count(self._usage, "prompt_tokens"),
            completion_tokens=_count(self._usage, "completion_tokens"),
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
                if self.text.strip():
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
                self._parts.clear()  # only blanks (a model that opens with a line break): nothing shown
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
            if self._finish_reason == "content_filter":  # asking again would meet the filter again
                raise LLMError("content_filter", FILTERED, attempts=self._attempts)
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
        events = _EventStream()
        reads: _TimedReads | None = None
        progress_at: float | None = None  # when the model last wrote (text, or reasoning)
        try:
            # Timeouts wrap only the awaits, never the yield: the caller's own awaits are its own.
            async with asyncio.timeout_at(first_token_deadline):
                response = self._response = await model._post(self._request, self._attempts)
            if response.content_type == "application/json":
                # A server that ignored stream=True and sent the whole completion at once.
                async with asyncio.timeout_at(first_token_deadline):
                    body = await response.read()
                text, self._finish_reason, self._usage = _read_completion(body, self._attempts)
                if text:
                    self._parts.append(text)
                    yield text
                return
            reads = _TimedReads(response.content)
            while True:
                # From the model's first token on (of its answer, or of its reasoning first), only
                # a silence is limited: the time since it last wrote, which keep-alive comments
                # and empty events do not reset.
                deadline = (
                    progress_at + model.idle_timeout if progress_at is not None else first_token_deadline
                )
                if events.done:  # the answer is whole: wait only briefly for the body's end
                    deadline = min(deadline, loop.time() + _END_GRACE_SECONDS)
                try:
                    data = await reads.read(deadline)
                except TimeoutError:
                    if events.done:
                        break  # the answer is whole; only the connection lingers
                    raise
                if not data:  # the end: aiohttp puts the connection back in its pool
                    break
                for event, payload in events.feed(data):
                    deltas, alive = self._take(event, payload)
                    if alive:
                        progress_at = loop.time()
                    for delta in deltas:
                        self._parts.append(delta)
                        yield delta
            for event, payload in events.end():
                deltas, _ = self._take(event, payload)
                for delta in deltas:
                    self._parts.append(delta)
                    yield delta
        except (aiohttp.ServerTimeoutError, TimeoutError, *TRANSPORT_ERRORS) as error:
            if self._finish_reason is not None or events.done:
                # The answer is whole (its finish_reason or [DONE] came); only the connection's
                # end was untidy (a proxy that drops it, a usage chunk late): not a cut-off answer.
                return
            if isinstance(error, aiohttp.ServerTimeoutError):  # aiohttp's own: connecting, or one read
                raise _Transient("timeout") from None
            if isinstance(error, TimeoutError):
                raise _Transient(
                    "idle_timeout" if progress_at is not None else "first_token_timeout"
                ) from None
            raise _Transient(_transport_kind(error)) from None
        finally:
            if reads is not None:
                reads.stop()
            await self.close()
        if self._finish_reason is None and not self.text.strip():
            # Nothing shown and no end marker: a cut connection, worth another try.
            raise _Transient("stream_ended_early")

    def _take(self, event: str | None, data: bytes) -> tuple[list[str], bool]:
        """The text in one event, and whether the model wrote anything in it (text, or its
        reasoning); notes finish_reason and usage. An error event, or one that is not a chunk,
        raises _Transient; an error that says the request itself is at fault, LLMError."""
        if event not in (None, "message", "error"):
            return [], False  # events this client has no use for
        try:
            chunk = json.loads(data.decode())  # from str: json's own encoding detection costs more
        except ValueError:  # UnicodeDecodeError included
            raise _Transient("malformed_chunk") from None
        if not isinstance(chunk, dict):
            raise _Transient("malformed_chunk")
        if event == "error" or chunk.get("error"):
            log.warning("llm stream error model=%s code=%s", self._model.model, _code_of(chunk))
            if _is_rejection(chunk) and not self.text.strip():
                raise LLMError("stream_rejected", REJECTED, attempts=self._attempts)
            raise _Transient("stream_error")
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        deltas: list[str] = []
        alive = False
        try:
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    self._finish_reason = choice["finish_reason"]
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    deltas.append(_text(content))
                    alive = True
                elif delta.get("reasoning_content") or delta.get("reasoning"):
                    alive = True  # a reasoning model thinking aloud before it answers
        except (AttributeError, TypeError):
            raise _Transient("malformed_chunk") from None
        return deltas, alive


class _TimedReads:
    """Reads of a response body, each failing with TimeoutError if it is still waiting at its
    deadline, with one timer for the whole stream rather than one per chunk (asyncio.timeout per
    read pushed and cancelled a timer on a heap of hundreds for every chunk of every answer: in a
    burst of 500 streamed answers, 9 % of the bot's CPU). Only time spent waiting in a read
    counts: the caller's own awaits between chunks are its own."""

    _SLACK = 0.001  # seconds: a timer may fire this early (the loop's clock resolution)

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, deadline: float) -> bytes:
        self._deadline = deadline
        if self._timer is None or self._timer.when() > deadline:
            self.stop()
            self._timer = self._loop.call_at(deadline, self._check)
        try:
            return await self._content.readany()
        finally:
            self._deadline = None

    def _check(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return  # between reads: the next read sets the timer again
        if self._loop.time() + self._SLACK < deadline:
            self._timer = self._loop.call_at(deadline, self._check)  # later reads moved it on
            return
        self._content.set_exception(TimeoutError())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _EventStream:
    """Server-sent events from the bytes of a response as they arrive: (event, data) for each
    complete event, partial lines kept for the next bytes. Stops at the `[DONE]` marker."""

    def __init__(self) -> None:
        self.done = False
        self._pending = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[tuple[str | None, bytes]]:
        lines = (self._pending + data if self._pending else data).splitlines(keepends=True)
        # A line without its end yet; and a lone "\r" may be the first half of "\r\n".
        self._pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        return self._events(lines)

    def end(self) -> list[tuple[str | None, bytes]]:
        """At the end of the body: a last line cut short is dropped; an event not yet ended by a
        blank line still counts."""
        pending, self._pending = self._pending, b""
        lines = [pending] if pending.endswith(b"\r") else []
        return self._events([*lines, b"\n"])

    def _events(self, lines: list[bytes]) -> list[tuple[str | None, bytes]]:
        events: list[tuple[str | None, bytes]] = []
        for raw in lines:
            if self.done:
                break
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._data:
                    data = b"\n".join(self._data)
                    if data.startswith(b"[DONE]"):
                        self.done = True
                    else:
                        events.append((self._event, data))
                self._event, self._data = None, []
            elif line[0] != 0x3A:  # a line starting with ":" is a comment, such as a keep-alive
                name, _, value = line.partition(b":")
                value = value[1:] if value[:1] == b" " else value
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
                # "id" and "retry" mean nothing for one answer.
        return events


def _read_completion(body: bytes, attempts: int) -> tuple[str, str | None, Any]:
    """The text, finish_reason and usage of one whole chat.completion; _Transient if it is not
    one, LLMError (REJECTED) if it is an error that says the request itself is at fault."""
    try:
        completion = json.loads(body)
    except ValueError:
        raise _Transient("malformed_response") from None
    if not isinstance(completion, dict):
        raise _Transient("malformed_response")
    if completion.get("error"):
        log.warning("llm response error code=%s", _code_of(completion))
        if _is_rejection(completion):
            raise LLMError("response_rejected", REJECTED, attempts=attempts)
        raise _Transient("response_error")
    try:
        choice = (completion.get("choices") or [{}])[0]
        text = _text((choice.get("message") or {}).get("content") or "")
        return text, choice.get("finish_reason"), completion.get("usage")
    except (AttributeError, TypeError, LookupError):
        raise _Transient("malformed_response") from None


# What an error inside a 200 response (an SSE `error` event, or a JSON body) says when the request
# itself is at fault, as a 400 would: trying it again gets the same answer.
_REJECTION_CODES = {
    "invalid_request_error",
    "context_length_exceeded",
    "string_above_max_length",
    "content_filter",
    "content_policy_violation",
    "badrequesterror",
    "invalid_prompt",
}


def _is_rejection(body: dict[str, Any]) -> bool:
    error = body.get("error")
    if not isinstance(error, dict):
        return False
    for field in ("code", "type", "status"):
        value = error.get(field)
        if isinstance(value, int | str) and str(value).isdigit():
            if 400 <= int(value) < 500 and not _is_transient_status(int(value)):
                return True
        elif isinstance(value, str) and value.lower() in _REJECTION_CODES:
            return True
    return False


def _text(content: Any) -> str:
    if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}, not text")
    return content


def _count(usage: Any, name: str) -> int | None:
    count = usage.get(name) if isinstance(usage, dict) else None
    return count if isinstance(count, int) else None


_SAFE_CODE = re.compile(r"[^A-Za-z0-9_.-]")


def _code_of(body: Any) -> str:
    """An OpenAI-style error's `code` or `type`, for the log; never its message, which may quote
    the request or the key."""
    error = body.get("error") if isinstance(body, dict) else None
    code = (error.get("code") or error.get("type")) if isinstance(error, dict) else None
    return _SAFE_CODE.sub("", str(code))[:64] if code else "none"


async def _error_code(response: aiohttp.ClientResponse) -> str:
    try:
        return _code_of(json.loads(await response.content.read(65536)))
    except (*TRANSPORT_ERRORS, ValueError):
        return "none"


def _transport_kind(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
        return "connection_error"
    return type(error).__name__


def _proxy_from_env(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    try:
        return aiohttp.helpers.get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


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
            try:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
            except (ValueError, OverflowError):  # a date no calendar holds (year 10000, say)
                pass
    return None
