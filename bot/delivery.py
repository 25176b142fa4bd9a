"""How an answer reaches Slack: the "is thinking…" sign, the streamed answer (bot/streaming.py),
notices, and the thanks for feedback. Every call is made within the shared rate budget.

Slack types stop here and in the listeners: the turn only says what to show, and where.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.lost_answers import (
    block_ids,
    find_landed,
    first_message_named,
    maybe_carried_out,
    shown_text,
    ts_number,
)
from bot.rate_limit import CALL_ERRORS, NO_ANSWER_ERRORS, BudgetedSlack, Hold, RateLimited, error_code
from bot.store import Fence, IncomingMessage, RateBucket
from bot.streaming import (
    ANSWER_BLOCK_PREFIX,
    LOST_LOOKUP_ATTEMPTS,
    LOST_POST_ATTEMPTS,
    LOST_RETRY_PAUSE,
    UNQUEUED_NOTICE_PREFIX,
    DeliveryError,
    Ending,
    LostCallUnsettled,
    OnVisible,
    Reply,
    Target,
    answer_block_id,
    fits_one_message,
    is_notice_block,
    notice_block_id,
)

__all__ = [
    "Delivery",
    "DeliveryError",
    "Ending",
    "FoundAnswer",
    "LostCallUnsettled",
    "QuestionInSlack",
    "Reply",
    "Target",
    "ThinkingSign",
    "fits_one_message",
]

log = logging.getLogger(__name__)

THINKING_STATUS = "is thinking…"
LOADING_MESSAGES = ["Reading your question…", "Looking into it…", "Writing an answer…"]
THINKING_REACTION = "eyes"
FEEDBACK_THANKS = "Thanks for the feedback!"
FEEDBACK_NOT_KEPT = "Sorry, I couldn't save your feedback just now. Please click again in a minute."
# A sign with no rate slot free right now is skipped: it is worth less than the answer, which
# must not wait for it (a quick follow-up in a thread waited up to 1 s for setStatus's slot).
SIGN_WAIT = 0.0
THANKS_WAIT = 1.0  # seconds the thanks for a vote may wait for a rate slot


# How many messages after a question are searched for an answer already posted to it: the
# answer follows its question closely, and recovery runs within seconds of the crash.
FIND_ANSWER_LIMIT = 200
SECTION_TEXT_LIMIT = 3000  # Slack's limit for a section block's text


@dataclass(frozen=True)
class FoundAnswer:
    """An answer already in Slack, whole (`ts` its first message, `text` all of it, to its
    buttons); or, when not `complete`, its first message, cut short (its process died as it
    showed, before noting it)."""

    ts: str
    text: str
    complete: bool = True
    messages: tuple[str, ...] = ()  # a whole one's: the ts of each of its messages, first to last


@dataclass(frozen=True)
class Noticed:
    """A notice for the question already in Slack (its block id names it): its turn's outcome,
    from a process that posted it and died before recording it (see `Delivery.find_answer`).
    `begun`: the bot's messages between the question and the notice, after any that ends an
    earlier turn's reply, that are neither notices nor an answer's last message (the parts of an
    answer given up for it, which may stream still)."""

    begun: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuestionInSlack:
    """What Slack shows of a question: whether it is still there, its text now (as Slack writes
    it), and what the bot posted for it already: an answer (see `FoundAnswer`) or a notice."""

    there: bool
    text: str | None = None
    answer: FoundAnswer | None = None
    noticed: bool = False
    begun: tuple[str, ...] = ()  # when noticed: the parts of an answer given up for it (`Noticed`)


@dataclass
class ThinkingSign:
    target: Target
    kind: str  # "status", "reaction" or "none"
    removal: Hold | None = None  # the reactions.remove slot kept for taking the reaction away


def target_for(message: IncomingMessage) -> Target:
    """Where the answer to a message goes, and to whom it is streamed."""
    return Target(
        channel=message.channel,
        thread_ts=message.reply_thread_ts,
        message_ts=message.ts,
        team=message.team,
        user=message.user,
        is_dm=message.is_dm,
        bot_user=message.bot_user_id,
    )


class Delivery:
    def __init__(self, slack: BudgetedSlack, *, min_interval: float = 0.3) -> None:
        self.slack = slack
        self.budget = slack.budget
        self.min_interval = min_interval
        # Seconds a final message may wait for its rate slot: two of Slack's minutes, scaled.
        self.final_wait = 120.0 / slack.budget.scale

    def reply(
        self,
        target: Target,
        *,
        on_visible: OnVisible | None = None,
        after: asyncio.Future[Any] | None = None,
        fence: Fence | None = None,
        stored: Callable[[], Awaitable[set[str]]] | None = None,
    ) -> Reply:
        """A new answer; nothing is posted until its first text is written, nor before `after`
        (the thinking sign on its way) is done. `on_visible` is awaited with the ts of its first
        message as soon as Slack shows it while the answer is still being written. `fence`: the
        turn's thread lock, without which no new message of it is posted."""
        return Reply(
            self.slack,
            target,
            min_interval=self.min_interval,
            final_wait=self.final_wait,
            on_visible=on_visible,
            after=after,
            fence=fence,
            stored=stored,
        )

    def status_bucket(self, target: Target) -> RateBucket:
        """The rate bucket of the thinking status in the target's thread."""
        return self.budget.bucket(target.team, "assistant.threads.setStatus", _thread_scope(target))

    async def show_thinking(self, target: Target, *, counted: bool = False) -> ThinkingSign:
        """Show that the bot is working: a thread status where there is a thread, else a reaction.
        `counted`: the status call was counted in its rate bucket already."""
        if target.thread_ts is not None:
            try:
                await self.slack.call(
                    "assistant.threads.setStatus",
                    team=target.team,
                    scope=_thread_scope(target),
                    wait=SIGN_WAIT * self._time_unit,
                    counted=counted,
                    channel_id=target.channel,
                    thread_ts=target.thread_ts,
                    status=THINKING_STATUS,
                    loading_messages=LOADING_MESSAGES,
                )
                return ThinkingSign(target, "status")
            except SlackApiError as error:
                _log_api_error("assistant.threads.setStatus", error)
            except RateLimited:
                return ThinkingSign(target, "none")
        # A reaction is added only with its removal's slot kept: it must never stay behind.
        removal = self.budget.hold_for(target.team, "reactions.remove")
        try:
            await self.slack.call(
                "reactions.add",
                team=target.team,
                holds=(removal,),
                channel=target.channel,
                timestamp=target.message_ts,
                name=THINKING_REACTION,
            )
            return ThinkingSign(target, "reaction", removal)
        except SlackApiError as error:
            if error.response.get("error") == "already_reacted":  # left by an interrupted turn
                return ThinkingSign(target, "reaction")
            _log_api_error("reactions.add", error)
        except RateLimited:
            log.info("thinking reaction skipped: no rate budget channel=%s", target.channel)
        return ThinkingSign(target, "none")

    async def clear_thinking(self, sign: ThinkingSign, *, answered: bool) -> None:
        """Take the sign away. Slack clears a thread status itself when the bot replies there."""
        if sign.kind == "reaction" or (sign.kind == "status" and not answered):
            await self.clear_sign(sign.target, sign.kind, sign.removal)

    async def clear_sign(self, target: Target, kind: str, removal: Hold | None = None) -> None:
        """Remove a thinking sign, also one left by an interrupted turn (which has no held slot).
        Never raises: a sign that cannot be taken away is not worth failing a turn over."""
        try:
            if kind == "status":
                await self.slack.call(
                    "assistant.threads.setStatus",
                    team=target.team,
                    scope=_thread_scope(target),
                    wait=self.final_wait,
                    channel_id=target.channel,
                    thread_ts=target.thread_ts or "",
                    status="",
                )
            elif kind == "reaction":
                await self.slack.call(
                    "reactions.remove",
                    team=target.team,
                    use=removal,
                    wait=self.final_wait,
                    channel=target.channel,
                    timestamp=target.message_ts,
                    name=THINKING_REACTION,
                )
        except SlackApiError as error:
            _log_api_error("clear thinking sign", error)
        except RateLimited as error:
            log.warning("thinking sign left in place: %s", error)
        except NO_ANSWER_ERRORS as error:  # Slack unreachable, retries spent
            log.warning("thinking sign left in place error=%s", error_code(error))

    async def end_abandoned(self, target: Target, ts: str) -> None:
        """Close a message an interrupted turn left streaming, so it shows as finished. Never raises."""
        for attempt in range(1, LOST_POST_ATTEMPTS + 1):
            try:
                await self.slack.call(
                    "chat.stopStream", team=target.team, wait=self.final_wait, channel=target.channel, ts=ts
                )
            except SlackApiError as error:
                if error.response.get("error") != "message_not_in_streaming_state":  # already closed
                    _log_api_error("chat.stopStream", error)
            except RateLimited as error:
                log.warning("abandoned stream left open: %s", error)
            except NO_ANSWER_ERRORS as error:
                if attempt < LOST_POST_ATTEMPTS:  # a bare stop done twice does nothing twice
                    await asyncio.sleep(LOST_RETRY_PAUSE * attempt / self.budget.scale)
                    continue
                log.warning("abandoned stream left open error=%s", error_code(error))
            return

    async def find_answer(self, target: Target, bot_user_id: str) -> FoundAnswer | Noticed | None:
        """An answer to the target's question already in Slack, from a process that showed it
        and died before recording that: its last message, found by its buttons' block id; else a
        notice for the question (`Noticed`: its outcome, the note that an answer was interrupted,
        say, posted as the answer cut short was closed); else the start of one cut short, the
        bot's last message after the question when that has no buttons and is no notice (turns
        in a thread run one after another, so nothing of this bot's comes after it). None when
        there is none of these, or Slack cannot tell now (the caller answers then). Never raises."""
        try:
            messages, has_more = await self._read_from(target, wait=self.final_wait)
        except CALL_ERRORS as error:
            log.warning(
                "could not look for an answer posted already channel=%s error=%s",
                target.channel,
                error_code(error),
            )
            return None
        found = _answer_among(messages, has_more, target.message_ts, bot_user_id)
        if (found is None or not found.complete) and _noticed(messages, target.message_ts):
            return Noticed(_begun_before_notice(messages, target.message_ts, bot_user_id))
        return found

    async def look_at_question(
        self, target: Target, bot_user_id: str, *, wait: float
    ) -> QuestionInSlack | None:
        """Whether the target's question is still in Slack (not deleted; its text, edited or
        not), and whether the bot answered it or posted a notice for it: one read, from the
        question on, waiting up to `wait` s for a slot and trying again after a failure. None
        when Slack cannot tell now. Never raises."""
        for attempt in range(1, LOST_LOOKUP_ATTEMPTS + 1):
            try:
                messages, has_more = await self._read_from(target, wait=wait, inclusive=True)
                break
            except SlackApiError as error:
                if error.response.get("error") == "thread_not_found":
                    return QuestionInSlack(there=False)  # the thread went, and the question with it
                failure: BaseException = error
            except CALL_ERRORS as error:
                failure = error
            log.warning(
                "could not look at a question in slack channel=%s ts=%s attempt=%d error=%s",
                target.channel,
                target.message_ts,
                attempt,
                error_code(failure),
            )
            # No slot within the wait: the budget is spent for a while, and the wait was long.
            if attempt == LOST_LOOKUP_ATTEMPTS or (
                isinstance(failure, RateLimited) and not failure.from_slack
            ):
                return None
            await asyncio.sleep(LOST_RETRY_PAUSE * attempt / self.budget.scale)
        question = next((m for m in messages if m.get("ts") == target.message_ts), None)
        if question is None or question.get("subtype") == "tombstone":
            # A thread's replies come oldest first, from the question on: it would be there. The
            # channel's history comes newest first: when it has more, the question may be further.
            if question is None and has_more and target.thread_ts is None:
                return None
            return QuestionInSlack(there=False)
        noticed = _noticed(messages, target.message_ts)
        answer = _answer_among(messages, has_more, target.message_ts, bot_user_id)
        text = question.get("text")
        begun = _begun_before_notice(messages, target.message_ts, bot_user_id) if noticed else ()
        return QuestionInSlack(True, text if isinstance(text, str) else None, answer, noticed, begun)

    async def _read_from(
        self, target: Target, *, wait: float, inclusive: bool = False
    ) -> tuple[list[dict[str, Any]], bool]:
        """The target's conversation after its question (from it, `inclusive`): a thread's
        replies, or a DM's top level; with whether Slack has more. Raises CALL_ERRORS."""
        where: dict[str, Any] = {"channel": target.channel, "oldest": target.message_ts}
        if inclusive:
            where["inclusive"] = "true"
        if target.thread_ts is not None:
            method, where["ts"] = "conversations.replies", target.thread_ts
        else:
            method = "conversations.history"
        response = await self.slack.call(
            method, team=target.team, wait=wait, http_verb="GET", limit=FIND_ANSWER_LIMIT, **where
        )
        messages = [m for m in response.get("messages") or [] if isinstance(m, dict)]
        return messages, bool(response.get("has_more"))

    async def post_notice(
        self, target: Target, text: str, *, outcome: bool = True, fence: Fence | None = None
    ) -> str | None:
        """A short message from the bot itself (an error, a confirmation). Never raises, but
        LockLost when `fence` no longer holds (as for an answer's post). A post whose answer was
        lost is made again only when Slack shows it did not land (found by its block id, which
        names the question; by its text when it is too long for a block).

        Not the question's `outcome` (Redis refused the message as it came): marked so, the look
        after a loss (`look_at_question`) does not take it for one."""
        block_id = notice_block_id(target.message_ts, outcome=outcome)
        blocks = _notice_blocks(text, block_id)
        block_id = block_id if blocks else None
        for attempt in range(1, LOST_POST_ATTEMPTS + 1):
            try:
                response = await self.slack.call(
                    "chat.postMessage",
                    team=target.team,
                    scope=target.channel,
                    wait=self.final_wait,
                    fence=fence,
                    channel=target.channel,
                    thread_ts=target.thread_ts,
                    text=text,
                    blocks=blocks,
                )
                return str(response["ts"])
            except SlackApiError as error:
                _log_api_error("chat.postMessage", error)
                return None
            except RateLimited as error:
                log.warning("notice not posted: %s", error)
                return None
            except NO_ANSWER_ERRORS as error:
                if not maybe_carried_out(error) or attempt == LOST_POST_ATTEMPTS:
                    log.warning("notice not posted error=%s", error_code(error))
                    return None
                log.warning("notice post answer lost error=%s", error_code(error))
            try:
                landed = await find_landed(
                    self.slack, target, text, known=set(), wait=self.final_wait, block_id=block_id
                )
            except CALL_ERRORS as error:
                log.warning("notice not posted, lost post not looked for error=%s", error_code(error))
                return None
            if landed is not None:
                return landed
        return None

    async def thank_for_feedback(
        self, team: str, channel: str, thread_ts: str | None, user: str, *, kept: bool = True
    ) -> None:
        """Tell the person (only them) that their vote was kept, or that it could not be. Never raises."""
        try:
            await self.slack.call(
                "chat.postEphemeral",
                team=team,
                wait=THANKS_WAIT * self._time_unit,
                channel=channel,
                user=user,
                thread_ts=thread_ts,
                text=FEEDBACK_THANKS if kept else FEEDBACK_NOT_KEPT,
            )
        except SlackApiError as error:
            _log_api_error("chat.postEphemeral", error)
        except RateLimited as error:
            log.info("feedback thanks skipped: %s", error)
        except NO_ANSWER_ERRORS as error:
            # Slack unreachable even after the client's retries; the vote is kept all the same.
            log.warning("feedback thanks not sent error=%s", type(error).__name__)

    @property
    def _time_unit(self) -> float:
        return 1.0 / self.budget.scale


def _thread_scope(target: Target) -> str:
    return f"{target.channel}:{target.thread_ts}"


def _log_api_error(method: str, error: SlackApiError) -> None:
    log.warning("slack call failed method=%s error=%s", method, error.response.get("error"))


def _notice_blocks(text: str, block_id: str) -> list[dict[str, Any]] | None:
    """A notice's text in a block that names it a notice (see `find_answer`)."""
    if len(text) > SECTION_TEXT_LIMIT:
        return None
    return [{"type": "section", "block_id": block_id, "text": {"type": "mrkdwn", "text": text}}]


def _noticed(messages: list[dict[str, Any]], question_ts: str) -> bool:
    """Whether the bot posted a notice that is the question's outcome among these messages."""
    notice = notice_block_id(question_ts)
    return any(m.get("bot_id") and notice in block_ids(m) for m in messages)


def _begun_before_notice(
    messages: list[dict[str, Any]], question_ts: str, bot_user_id: str
) -> tuple[str, ...]:
    """See `Noticed.begun`: the bot's messages after the question and before its notice, and
    after the last before it that ends a turn's reply (an answer's last message, a notice that
    is some question's outcome): turns in a thread run one after another, so a message before
    that one is an earlier turn's (a long answer's middle one, asked after while it was written)."""
    notice, question = notice_block_id(question_ts), ts_number(question_ts)
    if question is None:
        return ()
    later = [
        (ts, message)
        for message in messages
        if message.get("bot_id") and (ts := ts_number(message.get("ts"))) is not None and ts > question
    ]
    later.sort(key=lambda pair: pair[0])  # a DM's history comes newest first
    begun: list[str] = []
    for _, message in later:
        ids = block_ids(message)
        if notice in ids:
            return tuple(begun)
        if message.get("user") != bot_user_id or any(i.startswith(UNQUEUED_NOTICE_PREFIX) for i in ids):
            continue  # not the bot's, or a notice for a message that never had a turn
        if any(is_notice_block(i) or i.startswith(ANSWER_BLOCK_PREFIX) for i in ids):
            begun = []  # an earlier turn's reply ends here
        else:
            begun.append(str(message["ts"]))
    return ()


def _answer_among(
    messages: list[dict[str, Any]], has_more: bool, question_ts: str, bot_user_id: str
) -> FoundAnswer | None:
    """The answer to the question among messages read after it (see `Delivery.find_answer`)."""
    wanted = answer_block_id(question_ts)
    for message in messages:
        if message.get("bot_id") and wanted in block_ids(message):
            return _whole_answer(messages, message, bot_user_id)
    if has_more:
        return None  # the bot's last message may be on a later page: not worth the guess
    return _answer_begun(messages, question_ts, bot_user_id)


def _answer_begun(messages: list[dict[str, Any]], question_ts: str, bot_user_id: str) -> FoundAnswer | None:
    """The bot's last message after the question, when it can only be the beginning of that
    question's answer: it has no buttons (an answer's last message has them) and is no notice."""
    question = ts_number(question_ts)
    if question is None:
        return None
    later: list[tuple[Decimal, dict[str, Any]]] = []
    for message in messages:
        ts = ts_number(message.get("ts"))
        if message.get("bot_id") and message.get("user") == bot_user_id and ts is not None and ts > question:
            later.append((ts, message))
    if not later:
        return None
    _, last = max(later, key=lambda pair: pair[0])
    if any(is_notice_block(i) or i.startswith(ANSWER_BLOCK_PREFIX) for i in block_ids(last)):
        return None
    return FoundAnswer(str(last["ts"]), shown_text(last), complete=False)


def _whole_answer(messages: list[dict[str, Any]], last: dict[str, Any], bot_user_id: str) -> FoundAnswer:
    """An answer found by its last message, with the messages before it when it was too long
    for one: its buttons name its first message, and every message of the bot's from that one
    to the last is part of it (a thread's turns run one after another). The text is what Slack
    shows, the parts joined as separate paragraphs."""
    last_ts = str(last["ts"])
    first_ts = first_message_named(last) or last_ts
    first, end = ts_number(first_ts), ts_number(last_ts)
    if first is None or end is None or first >= end:
        return FoundAnswer(last_ts, shown_text(last), messages=(last_ts,))
    parts = [
        (ts, message)
        for message in messages
        if message.get("bot_id")
        and message.get("user") == bot_user_id
        and (ts := ts_number(message.get("ts"))) is not None
        and first <= ts < end
        and not any(map(is_notice_block, block_ids(message)))
    ]
    parts.sort(key=lambda pair: pair[0])
    texts = [shown_text(message) for _, message in parts] + [shown_text(last)]
    shown = (first_ts, *(str(message["ts"]) for _, message in parts), last_ts)
    whole = "\n\n".join(text.strip() for text in texts if text.strip())
    return FoundAnswer(first_ts, whole, messages=tuple(dict.fromkeys(shown)))
