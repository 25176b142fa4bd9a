"""Slack calls whose answer was lost on the way back: the request went out, the connection broke
(or timed out) before Slack's answer came, and Slack may or may not have carried the call out.
A 5xx, Slack's `internal_error` / `fatal_error` ("it's possible some aspect of the operation
succeeded before the error was raised"), or a 200 whose body is not Slack's, leaves the same doubt.

Slack takes no idempotency key, so repeating such a call blindly can show a message, or a piece
of a streamed one, twice. The Web API client repeats at once only the calls that are safe to
repeat, and any call whose connection never opened (nothing was sent); the others surface, and
whoever made them asks Slack what is there before making them again (`find_landed`, used by
bot/streaming.py and bot/delivery.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

if TYPE_CHECKING:
    from bot.rate_limit import BudgetedSlack
    from bot.streaming import Target

# Calls that do something again when repeated: a message or a piece of text shown twice (a
# second stopStream fails, and its caller then posts the rest as a message of its own).
NOT_REPEATABLE = frozenset({"chat.postMessage", "chat.startStream", "chat.appendStream", "chat.stopStream"})
# How many messages after a question are read to find one a lost call posted: it is the latest.
LANDED_LOOKUP_LIMIT = 100
MATCHED_CHARS = 200  # of a message's text, spaces left out, to know it for the one sent
# Slack's error codes for a call that failed partway, which it documents as maybe done in part.
PARTLY_DONE_ERRORS = frozenset({"internal_error", "fatal_error"})
# What Slack, or a gateway in front of it, answers when it failed or gave up on a call.
SERVER_ERROR_STATUSES = frozenset({500, 502, 503, 504})


class OutcomeUnknown(Exception):
    """Slack answered a call that cannot be repeated with a failure that may have come after it
    carried the call out (a 5xx, `internal_error`, `fatal_error`, a 200 not from Slack): as
    unsure as a lost answer."""

    def __init__(self, method: str, code: str) -> None:
        super().__init__(f"{method} failed partway: {code}")
        self.method, self.code = method, code


def maybe_carried_out(error: BaseException) -> bool:
    """A failure after which Slack may have done the call: its answer was lost, not refused."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return False  # the connection never opened: nothing was sent
    return isinstance(error, aiohttp.ClientError | TimeoutError | OutcomeUnknown)


def partly_done(method: str, status: int, code: str | None) -> bool:
    """Slack's answer to `method` leaves it unsure whether the call was carried out. A 200 that
    is not Slack's (error `http_200`, see `BudgetedSlack._readable`) came from something between
    the bot and Slack that may have passed the call on."""
    return method in NOT_REPEATABLE and (status >= 500 or code in PARTLY_DONE_ERRORS or code == "http_200")


def _method(request: HttpRequest) -> str:
    return request.url.split("?", 1)[0].rsplit("/", 1)[-1]


class RepeatSafeRetryHandler(AsyncConnectionErrorRetryHandler):
    """slack_sdk's retry of broken connections, for the calls a repeat cannot do twice."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not await super()._can_retry_async(state=state, request=request, response=response, error=error):
            return False
        return _method(request) not in NOT_REPEATABLE or not maybe_carried_out(error)  # type: ignore[arg-type]


class RepeatSafeServerErrorRetryHandler(AsyncRetryHandler):
    """Slack's (or its gateway's) 5xx retried, except for the calls a repeat cannot do twice:
    Slack may have carried them out before failing (slack_sdk's own handler repeats any call, and
    only on 500 and 503)."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code not in SERVER_ERROR_STATUSES:
            return False
        return _method(request) not in NOT_REPEATABLE


async def find_landed(
    slack: BudgetedSlack,
    target: Target,
    text: str,
    *,
    known: set[str],
    wait: float,
    block_id: str | None = None,
    ends_a_reply: Callable[[list[str]], bool] | None = None,
) -> str | None:
    """The ts of the message a lost chat.postMessage or chat.startStream left in the target's
    conversation, or None when Slack shows none. Raises what the read raises (CALL_ERRORS) when
    Slack cannot tell now.

    With `block_id` (an answer's last message carries its question's), that message. Else the
    latest message of the bot's after the question, not among `known`, that begins with `text`
    (the Markdown sent) and comes after every message that `ends_a_reply` of another turn (by
    its block ids: an answer's buttons, a notice), so that an earlier answer that happens to begin
    alike is never taken for this one."""
    where: dict[str, Any] = {"channel": target.channel, "oldest": target.message_ts}
    method = "conversations.history"
    if target.thread_ts is not None:
        method, where["ts"] = "conversations.replies", target.thread_ts
    response = await slack.call(
        method, team=target.team, wait=wait, http_verb="GET", limit=LANDED_LOOKUP_LIMIT, **where
    )
    question = ts_number(target.message_ts)
    mine: list[tuple[Decimal, dict[str, Any]]] = []
    for message in response.get("messages") or []:
        if not isinstance(message, dict) or not message.get("bot_id"):
            continue
        if target.bot_user and message.get("user") != target.bot_user:
            continue
        ts = ts_number(message.get("ts"))
        if ts is not None and question is not None and ts > question:
            mine.append((ts, message))
    mine.sort(key=lambda pair: pair[0])
    if block_id is not None:
        return next((str(m["ts"]) for _, m in reversed(mine) if block_id in block_ids(m)), None)
    if ends_a_reply is not None:
        ends = [ts for ts, m in mine if ends_a_reply(block_ids(m))]
        mine = [(ts, m) for ts, m in mine if not ends or ts > max(ends)]
    for _, message in reversed(mine):
        if str(message["ts"]) not in known and begins_with(shown_text(message), text):
            return str(message["ts"])
    return None


def begins_with(shown: str, sent: str) -> bool:
    """Whether a message showing `shown` is the one sent with the Markdown `sent`, by their first
    characters: spaces left out; or, as Slack renders Markdown into blocks and mrkdwn of its own
    (`**` as `*`, links as `<url|label>`, `&` as `&amp;`), only their letters and digits, links
    by their labels."""
    if _squeezed(shown).startswith(_squeezed(sent)[:MATCHED_CHARS]):
        return True
    wanted = _comparable(sent)[:MATCHED_CHARS]
    return bool(wanted) and _comparable(shown).startswith(wanted)


def block_ids(message: dict[str, Any]) -> list[str]:
    blocks = message.get("blocks")
    if not isinstance(blocks, list):
        return []
    return [i for b in blocks if isinstance(b, dict) and isinstance(i := b.get("block_id"), str)]


def first_message_named(message: dict[str, Any]) -> str | None:
    """The first message of the answer whose buttons `message` carries ("good:<ts>"; empty when
    it is that message itself), or None when its buttons do not say."""
    blocks = message.get("blocks")
    for block in blocks if isinstance(blocks, list) else []:
        elements = block.get("elements") if isinstance(block, dict) else None
        for element in elements if isinstance(elements, list) else []:
            button = element.get("positive_button") if isinstance(element, dict) else None
            value = button.get("value") if isinstance(button, dict) else None
            if isinstance(value, str) and value.startswith("good:"):
                return value.removeprefix("good:") or None
    return None


def shown_text(message: dict[str, Any]) -> str:
    """What a message of the bot's shows: its markdown block's text, as sent; else the text of
    the blocks Slack made of it (Slack renders a markdown block into blocks of its own, maybe
    several, and keeps no block id of it); else its `text`."""
    blocks = message.get("blocks")
    blocks = [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []
    markdown = [b.get("text") for b in blocks if b.get("type") == "markdown"]
    if markdown and isinstance(markdown[0], str) and markdown[0]:
        return markdown[0]
    rendered = "".join(_block_text(b) for b in blocks).strip()
    return rendered or str(message.get("text") or "")


def _block_text(block: dict[str, Any]) -> str:
    """The words a block shows (rich text, a section's or a header's text); none for buttons."""
    if block.get("type") == "rich_text":
        return _rich_text(block.get("elements")) + "\n"
    text = block.get("text")
    if isinstance(text, dict) and isinstance(text.get("text"), str):
        return text["text"] + "\n"
    return ""


def _rich_text(node: object) -> str:
    if isinstance(node, list):
        return "".join(_rich_text(n) for n in node)
    if not isinstance(node, dict):
        return ""
    kind = node.get("type")
    if kind == "text":
        return str(node.get("text") or "")
    if kind == "link":
        return str(node.get("text") or node.get("url") or "")
    inner = _rich_text(node.get("elements"))
    return inner + "\n" if kind in RICH_TEXT_LINES else inner


RICH_TEXT_LINES = frozenset({"rich_text_section", "rich_text_preformatted", "rich_text_quote"})


def ts_number(value: object) -> Decimal | None:
    """A Slack ts as a number, to compare; None when it is not one."""
    try:
        number = Decimal(value) if isinstance(value, str) else None
    except InvalidOperation:
        return None
    return number if number is not None and number.is_finite() else None


def _squeezed(text: str) -> str:
    return "".join(text.split())


MARKDOWN_LINK = re.compile(r"\[(?P<label>[^\]]*)\]\([^)\s]*\)")  # [label](url)
SLACK_LINK = re.compile(r"<[^|>]*\|(?P<label>[^>]*)>")  # <url|label>


def _comparable(text: str) -> str:
    """Letters and digits only, a link by its label, Slack's escapes undone."""
    text = SLACK_LINK.sub(r"\g<label>", MARKDOWN_LINK.sub(r"\g<label>", text))
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return "".join(ch for ch in text if ch.isalnum())
