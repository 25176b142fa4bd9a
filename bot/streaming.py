"""One answer on its way to Slack while the model writes it.

The turn `write`s the model's text as it comes (never waiting on Slack) and `finish`es with how
the answer ended. A background task shows the text: streamed with chat.startStream /
appendStream / stopStream where Slack allows it, else posted with chat.postMessage and grown
with chat.update. Every call is taken from the shared rate budget; when the budget is short the
task simply sends less often, so each update carries more text, and text is never dropped.

- Nothing is posted before there is text, so no placeholder can stay behind.
- A stream is started only together with a held slot for its chat.stopStream, and a posted
  message only with one for its last chat.update: the final form never waits behind updates.
- Long answers continue in a new message at a block boundary (bot/formatting.py).
- The last message gets the feedback buttons; an answer that did not end normally gets a short
  note saying so and how to get the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError

from bot.formatting import TEXT_LIMIT, SlackMarkdown, find_cut, inside_code, sendable, to_mrkdwn
from bot.lost_answers import find_landed, maybe_carried_out
from bot.rate_limit import CALL_ERRORS, BudgetedSlack, Hold, RateLimited, error_code
from bot.store import Fence, LockLost

log = logging.getLogger(__name__)


class Ending(enum.Enum):
    COMPLETE = "answered"
    TRUNCATED = "truncated"  # the model reached its length limit
    CUT_OFF = "cut_off"  # the model stopped responding, or its stream ended unfinished
    FILTERED = "content_filter"  # the model's content filter ended it
    STOPPED = "stopped_by_user"


NOTES = {
    Ending.TRUNCATED: (
        "_(This answer stops here: it reached the language model's length limit. "
        "Ask me to continue for the rest.)_"
    ),
    Ending.FILTERED: "_(The language model's content filter stopped this answer here.)_",
    Ending.CUT_OFF: (
        "_(My answer was cut off here: the language model stopped responding. "
        "Ask again, or say “continue”, for the rest.)_"
    ),
}
FEEDBACK_ACTION = "answer_feedback"
# The block id of an answer's buttons names the question it answers: recovery finds an answer a
# process posted and died before recording (see `Delivery.find_answer`).
ANSWER_BLOCK_PREFIX = "answer_to:"
# The block id of a notice, so that recovery never takes one for the start of an answer, and a
# lost notice is found by it: "notice:" and the question's ts ("notice" alone before 7 Dec 2026).
NOTICE_BLOCK_ID = "notice"
# A notice that is no turn's outcome (Redis refused the message as it came; a mention's twin may
# have been queued all the same): "notice:unqueued:" and the question's ts, so that the look in
# Slack after a loss (`Delivery.look_at_question`) does not take it for the question's outcome.
UNQUEUED_NOTICE_PREFIX = f"{NOTICE_BLOCK_ID}:unqueued:"

# Errors that mean "no streaming here": post and update instead.
STREAMING_REFUSED = {
    "channel_type_not_supported",
    "missing_scope",
    "not_allowed_token_type",
    "unknown_method",
    "method_deprecated",
    "feature_not_enabled",
    "invalid_arguments",
    "missing_recipient_team_id",
    "missing_recipient_user_id",
    "team_not_found",
    "user_not_found",
}
# Errors that mean "this stream can grow no more": what it shows stays, the rest is posted.
STREAM_ENDED = {"message_not_in_streaming_state", "streaming_state_conflict"}
INTERMEDIATE_FAILURES_TOLERATED = 3
LOST_POST_ATTEMPTS = 3  # posts of one message whose answers were lost, each looked for in Slack
LOST_LOOKUP_ATTEMPTS = 3  # reads of the conversation to learn what a lost call did
LOST_RETRY_PAUSE = 0.5  # s, times the attempt: between repeats of a bare stop whose answer was lost
# The first text waits this long for more: an answer written whole by then (a short answer, a fast
# model) goes out as one message, not a message and its update, which would cost an update of
# Slack's scarce budget (chat.update: 50 a minute per workspace) for no one's benefit.
FIRST_SHOW_DELAY = 0.1


@dataclass(frozen=True)
class Target:
    """Where one turn's answer goes."""

    channel: str
    thread_ts: str | None  # None: a top-level reply (a DM's rolling conversation)
    message_ts: str  # the user's message being answered
    team: str = ""
    user: str = ""  # who asked: streamed messages in channels are addressed to them
    is_dm: bool = False
    bot_user: str = ""  # the bot's own user id, to know its messages when reading Slack back


OnVisible = Callable[[str], Awaitable[None]]


class DeliveryError(Exception):
    """The answer could not be shown (or finished) in Slack; `code` is Slack's error."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class LostCallUnsettled(DeliveryError):
    """A call of the answer was lost on the way back, and Slack could not be asked whether it
    was carried out: recovery, which looks in Slack first, is to finish the answer."""

    def __init__(self) -> None:
        super().__init__("lost_call_unsettled")


@dataclass
class _Message:
    mode: str  # "stream" or "post"
    ts: str
    shown: str  # the text Slack shows now
    final_slot: Hold | None  # the stopStream / last chat.update slot held for it
    unsure: bool = False  # a stream whose last append or stop was lost on the way back


class Reply:
    def __init__(
        self,
        slack: BudgetedSlack,
        target: Target,
        *,
        min_interval: float,
        final_wait: float,
        on_visible: OnVisible | None = None,
        after: asyncio.Future[Any] | None = None,
        fence: Fence | None = None,
        stored: Callable[[], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.slack = slack
        self._stored = stored  # the ts of the conversation's stored turns, read only when needed
        # Each new message of the answer is posted only while the turn's thread lock is still
        # its own: a worker that stalled past the lock's lifetime, and whose thread another
        # worker took meanwhile, must not answer the message as well.
        self._fence = fence
        self._lost = False
        self._on_visible = on_visible
        self._after = after
        self.budget = slack.budget
        self.target = target
        self.min_interval = min_interval
        self.final_wait = final_wait
        self.stopped_by_user = False
        self.updates = 0  # intermediate appends or chat.updates sent
        self._formatter = SlackMarkdown()
        self._current = ""  # formatted text of the message being written, shown or not
        self._message: _Message | None = None
        self._posted: list[str] = []  # ts of the finished messages, in order
        self._lost_open: _Message | None = None  # a start or post whose answer was lost (no ts)
        self._stopping: str | None = None  # the stream last being stopped (see `left_streaming`)
        self._streaming = target.thread_ts is not None  # Slack streams replies, not top-level posts
        self._writer = uuid.uuid4().hex
        self._joined = False  # counted among the writers of the update buckets (see _leave)
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._next_at = 0.0
        self._failures = 0
        self._first_show: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the turn's side -------------------------------------------------------------------

    def write(self, text: str) -> bool:
        """Add the model's next text. Returns False once the user has pressed stop, or the
        thread was found taken over (the model need not write more)."""
        if self.stopped_by_user or self._lost:
            return False
        self._add(self._formatter.feed(text))
        if self._first_show is None:
            # No task until the text has waited its moment: an answer finished by then has none.
            self._first_show = asyncio.get_running_loop().call_later(FIRST_SHOW_DELAY, self._start_showing)
        self._wake.set()
        return True

    def _start_showing(self) -> None:
        if not self._closing.is_set():
            self._task = asyncio.create_task(self._show_while_written())

    async def finish(self, ending: Ending) -> list[str]:
        """Show the answer in its final form; returns the ts of its messages (none if it had no
        text). Raises DeliveryError when Slack would not take it, LockLost when the thread was
        taken over by another worker (which answers instead)."""
        self._closing.set()
        self._wake.set()
        if self._first_show is not None:
            self._first_show.cancel()
        if self._task is not None:
            await self._task
        try:
            if self._lost:
                raise LockLost(self.target.channel)
            await self._finish(ending)
        except SlackApiError as error:
            raise DeliveryError(str(error.response.get("error"))) from None
        except RateLimited as error:
            raise DeliveryError(f"ratelimited:{error.method}") from None
        finally:
            await self._leave()
        return list(self._posted)

    def abandon(self) -> None:
        """Show nothing more, without giving the answer its final form: its turn was given up
        (the process is stopping, or another worker took the thread over and will close what
        is shown, from the journal)."""
        self._closing.set()
        if self._first_show is not None:
            self._first_show.cancel()
        if self._task is not None:
            self._task.cancel()

    def go_on_in(self, ts: str) -> None:
        """The answer's one message is in Slack already, started by a call whose answer was lost
        and found there by recovery; what it shows, and whether it still streams, is unknown.
        It is stopped bare, then given the whole answer (see `_settle_stream`)."""
        self._message = _Message("stream", ts, "", None, unsure=True)

    @property
    def shown(self) -> bool:
        return bool(self._posted or self._message)

    @property
    def left_streaming(self) -> list[str]:
        """The ts of the answer's messages that may still be streaming: the one being written,
        or one whose final stop failed. A turn that gives the answer up for a notice closes them
        first: else Slack shows them as still being written, above the notice, for good."""
        message = self._message
        streams = [self._stopping, message.ts if message is not None and message.mode == "stream" else None]
        return [ts for ts in dict.fromkeys(streams) if ts is not None and ts not in self._posted]

    def _add(self, text: str) -> None:
        if not self._current and not self._posted and self._message is None:
            text = text.lstrip()  # an answer starts at its first visible character
        self._current += text

    # -- while the model writes --------------------------------------------------------------

    async def _show_while_written(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            delay = self._next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._closing.wait()
            if self._closing.is_set() or self.stopped_by_user:
                return
            try:
                await self._show_more()
            except RateLimited as busy:
                # Keep the text; it goes out with the next update, once there is room.
                self._next_at = loop.time() + min(max(busy.retry_in, 0.01), 5.0)
                self._wake.set()
            except LockLost:
                self._lost = True  # finish() tells the turn
                return
            except Exception as error:  # a background task: log it here or it is lost
                self._failures += 1
                log.warning(
                    "slack update failed channel=%s error=%s failures=%d",
                    self.target.channel,
                    error_code(error),
                    self._failures,
                )
                if self._failures >= INTERMEDIATE_FAILURES_TOLERATED:
                    return  # the final form is tried once more by finish()
                self._next_at = loop.time() + 1.0 / self.budget.scale
                self._wake.set()

    async def _show_more(self) -> None:
        loop = asyncio.get_running_loop()
        await self._settle_lost()
        if self.stopped_by_user:
            return  # found when a lost append was settled: nothing more is shown
        while (cut := find_cut(before := self._current)) is not None:
            await self._close_message(cut.head, feedback=None)
            if self.stopped_by_user:
                return  # pressed as this message closed: the answer goes no further
            # The model may have written more while Slack answered.
            self._current = cut.tail + self._current[len(before) :]
        text = self._current[: sendable(self._current)]
        message = self._message
        if message is None:
            if text.strip():
                await self._open(text)
            return
        if len(text) <= len(message.shown):
            return
        self._joined = True
        if message.mode == "stream":
            try:
                await self.slack.call(
                    "chat.appendStream",
                    team=self.target.team,
                    headroom=1,
                    writer=self._writer,
                    channel=self.target.channel,
                    ts=message.ts,
                    markdown_text=text[len(message.shown) :],
                )
            except SlackApiError as error:
                if not await self._stream_refused(error, message):
                    raise
                return
            except CALL_ERRORS as error:
                message.unsure = maybe_carried_out(error)  # the piece may show: never append it again
                raise
            method = "chat.appendStream"
        else:
            await self.slack.call(
                "chat.update",
                team=self.target.team,
                headroom=1,
                writer=self._writer,
                channel=self.target.channel,
                ts=message.ts,
                markdown_text=text,
            )
            method = "chat.update"
        message.shown = text
        self.updates += 1
        self._failures = 0
        interval = max(self.min_interval, self.budget.fair_interval(self.target.team, method))
        self._next_at = loop.time() + interval
        if len(self._current) > len(text):
            self._wake.set()

    async def _open(self, text: str) -> None:
        """Start the answer's next message with `text`: streamed if Slack lets us, else posted."""
        target = self.target
        await self._after_sign()
        if self._streaming:
            stop_slot = self.budget.hold_for(target.team, "chat.stopStream")
            recipient: dict[str, Any] = {}
            if not target.is_dm:
                recipient = {"recipient_team_id": target.team, "recipient_user_id": target.user}
            try:
                response = await self.slack.call(
                    "chat.startStream",
                    team=target.team,
                    holds=(stop_slot,),
                    fence=self._fence,
                    channel=target.channel,
                    thread_ts=target.thread_ts,
                    markdown_text=text,
                    **recipient,
                )
                self._message = _Message("stream", str(response["ts"]), text, stop_slot)
                await self._became_visible(self._message.ts)
                return
            except RateLimited:
                pass  # no stream slot now: post this message instead
            except SlackApiError as error:
                code = error.response.get("error")
                if code not in STREAMING_REFUSED:
                    raise
                log.info("streaming refused, posting instead channel=%s error=%s", target.channel, code)
                self._streaming = False
            except CALL_ERRORS as error:
                if maybe_carried_out(error):
                    self._lost_open = _Message("stream", "", text, None)
                raise
        update_slot = self.budget.hold_for(target.team, "chat.update")
        try:
            response = await self.slack.call(
                "chat.postMessage",
                team=target.team,
                scope=target.channel,
                holds=(update_slot,),
                fence=self._fence,
                channel=target.channel,
                thread_ts=target.thread_ts,
                markdown_text=text,
                unfurl_links=False,
                unfurl_media=False,
            )
        except CALL_ERRORS as error:
            if maybe_carried_out(error):
                self._lost_open = _Message("post", "", text, None)
            raise
        self._message = _Message("post", str(response["ts"]), text, update_slot)
        await self._became_visible(self._message.ts)

    async def _stream_refused(self, error: SlackApiError, message: _Message) -> bool:
        """Handle an error a stream can answer; False for any other error."""
        code = error.response.get("error")
        if code == "stopped_by_user":
            log.info("answer stopped by the user channel=%s ts=%s", self.target.channel, message.ts)
            self.stopped_by_user = True
            await self._drop_message(message)
            return True
        if code in STREAM_ENDED or code in STREAMING_REFUSED:
            # What the stream shows stays; the rest of the answer goes in a posted message.
            log.info("stream ended early, posting the rest channel=%s error=%s", self.target.channel, code)
            self._streaming = False
            await self._drop_message(message)
            self._current = _continuation(message.shown, self._current)
            return True
        return False

    async def _drop_message(self, message: _Message) -> None:
        """The message takes no more text: keep its ts, give back its final slot."""
        self._posted.append(message.ts)
        self._message = None
        if message.final_slot is not None:
            await self.budget.release(message.final_slot)

    # -- the final form ----------------------------------------------------------------------

    async def _finish(self, ending: Ending) -> None:
        self._add(self._formatter.finish())
        await self._settle_lost()
        if self.stopped_by_user or ending is Ending.STOPPED:
            if self._message is not None and not self._message.shown:
                self._posted.append(self._message.ts)  # found in Slack (`go_on_in`): it stays as it is
            elif self._message is not None:
                await self._close_message(self._message.shown, feedback=None)
            return
        self._current = self._current.rstrip()
        if not self._current and self._message is None and not self._posted:
            return  # nothing was written: the turn says why instead
        while (cut := find_cut(self._current)) is not None:
            await self._close_message(cut.head, feedback=None)
            if self.stopped_by_user:
                return
            self._current = cut.tail
        note = NOTES.get(ending)
        text = f"{self._current}\n\n{note}" if note and self._current else (self._current or note or "")
        first = self._posted[0] if self._posted else (self._message.ts if self._message else None)
        await self._close_message(text, feedback=first or "")

    async def _close_message(self, text: str, *, feedback: str | None) -> None:
        """Give the current message its final text (posting it whole if nothing was shown yet).

        `feedback` (the answer's first ts, "" when this is the first message) adds the buttons.
        """
        target = self.target
        message, self._message = self._message, None
        question = target.message_ts
        blocks = [_feedback_block(feedback, question)] if feedback is not None else None
        if message is not None and message.mode == "stream":
            self._stopping = message.ts  # until it is among the posted, it may stream still
        if message is not None and message.mode == "stream" and not message.unsure:
            rest = text[len(message.shown) :] if text.startswith(message.shown) else ""
            try:
                await self._final_call(
                    "chat.stopStream",
                    use=message.final_slot,
                    channel=target.channel,
                    ts=message.ts,
                    markdown_text=rest or None,
                    blocks=blocks,
                )
                self._posted.append(message.ts)
                return
            except SlackApiError as error:
                code = error.response.get("error")
                if code == "stopped_by_user":
                    self.stopped_by_user = True
                    self._posted.append(message.ts)
                    return
                if code not in STREAM_ENDED:
                    raise
                self._posted.append(message.ts)
                text = _continuation(message.shown, text)
                message = None
                if not text.strip():
                    return
            except CALL_ERRORS as error:
                if not maybe_carried_out(error):
                    raise
                log.warning("stream stop answer lost channel=%s error=%s", target.channel, error_code(error))
                message.unsure, message.final_slot = True, None  # the slot went with the lost stop
        if message is not None and message.unsure:
            await self._settle_stream(message)
            if self.stopped_by_user:  # pressed while the stop was unsure: what shows stays
                self._posted.append(message.ts)
                return
        content = _content(text, feedback, question)
        await self._after_sign()
        if message is not None:
            await self._final_call("chat.update", use=message.final_slot, channel=target.channel,
                                   ts=message.ts, **content)  # fmt: skip
            self._posted.append(message.ts)
            return
        block_id = answer_block_id(question) if feedback is not None else None
        self._posted.append(await self._post(text, content, block_id))
        if feedback is None:
            # More of the answer is to come. (The last message is journaled with the answer.)
            await self._became_visible(self._posted[-1])

    async def _post(self, text: str, content: dict[str, Any], block_id: str | None) -> str:
        """Post a message of the answer (`text`, its Markdown; `block_id`, its buttons' on the
        last); returns its ts. After a post whose answer was lost it posts again only once Slack
        shows the first did not land."""
        target = self.target
        for _ in range(LOST_POST_ATTEMPTS):
            try:
                response = await self._final_call(
                    "chat.postMessage",
                    scope=target.channel,
                    fence=self._fence,
                    channel=target.channel,
                    thread_ts=target.thread_ts,
                    unfurl_links=False,
                    unfurl_media=False,
                    **content,
                )
                return str(response["ts"])
            except CALL_ERRORS as error:
                if not maybe_carried_out(error):
                    raise
                log.warning("slack post answer lost channel=%s error=%s", target.channel, error_code(error))
                lost = error
            # Looked for after the last attempt too: that one may have landed.
            if (ts := await self._landed(text, block_id)) is not None:
                return ts
        raise lost

    async def _landed(self, text: str, block_id: str | None = None) -> str | None:
        """The ts of the message a lost post or start of this answer left in Slack, or None.
        Raises LostCallUnsettled when Slack cannot be asked now: the network that lost the call's
        answer often fails the next call too, so it is asked a few times first."""
        known = set(self._posted)
        for attempt in range(1, LOST_LOOKUP_ATTEMPTS + 1):
            try:
                if block_id is None and self._stored is not None:
                    known |= await self._stored()  # earlier answers, a stopped one included
                ts = await find_landed(
                    self.slack, self.target, text, known=known, wait=self.final_wait,
                    block_id=block_id, ends_a_reply=_ends_a_reply,
                )  # fmt: skip
            except (*CALL_ERRORS, RedisError, OSError) as error:
                log.warning(
                    "lost post not looked for channel=%s error=%s attempt=%d",
                    self.target.channel, error_code(error), attempt,
                )  # fmt: skip
                if attempt < LOST_LOOKUP_ATTEMPTS:
                    await asyncio.sleep(0.5 * 2**attempt / self.budget.scale)
                continue
            log.info(
                "lost post %s channel=%s", "found in slack" if ts else "not in slack", self.target.channel
            )
            return ts
        raise LostCallUnsettled()

    async def _settle_lost(self) -> None:
        """Before anything more is shown, learn from Slack what calls whose answers were lost did."""
        if (message := self._message) is not None and message.unsure:
            await self._settle_stream(message)
        if (lost := self._lost_open) is not None:
            ts = await self._landed(lost.shown)
            self._lost_open = None
            if ts is not None:
                self._message = _Message(lost.mode, ts, lost.shown, None)
                await self._became_visible(ts)

    async def _settle_stream(self, message: _Message) -> None:
        """A stream whose append or stop was lost (that piece, or the stop with the rest and the
        buttons, may or may not show) goes on as a posted message, which chat.update gives its
        whole text: unlike an append, an update done twice shows nothing twice."""
        use = message.final_slot
        for attempt in range(1, LOST_POST_ATTEMPTS + 1):
            try:
                await self._final_call("chat.stopStream", use=use, channel=self.target.channel, ts=message.ts)
            except SlackApiError as error:
                code = error.response.get("error")
                if code == "stopped_by_user":
                    self.stopped_by_user = True
                elif code not in STREAM_ENDED:
                    raise
            except CALL_ERRORS as error:
                # A bare stop done twice does nothing twice (the second finds the stream ended).
                if not maybe_carried_out(error) or attempt == LOST_POST_ATTEMPTS:
                    raise
                use = None  # the held slot went with the lost stop
                await asyncio.sleep(LOST_RETRY_PAUSE * attempt / self.budget.scale)
                continue
            break
        message.mode, message.unsure, message.final_slot = "post", False, None

    async def _after_sign(self) -> None:
        """Nothing of the answer shows before the thinking sign is up: a thread status set after
        the answer would stay, where one set before it is cleared by the answer."""
        if self._after is not None:
            after, self._after = self._after, None
            if not after.done():
                await asyncio.wait([after])

    async def _became_visible(self, ts: str) -> None:
        """Tell the turn, once, that part of its answer is now on screen."""
        if self._on_visible is not None:
            on_visible, self._on_visible = self._on_visible, None
            await on_visible(ts)

    async def _final_call(self, method: str, *, use: Hold | None = None, **args: Any) -> Any:
        """A call that must happen: it waits for its slot and through Slack's 429s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.final_wait
        while True:
            try:
                return await self.slack.call(
                    method, team=self.target.team, use=use, wait=max(0.0, deadline - loop.time()), **args
                )
            except RateLimited as busy:
                if not busy.from_slack or loop.time() + busy.retry_in > deadline:
                    raise
                use = None  # the held slot was spent on the refused call
                await asyncio.sleep(busy.retry_in)

    async def _leave(self) -> None:
        if not self._joined:
            return  # never updated: there is no share to give back (one Redis round trip saved)
        await self.budget.leave(self.target.team, ("chat.appendStream", "chat.update"), self._writer)


def _content(text: str, feedback: str | None, question: str) -> dict[str, Any]:
    """A message's content: Markdown, plus (on the last message) the feedback buttons, with
    mrkdwn `text` for notifications and clients that cannot show blocks."""
    if feedback is None:
        return {"markdown_text": text}
    fallback = to_mrkdwn(text)
    if len(fallback) > TEXT_LIMIT:
        fallback = fallback[: TEXT_LIMIT - 1] + "…"
    blocks = [{"type": "markdown", "text": text}, _feedback_block(feedback, question)]
    return {"blocks": blocks, "text": fallback}


def fits_one_message(answer: str) -> bool:
    """The model's whole `answer` shows in one message: its formatted text needs no cut."""
    return find_cut(SlackMarkdown.format(answer).strip()) is None


def answer_block_id(question_ts: str) -> str:
    return ANSWER_BLOCK_PREFIX + question_ts


def notice_block_id(question_ts: str, *, outcome: bool = True) -> str:
    """A notice's block id; one that is not the question's `outcome` is told apart (see
    `UNQUEUED_NOTICE_PREFIX`)."""
    return f"{NOTICE_BLOCK_ID}:{question_ts}" if outcome else UNQUEUED_NOTICE_PREFIX + question_ts


def is_notice_block(block_id: str) -> bool:
    return block_id == NOTICE_BLOCK_ID or block_id.startswith(NOTICE_BLOCK_ID + ":")


def _feedback_block(answer_ts: str, question_ts: str) -> dict[str, Any]:
    """👍 / 👎 under an answer; the values name the answer's first message (empty: this one),
    the block's id the question answered."""
    return {
        "type": "context_actions",
        "block_id": answer_block_id(question_ts),
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": {
                    "text": {"type": "plain_text", "text": "👍"},
                    "accessibility_label": "This answer helped",
                    "value": f"good:{answer_ts}",
                },
                "negative_button": {
                    "text": {"type": "plain_text", "text": "👎"},
                    "accessibility_label": "This answer did not help",
                    "value": f"bad:{answer_ts}",
                },
            }
        ],
    }


def _continuation(shown: str, text: str) -> str:
    """What a new message carries on with after a message that shows `shown` of `text`."""
    rest = text[len(shown) :]
    if inside_code(shown):
        return "```\n" + rest.lstrip("\n")
    return rest.lstrip()


def _ends_a_reply(block_ids: list[str]) -> bool:
    """An answer's last message (its buttons) or a notice: the end of some turn's reply."""
    return any(is_notice_block(i) or i.startswith(ANSWER_BLOCK_PREFIX) for i in block_ids)
